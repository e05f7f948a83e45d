"""Data movement primitives: reshape, transpose, broadcast, slicing, concatenation, and the
sliding-window pair unfold/fold that convolution and pooling are built from.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from nnlang.ir.dims import DimError, Sym, dim_div, fmt_shape, numel
from nnlang.ops.lowering import GRID_LOOP, both
from nnlang.ops.registry import (MOVEMENT, NONDIFF, Sample, ShapeError, TensorType,
                                 Unexportable, broadcast_shapes, is_float, need_sizes,
                                 norm_axis, promote, register)
from nnlang.ops.signature import show_value
from nnlang.ops.windows import LOWER as _WINDOW_LOWER
from nnlang.ops.windows import window_taps


# *** reshape / transpose / broadcast ***

def _reshape_shape(x: TensorType, *, shape) -> TensorType:
    need_sizes("reshape", shape, infer=True)
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ShapeError("reshape allows at most one -1", arg=0)
    if -1 in shape:
        known = numel([d for d in shape if d != -1])
        try:
            shape[shape.index(-1)] = dim_div(numel(x.shape), known)
        except DimError:
            raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} into {fmt_shape(shape)}: "
                             f"{numel(x.shape)} elements are not divisible by {known}",
                             arg=0) from None
    if numel(shape) != numel(x.shape):
        raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} ({numel(x.shape)} elements) "
                         f"into {fmt_shape(shape)} ({numel(shape)} elements)", arg=0)
    return TensorType(tuple(shape), x.dtype)


def _reshape_positional(texts, values, rank):
    # NOTE: the dims as written (`batch`, `n * 4`, -1), so the hint is their own call
    return (f"the shape is one list (PyTorch's reshape and view take loose dims): "
            f"`reshape({texts[0]}, [{', '.join(texts[1:])}])`")


def dims_as_perm(values, rank: int | None, swap: bool):
    """The `perm` list for PyTorch's loose dims: two to swap (transpose, numpy's swapaxes) or
    the whole order (permute); None when they are no integers or the rank is unknown."""
    dims = list(values[1:])
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return None
    if not (swap and len(dims) == 2):
        return dims
    if rank is None:
        return None
    try:
        a, c = (norm_axis(d, rank) for d in dims)
    except ShapeError:
        return None
    perm = list(range(rank))
    perm[a], perm[c] = perm[c], perm[a]
    return perm


def _transpose_positional(texts, values, rank):
    perm = dims_as_perm(values, rank, swap=True)
    if perm is None:
        # NOTE: two dims to swap, one out of range: say which, not the signature
        dims = values[1:]
        out = [d for d in dims if isinstance(d, int) and rank and not -rank <= d < rank]
        return (f"axis {out[0]} is out of range for rank {rank}: `transpose({texts[0]}, perm = "
                f"[...])` names each of the axes 0 to {rank - 1} once") if out else None
    what = ("the whole order of the axes, not two to swap as PyTorch's transpose"
            if len(values) == 3 else "the order of the axes as one list")
    return f"transpose takes {what}: `transpose({texts[0]}, perm = {show_value(perm)})`"


register("reshape", "x: tensor, shape: shape", _reshape_shape, positional=_reshape_positional,
         # NOTE: Keras' Reshape(target_shape) leaves the batch axis out; nnlang's shape has it
         habits={"target_shape": "'shape' here, with the batch axis first (Keras' target_shape "
                                 "leaves it out): reshape(x, [batch, 40]) for Reshape((40,))"},
         onnx=lambda e, n, x: e.op("Reshape", x, e.shape(n.shape)),
         impl=lambda x, *, shape: np.reshape(x, tuple(int(d) for d in shape)),
         grad=lambda b, n, g: (b.reshape(g, shape=list(b.type(n.inputs[0]).shape)),),
         family="movement", traits={MOVEMENT}, doc="same elements, new shape (one dim may be -1)",
         samples=(Sample(((3, 4),), {"shape": [2, 6]}), Sample(((2, 3, 4),), {"shape": [-1, 4]})))


def perm_hint(perm, rank: int) -> str | None:
    """What is wrong with a perm that is no permutation of 0..rank-1, and what to write."""
    if not isinstance(perm, (list, tuple)) or rank == 0:
        return None
    out = [p for p in perm if not -rank <= p < rank]
    if out:
        return (f"axis {out[0]} is out of range for rank {rank}: perm names each of the axes "
                f"0 to {rank - 1} once")
    counted = [p % rank for p in perm]
    if sorted(counted) == list(range(rank)):   # NOTE: negative axes, as numpy allows
        return f"transpose counts axes from 0: perm = {show_value(counted)}"
    if len(perm) != rank:
        return f"perm names each of the {rank} axes 0 to {rank - 1} once"
    return f"perm names an axis twice: each of 0 to {rank - 1} once"


def _transpose_shape(x: TensorType, *, perm) -> TensorType:
    if not isinstance(perm, (list, tuple)) or sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {perm} is not a permutation of the {x.rank} axes of "
                         f"{fmt_shape(x.shape)}", attr="perm", hint=perm_hint(perm, x.rank))
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


register("transpose", "x: tensor, perm: ints", _transpose_shape,
         positional=_transpose_positional,
         onnx=lambda e, n, x: e.op("Transpose", x, perm=list(n.attrs["perm"])),
         impl=lambda x, *, perm: np.transpose(x, perm),
         grad=lambda b, n, g: (b.transpose(g, perm=list(np.argsort(n.attrs["perm"]).tolist())),),
         family="movement", traits={MOVEMENT}, doc="permute axes",
         samples=(Sample(((3, 4),), {"perm": [1, 0]}), Sample(((2, 3, 4),), {"perm": [2, 0, 1]})))


def _broadcast_shape(x: TensorType, *, shape) -> TensorType:
    need_sizes("broadcast_to", shape)
    out = broadcast_shapes(x.shape, tuple(shape))
    if out != tuple(shape):
        raise ShapeError(f"cannot broadcast {fmt_shape(x.shape)} to {fmt_shape(shape)}", arg=0)
    return TensorType(tuple(shape), x.dtype)


register("broadcast_to", "x: tensor, shape: shape", _broadcast_shape,
         onnx=lambda e, n, x: e.op("Expand", x, e.shape(n.shape)),
         impl=lambda x, *, shape: np.broadcast_to(x, [int(d) for d in shape]),
         grad=lambda b, n, g: (g,),  # NOTE: autodiff's sum_to undoes the broadcast
         family="movement", traits={MOVEMENT}, doc="repeat size-1 and missing leading dims",
         samples=(Sample(((3, 1),), {"shape": [2, 3, 4]}),))


# *** slicing ***

def _slice_size(n, start, stop, step):
    """The length of start:stop:step of a dim of size n. A symbolic bound or dim is taken where
    the result is a dim: the whole dim, or its first `stop` entries for a symbolic stop (the
    first `seq` rows of a positions table), which a bound stop then cuts as any int does."""
    if step == 0:
        raise ShapeError("slice: step cannot be 0", attr="step")
    if not any(isinstance(v, Sym) for v in (n, start, stop)):
        lo, hi, st = slice(start, stop, step).indices(n)
        return len(range(lo, hi, st))
    if (start, step) == (0, 1) and (stop is None or stop == n):
        return n
    if (start, stop, step) == (-1, None, -1):
        return n   # the whole dim from its last entry back (flip)
    if (start, step) == (0, 1) and isinstance(stop, Sym) and isinstance(n, int):
        return stop
    if isinstance(start, int) and -start > 0 and (stop, step) == (None, 1):
        return -start  # the last -start steps, whatever the length (a user scan's final state)
    if isinstance(start, int) and isinstance(stop, int) and step == 1 and \
            (0 <= start < stop or start < stop < 0):
        # NOTE: entries start..stop-1 from the front (x[:, 0], a first token) or the back
        # (x[:, -2]); a bound length too short for them cuts it shorter, as numpy's slice
        # does, and binding refuses that (passes/shapes.py `_same_as_checked`)
        return stop - start
    raise ShapeError(f"cannot slice {start}:{'' if stop is None else stop}:{step} of a dim of "
                     f"size {n}: with a symbolic length the slice must be entries i:j (step 1, "
                     "0 <= i < j or i < j < 0), the first k (k a symbol or the whole dim), the "
                     "last k (start -k) or the whole dim reversed (::-1)",
                     arg=0,
                     # NOTE: a negative step counts from an end the length decides
                     hint="reverse the axis first (x[:, ::-1], or flip(x, axis = 1)), then "
                          "slice that with a positive step" if step < 0 else
                     "slice an axis of concrete size, or take the first `seq` entries")


def _slice_shape(x: TensorType, *, axis, start, stop, step) -> TensorType:
    ax = norm_axis(axis, x.rank)
    n = x.shape[ax]
    size = _slice_size(n, start, stop, step)
    if size == 0:
        raise ShapeError(f"slice {start}:{stop}{'' if step == 1 else f':{step}'} of a dim of "
                         f"size {n} is empty", arg=0,
                         hint="a negative step counts down: its start comes after its stop "
                              "(x[:, 5:1:-1])" if step < 0 else None)
    return TensorType(x.shape[:ax] + (size,) + x.shape[ax + 1:], x.dtype)


def _slice_impl(x, *, axis, start, stop, step):
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop, step)
    return x[tuple(idx)]


def _slice_grad(b, n, g):
    a = n.attrs
    if (a["start"], a["stop"], a["step"]) == (-1, None, -1):
        return (b.slice(g, **{k: a[k] for k in ("axis", "start", "stop", "step")}),)  # flip's
    size = b.type(n.inputs[0]).shape[norm_axis(a["axis"], b.type(g).rank)]
    return (b.unslice(g, axis=a["axis"], start=a["start"], stop=a["stop"], step=a["step"],
                      size=size),)


def _onnx_slice(e, n, x):
    a = n.attrs
    size = e.in_types(n)[0].shape[a["axis"]]
    if isinstance(size, Sym) and (a["start"], a["stop"], a["step"]) == (-1, None, -1):
        # NOTE: the whole dim reversed (flip); the shape alone cannot tell it from a copy
        return e.op("Slice", x, e.ints([-1]), e.ints([-(2 ** 63)]), e.ints([a["axis"]]),
                    e.ints([-1]))
    if isinstance(size, Sym) and n.shape == e.in_types(n)[0].shape:   # the whole dim
        return e.op("Identity", x)
    if isinstance(a["stop"], Sym):   # the first `stop` entries, read at run time
        return e.op("Slice", x, e.ints([0]), e.dim(a["stop"]), e.ints([a["axis"]]))
    if isinstance(size, Sym):
        # NOTE: the last -start entries (ONNX counts a negative start from the back), or fixed
        # entries start..stop-1 (`_slice_size`)
        stop = 2 ** 63 - 1 if a["stop"] is None else a["stop"]
        return e.op("Slice", x, e.ints([a["start"]]), e.ints([stop]), e.ints([a["axis"]]))
    lo, hi, step = slice(a["start"], a["stop"], a["step"]).indices(size)
    # NOTE: ONNX reads a negative end as counted from the back; "before index 0" is -inf
    hi = -(2 ** 63) if hi < 0 else hi
    return e.op("Slice", x, e.ints([lo]), e.ints([hi]), e.ints([a["axis"]]), e.ints([step]))


register("slice", "x: tensor, axis: int, start: int = 0, stop: dim = none, step: int = 1",
         _slice_shape, impl=_slice_impl, grad=_slice_grad, family="movement", traits={MOVEMENT},
         onnx=_onnx_slice,
         doc="x[start:stop:step] along one axis",
         samples=(Sample(((5, 4),), {"axis": 0, "start": 1, "stop": 4}),
                  Sample(((3, 6),), {"axis": -1, "start": 0, "stop": None, "step": 2})))


def _flip_shape(x: TensorType, *, axis) -> TensorType:
    axes = [axis] if isinstance(axis, int) else axis
    if not axes or not all(isinstance(a, int) and -x.rank <= a < x.rank for a in axes):
        raise ShapeError(f"flip: axis {show_value(axis)} does not name axes of "
                         f"{fmt_shape(x.shape)}", attr="axis",
                         hint=f"one axis or a list of them, each from {-x.rank} to {x.rank - 1}"
                         if x.rank else "a scalar has no axis to flip")
    if len({a % x.rank for a in axes}) != len(axes):
        raise ShapeError(f"flip: axis {show_value(axis)} names an axis twice", attr="axis",
                         hint="flipping an axis twice gives it back unchanged: name it once")
    return x


def _flip(b, x, *, axis):
    # NOTE: a reversed slice per axis: a view with a negative stride on every backend (numba,
    # CuPy kernels take strides as arguments), ONNX's Slice with step -1, and its gradient is
    # the same flip (`_slice_grad`); a symbolic length is fine (`_slice_size`)
    for a in sorted({a % b.type(x).rank for a in ([axis] if isinstance(axis, int) else axis)}):
        x = b.slice(x, axis=a, start=-1, stop=None, step=-1)
    return x


register("flip", "x: tensor, axis: ints", _flip_shape, decompose=_flip, family="movement",
         doc="reverses the order of the entries along an axis, or each of a list of axes "
             "(numpy's flip, torch.flip); the same as x[:, ::-1] along axis 1",
         samples=(Sample(((3, 4),), {"axis": 1}), Sample(((2, 3, 4),), {"axis": [0, -1]})))


def _unslice_shape(x: TensorType, *, axis, start, stop, step, size) -> TensorType:
    ax = norm_axis(axis, x.rank)
    if not isinstance(size, Sym) and (not isinstance(size, int) or size < 1):
        raise ShapeError(f"unslice: size must be a positive size, got {show_value(size)}",
                         attr="size")
    if _slice_size(size, start, stop, step) != x.shape[ax]:
        raise ShapeError(f"unslice: {x.shape[ax]} values do not fill {start}:{stop}:{step} "
                         f"of {size}", arg=0)
    return TensorType(x.shape[:ax] + (size,) + x.shape[ax + 1:], x.dtype)


def _unslice_impl(x, *, axis, start, stop, step, size):
    shape = list(x.shape)
    shape[axis] = size
    out = np.zeros(shape, x.dtype)
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop, step)
    out[tuple(idx)] = x
    return out


def _unslice_into(x, out, idx):
    out.fill(0)
    out[idx] = x


def _unslice_lower(be, a, xs, out):
    idx = [slice(None)] * out.ndim
    idx[a["axis"] % out.ndim] = slice(a["start"], a["stop"], a["step"])
    return _unslice_into, (xs[0], out, tuple(idx))


def _onnx_unslice(e, n, x):
    a, t = n.attrs, e.in_types(n)[0]
    if isinstance(a["stop"], Sym):
        raise Unexportable(f"an unslice to the symbolic stop {a['stop']}")
    lo, hi, step = slice(a["start"], a["stop"], a["step"]).indices(a["size"])
    if step != 1:
        raise Unexportable(f"a strided unslice (step {step})")
    ax = norm_axis(a["axis"], t.rank)
    pads = [0] * (2 * t.rank)
    pads[ax], pads[t.rank + ax] = lo, a["size"] - hi
    return e.op("Pad", x, e.ints(pads))


register("unslice", "x: tensor, axis: int, start: int, stop: int, step: int, size: int",
         _unslice_shape, onnx=_onnx_unslice, impl=_unslice_impl, lower=both(_unslice_lower),
         grad=lambda b, n, g: (b.slice(g, **{k: n.attrs[k] for k in
                                             ("axis", "start", "stop", "step")}),),
         family="movement", traits={MOVEMENT},
         doc="place x at [start:stop:step] of a zero tensor with `size` along axis (slice's "
             "adjoint; also zero padding)",
         samples=(Sample(((3, 4),), {"axis": 0, "start": 1, "stop": 4, "step": 1, "size": 5}),))


def _concat_shape(*xs: TensorType, axis) -> TensorType:
    if not xs:
        raise ShapeError("concat needs at least one tensor", hint="concat(a, b, axis = -1)")
    first = xs[0]
    ax = norm_axis(axis, first.rank)
    total = 0
    for i, x in enumerate(xs):
        if x.dtype != first.dtype:
            # NOTE: the result took the first piece's dtype, so concat(mask, ids) cut ids to
            # bools, and numba refused what numpy cast
            raise ShapeError(f"concat: piece {i + 1} is {x}, piece 1 is {first}; the pieces "
                             "need one dtype", arg=i,
                             hint="cast them to one first, e.g. cast(x, dtype = "
                                  f"\"{promote(x.dtype, first.dtype)}\")")
        if x.rank != first.rank or any(a != c for k, (a, c) in
                                       enumerate(zip(x.shape, first.shape)) if k != ax):
            raise ShapeError(f"concat along axis {axis}: {fmt_shape(x.shape)} does not match "
                             f"{fmt_shape(first.shape)} outside that axis", arg=i)
        try:
            total = x.shape[ax] + total
        except DimError:
            raise ShapeError(f"concat along axis {axis}: cannot join a piece of length "
                             f"{x.shape[ax]} to pieces of length {total}: a symbolic length "
                             "adds only to itself", arg=i,
                             hint="concatenate along a concrete axis, or give every piece "
                                  "the same symbolic length") from None
    return TensorType(first.shape[:ax] + (total,) + first.shape[ax + 1:], first.dtype)


def _concat_grad(b, n, g):
    ax = norm_axis(n.attrs["axis"], b.type(g).rank)
    out, start = [], 0
    for x in n.inputs:
        size = b.type(x).shape[ax]
        out.append(b.slice(g, axis=ax, start=start, stop=start + size, step=1))
        start += size
    return tuple(out)


def _copy_all(xp, pairs):
    for dst, src in pairs:
        xp.copyto(dst, src)


def _concat_numba(be, a, xs, out):
    return _concatenate, (tuple(xs), a["axis"], out)


def _concatenate(xs, axis, out):
    np.concatenate(xs, axis=axis, out=out)


def concat_cuda_source(be, t: str) -> tuple[str, str]:
    """out [outer, row] from n contiguous pieces [outer, starts[k+1] - starts[k]] side by side
    (a concat along any axis, flattened so): one launch over a table of the pieces' pointers.
    Each thread finds its piece by a binary search of `starts` (the last piece starting at or
    before its column, which skips empty pieces)."""
    name, ct = f"nn_concat_{t}", be.ctype(t)
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long row, int n,\n'
        f"    const long long* __restrict__ starts, const {ct}* const* __restrict__ parts,\n"
        f"    {ct}* __restrict__ out) {{\n" + GRID_LOOP +
        "    const long long o = e / row, c = e % row;\n"
        "    int lo = 0, hi = n - 1;\n"
        "    while (lo < hi) {\n"
        "      const int mid = (lo + hi + 1) / 2;\n"
        "      if (starts[mid] <= c) lo = mid; else hi = mid - 1;\n"
        "    }\n"
        "    out[e] = parts[lo][o * (starts[lo + 1] - starts[lo]) + c - starts[lo]];\n  }\n}\n")


def _concat_cuda(be, a, xs, out):
    """One launch over a pointer table uploaded here. NOTE: CuPy's own concatenate of more
    than 8 arrays uploads such a table on every call: a host copy inside the step, which also
    breaks CUDA graph capture."""
    xp, axis = be.xp, a["axis"] % out.ndim
    if not out.flags.c_contiguous or not all(x.flags.c_contiguous for x in xs):
        pairs, start = [], 0
        for x in xs:
            idx = [slice(None)] * out.ndim
            idx[axis] = slice(start, start + x.shape[axis])
            pairs.append((out[tuple(idx)], x))
            start += x.shape[axis]
        return _copy_all, (xp, pairs)
    inner = int(np.prod(out.shape[axis + 1:], dtype=np.int64))
    row = out.shape[axis] * inner
    starts = np.concatenate([[0], np.cumsum([x.shape[axis] * inner for x in xs])])
    k = be.library_kernel(*concat_cuda_source(be, str(out.dtype)))
    args = (np.int64(out.size), np.int64(row), np.int32(len(xs)),
            be.to_device(starts.astype(np.int64)), be.pointer_table(xs), out)
    # NOTE: the pieces ride along so the arrays the table points into stay alive
    return be.launch(k, out.size, args, keep=xs)


register("concat", "*xs: tensor, axis: int = -1", _concat_shape,
         onnx=lambda e, n, *xs: e.op("Concat", *xs, axis=n.attrs["axis"]),
         impl=lambda *xs, axis: np.concatenate(xs, axis=axis), grad=_concat_grad,
         lower={"numba": _concat_numba, "cuda": _concat_cuda},
         family="movement", traits={MOVEMENT}, doc="join tensors along an axis",
         samples=(Sample(((2, 3), (2, 5)), {"axis": 1}), Sample(((2, 3), (4, 3)), {"axis": 0})))


# *** sliding windows ***

def window_out(size: int, k: int, stride: int, lo: int, hi: int, dilation: int) -> int:
    return (size + lo + hi - dilation * (k - 1) - 1) // stride + 1


def _window_args(op, kernel, stride, pads, dilation=None) -> dict:
    """kernel, stride, pads (and dilation) as lists, one entry per spatial dim (pads two): an
    int kernel is one dim, an int stride or dilation holds for every dim. ShapeError unless
    each holds that many ints, pads >= 0 and the others >= 1."""
    if isinstance(kernel, list) and not kernel:
        raise ShapeError(f"{op}: kernel must be one int >= 1 per spatial dim, got []",
                         attr="kernel")
    kernel = [kernel] if isinstance(kernel, int) else kernel
    nd = len(kernel) if isinstance(kernel, list) else 0
    out = {}
    for name, given, n, least in (("kernel", kernel, nd, 1), ("stride", stride, nd, 1),
                                  ("pads", pads, 2 * nd, 0), ("dilation", dilation, nd, 1)):
        if name == "dilation" and given is None:
            continue
        v = [given] * n if isinstance(given, int) and name != "pads" else given
        if (not nd or not isinstance(v, list) or len(v) != n or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= least for i in v)):
            # NOTE: the value as written (stride 0, not the [0, 0] it stands for)
            raise ShapeError(f"{op}: {name} must be {n} int{'s' if n > 1 else ''} >= {least} "
                             f"(one per spatial dim{', lo and hi' if name == 'pads' else ''}), "
                             f"got {show_value(given)}", attr=name)
        out[name] = list(v)
    return out


def _bind_window(op):
    """`bind_attrs` of a window op: its window attributes stored as the lists its shape rule,
    numpy semantics and kernels index (an int stride as one per dim)."""
    def bind(*_, **attrs):
        keys = ("kernel", "stride", "pads", "dilation")
        return {**attrs, **_window_args(op, *(attrs.get(k) for k in keys))}
    return bind


def _unfold_shape(x: TensorType, *, kernel, stride, pads, dilation, pad_value) -> TensorType:
    w = _window_args("unfold", kernel, stride, pads, dilation)
    kernel, stride, pads, dilation = w["kernel"], w["stride"], w["pads"], w["dilation"]
    nd = len(kernel)
    if x.rank != nd + 2:
        raise ShapeError(f"expected [batch, {nd} spatial dims, channels], got "
                         f"{fmt_shape(x.shape)}", arg=0)
    outs = []
    for i in range(nd):
        s = x.shape[1 + i]
        if isinstance(s, Sym):
            raise ShapeError(f"spatial dim {s} must be a number", arg=0)
        o = window_out(s, kernel[i], stride[i], pads[2 * i], pads[2 * i + 1], dilation[i])
        if o <= 0:
            raise ShapeError(f"window {kernel[i]} (dilation {dilation[i]}) is larger than the "
                             f"padded input {s + pads[2 * i] + pads[2 * i + 1]}", arg=0)
        outs.append(o)
    return TensorType((x.shape[0], *outs, *kernel, x.shape[-1]), x.dtype)


def _unfold_impl(x, *, kernel, stride, pads, dilation, pad_value):
    nd = len(kernel)
    widths = [(0, 0)] + [(pads[2 * i], pads[2 * i + 1]) for i in range(nd)] + [(0, 0)]
    xp = np.pad(x, widths, constant_values=pad_value)
    outs = [window_out(x.shape[1 + i], kernel[i], stride[i], pads[2 * i], pads[2 * i + 1],
                       dilation[i]) for i in range(nd)]
    out = np.empty((x.shape[0], *outs, *kernel, x.shape[-1]), x.dtype)
    for tap, window in window_taps(kernel, stride, dilation, outs):
        out[tap] = xp[window]
    return out


def _fold_impl(cols, *, size, kernel, stride, pads, dilation):
    nd = len(kernel)
    padded = [size[i] + pads[2 * i] + pads[2 * i + 1] for i in range(nd)]
    xp = np.zeros((cols.shape[0], *padded, cols.shape[-1]), cols.dtype)
    for tap, window in window_taps(kernel, stride, dilation, cols.shape[1:1 + nd]):
        xp[window] += cols[tap]
    crop = tuple(slice(pads[2 * i], pads[2 * i] + size[i]) for i in range(nd))
    return xp[(slice(None),) + crop]


def _fold_shape(cols: TensorType, *, size, kernel, stride, pads, dilation) -> TensorType:
    w = _window_args("fold", kernel, stride, pads, dilation)
    kernel, stride, pads, dilation = w["kernel"], w["stride"], w["pads"], w["dilation"]
    nd = len(kernel)
    if not isinstance(size, list) or len(size) != nd or not all(
            isinstance(n, int) and n >= 1 for n in size):
        raise ShapeError(f"fold: size must be {nd} positive ints, got {show_value(size)}",
                         attr="size")
    outs = [window_out(size[i], kernel[i], stride[i], pads[2 * i], pads[2 * i + 1],
                       dilation[i]) for i in range(nd)]
    want = (cols.shape[0] if cols.rank else "batch", *outs, *kernel,
            cols.shape[-1] if cols.rank else "channels")
    if cols.shape != want:
        raise ShapeError(f"fold: cols {fmt_shape(cols.shape)} are not the windows of size "
                         f"{size} (expected {fmt_shape(want)})", arg=0)
    return TensorType((cols.shape[0], *size, cols.shape[-1]), cols.dtype)


def _onnx_windows(e, x, t: TensorType, kernel, stride, pads, dilation, pad_value) -> str:
    """[B, *out, taps, C]: each kernel tap of x [B, *spatial, C] is one strided Slice of the
    padded x (as `window_taps` reads them), stacked in the same order."""
    nd = len(kernel)
    if any(pads):
        x = e.op("Pad", x, e.ints([0, *pads[0::2], 0, 0, *pads[1::2], 0]),
                 e.const(pad_value, t.dtype))
    outs = [window_out(t.shape[1 + i], kernel[i], stride[i], pads[2 * i], pads[2 * i + 1],
                       dilation[i]) for i in range(nd)]
    taps = []
    for ks in itertools.product(*(range(k) for k in kernel)):
        starts = [k * d for k, d in zip(ks, dilation)]
        ends = [s + st * (o - 1) + 1 for s, st, o in zip(starts, stride, outs)]
        tap = e.op("Slice", x, e.ints(starts), e.ints(ends), e.ints(range(1, nd + 1)),
                   e.ints(stride))
        taps.append(e.op("Unsqueeze", tap, e.ints([1 + nd])))
    return e.op("Concat", *taps, axis=1 + nd)


def _onnx_unfold(e, n, x):
    a = n.attrs
    rows = _onnx_windows(e, x, e.in_types(n)[0], a["kernel"], a["stride"], a["pads"],
                         a["dilation"], a["pad_value"])
    return e.op("Reshape", rows, e.shape(n.shape))


def _onnx_window_max(e, n, x):
    """ONNX MaxPool (channels first, so transposed around it) where its padding rule allows;
    otherwise the max over the windows of an -inf padded x."""
    a, t = n.attrs, e.in_types(n)[0]
    kernel, stride, pads = a["kernel"], a["stride"], a["pads"]
    nd = len(kernel)
    if all(max(pads[2 * i], pads[2 * i + 1]) < kernel[i] for i in range(nd)) and \
            t.dtype in ("float32", "float64"):
        first = e.op("Transpose", x, perm=[0, nd + 1, *range(1, nd + 1)])
        pooled = e.op("MaxPool", first, kernel_shape=list(kernel), strides=list(stride),
                      pads=[*pads[0::2], *pads[1::2]])
        return e.op("Transpose", pooled, perm=[0, *range(2, nd + 2), 1])
    rows = _onnx_windows(e, x, t, kernel, stride, pads, [1] * nd, -np.inf)
    return e.op("ReduceMax", rows, axes=[1 + nd], keepdims=0)


_WINDOW = "kernel: ints, stride: ints, pads: ints, dilation: ints"

register("unfold", f"x: tensor, {_WINDOW}, pad_value: float = 0.0", _unfold_shape,
         impl=_unfold_impl, lower=_WINDOW_LOWER["unfold"], onnx=_onnx_unfold,
         bind_attrs=_bind_window("unfold"),
         grad=lambda b, n, g: (b.fold(g, size=list(b.type(n.inputs[0]).shape[1:-1]),
                                      **{k: n.attrs[k] for k in
                                         ("kernel", "stride", "pads", "dilation")}),),
         family="movement", traits={MOVEMENT},
         doc="sliding windows, channels last: [B, *spatial, C] -> [B, *out, *kernel, C] "
             "(im2col with one row per output position, so a convolution is one GEMM)",
         samples=(Sample(((2, 7, 3),), {"kernel": [3], "stride": [2], "pads": [1, 1],
                                        "dilation": [1]}),
                  Sample(((1, 5, 6, 2),), {"kernel": [3, 2], "stride": [1, 2],
                                           "pads": [1, 1, 0, 0], "dilation": [1, 1]})))

register("fold", f"cols: tensor, size: ints, {_WINDOW}", _fold_shape, impl=_fold_impl,
         lower=_WINDOW_LOWER["fold"], bind_attrs=_bind_window("fold"),
         grad=lambda b, n, g: (b.unfold(g, pad_value=0.0, **{k: n.attrs[k] for k in
                                                            ("kernel", "stride", "pads",
                                                             "dilation")}),),
         family="movement", traits={MOVEMENT},
         doc="adjoint of unfold: sums each window value back into place (col2im)",
         samples=(Sample(((2, 4, 3, 3),), {"size": [7], "kernel": [3], "stride": [2],
                                           "pads": [1, 1], "dilation": [1]}),))


# *** window max (max pooling): a primitive, because unfold + reduce_max wrote and read back a
# copy of every window, and its gradient took five more kernels and a fold ***

def _window_max_shape(x: TensorType, *, kernel, stride, pads, op="window_max") -> TensorType:
    w = _window_args(op, kernel, stride, pads)
    if not is_float(x.dtype):
        # NOTE: padding reads as -inf, which no integer holds
        raise ShapeError(f"{op} needs a float tensor, got {x}", arg=0,
                         hint="cast it first, e.g. cast(x, dtype = \"float32\")")
    nd = len(w["kernel"])
    cols = _unfold_shape(x, **w, dilation=[1] * nd, pad_value=0.0)
    return TensorType(cols.shape[:1 + nd] + (x.shape[-1],), x.dtype)


def _window_max_grad_shape(x: TensorType, g: TensorType, *, kernel, stride,
                           pads) -> TensorType:
    y = _window_max_shape(x, kernel=kernel, stride=stride, pads=pads, op="window_max_grad")
    if g != y:
        raise ShapeError(f"window_max_grad: g is {g}, but the window max of x {x} is {y}",
                         arg=1, hint="g is the gradient of window_max(x, ...) with the same "
                                     "windows")
    return TensorType(x.shape, g.dtype)


def _window_rows(x, kernel, stride, pads):
    """[B, *out, K, C]: every window's cells (padding as -inf) on one axis."""
    nd = len(kernel)
    cols = _unfold_impl(x, kernel=kernel, stride=stride, pads=pads, dilation=[1] * nd,
                        pad_value=-np.inf)
    return cols.reshape(cols.shape[:1 + nd] + (-1, cols.shape[-1]))


