"""Elementwise primitives: each a scalar expression (shared by the Numba and CUDA renderers),
numpy semantics, and a gradient written in other ops. Broadcasting is undone in one place
(`passes/autodiff.py`), so these gradients return full-shape values.
"""
from __future__ import annotations

import math

import numpy as np

from nnlang.ops.registry import (BINARY, ELEMENTWISE, NONDIFF, TERNARY, UNARY, Sample, ShapeError,
                                 TensorType, broadcast_shapes, is_float, onnx_op, promote,
                                 register)

_REAL = (Sample(((3, 4),)), Sample(((2, 3, 5),)))
_POS = (Sample(((3, 4),), domain="positive"),)
_PAIRS = (Sample(((3, 4), (3, 4))), Sample(((2, 3, 4), (4,))), Sample(((3, 1), (1, 5))))


def _float_unary_shape(x: TensorType, **_) -> TensorType:
    if not is_float(x.dtype):
        raise ShapeError(f"needs a float tensor, got {x}", arg=0,
                         hint="cast it first, e.g. cast(x, dtype = \"float32\")")
    return x


def _number_unary_shape(x: TensorType, **_) -> TensorType:
    if x.dtype == "bool":  # NOTE: numpy has no -x, sign(x) or +x of a bool
        raise ShapeError(f"needs numbers, got {x}", arg=0,
                         hint="cast it first, e.g. cast(x, dtype = \"int32\")")
    return x


def _binary_shape(a: TensorType, b: TensorType, **_) -> TensorType:
    return TensorType(broadcast_shapes(a.shape, b.shape), promote(a.dtype, b.dtype))


def _compare_shape(a: TensorType, b: TensorType, **_) -> TensorType:
    return TensorType(broadcast_shapes(a.shape, b.shape), "bool")


# NOTE: `onnx` names the ONNX operator of the same meaning (each one node; see `onnx_op`);
# left out, the op has no ONNX form and `nnlang export` says so, naming it
def _onnx_of(op_type: str):
    return onnx_op(op_type) if op_type else None


def _unary(name, expr, impl, grad, samples=_REAL, float_only=True, doc="", onnx=""):
    register(name, "x: tensor", _float_unary_shape if float_only else _number_unary_shape,
             expr=expr, impl=impl, grad=grad, samples=samples, doc=doc, family="elementwise",
             traits={ELEMENTWISE, UNARY}, onnx=_onnx_of(onnx))


def _pow_shape(a: TensorType, b: TensorType, **_) -> TensorType:
    out = _binary_shape(a, b)
    if not is_float(out.dtype):
        # NOTE: numpy refuses a negative integer exponent where a kernel would give 0 or 1,
        # and the sign of an exponent is known only at run time
        raise ShapeError(f"pow: {a} ** {b} needs a float on one side (an integer power "
                         "has no integer result for a negative exponent)", arg=0,
                         hint="cast the base to a float first, e.g. cast(a, dtype = "
                              "\"float32\") ** b")
    return out


def _binary(name, expr, impl, grad, samples=_PAIRS, doc="", onnx="", shape=_binary_shape):
    register(name, "a: tensor, b: tensor", shape, expr=expr, impl=impl, grad=grad,
             samples=samples, doc=doc, family="elementwise", traits={ELEMENTWISE, BINARY},
             onnx=_onnx_of(onnx))


# NOTE: in every rule below `n.inputs` are the forward inputs, `n.id` the forward output, and
# `g` the incoming gradient with the output's shape.
def _ins(n):
    return n.inputs if len(n.inputs) > 1 else n.inputs[0]


_unary("neg", "-{0}", np.negative, lambda b, n, g: (b.neg(g),), float_only=False,
       doc="-x", onnx="Neg")
_unary("exp", "exp({0})", np.exp, lambda b, n, g: (b.mul(g, n.id),), doc="e**x", onnx="Exp")


def _onnx_expm1(e, n, x):
    # NOTE: ONNX has no Expm1, and Exp - 1 cancels near 0 (exp(-1e-7) - 1 is 40% off in
    # float32): Kahan's (u - 1) * x / log(u), u = e**x, is exact to a few ulp there (its
    # rounding errors in u - 1 and log(u) cancel); u == 1 gives x itself, and away from 0
    # (|x| >= 0.5, where u may be 0 or inf) u - 1 has nothing to cancel
    dtype = e.in_types(n)[0].dtype
    one = e.const(1.0, dtype)
    u = e.op("Exp", x)
    um1 = e.op("Sub", u, one)
    kahan = e.op("Div", e.op("Mul", um1, x), e.op("Log", u))
    near = e.op("Where", e.op("Equal", u, one), x, kahan)
    return e.op("Where", e.op("Less", e.op("Abs", x), e.const(0.5, dtype)), near, um1)


