"""The compiled plan and its runner (the end of the pipeline): planned buffers plus an ordered
list of prebound calls. `compile_graph` runs optimize, schedule, memory planning and codegen.

A steady-state `run` allocates nothing but the returned outputs: feeds are copied into
planned buffers, kernels write into planned buffers, updates are copied into state.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from contextlib import nullcontext

import numpy as np

from nnlang.backends.base import Backend, get_backend
from nnlang.backends.blas import run_in_order, run_parts, threaded_blas_pays, workers
from nnlang.codegen.kernel import build_kernel
from nnlang.codegen.render_numba import PARALLEL_MIN, render, render_multi, split_rows
from nnlang.errors import NNError
from nnlang.ir.graph import Graph
from nnlang.passes.concat_in_place import Piece, piece_view
from nnlang.passes.fuse import format_groups
from nnlang.passes.memory import MemoryPlan
from nnlang.passes.plan import plan
from nnlang.passes.rewrite import updates
from nnlang.passes.schedule import Step, apply_view, copy_call
from nnlang.backends.aligned import aligned_copy, aligned_zeros


class State(MutableMapping):
    """Persistent arrays by name (params and optimizer slots). Setting copies into the existing
    buffer, because compiled calls hold references to it."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self._arrays = arrays

    def __getitem__(self, name):
        return self._arrays[name]

    def __setitem__(self, name, value):
        if name not in self._arrays:
            raise KeyError(f"no state named {name!r}")
        np.copyto(self._arrays[name], np.asarray(value), casting="same_kind")

    def __delitem__(self, name):
        raise TypeError("state entries cannot be removed")

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)


def library_call(xp, backend, node, inputs: list, out):
    """The backend's call for a non-kernel op (matmul, gather, unfold...); `xp` is the array
    module (numpy, or cupy for the GPU executable)."""
    # NOTE: library kernels index flat rows; a strided view (a transpose the schedule left as
    # a view) is first copied into a scratch array allocated once, here
    staged = []
    if node.op != "matmul":
        for k, x in enumerate(inputs):
            if not x.flags.c_contiguous:
                inputs[k] = xp.empty(x.shape, x.dtype)
                staged.append((inputs[k], x))
    fn, args = backend.library_call(node, inputs, out)
    if not staged:
        return fn, args

    def run(*a):
        for dst, src in staged:
            xp.copyto(dst, src)
        fn(*a)
    return run, args


