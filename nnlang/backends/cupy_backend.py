"""The NVIDIA GPU backend: generated CUDA kernels (`codegen/render_cuda.py`) compiled through
CuPy's NVRTC (`cupy.RawModule`, which keeps its own on-disk cache keyed by source and
options), GEMMs through cuBLAS (`cupy.matmul`), and the other library ops as CuPy calls or the
small kernels of `backends/cuda_kernels.py`.

CuPy is imported lazily: importing nnlang, or the numba backend, never needs it, and asking
for `backend="cupy"` without CuPy or without a device is an `NNError` (`require_cupy`).
Parameters and optimizer slots stay on the device; a step copies the fed batch up and only
its results (the loss and metrics) down.
"""
from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np

from nnlang.backends import cuda_kernels as ck
from nnlang.backends.base import Call
from nnlang.backends.blas import run_in_order
from nnlang.backends.windows import (as_2d, fold_call, ints_2d, unfold_call,
                                     window_max_call, window_max_grad_call)
from nnlang.codegen.render_cuda import LaunchInfo, launch_config, multi_tensor, render
from nnlang.errors import NNError
from nnlang.ir.graph import Node, op_attrs
from nnlang.ops.random import MASK64
from nnlang.runtime.executable import Executable, State

VERSION = "nnlang-cuda-0.1"
OPTIONS = ("-std=c++17",)
_INT32_MAX = (1 << 31) - 1


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
    """A compiled generated kernel and what its launcher needs to know."""

    def __init__(self, kernel, info: LaunchInfo):
        self.kernel, self.info = kernel, info


def _launch(kernel, grid, block, args, smem):
    kernel((grid,), (block,), args, shared_mem=smem)


def _launch_multi(kernel, grid, block, args, _members):
    kernel((grid,), (block,), args)


def _noop(*_):
    pass


