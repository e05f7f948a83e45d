"""unfold/fold (im2col/col2im) as slice copies into preallocated arrays, one copy per kernel
tap, and window_max (max pooling) and its gradient built on them: the backends' fallback for
3-d windows (and the GPU's lowering of pooling). Arrays go through the array module `xp`
(numpy or cupy). Layouts (channels last): images [B, *spatial, C], cols [B, *out, *kernel, C].
Both backends run 1-d and 2-d unfold/fold as kernels of their own, on arrays lifted to 2-d by
`as_2d` and `ints_2d`.
"""
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
    return _unfold, (x, out, padded, inner, a["pad_value"], _taps(a, out.shape))


def fold_call(xp, a: dict, cols, out):
    """(function, args) summing cols [B, *outs, *kernel, C] back into out [B, *size, C]."""
    padded, inner = _padded(xp, a, out.shape, cols.dtype)
    return _fold, (xp, cols, out, padded, inner, _taps(a, cols.shape))


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


def _pool_cols(xp, a, x_shape, out_shape, dtype):
    """A scratch cols array for a pooling window, and its [B, *out, K, C] view."""
    nd = len(a["kernel"])
    cols = xp.empty(tuple(out_shape[:1 + nd]) + tuple(a["kernel"]) + (x_shape[-1],), dtype)
    return cols, cols.reshape(tuple(out_shape[:1 + nd]) + (-1, x_shape[-1]))


def window_max_call(xp, a: dict, x, out):
    """(function, args) writing each window's largest value of x [B, *spatial, C] to out."""
    cols, rows = _pool_cols(xp, a, x.shape, out.shape, x.dtype)
    fill = unfold_call(xp, dict(a, dilation=[1] * len(a["kernel"]), pad_value=-float("inf")),
                       x, cols)

    def run():
        fill[0](*fill[1])
        xp.max(rows, axis=-2, out=out)
    return run, ()


def window_max_grad_call(xp, a: dict, x, g, out):
    """(function, args) adding each window's g at the window's first largest cell of x."""
    nd = len(a["kernel"])
    cols, rows = _pool_cols(xp, a, x.shape, g.shape, x.dtype)
    window = dict(a, dilation=[1] * nd)
    fill = unfold_call(xp, dict(window, pad_value=-float("inf")), x, cols)
    back = fold_call(xp, dict(window, size=list(x.shape[1:-1])), cols, out)
    taps = xp.arange(rows.shape[-2]).reshape((1,) * (rows.ndim - 2) + (-1, 1))

    # NOTE: scratch made here, so the step allocates nothing (a GPU step may be captured)
    first = xp.empty(rows.shape[:-2] + rows.shape[-1:], "int64")
    hits = xp.empty(rows.shape, bool)

    def run():
        fill[0](*fill[1])
        xp.argmax(rows, axis=-2, out=first)
        xp.equal(taps, first[..., None, :], out=hits)
        xp.multiply(hits, g[..., None, :], out=rows)
        back[0](*back[1])
    return run, ()


def as_2d(a: dict, *arrays):
    """The arrays of a 1-d window op as those of a 2-d one (images [B, L, C] as [B, 1, L, C],
    cols [B, O, K, C] as [B, 1, O, 1, K, C]), numpy's or CuPy's; None for 3-d windows or
    arrays that are not contiguous, which take the slice-copy lowering."""
    nd = len(a["kernel"])
    if nd not in (1, 2) or not all(x.flags.c_contiguous for x in arrays):
        return None
    if nd == 2:
        return arrays
    return tuple(x.reshape((x.shape[0], 1, *x.shape[1:]) if x.ndim == 3 else
                           (x.shape[0], 1, x.shape[1], 1, *x.shape[2:])) for x in arrays)


def ints_2d(a: dict, *names) -> tuple:
    """The named window attributes as 2 ints each (pads: the leading ones), 1-d lifted."""
    out = []
    for name in names:
        v = [int(p) for p in a.get(name, [1] * len(a["kernel"]))]
        v = v[0::2] if name == "pads" else v
        out += ([0 if name == "pads" else 1] if len(v) == 1 else []) + v
    return tuple(out)
