"""Where nnlang's CPU threads run while a step that its pool splits executes: the calling
thread stays on the CPU it is on, each worker of the GEMM/kernel pool on one of the others.

NOTE why: a split call hands half its work to a pool thread and waits for it, dozens of times a
step. After the process has slept (0.2 s between steps is enough), each half of a split GEMM
ran 13-15% slower and a whole transformer step up to 1.6x slower, as if the two halves shared
a core for a while: most likely Linux's wake-up placement, which pulls a woken thread towards
its waker's CPU while their recent load looks small. Pinning removes it. Measured on a 2-core
VM, one process, rounds of "sleep 0.2 s, step, step" (medians of 12, several runs):
- transformer: first step after the sleep 73-83 ms unpinned, 55-60 ms pinned (back to back
  50-62 either way);
- text CNN: 26-30 ms unpinned, 24-27 ms pinned (back to back 22-26 either way);
- LSTM and LeNet CNN (their products run on BLAS's own threads, not split): no change, so
  the numba backend pins only the steps that its pool splits.
OpenMP runtimes offer the same binding (OMP_PROC_BIND); `NNLANG_PIN_THREADS=0` turns it off.

Both are pinned only for the length of a step: between steps they may run anywhere, and
each step starts on whichever CPU the scheduler has put the calling thread, so a CPU that
another process keeps busy is not forced on it. (Pool threads pinned for good sat behind
OpenBLAS's spinning workers in the steps that use BLAS's threads: the MLP's step after a
pause took 13 ms instead of 2.7 in half of the rounds.) A thread that the user restricted to
some CPUs is left alone, and so is a second thread stepping while another one is.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

ENV = "NNLANG_PIN_THREADS"
_lock = threading.Lock()
_stepping = 0                  # threads inside `pinned()` right now
_home: int | None = None       # the stepping thread's CPU while a pinned step runs
_workers: list[threading.Thread] = []   # the pool's threads, in start order


def _process_cpus() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


# NOTE: read once, at import: later a thread's affinity may be the pinned one (a new thread
# inherits its creator's, and the pool's threads are started from inside a pinned step)
_CPUS = _process_cpus()


def _forget_after_fork() -> None:
    # NOTE: a forked child has none of the parent's pool threads (blas.py starts it a new
    # pool) and no step of another thread running: a step pinning in the parent at the fork
    # left the lock held and the count raised in the child, which then never pinned again
    global _lock, _stepping, _home, _workers
    _lock, _stepping, _home, _workers = threading.Lock(), 0, None, []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on, in order (all of os.cpu_count() where the platform
    cannot say)."""
    return _CPUS


def enabled() -> bool:
    return (hasattr(os, "sched_setaffinity") and os.environ.get(ENV, "1") != "0"
            and len(_CPUS) >= 2)


def current_cpu() -> int | None:
    """The CPU the calling thread runs on now (Linux's /proc), or None."""
    try:
        with open("/proc/thread-self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])  # field 39, "processor"
    except (OSError, ValueError, IndexError):
        return None


def register_worker() -> None:
    """A pool thread's initializer: it is pinned with the steps from now on, and starts where
    the current step wants it (or anywhere, rather than on the CPUs of the thread that
    happened to start it)."""
    if not enabled():
        return
    with _lock:
        _workers.append(threading.current_thread())
        os.sched_setaffinity(0, _worker_target(len(_workers) - 1))


def _worker_target(i: int) -> set[int]:
    """Where worker i may run now: anywhere between steps; during a pinned step, the i-th
    allowed CPU other than the step's, wrapping past the last, so that with one worker per
    remaining CPU no two share one."""
    if _home is None:
        return set(_CPUS)
    others = [c for c in _CPUS if c != _home]
    return {others[i % len(others)]}


def _place_workers() -> None:
    # NOTE: an exited thread's id may belong to another process's thread by now: skip it
    for i, t in enumerate(_workers):
        if t.is_alive():
            try:
                os.sched_setaffinity(t.native_id, _worker_target(i))
            except ProcessLookupError:  # exited since is_alive()
                pass


@contextmanager
def pinned():
    """While the block runs: the calling thread on its current CPU, the pool's threads on the
    others."""
    global _stepping, _home
    pinning = False
    with _lock:
        if enabled() and _stepping == 0 and os.sched_getaffinity(0) == set(_CPUS):
            home = current_cpu()
            _home = home if home in _CPUS else _CPUS[0]
            os.sched_setaffinity(0, {_home})
            _place_workers()
            pinning = True
        _stepping += 1
    try:
        yield
    finally:
        with _lock:
            _stepping -= 1
            if pinning:
                _home = None
                _place_workers()
                os.sched_setaffinity(0, set(_CPUS))
