"""Constant folding plus a small table of algebraic identities (runs first in `optimize`).

A node whose inputs are all constants becomes a constant computed by the op's numpy `impl`.
`SIMPLIFY_RULES` then removes operations that leave a value unchanged or moves data movement
out of the way (an elementwise op between inverse transposes or under slices, a stack of unit
reshapes); every rule is exact in floating point (x*1 keeps NaN and -0.0, a double transpose is
a permutation, elementwise ops commute with transposes and slices, ...).
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.dims import dim_prod, numel
from nnlang.ir.graph import COUNT, Graph, Node, op_attrs
from nnlang.ir.scan import Body, keep_inputs
from nnlang.ops import registry
from nnlang.ops.registry import ELEMENTWISE, INT_DTYPES, RANDOM, SOURCE, TensorType
from nnlang.passes.rewrite import References, graph_pass
from nnlang.passes.schedule import VIEW_OPS

FOLD_LIMIT = 4096  # NOTE: never fold into a constant much larger than its inputs (broadcasts)
MAX_ROUNDS = 16    # of rules over the nodes earlier rounds made (each round is one level deeper)


def _const_value(g: Graph, nid: int):
    node = g.node(nid)
    return node.attrs["value"] if node.op == "const" else None


def _uniform(g: Graph, nid: int):
    """The one value every element of `nid` holds, when it is a constant of equal elements
    seen through views (a broadcast constant sliced or reshaped), else None."""
    while g.node(nid).op in VIEW_OPS:
        nid = g.node(nid).inputs[0]
    v = _const_value(g, nid)
    if v is None or v.size == 0 or not bool(np.all(v == v.flat[0])):
        return None
    if v.dtype.kind == "f" and not bool(np.all(np.signbit(v) == np.signbit(v.flat[0]))):
        return None  # NOTE: 0.0 and -0.0 mixed: one value would change some signs
    return v.flat[0]


def _counts(g: Graph, ids) -> dict:
    """The count mark (`Builder.count`) for a const made from the consts `ids` (through
    views): a value computed from a count changes with the length as the count does."""
    for nid in ids:
        while g.node(nid).op in VIEW_OPS:
            nid = g.node(nid).inputs[0]
        if g.node(nid).attrs.get(COUNT):
            return {COUNT: True}
    return {}


def _is_fill(g: Graph, nid: int, fill: float) -> bool:
    v = _uniform(g, nid)
    return v is not None and bool(v == fill)


def _uniform_view(g: Graph, n: Node, named: set[int]):
    """A view of a uniform constant too big to fold is a broadcast of that one value.

    NOTE why: a slice of a broadcast constant (autodiff's ones in a scan body's backward) was
    a zero-stride [64, 128] array argument, typed layout 'A' by numba, and the whole LSTM
    backward cell kernel ran scalar (570 us a step against 100); a broadcast scalar becomes a
    literal in the kernel instead (`codegen/kernel.py`)."""
    src = g.node(n.inputs[0])
    if n.op == "broadcast_to" and src.op == "const" and src.attrs["value"].ndim == 0:
        return None  # already the canonical form
    value = _uniform(g, n.id)
    if value is None:
        return None
    scalar = g.add_node("const", [], {"value": np.array(value, dtype=n.dtype),
                                      **_counts(g, [n.id])},
                        TensorType((), n.dtype), span=n.span, path=n.path, role=n.role)
    return g.add_node("broadcast_to", [scalar], {"shape": list(n.shape)}, n.type, span=n.span,
                      path=n.path, role=n.role, name=n.name)


def _identity_operand(fill: float, sides=(0, 1)):
    """`op(x, c)` (or `op(c, x)` for commutative ops) with c all `fill` and x's type is x."""
    def rule(g: Graph, n: Node, named: set[int]):
        for side in sides:
            x, c = n.inputs[1 - side], n.inputs[side]
            if _is_fill(g, c, fill) and g.node(x).type == n.type:
                return x
        return None
    return rule


