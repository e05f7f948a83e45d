"""Reverse-mode differentiation as a graph transform: appends the backward graph (role "bwd")
to a primitive graph and returns the gradient node of each requested value.

One loop does it all: walk the nodes on a path from the wanted values to the loss in reverse
order, call each op's own `grad` rule, undo broadcasting with `sum_to`, and sum fan-out
contributions with `add` nodes. Integer and bool values never get gradients.
"""
from __future__ import annotations

from nnlang.ir.graph import Builder, Graph
from nnlang.ops import registry
from nnlang.ops.registry import NONDIFF, is_float


def sum_to(b: Builder, g: int, shape: tuple) -> int:
    """Sums a gradient over the axes that broadcasting expanded, back to `shape`."""
    gshape = b.type(g).shape
    if tuple(gshape) == tuple(shape):
        return g
    lead = len(gshape) - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape)
                                if d == 1 and gshape[lead + i] != 1]
    out = b.reduce_sum(g, axes=axes, keepdims=False) if axes else g
    if tuple(b.type(out).shape) != tuple(shape):
        out = b.reshape(out, shape=list(shape))
    return out


def accumulate(b: Builder, parts: list[int]) -> int:
    """Sums fan-out contributions. Adjoints of disjoint slices of one value (an unrolled RNN
    reads each time step of a projection) are joined by one concat, not summed as T full-size
    zero-padded tensors, which would cost O(T^2) time and memory."""
    pieces: dict[int, list] = {}
    rest = []
    for p in parts:
        n = b.g.node(p)
        if n.op == "unslice" and n.attrs["step"] == 1:
            a = n.attrs
            start, stop, _ = slice(a["start"], a["stop"], 1).indices(a["size"])
            pieces.setdefault(a["axis"] % len(n.shape), []).append((start, stop, p))
        else:
            rest.append(p)
    for axis, group in pieces.items():
        group.sort()
        disjoint = all(a[1] <= c[0] for a, c in zip(group, group[1:]))
        if len(group) < 2 or not disjoint:
            rest += [p for _, _, p in group]
            continue
        rest.append(_join(b, axis, group))
    total = rest[0]
    for p in rest[1:]:
        total = b.add(total, p)
    return total


def _join(b: Builder, axis: int, group: list) -> int:
    shape = list(b.type(group[0][2]).shape)
    dtype = b.type(group[0][2]).dtype
    chunks, pos = [], 0

    def zeros(n):
        dims = shape[:axis] + [n] + shape[axis + 1:]
        return b.broadcast_to(b.const(0.0, dtype), shape=dims)

    for start, stop, p in group:
        if start > pos:
            chunks.append(zeros(start - pos))
        chunks.append(b.g.node(p).inputs[0])
        pos = stop
    if pos < shape[axis]:
        chunks.append(zeros(shape[axis] - pos))
    return chunks[0] if len(chunks) == 1 else b.concat(*chunks, axis=axis)


def differentiable_path(g: Graph, loss: int, wrt) -> set[int]:
    """Nodes whose value depends on some `wrt` node and feeds the loss (tinygrad's deepwalk)."""
    feeds_loss = g.ancestors([loss])
    # NOTE: one walk from all of `wrt` (a walk per parameter was quadratic in the parameter
    # count); it stays inside feeds_loss, which holds every node between a wrt and the loss
    reached = {w for w in wrt if w in feeds_loss}
    stack, succ = list(reached), g.nx.succ
    while stack:
        for n in succ[stack.pop()]:
            if n in feeds_loss and n not in reached:
                reached.add(n)
                stack.append(n)
    return {n for n in reached if is_float(g.node(n).dtype)}


def backward(g: Graph, loss: int, wrt) -> dict[int, int]:
    """Adds d(loss)/d(w) for each w in `wrt` to `g` in place; returns {w: gradient node}."""
    wrt = list(wrt)
    path = differentiable_path(g, loss, wrt)
    b = Builder(g, role="bwd")
    lnode = g.node(loss)
    with b.at(lnode.span, lnode.path):
        seed = b.const(1.0, lnode.dtype)
    contributions: dict[int, list[int]] = {loss: [seed]}
    grads: dict[int, int] = {}
    for nid in sorted(path, key=_topo_index(g), reverse=True):
        parts = contributions.pop(nid, [])
        if not parts:
            continue
        node = g.node(nid)
        with b.at(node.span, node.path):
            total = accumulate(b, parts)
            grads[nid] = total
            opdef = registry.get(node.op)
            if opdef.grad is None or opdef.has(NONDIFF):
                continue
            in_grads = opdef.grad(b, node, total)
            for src, gi in zip(node.inputs, in_grads):
                if gi is None or src not in path:
                    continue
                contributions.setdefault(src, []).append(sum_to(b, gi, g.node(src).shape))
    return {w: grads[w] for w in wrt if w in grads}


def _topo_index(g: Graph):
    order = {n: i for i, n in enumerate(g.topo())}
    return order.__getitem__
