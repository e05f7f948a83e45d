"""Collective ops of data-parallel training: `allreduce_sum` (a library call; its backend runs
MPI or NCCL, see `backends/collective.py`), and `sync_gradients`, which splits a train step
around one allreduce of every gradient, as the update that follows it sees them.
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.graph import Builder
from nnlang.ops.lowering import both
from nnlang.ops.registry import Sample, TensorType, register


def _same(x: TensorType) -> TensorType:
    return x


register("allreduce_sum", "x: tensor", _same,
         impl=lambda x: x,  # NOTE: the sum over one process
         grad=lambda b, n, g: (b.allreduce_sum(g),),
         lower=both(lambda be, a, xs, out: be.allreduce(xs[0], out)),
         family="distributed",
         doc="x summed over the processes of a data-parallel run (`mpirun -n N nnlang train`; "
             "see docs/distributed.md); x itself in a single process",
         samples=(Sample(((3, 4),)),))


def sync_gradients(b: Builder, grads: dict, ranks: int) -> dict:
    """The gradients averaged over `ranks` processes: every one flattened into one buffer per
    dtype (the concat writes them in place where it can), ONE allreduce of each, and each
    gradient a view of its slice. The 1/ranks scale is a graph op, so it fuses into the
    update's kernels. NOTE: a float64 weight of a float32 net has a float64 gradient, which a
    single float32 buffer could neither hold nor concat with the others."""
    by_dtype: dict = {}
    for k, g in grads.items():
        by_dtype.setdefault(b.type(g).dtype, []).append(k)
    out = {}
    for dtype, names in by_dtype.items():
        flat = [b.reshape(grads[k], shape=[-1]) for k in names]
        sizes = [int(np.prod([int(d) for d in b.type(grads[k]).shape], dtype=np.int64))
                 for k in names]
        summed = b.allreduce_sum(b.concat(*flat, axis=0) if len(flat) > 1 else flat[0])
        scale = b.const(1.0 / ranks, dtype)
        start = 0
        for k, size in zip(names, sizes):
            part = b.slice(summed, axis=0, start=start, stop=start + size)
            out[k] = b.mul(b.reshape(part, shape=list(b.type(grads[k]).shape)), scale)
            start += size
    return {k: out[k] for k in grads}
