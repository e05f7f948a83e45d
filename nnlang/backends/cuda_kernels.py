"""Hand-written CUDA for the library ops the CuPy backend does not take from CuPy (gather,
scatter_add, one_hot, random_uniform, concat, unfold, fold, window_max and its gradient), as
source text: compiled by `cupy_backend.py` through NVRTC, and run on the CPU by the host
harness in `tests/gpu/test_host_harness.py`.

Each kernel is one thread per element in a grid-stride loop; its C types are parameters.
"""
from __future__ import annotations

from nnlang.codegen.render_cuda import CTYPES, PRELUDE

_LOOP = ("  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;"
         " e += (long long)gridDim.x * blockDim.x) {\n")


def _by_row(name: str, t: str, i: str, rows_of: str, body: str) -> tuple[str, str]:
    """A kernel over the rows of `rows_of` [n, width] picked by idx [n], writing `out`."""
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long width, long long rows,\n'
        f"    const {CTYPES[t]}* __restrict__ {rows_of}, const {CTYPES[i]}* __restrict__ idx,\n"
        f"    {CTYPES[t]}* __restrict__ out) {{\n" + _LOOP + body + "  }\n}\n")


def gather(t: str, i: str) -> tuple[str, str]:
    """out[r, :] = table[idx[r] wrapped into [0, rows), :] (numpy `take(mode="wrap")`)."""
    return _by_row(f"nn_gather_{t}_{i}", t, i, "table",
                   "    long long r = (long long)idx[e / width] % rows;\n"
                   "    if (r < 0) r += rows;\n"
                   "    out[e] = table[r * width + e % width];\n")


def scatter_add(t: str, i: str) -> tuple[str, str]:
    """out[idx[r], :] += src[r, :] for every r, after `out` is zeroed (atomics: rows repeat)."""
    return _by_row(f"nn_scatter_add_{t}_{i}", t, i, "src",
                   "    long long r = (long long)idx[e / width];\n"
                   "    if (r < 0) r += rows;\n"
                   "    atomicAdd(out + r * width + e % width, src[e]);\n")


def one_hot(t: str, i: str) -> tuple[str, str]:
    """out[r, d] = (idx[r] == d): an index outside [0, depth) gives a row of zeros."""
    name = f"nn_one_hot_{t}_{i}"
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long depth,\n'
        f"    const {CTYPES[i]}* __restrict__ idx, {CTYPES[t]}* __restrict__ out) {{\n" + _LOOP +
        f"    out[e] = ({CTYPES[t]})((long long)idx[e / depth] == e % depth);\n  }}\n}}\n")


def random_uniform() -> tuple[str, str]:
    """splitmix64 of (base + index), the top 24 bits as a float32 in [0, 1): bit for bit what
    `nnlang/ops/random.py` computes. The key stays on the device (no sync to read it)."""
    name = "nn_random_uniform"
    return name, (
        f'extern "C" __global__ void {name}(long long total, const long long* __restrict__ key,\n'
        "    unsigned long long salt_term, float* __restrict__ out) {\n"
        "  const unsigned long long base ="
        " (unsigned long long)key[0] * 0x100000001B3ULL + salt_term;\n" + _LOOP +
        "    unsigned long long z = base + (unsigned long long)e + 0x9E3779B97F4A7C15ULL;\n"
        "    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;\n"
        "    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;\n"
        "    z = z ^ (z >> 31);\n"
        "    out[e] = (float)(z >> 40) * 5.9604644775390625e-08f;  // 2**-24\n  }\n}\n")


def concat(t: str) -> tuple[str, str]:
    """out [outer, row] from n contiguous pieces [outer, starts[k+1] - starts[k]] side by side
    (a concat along any axis, flattened so): one launch over a table of the pieces' pointers
    that the backend uploads once. Each thread finds its piece by a binary search of `starts`
    (the last piece starting at or before its column, which skips empty pieces)."""
    name, ct = f"nn_concat_{t}", CTYPES[t]
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long row, int n,\n'
        f"    const long long* __restrict__ starts, const {ct}* const* __restrict__ parts,\n"
        f"    {ct}* __restrict__ out) {{\n" + _LOOP +
        "    const long long o = e / row, c = e % row;\n"
        "    int lo = 0, hi = n - 1;\n"
        "    while (lo < hi) {\n"
        "      const int mid = (lo + hi + 1) / 2;\n"
        "      if (starts[mid] <= c) lo = mid; else hi = mid - 1;\n"
        "    }\n"
        "    out[e] = parts[lo][o * (starts[lo + 1] - starts[lo]) + c - starts[lo]];\n  }\n}\n")


# *** sliding windows (im2col / col2im), 2-d channels last: images [B, H, W, C], cols
# [B, OH, OW, KH, KW, C]; 1-d windows come lifted to 2-d (`windows.as_2d`) ***

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


def unfold(t: str) -> tuple[str, str]:
    """One thread per cols element: the image cell its tap reads, or the pad value."""
    name, ct = f"nn_unfold_{t}", CTYPES[t]
    return name, (
        f'extern "C" __global__ void {name}({_WINDOW_PARAMS}, {ct} pad,\n'
        f"    const {ct}* __restrict__ x, {ct}* __restrict__ out) {{\n" + _LOOP +
        _unravel([("j", "KW"), ("i", "KH"), ("z", "OW"), ("y", "OH")]) +
        "    const int iy = y * sh + i * dh - ph, ix = z * sw + j * dw - pw;\n"
        "    out[e] = (iy >= 0 && iy < H && ix >= 0 && ix < W)\n"
        "        ? x[((b * H + iy) * W + ix) * C + c] : pad;\n  }\n}\n")


def fold(t: str) -> tuple[str, str]:
    """One thread per image element, summing every tap that reads it (a gather: no atomics,
    and the same order of additions on every run)."""
    name, ct = f"nn_fold_{t}", CTYPES[t]
    return name, (
        f'extern "C" __global__ void {name}({_WINDOW_PARAMS},\n'
        f"    const {ct}* __restrict__ cols, {ct}* __restrict__ out) {{\n" + _LOOP +
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


def window_max(t: str) -> tuple[str, str]:
    """One thread per pooled element: the largest cell of its window (padding never wins; a
    NaN does, and stays, as in numpy's max)."""
    name, ct = f"nn_window_max_{t}", CTYPES[t]
    return name, PRELUDE + (
        f'extern "C" __global__ void {name}({_WINDOW_PARAMS},\n'
        f"    const {ct}* __restrict__ x, {ct}* __restrict__ out) {{\n" + _LOOP +
        _unravel([("z", "OW"), ("y", "OH")]) +
        f"    {ct} m = -INFINITY;\n" + _taps("    ") +
        f"        const {ct} v = x[((b * H + iy) * W + ix) * C + c];\n"
        "        m = (v > m || v != v) ? v : m;\n"
        "      }\n    }\n    out[e] = m;\n  }\n}\n")


def window_max_grad(t: str) -> tuple[str, str]:
    """One thread per image element: the sum of g over the windows whose first largest cell
    (numpy's argmax over the real cells; the first NaN wins) it is. A gather, like fold: no
    atomics, and the windows are added in the order the numba kernel adds them."""
    name, ct = f"nn_window_max_grad_{t}", CTYPES[t]
    return name, (
        f'extern "C" __global__ void {name}({_WINDOW_PARAMS},\n'
        f"    const {ct}* __restrict__ x, const {ct}* __restrict__ g, {ct}* __restrict__ out) {{\n"
        + _LOOP + _unravel([("cx", "W"), ("cy", "H")]) +
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

