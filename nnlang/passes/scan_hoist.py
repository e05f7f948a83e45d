"""A scan body's product of a step's slice of a sequence by a weight (`x @ kernel` in a
hand-written cell) becomes one GEMM over the whole sequence before the loop, which the body
then reads as a sequence of its own: the input projection rnn, lstm and gru build themselves
(ops/rnn.py). Runs after decompose and before autodiff, so the gradient is whole-sequence
GEMMs too (dX = dZ W^T, dW = X^T dZ) and the backward loop keeps only the recurrent product.

NOTE why: in the loop, a hand-written LSTM cell ran two GEMMs a step forward and two backward,
stored 1792 values per row and step instead of 1024 and took ~1.2x the builtin's step
(IMDB shapes, batch 64, 200 tokens).
"""
from __future__ import annotations

from nnlang.ir.graph import Builder, Graph, Node
from nnlang.ir.scan import Body, keep_inputs
from nnlang.ops.nn import linear
from nnlang.ops.registry import TensorType


def hoist_projections(g: Graph) -> Graph:
    for nid in g.topo():
        node = g.node(nid)
        while node.op == "scan":
            found = _projection(node.attrs["body"])
            if found is None:
                break
            node = g.node(_hoisted(g, node, *found))
    return g


def _projection(body: Body):
    """(matmul node, sequence index, weight index) of the first body product x_i @ w_j of a
    rank-2 step slice by a rank-2 weight, or None."""
    bg = body.g
    role = {nid: name for name, nid in bg.inputs.items()}
    for n in bg:
        if n.op != "matmul":
            continue
        a, w = (role.get(i, "") for i in n.inputs)
        if a.startswith("x") and w.startswith("w") and len(bg.node(n.inputs[0]).shape) == 2 \
                and len(bg.node(n.inputs[1]).shape) == 2:
            return n, int(a[1:]), int(w[1:])
    return None


def _hoisted(g: Graph, n: Node, m: Node, i: int, j: int) -> int:
    """The scan `n` reading x_i @ w_j, computed before the loop, as a new last sequence; the
    sequence and the weight leave the body once nothing else there reads them."""
    body = n.attrs["body"]
    nseq = body.n_seqs
    seqs, weights = list(n.inputs[1:1 + nseq]), list(n.inputs[1 + nseq:])
    b = Builder(g, span=m.span or n.span, path=n.path, role=n.role)
    seqs.append(linear(b, seqs[i], weights[j]))

    bg = body.g.copy()
    name = f"x{nseq}"
    t = TensorType(tuple(m.type.shape), m.type.dtype)
    bg.inputs[name] = bg.add_node("input", [], {"name": name, "dtype": t.dtype,
                                                "shape": list(t.shape)}, t, name=name)
    bg.replace_uses(m.id, bg.inputs[name])
    bg.remove(m.id)
    seqs, weights = _drop_unread(bg, "x", seqs), _drop_unread(bg, "w", weights)
    new = g.add_node("scan", [n.inputs[0], *seqs, *weights],
                     {**n.attrs, "body": Body(bg, body.carry, len(seqs), len(weights))}, n.type,
                     span=n.span, path=n.path, role=n.role, name=n.name)
    g.replace_uses(n.id, new)
    g.remove(n.id)
    return new


def _drop_unread(bg: Graph, prefix: str, outer: list[int]) -> list[int]:
    """The outer values feeding the body inputs prefix0, prefix1, ... that its graph still
    reads; the unread inputs leave the body."""
    nids = [bg.inputs[f"{prefix}{k}"] for k in range(len(outer))]
    keep = [k for k, nid in enumerate(nids) if bg.users(nid) or nid in bg.outputs.values()]
    keep_inputs(bg, prefix, len(outer), keep)
    for k, nid in enumerate(nids):
        if k not in keep:
            bg.remove(nid)
    return [outer[k] for k in keep]
