"""Indexing primitives: row gather (embedding lookup) and its adjoint scatter-add, one-hot and
argmax (the last two carry no gradient).
"""
from __future__ import annotations

import numpy as np

from nnlang.errors import NNError
from nnlang.ir.dims import fmt_shape
from nnlang.ops.lowering import GRID_LOOP
from nnlang.ops.registry import (INDEX, INT_DTYPES, NONDIFF, Sample, ShapeError, TensorType,
                                 need_positive, register)


def _int_indices(idx: TensorType, arg: int) -> None:
    if idx.dtype not in INT_DTYPES:
        raise ShapeError(f"indices must be int32 or int64, got {idx}", arg=arg,
                         hint="declare the input as int32[...]")


def _gather_shape(table: TensorType, idx: TensorType) -> TensorType:
    _int_indices(idx, 1)
    if table.rank == 0:  # NOTE: as numpy's np.float32(1)[[0]]: rows are along axis 0
        raise ShapeError(f"gather: the table is a scalar ({table}); it has no rows to pick",
                         arg=0, hint="give a table of rank 1 or more, its rows along axis 0")
    return TensorType(idx.shape + table.shape[1:], table.dtype)


def _scatter_shape(src: TensorType, idx: TensorType, *, rows) -> TensorType:
    _int_indices(idx, 1)
    if src.shape[:idx.rank] != idx.shape:
        raise ShapeError(f"scatter_add: values {fmt_shape(src.shape)} do not start with the "
                         f"index shape {fmt_shape(idx.shape)}", arg=0)
    need_positive("scatter_add", "rows", rows)
    return TensorType((rows,) + src.shape[idx.rank:], src.dtype)


def _scatter_impl(src, idx, *, rows):
    out = np.zeros((rows,) + src.shape[idx.ndim:], src.dtype)
    np.add.at(out, idx.reshape(-1), src.reshape((-1,) + src.shape[idx.ndim:]))
    return out


# *** lowerings: numba kernel bodies and CUDA source, one thread per element on the GPU ***

def _by_row(be, name: str, t: str, i: str, rows_of: str, body: str) -> tuple[str, str]:
    """A CUDA kernel over the rows of `rows_of` [n, width] picked by idx [n], writing `out`.
    An id outside [-rows, rows) (numpy's table[idx] refuses it) touches no row: it sets `bad`,
    the backend's fault flag, which the backend reads with the results (`fault_flag`)."""
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long width, long long rows,\n'
        f"    const {be.ctype(t)}* __restrict__ {rows_of}, const {be.ctype(i)}* __restrict__ idx,\n"
        f"    {be.ctype(t)}* __restrict__ out, long long* __restrict__ bad) {{\n" + GRID_LOOP
        + "    long long r = (long long)idx[e / width];\n"
          "    if (r < -rows || r >= rows) { *bad = 1; continue; }\n"
          "    if (r < 0) r += rows;\n" + body + "  }\n}\n")


def index_error(node, err: IndexError) -> NNError:
    """The located error of an INDEX op whose lowering or numpy semantics met an index outside
    its table at run time: ids the model computes (inputs are checked before the call)."""
    text, op = str(err), node.attrs.get("of") or node.op
    if node.op == "check_ids":
        skip = node.attrs.get("skip")
        hint = ("the labels are computed in the model; keep them within the classes "
                f"(0 to {node.attrs['depth'] - 1})" + (
                    f" or at {skip} (ignore_index) for a row to leave out" if skip is not None
                    else ", or mark the rows to leave out with ignore_index (PyTorch's -100)"))
    else:
        hint = ("the ids are computed in the model; keep them within the table's rows "
                "(0 to rows - 1), e.g. with minimum/maximum or a smaller offset")
    return NNError(text if text.startswith(op) else f"{op}: {text}", node.span, hint)


def _take(table, idx, out):
    rows = table.shape[0]
    if idx.size:   # NOTE: two passes over the ids, a small cost next to the rows they copy
        lo, hi = idx.min(), idx.max()
        if lo < -rows or hi >= rows:
            raise IndexError(f"index {lo if lo < -rows else hi} is out of bounds for axis 0 "
                             f"with size {rows}")
    np.take(table, idx, axis=0, out=out, mode="wrap")


def _gather_numba(be, a, xs, out):
    # NOTE: mode="wrap" maps -1 to the last row like numpy indexing and, unlike "raise",
    # writes straight into `out` without a temporary; `_take` refuses what numpy's table[idx]
    # refuses, which "wrap" would have read silently from another row
    return _take, (xs[0], xs[1], out)