def _same_type_input(g: Graph, n: Node, named: set[int]):
    x = n.inputs[0]
    return x if g.node(x).type == n.type else None


def fed_input(g: Graph, nid: int) -> Node | None:
    """The graph input `nid` hands through unchanged (views, casts between int types), if
    any. NOTE: a cast from float is no hand-through: it changes the values (5.5 -> 5, NaN ->
    an arbitrary int), so checking the fed floats let a NaN label through as a row of zeros
    and refused -0.5 (class 0 once cast); such ids are checked as computed ones."""
    return fed_chain(g, nid)[0]


def fed_chain(g: Graph, nid: int) -> tuple[Node | None, list[Node]]:
    """(fed_input's input, the views and casts from it to `nid`, in the order they apply):
    a slice of a fed input hands through only part of it (labels in one column of a table)."""
    src, chain = g.node(nid), []
    while src.op in VIEW_OPS or src.op == "cast" and \
            g.node(src.inputs[0]).dtype in (*INT_DTYPES, "bool"):
        chain.append(src)
        src = g.node(src.inputs[0])
    return (src, chain[::-1]) if src.op == "input" else (None, [])


def _fed_ids(g: Graph, n: Node, named: set[int]):
    # NOTE: fed ids are checked before the call, naming the input (runtime/indices.py); the
    # graph's check_ids is for ids the model computes, and on fed ones was a copy and two
    # reductions (a launch on CUDA) each step for nothing
    return n.inputs[0] if fed_input(g, n.inputs[0]) is not None else None


def _identity_perm(g: Graph, n: Node, named: set[int]):
    return n.inputs[0] if list(n.attrs["perm"]) == list(range(len(n.attrs["perm"]))) else None


def _double_transpose(g: Graph, n: Node, named: set[int]):
    inner = g.node(n.inputs[0])
    if inner.op != "transpose":
        return None
    perm = [inner.attrs["perm"][p] for p in n.attrs["perm"]]
    if perm == list(range(len(perm))):
        return inner.inputs[0]
    return g.add_node("transpose", [inner.inputs[0]], {"perm": perm}, n.type, span=n.span,
                      path=n.path, role=n.role, name=n.name)


def _untransposed(g: Graph, nid: int, perm: list[int], depth: int = 4):
    """A node y with transpose(y, perm) equal to `nid`, built from the transposes `nid` is an
    elementwise function of (scalars broadcast the same either way), or None."""
    n = g.node(nid)
    if n.op == "transpose" and list(n.attrs["perm"]) == perm:
        return n.inputs[0]
    if n.shape is not None and all(d == 1 for d in n.shape):
        return nid
    op = registry.get(n.op)
    if depth == 0 or not op.has(ELEMENTWISE) or n.type is None:
        return None
    ins = [_untransposed(g, i, perm, depth - 1) for i in n.inputs]
    if any(i is None for i in ins):
        return None
    inverse = list(np.argsort(perm))
    shape = tuple(n.shape[inverse[j]] for j in range(len(perm)))
    return g.add_node(n.op, ins, dict(n.attrs), TensorType(shape, n.dtype), span=n.span,
                      path=n.path, role=n.role)


def _transposed_back(g: Graph, n: Node, named: set[int]):
    """transpose(f(transpose(x, p)), p^-1) is f(x) for elementwise f: the conv/pool lowering
    works channels last, and a channels-first relu between two of them (and its gradient)
    otherwise costs two transposed copies."""
    inner = g.node(n.inputs[0])
    if inner.op == "transpose" or not registry.get(inner.op).has(ELEMENTWISE):
        return None
    perm = [int(i) for i in np.argsort(n.attrs["perm"])]
    return _untransposed(g, n.inputs[0], perm)


