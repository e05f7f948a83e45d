"""The bad-input corpus of `nnlang export`: a checkpoint of another model, a missing or broken
checkpoint, an output that cannot be written, an op that has no ONNX form, a model with
nothing to export, a symbolic length with no bound for its table, and no onnx package: each a
clear error, exit 1, and no file left behind."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.faults.conftest import cli
from tests.tiny_run import tiny_data, tiny_source

pytest.importorskip("onnx")

TINY = tiny_source(val_split=None)
# the same parameter names as Tiny, other shapes and one more layer
OTHER = TINY.replace("h = dense(x, hidden) |> relu",
                     "h = dense(x, 5) |> relu\n  h2 = dense(h, 6)") \
            .replace("logits = dense(h, classes)", "logits = dense(h2, classes)")
# Tiny's weights, with one more output through an op that has no ONNX form (`fold`)
FOLDED = TINY.replace("output probs = softmax(logits)", """output probs = softmax(logits)
  cols = unsqueeze(unsqueeze(logits, axis = -1), axis = -1)
  output folded = fold(cols, size = [3], kernel = [1], stride = [1], pads = [0, 0],
                       dilation = [1])""")
STRIDED = TINY.replace("output probs = softmax(logits)", """output probs = softmax(logits)
  output spread = unslice(logits, axis = 1, start = 0, stop = 6, step = 2, size = 6)""")
MLP = TINY.replace("model Tiny", "model Mlp").replace("train Tiny", "train Mlp")
# Tiny with its hidden layer deleted: the checkpoint's h.* would be silently left out
SHORTER = TINY.replace("h = dense(x, hidden) |> relu", "h = x")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run of the tiny model (one epoch), shared by the cases below."""
    folder = tmp_path_factory.mktemp("export-run")
    tiny_data(folder)
    for name, src in (("tiny.nn", TINY), ("other.nn", OTHER), ("folded.nn", FOLDED),
                      ("strided.nn", STRIDED), ("mlp.nn", MLP), ("shorter.nn", SHORTER)):
        (folder / name).write_text(src)
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    cli("train", "tiny.nn", "--epochs", "1", "--out", "run", code=0, cwd=folder)
    return folder


CASES = [
    (("other.nn", "-c", "run"), ["does not fit model 'Tiny'", "h2.weight", "h.weight [4, 8]",
                                 "[4, 5]"]),
    (("mlp.nn", "-c", "run"), ["holds model 'Tiny'", "mlp.nn"]),
    (("shorter.nn", "-c", "run"), ["does not fit model 'Tiny'", "trained parameter(s) "
                                   "h.weight, h.bias that the model does not have"]),
    (("tiny.nn", "-c", "nowhere"), ["checkpoint not found", "nowhere"]),
    (("tiny.nn", "-c", "broken.npz"), ["broken.npz", "not a readable nnlang checkpoint"]),
    (("tiny.nn", "-c", "run", "-o", "missing/dir/t.onnx"), ["-o missing/dir/t.onnx",
                                                           "does not exist"]),
    (("tiny.nn", "-c", "run", "-o", "run"), ["-o run", "is a folder"]),
    (("tiny.nn", "-c", "run", "-o", "tiny.nn/t.onnx"), ["-o tiny.nn/t.onnx",
                                                        "'tiny.nn' is a file, not a folder"]),
    (("folded.nn", "-c", "run"), ["folded.nn:", "cannot export op 'fold'", "no ONNX form"]),
    (("strided.nn", "-c", "run"), ["strided.nn:", "cannot export op 'unslice'",
                                   "strided unslice (step 2)"]),
]


@pytest.mark.parametrize("args,words", CASES, ids=[c[0][0] + "-" + c[0][2] + str(len(c[0]))
                                                    for c in CASES])
def test_export_error(run, args, words):
    out = cli("export", *args, code=1, cwd=run)
    for w in words:
        assert w in out, f"{w!r} not in\n{out}"
    assert not list(run.glob("*.onnx")), "a failed export left a file"


