"""What the library primitives' lowerings (`OpDef.lower`, keyed by backend target) share: the
pure-Python names their numba kernel bodies use and the CUDA grid-stride loop. A lowering is
`(backend, attrs, inputs, out) -> (function, args)`; it reaches its backend only through the
`Backend` protocol (`backends/base.py`), so this floor imports neither numba nor CuPy.
"""
from __future__ import annotations

# NOTE: a numba kernel body is plain Python; `Backend.jit` swaps these for numba's own
prange = range
uintp = int

# one thread per element: the loop every CUDA library kernel runs, over `total` elements
GRID_LOOP = ("  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;"
             " e += (long long)gridDim.x * blockDim.x) {\n")


def both(fn) -> dict:
    """One lowering for every target: `fn` uses only backend services (`gemm`, `xp`)."""
    return {"numba": fn, "cuda": fn}
