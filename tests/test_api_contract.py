"""The library's contract with a Python program that embeds it (found by an audit that used the
API from outside): state moves in whole or not at all, feeds are checked before any cast could
change them, one Net serves one call at a time, and every misuse is an NNError that says what
is wrong.
"""
from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest

import nnlang
from nnlang.data.cache import DataError
from nnlang.errors import NNError
from nnlang.train.trainer import fit

DENSE = "model M {\n  input x: float32[batch, 4]\n  output y = dense(x, 2)\n}\n"
CLASSIFIER = ("model M {\n  input image: float32[batch, 12]\n  input label: int32[batch]\n"
              "  logits = dense(image, 3)\n  loss ce = cross_entropy(logits, label)\n}\n"
              "train M {\n  optimizer = adam(lr = 1.0)\n  schedule = constant(warmup = 10)\n}\n")


def _softmax_ce(x, w, b, labels):
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def test_load_state_dict_is_all_or_nothing_and_names_unknown_keys():
    net = nnlang.compile(DENSE, seed=0)
    before = net.state_dict()
    w = np.full((4, 2), 7, np.float32)
    with pytest.raises(NNError, match=r"'y.weigth' is not in this model's state \(did you mean "
                                      r"'y.weight'\?\)"):
        net.load_state_dict({"y.weigth": w, "y.bias": np.zeros(2, np.float32)})
    with pytest.raises(NNError, match="no value for parameter"):
        net.load_state_dict({})
    with pytest.raises(NNError, match=r"'y.bias' has shape \(3,\)"):
        net.load_state_dict({"y.weight": w, "y.bias": np.zeros(3, np.float32)})
    with pytest.raises(NNError, match="maps names to arrays"):
        net.load_state_dict(None)
    for k, v in before.items():  # NOTE: none of the failed loads changed anything
        np.testing.assert_array_equal(net.state_dict()[k], v)
    report = net.load_state_dict({"y.weight": w.tolist(), "extra": 1.0}, strict=False)
    assert report.missing == ["y.bias"] and report.unexpected == ["extra"]
    np.testing.assert_array_equal(net.parameters()["y.weight"], w)
    assert "extra" not in net.state_dict()


def test_a_partial_optimizer_state_is_refused():
    """README: load_state_dict loads all of the state or nothing, a missing name an error. A
    dict with Adam's m and v but no optimizer.step (or no v) loaded silently and mixed the
    net's own step count (or v) with the dict's; a dict of weights alone still loads."""
    rng = np.random.default_rng(0)
    feeds = {"image": rng.standard_normal((4, 12)).astype(np.float32),
             "label": np.array([0, 1, 2, 0], np.int32)}
    net = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    saved = net.state_dict()
    net.train_step(feeds)
    for drop in ("optimizer.step", "optimizer.v.logits.bias"):
        before = net.state_dict()
        partial = {k: v for k, v in saved.items() if k != drop}
        with pytest.raises(NNError, match=rf"no value for optimizer state {drop}"):
            net.load_state_dict(partial)
        for k, v in before.items():   # NOTE: nothing was copied
            np.testing.assert_array_equal(net.state_dict()[k], v, err_msg=k)
        report = net.load_state_dict(partial, strict=False)
        assert report.missing == [drop]
    net.load_state_dict(net.parameters())   # weights alone: the optimizer's state stays


def test_state_dict_carries_the_step_so_schedules_go_on():
    """Adam's bias correction reads optimizer.step; the warm-up reads net.step: a copy of the
    state must continue both, as the original net does."""
    rng = np.random.default_rng(0)
    feeds = {"image": rng.standard_normal((4, 12)).astype(np.float32),
             "label": np.array([0, 1, 2, 0], np.int32)}
    a = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    for _ in range(5):
        a.train_step(feeds)
    b = nnlang.compile(CLASSIFIER, batch=4, seed=1)
    b.load_state_dict(a.state_dict())
    assert b.step == 5 and b.learning_rate() == pytest.approx(0.6)
    a.train_step(feeds)
    b.train_step(feeds)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v, err_msg=k)


def test_a_state_dict_taken_before_the_first_step_resets_the_optimizer():
    """Before a step the optimizer had no slots, so such a dict held weights only and loading
    it after some steps kept Adam's m, v and the step count of those steps."""
    rng = np.random.default_rng(0)
    feeds = {"image": rng.standard_normal((4, 12)).astype(np.float32),
             "label": np.array([0, 1, 2, 0], np.int32)}
    net = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    s0 = net.state_dict()
    assert {"optimizer.step", "optimizer.m.logits.weight", "optimizer.v.logits.bias"} <= set(s0)
    net.train_step(feeds)
    net.train_step(feeds)
    net.load_state_dict(s0)
    assert net.step == 0
    net.train_step(feeds)
    fresh = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    fresh.train_step(feeds)
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[k], v, err_msg=k)
    sgd = nnlang.compile(CLASSIFIER.replace("adam(lr = 1.0)", "sgd(lr = 0.1)"), batch=4)
    assert [k for k in sgd.state_dict() if k.startswith("optimizer.")] == ["optimizer.step"]


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_gradients_of_inputs_on_request(backend):
    """The compiler computed input gradients (train_graph's wrt_inputs) but no API asked for
    them; checked against central differences of a numpy forward in float64."""
    src = CLASSIFIER.replace("logits = dense(image, 3)", "h = dense(image, 4) |> tanh\n"
                             "  logits = dense(h, 3)")
    rng = np.random.default_rng(0)
    feeds = {"image": rng.standard_normal((4, 12)), "label": np.array([0, 1, 2, 0], np.int32)}
    net = nnlang.compile(src, backend=backend, batch=4, seed=0, dtype="float64")
    p = net.parameters()

    def loss(x):
        h = np.tanh(x @ p["h.weight"] + p["h.bias"])
        return _softmax_ce(h, p["logits.weight"], p["logits.bias"], feeds["label"])

    got = net.gradients(feeds, inputs=("image",))
    x, want = feeds["image"], np.zeros((4, 12))
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = 1e-6
        want[i] = (loss(x + d) - loss(x - d)) / 2e-6
    np.testing.assert_allclose(got["image"], want, atol=1e-8)
    plain = net.gradients(feeds)
    assert set(got) == {*plain, "image"}
    for k, v in plain.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-12, err_msg=k)
    with pytest.raises(NNError, match="input 'label' is int32; only a float input"):
        net.gradients(feeds, inputs=("label",))
    with pytest.raises(NNError, match="'imgae' is not an input.*\n.*image, label"):
        net.gradients(feeds, inputs=("imgae",))
    for bad in (3, [["image"]]):   # NOTE: were a bare TypeError from building the name tuple
        with pytest.raises(NNError, match="give an input's name or a list of names"):
            net.gradients(feeds, inputs=bad)