def _transposed_gather(g: Graph, n: Node, named: set[int]):
    """transpose(gather(table, idx), p) is gather(table, transpose(idx, p')) when p keeps the
    row axis last: the embedding lookup then lands time-major for a recurrence, and the
    [batch, time, dim] -> [time, batch, dim] copy before its input projection is gone."""
    inner, perm = g.node(n.inputs[0]), [int(p) for p in n.attrs["perm"]]
    if inner.op != "gather" or perm[-1] != len(perm) - 1 or \
            len(g.node(inner.inputs[0]).shape) != 2:
        return None
    idx = g.node(inner.inputs[1])
    at = perm[:-1]
    t_idx = g.add_node("transpose", [idx.id], {"perm": at},
                       TensorType(tuple(idx.shape[a] for a in at), idx.dtype), span=n.span,
                       path=n.path, role=n.role)
    return g.add_node("gather", [inner.inputs[0], t_idx], dict(inner.attrs), n.type,
                      span=inner.span, path=inner.path, role=inner.role, name=n.name)


def _transposed_scatter(g: Graph, n: Node, named: set[int]):
    """scatter_add(transpose(src, p), idx) is scatter_add(src, transpose(idx, p^-1)) when p
    only permutes idx's axes (a row's values stay in place): the adjoint of
    `_transposed_gather`. The time-major embedding's gradient then scatters from where the
    input projection's GEMM wrote it, and the library call no longer stages a transposed copy
    of it (the LSTM's scatter_add call 2.7 -> 1.6 ms); the ids' transpose is the forward
    gather's (CSE). Repeated ids add in another order."""
    src, idx = g.node(n.inputs[0]), g.node(n.inputs[1])
    if src.op != "transpose" or idx.shape is None:
        return None
    perm = [int(p) for p in src.attrs["perm"]]
    lead = len(idx.shape)
    if lead < 2 or perm[lead:] != list(range(lead, len(perm))) or perm == sorted(perm):
        return None
    at = [int(a) for a in np.argsort(perm[:lead])]
    inner = g.node(src.inputs[0])
    t_idx = g.add_node("transpose", [idx.id], {"perm": at},
                       TensorType(tuple(inner.shape[:lead]), idx.dtype), span=n.span,
                       path=n.path, role=n.role)
    return g.add_node("scatter_add", [inner.id, t_idx], dict(n.attrs), n.type, span=n.span,
                      path=n.path, role=n.role, name=n.name)


def _invariant_sequence(g: Graph, n: Node, named: set[int]):
    """A scan's sequence that is one vector broadcast over time and batch (an RNN's bias)
    becomes a weight of its body, broadcast there: as a sequence the loop copied it into the
    body's input at every step, and the bias add had a pass over [T, B, N] of its own before
    the loop (2.3 ms of the LSTM's step); the step's fused kernel now adds it."""
    nseq = n.attrs["body"].n_seqs
    if nseq < 2:   # NOTE: the first sequence left gives the loop its length
        return None
    for i, s in enumerate(n.inputs[1:1 + nseq]):
        wide = g.node(s)
        if wide.op != "broadcast_to" or wide.type is None:
            continue
        src = g.node(wide.inputs[0])
        if src.shape and src.shape[-1] == wide.shape[-1] and all(d == 1 for d in src.shape[:-1]):
            return _sequence_to_weight(g, n, i, src)
    return None


def _unread_sequence(g: Graph, n: Node, named: set[int]):
    """A scan's sequence its body never reads (a backward scan's zero output gradient, or the
    input projection once the forward stores the pre-activations) is no input: the loop then
    does not keep it alive until the backward."""
    body = n.attrs["body"]
    if body.n_seqs < 2:   # NOTE: the first sequence left gives the loop its length
        return None
    for i in range(body.n_seqs):
        if not body.g.users(body.g.inputs[f"x{i}"]):
            bg, old = _without_sequence(body, i)
            bg.remove(old)
            return _scan_without(g, n, i, bg)
    return None


def _without_sequence(body: Body, i: int):
    """(a copy of the body's graph without its sequence input i, that input's node id, still
    in the graph until its users are pointed elsewhere)."""
    bg = body.g.copy()
    old = bg.inputs[f"x{i}"]
    keep_inputs(bg, "x", body.n_seqs, [k for k in range(body.n_seqs) if k != i])
    return bg, old