def gather_cuda_source(be, t: str, i: str) -> tuple[str, str]:
    """out[r, :] = table[idx[r], :], a negative id counting from the end (numpy indexing)."""
    # NOTE: it wrapped every id into the table (take(mode="wrap")): 5 into 3 rows read row 2
    # silently, where numba and the reference raise the located error
    return _by_row(be, f"nn_gather_{t}_{i}", t, i, "table",
                   "    out[e] = table[r * width + e % width];\n")


def _gather_cuda(be, a, xs, out):
    table, idx = xs
    total = out.size
    width = total // max(idx.size, 1)
    k = be.library_kernel(*gather_cuda_source(be, str(table.dtype), str(idx.dtype)))
    return be.launch(k, total, (np.int64(total), np.int64(width), np.int64(table.shape[0]),
                                table, idx, out, be.fault_flag(table.shape[0])))


def scatter_add_kernel(src, idx, out):
    # NOTE: serial on purpose: repeated indices would race under prange
    out[:] = 0
    rows = out.shape[0]
    for i in range(idx.shape[0]):
        r = idx[i] + rows if idx[i] < 0 else idx[i]
        if r < 0 or r >= rows:  # NOTE: numba does not bounds-check; this write would corrupt
            raise IndexError("scatter_add: index out of range")
        for j in range(src.shape[1]):
            out[r, j] += src[i, j]


def _scatter_add_numba(be, a, xs, out):
    src, idx = xs
    n = idx.size
    src2 = np.reshape(src, (n, -1), copy=False) if n else src.reshape(0, -1)
    out2 = np.reshape(out, (out.shape[0], -1), copy=False)
    return be.specialize(be.jit(scatter_add_kernel), (src2, np.reshape(idx, -1), out2))


def scatter_add_cuda_source(be, t: str, i: str) -> tuple[str, str]:
    """out[idx[r], :] += src[r, :] for every r, after `out` is zeroed (atomics: rows repeat)."""
    # NOTE: it checked no id: one past the rows added into memory past `out`
    return _by_row(be, f"nn_scatter_add_{t}_{i}", t, i, "src",
                   "    atomicAdd(out + r * width + e % width, src[e]);\n")


def _zero_then(out, fn, args):
    out.fill(0)
    fn(*args)


def _scatter_add_cuda(be, a, xs, out):
    src, idx = xs
    total = src.size
    width = total // max(idx.size, 1)
    k = be.library_kernel(*scatter_add_cuda_source(be, str(src.dtype), str(idx.dtype)))
    fn, args = be.launch(k, total, (np.int64(total), np.int64(width), np.int64(out.shape[0]),
                                    src, idx, out, be.fault_flag(out.shape[0])))
    return _zero_then, (out, fn, args)


def one_hot_kernel(idx, out):
    out[:] = 0
    depth = out.shape[1]
    for i in range(idx.shape[0]):
        if 0 <= idx[i] < depth:
            out[i, idx[i]] = 1


def _one_hot_numba(be, a, xs, out):
    out2 = np.reshape(out, (-1, a["depth"]), copy=False)
    return be.specialize(be.jit(one_hot_kernel), (np.reshape(xs[0], -1), out2))


def one_hot_cuda_source(be, t: str, i: str) -> tuple[str, str]:
    """out[r, d] = (idx[r] == d): an index outside [0, depth) gives a row of zeros."""
    name = f"nn_one_hot_{t}_{i}"
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long depth,\n'
        f"    const {be.ctype(i)}* __restrict__ idx, {be.ctype(t)}* __restrict__ out) {{\n"
        + GRID_LOOP +
        f"    out[e] = ({be.ctype(t)})((long long)idx[e / depth] == e % depth);\n  }}\n}}\n")


def _one_hot_cuda(be, a, xs, out):
    k = be.library_kernel(*one_hot_cuda_source(be, str(out.dtype), str(xs[0].dtype)))
    return be.launch(k, out.size, (np.int64(out.size), np.int64(a["depth"]), xs[0], out))


# *** check_ids: class ids computed in the model, checked where a loss or metric reads them ***
# NOTE: a fed label is checked before the call (`runtime/indices.py`, naming the input); one the
# model computes (argmax, arithmetic on ids, a slice of the input ids as next-token targets)
# was a row of zeros in one_hot, a sample silently scored as no class, where PyTorch's
# cross_entropy raises "Target 7 is out of bounds". The check is a copy and two reductions
# over the ids, nothing next to the logits they index.

