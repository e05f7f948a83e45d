"""unfold/fold (im2col/col2im) as slice copies into preallocated arrays, one copy per kernel
tap; the GPU backend's lowering and the CPU backend's fallback for 3-d windows. Arrays go
through the array module `xp` (numpy or cupy). Layouts (channels last): images
[B, *spatial, C], cols [B, *out, *kernel, C]."""
from __future__ import annotations

from nnlang.ops.movement import window_taps


def _padded(xp, a, image_shape, dtype):
    p, spatial = a["pads"], image_shape[1:-1]
    shape = (image_shape[0], *(n + p[2 * i] + p[2 * i + 1] for i, n in enumerate(spatial)),
             image_shape[-1])
    inner = (slice(None),) + tuple(slice(p[2 * i], p[2 * i] + n) for i, n in enumerate(spatial))
    return xp.empty(shape, dtype), inner


def _taps(a, cols_shape):
    return list(window_taps(a["kernel"], a["stride"], a["dilation"],
                            cols_shape[1:1 + len(a["kernel"])]))


def unfold_call(xp, a: dict, x, out):
    """(function, args) filling out [B, *outs, *kernel, C] from x [B, *spatial, C]."""
    padded, inner = _padded(xp, a, x.shape, x.dtype)
    return _unfold, (x, out, padded, inner, a["pad_value"],
                     _taps(a, out.shape))


def fold_call(xp, a: dict, cols, out):
    """(function, args) summing cols [B, *outs, *kernel, C] back into out [B, *size, C]."""
    padded, inner = _padded(xp, a, out.shape, cols.dtype)
    return _fold, (xp, cols, out, padded, inner,
                   _taps(a, cols.shape))


def _unfold(x, out, padded, inner, pad_value, moves):
    padded.fill(pad_value)
    padded[inner] = x
    for tap, window in moves:
        out[tap] = padded[window]


def _fold(xp, cols, out, padded, crop, moves):
    padded.fill(0)
    for tap, window in moves:
        view = padded[window]
        xp.add(view, cols[tap], out=view)
    out[...] = padded[crop]
