"""The options ported tutorials write: cross_entropy's label_smoothing and ignore_index,
conv1d's padding = "causal", grouped convolution, huber and kl_div (log_target too). Values
and input gradients of a whole compiled model, on the reference and numba backends at float64
and float32, against numpy written here (analytic gradients; finite differences for the
convolution) and against PyTorch's functions when torch is installed (CI has no torch: the
numpy checks still run there)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import nnlang
from tests import reference as ref

BACKENDS = ["reference", "numba"]
DTYPES = ["float64", "float32"]
TOL = {"float64": 1e-10, "float32": 2e-5}
_COMPILED = {}


def _net(src, backend, dtype, batch):
    key = (src, backend, dtype, batch)
    if key not in _COMPILED:
        _COMPILED[key] = nnlang.compile(src, backend=backend, dtype=dtype, batch=batch, seed=0)
    return _COMPILED[key]


def _loss_and_grad(src, feeds, backend, dtype, wrt):
    net = _net(src, backend, dtype, len(next(iter(feeds.values()))))
    feeds = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in feeds.items()}
    (loss,) = net.evaluate(feeds).values()
    return loss, net.gradients(feeds, inputs=(wrt,))[wrt]


def _close(got, want, dtype):
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# *** cross_entropy(label_smoothing =, ignore_index =) ***

def _ce_numpy(z, y, e, ignore):
    """Loss and d loss / d logits written out: rows (1 - e) * onehot + e / C against softmax,
    kept rows only, the mean over the kept ones (0 when none is kept)."""
    c = z.shape[-1]
    if np.issubdtype(y.dtype, np.integer):
        keep = np.ones(y.shape, bool) if ignore is None else y != ignore
        target = np.zeros(z.shape)
        np.put_along_axis(target, np.where(keep, y, 0)[..., None], 1.0, axis=-1)
    else:
        keep, target = np.ones(y.shape[:-1], bool), y
    target = (1 - e) * target + e / c
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    n = max(keep.sum(), 1)
    rows = -(target * logp).sum(-1)
    return (rows * keep).sum() / n, (_softmax(z) - target) * keep[..., None] / n


CE_CASES = [  # (logits shape, label_smoothing, ignore_index)
    ((6, 5), 0.1, None), ((6, 5), 0.0, 2), ((6, 5), 0.2, 0), ((3, 4, 5), 0.1, 4),
    ((3, 4, 5), 0.0, -100)]


def _ce_src(shape, e, ignore, probs=False, weight=None):
    rows = ", ".join(["batch", *map(str, shape[1:-1])])
    labels = f"float32[{rows}, {shape[-1]}]" if probs else f"int32[{rows}]"
    opts = f", label_smoothing = {e}" + ("" if ignore is None else f", ignore_index = {ignore}")
    opts += "" if weight is None else f", weight = {weight}"
    return (f"model M {{\n  input z: float32[{rows}, {shape[-1]}]\n  input y: {labels}\n"
            f"  output p = softmax(z)\n  loss cross_entropy(z, y{opts})\n}}\n")


def _ce_feeds(shape, seed=0):
    rng = np.random.default_rng(seed)
    return {"z": 2 * rng.normal(size=shape),
            "y": rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,e,ignore", CE_CASES)
def test_cross_entropy_options_match_numpy(shape, e, ignore, dtype, backend):
    f = _ce_feeds(shape)
    if ignore is not None and ignore >= 0:
        f["y"].flat[::3] = ignore                    # some rows ignored, not all
    loss, grad = _loss_and_grad(_ce_src(shape, e, ignore), f, backend, dtype, "z")
    want, want_grad = _ce_numpy(f["z"], f["y"], e, ignore)
    _close(loss, want, dtype)
    _close(grad, want_grad, dtype)
    assert loss == pytest.approx(ref.cross_entropy(f["z"], f["y"], label_smoothing=e,
                                                   ignore_index=ignore), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("e", [0.0, 0.3])
def test_cross_entropy_smoothing_of_probability_targets_matches_numpy(e, backend):
    rng = np.random.default_rng(3)
    f = {"z": rng.normal(size=(4, 6)), "y": _softmax(rng.normal(size=(4, 6)))}
    loss, grad = _loss_and_grad(_ce_src((4, 6), e, None, probs=True), f, backend, "float64", "z")
    want, want_grad = _ce_numpy(f["z"], f["y"], e, None)
    _close(loss, want, "float64")
    _close(grad, want_grad, "float64")


@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.0, 3.0, 1.5]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_with_every_row_ignored_is_zero_not_nan(backend, weight):
    """PyTorch gives nan (0 / 0) for a batch whose rows are all ignored; nnlang's documented
    choice is a loss of 0 and a zero gradient, so an all-padding batch cannot stop a run; with
    class weights too (their divisor, the kept rows' weights, is 0 as well)."""
    f = _ce_feeds((3, 4, 5))
    f["y"][:] = 0
    loss, grad = _loss_and_grad(_ce_src((3, 4, 5), 0.1, 0, weight=weight), f, backend,
                                "float64", "z")
    assert loss == 0.0 and not grad.any()


# *** accuracy(ignore_index =): the rows cross_entropy leaves out, left out of the metric ***

ACC_CASES = [((7, 4), 0), ((3, 5, 4), -100), ((3, 5, 4), 2)]


def _acc_src(shape, ignore):
    rows = ", ".join(["batch", *map(str, shape[1:-1])])
    return (f"model M {{\n  input z: float32[{rows}, {shape[-1]}]\n  input y: int32[{rows}]\n"
            f"  loss cross_entropy(z, y, ignore_index = {ignore})\n"
            f"  metric acc = accuracy(z, y, ignore_index = {ignore})\n}}\n")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,ignore", ACC_CASES)
def test_accuracy_ignore_index_leaves_the_rows_out(shape, ignore, backend):
    """A seq2seq or padded classifier trained with cross_entropy(..., ignore_index = k) counted
    its ignored rows as misses (or, for a pad id the model predicts, as hits) in accuracy,
    which had no ignore_index. torchmetrics' MulticlassAccuracy(ignore_index = k): the rows
    labelled k are left out of the hits and the count (numpy written here; 0 when all are)."""
    f = _ce_feeds(shape, seed=4)
    pred = f["z"].argmax(-1)
    f["y"].flat[::2] = pred.flat[::2]                 # some hits, some misses
    f["y"].flat[1::3] = ignore                        # some rows ignored
    if ignore >= 0:
        f["z"].reshape(-1, shape[-1])[::3, ignore] = 50.0   # ignored rows predicted as k: no hit
    net = _net(_acc_src(shape, ignore), backend, "float64", shape[0])
    keep = f["y"] != ignore
    want = (f["z"].argmax(-1) == f["y"])[keep].mean()
    assert 0 < want < 1
    assert net.evaluate(f)["acc"] == pytest.approx(want, rel=1e-12)
    f["y"][:] = ignore
    assert net.evaluate(f)["acc"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels", ["int32", "float32"])
def test_binary_accuracy_ignore_index_leaves_the_entries_out(labels, backend):
    """torchmetrics' BinaryAccuracy(ignore_index = -100) on a multi-label head with padded
    entries: they are left out of the hits and the count (numpy written here)."""
    rng = np.random.default_rng(6)
    p = rng.uniform(size=(5, 3))
    y = rng.integers(0, 2, (5, 3))
    y.flat[::4] = -100
    src = (f"model M {{\n  input p: float32[batch, 3]\n  input y: {labels}[batch, 3]\n"
           "  loss mean(p * p)\n  metric acc = binary_accuracy(p, y, ignore_index = -100)\n}\n")
    net = _net(src, backend, "float64", 5)
    keep = y != -100
    want = ((p > 0.5) == (y > 0.5))[keep].mean()
    assert net.evaluate({"p": p, "y": y.astype(labels)})["acc"] == pytest.approx(want, rel=1e-12)


def test_accuracy_ignore_index_matches_pytorch():
    torch = pytest.importorskip("torch")
    shape, ignore = (3, 5, 4), 1
    f = _ce_feeds(shape, seed=5)
    f["y"].flat[::4] = ignore
    z, y = torch.from_numpy(f["z"]), torch.from_numpy(f["y"]).long()
    keep = y != ignore
    want = (z.argmax(-1) == y)[keep].double().mean().item()
    got = _net(_acc_src(shape, ignore), "numba", "float32", shape[0]).evaluate(
        {"z": f["z"].astype(np.float32), "y": f["y"]})["acc"]
    assert got == pytest.approx(want, rel=1e-6)


def _masked_ce_feeds():
    """Logits with -inf at classes no row is labelled with (a vocabulary mask, or float32's
    overflow of z - max): the loss is finite, each row's -log_softmax at its label."""
    f = _ce_feeds((4, 5), seed=2)
    f["y"][:] = [1, 2, 4, 2]
    f["z"][:, 0] = f["z"][1, 3] = -np.inf
    return f


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", ["", ", ignore_index = 4", ", weight = [1.0, 2.0, 0.5, 1.0, 3.0]"])
def test_cross_entropy_over_masked_logits_is_finite(opts, dtype, backend):
    """A -inf logit at a class other than the label is a probability of 0 there; the label's
    log-probability was picked as sum(one_hot * log_softmax), where 0 * -inf is nan, so such
    a batch had loss nan (the NaN guard stops the run) while its gradient was finite."""
    f = _masked_ce_feeds()
    src = _ce_src((4, 5), 0.0, None).replace("label_smoothing = 0.0", opts.lstrip(", ") or
                                             "label_smoothing = 0.0")
    loss, grad = _loss_and_grad(src, f, backend, dtype, "z")
    z, y = f["z"], f["y"]
    with np.errstate(divide="ignore"):
        nll = -(z[np.arange(4), y] - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))
                - z.max(1))
    w = {"": np.ones(5), ", ignore_index = 4": np.array([1.0, 1, 1, 1, 0]),
         ", weight = [1.0, 2.0, 0.5, 1.0, 3.0]": np.array([1.0, 2, 0.5, 1, 3])}[opts][y]
    _close(loss, (w * nll).sum() / w.sum(), dtype)
    want_grad = (_softmax(z) - np.eye(5)[y]) * (w / w.sum())[:, None]
    _close(grad, want_grad, dtype)


