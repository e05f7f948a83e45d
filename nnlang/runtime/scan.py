"""Running a `scan` node (ops/scan.py) inside an executable: its body is planned and compiled
like any graph (fused kernels, GEMMs, its own buffers), then run once per time step.

Per step, step t of each sequence is copied into the body's input buffer, the body's calls run,
and its output is copied into row t of the stacked result (and its first C columns into the
carry). The body's weights are the outer arrays themselves, bound once. A backend that can
generate the whole loop (numba: `NumbaBackend.scan_loop`) runs it as one call; others (CuPy)
loop here, one launch sequence per step.
"""
from __future__ import annotations

import numpy as np

from nnlang.backends.aligned import byte_range
from nnlang.ir.graph import Graph
from nnlang.ops import registry
from nnlang.ops.registry import ELEMENTWISE, REDUCE
from nnlang.passes.schedule import VIEW_OPS


def _body_graph(node) -> Graph:
    """The body with its weight inputs as params, so the body's executable binds the outer
    weight arrays instead of copying them in every step."""
    g = node.attrs["body"].g.copy()
    for name, nid in list(g.inputs.items()):
        if name.startswith("w"):
            n = g.node(nid)
            n.op = "param"
            n.attrs = {"name": name, "dtype": n.dtype, "shape": list(n.shape),
                       "init": ("zeros", {}), "trainable": False}
            g.params[name] = g.inputs.pop(name)
        else:
            # NOTE: the loop may run parts of the batch at once (`row_parts`), so the memory
            # plan keeps values of different row widths in different buffers
            g.node(nid).attrs["rows"] = True
            if name.startswith("x"):
                g.node(nid).attrs["held"] = True
    return g


def _exclusive(exe, names) -> set[int]:
    """ids of the arrays of `names` (inputs or results) that own their planned buffer: no other
    value of the body is ever stored in their bytes, so the loop may put them elsewhere."""
    g, assign = exe.graph, exe.memory.assign
    sharing: dict[int, int] = {}
    for b in assign.values():
        sharing[b] = sharing.get(b, 0) + 1
    nodes = {**g.inputs, **g.outputs}
    # NOTE: a body that returns one of its inputs as is has one node for both ends: the step
    # output is then that input's array, which the loop fills, not a buffer it may move
    ends = [*g.inputs.values(), *g.outputs.values()]
    return {id(exe.arrays[nodes[k]]) for k in names
            if k in nodes and nodes[k] in assign and sharing[assign[nodes[k]]] == 1 and
            ends.count(nodes[k]) == 1}


def _rows_never_meet(g: Graph, batch: int) -> bool:
    """Is step t of row b computed from row b alone? Every value of the body that is not made
    of weights and constants alone is [batch, ...] and no op mixes its rows: elementwise ops,
    products by a weight, and movement or reductions off the batch axis."""
    fixed: set[int] = set()    # values of weights and constants alone
    weights: set[int] = set()  # weights and views of them (read whole, as matmul operands)
    for nid in g.topo():
        n = g.node(nid)
        if n.op in ("param", "const") or (n.inputs and all(i in fixed for i in n.inputs)):
            if n.op not in ("param", "const", *VIEW_OPS):
                # NOTE: computed into a body buffer, it would be cut by rows like the values
                # of the batch when its first dim happens to equal the batch
                return False
            if n.op == "param" or (n.inputs and all(i in weights for i in n.inputs)):
                weights.add(nid)
            elif n.shape and n.shape[0] == batch and batch > 1 and not _same_rows(g, n):
                return False   # a constant whose rows differ, read row by row
            fixed.add(nid)
            continue
        if not n.shape or n.shape[0] != batch:
            return False
        a = n.attrs
        if n.op == "input" or n.op == "broadcast_to" or registry.get(n.op).has(ELEMENTWISE):
            continue
        if n.op == "matmul" and n.inputs[1] in fixed and n.inputs[0] not in fixed:
            continue
        if n.op in ("slice", "concat") and a["axis"] % len(n.shape) != 0:
            continue
        if n.op == "transpose" and list(a["perm"])[0] == 0:
            continue
        if n.op == "reshape" and g.node(n.inputs[0]).shape[:1] == n.shape[:1]:
            continue
        if registry.get(n.op).has(REDUCE) and a["axes"] is not None and \
                0 not in [x % len(g.node(n.inputs[0]).shape) for x in a["axes"]]:
            continue
        return False
    return True


