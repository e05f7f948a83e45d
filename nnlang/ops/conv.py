"""Convolution and pooling composites on channels-first tensors [batch, channels, *spatial],
lowered channels last: `unfold` (im2col, one row per output position) plus one GEMM for a
convolution, `window_max` or unfold + a sum for pooling.

Text models keep embeddings as [batch, len, dim]: pass `channels_last = true` (conv1d and the
pools take it) rather than writing permutes; it then needs no transposes at all.
"""
from __future__ import annotations

import math

import numpy as np

from nnlang.errors import did_you_mean
from nnlang.ir.dims import Sym, fmt_shape, is_concrete
from nnlang.ops.init import init_spec
from nnlang.ops.movement import window_out
from nnlang.ops.nn import const_like, mean_over, need_float, param_dtype
from nnlang.ops.registry import (ParamSpec, Sample, ShapeError, TensorType, need_positive,
                                 promote, register)
from nnlang.ops.signature import show_value

_LAYOUT = {1: "[batch, channels, length]", 2: "[batch, channels, height, width]"}


def looks_channels_last(shape, nd: int) -> bool:
    """A channels-first input whose last axis is few (1 gray, 3 RGB, 4 RGBA) and whose channel
    axis is many times more: Keras' [batch, height, width, channels] layout, most likely."""
    if len(shape) != nd + 2 or not all(isinstance(d, int) for d in shape[1:]):
        return False
    return shape[-1] <= 4 and shape[1] >= 4 * shape[-1] and shape[1] >= 8


def channels_last_hint(shape, nd: int, exact: bool = True) -> str:
    """How to fix a channels-last `shape`; `exact` when it is the declared image itself (a
    window that no longer fits deeper in the net shows a shape the input does not have)."""
    fix = (f"declare the input as {fmt_shape((shape[0], shape[-1], *shape[1:-1]))}" if exact
           else "declare the input channels-first")
    return (f"{fmt_shape(shape)} looks channels-last (Keras' layout); nnlang's convolutions and "
            f"pools take {_LAYOUT[nd]}: {fix}, or pass channels_last = true")


def _tuple(op, name, given, nd):
    v = [given] * nd if isinstance(given, int) else list(given)
    if len(v) != nd or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1
                               for i in v):
        raise ShapeError(f"{op}: {name} must be a positive int or {nd} of them, got "
                         f"{show_value(given)}", attr=name)
    return v


def _pads(op, padding, size, kernel, stride, dilation):
    """[lo0, hi0, lo1, hi1, ...] from an int, a per-dim list, explicit lo/hi pairs, or
    "valid" / "same" (TensorFlow's rule: out = ceil(in / stride), the odd pad goes high), or
    conv1d's "causal"."""
    nd = len(kernel)
    if padding == "valid":
        return [0] * (2 * nd)
    if padding == "causal" and op == "conv1d":
        # NOTE: Keras' Conv1D(padding="causal"): all (kernel - 1) * dilation zeros go before the
        # sequence, so output t sees inputs up to t only (a TCN's layers)
        return [(kernel[0] - 1) * dilation[0], 0]
    if padding == "same":
        pads = []
        for n, k, s, d in zip(size, kernel, stride, dilation):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        return pads
    pads = [padding] * nd if isinstance(padding, int) else padding
    # NOTE: true is no pad width, though Python counts it as the int 1
    if isinstance(pads, (list, tuple)) and all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pads):
        if len(pads) == nd:
            return [p for p in pads for _ in range(2)]
        if len(pads) == 2 * nd:
            return list(pads)
    # NOTE: one spatial dim takes "an int" or its list [n], so "1 ints" said nothing more
    per_dim = "" if nd == 1 else f", {nd} ints"
    words = ("same", "valid", "causal") if op == "conv1d" else ("same", "valid")
    hint = did_you_mean(padding, words) if isinstance(padding, str) else None
    if padding == "causal":   # NOTE: as Keras, which has it on Conv1D only
        hint = "\"causal\" is conv1d's only; here give the lo/hi pads of each dim"
    named = ", ".join(f'"{w}"' for w in words)
    raise ShapeError(f"{op}: padding must be {named}, an int{per_dim} or {2 * nd} lo/hi ints, "
                     f"got {show_value(padding)}", attr="padding", hint=hint)


