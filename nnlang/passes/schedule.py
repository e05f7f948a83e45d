"""Scheduling (after `fuse`): the linear order of kernels and library calls.

Views (reshape of a contiguous value, transpose, slice, broadcast) are not steps: they alias
their input's buffer. A reshape that numpy cannot express as a view becomes a copy step.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from nnlang.ir.graph import Graph
from nnlang.ops import registry
from nnlang.passes.fuse import Group

VIEW_OPS = ("reshape", "broadcast_to", "transpose", "slice")
# NOTE: a transpose that this many matmuls read is copied once instead of viewed: OpenBLAS ran
# the LSTM's backward [64, 512] @ U^T 40% slower on the transposed view (127 vs 90 us) than on
# a contiguous copy, 199 times a step
COPY_REUSED_TRANSPOSE = 8


@dataclass
class Step:
    kind: str                # kernel | multi | call | copy
    nodes: list[int]         # the graph nodes it computes, in topological order
    outputs: list[int]       # the nodes whose values it stores
    group: Group | None = None
    groups: list[Group] | None = None   # multi: one kernel launched over several groups

    @property
    def kernel_groups(self) -> list[Group]:
        return self.groups if self.kind == "multi" else [self.group] if self.group else []


def apply_view(node, x: np.ndarray) -> np.ndarray:
    """The numpy view a view node takes of its input; raises ValueError when it needs a copy."""
    a = node.attrs
    if node.op == "reshape":
        return np.reshape(x, [int(d) for d in node.shape], copy=False)
    if node.op == "transpose":
        return np.transpose(x, a["perm"])
    if node.op == "broadcast_to":
        return np.broadcast_to(x, [int(d) for d in node.shape])
    idx = [slice(None)] * x.ndim
    idx[a["axis"] % x.ndim] = slice(a["start"], a["stop"], a["step"])
    return x[tuple(idx)]


def fake_layout(shape) -> np.ndarray:
    """A contiguous array's layout without its memory (strides in elements, itemsize 1)."""
    shape = [int(d) for d in shape]
    strides, acc = [], 1
    for d in reversed(shape):
        strides.insert(0, acc)
        acc *= d
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape, strides)


def find_views(g: Graph) -> dict[int, int]:
    """View node -> its input, for every view op numpy can take without copying."""
    views, layout = {}, {}
    for nid in g.topo():
        n = g.node(nid)
        if n.op in VIEW_OPS and not _reused_transpose(g, n):
            try:
                layout[nid] = apply_view(n, layout[n.inputs[0]])
                views[nid] = n.inputs[0]
                continue
            except ValueError:
                pass
        layout[nid] = fake_layout(n.shape)
    return views


def _reused_transpose(g: Graph, n) -> bool:
    return n.op == "transpose" and \
        sum(g.node(u).op == "matmul" for u in g.users(n.id)) >= COPY_REUSED_TRANSPOSE


def copy_call(xp, node, x, out):
    """(function, args) materializing a view op scheduled as a copy step, for numpy or cupy."""
    if node.op == "transpose":
        return xp.copyto, (out, xp.transpose(x, node.attrs["perm"]))
    return xp.copyto, (out.reshape(x.shape), x)   # a reshape numpy cannot view


def base_of(views: dict[int, int], nid: int) -> int:
    while nid in views:
        nid = views[nid]
    return nid


def schedule(g: Graph, groups: list[Group]) -> tuple[list[Step], dict[int, int]]:
    """Steps in a valid order, and the view map (view node -> input)."""
    views = find_views(g)
    steps = [Step("kernel", list(grp.members), list(grp.outputs), grp) for grp in groups]
    grouped = {m for grp in groups for m in grp.members}
    for nid in g.topo():
        n = g.node(nid)
        if nid in grouped or nid in views or registry.get(n.op).has(registry.SOURCE):
            continue
        steps.append(Step("copy" if n.op in VIEW_OPS else "call", [nid], [nid]))
    pos = {nid: i for i, nid in enumerate(g.topo())}
    owner = {out: k for k, s in enumerate(steps) for out in s.outputs}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(steps)))
    for k, s in enumerate(steps):
        inside = set(s.nodes)
        for m in s.nodes:
            for i in g.node(m).inputs:
                src = owner.get(base_of(views, i))
                if i not in inside and src is not None and src != k:
                    dag.add_edge(src, k)
    order = nx.lexicographical_topological_sort(dag, key=lambda k: pos[steps[k].nodes[-1]])
    return [steps[k] for k in order], views
