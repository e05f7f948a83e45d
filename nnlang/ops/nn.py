"""Core layer and tensor composites (dense, embedding, activations, softmax, reductions, norms,
dropout, shape sugar). Each is a `decompose` rule into primitives; `passes/decompose.py` runs
them, and gradients and kernels come from the primitives they emit.
"""
from __future__ import annotations

import math
import re

import numpy as np

from nnlang.errors import did_you_mean
from nnlang.ir.dims import Sym, fmt_shape, numel
from nnlang.ops.init import init_spec
from nnlang.ops.movement import dims_as_perm, perm_hint
from nnlang.ops.registry import (NONDIFF, ParamSpec, Sample, ShapeError, TensorType, is_float,
                                 need_positive, need_some_axes, norm_axes, norm_axis, promote,
                                 register)
from nnlang.ops.signature import show_value

# *** helpers shared by the composite families ***


def const_like(b, value, x: int):
    """A scalar constant in x's float dtype, so float64 graphs stay float64. A float32 one
    keeps its exact value for a later retype to float64: a layer in a scan body decomposes
    while the model is still float32 (layer_norm's eps there was 9.99999974738e-06)."""
    dtype = b.type(x).dtype
    if dtype == "float32" or not is_float(dtype):
        return b.literal(value, "float32")
    return b.const(value, dtype)


def real_steps(b, mask: int):
    """The one reading of a padding mask (attention's key_padding_mask, positional_encoding's
    and rnn/lstm/gru's mask): true, or any nonzero number, marks a real token, so a mask of
    token ids works as `tokens != 0` does. Returns a bool tensor."""
    dtype = b.type(mask).dtype
    return mask if dtype == "bool" else b.ne(mask, b.const(0, dtype))


def param_dtype(x: TensorType) -> str:
    """Weights follow a float input's dtype; integer inputs (token ids) get float32 weights."""
    return x.dtype if x is not None and is_float(x.dtype) else "float32"


def need_float(op: str, x: TensorType, arg: int = 0) -> None:
    if not is_float(x.dtype):
        raise ShapeError(f"{op} needs a float tensor, got {x}", arg=arg,
                         hint="cast it first, e.g. cast(x, dtype = \"float32\")")


def count(b, dims, dtype: str):
    """Number of elements in `dims` as a scalar value. Concrete dims give a const; symbolic ones
    (batch) are counted at run time by summing ones of just those dims, which the fold pass
    turns into a const once the batch size is bound."""
    dims = list(dims)
    n = b.count(float(math.prod(d for d in dims if isinstance(d, int))), dtype)
    syms = [d for d in dims if isinstance(d, Sym)]
    if syms:
        ones = b.broadcast_to(b.const(np.ones([1] * len(syms)), dtype), shape=syms)
        n = b.mul(n, b.reduce_sum(ones, axes=None))
    return n


def mean_over(b, x: int, axes=None, keepdims: bool = False):
    t = b.type(x)
    ax = norm_axes(axes, t.rank)
    # NOTE: a scalar's "all axes" are none: axes=None sums it as itself (an empty list is refused
    # as a user's `axis = []`, and mean(s) or mse(s, t) of scalars failed to compile)
    total = b.reduce_sum(x, axes=list(ax) if ax else None, keepdims=keepdims)
    return b.div(total, count(b, [t.shape[a] for a in ax], t.dtype))


def linear(b, x: int, w: int, bias: int | None = None):
    """x @ w (+ bias) over the last dim of x, as ONE 2-D GEMM: leading dims are flattened first
    and restored after, so the backend sees [rows, in] @ [in, out]."""
    t = b.type(x)
    out = b.type(w).shape[-1]
    y = b.matmul(x if t.rank == 2 else b.reshape(x, shape=[-1, t.shape[-1]]), w)
    if bias is not None:
        y = b.add(y, bias)
    return y if t.rank == 2 else b.reshape(y, shape=list(t.shape[:-1]) + [out])


ACTIVATIONS = ("relu", "leaky_relu", "gelu", "sigmoid", "tanh", "softmax", "log_softmax",
               "silu", "softplus", "elu", "linear")


