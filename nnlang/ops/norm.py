"""Normalization and regularization layers: dropout, layer_norm and batch_norm, as compositions
of primitives. batch_norm's running statistics are state the training step overwrites, through
`Builder.update_state`, like the optimizer's slots.
"""
from __future__ import annotations

from nnlang.errors import NNError
from nnlang.ir.dims import Sym, fmt_shape, numel
from nnlang.ops.nn import axes_attr, const_like, mean_over, need_float, param_dtype
from nnlang.ops.registry import (ParamSpec, Sample, ShapeError, need_range, need_some_axes,
                                 norm_axes, register)


# *** dropout ***

def _dropout_shape(x, *, rate):
    need_float("dropout", x)
    need_range("dropout", "rate", rate, 0.0, 1.0, hi_open=True)
    return x


def _dropout(b, x, *, rate):
    if not b.training or rate == 0.0:
        return x
    u = b.random_uniform(b.rng_key(), shape=list(b.type(x).shape), salt=b.salt())
    keep = b.ge(u, b.const(rate, "float32"))
    # inverted dropout: scale at train time so evaluation is the identity
    return b.where(keep, b.mul(x, const_like(b, 1.0 / (1.0 - rate), x)), const_like(b, 0.0, x))


_DROPOUT_HABITS = {
    "noise_shape": "one mask per element here; a mask shared over axes (Keras' noise_shape, "
                   "SpatialDropout2D) is dropout of ones of the mask's shape, broadcast: "
                   "x * dropout(x[:, :, 0:1, 0:1] * 0 + 1, rate)",
}


register("dropout", "x: tensor, rate: float = 0.5", _dropout_shape, decompose=_dropout,
         family="norm", habits=_DROPOUT_HABITS,
         samples=(Sample(((4, 6),), {"rate": 0.5}), Sample(((2, 3, 4),))),
         doc="training: zeroes each element with probability rate and scales the rest by "
             "1/(1-rate) (inverted dropout); evaluation: the identity")


# *** normalization ***

def _norm_axes_of(x, axis):
    need_some_axes("axis", axis, "normalize over", "leave axis out for the last axis")
    ax = norm_axes(axes_attr(axis), x.rank)
    if any(isinstance(x.shape[a], Sym) for a in ax):
        raise ShapeError(f"layer_norm: normalized axes of {fmt_shape(x.shape)} must be "
                         "concrete (they size gamma and beta)", arg=0)
    return ax


def _layer_norm_params(x, *, axis, eps):
    shape = tuple(x.shape[a] for a in _norm_axes_of(x, axis))
    dt = param_dtype(x)
    return {"gamma": ParamSpec(shape, ("ones", {}), dtype=dt),
            "beta": ParamSpec(shape, ("zeros", {}), dtype=dt)}


def _layer_norm_shape(x, gamma=None, beta=None, *, axis, eps):
    need_float("layer_norm", x)
    need_range("layer_norm", "eps", eps, 0.0, 1.0)
    want = tuple(x.shape[a] for a in _norm_axes_of(x, axis))
    for i, p in ((1, gamma), (2, beta)):
        if p is not None and p.shape != want:
            raise ShapeError(f"layer_norm: parameter {fmt_shape(p.shape)} does not match the "
                             f"normalized dims {fmt_shape(want)}", arg=i)
    return x


def _affine(b, y, gamma, beta, shape):
    return b.add(b.mul(y, b.reshape(gamma, shape=shape)), b.reshape(beta, shape=shape))


def _layer_norm(b, x, gamma, beta, *, axis, eps):
    t = b.type(x)
    ax = list(_norm_axes_of(t, axis))
    d = b.sub(x, mean_over(b, x, ax, keepdims=True))
    var = mean_over(b, b.mul(d, d), ax, keepdims=True)
    y = b.div(d, b.sqrt(b.add(var, const_like(b, eps, x))))
    return _affine(b, y, gamma, beta, [t.shape[i] if i in ax else 1 for i in range(t.rank)])


_NO_AFFINE = ("gamma and beta are always learned; without them write it out: (x - mean(x, "
              "axis = -1, keepdims = true)) / sqrt(var(x, axis = -1, keepdims = true) + 1e-5)")
_LAYER_NORM_HABITS = dict.fromkeys(("elementwise_affine", "center", "scale", "bias"), _NO_AFFINE)


register("layer_norm", "x: tensor, axis: ints = -1, eps: float = 1e-5", _layer_norm_shape,
         decompose=_layer_norm, params=_layer_norm_params, family="norm",
         habits=_LAYER_NORM_HABITS,
         doc="(x - mean) / sqrt(var + eps) * gamma + beta, statistics over axis (the last by "
             "default) per example, with the biased variance. Params gamma (ones) and beta "
             "(zeros) over those dims. eps = 1e-5 is PyTorch's LayerNorm (Keras' "
             "LayerNormalization: epsilon = 1e-3).",
         samples=(Sample(((3, 8),)), Sample(((2, 3, 4),), {"axis": [1, 2]})))


def _batch_norm_params(x, *, momentum, eps):
    if x.rank < 2:
        raise ShapeError(f"batch_norm expects [batch, channels, ...] but got {x}", arg=0)
    c, dt = x.shape[1], param_dtype(x)
    return {"gamma": ParamSpec((c,), ("ones", {}), dtype=dt),
            "beta": ParamSpec((c,), ("zeros", {}), dtype=dt),
            "running_mean": ParamSpec((c,), ("zeros", {}), trainable=False, dtype=dt),
            "running_var": ParamSpec((c,), ("ones", {}), trainable=False, dtype=dt)}