IGNORED_MASKED = ["", ", label_smoothing = 0.1", ", weight = [1.0, 2.0, 0.5, 1.0, 3.0]"]


def _ignored_masked_feeds():
    """Rows labelled with the ignored id 0 whose logit there is -inf (the padding id masked
    out of the vocabulary, and the padding rows left out of the loss)."""
    f = _ce_feeds((4, 5), seed=3)
    f["y"][:] = [1, 0, 4, 0]
    f["z"][[1, 3], 0] = -np.inf
    return f


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opts", IGNORED_MASKED)
def test_cross_entropy_of_ignored_rows_with_a_masked_label_is_the_kept_rows(opts, backend):
    """An ignored row's label at a -inf logit has an infinite row loss, which the mean over
    the kept rows multiplied by its 0 (0 * inf): the loss was nan (the NaN guard stops the
    run) where PyTorch leaves the row out and gives the kept rows' mean."""
    f = _ignored_masked_feeds()
    src = _ce_src((4, 5), 0.0, 0).replace("label_smoothing = 0.0, ", opts.lstrip(", ") + ", "
                                          if opts else "")
    loss, grad = _loss_and_grad(src, f, backend, "float64", "z")
    keep = f["y"] != 0
    z, y = f["z"][keep], f["y"][keep]
    e = 0.1 if "smoothing" in opts else 0.0
    w = np.array([1.0, 2, 0.5, 1, 3]) if "weight" in opts else np.ones(5)
    target = (1 - e) * np.eye(5)[y] + e / 5
    rows = -(target * w * np.log(_softmax(z))).sum(-1)
    _close(loss, rows.sum() / w[y].sum(), "float64")
    want = np.zeros_like(f["z"])
    p = _softmax(z)
    wt = target * w   # d rows / d z = p * sum(w t) - w t, over the divisor
    want[keep] = (p * wt.sum(-1, keepdims=True) - wt) / w[y].sum()
    _close(grad, want, "float64")


