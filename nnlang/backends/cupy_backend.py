"""The NVIDIA GPU backend: generated CUDA kernels (`codegen/render_cuda.py`) compiled through
CuPy's NVRTC (`cupy.RawModule`, which keeps its own on-disk cache keyed by source and
options), GEMMs through cuBLAS (`cupy.matmul`), and the library primitives' CUDA lowerings
(in their registry entries, `ops/`) compiled and launched here.

CuPy is imported lazily: importing nnlang, or the numba backend, never needs it, and asking
for `backend="cupy"` without CuPy or without a device is an `NNError` (`require_cupy`).
Parameters and optimizer slots stay on the device; a step copies the fed batch up and only
its results (the loss and metrics) down. A render-only backend (`CupyBackend(render_only=True)`)
needs neither: it renders every kernel it is given on host stand-in arrays and compiles nothing
(`--emit kernels`, and the nvcc and host-harness checks of `tests/gpu/`).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from contextlib import nullcontext

import numpy as np

from nnlang.backends.aligned import aligned_zeros
from nnlang.backends.base import Call, State, library_call
from nnlang.codegen.render_cuda import (CTYPES, PRELUDE, CudaSource, LaunchInfo, launch_config,
                                        multi_tensor, render)
from nnlang.errors import NNError
from nnlang.ir.graph import Node
from nnlang.passes.schedule import apply_view

VERSION = "nnlang-cuda-0.1"
OPTIONS = ("-std=c++17",)
_INT32_MAX = (1 << 31) - 1
_LIBRARY_BLOCK = 256
_FAULTS = 256   # fault flags per device block (`CupyBackend.fault_flag`)
_RENDER_BLOCKS = 1024   # a render-only backend's stand-in for the device's SM count * 32


def require_cupy():
    """The `cupy` module, or an NNError saying what is missing (the package or a device)."""
    try:
        import cupy
    except ImportError as e:
        raise NNError(f"the cupy backend needs CuPy, which is not installed ({e})",
                      hint="pip install 'nnlang[gpu]' (a cupy-cudaXXx wheel matching your "
                           "CUDA driver), or use --backend numba") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # NOTE: CUDARuntimeError without a driver, ImportError without libs
        raise NNError(f"the cupy backend found no usable NVIDIA GPU: {e}",
                      hint="check nvidia-smi, or use --backend numba") from None
    if count < 1:
        raise NNError("the cupy backend found no NVIDIA GPU", hint="use --backend numba")
    return cupy


class CudaFunction:
    """A compiled generated kernel (None when only rendered) and what its launcher needs."""

    def __init__(self, kernel, info: LaunchInfo):
        self.kernel, self.info = kernel, info


def _launch(kernel, grid, block, args, smem):
    kernel((grid,), (block,), args, shared_mem=smem)


def _launch_multi(kernel, grid, block, args, _keep):
    kernel((grid,), (block,), args)


def _noop(*_):
    pass


def _matmul(cp, a, b, out):
    cp.matmul(a, b, out=out)


def _matmul_via(cp, a, b, scratch, out):
    cp.matmul(a, b, out=scratch)
    cp.copyto(out, scratch)


def _matmul_staged(cp, staged, matmul, args):
    for dst, src in staged:
        cp.copyto(dst, src)
    matmul(*args)


def _cublas_reads(x, nd: int) -> bool:
    """Does cupy.matmul pass operand `x` of an `nd`-dimensional product to cuBLAS as it is? In
    two dimensions cuBLAS reads a C- or F-ordered matrix (a plain transpose); a batched product
    makes each operand C-contiguous first (cupy/_core/_routines_linalg.pyx)."""
    return x.flags.c_contiguous or (nd <= 2 and x.flags.f_contiguous)


def _use_graphs() -> bool:
    """NNLANG_CUDA_GRAPH=1: a step's launches are captured once and replayed (`_Launcher`)."""
    return os.environ.get("NNLANG_CUDA_GRAPH") == "1"


def _cannot_run():
    raise NNError("internal: a render-only executable cannot run")


