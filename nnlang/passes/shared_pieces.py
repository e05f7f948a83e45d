"""One value in two concats gets a copy for each further one, so that every concat can hold its
pieces in place (`concat_in_place.py` stores a value into one concat's buffer only).

The GRU is what it is for: its update and reset gate gradients go into both the input and the
recurrent weight-gradient concats of every time step, and the second concat copied them, two
copies a step (400 launches a step on a GPU at 200 steps). The copy is a `stop_gradient`, the
identity once autodiff has run, which fusion puts in the kernel that computes the value: that
kernel then stores the value twice, once into each concat's slice. Runs just before fusion,
as part of the `concat_in_place` switch.
"""
from __future__ import annotations

from nnlang.ir.graph import Builder, Graph
from nnlang.ops import registry
from nnlang.passes.rewrite import graph_pass


@graph_pass
def split_shared_pieces(g: Graph) -> Graph:
    users: dict[int, list[int]] = {}
    for n in g:
        if n.op == "concat":
            for i in dict.fromkeys(n.inputs):
                users.setdefault(i, []).append(n.id)
    b = Builder(g)
    for value, concats in users.items():
        node = g.node(value)
        # NOTE: only values an elementwise kernel stores: any other's copy is a kernel of its own
        if len(concats) < 2 or not registry.get(node.op).has(registry.ELEMENTWISE):
            continue
        for c in concats[1:]:
            with b.at(node.span, node.path, node.role):
                copy = b.emit("stop_gradient", value)
            g.set_inputs(c, [copy if i == value else i for i in g.node(c).inputs])
    return g
