"""The sliding-window primitives' lowerings (unfold, fold, window_max, window_max_grad; their
registry entries are in `movement.py`): numba kernel bodies and CUDA sources for 1-d and 2-d
windows, and slice copies on the array module (numpy or CuPy) for 3-d ones.

Layouts, channels last: images [B, *spatial, C], cols [B, *out, *kernel, C]; 1-d windows are
lifted to 2-d (`as_2d`, `ints_2d`), so the kernels see images [B, H, W, C] and cols
[B, OH, OW, KH, KW, C], with H = OH = KH = 1 for 1-d.
"""
from __future__ import annotations

import itertools

import numpy as np

from nnlang.ops.lowering import GRID_LOOP, prange, uintp


def window_taps(kernel, stride, dilation, outs):
    """(index of one kernel tap in cols, the padded-image index that tap reads) for each tap."""
    nd, every = len(kernel), slice(None)
    for ks in itertools.product(*(range(k) for k in kernel)):
        yield ((every,) * (nd + 1) + ks + (every,),
               (every,) + tuple(slice(k * d, k * d + s * (o - 1) + 1, s)
                                for k, d, s, o in zip(ks, dilation, stride, outs)) + (every,))


# *** 3-d windows (and any non-contiguous array): one slice copy per kernel tap ***

def _padded(xp, a, image_shape, dtype):
    p, spatial = a["pads"], image_shape[1:-1]
    shape = (image_shape[0], *(n + p[2 * i] + p[2 * i + 1] for i, n in enumerate(spatial)),
             image_shape[-1])
    inner = (slice(None),) + tuple(slice(p[2 * i], p[2 * i] + n) for i, n in enumerate(spatial))
    return xp.empty(shape, dtype), inner


def _tap_moves(a, cols_shape):
    return list(window_taps(a["kernel"], a["stride"], a["dilation"],
                            cols_shape[1:1 + len(a["kernel"])]))


def unfold_call(xp, a: dict, x, out):
    """(function, args) filling out [B, *outs, *kernel, C] from x [B, *spatial, C]."""
    padded, inner = _padded(xp, a, x.shape, x.dtype)
    return _unfold, (x, out, padded, inner, a["pad_value"], _tap_moves(a, out.shape))


def fold_call(xp, a: dict, cols, out):
    """(function, args) summing cols [B, *outs, *kernel, C] back into out [B, *size, C]."""
    padded, inner = _padded(xp, a, out.shape, cols.dtype)
    return _fold, (xp, cols, out, padded, inner, _tap_moves(a, cols.shape))


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

    # NOTE: padding never wins: in a window whose real cells are all -inf the padding ties
    # with them and argmax may choose it, which dropped the window's g; such a window's g
    # goes to its first real cell (the numba and CUDA kernels', PyTorch's). Which taps are
    # real depends on the shapes only: one unfold of ones, [1, *out, K, 1]
    ones = xp.ones((1, *x.shape[1:-1], 1), x.dtype)
    real_cols, real = _pool_cols(xp, a, ones.shape, (1, *g.shape[1:-1], 1), x.dtype)
    fill_real, args = unfold_call(xp, dict(window, pad_value=0.0), ones, real_cols)
    fill_real(*args)
    real = real != 0
    first_real = xp.equal(taps, xp.argmax(real, axis=-2)[..., None, :])

    # NOTE: scratch made here, so the step allocates nothing (a GPU step may be captured)
    first = xp.empty(rows.shape[:-2] + rows.shape[-1:], "int64")
    hits = xp.empty(rows.shape, bool)
    lost = xp.empty(first.shape, bool)
    moved = xp.empty(rows.shape, bool)

    def run():
        fill[0](*fill[1])
        xp.argmax(rows, axis=-2, out=first)
        xp.equal(taps, first[..., None, :], out=hits)
        xp.logical_and(hits, real, out=hits)
        xp.any(hits, axis=-2, out=lost)
        xp.logical_not(lost, out=lost)
        xp.logical_and(first_real, lost[..., None, :], out=moved)
        xp.logical_or(hits, moved, out=hits)
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


# *** 1-d and 2-d windows: numba kernel bodies (`Backend.jit`) ***
# NOTE: one batch item per parallel iteration: fold's windows overlap only within an item, so
# items never race. Channels innermost make each tap a contiguous run of C values.