def test_rows_of_a_flattened_feed_must_match_the_batch():
    """[N, 1, 3, 4] images for a [batch, 12] input reshape per row; one image beside four labels
    was broadcast into the batch and scored as four copies of itself."""
    net = nnlang.compile(CLASSIFIER, seed=0)
    rng = np.random.default_rng(1)
    img = rng.standard_normal((4, 1, 3, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 0])
    w, b = net.parameters()["logits.weight"], net.parameters()["logits.bias"]
    got = net.evaluate({"image": img, "label": labels})["ce"]
    assert got == pytest.approx(_softmax_ce(img.reshape(4, 12), w, b, labels), rel=1e-5)
    for rows in (1, 2):
        with pytest.raises(NNError, match=f"input 'image' has {rows} rows .* other inputs give "
                                          r"4; the model declares float32\[batch, 12\]"):
            net.evaluate({"image": img[:rows], "label": labels})
    fixed = nnlang.compile("model F {\n  input x: float32[4, 6]\n  output y = x * 2.0\n}\n")
    with pytest.raises(NNError, match=r"shape \[1, 6\], the model declares float32\[4, 6\]"):
        fixed.forward({"x": np.ones((1, 6), np.float32)})
    # NOTE: one example without its batch axis: the error says how to make it a batch, and the
    # batch of one it names gives the numpy answer
    with pytest.raises(NNError, match=r"has shape \[12\], the model declares float32\[batch, "
                                      r"12\]\n.*hint: one example is a batch of one: "
                                      r"image\[None\] \(shape \[1, 12\]\)"):
        net.evaluate({"image": img[0].ravel(), "label": labels[:1]})
    one = net.evaluate({"image": img[0].ravel()[None], "label": labels[:1]})["ce"]
    assert one == pytest.approx(_softmax_ce(img[:1].reshape(1, 12), w, b, labels[:1]), rel=1e-5)


def test_ids_too_large_for_the_inputs_dtype_are_refused_not_wrapped():
    net = nnlang.compile(CLASSIFIER, seed=0, batch=2)
    image = np.ones((2, 12), np.float32)
    for bad in (2**32 + 1, 2**31):
        with pytest.raises(NNError, match=f"holds the value {bad}, which int32 cannot hold"):
            net.evaluate({"image": image, "label": np.array([0, bad], np.int64)})
    ok = net.evaluate({"image": image, "label": np.array([0, 1], np.int64)})["ce"]
    assert np.isfinite(ok)


def test_labels_only_an_accuracy_reads_are_checked_as_class_ids():
    """A label fed only to accuracy (the loss reads other targets) was never checked: 99 or -5
    counted as a miss, a silent 0.0 (torchmetrics raises on such targets). Now it is the
    fed-id error at the accuracy; its ignore_index is still skipped."""
    src = ("model A {{\n  input x: float32[batch, 4]\n  input t: float32[batch, 3]\n"
           "  input y: int32[batch]\n  logits = dense(x, 3)\n  loss mse(logits, t)\n"
           "  metric acc = accuracy(logits, y{})\n}}\n")
    x = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    feeds = {"x": x, "t": np.zeros((4, 3), np.float32)}
    net = nnlang.compile(src.format(""), batch=4, seed=0)
    for bad in (99, -5):
        with pytest.raises(NNError, match=f"holds the id {bad}, outside the 3 values") as err:
            net.evaluate({**feeds, "y": np.array([0, 1, 2, bad], np.int32)})
        assert "accuracy(logits, y)" in str(err.value)
    skip = nnlang.compile(src.format(", ignore_index = -100"), batch=4, seed=0)
    y = np.array([0, 1, -100, 2], np.int32)
    guess = np.argmax(x @ skip.parameters()["logits.weight"] + skip.parameters()["logits.bias"],
                      axis=1)
    kept = y != -100
    assert skip.evaluate({**feeds, "y": y})["acc"] == pytest.approx(
        np.mean(guess[kept] == y[kept]))


