"""A stand-in for CuPy that runs on the CPU, so the CuPy backend's own code (buffers, views,
kernel arguments, launch configurations, library calls, device state) runs end to end without a
GPU: `install(monkeypatch, host_cxx, directory)` puts it in `sys.modules["cupy"]`.

Device arrays are numpy arrays behind a wrapper that, like CuPy, refuses implicit conversion to
numpy (`np.asarray(x)` raises) and mixing with host arrays, so host code that would fail on a
GPU fails here. `RawModule` sources are compiled by `host_cuda` as host C++ (all modules built
for one executable go into one library, on the first launch) and each launch checks what the
GPU would not: the argument count, every argument's type against the kernel's C signature, a
device array for every pointer, the block size and the dynamic shared memory limit.

Stream capture is emulated as a CUDA graph records: while a stream captures, every operation
that writes device memory (kernel launches with their arguments as they were, fills, copies,
matmuls) is recorded instead of run, and `Graph.launch` replays them in order; host<->device
copies and syncs during capture raise, as CUDA refuses them. So does an operation that
allocates a new array (argmax without `out=`, a comparison, a matmul into a non-contiguous
`out`, which CuPy computes in a temporary): memory taken from CuPy's pool during capture goes
back to the pool when Python drops the array, while the graph keeps writing to it, so a step
meant for capture must allocate nothing.

Not emulated: cuBLAS (matmul is numpy's), NVRTC itself (`test_nvcc.py` compiles every kernel
with nvcc), concurrency between streams (all work runs in call order), and timing.
"""
from __future__ import annotations

import collections
import itertools
import sys
import types
from typing import ClassVar

import numpy as np

from tests.gpu import host_cuda

# NOTE: CUDA's default limit; more dynamic shared memory needs cudaFuncSetAttribute
SHARED_LIMIT = 48 * 1024
MAX_THREADS = 1024

_SCALAR = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64,
           "float": np.float32, "double": np.float64, "bool": np.bool_,
           "unsigned int": np.uint32, "signed char": np.int8, "unsigned char": np.uint8}
_POINTEE = {"float": "float32", "double": "float64", "int": "int32", "long long": "int64",
            "unsigned long long": "uint64", "bool": "bool", "signed char": "int8",
            "unsigned char": "uint8", "unsigned int": "uint32"}


class MemoryPointer:
    def __init__(self, ptr: int):
        self.ptr = ptr


class Flags:
    def __init__(self, a: np.ndarray):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata


def matmul_reads_in_place(x, nd: int) -> bool:
    """Does cupy.matmul hand operand `x` of an `nd`-dimensional product to cuBLAS as it is?
    In two dimensions cuBLAS reads a C- or an F-ordered matrix (a plain transpose); a batched
    product makes each operand C-contiguous first. Anything else (a reversed or stepped view,
    a column slice, a transposed batch, a broadcast) CuPy copies into a temporary it
    allocates on every call (`_mat_to_cublas_contiguous`, `ascontiguousarray` in
    cupy/_core/_routines_linalg.pyx)."""
    flags = x.flags
    return flags.c_contiguous or (nd <= 2 and flags.f_contiguous)


