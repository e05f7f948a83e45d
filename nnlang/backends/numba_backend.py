"""The CPU backend: generated kernels compiled with numba, matmul through numpy's BLAS, and
library ops (gather, scatter_add, unfold, fold, ...) that write into planned buffers.

Kernel source is written to `$NNLANG_CACHE_DIR` (default `~/.cache/nnlang/kernels`) under a
hash of the source and versions, then imported, so numba's own `cache=True` on-disk cache
applies and a second process compiles nothing.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np

from nnlang.backends import numba_kernels as nk
from nnlang.backends.base import Call
from nnlang.backends.blas import matmul_call, single_threaded_blas
from nnlang.backends.windows import (fold_call, unfold_call, window_max_call,
                                     window_max_grad_call)
from nnlang.ir.graph import Node, op_attrs
from nnlang.ops import registry
from nnlang.ops.random import MASK64

VERSION = "nnlang-0.1"
_GUARD = 256 << 10

# NOTE: numba's default OpenMP layer spin-waits and fights OpenBLAS's threads between a matmul
# and the next parallel kernel (5x slower steps on 2 cores); the workqueue layer does not.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


def cache_dir() -> Path:
    env = os.environ.get("NNLANG_CACHE_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "nnlang" / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class NumbaBackend:
    name = "numba"

    def __init__(self):
        self._modules: dict[str, object] = {}
        self._entries: dict[tuple, object] = {}   # (dispatcher, signature) -> compiled entry
        self.compiled = 0      # kernel signatures compiled in this process
        self.cache_hits = 0    # ... loaded from numba's disk cache instead

    # *** memory ***
    def alloc(self, nbytes: int) -> np.ndarray:
        # NOTE: each buffer is followed by an untouched guard (address space only: its pages are
        # never faulted in). Stores into a buffer that starts within ~128 KiB after the end of
        # a buffer the same kernel streams loads from ran 5x slower on this EPYC (the LSTM cell:
        # 210 us, 42 us with the guard; measured with benchmarks/profile_step.py --breakdown)
        return np.empty(nbytes + _GUARD, np.uint8)[:nbytes]

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
            path = cache_dir() / f"k_{key}.py"
            if not path.exists() or path.read_text() != source:
                _write_atomic(path, source)
            spec = importlib.util.spec_from_file_location(f"nnlang_kernels.k_{key}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            self._modules[key] = module
        return getattr(self._modules[key], name)

    def specialize(self, fn, args: tuple) -> Call:
        sig = tuple(numba.typeof(a) for a in args)
        # NOTE: the unrolled LSTM binds one kernel ~200 times; asking numba again costs ~0.5 ms
        entry = self._entries.get((fn, sig))
        if entry is not None:
            return entry, args
        hits = sum(fn._cache_hits.values())
        known = sig in fn.overloads
        entry = self._entries[(fn, sig)] = fn.compile(sig)
        if not known:
            if sum(fn._cache_hits.values()) > hits:
                self.cache_hits += 1
            else:
                self.compiled += 1
        return entry, args

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

    def session(self):
        """Context for running one step: BLAS single-threaded (see backends/blas.py)."""
        return single_threaded_blas()

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
        arrays = _as_2d(a, xs[0], out)
        if arrays is None:
            return unfold_call(np, a, xs[0], out)
        return self.specialize(nk.unfold2d, arrays + _ints_2d(a, "stride", "dilation", "pads")
                               + (float(a["pad_value"]),))

    def _fold(self, a, xs, out):
        arrays = _as_2d(a, xs[0], out)
        if arrays is None:
            return fold_call(np, a, xs[0], out)
        return self.specialize(nk.fold2d, arrays + _ints_2d(a, "stride", "dilation", "pads"))

    def _window_max(self, a, xs, out):
        arrays = _as_2d(a, xs[0], out)
        if arrays is None:
            return window_max_call(np, a, xs[0], out)
        return self.specialize(nk.window_max2d, arrays + _ints_2d(a, "kernel", "stride", "pads"))

    def _window_max_grad(self, a, xs, out):
        arrays = _as_2d(a, xs[0], xs[1], out)
        if arrays is None:
            return window_max_grad_call(np, a, xs[0], xs[1], out)
        x, g, dx = arrays
        cells = np.reshape(dx, (dx.shape[0], -1, dx.shape[-1]), copy=False)
        return self.specialize(nk.window_max_grad2d,
                               (x, g, cells) + _ints_2d(a, "kernel", "stride", "pads"))


def _as_2d(a, *arrays):
    """The arrays of a 1-d window op as those of a 2-d one (images [B, L, C] as [B, 1, L, C],
    cols [B, O, K, C] as [B, 1, O, 1, K, C]); None for 3-d windows or arrays that cannot be
    viewed so, which take the slice-copy lowering."""
    nd = len(a["kernel"])
    if nd == 2:
        return arrays
    if nd != 1:
        return None
    try:
        return tuple(np.reshape(x, (x.shape[0], 1, *x.shape[1:]) if x.ndim == 3 else
                                (x.shape[0], 1, x.shape[1], 1, *x.shape[2:]), copy=False)
                     for x in arrays)
    except ValueError:
        return None


def _ints_2d(a, *names) -> tuple:
    """The named window attributes as 2 ints each (pads: the leading ones), 1-d lifted."""
    out = []
    for name in names:
        v = [int(p) for p in a.get(name, [1] * len(a["kernel"]))]
        v = v[0::2] if name == "pads" else v
        out += ([0 if name == "pads" else 1] if len(v) == 1 else []) + v
    return tuple(out)


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
