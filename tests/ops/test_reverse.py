"""Reversing an axis (docs/language.md, "Indexing" and "Recurrence"): subscripts with a step
against numpy's slicing, `flip` on a symbolic length and on the batch axis, and Keras'
`go_backwards` of rnn/lstm/gru against PyTorch's layer on the flipped sequence.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError

N = 7   # the sliced axis
BOUNDS = (None, 0, 1, 3, 6, -1, -3, 9, -9)
STEPS = (-1, -2, -3, 2, 3)


def _spell(v):
    return "" if v is None else str(v)


def _subscripts():
    """(start, stop, step) of every non-empty slice of the axis from BOUNDS and STEPS."""
    return [(a, b, s) for a, b, s in itertools.product(BOUNDS, BOUNDS, STEPS)
            if len(range(N)[a:b:s])]


def _model(cases, axis_type: str = str(N)) -> str:
    lines = [f"  output o{k} = x[:, {_spell(a)}:{_spell(b)}:{s}]"
             for k, (a, b, s) in enumerate(cases)]
    loss = " + ".join(f"sum(o{k} * o{k})" for k in range(len(cases)))
    return (f"model M {{\n  symbol seq\n  input x: float64[batch, {axis_type}, 2]\n"
            + "\n".join(lines) + f"\n  loss ({loss}) / 2\n}}\n")


def _check(net, cases, x):
    out = net.forward({"x": x})
    grad = np.zeros_like(x)
    for k, (a, b, s) in enumerate(cases):
        np.testing.assert_array_equal(out[f"o{k}"], x[:, a:b:s], err_msg=f"x[:, {a}:{b}:{s}]")
        grad[:, a:b:s] += x[:, a:b:s]   # d(sum(o * o) / 2)/dx, by numpy's own indexing
    np.testing.assert_allclose(net.gradients({"x": x}, inputs=["x"])["x"], grad, rtol=1e-12)


def test_stepped_subscripts_are_numpys_slices_with_their_gradient():
    """Every start:stop:step of BOUNDS and STEPS (negative and out-of-range bounds), values
    and gradient against numpy; the subscript was a parse error ("for a step, call slice")."""
    cases = _subscripts()
    assert len(cases) > 150
    x = np.random.default_rng(0).normal(size=(2, N, 2))
    _check(nnlang.compile(_model(cases), backend="reference", dtype="float64"), cases, x)


def test_stepped_subscripts_compiled_for_numba():
    """The same on numba, where a negative step is a view with a negative stride that the
    fused kernels read (forward) and the gradient's flip or unslice writes."""
    cases = [(None, None, -1), (5, 1, -2), (-1, -9, -3), (9, None, -2), (None, 2, -1),
             (1, None, 3), (-3, 0, -1)]
    x = np.random.default_rng(1).normal(size=(3, N, 2))
    _check(nnlang.compile(_model(cases), dtype="float64"), cases, x)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_reversal_on_a_symbolic_length_and_the_batch_axis(backend):
    """x[:, ::-1] and flip over a `symbol` length and over the batch axis: one compiled model,
    several lengths, values and gradients against numpy's flip."""
    src = """
model M {
  symbol seq
  input x: float64[batch, seq, 3]
  output r = x[:, ::-1]
  output f = flip(x, axis = [0, 2])
  output b = x[::-1, ::-1] * 2
  loss sum(r * x) + sum(f * f) + sum(b)
}
"""
    net = nnlang.compile(src, backend=backend, dtype="float64")
    rng = np.random.default_rng(2)
    for batch, seq in ((2, 5), (3, 1), (4, 8)):
        x = rng.normal(size=(batch, seq, 3))
        out = net.forward({"x": x})
        np.testing.assert_array_equal(out["r"], x[:, ::-1])
        np.testing.assert_array_equal(out["f"], x[::-1, :, ::-1])
        np.testing.assert_array_equal(out["b"], 2 * x[::-1, ::-1])
        grad = net.gradients({"x": x}, inputs=["x"])["x"]
        np.testing.assert_allclose(grad, 2 * x[:, ::-1] + 2 * x + 2, rtol=1e-12)


@pytest.mark.parametrize("line, at, words", [
    ("y = s[:, 5:1:-2]", "5:7", ["symbolic length", "flip(x, axis = 1)"]),
    ("y = s[:, ::-2]", "5:7", ["symbolic length", "reverse the axis first"]),
    ("y = x[:, ::0]", "5:14", ["nonzero integer", "x[:, ::-1] reverses"]),
    ("y = x[:, 1:5:-1]", "5:7", ["1:5:-1 of a dim of size 6 is empty", "counts down"]),
    ("y = flip(x, axis = [1, -2])", "5:22", ["names an axis twice"]),
    ("y = flip(x, axis = 3)", "5:22", ["does not name axes", "from -3 to 2"]),
])
def test_a_reversal_that_cannot_be_is_a_located_error(line, at, words):
    src = ("model M {\n  symbol seq\n  input x: float32[batch, 6, 3]\n"
           f"  input s: float32[batch, seq, 3]\n  {line}\n  output y\n}}\n")
    with pytest.raises(NNError) as err:
        nnlang.load(src)
    text = err.value.render()
    assert f"<string>:{at}:" in text, text
    for w in words:
        assert w in text, text