def test_unexportable_op_points_at_its_line(run):
    out = cli("export", "folded.nn", "-c", "run", "-o", "f.onnx", code=1, cwd=run)
    line = next(k for k, text in enumerate(FOLDED.splitlines(), 1) if "fold(cols" in text)
    assert f"folded.nn:{line}:" in out and "^^^" in out


def test_model_without_output():
    """Its losses are not exported: the error is at the loss and names the value it scores."""
    import nnlang
    with pytest.raises(nnlang.NNError) as err:
        nnlang.export_onnx(TINY.replace("output probs = softmax(logits)", ""))
    text = err.value.render()
    assert "declares no output to export" in text and "loss cross_entropy(logits" in text
    assert "^^^" in text and "hint: add `output logits`, the value this loss scores" in text
    with pytest.raises(nnlang.NNError, match="name the value this loss scores"):
        nnlang.export_onnx(TINY.replace("output probs = softmax(logits)", "").replace(
            "cross_entropy(logits,", "cross_entropy(logits * 2.0,"))


def test_sinusoidal_positions_on_a_symbolic_length_need_max_len():
    """nnlang computes the table once the length is bound; a file that runs any length holds
    the table's rows, so it needs to know how many."""
    import nnlang
    src = ("model Seq {\n  symbol seq\n  input x: float32[batch, seq, 4]\n"
           "  output y = positional_encoding(x)\n}\n")
    with pytest.raises(nnlang.NNError) as err:
        nnlang.export_onnx(src)
    for w in (":4:", "^^^", "symbolic length seq", "export only with max_len",
              "add max_len"):
        assert w in str(err.value), f"{w!r} not in\n{err.value}"


