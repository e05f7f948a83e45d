"""Dead-code elimination: drops nodes no result depends on (runs after fold and cse).

Inputs and params are always kept: params are persistent state the executable owns, and an
input that is no longer read must still be accepted as a feed.
"""
from __future__ import annotations

import networkx as nx

from nnlang.ir.graph import Graph
from nnlang.passes.rewrite import result_ids


def eliminate_dead(g: Graph) -> Graph:
    g = g.copy()
    live = set(result_ids(g))
    for nid in list(live):
        live |= nx.ancestors(g.nx, nid)
    for node in list(g):
        if node.id not in live and node.op not in ("input", "param"):
            g.remove(node.id)
    return g
