"""Sums of matmuls become one matmul of concatenations (after cse, before dce and fuse):

    A1 @ B1 + A2 @ B2 + ... = [A1 A2 ...] @ [B1; B2; ...]

A recurrent weight's gradient is sum_t h_t^T g_t over every time step; as 200 small GEMMs and a
200-input add it cost ~30 ms per LSTM step, and the fused add kernel with 200 array arguments
took numba 13 s to compile. One [units, T*B] @ [T*B, 4*units] GEMM is one BLAS call that the
runtime can split over threads.
"""
from __future__ import annotations

from nnlang.ir.graph import Builder, Graph
from nnlang.passes.rewrite import replace_value, result_ids

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


def _merged(b: Builder, g: Graph, terms: list[int]) -> int:
    lhs = [g.node(t).inputs[0] for t in terms]
    rhs = [g.node(t).inputs[1] for t in terms]
    if all(g.node(a).op == "transpose" and list(g.node(a).attrs["perm"]) == [1, 0]
           for a in lhs):
        # NOTE: h_t^T terms: stack the rows of h_t and transpose the result (a view), so
        # the copy reads and writes whole rows
        a = b.transpose(b.concat(*(g.node(x).inputs[0] for x in lhs), axis=0), perm=[1, 0])
    else:
        a = b.concat(*lhs, axis=1)
    return b.matmul(a, b.concat(*rhs, axis=0))


def merge_matmul_sums(g: Graph) -> Graph:
    g = g.copy()
    keep = result_ids(g)
    for root in g.topo():
        if root not in g.nx or g.node(root).op != "add":
            continue
        users = g.users(root)
        if len(users) == 1 and g.node(users[0]).op == "add" and root not in keep and \
                g.node(users[0]).shape == g.node(root).shape:
            continue  # not the top of its tree
        terms = _leaves(g, root, keep)
        mm = [t for t in terms if _is_2d_matmul(g, t) and len(g.users(t)) == 1 and t not in keep
              and g.node(t).dtype == g.node(root).dtype]
        if len(mm) < MIN_TERMS:
            continue
        node = g.node(root)
        b = Builder(g, node.span, node.path, node.role)
        total = _merged(b, g, mm)
        for t in terms:
            if t not in mm:
                total = b.add(total, t)
        replace_value(g, root, total)
    return g
