"""The CPU backend: generated kernels compiled with numba, matmul through numpy's BLAS, and
library ops (gather, scatter_add, unfold, fold, ...) that write into planned buffers.

Kernel source is written to the cache's `kernels/` folder (`user_cache.py`) under a hash of
the source and versions, then imported, so numba's own `cache=True` on-disk cache (beside it)
applies and a second process compiles nothing. An executable's kernels are compiled together
(`together`): when many are missing from the cache, a worker process (`compile_worker.py`)
compiles half of them meanwhile. A cache that cannot be written costs time only: the kernels
go to a private temp folder instead, with a warning.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

from nnlang.backends import cpu_affinity
from nnlang.backends import numba_kernels as nk
from nnlang.backends.aligned import aligned_empty
from nnlang.backends.base import Call
from nnlang.backends.blas import (blas_threads, matmul_call, run_in_order, run_parts,
                                  workers)
from nnlang.backends.windows import (as_2d, fold_call, ints_2d, unfold_call,
                                     window_max_call, window_max_grad_call)
from nnlang.ir.graph import Node, op_attrs
from nnlang.ops import registry
from nnlang.ops.random import MASK64
from nnlang.user_cache import cache_subdir, cache_unwritable, private_dir

VERSION = "nnlang-0.1"
_KERNELS = "nnlang_kernels."   # the module prefix of generated kernels
_WORKER_MIN = 6                 # missing kernels (~0.2 s each) worth starting a worker (~0.6 s)
_WORKER_TIMEOUT = 600
_GUARD = 256 << 10

# NOTE: numba's default OpenMP layer spin-waits and fights OpenBLAS's threads between a matmul
# and the next parallel kernel (5x slower steps on 2 cores); the workqueue layer does not.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


def cache_dir() -> Path:
    """<cache root>/kernels, or this process's private folder when that cannot be written."""
    return cache_subdir("kernels") or private_dir("kernels")


class Pending:
    """The compiled entry of a kernel requested inside `NumbaBackend.together()`, once known."""
    entry = None


def resolved(call: Call) -> Call:
    """A call (or a run_parts call of several) with its Pending entries replaced."""
    fn, args = call
    if isinstance(fn, Pending):
        return fn.entry, args
    if fn in (run_parts, run_in_order):
        return fn, ([resolved(c) for c in args[0]],)
    return call


def _marker(fn, sig) -> Path:
    """A file saying this (kernel, signature) is in numba's disk cache: a warm run starts no
    worker. It sits next to the cache itself, so the two go together."""
    tag = hashlib.sha256(str(sig).encode()).hexdigest()[:16]
    folder = Path(sys.modules[fn.py_func.__module__].__file__).parent / "compiled"
    return folder / f"{fn.py_func.__module__}.{fn.__name__}.{tag}"


def _mark(fn, sig) -> None:
    path = _marker(fn, sig)
    try:
        path.parent.mkdir(exist_ok=True)
        path.touch()
    except OSError:  # NOTE: only a hint for the next run: without it that run starts a worker
        pass


def _halves(todo):
    """todo split in two of about equal size, every signature of one kernel on the same side
    (numba keeps one cache index per kernel, and two writers would race on it)."""
    by_fn: dict = {}
    for fn, sig in todo:
        by_fn.setdefault(fn, []).append(sig)
    halves = ([], [])
    for fn, sigs in sorted(by_fn.items(), key=lambda kv: -len(kv[1])):
        side = halves[0] if len(halves[0]) <= len(halves[1]) else halves[1]
        side.extend((fn, sig) for sig in sigs)
    return halves