# Keras' and PyTorch's activations that have no op here, written with ops (of `x`): each is
# checked against PyTorch in tests/test_habits.py, values and gradients at the kinks.
# NOTE: PyTorch's relu6, hardtanh, hardsigmoid and hardswish take their bounds' sides at the
# kinks (relu6's gradient is 0 at x = 0 and 6), where clip's (torch.clamp's) is 1: the bound
# goes first in maximum/minimum, whose tie sends the gradient to `a` (the constant).
WRITTEN_WITH_OPS = {
    "selu": "1.0507009873554805 * elu(x, alpha = 1.6732632423543772)",
    "hard_sigmoid": "maximum(0.0, minimum(1.0, x / 6 + 0.5))",
    "hard_swish": "x * maximum(0.0, minimum(1.0, x / 6 + 0.5))",
    "relu6": "maximum(0.0, minimum(6.0, x)); the bound first gives PyTorch's gradient 0 at "
             "x = 0 and 6 (clip(x, lo = 0.0, hi = 6.0): the same values, gradient 1 there)",
    "hard_tanh": "maximum(-1.0, minimum(1.0, x))",
    "softsign": "x / (1 + abs(x))",
    "mish": "x * tanh(softplus(x))",
    "log_sigmoid": "-softplus(-x)",
    "exponential": "exp(x)",
}
for _torch, _ours in (("hardsigmoid", "hard_sigmoid"), ("hardswish", "hard_swish"),
                      ("hardtanh", "hard_tanh"), ("logsigmoid", "log_sigmoid"),
                      ("SELU", "selu"), ("ReLU6", "relu6"), ("Hardswish", "hard_swish"),
                      ("Hardsigmoid", "hard_sigmoid"), ("Hardtanh", "hard_tanh"),
                      ("Softsign", "softsign"), ("Mish", "mish"), ("LogSigmoid", "log_sigmoid")):
    WRITTEN_WITH_OPS[_torch] = WRITTEN_WITH_OPS[_ours]


def check_activation(op: str, name) -> None:
    if name is not None and name not in ACTIVATIONS:
        ops = WRITTEN_WITH_OPS.get(name)
        on_h = re.sub(r"\bx\b", "h", ops or "")
        hint = (f"no {name} activation: write h = {op}(...) without it, then {on_h}" if ops else
                "leave activation out for none (or write \"linear\")" if name == "none" else
                did_you_mean(name, list(ACTIVATIONS)) or "one of: " + ", ".join(ACTIVATIONS))
        raise ShapeError(f"{op}: unknown activation {name!r}", attr="activation", hint=hint)


def activate(b, x: int, name):
    return x if name in (None, "linear") else b.emit(name, x)


# *** dense / embedding ***

def _dense_params(op: str):
    def params(x, *, units, use_bias, init, bias_init, **_):
        if x.rank == 0:
            raise ShapeError(f"{op} expects [..., features] but got the scalar {x}", arg=0,
                             hint="unsqueeze(x, axis = 0) makes it a vector")
        dt = param_dtype(x)
        specs = {"weight": ParamSpec((x.shape[-1], units), init_spec(init, "init"), dtype=dt)}
        if use_bias:
            specs["bias"] = ParamSpec((units,), init_spec(bias_init, "bias_init"), dtype=dt)
        return specs
    return params


def _dense_shape(op: str):
    """The shape rule of dense and of its alias linear, each naming itself in its errors."""
    def shape_rule(x, weight=None, bias=None, *, units, activation, use_bias, init, bias_init):
        need_float(op, x)
        if x.rank < 1:
            raise ShapeError(f"{op} needs at least a vector, got a scalar {x}", arg=0)
        if isinstance(x.shape[-1], Sym):
            raise ShapeError(f"{op}: the last dim of {fmt_shape(x.shape)} is symbolic; its size "
                             "fixes the weight shape", arg=0, hint="reshape to a concrete size")
        need_positive(op, "units", units)
        check_activation(op, activation)
        if weight is not None and weight.shape != (x.shape[-1], units):
            raise ShapeError(f"{op}: weight {fmt_shape(weight.shape)} does not fit input "
                             f"{fmt_shape(x.shape)} and units={units} (expected "
                             f"[{x.shape[-1]}, {units}])", arg=1)
        dt = x.dtype if weight is None else promote(x.dtype, weight.dtype)
        return TensorType(tuple(x.shape[:-1]) + (units,), dt)
    return shape_rule


