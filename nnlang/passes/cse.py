"""Common-subexpression elimination: one node per (op, inputs, attrs), in topological order.

Array attrs (const values) are compared by dtype, shape and bytes. Random ops are pure
functions of (key, salt, shape), so two draws merge only when their salts are equal too.
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.graph import Graph
from nnlang.passes.rewrite import graph_pass, replace_value


def _hashable(v):
    if isinstance(v, np.ndarray):
        return ("ndarray", str(v.dtype), v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def node_key(node) -> tuple:
    # NOTE: `root` is not part of the value, so a root and an equal non-root still merge
    attrs = tuple(sorted((k, _hashable(v)) for k, v in node.attrs.items() if k != "root"))
    return (node.op, node.inputs, attrs, node.dtype, node.shape)


@graph_pass
def eliminate_common(g: Graph) -> Graph:
    seen: dict[tuple, int] = {}
    merged: dict[int, int] = {}
    # NOTE: the state updates and gradients are renamed once at the end: replace_value scans
    # them for each merge, quadratic in the parameter count (every parameter's optimizer
    # constants merge)
    ups, grads, g.updates, g.grads = g.updates, g.grads, {}, {}
    for nid in g.topo():
        node = g.node(nid)
        try:
            key = node_key(node)
            hash(key)
        except TypeError:  # an attr we cannot compare: keep the node as it is
            continue
        if key in seen:
            replace_value(g, nid, seen[key])
            merged[nid] = seen[key]
            g.remove(nid)
        else:
            seen[key] = nid
    # NOTE: a kept node is never merged later, so one lookup is enough
    g.updates = {k: merged.get(v, v) for k, v in ups.items()}
    g.grads = {k: merged.get(v, v) for k, v in grads.items()}
    return g
