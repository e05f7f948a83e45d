"""Counter-based randomness: `random_uniform(key)` hashes (key, salt, element index), so kernels
draw in parallel and a run is reproducible from its seed; the runtime advances `key` each step.
`offset` shifts the element index: a data-parallel rank's part of a tensor starts where it does
in the 1-process tensor, so its rows draw the numbers they draw in 1 process.
"""
from __future__ import annotations

import numpy as np

from nnlang.ops.lowering import GRID_LOOP, prange
from nnlang.ops.nn import const_like, need_float
from nnlang.ops.registry import (NONDIFF, RANDOM, Sample, ShapeError, TensorType, need_sizes,
                                 register)

MASK64 = (1 << 64) - 1


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _base(key, salt: int, offset: int) -> np.uint64:
    return np.uint64((int(key) * 0x100000001B3 + salt * 0x9E3779B1 + offset) & MASK64)


def _uniform_impl(key, *, shape, salt, offset=0):
    n = int(np.prod([int(d) for d in shape]))
    base = _base(key, salt, offset)
    with np.errstate(over="ignore"):
        bits = splitmix64(np.arange(n, dtype=np.uint64) + base)
    return ((bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(
        [int(d) for d in shape])


def _keyed_shape(op: str):
    """The shape rule of a draw from the runtime's key: float32 of the given shape."""
    def rule(key: TensorType, *, shape, salt, offset=0) -> TensorType:
        if key.shape != () or key.dtype != "int64":
            raise ShapeError(f"the key must be an int64 scalar, got {key}", arg=0)
        need_sizes(op, shape)
        return TensorType(tuple(shape), "float32")
    return rule


# *** lowerings: the same bits as `_uniform_impl` on every backend ***

def uniform_kernel(base, out):
    # splitmix64 of (base + index), the top 24 bits as a float in [0, 1)
    scale = np.float32(2.0 ** -24)
    for i in prange(out.shape[0]):
        z = base + np.uint64(i) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        out[i] = np.float32(z >> np.uint64(40)) * scale


def _uniform_from_key(fn, key, salt, offset, out):
    fn(_base(key, salt, offset), out)


def _uniform_numba(be, a, xs, out):
    fn, args = be.specialize(be.jit(uniform_kernel, parallel=True),
                             (np.uint64(0), np.reshape(out, -1)))
    return _uniform_from_key, (fn, xs[0], a["salt"], a.get("offset", 0), args[1])


def uniform_cuda_source(be) -> tuple[str, str]:
    """`uniform_kernel` in CUDA; the key stays on the device (no sync to read it)."""
    name = "nn_random_uniform"
    return name, (
        f'extern "C" __global__ void {name}(long long total, const long long* __restrict__ key,\n'
        "    unsigned long long salt_term, float* __restrict__ out) {\n"
        "  const unsigned long long base ="
        " (unsigned long long)key[0] * 0x100000001B3ULL + salt_term;\n" + GRID_LOOP +
        "    unsigned long long z = base + (unsigned long long)e + 0x9E3779B97F4A7C15ULL;\n"
        "    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;\n"
        "    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;\n"
        "    z = z ^ (z >> 31);\n"
        "    out[e] = (float)(z >> 40) * 5.9604644775390625e-08f;  // 2**-24\n  }\n}\n")


def _uniform_cuda(be, a, xs, out):
    k = be.library_kernel(*uniform_cuda_source(be))
    salt = np.uint64((a["salt"] * 0x9E3779B1 + a.get("offset", 0)) & MASK64)
    # NOTE: the key is read on the device (an int64 scalar, checked by the shape rule)
    return be.launch(k, out.size, (np.int64(out.size), xs[0], salt, out))


register("random_uniform", "key: tensor, shape: shape, salt: int = 0, offset: int = 0",
         _keyed_shape("random_uniform"),
         impl=_uniform_impl, lower={"numba": _uniform_numba, "cuda": _uniform_cuda},
         family="random", traits={RANDOM, NONDIFF},
         doc="uniform floats in [0, 1) from a counter-based hash of (key, salt, offset + index); "
             "internal (the key is the runtime's per step): a model writes random_uniform_like")


# *** random_normal: standard normal draws, Box-Muller of two counters per element ***
# Element j (= offset + index) hashes the counters 2j and 2j + 1 after (key, salt), so a rank's
# offset shifts a normal draw exactly as it shifts a uniform one. u1 is in (0, 1] (log(0) never
# comes), u2 in [0, 1); the math runs in float64 and rounds once to float32 on every backend.

_TWO_PI = 6.283185307179586


def _normal_impl(key, *, shape, salt, offset=0):
    n = int(np.prod([int(d) for d in shape]))
    base = _base(key, salt, 0)
    with np.errstate(over="ignore"):
        c = (np.arange(n, dtype=np.uint64) + np.uint64(offset)) * np.uint64(2) + base
        h1, h2 = splitmix64(c), splitmix64(c + np.uint64(1))
    u1 = ((h1 >> np.uint64(40)).astype(np.float64) + 1.0) * 2.0 ** -24
    u2 = (h2 >> np.uint64(40)).astype(np.float64) * 2.0 ** -24
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)
    return z.astype(np.float32).reshape([int(d) for d in shape])


def normal_kernel(base, start, out):
    scale = 2.0 ** -24
    for i in prange(out.shape[0]):
        c = base + (start + np.uint64(i)) * np.uint64(2)
        z = c + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        w = c + np.uint64(1) + np.uint64(0x9E3779B97F4A7C15)
        w = (w ^ (w >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        w = (w ^ (w >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        w = w ^ (w >> np.uint64(31))
        u1 = (np.float64(z >> np.uint64(40)) + 1.0) * scale
        u2 = np.float64(w >> np.uint64(40)) * scale
        out[i] = np.float32(np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u2))


def _normal_from_key(fn, key, salt, offset, out):
    fn(_base(key, salt, 0), np.uint64(offset), out)


def _normal_numba(be, a, xs, out):
    fn, args = be.specialize(be.jit(normal_kernel, parallel=True),
                             (np.uint64(0), np.uint64(0), np.reshape(out, -1)))
    return _normal_from_key, (fn, xs[0], a["salt"], a.get("offset", 0), args[2])


def normal_cuda_source(be) -> tuple[str, str]:
    """`normal_kernel` in CUDA; the key stays on the device (no sync to read it)."""
    name = "nn_random_normal"
    mix = ("    {v} = ({v} ^ ({v} >> 30)) * 0xBF58476D1CE4E5B9ULL;\n"
           "    {v} = ({v} ^ ({v} >> 27)) * 0x94D049BB133111EBULL;\n"
           "    {v} = {v} ^ ({v} >> 31);\n")
    return name, (
        f'extern "C" __global__ void {name}(long long total, const long long* __restrict__ key,\n'
        "    unsigned long long salt_term, unsigned long long start,"
        " float* __restrict__ out) {\n"
        "  const unsigned long long base ="
        " (unsigned long long)key[0] * 0x100000001B3ULL + salt_term;\n" + GRID_LOOP +
        "    const unsigned long long c = base + (start + (unsigned long long)e) * 2ULL;\n"
        "    unsigned long long z = c + 0x9E3779B97F4A7C15ULL;\n" + mix.format(v="z") +
        "    unsigned long long w = c + 1ULL + 0x9E3779B97F4A7C15ULL;\n" + mix.format(v="w") +
        "    const double u1 = ((double)(z >> 40) + 1.0) * 5.9604644775390625e-08;  // 2**-24\n"
        "    const double u2 = (double)(w >> 40) * 5.9604644775390625e-08;\n"
        "    out[e] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));\n  }\n}\n")


def _normal_cuda(be, a, xs, out):
    k = be.library_kernel(*normal_cuda_source(be))
    salt = np.uint64((a["salt"] * 0x9E3779B1) & MASK64)
    return be.launch(k, out.size, (np.int64(out.size), xs[0], salt,
                                   np.uint64(a.get("offset", 0)), out))


register("random_normal", "key: tensor, shape: shape, salt: int = 0, offset: int = 0",
         _keyed_shape("random_normal"),
         impl=_normal_impl, lower={"numba": _normal_numba, "cuda": _normal_cuda},
         family="random", traits={RANDOM, NONDIFF},
         doc="standard normal floats (Box-Muller) from a counter-based hash of (key, salt, "
             "offset + index); internal, as random_uniform: a model writes random_normal_like")


# *** what a model writes: noise shaped like a tensor ***
# A user op cannot name the runtime's key, so it names a tensor whose shape (a symbolic batch
# included) the draw takes, as torch.randn_like / rand_like do.

def _like_shape(op):
    def rule(x, **attrs):
        need_float(op, x)
        spread = attrs.get("stddev", attrs.get("high", 1.0) - attrs.get("low", 0.0))
        if not spread >= 0:
            raise ShapeError(f"{op}: {'stddev' if 'stddev' in attrs else 'high - low'} must "
                             f"be >= 0, got {spread!r}", attr="stddev" if "stddev" in attrs
                             else "high")
        return x
    return rule


def _draw_like(b, x, prim, shift, scale, expected):
    """shift + scale * draw in training; its expected value, in x's shape and dtype, in
    evaluation (where dropout is the identity, these ops are their mean)."""
    t = b.type(x)
    if not b.training:
        return b.broadcast_to(const_like(b, expected, x), shape=list(t.shape))
    u = prim(b.rng_key(), shape=list(t.shape), salt=b.salt())
    if t.dtype != "float32":
        u = b.cast(u, dtype=t.dtype)
    return b.add(b.mul(u, const_like(b, scale, x)), const_like(b, shift, x))


register("random_normal_like", "x: tensor, mean: float = 0.0, stddev: float = 1.0",
         _like_shape("random_normal_like"),
         decompose=lambda b, x, *, mean, stddev: _draw_like(b, x, b.random_normal, mean, stddev,
                                                          mean),
         family="random",
         doc="training: normal noise of x's shape and dtype (mean + stddev * N(0, 1); only x's "
             "shape is read, no gradient reaches x), fresh every step, reproducible from the "
             "net's seed, each data-parallel rank drawing the rows it draws in 1 process; "
             "evaluation, predict and export: the mean itself, so a VAE's z = mu + "
             "exp(0.5 * logvar) * random_normal_like(mu) is mu there (torch.randn_like)",
         samples=(Sample(((4, 6),)), Sample(((2, 3, 4),), {"mean": 1.0, "stddev": 0.5})))

register("random_uniform_like", "x: tensor, low: float = 0.0, high: float = 1.0",
         _like_shape("random_uniform_like"),
         decompose=lambda b, x, *, low, high: _draw_like(b, x, b.random_uniform, low,
                                                         high - low, (low + high) / 2),
         family="random",
         doc="training: uniform noise in [low, high) of x's shape and dtype (only x's shape is "
             "read, no gradient reaches x), fresh every step, reproducible from the net's "
             "seed, per rank as random_normal_like; evaluation, predict and export: the "
             "midpoint (low + high) / 2 (torch.rand_like)",
         samples=(Sample(((4, 6),)), Sample(((2, 3, 4),), {"low": -1.0, "high": 3.0})))
