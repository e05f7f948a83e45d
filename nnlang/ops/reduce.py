"""Reductions over axes: sum and max. Mean, variance and softmax are compositions of these."""
from __future__ import annotations

import numpy as np

from nnlang.ops.registry import REDUCE, Sample, TensorType, norm_axes, register


def _reduced(x: TensorType, axes, keepdims: bool) -> tuple:
    ax = norm_axes(axes, x.rank)
    if keepdims:
        return tuple(1 if i in ax else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in ax)


def _reduce_shape(x: TensorType, *, axes, keepdims) -> TensorType:
    return TensorType(_reduced(x, axes, keepdims), x.dtype)


def _expand(b, n, v):
    """Brings a reduced value back to the input's shape (keepdims, then broadcast)."""
    x = b.type(n.inputs[0])
    kept = _reduced(x, n.attrs["axes"], True)
    return b.broadcast_to(b.reshape(v, shape=list(kept)), shape=list(x.shape))


def _sum_grad(b, n, g):
    return (_expand(b, n, g),)


def _max_grad(b, n, g):
    # NOTE: ties share the gradient equally (like torch.amax), which keeps the rule linear in g
    # and matches finite differences of the tie-broken function on average.
    x = n.inputs[0]
    mask = b.eq(x, _expand(b, n, n.id))
    count = b.reduce_sum(b.cast(mask, dtype=n.dtype), axes=n.attrs["axes"], keepdims=True)
    share = b.broadcast_to(b.div(b.reshape(g, shape=list(b.type(count).shape)), count),
                           shape=list(b.type(x).shape))
    return (b.where(mask, share, b.const(0.0, n.dtype)),)


_SAMPLES = (Sample(((3, 4),), {"axes": [1]}), Sample(((2, 3, 4),), {"axes": [0, 2]}),
            Sample(((2, 3, 4),), {"axes": None, "keepdims": True}),
            Sample(((2, 3, 4),), {"axes": [-1], "keepdims": True}))


def _np_reduce(fn):
    return lambda x, *, axes, keepdims: fn(
        x, axis=None if axes is None else tuple([axes] if isinstance(axes, int) else axes),
        keepdims=keepdims)


register("reduce_sum", "x: tensor, axes: ints = none, keepdims: bool = false", _reduce_shape,
         impl=_np_reduce(np.sum), grad=_sum_grad, samples=_SAMPLES, family="reduce",
         traits={REDUCE}, doc="sum over axes (all axes when none)")
register("reduce_max", "x: tensor, axes: ints = none, keepdims: bool = false", _reduce_shape,
         impl=_np_reduce(np.max), grad=_max_grad, samples=_SAMPLES, family="reduce",
         traits={REDUCE}, doc="max over axes (all axes when none); a tied maximum shares the "
             "gradient evenly, as torch.amax does")