def _scan_without(g: Graph, n: Node, i: int, bg: Graph, weights=()) -> int:
    """The scan `n` without its sequence i, running body graph `bg`, `weights` appended."""
    body = n.attrs["body"]
    nseq = body.n_seqs
    seqs = [s for k, s in enumerate(n.inputs[1:1 + nseq]) if k != i]
    return g.add_node("scan", [n.inputs[0], *seqs, *n.inputs[1 + nseq:], *weights],
                      {**n.attrs, "body": Body(bg, body.carry, nseq - 1,
                                               body.n_weights + len(weights))},
                      n.type, span=n.span, path=n.path, role=n.role, name=n.name)


def _sequence_to_weight(g: Graph, n: Node, i: int, src: Node) -> int:
    body = n.attrs["body"]
    bg, old = _without_sequence(body, i)
    name, width = f"w{body.n_weights}", int(src.shape[-1])
    w = TensorType((width,), src.dtype)
    # NOTE: both stand for the sequence they replace, so they keep its source line
    at = {k: getattr(bg.node(old), k) for k in ("span", "path", "role")}
    bg.inputs[name] = bg.add_node("input", [], {"name": name, "dtype": src.dtype,
                                                "shape": [width]}, w, name=name, **at)
    wide = bg.add_node("broadcast_to", [bg.inputs[name]], {"shape": list(bg.node(old).shape)},
                       bg.node(old).type, **at)
    bg.replace_uses(old, wide)
    bg.remove(old)
    vec = src.id if len(src.shape) == 1 else g.add_node(
        "reshape", [src.id], {"shape": [width]}, w, span=n.span, path=n.path, role=n.role)
    return _scan_without(g, n, i, bg, [vec])


def _double_neg(g: Graph, n: Node, named: set[int]):
    inner = g.node(n.inputs[0])
    return inner.inputs[0] if inner.op == "neg" else None


def _stacked_rows(g: Graph, n: Node, named: set[int]):
    """concat([reshape(x_i, [1, *s]) ...], axis=0) is reshape(concat([x_i ...], axis=0)): the
    same bytes, and the inner concat is the one a recurrent weight's gradient also builds
    (passes/matmul_sum.py), so the two share one copy."""
    pieces = [g.node(i) for i in n.inputs]
    if n.attrs["axis"] != 0 or len(pieces) < 2 or any(
            p.op != "reshape" or p.shape[:1] != (1,) or
            tuple(g.node(p.inputs[0]).shape) != tuple(p.shape[1:]) or
            len(p.shape) < 2 for p in pieces):
        return None
    inner = [p.inputs[0] for p in pieces]
    rows = dim_prod([pieces[0].shape[1], len(pieces)])
    cat = g.add_node("concat", inner, {"axis": 0},
                     TensorType((rows, *pieces[0].shape[2:]), n.dtype), span=n.span,
                     path=n.path, role=n.role)
    return g.add_node("reshape", [cat], {"shape": list(n.shape)}, n.type, span=n.span,
                      path=n.path, role=n.role, name=n.name)


def _sliced_elementwise(g: Graph, n: Node, named: set[int]):
    """slice(f(a, b)) is f(slice(a), slice(b)) for elementwise f: when every user of f's value
    is a slice read only by elementwise ops, the slices' kernels compute f themselves and the
    whole value is never stored (an LSTM's gates: the [64, 512] z = x_t + h @ U was a kernel
    of its own at each of 200 steps, then read back as four slices)."""
    inner = g.node(n.inputs[0])
    if not _plain_elementwise(inner) or n.attrs["step"] != 1:
        return None
    # NOTE: a slice already rewritten has no users left (dead code until `dce`); a slice
    # that is also stored (a concat piece: an RNN step's gate pre-activations kept for the
    # backward) is then stored by the kernel that computes it
    for s in g.users(inner.id):
        if g.node(s).op != "slice" or any(
                not registry.get(g.node(u).op).has(ELEMENTWISE) and g.node(u).op != "concat"
                for u in g.users(s)):
            return None
    rank, axis = len(inner.shape), n.attrs["axis"] % len(inner.shape)
    ins = []
    for i in inner.inputs:
        x = g.node(i)
        at = axis - (rank - len(x.shape))  # NOTE: numpy broadcasting aligns shapes on the right
        if at < 0 or x.shape[at] != inner.shape[axis]:  # broadcast along the sliced axis
            ins.append(i)
            continue
        shape = tuple(n.shape[axis] if a == at else d for a, d in enumerate(x.shape))
        ins.append(g.add_node("slice", [i], {**n.attrs, "axis": at},
                              TensorType(shape, x.dtype), span=n.span, path=n.path, role=n.role))
    return g.add_node(inner.op, ins, dict(inner.attrs), n.type, span=inner.span,
                      path=inner.path, role=inner.role, name=n.name)


