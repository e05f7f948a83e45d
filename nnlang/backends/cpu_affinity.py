"""Where nnlang's CPU threads run while a step executes: the calling thread on the first CPU the
process may use, each worker of the GEMM/kernel pool on one of the others.

NOTE why: a split call hands half its work to a pool thread and waits for it, dozens of times a
step. After the process has slept (0.2 s between steps is enough), Linux's load tracking says
both threads are nearly idle, so its wake-up placement keeps putting the woken thread on the
waker's CPU, and the two halves of a split run on one core until the load tracking catches up.
Measured on a 2-core VM, one process, 12 rounds of "sleep 0.2 s, step, step":
- transformer: first step after the sleep 79-83 ms unpinned, 55-60 ms pinned (back to back
  55-62 either way);
- text CNN: 26-30 ms unpinned, 24-26 ms pinned (back to back 22-24 either way);
- LSTM and LeNet CNN (their products run on BLAS's own threads, not split): no change, so
  the numba backend pins only the steps that its pool splits.
OpenMP runtimes offer the same binding (OMP_PROC_BIND); `NNLANG_PIN_THREADS=0` turns it off.

The calling thread is pinned only for the length of a step and gets its own affinity back
afterwards; a thread that the user restricted to other CPUs is left alone, and so is a second
thread stepping while another one is.
"""
from __future__ import annotations

import itertools
import os
import threading
from contextlib import contextmanager

ENV = "NNLANG_PIN_THREADS"
_lock = threading.Lock()
_active = 0                   # threads inside `pinned()` right now
_next_worker = itertools.count()


def _process_cpus() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


# NOTE: read once, at import: later a thread's affinity may be the pinned one (a new thread
# inherits its creator's, and the pool's threads are started from inside a pinned step)
_CPUS = _process_cpus()


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on, in order (all of os.cpu_count() where the platform
    cannot say)."""
    return _CPUS


def enabled() -> bool:
    return (hasattr(os, "sched_setaffinity") and os.environ.get(ENV, "1") != "0"
            and len(allowed_cpus()) >= 2)


def pin_worker() -> None:
    """A pool thread's initializer: worker i runs on the (i+1)-th allowed CPU, wrapping past the
    last, so that with one worker per remaining CPU no two share one."""
    if not enabled():
        return
    cpus = allowed_cpus()
    i = next(_next_worker)
    os.sched_setaffinity(0, {cpus[1 + i % (len(cpus) - 1)]})


@contextmanager
def pinned():
    """The calling thread on the first allowed CPU while the block runs."""
    global _active
    own = None
    with _lock:
        if enabled() and _active == 0:
            mine = os.sched_getaffinity(0)
            home = allowed_cpus()[0]
            if home in mine:
                own = mine
        _active += 1
    try:
        if own is not None:
            os.sched_setaffinity(0, {home})
        yield
    finally:
        with _lock:
            _active -= 1
        if own is not None:
            os.sched_setaffinity(0, own)
