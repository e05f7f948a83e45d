"""Index inputs checked before a call runs: a token id outside its table would otherwise wrap
around silently in `gather` (numpy's take) and write outside the gradient in `scatter_add`,
and a class label past the logits would be a row of zeros in `one_hot`, a sample that silently
adds nothing to the loss. PyTorch and Keras raise on such ids too; here the error points at
the op in the .nn file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nnlang.errors import NNError
from nnlang.ir.dims import is_concrete
from nnlang.ir.graph import Graph, Node, op_attrs
from nnlang.ops import registry
from nnlang.passes.fold import fed_chain

# ops whose ids (their first input) take `depth` values, with `skip` allowed besides
# (check_ids: the class ids cross_entropy and accuracy read)
_BY_DEPTH = ("one_hot", "check_ids")


@dataclass(frozen=True)
class IndexInput:
    name: str    # the graph input holding ids
    rows: int    # how many values an id may take: 0 to rows - 1
    node: Node   # the op indexing with them (its span is the .nn call)
    # an id outside the range that is no error: one_hot's `skip` (cross_entropy's
    # ignore_index, PyTorch's -100), where every op indexing with the input skips it
    skip: int | None = None
    # the flat positions of the input that reach the op (a slice of it: the label column of
    # a table, ids[:, 1:]), or None for all of them. NOTE: a value the op never reads is no
    # error: checking the whole input refused a table whose other columns hold big features
    at: np.ndarray | None = field(default=None, compare=False)

    def read(self, ids):
        """The values of `ids` (the fed array, in the input's shape) that reach the op."""
        return ids if self.at is None else np.asarray(ids).reshape(-1)[self.at]

    def bad(self, ids):
        """The mask of ids outside 0..rows - 1 that are not `skip`."""
        out = (ids < 0) | (ids >= self.rows)
        return out if self.skip is None else out & (ids != self.skip)


def _rows(g: Graph, n: Node) -> int | None:
    if n.op == "gather":
        return int(g.node(n.inputs[0]).shape[0])
    if n.op == "scatter_add":
        return int(n.attrs["rows"])
    if n.op in _BY_DEPTH:
        return int(n.attrs["depth"])
    return None


def _reached(src: Node, chain: list[Node]) -> np.ndarray | None:
    """The flat positions of `src` that its views `chain` hand on (the same views applied to
    the positions themselves), or None for all of them or when a shape is not known yet."""
    if not all(n.shape is not None and is_concrete(n.shape) for n in (src, *chain)):
        return None
    pos = np.arange(int(np.prod(src.shape)), dtype=np.int64).reshape(src.shape)
    for n in chain:
        if n.op != "cast":   # NOTE: an int cast changes no position
            pos = registry.get(n.op).impl(pos, **op_attrs(n))
    at = np.unique(pos)
    return None if at.size == int(np.prod(src.shape)) else at


def _class_ids(g: Graph, n: Node) -> tuple[int, int, int | None] | None:
    """(classes, ids node, skip) of `argmax(scores) == labels` (accuracy's decomposition)
    with int labels: a label past the classes is a miss that no prediction can hit, which
    counted silently when no loss's one_hot read the same labels. skip: the k of a
    `labels != k` beside it (accuracy's ignore_index), which leaves those rows out."""
    if n.op != "eq":
        return None
    a, b = (g.node(i) for i in n.inputs)
    if b.op == "argmax":
        a, b = b, a
    if a.op != "argmax" or not b.dtype.startswith("int"):
        return None
    scores = g.node(a.inputs[0])
    skip = None
    for u in g.users(b.id):
        other = [g.node(i) for i in g.node(u).inputs if i != b.id]
        if g.node(u).op == "ne" and len(other) == 1 and other[0].op == "const":
            skip = int(other[0].attrs["value"])
    return int(scores.shape[a.attrs["axis"]]), b.id, skip


def index_inputs(g: Graph) -> list[IndexInput]:
    """Every graph input that gather, scatter_add or one_hot index with, or that accuracy
    compares with an argmax, and its range: one check per input and part of it read."""
    found: dict[tuple, IndexInput] = {}
    skips: dict[tuple, set] = {}
    for n in g:
        rows, skip = _rows(g, n), n.attrs.get("skip") if n.op in _BY_DEPTH else None
        ids = None if rows is None else n.inputs[0] if n.op in _BY_DEPTH else n.inputs[1]
        if rows is None and (got := _class_ids(g, n)) is not None:
            rows, ids, skip = got
        src, chain = (None, []) if ids is None else fed_chain(g, ids)
        if src is None:
            continue
        name, at = src.attrs["name"], _reached(src, chain)
        key = (name, None if at is None else at.tobytes())
        skips.setdefault(key, set()).add(skip)
        # the error points at the narrowest use, and of equal ones at a use that skips nothing
        if (key not in found or rows < found[key].rows
                or rows == found[key].rows and skip is None):
            found[key] = IndexInput(name, rows, n, at=at)
    # NOTE: a skipped id is allowed only where every use skips the same one: fed to an
    # embedding too, -100 would still index outside its table
    return [IndexInput(c.name, c.rows, c.node, next(iter(skips[k])), c.at)
            if len(skips[k]) == 1 else c for k, c in found.items()]


def check_indices(checks: list[IndexInput], feeds: dict) -> None:
    for c in checks:
        ids = feeds.get(c.name)
        if ids is None or np.size(ids) == 0:
            continue
        ids = c.read(ids)
        wrong = ids[c.bad(ids)]
        if wrong.size:
            lo, hi = int(np.min(wrong)), int(np.max(wrong))
            bad = lo if lo < 0 else hi
            raise NNError(f"input '{c.name}' holds the id {bad}, outside the {c.rows} values "
                          f"it may take here (0 to {c.rows - 1})", span=c.node.span,
                          hint="the data's vocabulary or class count is larger than the "
                               "model's; raise it in the model (e.g. --set vocab=...) or "
                               "map unknown ids to a reserved one")
