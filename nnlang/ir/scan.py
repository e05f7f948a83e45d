"""The body of a `scan` node (ops/scan.py): a primitive graph run once per time step, kept as
one attribute of the node so the outer graph's size does not depend on the sequence length.

Body convention (one packed value per step, so the scan node has one output like every node):
inputs `carry` [B, C], `x<i>` [B, k_i] (step t of sequence i, [T, B, k_i]), `w<j>` (whole
tensors the body reads every step); output `y` [B, W] whose first C columns are the next carry.
"""
from __future__ import annotations

import hashlib

import numpy as np

from nnlang.ir.graph import Graph
from nnlang.ops import registry


class Body:
    """A body graph with a structural key: two scans with equal bodies and inputs are one value
    for CSE (`lstm(..., return_state)` asks for the sequence and the states of one scan), and
    the plan cache's hash sees the structure through `repr`."""

    def __init__(self, g: Graph, carry: int, n_seqs: int, n_weights: int):
        self.g, self.carry, self.n_seqs, self.n_weights = g, carry, n_seqs, n_weights
        self.key = _structure(g)

    @property
    def primitive(self) -> bool:
        """A body is built with composites (dense, relu...); decompose lowers it in place of
        the node's attr through `map`, as it lowers the outer graph."""
        return not any(registry.get(n.op).is_composite for n in self.g)

    def map(self, fn) -> "Body":
        """A body with `fn` applied to its graph (decompose)."""
        return Body(fn(self.g), self.carry, self.n_seqs, self.n_weights)

    @property
    def width(self) -> int:
        return int(self.g.node(self.g.outputs["y"]).shape[1])

    def input(self, name: str) -> int:
        return self.g.inputs[name]

    def __eq__(self, other):
        return isinstance(other, Body) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return f"body({len(self.g)} nodes, carry {self.carry}, width {self.width}, {self.key[:12]})"

    __str__ = __repr__


def _structure(g: Graph) -> str:
    h = hashlib.sha256(g.dump().encode())
    for n in g:
        if n.op == "const":
            h.update(np.ascontiguousarray(n.attrs["value"]).tobytes())
    h.update(repr(sorted(g.inputs.items())).encode())
    return h.hexdigest()


def new_body_graph(dtype: str, batch, carry: int, seq_widths, weight_shapes, span=None) -> Graph:
    """An empty body with its inputs declared (see the module docstring for the names), at the
    scan's `span`: the backward's sum of a state's gradients (a state read twice in the step)
    is emitted at its input, and without one `--emit fused` showed it at line `?`."""
    from nnlang.ops.registry import TensorType
    g = Graph()

    def add(name, shape, op="input"):
        g.inputs[name] = g.add_node(op, [], {"name": name, "dtype": dtype, "shape": list(shape)},
                                    TensorType(tuple(shape), dtype), name=name, span=span)

    add("carry", (batch, carry))
    for i, k in enumerate(seq_widths):
        add(f"x{i}", (batch, k))
    for j, shape in enumerate(weight_shapes):
        add(f"w{j}", shape)
    return g


def keep_inputs(bg: Graph, prefix: str, count: int, keep) -> None:
    """Keeps of the body inputs prefix0 .. prefix<count - 1> those numbered in `keep`, in that
    order, renamed prefix0, prefix1, ... (inputs are named by position); the others leave
    `bg.inputs`, their nodes still in the graph for the caller."""
    nids = [bg.inputs.pop(f"{prefix}{k}") for k in range(count)]
    for new, k in enumerate(keep):
        nid = nids[k]
        bg.inputs[f"{prefix}{new}"] = nid
        bg.node(nid).attrs["name"] = bg.node(nid).name = f"{prefix}{new}"