def depthwise_hint(op: str = "conv2d") -> str:
    """How to write a depthwise convolution (Keras' DepthwiseConv2D): PyTorch's groups =
    channels, which has no op of its own."""
    return (f"a depthwise conv is a grouped one with groups = channels: {op}(x, channels * m, 3, "
            f"groups = channels) for depth multiplier m")


def _conv_habits(op: str) -> dict:
    """PyTorch's conv options that have no counterpart here, and what to write instead."""
    return {"padding_mode": "the padding is zeros (PyTorch's padding_mode = \"zeros\")",
            "depth_multiplier": depthwise_hint(op)}


def _need_groups(op, channels, filters, groups):
    """PyTorch's rule: both the input channels and the filters split into `groups` equal
    parts, each group's filters seeing its part of the channels only."""
    need_positive(op, "groups", groups)
    for what, n in (("input channels", channels), ("filters", filters)):
        if n % groups:
            fits = [g for g in range(1, min(channels, filters) + 1)
                    if channels % g == 0 and filters % g == 0]
            raise ShapeError(f"{op}: groups = {groups} does not divide the {n} {what}",
                             attr="groups",
                             hint=f"groups must divide both the {channels} input channels and "
                                  f"the {filters} filters: one of {fits}")


def _window(op, x: TensorType, nd, kernel, stride, padding, dilation, channels_last=False,
            kernel_name="kernel"):
    """Checks x's layout and returns (channels-first shape, kernel, stride, pads, dilation, out);
    `kernel_name` is the attribute that gave the kernel (pools call it size)."""
    if x.rank != nd + 2:
        layout = _LAYOUT[nd]
        if channels_last:
            layout = layout.replace("channels, ", "").replace("]", ", channels]")
        hint = "reshape first?" if x.rank < nd + 2 else "fewer dims expected; reshape first?"
        raise ShapeError(f"{op} expects {layout} but got {fmt_shape(x.shape)}: {hint}", arg=0)
    shape = (x.shape[0], x.shape[-1], *x.shape[1:-1]) if channels_last else x.shape
    spatial = shape[2:]
    if any(isinstance(d, Sym) for d in spatial):
        raise ShapeError(f"{op}: spatial dims of {fmt_shape(x.shape)} must be concrete", arg=0,
                         hint="a window slides over a concrete length: declare it as a number "
                              "(a maxlen the data pads to)")
    kernel = _tuple(op, kernel_name, kernel, nd)
    stride = _tuple(op, "stride", kernel if stride is None else stride, nd)
    dilation = _tuple(op, "dilation", dilation, nd)
    pads = _pads(op, padding, spatial, kernel, stride, dilation)
    out = []
    for i in range(nd):
        o = window_out(spatial[i], kernel[i], stride[i], pads[2 * i], pads[2 * i + 1],
                       dilation[i])
        if o <= 0:
            # NOTE: at the kernel (the note shows the input's shape), unless the input's layout
            # is what is wrong: the caret was under the input for a kernel too large
            swapped = not channels_last and looks_channels_last(x.shape, nd)
            undilated = window_out(spatial[i], kernel[i], stride[i], pads[2 * i],
                                   pads[2 * i + 1], 1) > 0
            raise ShapeError(f"{op}: window {kernel[i]} (dilation {dilation[i]}) does not fit "
                             f"spatial size {spatial[i]} of {fmt_shape(x.shape)} with padding "
                             f"{pads[2 * i]}+{pads[2 * i + 1]}", arg=0,
                             attr=None if swapped else "dilation" if undilated else kernel_name,
                             hint=(channels_last_hint(x.shape, nd, exact=False) if swapped
                                   else "use padding = \"same\" or a smaller "
                                   + ("dilation" if undilated else "kernel")))
        out.append(o)
    return shape, kernel, stride, pads, dilation, out