def _host(x, what: str):
    """The numpy array behind a device array, a scalar as is; a host array is an error."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and x.ndim > 0:
        raise TypeError(f"fake cupy: {what} got a host numpy array {x.shape} (CuPy does not "
                        "move host arrays implicitly)")
    if isinstance(x, (list, tuple)):
        return type(x)(_host(v, what) for v in x)
    return x


def _wrap(a):
    return ndarray(a) if isinstance(a, np.ndarray) else a


_CAPTURE: list | None = None   # the operations a capturing stream records, or None


def _effect(run) -> None:
    """A device operation that writes memory: run now, or recorded while a stream captures."""
    COUNTS["device_operations"] += 1
    if _CAPTURE is None:
        run()
    else:
        _CAPTURE.append(run)


def _new(compute):
    """A device operation returning a new array (refused while a stream captures)."""
    _no_capture("a new device array allocated")
    COUNTS["device_operations"] += 1
    return ndarray(np.asarray(compute()))   # NOTE: CuPy's 0-d results are device arrays too


def _no_capture(what: str) -> None:
    if _CAPTURE is not None:
        raise RuntimeError(f"fake cupy: {what} while a stream is capturing (CUDA refuses it)")


class ndarray:
    """A device array: a numpy array the host may not read implicitly."""
    __array_ufunc__ = None   # NOTE: makes numpy's operators and ufuncs refuse it

    def __init__(self, a: np.ndarray):
        self._a = a

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    strides = property(lambda self: self._a.strides)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: Flags(self._a))
    data = property(lambda self: MemoryPointer(self._a.ctypes.data))
    T = property(lambda self: ndarray(self._a.T))

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "strides": self.strides,
                "data": (self._a.ctypes.data, False), "version": 3}

    def __array__(self, *_, **__):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"fake_cupy.ndarray({self._a!r})"

    def get(self):
        _no_capture("a device-to-host copy")
        COUNTS["to_host"] += 1
        return self._a.copy()

    def set(self, arr):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, not {type(arr)}")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if self.dtype != arr.dtype:
            raise TypeError(f"{self.dtype} array cannot be set to {arr.dtype} array")
        if not self._a.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        _no_capture("a host-to-device copy")
        COUNTS["to_device"] += 1
        self._a[...] = arr

    def view(self, dtype):
        return ndarray(self._a.view(dtype))

    def reshape(self, *shape):
        a = self._a.reshape(*shape)
        # NOTE: a reshape is a view or a fresh copy, so overlapping bounds tell them apart
        return ndarray(a) if np.may_share_memory(a, self._a) else \
            _new(lambda: self._a.reshape(*shape))

    def transpose(self, *axes):
        return ndarray(self._a.transpose(*axes))

    def astype(self, dtype, copy=True):
        return _new(lambda: self._a.astype(dtype))

    def copy(self):
        return _new(self._a.copy)

    def fill(self, value):
        value = _host(value, "fill")
        _effect(lambda: self._a.fill(value))

    def __getitem__(self, idx):
        return _wrap(self._a[_host(idx, "indexing")])

    def __setitem__(self, idx, value):
        idx, value = _host(idx, "indexing"), _host(value, "__setitem__")
        _effect(lambda: self._a.__setitem__(idx, value))

    def __int__(self):
        return int(self.get())

    def __float__(self):
        return float(self.get())

    def __bool__(self):
        return bool(self.get())


def _ufunc(f):
    def call(*args, out=None, **kw):
        args = _host(args, f.__name__)
        if out is None:
            return _new(lambda: f(*args, **kw))
        host_out = _host(out, f.__name__)
        _effect(lambda: f(*args, out=host_out, **kw))
        return out
    call.__name__ = f.__name__
    return call


for _name, _f in (("__add__", np.add), ("__sub__", np.subtract), ("__mul__", np.multiply),
                  ("__truediv__", np.divide), ("__eq__", np.equal), ("__ne__", np.not_equal),
                  ("__lt__", np.less), ("__le__", np.less_equal), ("__gt__", np.greater),
                  ("__ge__", np.greater_equal), ("__neg__", np.negative)):
    setattr(ndarray, _name, _ufunc(_f))
ndarray.__hash__ = None


def _module():
    m = types.ModuleType("cupy")
    m.__version__ = "0+host-emulation"
    m.ndarray = ndarray
    for name in ("uint8", "int8", "int32", "int64", "uint32", "uint64", "float32", "float64",
                 "bool_", "dtype"):
        setattr(m, name, getattr(np, name))
    for name in ("add", "subtract", "multiply", "divide", "maximum", "equal", "exp", "negative"):
        setattr(m, name, _ufunc(getattr(np, name)))

    def empty(shape, dtype=float):
        _no_capture("a new device array allocated")
        return ndarray(np.empty(shape, dtype))
    m.empty = empty
    m.zeros = lambda shape, dtype=float: _new(lambda: np.zeros(shape, dtype))
    m.full = lambda shape, value, dtype=None: _new(lambda: np.full(shape, value, dtype))
    m.arange = lambda *a, **kw: _new(lambda: np.arange(*a, **kw))

    def asarray(a, dtype=None):
        if isinstance(a, ndarray):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        _no_capture("a host-to-device copy")
        COUNTS["to_device"] += 1
        return ndarray(np.array(a, dtype=dtype))
    m.asarray = m.array = asarray

    def asnumpy(a):
        return a.get() if isinstance(a, ndarray) else np.asarray(a)
    m.asnumpy = asnumpy

    def matmul(a, b, out=None):
        if out is not None and not out.flags.c_contiguous:
            # NOTE: CuPy computes into a temporary and copies it into a non-contiguous out
            _no_capture("a matmul into a non-contiguous out (a temporary)")
        nd = max(a.ndim, b.ndim)
        if any(not matmul_reads_in_place(x, nd) for x in (a, b)):
            _no_capture("a matmul of a strided operand (CuPy copies it into a temporary)")
        if nd > 2 and a.shape[:-2] != b.shape[:-2]:
            _no_capture("a broadcast batched matmul (CuPy allocates its pointer tables)")
        return _ufunc(np.matmul)(a, b, out=out)
    m.matmul = matmul

    def copyto(dst, src, casting="same_kind"):
        dst, src = _host(dst, "copyto"), _host(src, "copyto")
        _effect(lambda: np.copyto(dst, src, casting=casting))
    m.copyto = copyto

    m.ascontiguousarray = lambda a: a if a.flags.c_contiguous else _new(
        lambda: np.ascontiguousarray(_host(a, "ascontiguousarray")))
    m.transpose = lambda a, axes=None: ndarray(np.transpose(_host(a, "transpose"), axes))
    m.broadcast_to = lambda a, shape: ndarray(np.broadcast_to(_host(a, "broadcast_to"), shape))

    def concatenate(tup, axis=0, out=None):
        xs = _host(list(tup), "concatenate")
        if len(xs) > 8:  # NOTE: CuPy then uploads a table of the arrays' pointers, every call
            _no_capture("a host-to-device copy (concatenate's pointer table)")
            COUNTS["to_device"] += 1
        if out is None:
            return _new(lambda: np.concatenate(xs, axis=axis))
        host_out = _host(out, "concatenate")
        _effect(lambda: np.concatenate(xs, axis=axis, out=host_out))
        return out
    m.concatenate = concatenate

    def reduction(f):
        def call(a, axis=None, out=None, keepdims=False):
            a = _host(a, f.__name__)
            if out is None:
                return _new(lambda: f(a, axis=axis, keepdims=keepdims))
            host_out = _host(out, f.__name__)
            _effect(lambda: f(a, axis=axis, keepdims=keepdims, out=host_out))
            return out
        return call
    m.max = m.amax = reduction(np.max)
    m.sum = reduction(np.sum)

    def argmax(a, axis=None, out=None):
        a = _host(a, "argmax")
        if out is None:
            return _new(lambda: np.argmax(a, axis=axis))
        if out.dtype != np.int64:
            raise TypeError(f"fake cupy: argmax into {out.dtype} (its results are int64)")
        host_out = _host(out, "argmax")
        _effect(lambda: np.argmax(a, axis=axis, out=host_out))
        return out
    m.argmax = argmax

    m.RawModule = RawModule
    m.cuda = _cuda_namespace()
    return m


# *** kernels: RawModule sources compiled as host C++ ***

class _Compiler:
    """Builds the modules made since the last launch into one library (one compiler run per
    executable rather than per kernel)."""

    def __init__(self, host_cxx, directory):
        self.host_cxx, self.directory = host_cxx, directory
        self.pending: list[RawModule] = []
        self.libraries = 0
        self._stems = itertools.count()

    def flush(self):
        modules, self.pending = self.pending, []
        lib = host_cuda.build_modules(self.host_cxx, self.directory, f"mods{next(self._stems)}",
                                      [m.code for m in modules])
        self.libraries += 1
        for i, m in enumerate(modules):
            m._lib, m._index = lib, i


_COMPILER: _Compiler | None = None
# NOTE: since `install`: host<->device copies ("to_host", each one a sync on a GPU, and
# "to_device") and "device_operations" (launches, fills, copies, matmuls: issued, or captured)
COUNTS: collections.Counter = collections.Counter()


class RawModule:
    def __init__(self, code: str, options=(), **_):
        self.code, self.options = code, tuple(options)
        self.signatures = host_cuda.signatures(code)
        self._lib = None
        _COMPILER.pending.append(self)

    def get_function(self, name: str):
        if name not in self.signatures:
            raise RuntimeError(f"fake cupy: no kernel {name!r} in the module "
                               f"(it defines {sorted(self.signatures)})")
        return RawKernel(self, name)


class RawKernel:
    def __init__(self, module: RawModule, name: str):
        self.module, self.name = module, name
        self.ptypes = module.signatures[name]

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        grid, block = _dim(grid, "grid"), _dim(block, "block")
        if not 1 <= block <= MAX_THREADS:
            raise ValueError(f"{self.name}: block of {block} threads (1..{MAX_THREADS})")
        if grid < 1:
            raise ValueError(f"{self.name}: grid of {grid} blocks")
        if not 0 <= shared_mem <= min(SHARED_LIMIT, host_cuda.SMEM_BYTES):
            raise ValueError(f"{self.name}: {shared_mem} bytes of dynamic shared memory")
        host_args = _checked_args(self.name, self.ptypes, args)
        if self.module._lib is None:
            _COMPILER.flush()
        lib, symbol = self.module._lib, f"m{self.module._index}_{self.name}"
        # NOTE: a captured launch keeps these arguments, as a CUDA graph's kernel node does
        _effect(lambda: host_cuda.launch(lib, symbol, grid, block, host_args))


def _dim(d, what: str) -> int:
    if not isinstance(d, tuple):  # NOTE: CuPy's Function.__call__ types grid and block as tuple
        raise TypeError(f"fake cupy: {what} must be a tuple, not {type(d).__name__}")
    if any(not isinstance(v, (int, np.integer)) for v in d) or any(int(v) != 1 for v in d[1:]):
        raise TypeError(f"fake cupy: {what} {d} (the emulation launches 1-d grids only)")
    return int(d[0])


def _checked_args(name: str, ptypes: list[str], args) -> list:
    if not isinstance(args, tuple):
        raise TypeError(f"{name}: kernel arguments must be a tuple, not {type(args).__name__}")
    if len(args) != len(ptypes):
        raise TypeError(f"{name}: {len(args)} arguments for {len(ptypes)} parameters")
    out = []
    for i, (t, x) in enumerate(zip(ptypes, args)):
        t = " ".join(t.replace("__restrict__", "").replace("const", "").split())
        if t.endswith("*"):
            if not isinstance(x, ndarray):
                raise TypeError(f"{name} argument {i} ({t}): {type(x).__name__} for a pointer")
            pointee = t[:-1].strip()
            want = "uint64" if pointee.endswith("*") else _POINTEE[pointee]  # a pointer table
            if x.dtype != np.dtype(want):
                raise TypeError(f"{name} argument {i} ({t}): a {x.dtype} array")
            if x.size and x.data.ptr % x.itemsize:  # NOTE: a misaligned load faults on a GPU
                raise ValueError(f"{name} argument {i} ({t}): address {x.data.ptr:#x} is not "
                                 f"aligned to {x.itemsize} bytes")
            out.append(x._a)
        else:
            want = _SCALAR[t]
            # NOTE: CuPy passes a numpy scalar by value at its own width, whatever the
            # parameter's type: a mismatch is a silent wrong argument on a GPU
            if not isinstance(x, np.generic) or x.dtype != np.dtype(want):
                raise TypeError(f"{name} argument {i} ({t}): {type(x).__name__} "
                                f"{getattr(x, 'dtype', '')}, not a numpy {np.dtype(want)}")
            out.append(x)
    return out


# *** the cupy.cuda namespace ***

class _Stream:
    def __init__(self, non_blocking=False, null=False):
        self.null = null

    def synchronize(self):
        _no_capture("a stream sync")

    def __enter__(self):
        _STREAMS.append(self)
        return self

    def __exit__(self, *exc):
        _STREAMS.pop()
        return False

    def begin_capture(self, mode=None):
        global _CAPTURE
        if self.null:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if _CAPTURE is not None:
            raise RuntimeError("fake cupy: a stream is capturing already")
        _CAPTURE = []

    def end_capture(self):
        global _CAPTURE
        if _CAPTURE is None:
            raise RuntimeError("fake cupy: end_capture without begin_capture")
        graph, _CAPTURE = _Graph(_CAPTURE), None
        return graph


class _Graph:
    def __init__(self, ops: list):
        self.ops = ops

    def launch(self, stream=None):
        _no_capture("a graph launch")
        for op in self.ops:
            op()


class _Device:
    # NOTE: one multiprocessor: grid-stride loops get few blocks and go round many times
    attributes: ClassVar[dict] = {"MultiProcessorCount": 1, "MaxThreadsPerBlock": MAX_THREADS,
                                  "MaxSharedMemoryPerBlock": SHARED_LIMIT}

    def __init__(self, device=0):
        self.id = device

    def synchronize(self):
        _no_capture("a device sync")


_STREAMS: list[_Stream] = [_Stream(null=True)]


def _cuda_namespace():
    cuda = types.SimpleNamespace()
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                         runtimeGetVersion=lambda: 0)
    cuda.Device = _Device
    cuda.Stream = _Stream
    cuda.Graph = _Graph
    cuda.get_current_stream = lambda: _STREAMS[-1]
    return cuda


def install(monkeypatch, host_cxx: list[str], directory):
    """Makes `import cupy` give the host stand-in, with a fresh CuPy backend, for one test."""
    global _COMPILER
    from nnlang.backends import base, cupy_backend
    _COMPILER = _Compiler(host_cxx, directory)
    COUNTS.clear()
    monkeypatch.setattr(sys.modules[__name__], "_CAPTURE", None)
    del _STREAMS[1:]
    module = _module()
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(cupy_backend, "_BACKEND", None)
    monkeypatch.delitem(base._BACKENDS, "cupy", raising=False)
    return module
