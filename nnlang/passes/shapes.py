"""Shape inference over a whole graph, and binding symbolic dims (e.g. batch=128) to numbers.

Elaboration already infers each node's type as it is built; this pass re-runs every shape rule,
so it both checks a transformed graph (see `verify`) and specializes one for a concrete batch.
"""
from __future__ import annotations

from nnlang.ir.dims import Sym, bind as bind_dim
from nnlang.ir.graph import Graph, op_attrs, slots
from nnlang.ir.scan import Body
from nnlang.ops import registry


def _bind_value(v, env):
    if isinstance(v, Body):  # a user scan's body is built at a symbolic batch
        return v.map(lambda g: infer(g, env))
    if isinstance(v, Sym):
        return bind_dim(v, env)
    if isinstance(v, list):
        return [_bind_value(x, env) for x in v]
    if isinstance(v, tuple) and not (len(v) == 2 and isinstance(v[1], dict)):
        return tuple(_bind_value(x, env) for x in v)
    return v


def infer(g: Graph, env: dict | None = None) -> Graph:
    """Recomputes every node's type in topological order, substituting `env` into attrs."""
    g = g.copy()
    for nid in g.topo():
        node = g.node(nid)
        if env:
            node.attrs = {k: _bind_value(v, env) for k, v in node.attrs.items()}
        opdef = registry.get(node.op)
        ins = [None if i is None else g.node(i).type for i in slots(g, node)]
        checked = node.type
        try:
            node.type = opdef.shape(*ins, **op_attrs(node))
        except registry.ShapeError as err:
            if not env:
                raise
            raise _bound_error(node, err, env) from None
        if env and checked is not None:
            _same_as_checked(node, checked, env)
    return g


def _same_as_checked(node, checked, env: dict) -> None:
    """Binding symbols must give the shape the model was checked with, bound: a fixed slice
    x[:, 0:2] of a length bound to 1 would give fewer entries than every later op was
    checked for (and an exported file would silently fold them into another axis)."""
    want = tuple(bind_dim(d, env) for d in checked.shape)
    if want == tuple(node.type.shape) or not all(isinstance(d, int) for d in want):
        return
    from nnlang.errors import NNError
    from nnlang.ir.dims import fmt_shape
    raise NNError(f"{node.op}: with {_sizes(env)} this gives {fmt_shape(node.type.shape)}, but the "
                  f"model was checked as {fmt_shape(checked.shape)}", node.span,
                  "a fixed slice of a symbolic length (x[:, 0:2], x[:, -2:]) needs at least "
                  "that many entries: feed longer sequences")


def _bound_error(node, err, env: dict):
    """A shape rule refusing the sizes bound for symbols (a length over a max_len) is bad
    input: an error at the op's line, naming the sizes."""
    from nnlang.errors import NNError
    return NNError(f"{err.message} (with {_sizes(env)})", node.span, err.hint)


def _sizes(env: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sorted(env.items()))


def bind(g: Graph, **dims: int) -> Graph:
    """The graph specialized to concrete sizes for its symbolic dims, e.g. bind(g, batch=64)."""
    return infer(g, dims)


def verify(g: Graph) -> None:
    """Structural and type invariants; raises AssertionError naming the bad node."""
    for node in g:
        assert all(g.nx.has_node(i) for i in node.inputs), f"dangling input in {node}"
        edges = sorted((k, s) for s, _, k in g.nx.in_edges(node.id, keys=True))
        assert [s for _, s in edges] == list(node.inputs), f"edges disagree with inputs: {node}"
        opdef = registry.get(node.op)
        assert opdef is not None, f"unknown op {node.op}"
        ins = [None if i is None else g.node(i).type for i in slots(g, node)]
        assert opdef.shape(*ins, **op_attrs(node)) == node.type, f"stale type on {node}"
