"""The `scan` primitive (JAX's lax.scan): a body graph (`ir/scan.py`) run once per time step,
carrying a state and stacking one packed value per step, so a recurrence is one node whatever
the sequence length. rnn/lstm/gru decompose into it (ops/rnn.py); autodiff differentiates its
body (passes/autodiff.py) and the runtime runs the loop (runtime/executable.py).

Inputs: init [B, C], then `n_seqs` sequences [T, B, k_i] (time-major), then the weights.
Output [T, B, W]: step t's body output (the next carry in its first C columns); with `reverse`
step t runs after step t+1, as a backward-direction layer, and still lands at index t.
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.dims import Sym, fmt_shape
from nnlang.ir.graph import Builder, op_attrs, slots
from nnlang.ir.scan import Body, new_body_graph
from nnlang.ops import registry
from nnlang.ops.registry import Sample, ShapeError, TensorType, register


def _parts(xs, body: Body):
    return xs[0], xs[1:1 + body.n_seqs], xs[1 + body.n_seqs:]


def _shape(*xs, body: Body, reverse: bool = False) -> TensorType:
    if not isinstance(body, Body):
        raise ShapeError("scan is the compiler's loop node: its body is a graph that rnn, lstm "
                         "and gru build", attr="body", hint="use rnn, lstm or gru")
    init, seqs, weights = _parts(xs, body)
    if not seqs or len(weights) != body.n_weights:
        raise ShapeError(f"scan: expected init, {body.n_seqs} sequences and {body.n_weights} "
                         f"weights, got {len(xs)} tensors")
    bg = body.g
    want = {"carry": init, **{f"x{i}": s for i, s in enumerate(seqs)},
            **{f"w{j}": w for j, w in enumerate(weights)}}
    steps = seqs[0].shape[0]
    for k, (name, t) in enumerate(want.items()):
        declared = bg.node(bg.inputs[name]).type
        shape = t.shape[1:] if name.startswith("x") else t.shape
        if name.startswith("x") and t.shape[0] != steps:
            raise ShapeError(f"scan: sequence {fmt_shape(t.shape)} has {t.shape[0]} steps, "
                             f"the first has {steps}", arg=k)
        if tuple(shape) != tuple(declared.shape) or t.dtype != declared.dtype:
            raise ShapeError(f"scan: {name} is {t} but the body expects {declared}", arg=k)
    y = bg.node(bg.outputs["y"]).type
    return TensorType((steps, *y.shape), y.dtype)


def run_body(body: Body, values: dict) -> np.ndarray:
    """One step of the body on numpy arrays by input name (each op's numpy `impl`)."""
    g, env = body.g, {}
    for nid in g.topo():
        node = g.node(nid)
        if node.op == "input":
            env[nid] = values[node.attrs["name"]]
            continue
        args = [None if i is None else env[i] for i in slots(g, node)]
        env[nid] = np.asarray(registry.get(node.op).impl(*args, **op_attrs(node)), node.dtype)
    return env[g.outputs["y"]]


def _impl(*xs, body: Body, reverse: bool = False):
    init, seqs, weights = _parts(xs, body)
    steps = seqs[0].shape[0]
    carry, out = init, [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        y = run_body(body, {"carry": carry, **{f"x{i}": s[t] for i, s in enumerate(seqs)},
                            **{f"w{j}": w for j, w in enumerate(weights)}})
        out[t], carry = y, y[:, :body.carry]
    return np.stack(out)


def _flops(ins, out, *, body: Body, **_):
    """Every body op's FLOPs once per step, counted as `nnlang check` counts them outside a
    loop (the GEMM, the bias add, the gate math), so a layer costs the same in a scan as
    written out. The body's shapes carry its own batch dim (symbolic): it is bound to the
    carry's rows in `ins`, so the count comes out at the caller's sizes (a Sym left in it
    reported no FLOPs at all). NOTE: this rule counted only the body's GEMMs, so an rnn's
    per-step bias add and activation, which run, counted nothing while dense's count."""
    from nnlang.ir.summary import SOURCE_OPS, node_flops   # NOTE: summary imports the registry

    steps, batch = ins[1].shape[0], ins[0].shape[0]
    body_batch = body.g.node(body.g.inputs["carry"]).shape[0]
    env = {}
    if isinstance(body_batch, Sym) and len(body_batch.names) == 1:
        env = {body_batch.names[0]: batch // body_batch.coeff}
    return steps * sum(node_flops(body.g, n, env) for n in body.g if n.op not in SOURCE_OPS)


def scan(b: Builder, init: int, seqs: list[int], weights: list[int], body: Body,
         reverse: bool = False) -> int:
    return b.emit("scan", init, *seqs, *weights, body=body, reverse=reverse)


def body_builder(b: Builder, init: int, seqs: list[int], weights: list[int]):
    """(body graph, a builder on it with the outer span and path) for a scan over these
    inputs; the caller emits the step and sets `g.outputs["y"]`."""
    t = b.type(init)
    g = new_body_graph(t.dtype, t.shape[0], t.shape[1], [b.type(s).shape[2] for s in seqs],
                       [b.type(w).shape for w in weights], b.span)
    return g, Builder(g, span=b.span, path=b.path, role=b.role)


def _onnx(e, n, *xs):
    """ONNX Scan with the body as its subgraph (the weights read from the enclosing scope) and
    the carry as its state; reversed, it reads the sequences and stacks its outputs from the
    back, so step t still lands at index t."""
    body = n.attrs["body"]
    init, seqs, weights = _parts(xs, body)
    g, reverse = body.g, int(n.attrs["reverse"])
    y = g.node(g.outputs["y"]).type
    carry = TensorType((y.shape[0], body.carry), y.dtype)

    def results(be, names):
        out = names[g.outputs["y"]]
        state = be.op("Slice", out, be.ints([0]), be.ints([body.carry]), be.ints([1]))
        return [(state, carry), (out, y)]
    graph = e.subgraph(g, ["carry", *(f"x{i}" for i in range(len(seqs)))],
                       {f"w{j}": w for j, w in enumerate(weights)}, results)
    return e.op("Scan", init, *seqs, outputs=2, body=graph, num_scan_inputs=len(seqs),
                scan_input_directions=[reverse] * len(seqs),
                scan_output_directions=[reverse])[1]


# NOTE: registered last: building the sample body loads every op module, and rnn.py imports
# the helpers above
def _sample_body() -> Body:
    """An Elman step, h' = tanh(x_t + h @ w) with its h and a copy of x_t as output, for the
    op matrix (float64, as the gradient checks run)."""
    g = new_body_graph("float64", 2, 3, [3], [(3, 3)])
    b = Builder(g)
    h = b.tanh(b.add(g.inputs["x0"], b.matmul(g.inputs["carry"], g.inputs["w0"])))
    g.outputs["y"] = b.concat(h, g.inputs["x0"], axis=1)
    return Body(g, 3, 1, 1)


register("scan", "*xs: tensor, body: any, reverse: bool = false", _shape, impl=_impl,
         flops=_flops, onnx=_onnx, family="rnn",
         doc="The compiler's loop (rnn, lstm and gru decompose into it): a body graph run "
         "per time step over sequences [time, batch, k], carrying a state; returns every "
         "step's output [time, batch, W]. Not called as scan(...): in a model, write "
         "`hs, h = scan Cell(h0) over x` with a block as the cell (docs/language.md, loops).",
         # NOTE: the inputs are float64 at any requested dtype, as the sample body is
         samples=(Sample(((2, 3), (4, 2, 3), (3, 3)), {"body": _sample_body()},
                         dtypes=("float64",) * 3),
                  Sample(((2, 3), (4, 2, 3), (3, 3)), {"body": _sample_body(), "reverse": True},
                         dtypes=("float64",) * 3)))
