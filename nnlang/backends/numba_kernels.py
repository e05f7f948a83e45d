"""Hand-written numba kernels for the index and random ops the numba backend cannot take from
numpy without allocating (scatter_add, one_hot, random_uniform).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def scatter_add(src, idx, out):
    # NOTE: serial on purpose: repeated indices would race under prange
    out[:] = 0
    rows = out.shape[0]
    for i in range(idx.shape[0]):
        r = idx[i] + rows if idx[i] < 0 else idx[i]
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
