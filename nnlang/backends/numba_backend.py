"""The CPU backend: generated kernels compiled with numba, matmul through numpy's BLAS, and
the library primitives' numba lowerings (in their registry entries, `ops/`) jitted here.

Kernel source is written to the cache's `kernels/` folder (`user_cache.py`) under a hash of
the source and versions, then imported, so numba's own `cache=True` on-disk cache (beside it)
applies and a second process compiles nothing. An executable's kernels, its scan bodies' and
their drivers' are compiled together (`together`): a worker process (`compile_worker.py`),
started at the first kernel missing from the cache (on a cold cache, at the process's start:
`worker_start.py`), compiles about half of them meanwhile.
A cache that cannot be written costs time only: the kernels go to a private temp folder
instead, with a warning.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

from nnlang.backends import numba_config  # noqa: F401, I001  (numba's settings first)
import numba
import numpy as np
from numba.core.caching import CacheImpl, InTreeCacheLocator

from nnlang.backends import cpu_affinity, denormals, worker_start
from nnlang.backends.aligned import aligned_copy, aligned_empty, aligned_zeros
from nnlang.backends.base import Call, State, library_call, raising_located, run_in_order
from nnlang.backends.blas import (blas_threads, matmul_call, run_parts, threaded_blas_pays,
                                  workers)
from nnlang.backends.compile_worker import claim, held, linked_key, lowering_kernel
from nnlang.backends.ctrl_c import ctrl_c_held
from nnlang.backends.numba_scan import KernelAddress, Unsupported, blas_gemms, render_driver
from nnlang.codegen.render_numba import (COLUMNS_MIN, PARALLEL_MIN, column_reduction, render,
                                         render_multi, split_columns, split_rows)
from nnlang.errors import NNError
from nnlang.files import write_atomic
from nnlang.ir.graph import Node
from nnlang.passes.schedule import apply_view
from nnlang.user_cache import (cache_damaged, cache_subdir, cache_unwritable, maybe_prune,
                               private_dir, remove_quietly, touch, user_cache_dir)

VERSION = "nnlang-0.3"  # NOTE: bumped when a kernel compiles otherwise for a reason no source shows
# NOTE: the code kernels link with or compile under: with numba_config's source in it, an
# upgrade that retunes an LLVM option recompiles, where a forgotten VERSION bump kept serving
# the kernels compiled under the old one
_IMPORTED = linked_key()
_KERNELS = "nnlang_kernels."   # the module prefix of generated kernels
_WORKER_MIN = 2                 # jobs worth handing to a started worker (~0.2 s each to compile)
_WORKER_TIMEOUT = 600
_GUARD = 256 << 10
# NOTE: a scan's batch runs in parts on the pool's threads from this many rows a part: the
# LSTM's loops at batch 64 took 25-43 ms (forward) and 45-56 (backward) as one part, 20-22 and
# 33-41 as two parts of 32 at once (2-core Xeon, BLAS on one thread)
_ROWS_MIN = 16
_CHECKED: set = set()   # kernels whose disk cache this process has checked (`_damaged_data`)



def cache_dir() -> Path:
    """<cache root>/kernels, or this process's private folder when that cannot be written."""
    return cache_subdir("kernels") or private_dir("kernels")


def _shared_dir() -> Path:
    """<cache root>/kernels whether or not this process can write it (a shared pre-built cache
    is read there)."""
    return user_cache_dir() / "kernels"


class Pending:
    """The compiled entry of a kernel requested inside `NumbaBackend.together()`, once known.
    Callable, so a call built inside a nested `together` (a scan body's kernel call, its
    driver's) runs once the outermost has filled it."""
    entry = None

    def __call__(self, *args):
        return self.entry(*args)


def resolved(call: Call) -> Call:
    """A call (or a run_parts call of several) with its Pending entries replaced (those that
    are filled: a nested executable's wait for the outermost `together`)."""
    fn, args = call
    if isinstance(fn, Pending):
        return (fn, args) if fn.entry is None else (fn.entry, args)
    if fn in (run_parts, run_in_order):
        return fn, ([resolved(c) for c in args[0]],)
    return call


