"""Starting a run from another run's weights (`--init-from`, `init_from`), alone and with the
loaded layers frozen (a fine-tune): what is loaded, skipped and left fresh, and the errors."""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from nnlang.train import checkpoint
from nnlang.train.trainer import fit
from tests.faults.conftest import cli
from tests.tiny_run import tiny_data, tiny_source

# a tiny models/cnn.nn: conv, pool, dense head; {frozen} freezes the convolution
CNN = """
model Cnn(classes = 3) {{
  input x: float32[batch, 1, 6, 6]
  input label: int32[batch]
  c = conv2d(x, 4, 3{frozen}) |> relu |> max_pool2d(2)
  logits = dense(flatten(c), classes)
  loss cross_entropy(logits, label)
  metric acc = accuracy(logits, label)
}}
train Cnn {{ data = "img.npz"  optimizer = {opt}  batch = 4  epochs = 1{init} }}
"""


def cnn(frozen="", opt="sgd(lr = 0.1)", init=""):
    return CNN.format(frozen=frozen, opt=opt, init=init)


def img_data(folder, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(24, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].sum(axis=(1, 2)) > 0).astype(np.int32) + (x[:, 0, 3:, :3].sum((1, 2)) > 0)
    np.savez(folder / "img.npz", train_x=x[:20], train_label=y[:20].astype(np.int32),
             test_x=x[20:], test_label=y[20:].astype(np.int32))