def test_float16_labels_are_read_without_a_numpy_warning():
    """README: int or float data fed to an input is cast to its dtype. float16 labels made numpy
    warn "overflow encountered in cast" on every call (the range check compared them with
    int32's bounds, which float16 cannot hold), an error under -W error; the reference is the
    same labels as int32."""
    import warnings
    net = nnlang.compile(CLASSIFIER, seed=0, batch=4)
    image = np.random.default_rng(0).random((4, 12)).astype(np.float32)
    labels = np.array([0, 1, 2, 0])
    want = net.evaluate({"image": image, "label": labels.astype(np.int32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert net.evaluate({"image": image, "label": labels.astype(np.float16)}) == want
        with pytest.raises(NNError, match="holds the id 60000, outside the 3 values"):
            net.evaluate({"image": image, "label": np.array([0, 1, 2, 60000], np.float16)})


def test_a_scalar_input_takes_a_scalar():
    net = nnlang.compile("model S {\n  input x: float32[batch, 3]\n  input temp: float32[]\n"
                         "  output y = x / temp\n}\n")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for temp in (2.0, np.float32(2.0), np.array(2.0), [2.0]):
        np.testing.assert_allclose(net.forward({"x": x, "temp": temp})["y"], x / 2)
    with pytest.raises(NNError, match=r"shape \[2\]; the model declares float32\[\], one value"):
        net.forward({"x": x, "temp": [2.0, 4.0]})


def test_one_net_called_from_threads_gives_each_call_its_own_answer():
    net = nnlang.compile("model T {\n  input x: float32[batch, 64]\n"
                         "  output y = dense(relu(dense(x, 64)), 10)\n}\n", batch=32, seed=0)
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((32, 64)).astype(np.float32) for _ in range(4)]
    want = [net.forward({"x": x})["y"] for x in xs]
    wrong = []

    def work(i: int) -> None:
        for _ in range(150):
            k = (i + _) % len(xs)
            if not np.array_equal(net.forward({"x": xs[k]})["y"], want[k]):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("read", ["parameters", "state_dict"])
def test_reading_the_weights_waits_for_a_step_running_in_another_thread(backend, read):
    """README: a Net runs one call at a time, calls from several threads wait for each other.
    parameters() and state_dict() did not wait: read during another thread's train_step they
    gave a mix of the weights before and after it (seen with a reader thread polling a training
    one). Here the step is held at its start until the reader has asked (it is at the Net's
    lock, or has read already); the reader must get the weights after the step, as plain SGD
    computes them in numpy."""
    net = nnlang.compile(CLASSIFIER.replace("adam(lr = 1.0)", "sgd(lr = 0.5)")
                         .replace("\n  schedule = constant(warmup = 10)", ""),
                         backend=backend, batch=4, seed=0)
    rng = np.random.default_rng(0)
    feeds = {"image": rng.standard_normal((4, 12)).astype(np.float32),
             "label": np.array([0, 1, 2, 0], np.int32)}
    net.prepare("train", 4)
    exe = next(e for k, (e, _) in net._exes.items() if k[0] == "train")
    started, go, got = threading.Event(), threading.Event(), {}
    run = exe.run

    def held_run(*args, **kw):
        started.set()
        go.wait()   # NOTE: the test sets it
        return run(*args, **kw)
    exe.run = held_run
    p = net.parameters()
    x, w, b = feeds["image"].astype(np.float64), p["logits.weight"], p["logits.bias"]
    z = x @ w + b
    soft = np.exp(z - z.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    soft[np.arange(4), feeds["label"]] -= 1
    want = w - 0.5 * x.T @ soft / 4
    asked = threading.Event()

    class Watched:   # the Net's lock, saying when the reader comes to it
        def __init__(self, lock):
            self.lock = lock

        def __enter__(self):
            if threading.current_thread() is reader:
                asked.set()
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)
    net._lock, reader = Watched(net._lock), None
    trainer = threading.Thread(target=net.train_step, args=(feeds,))
    trainer.start()
    assert started.wait(120)
    reader = threading.Thread(target=lambda: got.update(getattr(net, read)()))
    reader.start()
    # NOTE: the step goes on once the reader has asked, waiting (now) or not (before); a
    # fixed 0.3 s let a loaded host go on before the reader had asked, and a reader that did
    # not wait then read after the step, which passed
    while not asked.wait(0.01) and reader.is_alive():
        pass
    go.set()
    trainer.join()
    reader.join()
    np.testing.assert_allclose(got["logits.weight"], want, rtol=1e-5, atol=1e-6)


def test_executables_for_other_batch_sizes_are_bounded():
    from nnlang.runtime.net import KEEP_LENGTHS
    net = nnlang.compile(DENSE, batch=8, seed=0)
    x = np.ones((64, 4), np.float32)
    for n in range(1, KEEP_LENGTHS + 12):
        assert net.forward({"x": x[:n]})["y"].shape == (n, 2)
    kept = [k for k in net._exes if k[0] == "predict"]
    assert len(kept) <= KEEP_LENGTHS + 2 and ("predict", 8) in kept


def test_the_reference_backend_returns_copies():
    net = nnlang.compile("model R {\n  input x: float32[batch, 3]\n  param w: float32[3] = ones"
                         "\n  output y = x\n  output ww = w\n}\n", backend="reference")
    x = np.ones((2, 3), np.float32)
    out = net.forward({"x": x})
    out["y"][:] = 5
    out["ww"][:] = 100
    np.testing.assert_array_equal(x, 1)
    np.testing.assert_array_equal(net.parameters()["w"], 1)


def test_compile_options_and_overrides():
    src = "model M(h = 3) {\n  input x: float32[batch, 4]\n  output y = dense(x, h)\n}\n"
    assert nnlang.compile(src, overrides={"h": 5}).parameters()["y.bias"].shape == (5,)
    with pytest.raises(NNError, match="this Program is built already"):
        nnlang.compile(nnlang.load(src), overrides={"h": 5})
    two = src + "model N {\n  input x: float32[batch, 2]\n  output y = x\n}\n"
    with pytest.raises(NNError, match="model_name=NAME"):
        nnlang.compile(two)
    assert list(nnlang.compile(two, model_name="N").forward(
        {"x": np.ones((1, 2), np.float32)})) == ["y"]
    bad = [(dict(dtype="float16"), "float32 or float64"), (dict(dtype="bogus"), "float32 or"),
           (dict(batch=0), "from 1 to"), (dict(batch=-3), "from 1 to"),
           (dict(batch=2**40), r"2\*\*31"),
           (dict(batch=2.5), "whole number"), (dict(seed=-1), "at least 0"),
           (dict(disable=("nope",)), "unknown pass"), (dict(disable="fsue"), "'fsue'")]
    for kwargs, words in bad:
        with pytest.raises(NNError, match=words):
            nnlang.compile(src, **kwargs)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(nnlang.compile(src, disable="fuse", seed=0).forward({"x": x})["y"],
                               nnlang.compile(src, seed=0).forward({"x": x})["y"], rtol=1e-6)
    with pytest.raises(NNError, match="not NoneType"):
        nnlang.compile(None)
    with pytest.raises(NNError, match="depth 0"):
        nnlang.dot(nnlang.compile(src), depth=0)


@pytest.mark.parametrize("value, words", [
    (np.full((2, 4), "a"), "holds text"),
    ([[1.0, 2.0, 3.0, 4.0], [1.0]], "rows have different lengths"),
    (np.ones((2, 4)) + 1j, "complex numbers"),
    (np.full((2, 4), None), "not numbers"),
    ((r for r in np.ones((2, 4))), "holds a generator"),
    (np.ones(4), r"shape \[4\], the model declares float32\[batch, 4\]"),
])
def test_feeds_that_are_not_numbers_are_named(value, words):
    net = nnlang.compile(DENSE)
    with pytest.raises(NNError, match=words):
        net.forward({"x": value})


def test_numbers_numpy_keeps_as_objects_are_read_as_numbers():
    """Python ints past int64 (numpy keeps them as objects) and a list given dtype=object
    were refused as "values that are not numbers"; they are numbers, checked as any others."""
    net = nnlang.compile(DENSE, seed=0)
    mixed = [[1, 2, 3, 4], [1, 2, 3, 4.5]]
    want = np.asarray(mixed, np.float64) @ net.parameters()["y.weight"] \
        + net.parameters()["y.bias"]
    np.testing.assert_allclose(net.forward({"x": np.array(mixed, dtype=object)})["y"], want,
                               rtol=1e-5)
    with pytest.raises(NNError, match="a whole number of 401 digits, too large"):
        net.forward({"x": [[10 ** 400] * 4] * 2})
    ids = nnlang.compile("model E {\n  input ids: int32[batch, 3]\n"
                         "  output y = embedding(ids, 5, 2)\n}\n")
    with pytest.raises(NNError, match=r"holds the value 1\.18\d*e\+21, which int32 cannot hold"):
        ids.forward({"ids": [[2 ** 70, 1, 2]]})


def test_restore_gives_the_trained_runs_net(tmp_path):
    """nnlang.restore(file, run): the run's overrides (hidden = 5, which the file's default of 8
    would not fit) and its checkpoint's parameters, the net `nnlang eval` uses."""
    from nnlang.train import checkpoint
    from nnlang.train.trainer import fit
    from tests.tiny_run import tiny_data, tiny_source
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(tiny_source())
    run = tmp_path / "run"
    fit(str(tmp_path / "tiny.nn"), {"epochs": 1}, str(tmp_path / "tiny.npz"), out=run,
        overrides={"hidden": 5}, max_steps=3, progress=False)
    net = nnlang.restore(str(tmp_path / "tiny.nn"), str(run))
    saved = checkpoint.load(str(run), prefer_best=True).state
    assert net.parameters()["h.weight"].shape == (4, 5)
    for name, value in net.parameters().items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)


def test_restore_keeps_the_optimizer_and_the_schedule_where_the_run_left_them(tmp_path):
    """nnlang.restore gives the trained run's Net with its optimizer state (Adam's moments, the
    step count) and its place in the schedule: a loop that trains on goes on from there, as
    `nnlang train --resume` does. It loaded the parameters only, so the step, the epoch and the
    moments started over and a step schedule was back at its base rate."""
    from nnlang.train import checkpoint
    from nnlang.train.trainer import fit
    from tests.tiny_run import tiny_data, tiny_source
    tiny_data(tmp_path)
    step = "batch = 4\n  schedule = step(step_size = 1, gamma = 0.5)"
    (tmp_path / "tiny.nn").write_text(tiny_source(val_split=None).replace("batch = 4", step))
    run = tmp_path / "run"
    fit(str(tmp_path / "tiny.nn"), {"epochs": 2}, str(tmp_path / "tiny.npz"), out=run,
        progress=False)
    saved = checkpoint.load(str(run))
    net = nnlang.restore(str(tmp_path / "tiny.nn"), str(run))
    assert (net.step, net.epoch) == (2 * 13, 2)          # 52 examples / batch 4 per epoch
    assert net.total_steps == 2 * 13
    assert net.learning_rate() == pytest.approx(0.05 * 0.5 ** 2)
    state = net.state_dict()
    assert sorted(state) == sorted(saved.state)
    for name, value in saved.state.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    # eval, predict, generate and export need the weights only: Adam's slots (twice the
    # weights) stay on disk
    from nnlang.ops.optim import OPTIMIZER_PREFIX
    from nnlang.train.inference import restore
    lean = restore(str(tmp_path / "tiny.nn"), str(run), optimizer=False)[0]
    assert sorted(lean.state) == sorted(k for k in saved.state
                                               if not k.startswith(OPTIMIZER_PREFIX))
    assert any(k.startswith(OPTIMIZER_PREFIX) for k in saved.state)
    x = {"x": np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)}
    np.testing.assert_array_equal(lean.forward(x)["probs"], net.forward(x)["probs"])


