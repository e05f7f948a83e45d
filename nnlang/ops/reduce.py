"""Reductions over axes: sum, max and min. Mean, variance and softmax are compositions of these."""
from __future__ import annotations

import numpy as np

from nnlang.ir.dims import numel
from nnlang.ops.lowering import GRID_LOOP, prange
from nnlang.ops.registry import (REDUCE, Sample, ShapeError, TensorType, need_some_axes,
                                 norm_axes, norm_axis, register)


def _reduced(x: TensorType, axes, keepdims: bool) -> tuple:
    ax = norm_axes(axes, x.rank)
    if keepdims:
        return tuple(1 if i in ax else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in ax)


def _reduce_shape(x: TensorType, *, axes, keepdims) -> TensorType:
    need_some_axes("axes", axes)
    return TensorType(_reduced(x, axes, keepdims), x.dtype)


def _expand(b, n, v):
    """Brings a reduced value back to the input's shape (keepdims, then broadcast)."""
    x = b.type(n.inputs[0])
    kept = _reduced(x, n.attrs["axes"], True)
    return b.broadcast_to(b.reshape(v, shape=list(kept)), shape=list(x.shape))


def _sum_grad(b, n, g):
    return (_expand(b, n, g),)


def _extreme_grad(b, n, g):
    """max and min: the gradient goes to the extreme value of each reduced group."""
    # NOTE: ties share the gradient equally (like torch.amax/amin), which keeps the rule linear
    # in g and matches finite differences of the tie-broken function on average.
    # NOTE: a group holding NaN has NaN as its extreme, which no entry equals: the mask alone
    # gave its entries 0, hiding the NaN, where torch.amax's g / count * mask is 0 / 0 = NaN
    # for each of them; so is this. (max(count, 1): no 0 / 0 computed and then dropped.)
    x = n.inputs[0]
    extreme = _expand(b, n, n.id)
    mask = b.eq(x, extreme)
    count = b.reduce_sum(b.cast(mask, dtype=n.dtype), axes=n.attrs["axes"], keepdims=True)
    count = b.maximum(count, b.const(1.0, n.dtype))
    share = b.broadcast_to(b.div(b.reshape(g, shape=list(b.type(count).shape)), count),
                           shape=list(b.type(x).shape))
    grad = b.where(mask, share, b.const(0.0, n.dtype))
    return (b.where(b.ne(extreme, extreme), b.const(float("nan"), n.dtype), grad),)


# NOTE: rows of 7 and 5 too: the numba kernels fold an innermost max or min in 4 lanes and
# then a tail (`render_numba._row_out`), which rows of 4 alone never reached
_SAMPLES = (Sample(((3, 4),), {"axes": [1]}), Sample(((2, 3, 4),), {"axes": [0, 2]}),
            Sample(((2, 3, 4),), {"axes": None, "keepdims": True}),
            Sample(((2, 3, 4),), {"axes": [-1], "keepdims": True}),
            Sample(((3, 7),), {"axes": [1]}), Sample(((2, 3, 5),), {"axes": [0, 2]}))


def _onnx_reduce_sum(e, n, x):
    axes = n.attrs["axes"]
    listed = None if axes is None else e.ints(norm_axes(axes, _in_rank(e, n)))
    return e.op("ReduceSum", x, listed, keepdims=int(n.attrs["keepdims"]))


def _onnx_reduce_extreme(op_type: str):
    def emit(e, n, x):
        # NOTE: opset 17's ReduceMax/ReduceMin take their axes as an attribute (ReduceSum's
        # are an input)
        axes = n.attrs["axes"]
        extra = {} if axes is None else {"axes": list(norm_axes(axes, _in_rank(e, n)))}
        # NOTE: ... and no bool (opset 20 adds it): bools reduce as int32, 0 and 1
        wide = "int32" if n.dtype == "bool" else n.dtype
        y = e.op(op_type, e.cast(x, n.dtype, wide), keepdims=int(n.attrs["keepdims"]), **extra)
        return e.cast(y, wide, n.dtype)
    return emit


def _in_rank(e, n) -> int:
    return e.in_types(n)[0].rank


def accumulator_dtype(op: str, dtype: str) -> str:
    """The dtype a reduction adds in: float32 sums accumulate in float64, on every backend (the
    numba and CUDA kernels, and this op's numpy impl), so they agree whatever order each adds
    in. NOTE: the impl's float32 pairwise sum gave 1e8, 1000 ones and -1e8 as 992, where the
    kernels gave 1000."""
    return "float64" if op == "sum" and dtype == "float32" else dtype


def _np_reduce(fn, op: str):
    def impl(x, *, axes, keepdims):
        x = np.asarray(x)
        wide = accumulator_dtype(op, x.dtype.name)
        return fn(x if wide == x.dtype.name else x.astype(wide),
                  axis=None if axes is None else tuple([axes] if isinstance(axes, int) else axes),
                  keepdims=keepdims)
    return impl