def _dense_decompose(b, x, weight, bias=None, *, activation, **_):
    return activate(b, linear(b, x, weight, bias), activation)


_DENSE_SIG = ("x: tensor, units: int, activation: str = none, use_bias: bool = true, "
              "init: init = \"glorot_uniform\", bias_init: init = \"zeros\"")
_DENSE_DOC = ("Fully connected layer on the last axis: y = activation(x @ weight + bias), "
              "weight [in, units]. Leading dims are flattened into one GEMM. Init (Keras): "
              "weight glorot_uniform, bias zeros.")
# NOTE: no `flops` rule: `nnlang check` counts what the decomposition runs (the GEMM, the bias
# add, the activation), so `dense(x, 5, activation = "relu")` counts as `relu(dense(...) + b)`
# does; a rule of its own counted only the GEMM
for _name, _doc in (("dense", _DENSE_DOC), ("linear", "Alias of dense. " + _DENSE_DOC)):
    register(_name, _DENSE_SIG, _dense_shape(_name), decompose=_dense_decompose,
             params=_dense_params(_name), family="nn", doc=_doc,
             samples=(Sample(((4, 6),), {"units": 3}),
                      Sample(((2, 3, 5),), {"units": 4, "activation": "relu"}),
                      Sample(((3, 4),), {"units": 2, "use_bias": False,
                                         "activation": "sigmoid"})))


def _embedding_params(tokens, *, vocab, dim, init):
    need_positive("embedding", "vocab", vocab)
    need_positive("embedding", "dim", dim)
    return {"weight": ParamSpec((vocab, dim), init_spec(init), dtype="float32")}


def _embedding_shape(tokens, weight=None, *, vocab, dim, init):
    if tokens.dtype not in ("int32", "int64"):
        raise ShapeError(f"embedding expects integer token ids, got {tokens}", arg=0,
                         hint="declare the input as int32[batch, len]")
    need_positive("embedding", "vocab", vocab)
    need_positive("embedding", "dim", dim)
    dt = weight.dtype if weight is not None else "float32"
    return TensorType(tuple(tokens.shape) + (dim,), dt)


def _padding_idx_habit(call: str, texts: dict, values: dict) -> str:
    """PyTorch's padding_idx = k: the pads' rows zeroed by the mask of id k. NOTE: the hint
    said `tokens != 0` whatever k was, so written as it said it zeroed the real token 0 and
    trained the pads' row (fairseq and RoBERTa pad with 1); a negative k counts from the end
    of the vocabulary, as PyTorch takes it."""
    pad, vocab = values.get("padding_idx"), values.get("vocab")
    if isinstance(pad, int) and not isinstance(pad, bool) and isinstance(vocab, int) and \
            -vocab <= pad < vocab:
        pad = str(pad % vocab)
    else:
        pad = texts.get("padding_idx", "PAD")
    tokens = texts.get("tokens", "tokens")
    return (f"zero the pad rows (and their gradient) yourself: {call} * "
            f"unsqueeze(cast({tokens} != {pad}, dtype = \"float32\"), axis = -1)")


_EMBEDDING_HABITS = {
    "mask_zero": "give the ids to the layer that skips the pads: lstm(e, 64, mask = tokens) "
                 "(nonzero ids are real steps, Keras' mask_zero = True), "
                 "multi_head_attention(e, heads = 4, key_padding_mask = tokens)",
    "padding_idx": _padding_idx_habit,
}


register("embedding", "tokens: tensor, vocab: int, dim: int, init: init = \"uniform\"",
         _embedding_shape, decompose=lambda b, tokens, weight, **_: b.gather(weight, tokens),
         params=_embedding_params, family="nn", habits=_EMBEDDING_HABITS,
         doc="Looks up a learned [vocab, dim] vector per token id: [*tokens] -> [*tokens, dim]. "
             "Ids must lie in [0, vocab). Init (Keras): uniform(-0.05, 0.05) (PyTorch's "
             "nn.Embedding draws normal(std = 1): init = normal(std = 1.0)).",
         samples=(Sample(((2, 5),), {"vocab": 7, "dim": 3}, domain="int:7", dtypes=("int32",)),))


# *** activations ***