def _bad_id(ids, depth: int, skip):
    """The first id outside [0, depth) that is not `skip` (the lowest negative one, else the
    highest), or None."""
    if not ids.size:
        return None
    lo, hi = ids.min(), ids.max()
    if lo >= 0 and hi < depth:
        return None
    out = (ids < 0) | (ids >= depth)
    wrong = ids[out if skip is None else out & (ids != skip)]
    if not wrong.size:
        return None
    return int(wrong.min()) if wrong.min() < 0 else int(wrong.max())


def _ids_error(bad: int | None, depth: int, skip, of: str) -> IndexError:
    what = "an id" if bad is None else f"the id {bad}"
    also = "" if skip is None else f", or {skip} (ignore_index)"
    return IndexError(f"{of}: {what} is outside the {depth} classes it may take "
                      f"(0 to {depth - 1}{also})")


def _check_ids_impl(ids, *, depth, skip=None, of="check_ids"):
    bad = _bad_id(np.asarray(ids), depth, skip)
    if bad is not None:
        raise _ids_error(bad, depth, skip, of)
    return ids


def _check_ids_into(ids, out, depth, skip, of):
    bad = _bad_id(ids, depth, skip)
    if bad is not None:
        raise _ids_error(bad, depth, skip, of)
    np.copyto(out, ids)


def _check_ids_numba(be, a, xs, out):
    return _check_ids_into, (xs[0], out, a["depth"], a.get("skip"), a.get("of") or "check_ids")


def check_ids_cuda_source(be, i: str) -> tuple[str, str]:
    """out = idx, setting `bad` (the backend's fault flag) where an id is outside [0, depth)
    and not `skip` (depth itself when nothing is skipped)."""
    name = f"nn_check_ids_{i}"
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long depth, long long skip,\n'
        f"    const {be.ctype(i)}* __restrict__ idx, {be.ctype(i)}* __restrict__ out,\n"
        "    long long* __restrict__ bad) {\n" + GRID_LOOP +
        "    long long r = (long long)idx[e];\n"
        "    if ((r < 0 || r >= depth) && r != skip) *bad = 1;\n"
        "    out[e] = idx[e];\n  }\n}\n")


def _check_ids_cuda(be, a, xs, out):
    depth, skip = a["depth"], a.get("skip")
    k = be.library_kernel(*check_ids_cuda_source(be, str(out.dtype)))
    flag = be.fault_flag(depth, str(_ids_error(None, depth, skip, a.get("of") or "check_ids")))
    return be.launch(k, out.size, (np.int64(out.size), np.int64(depth),
                                   np.int64(depth if skip is None else skip), xs[0], out, flag))


def _check_ids_shape(ids: TensorType, *, depth, skip=None, of="check_ids") -> TensorType:
    _int_indices(ids, 0)
    need_positive("check_ids", "depth", depth)
    return ids


def _argmax_into(xp, x, axis, tmp, out):
    xp.argmax(x, axis=axis, out=tmp)
    if tmp is not out:
        xp.copyto(out, tmp, casting="unsafe")


def _argmax_numba(be, a, xs, out):
    tmp = np.empty(out.shape, np.intp)
    return _argmax_into, (np, xs[0], a["axis"], tmp, out)


def _argmax_cuda(be, a, xs, out):
    # NOTE: CuPy's argmax gives int64; a scratch made here keeps the step allocation-free
    xp = be.xp
    tmp = out if out.dtype == xp.int64 else xp.empty(out.shape, xp.int64)
    return _argmax_into, (xp, xs[0], a["axis"], tmp, out)


def _onnx_scatter_add(e, n, src, idx):
    zeros = e.op("Expand", e.const(0, n.dtype), e.shape(n.shape))
    where = e.op("Unsqueeze", e.cast(idx, e.in_types(n)[1].dtype, "int64"), e.ints([-1]))
    return e.op("ScatterND", zeros, where, src, reduction="add")


def _onnx_one_hot(e, n, idx):
    wide = e.cast(idx, e.in_types(n)[0].dtype, "int64")
    hits = e.op("Equal", e.op("Unsqueeze", wide, e.ints([-1])),
                e.ints(list(range(n.attrs["depth"]))))
    return e.cast(hits, "bool", n.dtype)


def _onnx_argmax(e, n, x):
    first = e.op("ArgMax", x, axis=n.attrs["axis"], keepdims=0)  # ties: the first, as numpy
    return e.cast(first, "int64", n.dtype)