def test_a_comment_edit_is_no_change_to_the_trained_source(tmp_path):
    """The note that a file differs from the source its checkpoint was trained with fires for a
    change to the model, not for an edited comment or spacing (it did for any byte)."""
    import io

    from rich.console import Console

    from nnlang.train.inference import restore
    from nnlang.train.trainer import fit
    from tests.tiny_run import tiny_data, tiny_source
    tiny_data(tmp_path)
    source = tiny_source()
    (tmp_path / "tiny.nn").write_text(source)
    run = tmp_path / "run"
    fit(str(tmp_path / "tiny.nn"), {"epochs": 1}, str(tmp_path / "tiny.npz"), out=run,
        max_steps=2, progress=False)

    def notes(text: str) -> str:
        (tmp_path / "tiny.nn").write_text(text)
        out = io.StringIO()
        restore(str(tmp_path / "tiny.nn"), str(run), console=Console(file=out, width=200))
        return out.getvalue()
    edited = source.replace("h = dense(x, hidden) |> relu",
                            "# the hidden layer\n  h = dense(x,  hidden) |> relu  # one")
    assert "differs from the source" not in notes(edited)
    changed = source.replace("|> relu", "|> tanh")
    assert "differs from the source" in notes(changed)


def test_keys_that_are_not_names_and_a_step_count_that_is_not_one_are_refused():
    """feeds={0: x} and a state dict with an int key failed with AttributeError ('int' object
    has no attribute 'startswith'); an optimizer.step of -3 or 3.7 was loaded as the net's
    step (-3, or cut to 3) and NaN raised a bare ValueError."""
    net = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    x = np.ones((4, 12), np.float32)
    with pytest.raises(NNError, match=r"feeds: the key 0 \(int\) is not a name.*\n"
                                      r".*image, label"):
        net.evaluate({0: x})
    state = net.state_dict()
    for strict in (True, False):
        with pytest.raises(NNError, match=r"state dict: the key 5 \(int\) is not a name"):
            net.load_state_dict({**state, 5: np.ones(3)}, strict=strict)
    for bad in (-3, 3.7, np.nan, True):
        with pytest.raises(NNError, match=r"'optimizer.step' is .*: the optimizer's step count "
                                          "is a whole number of at least 0"):
            net.load_state_dict({**state, "optimizer.step": bad})
        assert net.step == 0
    net.load_state_dict({**state, "optimizer.step": 7.0})
    assert net.step == 7 and net.state_dict()["optimizer.step"] == 7


def test_prepare_and_graph_name_their_kind_and_batch():
    """prepare("bogus") compiled an evaluation executable under the key "bogus", prepare(batch=
    "4") one keyed by the text "4", and prepare(batch=0) silently the net's own batch."""
    net = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    with pytest.raises(NNError, match=r"prepare\(kind='evl'\): the kinds of executable are "
                                      r"train, eval, predict.*\n.*did you mean 'eval'"):
        net.prepare("evl")
    with pytest.raises(NNError, match=r"graph\(kind='bogus'\)"):
        net.graph("bogus")
    for bad in (0, "4", 2.0, -1):
        with pytest.raises(NNError, match=r"prepare\(batch=.*\): a batch size is a whole number"):
            net.prepare("predict", batch=bad)
    assert not net._exes
    net.prepare("predict", batch=3)
    assert list(net._exes) == [("predict", 3)]


def test_overrides_take_python_and_numpy_values_and_name_the_bad_ones():
    """np.int64(5) for a layer size was "dense() argument 'units': expected an integer, got 5";
    a list of pairs, an int key or model=3 failed with AttributeError (.lower); a numpy array
    or a dict went into the elaborator as is."""
    src = ("model M(h = 3, p = 0.5, sizes = [2, 3]) {\n  input x: float32[batch, 4]\n"
           "  output y = dropout(dense(x, h), p)\n  output z = dense(x, sizes[1])\n}\n")
    got = nnlang.load(src, {"h": np.int64(5), "p": np.float64(0.25),
                            "sizes": (4, np.int32(6))}).hparams
    assert got == {"h": 5, "p": 0.25, "sizes": [4, 6]}
    assert type(got["h"]) is int and type(got["p"]) is float
    net = nnlang.compile(src, overrides={"h": np.array(7)})
    assert net.parameters()["y.bias"].shape == (7,)
    bad = [([("h", 3)], "overrides are a list: give a dict"),
           ({3: 3}, r"overrides: the key 3 \(int\) is not a name"),
           ({"h": np.ones(2)}, r"overrides\['h'\] is an ndarray; a hyper-parameter is a number"),
           ({"sizes": [1, {}]}, r"overrides\['sizes'\] is a dict"),
           ({"p": float("nan")}, r"overrides\['p'\] = nan: a hyper-parameter is a finite")]
    for overrides, words in bad:
        with pytest.raises(NNError, match=words):
            nnlang.load(src, overrides)
    with pytest.raises(NNError, match="model=3: a model is chosen by its name"):
        nnlang.load(src, model=3)
    with pytest.raises(NNError, match=r"model=\['M'\]: a model is chosen by its name"):
        nnlang.compile(src, model_name=["M"])


def test_emit_and_dot_take_a_compiled_net_and_a_whole_depth():
    """nnlang.emit(program, "user") and nnlang.emit("model.nn", ...) failed with
    AttributeError ('Program' object has no attribute 'user'); dot(depth="2") with TypeError."""
    net = nnlang.compile(DENSE)
    for model in (nnlang.load(DENSE), DENSE):
        with pytest.raises(NNError, match=f"nnlang.emit takes a compiled Net, not a "
                                          f"{type(model).__name__}.*\n.*nnlang.compile"):
            nnlang.emit(model, "user")
        with pytest.raises(NNError, match="nnlang.dot takes a compiled Net"):
            nnlang.dot(model)
    for depth in ("2", 1.5, True):
        with pytest.raises(NNError, match=f"depth {depth!r}: it must be a whole number"):
            nnlang.dot(net, depth=depth)
    assert nnlang.dot(net, depth=np.int64(1)) == nnlang.dot(net, depth=1)


def test_arrays_numpy_cannot_read_are_named_not_taken_for_ragged_rows():
    """A bfloat16 torch tensor was "input 'x' is not an array: its rows have different
    lengths"; one that requires grad (and any object whose __array__ raises) escaped as a raw
    RuntimeError, from forward and from load_state_dict alike."""
    class Unreadable:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("Can't call numpy() on Tensor that requires grad")

    net = nnlang.compile(DENSE, seed=0)
    with pytest.raises(NNError, match=r"input 'x' \(an Unreadable\) cannot be read as a numpy "
                                      r"array: Can't call numpy\(\).*\n.*detach"):
        net.forward({"x": Unreadable()})
    with pytest.raises(NNError, match=r"state value 'y.bias' \(an Unreadable\) cannot be read"):
        net.load_state_dict({**net.state_dict(), "y.bias": Unreadable()})
    with pytest.raises(NNError, match="rows have different lengths"):
        net.forward({"x": [[1.0, 2.0, 3.0, 4.0], [1.0]]})