def _marker(fn, sig) -> Path:
    """A file saying this (kernel, signature) is in numba's disk cache: a warm run starts no
    worker. It sits next to the cache itself, so the two go together."""
    tag = hashlib.sha256(str(sig).encode()).hexdigest()[:16]
    return _compiled_dir(fn) / f"{fn.py_func.__module__}.{fn.__name__}.{tag}"


def _compiled_dir(fn) -> Path:
    return Path(sys.modules[fn.py_func.__module__].__file__).parent / "compiled"


def _in_index(fn, sig) -> bool:
    """Does numba's disk cache list this signature of a lowering's kernel (`NumbaBackend.jit`)?
    Its index is read, the kernel not loaded. Where numba's cache cannot tell, yes: the kernel
    is then compiled or loaded at once, in this process (as all of them were before)."""
    try:
        cache = fn._cache
        return cache._index_key(sig, fn.targetctx.codegen()) in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001  (numba's private cache API: any change means "ask it")
        return True


def _mark(fn, sig) -> None:
    path = _marker(fn, sig)
    try:
        path.parent.mkdir(exist_ok=True)
        path.touch()
    except OSError:  # NOTE: only a hint for the next run: without it that run starts a worker
        pass


def _loading_cache(err: BaseException) -> bool:
    """Did `err` come from numba reading its disk cache (a truncated or flipped .nbi/.nbc:
    UnpicklingError, EOFError, "LLVM bitcode parsing error"), not from compiling?"""
    tb = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.endswith(os.path.join("numba", "core", "caching.py")) and \
                "load" in code.co_name:
            return True
        tb = tb.tb_next
    return False


def _data_files(fn) -> tuple[Path, list[Path]]:
    """(index, data files) of a kernel's numba disk cache: one index per kernel, one data file
    per signature."""
    files = fn._cache._cache_file
    index = Path(files._index_path)
    pattern = files._data_name_pattern.format(number=0).replace(".0.nbc", ".*.nbc")
    return index, sorted(index.parent.glob(pattern))


def _drop_cache(fn, err: BaseException) -> None:
    """Removes a kernel's numba cache (its index and every data file: the index names them, so
    neither is any use alone) after a warning; the next compile writes it anew."""
    index, data = _data_files(fn)
    cache_damaged(index, err)
    for path in [index, *data]:
        remove_quietly(path)


def _sums_path(fn) -> Path:
    return _compiled_dir(fn) / f"{fn.py_func.__module__}.{fn.__name__}.crc32"


def _read_sums(fn) -> dict:
    try:
        sums = json.loads(_sums_path(fn).read_text())
    except (OSError, ValueError):
        return {}
    return sums if isinstance(sums, dict) else {}


def _record_sums(fn, fresh: bool) -> None:
    """Writes a checksum of each of the kernel's data files (its machine code), checked before
    the next process loads them: numba checks that a file parses, not that it holds the code
    it wrote, and a flipped bit there runs (a crash, or a wrong answer). `fresh`: this process
    compiled it (every file summed anew); else only files not listed yet are summed (another
    process, the compile worker, wrote them)."""
    try:
        old = {} if fresh else _read_sums(fn)
        sums = {p.name: old[p.name] if p.name in old else zlib.crc32(p.read_bytes())
                for p in _data_files(fn)[1]}
        if fresh or sums != old:
            write_atomic(_sums_path(fn), json.dumps(sums))
    except OSError:  # NOTE: a read-only cache: its files go unchecked
        pass


def _damaged_data(fn) -> Path | None:
    """A data file of the kernel's disk cache that differs from the checksum recorded when it
    was written, if any."""
    folder = _data_files(fn)[0].parent
    for name, want in _read_sums(fn).items():
        try:
            if zlib.crc32((folder / name).read_bytes()) != want:
                return folder / name
        except OSError:   # NOTE: gone: numba compiles that signature again
            continue
    return None


def _cost(fn) -> int:
    """A rough compile cost: the size of the function's bytecode."""
    return len(fn.py_func.__code__.co_code)


def _jobs(todo) -> list:
    """todo as [(kernel, [signature, ...])], the costliest first, so whichever process is free
    takes the next big one (longest first: the two finish close together). Every signature
    of one kernel is one job (numba keeps one cache index per kernel, and two writers would
    race on it)."""
    by_fn: dict = {}
    for fn, sig in todo:
        by_fn.setdefault(fn, []).append(sig)
    return sorted(by_fn.items(), key=lambda kv: -_cost(kv[0]) * len(kv[1]))


def _spawn_worker():
    """The build's compile worker: the one `worker_start.start_early` started, or a new one."""
    return worker_start.take()


def _send_jobs(worker, jobs: list, claims: str) -> bool:
    """Hands the worker the job list and the claims folder; it compiles each job it claims
    (`claim`) as this process does."""
    # NOTE: a scan driver takes the BLAS gemm, a ctypes function whose type cannot be pickled:
    # the worker types its own (`compile_worker.py`)
    blas_names = {numba.typeof(g): ("blas", dtype) for dtype, g in blas_gemms().items()}
    listed = []
    for fn, sigs in jobs:
        module = sys.modules[fn.py_func.__module__]
        parallel = None if module.__name__.startswith(_KERNELS) else \
            bool(fn.targetoptions.get("parallel"))
        listed.append((module.__file__, module.__name__, fn.__name__,
                       [tuple(blas_names.get(t, t) for t in sig) for sig in sigs], parallel))
    try:
        worker.stdin.write(pickle.dumps((claims, listed, _IMPORTED)))
        worker.stdin.close()
        return True
    except OSError:  # NOTE: the worker died: the parent compiles everything
        return False


def _wait(worker) -> None:
    try:
        worker.wait(timeout=_WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker_start.stop(worker)


def _element_ranges(members, parts: int) -> list[list]:
    """The members' (size, arrays) cut into `parts` runs of about equal element counts; a
    member that straddles a cut is sliced (its size-1 broadcast arrays are not)."""
    total = sum(n for n, _ in members)
    cuts = np.linspace(0, total, parts + 1).astype(int)
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        part, start = [], 0
        for n, xs in members:
            a, b = max(lo, start) - start, min(hi, start + n) - start
            if a < b or (n == 0 and lo <= start < hi):
                part.append((b - a if n else 0,
                             [x[a:b] if x.shape[0] == n and n else x for x in xs]))
            start += n
        if part:
            out.append(part)
    return out


def _multi_args(part) -> tuple:
    """A multi kernel's arguments: the sizes, then per argument a table of the members' array
    addresses (`render_numba.render_multi`); the caller keeps the arrays alive."""
    if not all(x.flags.c_contiguous for _, xs in part for x in xs):
        raise NNError("internal: a multi-tensor kernel argument is not contiguous")
    ns = np.array([n for n, _ in part], np.int64)
    return (ns, *(np.array([xs[k].ctypes.data for _, xs in part], np.uintp)
                  for k in range(len(part[0][1]))))


def _fitting_array(given, shape, dtype) -> np.ndarray:
    """The caller's array itself when it fits, so executables of one model share their state
    (a train step's update is what the next prediction reads); otherwise a copy or zeros."""
    if given is None:
        return aligned_zeros(shape, dtype)
    if given.shape == shape and given.dtype == dtype and given.flags.c_contiguous:
        return given
    return aligned_copy(np.broadcast_to(given, shape), dtype)


def _row_strided(x: np.ndarray, force: bool = False):
    """(flat 1-D view, outer strides in elements) for a non-contiguous array whose last axis is
    contiguous, which generated kernels index by hand so the inner loop vectorizes
    (`render_numba.render_body`); None for other arrays (`force`: contiguous ones too)."""
    item = x.itemsize
    strides = [0 if n == 1 else s for n, s in zip(x.shape, x.strides)]  # any stride fits size 1
    # NOTE: the flat index steps one element along the last axis (`render_numba._flat_index`),
    # so a last axis broadcast by a zero stride (a slice of a broadcast constant) must keep its
    # own strides: passed flat, its one-element span was read past its end (NaN gradients)
    if (x.flags.c_contiguous and not force) or x.ndim < 2 or x.size == 0 or \
            any(s < 0 or s % item for s in strides) or strides[-1] != (item if x.shape[-1] > 1
                                                                       else 0):
        return None
    span = 1 + sum((n - 1) * s // item for n, s in zip(x.shape, strides))
    flat = np.lib.stride_tricks.as_strided(x, (span,), (item,))
    return flat, [np.intp(s // item) for s in strides[:-1]]


def _uses_pool(call) -> bool:
    """Does this (function, args) call hand work to the thread pool (`blas.run_parts`)?"""
    fn, args = call
    return fn is run_parts or getattr(fn, "uses_pool", False) or \
        (fn is run_in_order and any(_uses_pool(c) for c in args[0]))


def _kernel_file(key: str, source: str) -> Path:
    """The kernel module's file: in the cache, or (the cache full or read-only) in this
    process's private folder. NOTE: one the cache holds is read there even when the cache is
    read-only (a shared pre-built one): with numba's cache beside it (`_ReadOnlyKernels`)."""
    path = _shared_dir() / f"k_{key}.py"
    if _holds(path, source):
        return path
    path = cache_dir() / path.name
    try:
        write_atomic(path, source)
        maybe_prune()
        return path
    except OSError as err:
        cache_unwritable(path.parent, err)
        path = private_dir("kernels") / path.name
        write_atomic(path, source)
        return path


def _holds(path: Path, source: str) -> bool:
    try:
        return path.read_text() == source
    except (OSError, UnicodeDecodeError):
        return False


class _ReadOnlyKernels(InTreeCacheLocator):
    """numba's disk cache beside a kernel module of a cache this process cannot write (a
    shared pre-built cache, a read-only mount): numba's own locators all need a folder they
    can write, so its machine code was never read and every kernel compiled again. This one
    reads it; a save fails as in a full cache (`_compiled_entry`: the kernel is used unsaved)."""

    @classmethod
    def from_function(cls, py_func, py_file):
        folder = Path(py_file).parent
        if not py_func.__module__.startswith(_KERNELS) or folder != _shared_dir() \
                or os.access(folder / "__pycache__", os.W_OK) \
                or not (folder / "__pycache__").is_dir():
            return None
        return cls(py_func, py_file)


CacheImpl._locator_classes.insert(0, _ReadOnlyKernels)


# NOTE: numba's workqueue threading layer (numba_config.py) aborts the whole process when two
# threads launch parallel=True kernels at once ("Concurrent access has been detected"): two
# Nets with dropout trained in two threads did. Their launches take turns; a Net's own calls
# already do (its lock), and the generated kernels are not parallel=True (the pool splits them).
_PARALLEL_LAUNCH = threading.Lock()


def _forget_after_fork() -> None:
    # NOTE: held by another of the parent's threads at the fork, it stayed held in the child
    global _PARALLEL_LAUNCH
    _PARALLEL_LAUNCH = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _one_launch_at_a_time(entry):
    def launch(*args):
        with _PARALLEL_LAUNCH:
            return entry(*args)
    launch.__name__ = getattr(entry, "__name__", "parallel_kernel")
    return launch


class NumbaBackend:
    name = target = "numba"
    xp = np
    render_only = False

    def __init__(self):
        self._jitted: dict = {}     # (python function, parallel) -> numba dispatcher
        self._modules: dict[str, object] = {}
        self._entries: dict[tuple, object] = {}   # (dispatcher, signature) -> compiled entry
        # NOTE: per thread: the backend is the process's, and with one `together` state a net
        # built in a second thread joined the first thread's build as if nested in it, and ran
        # with its kernels unfilled until that build ended
        self._building = threading.local()
        self.compiled = 0      # kernel signatures compiled in this process
        self.cache_hits = 0    # ... loaded from numba's disk cache instead

    @property
    def _waiting(self) -> dict | None:
        """Inside this thread's together(): requests -> Pending; else None."""
        return getattr(self._building, "waiting", None)

    @_waiting.setter
    def _waiting(self, value) -> None:
        self._building.waiting = value

    @property
    def _worker(self):
        """Inside this thread's together(): its compile worker, if one was started."""
        return getattr(self._building, "worker", None)

    @_worker.setter
    def _worker(self, value) -> None:
        self._building.worker = value

    # *** memory ***
    def alloc(self, nbytes: int) -> np.ndarray:
        # NOTE: each buffer is followed by an untouched guard (address space only: its pages are
        # never faulted in). Stores into a buffer that starts within ~128 KiB after the end of
        # a buffer the same kernel streams loads from ran 5x slower on this EPYC (the LSTM cell:
        # 210 us, 42 us with the guard; measured with benchmarks/profile_step.py --breakdown).
        # Buffers start on a cache line (backends/aligned.py).
        return aligned_empty((nbytes,), np.uint8, spare=_GUARD)

    def upload(self, dst, src) -> None:
        np.copyto(dst, src, casting="unsafe")

    def download(self, src) -> np.ndarray:
        return np.array(src)

    def sync(self) -> None:
        pass

    @staticmethod
    def state_array(shared: dict, name: str, shape, dtype):
        return _fitting_array(shared.get(name), shape, dtype)

    @staticmethod
    def state(arrays: dict) -> State:
        return State(arrays)

    @staticmethod
    def const_array(value, dtype):
        return np.array(value, dtype=dtype)

    @staticmethod
    def view(node, base):
        return apply_view(node, base)

    @staticmethod
    def reshape(a, shape):
        return np.reshape(a, shape, copy=False)

    # *** generated kernels ***
    def kernel_call(self, kernel, loop_shape: tuple, arrays: list):
        """Loads through row-strided views are indexed by hand (`_row_strided`); a large loop
        whose rows are independent is split over the pool's threads, and so is a large column
        reduction, by columns."""
        names = kernel.args[len(loop_shape):]
        red = kernel.reduce.arg if kernel.reduce else None
        n0, n1 = loop_shape[0], loop_shape[-1]
        # NOTE: a column reduction is rendered for its column blocks (row-strided views) at
        # every size, split or not: rendered whole below the split's size, its source changed
        # where a symbolic length first crossed that size, and a net that runs every length
        # with the same kernels compiled new ones there (the Transformer's bias gradients at
        # seq 64 and 256, batch 32)
        blocked = workers() > 1 and column_reduction(kernel, loop_shape)
        if blocked:
            parts = min(workers(), n1 // COLUMNS_MIN)
            # NOTE: whole cache lines per block (16 float32)
            cuts = [n1 * k // parts // 16 * 16 for k in range(parts)] + [n1]
            blocks = [[x[..., lo:hi] if x.shape[-1] == n1 else x for x in arrays]
                      for lo, hi in zip(cuts, cuts[1:])]
        sample = blocks[0] if blocked else arrays
        strided = {a for a, x in zip(names, sample) if a != red and _row_strided(x) is not None}
        if blocked and any(_row_strided(x, force=True) is None
                           for a, x in zip(names, arrays) if a in strided):
            strided = {a for a, x in zip(names, arrays) if a != red and
                       _row_strided(x) is not None}   # a whole array the blocks' form cannot take
            blocked = False
        columns = blocked and split_columns(kernel, loop_shape)
        header, body = render(kernel, loop_shape, strided=strided)
        fn = self.compile(body, kernel.name)

        def args_for(shape, xs):
            flat = [_row_strided(x, force=True) if a in strided else (x, [])
                    for a, x in zip(names, xs)]
            # NOTE: a flat array's offset (`render_numba.stride_args`) is 0 here: its view
            # starts at its first element
            return (*shape, *(f for f, _ in flat),
                    *(s for (_, ss), a in zip(flat, names) if a in strided
                      for s in (np.intp(0), *ss)))
        if columns:
            calls = [self.specialize(fn, args_for((*loop_shape[:-1], hi - lo), xs))
                     for (lo, hi), xs in zip(zip(cuts, cuts[1:]), blocks)]
            return (header, body), (run_parts, (calls,))
        parts = min(workers(), n0)
        if parts < 2 or not split_rows(kernel, loop_shape):
            return (header, body), self.specialize(fn, args_for(loop_shape, arrays))
        calls = []
        cuts = np.linspace(0, n0, parts + 1).astype(int)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            xs = [x[lo:hi] if x.shape[0] == n0 else x for x in arrays]
            calls.append(self.specialize(fn, args_for((hi - lo, *loop_shape[1:]), xs)))
        return (header, body), (run_parts, (calls,))

    def multi_call(self, kernels: list, sizes: list[int], arrays: list[list]):
        """A 1-d kernel over a table of every member's array addresses (`render_multi`), the
        combined element range split over threads when large."""
        bodies = {render(k, (1,))[1] for k in kernels}
        if len(bodies) > 1:
            return None
        members = list(zip(sizes, arrays))
        kernel = kernels[-1]
        header, source = render_multi(kernel, bodies.pop(), len(members))
        fn = self.compile(source, f"{kernel.name}_multi")
        total = sum(sizes)
        parts = min(workers(), total) if total >= PARALLEL_MIN else 1
        calls, pinned = [], []
        for part in _element_ranges(members, parts):
            pinned.append(part)  # NOTE: the address tables do not hold their arrays
            calls.append(self.specialize(fn, _multi_args(part)))
        call = calls[0] if len(calls) == 1 else (run_parts, (calls,))
        return (header, source), call, pinned

    def compile(self, source: str, name: str):
        text = f"{VERSION}\n{numba.__version__}\n{_IMPORTED}\n{source}"
        key = hashlib.sha256(text.encode()).hexdigest()[:24]
        if key not in self._modules:
            path = _kernel_file(key, source)
            spec = importlib.util.spec_from_file_location(f"{_KERNELS}k_{key}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            # NOTE: compiled from the text, not through the loader: that wrote a .pyc into the
            # cache and trusted any whose header matched the source, so a damaged one failed
            # every later run (bad marshal data); numba's cache is keyed by the file (co_filename)
            try:
                exec(compile(source, str(path), "exec"), module.__dict__)
            except RuntimeError:
                if path.exists():
                    raise
                # NOTE: numba's cache=True needs the file; `nnlang cache clear` in another
                # process removed it between its writing and this exec: written again
                path = _kernel_file(key, source)
                exec(compile(source, str(path), "exec"), module.__dict__)
            self._modules[key] = module
            # NOTE: marks the kernel used now, so pruning (least recently used first) keeps it
            # longest; its checksum file, not its module, whose time is numba's cache stamp
            touch(path.parent / "compiled" / f"{spec.name}.{name}.crc32")
        return getattr(self._modules[key], name)

    def specialize(self, fn, args: tuple) -> Call:
        sig = tuple(numba.typeof(a) for a in args)
        # NOTE: a lowering's kernel waits too when it is not on disk: compiled here at once, the
        # embedding's scatter_add was a cold LSTM's first compile (~0.4 s), before the worker
        # had even started; one on disk loads now, so a warm build starts no worker for it
        generated = fn.py_func.__module__.startswith(_KERNELS)
        waiting = self._waiting
        # NOTE: a lowering's (every kernel not generated here is `jit`'s) is looked up in
        # numba's index once, not again at each binding of it
        if waiting is not None and (generated or (fn, sig) in waiting or self._missing(fn, sig)):
            if (fn, sig) not in waiting:
                waiting[(fn, sig)] = Pending()
                # NOTE: started at the first kernel missing from the cache, so the worker's
                # start and numba's warm-up overlap the rest of the build (a lowering's is
                # known missing by now)
                if self._worker is None and workers() >= 2 and \
                        (not generated or self._missing(fn, sig)):
                    self._worker = _spawn_worker()
            entry = waiting[(fn, sig)]
            if generated:
                return entry, args
        else:
            entry = self._entry(fn, sig)
        return (_one_launch_at_a_time(entry) if fn.targetoptions.get("parallel") else entry), args

    def _request(self, fn, sig) -> None:
        """`fn` compiled (or, inside `together`, to be compiled) for `sig`."""
        if self._waiting is not None:
            self._waiting.setdefault((fn, sig), Pending())
        else:
            self._entry(fn, sig)

    @staticmethod
    def _missing(fn, sig) -> bool:
        """Is this kernel signature neither loaded nor in the disk cache (a generated kernel's
        by its marker, a lowering's by numba's index)?"""
        if sig in fn.overloads:
            return False
        if fn.py_func.__module__.startswith(_KERNELS):
            return not _marker(fn, sig).exists()
        return not _in_index(fn, sig)

    def _entry(self, fn, sig):
        # NOTE: the unrolled LSTM binds one kernel ~200 times; asking numba again costs ~0.5 ms
        entry = self._entries.get((fn, sig))
        if entry is not None:
            return entry
        generated = fn.py_func.__module__.startswith(_KERNELS)
        if not generated:
            return self._compiled_entry(fn, sig, generated)
        with held(sys.modules[fn.py_func.__module__].__file__):
            return self._compiled_entry(fn, sig, generated)

    def _compiled_entry(self, fn, sig, generated: bool):
        """`_entry`'s compile (or load from the disk cache), checksum check and record; a
        generated kernel's under `held`, so another process compiling it waits its turn."""
        hits = sum(fn._cache_hits.values())
        known = sig in fn.overloads
        if generated and fn not in _CHECKED:
            _CHECKED.add(fn)
            bad = _damaged_data(fn)
            if bad is not None:
                _drop_cache(fn, ValueError(f"{bad.name} differs from the checksum written "
                                           "with it"))
        saved = True
        with ctrl_c_held():
            try:
                entry = fn.compile(sig)
            except OSError as err:
                saved = False
                # NOTE: numba compiled it, then could not save it to its disk cache (full or
                # read-only): the kernel is loaded already, so asking again returns it
                cache_unwritable(Path(fn.py_func.__code__.co_filename).parent, err)
                entry = fn.compile(sig)
            # NOTE: a damaged cache file raises almost anything
            except Exception as err:  # noqa: BLE001
                if not _loading_cache(err):
                    raise
                _drop_cache(fn, err)
                entry = fn.compile(sig)
        self._entries[(fn, sig)] = entry
        if not known:
            hit = sum(fn._cache_hits.values()) > hits
            if hit:
                self.cache_hits += 1
            else:
                self.compiled += 1
            if saved and generated:
                _mark(fn, sig)
                _record_sums(fn, fresh=not hit)
        return entry

    resolved = staticmethod(resolved)

    def scan_loop(self, reverse: bool, width: int, init, carry, out, y, pairs, calls,
                  own=frozenset(), rows=None):
        """A scan's whole time loop as one generated driver (`numba_scan.py`): (rendered,
        call), or None when some body call cannot be generated there. `own` and `rows`: see
        `render_driver`; with rows, the batch runs as parts on the pool's threads at once."""
        gemms = blas_gemms()
        kernel_of = {entry: key for key, entry in self._entries.items()}
        kernel_of.update((p, key) for key, p in (self._waiting or {}).items())
        batch = int(init.shape[0])
        # NOTE: one part still runs by rows when it can: that driver's code holds no batch size
        parts = max(1, min(workers(), batch // _ROWS_MIN)) if rows is not None else 1
        try:
            source, args, dtype, by_rows = render_driver(
                "scan_loop", out.shape[0], reverse, width, init, carry, out, y, pairs, calls,
                kernel_of, own, rows)
        except Unsupported:
            return None
        if dtype is not None and dtype not in gemms:
            return None
        for k in args:   # NOTE: a kernel the driver types otherwise needs that signature too
            if isinstance(k, KernelAddress):
                self._request(k.fn, k.sig)
        blas = gemms.get(dtype or "float32")
        if blas is None:
            return None
        fn = self.compile(source, "scan_loop")
        steps = out.shape[0]
        header = f"# the time loop of a scan: {steps} steps{' (reverse)' if reverse else ''}"
        if not by_rows:
            return (header + "\n", source), self.specialize(fn, (blas, steps, 0, batch, batch,
                                                                   *args))
        cuts = [batch * k // parts for k in range(parts + 1)]
        row_calls = [self.specialize(fn, (blas, steps, lo, hi - lo, batch, *args))
                     for lo, hi in zip(cuts, cuts[1:])]
        if parts == 1:
            return (header + "\n", source), row_calls[0]

        def run_parts_at_once(*_):
            # NOTE: each part on one BLAS thread: two parts calling a threaded OpenBLAS at once
            # wait on its lock
            with blas_threads(1):
                run_parts(row_calls)
        run_parts_at_once.uses_pool = True
        header += f", rows in {parts} parts at once\n"
        return (header, source), (run_parts_at_once, ())

    @contextmanager
    def together(self):
        """Within it, specialize() of a generated kernel returns a `Pending` entry; on leaving,
        every kernel is compiled or loaded and the Pending entries are filled. With enough
        kernels missing from the cache, a second process compiles part of them meanwhile.
        Nested (a scan body's executable, built inside its parent's), it leaves its kernels
        to the outermost, so the bodies, their drivers and the rest compile on both sides."""
        if self._waiting is not None:
            yield
            return
        self._waiting = {}
        try:
            yield
            waiting = self._waiting
        except BaseException:
            worker_start.stop(self._worker)
            raise
        finally:
            self._waiting, worker, self._worker = None, self._worker, None
            worker_start.stop_early()   # NOTE: one this build did not take, none to take
        todo = [(fn, sig) for fn, sig in waiting if self._missing(fn, sig)]
        jobs = _jobs(todo)
        with tempfile.TemporaryDirectory(prefix="nnlang-claims-") as claims:
            shared = worker is not None and len(jobs) >= _WORKER_MIN and \
                _send_jobs(worker, jobs, claims)
            if not shared:   # NOTE: still warming up: no waiting for it
                worker_start.stop(worker)
                worker = None
            try:
                for k, (fn, sigs) in enumerate(jobs):
                    if not shared or claim(claims, k):
                        for sig in sigs:
                            self._entry(fn, sig)
            except BaseException:   # NOTE: Ctrl-C or an error: no waiting for the worker's jobs
                worker_start.stop(worker)
                raise
            if worker is not None:
                _wait(worker)
        for (fn, sig), pending in waiting.items():
            pending.entry = self._entry(fn, sig)

    # *** library primitives: their lowerings live in the op's registry entry (`ops/`) ***
    def library_call(self, node: Node, inputs: list, out: np.ndarray) -> Call:
        return library_call(self, node, inputs, out)

    @staticmethod
    def located(node: Node, call: Call) -> Call:
        return raising_located(node, call)

    def gemm(self, a, b, out) -> Call:
        return matmul_call(a, b, out)

    @staticmethod
    def allreduce(src, out) -> Call:
        """out = src summed over the ranks of the data-parallel run (`backends/collective.py`)."""
        from nnlang.backends.collective import current, init
        return (current() or init()).allreduce_sum, (src, out)

    def jit(self, pyfunc, parallel: bool = False):
        """A lowering's kernel body (a plain Python function, so `ops/` never imports numba)
        compiled with numba, cached on disk like the generated kernels
        (`compile_worker.lowering_kernel`). Inside `together`, one missing from the disk
        cache waits with the generated kernels, so the compile worker can take it."""
        key = (pyfunc, parallel)
        if key not in self._jitted:
            self._jitted[key] = lowering_kernel(pyfunc, parallel)
        return self._jitted[key]

    # *** running a step ***
    def threaded_blas(self, products: list) -> bool:
        return threaded_blas_pays(products)

    def splits(self, calls: list[Call]) -> bool:
        return any(_uses_pool(c) for c in calls)

    def launcher(self, calls: list[Call], updates: list, threaded: bool):
        threads, split, session = workers() if threaded else 1, self.splits(calls), self.session

        def step():
            # NOTE: flushing before the session: numba's workers, started there, inherit it.
            # errstate: a NaN or inf fed in made numpy warn "invalid value encountered in
            # matmul" from this line; the NaN is in the results, which nnlang checks itself
            with denormals.flushed(), session(threads, split), np.errstate(all="ignore"):
                for fn, args in calls:
                    fn(*args)
            for dst, src in updates:
                np.copyto(dst, src)
        return step

    @staticmethod
    def results(named: list, fetch: bool) -> dict:
        return {k: np.array(v) for k, v in named}

    @staticmethod
    def read_all(results: list[dict]) -> list[dict]:
        """Results are host arrays already."""
        return results

    @contextmanager
    def session(self, threads: int = 1, split: bool = False):
        """Context for running one step: BLAS on `threads` threads, single-threaded unless the
        step's products are a chain BLAS threads better (see backends/blas.py). When nnlang's
        pool splits some of the step's work instead (`split`), the calling thread stays on
        one CPU and the pool on the others (see backends/cpu_affinity.py)."""
        if threads > 1 or not split:  # NOTE: pinning measured no gain with BLAS's threads
            with blas_threads(threads):
                yield
            return
        numba.get_num_threads()  # NOTE: starts numba's workers unpinned: threads inherit CPUs
        with cpu_affinity.pinned(), blas_threads(1):
            yield


__all__ = ["NumbaBackend", "cache_dir"]