class CupyBackend:
    name, target = "cupy", "cuda"
    prelude = PRELUDE

    def __init__(self, render_only: bool = False):
        self.render_only = render_only
        self._modules: dict[str, object] = {}
        self.compiled = 0
        # what a render-only backend was given: every generated kernel (in build order) and
        # every library kernel (name -> source)
        self.rendered: list[CudaSource] = []
        self.library: dict[str, str] = {}
        # an INDEX op's id past its table: a kernel cannot raise, so it sets its fault flag
        # (one int64 per lowered call, in blocks of _FAULTS) and `results`/`read_all` raise
        self._fault_blocks: list = []
        self._faults: list[tuple] = []   # (rows, node, text) per flag, in order
        self._unclaimed: list[int] = []   # flags of the call being lowered, before `located`
        if render_only:
            self.cp = self.xp = np
            self.max_blocks = _RENDER_BLOCKS
            return
        self.cp = self.xp = require_cupy()
        dev = self.cp.cuda.Device()
        # NOTE: grid-stride loops need no more blocks than keep every SM busy
        self.max_blocks = dev.attributes["MultiProcessorCount"] * 32

    # *** where arrays live ***
    def alloc(self, nbytes: int):
        return self.cp.empty(max(nbytes, 1), self.cp.uint8)

    def upload(self, dst, src) -> None:
        host = np.array(np.broadcast_to(np.asarray(src), dst.shape), dst.dtype, order="C")
        dst.set(host)

    def download(self, src) -> np.ndarray:
        return self.cp.asnumpy(src)

    def to_device(self, host: np.ndarray):
        return self.cp.asarray(host)

    def sync(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()

    def state_array(self, shared: dict, name: str, shape, dtype):
        """The caller's device array when it fits; a host array in `shared` is uploaded once
        and the entry replaced by the device array, which the model's next executable (eval,
        predict) then takes as is."""
        if self.render_only:  # NOTE: the caller's state is left alone
            return aligned_zeros(shape, dtype)
        cp = self.cp
        given = shared.get(name)
        if isinstance(given, cp.ndarray) and given.shape == shape and given.dtype == dtype \
                and given.flags.c_contiguous:
            return given
        host = np.zeros(shape, dtype) if given is None else np.array(
            np.broadcast_to(cp.asnumpy(given), shape), dtype, order="C")
        shared[name] = dev = cp.asarray(host)
        return dev

    def state(self, arrays: dict) -> State:
        return State(arrays) if self.render_only else DeviceState(arrays)

    def const_array(self, value, dtype):
        return self.to_device(np.asarray(value, dtype=dtype))

    def view(self, node, base):
        return apply_view(node, base) if self.render_only else _view(self.cp, node, base)

    @staticmethod
    def reshape(a, shape):
        return a.reshape(shape)

    def pointer_table(self, arrays):
        """The device addresses of contiguous arrays, as a device table a kernel reads."""
        if not all(x.flags.c_contiguous for x in arrays):
            raise NNError("internal: a kernel's pointer table holds a non-contiguous array")
        ptrs = [x.ctypes.data if self.render_only else x.data.ptr for x in arrays]
        return self.to_device(np.array(ptrs, np.uint64))

    # *** generated kernels ***
    def _module(self, source: str):
        key = hashlib.sha256(f"{VERSION}\n{source}".encode()).hexdigest()[:24]
        if key not in self._modules:
            self._modules[key] = self.cp.RawModule(code=source, options=OPTIONS)
            self.compiled += 1
        return self._modules[key]

    def compile(self, source: str, name: str) -> CudaFunction:
        kernel = None if self.render_only else self._module(source).get_function(name)
        return CudaFunction(kernel, LaunchInfo.parse(source))

    def kernel_call(self, kernel, loop_shape: tuple, arrays: list):
        header, body = render(kernel, loop_shape)
        self.rendered.append(CudaSource(kernel, tuple(loop_shape), header, body))
        return (header, body), self.specialize(self.compile(body, kernel.name),
                                               (*loop_shape, *arrays))

    def multi_call(self, kernels: list, sizes: list[int], arrays: list[list]):
        """One launch over every member tensor (`render_cuda.MultiTensor`)."""
        multi = multi_tensor(kernels)
        if multi is None:
            return None
        header, body = render(multi)
        self.rendered.append(CudaSource(multi, tuple(sizes), header, body))
        call = self.specialize_multi(self.compile(body, multi.name), sizes, arrays)
        return (header, body), call, None

    def together(self):
        return nullcontext()

    @staticmethod
    def resolved(call: Call) -> Call:
        return call

    def specialize(self, fn: CudaFunction, args: tuple) -> Call:
        """args as the numba backend takes them: loop sizes, loads (ranked), outputs."""
        info = fn.info
        sizes = [int(s) for s in args[:info.rank]]
        loads = args[info.rank:info.rank + info.loads]
        outs = args[info.rank + info.loads:]
        grid, block, smem = launch_config(info, sizes, self.max_blocks)
        if grid == 0:
            return _noop, ()
        # NOTE: the last grid-stride step (e + grid * block) must fit the 32-bit index too:
        # past INT_MAX it wraps negative and the loop writes before the buffer
        if int(np.prod(sizes)) + grid * block > _INT32_MAX + 1:
            raise NNError(f"a kernel loops over {sizes} = {int(np.prod(sizes)):,} elements; "
                          f"with its grid stride ({grid * block:,}) that passes 2**31, beyond "
                          "the 32-bit indices of generated CUDA kernels",
                          hint="a smaller batch (--batch), or smaller layers, keeps each tensor "
                          "under 2**31 elements")
        flat: list = [np.int32(s) for s in sizes]
        reduced = outs[-1:] if info.reduce_axes else ()
        strided = (*loads, *outs[:len(outs) - len(reduced)])
        # NOTE: so must each array's element offset, sum of i * stride: a view into a larger
        # buffer (a slice of a concat, one step of a sequence) reaches past 2**31 elements
        # with a small loop, and a stride past it did not even fit its int32 argument
        reach = max((sum((n - 1) * abs(st // x.itemsize) for n, st in zip(sizes, x.strides))
                     for x in strided), default=0)
        if reach > _INT32_MAX:
            raise NNError(f"a kernel loops over {sizes} in a view whose elements lie "
                          f"{reach:,} apart, past 2**31, beyond the 32-bit indices of "
                          "generated CUDA kernels",
                          hint="a smaller batch (--batch), or smaller layers, keeps each tensor "
                          "under 2**31 elements")
        for x in strided:
            flat.append(x)
            # NOTE: an axis of size 1 is never stepped along: its stride (a one-row view of
            # rows 2**31 apart) is no index, and did not fit its int32 argument (a traceback)
            flat += [np.int32(st // x.itemsize if n > 1 else 0) for n, st in zip(sizes, x.strides)]
        for x in reduced:  # NOTE: indexed by the flat kept index
            if not x.flags.c_contiguous:
                raise NNError("internal: a reduction's output is not contiguous")
            flat.append(x)
        return _launch, (fn.kernel, grid, block, tuple(flat), smem)

    def specialize_multi(self, fn: CudaFunction, sizes: list[int], members: list[list]) -> Call:
        """A multi-tensor launch (`render_cuda.MultiTensor`): `members` holds each tensor's
        arrays as `specialize` takes them (loads, then outputs), all contiguous vectors or
        single elements. The pointer tables are uploaded once, here, not per step."""
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        grid, block, _ = launch_config(fn.info, [int(starts[-1])], self.max_blocks)
        if grid == 0:
            return _noop, ()
        tables = [self.pointer_table(column) for column in zip(*members)]
        args = (np.int32(len(sizes)), self.to_device(starts), *tables)
        # NOTE: the members ride along so the arrays the tables point into stay alive
        return _launch_multi, (fn.kernel, grid, block, args, members)

    # *** library primitives: their CUDA lowerings live in the op's registry entry (`ops/`) ***
    def library_call(self, node: Node, inputs: list, out) -> Call:
        return library_call(self, node, inputs, out)

    def fault_flag(self, rows: int, text: str | None = None):
        """A zeroed device int64 that a library kernel sets when an id falls outside its
        table of `rows` rows; `located` names the op it belongs to. `text`: the error to say
        then, when it is not a table's ("an index is out of bounds ...")."""
        at = len(self._faults)
        if at % _FAULTS == 0:
            self._fault_blocks.append(self.xp.zeros(_FAULTS, np.int64))
        self._faults.append((rows, None, text))
        self._unclaimed.append(at)
        return self._fault_blocks[-1][at % _FAULTS:at % _FAULTS + 1]

    def located(self, node: Node, call: Call) -> Call:
        for at in self._unclaimed:
            self._faults[at] = (self._faults[at][0], node, self._faults[at][2])
        self._unclaimed.clear()
        return call

    def _raise_faults(self, got=None) -> None:
        """The located error of the first call whose kernel met an id past its table (the
        flags cleared, so the next call runs clean). `got`: the flags downloaded already."""
        if not self._faults or self.render_only:
            return
        if got is None:
            got = self.cp.asnumpy(self.cp.concatenate(self._fault_blocks))
        if not got.any():
            return
        from nnlang.ops.index import index_error
        at = int(np.flatnonzero(got)[0])
        for block in self._fault_blocks:
            block.fill(0)
        rows, node, text = self._faults[at]
        raise index_error(node, IndexError(
            text or f"an index is out of bounds for axis 0 with size {rows}"))

    def gemm(self, a, b, out) -> Call:
        cp, nd, staged = self.cp, max(a.ndim, b.ndim), []
        # NOTE: cupy.matmul copies an operand cuBLAS cannot read as it is (a reversed or
        # stepped view, a column slice, a transposed batch) into a temporary it allocates per
        # call, as it does for a strided out (a concat piece in place): memory a captured CUDA
        # graph keeps writing after the pool has handed it on. For a captured step these
        # scratch arrays are made once, here, and filled by a copy in the step; plain launches
        # leave the copy to CuPy, whose pool takes the memory back between steps
        if _use_graphs() and not _cublas_reads(a, nd):
            a = self._staged(a, staged)
        if _use_graphs() and not _cublas_reads(b, nd):
            b = self._staged(b, staged)
        if not out.flags.c_contiguous:
            call = _matmul_via, (cp, a, b, cp.empty(out.shape, out.dtype), out)
        else:
            call = _matmul, (cp, a, b, out)
        return (_matmul_staged, (cp, staged, *call)) if staged else call

    def _staged(self, x, staged: list):
        scratch = self.cp.empty(x.shape, x.dtype)
        staged.append((scratch, x))
        return scratch

    def allreduce(self, src, out) -> Call:
        """out = src summed over the ranks' GPUs: NCCL on the step's stream, so a captured step
        keeps it (`backends/collective.py`)."""
        from nnlang.backends.collective import current, init
        return (current() or init()).gpu_allreduce_call(self.cp, src, out)

    @staticmethod
    def ctype(dtype: str) -> str:
        return CTYPES[dtype]

    def library_kernel(self, name: str, source: str):
        """A lowering's CUDA kernel `name` compiled from `source` (recorded when render-only)."""
        if self.render_only:
            self.library.setdefault(name, source)
            return None
        return self._module(source).get_function(name)

    def launch(self, kernel, total: int, args: tuple, keep=None) -> Call:
        """A launch of a library kernel with one thread per element of `total` (a grid-stride
        loop); `keep`: what the kernel reaches through a pointer table, kept alive."""
        grid = max(1, min(-(-total // _LIBRARY_BLOCK), self.max_blocks))
        if keep is not None:
            return _launch_multi, (kernel, grid, _LIBRARY_BLOCK, args, keep)
        return _launch, (kernel, grid, _LIBRARY_BLOCK, args, 0)

    # *** running a step ***
    @staticmethod
    def threaded_blas(products: list) -> bool:
        return False

    @staticmethod
    def splits(calls: list[Call]) -> bool:
        return False

    def launcher(self, calls: list[Call], updates: list, threaded: bool):
        """With NNLANG_CUDA_GRAPH=1 the steady-state calls are captured once into a CUDA graph
        and replayed (experimental: falls back to plain launches if capture fails)."""
        if self.render_only:
            return _cannot_run
        return _Launcher(self, calls, updates, _use_graphs())

    def results(self, named: list, fetch: bool) -> dict:
        if not fetch:  # NOTE: device copies, since the next call overwrites the buffers
            return {k: v.copy() for k, v in named}
        out = {k: self.cp.asnumpy(v) for k, v in named}
        self._raise_faults()
        return out

    def read_all(self, results: list[dict]) -> list[dict]:
        """Device results of several calls downloaded in one transfer (one sync): their bytes
        concatenated on the device, split again on the host."""
        cp = self.cp
        flat = [v for r in results for v in r.values() if isinstance(v, cp.ndarray)]
        # NOTE: the fault flags come down in the same transfer, first
        faults = self._fault_blocks if self._faults else []
        if not flat and not faults:
            return results
        raw = cp.asnumpy(cp.concatenate([cp.ascontiguousarray(v).reshape(-1).view(cp.uint8)
                                         for v in (*faults, *flat)]))
        at = sum(f.nbytes for f in faults)
        self._raise_faults(raw[:at].view(np.int64))
        out = []
        for r in results:
            host = {}
            for k, v in r.items():
                if isinstance(v, cp.ndarray):
                    host[k] = raw[at:at + v.nbytes].view(v.dtype).reshape(v.shape)
                    at += v.nbytes
                else:
                    host[k] = v
            out.append(host)
        return out


class _Launcher:
    """One step's launches on the device, replayed from a captured CUDA graph when asked."""

    def __init__(self, backend: CupyBackend, calls, updates, use_graph: bool):
        self.backend, self.cp = backend, backend.cp
        self.calls, self.updates = calls, updates
        self._use_graph, self._graph, self._runs = use_graph, None, 0

    def _launch_all(self):
        for fn, args in self.calls:
            fn(*args)
        for dst, src in self.updates:
            self.cp.copyto(dst, src)

    def _capture(self):
        stream = self.cp.cuda.Stream(non_blocking=True)
        try:
            with stream:
                stream.begin_capture()
                try:
                    self._launch_all()
                finally:
                    graph = stream.end_capture()
            self._graph = graph
        except Exception as e:  # NOTE: e.g. a library call that syncs or allocates
            warnings.warn(f"CUDA graph capture failed, launching kernels one by one: {e}")
            self._use_graph = False

    def __call__(self):
        self._runs += 1
        if self._use_graph and self._graph is None and self._runs >= 2:
            self.backend.sync()
            self._capture()
        if self._graph is not None:
            # NOTE: replayed on the current stream, so it follows this call's uploads as plain
            # launches do (capture itself needs a stream of its own)
            self._graph.launch(stream=self.cp.cuda.get_current_stream())
        else:
            self._launch_all()


class DeviceState(State):
    """Parameters and optimizer slots on the device; setting uploads into the existing array."""

    def __setitem__(self, name, value):
        if name not in self._arrays:
            raise KeyError(f"no state named {name!r}")
        dst = self._arrays[name]
        if hasattr(value, "__cuda_array_interface__"):
            dst[...] = value
        else:
            dst.set(np.array(np.broadcast_to(np.asarray(value), dst.shape), dst.dtype, order="C"))


def _view(cp, node, x):
    """`schedule.apply_view` for CuPy arrays (the same views: `find_views` chose them)."""
    a = node.attrs
    shape = [int(d) for d in node.shape]
    if node.op == "reshape":
        y = x.reshape(shape)
        if not (y.data.ptr == x.data.ptr and y.size == x.size):
            raise NNError("internal: a planned view became a copy on the device")
        return y
    if node.op == "transpose":
        return x.transpose(a["perm"])
    if node.op == "broadcast_to":
        return cp.broadcast_to(x, shape)
    idx = [slice(None)] * x.ndim
    idx[a["axis"] % x.ndim] = slice(a["start"], a["stop"], a["step"])
    return x[tuple(idx)]

_BACKEND: CupyBackend | None = None


def get_backend() -> CupyBackend:
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = CupyBackend()
    return _BACKEND


__all__ = ["CupyBackend", "DeviceState", "get_backend", "require_cupy"]
