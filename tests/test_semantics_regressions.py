"""Regression tests for bugs found from outside (issue 14): literal precision in float64 models,
metric dtype, the tie rule of global_max_pool, `batch` in shape arguments, and the lint warning
for a softmax fed to cross_entropy. References are plain numpy and hand-worked values."""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.frontend.elaborate import load

BACKENDS = ("reference", "numba")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("declared,net_dtype", [("float64", "float32"), ("float32", "float64")])
def test_a_literal_takes_the_dtype_it_meets_without_float32_rounding(backend, declared,
                                                                      net_dtype):
    src = f"model M {{ input x: {declared}[batch, 3]  output y = x * 0.1 + 1e-9 }}"
    net = nnlang.compile(src, backend=backend, batch=2, dtype=net_dtype)
    x = np.array([[1.0, 3.0, 7.0], [0.5, -2.0, 1e6]])
    y = net.forward({"x": x})["y"]
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, x * 0.1 + 1e-9)   # float32(0.1) would be off by 1.5e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_whole_literal_in_integer_arithmetic_stays_integer(backend):
    """`ids + 1`, `label - 1`, `n * 3` on int tensors are ints, as numpy's; a division or a
    fractional literal gives floats."""
    src = """
model M {
  input t: int32[batch, 3]
  input u: int64[batch, 3]
  output a = t + 1
  output b = maximum(t * 3, 4)
  output c = u - 1
  output d = t / 2
  output e = t + 0.5
  output f = embedding(t - 1, 10, 2)
}"""
    t = np.array([[1, 2, 3], [4, 5, 9]], np.int32)
    out = nnlang.compile(src, backend=backend).forward({"t": t, "u": t.astype(np.int64)})
    for name, want in [("a", t + 1), ("b", np.maximum(t * 3, 4)), ("c", t.astype(np.int64) - 1),
                       ("d", (t / 2).astype(np.float32)), ("e", (t + 0.5).astype(np.float32))]:
        assert out[name].dtype == want.dtype, name
        np.testing.assert_array_equal(out[name], want, err_msg=name)
    assert out["f"].shape == (2, 3, 2)


def test_a_literal_in_a_float32_model_stays_float32():
    src = "model M { input x: float32[batch, 3]  output y = x * 0.1 }"
    y = nnlang.compile(src, backend="numba", batch=1).forward({"x": np.ones((1, 3))})["y"]
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.float32(0.1) * np.ones((1, 3), np.float32))