def _float_shape(name):
    def rule(x, **_):
        need_float(name, x)
        return x
    return rule


_ACT_SAMPLES = (Sample(((3, 4),)), Sample(((2, 3, 5),)))


def _act(name, sig, decompose, doc, samples=_ACT_SAMPLES, flops=None):
    register(name, sig, _float_shape(name), decompose=decompose, family="nn", doc=doc,
             samples=samples, flops=flops)


# NOTE: where(x <= 0, 0, x), not maximum: maximum(x, 0) sends a tie's gradient to x (1 at
# x = 0, PyTorch gives 0), and maximum(0, x) renders as max(0.0, x), which a numba kernel
# evaluates to 0.0 for a NaN x; this form has PyTorch's gradient and keeps a NaN everywhere
_act("relu", "x: tensor",
     lambda b, x: b.where(b.le(x, const_like(b, 0.0, x)), const_like(b, 0.0, x), x),
     "max(x, 0); its gradient at exactly 0 is 0 and relu(nan) is nan, as in PyTorch",
     # NOTE: one max per element, as maximum(x, 0) counts: the decomposition's compare and
     # select are one max (the only rule below its decomposition: RULE_BELOW_DECOMPOSITION in
     # tests/ops/test_composites.py)
     flops=lambda ins, out: numel(out.shape))
_act("leaky_relu", "x: tensor, alpha: float = 0.01",
     lambda b, x, *, alpha: b.where(b.gt(x, const_like(b, 0.0, x)), x,
                                    b.mul(x, const_like(b, alpha, x))),
     "x where x > 0, else alpha * x; alpha = 0.01 is PyTorch's negative_slope (Keras' "
     "LeakyReLU layer takes 0.3 and its activation = \"leaky_relu\" 0.2: write alpha to match)",
     samples=_ACT_SAMPLES + (Sample(((3, 4),), {"alpha": 0.2}),))


def _gelu(b, x, *, approximate):
    half_x = b.mul(x, const_like(b, 0.5, x))
    if approximate == "tanh":
        cube = b.mul(b.mul(x, x), x)
        inner = b.mul(b.add(x, b.mul(cube, const_like(b, 0.044715, x))),
                      const_like(b, math.sqrt(2 / math.pi), x))
        return b.mul(half_x, b.add(const_like(b, 1.0, x), b.tanh(inner)))
    return b.mul(half_x, b.add(const_like(b, 1.0, x),
                               b.erf(b.mul(x, const_like(b, 1 / math.sqrt(2), x)))))


def _gelu_shape(x, *, approximate):
    if approximate not in ("none", "tanh"):
        raise ShapeError(f"gelu: approximate must be \"none\" or \"tanh\", got "
                         f"{show_value(approximate)}", attr="approximate",
                         hint=did_you_mean(approximate, ("none", "tanh"))
                         if isinstance(approximate, str) else None)
    return _float_shape("gelu")(x)


# NOTE: Keras' and TensorFlow's gelu take approximate as a bool
_GELU_HABITS = {"approximate = true": "approximate = \"tanh\" is the tanh form (Keras' "
                                      "approximate = True)",
                "approximate = false": "the exact erf form is the default, approximate = "
                                       "\"none\" (Keras' approximate = False)"}


register("gelu", "x: tensor, approximate: str = \"none\"", _gelu_shape, decompose=_gelu,
         family="nn", habits=_GELU_HABITS,
         samples=_ACT_SAMPLES + (Sample(((3, 4),), {"approximate": "tanh"}),),
         doc="x * Phi(x): the exact erf form by default (like PyTorch); approximate = \"tanh\" "
             "gives 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).")

_act("silu", "x: tensor", lambda b, x: b.mul(x, b.sigmoid(x)), "x * sigmoid(x) (swish)")


def stable_softplus(b, x):
    """log(1 + e**x) as max(x, 0) + log1p(e**-|x|), which never overflows."""
    # NOTE: -|x| is minimum(x, -x), whose tie at x = 0 goes to x: there the log term's gradient
    # is 1/2 and relu's 0, summing to softplus'(0) = 1/2. For x < 0 the gradient is then
    # e / (1 + e) alone, exact; (x + |x|) / 2 summed it as 1/2 - (1/2 - sigmoid(x)), which
    # cancelled to 0 from x = -17 in float32.
    zero = const_like(b, 0.0, x)
    e = b.exp(b.minimum(x, b.neg(x)))
    return b.add(b.where(b.gt(x, zero), x, zero), log1p(b, e))


