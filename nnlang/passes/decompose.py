"""Composite ops (dense, lstm, softmax, ...) to primitives, by each op's own `decompose` rule.

Every node a rule emits keeps the composite's span, block path and role, so errors, the
backward graph and kernel headers still point at the .nn line that asked for them.
"""
from __future__ import annotations

from nnlang.ir.graph import Builder, Graph, op_attrs, slots
from nnlang.ops import registry


def decompose(g: Graph, training: bool = True) -> Graph:
    g = g.copy()
    changed = True
    while changed:
        changed = False
        for nid in g.topo():
            node = g.node(nid)
            opdef = registry.get(node.op)
            body = node.attrs.get("body")
            if body is not None and not body.primitive:  # a scan's step (ops/scan.py)
                node.attrs["body"] = body.map(lambda bg: decompose(bg, training))
            if opdef is None or not opdef.is_composite:
                continue
            b = Builder(g, span=node.span, path=node.path, role=node.role)
            b.training = training
            out = opdef.decompose(b, *slots(g, node), **op_attrs(node))
            if node.name and g.node(out).name is None:
                g.node(out).name = node.name
            g.replace_uses(nid, out)
            g.remove(nid)
            changed = True
    return g