def unfold2d_kernel(x, out, sh, sw, dh, dw, ph, pw, pad_value):
    n, h, w, c = x.shape
    oh, ow, kh, kw = out.shape[1], out.shape[2], out.shape[3], out.shape[4]
    fill = x.dtype.type(pad_value)
    src, dst = x.reshape(-1), out.reshape(-1)
    # NOTE: flat offsets, unsigned so numba emits no negative-index wraparound branch and each
    # tap's run of c values vectorizes (the CNN's unfolds alone: 1.06 -> 0.78 ms with one
    # channel, 0.43 -> 0.34 ms with 32; fold 0.49 -> 0.33 ms)
    for b in prange(n):
        o = b * oh * ow * kh * kw * c
        for y in range(oh):
            for z in range(ow):
                for i in range(kh):
                    iy = y * sh + i * dh - ph
                    ix0 = z * sw - pw
                    if dw == 1 and 0 <= iy < h and ix0 >= 0 and ix0 + kw <= w:
                        # NOTE: a row of taps inside the image is one run of kw * c values
                        # (the text CNN's unfold 0.75 -> 0.65 ms; LeNet's 1 channel: runs of 5)
                        at = ((b * h + iy) * w + ix0) * c
                        for q in range(kw * c):
                            dst[uintp(o + q)] = src[uintp(at + q)]
                        o += kw * c
                        continue
                    for j in range(kw):
                        ix = ix0 + j * dw
                        if 0 <= iy < h and 0 <= ix < w:
                            at = ((b * h + iy) * w + ix) * c
                            for ch in range(c):
                                dst[uintp(o + ch)] = src[uintp(at + ch)]
                        else:
                            for ch in range(c):
                                dst[uintp(o + ch)] = fill
                        o += c


def fold2d_kernel(cols, out, sh, sw, dh, dw, ph, pw):
    n, h, w, c = out.shape
    oh, ow, kh, kw = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
    src, dst = cols.reshape(-1), out.reshape(-1)
    for b in prange(n):
        dst[b * h * w * c:(b + 1) * h * w * c] = 0
        o = b * oh * ow * kh * kw * c
        for y in range(oh):
            for z in range(ow):
                for i in range(kh):
                    iy = y * sh + i * dh - ph
                    ix0 = z * sw - pw
                    if dw == 1 and 0 <= iy < h and ix0 >= 0 and ix0 + kw <= w:
                        at = ((b * h + iy) * w + ix0) * c  # NOTE: one run, as in unfold2d
                        for q in range(kw * c):
                            dst[uintp(at + q)] += src[uintp(o + q)]
                        o += kw * c
                        continue
                    for j in range(kw):
                        ix = ix0 + j * dw
                        if 0 <= iy < h and 0 <= ix < w:
                            at = ((b * h + iy) * w + ix) * c
                            for ch in range(c):
                                dst[uintp(at + ch)] += src[uintp(o + ch)]
                        o += c


def window_max2d_kernel(x, out, kh, kw, sh, sw, ph, pw):
    n, h, w, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for b in prange(n):
        for y in range(oh):
            for z in range(ow):
                out[b, y, z] = -np.inf
                for i in range(kh):
                    iy = y * sh + i - ph
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = z * sw + j - pw
                        if ix < 0 or ix >= w:
                            continue
                        for ch in range(c):
                            v, m = x[b, iy, ix, ch], out[b, y, z, ch]
                            # NOTE: a NaN wins and stays (v > NaN is false), as in numpy's max
                            out[b, y, z, ch] = v if (v > m or v != v) else m


def window_max_grad2d_kernel(x, g, out, kh, kw, sh, sw, ph, pw):
    """Each window's g added into out (x's shape) at its first largest cell (numpy's argmax)."""
    n, h, w, c = x.shape
    oh, ow = g.shape[1], g.shape[2]
    cells = out.reshape((n, h * w, c))
    for b in prange(n):
        best = np.empty(c, x.dtype)
        at = np.empty(c, np.int64)
        cells[b] = 0
        for y in range(oh):
            for z in range(ow):
                seen = False
                for i in range(kh):
                    iy = y * sh + i - ph
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = z * sw + j - pw
                        if ix < 0 or ix >= w:
                            continue
                        cell = iy * w + ix
                        if not seen:
                            seen = True
                            for ch in range(c):
                                best[ch], at[ch] = x[b, iy, ix, ch], cell
                            continue
                        for ch in range(c):
                            v, m = x[b, iy, ix, ch], best[ch]
                            take = v > m or (v != v and m == m)
                            best[ch] = v if take else m
                            at[ch] = cell if take else at[ch]
                if seen:
                    for ch in range(c):
                        cells[b, at[ch], ch] += g[b, y, z, ch]


# *** the same in CUDA: one thread per element ***

_WINDOW_PARAMS = ("long long total, int H, int W, int C, int OH, int OW, int KH, int KW,\n"
                  "    int sh, int sw, int dh, int dw, int ph, int pw")


