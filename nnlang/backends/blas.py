"""Threads for GEMMs on the CPU: BLAS runs single-threaded inside a step, and large matmuls are
split by rows over a small pool of Python threads (numpy releases the GIL in BLAS).

NOTE: OpenBLAS's own worker threads spin after each call and starve the numba kernels that
follow on a 2-core machine (measured: an LSTM step went from 0.3 s to 8 s); splitting the big
GEMMs ourselves keeps both cores busy without that contention.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from nnlang.backends import numba_config  # noqa: F401, I001  (numba's settings first)
import numba
import numpy as np

from nnlang.backends import cpu_affinity, denormals

# NOTE: NUMBA_NUM_THREADS is the user's word on how many threads numba's kernels get; the pool
# runs nnlang's numba kernels in their place, so it keeps to it (numba parsed it: garbage is
# numba's warning and its default)
_WORKERS = max(1, min(len(cpu_affinity.allowed_cpus()), 8, numba.config.NUMBA_NUM_THREADS))
_SPLIT_FLOPS = 1 << 27   # below this one thread is faster than handing work to a pool
_MID_FLOPS = 1 << 20     # products from here to _SPLIT_FLOPS make threaded BLAS pay
_K_SPLIT = 8             # K this many times the larger output dim splits by K
_pool: ThreadPoolExecutor | None = None
_controller = None


def _blas_controllers():
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
            _controller = ThreadpoolController().select(user_api="blas")
        except Exception:  # NOTE: without threadpoolctl, BLAS keeps its own threading
            _controller = False
    return _controller


# NOTE: BLAS's thread count is the process's, and each use restores what it found: two Nets
# stepping in two threads (the second entering inside the first, leaving after it) restored
# the first's limit of one thread last, and the program's numpy ran on one BLAS thread from
# then on. The thread whose step entered first holds the limits (its nested uses too) until it
# leaves; a step of another thread meanwhile runs under them (threadpoolctl ignores its sets
# while another live thread controls OpenBLAS anyway).
_lock = threading.Lock()
_owner: threading.Thread | None = None
_depth = 0
# NOTE: the threads a step may use: _WORKERS, or fewer where the caller limited BLAS when the
# step began (threadpoolctl's threadpool_limits, OMP_NUM_THREADS or OPENBLAS_NUM_THREADS). A
# step set OpenBLAS to 2 threads inside a program's threadpool_limits(1), and the pool took
# half of each split: a program running one process per core got two threads in each.
_allowed = _WORKERS
# NOTE: each thread's step keeps the count it began under: a step of a second thread read the
# owner's, which went back to _WORKERS when the owner left, mid-step, under the caller's limit
_step = threading.local()


@contextmanager
def blas_threads(n: int = 1):
    global _owner, _depth, _allowed
    me = threading.current_thread()
    with _lock:
        mine = _owner in (None, me)
        if mine:
            _owner, _depth = me, _depth + 1
    before = getattr(_step, "allowed", None)
    try:
        ctl = _blas_controllers() if mine else None
        if ctl and _depth == 1:   # NOTE: what the caller set, before nnlang sets anything
            _allowed = max(1, min([_WORKERS, *(c.num_threads for c in ctl.lib_controllers)]))
        _step.allowed = _allowed if before is None else before
        n = min(n, _step.allowed)
        if not ctl:
            yield
            return
        if n > 1:
            # NOTE: down to one thread and back before each threaded step: without it the
            # LSTM's steps drifted from 46 to 60 ms over 25 steps; with it they stay at 45-47
            # (measured, OpenBLAS 0.3.31; why its workers slow down otherwise is not known)
            with ctl.limit(limits=1):
                pass
        with ctl.limit(limits=n):
            yield
    finally:
        _step.allowed = before
        if mine:
            with _lock:
                _depth -= 1
                if not _depth:
                    _owner, _allowed = None, _WORKERS


def _forget_after_fork() -> None:
    """In a child made by fork: the parent's pool without its threads (a fork copies only the
    forking thread), so its submits waited for good on workers that do not exist (its idle
    count said one was free); the child starts its own pool on first use. A lock or BLAS
    limit held by another of the parent's threads is no one's in the child."""
    global _pool, _lock, _owner, _depth, _allowed
    _pool, _lock, _owner, _depth, _allowed = None, threading.Lock(), None, 0, _WORKERS


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def threaded_blas_pays(products) -> bool:
    """Should BLAS run on its own threads for a whole step, with no product split by nnlang?
    `products`: (a shape, b shape) of every matmul of the step. Yes when some 2-d product is
    too small for nnlang's split (it would run on one core) but not tiny, and no batched
    product is big enough to split by its batch axis.

    NOTE: measured on 2 cores, in one process, alternating the two settings step by step:
    - threaded was faster for the LSTM (54.7 -> 49.3 ms), the GRU (52.7 -> 50.6), the MLP
      (1.8 -> 1.5) and the LeNet CNN (16.9 -> 13.8), whose products are small or mid-size
      (an RNN's 400 recurrent [64, 128] x [128, 512]: 26 us on 2 OpenBLAS threads, 40 on one);
    - split was faster for the text CNN (22.1 vs 23.1), all of whose products are big: with
      OpenBLAS's workers spinning after each product, its parallel window kernels ran 1.5-3x
      slower (unfold 0.98 -> 2.85 ms);
    - split was faster for the transformer (52.5 vs 68.5): numpy hands BLAS a batched
      product as one small matrix after another, nnlang splits it by batch."""
    if _WORKERS < 2:
        return False
    mid = False
    for a, b in products:
        batch = max(int(np.prod(a[:-2], dtype=np.int64)), int(np.prod(b[:-2], dtype=np.int64)))
        flops = 2 * batch * a[-2] * a[-1] * b[-1]
        if batch > 1 and flops >= _SPLIT_FLOPS:
            return False
        mid = mid or (batch == 1 and _MID_FLOPS <= flops < _SPLIT_FLOPS)
    return mid


def workers() -> int:
    return _WORKERS


def _start_worker() -> None:
    cpu_affinity.register_worker()
    denormals.flush_this_thread()
    # NOTE: as the step's own thread (numba_backend's launcher): a GEMM over a NaN or inf
    # warns nothing the results do not show; these threads run only nnlang's step calls
    np.seterr(all="ignore")


def pool() -> ThreadPoolExecutor:
    """The shared pool for split GEMMs and split generated kernels (numba `nogil`): one thread
    fewer than the parts of a split, whose first part runs on the calling thread."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(1, _WORKERS - 1), thread_name_prefix="nnlang-gemm",
                                   initializer=_start_worker)
    return _pool