def test_torch_tensors_feed_as_their_numpy_arrays():
    torch = pytest.importorskip("torch")
    net = nnlang.compile(DENSE, seed=0)
    x = torch.randn(3, 4)
    want = net.forward({"x": x.numpy()})["y"]
    np.testing.assert_array_equal(net.forward({"x": x})["y"], want)
    with pytest.raises(NNError, match=r"input 'x' \(a Tensor\) cannot be read as a numpy array"):
        net.forward({"x": x.clone().requires_grad_()})
    with pytest.raises(NNError, match=r"input 'x' \(a Tensor\) cannot be read as a numpy array"):
        net.forward({"x": x.to(torch.bfloat16)})


def test_checkpoints_and_models_of_the_wrong_kind_are_named(tmp_path):
    """restore(net, run) failed with AttributeError (a Net has a graph() method, so it passed
    for a Program), compile(net) too; restore(file, None), compile(init_from=3) and
    export_onnx(path=3) with pathlib's TypeError; restore(batch=0) silently used the run's
    batch."""
    from nnlang.train.trainer import fit
    from tests.tiny_run import tiny_data, tiny_source
    tiny_data(tmp_path)
    nn = tmp_path / "tiny.nn"
    nn.write_text(tiny_source())
    run = tmp_path / "run"
    fit(str(nn), {"epochs": 1}, str(tmp_path / "tiny.npz"), out=run, max_steps=2,
        progress=False)
    net = nnlang.compile(nn, batch=4)
    for call in (lambda: nnlang.restore(net, run), lambda: nnlang.compile(net)):
        with pytest.raises(NNError, match="a model is a .nn path or source text, not Net"):
            call()
    with pytest.raises(NNError, match="the checkpoint is a path .*, not None"):
        nnlang.restore(nn, None)
    for bad, words in ((3, "not 3"), ({"h.weight": np.ones((4, 8))}, "not a dict")):
        with pytest.raises(NNError, match=f"init_from is a path .*, {words}"):
            nnlang.compile(nn, init_from=bad)
    with pytest.raises(NNError, match=r"export_onnx\(path=...\) is a path .*, not 3"):
        nnlang.export_onnx(net, path=3)
    with pytest.raises(NNError, match="batch=0: a batch size is a whole number"):
        nnlang.restore(nn, run, batch=0)
    assert nnlang.restore(nnlang.load(nn), run, batch=2).batch == 2



def test_last_metrics_is_empty_before_the_first_step():
    """It was set by the first train_step only: reading it before was AttributeError."""
    net = nnlang.compile(CLASSIFIER.replace("loss ce", "metric acc = accuracy(logits, label)\n"
                                            "  loss ce"), batch=4, seed=0)
    assert net.last_metrics == {}
    net.train_step({"image": np.ones((4, 12)), "label": [0, 1, 2, 0]})
    assert set(net.last_metrics) == {"acc"}


def test_optimizer_state_of_another_optimizer_is_not_this_nets():
    """Adam's moments loaded strictly into an SGD net were kept (never read) and written to
    every state_dict and checkpoint after; strict=True promises an error for a name the net
    does not know, and strict=False reports them as unexpected."""
    adam = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    adam.train_step({"image": np.ones((4, 12)), "label": [0, 1, 2, 0]})
    sgd = nnlang.compile(CLASSIFIER.replace("adam(lr = 1.0)", "sgd(lr = 0.1)"), batch=4)
    momentum = nnlang.compile(CLASSIFIER.replace("adam(lr = 1.0)", "sgd(lr = 0.1, momentum = "
                                                 "0.9)"), batch=4)
    with pytest.raises(NNError, match="'optimizer.m.logits.weight' is optimizer state that this "
                                      "net's sgd does not keep"):
        sgd.load_state_dict(adam.state_dict())
    report = sgd.load_state_dict(adam.state_dict(), strict=False)
    assert sorted(report.unexpected) == ["optimizer.m.logits.bias", "optimizer.m.logits.weight",
                                         "optimizer.v.logits.bias", "optimizer.v.logits.weight"]
    assert sorted(sgd.state_dict()) == ["logits.bias", "logits.weight", "optimizer.step"]
    np.testing.assert_array_equal(sgd.parameters()["logits.weight"],
                                  adam.parameters()["logits.weight"])
    assert sgd.step == 1
    state = momentum.state_dict()      # its own slots load, before and after a step
    assert "optimizer.momentum.logits.weight" in state
    momentum.load_state_dict(state)
    momentum.train_step({"image": np.ones((4, 12)), "label": [0, 1, 2, 0]})
    momentum.load_state_dict(momentum.state_dict())


def test_a_weight_too_large_for_the_nets_dtype_is_refused_not_made_infinite():
    net = nnlang.compile(DENSE, seed=0)
    before = net.parameters()
    w = np.full((4, 2), 0.5)
    w[1, 1] = 1e300
    with pytest.raises(NNError, match=r"state value 'y.weight' holds 1e\+300, which float32 "
                                      "cannot hold"):
        net.load_state_dict({"y.weight": w, "y.bias": np.zeros(2)})
    np.testing.assert_array_equal(net.parameters()["y.weight"], before["y.weight"])
    w[1, 1] = np.inf   # NOTE: infinity is infinity in any dtype: loaded as given
    net.load_state_dict({"y.weight": w, "y.bias": np.zeros(2)})
    assert net.parameters()["y.weight"][1, 1] == np.inf
    wide = nnlang.compile(DENSE, seed=0, dtype="float64")
    w[1, 1] = 1e300
    wide.load_state_dict({"y.weight": w, "y.bias": np.zeros(2)})
    assert wide.parameters()["y.weight"][1, 1] == 1e300


def test_a_feed_too_large_for_the_inputs_dtype_is_refused_not_made_infinite():
    """float64 data past float32's range became inf inside the net (numpy warned, the outputs
    were inf or NaN); the data loader refuses such values, and so does a call now."""
    net = nnlang.compile(DENSE, seed=0)
    x = np.ones((2, 4))
    x[1, 2] = -3e39
    with pytest.raises(NNError, match=r"input 'x' holds -3e\+39, which float32 cannot hold"):
        net.forward({"x": x})
    x[1, 2] = np.nan   # NOTE: NaN stays the caller's to feed, as in the data it came from
    assert np.isnan(net.forward({"x": x})["y"][1]).all()


def test_numpy_dtypes_and_none_for_no_passes_or_inputs_are_taken():
    """compile(dtype=np.float32) was "nets compute in float32 or float64" (and
    np.dtype("float64") was kept as a dtype object, not the name every other part reads);
    disable=None and gradients(inputs=None) failed with TypeError (None is not iterable);
    learning_rate("5") with TypeError, and learning_rate(-1) answered 0.0."""
    src = CLASSIFIER.replace("constant(warmup = 10)", "constant(warmup = 4)")
    for given, name in ((np.float32, "float32"), (np.dtype("float64"), "float64"),
                        (np.float64, "float64")):
        assert nnlang.compile(src, dtype=given).dtype == name
    assert nnlang.compile(src, dtype=None).dtype == "float32"   # the default: the model's
    for bad in ("f4", np.int32):
        with pytest.raises(NNError, match="nets compute in float32 or float64"):
            nnlang.compile(src, dtype=bad)
    net = nnlang.compile(src, batch=4, seed=0, disable=None)
    assert net.disable == ()
    with pytest.raises(NNError, match=r"disable=3: the names of passes"):
        nnlang.compile(src, disable=3)
    feeds = {"image": np.ones((4, 12)), "label": [0, 1, 2, 0]}
    assert net.gradients(feeds, inputs=None).keys() == net.gradients(feeds).keys()
    assert net.learning_rate(1) == pytest.approx(0.5)      # warm-up: (1 + 1) / 4 of lr 1.0
    assert net.learning_rate(np.int64(1)) == net.learning_rate(1)
    for bad in ("5", -1, 2.5, True):
        with pytest.raises(NNError, match=r"learning_rate\(step=.*\): a step is a whole number"):
            net.learning_rate(bad)