def _reshaped_elementwise(g: Graph, n: Node, named: set[int]):
    """reshape(f(x, b)) is f(reshape(x), b) for elementwise f when x alone has f's shape and
    every other operand broadcasts over trailing dims the reshape keeps (a dense layer's bias
    over the units). The reshape of x is a view, and f then has its users' shape and fuses
    with them (each dense layer's bias add was a kernel of its own, between its GEMM and the
    [batch, time, units] ops that read it)."""
    inner = g.node(n.inputs[0])
    if not _plain_elementwise(inner) or n.type is None or g.users(inner.id) != [n.id] or \
            inner.id in named or not any(_plain_elementwise(g.node(u))
                                             for u in g.users(n.id)):
        return None
    x = _reshapable_operand(g, inner, tuple(n.shape))
    if x is None:
        return None
    view = g.add_node("reshape", [x.id], dict(n.attrs), TensorType(tuple(n.shape), x.dtype),
                      span=n.span, path=n.path, role=n.role)
    ins = [view if i == x.id else i for i in inner.inputs]
    return g.add_node(inner.op, ins, dict(inner.attrs), n.type, span=inner.span,
                      path=inner.path, role=inner.role, name=n.name)


def _elementwise_of_reshape(g: Graph, n: Node, named: set[int]):
    """f(reshape(x), b) is reshape(f(x, b)), the converse of `_reshaped_elementwise`, when
    f's users are not elementwise (so they gain nothing from f's shape) and x is computed by
    an elementwise op: f then fuses with it (a dense layer's ReLU, on the [batch * time,
    units] rows its GEMM reads, after the bias add on [batch, time, units] that stores the
    pre-activation for the backward: one kernel, not two)."""
    views = [i for i in n.inputs if g.node(i).op == "reshape"]
    if len(views) != 1 or not _plain_elementwise(g.node(g.node(views[0]).inputs[0])) or any(
            _plain_elementwise(g.node(u)) for u in g.users(n.id)) or n.id in named:
        return None
    x = g.node(g.node(views[0]).inputs[0])
    full = _reshapable_operand(g, n, tuple(x.shape))
    if full is None or full.id != views[0]:
        return None
    ins = [x.id if i == views[0] else i for i in n.inputs]
    inner = g.add_node(n.op, ins, dict(n.attrs), TensorType(tuple(x.shape), n.dtype),
                       span=n.span, path=n.path, role=n.role)
    return g.add_node("reshape", [inner], {"shape": list(n.shape)}, n.type, span=n.span,
                      path=n.path, role=n.role, name=n.name)


def _plain_elementwise(n: Node) -> bool:
    op = registry.get(n.op)
    return op is not None and op.has(ELEMENTWISE) and not op.has(RANDOM) and bool(n.inputs) \
        and n.type is not None


def _reshapable_operand(g: Graph, n: Node, shape: tuple):
    """The one operand of elementwise `n` with n's own shape, when every other one broadcasts
    over trailing dims that n's shape and `shape` share (so it broadcasts the same in both);
    else None."""
    src = tuple(n.shape)
    kept = 0
    while kept < min(len(src), len(shape)) and src[-1 - kept] == shape[-1 - kept]:
        kept += 1
    full = [i for i in n.inputs if tuple(g.node(i).shape) == src]
    if len(full) != 1 or any(len(g.node(i).shape) > kept for i in n.inputs if i not in full):
        return None
    return g.node(full[0])