def _batch_norm_shape(x, *params, momentum, eps):
    need_float("batch_norm", x)
    need_range("batch_norm", "momentum", momentum, 0.0, 1.0)
    need_range("batch_norm", "eps", eps, 0.0, 1.0)
    if x.rank < 2 or isinstance(x.shape[1], Sym):
        raise ShapeError(f"batch_norm expects [batch, channels, ...] with concrete channels, "
                         f"got {fmt_shape(x.shape)}", arg=0)
    for i, p in enumerate(params):
        if p is not None and p.shape != (x.shape[1],):
            raise ShapeError(f"batch_norm: parameter {fmt_shape(p.shape)} does not match "
                             f"{x.shape[1]} channels", arg=i + 1)
    return x


def _update_running(b, running_mean, running_var, mean, var, momentum, t, ax):
    """running = (1 - m) running + m batch, with the unbiased batch variance (as PyTorch)."""
    n = numel([t.shape[a] for a in ax])
    if isinstance(n, Sym):
        return  # NOTE: only graphs specialized to a batch size train; checks leave stats alone
    if n < 2:
        # NOTE: as torch's "Expected more than 1 value per channel when training": the batch
        # variance is 0, so the output would be beta whatever x is, and no gradient reaches x
        raise NNError(f"batch_norm in training needs more than one value per channel; "
                      f"{fmt_shape(t.shape)} has one", span=b.span,
                      hint="train with a batch of 2 or more (batch = 1 leaves nothing to "
                           "normalize over), or use layer_norm, which normalizes each example")
    m, c = const_like(b, momentum, running_mean), [t.shape[1]]
    keep = const_like(b, 1.0 - momentum, running_mean)
    unbiased = b.mul(b.reshape(var, shape=c), const_like(b, n / (n - 1), running_var))
    b.update_state(running_mean, b.add(b.mul(keep, b.state_now(running_mean)),
                                       b.mul(m, b.reshape(mean, shape=c))))
    b.update_state(running_var, b.add(b.mul(keep, b.state_now(running_var)),
                                      b.mul(m, unbiased)))


def _frozen(b, param) -> bool:
    node = b.g.node(param)
    return node.op == "param" and not node.attrs.get("trainable", True)


def _batch_norm(b, x, gamma, beta, running_mean, running_var, *, momentum, eps):
    t = b.type(x)
    shape = [1, t.shape[1]] + [1] * (t.rank - 2)
    # NOTE: a frozen batch_norm (`trainable = false`, or inside a frozen block) runs as in
    # evaluation and keeps its statistics, as Keras' does: a frozen backbone's statistics
    # drifting to the fine-tuning data changed what it computes, though its weights stayed
    if b.training and not _frozen(b, gamma):
        ax = [0] + list(range(2, t.rank))
        mean = mean_over(b, x, ax, keepdims=True)
        d = b.sub(x, mean)
        var = mean_over(b, b.mul(d, d), ax, keepdims=True)
        _update_running(b, running_mean, running_var, mean, var, momentum, t, ax)
    else:
        d = b.sub(x, b.reshape(running_mean, shape=shape))
        var = b.reshape(running_var, shape=shape)
    y = b.div(d, b.sqrt(b.add(var, const_like(b, eps, x))))
    return _affine(b, y, gamma, beta, shape)


_BATCH_NORM_HABITS = {
    "axis": "batch_norm normalizes axis 1 of [batch, channels, ...] (PyTorch's BatchNorm; on "
            "[batch, features] that is Keras' axis = -1 too); for channels-last images "
            "permute(x, [0, 3, 1, 2]) first",
    **dict.fromkeys(("center", "scale", "affine"),
                    "gamma and beta are always learned (PyTorch's affine = True)"),
    "track_running_stats": "training normalizes with the batch's statistics, evaluation with "
                           "the running ones; a frozen layer (trainable = false) uses the "
                           "running ones in training too",
}


register("batch_norm", "x: tensor, momentum: float = 0.1, eps: float = 1e-5", _batch_norm_shape,
         decompose=_batch_norm, params=_batch_norm_params, family="norm",
         habits=_BATCH_NORM_HABITS,
         doc="normalizes each channel (axis 1) of [batch, channels, ...]: training uses the "
             "batch's mean and biased variance, evaluation the running_mean / running_var "
             "(non-trainable). Params gamma (ones), beta (zeros), running_mean (zeros), "
             "running_var (ones); momentum and eps = 1e-5 are PyTorch's (Keras' "
             "BatchNormalization: momentum = 0.99, the share kept, is momentum = 0.01 here, "
             "and its epsilon is 1e-3): new = (1-m) old + m batch, and "
             "running_var takes the batch's unbiased (n - 1) variance, as PyTorch's (Keras "
             "and CS231n's batchnorm_forward take the biased one). Frozen "
             "(trainable = false, or in a frozen block) it normalizes with the running "
             "statistics in training too and never updates them, as Keras does. Called again "
             "with share = (a Siamese tower) it updates them at each call, in call order, as "
             "a PyTorch module called twice.",
         samples=(Sample(((4, 3),)), Sample(((2, 3, 4, 5),))))
