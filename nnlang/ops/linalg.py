"""Matrix multiplication, batched over leading dims with numpy broadcasting; lowers to BLAS."""
from __future__ import annotations

import numpy as np

from nnlang.ir.dims import Sym, fmt_shape, numel
from nnlang.ops.lowering import both
from nnlang.ops.registry import (LINALG, Sample, ShapeError, TensorType, broadcast_shapes,
                                 is_float, onnx_op, promote, register)


def _matmul_shape(a: TensorType, b: TensorType) -> TensorType:
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"matmul needs rank >= 2 operands, got {a} and {b}",
                         arg=0 if a.rank < 2 else 1, hint="unsqueeze the vector first")
    if a.shape[-1] != b.shape[-2]:
        # NOTE: transposing is the fix only when it lines the sizes up; two layers of other
        # widths (128 into a [64, 10] weight) need one size changed
        if a.shape[-1] == b.shape[-1]:
            fix = "transpose the right side (its last two axes)"
        elif a.shape[-2] == b.shape[-2] and a.shape[-2] != Sym.of("batch"):
            # NOTE: not over the batch: transpose(h) @ g would sum over the examples
            fix = "transpose the left side (its last two axes)"
        else:
            fix = (f"make the sizes agree: a right side of [{a.shape[-1]}, {b.shape[-1]}] "
                   "would fit")
        raise ShapeError(f"inner dims differ: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)} "
                         f"({a.shape[-1]} vs {b.shape[-2]})", arg=1,
                         hint="the last dim of the left side must equal the second-to-last "
                              f"of the right; {fix}")
    if not (is_float(a.dtype) and is_float(b.dtype)):
        raise ShapeError(f"matmul needs float tensors, got {a} and {b}", arg=0)
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(batch + (a.shape[-2], b.shape[-1]), promote(a.dtype, b.dtype))


def _swap(b, x):
    r = b.type(x).rank
    return b.transpose(x, perm=list(range(r - 2)) + [r - 1, r - 2])


def _matmul_grad(b, n, g):
    x, w = n.inputs
    # NOTE: the second input's gradient is built (so scheduled) first: x is often read by
    # nothing else, so it is freed before the first input's gradient, of x's size, is written.
    # The CNN's second conv: its unfolded columns (14.5 MB at batch 64) no longer live beside
    # their gradient, the train step's buffers 54.0 -> 46.0 MB
    dw = b.matmul(_swap(b, x), g)
    return b.matmul(g, _swap(b, w)), dw


def _matmul_flops(ins, out):
    return 2 * numel(out.shape) * ins[0].shape[-1]


register("matmul", "a: tensor, b: tensor", _matmul_shape, impl=np.matmul, grad=_matmul_grad,
         onnx=onnx_op("MatMul"),
         lower=both(lambda be, a, xs, out: be.gemm(xs[0], xs[1], out)), flops=_matmul_flops,
         family="linalg", traits={LINALG}, doc="a @ b",
         samples=(Sample(((3, 4), (4, 5))), Sample(((2, 3, 4), (4, 5))),
                  Sample(((2, 3, 4), (2, 4, 2)))))
