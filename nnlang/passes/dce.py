"""Dead-code elimination: drops nodes no result depends on (runs after fold and cse).

Inputs and params are always kept: params are persistent state the executable owns, and an
input that is no longer read must still be accepted as a feed.
"""
from __future__ import annotations

from nnlang.ir.graph import Graph
from nnlang.passes.rewrite import graph_pass, result_ids


@graph_pass
def eliminate_dead(g: Graph) -> Graph:
    live = g.ancestors(result_ids(g))
    for node in list(g):
        if node.id not in live and node.op not in ("input", "param"):
            g.remove(node.id)
    return g