@pytest.mark.parametrize("opts", IGNORED_MASKED)
def test_cross_entropy_of_ignored_rows_with_a_masked_label_matches_pytorch(opts):
    torch = pytest.importorskip("torch")
    f = _ignored_masked_feeds()
    src = _ce_src((4, 5), 0.0, 0).replace("label_smoothing = 0.0, ", opts.lstrip(", ") + ", "
                                          if opts else "")
    loss, grad = _loss_and_grad(src, f, "numba", "float64", "z")
    z = torch.tensor(f["z"], requires_grad=True)
    kw = {"label_smoothing": 0.1} if "smoothing" in opts else {}
    if "weight" in opts:
        kw["weight"] = torch.tensor([1.0, 2, 0.5, 1, 3], dtype=torch.float64)
    want = torch.nn.functional.cross_entropy(z, torch.from_numpy(f["y"]).long(),
                                             ignore_index=0, **kw)
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grad, z.grad.numpy(), "float64")


def test_cross_entropy_over_masked_logits_matches_pytorch():
    torch = pytest.importorskip("torch")
    f = _masked_ce_feeds()
    loss, grad = _loss_and_grad(_ce_src((4, 5), 0.0, None), f, "numba", "float64", "z")
    z = torch.tensor(f["z"], requires_grad=True)
    want = torch.nn.functional.cross_entropy(z, torch.from_numpy(f["y"]).long())
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grad, z.grad.numpy(), "float64")


@pytest.mark.parametrize("shape,e,ignore", CE_CASES)
def test_cross_entropy_options_match_pytorch(shape, e, ignore):
    torch = pytest.importorskip("torch")
    f = _ce_feeds(shape, seed=1)
    if ignore is not None and ignore >= 0:
        f["y"].flat[::2] = ignore
    loss, grad = _loss_and_grad(_ce_src(shape, e, ignore), f, "numba", "float64", "z")
    z = torch.tensor(f["z"], requires_grad=True)
    # NOTE: torch wants classes on axis 1: [batch, classes, time]
    want = torch.nn.functional.cross_entropy(
        z if z.dim() == 2 else z.permute(0, 2, 1), torch.from_numpy(f["y"]).long(),
        label_smoothing=e, ignore_index=-100 if ignore is None else ignore)
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grad, z.grad.numpy(), "float64")


