"""Index inputs checked before a call runs: a token id outside its table would otherwise wrap
around silently in `gather` (numpy's take) and write outside the gradient in `scatter_add`,
and a class label past the logits would be a row of zeros in `one_hot`, a sample that silently
adds nothing to the loss. PyTorch and Keras raise on such ids too; here the error points at
the op in the .nn file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnlang.errors import NNError
from nnlang.ir.graph import Graph, Node
from nnlang.passes.schedule import VIEW_OPS

_PASS_THROUGH = (*VIEW_OPS, "cast")   # ops that hand an id through unchanged


@dataclass(frozen=True)
class IndexInput:
    name: str    # the graph input holding ids
    rows: int    # how many values an id may take: 0 to rows - 1
    node: Node   # the op indexing with them (its span is the .nn call)
    # an id outside the range that is no error: one_hot's `skip` (cross_entropy's
    # ignore_index, PyTorch's -100), where every op indexing with the input skips it
    skip: int | None = None

    def bad(self, ids):
        """The mask of ids outside 0..rows - 1 that are not `skip`."""
        out = (ids < 0) | (ids >= self.rows)
        return out if self.skip is None else out & (ids != self.skip)


def _rows(g: Graph, n: Node) -> int | None:
    if n.op == "gather":
        return int(g.node(n.inputs[0]).shape[0])
    if n.op == "scatter_add":
        return int(n.attrs["rows"])
    if n.op == "one_hot":
        return int(n.attrs["depth"])
    return None


def index_inputs(g: Graph) -> list[IndexInput]:
    """Every graph input that gather, scatter_add or one_hot index with, and its range."""
    found: dict[str, IndexInput] = {}
    skips: dict[str, set] = {}
    for n in g:
        rows = _rows(g, n)
        if rows is None:
            continue
        src = g.node(n.inputs[1] if n.op != "one_hot" else n.inputs[0])
        while src.op in _PASS_THROUGH:
            src = g.node(src.inputs[0])
        if src.op != "input":
            continue
        name, skip = src.attrs["name"], n.attrs.get("skip") if n.op == "one_hot" else None
        skips.setdefault(name, set()).add(skip)
        # the error points at the narrowest use, and of equal ones at a use that skips nothing
        if (name not in found or rows < found[name].rows
                or rows == found[name].rows and skip is None):
            found[name] = IndexInput(name, rows, n)
    # NOTE: a skipped id is allowed only where every use skips the same one: fed to an
    # embedding too, -100 would still index outside its table
    return [IndexInput(c.name, c.rows, c.node, next(iter(skips[c.name])))
            if len(skips[c.name]) == 1 else c for c in found.values()]


def check_indices(checks: list[IndexInput], feeds: dict) -> None:
    for c in checks:
        ids = feeds.get(c.name)
        if ids is None or np.size(ids) == 0:
            continue
        ids = np.asarray(ids)
        wrong = ids[c.bad(ids)]
        if wrong.size:
            lo, hi = int(np.min(wrong)), int(np.max(wrong))
            bad = lo if lo < 0 else hi
            raise NNError(f"input '{c.name}' holds the id {bad}, outside the {c.rows} values "
                          f"it may take here (0 to {c.rows - 1})", span=c.node.span,
                          hint="the data's vocabulary or class count is larger than the "
                               "model's; raise it in the model (e.g. --set vocab=...) or "
                               "map unknown ids to a reserved one")
