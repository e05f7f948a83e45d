"""unfold/fold (im2col/col2im) as slice copies into preallocated arrays, one copy per kernel
tap; shared by the CPU and GPU backends through the array module `xp` (numpy or cupy)."""
from __future__ import annotations

import itertools


def _windows(a, outs):
    """(kernel tap index, the input slices that tap reads) for every tap of the window."""
    for ks in itertools.product(*(range(k) for k in a["kernel"])):
        yield ks, tuple(slice(k * d, k * d + s * (o - 1) + 1, s)
                        for k, d, s, o in zip(ks, a["dilation"], a["stride"], outs))


def _padded_shape(a, lead, spatial):
    p = a["pads"]
    return lead + tuple(n + p[2 * i] + p[2 * i + 1] for i, n in enumerate(spatial))


def _inner(a, spatial):
    p = a["pads"]
    return (slice(None),) * 2 + tuple(slice(p[2 * i], p[2 * i] + n)
                                      for i, n in enumerate(spatial))


def _moves(a, outs):
    every = (slice(None),) * 2
    return [(every + ks, every + sl) for ks, sl in _windows(a, outs)]


def unfold_call(xp, a: dict, x, out):
    """(function, args) filling out [B, C, *kernel, *outs] from x [B, C, *spatial]."""
    nd = len(a["kernel"])
    spatial = x.shape[2:]
    padded = xp.empty(_padded_shape(a, x.shape[:2], spatial), x.dtype)
    return _unfold, (x, out, padded, _inner(a, spatial), a["pad_value"],
                     _moves(a, out.shape[2 + nd:]))


def fold_call(xp, a: dict, cols, out):
    """(function, args) summing cols [B, C, *kernel, *outs] back into out [B, C, *size]."""
    nd = len(a["kernel"])
    size = tuple(a["size"])
    padded = xp.empty(_padded_shape(a, cols.shape[:2], size), cols.dtype)
    return _fold, (xp, cols, out, padded, _inner(a, size), _moves(a, cols.shape[2 + nd:]))


def _unfold(x, out, padded, inner, pad_value, moves):
    padded.fill(pad_value)
    padded[inner] = x
    for dst, src in moves:
        out[dst] = padded[src]


def _fold(xp, cols, out, padded, crop, moves):
    padded.fill(0)
    for src, dst in moves:
        view = padded[dst]
        xp.add(view, cols[src], out=view)
    out[...] = padded[crop]