def train(path, out, **kw):
    return fit(str(path), backend="reference", progress=False, out=out, **kw)


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A trained run of the tiny dense model (hidden 8): its directory."""
    monkeypatch.chdir(tmp_path)
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(tiny_source())
    train(tmp_path / "tiny.nn", tmp_path / "a", max_steps=3)
    return tmp_path / "a"


def deeper(hidden2=5):
    """The tiny model with a second hidden layer: h matches, h2 is new, logits changes shape."""
    return tiny_source().replace("logits = dense(h, classes)",
                                 f"h2 = dense(h, {hidden2}) |> relu\n  logits = dense(h2, classes)")


def test_init_from_loads_matching_and_reports(tiny_run):
    saved = checkpoint.load(tiny_run).state
    net = nnlang.compile(tiny_source(), backend="reference", init_from=tiny_run)
    for name in ("h.weight", "h.bias", "logits.weight", "logits.bias"):
        np.testing.assert_array_equal(net.parameters()[name], saved[name])
    assert [n for n, _ in net.init_report.loaded] == list(net.parameters())
    assert net.init_report.skipped == [] and net.init_report.fresh == []
    # the optimizer starts fresh: its moments are zero, not the run's
    assert not any(k.startswith("optimizer.") and np.any(v)
                   for k, v in net.state_dict().items())

    fresh = nnlang.compile(deeper(), backend="reference", seed=3)
    net = nnlang.compile(deeper(), backend="reference", seed=3, init_from=tiny_run,
                         init_skip_mismatch=True)
    r = net.init_report
    assert [n for n, _ in r.loaded] == ["h.weight", "h.bias", "logits.bias"]
    assert [(n, why) for n, _, why in r.skipped] == [
        ("logits.weight", "shape differs from this model's [5, 3]")]
    # NOTE: logits.weight kept this model's initializer too, so it is fresh as well
    assert [n for n, _ in r.fresh] == ["h2.weight", "h2.bias", "logits.weight"]
    np.testing.assert_array_equal(net.parameters()["h.weight"], saved["h.weight"])
    for name in ("h2.weight", "logits.weight"):
        np.testing.assert_array_equal(net.parameters()[name], fresh.parameters()[name])


def test_shape_mismatch_is_an_error_naming_the_parameter(tiny_run):
    with pytest.raises(NNError, match=r"parameter 'logits.weight' is \[8, 3\] .* but \[5, 3\]"):
        nnlang.compile(deeper(), backend="reference", init_from=tiny_run)


def test_a_frozen_weight_left_fresh_is_pointed_out(tiny_run, tmp_path):
    """A frozen layer the checkpoint has no weights for (renamed, or new) keeps its random
    initial values for the whole run: the table showed it as plain "fresh"."""
    frozen = deeper().replace("dense(h, 5)", "dense(h, 5, trainable = false)")
    (tmp_path / "deep.nn").write_text(frozen)
    out = cli("train", "deep.nn", "--init-from", str(tiny_run), "--init-skip-mismatch",
              "--backend", "reference", "--max-steps", "1", "--out", "c", code=0)
    out = " ".join(out.split())
    assert "h2.weight [8, 5] fresh (not in the checkpoint), frozen" in out, out
    assert "warning: h2.weight, h2.bias are frozen (trainable = false) and not loaded" in out


def test_a_new_batch_norm_layer_is_not_called_frozen(tiny_run, tmp_path):
    """A fine-tuned model that adds batch_norm (running statistics: trainable = false, but the
    training step overwrites them) got "frozen: never trained" in the table and a warning
    that its statistics keep their initial values all run; the run moves them. Only a layer
    the user froze is pointed out."""
    bn = deeper().replace("dense(h, 5) |> relu", "dense(h, 5) |> batch_norm |> relu")
    (tmp_path / "bn.nn").write_text(bn)
    out = cli("train", "bn.nn", "--init-from", str(tiny_run), "--init-skip-mismatch",
              "--backend", "reference", "--max-steps", "1", "--out", "c", code=0)
    out = " ".join(out.split())
    assert "running_mean [5] fresh (not in the checkpoint)" in out, out
    assert "frozen" not in out and "warning" not in out, out
    assert np.any(checkpoint.load(tmp_path / "c").state["h2.running_mean"] != 0)


def test_every_shape_mismatch_is_named_at_once(tiny_run):
    """hidden = 6 against the run's 8: h.weight, h.bias and logits.weight all differ, and one
    error names the three (it named the first, so a user met them one run at a time)."""
    with pytest.raises(NNError) as err:
        nnlang.compile(tiny_source(), backend="reference", overrides={"hidden": 6},
                       init_from=tiny_run)
    text = err.value.render()
    for name, theirs, ours in (("h.weight", "[4, 8]", "[4, 6]"), ("h.bias", "[8]", "[6]"),
                               ("logits.weight", "[8, 3]", "[6, 3]")):
        assert f"'{name}' is {theirs}" in text and f"{ours} in this model" in text, text
    # NOTE: in compile's words: the hint named the CLI's --init-skip-mismatch
    assert "logits.bias" not in text and "init_skip_mismatch=True" in err.value.hint
    assert "--" not in err.value.hint


def test_cli_init_from_table_and_errors(tiny_run, tmp_path):
    (tmp_path / "deep.nn").write_text(deeper())
    out = cli("train", "deep.nn", "--init-from", str(tiny_run), "--backend", "reference",
              "--max-steps", "1", "--out", "b", code=1)
    assert "--init-from" in out and "logits.weight" in out and "--init-skip-mismatch" in out
    out = cli("train", "deep.nn", "--init-from", str(tiny_run), "--init-skip-mismatch",
              "--backend", "reference", "--max-steps", "1", "--out", "c", code=0)
    assert "3 loaded, 1 skipped, 3 fresh (kept their initializer)" in out, out
    assert "h2.weight" in out and "fresh; the checkpoint's [8, 3] skipped (another shape)" in out
    out = cli("train", "deep.nn", "--init-from", "missing-run", "--backend", "reference",
              code=1)
    assert "--init-from" in out and "missing-run" in out
    (tmp_path / "other.nn").write_text(tiny_source().replace("h = dense", "g = dense")
                                       .replace("dense(h,", "dense(g,").replace("logits", "z"))
    out = cli("train", "other.nn", "--init-from", str(tiny_run), "--backend", "reference",
              code=1)
    assert "no parameter" in out and "matches" in out
    out = cli("train", "deep.nn", "--init-from", str(tiny_run), "--resume", "--out", "c",
              "--backend", "reference", code=1)
    assert "--resume" in out


def test_train_section_init_from_must_be_a_path(tmp_path):
    with pytest.raises(NNError, match="init_from must be a run directory"):
        nnlang.load(tiny_source().replace("batch = 4", "batch = 4  init_from = 3"))


@pytest.mark.parametrize("where, words", [
    ("a", ["'h.weight' is [4, 8] there but [4, 6] in this model", "pass init_skip_mismatch=True"]),
    ("nowhere", ["no checkpoint at nowhere"]),
])
def test_train_section_init_from_errors_point_at_the_setting(tiny_run, where, words):
    """A checkpoint the train section's init_from names that does not fit (or is not there)
    is an error at that setting's line, as the section's other settings are (it said
    'init_from (train section)' and no line)."""
    source = tiny_source().replace("batch = 4", f'batch = 4\n  init_from = "{where}"')
    (tiny_run.parent / "six.nn").write_text(source)
    with pytest.raises(NNError) as err:
        train(tiny_run.parent / "six.nn", tiny_run.parent / "b", overrides={"hidden": 6})
    text = err.value.render()
    assert "six.nn:15:15:" in text and f'init_from = "{where}"' in text, text
    for w in words:
        assert w in text, text
    assert not (tiny_run.parent / "b").exists()


def test_a_set_init_from_is_named_by_its_flag(tiny_run):
    """`--set init_from=...` was called 'init_from (train section)' though the file has no such
    setting; the value is named by what gave it, as --set lr=0 is."""
    out = cli("train", "tiny.nn", "--backend", "reference", "--set", "init_from=nowhere",
              "--out", tiny_run.parent / "b")
    assert "(given by --set init_from=...)" in out and "train section" not in out, out
    assert "no checkpoint at nowhere" in out, out
    with pytest.raises(NNError) as err:
        train(tiny_run.parent / "tiny.nn", tiny_run.parent / "c",
              overrides={"init_from": "nowhere"})
    assert "(given by --set init_from=...)" in err.value.render(), err.value.render()


@pytest.mark.parametrize("path", ["a/checkpoint.npz", "./a", "ABS"])
def test_set_takes_a_path_unquoted(tiny_run, path):
    """`--set init_from=a/checkpoint.npz` was refused ("'a/checkpoint.npz' is not a literal",
    hint: use a string) though --init-from takes it, and `--set data=...` a bare name; a word
    with a slash is a path, as the shell wrote it."""
    path = str(tiny_run) if path == "ABS" else path
    out = cli("train", "tiny.nn", "--backend", "reference", "--set", f"init_from={path}",
              "--max-steps", "1", "--out", tiny_run.parent / "b", code=0)
    assert "4 loaded" in out, out


def test_a_set_init_from_is_read_from_the_current_folder(tiny_run):
    """A relative `--set init_from=a` was looked up beside the .nn file first (as the train
    section's own value is), so a folder of that name there won over the one the shell meant."""
    models = tiny_run.parent / "m"
    (models / "a").mkdir(parents=True)
    (models / "tiny.nn").write_text(tiny_source())
    (models / "a" / "checkpoint.npz").write_bytes(b"not a checkpoint")
    out = cli("train", "m/tiny.nn", "--backend", "reference", "--set", "init_from=a",
              "--max-steps", "1", "--out", tiny_run.parent / "b", code=0)
    assert "4 loaded" in out, out


def test_init_from_with_resume_is_the_conflict_even_with_no_run_to_resume(tiny_run):
    """--init-from and --resume together are one error naming both, also when there is no
    run to resume (it said "checkpoint not found", hiding the conflict)."""
    out = cli("train", "tiny.nn", "--backend", "reference", "--init-from", tiny_run,
              "--resume", "--out", tiny_run.parent / "never")
    assert "--init-from starts a new run" in out and "pass one of them" in out, out
    assert "not found" not in out


def test_compile_applies_the_train_sections_init_from(tiny_run):
    """nnlang.compile builds a Net with the train section's settings, `init_from` among them
    (a path beside the .nn file, read from another working directory too); `init_from=False`
    leaves the initializers' values, and `nnlang compile` (graphs and kernels) needs no
    checkpoint at all."""
    import os
    folder = tiny_run.parent / "models"
    folder.mkdir()
    source = tiny_source().replace("batch = 4", 'batch = 4\n  init_from = "../a"')
    (folder / "warm.nn").write_text(source)
    saved = checkpoint.load(tiny_run).state
    os.chdir(tiny_run.parent.parent)
    net = nnlang.compile(str(folder / "warm.nn"), backend="reference")
    assert net.init_report is not None and net.init_report.loaded
    for name, value in net.parameters().items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    fresh = nnlang.compile(str(folder / "warm.nn"), backend="reference", init_from=False)
    assert fresh.init_report is None
    assert not np.array_equal(fresh.parameters()["h.weight"], saved["h.weight"])
    (folder / "cold.nn").write_text(source.replace("../a", "../nowhere"))
    with pytest.raises(NNError) as err:
        nnlang.compile(str(folder / "cold.nn"), backend="reference")
    assert "cold.nn:15:15:" in err.value.render()
    cli("compile", folder / "cold.nn", "--emit", "summary", code=0)


def test_finetune_frozen_convolution(tmp_path, monkeypatch):
    """Pretrain, then fine-tune on other data from the section's `init_from` with the
    convolution frozen: it stays what was loaded, bit for bit; the head learns."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pre").mkdir()
    img_data(tmp_path / "pre", 0)
    (tmp_path / "pre" / "cnn.nn").write_text(cnn())
    train(tmp_path / "pre" / "cnn.nn", tmp_path / "pre" / "run")
    loaded = checkpoint.load(tmp_path / "pre" / "run").state
    img_data(tmp_path, 1)
    (tmp_path / "ft.nn").write_text(cnn(", trainable = false", "adamw(lr = 0.05, weight_decay"
                                        " = 0.1)", '  init_from = "pre/run"'))
    h = train(tmp_path / "ft.nn", tmp_path / "ft")
    after = h.net.parameters()
    for name in ("c.weight", "c.bias"):
        np.testing.assert_array_equal(after[name], loaded[name])
    assert not np.array_equal(after["logits.weight"], loaded["logits.weight"])
    assert checkpoint.load(tmp_path / "ft").config.init_from.endswith("checkpoint.npz")
    assert "c.weight" not in h.net.graph("train").grads
