"""A second process that compiles generated kernels (and lowerings' kernels, `lowering_kernel`)
into numba's disk cache, so a cold compile uses both cores (numba compiles one function at a
time per process, ~0.2 s each).

Started by `NumbaBackend` (this module as `__main__`, from the parent's nnlang) at the first
kernel missing from the cache, or at the parent's start where its cache is cold
(`worker_start.py`), it warms numba up while the parent goes on building, then reads
(claims folder, [(kernel file, module name, function name, [numba signature, ...], parallel),
...], the parent's `linked_key`) pickled on stdin (with too little to share, the parent kills
it instead); with another key it compiles nothing. Both processes go down the list, costliest
first, each compiling the jobs it claims first, so neither waits while the other has a long
queue. The worker only fills the cache; the parent loads every
kernel from it afterwards, and compiles itself whatever the worker did not manage (a failed
worker costs time, never correctness).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import select
import signal
import sys
import types
from contextlib import contextmanager
from pathlib import Path

from nnlang.backends import numba_config  # noqa: F401, I001  (the parent's settings; first)
import numba


def _typed(t):
    """A signature's type; ("blas", dtype) stands for the BLAS gemm a scan driver takes."""
    if isinstance(t, tuple):
        from nnlang.backends.numba_scan import blas_gemms
        return numba.typeof(blas_gemms()[t[1]])
    return t


def claim(claims: str, k: int) -> bool:
    """Takes job k for this process, unless the other one has (an exclusive file create)."""
    try:
        os.close(os.open(os.path.join(claims, str(k)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


_IDLE_S = 600    # how long the worker waits for its job list before it ends unused
_HELD: set = set()   # kernel files this process holds (`held`): a nested hold is a no-op


@contextmanager
def held(path: str):
    """An exclusive flock on a generated kernel's module file while this process compiles the
    kernel into numba's disk cache and checksums it. Processes of other runs on this machine
    (the ranks of `mpirun -n N nnlang train`, with their workers) compile the same kernels into
    the same cache: numba's machine code differs from one process to the next, so two writers
    at once left one's checksum beside the other's file (a false "damaged" warning and a
    rebuild, on every cold data-parallel start). Held, the second one waits and then loads the
    first one's kernel. No lock where the file system has none: as before."""
    if path in _HELD:
        yield
        return
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        _HELD.add(path)
        try:
            yield
        finally:
            _HELD.discard(path)
    finally:
        os.close(fd)   # NOTE: closing drops the lock


def linked_key() -> str:
    """A hash of the modules a generated kernel links with or compiles under, read from their
    files: numba_config's LLVM options, numba_kernels' helpers, numba_scan's gemm. A cached
    kernel holds their code and numba's own cache key knows none of them, so this is part of
    every kernel's key (`numba_backend._IMPORTED`)."""
    from nnlang.backends import numba_kernels, numba_scan
    return hashlib.sha256("".join(Path(m.__file__).read_text() for m in
                                  (numba_config, numba_kernels, numba_scan)).encode()).hexdigest()


def lowering_kernel(pyfunc, parallel: bool):
    """A lowering's kernel body (a plain Python function in `ops/`, which never imports numba)
    compiled with numba and cached on disk; its `prange` and `uintp` names (Python's `range`
    and `int` in its module) become numba's. Both processes make it here, so the worker's
    compile is the cache entry the parent loads (`NumbaBackend.jit`)."""
    names = {**pyfunc.__globals__, "prange": numba.prange, "uintp": numba.uintp}
    fn = types.FunctionType(pyfunc.__code__, names, pyfunc.__name__, pyfunc.__defaults__,
                            pyfunc.__closure__)
    fn.__qualname__, fn.__module__ = pyfunc.__qualname__, pyfunc.__module__
    return numba.njit(cache=True, parallel=parallel)(fn)


def compile_all(claims, jobs) -> None:
    """Compiles each job this process claims (`claim`: the parent takes the others). A job's
    `parallel` is None for a generated kernel, else the flag of a lowering's kernel."""
    for k, (path, module_name, name, sigs, parallel) in enumerate(jobs):
        if not claim(claims, k):
            continue
        if parallel is not None:
            fn = lowering_kernel(getattr(importlib.import_module(module_name), name), parallel)
        else:
            if module_name not in sys.modules:
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            fn = getattr(sys.modules[module_name], name)
        with held(path):
            for sig in sigs:
                fn.compile(tuple(_typed(t) for t in sig))


def warm_up() -> None:
    """numba's first compile in a process costs ~0.4 s more than the next (its typing and
    lowering tables): paid here while the parent is still building, on the float32 helpers
    most kernels call, which then wait in the disk cache for both processes."""
    from nnlang.backends import numba_kernels as h
    f32 = numba.float32
    for fn, sig in ((h.tanh_f32, (f32,)), (h.sigmoid_f32, (f32,)), (h.exp_f32, (f32,)),
                    (h.row_sum, (f32[::1], numba.int64, numba.float64))):
        fn.compile(sig)


if __name__ == "__main__":
    # NOTE: a Ctrl-C reaches the terminal's whole process group; the parent stops this worker
    # (`worker_start.stop`), so a KeyboardInterrupt here could only leave half-written
    # numba temp files in the cache
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up()
    mine = linked_key()   # NOTE: before the job list comes: it imports numba_scan (~0.15 s)
    # NOTE: one started early (`worker_start.start_early`) by a process that then compiles
    # nothing (a library's nnlang.compile never built) waits for no job list forever
    try:
        ready = select.select([sys.stdin], [], [], _IDLE_S)[0]
    except (OSError, ValueError):   # NOTE: no select on a pipe (Windows): it waits as before
        ready = True
    if not ready:
        sys.exit(0)
    claims, jobs, key = pickle.load(sys.stdin.buffer)
    # NOTE: files that are not the parent's (nnlang upgraded under a running process, another
    # nnlang first on this process's path) would link its kernels with other helpers and cache
    # them under the parent's key: the parent compiles them all itself instead
    if key == mine:
        compile_all(claims, jobs)
    # NOTE: the parent waits for this exit: the interpreter's teardown (numba's and LLVM's
    # objects freed one by one, 0.2-0.4 s) was on the cold compile's critical path. Every
    # kernel is in the cache by now (numba writes its files before compile returns)
    os._exit(0)