def _unravel(axes: list[tuple[str, str]]) -> str:
    """Lines decoding the flat index `e` into the channel `c`, the named indices (innermost
    first, each with its size) and the batch item `b`."""
    lines = ["    long long r = e / C;", "    const int c = (int)(e % C);"]
    lines += [f"    const int {name} = (int)(r % {size}); r /= {size};"
              for name, size in axes[:-1]]
    name, size = axes[-1]
    lines += [f"    const int {name} = (int)(r % {size});", f"    const long long b = r / {size};"]
    return "".join(line + "\n" for line in lines)


def unfold_cuda_source(be, t: str) -> tuple[str, str]:
    """One thread per cols element: the image cell its tap reads, or the pad value."""
    name, ct = f"nn_unfold_{t}", be.ctype(t)
    return name, (
        f'extern "C" __global__ void {name}({_WINDOW_PARAMS}, {ct} pad,\n'
        f"    const {ct}* __restrict__ x, {ct}* __restrict__ out) {{\n" + GRID_LOOP +
        _unravel([("j", "KW"), ("i", "KH"), ("z", "OW"), ("y", "OH")]) +
        "    const int iy = y * sh + i * dh - ph, ix = z * sw + j * dw - pw;\n"
        "    out[e] = (iy >= 0 && iy < H && ix >= 0 && ix < W)\n"
        "        ? x[((b * H + iy) * W + ix) * C + c] : pad;\n  }\n}\n")


def fold_cuda_source(be, t: str) -> tuple[str, str]:
    """One thread per image element, summing every tap that reads it (a gather: no atomics,
    and the same order of additions on every run)."""
    name, ct = f"nn_fold_{t}", be.ctype(t)
    return name, (
        f'extern "C" __global__ void {name}({_WINDOW_PARAMS},\n'
        f"    const {ct}* __restrict__ cols, {ct}* __restrict__ out) {{\n" + GRID_LOOP +
        _unravel([("ix", "W"), ("iy", "H")]) +
        f"    {ct} acc = 0;\n"
        "    for (int i = 0; i < KH; ++i) {\n"
        "      const int ty = iy + ph - i * dh;\n"
        "      if (ty < 0 || ty % sh != 0 || ty / sh >= OH) continue;\n"
        "      for (int j = 0; j < KW; ++j) {\n"
        "        const int tx = ix + pw - j * dw;\n"
        "        if (tx < 0 || tx % sw != 0 || tx / sw >= OW) continue;\n"
        "        acc += cols[((((b * OH + ty / sh) * OW + tx / sw) * KH + i) * KW + j) * C + c];\n"
        "      }\n"
        "    }\n"
        "    out[e] = acc;\n  }\n}\n")


# *** max pooling on the same layouts: pooled [B, OH, OW, C] ***

def _taps(pad: str) -> str:
    """The head of a loop over the real cells (iy, ix) of pooled cell (y, z)'s window; the
    caller closes its two braces."""
    return (f"{pad}for (int i = 0; i < KH; ++i) {{\n"
            f"{pad}  const int iy = y * sh + i * dh - ph;\n"
            f"{pad}  if (iy < 0 || iy >= H) continue;\n"
            f"{pad}  for (int j = 0; j < KW; ++j) {{\n"
            f"{pad}    const int ix = z * sw + j * dw - pw;\n"
            f"{pad}    if (ix < 0 || ix >= W) continue;\n")


def window_max_cuda_source(be, t: str) -> tuple[str, str]:
    """One thread per pooled element: the largest cell of its window (padding never wins; a
    NaN does, and stays, as in numpy's max)."""
    name, ct = f"nn_window_max_{t}", be.ctype(t)
    return name, be.prelude + (
        f'extern "C" __global__ void {name}({_WINDOW_PARAMS},\n'
        f"    const {ct}* __restrict__ x, {ct}* __restrict__ out) {{\n" + GRID_LOOP +
        _unravel([("z", "OW"), ("y", "OH")]) +
        f"    {ct} m = -INFINITY;\n" + _taps("    ") +
        f"        const {ct} v = x[((b * H + iy) * W + ix) * C + c];\n"
        "        m = (v > m || v != v) ? v : m;\n"
        "      }\n    }\n    out[e] = m;\n  }\n}\n")


