"""Counter-based randomness: `random_uniform(key)` hashes (key, salt, element index), so kernels
draw in parallel and a run is reproducible from its seed; the runtime advances `key` each step.
`offset` shifts the element index: a data-parallel rank's part of a tensor starts where it does
in the 1-process tensor, so its rows draw the numbers they draw in 1 process.
"""
from __future__ import annotations

import numpy as np

from nnlang.ops.lowering import GRID_LOOP, prange
from nnlang.ops.registry import NONDIFF, RANDOM, ShapeError, TensorType, need_sizes, register

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


def _uniform_shape(key: TensorType, *, shape, salt, offset=0) -> TensorType:
    if key.shape != () or key.dtype != "int64":
        raise ShapeError(f"the key must be an int64 scalar, got {key}", arg=0)
    need_sizes("random_uniform", shape)
    return TensorType(tuple(shape), "float32")


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
         _uniform_shape,
         impl=_uniform_impl, lower={"numba": _uniform_numba, "cuda": _uniform_cuda},
         family="random", traits={RANDOM, NONDIFF},
         doc="uniform floats in [0, 1) from a counter-based hash of (key, salt, offset + index)")