def test_load_of_a_program_gives_it_back():
    """nnlang.load(program) was "a model is a .nn path or source text, not Program", with the
    hint to pass "a Program from nnlang.load": it is returned as compile takes it."""
    program = nnlang.load(DENSE)
    assert nnlang.load(program) is program
    with pytest.raises(NNError, match="this Program is built already"):
        nnlang.load(program, {"h": 3})
    with pytest.raises(NNError, match="this Program is built already"):
        nnlang.load(program, model="M")


def test_ctrl_c_during_a_training_step_waits_for_the_whole_step(monkeypatch):
    """A KeyboardInterrupt landing inside train_step (between its kernels, or between the step
    and its counters) left net.step behind the optimizer's own step count (2 vs 12 after ten
    interrupted loops) and a half-applied update. A library loop's Ctrl-C now takes effect
    once the step is whole: the net equals one that took the same steps uninterrupted."""
    import signal
    feeds = {"image": np.linspace(-1, 1, 48, dtype=np.float32).reshape(4, 12),
             "label": np.array([0, 1, 2, 0], np.int32)}
    net = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    twin = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    net.train_step(feeds)
    exe = net._exes[("train", 4)][0]
    real = exe.run

    def pressed_mid_step(f, fetch=True):
        out = real(f, fetch)
        signal.raise_signal(signal.SIGINT)   # NOTE: the key, after the update, before counting
        return out
    monkeypatch.setattr(exe, "run", pressed_mid_step)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            net.train_step(feeds)
    finally:
        signal.signal(signal.SIGINT, old)
    twin.train_step(feeds)
    twin.train_step(feeds)
    assert net.step == 2 and int(net.state_dict()["optimizer.step"]) == 2
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[k], v, err_msg=k)


def test_a_nan_label_is_named_as_nan_and_where():
    """A NaN among float labels was "holds values that are not whole numbers", as for 2.5: a
    missing label is not a fraction to round, and neither error said which one."""
    net = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    x = np.ones((4, 12), np.float32)
    with pytest.raises(NNError, match=r"input 'label' holds NaN \(float float64, the first at "
                                      r"index \[2\]\).*\n.*drop or fill"):
        net.evaluate({"image": x, "label": np.array([0, 1, np.nan, np.nan])})
    with pytest.raises(NNError, match=r"holds values that are not whole numbers \(float "
                                      r"float32, the first at index \[3\]\)"):
        net.evaluate({"image": x, "label": np.array([0, 1, 2, 0.5], np.float32)})


def test_emit_of_a_model_without_a_loss_shows_its_prediction_graph():
    """nnlang.emit(net, "ir") defaulted to the train graph, so a model without a loss failed
    with "declares no loss, so it cannot be trained" where `nnlang compile --emit ir` shows
    the prediction graph; both take the same default now."""
    net = nnlang.compile(DENSE)
    assert nnlang.emit(net, "ir") == nnlang.emit(net, "ir", mode="predict")
    assert "matmul" in nnlang.emit(net, "ir")
    trained = nnlang.compile(CLASSIFIER)
    assert nnlang.emit(trained, "ir") == nnlang.emit(trained, "ir", mode="train")
    with pytest.raises(NNError, match="unknown mode ''"):
        nnlang.emit(net, "ir", mode="")


