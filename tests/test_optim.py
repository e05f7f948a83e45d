"""Optimizer updates against direct numpy implementations of PyTorch's documented formulas.

The loss L = 0.5 * |w - t|^2 has the gradient w - t, so the reference needs no autodiff.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import nnlang
from nnlang.frontend.train_config import Choice
from nnlang.ops.optim import OPTIMIZERS, learning_rate, plateau_scale

MODEL = """
model Q {
  input t: float32[batch, 5]
  param w: float32[5] = normal(std = 1.0)
  d = w - t
  loss l = reduce_sum(d * d) * 0.5
}
train Q { optimizer = %s  clip_norm = %s }
"""


def _reference(name, opts, w, t, steps, clip=None):
    o = {**{p.name: p.default for p in OPTIMIZERS[name].sig.params}, **opts}
    state = {"m": np.zeros_like(w), "v": np.zeros_like(w), "buf": np.zeros_like(w),
             "sq": np.zeros_like(w)}
    for step in range(1, steps + 1):
        g = w - t
        if clip:
            norm = np.sqrt(np.sum(g * g))
            g = g * min(1.0, clip / (norm + 1e-6))
        lr, wd = o["lr"], o.get("weight_decay", 0.0)
        if name == "sgd":
            g = g + wd * w
            if o["momentum"]:
                state["buf"] = o["momentum"] * state["buf"] + g if step > 1 else g.copy()
                g = g + o["momentum"] * state["buf"] if o["nesterov"] else state["buf"]
            w = w - lr * g
        elif name in ("adam", "adamw"):
            if name == "adamw":
                w = w * (1 - lr * wd)
            else:
                g = g + wd * w
            state["m"] = o["beta1"] * state["m"] + (1 - o["beta1"]) * g
            state["v"] = o["beta2"] * state["v"] + (1 - o["beta2"]) * g * g
            mhat = state["m"] / (1 - o["beta1"] ** step)
            vhat = state["v"] / (1 - o["beta2"] ** step)
            w = w - lr * mhat / (np.sqrt(vhat) + o["eps"])
        elif name == "rmsprop":
            g = g + wd * w
            state["sq"] = o["alpha"] * state["sq"] + (1 - o["alpha"]) * g * g
            avg = np.sqrt(state["sq"]) + o["eps"]
            if o["momentum"]:
                state["buf"] = o["momentum"] * state["buf"] + g / avg
                w = w - lr * state["buf"]
            else:
                w = w - lr * g / avg
    return w


CASES = [
    ("sgd", {"lr": 0.1}), ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", {"lr": 0.01}), ("adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}), ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.01}),
]


def _opt_text(name, opts):
    args = ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in opts.items())
    return f"{name}({args})"


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_update_matches_documented_formula(name, opts, clip):
    net = nnlang.compile(MODEL % (_opt_text(name, opts), clip or 0), backend="reference",
                         batch=1, dtype="float64")
    t = np.random.default_rng(3).normal(size=(1, 5))
    w0 = net.state["w"].copy()
    for _ in range(4):
        net.train_step({"t": t})
    expected = _reference(name, opts, w0, t[0], 4, clip)
    np.testing.assert_allclose(net.state["w"], expected, rtol=1e-10, atol=1e-12)


MIXED = """
model Q {
  input t: float64[batch, 5]
  param w: float64[5] = normal(std = 1.0)
  d = w - t
  loss l = reduce_sum(d * d) * 0.5
}
train Q { optimizer = %s  clip_norm = %s }
"""


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_a_float64_weight_of_a_float32_net_updates_in_float64(name, opts, clip):
    """A weight declared float64 in a float32 net took a float32 learning rate, step count and
    slots: sgd(lr = 0.1) moved it by 0.10000000149 x grad (relative error ~1e-8 against the
    float64 reference); now by lr x grad in float64, as torch.optim does a float64 tensor."""
    net = nnlang.compile(MIXED % (_opt_text(name, opts), clip or 0), backend="reference",
                         batch=1, dtype="float32")
    t = np.random.default_rng(3).normal(size=(1, 5))
    w0 = net.state["w"].copy()
    for _ in range(4):
        net.train_step({"t": t})
    assert net.state["w"].dtype == np.float64
    expected = _reference(name, opts, w0, t[0], 4, clip)
    np.testing.assert_allclose(net.state["w"], expected, rtol=1e-13, atol=1e-15)
    assert all(v.dtype == np.float64 for k, v in net.state_dict().items() if k.endswith(".w"))


def test_mixed_float32_and_float64_weights_each_update_in_their_own_dtype():
    """The compiled twin of the test above, with a float32 weight beside the float64 one: each
    weight's Adam moments are in its own dtype, and the float64 one matches the float64
    reference to its precision."""
    src = """
