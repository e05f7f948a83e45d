"""The compiled plan and its runner (the end of the pipeline): planned buffers plus an ordered
list of prebound calls. `compile_graph` runs optimize, schedule, memory planning and codegen.

Backend-neutral: every array, kernel and library call goes through the `Backend` protocol
(`backends/base.py`). A steady-state `run` allocates nothing but the returned outputs: feeds
are copied into planned buffers, kernels write into planned buffers, updates are copied into
state.
"""
from __future__ import annotations

import numpy as np

from nnlang.backends.base import Backend, State, get_backend, library_call, run_in_order
from nnlang.codegen.kernel import build_kernel
from nnlang.errors import NNError
from nnlang.ir.graph import Graph
from nnlang.passes.concat_in_place import Piece, piece_view
from nnlang.passes.fuse import format_groups
from nnlang.passes.memory import MemoryPlan
from nnlang.passes.plan import plan
from nnlang.passes.schedule import Step, copy_call
from nnlang.runtime.scan import scan_call

__all__ = ["Executable", "State", "compile_graph"]


def staged_library_call(backend: Backend, node, inputs: list, out):
    """The backend's call for a non-kernel op (matmul, gather, unfold...)."""
    # NOTE: library kernels index flat rows; a strided view (a transpose the schedule left as
    # a view) is first copied into a scratch array allocated once, here
    xp, staged = backend.xp, []
    if node.op != "matmul":
        for k, x in enumerate(inputs):
            if not x.flags.c_contiguous:
                inputs[k] = xp.empty(x.shape, x.dtype)
                staged.append((inputs[k], x))
    fn, args = library_call(backend, node, inputs, out)
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


def _value_bytes(n) -> float:
    return np.prod([int(d) for d in n.shape], dtype=float) * np.dtype(n.dtype).itemsize


def _allocate(g: Graph, memory: MemoryPlan, backend: Backend, pending: int = 0) -> list:
    """The planned buffers. One this machine cannot hold is an error at the op whose value
    needs it (the largest value planned into it): `check` only warns about activations, and
    `check_memory` counts weights alone, so this is where such a value is first refused.
    `pending`: bytes the caller allocated already that nothing has written yet (see
    `_check_host_memory`)."""
    _check_host_memory(g, memory, backend, pending)
    buffers = []
    for i, size in enumerate(memory.sizes):
        try:
            buffers.append(backend.alloc(size))
        except NNError as err:
            owners = [g.node(nid) for nid, b in memory.assign.items() if b == i]
            if err.span is not None or not owners:
                raise
            big = max(owners, key=_value_bytes)
            raise NNError(f"{err.message} for the value {big.type}", big.span,
                          err.hint) from None
    return buffers


def _check_host_memory(g: Graph, memory: MemoryPlan, backend: Backend, pending: int = 0) -> None:
    """Host buffers that together exceed this machine's available memory are an error at the
    op of the largest value. NOTE: each buffer alone fits, so each allocation succeeds (Linux
    hands out address space, not pages) and the step is killed by the kernel's out-of-memory
    killer once it writes them, without a word: a GPT of vocab 50,000 at block 1,024 and batch
    24 planned 48 GiB on a 23 GiB machine and compiled without complaint. For the same reason
    `pending`, what the net allocated for its other executables and optimizer slots and has not
    written yet, is not in MemAvailable and counts here.
    Swap: `fit_or_swap`, the decision the weights' check takes too."""
    from nnlang.ir.summary import fit_or_swap, human, machine_memory

    if backend.xp is not np or backend.render_only or not memory.assign:
        return
    have = machine_memory()
    need = memory.total_bytes + pending
    if have is None or need <= have.available:
        return
    big = max((g.node(nid) for nid in memory.assign), key=_value_bytes)
    what = (f"{human(memory.total_bytes, 'B')} for this step's values (the largest, {big.type}, "
            f"{human(_value_bytes(big), 'B')})" + (f" and the {human(pending, 'B')} this net "
                                                     "allocated before and has not written yet"
                                                     if pending else ""))
    fit_or_swap(need, have, f"{what} exceed the memory available: {have.describe()}",
                f"cannot allocate {what}: {have.describe()}", big.span,
                _memory_hint(g, memory, big))