def test_fmt_keeps_the_step():
    from nnlang.frontend.fmt import format_source
    src = "model M {\n  input x: float32[batch, 6]\n  output y = x[:, 5:1:-2] + x[:, ::2]\n}\n"
    assert "x[:, 5:1:-2] + x[:, ::2]" in format_source(src)


# *** go_backwards ***

def _torch_twin(torch, cell, p, prefix):
    """PyTorch's nn.RNN/LSTM/GRU holding an nnlang layer's weights (Keras gate order; torch's
    GRU is r, z, n)."""
    kind = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    twin = kind(3, 4, batch_first=True, dtype=torch.float64)
    order = np.r_[4:8, 0:4, 8:12] if cell == "gru" else slice(None)
    bias = p[prefix + "bias"] if cell != "gru" else p[prefix + "bias"][0]
    with torch.no_grad():
        twin.weight_ih_l0.copy_(torch.tensor(p[prefix + "kernel"][:, order].T))
        twin.weight_hh_l0.copy_(torch.tensor(p[prefix + "recurrent"][:, order].T))
        twin.bias_ih_l0.copy_(torch.tensor(bias[order]))
        twin.bias_hh_l0.copy_(torch.tensor(p[prefix + "bias"][1][order] if cell == "gru"
                                           else 0 * bias))
    return twin


def _backwards_net(cell):
    src = f"""
model M {{
  symbol seq
  input x: float64[batch, seq, 3]
  input tokens: int32[batch, seq]
  output hs = {cell}(x, 4, go_backwards = true, return_sequences = true)
  output last = {cell}(x, 4, go_backwards = true, share = hs)
  output padded = {cell}(x, 4, go_backwards = true, return_sequences = true, mask = tokens,
                         share = hs)
}}
"""
    net = nnlang.compile(src, backend="reference", dtype="float64", seed=0)
    rng = np.random.default_rng(1)   # nonzero biases, so a bias slot mixed up shows
    net.load_state_dict({k: v + 0.3 * rng.normal(size=v.shape) for k, v in
                         net.parameters().items()})
    return net


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_go_backwards_is_keras_against_numpy(cell):
    """Keras' go_backwards: output t has read x[T-1] .. x[T-1-t] (last step first), the last
    output has read the whole row; with a mask padded at the end the reversed row starts with
    its pads, whose outputs are zeros (Keras masking). Against tests/reference.py's Keras
    layer on the flipped sequence."""
    from tests.reference import RNN
    net = _backwards_net(cell)
    p = net.parameters()
    w = [p[f"hs.{k}"] for k in ("kernel", "recurrent", "bias")]
    n_states = 2 if cell == "lstm" else 1
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 3))
    tokens = np.array([[4, 2, 7, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    out = net.forward({"x": x, "tokens": tokens})
    opts = dict(units=4, activation="tanh", bidirectional=False)
    flipped = x[:, ::-1]
    np.testing.assert_allclose(out["hs"], RNN[cell](flipped, None, *[None] * n_states, *w,
                                                    return_sequences=True, **opts), rtol=1e-10)
    np.testing.assert_allclose(out["last"], RNN[cell](flipped, None, *[None] * n_states, *w,
                                                      return_sequences=False, **opts),
                               rtol=1e-10)
    want = RNN[cell](flipped, tokens[:, ::-1], *[None] * n_states, *w, return_sequences=True,
                     **opts)
    np.testing.assert_allclose(out["padded"], want, rtol=1e-10, atol=1e-12)
    assert not out["padded"][0, :2].any()   # row 0's two end pads come first, as zeros


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_go_backwards_is_pytorchs_layer_on_the_flipped_sequence(cell):
    """`torch.flip(x, [1])` through nn.RNN/LSTM/GRU with the same weights: every output in
    its order and the final h; a masked row is PyTorch's run over its real steps reversed,
    behind zeros at its pads."""
    torch = pytest.importorskip("torch")
    net = _backwards_net(cell)
    twin = _torch_twin(torch, cell, net.parameters(), "hs.")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, 3))
    tokens = np.array([[4, 2, 7, 5, 0, 0], [1, 1, 1, 1, 1, 1]], np.int32)
    out = net.forward({"x": x, "tokens": tokens})
    want, hn = twin(torch.flip(torch.tensor(x), [1]))
    np.testing.assert_allclose(out["hs"], want.detach().numpy(), rtol=1e-10)
    h = hn[0] if cell == "lstm" else hn
    np.testing.assert_allclose(out["last"], h[0].detach().numpy(), rtol=1e-10)
    for row, real in enumerate(tokens != 0):
        pads = int((~real).sum())
        alone = twin(torch.flip(torch.tensor(x[row:row + 1, real]), [1]))[0][0]
        np.testing.assert_allclose(out["padded"][row, pads:], alone.detach().numpy(),
                                   rtol=1e-10, err_msg=row)
        assert not out["padded"][row, :pads].any()


def test_go_backwards_with_bidirectional_is_refused():
    """Keras' Bidirectional(LSTM(go_backwards = True)) swaps its halves; here the option is
    refused with a reason (it was an unknown parameter before go_backwards existed)."""
    src = ("model M {\n  input x: float32[batch, 5, 3]\n"
           "  output y = lstm(x, 4, bidirectional = true, go_backwards = true)\n}\n")
    with pytest.raises(NNError) as err:
        nnlang.load(src)
    text = err.value.render()
    assert "<string>:3:" in text and "already runs one direction backward" in text, text
    assert "has no parameter" not in text, text
