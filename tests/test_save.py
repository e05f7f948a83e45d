"""`nnlang.save`: a net trained by a Python loop becomes a checkpoint that the CLI reads (eval,
predict, export, train --resume, --init-from) and `nnlang.restore` reads back (issue: a library-
trained net had no supported way to become one; np.savez of its state_dict was refused)."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from tests.faults.conftest import cli as _cli
from tests.tiny_run import tiny_data, tiny_source

ROOT = Path(__file__).resolve().parents[1]

DROPOUT = """
model Drop(hidden = 6) {
  input x: float32[batch, 4]
  input label: int32[batch]
  h = dense(x, hidden) |> relu |> dropout(rate = 0.5)
  logits = dense(h, 3)
  loss cross_entropy(logits, label)
}
train Drop {
  optimizer = adam(lr = 0.05)
  batch = 4
}
"""


def cli(*args, cwd) -> str:
    return _cli(*args, code=0, cwd=cwd)


def _loop(tmp_path, steps: int = 5, **compile_kw):
    """A library loop on the tiny model: (net, the tiny.npz arrays)."""
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(tiny_source())
    d = dict(np.load(tmp_path / "tiny.npz"))
    net = nnlang.compile(str(tmp_path / "tiny.nn"), **compile_kw)
    for i in range(steps):
        net.train_step({"x": d["train_x"][4 * i:4 * i + 4],
                        "label": d["train_label"][4 * i:4 * i + 4]})
    return net, d


def test_a_saved_net_evaluates_in_the_cli_as_in_memory_and_as_numpy(tmp_path):
    net, d = _loop(tmp_path, overrides={"hidden": 5})
    saved = nnlang.save(net, tmp_path / "saved")
    assert saved == tmp_path / "saved" / "checkpoint.npz"
    test = {"x": d["test_x"], "label": d["test_label"]}
    mem = net.evaluate(test)
    # numpy from the saved weights: relu(x W1 + b1) W2 + b2, mean cross-entropy, accuracy
    w = dict(np.load(saved))
    w = {k[len("state/"):]: v.astype(np.float64) for k, v in w.items() if k.startswith("state/")}
    assert w["h.weight"].shape == (4, 5)   # the loop's override, kept
    z = np.maximum(test["x"] @ w["h.weight"] + w["h.bias"], 0) @ w["logits.weight"] + \
        w["logits.bias"]
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(len(z)), test["label"]].mean()
    acc = (z.argmax(1) == test["label"]).mean()
    assert mem["cross_entropy"] == pytest.approx(ce, rel=1e-5)
    assert mem["acc"] == pytest.approx(acc)
    out = cli("eval", "tiny.nn", "-c", "saved", cwd=tmp_path)
    row = re.search(r"test\s+([\d.]+)\s+([\d.]+)", out.split("test set")[1])
    assert float(row[1]) == pytest.approx(ce, abs=6e-5) and float(row[2]) == pytest.approx(
        acc, abs=6e-5), out
    import json
    out = cli("predict", "tiny.nn", "-c", "saved", "--json", "0.5,-1,2,0.25", cwd=tmp_path)
    got = json.loads(out.strip().splitlines()[-1])
    probs = net.forward({"x": np.array([[0.5, -1, 2, 0.25]], np.float32)})["probs"][0]
    assert got["class"] == int(probs.argmax())
    assert got["probability"] == pytest.approx(float(probs.max()), rel=1e-6)


def test_restore_of_a_save_is_the_same_net_and_its_next_step_the_same(tmp_path):
    """The net's own seed (its dropout masks), dtype and steps_per_epoch come back with it: a
    restore built the train section's seed and float32."""
    rng = np.random.default_rng(1)
    batches = [{"x": rng.normal(size=(4, 4)), "label": rng.integers(0, 3, 4)} for _ in range(4)]
    net = nnlang.compile(DROPOUT, seed=7, dtype="float64", steps_per_epoch=3)
    for b in batches[:3]:
        net.train_step(b)
    net.lr_scale = 0.5
    nnlang.save(net, tmp_path / "saved.npz")
    back = nnlang.restore(DROPOUT, tmp_path / "saved.npz")
    assert (back.step, back.epoch, back.lr_scale, back.dtype) == (3, 1, 0.5, "float64")
    a, b = net.state_dict(), back.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert a[k].dtype == b[k].dtype, k
    assert net.train_step(batches[3]) == back.train_step(batches[3])
    assert back.epoch == net.epoch == 1
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, back.state_dict()[k], err_msg=k)


