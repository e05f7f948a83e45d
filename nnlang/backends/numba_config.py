"""Process-wide numba settings that nnlang's kernels were measured with; imported by the CPU
backend and by its compile worker, so kernels compiled in either process are the same."""
from __future__ import annotations

import os

import numba
from llvmlite import binding as llvm

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
