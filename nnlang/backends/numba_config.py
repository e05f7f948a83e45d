"""Process-wide numba settings that nnlang's kernels were measured with; imported by the CPU
backend and by its compile worker, so kernels compiled in either process are the same."""
from __future__ import annotations

import os

from nnlang.errors import NNError

# numba's threading layers (NUMBA_THREADING_LAYER): named ones, and the kinds it picks among them
LAYERS = ("workqueue", "omp", "tbb", "default", "safe", "threadsafe", "forksafe")


def _check_settings() -> None:
    """NOTE: numba refuses NUMBA_NUM_THREADS below 1 when it is imported and an unknown layer
    at the first parallel kernel, with a bare ValueError that nnlang reported as an internal
    error (a bug in nnlang): they are the environment's, and named as such. Checked before
    numba loads: every module of this floor imports this one before numba."""
    threads = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    try:
        bad = bool(threads) and int(threads) < 1
    except ValueError:
        bad = False   # NOTE: numba warns that it ignores the setting, and goes on
    if bad:
        raise NNError(f"NUMBA_NUM_THREADS={threads} in the environment: numba's thread count "
                      "is at least 1", hint=f"set it to a whole number from 1 to the CPUs "
                      f"({os.cpu_count()}), or unset it for one thread per CPU")
    layer = os.environ.get("NUMBA_THREADING_LAYER", "").strip()
    if layer and layer.lower() not in LAYERS:
        raise NNError(f"NUMBA_THREADING_LAYER={layer} in the environment is not a numba "
                      "threading layer", hint=f"numba's layers: {', '.join(LAYERS[:3])} (or "
                      "default, safe, threadsafe, forksafe); unset it for nnlang's, workqueue")


_check_settings()

import numba  # noqa: E402  (after the check: an import numba refuses is its ValueError)
from llvmlite import binding as llvm  # noqa: E402

# NOTE: numba's default OpenMP layer spin-waits and fights OpenBLAS's threads between a matmul
# and the next parallel kernel (5x slower steps on 2 cores); the workqueue layer does not.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# NOTE: a fused backward cell kernel reads and writes ~26 arrays; LLVM vectorizes a loop only
# when its runtime aliasing checks number at most 128 (`vectorize-memory-check-threshold`), so
# the LSTM scan's backward cell kernel ran scalar: 590 us a step against 104 us vectorized
# (64 x 128 elements, 15 loads, 11 stores). The checks run once per row, a few ns each.
llvm.set_option("nnlang", "-vectorize-memory-check-threshold=4096")
# NOTE: LLVM (15 and later) hoists a vectorized inner loop's aliasing checks out of the outer
# loop, widening each row's address range to the whole array. Two outputs interleaved in one
# buffer (an LSTM step's h and c, concat pieces written in place) then always "overlap" and
# every row runs the scalar fallback: the LSTM scan's cell kernel took 380-400 us a step
# instead of 40-55 (64 x 128 elements). Checked per row instead, they pass. LLVM versions
# without an option ignore it (the C API parses options with errors discarded).
llvm.set_option("nnlang", "-hoist-runtime-checks=false")