def _window_max_grad_impl(x, g, *, kernel, stride, pads):
    rows = _window_rows(x, kernel, stride, pads)
    first = rows.argmax(axis=-2)[..., None, :]   # the first largest cell, as PyTorch routes it
    taps = np.arange(rows.shape[-2]).reshape((1,) * (rows.ndim - 2) + (-1, 1))
    # NOTE: padding never wins: where a window's real cells are all -inf, argmax may choose
    # the -inf padding tied with them; the window's g goes to its first real cell instead
    real = np.isfinite(_window_rows(np.ones((1, *x.shape[1:-1], 1)), kernel, stride, pads))
    hit = (taps == first) & real
    hit |= (taps == real.argmax(axis=-2)[..., None, :]) & ~hit.any(axis=-2, keepdims=True)
    cols = np.where(hit, g[..., None, :], 0).astype(g.dtype)
    nd = len(kernel)
    return _fold_impl(cols.reshape(rows.shape[:1 + nd] + tuple(kernel) + rows.shape[-1:]),
                      size=list(x.shape[1:-1]), kernel=kernel, stride=stride, pads=pads,
                      dilation=[1] * nd)


_POOL_WINDOW = "kernel: ints, stride: ints, pads: ints"
_WINDOW_MAX_SAMPLES = (
    Sample(((2, 7, 3),), {"kernel": [2], "stride": [2], "pads": [0, 1]}),
    Sample(((2, 5, 6, 3),), {"kernel": [3, 2], "stride": [2, 1], "pads": [1, 1, 0, 1]}))