def _memory_hint(g: Graph, memory: MemoryPlan, big) -> str:
    """What would make a step's values fit: a smaller batch where most of them grow with it
    (a leading batch dim), else fewer parameters, naming the weight whose gradient is the
    largest value that does not (a train step at batch 1 of a huge embedding)."""
    from nnlang.backends.aligned import ALLOC_HINT
    from nnlang.ir.dims import fmt_shape
    from nnlang.ir.summary import LESS_STATE, human
    from nnlang.ops.optim import slot_param

    batch = {int(g.node(i).shape[0]) for i in g.inputs.values() if g.node(i).shape}
    weights = {tuple(int(d) for d in g.node(p).shape): name for name, p in g.params.items()
               if slot_param(name) is None}

    def per_batch(n) -> bool:
        shape = tuple(int(d) for d in n.shape)
        return bool(shape) and shape[0] in batch and not (n.role != "fwd" and shape in weights)
    biggest: dict[int, object] = {}
    for nid, b in memory.assign.items():
        n = g.node(nid)
        if b not in biggest or _value_bytes(n) > _value_bytes(biggest[b]):
            biggest[b] = n
    grows = sum(memory.sizes[b] for b, n in biggest.items() if per_batch(n))
    if not batch or 2 * grows >= memory.total_bytes:
        return ALLOC_HINT
    fixed = max((n for n in biggest.values() if not per_batch(n)), key=_value_bytes)
    shape = tuple(int(d) for d in fixed.shape)
    name = weights.get(shape) if fixed.role != "fwd" else None
    share = f"{human(memory.total_bytes - grows, 'B')} of them do not grow with the batch"
    if name is None:
        return f"{share} (the largest, {fixed.type}); a smaller batch would not help: use " \
            "smaller layers or a machine with more memory"
    kept = [s for s in g.params if slot_param(s) == name]
    slots = f"; the optimizer keeps {len(kept)} more of its size ({', '.join(kept)})" \
        if kept else ""
    return (f"{share}: the largest is the gradient of the weight {name} "
            f"{fmt_shape(shape)}{slots}; a smaller batch would not help: use fewer parameters "
            "(a smaller vocab or dim)" + (f", {LESS_STATE}" if kept else "")
            + ", or a machine with more memory")