def test_cross_entropy_smoothing_of_probability_targets_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    f = {"z": rng.normal(size=(5, 3)), "y": _softmax(rng.normal(size=(5, 3)))}
    loss, grad = _loss_and_grad(_ce_src((5, 3), 0.25, None, probs=True), f, "numba", "float64",
                                "z")
    z = torch.tensor(f["z"], requires_grad=True)
    want = torch.nn.functional.cross_entropy(z, torch.from_numpy(f["y"]), label_smoothing=0.25)
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grad, z.grad.numpy(), "float64")


# *** cross_entropy(weight =) and bce_with_logits(pos_weight =), PyTorch's class weights ***

def _fd(f, x, eps=1e-6):
    """Central finite differences of the scalar numpy function f at x."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


WEIGHTED_CE = [  # (logits shape, weight, label_smoothing, ignore_index, probabilities)
    ((6, 4), [0.5, 2.0, 1.0, 3.0], 0.0, None, False),
    ((6, 4), [0.5, 2.0, 0.0, 3.0], 0.2, None, False),
    ((3, 4, 3), [1.5, 0.25, 4.0], 0.1, 1, False),
    ((6, 4), [1.0, 2.0, 0.5, 3.0], 0.0, 0, False),
    ((5, 3), [0.5, 2.0, 1.5], 0.3, None, True)]


def _weighted_ce_feeds(shape, probs, ignore, seed=0):
    rng = np.random.default_rng(seed)
    f = {"z": 2 * rng.normal(size=shape)}
    if probs:
        f["y"] = _softmax(rng.normal(size=shape))
    else:
        f["y"] = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
        if ignore is not None:
            f["y"].flat[::3] = ignore
    return f


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,weight,e,ignore,probs", WEIGHTED_CE)
def test_cross_entropy_class_weights_match_numpy(shape, weight, e, ignore, probs, dtype,
                                                 backend):
    """sum(w[y_i] * loss_i) / sum(w[y_i]) over the kept rows (the plain mean over rows for
    probabilities), smoothing's mean over classes weighted too: numpy, and finite
    differences of it for the gradient."""
    f = _weighted_ce_feeds(shape, probs, ignore)
    src = _ce_src(shape, e, ignore, probs=probs, weight=weight)
    loss, grad = _loss_and_grad(src, f, backend, dtype, "z")
    want = lambda z: ref.cross_entropy(z, f["y"], label_smoothing=e, ignore_index=ignore,  # noqa
                                       weight=weight)
    _close(loss, want(f["z"]), dtype)
    np.testing.assert_allclose(grad, _fd(want, f["z"]), rtol=1e-5 if dtype == "float32" else 1e-7,
                               atol=1e-6 if dtype == "float32" else 1e-9)


@pytest.mark.parametrize("shape,weight,e,ignore,probs", WEIGHTED_CE)
def test_cross_entropy_class_weights_match_pytorch(shape, weight, e, ignore, probs):
    torch = pytest.importorskip("torch")
    f = _weighted_ce_feeds(shape, probs, ignore, seed=2)
    src = _ce_src(shape, e, ignore, probs=probs, weight=weight)
    loss, grad = _loss_and_grad(src, f, "numba", "float64", "z")
    z = torch.tensor(f["z"], requires_grad=True)
    y = torch.from_numpy(f["y"]) if probs else torch.from_numpy(f["y"]).long()
    # NOTE: torch wants classes on axis 1: [batch, classes, time]
    want = torch.nn.functional.cross_entropy(
        z if z.dim() == 2 else z.permute(0, 2, 1), y if y.dim() < 3 else y.permute(0, 2, 1),
        weight=torch.tensor(weight, dtype=torch.float64), label_smoothing=e,
        ignore_index=-100 if ignore is None else ignore)
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grad, z.grad.numpy(), "float64")


POS_WEIGHT = [(3.0, (6, 3)), ([0.5, 1.0, 4.0], (6, 3)), (2.5, (6,)), (0.25, (6, 1))]


def _bce_src(pos_weight, shape):
    target = "float32[batch]" if len(shape) == 1 or shape[-1] == 1 else \
        f"float32[batch, {shape[-1]}]"
    z = "float32[batch]" if len(shape) == 1 else f"float32[batch, {shape[-1]}]"
    return (f"model M {{\n  input z: {z}\n  input y: {target}\n  output q = z\n"
            f"  loss bce_with_logits(z, y, pos_weight = {pos_weight})\n}}\n")


def _bce_feeds(shape, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, shape[:1] if len(shape) == 1 or shape[-1] == 1 else shape)
    return {"z": 3 * rng.normal(size=shape), "y": y.astype(np.float64)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos_weight,shape", POS_WEIGHT)
def test_bce_with_logits_pos_weight_matches_numpy(pos_weight, shape, dtype, backend):
    """-mean(p y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))), p per column of a list."""
    f = _bce_feeds(shape)
    loss, grad = _loss_and_grad(_bce_src(pos_weight, shape), f, backend, dtype, "z")
    want = lambda z: ref.bce_with_logits(z, f["y"], pos_weight=pos_weight)  # noqa: E731
    _close(loss, want(f["z"]), dtype)
    np.testing.assert_allclose(grad, _fd(want, f["z"]), rtol=1e-5 if dtype == "float32" else 1e-7,
                               atol=1e-6 if dtype == "float32" else 1e-9)


@pytest.mark.parametrize("pos_weight,shape", POS_WEIGHT)
def test_bce_with_logits_pos_weight_matches_pytorch(pos_weight, shape):
    torch = pytest.importorskip("torch")
    f = _bce_feeds(shape, seed=3)
    f["z"][0] = 40.0                                  # saturated: stays finite
    loss, grad = _loss_and_grad(_bce_src(pos_weight, shape), f, "numba", "float64", "z")
    z = torch.tensor(f["z"], requires_grad=True)
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        z.reshape(f["y"].shape), torch.from_numpy(f["y"]),
        pos_weight=torch.tensor(pos_weight, dtype=torch.float64))
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grad, z.grad.numpy(), "float64")


@pytest.mark.parametrize("line,words", [
    ("loss cross_entropy(z, y, weight = [1.0, 2.0])", ["2 weights", "last axis of 4"]),
    ("loss cross_entropy(z, y, weight = 2.0)", ["one number per class", "2.0 * cross_entropy"]),
    ("loss cross_entropy(z, y, weight = [1.0, -1.0, 1.0, 1.0])", ["negative"]),
    ("loss bce_with_logits(z, b, pos_weight = [1.0, 2.0])", ["2 weights", "last axis of 4"]),
    ("loss bce_with_logits(z, b, pos_weight = -1.0)", ["negative"]),
    ("loss cross_entropy(p, y, weight = [1.0, 2.0, 3.0])", ["3 weights", "[seq]", "varies"]),
    ("loss bce_with_logits(p, p, pos_weight = [1.0, 2.0])", ["2 weights", "[seq]", "varies"]),
])
def test_class_weights_of_the_wrong_size_are_located_errors(line, words):
    src = ("model M {\n  symbol seq\n  input z: float32[batch, 4]\n  input y: int32[batch]\n"
           f"  input b: float32[batch, 4]\n  input p: float32[batch, seq]\n  output q = z\n"
           f"  {line}\n}}\n")
    with pytest.raises(nnlang.NNError) as err:
        nnlang.load(src)
    text = str(err.value)
    assert ":8:" in text and all(w in text for w in words), text


# *** huber and kl_div ***

def _huber_src(delta):
    return ("model M {\n  input p: float32[batch, 7]\n  input t: float32[batch, 7]\n"
            f"  output q = p\n  loss huber(p, t, delta = {delta})\n}}\n")


def _kl_src():
    return ("model M {\n  input z: float32[batch, 3, 6]\n  input t: float32[batch, 3, 6]\n"
            "  output q = z\n  loss kl_div(log_softmax(z), t)\n}\n")


def _huber_feeds(delta):
    rng = np.random.default_rng(5)
    p = 2 * rng.normal(size=(4, 7))
    t = p + delta * rng.choice([-3.0, -0.5, 0.0, 0.4, 2.0], size=p.shape)  # both sides
    return {"p": p, "t": t}


def _kl_feeds():
    rng = np.random.default_rng(6)
    t = _softmax(rng.normal(size=(4, 3, 6)))
    t[0, 0, :2] = 0.0                                # target 0: contributes 0 (xlogy)
    return {"z": rng.normal(size=(4, 3, 6)), "t": t / t.sum(-1, keepdims=True)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_matches_numpy(delta, dtype, backend):
    f = _huber_feeds(delta)
    loss, grad = _loss_and_grad(_huber_src(delta), f, backend, dtype, "p")
    d = f["p"] - f["t"]
    want = np.where(np.abs(d) < delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta)).mean()
    _close(loss, want, dtype)
    _close(grad, np.clip(d, -delta, delta) / d.size, dtype)


def _huber_outlier_feeds():
    f = _huber_feeds(1.0)
    f["p"][0, :3] = [np.inf, -np.inf, 1e30]   # outliers huber is for: the linear side
    return f


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_huber_gradient_of_an_infinite_residual_is_the_linear_sides(dtype, backend):
    """huber's gradient is clip(d, -delta, delta) / n at any residual (PyTorch's). At d = inf
    it was nan: where's unselected quadratic side still took 0 * d = 0 * inf."""
    f = _huber_outlier_feeds()
    loss, grad = _loss_and_grad(_huber_src(1.0), f, backend, dtype, "p")
    with np.errstate(invalid="ignore", over="ignore"):
        d = (f["p"] - f["t"]).astype(dtype)
    assert loss == np.inf
    _close(grad, np.clip(d, -1.0, 1.0) / d.size, dtype)


