"""Memory planning (after `schedule`): liveness-based buffer reuse.

Every value a step stores and every fed input gets a slice of one of a few byte buffers,
allocated once per executable; values whose lifetimes do not overlap share a buffer. Params
and constants own their memory, and results stay live until the end of the call.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

import numpy as np

from nnlang.ir.graph import Graph
from nnlang.passes.rewrite import result_ids
from nnlang.passes.schedule import Step, base_of

ALIGN = 64


@dataclass(frozen=True)
class Lifetime:
    key: int        # the value (a node id)
    nbytes: int
    start: int      # step that writes it (-1: before the first step, e.g. a fed input)
    end: int        # last step that reads it (len(steps): read after the last step)


def plan_buffers(lifetimes: list[Lifetime]) -> tuple[dict[int, int], list[int]]:
    """Greedy best-fit: value -> buffer index, and each buffer's size in bytes.

    A buffer is free again once the step of its value's last read has finished, so a step
    never writes a buffer it also reads.
    """
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


def lifetimes(g: Graph, steps: list[Step], views: dict[int, int]) -> list[Lifetime]:
    start = {nid: -1 for nid in g.inputs.values() if nid in g.nx}
    for k, s in enumerate(steps):
        for out in s.outputs:
            start[out] = k
    end = dict(start)
    for k, s in enumerate(steps):
        inside = set(s.nodes)
        for m in s.nodes:
            for i in g.node(m).inputs:
                b = base_of(views, i)
                if i not in inside and b in end:
                    end[b] = max(end[b], k)
    for nid in result_ids(g):
        b = base_of(views, nid)
        if b in end:
            end[b] = len(steps)
    out = []
    for nid, s in start.items():
        n = g.node(nid)
        size = int(np.prod([int(d) for d in n.shape], dtype=np.int64))
        out.append(Lifetime(nid, size * np.dtype(n.dtype).itemsize, s, end[nid]))
    return out


@dataclass
class MemoryPlan:
    assign: dict[int, int]   # node id -> buffer index
    sizes: list[int]         # bytes per buffer

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)


def plan_memory(g: Graph, steps: list[Step], views: dict[int, int]) -> MemoryPlan:
    assign, sizes = plan_buffers(lifetimes(g, steps, views))
    return MemoryPlan(assign, sizes)