def _start_worker(todo):
    """A second process compiling `todo` [(dispatcher, signature)] into the disk cache."""
    jobs: dict = {}
    for fn, sig in todo:
        module = sys.modules[fn.py_func.__module__]
        jobs.setdefault((module.__file__, module.__name__, fn.__name__), []).append(sig)
    try:
        worker = subprocess.Popen([sys.executable, "-m", "nnlang.backends.compile_worker"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        worker.stdin.write(pickle.dumps([(*k, v) for k, v in jobs.items()]))
        worker.stdin.close()
        return worker
    except OSError:  # NOTE: no second process here: the parent compiles everything
        return None


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:  # NOTE: a full disk must not leave an empty temp file behind
        Path(tmp).unlink(missing_ok=True)
        raise


def _kernel_file(key: str, source: str) -> Path:
    """The kernel module's file: in the cache, or (the cache full or read-only) in this
    process's private folder."""
    path = cache_dir() / f"k_{key}.py"
    try:
        if not path.exists() or path.read_text() != source:
            _write_atomic(path, source)
        return path
    except OSError as err:
        cache_unwritable(path.parent, err)
        path = private_dir("kernels") / path.name
        _write_atomic(path, source)
        return path


class NumbaBackend:
    name = "numba"

    def __init__(self):
        self._modules: dict[str, object] = {}
        self._entries: dict[tuple, object] = {}   # (dispatcher, signature) -> compiled entry
        self._waiting: dict | None = None            # inside together(): requests -> Pending
        self.compiled = 0      # kernel signatures compiled in this process
        self.cache_hits = 0    # ... loaded from numba's disk cache instead

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

    # *** generated kernels ***
    def compile(self, source: str, name: str):
        key = hashlib.sha256(f"{VERSION}\n{numba.__version__}\n{source}".encode()).hexdigest()
        key = key[:24]
        if key not in self._modules:
            path = _kernel_file(key, source)
            spec = importlib.util.spec_from_file_location(f"{_KERNELS}k_{key}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            self._modules[key] = module
        return getattr(self._modules[key], name)

    def specialize(self, fn, args: tuple) -> Call:
        sig = tuple(numba.typeof(a) for a in args)
        if self._waiting is not None and fn.py_func.__module__.startswith(_KERNELS):
            return self._waiting.setdefault((fn, sig), Pending()), args
        return self._entry(fn, sig), args

    def _entry(self, fn, sig):
        # NOTE: the unrolled LSTM binds one kernel ~200 times; asking numba again costs ~0.5 ms
        entry = self._entries.get((fn, sig))
        if entry is not None:
            return entry
        hits = sum(fn._cache_hits.values())
        known = sig in fn.overloads
        saved = True
        try:
            entry = fn.compile(sig)
        except OSError as err:
            saved = False
            # NOTE: numba compiled it, then could not save it to its disk cache (full or
            # read-only): the kernel is loaded already, so asking again returns it
            cache_unwritable(Path(fn.py_func.__code__.co_filename).parent, err)
            entry = fn.compile(sig)
        self._entries[(fn, sig)] = entry
        if not known:
            if sum(fn._cache_hits.values()) > hits:
                self.cache_hits += 1
            else:
                self.compiled += 1
            if saved and fn.py_func.__module__.startswith(_KERNELS):
                _mark(fn, sig)
        return entry

    resolved = staticmethod(resolved)

    @contextmanager
    def together(self):
        """Within it, specialize() of a generated kernel returns a `Pending` entry; on leaving,
        every kernel is compiled or loaded and the Pending entries are filled. With enough
        kernels missing from the cache, a second process compiles part of them meanwhile."""
        self._waiting = {}
        try:
            yield
            waiting = self._waiting
        finally:
            self._waiting = None
        todo = [(fn, sig) for fn, sig in waiting
                if sig not in fn.overloads and not _marker(fn, sig).exists()]
        mine, theirs = _halves(todo)
        worker = _start_worker(theirs) if len(todo) >= _WORKER_MIN and workers() >= 2 \
            else None
        try:
            for fn, sig in mine if worker else ():
                self._entry(fn, sig)
        finally:
            if worker is not None:
                try:
                    worker.wait(timeout=_WORKER_TIMEOUT)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        for (fn, sig), pending in waiting.items():
            pending.entry = self._entry(fn, sig)

    # *** library ops ***
    def library_call(self, node: Node, inputs: list, out: np.ndarray) -> Call:
        a = op_attrs(node)
        make = getattr(self, f"_{node.op}", None)
        if make is not None:
            return make(a, inputs, out)
        impl = registry.get(node.op).impl  # NOTE: correct but allocates; add a lowering

        def run(*xs):
            out[...] = impl(*xs, **a)
        return run, tuple(inputs)

    def _matmul(self, a, xs, out):
        return matmul_call(xs[0], xs[1], out)

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

    def _gather(self, a, xs, out):
        # NOTE: mode="wrap" maps -1 to the last row like numpy indexing and, unlike "raise",
        # writes straight into `out` without a temporary
        return _take, (xs[0], xs[1], out)

    def _scatter_add(self, a, xs, out):
        src, idx = xs
        n = idx.size
        src2 = np.reshape(src, (n, -1), copy=False) if n else src.reshape(0, -1)
        out2 = np.reshape(out, (out.shape[0], -1), copy=False)
        return self.specialize(nk.scatter_add, (src2, np.reshape(idx, -1), out2))

    def _one_hot(self, a, xs, out):
        out2 = np.reshape(out, (-1, a["depth"]), copy=False)
        return self.specialize(nk.one_hot, (np.reshape(xs[0], -1), out2))

    def _argmax(self, a, xs, out):
        tmp = np.empty(out.shape, np.intp)
        return _argmax, (xs[0], a["axis"], tmp, out)

    def _random_uniform(self, a, xs, out):
        fn, args = self.specialize(nk.random_uniform, (np.uint64(0), np.reshape(out, -1)))
        return _random, (fn, xs[0], a["salt"], args[1])

    def _unslice(self, a, xs, out):
        idx = [slice(None)] * out.ndim
        idx[a["axis"] % out.ndim] = slice(a["start"], a["stop"], a["step"])
        return _unslice, (xs[0], out, tuple(idx))

    def _concat(self, a, xs, out):
        return _concat, (tuple(xs), a["axis"], out)

    def _unfold(self, a, xs, out):
        arrays = as_2d(a, xs[0], out)
        if arrays is None:
            return unfold_call(np, a, xs[0], out)
        return self.specialize(nk.unfold2d, arrays + ints_2d(a, "stride", "dilation", "pads")
                               + (float(a["pad_value"]),))

    def _fold(self, a, xs, out):
        arrays = as_2d(a, xs[0], out)
        if arrays is None:
            return fold_call(np, a, xs[0], out)
        return self.specialize(nk.fold2d, arrays + ints_2d(a, "stride", "dilation", "pads"))

    def _window_max(self, a, xs, out):
        arrays = as_2d(a, xs[0], out)
        if arrays is None:
            return window_max_call(np, a, xs[0], out)
        return self.specialize(nk.window_max2d, arrays + ints_2d(a, "kernel", "stride", "pads"))

    def _window_max_grad(self, a, xs, out):
        arrays = as_2d(a, xs[0], xs[1], out)
        if arrays is None:
            return window_max_grad_call(np, a, xs[0], xs[1], out)
        return self.specialize(nk.window_max_grad2d,
                               arrays + ints_2d(a, "kernel", "stride", "pads"))


# *** library op bodies: all write into preallocated arrays ***

def _take(table, idx, out):
    np.take(table, idx, axis=0, out=out, mode="wrap")


def _argmax(x, axis, tmp, out):
    np.argmax(x, axis=axis, out=tmp)
    np.copyto(out, tmp, casting="unsafe")


def _random(fn, key, salt, out):
    base = np.uint64((int(key) * 0x100000001B3 + salt * 0x9E3779B1) & MASK64)
    fn(base, out)


def _unslice(x, out, idx):
    out[...] = 0
    out[idx] = x


def _concat(xs, axis, out):
    np.concatenate(xs, axis=axis, out=out)


__all__ = ["NumbaBackend", "cache_dir"]