# NOTE: a primitive, not exp(x) - 1: that cancels for small x (float32 exp(-1e-7) - 1 is 40%
# off), and elu and any e**x - 1 need the tail (torch.expm1, np.expm1)
register("expm1", "x: tensor", _float_unary_shape, expr="expm1({0})", impl=np.expm1,
         grad=lambda b, n, g: (b.mul(g, b.exp(_ins(n))),), samples=_REAL,
         doc="e**x - 1, exact near 0 (elu uses it)", family="elementwise",
         traits={ELEMENTWISE, UNARY}, onnx=_onnx_expm1)
_unary("log", "log({0})", np.log, lambda b, n, g: (b.div(g, _ins(n)),), samples=_POS,
       doc="natural logarithm", onnx="Log")
_unary("sqrt", "sqrt({0})", np.sqrt,
       lambda b, n, g: (b.div(g, b.mul(n.id, b.const(2.0, n.dtype))),), samples=_POS,
       doc="square root", onnx="Sqrt")
_unary("abs", "abs({0})", np.abs, lambda b, n, g: (b.mul(g, b.sign(_ins(n))),),
       float_only=False, doc="|x|; its gradient is sign(x): 0 at x = 0 as in PyTorch, and nan "
           "at a nan x (PyTorch gives 0 there, as its sign(nan) is 0)", onnx="Abs")
_unary("sign", "sign({0})", np.sign, lambda b, n, g: (None,), float_only=False,
       doc="-1, 0 or 1 (no gradient); sign(nan) is nan, as numpy's (torch.sign gives 0), so "
           "a nan is not hidden", onnx="Sign")
_unary("tanh", "tanh({0})", np.tanh,
       lambda b, n, g: (b.mul(g, b.sub(b.const(1.0, n.dtype), b.mul(n.id, n.id))),),
       doc="hyperbolic tangent", onnx="Tanh")


def _sigmoid(x):
    with np.errstate(over="ignore"):  # e**-x = inf for x < -709 (-88 in float32) gives 0
        return 1 / (1 + np.exp(-x))


# NOTE: 1 / (1 + e**-x), as torch.sigmoid, keeps the relative precision of the negative tail:
# the tanh form 0.5 * (tanh(x / 2) + 1) cancels there (float32 gave 0 from x = -16)
_unary("sigmoid", "sigmoid({0})", _sigmoid,
       lambda b, n, g: (b.mul(g, b.mul(n.id, b.sub(b.const(1.0, n.dtype), n.id))),),
       doc="1 / (1 + e**-x), as torch.sigmoid (exact in the negative tail; where e**-x "
           "overflows to inf the result is 0)", onnx="Sigmoid")
register("stop_gradient", "x: tensor", _number_unary_shape, expr="{0}", impl=np.positive,
         flops=lambda ins, out, **_: 0, samples=(Sample(((3, 4),), grad=False),),
         family="elementwise",
         onnx=onnx_op("Identity"),
         traits={ELEMENTWISE, UNARY, NONDIFF},
         doc="x itself, a constant to autodiff: no gradient flows back through it (the "
             "max a stable softmax subtracts)")
_unary("erf", "erf({0})", np.vectorize(math.erf, otypes=[np.float64]),
       lambda b, n, g: (b.mul(g, b.mul(b.const(2 / math.sqrt(math.pi), n.dtype),
                                       b.exp(b.neg(b.mul(_ins(n), _ins(n)))))),),
       doc="Gauss error function", onnx="Erf")

_binary("add", "{0} + {1}", np.add, lambda b, n, g: (g, g), doc="a + b", onnx="Add")
_binary("sub", "{0} - {1}", np.subtract, lambda b, n, g: (g, b.neg(g)), doc="a - b",
        onnx="Sub")
_binary("mul", "{0} * {1}", np.multiply,
        lambda b, n, g: (b.mul(g, n.inputs[1]), b.mul(g, n.inputs[0])), doc="a * b",
        onnx="Mul")
_binary("div", "{0} / {1}", np.divide,
        lambda b, n, g: (b.div(g, n.inputs[1]), b.neg(b.div(b.mul(g, n.id), n.inputs[1]))),
        samples=(Sample(((3, 4), (3, 4)), domain="positive"),
                 Sample(((2, 3), (3,)), domain="positive")), doc="a / b", onnx="Div")