def run_parts(calls):
    """Each (fn, args) call: the first on this thread, the rest on the pool; on fewer threads
    (one after another on each) where the step may use fewer (its `_step.allowed`)."""
    threads = min(len(calls), getattr(_step, "allowed", None) or _allowed)
    groups = [calls[k::threads] for k in range(threads)]
    futures = [pool().submit(_run_each, group) for group in groups[1:]]
    _run_each(groups[0])
    for f in futures:
        f.result()


def _run_each(calls) -> None:
    for fn, args in calls:
        fn(*args)


def _bounds(n: int, parts: int):
    cuts = np.linspace(0, n, parts + 1).astype(int)
    return list(zip(cuts[:-1], cuts[1:]))


def _summed(calls, partials):
    run_parts(calls)
    for p in partials[1:]:
        np.add(partials[0], p, out=partials[0])


_summed.uses_pool = True


def matmul_call(a: np.ndarray, b: np.ndarray, out: np.ndarray):
    """A (function, args) pair computing out = a @ b, split over threads when it pays: a 2-D
    product along its longer output axis, or along K when K is much the longest (each part a
    whole [M, N] over its share of K, summed after), a batched one (attention) by its leading
    batch axis."""
    flops = 2 * out.size * a.shape[-1]
    if _WORKERS < 2 or flops < _SPLIT_FLOPS:
        return np.matmul, (a, b, out)
    k = a.shape[-1]
    if a.ndim == 2 and b.ndim == 2 and k >= _K_SPLIT * max(out.shape):
        # NOTE: weight gradients over every token, alternating in one process: the LSTM's
        # [128, 12800] @ [12800, 512] 3-7% faster than by columns in 13 of 16 pairs; the
        # transformer's, CNNs' and GRU's long-K shapes 0.92-1.01x (medians of 5)
        parts = _bounds(k, min(_WORKERS, k))
        partials = [out] + [np.empty(out.shape, out.dtype) for _ in parts[1:]]
        calls = [(np.matmul, (a[:, lo:hi], b[lo:hi], p)) for (lo, hi), p in zip(parts, partials)]
        return _summed, (calls, partials)
    if a.ndim == 2 and b.ndim == 2 and out.shape[1] > out.shape[0]:
        # NOTE: a wide product splits by columns: the LSTM's [128, 12800] @ [12800, 512]
        # weight gradient took 5.7 ms by rows, 5.1 by columns (the MLP's 0.34 / 0.31)
        parts = _bounds(out.shape[1], min(_WORKERS, out.shape[1]))
        calls = [(np.matmul, (a, b[:, lo:hi], out[:, lo:hi])) for lo, hi in parts]
    elif a.ndim == 2 and b.ndim == 2:
        parts = _bounds(out.shape[0], min(_WORKERS, out.shape[0]))
        calls = [(np.matmul, (a[lo:hi], b, out[lo:hi])) for lo, hi in parts]
    elif a.ndim >= 3 and a.shape[:-2] == b.shape[:-2] == out.shape[:-2]:
        parts = _bounds(out.shape[0], min(_WORKERS, out.shape[0]))
        calls = [(np.matmul, (a[lo:hi], b[lo:hi], out[lo:hi])) for lo, hi in parts]
    else:
        return np.matmul, (a, b, out)
    return (run_parts, (calls,)) if len(calls) > 1 else calls[0]
