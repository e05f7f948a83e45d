"""Reverse-mode differentiation as a graph transform: appends the backward graph (role "bwd")
to a primitive graph and returns the gradient node of each requested value.

One loop does it all: walk the nodes on a path from the wanted values to the loss in reverse
order, call each op's own `grad` rule, undo broadcasting with `sum_to`, and sum fan-out
contributions with `add` nodes. Integer and bool values never get gradients.
"""
from __future__ import annotations

from nnlang.errors import NNError
from nnlang.ir.graph import Builder, Graph
from nnlang.ir.scan import Body, new_body_graph
from nnlang.ops import registry
from nnlang.ops.registry import NONDIFF, TensorType, is_float
from nnlang.ops.scan import scan


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
            if node.op == "scan":  # its rule differentiates its body: it needs this pass
                in_grads = scan_grad(b, node, total)
            elif opdef.grad is None or opdef.has(NONDIFF):
                continue
            else:
                in_grads = opdef.grad(b, node, total)
            for src, gi in zip(node.inputs, in_grads):
                if gi is None or src not in path:
                    continue
                contributions.setdefault(src, []).append(sum_to(b, gi, g.node(src).shape))
    return {w: grads[w] for w in wrt if w in grads}


def _topo_index(g: Graph):
    order = {n: i for i, n in enumerate(g.topo())}
    return order.__getitem__


# *** scan ***
# The gradient of a scan is a reverse scan whose body is the VJP of the forward body. What the
# backward step needs from the forward step is STORED, not recomputed, but only the GEMM
# results: each `a @ w` of a weight w goes into extra columns of the forward scan's stacked
# output, summed with what it is added to (`_stored_for`: the LSTM's gate pre-activations
# x_t + b + h @ U, so the backward reads neither x_t nor b), and the backward body recomputes
# the cheap elementwise gate math from them inside its one fused kernel. Recomputing z would
# cost one more GEMM per step (a third more work); storing every elementwise value would cost
# several times z's memory for no time saved. The carry each step started from is stored too:
# read back from the stacked output shifted by one step, it cost a concat of [T, B, C] after
# the loop (5.5 ms of the LSTM's step), where the step writes it from cache.
# Weight gradients are not accumulated in the loop: dW = A^T @ dZ is ONE GEMM over the stacked
# [T*B, K] left operands and [T*B, N] output gradients after the backward scan.


def _weight_matmuls(body: Body) -> list[tuple[int, int]]:
    """(matmul node, weight index) for every `a @ w_j` in the body; any other use of a weight
    has no gradient rule here."""
    g, found = body.g, []
    for j in range(body.n_weights):
        w = g.inputs[f"w{j}"]
        for u in g.users(w):
            n = g.node(u)
            if n.op != "matmul" or n.inputs[0] == w or n.inputs[1] != w:
                raise NNError("a scan body may read its whole-tensor inputs only as the right "
                              "operand of a matmul", span=n.span,
                              hint="pass other per-step constants as a sequence")
            found.append((u, j))
    return found


def _carry_columns(g: Graph, a: int):
    """(start, stop) when the matmul's left operand is the carry or a column slice of it (h of
    an LSTM's [h, c]): its stacked value is a slice of the carries, nothing to store."""
    n, carry = g.node(a), g.inputs["carry"]
    if a == carry:
        return 0, int(n.shape[1])
    at = n.attrs
    if n.op == "slice" and n.inputs[0] == carry and at["axis"] % 2 == 1 and at["step"] == 1:
        return slice(at["start"], at["stop"], 1).indices(int(g.node(carry).shape[1]))[:2]
    return None


def _copy_nodes(b: Builder, src: Graph, env: dict) -> dict:
    """Copies every node of `src` not already mapped in `env` into b's graph."""
    for nid in src.topo():
        if nid in env:
            continue
        n = src.node(nid)
        env[nid] = b.g.add_node(n.op, [env[i] for i in n.inputs], dict(n.attrs), n.type,
                                span=n.span, path=n.path, role=b.role, name=None)
    return env