def log1p(b, e):
    """log(1 + e) for e >= 0, exact where 1 + e rounds: log(u) - ((u - 1) - e) / u with
    u = 1 + e (the correction is -e when u rounds to 1), so softplus(-20) is 2.06e-9, not 0."""
    u = b.add(const_like(b, 1.0, e), e)
    return b.sub(b.log(u), b.div(b.sub(b.sub(u, const_like(b, 1.0, e)), e), u))


_act("softplus", "x: tensor", stable_softplus,
     "log(1 + e**x), computed as max(x, 0) + log1p(e**-|x|) so it never overflows "
     "and keeps its tail (softplus(-20) = 2.06e-9, as PyTorch)")
_act("elu", "x: tensor, alpha: float = 1.0",
     lambda b, x, *, alpha: b.where(
         b.gt(x, const_like(b, 0.0, x)), x,
         b.mul(const_like(b, alpha, x), b.expm1(b.minimum(x, const_like(b, 0.0, x))))),
     "x where x > 0, else alpha * (e**x - 1), computed with expm1 so a small negative x keeps "
     "its digits (as PyTorch)")
_act("square", "x: tensor", lambda b, x: b.mul(x, x), "x * x, elementwise")
_act("reciprocal", "x: tensor", lambda b, x: b.div(const_like(b, 1.0, x), x), "1 / x, elementwise",
     samples=(Sample(((3, 4),), domain="positive"),))


def _clip_shape(x, *, lo, hi):
    if lo is not None and hi is not None and lo > hi:
        raise ShapeError(f"clip: lo = {lo} is above hi = {hi}")
    return _float_shape("clip")(x)


def _clip(b, x, *, lo, hi):
    if lo is not None:
        x = b.maximum(x, const_like(b, lo, x))
    return x if hi is None else b.minimum(x, const_like(b, hi, x))


register("clip", "x: tensor, lo: float = none, hi: float = none", _clip_shape, decompose=_clip,
         family="nn", doc="x limited to [lo, hi] (either bound may be none)",
         samples=(Sample(((3, 4),), {"lo": -0.5, "hi": 0.5}), Sample(((5,),), {"lo": 0.1})))


# *** softmax family ***

def _softmax_shape(op: str):
    def shape_rule(x, *, axis):
        need_float(op, x)
        norm_axis(axis, x.rank)
        return x
    return shape_rule


def _shifted(b, x, axis):
    # NOTE: subtracting the max keeps exp from overflowing; the result does not depend on it,
    # so its gradient terms cancel exactly and are not generated (stop_gradient)
    return b.sub(x, b.stop_gradient(b.reduce_max(x, axes=[axis], keepdims=True)))


def _softmax(b, x, *, axis):
    e = b.exp(_shifted(b, x, axis))
    return b.div(e, b.reduce_sum(e, axes=[axis], keepdims=True))


def _log_softmax(b, x, *, axis):
    z = _shifted(b, x, axis)
    return b.sub(z, b.log(b.reduce_sum(b.exp(z), axes=[axis], keepdims=True)))


_SOFTMAX_SAMPLES = (Sample(((3, 5),)), Sample(((2, 3, 4),), {"axis": 1}))
register("softmax", "x: tensor, axis: int = -1", _softmax_shape("softmax"),
         decompose=_softmax, family="nn", samples=_SOFTMAX_SAMPLES,
         doc="exp(x) / sum(exp(x)) along axis, with the max subtracted first for stability")
register("log_softmax", "x: tensor, axis: int = -1", _softmax_shape("log_softmax"),
         decompose=_log_softmax, family="nn", samples=_SOFTMAX_SAMPLES,
         doc="x - log(sum(exp(x))) along axis, computed stably (max subtracted)")


# *** reductions ***

def axes_attr(axis):
    return None if axis is None else ([axis] if isinstance(axis, int) else list(axis))