# op -> rules tried in order; each `rule(g, n, named)` returns the replacement node id or None
# (`named`: the values a result or state update holds, `References.named`)
SIMPLIFY_RULES = {
    "mul": [_identity_operand(1.0)],                 # x*1, 1*x
    "add": [_identity_operand(0.0)],                 # x+0, 0+x (NOTE: -0.0+0.0 is +0.0, equal)
    "sub": [_identity_operand(0.0, sides=(1,))],     # x-0
    "div": [_identity_operand(1.0, sides=(1,))],     # x/1
    "reshape": [_same_type_input, _uniform_view, _reshaped_elementwise],
    "broadcast_to": [_same_type_input, _uniform_view],
    "slice": [_uniform_view, _sliced_elementwise],
    "cast": [_same_type_input],
    "stop_gradient": [_same_type_input],    # autodiff has run; now it is the identity
    "transpose": [_identity_perm, _double_transpose, _transposed_back, _transposed_gather,
                  _uniform_view],
    "neg": [_double_neg],
    "concat": [_stacked_rows],
    "scan": [_unread_sequence, _invariant_sequence],
    "scatter_add": [_transposed_scatter],
    "check_ids": [_fed_ids],
}


def _rules(n: Node) -> list:
    rules = SIMPLIFY_RULES.get(n.op, [])
    return rules + [_elementwise_of_reshape] if _plain_elementwise(n) else rules


def _foldable(g: Graph, n: Node) -> bool:
    opdef = registry.get(n.op)
    if not n.inputs or opdef is None or opdef.impl is None or opdef.has(RANDOM) or \
            opdef.has(SOURCE) or n.type is None:
        return False
    if any(g.node(i).op != "const" for i in n.inputs):
        return False
    biggest = max(g.node(i).attrs["value"].size for i in n.inputs)
    return numel(n.type.shape) <= max(FOLD_LIMIT, biggest)


def _fold(g: Graph, n: Node) -> int:
    args = [g.node(i).attrs["value"] for i in n.inputs]
    value = np.asarray(registry.get(n.op).impl(*args, **op_attrs(n)), dtype=n.dtype)
    value = np.array(value, order="C")  # NOTE: ascontiguousarray would make 0-d arrays 1-d
    return g.add_node("const", [], {"value": value, **_counts(g, n.inputs)},
                      TensorType(value.shape, n.dtype), span=n.span, path=n.path, role=n.role,
                      name=n.name)


@graph_pass
def fold_constants(g: Graph) -> Graph:
    refs = References(g)
    order = g.topo()
    for _ in range(MAX_ROUNDS):
        if not order:
            break
        seen = set(g.nx)
        for nid in order:
            n = g.node(nid)
            new = _fold(g, n) if _foldable(g, n) else None
            for rule in _rules(n) if new is None else ():
                new = rule(g, n, refs.named)
                if new is not None:
                    break
            if new is not None:
                refs.replace(nid, new)
                _drop_unused(g, nid, refs.named)
        # NOTE: the nodes the rules made get their turn too (a slice pushed through a chain of
        # elementwise ops), once the whole graph has had its own
        order = [nid for nid in g.topo() if nid not in seen]
    return g


def _drop_unused(g: Graph, nid: int, named: set[int]) -> None:
    """Removes a replaced node and what only it read, so rules that look at a value's users
    (`_sliced_elementwise`) do not count them; other dead code is `dce`'s."""
    stack = [nid]
    while stack:
        x = stack.pop()
        if x not in g.nx or g.users(x) or x in named:
            continue
        n = g.node(x)
        if n.op in ("input", "param") or n.attrs.get("root"):
            continue
        g.remove(x)
        stack.extend(n.inputs)