def test_huber_gradient_of_an_infinite_residual_matches_pytorch():
    torch = pytest.importorskip("torch")
    f = _huber_outlier_feeds()
    _, grad = _loss_and_grad(_huber_src(1.0), f, "numba", "float64", "p")
    p = torch.tensor(f["p"], requires_grad=True)
    torch.nn.functional.huber_loss(p, torch.from_numpy(f["t"])).backward()
    _close(grad, p.grad.numpy(), "float64")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_div_matches_numpy(dtype, backend):
    """batchmean: the sum over every element divided by the batch (4) only, not 4 * 3 rows."""
    f = _kl_feeds()
    loss, grad = _loss_and_grad(_kl_src(), f, backend, dtype, "z")
    t, logq = f["t"], ref.log_softmax(f["z"])
    plogp = t * np.log(np.where(t > 0, t, 1.0))
    _close(loss, (plogp - t * logq).sum() / 4, dtype)
    # d/dz of -sum(t * log_softmax(z)) / B = (softmax(z) * sum(t) - t) / B
    _close(grad, (_softmax(f["z"]) * t.sum(-1, keepdims=True) - t) / 4, dtype)


@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_matches_pytorch(delta):
    torch = pytest.importorskip("torch")
    f = _huber_feeds(delta)
    loss, grad = _loss_and_grad(_huber_src(delta), f, "numba", "float64", "p")
    p = torch.tensor(f["p"], requires_grad=True)
    want = torch.nn.functional.huber_loss(p, torch.from_numpy(f["t"]), delta=delta)
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grad, p.grad.numpy(), "float64")