register("reduce_sum", "x: tensor, axes: ints = none, keepdims: bool = false", _reduce_shape,
         impl=_np_reduce(np.sum, "sum"), grad=_sum_grad, samples=_SAMPLES, family="reduce",
         onnx=_onnx_reduce_sum,
         traits={REDUCE}, doc="sum over axes (all axes when none)")
register("reduce_max", "x: tensor, axes: ints = none, keepdims: bool = false", _reduce_shape,
         impl=_np_reduce(np.max, "max"), grad=_extreme_grad, samples=_SAMPLES, family="reduce",
         onnx=_onnx_reduce_extreme("ReduceMax"),
         traits={REDUCE}, doc="max over axes (all axes when none); a tied maximum shares the "
             "gradient evenly, and a NaN in the reduced values gives NaN, and NaN gradients "
             "to each of them, as torch.amax does")
register("reduce_min", "x: tensor, axes: ints = none, keepdims: bool = false", _reduce_shape,
         impl=_np_reduce(np.min, "min"), grad=_extreme_grad, samples=_SAMPLES, family="reduce",
         onnx=_onnx_reduce_extreme("ReduceMin"),
         traits={REDUCE}, doc="min over axes (all axes when none); a tied minimum shares the "
             "gradient evenly, and a NaN in the reduced values gives NaN, and NaN gradients "
             "to each of them, as torch.amin does")


# *** cumulative sum: a library primitive (a scan), lowered per backend below ***

def _cumsum_shape(x: TensorType, *, axis, reverse) -> TensorType:
    if x.dtype == "bool":
        raise ShapeError(f"cumsum needs numbers, got {x}", arg=0, hint="cast(x, 'int32') first")
    norm_axis(axis, x.rank)
    return TensorType(x.shape, x.dtype)


def _cumsum_impl(x, *, axis, reverse):
    if reverse:
        return np.flip(np.cumsum(np.flip(x, axis), axis, dtype=x.dtype), axis)
    return np.cumsum(x, axis, dtype=x.dtype)


def _lines(x, axis: int) -> tuple[int, int, int]:
    """(outer, n, inner): x as [outer, n, inner] with `axis` in the middle."""
    ax = axis % x.ndim
    outer = int(np.prod(x.shape[:ax], dtype=np.int64))
    return outer, x.shape[ax], int(np.prod(x.shape[ax + 1:], dtype=np.int64))


def cumsum_kernel(x, out, reverse):
    """x, out: [outer, n, inner]; each line summed in order, in x's dtype (as numpy does)."""
    outer, n, inner = x.shape
    for o in prange(outer):
        for j in range(inner):
            acc = x.dtype.type(0)
            for k in range(n):
                i = n - 1 - k if reverse else k
                acc += x[o, i, j]
                out[o, i, j] = acc


def _cumsum_numba(be, a, xs, out):
    shape = _lines(out, a["axis"])
    return be.specialize(be.jit(cumsum_kernel, parallel=True),
                         (xs[0].reshape(shape), out.reshape(shape), bool(a["reverse"])))


def cumsum_cuda_source(be, t: str) -> tuple[str, str]:
    """One thread per line of [outer, n, inner], summing it in order."""
    name, ct = f"nn_cumsum_{t}", be.ctype(t)
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long n, long long inner,\n'
        f"    int reverse, const {ct}* __restrict__ x, {ct}* __restrict__ out) {{\n"
        + GRID_LOOP +
        "    const long long o = e / inner, j = e % inner;\n"
        f"    {ct} acc = 0;\n"
        "    for (long long k = 0; k < n; ++k) {\n"
        "      const long long at = (o * n + (reverse ? n - 1 - k : k)) * inner + j;\n"
        "      acc += x[at];\n"
        "      out[at] = acc;\n"
        "    }\n  }\n}\n")


def _cumsum_cuda(be, a, xs, out):
    outer, n, inner = _lines(out, a["axis"])
    k = be.library_kernel(*cumsum_cuda_source(be, str(out.dtype)))
    return be.launch(k, outer * inner, (np.int64(outer * inner), np.int64(n), np.int64(inner),
                                        np.int32(bool(a["reverse"])), xs[0], out))


register("cumsum", "x: tensor, axis: int = -1, reverse: bool = false", _cumsum_shape,
         impl=_cumsum_impl,
         grad=lambda b, n, g: (b.cumsum(g, axis=n.attrs["axis"],
                                        reverse=not n.attrs["reverse"]),),
         lower={"numba": _cumsum_numba, "cuda": _cumsum_cuda}, family="reduce",
         # NOTE: one add per element; it is no REDUCE op, so without this `check` counted 0
         flops=lambda ins, out, **_: numel(out.shape),
         onnx=lambda e, n, x: e.op("CumSum", x, e.const(n.attrs["axis"], "int64"),
                                   reverse=int(n.attrs["reverse"])),
         doc="running sum along an axis (from the end when reverse); its gradient is the "
             "reverse running sum",
         samples=(Sample(((3, 5),), {"axis": 1}), Sample(((2, 4, 3),), {"axis": 1,
                                                                       "reverse": True}),
                  Sample(((4, 3),), {"axis": 0}), Sample(((2, 6),), dtypes=("int32",),
                                                         grad=False)))