def _products(g: Graph, steps: list[Step]) -> list[tuple[tuple, tuple]]:
    """(a shape, b shape) of every matmul step."""
    return [tuple(tuple(int(d) for d in g.node(i).shape) for i in g.node(s.nodes[0]).inputs)
            for s in steps if s.kind == "call" and g.node(s.nodes[0]).op == "matmul"]


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
    if (x.flags.c_contiguous and not force) or x.ndim < 2 or x.size == 0 or \
            any(s < 0 or s % item for s in strides) or strides[-1] not in (0, item):
        return None
    span = 1 + sum((n - 1) * s // item for n, s in zip(x.shape, strides))
    flat = np.lib.stride_tricks.as_strided(x, (span,), (item,))
    return flat, [np.intp(s // item) for s in strides[:-1]]


def _uses_pool(call) -> bool:
    """Does this (function, args) call hand work to the thread pool (`blas.run_parts`)?"""
    fn, args = call
    return fn is run_parts or (fn is run_in_order and any(_uses_pool(c) for c in args[0]))


class Executable:
    """A graph compiled for one backend: `run(feeds)` returns outputs, losses and metrics."""

    def __init__(self, g: Graph, steps: list[Step], views: dict[int, int], memory: MemoryPlan,
                 backend: Backend, state: dict | None = None):
        self.graph, self.steps, self.memory, self.backend = g, steps, memory, backend
        self.views = views
        self.buffers = [backend.alloc(n) for n in memory.sizes]
        self.arrays: dict[int, np.ndarray] = {}
        shared = state if state is not None else {}
        params = {}
        for nid in g.topo():
            n = g.node(nid)
            shape = tuple(int(d) for d in n.shape)
            if nid in memory.assign:
                raw = self.buffers[memory.assign[nid]]
                nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(n.dtype).itemsize
                self.arrays[nid] = raw[:nbytes].view(n.dtype).reshape(shape)
            elif n.op == "param":
                name = n.attrs["name"]
                if name not in params:
                    params[name] = self._state_array(shared, name, shape, n.dtype)
                self.arrays[nid] = params[name]
            elif nid in memory.in_place:  # its kernel writes the state array itself
                self.arrays[nid] = params[memory.in_place[nid]]
            elif n.op == "const":
                self.arrays[nid] = self._const_array(n.attrs["value"], n.dtype)
        for nid in memory.pieces:
            self._piece_array(nid)
        for nid in g.topo():  # views need their inputs' arrays, so a second pass in order
            if nid in views:
                self.arrays[nid] = self._view(g.node(nid), self.arrays[views[nid]])
        self.state = self.state_class(params)
        self._feeds = [(n.attrs["name"], self.arrays[n.id]) for n in g
                       if n.op == "input" and n.id in self.arrays]
        self._rng_key = 0
        self._sources: list[tuple[str, str]] = []   # (header, body) per kernel step
        self._pinned: list = []   # arrays that multi-tensor calls reach by address
        self.threaded_blas = self.picks_blas_threads and threaded_blas_pays(_products(g, steps))
        # NOTE: a backend may compile the kernels together, in parallel (see NumbaBackend)
        together = getattr(backend, "together", None)
        with together() if together else nullcontext():
            calls = [self._build(s) for s in steps]
        self._calls = [backend.resolved(c) for c in calls] if together else calls
        self.splits = any(_uses_pool(c) for c in self._calls)
        named = {**g.outputs, **g.losses, **g.metrics}
        self._results = [(k, self.arrays[v]) for k, v in named.items()]
        self._updates = [(self.state._arrays[k], self.arrays[v]) for k, v in updates(g).items()
                         if self.arrays[v] is not self.state._arrays[k]]

    def _piece_array(self, nid: int):
        """A concat piece's array: its slice of the concat's (`passes/concat_in_place.py`)."""
        if nid not in self.arrays:
            piece = self.memory.pieces[nid]
            self.arrays[nid] = piece_view(piece, self._piece_array(piece.concat))
        return self.arrays[nid]

    # *** where arrays live: the hooks a device executable overrides ***
    state_class = State
    picks_blas_threads = True     # may hand a step's products to BLAS's own threads

    @staticmethod
    def _state_array(shared: dict, name: str, shape, dtype):
        return _fitting_array(shared.get(name), shape, dtype)

    @staticmethod
    def _const_array(value, dtype):
        return np.array(value, dtype=dtype)

    @staticmethod
    def _view(node, base):
        return apply_view(node, base)

    def _build(self, step: Step):
        if step.kind == "multi":
            return self._multi_call(step)
        if step.kind == "kernel":
            return self._kernel_call(step.group)
        return self._library_step(step, np)

    def _kernel(self, grp):
        """The group's kernel; outputs that are state updates store into their state's load."""
        return build_kernel(self.graph, grp.members, grp.outputs, grp.reduce, grp.loop_shape,
                            self.memory.in_place_of(self.graph, grp.outputs))

    def _kernel_call(self, grp):
        kernel, bind = self._kernel(grp)
        arrays = self._kernel_arrays(kernel, bind)
        names = kernel.args[len(bind.loop_shape):]
        red = kernel.reduce.arg if kernel.reduce else None
        strided = {a for a, x in zip(names, arrays) if a != red and _row_strided(x) is not None}
        header, body = render(kernel, bind.loop_shape, strided=strided)
        self._sources.append((header, body))
        fn = self.backend.compile(body, kernel.name)

        def args_for(shape, xs):
            flat = [_row_strided(x, force=True) if a in strided else (x, [])
                    for a, x in zip(names, xs)]
            return (*shape, *(f for f, _ in flat), *(s for _, ss in flat for s in ss))
        n0 = bind.loop_shape[0]
        parts = min(workers(), n0)
        if parts < 2 or not split_rows(kernel, bind.loop_shape):
            return self.backend.specialize(fn, args_for(bind.loop_shape, arrays))
        calls = []
        for lo, hi in zip(np.linspace(0, n0, parts + 1).astype(int)[:-1],
                          np.linspace(0, n0, parts + 1).astype(int)[1:]):
            xs = [x[lo:hi] if x.shape[0] == n0 else x for x in arrays]
            shape = (hi - lo, *bind.loop_shape[1:])
            calls.append(self.backend.specialize(fn, args_for(shape, xs)))
        return run_parts, (calls,)

    def _multi_call(self, step: Step):
        """One launch of a 1-d kernel over every member group (`passes/multi_tensor.py`; its
        arrays are contiguous vectors), the combined element range split over threads when
        large. Members that became different kernels (some updates in place, some not) run one
        by one instead."""
        members, bodies = [], set()
        for grp in step.groups:
            kernel, bind = self._kernel(grp)
            members.append((bind.loop_shape[0], self._kernel_arrays(kernel, bind)))
            bodies.add(render(kernel, (1,))[1])
        if len(bodies) > 1:
            return run_in_order, ([self._kernel_call(grp) for grp in step.groups],)
        header, source = render_multi(kernel, bodies.pop(), len(members))
        self._sources.append((header, source))
        fn = self.backend.compile(source, f"{kernel.name}_multi")
        total = sum(n for n, _ in members)
        parts = min(workers(), total) if total >= PARALLEL_MIN else 1
        calls = []
        for part in _element_ranges(members, parts):
            self._pinned.append(part)  # NOTE: the address tables do not hold their arrays
            calls.append(self.backend.specialize(fn, _multi_args(part)))
        return calls[0] if len(calls) == 1 else (run_parts, (calls,))

    # *** shared by the device executable's _build ***
    def _kernel_arrays(self, kernel, bind) -> list:
        """A kernel's array arguments in order: its loads and outputs with leading unit axes up
        to the loop's rank, then the reduction's result in the kept loop shape."""
        rank = len(bind.loop_shape)
        # NOTE: an array of higher rank than the loop belongs to a flattened loop (multi_tensor)
        arrays = [self._reshaped(a, (1,) * (rank - a.ndim) + a.shape if a.ndim <= rank
                                 else (a.size,))
                  for a in (self.arrays[i] for i in (*bind.loads, *bind.outputs))]
        if bind.reduce_out is not None:
            kept = [d for a, d in enumerate(bind.loop_shape)
                    if a not in kernel.reduce.axes] or [1]
            arrays.append(self._reshaped(self.arrays[bind.reduce_out], kept))
        return arrays

    def _library_step(self, step: Step, xp):
        """The call of a copy or library step, on the array module `xp`."""
        nid = step.nodes[0]
        n = self.graph.node(nid)
        inputs = [self.arrays[i] for i in n.inputs]
        if step.kind == "copy":
            return copy_call(xp, n, inputs[0], self.arrays[nid])
        pieces = self.memory.pieces
        if n.op == "concat" and any(i in pieces and pieces[i].concat == nid for i in n.inputs):
            return self._concat_rest(n, xp)
        if n.op == "matmul" and self.threaded_blas:  # NOTE: BLAS splits it over its threads
            return xp.matmul, (inputs[0], inputs[1], self.arrays[nid])
        return library_call(xp, self.backend, n, inputs, self.arrays[nid])

    def _concat_rest(self, n, xp):
        """A concat some of whose inputs are stored in place: copies only the others."""
        out, axis, start = self.arrays[n.id], n.attrs["axis"] % len(n.shape), 0
        copies = []
        for i in n.inputs:
            stop = start + int(self.graph.node(i).shape[axis])
            piece = self.memory.pieces.get(i)
            if piece is None or piece.concat != n.id:
                copies.append((xp.copyto, (piece_view(Piece(n.id, axis, start, stop), out),
                                           self.arrays[i])))
            start = stop
        return run_in_order, (copies,)

    @staticmethod
    def _reshaped(a, shape):
        return np.reshape(a, shape, copy=False)

    def run(self, feeds: dict, fetch: bool = True) -> dict[str, np.ndarray]:
        """Runs one call: feeds by input name -> outputs, losses and metrics by name.
        fetch=False lets a device executable leave them on the device (see `read_all`)."""
        for name, buf in self._feeds:
            if name in feeds:
                np.copyto(buf, feeds[name], casting="unsafe")
            elif name == "_rng":  # NOTE: the runtime advances the random key every call
                buf[...] = self._rng_key
                self._rng_key += 1
            else:
                raise NNError(f"no value fed for input '{name}'")
        with self.backend.session(workers() if self.threaded_blas else 1, self.splits):
            for fn, args in self._calls:
                fn(*args)
        for dst, src in self._updates:
            np.copyto(dst, src)
        return {k: np.array(v) for k, v in self._results}

    @staticmethod
    def read_all(results: list[dict]) -> list[dict]:
        """The results of several `run(..., fetch=False)` calls as host arrays (here they
        already are)."""
        return results

    def kernel_sources(self) -> list[str]:
        """Each kernel step's source with its header, in schedule order (`--emit kernels`)."""
        return [header + body for header, body in self._sources]

    def groups_text(self) -> str:
        return format_groups(self.graph, [grp for s in self.steps for grp in s.kernel_groups])

    def summary(self) -> dict:
        kinds = [s.kind for s in self.steps]
        return {"threaded_blas": self.threaded_blas,
                "kernels": sum(len(s.kernel_groups) for s in self.steps),
                "multi_tensor_launches": kinds.count("multi"), "calls": kinds.count("call"),
                "copies": kinds.count("copy"), "distinct_kernels": len({b for _, b in
                                                                        self._sources}),
                "concat_pieces_in_place": len(self.memory.pieces),
                "buffers": len(self.memory.sizes), "buffer_bytes": self.memory.total_bytes,
                "nodes": len(self.graph)}


def compile_graph(g: Graph, backend: str = "numba", disable=(), state=None) -> Executable:
    """optimize -> schedule -> memory plan (or the same plan from the cache) -> codegen +
    compile, for a primitive graph."""
    g, steps, views, memory = plan(g, disable)
    be = get_backend(backend)
    # NOTE: a backend may bring its own executable (the CuPy one keeps state on the device)
    return getattr(be, "executable", Executable)(g, steps, views, memory, be, state)