def test_a_restore_that_does_not_fit_hints_at_the_callers_overrides(tmp_path):
    """nnlang.restore of weights another model's size told a Python caller to check its "--set
    values", a flag of the CLI; from Python it names load's overrides, from the CLI the flag."""
    from nnlang.errors import command_line
    nnlang.save(nnlang.compile(DROPOUT), tmp_path / "saved.npz")
    other = DROPOUT.replace("hidden = 6", "hidden = 5")
    with pytest.raises(NNError, match="does not fit model 'Drop'") as err:
        nnlang.restore(other, tmp_path / "saved.npz")
    assert "--" not in err.value.hint and "overrides" in err.value.hint, err.value.hint
    with pytest.raises(NNError) as err, command_line():
        nnlang.restore(other, tmp_path / "saved.npz")
    assert "--set values" in err.value.hint


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_train_resume_from_a_save_goes_on_as_the_loop_does(tmp_path, dtype):
    """`nnlang train --resume --out SAVED` against the same loop going on in memory, both fed
    the same batches (every training row the same, so the CLI's shuffled order is that too):
    bit-identical weights and Adam state after the epoch that follows, in the net's dtype (a
    float64 net's resume trained on in float32)."""
    x = np.tile(np.array([[0.5, -1.0, 2.0, 0.25]], np.float32), (8, 1))
    y = np.full(8, 2, np.int32)
    np.savez(tmp_path / "tiny.npz", train_x=x, train_label=y, test_x=x[:2], test_label=y[:2])
    (tmp_path / "tiny.nn").write_text(tiny_source(val_split=None))
    net = nnlang.compile(str(tmp_path / "tiny.nn"), steps_per_epoch=2, dtype=dtype)
    batch = {"x": x[:4], "label": y[:4]}
    for _ in range(3):
        net.train_step(batch)
    nnlang.save(net, tmp_path / "saved")
    out = cli("train", "tiny.nn", "--resume", "--out", "saved", cwd=tmp_path)
    assert "after epoch 1 (global step 3)" in out, out
    for _ in range(2):   # epoch 2 of 2: two steps of batch 4
        net.train_step(batch)
    resumed = np.load(tmp_path / "saved" / "checkpoint.npz")
    state = net.state_dict()
    assert sorted(state) == sorted(k[len("state/"):] for k in resumed.files
                                   if k.startswith("state/"))
    for k, v in state.items():
        np.testing.assert_array_equal(resumed["state/" + k], v, err_msg=k)
        assert resumed["state/" + k].dtype == v.dtype, k
    assert int(state["optimizer.step"]) == 5


