"""Memory planning (after `schedule`): liveness-based buffer reuse.

Every value a step stores and every fed input gets a slice of one of a few byte buffers,
allocated once per executable; values whose lifetimes do not overlap share a buffer. Params
and constants own their memory, and results stay live until the end of the call.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field

import numpy as np

from nnlang.ir.graph import Graph
from nnlang.passes.concat_in_place import Piece, concat_pieces, root_of
from nnlang.passes.rewrite import result_ids
from nnlang.passes.schedule import Step, base_of

ALIGN = 64


@dataclass(frozen=True)
class Lifetime:
    key: int        # the value (a node id)
    nbytes: int
    start: int      # step that writes it (-1: before the first step, e.g. a fed input)
    end: int        # last step that reads it (len(steps): read after the last step)
    # bytes per batch row in a scan body whose loop may run parts of the batch at once
    # (runtime/scan.py), else 0: a buffer only ever holds values of one row width there, so
    # row r's bytes are the same in every value it holds and parts never touch each other's
    row: int = 0


def plan_buffers(lifetimes: list[Lifetime]) -> tuple[dict[int, int], list[int]]:
    """Greedy best-fit: value -> buffer index, and each buffer's size in bytes; values of
    different row widths (`Lifetime.row`) never share a buffer.

    A buffer is free again once the step of its value's last read has finished, so a step
    never writes a buffer it also reads.
    """
    assign, sizes = {}, []
    for row in sorted({lt.row for lt in lifetimes}):
        part, part_sizes = _best_fit([lt for lt in lifetimes if lt.row == row])
        assign.update({k: b + len(sizes) for k, b in part.items()})
        sizes += part_sizes
    return assign, sizes


def _best_fit(lifetimes: list[Lifetime]) -> tuple[dict[int, int], list[int]]:
    assign, sizes = {}, []
    busy: list[tuple[int, int]] = []   # heap of (end, buffer)
    free: list[tuple[int, int]] = []   # sorted (size, buffer): best fit is a bisection
    for lt in sorted(lifetimes, key=lambda lt: (lt.start, -lt.nbytes, lt.key)):
        while busy and busy[0][0] < lt.start:
            buf = heapq.heappop(busy)[1]
            bisect.insort(free, (sizes[buf], buf))
        need = -(-max(lt.nbytes, 1) // ALIGN) * ALIGN
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            buf = free.pop(at)[1]
        elif free:  # grow the largest free buffer (the lowest index of that size)
            buf = free.pop(bisect.bisect_left(free, (free[-1][0], -1)))[1]
            sizes[buf] = need
        else:
            buf = len(sizes)
            sizes.append(need)
        heapq.heappush(busy, (lt.end, buf))
        assign[lt.key] = buf
    return assign, sizes


def last_reads(g: Graph, steps: list[Step], views: dict[int, int]) -> dict[int, int]:
    """The last step that reads each value (through views, from outside that step)."""
    last: dict[int, int] = {}
    for k, s in enumerate(steps):
        inside = set(s.nodes)
        for m in s.nodes:
            for i in g.node(m).inputs:
                if i not in inside:
                    last[base_of(views, i)] = k
    return last


def lifetimes(g: Graph, steps: list[Step], views: dict[int, int],
              skip=()) -> list[Lifetime]:
    start = {nid: -1 for nid in g.inputs.values() if nid in g.nx}
    for k, s in enumerate(steps):
        for out in s.outputs:
            start[out] = k
    last = last_reads(g, steps, views)
    end = {nid: max(k, last.get(nid, k)) for nid, k in start.items()}
    for nid in result_ids(g):
        b = base_of(views, nid)
        if b in end:
            end[b] = len(steps)
    for nid in g.inputs.values():
        # NOTE: a scan body's per-step input that the loop may read in place of a copy
        # (backends/numba_scan.py): no other value may reuse its bytes
        if nid in end and g.node(nid).attrs.get("held"):
            end[nid] = len(steps)
    by_rows = any(g.node(nid).attrs.get("rows") for nid in g.inputs.values())
    out = []
    for nid, s in start.items():
        if nid in skip:
            continue
        n = g.node(nid)
        nbytes = int(np.prod([int(d) for d in n.shape], dtype=np.int64)) * \
            np.dtype(n.dtype).itemsize
        row = nbytes // int(n.shape[0]) if by_rows and n.shape and int(n.shape[0]) else 0
        out.append(Lifetime(nid, nbytes, s, end[nid], row))
    return out


def in_place_updates(g: Graph, steps: list[Step], views: dict[int, int]) -> dict[int, str]:
    """Update values a kernel can write straight into their state array: {value: state name}.

    The optimizer's new weights and slots (and any other state update) would otherwise land
    in planned buffers and be copied into the state after each step (32 MB a step for the
    LSTM). Writing in place is right when the value's kernel is elementwise over the state's
    own shape, reads the state only directly (at the index it writes), and no later step, nor
    another kernel of the same launch, reads the old value."""
    owner = {out: k for k, s in enumerate(steps) for out in s.outputs}
    group_of = {out: grp for s in steps for grp in s.kernel_groups for out in grp.outputs}
    last_read = last_reads(g, steps, views)
    readers = _readers(g, steps, views)
    found: dict[int, str] = {}
    returned = {base_of(views, r) for r in g.roots()}  # NOTE: results are read after the step
    for name, value in g.updates.items():
        param = g.params.get(name)
        k = owner.get(value)
        if param is None or k is None or value in found or value in views or \
                param in returned or g.node(value).type != g.node(param).type or \
                last_read.get(param, -1) > k:
            continue
        grp = group_of.get(value)
        if grp is None or grp.reduce is not None or \
                any(r is not grp for r in readers.get((k, param), ())) or \
                any(base_of(views, i) == param and i != param
                    for m in grp.members for i in g.node(m).inputs):
            continue
        found[value] = name
    return found


def _readers(g: Graph, steps: list[Step], views: dict[int, int]) -> dict[tuple, list]:
    """{(step, value): the step's kernel groups reading the value (through views)}.

    NOTE: an index, not a scan per update: a multi-tensor step holds a group per parameter,
    and scanning them all for each update was quadratic (44 s of a repeat-250 compile)."""
    out: dict[tuple, list] = {}
    for k, s in enumerate(steps):
        for grp in s.kernel_groups:
            for b in {base_of(views, i) for m in grp.members for i in g.node(m).inputs}:
                out.setdefault((k, b), []).append(grp)
    return out


@dataclass
class MemoryPlan:
    assign: dict[int, int]   # node id -> buffer index
    sizes: list[int]         # bytes per buffer
    in_place: dict[int, str] = field(default_factory=dict)  # value -> state it is written to
    pieces: dict[int, Piece] = field(default_factory=dict)  # value -> its slice of a concat

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def in_place_of(self, g: Graph, outputs) -> dict[int, int]:
        """{output: the param node whose array it overwrites} for those of `outputs` that are
        state updates written in place (`build_kernel`'s `in_place`)."""
        return {v: g.params[self.in_place[v]] for v in outputs if v in self.in_place}


def _with_pieces(lts: list[Lifetime], pieces: dict[int, Piece]) -> list[Lifetime]:
    """A concat holding pieces is live from the first piece's write to the last read of any
    of them; the pieces get no buffer of their own."""
    span = {lt.key: (lt.start, lt.end) for lt in lts}
    for nid, (s, e) in list(span.items()):
        if nid in pieces:
            root = root_of(pieces, nid)
            rs, re_ = span[root]
            span[root] = (min(rs, s), max(re_, e))
    return [Lifetime(lt.key, lt.nbytes, *span[lt.key], lt.row) for lt in lts
            if lt.key not in pieces]


def plan_memory(g: Graph, steps: list[Step], views: dict[int, int],
                concat_in_place: bool = True) -> MemoryPlan:
    in_place = in_place_updates(g, steps, views)
    pieces = concat_pieces(g, steps, views, in_place) if concat_in_place else {}
    assign, sizes = plan_buffers(_with_pieces(lifetimes(g, steps, views, skip=in_place), pieces))
    return MemoryPlan(assign, sizes, in_place, pieces)
