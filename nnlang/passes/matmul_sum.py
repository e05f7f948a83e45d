"""Sums of matmuls become one matmul of concatenations (after cse, before dce and fuse):

    A1 @ B1 + A2 @ B2 + ... = [A1 A2 ...] @ [B1; B2; ...]
    sum(X1, axes) + sum(X2, axes) + ... = sum([X1; X2; ...], axes)   (axis 0 among the axes)

A recurrent weight's gradient is sum_t h_t^T g_t over every time step; as 200 small GEMMs and a
200-input add it cost ~30 ms per LSTM step, and the fused add kernel with 200 array arguments
took numba 13 s to compile. One [units, T*B] @ [T*B, 4*units] GEMM is one BLAS call that the
runtime can split over threads. A recurrent bias gradient is the same sum of column sums of
the same g_t, so both share one concatenation.
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.graph import Builder, Graph
from nnlang.passes.rewrite import graph_pass, replace_value, result_ids

MIN_TERMS = 4  # below this the two concatenation copies cost more than the calls they save


def _is_2d_matmul(g: Graph, nid: int) -> bool:
    n = g.node(nid)
    return n.op == "matmul" and all(len(g.node(i).shape) == 2 for i in n.inputs)


def _leaves(g: Graph, root: int, keep: set[int]) -> list[int]:
    """The terms of the add tree under `root`: interior adds have one user and no broadcast."""
    shape = g.node(root).shape
    out, stack = [], [root]
    while stack:
        nid = stack.pop()
        n = g.node(nid)
        inner = n.op == "add" and n.shape == shape and all(g.node(i).shape == shape
                                                            for i in n.inputs)
        if inner and (nid == root or (len(g.users(nid)) == 1 and nid not in keep)):
            stack.extend(reversed(n.inputs))
        else:
            out.append(nid)
    return out


def _is_row_sum(g: Graph, nid: int) -> bool:
    n = g.node(nid)
    if n.op != "reduce_sum" or not g.node(n.inputs[0]).shape:
        return False
    axes = n.attrs["axes"]
    rank = len(g.node(n.inputs[0]).shape)
    return axes is None or 0 in [a % rank for a in axes]


class _Concats:
    """One concat node per (inputs, axis), shared by every merged sum and with the graph's
    existing concats (the gradient of the time-major input projection stacks the same g_t)."""

    def __init__(self, b: Builder, g: Graph):
        self.b, self.made, self.orders = b, {}, {}
        for n in g:
            if n.op == "concat" and n.attrs["axis"] == 0:
                self._add(tuple(n.inputs), 0, n.id)

    def _add(self, xs: tuple, axis: int, nid: int) -> None:
        self.made.setdefault((xs, axis), nid)
        self.orders.setdefault((frozenset(xs), axis), xs)

    def order(self, xs: list[int], axis: int) -> list[int]:
        """xs in the order of an existing concatenation of the same values, if there is one."""
        ins = self.orders.get((frozenset(xs), axis))
        return list(ins) if ins is not None and len(ins) == len(xs) else xs

    def __call__(self, xs, axis: int) -> int:
        key = (tuple(xs), axis)
        if key not in self.made:
            self._add(key[0], axis, self.b.concat(*xs, axis=axis))
        return self.made[key]


def _merged_matmuls(b: Builder, g: Graph, terms: list[int], concat: _Concats) -> int:
    terms = _ordered(g, terms, concat)
    lhs = [g.node(t).inputs[0] for t in terms]
    rhs = [g.node(t).inputs[1] for t in terms]
    rows = [_untransposed(b, g, x) for x in lhs]
    if all(r is not None for r in rows):
        # NOTE: h_t^T terms: stack the rows of h_t and transpose the result (a view), so
        # the copy reads and writes whole rows, and the h_t can be stored into it in place
        a = b.transpose(concat(rows, 0), perm=[1, 0])
    else:
        a = concat(lhs, 1)
    return b.matmul(a, concat(rhs, 0))


def _untransposed(b: Builder, g: Graph, nid: int) -> int | None:
    """x for an operand x^T: a transpose's input, or a constant's transpose (the initial
    state h_0^T, folded into a constant); None for anything else."""
    n = g.node(nid)
    if n.op == "transpose" and list(n.attrs["perm"]) == [1, 0]:
        return n.inputs[0]
    if n.op == "const" and np.ndim(n.attrs["value"]) == 2:
        return b.const(np.ascontiguousarray(np.transpose(n.attrs["value"])), n.dtype)
    return None


def _ordered(g: Graph, terms: list[int], concat: _Concats) -> list[int]:
    """terms reordered so their data operands follow an existing concatenation of them."""
    data = [g.node(t).inputs[-1] for t in terms]
    if len(set(data)) != len(data):
        return terms
    at = {x: t for x, t in zip(data, terms)}
    return [at[x] for x in concat.order(data, 0)]


def _merged_sums(b: Builder, g: Graph, terms: list[int], concat: _Concats) -> int:
    terms = _ordered(g, terms, concat)
    n = g.node(terms[0])
    xs = [g.node(t).inputs[0] for t in terms]
    return b.reduce_sum(concat(xs, 0), axes=n.attrs["axes"], keepdims=n.attrs["keepdims"])


def _groups(g: Graph, terms: list[int], dtype: str, keep: set[int]):
    """Mergeable terms by kind and operand shapes, each ordered by its data operand's id so sums
    over the same values (g_t) build the same concatenation."""
    out: dict[tuple, list[int]] = {}
    for t in terms:
        n = g.node(t)
        if len(g.users(t)) != 1 or t in keep or n.dtype != dtype:
            continue
        if _is_2d_matmul(g, t):
            key = ("mm", tuple(g.node(n.inputs[0]).shape[:1]), tuple(g.node(n.inputs[1]).shape[1:]))
        elif _is_row_sum(g, t):
            key = ("sum", tuple(g.node(n.inputs[0]).shape), str(n.attrs["axes"]),
                   n.attrs["keepdims"])
        else:
            continue
        out.setdefault(key, []).append(t)
    return {k: sorted(v, key=lambda t: g.node(t).inputs[-1]) for k, v in out.items()
            if len(v) >= MIN_TERMS}


@graph_pass
def merge_matmul_sums(g: Graph) -> Graph:
    keep = result_ids(g)
    concat = None
    for root in g.topo():
        if root not in g.nx or g.node(root).op != "add":
            continue
        users = g.users(root)
        if len(users) == 1 and g.node(users[0]).op == "add" and root not in keep and \
                g.node(users[0]).shape == g.node(root).shape:
            continue  # not the top of its tree
        terms = _leaves(g, root, keep)
        groups = _groups(g, terms, g.node(root).dtype, keep)
        if not groups:
            continue
        node = g.node(root)
        b = Builder(g, node.span, node.path, node.role)
        concat = concat or _Concats(b, g)
        concat.b = b
        merged = {t for ts in groups.values() for t in ts}
        total = None
        for (kind, *_), ts in groups.items():
            v = (_merged_matmuls if kind == "mm" else _merged_sums)(b, g, ts, concat)
            total = v if total is None else b.add(total, v)
        for t in terms:
            if t not in merged:
                total = b.add(total, t)
        replace_value(g, root, total)
    return g