def _to_last(b, x, channels_last):
    """x in the channels-last layout the window ops work in."""
    r = b.type(x).rank
    return x if channels_last else b.transpose(x, perm=[0, *range(2, r), 1])


def _from_last(b, y, channels_last):
    """A channels-last result in the caller's layout."""
    r = b.type(y).rank
    return y if channels_last else b.transpose(y, perm=[0, r - 1, *range(1, r - 1)])


def _out_type(shape, c, out, dtype, channels_last):
    dims = (shape[0], *out, c) if channels_last else (shape[0], c, *out)
    return TensorType(tuple(dims), dtype)


# *** convolution ***

def _need_channels(op, x, shape, channels_last):
    """Concrete channels (the weight's rows). NOTE: checked before the weight is declared, so
    a symbolic length read as channels (an embedding's [batch, len, dim] without channels_last)
    says so rather than that a weight depends on the symbol."""
    if isinstance(shape[1], Sym):
        hint = None if channels_last or isinstance(x.shape[-1], Sym) else \
            (f"{op} reads channels first ([batch, channels, ...]); for [batch, len, channels] "
             "(an embedding's output) pass channels_last = true, and give the length as a "
             "number: a convolution slides over a concrete length")
        raise ShapeError(f"{op}: channels of {fmt_shape(x.shape)} must be concrete", arg=0,
                         hint=hint)


