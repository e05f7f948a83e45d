"""nnlang used from a Jupyter notebook (found by an audit that drove a real IPython kernel): what
a cell shows for an error, for the value of a Net, Program or History, for fit's printing, and
that a fit leaves the notebook's matplotlib backend alone. The plain tests call the hooks
IPython and rich use; the last one runs a real kernel where nbclient and ipykernel are
installed (not in CI)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from nnlang.train.trainer import History, fit
from tests.tiny_run import tiny_data, tiny_source

ANSI = re.compile(r"\x1b\[")
BAD = "model M {\n  input x: float32[batch, 4]\n  y = dens(x, 3)\n  output y\n}\n"


def test_ipython_shows_an_nnerror_as_its_located_message_and_the_callers_line(monkeypatch):
    """IPython shows `_render_traceback_()` in place of the traceback: without it a notebook
    cell showed 60 lines of nnlang's frames above the located message. The message (caret,
    hint) as str(err) has it, and the caller's line; NNLANG_DEBUG=1 the whole traceback."""
    monkeypatch.delenv("NNLANG_DEBUG", raising=False)
    with pytest.raises(NNError) as raised:
        nnlang.compile(BAD)   # the caller's line
    err = raised.value
    lines = err._render_traceback_()
    assert lines[:-1] == f"NNError: {err}".split("\n")
    assert "<string>:3:7: error: unknown op or block 'dens'" in lines[0]
    assert lines[-3].strip() == "^^^^" and "did you mean 'dense'" in lines[-2]
    assert re.fullmatch(r"  raised by: .*test_notebook\.py:\d+: nnlang\.compile\(BAD\)   # the "
                        r"caller's line", lines[-1]), lines[-1]
    monkeypatch.setenv("NNLANG_DEBUG", "1")
    debug = "\n".join(err._render_traceback_())
    assert debug.startswith("Traceback (most recent call last):")
    assert "nnlang/frontend/elaborate.py" in debug and debug.endswith(str(err).split("\n")[-1])


def test_the_callers_line_of_an_error_passed_on_by_a_pool_is_the_users(monkeypatch):
    """An error raised in a worker and passed on by concurrent.futures' `result()` (threads
    or processes) was said to be raised by `concurrent/futures/_base.py:401: raise
    self._exception` or `thread.py:58`: Python's library, not the line that called it."""
    import concurrent.futures as cf
    monkeypatch.delenv("NNLANG_DEBUG", raising=False)
    for pool in (cf.ThreadPoolExecutor, cf.ProcessPoolExecutor):
        with pool(1) as ex, pytest.raises(NNError) as raised:
            ex.submit(nnlang.load, BAD).result()   # the caller's line
        last = raised.value._render_traceback_()[-1]
        assert re.fullmatch(r"  raised by: .*test_notebook\.py:\d+: ex\.submit\(nnlang\.load, "
                            r"BAD\)\.result\(\)   # the caller's line", last), (pool, last)


def test_the_callers_line_in_a_file_beside_nnlangs_folder_is_the_users(monkeypatch):
    """nnlang's own frames were those whose file name began with its folder's path, without
    a separator: a script beside that folder whose name began with the same letters (a
    checkout's `nnlang_scratch.py`; installed, site-packages' `nnlang_cli`) was taken for
    nnlang's, so the error was said to be raised by the line that ran the script."""
    import os

    import nnlang.errors
    monkeypatch.delenv("NNLANG_DEBUG", raising=False)
    beside = os.path.dirname(nnlang.errors.__file__) + "_scratch.py"
    script = compile("\n\nnnlang.compile(BAD)\n", beside, "exec")
    with pytest.raises(NNError) as raised:
        exec(script, {"nnlang": nnlang, "BAD": BAD})
    assert raised.value._render_traceback_()[-1] == f"  raised by: {beside}:3"