def window_max_grad_cuda_source(be, t: str) -> tuple[str, str]:
    """One thread per image element: the sum of g over the windows whose first largest cell
    (numpy's argmax over the real cells; the first NaN wins) it is. A gather, like fold: no
    atomics, and the windows are added in the order the numba kernel adds them."""
    name, ct = f"nn_window_max_grad_{t}", be.ctype(t)
    return name, (
        f'extern "C" __global__ void {name}({_WINDOW_PARAMS},\n'
        f"    const {ct}* __restrict__ x, const {ct}* __restrict__ g, {ct}* __restrict__ out) {{\n"
        + GRID_LOOP + _unravel([("cx", "W"), ("cy", "H")]) +
        f"    {ct} acc = 0;\n"
        "    for (int ti = KH - 1; ti >= 0; --ti) {  // NOTE: windows in row-major order\n"
        "      const int ty = cy + ph - ti * dh;\n"
        "      if (ty < 0 || ty % sh != 0 || ty / sh >= OH) continue;\n"
        "      const int y = ty / sh;\n"
        "      for (int tj = KW - 1; tj >= 0; --tj) {\n"
        "        const int tx = cx + pw - tj * dw;\n"
        "        if (tx < 0 || tx % sw != 0 || tx / sw >= OW) continue;\n"
        "        const int z = tx / sw;\n"
        f"        {ct} best = 0;\n"
        "        int at_y = -1, at_x = -1;\n" + _taps("        ") +
        f"            const {ct} v = x[((b * H + iy) * W + ix) * C + c];\n"
        "            if (at_y < 0 || v > best || (v != v && best == best)) {\n"
        "              best = v; at_y = iy; at_x = ix;\n"
        "            }\n"
        "          }\n        }\n"
        "        if (at_y == cy && at_x == cx) acc += g[((b * OH + y) * OW + z) * C + c];\n"
        "      }\n    }\n    out[e] = acc;\n  }\n}\n")



# *** the lowerings (`OpDef.lower` of the four ops) ***

def _numba(kernel, *attrs, tail=()):
    """A numba lowering: `kernel` on the arrays lifted to 2-d, then the named window ints."""
    def lower(be, a, xs, out):
        arrays = as_2d(a, *xs, out)
        if arrays is None:
            return _FALLBACK[kernel](be.xp, a, *xs, out)
        return be.specialize(be.jit(kernel, parallel=True),
                             arrays + ints_2d(a, *attrs) + tuple(f(a) for f in tail))
    return lower


def _cuda_call(be, source, a, image, window, total: int, *tail):
    """A 1-d or 2-d window kernel over `total` elements; `window`: (OH, OW, KH, KW)."""
    _, h, w, c = image.shape
    dims = (h, w, c, *window, *ints_2d(a, "stride", "dilation", "pads"))
    kernel = be.library_kernel(*source(be, str(image.dtype)))
    return be.launch(kernel, total, (np.int64(total), *(np.int32(d) for d in dims), *tail))


def _unfold_cuda(be, a, xs, out):
    arrays = as_2d(a, xs[0], out)
    if arrays is None:  # NOTE: 3-d windows: one slice copy per kernel tap
        return unfold_call(be.xp, a, xs[0], out)
    image, cols = arrays
    return _cuda_call(be, unfold_cuda_source, a, image, cols.shape[1:5], cols.size,
                      image.dtype.type(a["pad_value"]), image, cols)


def _fold_cuda(be, a, xs, out):
    arrays = as_2d(a, out, xs[0])
    if arrays is None:
        return fold_call(be.xp, a, xs[0], out)
    image, cols = arrays
    return _cuda_call(be, fold_cuda_source, a, image, cols.shape[1:5], image.size, cols, image)


def _pool_window(a, pooled) -> tuple:
    """(OH, OW, KH, KW) of a pooling window: its size is the op's `kernel`."""
    return (*pooled.shape[1:3], *ints_2d(a, "kernel"))


def _window_max_cuda(be, a, xs, out):
    arrays = as_2d(a, xs[0], out)
    if arrays is None:
        return window_max_call(be.xp, a, xs[0], out)
    image, pooled = arrays
    return _cuda_call(be, window_max_cuda_source, a, image, _pool_window(a, pooled),
                      pooled.size, image, pooled)


def _window_max_grad_cuda(be, a, xs, out):
    arrays = as_2d(a, xs[0], xs[1], out)
    if arrays is None:
        return window_max_grad_call(be.xp, a, xs[0], xs[1], out)
    image, g, grad = arrays
    return _cuda_call(be, window_max_grad_cuda_source, a, image, _pool_window(a, g),
                      grad.size, image, g, grad)


_FALLBACK = {unfold2d_kernel: unfold_call, fold2d_kernel: fold_call,
             window_max2d_kernel: window_max_call, window_max_grad2d_kernel: window_max_grad_call}

LOWER = {
    "unfold": {"numba": _numba(unfold2d_kernel, "stride", "dilation", "pads",
                               tail=(lambda a: float(a["pad_value"]),)),
               "cuda": _unfold_cuda},
    "fold": {"numba": _numba(fold2d_kernel, "stride", "dilation", "pads"), "cuda": _fold_cuda},
    "window_max": {"numba": _numba(window_max2d_kernel, "kernel", "stride", "pads"),
                   "cuda": _window_max_cuda},
    "window_max_grad": {"numba": _numba(window_max_grad2d_kernel, "kernel", "stride", "pads"),
                        "cuda": _window_max_grad_cuda},
}