def cols(b: Builder, x: int, lo: int, hi: int) -> int:
    return b.slice(x, axis=2, start=lo, stop=hi, step=1)


def _widen(b: Builder, node, body: Body, type_: TensorType) -> None:
    """The scan `node` now also stores residuals; its former readers (forward users, results)
    read the original columns through a slice (a view)."""
    g, users, width = b.g, b.g.users(node.id), int(node.shape[2])
    node.attrs["body"], node.type = body, type_
    with b.at(role=node.role):
        narrow = cols(b, node.id, 0, width)
    for u in users:
        g.set_inputs(u, [narrow if i == node.id else i for i in g.node(u).inputs])
    for table in (g.outputs, g.losses, g.metrics, g.updates):
        for k, v in table.items():
            if v == node.id:
                table[k] = narrow


def _first_step_only(b: Builder, gout: int, steps, batch, C: int, reverse: bool):
    """The scan's output gradient as [B, C] when it is zero but at the step the backward scan
    runs first (an encoder's last h: the unslice of slicing the last step), else None. The
    backward then starts its carry from it instead of reading a [T, B, C] sequence of zeros
    (measured on the LSTM: the unslice wrote 13 MB a step, 1.8 ms)."""
    n = b.g.node(gout)
    if n.op != "unslice" or n.attrs["axis"] % 3 != 0 or n.attrs["step"] != 1 or \
            tuple(b.type(n.inputs[0]).shape[:1]) != (1,):
        return None
    start, first = n.attrs["start"] or 0, (0 if reverse else -1)
    if isinstance(steps, int):
        start, first = start % steps, first % steps
    if start != first:
        return None
    return b.reshape(n.inputs[0], shape=[batch, C])


def _stored_for(fg: Graph, m: int) -> list[tuple[int, tuple | None]]:
    """What the forward stores for the weight matmul m, as (node, its columns of m's block or
    None for all): m's sum with what it is added to (z + x_t + b: an RNN's gate
    pre-activations), as the slices that read it when they tile it (the gates), so the fused
    step kernel stores them. The backward then reads the pre-activations where it read z and
    x_t before, and no longer reads the input projection (26 MB a step of the LSTM)."""
    top = m
    while len(fg.users(top)) == 1:
        u = fg.node(fg.users(top)[0])
        if u.op != "add" or tuple(u.shape) != tuple(fg.node(top).shape):
            break
        top = u.id
    if top == m:
        return [(m, None)]
    width, users = int(fg.node(top).shape[1]), [fg.node(u) for u in fg.users(top)]
    if not users or any(u.op != "slice" or u.attrs["axis"] % 2 != 1 or u.attrs["step"] != 1
                        for u in users):
        return [(top, None)]
    cuts = sorted((*slice(u.attrs["start"], u.attrs["stop"]).indices(width)[:2], u.id)
                  for u in users)
    if [c[0] for c in cuts] != [0] + [c[1] for c in cuts[:-1]] or cuts[-1][1] != width:
        return [(top, None)]
    return [(u, (lo, hi)) for lo, hi, u in cuts]


def _transposed_weights(b: Builder, bg: Graph, weights) -> list[int]:
    """The backward body's weights: w^T for a weight its VJP reads only transposed (dz @ w^T),
    else w. The runtime stages a strided weight as a contiguous copy once per call, so the
    step's GEMM reads its operand in order (measured, one OpenBLAS thread: [32, 512] @ [512,
    128] took 64 us from the transposed view, 43 from a contiguous copy; 200 steps a call)."""
    out = list(weights)
    for j, w in enumerate(weights):
        wid = bg.inputs[f"w{j}"]
        uses = [bg.node(u) for u in bg.users(wid)]
        if not uses or any(u.op != "transpose" or list(u.attrs["perm"]) != [1, 0] for u in uses):
            continue
        n = bg.node(wid)
        shape = list(n.shape[::-1])
        n.type, n.attrs["shape"] = TensorType(tuple(shape), n.dtype), shape
        for u in uses:
            bg.replace_uses(u.id, wid)
            bg.remove(u.id)
        out[j] = b.transpose(w, perm=[1, 0])
    return out