def _same_rows(g: Graph, n) -> bool:
    """Are all rows of a constant (or a view of one) equal, so any part may read any row?"""
    if n.op == "broadcast_to":
        src = g.node(n.inputs[0])
        return len(src.shape) < len(n.shape) or src.shape[0] == 1 or _same_rows(g, src)
    if n.op == "const":
        v = n.attrs["value"]
        return v.ndim == 0 or bool((v == v[:1]).all())
    return False


def _one_width_a_buffer(exe) -> bool:
    """Does every buffer hold values of one row width (`_body_graph`'s "rows")? Row r of each
    then lies in the same bytes, so parts of the batch never write what another part reads."""
    g, widths = exe.graph, {}
    for nid, buf in exe.memory.assign.items():
        n = g.node(nid)
        rows = int(n.shape[0]) if n.shape else 0
        width = int(np.prod([int(d) for d in n.shape[1:]], dtype=np.int64)) * \
            np.dtype(n.dtype).itemsize if rows else -1
        if widths.setdefault(buf, width) != width:
            return False
    return True


def row_parts(exe, batch: int, outer: list):
    """(batch, byte ranges of every per-row array) for a backend that may run parts of the
    batch at once (`NumbaBackend.scan_loop`), or None when the body's rows meet."""
    if not _rows_never_meet(exe.graph, batch) or not _one_width_a_buffer(exe):
        return None
    arrays = [*exe.buffers, *(a for _, a in exe._feeds), *(a for _, a in exe._results), *outer]
    return batch, [byte_range(a) for a in arrays if a.size]


def scan_call(backend, node, inputs: list, out, disable=(), pending: int = 0):
    """(call, the body executable) for a scan node given its input arrays and output array;
    `pending`: bytes allocated and not yet written besides (the enclosing step's buffers)."""
    from nnlang.runtime.executable import compile_graph
    body = node.attrs["body"]
    nseq = body.n_seqs
    init, seqs, weights = inputs[0], inputs[1:1 + nseq], inputs[1 + nseq:]
    xp = backend.xp   # numpy, or cupy: the Python loop below launches per step on a GPU
    state, staged = {}, []
    for j, w in enumerate(weights):
        # NOTE: cupy's flags have no `aligned`: device allocations always are
        if not (w.flags.c_contiguous and getattr(w.flags, "aligned", True)):
            # NOTE: a strided weight (a view) gets a contiguous copy refreshed every call
            state[f"w{j}"] = xp.empty(w.shape, w.dtype)
            staged.append((state[f"w{j}"], w))
        else:
            state[f"w{j}"] = w
    exe = compile_graph(_body_graph(node), backend, disable=disable, state=state,
                        pending=pending)
    # NOTE: an input the body never reads (a backward scan's zero dy) is never copied in
    g = exe.graph
    feeds = {k: a for k, a in exe._feeds
             if g.users(g.inputs[k]) or g.inputs[k] == g.outputs["y"]}
    carry = feeds.get("carry", xp.empty(init.shape, init.dtype))
    pairs = [(feeds[f"x{i}"], s) for i, s in enumerate(seqs) if f"x{i}" in feeds]
    y = dict(exe._results)["y"]
    # NOTE: a body that returns an input as is (`return h, h`, `return x, x`) runs no call;
    # its result array is filled only by a whole run of the body, so the step reads the input
    y = next((feeds[k] for k, nid in g.inputs.items() if nid == g.outputs["y"]), y)
    calls, width = exe._calls, body.carry
    copyto = xp.copyto
    loop = getattr(backend, "scan_loop", None)
    own = _exclusive(exe, [*(f"x{i}" for i in range(len(seqs))), "y"])
    rows = row_parts(exe, int(init.shape[0]), [init, out, *seqs]) if loop else None
    driver = loop and loop(node.attrs["reverse"], width, init, carry, out, y, pairs, calls, own,
                           rows)
    if driver:
        rendered, (fn, args) = driver
        exe._sources.append(rendered)

        def run_driver(*_):
            for dst, src in staged:
                copyto(dst, src)
            fn(*args)
        return (run_driver, ()), exe
    # NOTE: the loop in Python, for a backend without a generated one (or a body it cannot
    # generate): the same copies and calls
    order = range(out.shape[0] - 1, -1, -1) if node.attrs["reverse"] else range(out.shape[0])

    def run(*_):
        for dst, src in staged:
            copyto(dst, src)
        copyto(carry, init)
        for t in order:
            for dst, seq in pairs:
                copyto(dst, seq[t])
            for fn, args in calls:
                fn(*args)
            copyto(out[t], y)
            copyto(carry, y[:, :width])
    return (run, ()), exe

