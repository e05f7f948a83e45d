"""Indexing primitives: row gather (embedding lookup) and its adjoint scatter-add, one-hot and
argmax (the last two carry no gradient).
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.dims import fmt_shape
from nnlang.ops.registry import (INDEX, INT_DTYPES, NONDIFF, Sample, ShapeError, TensorType,
                                 need_positive, register)


def _int_indices(idx: TensorType, arg: int) -> None:
    if idx.dtype not in INT_DTYPES:
        raise ShapeError(f"indices must be int32 or int64, got {idx}", arg=arg,
                         hint="declare the input as int32[...]")


def _gather_shape(table: TensorType, idx: TensorType) -> TensorType:
    _int_indices(idx, 1)
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


register("gather", "table: tensor, idx: tensor", _gather_shape,
         impl=lambda table, idx: table[idx],
         grad=lambda b, n, g: (b.scatter_add(g, n.inputs[1],
                                             rows=b.type(n.inputs[0]).shape[0]), None),
         family="index", traits={INDEX}, doc="rows of table at integer indices: table[idx]",
         samples=(Sample(((7, 3), (2, 5)), domain="int:7", dtypes=(None, "int32")),))

register("scatter_add", "src: tensor, idx: tensor, rows: int", _scatter_shape,
         impl=_scatter_impl,
         grad=lambda b, n, g: (b.gather(g, n.inputs[1]), None),
         family="index", traits={INDEX},
         doc="zeros[rows, ...] with src rows added at idx (gather's adjoint; repeats add up)",
         samples=(Sample(((2, 5, 3), (2, 5)), {"rows": 7}, domain="int:7",
                         dtypes=(None, "int32")),))


def _one_hot_shape(idx: TensorType, *, depth, dtype) -> TensorType:
    _int_indices(idx, 0)
    need_positive("one_hot", "depth", depth)
    return TensorType(idx.shape + (depth,), dtype)


register("one_hot", "idx: tensor, depth: int, dtype: dtype = 'float32'", _one_hot_shape,
         impl=lambda idx, *, depth, dtype: (idx[..., None] == np.arange(depth)).astype(dtype),
         family="index", traits={INDEX, NONDIFF}, doc="1.0 at each index along a new last axis",
         samples=(Sample(((2, 3),), {"depth": 4}, domain="int:4", dtypes=("int32",),
                         grad=False),))


def _argmax_shape(x: TensorType, *, axis) -> TensorType:
    from nnlang.ops.registry import norm_axis
    ax = norm_axis(axis, x.rank)
    return TensorType(x.shape[:ax] + x.shape[ax + 1:], "int32")


register("argmax", "x: tensor, axis: int = -1", _argmax_shape,
         impl=lambda x, *, axis: np.argmax(x, axis=axis).astype(np.int32),
         family="index", traits={INDEX, NONDIFF}, doc="index of the largest value along an axis",
         samples=(Sample(((3, 5),), {"axis": -1}, grad=False),))