def _reduce_shape(x, *, axis, keepdims):
    need_some_axes("axis", axis)
    ax = norm_axes(axes_attr(axis), x.rank)
    if keepdims:
        return TensorType(tuple(1 if i in ax else d for i, d in enumerate(x.shape)), x.dtype)
    return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in ax), x.dtype)


def _float_reduce_shape(op: str):
    def shape_rule(x, *, axis, keepdims):
        need_float(op, x)
        return _reduce_shape(x, axis=axis, keepdims=keepdims)
    return shape_rule


def _var(b, x, *, axis, keepdims):
    ax = axes_attr(axis)
    d = b.sub(x, mean_over(b, x, ax, keepdims=True))
    return mean_over(b, b.mul(d, d), ax, keepdims)


_RED_SIG = "x: tensor, axis: ints = none, keepdims: bool = false"
_RED_SAMPLES = (Sample(((3, 4),)), Sample(((2, 3, 4),), {"axis": [0, 2]}),
                Sample(((2, 3, 4),), {"axis": -1, "keepdims": True}))
register("sum", _RED_SIG, _reduce_shape, family="nn", samples=_RED_SAMPLES,
         decompose=lambda b, x, *, axis, keepdims: b.reduce_sum(x, axes=axes_attr(axis),
                                                                keepdims=keepdims),
         doc="sum over axis (an int or a list; all axes when none)")
register("max", _RED_SIG, _reduce_shape, family="nn", samples=_RED_SAMPLES,
         decompose=lambda b, x, *, axis, keepdims: b.reduce_max(x, axes=axes_attr(axis),
                                                                keepdims=keepdims),
         doc="max over axis (an int or a list; all axes when none); a tied maximum "
             "shares the gradient evenly, and a NaN gives NaN and NaN gradients to "
             "each value of its group, as torch.amax does")
register("min", _RED_SIG, _reduce_shape, family="nn", samples=_RED_SAMPLES,
         decompose=lambda b, x, *, axis, keepdims: b.reduce_min(x, axes=axes_attr(axis),
                                                                keepdims=keepdims),
         doc="min over axis (an int or a list; all axes when none); a tied minimum "
             "shares the gradient evenly, and a NaN gives NaN and NaN gradients to "
             "each value of its group, as torch.amin does")
register("mean", _RED_SIG, _float_reduce_shape("mean"), family="nn", samples=_RED_SAMPLES,
         decompose=lambda b, x, *, axis, keepdims: mean_over(b, x, axes_attr(axis), keepdims),
         doc="mean over axis (an int or a list; all axes when none): a sum divided by the count")
register("var", _RED_SIG, _float_reduce_shape("var"), family="nn", samples=_RED_SAMPLES,
         decompose=_var,
         doc="population variance (divides by n, like numpy's default) over axis")


# *** shape sugar ***

def _flatten_shape(x, *, start, end):
    s, e = norm_axis(start, x.rank), norm_axis(end, x.rank)
    if s > e:
        raise ShapeError(f"flatten: start {start} comes after end {end} for {fmt_shape(x.shape)}",
                         arg=0)
    return TensorType(x.shape[:s] + (numel(x.shape[s:e + 1]),) + x.shape[e + 1:], x.dtype)


register("flatten", "x: tensor, start: int = 1, end: int = -1", _flatten_shape, family="nn",
         decompose=lambda b, x, **a: b.reshape(x, shape=list(_flatten_shape(b.type(x),
                                                                           **a).shape)),
         doc="merges axes start..end (inclusive) into one: [batch, 28, 28] -> [batch, 784]",
         samples=(Sample(((2, 3, 4),)), Sample(((2, 3, 4, 5),), {"start": 1, "end": 2})))


def _positions_shape(x, *, axis, dtype):
    if dtype == "bool":
        raise ShapeError("positions: dtype must be a number type, got bool", attr="dtype",
                         hint="positions count 0, 1, 2, ...: int32 (the default) or a float")
    return TensorType((x.shape[norm_axis(axis, x.rank)],), dtype)


def _positions(b, x, *, axis, dtype):
    # NOTE: a running count of ones rather than a constant 0..n-1, so a symbolic length
    # (`symbol seq`) exports as it runs: the file sizes the ones from its input at run time
    n = _positions_shape(b.type(x), axis=axis, dtype=dtype).shape[0]
    ones = b.broadcast_to(b.const(1, dtype), shape=[n])
    return b.sub(b.cumsum(ones, axis=0), b.const(1, dtype))