register("window_max", f"x: tensor, {_POOL_WINDOW}", _window_max_shape,
         impl=lambda x, *, kernel, stride, pads: _window_rows(x, kernel, stride, pads).max(-2),
         lower=_WINDOW_LOWER["window_max"], onnx=_onnx_window_max,
         bind_attrs=_bind_window("window_max"),
         grad=lambda b, n, g: (b.window_max_grad(n.inputs[0], g, **{
             k: n.attrs[k] for k in ("kernel", "stride", "pads")}),),
         flops=lambda ins, out, *, kernel, **_: numel(out.shape) * math.prod(kernel),
         family="movement",
         doc="max over sliding windows, channels last: [B, *spatial, C] -> [B, *out, C]; "
             "padding never wins (max pooling)",
         samples=_WINDOW_MAX_SAMPLES)

register("window_max_grad", f"x: tensor, g: tensor, {_POOL_WINDOW}",
         _window_max_grad_shape, impl=_window_max_grad_impl,
         lower=_WINDOW_LOWER["window_max_grad"], bind_attrs=_bind_window("window_max_grad"),
         family="movement", traits={NONDIFF},
         doc="window_max's gradient: each window's g added at the window's first largest cell "
             "of x",
         samples=tuple(Sample((s.shapes[0], _window_max_shape(TensorType(s.shapes[0]),
                                                              **s.attrs).shape),
                              s.attrs, grad=False) for s in _WINDOW_MAX_SAMPLES))