def test_kl_div_matches_pytorch():
    torch = pytest.importorskip("torch")
    f = _kl_feeds()
    loss, grad = _loss_and_grad(_kl_src(), f, "numba", "float64", "z")
    z = torch.tensor(f["z"], requires_grad=True)
    want = torch.nn.functional.kl_div(torch.log_softmax(z, -1), torch.from_numpy(f["t"]),
                                      reduction="batchmean")
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grad, z.grad.numpy(), "float64")


# *** kl_div(log_target = true) ***

_KL_LOG_SRC = ("model M {\n  input z: float32[batch, 3, 6]\n  input s: float32[batch, 3, 6]\n"
               "  output q = z\n  loss kl_div(log_softmax(z), log_softmax(s), log_target = true)"
               "\n}\n")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_div_with_log_target_matches_numpy(dtype, backend):
    """A distillation's teacher as log-probabilities: the loss is the probability form's on
    softmax(s), and both inputs' gradients are KL's (by z: (q * sum(p) - p) / B; by s:
    p * (log p - log q - KL_row) / B, written out)."""
    f = _kl_feeds()
    f = {"z": f["z"], "s": 2 * f["z"][::-1].copy()}
    net = _net(_KL_LOG_SRC, backend, dtype, 4)
    feeds = {k: v.astype(dtype) for k, v in f.items()}
    (loss,) = net.evaluate(feeds).values()
    grads = net.gradients(feeds, inputs=("z", "s"))
    logp, logq = ref.log_softmax(f["s"]), ref.log_softmax(f["z"])
    p = np.exp(logp)
    _close(loss, (p * (logp - logq)).sum() / 4, dtype)
    _close(grads["z"], (_softmax(f["z"]) * p.sum(-1, keepdims=True) - p) / 4, dtype)
    row = (p * (logp - logq)).sum(-1, keepdims=True)
    _close(grads["s"], p * (logp - logq - row) / 4, dtype)


def test_kl_div_with_log_target_matches_pytorch():
    torch = pytest.importorskip("torch")
    f = _kl_feeds()
    f = {"z": f["z"], "s": 2 * f["z"][::-1].copy()}
    net = _net(_KL_LOG_SRC, "numba", "float64", 4)
    (loss,) = net.evaluate(f).values()
    grads = net.gradients(f, inputs=("z", "s"))
    z, s = (torch.tensor(f[k], requires_grad=True) for k in ("z", "s"))
    want = torch.nn.functional.kl_div(torch.log_softmax(z, -1), torch.log_softmax(s, -1),
                                      reduction="batchmean", log_target=True)
    want.backward()
    _close(loss, want.item(), "float64")
    _close(grads["z"], z.grad.numpy(), "float64")
    _close(grads["s"], s.grad.numpy(), "float64")


# *** conv1d(padding = "causal") ***

CAUSAL = [(3, 1, False), (3, 2, False), (2, 3, True), (4, 2, True)]  # kernel, dilation, last


def _causal_src(kernel, dilation, channels_last):
    x = "float32[batch, 10, 3]" if channels_last else "float32[batch, 3, 10]"
    return (f"model M {{\n  input x: {x}\n"
            f"  output h = conv1d(x, 4, {kernel}, dilation = {dilation}, padding = \"causal\", "
            f"channels_last = {str(channels_last).lower()})\n"
            f"  loss mean(h * h)\n}}\n")


