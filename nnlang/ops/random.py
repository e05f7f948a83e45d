"""Counter-based randomness: `random_uniform(key)` hashes (key, salt, element index), so kernels
draw in parallel and a run is reproducible from its seed; the runtime advances `key` each step.
"""
from __future__ import annotations

import numpy as np

from nnlang.ops.registry import NONDIFF, RANDOM, ShapeError, TensorType, register

MASK64 = (1 << 64) - 1


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform_impl(key, *, shape, salt):
    n = int(np.prod([int(d) for d in shape]))
    base = np.uint64((int(key) * 0x100000001B3 + salt * 0x9E3779B1) & MASK64)
    with np.errstate(over="ignore"):
        bits = splitmix64(np.arange(n, dtype=np.uint64) + base)
    return ((bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(
        [int(d) for d in shape])


def _uniform_shape(key: TensorType, *, shape, salt) -> TensorType:
    if key.shape != () or key.dtype != "int64":
        raise ShapeError(f"the key must be an int64 scalar, got {key}", arg=0)
    return TensorType(tuple(shape), "float32")


register("random_uniform", "key: tensor, shape: shape, salt: int = 0", _uniform_shape,
         impl=_uniform_impl, family="random", traits={RANDOM, NONDIFF},
         doc="uniform floats in [0, 1) from a counter-based hash of (key, salt, index)")