def _pow_grad(b, n, g):
    # NOTE: as torch's pow_backward, 0 where a**b is flat: d/da at b = 0 (b * 0**-1 = 0 * inf)
    # and d/db at a = 0, b >= 0 (0**b * log 0 = 0 * -inf), each nan by the plain formula
    a, e = n.inputs
    # NOTE: an integer base (token ids ** a weight) is cast first: log refuses an int tensor
    a = a if is_float(b.type(a).dtype) else b.cast(a, dtype=n.dtype)
    zero, one = b.const(0.0, n.dtype), b.const(1.0, n.dtype)
    da = b.where(b.eq(e, zero), zero, b.mul(e, b.pow(a, b.sub(e, one))))
    at_zero = b.eq(a, zero)
    flat = b.where(at_zero, b.ge(e, zero), at_zero)   # a == 0 and b >= 0
    db = b.where(flat, zero, b.mul(n.id, b.log(a)))
    return b.mul(g, da), b.mul(g, db)


_binary("pow", "pow({0}, {1})", np.power, _pow_grad,
        samples=(Sample(((3, 4), (3, 4)), domain="positive"),), doc="a ** b", onnx="Pow",
        shape=_pow_shape)


def _select_grad(pick_a):
    def grad(b, n, g):
        a, c = n.inputs
        zero = b.const(0.0, n.dtype)
        mask = pick_a(b, a, c)
        return b.where(mask, g, zero), b.where(mask, zero, g)
    return grad


# NOTE: ties send the whole gradient to `a` (torch.maximum splits it evenly, which costs an
# equality test and a halving in every backward). Finite differences are undefined at ties,
# so samples avoid them.
_binary("maximum", "max({0}, {1})", np.maximum, _select_grad(lambda b, a, c: b.ge(a, c)),
        doc="elementwise max; where a == b the whole gradient goes to a (torch.maximum "
            "splits it evenly)", onnx="Max")
_binary("minimum", "min({0}, {1})", np.minimum, _select_grad(lambda b, a, c: b.le(a, c)),
        doc="elementwise min; where a == b the whole gradient goes to a (torch.minimum "
            "splits it evenly)", onnx="Min")


def _onnx_ne(e, n, a, b):
    return e.op("Not", e.elementwise("Equal", n, a, b))


for _name, _sym, _np, _onnx in (("lt", "<", np.less, onnx_op("Less")),
                                ("le", "<=", np.less_equal, onnx_op("LessOrEqual")),
                                ("gt", ">", np.greater, onnx_op("Greater")),
                                ("ge", ">=", np.greater_equal, onnx_op("GreaterOrEqual")),
                                ("eq", "==", np.equal, onnx_op("Equal")),
                                ("ne", "!=", np.not_equal, _onnx_ne)):
    register(_name, "a: tensor, b: tensor", _compare_shape, expr=f"{{0}} {_sym} {{1}}",
             impl=_np, doc=f"a {_sym} b, as bool", family="elementwise", onnx=_onnx,
             traits={ELEMENTWISE, BINARY, NONDIFF}, samples=(Sample(((3, 4), (3, 4)),
                                                                    grad=False),))


def _where_shape(c: TensorType, a: TensorType, b: TensorType, **_) -> TensorType:
    if c.dtype != "bool":
        raise ShapeError(f"the condition must be bool, got {c}", arg=0,
                         hint="compare first, e.g. where(x > 0, x, 0)")
    return TensorType(broadcast_shapes(c.shape, a.shape, b.shape), promote(a.dtype, b.dtype))


def _where_grad(b, n, g):
    c = n.inputs[0]
    zero = b.const(0.0, n.dtype)
    return None, b.where(c, g, zero), b.where(c, zero, g)


register("where", "cond: tensor, a: tensor, b: tensor", _where_shape,
         expr="({1} if {0} else {2})", impl=np.where, grad=_where_grad,
         doc="a where cond is true, else b", family="elementwise", onnx=onnx_op("Where"),
         traits={ELEMENTWISE, TERNARY},
         samples=(Sample(((3, 4), (3, 4), (3, 4)), dtypes=("bool", None, None)),))


def _cast_shape(x: TensorType, *, dtype: str) -> TensorType:
    return TensorType(x.shape, dtype)


register("cast", "x: tensor, dtype: dtype", _cast_shape, expr="cast({0})",
         impl=lambda x, *, dtype: x.astype(dtype),
         grad=lambda b, n, g: (b.cast(g, dtype=b.type(n.inputs[0]).dtype)
                               if is_float(b.type(n.inputs[0]).dtype) else None,),
         onnx=lambda e, n, x: e.cast(x, e.in_types(n)[0].dtype, n.attrs["dtype"]),
         doc="convert to another dtype (no gradient into integer inputs)", family="elementwise",
         traits={ELEMENTWISE, UNARY}, samples=(Sample(((3, 4),), {"dtype": "float64"}),))