def _causal_numpy(x, w, bias, kernel, dilation):
    """[batch, channels, length]: output t sums x[t - (kernel - 1 - j) * dilation] over the
    taps j, with x zero before the sequence's start."""
    y = np.zeros((x.shape[0], w.shape[0], x.shape[2])) + bias[None, :, None]
    for t in range(x.shape[2]):
        for j in range(kernel):
            s = t - (kernel - 1 - j) * dilation
            if s >= 0:
                y[:, :, t] += x[:, :, s] @ w[:, :, j].T
    return y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,dilation,channels_last", CAUSAL)
def test_causal_conv1d_matches_numpy_and_sees_no_future(kernel, dilation, channels_last, dtype,
                                                        backend):
    net = _net(_causal_src(kernel, dilation, channels_last), backend, dtype, 2)
    rng = np.random.default_rng(kernel + dilation)
    x = rng.normal(size=(2, 3, 10))
    xin = np.moveaxis(x, 1, -1) if channels_last else x
    params = {k: v.astype(np.float64) for k, v in net.parameters().items()}
    (w,) = (v for k, v in params.items() if k.endswith("weight"))
    (bias,) = (v for k, v in params.items() if k.endswith("bias"))
    h = net.forward({"x": xin.astype(dtype)})["h"]
    h = np.moveaxis(h, -1, 1) if channels_last else h
    want = _causal_numpy(x, w, bias, kernel, dilation)
    assert h.shape == (2, 4, 10)                  # the length is kept
    _close(h, want, dtype)
    # the mean(h*h) loss's gradient by x: finite differences on the numpy twin
    grad = net.gradients({"x": xin.astype(dtype)}, inputs=("x",))["x"]
    grad = np.moveaxis(grad, -1, 1) if channels_last else grad
    fd, eps = np.zeros_like(x), 1e-6
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        hi, lo = (_causal_numpy(x + s * d, w, bias, kernel, dilation) for s in (1, -1))
        fd[i] = ((hi ** 2).mean() - (lo ** 2).mean()) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-5 if dtype == "float32" else 1e-7,
                               atol=1e-6 if dtype == "float32" else 1e-9)
    # changing the last step changes the last output only
    later = x.copy()
    later[:, :, -1] += 1.0
    h2 = net.forward({"x": (np.moveaxis(later, 1, -1) if channels_last else later)
                      .astype(dtype)})["h"]
    h2 = np.moveaxis(h2, -1, 1) if channels_last else h2
    np.testing.assert_array_equal(h2[:, :, :-1], h[:, :, :-1])


@pytest.mark.parametrize("kernel,dilation,channels_last", CAUSAL)
def test_causal_conv1d_matches_keras_padding_in_pytorch(kernel, dilation, channels_last):
    torch = pytest.importorskip("torch")
    net = _net(_causal_src(kernel, dilation, channels_last), "numba", "float64", 2)
    params = net.parameters()
    (w,) = (torch.from_numpy(v) for k, v in params.items() if k.endswith("weight"))
    (bias,) = (torch.from_numpy(v) for k, v in params.items() if k.endswith("bias"))
    x = np.random.default_rng(9).normal(size=(2, 3, 10))
    xt = torch.tensor(x, requires_grad=True)
    # Keras' Conv1D(padding="causal") is a left pad of (kernel - 1) * dilation, then "valid"
    h = torch.nn.functional.conv1d(torch.nn.functional.pad(xt, ((kernel - 1) * dilation, 0)),
                                   w, bias, dilation=dilation)
    (h * h).mean().backward()
    xin = np.moveaxis(x, 1, -1) if channels_last else x
    got = net.forward({"x": xin})["h"]
    grad = net.gradients({"x": xin}, inputs=("x",))["x"]
    if channels_last:
        got, grad = np.moveaxis(got, -1, 1), np.moveaxis(grad, -1, 1)
    _close(got, h.detach().numpy(), "float64")
    _close(grad, xt.grad.numpy(), "float64")


# *** conv1d / conv2d(groups = g) ***

GROUPED = [  # op, x shape (channels first), filters, kernel, groups, channels_last, options
    ("conv1d", (2, 4, 9), 6, 3, 2, False, {"padding": 1}),
    ("conv2d", (2, 3, 6, 5), 6, 3, 3, False, {"stride": [1, 2]}),   # depthwise, multiplier 2
    ("conv2d", (2, 4, 5, 6), 4, 2, 2, True, {"padding": "same", "dilation": [2, 1]}),
]


def _grouped_src(op, shape, filters, kernel, groups, channels_last, options):
    dims = ", ".join(map(str, (shape[0], *shape[2:], shape[1]) if channels_last else shape))
    return (f"model M {{\n  input x: float32[{dims.replace(str(shape[0]), 'batch', 1)}]\n"
            f"  output h = {op}(x, {filters}, {kernel}, groups = {groups}, channels_last = "
            f"{str(channels_last).lower()}"
            + "".join(f", {k} = {json.dumps(v)}" for k, v in options.items())
            + ")\n  loss mean(h * h)\n}\n")


