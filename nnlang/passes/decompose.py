"""Composite ops (dense, lstm, softmax, ...) to primitives, by each op's own `decompose` rule
(`ir.graph.decompose_node`)."""
from __future__ import annotations

from nnlang.ir.graph import Graph, decompose_node
from nnlang.ops import registry


def decompose(g: Graph, training: bool = True, ranks: int = 1) -> Graph:
    g = g.copy()
    changed = True
    while changed:
        changed = False
        for nid in g.topo():
            node = g.node(nid)
            opdef = registry.get(node.op)
            body = node.attrs.get("body")
            if body is not None and not body.primitive:  # a scan's step (ops/scan.py)
                # NOTE: no collective inside a step the scan repeats: a body's losses keep
                # their own rank's divisors
                node.attrs["body"] = body.map(lambda bg: decompose(bg, training))
            if opdef is None or not opdef.is_composite:
                continue
            decompose_node(g, nid, training, ranks)
            changed = True
    return g