class CupyBackend:
    name = "cupy"

    def __init__(self):
        self.cp = require_cupy()
        self._modules: dict[str, object] = {}
        self.compiled = 0
        dev = self.cp.cuda.Device()
        # NOTE: grid-stride loops need no more blocks than keep every SM busy
        self.max_blocks = dev.attributes["MultiProcessorCount"] * 32

    @property
    def executable(self):
        return CupyExecutable

    # *** memory ***
    def alloc(self, nbytes: int):
        return self.cp.empty(max(nbytes, 1), self.cp.uint8)

    def upload(self, dst, src) -> None:
        host = np.array(np.broadcast_to(np.asarray(src), dst.shape), dst.dtype, order="C")
        dst.set(host)

    def download(self, src) -> np.ndarray:
        return self.cp.asnumpy(src)

    def sync(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()

    def session(self, threads: int = 1, split: bool = False):
        from contextlib import nullcontext
        return nullcontext()

    # *** generated kernels ***
    def _module(self, source: str):
        key = hashlib.sha256(f"{VERSION}\n{source}".encode()).hexdigest()[:24]
        if key not in self._modules:
            self._modules[key] = self.cp.RawModule(code=source, options=OPTIONS)
            self.compiled += 1
        return self._modules[key]

    def compile(self, source: str, name: str) -> CudaFunction:
        return CudaFunction(self._module(source).get_function(name), LaunchInfo.parse(source))

    def specialize(self, fn: CudaFunction, args: tuple) -> Call:
        """args as the numba backend takes them: loop sizes, loads (ranked), outputs."""
        info = fn.info
        sizes = [int(s) for s in args[:info.rank]]
        loads = args[info.rank:info.rank + info.loads]
        outs = args[info.rank + info.loads:]
        grid, block, smem = launch_config(info, sizes, self.max_blocks)
        if grid == 0:
            return _noop, ()
        if int(np.prod(sizes)) > _INT32_MAX:
            raise NNError(f"a kernel loops over {sizes} = more than 2**31 elements, beyond the "
                          "32-bit indices of generated CUDA kernels")
        flat: list = [np.int32(s) for s in sizes]
        reduced = outs[-1:] if info.reduce_axes else ()
        for x in (*loads, *outs[:len(outs) - len(reduced)]):
            flat.append(x)
            flat += [np.int32(s // x.itemsize) for s in x.strides]
        for x in reduced:  # NOTE: indexed by the flat kept index
            if not x.flags.c_contiguous:
                raise NNError("internal: a reduction's output is not contiguous")
            flat.append(x)
        return _launch, (fn.kernel, grid, block, tuple(flat), smem)

    def specialize_multi(self, fn: CudaFunction, sizes: list[int], members: list[list]) -> Call:
        """A multi-tensor launch (`render_cuda.MultiTensor`): `members` holds each tensor's
        arrays as `specialize` takes them (loads, then outputs), all contiguous vectors or
        single elements. The pointer tables are uploaded once, here, not per step."""
        cp = self.cp
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        grid, block, _ = launch_config(fn.info, [int(starts[-1])], self.max_blocks)
        if grid == 0:
            return _noop, ()
        tables = []
        for column in zip(*members):  # one argument of every tensor
            if not all(x.flags.c_contiguous for x in column):
                raise NNError("internal: a multi-tensor kernel argument is not contiguous")
            tables.append(cp.asarray(np.array([x.data.ptr for x in column], np.uint64)))
        args = (np.int32(len(sizes)), cp.asarray(starts), *tables)
        # NOTE: the members ride along so the arrays the tables point into stay alive
        return _launch_multi, (fn.kernel, grid, block, args, members)

    def _library(self, name_source: tuple[str, str]):
        name, source = name_source
        return self._module(source).get_function(name)

    def _grid(self, total: int) -> int:
        return max(1, min(-(-total // 256), self.max_blocks))

    # *** library ops ***
    def library_call(self, node: Node, inputs: list, out) -> Call:
        a = op_attrs(node)
        make = getattr(self, f"_{node.op}", None)
        if make is None:
            raise NNError(f"op '{node.op}' has no CUDA lowering in the cupy backend",
                          span=node.span, hint="use --backend numba")
        return make(a, inputs, out)

    def _matmul(self, a, xs, out):
        return _matmul, (self.cp, xs[0], xs[1], out)

    def _gather(self, a, xs, out):
        table, idx = xs
        total = out.size
        width = total // max(idx.size, 1)
        k = self._library(ck.gather(str(table.dtype), str(idx.dtype)))
        return _launch, (k, self._grid(total), 256,
                         (np.int64(total), np.int64(width), np.int64(table.shape[0]), table, idx,
                          out), 0)

    def _scatter_add(self, a, xs, out):
        src, idx = xs
        total = src.size
        width = total // max(idx.size, 1)
        k = self._library(ck.scatter_add(str(src.dtype), str(idx.dtype)))
        args = (np.int64(total), np.int64(width), np.int64(out.shape[0]), src, idx, out)
        return _zero_then, (out, k, self._grid(total), 256, args, total)

    def _one_hot(self, a, xs, out):
        k = self._library(ck.one_hot(str(out.dtype), str(xs[0].dtype)))
        args = (np.int64(out.size), np.int64(a["depth"]), xs[0], out)
        return _launch, (k, self._grid(out.size), 256, args, 0)

    def _random_uniform(self, a, xs, out):
        k = self._library(ck.random_uniform())
        salt = np.uint64((a["salt"] * 0x9E3779B1) & MASK64)
        # NOTE: the key is read on the device (an int64 scalar, checked by the shape rule)
        return _launch, (k, self._grid(out.size), 256, (np.int64(out.size), xs[0], salt, out), 0)

    def _argmax(self, a, xs, out):
        # NOTE: CuPy's argmax gives int64; a scratch made here keeps the step allocation-free
        tmp = out if out.dtype == self.cp.int64 else self.cp.empty(out.shape, self.cp.int64)
        return _argmax, (self.cp, xs[0], a["axis"], tmp, out)

    def _unslice(self, a, xs, out):
        idx = [slice(None)] * out.ndim
        idx[a["axis"] % out.ndim] = slice(a["start"], a["stop"], a["step"])
        return _unslice, (xs[0], out, tuple(idx))

    def _concat(self, a, xs, out):
        """One launch over a pointer table uploaded here. NOTE: CuPy's own concatenate of
        more than 8 arrays uploads such a table on every call: a host copy inside the step,
        which also breaks CUDA graph capture."""
        cp, axis = self.cp, a["axis"] % out.ndim
        if not out.flags.c_contiguous or not all(x.flags.c_contiguous for x in xs):
            return run_in_order, ([(cp.copyto, (view, x)) for view, x in
                                   zip(_slices(out, axis, xs), xs)],)
        inner = int(np.prod(out.shape[axis + 1:], dtype=np.int64))
        row = out.shape[axis] * inner
        starts = np.concatenate([[0], np.cumsum([x.shape[axis] * inner for x in xs])])
        table = cp.asarray(np.array([x.data.ptr for x in xs], np.uint64))
        k = self._library(ck.concat(str(out.dtype)))
        args = (np.int64(out.size), np.int64(row), np.int32(len(xs)),
                cp.asarray(starts.astype(np.int64)), table, out)
        # NOTE: the pieces ride along so the arrays the table points into stay alive
        return _launch_multi, (k, self._grid(out.size), 256, args, xs)

    def _window_call(self, make, a, image, window, total: int, *tail) -> Call:
        """A 1-d or 2-d window kernel (`make`: its source; unfold, fold, window_max and its
        gradient) over `total` elements; `window`: (OH, OW, KH, KW)."""
        _, h, w, c = image.shape
        dims = (h, w, c, *window, *ints_2d(a, "stride", "dilation", "pads"))
        kernel = self._library(make(str(image.dtype)))
        args = (np.int64(total), *(np.int32(d) for d in dims), *tail)
        return _launch, (kernel, self._grid(total), 256, args, 0)

    def _unfold(self, a, xs, out):
        arrays = as_2d(a, xs[0], out)
        if arrays is None:  # NOTE: 3-d windows: one CuPy slice copy per kernel tap
            return unfold_call(self.cp, a, xs[0], out)
        image, cols = arrays
        return self._window_call(ck.unfold, a, image, cols.shape[1:5], cols.size,
                                 image.dtype.type(a["pad_value"]), image, cols)

    def _fold(self, a, xs, out):
        arrays = as_2d(a, out, xs[0])
        if arrays is None:
            return fold_call(self.cp, a, xs[0], out)
        image, cols = arrays
        return self._window_call(ck.fold, a, image, cols.shape[1:5], image.size, cols, image)

    def _pool_call(self, make, a, image, pooled, total: int, *arrays) -> Call:
        """A window_max(_grad) kernel: the window's size is the op's `kernel`."""
        return self._window_call(make, a, image, (*pooled.shape[1:3], *ints_2d(a, "kernel")),
                                 total, *arrays)

    def _window_max(self, a, xs, out):
        arrays = as_2d(a, xs[0], out)
        if arrays is None:
            return window_max_call(self.cp, a, xs[0], out)
        image, pooled = arrays
        return self._pool_call(ck.window_max, a, image, pooled, pooled.size, image, pooled)

    def _window_max_grad(self, a, xs, out):
        arrays = as_2d(a, xs[0], xs[1], out)
        if arrays is None:
            return window_max_grad_call(self.cp, a, xs[0], xs[1], out)
        image, g, grad = arrays
        return self._pool_call(ck.window_max_grad, a, image, g, grad.size, image, g, grad)


# *** library op bodies: all write into preallocated device arrays ***

def _matmul(cp, a, b, out):
    cp.matmul(a, b, out=out)


def _zero_then(out, kernel, grid, block, args, total):
    out.fill(0)
    if total:
        _launch(kernel, grid, block, args, 0)


def _argmax(cp, x, axis, tmp, out):
    cp.argmax(x, axis=axis, out=tmp)
    if tmp is not out:
        cp.copyto(out, tmp, casting="unsafe")


def _unslice(x, out, idx):
    out.fill(0)
    out[idx] = x


def _slices(out, axis: int, xs) -> list:
    """The views of `out` that the pieces `xs` fill, in order along `axis`."""
    views, start = [], 0
    for x in xs:
        idx = [slice(None)] * out.ndim
        idx[axis] = slice(start, start + x.shape[axis])
        views.append(out[tuple(idx)])
        start += x.shape[axis]
    return views


# *** the executable on device arrays ***

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


class CupyExecutable(Executable):
    """`Executable` with its buffers, params and constants as CuPy arrays.

    Persistent state stays on the device across calls and across the executables of one model:
    a host array in the caller's `state` dict is uploaded once and the dict entry replaced by
    the device array, which the next executable (eval, predict) then takes as is.
    `run(feeds, fetch=False)` leaves the results on the device, so a training loop syncs only
    when it reads them (`read_all`, once for many steps).
    With NNLANG_CUDA_GRAPH=1 the steady-state calls are captured once into a CUDA graph and
    replayed (experimental: falls back to plain launches if capture fails).
    """

    state_class = DeviceState
    picks_blas_threads = False

    def __init__(self, g, steps, views, memory, backend: CupyBackend, state=None):
        self.cp = backend.cp
        super().__init__(g, steps, views, memory, backend, state)
        self._graph = None
        self._runs = 0
        self._use_graph = os.environ.get("NNLANG_CUDA_GRAPH") == "1"

    def _const_array(self, value, dtype):
        return self.cp.asarray(np.asarray(value, dtype=dtype))

    def _view(self, node, base):
        return _view(self.cp, node, base)

    def _state_array(self, shared: dict, name: str, shape, dtype):
        cp = self.cp
        given = shared.get(name)
        if isinstance(given, cp.ndarray) and given.shape == shape and given.dtype == dtype \
                and given.flags.c_contiguous:
            return given
        host = np.zeros(shape, dtype) if given is None else np.array(
            np.broadcast_to(cp.asnumpy(given), shape), dtype, order="C")
        shared[name] = dev = cp.asarray(host)
        return dev

    @staticmethod
    def _reshaped(a, shape):
        return a.reshape(shape)

    def _build(self, step):
        if step.kind == "multi":
            return self._multi_call(step)
        if step.kind != "kernel":
            return self._library_step(step, self.cp)
        return self._kernel_call(step.group)

    def _multi_call(self, step):
        """One launch over every member tensor (`render_cuda.MultiTensor`), or each member on
        its own when their kernels differ."""
        built = [self._kernel(grp) for grp in step.groups]
        multi = multi_tensor([k for k, _ in built])
        if multi is None:
            return run_in_order, ([self._kernel_call(grp) for grp in step.groups],)
        header, body = render(multi)
        self._sources.append((header, body))
        fn = self.backend.compile(body, multi.name)
        return self.backend.specialize_multi(fn, [bind.loop_shape[0] for _, bind in built],
                                             [self._kernel_arrays(k, bind) for k, bind in built])

    def _kernel_call(self, grp):
        kernel, bind = self._kernel(grp)
        header, body = render(kernel, bind.loop_shape)
        self._sources.append((header, body))
        fn = self.backend.compile(body, kernel.name)
        return self.backend.specialize(fn, (*bind.loop_shape,
                                            *self._kernel_arrays(kernel, bind)))

    def _launch_all(self):
        for fn, args in self._calls:
            fn(*args)
        for dst, src in self._updates:
            self.cp.copyto(dst, src)

    def _capture(self):
        cp = self.cp
        stream = cp.cuda.Stream(non_blocking=True)
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

    def run(self, feeds: dict, fetch: bool = True) -> dict:
        for name, buf in self._feeds:
            if name in feeds:
                self.backend.upload(buf, feeds[name])
            elif name == "_rng":
                buf.fill(self._rng_key)
                self._rng_key += 1
            else:
                raise NNError(f"no value fed for input '{name}'")
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
        if not fetch:  # NOTE: device copies, since the next call overwrites the buffers
            return {k: v.copy() for k, v in self._results}
        return {k: self.cp.asnumpy(v) for k, v in self._results}

    def read_all(self, results: list[dict]) -> list[dict]:
        """Device results of several calls downloaded in one transfer (one sync): their bytes
        concatenated on the device, split again on the host."""
        cp = self.cp
        flat = [v for r in results for v in r.values() if isinstance(v, cp.ndarray)]
        if not flat:
            return results
        raw = cp.asnumpy(cp.concatenate([cp.ascontiguousarray(v).reshape(-1).view(cp.uint8)
                                         for v in flat]))
        out, at = [], 0
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


_BACKEND: CupyBackend | None = None


def get_backend() -> CupyBackend:
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = CupyBackend()
    return _BACKEND


__all__ = ["CupyBackend", "CupyExecutable", "get_backend", "require_cupy"]