def _conv(nd):
    name = f"conv{nd}d"

    def params(x, *, filters, kernel, stride, padding, dilation, use_bias, init, bias_init,
               channels_last=False, groups=1):
        need_positive(name, "filters", filters)
        shape, k, *_ = _window(name, x, nd, kernel, stride, padding, dilation, channels_last)
        _need_channels(name, x, shape, channels_last)
        _need_groups(name, shape[1], filters, groups)
        dt = param_dtype(x)
        # NOTE: PyTorch's grouped weight [filters, channels / groups, *kernel], so its fans
        # (and a loaded state dict) are the same
        specs = {"weight": ParamSpec((filters, shape[1] // groups, *k), init_spec(init, "init"),
                                     dtype=dt)}
        if use_bias:
            specs["bias"] = ParamSpec((filters,), init_spec(bias_init, "bias_init"), dtype=dt)
        return specs

    def shape_rule(x, weight=None, bias=None, *, filters, kernel, stride, padding, dilation,
                   use_bias, init, bias_init, channels_last=False, groups=1):
        need_float(name, x)
        need_positive(name, "filters", filters)
        shape, k, s, pads, d, out = _window(name, x, nd, kernel, stride, padding, dilation,
                                            channels_last)
        _need_channels(name, x, shape, channels_last)
        _need_groups(name, shape[1], filters, groups)
        if weight is not None and weight.shape != (filters, shape[1] // groups, *k):
            per = "" if groups == 1 else f" in {groups} groups"
            raise ShapeError(f"{name}: weight {fmt_shape(weight.shape)} does not fit "
                             f"{shape[1]} input channels{per}, {filters} filters and kernel {k}",
                             arg=1)
        dt = x.dtype if weight is None else promote(x.dtype, weight.dtype)
        return _out_type(shape, filters, out, dt, channels_last)

    def decompose(b, x, weight, bias=None, *, filters, kernel, stride, padding, dilation,
                  channels_last=False, groups=1, **_):
        shape, k, s, pads, d, out = _window(name, b.type(x), nd, kernel, stride, padding,
                                            dilation, channels_last)
        kc = math.prod(k) * shape[1] // groups
        # NOTE: unfold gives one row per output position, so [B*L, K*C] @ [K*C, F] is a single
        # GEMM (a batched [F, C*K] @ [B, C*K, L] ran as B small ones); the weight
        # [F, C, *K] is reordered to match the rows' (*K, C) order
        cols = b.unfold(_to_last(b, x, channels_last), kernel=k, stride=s, pads=pads,
                        dilation=d, pad_value=0.0)
        w = b.transpose(weight, perm=[0, *range(2, nd + 2), 1])
        if groups == 1:
            rows = b.reshape(cols, shape=[-1, kc])
            y = b.matmul(rows, b.transpose(b.reshape(w, shape=[filters, kc]), perm=[1, 0]))
        else:
            # NOTE: a grouped conv is one GEMM per group, batched over the groups: the rows'
            # channels split into [G, C/G] (group-major, as PyTorch's), [G, B*L, K*C/G] @
            # [G, K*C/G, F/G], and the groups' filters side by side again
            cg, fg = shape[1] // groups, filters // groups
            rows = b.reshape(cols, shape=[-1, math.prod(k), groups, cg])
            rows = b.reshape(b.transpose(rows, perm=[2, 0, 1, 3]), shape=[groups, -1, kc])
            w = b.transpose(b.reshape(w, shape=[groups, fg, kc]), perm=[0, 2, 1])
            y = b.transpose(b.matmul(rows, w), perm=[1, 0, 2])
            y = b.reshape(y, shape=[-1, filters])
        if bias is not None:
            y = b.add(y, bias)
        return _from_last(b, b.reshape(y, shape=[shape[0], *out, filters]), channels_last)

    dims = "length" if nd == 1 else "height, width"
    register(name, "x: tensor, filters: int, kernel: ints, stride: ints = 1, padding: any = 0, "
             "dilation: ints = 1, use_bias: bool = true, init: init = \"glorot_uniform\", "
             "bias_init: init = \"zeros\", channels_last: bool = false, groups: int = 1",
             # NOTE: no `flops` rule: `nnlang check` counts the decomposition, the GEMM (2 *
             # channels * kernel per output) and the bias add, as a separate `+ bias` counts
             shape_rule, decompose=decompose, params=params, family="conv",
             habits=_conv_habits(name),
             doc=f"{nd}-D convolution (cross-correlation, like PyTorch) of [batch, channels, "
                 f"{dims}] with weight [filters, channels / groups, *kernel]. "
                 "kernel/stride/dilation: an int or one per dim; padding: an int, one per dim, "
                 "lo/hi pairs, \"valid\" or "
                 "\"same\" (TensorFlow rule, extra pad on the high side)"
                 + (" or \"causal\" (Keras' rule: (kernel - 1) * dilation zeros before the "
                    "sequence, none after)" if nd == 1 else "")
                 + ". groups = g: PyTorch's grouped conv (g divides channels and filters; "
                 "g = channels is depthwise; one GEMM per group, batched). channels_last = true "
                 "takes and returns channels on the last axis. Lowered as unfold + one GEMM. "
                 "Init (Keras): weight glorot_uniform (fans scaled by the kernel size), bias "
                 "zeros.",
             samples=_CONV_SAMPLES[nd])


_CONV_SAMPLES = {
    1: (Sample(((2, 3, 9),), {"filters": 4, "kernel": 3}),
        Sample(((2, 3, 10),), {"filters": 2, "kernel": 4, "stride": 2, "padding": "same"}),
        Sample(((2, 7, 3),), {"filters": 2, "kernel": 3, "padding": [1, 2], "dilation": 2,
                              "channels_last": True, "use_bias": False}),
        Sample(((2, 3, 9),), {"filters": 2, "kernel": 3, "dilation": 2, "padding": "causal"}),
        Sample(((2, 4, 7),), {"filters": 6, "kernel": 3, "groups": 2, "padding": 1})),
    2: (Sample(((2, 3, 6, 5),), {"filters": 4, "kernel": 3}),
        Sample(((1, 2, 7, 6),), {"filters": 3, "kernel": [3, 2], "stride": [2, 1],
                                 "padding": 1}),
        Sample(((2, 2, 5, 5),), {"filters": 2, "kernel": 2, "padding": "same",
                                 "dilation": [1, 2]}),
        Sample(((2, 3, 5, 4),), {"filters": 6, "kernel": [3, 2], "groups": 3, "stride": [1, 2]}),
        Sample(((1, 5, 4, 6),), {"filters": 4, "kernel": 2, "groups": 2, "channels_last": True,
                                 "use_bias": False})),
}
_conv(1)
_conv(2)


# *** pooling ***

def _pool(nd, kind):
    name = f"{kind}_pool{nd}d"

    def shape_rule(x, *, size, stride, padding, channels_last):
        shape, k, s, pads, d, out = _window(name, x, nd, size, stride, padding, 1, channels_last,
                                            "size")
        if any(p > k[i // 2] // 2 for i, p in enumerate(pads)):
            # NOTE: PyTorch's rule: a wider pad makes windows of padding alone (-inf for max)
            raise ShapeError(f"{name}: padding {pads} is more than half the window {k}",
                             hint="pad at most size // 2 on each side", attr="padding")
        need_float(name, x)   # NOTE: max pads with -inf, which no integer holds
        return _out_type(shape, shape[1], out, x.dtype, channels_last)

    def decompose(b, x, *, size, stride, padding, channels_last):
        shape, k, s, pads, d, out = _window(name, b.type(x), nd, size, stride, padding, 1,
                                            channels_last)
        x = _to_last(b, x, channels_last)
        axes = list(range(1 + nd, 1 + 2 * nd))   # the window axes of [B, *out, *kernel, C]
        if kind == "max":
            y = b.window_max(x, kernel=k, stride=s, pads=pads)
        else:
            cols = b.unfold(x, kernel=k, stride=s, pads=pads, dilation=d, pad_value=0.0)
            # NOTE: padding = "same" is Keras' spelling (PyTorch's pools have none), and Keras
            # averages over the window's real cells: the padded corners of a 3x3 window on
            # ones gave 4/9, not 1. Explicit pads count as zeros, as PyTorch's do.
            divisor = (b.const(_cells_in(shape[2:], k, s, pads, out)[..., None],
                               b.type(x).dtype) if _is_same(padding) and any(pads)
                       else const_like(b, float(math.prod(k)), x))
            y = b.div(b.reduce_sum(cols, axes=axes), divisor)
        return _from_last(b, y, channels_last)

    what = ("largest value (its gradient goes to the first largest cell, as in PyTorch, "
            "never to padding; a window holding a NaN gives NaN, its gradient going to the "
            "first NaN, where PyTorch picks the last)"
            if kind == "max" else
            "mean (padding counts as zeros in the divisor: count_include_pad like PyTorch; "
            "with padding = \"same\" the mean is over the window's cells inside x, as Keras' "
            "padding = \"same\" takes it)")
    register(name, "x: tensor, size: ints, stride: ints = none, padding: any = 0, "
             "channels_last: bool = false", shape_rule, decompose=decompose, family="conv",
             doc=f"{nd}-D {kind} pooling: the {what} of each window. stride defaults to size; "
                 "padding as for convolution.", habits=_POOL_HABITS,
             samples=_POOL_SAMPLES[nd])


def _is_same(padding) -> bool:
    return isinstance(padding, str) and padding.lower() == "same"


def _cells_in(spatial, kernel, stride, pads, out) -> np.ndarray:
    """How many cells of each output window lie inside x (not in the padding): [*out]."""
    count = np.ones(())
    for i, (n, k, st, o) in enumerate(zip(spatial, kernel, stride, out)):
        start = np.arange(o) * st - pads[2 * i]
        inside = np.minimum(start + k, n) - np.maximum(start, 0)
        count = np.multiply.outer(count, inside)
    return count


_POOL_HABITS = {
    "count_include_pad": "explicit padding counts as zeros in avg pooling's divisor "
                         "(PyTorch's count_include_pad = true); padding = \"same\" averages "
                         "the real cells only (count_include_pad = false)",
    # NOTE: it said padding = [0, 1], which in 2-D pads the second axis on both sides (one
    # int per axis) and gave [3, 4] where ceil_mode gives [4, 4]; the end's pad is stride - 1
    "ceil_mode": "the output length rounds down (ceil_mode = false); max pooling's ceil_mode = "
                 "true is each axis padded at its end by stride - 1, as lo/hi ints: "
                 "max_pool2d(x, 3, stride = 2, padding = [0, 1, 0, 1]) (1-D: [0, 1]; avg "
                 "pooling would count that pad in its divisor)",
    **dict.fromkeys(("dilation", "dilation_rate"), "pooling windows are dense (no dilation)"),
    "return_indices": "it returns the pooled values alone",
}
_POOL_SAMPLES = {
    1: (Sample(((2, 3, 8),), {"size": 2}),
        Sample(((2, 3, 7),), {"size": 3, "stride": 2, "padding": 1}),
        Sample(((2, 6, 3),), {"size": 2, "padding": "same", "stride": 1,
                              "channels_last": True})),
    2: (Sample(((2, 3, 6, 6),), {"size": 2}),
        Sample(((1, 2, 5, 7),), {"size": [3, 2], "stride": [2, 2], "padding": [1, 0]}),
        Sample(((1, 2, 5, 6),), {"size": 3, "stride": 2, "padding": "same"})),
}
for _nd in (1, 2):
    for _kind in ("max", "avg"):
        _pool(_nd, _kind)


def _global(kind):
    name = f"global_{kind}_pool"

    def shape_rule(x, *, channels_last):
        if x.rank < 3:
            raise ShapeError(f"{name} expects [batch, channels, *spatial] but got "
                             f"{fmt_shape(x.shape)}: it is already pooled?", arg=0)
        need_float(name, x)
        return TensorType((x.shape[0], x.shape[-1] if channels_last else x.shape[1]), x.dtype)

    def decompose(b, x, *, channels_last):
        t = b.type(x)
        axes = list(range(1, t.rank - 1)) if channels_last else list(range(2, t.rank))
        if kind == "avg":
            return mean_over(b, x, axes)
        if not is_concrete([t.shape[a] for a in axes]):
            # NOTE: a symbolic length (an export, which decomposes before binding) sizes no
            # window; the same maximum, and no gradient is taken of an unbound graph
            return b.reduce_max(x, axes=axes)
        # NOTE: one window over the whole extent, so a tied maximum's gradient goes to the
        # first largest cell as in max_pool1d/2d and PyTorch (reduce_max splits it evenly)
        spatial = [int(t.shape[a]) for a in axes]
        y = b.window_max(_to_last(b, x, channels_last), kernel=spatial, stride=spatial,
                         pads=[0] * (2 * len(spatial)))
        return b.reshape(y, shape=[t.shape[0], t.shape[-1] if channels_last else t.shape[1]])

    register(name, "x: tensor, channels_last: bool = false", shape_rule, decompose=decompose,
             family="conv",
             doc=f"{kind} over all spatial axes: [batch, channels, *spatial] -> [batch, channels]"
                 " (channels_last = true: [batch, *spatial, channels] -> [batch, channels])"
                 + ("; a tied maximum's gradient goes to its first cell, and a NaN's to "
                    "the first NaN, as in max_pool"
                    if kind == "max" else ""),
             samples=(Sample(((2, 3, 5),)), Sample(((2, 3, 4, 5),)),
                      Sample(((2, 6, 3),), {"channels_last": True})))


_global("max")
_global("avg")