class Executable:
    """A graph compiled for one backend: `run(feeds)` returns outputs, losses and metrics.

    On a device backend, persistent state stays on the device across calls and across the
    executables of one model (`Backend.state_array`), and `run(feeds, fetch=False)` leaves the
    results there, so a training loop syncs only when it reads them (`read_all`)."""

    def __init__(self, g: Graph, steps: list[Step], views: dict[int, int], memory: MemoryPlan,
                 backend: Backend, state: dict | None = None, disable=(), pending: int = 0):
        self.graph, self.steps, self.memory, self.backend = g, steps, memory, backend
        self.disable = tuple(disable)   # the pass switches, which scan bodies follow too
        self.bodies: list[Executable] = []
        self.views = views
        self.pending = pending
        self.buffers = _allocate(g, memory, backend, pending)
        self.written = False   # whether a run wrote the buffers (until then they hold no pages)
        self.arrays: dict = {}
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
                    params[name] = backend.state_array(shared, name, shape, n.dtype)
                self.arrays[nid] = params[name]
            elif nid in memory.in_place:  # its kernel writes the state array itself
                self.arrays[nid] = params[memory.in_place[nid]]
            elif n.op == "const":
                self.arrays[nid] = backend.const_array(n.attrs["value"], n.dtype)
        for nid in memory.pieces:
            self._piece_array(nid)
        for nid in g.topo():  # views need their inputs' arrays, so a second pass in order
            if nid in views:
                self.arrays[nid] = backend.view(g.node(nid), self.arrays[views[nid]])
        self.state = backend.state(params)
        self._feeds = [(n.attrs["name"], self.arrays[n.id]) for n in g
                       if n.op == "input" and n.id in self.arrays]
        self._rng_key = 0
        self._sources: list[tuple[str, str]] = []   # (header, body) per kernel step
        self._pinned: list = []
        self.threaded_blas = backend.threaded_blas(_products(g, steps))
        with backend.together():   # NOTE: scan bodies and their drivers compile in it too
            self._scans = {s.nodes[0]: self._scan_call(s.nodes[0]) for s in steps
                           if s.kind == "call" and g.node(s.nodes[0]).op == "scan"}
            calls = [self._build(s) for s in steps]
        self._calls = [backend.resolved(c) for c in calls]
        self.splits = backend.splits(self._calls)
        named = {**g.outputs, **g.losses, **g.metrics}
        self._results = [(k, self.arrays[v]) for k, v in named.items()]
        self._updates = [(self.state._arrays[k], self.arrays[v]) for k, v in g.updates.items()
                         if self.arrays[v] is not self.state._arrays[k]]
        self._step = backend.launcher(self._calls, self._updates, self.threaded_blas)

    def _scan_call(self, nid: int):
        n = self.graph.node(nid)
        # NOTE: the body's buffers come on top of this step's and earlier bodies', none written yet
        held = self.pending + self.memory.total_bytes + sum(b.memory.total_bytes
                                                             for b in self.bodies)
        try:
            call, body = scan_call(self.backend, n, [self.arrays[i] for i in n.inputs],
                                   self.arrays[nid], self.disable, held)
        except NNError as err:   # NOTE: the body graph's nodes carry no span: the scan's
            if err.span is not None or n.span is None:
                raise
            raise NNError(err.message, n.span, err.hint) from None
        self.bodies.append(body)
        self._sources += [(f"# scan %{nid}, one step of its body:\n" + head, src)
                          for head, src in body._sources]
        return call

    def _piece_array(self, nid: int):
        """A concat piece's array: its slice of the concat's (`passes/concat_in_place.py`)."""
        if nid not in self.arrays:
            piece = self.memory.pieces[nid]
            self.arrays[nid] = piece_view(piece, self._piece_array(piece.concat))
        return self.arrays[nid]

    def _build(self, step: Step):
        if step.kind == "multi":
            return self._multi_call(step)
        if step.kind == "kernel":
            return self._kernel_call(step.group)
        return self._library_step(step)

    def _kernel(self, grp):
        """The group's kernel; outputs that are state updates store into their state's load."""
        return build_kernel(self.graph, grp.members, grp.outputs, grp.reduce, grp.loop_shape,
                            self.memory.in_place_of(self.graph, grp.outputs), grp.scalars)

    def _kernel_call(self, grp):
        kernel, bind = self._kernel(grp)
        rendered, call = self.backend.kernel_call(kernel, bind.loop_shape,
                                                  self._kernel_arrays(kernel, bind))
        self._sources.append(rendered)
        return call

    def _multi_call(self, step: Step):
        """One launch over every member group (`passes/multi_tensor.py`; its arrays are
        contiguous vectors). Members that became different kernels (some updates in place,
        some not) run one by one instead."""
        built = [self._kernel(grp) for grp in step.groups]
        multi = self.backend.multi_call([k for k, _ in built],
                                        [bind.loop_shape[0] for _, bind in built],
                                        [self._kernel_arrays(k, bind) for k, bind in built])
        if multi is None:
            return run_in_order, ([self._kernel_call(grp) for grp in step.groups],)
        rendered, call, keep = multi
        self._sources.append(rendered)
        self._pinned.append(keep)  # NOTE: what the call's address tables point into
        return call

    def _kernel_arrays(self, kernel, bind) -> list:
        """A kernel's array arguments in order: its loads and outputs with leading unit axes up
        to the loop's rank, then the reduction's result in the kept loop shape."""
        rank = len(bind.loop_shape)
        reshape = self.backend.reshape
        # NOTE: an array of higher rank than the loop belongs to a flattened loop (multi_tensor)
        arrays = [reshape(a, (1,) * (rank - a.ndim) + a.shape if a.ndim <= rank else (a.size,))
                  for a in (self.arrays[i] for i in (*bind.loads, *bind.outputs))]
        if bind.reduce_out is not None:
            kept = [d for a, d in enumerate(bind.loop_shape)
                    if a not in kernel.reduce.axes] or [1]
            arrays.append(reshape(self.arrays[bind.reduce_out], kept))
        return arrays

    def _library_step(self, step: Step):
        """The call of a copy or library step."""
        nid = step.nodes[0]
        n = self.graph.node(nid)
        xp = self.backend.xp
        inputs = [self.arrays[i] for i in n.inputs]
        if step.kind == "copy":
            return copy_call(xp, n, inputs[0], self.arrays[nid])
        if n.op == "scan":
            return self._scans[nid]
        pieces = self.memory.pieces
        if n.op == "concat" and any(i in pieces and pieces[i].concat == nid for i in n.inputs):
            return self._concat_rest(n, xp)
        if n.op == "matmul" and self.threaded_blas:  # NOTE: BLAS splits it over its threads
            return xp.matmul, (inputs[0], inputs[1], self.arrays[nid])
        return staged_library_call(self.backend, n, inputs, self.arrays[nid])

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

    def run(self, feeds: dict, fetch: bool = True) -> dict:
        """Runs one call: feeds by input name -> outputs, losses and metrics by name.
        fetch=False lets a device backend leave them on the device (see `read_all`)."""
        for name, buf in self._feeds:
            if name in feeds:
                self.backend.upload(buf, feeds[name])
            elif name == "_rng":  # NOTE: the runtime advances the random key every call
                buf.fill(self._rng_key)
                self._rng_key += 1
            else:
                raise NNError(f"no value fed for input '{name}'")
        self._step()
        self.written = True
        return self.backend.results(self._results, fetch)

    def read_all(self, results: list[dict]) -> list[dict]:
        """The results of several `run(..., fetch=False)` calls as host arrays."""
        return self.backend.read_all(results)

    def kernel_sources(self) -> list[str]:
        """Each kernel step's source with its header, in schedule order (`--emit kernels`)."""
        return [header + body for header, body in self._sources]

    def groups_text(self) -> str:
        return format_groups(self.graph, [grp for s in self.steps for grp in s.kernel_groups])

    def summary(self) -> dict:
        """Counts of what runs; a scan body's kernels and in-place concat pieces count once
        (they run every step), and `nodes` counts the body graphs too."""
        kinds = [s.kind for s in self.steps]
        bodies = [b.summary() for b in self.bodies]
        return {"threaded_blas": self.threaded_blas,
                "kernels": sum(len(s.kernel_groups) for s in self.steps)
                + sum(b["kernels"] for b in bodies),
                "scan_loops": len(bodies),
                "multi_tensor_launches": kinds.count("multi"), "calls": kinds.count("call"),
                "copies": kinds.count("copy"), "distinct_kernels": len({b for _, b in
                                                                        self._sources}),
                "concat_pieces_in_place": len(self.memory.pieces)
                + sum(b["concat_pieces_in_place"] for b in bodies),
                "buffers": len(self.memory.sizes), "buffer_bytes": self.memory.total_bytes,
                "nodes": len(self.graph) + sum(b["nodes"] for b in bodies)}


def compile_graph(g: Graph, backend: str | Backend = "numba", disable=(), state=None,
                  render_only: bool = False, pending: int = 0) -> Executable:
    """optimize -> schedule -> memory plan (or the same plan from the cache) -> codegen +
    compile, for a primitive graph. `render_only`: render the kernels, compile nothing and
    need no device (what `--emit kernels` shows for CUDA; such an executable cannot run).
    `pending`: bytes allocated elsewhere and not yet written, which the memory check counts."""
    g, steps, views, memory = plan(g, disable)
    be = get_backend(backend, render_only) if isinstance(backend, str) else backend
    return Executable(g, steps, views, memory, be, state, disable, pending)