def test_any_seed_a_net_takes_trains_a_model_with_dropout(monkeypatch):
    """seed=2**62 (or more) compiled, then the first step of a model with dropout failed with
    OverflowError (the step's random-stream number is seed * 1,000,003 + step, cast to int64);
    a numpy uint64 seed wrapped around with a RuntimeWarning. Small seeds keep their stream."""
    import warnings
    src = ("model M {\n  input x: float32[batch, 4]\n  input t: float32[batch, 2]\n"
           "  h = dropout(dense(x, 8), 0.5)\n  output y = dense(h, 2)\n  loss mse(y, t)\n}\n")
    feeds = {"x": np.ones((2, 4)), "t": np.zeros((2, 2))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in (2**62, 2**70, np.uint64(2**64 - 1)):
            assert np.isfinite(nnlang.compile(src, seed=seed, batch=2).train_step(feeds))
    net = nnlang.compile(src, seed=7, batch=2)
    net.train_step(feeds)
    env, exe = {}, net._exes[("train", 2)][0]
    real = exe.run

    def spy(f, fetch=True):
        env.update(f)
        return real(f, fetch)
    monkeypatch.setattr(exe, "run", spy)
    net.train_step(feeds)
    assert env["_rng"] == 7 * 1_000_003 + 1


def test_deepcopy_gives_an_independent_net_in_the_same_place_and_pickle_says_why_not():
    """copy.deepcopy(net), a PyTorch loop's way to keep its best model, failed with TypeError
    (cannot pickle 'module' object), and so did pickle. The copy goes on exactly as the
    original does, and training one leaves the other as it was."""
    import copy
    import pickle
    feeds = {"image": np.linspace(-1, 1, 48).reshape(4, 12), "label": [0, 1, 2, 0]}
    net = nnlang.compile(CLASSIFIER, batch=4, seed=0, total_steps=20)
    for _ in range(3):
        net.train_step(feeds)
    twin = copy.deepcopy(net)
    assert (twin.step, twin.total_steps, twin.learning_rate()) == \
        (3, 20, net.learning_rate())
    kept = net.state_dict()
    assert twin.train_step(feeds) == net.train_step(feeds)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(twin.state_dict()[k], v, err_msg=k)
    twin.train_step(feeds)
    assert net.step == 4 and twin.step == 5
    untouched = copy.deepcopy(net)
    net.load_state_dict(kept)
    assert untouched.step == 4 and not np.array_equal(untouched.parameters()["logits.weight"],
                                                      kept["logits.weight"])
    with pytest.raises(NNError, match=r"a Net cannot be pickled.*\n.*state_dict"):
        pickle.dumps(net)
    with pytest.raises(NNError, match=r"copy.copy\(net\) would share .* use copy.deepcopy"):
        copy.copy(net)


def _raise(err: Exception):
    raise err


@pytest.mark.parametrize("make", [
    lambda: nnlang.compile(DENSE).forward({"x": np.zeros((2, 5), np.float32)}),
    lambda: nnlang.compile("model M {\n  input x: float32[batch, 4]\n  output y = dense(x, q)\n}"),
    lambda: nnlang.compile("model M {\n  output y = dense(1e999, 2)\n}"),
    lambda: _raise(DataError("download of file:///x failed", hint="check the path")),
])
def test_an_error_from_a_worker_process_reads_as_it_was_raised(make):
    """multiprocessing and ProcessPoolExecutor hand a worker's exception to the parent by pickle
    (so do copy.deepcopy and a notebook's saved state). An NNError came back as
    "error: error: input 'x' has shape ..." (its rendering taken for a new message), or
    "error: <string>:3:22: error: ...", its caret line no longer under the message; the copy
    must read, and know its place and hint, exactly as the original."""
    import copy
    import pickle
    with pytest.raises(NNError) as raised:
        make()
    err = raised.value
    for twin in (pickle.loads(pickle.dumps(err)), copy.deepcopy(err)):
        assert type(twin) is type(err) and str(twin) == str(err) and twin.args == err.args
        assert (twin.message, twin.span, twin.hint) == (err.message, err.span, err.hint)


def test_a_history_sent_to_another_process_says_what_to_send(tmp_path):
    """A hyper-parameter search maps `fit` over a process pool and returns its History: the
    pool pickles it, and the worker's error was "a Net cannot be pickled", about a Net the
    caller never sent (the History holds the trained net). It names the History and what to
    return instead; copy.deepcopy(history) still copies it, net and all."""
    import copy
    import pickle

    from nnlang.train.trainer import fit
    from tests.tiny_run import tiny_data, tiny_source
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(tiny_source())
    history = fit(str(tmp_path / "tiny.nn"), {"epochs": 1}, str(tmp_path / "tiny.npz"),
                  max_steps=2, save=False, progress=False)
    with pytest.raises(NNError, match=r"(?s)fit's History holds the trained Net.*"
                                      r"history\.test.*run_dir.*nnlang\.restore"):
        pickle.dumps(history)
    twin = copy.deepcopy(history)
    assert twin.losses == history.losses and twin.net is not history.net
    for k, v in history.net.parameters().items():
        np.testing.assert_array_equal(twin.net.parameters()[k], v)


def test_no_feeds_name_the_missing_input_and_a_model_without_inputs_runs():
    """forward({}) said "no inputs given", naming none (and without a hint), and a model with
    no inputs could not be run at all."""
    with pytest.raises(NNError, match=r"missing input 'image'\n.*image, label"):
        nnlang.compile(CLASSIFIER).evaluate({})
    net = nnlang.compile("model P {\n  param w: float32[3] = ones\n  output y = w * 2.0\n}\n")
    np.testing.assert_array_equal(net.forward({})["y"], [2.0, 2.0, 2.0])


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_a_float64_weight_in_a_float32_net_is_the_one_trained_and_reported(backend):
    """The state held a float32 copy of a weight declared float64 while each executable made
    its own float64 copy: train steps moved the train step's copy only, so parameters(),
    forward and the checkpoint still had the initial weight."""
    src = """model M {
  input x: float32[batch, 2]
  input y: float32[batch]
  param w: float64[2] = ones
  output p = sum(x * cast(w, dtype = "float32"), axis = 1)
  loss mse(p, y)
}
train M { optimizer = sgd(lr = 0.1) batch = 4 }"""
    net = nnlang.compile(src, backend=backend)
    feeds = {"x": np.ones((4, 2), np.float32), "y": np.zeros(4, np.float32)}
    net.train_step(feeds)
    # numpy: p = 2 per row, d mse / d w_j = mean over rows of 2 * p * x = 4, w = 1 - 0.1 * 4
    np.testing.assert_allclose(net.parameters()["w"], [0.6, 0.6], rtol=1e-6)
    np.testing.assert_allclose(net.forward(feeds)["p"], 1.2, rtol=1e-6)
    third = np.full(2, 1 / 3)
    net.load_state_dict({"w": third})
    assert net.parameters()["w"].dtype == np.float64
    np.testing.assert_array_equal(net.parameters()["w"], third)


def test_evaluate_of_several_losses_gives_their_total_as_train_step_does():
    """A model with several losses: `loss` is their total beside each by name, in evaluate as
    in train_step (it was each by name only, so a library loop had no total to report), and
    an unnamed loss expression among them gives its name to the total, as in training."""
    src = """
model Two {
  input x: float32[batch, 3]
  input y: float32[batch]
  p = dense(x, 1) |> squeeze(axis = -1)
  loss fit = mse(p, y)
  loss mean(p * p) * 0.5
  metric m = mae(p, y)
}
"""
    net = nnlang.compile(src, batch=4)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(4, 3)).astype(np.float32),
             "y": rng.normal(size=4).astype(np.float32)}
    w = net.parameters()
    p = feeds["x"] @ w["p.weight"][:, 0] + w["p.bias"][0]
    fit, extra = np.mean((p - feeds["y"]) ** 2), 0.5 * np.mean(p * p)
    got = net.evaluate(feeds)
    assert list(got) == ["loss", "fit", "m"]
    assert got["loss"] == pytest.approx(fit + extra, rel=1e-5)
    assert got["fit"] == pytest.approx(fit, rel=1e-5)
    assert got["m"] == pytest.approx(np.mean(np.abs(p - feeds["y"])), rel=1e-5)
    assert net.train_step(feeds) == pytest.approx(got["loss"], rel=1e-5)


def test_a_missing_input_beside_a_misspelt_feed_names_the_misspelling():
    # the error named only the model's inputs, so the feed dict's 'labels' read as given
    net = nnlang.compile(CLASSIFIER, backend="reference", batch=2)
    x = np.zeros((2, 12), np.float32)
    with pytest.raises(NNError) as e:
        net.evaluate({"image": x, "labels": np.zeros(2, np.int32)})
    assert "missing input 'label'" in str(e.value)
    assert "the feeds have 'labels', which is not an input: did you mean 'label'?" in \
        str(e.value)
    with pytest.raises(NNError, match="the model's inputs: image, label"):
        net.evaluate({"image": x, "target": np.zeros(2, np.int32)})


_TWO_NETS_IN_THREADS = """
import copy, threading
import numpy as np
import nnlang
src = '''model M {
  input x: float32[batch, 64]
  input y: int32[batch]
  logits = dense(x, 64) |> relu |> dropout(0.5) |> dense(3)
  loss cross_entropy(logits, y)
}
train M { optimizer = sgd(lr = 0.1) }
'''
rng = np.random.default_rng(0)
feeds = {"x": rng.random((64, 64), dtype=np.float32), "y": rng.integers(0, 3, 64).astype(np.int32)}
nets = [nnlang.compile(src, batch=64, seed=i) for i in range(2)]
alone = [copy.deepcopy(n) for n in nets]
for n in alone:
    for _ in range(100):
        n.train_step(feeds)
def train(n):
    for _ in range(100):
        n.train_step(feeds)
threads = [threading.Thread(target=train, args=(n,)) for n in nets]
for t in threads:
    t.start()
for t in threads:
    t.join()
for n, a in zip(nets, alone):
    for k, v in a.parameters().items():
        np.testing.assert_allclose(n.parameters()[k], v, rtol=1e-5, atol=1e-6)
print("same")
"""


def test_two_nets_trained_in_two_threads_train_as_each_alone():
    """Two Nets are independent, so two threads may each train one. With dropout (a numba
    parallel kernel draws its mask) the process aborted: numba's workqueue threading layer,
    which nnlang picks, refuses two parallel kernels launched at once ("Concurrent access has
    been detected"). Run in a child process, so such an abort is a failed test; the reference is
    the same nets trained one after the other."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _TWO_NETS_IN_THREADS], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]


def test_a_net_built_while_another_thread_builds_one_runs_its_own_kernels():
    """Two Nets compiled in two threads: the CPU backend (one per process) kept the kernels
    requested inside an executable's build in one dict for the process, so a net built in a
    second thread meanwhile took the first build's as its own outer one, and its kernels stayed
    unfilled until that build ended: run before then, TypeError "'NoneType' object is not
    callable". Here the other thread's build is held open; the net's answer is numpy's."""
    from nnlang.backends.base import get_backend
    backend = get_backend("numba")
    inside, done = threading.Event(), threading.Event()

    def other_build():
        with backend.together():
            inside.set()
            done.wait()   # NOTE: set by the test when done: a 30 s timeout let a slow cold
            # compile below end this build first, and the test passed without the overlap
    other = threading.Thread(target=other_build)
    other.start()
    try:
        assert inside.wait(120)
        net = nnlang.compile("model B {\n  input x: float32[batch, 7]\n"
                             "  output y = dense(x, 5) |> tanh\n}\n", batch=4, seed=0)
        x = np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32)
        p = net.parameters()
        np.testing.assert_allclose(net.forward({"x": x})["y"],
                                   np.tanh(x @ p["y.weight"] + p["y.bias"]), rtol=1e-5,
                                   atol=1e-6)
    finally:
        done.set()
        other.join()


