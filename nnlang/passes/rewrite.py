"""Helpers the optimizing passes share: which nodes are results, replacing one value by
another everywhere it is referenced (users, named results, `root` marks and state updates), and
the copy-on-call convention of a pass.
"""
from __future__ import annotations

import functools

from nnlang.ir.graph import Graph


def graph_pass(fn):
    """A pass rewrites a copy of its graph, so callers keep theirs; `optimize` copies once and
    runs every pass with inplace=True (each copy of the unrolled LSTM's graph costs ~0.2 s)."""
    @functools.wraps(fn)
    def run(g: Graph, *args, inplace: bool = False, **kw) -> Graph:
        return fn(g if inplace else g.copy(), *args, **kw)
    return run


def result_ids(g: Graph) -> set[int]:
    """Every node whose value leaves the graph, including values written back to state."""
    return set(g.roots()) | set(g.updates.values())


def replace_value(g: Graph, old: int, new: int) -> None:
    """Points everything that refers to `old` at `new`; `old` is left without users."""
    if old == new:
        return
    g.replace_uses(old, new)
    if g.node(old).attrs.get("root"):
        g.node(new).attrs["root"] = True
    # NOTE: the gradients too: they are no roots (the updates read them), so a stale entry
    # only showed as a weight missing from --emit backward's `grad` lines
    for table in ("updates", "grads"):
        if any(v == old for v in getattr(g, table).values()):
            setattr(g, table, {k: new if v == old else v for k, v in getattr(g, table).items()})