def scan_grad(b: Builder, node, gout: int) -> list:
    """Gradients of a scan's (init, sequences, weights); makes the forward scan store what the
    backward needs (see the note above)."""
    body, reverse = node.attrs["body"], node.attrs["reverse"]
    fg, nseq = body.g, body.n_seqs
    init, seqs, weights = node.inputs[0], node.inputs[1:1 + nseq], node.inputs[1 + nseq:]
    steps, batch, width = node.shape
    C, dtype = body.carry, node.dtype
    mms = _weight_matmuls(body)

    # NOTE: a weight matmul over a [batch, n, k] memory read whole each step (Bahdanau's
    # keys = dense(enc, units)) has batch * n rows; its residuals go into the stored [T, B, .]
    # sequence and the backward body's [B, .] inputs and outputs as [batch, n * k] rows (the
    # same bytes: the rows are batch-major), so the weight's gradient stays one GEMM
    def per_row(nid):
        rows = fg.node(nid).shape[0]
        return 1 if rows == batch else rows // batch

    def flat_width(nid):
        return int(fg.node(nid).shape[1]) * per_row(nid)

    def flat(bld, nid, like):
        """nid as [batch, n * k] rows; like: the forward body's node of its shape (None: a
        node of [batch, k] rows)."""
        if like is None or per_row(like) == 1:
            return nid
        return bld.reshape(nid, shape=[batch, flat_width(like)])

    # the forward scan, widened with the residuals: z of each weight matmul, and its left
    # operand unless that is a slice of the carry
    rg = fg.copy()
    rb = Builder(rg, span=node.span, path=node.path, role="fwd")
    extra, col, where, stored = [], width, {}, {}
    for m, _ in mms:
        a = fg.node(m).inputs[0]
        if _carry_columns(fg, a) is None:
            extra.append(flat(rb, a, a))
            where[("a", m)] = (col, col + flat_width(a))
            col = where[("a", m)][1]
        taken = {k for ks in stored.values() for k, _ in ks}
        stored[m] = [(m, None)] if per_row(m) != 1 else \
            [(k, span) for k, span in _stored_for(fg, m) if k not in taken] or [(m, None)]
        extra += [flat(rb, k, k) for k, _ in stored[m]]
        where[("z", m)] = (col, col + flat_width(m))
        col = where[("z", m)][1]
    if steps != 1:
        extra.append(rg.inputs["carry"])
        where["carry"] = (col, col + C)
        col += C
    if extra:
        rg.outputs["y"] = rb.concat(rg.outputs["y"], *extra, axis=1)
        _widen(b, node, Body(rg, C, nseq, body.n_weights), TensorType((steps, batch, col), dtype))
    ys = node.id

    # the carry each step started from, stacked [T, B, C]
    carries = b.reshape(init, shape=[1, batch, C]) if steps == 1 else cols(b, ys, *where["carry"])
    zs = [cols(b, ys, *where[("z", m)]) for m, _ in mms]

    # the backward body: recompute the step from (carry, x_t, z_t), then its VJP
    widths = [width, C] + [int(b.type(s).shape[2]) for s in seqs] + \
             [flat_width(m) for m, _ in mms]
    bg = new_body_graph(dtype, batch, C, widths, [b.type(w).shape for w in weights], node.span)
    bb = Builder(bg, span=node.span, path=node.path, role="bwd")
    env = {fg.inputs["carry"]: bg.inputs["x1"]}
    env.update({fg.inputs[f"x{i}"]: bg.inputs[f"x{2 + i}"] for i in range(nseq)})
    env.update({fg.inputs[f"w{j}"]: bg.inputs[f"w{j}"] for j in range(body.n_weights)})
    env = _copy_nodes(bb, fg, env)
    dy, dcarry = bg.inputs["x0"], bg.inputs["carry"]
    g_first = _first_step_only(b, gout, steps, batch, C, reverse) if width == C else None
    if g_first is not None:   # the carry's gradient starts there; the body reads no dy
        cot = dcarry
    elif width > C:
        cot = bb.concat(bb.add(bb.slice(dy, axis=1, start=0, stop=C, step=1), dcarry),
                        bb.slice(dy, axis=1, start=C, stop=width, step=1), axis=1)
    else:
        cot = bb.add(dy, dcarry)
    loss = bb.reduce_sum(bb.mul(env[fg.outputs["y"]], cot), axes=None)
    wrt = [bg.inputs["x1"]] + [bg.inputs[f"x{2 + i}"] for i in range(nseq)] + \
          [env[m] for m, _ in mms]
    grads = backward(bg, loss, wrt)

    rows_of = {env[m]: m for m, _ in mms}

    def grad_of(nid):
        if nid in grads:
            return flat(bb, grads[nid], rows_of.get(nid))
        like = rows_of.get(nid)
        shape = [batch, flat_width(like)] if like is not None else list(bg.node(nid).shape)
        return bb.broadcast_to(bb.const(0.0, dtype), shape=shape)
    # NOTE: a gradient equal to an earlier one is stored once (an LSTM's dz = dgates is also
    # the gradient of its input projection: stored twice, it was 512 more columns copied and
    # stacked every step)
    outs, at, unique, pos = [grad_of(w) for w in wrt], [], [], 0
    for o in outs:
        if o not in unique:
            unique.append(o)
            at.append((pos, pos + int(bg.node(o).shape[1])))
            pos = at[-1][1]
        else:
            at.append(at[outs.index(o)])
    bg.outputs["y"] = unique[0] if len(unique) == 1 else bb.concat(*unique, axis=1)
    for k, (m, _) in enumerate(mms):  # the backward reads the stored z, never recomputes it
        z = bg.inputs[f"x{2 + nseq + k}"]
        if per_row(m) != 1:
            z = bb.reshape(z, shape=list(fg.node(m).shape))
        for nid, span in stored[m]:
            bg.replace_uses(env[nid], z if span is None else
                            bb.slice(z, axis=1, start=span[0], stop=span[1], step=1))
    live = bg.ancestors([bg.outputs["y"]])
    for n in list(bg):
        if n.id not in live and n.op != "input":
            bg.remove(n.id)

    zero = b.broadcast_to(b.const(0.0, dtype), shape=[batch, C])
    if g_first is not None:
        zero, gout = g_first, b.broadcast_to(b.const(0.0, dtype), shape=[steps, batch, width])
    back = scan(b, zero, [gout, carries, *seqs, *zs], _transposed_weights(b, bg, weights),
                Body(bg, C, nseq + 2 + len(mms), body.n_weights), not reverse)
    last = steps - 1 if reverse else 0
    d_init = b.reshape(b.slice(cols(b, back, *at[0]), axis=0, start=last, stop=last + 1, step=1),
                       shape=[batch, C])
    d_seqs = [cols(b, back, *at[1 + i]) for i in range(nseq)]
    d_weights: list = [None] * len(weights)
    for k, (m, j) in enumerate(mms):
        n_out = int(fg.node(m).shape[1])
        dz = b.reshape(cols(b, back, *at[1 + nseq + k]), shape=[-1, n_out])
        a = fg.node(m).inputs[0]
        span = _carry_columns(fg, a)
        stacked = cols(b, carries, *span) if span else cols(b, ys, *where[("a", m)])
        a2 = b.reshape(stacked, shape=[-1, int(fg.node(a).shape[1])])
        dw = b.matmul(b.transpose(a2, perm=[1, 0]), dz)   # one GEMM over every step
        d_weights[j] = dw if d_weights[j] is None else b.add(d_weights[j], dw)
    return [d_init, *d_seqs, *d_weights]