_FORKED_CHILD = """
import multiprocessing as mp
import numpy as np
import nnlang
from nnlang.backends import blas
src = '''model M {
  input x: float32[batch, 1024]
  output y = dense(x, 512) |> relu |> dense(8)
}
'''
net = nnlang.compile(src, batch=256, seed=0)
x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
want = net.forward({"x": x})["y"]
blas.pool().submit(int).result()   # NOTE: the pool's threads exist in the parent either way
def child(q):
    got = []
    blas.run_parts([(got.append, (1,)), (got.append, (2,))])
    q.put((sorted(got), net.forward({"x": x})["y"]))
ctx = mp.get_context("fork")
q = ctx.Queue()
kid = ctx.Process(target=child, args=(q,))
kid.start()
kid.join(30)
if kid.is_alive():
    kid.kill()
    raise SystemExit("the forked child hangs")
parts, y = q.get(timeout=5)
assert parts == [1, 2], parts
np.testing.assert_array_equal(y, want)
print("same")
"""


def test_a_net_used_in_a_forked_child_runs_there():
    """A Net compiled and run in the parent, then used in a child made by fork
    (multiprocessing's default on Linux before Python 3.14, a data loader's workers): the
    child hung for good in its first split matmul. The pool of GEMM threads was the parent's:
    a fork copies the pool object but not its threads, and its idle count told the child's
    submits that a thread was waiting. The child must run the pool and the net, giving the
    parent's answer."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _FORKED_CHILD], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_during_another_threads_parallel_kernel_can_launch_its_own():
    """The lock that makes two threads' parallel kernels (dropout's mask) take turns was
    copied into a child forked while another thread held it, held for good: the child's
    first such kernel waited forever."""
    from nnlang.backends import numba_backend
    inside, done = threading.Event(), threading.Event()

    def launch():
        with numba_backend._PARALLEL_LAUNCH:
            inside.set()
            done.wait()   # NOTE: held until the child has answered (the test sets it)
    t = threading.Thread(target=launch)
    t.start()
    try:
        assert inside.wait(120)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if numba_backend._PARALLEL_LAUNCH.acquire(timeout=5) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        done.set()
        t.join()


@pytest.mark.parametrize("backend", [None, 3, ["numba"]])
def test_a_backend_that_is_not_a_name_is_named(backend):
    """compile(backend=None) (a caller's unset option) failed with AttributeError: 'NoneType'
    object has no attribute 'lower' from the hint about PyTorch's device names."""
    src = "model M {\n  input x: float32[batch, 4]\n  output y = dense(x, 2)\n}\n"
    with pytest.raises(NNError, match=r"(?s)unknown backend .*a backend is named by a str.*numba"):
        nnlang.compile(src, backend=backend)


@pytest.mark.parametrize("call, argument", [
    (lambda net: net.load_state_dict(net.parameters(), strict="no"), "strict"),
    (lambda net: net.train_step({}, fetch="no"), "fetch"),
    (lambda net: nnlang.dot(net, backward="yes"), "backward"),
    (lambda net: nnlang.dot(net, fused=1), "fused"),
    (lambda net: nnlang.dot(net, show_params="no"), "show_params"),
    (lambda net: nnlang.compile(DENSE, init_skip_mismatch="no"), "init_skip_mismatch"),
    (lambda net: fit(CLASSIFIER, save="no"), "save"),
    (lambda net: fit(CLASSIFIER, progress="no"), "progress"),
    (lambda net: fit(CLASSIFIER, init_skip_mismatch="yes"), "init_skip_mismatch"),
])
def test_a_bool_argument_takes_a_bool(call, argument):
    """A non-empty string is True: strict="no" loaded strictly (and its error was about a
    missing parameter), save="no" wrote a run directory. Any non-bool is an error naming the
    argument; numpy's bools are bools."""
    net = nnlang.compile(CLASSIFIER, batch=4, seed=0)
    with pytest.raises(NNError, match=rf"\b{argument}=\.\.\.\) is True or False, not "):
        call(net)
    report = net.load_state_dict({"logits.weight": net.parameters()["logits.weight"]},
                                 strict=np.False_)
    assert report.missing == ["logits.bias"]


@pytest.mark.parametrize("argument", ["out", "runs_root", "data_dir"])
def test_a_path_argument_of_fit_takes_a_path(argument):
    """fit(out=3) was a TypeError from pathlib, data_dir=3 was accepted and never read."""
    with pytest.raises(NNError, match=rf"fit\({argument}=\.\.\.\) is a path \(a str or a "
                                      r"pathlib.Path\), not 3"):
        fit(CLASSIFIER, **{argument: 3})


def test_a_type_named_in_an_error_takes_its_article():
    """Messages that name a value's type said "not a int", "overrides are a int": the
    article now follows the word (an int, an object, a dict)."""
    with pytest.raises(NNError, match=r"takes a compiled Net, not an int\n"):
        nnlang.dot(3)
    with pytest.raises(NNError, match=r"overrides are an int: give a dict"):
        nnlang.load(DENSE, overrides=5)
    with pytest.raises(NNError, match=r"overrides\['hidden'\] is an object; "):
        nnlang.load(DENSE, overrides={"hidden": object()})
    with pytest.raises(NNError, match=r"is a path \(a str or a pathlib.Path\), not a dict"):
        nnlang.save(nnlang.compile(DENSE), {})
    from nnlang.errors import with_article
    assert [with_article(w) for w in ("ndarray", "uint8", "8-digit", "UTF-16", "Net")] == \
        ["an ndarray", "a uint8", "an 8-digit", "a UTF-16", "a Net"]


@pytest.mark.parametrize("max_steps", ["3", 2.5, True, 0])
def test_fit_max_steps_is_a_whole_number(max_steps):
    """fit(max_steps="3") was a TypeError from `"3" < 1`; each non-count is an NNError."""
    with pytest.raises(NNError, match=r"max_steps=\) is a whole number of at least 1, not "
                                      + re.escape(repr(max_steps))):
        fit(CLASSIFIER, max_steps=max_steps)


def test_forward_of_a_model_without_an_output_is_refused_at_its_loss():
    """net.forward of a model that declares only a loss returned {} for any feeds, a wrong-shaped
    or missing input included: nothing was computed and nothing said so. It is refused, at the
    loss, naming the value to declare as an output (as export and predict say)."""
    net = nnlang.compile(CLASSIFIER)
    for feeds in ({"image": np.zeros((2, 7), np.float32)}, {}):
        with pytest.raises(NNError) as err:
            net.forward(feeds)
        text = err.value.render()
        assert "declares no output" in text and "loss ce = cross_entropy(logits" in text
        assert "^^^" in text and "hint: add `output logits`, the value this loss scores" in text
