"""Steps run with the CPU's flush-to-zero (FTZ) and denormals-are-zero (DAZ) modes on.

NOTE why: on x86, an operation that reads or writes a denormal float (below 1.2e-38 in
float32) takes a microcode assist, ~100x its normal time. A long recurrence's gradients
shrink through that range on their way to zero: an LSTM step at 1,024 tokens (batch 64,
128 units) took 16-17 s with them and 1.4-1.6 s with FTZ/DAZ; one GEMM over 16,384 rows of
such values, 4.2 s against 0.03 (measured on a 2-core Xeon VM, `benchmarks/profile_step.py`).
Values that small move no weight (Adam's eps alone is 1e-7), and GPUs and PyTorch's
`set_flush_denormal` make the same trade.

The modes are per thread (the MXCSR register): each step sets them on the thread that runs
it and restores the caller's on return, so the user's own numpy code keeps IEEE denormals.
nnlang's pool threads and numba's workers keep them for good. OpenBLAS's own worker threads
(used by steps that thread BLAS, see backends/blas.py) were started at numpy's import without
them; restarting its pool (`blas_thread_shutdown_`, `blas_thread_init`) from a flushing thread
would pass them on, but was measured not to pay for what it would be for, a scan's per-step
GEMMs on two threads: LSTM step 162 ms against 146 on one (GRU 144 against 125), and it would
change numpy's BLAS for the whole process. Other CPUs than x86 run unchanged.
`NNLANG_DENORMALS=keep` turns it off.
"""
from __future__ import annotations

import os
import platform
from contextlib import contextmanager

from nnlang.backends import numba_config  # noqa: F401, I001  (numba's settings first)
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

ENV = "NNLANG_DENORMALS"
_FTZ_DAZ = 0x8040           # MXCSR bits 15 (flush to zero) and 6 (denormals are zero)


def enabled() -> bool:
    return (platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
            and os.environ.get(ENV, "flush") != "keep")


def _csr_intrinsic(builder, name):
    fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def _swap_csr(typingctx, value):
    def codegen(context, builder, sig, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        ptr = builder.bitcast(slot, cgutils.voidptr_t)
        builder.call(_csr_intrinsic(builder, "llvm.x86.sse.stmxcsr"), [ptr])
        old = builder.load(slot)
        builder.store(args[0], slot)
        builder.call(_csr_intrinsic(builder, "llvm.x86.sse.ldmxcsr"), [ptr])
        return old
    return types.uint32(types.uint32), codegen


@numba.njit(cache=True)
def _swap(value):
    """Loads `value` into this thread's MXCSR and returns the old one (numba, since Python
    cannot reach the register and no C compiler may be at hand)."""
    return _swap_csr(np.uint32(value))


def _read() -> int:
    old = _swap(0x1F80)  # the power-on default, briefly
    _swap(old)
    return int(old)


def flush_this_thread() -> None:
    """FTZ/DAZ on for good in the calling thread (nnlang's own pool threads)."""
    if enabled():
        _swap(_read() | _FTZ_DAZ)


@contextmanager
def flushed():
    """FTZ/DAZ on in the calling thread for the block, the thread's own modes after."""
    if not enabled():
        yield
        return
    old = _read()
    _swap(old | _FTZ_DAZ)
    try:
        yield
    finally:
        _swap(old)


def flushing_now() -> bool:
    """Are FTZ and DAZ on in the calling thread (for tests)?"""
    return enabled() and _read() & _FTZ_DAZ == _FTZ_DAZ


__all__ = ["enabled", "flush_this_thread", "flushed", "flushing_now"]