model Q {
  input t: float64[batch, 5]
  input s: float32[batch, 3]
  param w: float64[5] = normal(std = 1.0)
  param u: float32[3] = normal(std = 1.0)
  d = w - t
  e = u - s
  loss l = reduce_sum(d * d) * 0.5
  loss k = reduce_sum(e * e) * 0.5
}
train Q { optimizer = adam(lr = 0.01) }
"""
    net = nnlang.compile(src, batch=1)
    assert net.dtype == "float32"
    rng = np.random.default_rng(4)
    t, s = rng.normal(size=(1, 5)), rng.normal(size=(1, 3)).astype(np.float32)
    w0, u0 = net.state["w"].copy(), net.state["u"].copy()
    for _ in range(4):
        net.train_step({"t": t, "s": s})
    state = net.state_dict()
    assert state["optimizer.m.w"].dtype == state["optimizer.v.w"].dtype == np.float64
    assert state["optimizer.m.u"].dtype == state["u"].dtype == np.float32
    np.testing.assert_allclose(state["w"], _reference("adam", {"lr": 0.01}, w0, t[0], 4),
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(state["u"], _reference("adam", {"lr": 0.01}, u0.astype(
        np.float64), s[0].astype(np.float64), 4), rtol=1e-5)


def test_schedules():
    cos = Choice("cosine", {"warmup": 10, "min_lr": 0.0})
    assert learning_rate(1.0, cos, 0, 0, 110) == pytest.approx(0.1)
    assert learning_rate(1.0, cos, 9, 0, 110) == pytest.approx(1.0)
    assert learning_rate(1.0, cos, 60, 0, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(1.0, cos, 110, 0, 110) == pytest.approx(0.0)
    step = Choice("step", {"step_size": 2, "gamma": 0.5, "warmup": 0})
    assert [learning_rate(1.0, step, 0, e, 0) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    exp = Choice("exponential", {"gamma": 0.9, "warmup": 0})
    assert learning_rate(2.0, exp, 0, 3, 0) == pytest.approx(2.0 * 0.9 ** 3)



def test_plateau_cuts_by_factor_down_to_min_lr():
    """PyTorch's ReduceLROnPlateau: each cut is lr = max(lr * factor, min_lr), and the rate
    then stays at the floor (docs: "multiply by factor ... down to min_lr")."""
    plateau = Choice("plateau", {"factor": 0.5, "patience": 2, "min_lr": 0.2, "warmup": 0})
    scale, rates, lr = 1.0, [], 1.0
    for _ in range(5):
        scale = plateau_scale(plateau, 1.0, scale)
        rates.append(learning_rate(1.0, plateau, 0, 0, 0, scale))
        lr = max(lr * 0.5, 0.2)
        assert rates[-1] == pytest.approx(lr)
    assert rates == pytest.approx([0.5, 0.25, 0.2, 0.2, 0.2])
    # a scale past the floor (as a resumed run's) still reads as min_lr
    assert learning_rate(1.0, plateau, 0, 0, 0, 0.01) == pytest.approx(0.2)

# a: over PARALLEL_MIN; e, f and g: one element, each scalar of their update broadcast to [1],
# at the launch's start and end (each had been a kernel of its own, read as a full-size tensor)
SHAPES = {"e": (1,), "a": (300, 300), "b": (7,), "c": (2, 3, 5), "d": (3, 4), "f": (1,),
          "g": (1,)}
MANY = """
model M {
  input t: float32[batch, 1]
%s
  loss l = (%s) * reduce_sum(t) * 0.5
}
train M { optimizer = %s  clip_norm = %s }
"""


@pytest.mark.parametrize("disable", [(), ("multi_tensor",)])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("name,opts", [CASES[1], CASES[4], CASES[7]], ids=["sgd", "adam", "rms"])
def test_multi_tensor_update_of_many_parameters(name, opts, clip, disable):
    """Parameters of four shapes, compiled by numba: with the multi-tensor launch (one launch
    for every update, the big one split over threads mid-tensor) and without, each matches
    the documented formula applied to all parameters as one vector (the clip norm is global).
    The loss 0.5 * sum(p^2) * sum(t), fed t = 1, has the gradient p."""
    params = "\n".join(f"  param {k}: float32[{', '.join(map(str, s))}] = normal(std = 1.0)"
                       for k, s in SHAPES.items())
    squares = " + ".join(f"reduce_sum({k} * {k})" for k in SHAPES)
    net = nnlang.compile(MANY % (params, squares, _opt_text(name, opts), clip or 0),
                         backend="numba", batch=1, dtype="float64", disable=disable)
    w0 = np.concatenate([net.state[k].ravel() for k in SHAPES])
    for _ in range(4):
        net.train_step({"t": np.ones((1, 1))})
    expected = _reference(name, opts, w0, np.zeros_like(w0), 4, clip)
    got = np.concatenate([net.state[k].ravel() for k in SHAPES])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    exe = net._exe("train", 1)[0]
    multi = [s for s in exe.steps if s.kind == "multi"]
    assert [len(s.groups) for s in multi] == ([] if disable else [len(SHAPES)])


# one-element and 0-d weights of both dtypes, in a float32 net: the float32 ones next to each
# other (e, b) make one launch, the others (a dtype apart) a kernel each
TINY = {"s": ((), "float64"), "e": ((1,), "float32"), "b": ((7,), "float32"),
        "f": ((1,), "float64"), "z": ((), "float32")}


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("name,opts", [CASES[2], CASES[4], CASES[5], CASES[7]],
                         ids=["nesterov", "adam", "adamw", "rms"])
def test_one_element_and_0d_weights_of_both_dtypes_update_as_documented(name, opts, clip):
    """Each weight moves by the documented formula in its own dtype (the clip norm is over all
    of them), and the one-element float32 weight joins the launch of the [7] one after it."""
    params = "\n".join(f"  param {k}: {dt}[{', '.join(map(str, s))}] = normal(std = 1.0)"
                       for k, (s, dt) in TINY.items())
    squares = " + ".join(f'cast(reduce_sum({k} * {k}), dtype = "float32")' for k in TINY)
    net = nnlang.compile(MANY % (params, squares, _opt_text(name, opts), clip or 0),
                         backend="numba", batch=1)
    w0 = {k: net.state[k].astype(np.float64) for k in TINY}
    for _ in range(4):
        net.train_step({"t": np.ones((1, 1), np.float32)})
    assert {k: str(net.state[k].dtype) for k in TINY} == {k: dt for k, (_, dt) in TINY.items()}
    flat = np.concatenate([w0[k].ravel() for k in TINY])
    expected = _reference(name, opts, flat, np.zeros_like(flat), 4, clip)
    at = np.cumsum([0] + [w0[k].size for k in TINY])
    for (k, (_, dt)), lo, hi in zip(TINY.items(), at, at[1:]):
        # NOTE: the clip norm over weights of both dtypes is the float32 net's (~1e-9 apart)
        tol = {"rtol": 1e-10 if clip is None else 1e-6, "atol": 1e-12} if dt == "float64" \
            else {"rtol": 1e-5, "atol": 1e-6}
        np.testing.assert_allclose(net.state[k].ravel(), expected[lo:hi], err_msg=k, **tol)
    exe = net._exe("train", 1)[0]
    assert [len(s.groups) for s in exe.steps if s.kind == "multi"] == [2]