def _grouped_attrs(options, channels_last):
    return {"stride": 1, "padding": 0, "dilation": 1, "channels_last": channels_last} | options


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GROUPED, ids=lambda c: f"{c[0]}-g{c[4]}")
def test_grouped_conv_matches_numpy(case, dtype, backend):
    """Values against tests/reference.py's direct grouped conv (each group's filters over its
    own channels), the input and weight gradients of mean(h * h) against finite differences of
    that numpy twin, and the weight of PyTorch's shape [filters, channels / groups, *kernel]."""
    op, shape, filters, kernel, groups, channels_last, options = case
    net = _net(_grouped_src(*case), backend, dtype, shape[0])
    params = {k: v.astype(np.float64) for k, v in net.parameters().items()}
    (wname,) = (k for k in params if k.endswith("weight"))
    (bname,) = (k for k in params if k.endswith("bias"))
    w, bias = params[wname], params[bname]
    assert w.shape == (filters, shape[1] // groups) + (kernel,) * (len(shape) - 2)
    attrs = _grouped_attrs(options, channels_last) | {"kernel": kernel, "groups": groups}
    x = np.random.default_rng(len(shape)).normal(size=shape)
    xin = np.moveaxis(x, 1, -1) if channels_last else x

    def numpy_loss(x_, w_):
        h = ref.conv(np.moveaxis(x_, 1, -1) if channels_last else x_, w_, bias, **attrs)
        return h, (h ** 2).mean()

    h = net.forward({"x": xin.astype(dtype)})["h"]
    _close(h, numpy_loss(x, w)[0], dtype)
    grads = net.gradients({"x": xin.astype(dtype)}, inputs=("x",))
    gx = np.moveaxis(grads["x"], -1, 1) if channels_last else grads["x"]
    for got, at in ((gx, "x"), (grads[wname], "w")):
        fd, eps = np.zeros(got.shape), 1e-6
        for i in np.ndindex(got.shape):
            d = np.zeros(got.shape)
            d[i] = eps
            hi, lo = ((numpy_loss(x + s * d, w) if at == "x" else numpy_loss(x, w + s * d))[1]
                      for s in (1, -1))
            fd[i] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(got, fd, rtol=1e-5 if dtype == "float32" else 1e-7,
                                   atol=1e-6 if dtype == "float32" else 1e-9, err_msg=at)


@pytest.mark.parametrize("case", GROUPED, ids=lambda c: f"{c[0]}-g{c[4]}")
def test_grouped_conv_matches_pytorch(case):
    torch = pytest.importorskip("torch")
    op, shape, filters, kernel, groups, channels_last, options = case
    net = _net(_grouped_src(*case), "numba", "float64", shape[0])
    params = net.parameters()
    (w,) = (torch.from_numpy(v) for k, v in params.items() if k.endswith("weight"))
    (bias,) = (torch.from_numpy(v) for k, v in params.items() if k.endswith("bias"))
    w.requires_grad_(True)
    attrs = _grouped_attrs(options, channels_last)
    x = np.random.default_rng(11).normal(size=shape)
    xt = torch.tensor(x, requires_grad=True)
    fn = getattr(torch.nn.functional, op)
    h = fn(xt, w, bias, stride=attrs["stride"], dilation=attrs["dilation"], groups=groups,
           padding=attrs["padding"])
    (h * h).mean().backward()
    xin = np.moveaxis(x, 1, -1) if channels_last else x
    got = net.forward({"x": xin})["h"]
    grads = net.gradients({"x": xin}, inputs=("x",))
    (gw,) = (v for k, v in grads.items() if k.endswith("weight"))
    gx = grads["x"]
    if channels_last:
        got, gx = np.moveaxis(got, -1, 1), np.moveaxis(gx, -1, 1)
    _close(got, h.detach().numpy(), "float64")
    _close(gx, xt.grad.numpy(), "float64")
    _close(gw, w.grad.numpy(), "float64")


@pytest.mark.parametrize("line, words", [
    ("conv2d(x, 6, 3, groups = 4)", ["groups = 4 does not divide the 6 input channels",
                                      "one of [1, 2, 3, 6]"]),
    ("conv1d(x[:, :, 0], 5, 1, groups = 2)", ["does not divide the 5 filters", "one of [1]"]),
    ("conv2d(x, 6, 3, groups = 0)", ["groups must be a positive integer"]),
])
def test_grouped_conv_that_does_not_divide_is_a_located_error(line, words):
    src = f"model M {{\n  input x: float32[batch, 6, 5, 5]\n  output y = {line}\n}}\n"
    with pytest.raises(nnlang.NNError) as err:
        nnlang.load(src)
    text = str(err.value)
    assert all(w in text for w in words), text
    assert ":3:" in text and "groups = " in text.split("^")[0], text
