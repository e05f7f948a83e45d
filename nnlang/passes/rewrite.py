"""Helpers the optimizing passes share: which nodes are results, and replacing one value by
another everywhere it is referenced (users, named results, `root` marks and state updates).
"""
from __future__ import annotations

from nnlang.ir.graph import Graph


def updates(g: Graph) -> dict[str, int]:
    return g.meta.get("updates", {})


def result_ids(g: Graph) -> set[int]:
    """Every node whose value leaves the graph, including values written back to state."""
    return set(g.roots()) | set(updates(g).values())


def replace_value(g: Graph, old: int, new: int) -> None:
    """Points everything that refers to `old` at `new`; `old` is left without users."""
    if old == new:
        return
    g.replace_uses(old, new)
    if g.node(old).attrs.get("root"):
        g.node(new).attrs["root"] = True
    if any(v == old for v in updates(g).values()):
        g.meta["updates"] = {k: new if v == old else v for k, v in updates(g).items()}