def test_a_saved_run_leaves_the_notebooks_matplotlib_backend(tmp_path, monkeypatch):
    """Drawing a run's loss.png called matplotlib.use("Agg"), which switched the process's
    backend: after a fit that saved its run, `%matplotlib inline` showed no plot."""
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.get_backend()
    monkeypatch.chdir(tmp_path)
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(tiny_source())
    try:
        matplotlib.use("svg")
        history = fit("tiny.nn", {"epochs": 1}, out="run", progress=False,
                      console=_quiet_console())
        assert matplotlib.get_backend() == "svg"
        assert (history.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        matplotlib.use(before)


def _quiet_console():
    import io

    from rich.console import Console
    return Console(file=io.StringIO())


def test_fit_in_a_notebook_writes_its_text_without_escape_codes(tmp_path, monkeypatch):
    """In a notebook rich sends each print as HTML and text/plain; fit's own console wrote the
    text/plain with ANSI escapes (the summary table's bold and italic), raw codes wherever a
    front end or nbconvert reads the text. The HTML keeps the styles."""
    import rich.console
    import rich.jupyter
    shown = []
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    monkeypatch.setattr(rich.jupyter, "display",
                        lambda segments, text: shown.append((rich.jupyter._render_segments(
                            segments), text)))
    monkeypatch.chdir(tmp_path)
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(tiny_source())
    fit("tiny.nn", {"epochs": 1}, save=False)
    texts = "".join(text for _, text in shown)
    assert "summary" in texts and "epoch 1/1" in texts
    assert not ANSI.search(texts), texts
    assert any("font-weight: bold" in html for html, _ in shown)


def test_a_net_program_and_history_show_as_one_short_line(tmp_path):
    """A notebook shows a cell's value by its repr: a Net was `<Net object at 0x7f...>`, a
    Program its whole graph, source and definitions (18,000 characters for gpt.nn), a History
    the loss of every step and the Net."""
    program = nnlang.load("models/gpt.nn")
    text = repr(program)
    assert len(text) < 300 and "\n" not in text, text
    assert text.startswith("<Program Gpt (models/gpt.nn): inputs tokens int32[batch, 128], next "
                           "int32[batch, 128]; outputs logits; losses cross_entropy; ")
    net = nnlang.compile(tiny_source(), batch=4, seed=0)
    count = sum(a.size for a in net.parameters().values())   # 4*8+8 + 8*3+3
    assert count == 67
    assert repr(net) == ("<Net Tiny: inputs x float32[batch, 4], label int32[batch]; outputs "
                         "probs; losses cross_entropy; metrics acc; 67 parameters; backend "
                         "numba, batch 4, float32; step 0, epoch 0>")
    free = nnlang.compile("model P {\n  param w: float32[3] = ones\n  output y = w * 2.0\n}\n")
    assert repr(free).startswith("<Net P: no inputs; outputs y; 3 parameters; backend numba")
    history = History(rows=[{"epoch": e, "step": 1000 * e, "train_loss": 1.0 / e,
                             "train_acc": 0.5, "lr": 0.1} for e in (1, 2)],
                      losses=list(np.linspace(2, 0.5, 2000)), test={"loss": 0.25, "acc": 0.75},
                      stopped="interrupted", net=net)
    assert repr(history) == ("<History 2 epochs; 2000 steps; last epoch: loss 0.5000  acc 0.5000"
                             "; test: loss 0.2500  acc 0.7500; stopped: interrupted>")
    # a run interrupted in its first epoch, after one step: "1 steps" before
    assert repr(History(rows=[], losses=[0.7], stopped="interrupted")) == \
        "<History 0 epochs; 1 step; stopped: interrupted>"



def test_a_history_plots_its_epochs_in_the_notebook(monkeypatch):
    """The only plots were png files in a run folder: `History.plot()` gives a Figure (shown
    as the cell's value) with the loss and each metric per epoch, train and val, the run's
    pngs' curves; without matplotlib an error names the extra."""
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    rows = [{"epoch": 1, "step": 10, "train_loss": 1.5, "train_acc": 0.25, "val_loss": 1.75,
             "val_acc": 0.5, "lr": 0.1},
            {"epoch": 2, "step": 20, "train_loss": 0.5, "train_acc": 0.75, "val_loss": 0.875,
             "val_acc": 0.625, "lr": 0.1},
            {"epoch": 3, "step": 30, "train_loss": 0.25, "train_acc": 1.0, "lr": 0.1}]
    before = matplotlib.get_backend()
    fig = History(rows=rows).plot()
    assert matplotlib.get_backend() == before
    FigureCanvasAgg(fig).draw()   # NOTE: no display: drawn into memory
    drawn = {(ax.get_ylabel(), line.get_label()): (list(line.get_xdata()),
                                                   list(line.get_ydata()))
             for ax in fig.axes for line in ax.get_lines()}
    want = {(name, split): ([r["epoch"] for r in rows if f"{split}_{name}" in r],
                            [r[f"{split}_{name}"] for r in rows if f"{split}_{name}" in r])
            for name in ("loss", "acc") for split in ("train", "val")}
    assert drawn == want
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch"]
    with pytest.raises(NNError, match="no epoch to plot"):
        History(losses=[1.0, 0.5], stopped="interrupted").plot()
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    with pytest.raises(NNError, match="matplotlib, which is not installed") as missing:
        History(rows=rows).plot()
    assert "nnlang[plot]" in missing.value.hint


NOTEBOOK = [
    "import nnlang, numpy as np\nfrom nnlang.train.trainer import fit",
    f"nnlang.compile({BAD!r})",
    "h = fit('tiny.nn', {'epochs': 2}, out='run')",
    "h",
    "h.net",
    "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot(h.losses);",
    "h.plot()",
]


@pytest.mark.slow
def test_a_real_notebook(tmp_path):
    """The cells a student runs, in a real IPython kernel: the error cell shows the located
    message in a few lines, no text output holds an escape code, and the plot after a fit
    reaches the notebook as an image."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(tiny_source())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in NOTEBOOK]
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
    nbclient.NotebookClient(nb, timeout=300, kernel_name=NATIVE_KERNEL_NAME, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outs = [c.outputs for c in nb.cells]
    assert not [o for o in outs[0] if o.output_type == "error"], outs[0]
    (error,) = [o for o in outs[1] if o.output_type == "error"]
    assert error.ename == "NNError" and len(error.traceback) == 5, error.traceback
    assert "unknown op or block 'dens'" in error.traceback[0]
    assert error.traceback[-1].startswith("  raised by: Cell In[2], line 1: nnlang.compile(")
    texts = [o.text if o.output_type == "stream" else o.data.get("text/plain", "")
             for out in outs for o in out if o.output_type != "error"]
    assert not [t for t in texts if ANSI.search(t)], texts
    assert outs[3][0].data["text/plain"].startswith("<History 2 epochs; ")
    assert outs[4][0].data["text/plain"].startswith("<Net Tiny: inputs x float32[batch, 4]")
    assert any("image/png" in o.get("data", {}) for o in outs[5]), outs[5]
    assert any("image/png" in o.get("data", {}) for o in outs[6]), outs[6]   # History.plot()


def test_an_interrupted_generate_shows_its_partial_texts_not_a_traceback(monkeypatch):
    """Ctrl-C in `net.generate` in a notebook showed ~100 lines of traceback, and the texts
    decoded so far were only in sys.last_value.generation, which nothing said. IPython now
    shows each sequence so far (cut as the Generation's repr cuts it), how to get the partial
    Generation, and the caller's line; NNLANG_DEBUG=1 the whole traceback."""
    from nnlang.runtime.generate import Generation, Interrupted, Sample
    from tests.test_generate import CHARS, _interrupt_at, lm_net
    from nnlang.data.chars import CharTokenizer
    monkeypatch.delenv("NNLANG_DEBUG", raising=False)
    net = lm_net()
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(Interrupted) as cut:
        net.generate(["the movie", "a"], max_new=10, tokenizer=CharTokenizer(CHARS))   # here
    got = cut.value.generation
    lines = cut.value._render_traceback_()
    assert lines[0] == "Interrupted: interrupted while decoding; what each of the 2 sequences had:"
    assert lines[1:3] == [f"  {s.prompt!r} -> {s.text!r} (3 tokens, interrupted)"
                          for s in got.samples]
    assert "sys.last_value.generation" in lines[3]
    assert re.fullmatch(r"  raised by: .*test_notebook\.py:\d+: net\.generate\(.*# here",
                        lines[4]), lines[4]
    assert len(lines) == 5
    many = Interrupted(Generation([Sample("p", "t" * 100, [1] * 7, "interrupted")] * 7, "x"))
    shown = many._render_traceback_()
    assert shown[1] == f"  'p' -> {'t' * 60 + '…'!r} (7 tokens, interrupted)"
    assert shown[6] == "  and 2 more" and len(shown) == 8   # no traceback: no caller line
    monkeypatch.setenv("NNLANG_DEBUG", "1")
    assert cut.value._render_traceback_()[0] == "Traceback (most recent call last):"