register("positions", "x: tensor, axis: int, dtype: dtype = 'int32'", _positions_shape,
         family="nn", decompose=_positions, traits={NONDIFF},
         doc="0, 1, ..., n - 1 for the n places of x along axis (numpy's arange(x.shape[axis]); "
             "x's values are not read), e.g. position ids of a symbolic length: "
             "embedding(positions(tokens, axis = 1), maxlen, dim); positional_encoding adds "
             "learned or sinusoidal positions in one call",
         samples=(Sample(((2, 5, 3),), {"axis": 1}, grad=False),
                  Sample(((4, 3),), {"axis": -1, "dtype": "float32"}, grad=False),
                  Sample(((2, 6),), {"axis": 1}, domain="int:9", dtypes=("int32",),
                         grad=False)))


def _squeeze_shape(x, *, axis):
    ax = norm_axes(axes_attr(axis), x.rank)
    if axis is None:
        ax = tuple(i for i, d in enumerate(x.shape) if d == 1)
    for a in ax:
        if x.shape[a] != 1:
            raise ShapeError(f"squeeze: axis {a} of {fmt_shape(x.shape)} has size {x.shape[a]}, "
                             "not 1", arg=0)
    return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in ax), x.dtype)


def _unsqueeze_shape(x, *, axis):
    ax = norm_axis(axis, x.rank + 1)
    return TensorType(x.shape[:ax] + (1,) + x.shape[ax:], x.dtype)


def _reshape_to(shape_rule):
    return lambda b, x, **a: b.reshape(x, shape=list(shape_rule(b.type(x), **a).shape))


def _squeeze_axes(x, *, axis):
    """No axis: the axes of size 1 as checked; a symbol (batch, seq) bound to 1 stays."""
    if axis is not None:
        return {"axis": axis}
    return {"axis": [i for i, d in enumerate(x.shape) if d == 1]}


register("squeeze", "x: tensor, axis: ints = none", _squeeze_shape, family="nn",
         decompose=_reshape_to(_squeeze_shape), bind_attrs=_squeeze_axes,
         doc="drops size-1 axes (the given ones, or all when none)",
         samples=(Sample(((3, 1, 4),), {"axis": 1}), Sample(((1, 3, 1),))))
register("unsqueeze", "x: tensor, axis: int", _unsqueeze_shape, family="nn",
         decompose=_reshape_to(_unsqueeze_shape), doc="inserts a size-1 axis at axis",
         samples=(Sample(((3, 4),), {"axis": 1}), Sample(((3, 4),), {"axis": -1})))


def _permute_shape(x, *, perm):
    if not isinstance(perm, (list, tuple)):
        raise ShapeError(f"permute: perm must be a list of the {x.rank} axes, got {perm!r}",
                         attr="perm")
    if sorted(p % x.rank if isinstance(p, int) and -x.rank <= p < x.rank else p
              for p in perm) != list(range(x.rank)):
        # NOTE: at perm, with transpose's words for the axis at fault (permute takes negative
        # axes, so those are no fault here)
        hint = perm_hint(perm, x.rank)
        raise ShapeError(f"permute: {list(perm)} is not a permutation of the {x.rank} axes of "
                         f"{fmt_shape(x.shape)}", attr="perm",
                         hint=None if hint and hint.startswith("transpose") else hint)
    perm = [norm_axis(p, x.rank) for p in perm]
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


def _permute_positional(texts, values, rank):
    perm = dims_as_perm(values, rank, swap=False)
    return None if perm is None else (
        f"the axes go in one list (PyTorch's permute takes them loose): "
        f"`permute({texts[0]}, perm = {show_value(perm)})`")


register("permute", "x: tensor, perm: ints", _permute_shape, family="nn",
         positional=_permute_positional,
         decompose=lambda b, x, *, perm: b.transpose(
             x, perm=[norm_axis(p, b.type(x).rank) for p in perm]),
         doc="reorders axes, e.g. permute(x, [0, 2, 1]) turns [batch, len, dim] into "
             "[batch, dim, len] (the transpose primitive, under its PyTorch name)",
         samples=(Sample(((2, 3, 4),), {"perm": [0, 2, 1]}),))