CLASSIFIER = """model M {
  input x: float32[batch, 3]
  input label: int32[batch]
  loss cross_entropy(x, label)
  metric acc = accuracy(x, label)
}
train M { optimizer = sgd(lr = 0.1) batch = 3 }"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_are_computed_in_the_models_dtype(backend):
    net = nnlang.compile(CLASSIFIER, backend=backend, batch=3, dtype="float64")
    out = net.evaluate({"x": np.eye(3), "label": np.array([0, 2, 2])})
    assert out["acc"] == 2 / 3            # float32(2/3) would differ in the 8th digit
    g = net.graph("eval")
    assert g.node(g.metrics["acc"]).dtype == "float64"


TIED = """model M {
  input x: float64[batch, 2]
  param p: float64[1, 2, 4] = zeros
  loss sum(global_max_pool(p) * x)
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""


FLOAT64_FIT = """model M {
  input x: float64[batch, 3]
  param p: float64[3] = zeros
  loss sum((p - x) * (p - x))
}
train M { optimizer = %s batch = 1 }"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_float64_model_trains_with_a_float64_learning_rate_and_moments(backend):
    """A model declaring float64 compiled, by default, to a float32 net: its learning rate and
    Adam's moments were float32, so lr = 0.1 moved p by 0.10000000149 times its gradient."""
    x = np.array([[0.3, -1.1, 2.9]])
    sgd = nnlang.compile(FLOAT64_FIT % "sgd(lr = 0.1)", backend=backend)
    adam = nnlang.compile(FLOAT64_FIT % "adam(lr = 0.1)", backend=backend)
    assert sgd.dtype == adam.dtype == "float64"
    p, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    want_sgd = np.zeros(3)
    for t in range(1, 4):   # numpy: d loss / d p = 2 (p - x); torch.optim.Adam's update
        sgd.train_step({"x": x})
        adam.train_step({"x": x})
        want_sgd = want_sgd - 0.1 * 2 * (want_sgd - x[0])
        g = 2 * (p - x[0])
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        p = p - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(sgd.parameters()["p"], want_sgd, rtol=1e-15)
    np.testing.assert_allclose(adam.parameters()["p"], p, rtol=1e-14)   # float32: 1e-8
    assert adam.state_dict()["optimizer.m.p"].dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_literals_with_no_tensor_beside_them_are_exact_in_a_float64_model(backend):
    """`where(c, 0.1, 0.2)` has no float tensor beside its numbers, so they were float32 in a
    model declaring float64: x * 0.1 gave 0.030000000447 for x = 0.3."""
    src = "model M { input x: float64[batch, 2]  output y = x * where(x > 0.0, 0.1, 0.2) }"
    x = np.array([[0.3, -0.7]])
    y = nnlang.compile(src, backend=backend, batch=1).forward({"x": x})["y"]
    np.testing.assert_array_equal(y, x * np.where(x > 0, 0.1, 0.2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_max_pool_gives_a_tied_maximum_to_its_first_cell_like_max_pool(backend):
    net = nnlang.compile(TIED, backend=backend, batch=1, dtype="float64")
    net.load_state_dict({"p": np.array([[[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]])})
    grad = net.gradients({"x": np.array([[1.0, 5.0]])})["p"]
    # PyTorch's max pooling (and max_pool1d here) routes each window's gradient to the first max
    np.testing.assert_array_equal(grad, [[[0, 1, 0, 0], [5, 0, 0, 0]]])


PADDED_POOL = """model M {
  input x: float64[batch, 2, 6]
  input g: float64[batch, 2, 3]
  loss sum(max_pool1d(x, 3, stride = 2, padding = 1) * g)
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""
POOL_X = np.array([[[-np.inf, -np.inf, -np.inf, -np.inf, 1.0, -np.inf],
                    [-np.inf, 2.0, 2.0, -np.inf, -np.inf, -np.inf]]])
POOL_G = np.array([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_gives_an_all_minus_inf_window_to_its_first_real_cell(backend):
    """A window whose real cells are all -inf (a masked region) ties with its -inf padding:
    the reference lowering's argmax over the padded window chose the padding, and the
    window's gradient was dropped; PyTorch's max_pool1d (and the numba kernel) give it to the
    first real cell. Windows: [pad, 0, 1], [1, 2, 3], [3, 4, 5]."""
    net = nnlang.compile(PADDED_POOL, backend=backend, batch=1)
    grad = net.gradients({"x": POOL_X, "g": POOL_G}, inputs="x")["x"]
    np.testing.assert_array_equal(grad, [[[1, 2, 0, 0, 3, 0], [0, 4 + 5, 0, 6, 0, 0]]])


def test_max_pool_all_minus_inf_window_matches_torch():
    torch = pytest.importorskip("torch")
    x = torch.tensor(POOL_X, requires_grad=True)
    (torch.nn.functional.max_pool1d(x, 3, 2, 1) * torch.tensor(POOL_G)).sum().backward()
    got = nnlang.compile(PADDED_POOL, backend="reference", batch=1).gradients(
        {"x": POOL_X, "g": POOL_G}, inputs="x")["x"]
    np.testing.assert_array_equal(got, x.grad.numpy())


RELU_AT_ZERO = """model M {
  input x: float64[batch, 4]
  param p: float64[1, 4] = zeros
  loss sum(relu(p) * x) + sum(dense(x, 2, activation = "relu", init = zeros))
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_has_gradient_zero_at_zero_like_pytorch(backend):
    """relu'(0) = 0 in PyTorch (threshold_backward passes the gradient where x > 0 only). A zero
    pre-activation is common: a zero-initialized layer, or a convolution over an all-zero
    patch with its zero bias; there a gradient of 1 moved the bias where PyTorch does not."""
    net = nnlang.compile(RELU_AT_ZERO, backend=backend, batch=1, dtype="float64")
    net.load_state_dict({"p": np.array([[-1.0, 0.0, 0.0, 2.0]])}, strict=False)
    grads = net.gradients({"x": np.array([[1.0, 2.0, 3.0, 4.0]])})
    np.testing.assert_array_equal(grads["p"], [[0, 0, 0, 4]])
    np.testing.assert_array_equal(grads["dense.bias"], [0, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_keeps_a_nan(backend):
    """relu(nan) is nan (torch.relu, np.maximum): a diverged value stays visible. A numba
    kernel's max(0.0, x) gave 0.0 for a NaN x (Python's max keeps its first argument when the
    comparison is false)."""
    src = "model M { input x: float32[batch, 4]  output y = relu(x) }"
    x = np.array([[np.nan, -1.0, 0.0, 2.0]], np.float32)
    y = nnlang.compile(src, backend=backend, batch=1).forward({"x": x})["y"]
    np.testing.assert_array_equal(y, [[np.nan, 0.0, 0.0, 2.0]])


NO_GRADIENT_PATH = """model M {
  input x: float32[batch, 4]
  input w: float32[batch, 4]
  param p: float32[4] = ones
  loss sum(sign(x) * w) + sum(stop_gradient(p) * w)
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gradient_that_no_path_reaches_is_zero_even_at_inf_and_nan(backend):
    """An input or weight the loss reaches through no differentiable path has gradient 0
    (torch: zeros, or None). It was built as x * 0, which is nan where x is inf or nan, so
    gradients(inputs=...) showed nan for an inf in the data, and a weight that is nan already
    stayed nan under sgd's update."""
    net = nnlang.compile(NO_GRADIENT_PATH, backend=backend, batch=1)
    net.load_state_dict({"p": np.array([np.inf, np.nan, 1.0, -np.inf], np.float32)})
    x = np.array([[np.inf, -np.inf, np.nan, 2.0]], np.float32)
    g = net.gradients({"x": x, "w": np.ones((1, 4), np.float32)}, inputs="x")
    np.testing.assert_array_equal(g["x"], np.zeros((1, 4)))
    np.testing.assert_array_equal(g["p"], np.zeros(4))


def test_a_gradient_that_no_path_reaches_is_zero_in_torch_too():
    torch = pytest.importorskip("torch")
    x = torch.tensor([[np.inf, -np.inf, np.nan, 2.0]], requires_grad=True)
    (torch.sign(x) * torch.ones(1, 4)).sum().backward()
    got = nnlang.compile(NO_GRADIENT_PATH, backend="numba", batch=1).gradients(
        {"x": x.detach().numpy(), "w": np.ones((1, 4), np.float32)}, inputs="x")["x"]
    np.testing.assert_array_equal(got, x.grad.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_maximum_and_minimum_keep_a_nan_in_either_place(backend):
    """np.maximum / torch.maximum give nan when either side is nan; numba's kernels spelled
    maximum as Python's max(a, b), which returns a when b is nan (the comparison is false)."""
    src = """model M { input x: float32[batch, 3]
      output a = maximum(0.5, x)  output b = maximum(x, 0.5)
      output c = minimum(1.0, x)  output d = minimum(x, 1.0) }"""
    x = np.array([[np.nan, -1.0, 2.0]], np.float32)
    out = nnlang.compile(src, backend=backend, batch=1).forward({"x": x})
    for name, want in (("a", [np.nan, 0.5, 2.0]), ("b", [np.nan, 0.5, 2.0]),
                       ("c", [np.nan, -1.0, 1.0]), ("d", [np.nan, -1.0, 1.0])):
        np.testing.assert_array_equal(out[name], [want], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, ref", [("max", np.max), ("min", np.min)])
def test_max_and_min_over_an_axis_keep_a_nan(backend, op, ref):
    """np.max / torch.amax (np.min / torch.amin) give nan for a row holding one; a numba
    reduction folded with Python's max(acc, v), which drops a NaN v, so a row gave its largest
    number and an all-NaN row -inf (the reference interpreter, max_pool and argmax kept it)."""
    src = f"""model M {{ input x: float32[batch, 11]
      output r = {op}(x, axis = -1)  output c = {op}(x, axis = 0)  output a = {op}(x) }}"""
    x = np.random.default_rng(0).normal(size=(5, 11)).astype(np.float32)
    x[0, 0] = x[1, 6] = x[2, 10] = np.nan   # first, in the lanes, in the remainder
    x[3] = np.nan
    out = nnlang.compile(src, backend=backend, batch=5).forward({"x": x})
    np.testing.assert_array_equal(out["r"], ref(x, axis=-1))
    np.testing.assert_array_equal(out["c"], ref(x, axis=0))
    np.testing.assert_array_equal(out["a"], ref(x))
    y = x[4:]   # no NaN: the extreme value, as before
    np.testing.assert_array_equal(
        nnlang.compile(src, backend=backend, batch=1).forward({"x": y})["r"], ref(y, -1))


EXTREME_NAN = np.array([[1.0, np.nan, 3.0, 3.0], [1.0, np.nan, np.nan, 2.0],
                        [2.0, 5.0, 5.0, 1.0], [4.0, 1.0, 1.0, 0.5]])
EXTREME_G = np.array([1.0, 2.0, 3.0, 4.0])


def _extreme_grad_reference(x, g, ref):
    """torch.amax/amin's rule, written in numpy: g split evenly among the row's extremes; a row
    holding NaN has a NaN extreme, and every entry's gradient is NaN (its backward is
    g / count * mask, where no entry equals NaN: g / 0 * 0)."""
    m = ref(x, axis=1, keepdims=True)
    mask = x == m
    share = g[:, None] / np.maximum(mask.sum(1, keepdims=True), 1)
    return np.where(np.isnan(m), np.nan, np.where(mask, share, 0.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, ref", [("max", np.max), ("min", np.min)])
def test_max_and_min_gradient_of_a_row_with_nan_is_nan(backend, op, ref):
    """A NaN row's max is NaN, so no entry equals it: the gradient was 0 for the whole row,
    silently, while torch.amax gives NaN there (and the forward's NaN in the loss)."""
    src = f"""model M {{ input x: float64[batch, 4]  input g: float64[batch]
      output y = {op}(x, axis = 1)
      loss sum({op}(x, axis = 1) * g) }}
    train M {{ optimizer = sgd(lr = 0.1) batch = 4 }}"""
    net = nnlang.compile(src, backend=backend, batch=4)
    feeds = {"x": EXTREME_NAN, "g": EXTREME_G}
    np.testing.assert_array_equal(net.forward(feeds)["y"], ref(EXTREME_NAN, axis=1))
    got = net.gradients(feeds, inputs="x")["x"]
    np.testing.assert_array_equal(got, _extreme_grad_reference(EXTREME_NAN, EXTREME_G, ref))


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_and_min_gradient_at_nan_matches_torch(op):
    torch = pytest.importorskip("torch")
    t = torch.tensor(EXTREME_NAN, requires_grad=True)
    y = (torch.amax if op == "max" else torch.amin)(t, dim=1)
    y.backward(torch.tensor(EXTREME_G))
    src = f"""model M {{ input x: float64[batch, 4]  input g: float64[batch]
      loss sum({op}(x, axis = 1) * g) }}
    train M {{ optimizer = sgd(lr = 0.1) batch = 4 }}"""
    got = nnlang.compile(src, backend="numba", batch=4).gradients(
        {"x": EXTREME_NAN, "g": EXTREME_G}, inputs="x")["x"]
    np.testing.assert_array_equal(got, t.grad.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_and_min_of_bools_are_any_and_all(backend):
    """np.max of bools is any and np.min all; numba's max started from -inf, which is True as
    a bool, so an all-False row gave True."""
    src = """model M { input x: bool[batch, 5]
      output r = max(x, axis = -1)  output c = max(x, axis = 0)  output a = max(x)
      output rmin = min(x, axis = -1)  output amin = min(x) }"""
    x = np.array([[False] * 5, [False, True, False, False, False], [True] * 5])
    out = nnlang.compile(src, backend=backend, batch=3).forward({"x": x})
    for name, want in (("r", x.any(-1)), ("c", x.any(0)), ("a", x.any()),
                       ("rmin", x.all(-1)), ("amin", x.all())):
        np.testing.assert_array_equal(out[name], want, err_msg=name)


def test_cuda_max_and_min_of_bools_start_from_their_identity():
    from nnlang.codegen.render_cuda import CUDA
    assert (CUDA.reduce_init("max", "bool"), CUDA.reduce_init("min", "bool")) == \
        ("false", "true")


MIN_WITH_TIES = """model M {
  input x: float64[batch, 4]
  param p: float64[3, 4] = zeros
  param w: float64[3] = zeros
  loss sum(min(p + sum(x, axis = 0), axis = -1) * w) +
       sum(min(p * sum(x, axis = 0), axis = 0))
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_gradient_shares_ties_evenly(backend):
    """min(x, axis) sends the gradient to each group's smallest value, a tie split evenly, as
    torch.amin does (its backward is written out here in numpy; torch checks it when present)."""
    p = np.array([[1.0, 0.0, 1.0, 0.0], [2.0, -1.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    x = np.array([[0.0, 1.0, 0.0, 1.0]])
    net = nnlang.compile(MIN_WITH_TIES, backend=backend, batch=1, dtype="float64")
    net.load_state_dict({"p": p, "w": np.array([1.0, 2.0, 3.0])}, strict=False)
    got = net.gradients({"x": x})["p"]
    rows = p + x                                   # row 0: four ties of 1, row 2: four of 6
    share = (rows == rows.min(-1, keepdims=True)) / (rows == rows.min(-1, keepdims=True)).sum(
        -1, keepdims=True)
    cols = p * x                                   # columns 0 and 2: all zero, three ties
    col_share = (cols == cols.min(0)) / (cols == cols.min(0)).sum(0)
    want = share * np.array([[1.0], [2.0], [3.0]]) + col_share * x
    np.testing.assert_allclose(got, want, rtol=1e-12)
    torch = pytest.importorskip("torch")
    t = torch.tensor(p, requires_grad=True)
    xt = torch.tensor(x)
    loss = ((t + xt).amin(-1) * torch.tensor([1.0, 2.0, 3.0])).sum() + (t * xt).amin(0).sum()
    loss.backward()
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12)


def test_relu_gradient_at_zero_matches_torch():
    torch = pytest.importorskip("torch")
    t = torch.tensor([-1.0, 0.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    torch.relu(t).sum().backward()
    net = nnlang.compile(RELU_AT_ZERO, backend="numba", batch=1, dtype="float64")
    net.load_state_dict({"p": t.detach().numpy()[None]}, strict=False)
    grads = net.gradients({"x": np.ones((1, 4))})
    np.testing.assert_array_equal(grads["p"][0], t.grad.numpy())


def test_batch_names_the_batch_dim_in_shape_arguments():
    src = """model M {
  input x: float32[batch, 4]
  output y = broadcast_to(reshape(x, [batch, 1, 4]), [batch, 3, 4])
}"""
    net = nnlang.compile(src, backend="numba", batch=2)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(net.forward({"x": x})["y"],
                                  np.broadcast_to(x[:, None, :], (2, 3, 4)))


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_batch_in_a_shape_is_the_nets_when_no_input_has_a_batch_axis(backend):
    """A [4] vector broadcast to [batch, 4] came back [4, 4] from a net of batch 3: the batch
    was read off the first dim of the first feed, although that input has no batch axis."""
    src = """model M {
  input x: float32[4]
  output y = broadcast_to(x, [batch, 4])
}"""
    net = nnlang.compile(src, backend=backend, batch=3)
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(net.forward({"x": x})["y"], np.broadcast_to(x, (3, 4)))


@pytest.mark.parametrize("call", ["slice(x, axis = 0, stop = batch)",
                                  "slice(x, 0, 0, batch)", "x[0:batch]"])
def test_batch_is_a_bound_of_slice_as_of_a_subscript(call):
    """`x[0:batch]` worked while the op it stands for, `slice(x, axis = 0, stop = batch)`,
    said "expected an integer, got batch"."""
    src = f"model M {{\n  input x: float32[batch, 4]\n  output y = {call} * 2.0\n}}"
    net = nnlang.compile(src, backend="numba", batch=3)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(net.forward({"x": x})["y"], x[0:3] * 2)


@pytest.mark.parametrize("probs", ["dense(x, 3) |> softmax", "softmax(dense(x, 3))",
                                   'dense(x, 3, activation = "softmax")'])
def test_softmax_into_cross_entropy_is_a_located_warning(probs):
    src = f"""model M {{
  input x: float32[batch, 4]
  input label: int32[batch]
  probs = {probs}
  loss cross_entropy(probs, label)
}}"""
    (warning,) = load(src).warnings
    text = warning.render()
    assert text.startswith("<string>:5:8: warning: cross_entropy takes logits")
    assert "pass the logits" in text
    # Keras' Dense(activation="softmax"): the fix is at the layer, which the hint names
    layer = 'hint: drop `activation = "softmax"` from the dense at <string>:4:11, then pass'
    assert (layer in text) == ("activation" in probs)


@pytest.mark.parametrize("first", ["softmax(dense(x, 3))", 'dense(x, 3, activation = "softmax")'])
def test_softmax_into_kl_div_is_a_located_warning(first):
    """kl_div takes log-probabilities first, as PyTorch's: a softmax there (Keras'
    KLDivergence takes probabilities) runs and gives no divergence, so it is flagged."""
    src = f"""model M {{
  input x: float32[batch, 4]
  input t: float32[batch, 3]
  loss kl_div({first}, t)
}}"""
    (warning,) = load(src).warnings
    assert warning.render().startswith("<string>:4:8: warning: kl_div takes log-probabilities")
    assert load(src.replace(first, "log_softmax(dense(x, 3))")).warnings == []


@pytest.mark.parametrize("target, option, words", [
    ("log_softmax(t)", "", "the target as probabilities, but it is a log_softmax"),
    ("softmax(t)", ", log_target = true", "log-probabilities, but it is a softmax"),
])
def test_kl_div_target_in_the_other_form_than_log_target_is_a_located_warning(target, option,
                                                                              words):
    """PyTorch's log_target says which form the target is in; the other form runs and gives
    no divergence (a log_softmax read as probabilities is negative), so it is flagged."""
    src = f"""model M {{
  input x: float32[batch, 4]
  input t: float32[batch, 3]
  loss kl_div(log_softmax(dense(x, 3)), {target}{option})
}}"""
    (warning,) = load(src).warnings
    assert warning.render().startswith("<string>:4:8: warning: kl_div"), warning.render()
    assert words in warning.render()
    fixed = src.replace(option, "") if option else src.replace(")\n}", ", log_target = true)\n}")
    assert load(fixed).warnings == []


SEQUENCE = """model M {
  input x: float32[batch, 5, 4]
  input label: int32[batch, 5]
  probs = softmax(dense(x, 3))
  loss cross_entropy(PROBS, LABEL)
}"""


@pytest.mark.parametrize("probs,label", [
    ("reshape(probs, [batch * 5, 3])", "reshape(label, [batch * 5])"),
    ("flatten(probs, 0, 1)", "flatten(label, 0, 1)"),
    ("probs[:, 1:3]", "label[:, 1:3]"),
    ("dropout(probs[:, -1], 0.1)", "label[:, -1]"),
])
def test_softmax_reshaped_or_sliced_into_cross_entropy_is_still_a_warning(probs, label):
    """A sequence model flattens its per-token scores before the loss (a language model's
    `reshape(probs, [batch * seq, vocab])`): moving the rows around keeps them probabilities."""
    src = SEQUENCE.replace("PROBS", probs).replace("LABEL", label)
    (warning,) = load(src).warnings
    assert warning.render().startswith("<string>:5:8: warning: cross_entropy takes logits")


def test_a_reshape_that_splits_the_class_axis_is_no_warning():
    # rows of 2 cut from softmax rows of 4 are no longer distributions: no claim either way
    src = """model M {
  input x: float32[batch, 4]
  input label: int32[batch, 2]
  loss cross_entropy(reshape(softmax(x), [batch * 2, 2]), reshape(label, [batch * 2]))
}"""
    assert load(src).warnings == []


@pytest.mark.parametrize("layer,image", [
    ("conv2d(x, 8, 3)", "float32[batch, 32, 32, 3]"),
    ("max_pool2d(x, 2)", "float32[batch, 64, 64, 3]"),
    ("conv1d(x, 8, 3)", "float32[batch, 100, 3]"),
])
def test_a_channels_last_image_into_a_convolution_is_a_located_warning(layer, image):
    """Keras' [batch, height, width, channels] checks as many channels of a thin image and
    trains on nonsense: a warning at the layer, with the channels-first declaration."""
    src = f"""model M {{
  input x: {image}
  output y = {layer}
}}"""
    (warning,) = load(src).warnings
    text = warning.render()
    assert text.startswith("<string>:3:14: warning: ")
    assert "looks channels-last" in text and "channels_last = true" in text


@pytest.mark.parametrize("layer,image", [
    ("conv2d(x, 8, 3, channels_last = true)", "float32[batch, 32, 32, 3]"),
    ("conv2d(x, 8, 3)", "float32[batch, 3, 32, 32]"),
    ("conv1d(x, 8, 3)", "float32[batch, 128, 200]"),
])
def test_a_channels_first_or_declared_channels_last_image_is_no_warning(layer, image):
    src = f"""model M {{
  input x: {image}
  output y = {layer}
}}"""
    assert load(src).warnings == []


def _the_warning_on_dense_output(expr: str, units: int) -> str:
    """The one warning, rendered, of a model whose output is `expr` of h = dense(x, units)
    (line 4 of the source)."""
    (warning,) = load(f"""model M {{
  input x: float32[batch, 4]
  h = dense(x, {units})
  output p = {expr}
}}""").warnings
    return warning.render()


@pytest.mark.parametrize("op", ["softmax(h, axis = 0)", "log_softmax(h, 0)",
                                "softmax(h, axis = -2)"])
def test_a_softmax_across_the_batch_is_a_located_warning(op):
    text = _the_warning_on_dense_output(op, 3)
    assert text.startswith("<string>:4:14: warning: ") and "across the examples" in text
    assert "axis = -1" in text


@pytest.mark.parametrize("pick,rows", [("h[0]", "one example"), ("h[-1]", "one example"),
                                       ("h[0:2]", "2 examples")])
def test_a_subscript_of_the_batch_axis_is_a_located_warning(pick, rows):
    """`h[0]` (NumPy's habit for a first feature) took the batch's first example and the loss
    trained on that one row of each batch, with no word."""
    text = _the_warning_on_dense_output(pick, 4)
    assert text.startswith("<string>:4:") and f"picks {rows} of the batch" in text
    assert "x[:, 0]" in text


@pytest.mark.parametrize("flip", ["h[::-1]", "flip(h, axis = [-1, 0])"])
def test_reversing_the_batch_axis_is_a_located_warning(flip):
    """`x[::-1]` reverses time on NumPy's [time, ...]; here axis 0 is the batch, so the
    examples came out in reverse order, against their labels, with no word."""
    text = _the_warning_on_dense_output(flip, 4)
    assert text.startswith("<string>:4:") and "reverses the order of the examples" in text
    assert "x[:, ::-1]" in text


def test_subscripts_after_the_batch_axis_are_no_warning():
    src = """model M {
  input x: float32[batch, 4, 3]
  output a = x[:, 0]
  output b = x[0:batch]
  output c = x[:, 1:3, -1]
  output d = x[:, ::-1] + flip(x, axis = 1)
}"""
    assert load(src).warnings == []


@pytest.mark.parametrize("twice", ["softmax(softmax(h))", "h |> softmax |> log_softmax",
                                   "softmax(reshape(softmax(h), [batch, 1, 3]))"])
def test_a_softmax_of_a_softmax_is_a_located_warning(twice):
    """The usual slip of a student who adds softmax to the logits and again before the loss:
    it ran without a word, and its outputs never pass e / (e + 2) = 0.576 with 3 classes."""
    text = _the_warning_on_dense_output(twice, 3)
    assert text.startswith("<string>:4:14: warning: ") and "of a softmax" in text, text
    assert "once, to the logits" in text
    h = np.array([[9.0, 0.0, 0.0]])   # what the warning says: the second one squashes
    p = np.exp(h) / np.exp(h).sum()
    assert (np.exp(p) / np.exp(p).sum()).max() < 0.58


def test_a_layers_softmax_activation_then_softmax_is_a_located_warning():
    (warning,) = load("""model M {
  input x: float32[batch, 4]
  probs = dense(x, 3, activation = "softmax")
  output p = log_softmax(probs)
}""").warnings
    assert warning.render().startswith("<string>:4:14: warning: log_softmax of a softmax")
    assert "write log(p)" in warning.render()


def test_softmaxes_over_other_axes_or_of_log_probabilities_are_no_warning():
    """softmax(log_softmax(x)) is softmax(x) (a shift of each row), and two softmaxes over
    two axes (a double normalization) are no repeat."""
    src = """model M {
  input x: float32[batch, 5, 4]
  output a = softmax(log_softmax(x))
  output b = softmax(softmax(x, axis = 1))
}"""
    assert load(src).warnings == []


@pytest.mark.parametrize("layer,source", [
    ("embedding(tokens, 50, 16) |> batch_norm", "embedding"),
    ("embedding(tokens, 50, 16) |> dense(16) |> relu |> dropout(0.1) |> batch_norm", "dense"),
    ("embedding(tokens, 50, 16) |> lstm(16, return_sequences = true) |> batch_norm", "lstm"),
])
def test_a_batch_norm_over_the_time_axis_of_features_last_is_a_located_warning(layer, source):
    """Keras' BatchNormalization normalizes the last axis; here (as PyTorch's BatchNorm1d)
    axis 1: after an embedding it normalized each of the 20 positions as a channel, with 20
    gammas, without a word. Its 4 * 20 weights say what it did."""
    src = f"""model M {{
  input tokens: int32[batch, 20]
  h = {layer}
  output y = mean(h, axis = 1)
}}"""
    program = load(src)
    (warning,) = program.warnings
    text = warning.render()
    assert text.startswith("<string>:3:7: warning: batch_norm normalizes axis 1 of "
                           "[batch, 20, 16] as 20 channels"), text
    assert f"the {source} before it" in text and "permute(h, [0, 2, 1]) |> batch_norm" in text
    gamma = next(n for n in program.graph.params if n.endswith("gamma"))
    assert program.graph.node(program.graph.params[gamma]).shape == (20,)
    fixed = src.replace("|> batch_norm", "|> permute([0, 2, 1]) |> batch_norm |> "
                                         "permute([0, 2, 1])")
    assert load(fixed).warnings == []


def test_a_batch_norm_over_the_channels_of_a_conv1d_is_no_warning():
    assert load("""model M {
  input x: float32[batch, 4, 20]
  output y = conv1d(x, 8, 3) |> relu |> batch_norm
}""").warnings == []


def test_a_softmax_over_classes_or_time_is_no_warning():
    src = """model M {
  input x: float32[batch, 5, 4]
  output a = softmax(x)
  output b = softmax(x, axis = 1)
}"""
    assert load(src).warnings == []


@pytest.mark.parametrize("metric,warned", [
    ("binary_accuracy(logit, label)", True),
    ("binary_accuracy(dense(x, 1) |> squeeze(axis = -1), label)", True),
    ("binary_accuracy(logit, label, threshold = 0)", False),
    ("binary_accuracy(sigmoid(logit), label)", False),
    ("binary_accuracy(dense(x, 1, activation = \"sigmoid\"), label)", False),
])
def test_binary_accuracy_at_half_on_logits_is_a_located_warning(metric, warned):
    """The loss reads logits (threshold 0); the metric at 0.5 counts a logit of 0.3, a
    probability of 0.57, as class 0."""
    src = f"""model M {{
  input x: float32[batch, 4]
  input label: float32[batch]
  logit = dense(x, 1) |> squeeze(axis = -1)
  loss bce_with_logits(logit, label)
  metric acc = {metric}
}}"""
    # NOTE: a dense written inside the metric is also a layer no loss trains (its own warning)
    warnings = [w for w in load(src).warnings if "no loss reads" not in w.message]
    assert len(warnings) == int(warned)
    if warned:
        text = warnings[0].render()
        assert text.startswith("<string>:6:16: warning: binary_accuracy thresholds")
        assert "threshold = 0" in text


@pytest.mark.parametrize("momentum,keras", [("0.99", "0.01"), ("0.9", "0.1"), ("0.1", None),
                                            ("0.01", None), ("0.5", None)])
def test_a_keras_batch_norm_momentum_is_a_located_warning(momentum, keras):
    """batch_norm's momentum is PyTorch's share of the new batch (tests/test_textbook_models.py
    checks the running statistics against torch); Keras' 0.99 is the share kept, and here made
    the running statistics almost the last batch's, silently."""
    src = f"""model M {{
  input x: float32[batch, 3, 8, 8]
  h = conv2d(x, 4, 3) |> relu
  output y = batch_norm(h, momentum = {momentum})
}}"""
    warnings = load(src).warnings
    assert len(warnings) == (keras is not None)
    if keras:
        text = warnings[0].render()
        assert text.startswith("<string>:4:14: warning: batch_norm's momentum")
        assert f"Keras' momentum = {momentum} is `momentum = {keras}` here" in text


@pytest.mark.parametrize("mask,warned", [
    ("key_padding_mask = tok == 0", "tok == 0"),
    ("key_padding_mask = tok == pad", "tok == pad"),
    ("key_padding_mask = eq(tok, 0)", "eq(tok, 0)"),
    ('key_padding_mask = cast(tok == 0, dtype = "float32")', "tok == 0"),
    ("key_padding_mask = tok == 1", "tok == 1"),          # token ids: an id is no mask of keeps
    ("key_padding_mask = real == 0", "real == 0"),         # a 0/1 mask of real steps, inverted
    ("key_padding_mask = tok != 0", None),
    ("key_padding_mask = real == 1", None),           # Hugging Face's attention_mask: right
    ("key_padding_mask = real", None),
    ("causal = true", None),
    # the same inversions, other spellings: PyTorch's `(1 - attention_mask).bool()` and ids
    # below 1 (true at the pads, 0, alone); they were silent
    ("key_padding_mask = 1 - real", "1 - real"),
    ('key_padding_mask = 1.0 - cast(tok != 0, dtype = "float32")', "1.0 - cast(tok != 0"),
    ("key_padding_mask = tok < 1", "tok < 1"),
    ("key_padding_mask = tok <= 0", "tok <= 0"),
    ("key_padding_mask = tok >= 1", None),
    ("key_padding_mask = 2 - real", None),
    # 1 minus the pads is the real steps: right, not a `1 - attention_mask` (whose hint,
    # `key_padding_mask = tok == 0`, was the inverted mask itself)
    ("key_padding_mask = 1 - (tok == 0)", None),
    ('key_padding_mask = 1.0 - cast(tok < 1, dtype = "float32")', None),
])
def test_a_pytorch_padding_mask_is_a_located_warning(mask, warned):
    """nnlang's key_padding_mask keeps the keys where it is nonzero; PyTorch's masks the keys
    where it is True, so `tokens == 0` written by habit attended to the padding alone."""
    src = f"""model M(pad = 0) {{
  input tok: int32[batch, 5]
  input real: int32[batch, 5]
  output y = multi_head_attention(embedding(tok, 20, 8), heads = 2, {mask})
}}"""
    warnings = load(src).warnings
    assert len(warnings) == (warned is not None)
    if warned:   # located at the equality
        text = warnings[0].render()
        col = src.splitlines()[3].index(warned) + 1
        assert text.startswith(f"<string>:4:{col}: warning: multi_head_attention's "
                               "key_padding_mask is true where"), text
        assert "`key_padding_mask = " in text and "PyTorch" in text
        assert " != " in text if " - " not in warned else "`key_padding_mask = real`" in text \
            or "without `1 -`" in text, text


def test_an_rnn_mask_written_as_the_pads_is_a_located_warning():
    src = """model M {
  input tok: int32[batch, 5]
  output y = lstm(embedding(tok, 20, 8), 4, mask = tok == 0)
}"""
    (warning,) = load(src).warnings
    text = warning.render()
    assert text.startswith("<string>:3:52: warning: lstm's mask is true where the ids equal 0")
    assert "`mask = tok != 0`" in text


@pytest.mark.parametrize("line,warned", [
    ("conv1d(x, 4, 3, padding = [2, 0], channels_last = true) |> batch_norm", True),
    ("conv1d(x, 4, 3, padding = [2, 0], channels_last = true) |> relu |> batch_norm", True),
    ("conv1d(permute(x, [0, 2, 1]), 4, 3, padding = [2, 0]) |> batch_norm", False),
    ("conv1d(x, 4, 3, padding = [2, 0], channels_last = true) |> conv1d(4, 3)", "conv1d"),
    ("conv1d(x, 4, 3, padding = [2, 0], channels_last = true) |> global_avg_pool",
     "global_avg_pool"),
    ("conv1d(x, 4, 3, padding = [2, 0], channels_last = true) |> conv1d(4, 3, "
     "channels_last = true) |> global_avg_pool(channels_last = true)", False),
    # the hint's rewrite: the channels first, and back
    ("conv1d(x, 4, 3, padding = [2, 0], channels_last = true) |> permute([0, 2, 1]) "
     "|> batch_norm |> permute([0, 2, 1])", False),
])
def test_a_channels_first_layer_after_a_channels_last_conv_is_a_located_warning(line, warned):
    """batch_norm reads axis 1 as channels: after conv1d(channels_last = true) on [batch, 12,
    2] it normalized 12 time steps, with 48 weights, silently (and a conv or global pool
    without channels_last read the 12 steps as channels). The hint's rewrite normalizes
    the conv's 4 channels (numpy: the conv, then each channel by its running statistics)."""
    from tests import reference as ref
    src = f"""model M {{
  input x: float32[batch, 12, 2]
  output h = {line}
}}"""
    warnings = load(src).warnings
    assert len(warnings) == int(bool(warned))
    if isinstance(warned, str):     # a conv or pool after it: channels_last there too
        assert warnings[0].render().startswith(
            f"<string>:3:14: warning: {warned} reads axis 1 of [batch, 12, 4] as 12 channels, "
            "but the conv1d before it puts its 4 channels last")
        assert f"hint: pass channels_last = true to this {warned} too" in warnings[0].render()
    elif warned:
        text = warnings[0].render()
        assert text.startswith("<string>:3:14: warning: batch_norm normalizes axis 1 of "
                               "[batch, 12, 4] as 12 channels, but the conv1d before it")
        assert "permute(h, [0, 2, 1]) |> batch_norm, then permute back" in text
        net = nnlang.compile(src.replace(line, line.replace(
            "|> batch_norm", "|> permute([0, 2, 1]) |> batch_norm |> permute([0, 2, 1])")),
            dtype="float64", batch=3, seed=0)
        p = net.parameters()
        assert p["h.gamma"].shape == (4,)
        x = np.random.default_rng(0).normal(size=(3, 12, 2))
        y = ref.conv(x, p["conv1d.weight"], p["conv1d.bias"], kernel=[3], stride=1,
                     padding=[2, 0], dilation=1, channels_last=True)        # [3, 12, 4]
        if "relu" in line:
            y = np.maximum(y, 0)
        want = (y - p["h.running_mean"]) / np.sqrt(p["h.running_var"] + 1e-5) * p["h.gamma"] \
            + p["h.beta"]
        np.testing.assert_allclose(net.forward({"x": x})["h"], want, rtol=1e-12, atol=1e-14)


def test_a_keras_momentum_after_a_channels_last_conv_warns_of_both():
    """A Keras port writes Conv1D (channels last) then BatchNormalization(momentum = 0.99):
    the layout warning hid the momentum one (one warning a node), though each is its own
    mistake and docs/language.md lists both."""
    src = """model M {
  input x: float32[batch, 12, 2]
  output h = conv1d(x, 4, 3, channels_last = true) |> batch_norm(momentum = 0.99)
}"""
    texts = [w.render() for w in load(src).warnings]
    assert len(texts) == 2, texts
    assert "batch_norm normalizes axis 1 of [batch, 10, 4] as 10 channels" in texts[0]
    assert "Keras' momentum = 0.99 is `momentum = 0.01` here" in texts[1]


def test_a_loss_in_a_repeat_says_to_carry_a_sum():
    """Deep supervision's loss per layer inside `repeat` failed with "loss 'aux' is declared
    twice", a line written once; the hint's carried sum is the sum of the layers' losses."""
    body = """model Deep {
  input x: float32[batch, 4]
  input y: float32[batch]
  h = x
  LOOP
}"""
    with pytest.raises(nnlang.NNError) as err:
        load(body.replace("LOOP", "repeat 2 {\n    h = dense(h, 4) |> relu\n"
                                  "    loss aux = mean((sum(h, axis = -1) - y) ** 2)\n  }"))
    text = err.value.diagnostics[0].render()
    assert "error: loss 'aux' inside `repeat` is declared again by each copy" in text
    assert "`total = 0.0` before, `total = total + ...` inside, `loss aux = total` after" in text
    net = nnlang.compile(body.replace("LOOP", "total = 0.0\n  repeat 2 {\n    h = dense(h, 4) "
                                      "|> relu\n    total = total + mean((sum(h, axis = -1) - y)"
                                      " ** 2)\n  }\n  loss aux = total"),
                         dtype="float64", batch=3, seed=0)
    p, rng = net.parameters(), np.random.default_rng(0)
    f = {"x": rng.normal(size=(3, 4)), "y": rng.normal(size=3)}
    h, want = f["x"], 0.0
    for k in ("h.0.weight", "h.1.weight"):
        h = np.maximum(h @ p[k] + p[k.replace("weight", "bias")], 0)
        want += np.mean((h.sum(-1) - f["y"]) ** 2)
    assert net.evaluate(f)["aux"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("weights,warned", [
    ("dense(x, 1) |> softmax", "softmax over axis -1 of [batch, 12, 1]"),
    ("dense(x, 1, activation = \"softmax\")", "softmax over axis -1 of [batch, 12, 1]"),
    ("dense(x, 1) |> log_softmax |> exp", "log_softmax over axis -1 of [batch, 12, 1]"),
    ("dense(x, 1) |> softmax(axis = 1)", None),              # the hint's fix: over time
])
def test_a_softmax_over_an_axis_of_one_is_a_located_warning(weights, warned):
    """Attention pooling with Keras' Dense(1, activation="softmax"): each time step normalized
    alone, a weight of 1 everywhere and no gradient into the scoring layer, silently."""
    src = f"""model Pool {{
  input x: float32[batch, 12, 4]
  input y: float32[batch]
  w = {weights}
  loss mse(sum(sum(x * w, axis = 1), axis = -1), y)
}}"""
    warnings = load(src).warnings
    assert len(warnings) == (warned is not None)
    net = nnlang.compile(src, dtype="float64", batch=2, seed=0)
    rng = np.random.default_rng(0)
    grad = net.gradients({"x": rng.normal(size=(2, 12, 4)), "y": rng.normal(size=2)})["w.weight"]
    if warned:
        text = warnings[0].render()
        assert text.startswith(f"<string>:4:7: warning: {warned}, an axis of size 1, is")
        assert "hint: normalize over the axis that holds the choices, e.g. `softmax(..., axis = "\
               "1)` over its 12 entries" in text
        assert not grad.any()                 # what the warning says: no gradient
    else:
        assert np.abs(grad).max() > 1e-6


def test_logits_into_cross_entropy_give_no_warning():
    for path in ("models/mlp.nn", "models/cnn.nn", "models/transformer.nn"):
        assert load(path).warnings == []


def test_check_prints_the_warning_and_still_succeeds(tmp_path):
    from typer.testing import CliRunner
    from nnlang_cli.main import app
    path = tmp_path / "m.nn"
    path.write_text("model M {\n  input x: float32[batch, 4]\n  input label: int32[batch]\n"
                    "  loss cross_entropy(softmax(x), label)\n}\n")
    r = CliRunner().invoke(app, ["check", str(path)])
    assert r.exit_code == 0, r.output
    assert f"{path}:4:8: warning: cross_entropy takes logits" in r.stderr



def test_compile_of_a_path_or_source_warns_as_check_does():
    """`nnlang check` and `train` printed the softmax-into-cross_entropy warning, while a Python
    loop's `nnlang.compile` (Keras' `model.compile` habit) said nothing."""
    import warnings
    src = "model M {\n  input x: float32[batch, 4]\n  input label: int32[batch]\n" \
          "  loss cross_entropy(softmax(x), label)\n}\n"
    with pytest.warns(UserWarning, match=r"<string>:4:8: warning: cross_entropy takes logits"):
        nnlang.compile(src, backend="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnlang.compile(src.replace("softmax(x)", "x"), backend="reference")
        nnlang.compile(load(src), backend="reference")   # a Program: its `.warnings` say it

SHARED_BLOCK = """
block Cell(x, h) {
  h2 = tanh(dense(x, 4) + dense(h, 4, use_bias = false))
  return h2, h2
}
model M {
  input x: float32[batch, 5, 3]
  input z: float32[batch, 5, 3]
  input h0: float32[batch, 4]
  CALLS
  loss sum(a * a) + sum(b * b)
}
"""


@pytest.mark.parametrize("calls", [
    "a, ha = Cell(x[:, 0], h0)\n  b, hb = Cell(z[:, 0], h0, share = a)",
    "a, ha = scan Cell(h0) over x\n  b, hb = scan Cell(h0, share = a) over z",
])
def test_a_shared_block_call_reuses_every_weight_of_the_first(calls):
    """A block with two anonymous layers, called again with share =: its layers were renamed
    (h2_2, h2_3) and got weights of their own, silently; a scan's result could not be shared."""
    net = nnlang.compile(SHARED_BLOCK.replace("CALLS", calls), batch=2, seed=0)
    assert sorted(net.parameters()) == ["a.h2.bias", "a.h2.weight", "a.h2_1.weight"]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    feeds = {"x": x, "z": x, "h0": rng.normal(size=(2, 4)).astype(np.float32)}
    single = nnlang.compile(SHARED_BLOCK.replace("CALLS", calls.split("\n")[0]).replace(
        " + sum(b * b)", ""), batch=2, seed=0)
    single.load_state_dict(net.parameters())
    got, one = net.gradients(feeds), single.gradients(feeds)
    for name, g in one.items():   # NOTE: both calls see the same input: twice the gradient
        np.testing.assert_allclose(got[name], 2 * g, rtol=1e-5, atol=1e-6, err_msg=name)


TOWER = """
block Tower(x) {
  return dense(x, 3) |> tanh |> dense(2)
}
model M {
  input left: float32[batch, 4]
  input right: float32[batch, 4]
  a = Tower(left)
  b = Tower(right, share = a)
  loss sum(a * b)
}
"""


def test_share_of_a_block_whose_result_is_a_layers_output_reuses_the_block():
    """A Siamese tower that ends in a dense layer (`return ... |> dense(2)`), called again with
    `share = a`: the result was filed under the block's last dense (a.dense_1), so the second
    call ran the whole block under that path and got weights of its own (a.dense_1.dense...),
    silently: twice the parameters and no sharing. Checked against numpy."""
    net = nnlang.compile(TOWER, batch=2, seed=0, dtype="float64")
    p = net.parameters()
    assert sorted(p) == ["a.dense.bias", "a.dense.weight", "a.dense_1.bias", "a.dense_1.weight"]
    rng = np.random.default_rng(1)
    left, right = rng.normal(size=(2, 2, 4))
    tower = lambda x: np.tanh(x @ p["a.dense.weight"] + p["a.dense.bias"]) \
        @ p["a.dense_1.weight"] + p["a.dense_1.bias"]
    got = net.evaluate({"left": left, "right": right})
    np.testing.assert_allclose(list(got.values())[0], np.sum(tower(left) * tower(right)),
                               rtol=1e-12)


OWN_PARAM = """
block Cell(x, h) {
  param w: float32[4, 4]
  h2 = tanh(dense(x, 4) + h @ w)
  return h2, h2
}
model M {
  input x: float32[batch, 5, 3]
  input z: float32[batch, 5, 3]
  input h0: float32[batch, 4]
  CALLS
  loss sum(a * b)
}
"""


@pytest.mark.parametrize("calls", [
    "a, ha = Cell(x[:, 0], h0)\n  b, hb = Cell(z[:, 0], h0, share = a)",
    "a, ha = scan Cell(h0) over x\n  b, hb = scan Cell(h0, share = a) over z",
])
def test_a_shared_block_call_reuses_the_blocks_own_param(calls):
    """A block declaring its own `param w`, called again with `share = a` (or scanned again):
    "weight 'a.w' [4, 4] conflicts with its earlier definition [4, 4]", an error at the
    param, where docs/language.md says the shared call reuses every weight. Checked against
    numpy with the one set of weights."""
    net = nnlang.compile(OWN_PARAM.replace("CALLS", calls), batch=2, seed=0, dtype="float64")
    p = net.parameters()
    assert sorted(p) == ["a.h2.bias", "a.h2.weight", "a.w"]
    rng = np.random.default_rng(1)
    x, z = rng.normal(size=(2, 2, 5, 3))
    h0 = rng.normal(size=(2, 4))

    def run(seq):
        h, hs = h0, []
        for t in range(seq.shape[1] if "scan" in calls else 1):
            h = np.tanh(seq[:, t] @ p["a.h2.weight"] + p["a.h2.bias"] + h @ p["a.w"])
            hs.append(h)
        return np.stack(hs, 1) if "scan" in calls else h
    got = list(net.evaluate({"x": x, "z": z, "h0": h0}).values())[0]
    np.testing.assert_allclose(got, np.sum(run(x) * run(z)), rtol=1e-12)


SIGMOID_TAIL = """model M {
  input x: float32[batch, 8]
  output y = sigmoid(x)
  loss sum(log(sigmoid(x)))
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""
TAIL = np.array([[-10.0, -12.0, -16.0, -20.0, -30.0, -80.0, 3.0, 20.0]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_keeps_its_relative_precision_in_the_negative_tail(backend, dtype):
    """sigmoid(-20) is 2.06e-9 (torch.sigmoid, 1 / (1 + e**20)). The tanh form
    0.5 * (tanh(x / 2) + 1) cancels there: float32 gave 0 from x = -16 (numba) or -20 (reference),
    so log(sigmoid(x)) was -inf and its gradient 1 - sigmoid(x) was lost, and sigmoid(-12) was
    0.9% off."""
    net = nnlang.compile(SIGMOID_TAIL, backend=backend, batch=1, dtype=dtype)
    want = 1.0 / (1.0 + np.exp(-TAIL))   # float64: exact to an ulp here
    y = net.forward({"x": TAIL})["y"]
    np.testing.assert_allclose(y, want, rtol=2e-6 if dtype == "float32" else 1e-14)
    # d log(sigmoid(x)) / dx = 1 - sigmoid(x); at x = 20 that is below float32's rounding of 1
    g = net.gradients({"x": TAIL}, inputs="x")["x"]
    np.testing.assert_allclose(g[:, :7], 1.0 - want[:, :7],
                               rtol=2e-6 if dtype == "float32" else 1e-14)


def test_sigmoid_tail_matches_torch():
    torch = pytest.importorskip("torch")
    want = torch.sigmoid(torch.tensor(TAIL, dtype=torch.float32)).numpy()
    y = nnlang.compile(SIGMOID_TAIL, backend="numba", batch=1).forward({"x": TAIL})["y"]
    np.testing.assert_allclose(y, want, rtol=2e-6)


POW = """model M {
  input x: float64[batch, 4]
  input e: float64[batch, 4]
  loss sum(x ** e)
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""
POW_X, POW_E = np.array([[0.0, 0.0, 2.0, 0.0]]), np.array([[2.0, 0.0, 3.0, 0.5]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_pow_gradient_at_a_zero_base_is_finite_as_in_pytorch(backend):
    """d(a**b)/db = a**b log(a) is 0 * -inf = nan at a = 0, and d(a**b)/da = b a**(b-1) is
    0 * inf = nan at a = b = 0; a**b is flat there (0 for b > 0, 1 for b = 0), and PyTorch's
    pow_backward gives 0 for both (masked_fill where b == 0, and where a == 0 and b >= 0)."""
    net = nnlang.compile(POW, backend=backend, batch=1)
    g = net.gradients({"x": POW_X, "e": POW_E}, inputs=("x", "e"))
    np.testing.assert_allclose(g["x"], [[0.0, 0.0, 12.0, np.inf]])   # 0.5 / sqrt(0) = inf
    np.testing.assert_allclose(g["e"], [[0.0, 0.0, 8 * np.log(2.0), 0.0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_float_to_an_int_power_is_numpys_at_a_zero_base_and_huge_exponents(backend):
    """x ** j with an int32 exponent: a numba kernel raised Python's ZeroDivisionError for
    0.0 ** -1 and OverflowError for 2.0 ** -2**31 (numba's float ** int is an integer power
    loop), a traceback from forward; numpy (and torch) give inf and 0."""
    src = """model M { input x: float32[batch, 6]  input j: int32[batch, 6]
      output y = x ** j }"""
    x = np.array([[0.0, 0.0, 2.0, -2.0, 2.0, 0.5]], np.float32)
    j = np.array([[-1, -2, -2147483648, 3, 2147483647, -3]], np.int32)
    y = nnlang.compile(src, backend=backend, batch=1).forward({"x": x, "j": j})["y"]
    with np.errstate(divide="ignore", over="ignore"):
        want = np.power(x.astype(np.float64), j.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(y, want)   # inf, inf, 0, -8, inf, 8


def test_pow_gradient_at_a_zero_base_matches_torch():
    torch = pytest.importorskip("torch")
    x, e = (torch.tensor(v, requires_grad=True) for v in (POW_X, POW_E))
    (x ** e).sum().backward()
    g = nnlang.compile(POW, backend="numba", batch=1).gradients(
        {"x": POW_X, "e": POW_E}, inputs=("x", "e"))
    np.testing.assert_array_equal(g["x"], x.grad.numpy())
    np.testing.assert_allclose(g["e"], e.grad.numpy(), rtol=1e-15)


SOFTPLUS = """model M {
  input x: float32[batch, 7]
  output y = softplus(x)
  loss sum(softplus(x))
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""
SP_X = np.array([[-30.0, -20.0, -10.0, -1e-3, 0.0, 10.0, 30.0]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_and_its_gradient_keep_the_negative_tail(backend, dtype):
    """softplus(-20) = log(1 + e**-20) = 2.06e-9 and softplus'(-20) = sigmoid(-20) (torch's
    softplus, numpy's logaddexp). log(1 + e) rounded 1 + e to 1 (0 from x = -17 in float32), and
    the gradient, built through (x + |x|) / 2, was 0.5 - (0.5 - sigmoid(x)): 0 in float32 from
    x = -17, 1.7e-4 off at x = -30 in float64."""
    net = nnlang.compile(SOFTPLUS, backend=backend, batch=1, dtype=dtype)
    rtol = 2e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(net.forward({"x": SP_X})["y"], np.logaddexp(0.0, SP_X), rtol=rtol)
    g = net.gradients({"x": SP_X}, inputs="x")["x"]
    np.testing.assert_allclose(g, 1.0 / (1.0 + np.exp(-SP_X)), rtol=rtol)
    assert g[0, 4] == 0.5            # softplus'(0), exactly


def test_softplus_tail_matches_torch():
    torch = pytest.importorskip("torch")
    t = torch.tensor(SP_X, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.softplus(t).sum().backward()
    net = nnlang.compile(SOFTPLUS, backend="numba", batch=1, dtype="float64")
    np.testing.assert_allclose(net.forward({"x": SP_X})["y"],
                               torch.nn.functional.softplus(t).detach().numpy(), rtol=1e-14)
    # NOTE: above its threshold = 20 torch returns x itself, gradient 1 (1 - 9e-14 at x = 30)
    np.testing.assert_allclose(net.gradients({"x": SP_X}, inputs="x")["x"][:, :6],
                               t.grad.numpy()[:, :6], rtol=1e-14)


ELU = """model M {
  input x: float32[batch, 6]
  output y = elu(x, alpha = 1.5)
  loss sum(elu(x, alpha = 1.5))
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""
ELU_X = np.array([[-1e-4, -1e-5, -1e-6, -1e-7, -3.0, 2.0]], np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_elu_keeps_its_digits_for_a_small_negative_x(backend):
    """elu(x) = alpha * expm1(x) for x <= 0 (torch.nn.functional.elu). It was built as
    e**x - 1, which cancels: 0.14% off at x = -1e-5 and 40% at -1e-7 in float32."""
    net = nnlang.compile(ELU, backend=backend, batch=1)
    x64 = ELU_X.astype(np.float64)
    want = np.where(x64 > 0, x64, 1.5 * np.expm1(x64))
    np.testing.assert_allclose(net.forward({"x": ELU_X})["y"], want, rtol=1e-6)
    g = net.gradients({"x": ELU_X}, inputs="x")["x"]
    np.testing.assert_allclose(g, np.where(x64 > 0, 1.0, 1.5 * np.exp(x64)), rtol=1e-6)


def test_elu_tail_matches_torch():
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.elu(torch.tensor(ELU_X), alpha=1.5).numpy()
    y = nnlang.compile(ELU, backend="numba", batch=1).forward({"x": ELU_X})["y"]
    np.testing.assert_allclose(y, want, rtol=1e-6)


MASKED_ROW = """model M {
  input q: float32[batch, 3, 4]
  input m: float32[batch, 3]
  output y = multi_head_attention(q, key_padding_mask = m, heads = 1)
  loss sum(y)
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_attention_over_keys_that_are_all_masked_is_even_in_both_dtypes(backend, dtype):
    """A query whose every key is masked (an all-padding row) attends evenly to them, as the
    doc says, in float32 and float64 alike. Adding -1e9 to the scores kept their differences in
    float64, so there the row attended as if unmasked, while float32 rounded them away."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 3, 4)) * 3
    m = np.array([[0, 0, 0], [1, 1, 0]], np.float32)
    net = nnlang.compile(MASKED_ROW, backend=backend, batch=2, dtype=dtype)
    state = net.state_dict()
    state.update({k: np.eye(4) for k in state if k.endswith(("wv", "wo"))})
    net.load_state_dict(state)
    y = net.forward({"q": q, "m": m})["y"]
    # values = q (identity wv, zero bias); even weights average them, for every query
    np.testing.assert_allclose(y[0], np.broadcast_to(q[0].mean(0), (3, 4)),
                               rtol=1e-5 if dtype == "float32" else 1e-12)


CAUSAL_PADDED = """model M {
  input q: float32[batch, 5, 4]
  input m: float32[batch, 5]
  output y = multi_head_attention(q, key_padding_mask = m, heads = 1, causal = true)
}"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_causal_attention_of_a_front_padded_row_never_reads_a_later_token(backend, dtype):
    """Front padding (data.md) and causal = true: the first positions' visible keys are all
    padding. Padding and the future were both -1e9, so those queries attended to the later,
    real keys: changing the last token changed the output at the pads (a causal LM saw its
    next token there). Now they attend evenly to their padded past, the mean of its values."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 5, 4)) * 3
    m = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.float32)
    net = nnlang.compile(CAUSAL_PADDED, backend=backend, batch=2, dtype=dtype)
    state = net.state_dict()
    state.update({k: np.eye(4) for k in state if k.endswith(("wv", "wo"))})
    net.load_state_dict(state)
    y = net.forward({"q": q, "m": m})["y"]
    later = q.copy()
    later[:, 4] += 5.0
    y2 = net.forward({"q": later, "m": m})["y"]
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y2[:, :4], y[:, :4], rtol=tol, atol=tol)
    # values = q (identity wv and wo, zero biases): pad i averages the pads 0..i
    np.testing.assert_allclose(y[0, :2], np.cumsum(q[0, :2], 0) / [[1], [2]], rtol=tol)


def test_causal_attention_with_more_queries_than_keys_is_a_located_error():
    """causal = true aligns the last query with the last key (torch's causal_lower_right), so
    with 5 queries over 3 keys queries 0 and 1 may see no key at all. They attended to the
    future keys instead (all of them equally far in the future: in float64 with their scores'
    differences, as if unmasked), where the doc promises "never to a future key": changing
    key 2 changed query 0's output. Now the shape is refused at the call, with the reason."""
    src = """model M {
  input q: float32[batch, 5, 4]
  input kv: float32[batch, %d, 4]
  output y = multi_head_attention(q, kv, heads = 1, causal = true)
}"""
    with pytest.raises(nnlang.NNError) as err:
        load(src % 3)
    text = err.value.render()
    assert "<string>:4:" in text and "5 queries" in text and "3 keys" in text, text
    assert "no key" in text, text
    load(src % 5)   # as many keys as queries, or more (a cache): fine
    load(src % 7)


BN_ONE = """model M {
  input x: float32[batch, 4]
  input y: float32[batch, 4]
  output h = batch_norm(x)
  loss mse(h, y)
}
train M { optimizer = sgd(lr = 0.1) batch = 1 }"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_training_on_one_value_per_channel_is_a_located_error(backend):
    """torch.nn.BatchNorm1d refuses it ('Expected more than 1 value per channel when
    training'): the batch variance is 0, so the output is beta whatever x is and no gradient
    reaches x. nnlang trained on silently, and left the running statistics at their start."""
    net = nnlang.compile(BN_ONE, backend=backend, batch=1)
    with pytest.raises(nnlang.NNError) as err:
        net.train_step({"x": np.arange(4.0)[None], "y": np.ones((1, 4))})
    assert ":4:" in str(err.value) and "one value per channel" in str(err.value)
    ok = nnlang.compile(BN_ONE, backend=backend, batch=2)   # two rows: fine
    ok.train_step({"x": np.arange(8.0).reshape(2, 4), "y": np.ones((2, 4))})
    assert not np.array_equal(ok.state_dict()["h.running_var"], np.ones(4))


def test_a_train_section_for_a_model_without_a_loss_is_a_warning_at_check():
    """`nnlang check` passed it silently; `nnlang train` said 'declares no loss' only after
    loading the data and building the step. A model without a train section (inference,
    export) is no warning."""
    src = """model M {
  input x: float32[batch, 4]
  output y = dense(x, 2)
}
"""
    assert load(src).warnings == []
    (warning,) = load(src + "train M { batch = 8 }\n").warnings
    text = warning.render()
    assert text.startswith("<string>:5:1: warning: a train section for model 'M', which "
                           "declares no loss"), text
    assert "loss cross_entropy(y, label)" in text


TRIANGLES = """model M {
  symbol seq
  input x: float64[batch, seq, seq]
  input y: float64[batch, 4, 6]
  param p: float64[4, 6] = zeros
  output lo = tril(x, k = -1)
  output up = triu(x, 2)
  loss sum(tril(p, k = 1) * y) + sum(triu(p * p, k = -2) * y)
}
train M { optimizer = sgd(lr = 0.1) batch = 2 }"""


def _keep(shape, k, upper):
    """Where np.triu/np.tril (torch.triu/tril) keep values: column - row >= k, or <= k."""
    d = np.arange(shape[-1])[None, :] - np.arange(shape[-2])[:, None]
    return d >= k if upper else d <= k


@pytest.mark.parametrize("backend", BACKENDS)
def test_tril_and_triu_match_numpy_and_torch(backend):
    """tril/triu keep the lower/upper triangle of the last two axes from diagonal k, on a
    symbolic square length and a concrete non-square weight, with the mask as gradient."""
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 6))
    y = rng.normal(size=(2, 4, 6))
    net = nnlang.compile(TRIANGLES, backend=backend, batch=2, dtype="float64")
    net.load_state_dict({"p": p}, strict=False)
    for seq in (5, 1):
        x = rng.normal(size=(2, seq, seq))
        out = net.forward({"x": x, "y": y})
        np.testing.assert_array_equal(out["lo"], np.where(_keep(x.shape, -1, False), x, 0))
        np.testing.assert_array_equal(out["up"], np.where(_keep(x.shape, 2, True), x, 0))
    got = net.gradients({"x": rng.normal(size=(2, 3, 3)), "y": y})["p"]
    want = _keep(p.shape, 1, False) * y.sum(0) + _keep(p.shape, -2, True) * 2 * p * y.sum(0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    torch = pytest.importorskip("torch")
    t, yt = torch.tensor(p, requires_grad=True), torch.tensor(y)
    (torch.tril(t, 1) * yt).sum().add((torch.triu(t * t, -2) * yt).sum()).backward()
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12)
    xt = torch.tensor(rng.normal(size=(2, 4, 4)))
    out = net.forward({"x": xt.numpy(), "y": y})
    np.testing.assert_array_equal(out["lo"], torch.tril(xt, diagonal=-1).numpy())
    np.testing.assert_array_equal(out["up"], torch.triu(xt, diagonal=2).numpy())


POSITIONS = """model P {
  symbol seq
  input tokens: int32[batch, seq]
  input lengths: int32[batch, 1]
  param table: float32[16, 3] = zeros
  output pos = positions(tokens, axis = 1)
  output keep = positions(tokens, axis = -1) < lengths
  output h = gather(table, positions(tokens, axis = 1))
  output half = positions(tokens, 1, "float32") * 0.5
}"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_positions_count_the_places_of_a_symbolic_length(backend):
    """positions(x, axis) is numpy's arange(x.shape[axis]) (torch.arange), at each bound
    length: position ids for a learned table, a mask from lengths."""
    net = nnlang.compile(POSITIONS, backend=backend, batch=2)
    table = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    net.load_state_dict({"table": table}, strict=False)
    lengths = np.array([[0], [3]], np.int32)
    for seq in (1, 5):
        tokens = np.zeros((2, seq), np.int32)
        out = net.forward({"tokens": tokens, "lengths": lengths})
        want = np.arange(seq)
        np.testing.assert_array_equal(out["pos"], want)
        assert out["pos"].dtype == np.int32 and out["half"].dtype == np.float32
        np.testing.assert_array_equal(out["keep"], want[None, :] < lengths)
        np.testing.assert_array_equal(out["h"], table[:seq])
        np.testing.assert_array_equal(out["half"], want * 0.5)


def test_the_reference_backend_runs_only_what_the_step_needs():
    """`h ** 2` on a negative h: the reference backend evaluated pow's gradient with respect
    to the constant exponent too (h**2 * log h, which nothing reads) and numpy warned
    'invalid value encountered in log' at every training step."""
    import warnings
    src = """model M {
  input x: float32[batch, 2]
  input y: float32[batch]
  h = dense(x, 2)
  output p = sum(h ** 2, axis = 1)
  loss mse(p, y)
}
train M { optimizer = sgd(lr = 0.01) batch = 4 }"""
    feeds = {"x": np.array([[-1, 2], [3, -4], [-5, -6], [7, 8]], np.float32),
             "y": np.zeros(4, np.float32)}
    ref = nnlang.compile(src, backend="reference", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses = [ref.train_step(feeds) for _ in range(2)]
    compiled = nnlang.compile(src, backend="numba", seed=0)
    np.testing.assert_allclose(losses, [compiled.train_step(feeds) for _ in range(2)],
                               rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width, batch", [(4, 4), (512, 256)])  # 2nd: GEMMs split over threads
def test_non_finite_inputs_give_nan_without_numpy_warnings(backend, width, batch):
    """inf and -inf in a row make inf - inf inside the GEMM: numpy's 'RuntimeWarning: invalid
    value encountered in matmul' reached the user from the backends' calls, though the NaN is
    in the result (and nnlang reports non-finite losses itself). The values are numpy's."""
    import warnings
    src = f"""
model M {{
  input x: float32[batch, {width}]
  input label: int32[batch]
  h = dense(x, {width}) |> relu
  logits = dense(h, 3)
  output y = softmax(logits)
  loss cross_entropy(logits, label)
}}"""
    net = nnlang.compile(src, backend=backend, batch=batch)
    x = np.random.default_rng(0).normal(size=(batch, width)).astype(np.float32)
    x[0, :width // 2], x[0, width // 2:], x[1, 0] = np.inf, -np.inf, np.nan
    label = np.zeros(batch, np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = net.forward({"x": x, "label": label})["y"]
        grads = net.gradients({"x": x, "label": label})
    p = {k: v.astype(np.float64) for k, v in net.parameters().items()}
    with np.errstate(all="ignore"):
        h = np.maximum(x.astype(np.float64) @ p["h.weight"] + p["h.bias"], 0)
        z = h @ p["logits.weight"] + p["logits.bias"]
        e = np.exp(z - z.max(1, keepdims=True))
    want = e / e.sum(1, keepdims=True)
    assert np.isnan(y[:2]).all() and np.isnan(want[:2]).all()
    np.testing.assert_allclose(y[2:], want[2:], rtol=1e-4, atol=1e-6)
    assert np.isnan(grads["h.weight"]).any()


@pytest.mark.parametrize("line,names", [
    ("  unused = dense(x, 3)\n", "unused.weight, unused.bias"),
    ("  output side = dense(x, 2)\n", "side.weight, side.bias"),
    ("  metric m = mae(dense(x, 1), y)\n", "m.weight, m.bias"),
    ("", None),
    ("  frozen = dense(x, 3, trainable = false)\n", None),
    ("  fixed = dense(x |> stop_gradient, 3)\n  output f = fixed\n", "fixed.weight, fixed.bias"),
])
def test_weights_no_loss_reads_are_a_located_warning(line, names):
    """Training leaves such weights as they are (no gradient, no decay: tests/test_frozen.py);
    Keras warns "Gradients do not exist for variables" at the first step, PyTorch says nothing.
    A layer behind stop_gradient whose value a loss reads is a frozen backbone, said in the
    model: no warning for it (tests/test_frozen.py)."""
    src = f"""model M {{
  input x: float32[batch, 4]
  input y: float32[batch, 1]
{line}  h = dense(x, 5) |> stop_gradient
  out = dense(h, 1)
  loss mse(out, y)
}}"""
    warnings = load(src).warnings
    if names is None:
        assert warnings == []
        return
    (warning,) = warnings
    assert warning.message.startswith(f"no loss reads the weights {names}: training leaves")
    assert str(warning.span).startswith("<string>:4:")


def test_unreached_weights_a_penalty_covers_are_not_said_to_be_left():
    """l2 is a loss term over the weight matrices, so it reaches a layer whose value nothing
    uses: one SGD step moves its kernel by lr * 2 * l2 * w (the gradient of a PyTorch manual
    penalty l2 * sum(w ** 2) over all parameters) and leaves its bias. The warning said
    "training leaves them as they are (no gradient, no weight decay)" there."""
    src = """model M {
  input x: float32[batch, 4]
  input y: float32[batch, 2]
  a = dense(x, 2)
  u = dense(x, 3)
  loss mse(a, y)
}
train M { optimizer = sgd(lr = 0.1)  batch = 4  l2 = 0.5 }"""
    (warning,) = load(src).warnings
    assert "leaves" not in warning.message
    assert "u.weight (l2)" in warning.message and "u.bias (" not in warning.message
    net = nnlang.compile(src, backend="reference", dtype="float64", seed=1)
    before = net.parameters()
    rng = np.random.default_rng(0)
    net.train_step({"x": rng.normal(size=(4, 4)), "y": rng.normal(size=(4, 2))})
    after = net.parameters()
    np.testing.assert_allclose(after["u.weight"], before["u.weight"] * (1 - 0.1 * 2 * 0.5),
                               rtol=1e-12)
    np.testing.assert_array_equal(after["u.bias"], before["u.bias"])


def test_a_penalty_set_on_the_command_line_is_in_the_unreached_weight_warning():
    """`nnlang train --set l2=0.5` on a file without l2: training shrinks the unused layer's
    kernel (one SGD step: w * (1 - lr * 2 * l2)), but the warning, linted with the file's
    settings, said "training leaves them as they are"."""
    from nnlang.train.overrides import resolve
    src = """model M {
  input x: float32[batch, 4]
  input y: float32[batch, 2]
  a = dense(x, 2)
  u = dense(x, 3)
  loss mse(a, y)
}
train M { optimizer = sgd(lr = 0.1)  batch = 4 }"""
    assert "leaves them as they are" in load(src).warnings[0].message
    program, cfg, *_ = resolve(src, sets={"l2": 0.5})
    (warning,) = program.warnings
    assert "leaves" not in warning.message and "u.weight (l2)" in warning.message
    program, cfg, *_ = resolve(src, sets={"l2": 0.5, "l2_on": ["a.weight"]})
    assert "leaves them as they are" in program.warnings[0].message


CONV_HEAD = {
    "conv1d": ("input x: float32[batch, 4, 12]", "conv1d(x, 6, 3)", "[batch, 6, 10]", "2"),
    "conv2d": ("input x: float32[batch, 3, 8, 8]", "conv2d(x, 6, 3, padding = 1)",
               "[batch, 6, 8, 8]", "[2, 3]"),
}


@pytest.mark.parametrize("conv", ["conv1d", "conv2d"])
@pytest.mark.parametrize("head,warned", [
    ("max(c, axis = 1) |> flatten |> dense(2)", "max"),
    ("mean(c, axis = -RANK) |> flatten |> dense(2)", "mean"),   # axis 1 counted from the end
    ("max(c, axis = 1, keepdims = true) |> flatten |> dense(2)", None),   # a map, kept
    ("max(c, axis = SPATIAL) |> dense(2)", None),               # the hint's fix
    ("global_max_pool(c) |> dense(2)", None),
    ("unsqueeze(max(c, axis = 1), axis = 1) * c |> flatten |> dense(2)", None),   # attention
    ("sum(c, axis = 1) |> flatten |> dense(2)", None),          # no pooling is written so
])
def test_a_max_or_mean_over_a_convolutions_channels_is_a_located_warning(conv, head, warned):
    """max(c, axis = 1) on a conv's [batch, channels, *spatial] (Keras' GlobalMaxPooling1D
    habit on its channels-last layout) keeps one value per position and pools the filters
    away, silently; the global pooling over the positions was meant. Kept maps (keepdims,
    CBAM's spatial attention fed back into the features) are not warned about."""
    decl, layer, shape, spatial = CONV_HEAD[conv]
    rank = len(shape.split(","))
    head = head.replace("RANK", str(rank - 1)).replace("SPATIAL", spatial)
    src = f"""model Head {{
  {decl}
  input y: int32[batch]
  c = {layer} |> relu
  logits = {head}
  loss cross_entropy(logits, y)
}}"""
    warnings = load(src).warnings
    assert len(warnings) == (warned is not None), [w.render() for w in warnings]
    if warned:
        text = warnings[0].render()
        assert text.startswith(f"<string>:5:12: warning: {warned} over axis 1 of {shape} "
                               "reduces the 6 channels of the ")
        pool = "global_max_pool" if warned == "max" else "global_avg_pool"
        assert f"write `{pool}(c)` or `{warned}(c, axis = {spatial})` ([batch, 6])" in text
        # what it says: the channels reduced, one value per position (numpy on c)
        net = nnlang.compile(src.replace(" |> flatten |> dense(2)", "").replace(
            "loss cross_entropy(logits, y)", "output c\n  output logits"), dtype="float64",
            batch=2, seed=0)
        dims = [int(d) for d in decl.split("[batch, ")[1].rstrip("]").split(", ")]
        out = net.forward({"x": np.random.default_rng(0).normal(size=(2, *dims))})
        want = out["c"].max(axis=1) if warned == "max" else out["c"].mean(axis=1)
        np.testing.assert_allclose(out["logits"], want, rtol=1e-12)
        assert out["logits"].shape == (2, *out["c"].shape[2:])


def test_no_shipped_model_pools_a_convolutions_channels():
    for path in ("models/cnn.nn", "models/conv1d.nn"):
        assert not [w for w in load(path).warnings if "channels of the" in w.render()]
