"""Hand-written numba kernels for the index and random ops the numba backend cannot take from
numpy without allocating (scatter_add, one_hot, random_uniform), the sliding-window ops
(unfold, fold, window_max and its gradient), and `tensor_at`, which multi-tensor kernels use.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _voidptr(typingctx, address):
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(address), codegen


@numba.njit(inline="always")
def tensor_at(address, n, dtype):
    """The `n` elements of `dtype` at `address` as a 1-d array: a multi-tensor kernel takes a
    table of addresses per argument, as the CUDA one takes pointer tables.

    NOTE: a tuple of arrays instead made numba's compile time superlinear in the tuple length
    (repeat 100 of a dense layer: 56 s) and fails at 1000; the caller keeps the arrays alive."""
    return numba.carray(_voidptr(address), n, dtype)


@numba.njit(cache=True)
def scatter_add(src, idx, out):
    # NOTE: serial on purpose: repeated indices would race under prange
    out[:] = 0
    rows = out.shape[0]
    for i in range(idx.shape[0]):
        r = idx[i] + rows if idx[i] < 0 else idx[i]
        if r < 0 or r >= rows:  # NOTE: numba does not bounds-check; this write would corrupt
            raise IndexError("scatter_add: index out of range")
        for j in range(src.shape[1]):
            out[r, j] += src[i, j]


@numba.njit(cache=True)
def one_hot(idx, out):
    out[:] = 0
    depth = out.shape[1]
    for i in range(idx.shape[0]):
        if 0 <= idx[i] < depth:
            out[i, idx[i]] = 1


@numba.njit(cache=True, parallel=True)
def random_uniform(base, out):
    # splitmix64 of (base + index), the top 24 bits as a float in [0, 1): ops/random.py
    scale = np.float32(2.0 ** -24)
    for i in numba.prange(out.shape[0]):
        z = base + np.uint64(i) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        out[i] = np.float32(z >> np.uint64(40)) * scale


# *** sliding windows (im2col / col2im) for 1-d and 2-d, channels last: images [B, H, W, C]
# and cols [B, OH, OW, KH, KW, C], with H = OH = KH = 1 for 1-d ***
# NOTE: one batch item per parallel iteration: fold's windows overlap only within an item, so
# items never race. Channels innermost make each tap a contiguous run of C values.

@numba.njit(cache=True, parallel=True)
def unfold2d(x, out, sh, sw, dh, dw, ph, pw, pad_value):
    n, h, w, c = x.shape
    oh, ow, kh, kw = out.shape[1], out.shape[2], out.shape[3], out.shape[4]
    fill = x.dtype.type(pad_value)
    src, dst = x.reshape(-1), out.reshape(-1)
    # NOTE: flat offsets, unsigned so numba emits no negative-index wraparound branch and each
    # tap's run of c values vectorizes (the CNN's unfolds alone: 1.06 -> 0.78 ms with one
    # channel, 0.43 -> 0.34 ms with 32; fold 0.49 -> 0.33 ms)
    for b in numba.prange(n):
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
                            dst[numba.uintp(o + q)] = src[numba.uintp(at + q)]
                        o += kw * c
                        continue
                    for j in range(kw):
                        ix = ix0 + j * dw
                        if 0 <= iy < h and 0 <= ix < w:
                            at = ((b * h + iy) * w + ix) * c
                            for ch in range(c):
                                dst[numba.uintp(o + ch)] = src[numba.uintp(at + ch)]
                        else:
                            for ch in range(c):
                                dst[numba.uintp(o + ch)] = fill
                        o += c


@numba.njit(cache=True, parallel=True)
def fold2d(cols, out, sh, sw, dh, dw, ph, pw):
    n, h, w, c = out.shape
    oh, ow, kh, kw = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
    src, dst = cols.reshape(-1), out.reshape(-1)
    for b in numba.prange(n):
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
                            dst[numba.uintp(at + q)] += src[numba.uintp(o + q)]
                        o += kw * c
                        continue
                    for j in range(kw):
                        ix = ix0 + j * dw
                        if 0 <= iy < h and 0 <= ix < w:
                            at = ((b * h + iy) * w + ix) * c
                            for ch in range(c):
                                dst[numba.uintp(at + ch)] += src[numba.uintp(o + ch)]
                        o += c


@numba.njit(cache=True, parallel=True)
def window_max2d(x, out, kh, kw, sh, sw, ph, pw):
    n, h, w, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for b in numba.prange(n):
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


@numba.njit(cache=True, parallel=True)
def window_max_grad2d(x, g, out, kh, kw, sh, sw, ph, pw):
    """Each window's g added into out (x's shape) at its first largest cell (numpy's argmax)."""
    n, h, w, c = x.shape
    oh, ow = g.shape[1], g.shape[2]
    cells = out.reshape((n, h * w, c))
    for b in numba.prange(n):
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