# NOTE: torch.gather(x, dim, idx) picks one element per index along dim; nnlang's gather takes
# whole rows of axis 0 (torch's index_select(x, 0, idx), an embedding lookup)
_GATHER_ALONG = ("gather takes whole rows of axis 0 (table[idx]); to pick along axis 1 per "
                 "example as torch.gather(x, 1, idx), for x [batch, n, d] and idx [batch, k]: "
                 "matmul(one_hot(idx, depth = n), x) gives [batch, k, d]")
register("gather", "table: tensor, idx: tensor", _gather_shape,
         habits=dict.fromkeys(("dim", "axis"), _GATHER_ALONG),
         onnx=lambda e, n, table, idx: e.op("Gather", table, idx, axis=0),
         impl=lambda table, idx: table[idx],
         grad=lambda b, n, g: (b.scatter_add(g, n.inputs[1],
                                             rows=b.type(n.inputs[0]).shape[0]), None),
         lower={"numba": _gather_numba, "cuda": _gather_cuda},
         family="index", traits={INDEX}, doc="rows of table at integer indices: table[idx]",
         samples=(Sample(((7, 3), (2, 5)), domain="int:7", dtypes=(None, "int32")),))

register("scatter_add", "src: tensor, idx: tensor, rows: int", _scatter_shape,
         onnx=_onnx_scatter_add,
         impl=_scatter_impl,
         grad=lambda b, n, g: (b.gather(g, n.inputs[1]), None),
         lower={"numba": _scatter_add_numba, "cuda": _scatter_add_cuda},
         family="index", traits={INDEX},
         doc="zeros[rows, ...] with src rows added at idx (gather's adjoint; repeats add up)",
         samples=(Sample(((2, 5, 3), (2, 5)), {"rows": 7}, domain="int:7",
                         dtypes=(None, "int32")),))


def _one_hot_shape(idx: TensorType, *, depth, dtype, skip=None) -> TensorType:
    _int_indices(idx, 0)
    need_positive("one_hot", "depth", depth)
    return TensorType(idx.shape + (depth,), dtype)


register("one_hot", "idx: tensor, depth: int, dtype: dtype = 'float32', skip: int = none",
         _one_hot_shape,
         onnx=_onnx_one_hot,
         impl=lambda idx, *, depth, dtype, skip=None: (idx[..., None] == np.arange(depth))
         .astype(dtype),
         lower={"numba": _one_hot_numba, "cuda": _one_hot_cuda},
         family="index", traits={INDEX, NONDIFF},
         doc="1.0 at each index along a new last axis; an id outside [0, depth) computed in "
             "the model (negative ones included) gives a row of zeros, as tf.one_hot "
             "(torch's one_hot raises; ids fed as an input are checked when fed). skip = k: "
             "a fed id k is no error either (its row of zeros is meant: cross_entropy's "
             "ignore_index, PyTorch's -100)",
         samples=(Sample(((2, 3),), {"depth": 4}, domain="int:4", dtypes=("int32",),
                         grad=False),))


register("check_ids", "ids: tensor, depth: int, skip: int = none, of: str = \"check_ids\"",
         _check_ids_shape,
         onnx=lambda e, n, ids: e.op("Identity", ids),
         impl=_check_ids_impl,
         lower={"numba": _check_ids_numba, "cuda": _check_ids_cuda},
         family="index", traits={INDEX, NONDIFF},
         doc="the ids unchanged, or a run-time error at the call when one is outside [0, depth) "
             "and is not skip (cross_entropy's and accuracy's ignore_index); of: the op the "
             "error names. cross_entropy and accuracy check the class ids the model computes "
             "with it (PyTorch: \"Target 7 is out of bounds\"); ids fed as an input are "
             "checked when fed",
         samples=(Sample(((2, 3),), {"depth": 4}, domain="int:4", dtypes=("int32",),
                         grad=False),))


def _argmax_shape(x: TensorType, *, axis) -> TensorType:
    from nnlang.ops.registry import norm_axis
    ax = norm_axis(axis, x.rank)
    return TensorType(x.shape[:ax] + x.shape[ax + 1:], "int32")


register("argmax", "x: tensor, axis: int = -1", _argmax_shape, onnx=_onnx_argmax,
         impl=lambda x, *, axis: np.argmax(x, axis=axis).astype(np.int32),
         lower={"numba": _argmax_numba, "cuda": _argmax_cuda},
         family="index", traits={INDEX, NONDIFF}, doc="index of the largest value along an axis",
         samples=(Sample(((3, 5),), {"axis": -1}, grad=False),))
