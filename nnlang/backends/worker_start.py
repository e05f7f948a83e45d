"""Starting the compile worker (`compile_worker.py`), early where a compile is sure to be cold.

`NumbaBackend` takes a worker (`take`) at the first kernel missing from the cache. On a cold
cache that comes ~1 s into the process (the imports, parsing, the graph's passes), and the
worker then spends ~1 s of its own on Python's start, numba's import and its warm-up before
it compiles anything. `start_early`, called where a process is about to compile (the CLI's
compiling commands before their imports, `nnlang.compile` before its own), starts it at once
when nothing of nnlang's has been compiled into the cache yet, so that second spends the
other core while the parent builds. It needs no numba: this module imports none.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

_early: tuple | None = None   # (the worker started early, the caches it was started for)


def spawn():
    """A second process that warms numba up, then compiles the jobs `numba_backend._send_jobs`
    lists into the disk cache; None where no process can be started (the parent compiles
    everything)."""
    # NOTE: this nnlang, first on the worker's path: `-m` ran whichever nnlang the current
    # folder or the environment's path held (an installed one, when this one came through a
    # sys.path entry), which compiled nothing for want of the same kernel helpers (linked_key).
    # Then this process's own path, not a `-c` process's: that one puts the current folder
    # first, where a folder named numba or numpy (a checkout) was imported and the worker died
    # at its first line (a cold compile all in the parent)
    here = str(Path(__file__).resolve().parents[2])
    # (its str entries: a pathlib.Path appended there would be a NameError in the worker's -c)
    path = [here] + [p for p in sys.path if isinstance(p, str) and p != here]
    run = (f"import sys; sys.path[:] = {path!r}; import runpy; "
           "runpy.run_module('nnlang.backends.compile_worker', run_name='__main__')")
    try:
        return subprocess.Popen([sys.executable, "-c", run], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _caches() -> tuple:
    """Where a worker started now compiles to and reads its jobs from (its environment's)."""
    from nnlang.user_cache import user_cache_dir
    return str(user_cache_dir()), os.environ.get("NUMBA_CACHE_DIR")


def _cold(root: str) -> bool:
    """Has nothing been compiled into the cache at `root` yet? A kernel compiled there leaves
    a marker in kernels/compiled (`numba_backend._mark`)."""
    try:
        with os.scandir(Path(root) / "kernels" / "compiled") as found:
            return next(found, None) is None
    except OSError:
        return True


def _two_cpus() -> bool:
    """Could this process use a worker (`blas.workers() >= 2`, read without numba)?"""
    from nnlang.backends.cpu_affinity import allowed_cpus
    try:
        threads = int(os.environ.get("NUMBA_NUM_THREADS", "").strip() or 2)
    except ValueError:   # NOTE: numba ignores it (and warns): its default, one per CPU
        threads = 2
    return min(len(allowed_cpus()), threads) >= 2


def start_early() -> None:
    """Starts the worker now when the cache is cold and a second CPU is there (once; a
    process that never compiles leaves it idle, and it ends with the process, or after
    `compile_worker._IDLE_S`)."""
    global _early
    if _early is not None or not _two_cpus():
        return
    caches = _caches()
    worker = spawn() if _cold(caches[0]) else None
    if worker is not None:
        _early = (worker, caches)


def take():
    """The worker for a build that has kernels to compile: the one started early, when it is
    still alive and was started for these caches, else a new one."""
    global _early
    early, _early = _early, None
    if early is not None:
        worker, caches = early
        if worker.poll() is None and caches == _caches():
            return worker
        stop(worker)
    return spawn()


def stop_early() -> None:
    """Ends a worker started early that no build took (the first build needed none, or the
    compile failed before building)."""
    global _early
    early, _early = _early, None
    if early is not None:
        stop(early[0])


def stop(worker) -> None:
    """Ends a worker now (what it compiled stays in the cache: numba writes each file whole)."""
    if worker is not None:
        worker.kill()
        worker.wait()


@contextmanager
def early(wanted: bool):
    """`start_early()` when wanted; an error before the build (a model that does not check)
    ends the worker again, rather than leave it waiting in a long-lived program."""
    if wanted:
        start_early()
    try:
        yield
    except BaseException:
        stop_early()
        raise