def test_without_the_onnx_package(run, monkeypatch):
    for name in [m for m in sys.modules if m == "onnx" or m.startswith(("onnx.",
                                                                        "nnlang.export."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx", None)
    out = cli("export", "tiny.nn", "-c", "run", "-o", "t.onnx", code=1, cwd=run)
    assert "needs the onnx package" in out and "nnlang[onnx]" in out


def test_a_checkpoint_fixes_the_model_and_its_hyper_parameters(run):
    """export_onnx(path, checkpoint, model_name=, overrides=) asking for another model or other
    sizes than the checkpoint's was answered with the trained model's file."""
    import nnlang
    from nnlang.errors import NNError
    two = TINY + TINY.replace("model Tiny", "model Other").replace("train Tiny", "train Other")
    (run / "two.nn").write_text(two)
    with pytest.raises(NNError, match="holds model 'Tiny', not 'Other'"):
        nnlang.export_onnx(str(run / "tiny.nn"), run / "run", model_name="Other")
    with pytest.raises(NNError, match="built already: its checkpoint has hidden = 8"):
        nnlang.export_onnx(str(run / "tiny.nn"), run / "run", overrides={"hidden": 64})
    same = nnlang.export_onnx(str(run / "tiny.nn"), run / "run", overrides={"hidden": 8},
                              model_name="Tiny")
    assert [o.name for o in same.graph.output] == ["probs"]


@pytest.mark.parametrize("target, what", [
    ("run/checkpoint.npz", "the checkpoint"), ("run/../run/checkpoint.npz", "the checkpoint"),
    ("run/best.npz", "the checkpoint"), ("tiny.nn", "the model file")])
def test_output_over_its_own_inputs_is_refused(run, tmp_path, target, what):
    """`-o run/checkpoint.npz` replaced the trained weights with the ONNX file (`-o
    run/best.npz` the run's best ones), and `-o tiny.nn` the model's source, all with exit 0."""
    import shutil
    shutil.copytree(run / "run", tmp_path / "run")
    # the run's other checkpoint (Tiny has no validation, so no best epoch of its own)
    shutil.copy(tmp_path / "run" / "checkpoint.npz", tmp_path / "run" / "best.npz")
    shutil.copy(run / "tiny.nn", tmp_path)
    shutil.copy(run / "tiny.npz", tmp_path)
    before = (tmp_path / target).read_bytes()
    out = cli("export", "tiny.nn", "-c", "run/checkpoint.npz", "-o", target, cwd=tmp_path)
    assert f"-o {Path(target)}: this is {what} the command reads" in out, out
    assert (tmp_path / target).read_bytes() == before



@pytest.mark.parametrize("target, what", [
    ("run/checkpoint.npz", "the checkpoint"), ("run/best.npz", "the checkpoint"),
    ("tiny.nn", "the model file")])
def test_library_path_over_its_own_inputs_is_refused(run, tmp_path, monkeypatch, target, what):
    """`nnlang.export_onnx("tiny.nn", "run", "run/checkpoint.npz")` wrote the ONNX file over
    the trained weights (the CLI's `-o` refused it; the library did not), and `path="tiny.nn"`
    over the model's source."""
    import shutil

    import nnlang
    shutil.copytree(run / "run", tmp_path / "run")
    shutil.copy(tmp_path / "run" / "checkpoint.npz", tmp_path / "run" / "best.npz")
    shutil.copy(run / "tiny.nn", tmp_path)
    monkeypatch.chdir(tmp_path)
    before = (tmp_path / target).read_bytes()
    with pytest.raises(nnlang.NNError, match=f"this is {what} export_onnx reads"):
        nnlang.export_onnx("tiny.nn", "run", target)
    with pytest.raises(nnlang.NNError, match=f"this is {what} export_onnx reads"):
        nnlang.export_onnx(tmp_path / "tiny.nn", tmp_path / "run" / "checkpoint.npz",
                           tmp_path / target)
    assert (tmp_path / target).read_bytes() == before


def test_a_loaded_or_compiled_model_fixes_its_hyper_parameters():
    """export_onnx(program or net, overrides=, model_name=) silently ignored both: asked for
    hidden = 3, the file held the loaded model's 8 units with no word about it."""
    import nnlang
    from nnlang.errors import NNError
    program = nnlang.load(TINY)
    for model in (program, nnlang.compile(program, backend="reference")):
        with pytest.raises(NNError, match="overrides cannot change .* has hidden = 8"):
            nnlang.export_onnx(model, overrides={"hidden": 3})
        with pytest.raises(NNError, match="holds model 'Tiny', not 'Other'"):
            nnlang.export_onnx(model, model_name="Other")
        same = nnlang.export_onnx(model, overrides={"hidden": 8}, model_name="Tiny")
        assert [list(t.dims) for t in same.graph.initializer if t.name == "h.weight"] == [[4, 8]]


def test_weights_saved_with_numpy_are_not_a_checkpoint_and_the_hint_says_what_to_do(tmp_path):
    """A library loop's np.savez(**net.parameters()) passed as the checkpoint was called
    'truncated or written by another program'; the hint now names the way that works."""
    import numpy as np

    import nnlang
    net = nnlang.compile(TINY, backend="reference", seed=0)
    np.savez(tmp_path / "w.npz", **net.parameters())
    with pytest.raises(nnlang.NNError) as err:
        nnlang.export_onnx(TINY, tmp_path / "w.npz")
    text = err.value.render()
    assert "w.npz is not a readable nnlang checkpoint" in text
    assert "net.load_state_dict(dict(np.load(" in text and "export_onnx(net)" in text, text
    loaded = nnlang.compile(TINY, backend="reference", seed=1)
    loaded.load_state_dict(dict(np.load(tmp_path / "w.npz")))   # the way the hint names
    proto = nnlang.export_onnx(loaded)
    from onnx import numpy_helper
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert all(np.array_equal(weights[k], v) for k, v in net.parameters().items())