def test_export_of_a_save_equals_the_net_in_memory(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net, d = _loop(tmp_path)
    nnlang.save(net, tmp_path / "saved")
    cli("export", "tiny.nn", "-c", "saved", "-o", "tiny.onnx", cwd=tmp_path)
    nnlang.save(net, tmp_path / "saved.npz")
    proto = nnlang.export_onnx(str(tmp_path / "tiny.nn"), str(tmp_path / "saved.npz"))
    x = d["test_x"]
    want = net.forward({"x": x})["probs"]
    for model in (str(tmp_path / "tiny.onnx"), proto.SerializeToString()):
        (got,) = ort.InferenceSession(model).run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_init_from_a_save_loads_the_shared_layers_into_another_head(tmp_path):
    net, _ = _loop(tmp_path)
    nnlang.save(net, tmp_path / "saved")
    other = tiny_source().replace("Tiny", "Five").replace("logits = dense(h, classes)",
                                                          "scores = dense(h, 5)")
    other = other.replace("(logits, label)", "(scores, label)").replace("output probs = "
                                                                        "softmax(logits)", "")
    (tmp_path / "five.nn").write_text(other)
    five = nnlang.compile(str(tmp_path / "five.nn"), init_from=str(tmp_path / "saved"))
    assert [n for n, _ in five.init_report.loaded] == ["h.weight", "h.bias"]
    for k in ("h.weight", "h.bias"):
        np.testing.assert_array_equal(five.parameters()[k], net.parameters()[k])
    out = cli("train", "five.nn", "--init-from", "saved", "--out", "run", "--max-steps", "1",
              cwd=tmp_path)
    assert "2 loaded" in out and "fresh (not in the checkpoint)" in out, out


def test_a_failed_save_is_a_clear_error_and_leaves_the_earlier_save(tmp_path, monkeypatch):
    net, d = _loop(tmp_path, steps=2)
    first = nnlang.save(net, tmp_path / "saved")
    before = dict(np.load(first))
    net.train_step({"x": d["train_x"][:4], "label": d["train_label"][:4]})
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("checkpoint.npz"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(NNError, match="cannot write checkpoint .*No space left") as err:
        nnlang.save(net, tmp_path / "saved")
    assert "unchanged" in err.value.hint
    monkeypatch.undo()
    after = dict(np.load(first))
    assert sorted(after) == sorted(before)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["checkpoint.npz",
                                                                      "config.json"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NNError, match="cannot create the folder .*afile/sub"):
        nnlang.save(net, tmp_path / "afile" / "sub")


def test_a_save_ends_what_a_killed_save_left_there(tmp_path):
    """A save killed while writing (kill -9, a power cut) leaves its temporary file, as big as
    the checkpoint, and saving again each epoch from a loop that is killed now and then piled
    them up in the folder (or beside a .npz) for good. The next save removes those; one that
    is being written now (recently touched) stays."""
    import time
    from nnlang.files import STALE_TEMP_S
    net, _ = _loop(tmp_path, steps=1)
    folder, single = tmp_path / "saved", tmp_path / "net.npz"
    nnlang.save(net, folder), nnlang.save(net, single)
    back = time.time() - STALE_TEMP_S - 60
    old = [folder / ".checkpoint.npz.k9.tmp", folder / ".config.json.k9.tmp",
           tmp_path / ".net.npz.k9.tmp"]
    live = folder / ".checkpoint.npz.now.tmp"
    for p in (*old, live):
        p.write_bytes(b"PK half")
    for p in old:
        os.utime(p, (back, back))
    nnlang.save(net, folder), nnlang.save(net, single)
    assert not any(p.exists() for p in old) and live.exists()


def test_a_save_refuses_folders_that_hold_other_things(tmp_path):
    net, _ = _loop(tmp_path, steps=1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(NNError, match="holds files that are not a save's .*notes.txt"):
        nnlang.save(net, tmp_path / "mine")
    cli("train", "tiny.nn", "--out", "run", "--max-steps", "1", cwd=tmp_path)
    with pytest.raises(NNError, match="holds a run of nnlang train"):
        nnlang.save(net, tmp_path / "run")
    with pytest.raises(NNError, match=r"nnlang.save\(net, path\)"):
        net.save(tmp_path / "x")
    with pytest.raises(NNError, match="the save's path is a path .*not None"):
        nnlang.save(net, None)
    with pytest.raises(NNError, match="writes a compiled Net, not str"):
        nnlang.save("tiny.nn", tmp_path / "x")
    nnlang.save(net, tmp_path / "again")
    (tmp_path / "again" / "best.npz").write_bytes(b"")   # eval would prefer it
    nnlang.save(net, tmp_path / "again")    # a later save replaces the earlier one
    assert not (tmp_path / "again" / "best.npz").exists()


TEXT = """
model Bag(vocab = 300, maxlen = 12) {
  input tokens: int32[batch, maxlen]
  input label: float32[batch]
  m = mean(embedding(tokens, vocab, 4), axis = 1)
  logit = dense(m, 1) |> squeeze(axis = -1)
  output prob = sigmoid(logit)
  loss bce_with_logits(logit, label)
  metric acc = binary_accuracy(prob, label)
}
train Bag {
  data = imdb_sample(vocab = vocab, maxlen = maxlen)
  optimizer = adam(lr = 1e-2)
  batch = 8
}
"""


def test_a_text_model_saved_without_its_data_set_is_refused_not_retokenized(tmp_path):
    """The vocabulary is the data loader's, not the net's: eval, --resume and --init-from of a
    save without `data` built a vocabulary of their own and said nothing."""
    from nnlang.data import load_dataset
    ds = load_dataset("imdb-sample(vocab=300, maxlen=12)")
    (tmp_path / "bag.nn").write_text(TEXT)
    net = nnlang.compile(str(tmp_path / "bag.nn"))
    a = ds.train.arrays
    for i in range(3):
        net.train_step({k: v[8 * i:8 * i + 8] for k, v in a.items()})
    nnlang.save(net, tmp_path / "bare")
    from nnlang.train.inference import evaluate_checkpoint
    with pytest.raises(NNError, match="saved by nnlang.save without its data set") as err:
        evaluate_checkpoint(str(tmp_path / "bag.nn"), tmp_path / "bare")
    assert "data=" in err.value.hint
    from nnlang.train.trainer import fit
    for kw in ({"resume": True, "out": tmp_path / "bare"},
               {"init_from": str(tmp_path / "bare"), "out": tmp_path / "new"}):
        with pytest.raises(NNError, match="vocabulary its text was encoded with is unknown"):
            fit(str(tmp_path / "bag.nn"), progress=False, **kw)
    assert not (tmp_path / "new").exists()
    nnlang.save(net, tmp_path / "named", data=ds)
    split, res = evaluate_checkpoint(str(tmp_path / "bag.nn"), tmp_path / "named")
    mem = net.evaluate(dict(ds.test.arrays))
    assert split == "test"
    assert res["loss"] == pytest.approx(mem["bce_with_logits"], rel=1e-5)
    assert res["acc"] == pytest.approx(mem["acc"])
    # by name: loaded as `--data imdb-sample` would be (the section's vocab and maxlen kept),
    # and then the data set the CLI evaluates on
    from nnlang.train import checkpoint
    nnlang.save(net, tmp_path / "spec", data="imdb-sample")
    spec = checkpoint.load(tmp_path / "spec")
    assert spec.data_meta["vocab"] == list(ds.meta["vocab"])
    assert (spec.config.data.name, spec.config.data.options) == \
        ("imdb-sample", {"vocab": 300, "maxlen": 12})


def test_a_restored_runs_net_saved_again_keeps_its_vocabulary(tmp_path):
    """A run's net, restored (or a deepcopy of it) and trained on in Python, saved without
    `data`: the run's vocabulary goes on into the save, so eval reads text as the run did."""
    import copy

    from nnlang.train import checkpoint
    from nnlang.train.inference import evaluate_checkpoint
    from nnlang.train.trainer import fit
    (tmp_path / "bag.nn").write_text(TEXT)
    fit(str(tmp_path / "bag.nn"), out=tmp_path / "run", max_steps=1, progress=False)
    net = copy.deepcopy(nnlang.restore(str(tmp_path / "bag.nn"), tmp_path / "run"))
    nnlang.save(net, tmp_path / "again")
    run = checkpoint.load(tmp_path / "run").data_meta
    assert checkpoint.load(tmp_path / "again").data_meta["vocab"] == run["vocab"]
    assert evaluate_checkpoint(str(tmp_path / "bag.nn"), tmp_path / "again")[0] == "test"


def test_an_image_model_saved_without_its_data_set_is_evaluated_with_a_note(tmp_path):
    """The loader's scaling (pixels/255) is not the net's to know: eval of a save without
    `data` says which scaling it reads the images with; with `data` it has nothing to say."""
    import io

    from rich.console import Console

    from nnlang.data import load_dataset
    from nnlang.train.inference import evaluate_checkpoint
    ds = load_dataset("mnist-sample")
    mlp = str(ROOT / "models" / "mlp.nn")
    net = nnlang.compile(mlp, batch=16, overrides={"hidden1": 8, "hidden2": 8}, total_steps=10)
    net.train_step({"image": ds.train.arrays["image"][:16].reshape(16, 784),
                    "label": ds.train.arrays["label"][:16]})
    notes = {}
    for name, data in (("bare", None), ("named", "mnist-sample")):
        nnlang.save(net, tmp_path / name, data=data)
        out = io.StringIO()
        split, res = evaluate_checkpoint(mlp, tmp_path / name, "mnist-sample",
                                         console=Console(file=out, width=300))
        notes[name] = out.getvalue()
        mem = net.evaluate({"image": ds.test.arrays["image"].reshape(-1, 784),
                            "label": ds.test.arrays["label"]})
        assert res["loss"] == pytest.approx(mem["cross_entropy"], rel=1e-5)
    assert "saved by nnlang.save without its data set" in notes["bare"]
    assert "pixels/255" in notes["bare"], notes["bare"]
    assert "without its data set" not in notes["named"]


def test_generate_from_a_save_encodes_with_the_nets_tokenizer(tmp_path):
    """A loop's `net.tokenizer` (another data set's than the train section's `dates`) goes into
    the save: `nnlang generate` wrote what net.generate writes; without one it says which
    tokenizer it takes."""
    import json

    from nnlang.data import load_dataset
    from nnlang.data.chars import tokenizer_from_meta
    from tests.test_generate import RUN_LM
    (tmp_path / "lm.nn").write_text(RUN_LM)
    net = nnlang.compile(str(tmp_path / "lm.nn"), backend="reference", batch=1)
    text = load_dataset("imdb-text-sample(maxlen = 16, train_chunks = 8, test_chunks = 2)")
    net.tokenizer = tokenizer_from_meta(text.meta)
    want = net.generate(["The film"], max_new=5, greedy=True).samples[0].ids
    nnlang.save(net, tmp_path / "saved")
    args = ("generate", "lm.nn", "-c", "saved", "--backend", "reference", "--prompt",
            "The film", "--max-new", "5", "--greedy")
    out = cli(*args, "--json", cwd=tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["ids"] == want
    net.tokenizer = None
    nnlang.save(net, tmp_path / "saved")
    assert "without its data set or tokenizer" in cli(*args, cwd=tmp_path)
