"""Every op's samples with one size made symbolic (a `symbol` length): the op either refuses it in
its shape rule (a ShapeError, which the frontend turns into a located error at check time) or
binds, decomposes and runs to the same values as the sample with concrete shapes.

A "size" is one value among the sample's input dims: every dim of that value becomes the symbol
together, as `symbol seq` would make both `[batch, seq, 8]` inputs of an `add` symbolic.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnlang.ir.dims import Sym, is_concrete
from nnlang.ops import registry
from nnlang.ir.graph import op_attrs, slots
from nnlang.ops.registry import ShapeError, TensorType
from nnlang.passes.decompose import decompose
from nnlang.passes.shapes import bind, infer
from nnlang.runtime.interpret import interpret
from tests.op_graphs import op_graph

SYM = Sym.of("seq")
# NOTE: the scan helper (issue 15) makes the recurrences symbolic; until then they refuse
SKIP: set[str] = set()


def _sizes(sample) -> list[int]:
    return sorted({d for s in sample.shapes if s for d in s})


def _cases():
    for name, op in registry.all_ops().items():
        if name in SKIP:
            continue
        for k, sample in enumerate(op.samples):
            for size in _sizes(sample):
                yield pytest.param(name, k, size, id=f"{name}-{k}-{size}")


def _symbolic(g, size: int):
    """A copy of the one-op graph `g` whose inputs declare every dim equal to `size` as the
    symbol, re-checked (a ShapeError when the op refuses it). Attributes the checked types
    decide (`bind_attrs`: squeeze's axes) are filled in from the symbolic types, as the
    frontend does."""
    g = g.copy()
    for nid in g.inputs.values():
        node = g.node(nid)
        shape = tuple(SYM if d == size else d for d in node.shape)
        node.attrs["shape"] = list(shape)
        node.type = TensorType(shape, node.dtype)
    for node in g:
        opdef = registry.get(node.op)
        if opdef.bind_attrs is not None:
            types = [None if i is None else g.node(i).type for i in slots(g, node)]
            node.attrs.update(opdef.bind_attrs(*types, **op_attrs(node)))
    return infer(g)


def _resolved_like(concrete, g):
    """The concrete graph with the attributes the symbolic check filled in: what the model
    declared with `symbol seq` computes at every length."""
    concrete = concrete.copy()
    for node in concrete:
        node.attrs.update({k: v for k, v in g.node(node.id).attrs.items() if k != "shape"})
    return infer(concrete)


def _weights_concrete(name, g, out) -> bool:
    """Do the op's weights keep concrete shapes on the symbolic inputs? (the frontend refuses
    a weight whose shape depends on a symbol, at the call)"""
    opdef = registry.get(name)
    if opdef.params is None:
        return True
    node = g.node(out)
    types = [None if i is None else g.node(i).type for i in slots(g, node)]
    n_tensors = sum(p.kind in ("tensor", "tensor?") and not p.variadic for p in opdef.sig.params)
    specs = opdef.params(*types[:n_tensors], **op_attrs(node))
    return all(is_concrete(s.shape) for s in specs.values())


def _values(g, feeds, params, env=None):
    g = decompose(bind(g, **env) if env else g, training=False)
    return interpret(g, {**feeds, "_rng": 7}, params, want={"y": g.outputs["out"]})["y"]


@pytest.mark.parametrize("name,index,size", list(_cases()))
def test_symbolic_size(name, index, size):
    sample = registry.get(name).samples[index]
    concrete, feeds, params, out = op_graph(name, sample)
    try:
        g = _symbolic(concrete, size)
        if not _weights_concrete(name, g, out):
            return  # refused by the frontend: a weight's shape may not depend on a symbol
    except ShapeError:
        return  # refused by the shape rule: `nnlang check` reports it at the call
    concrete = _resolved_like(concrete, g)
    # binding the length gives back the concrete sample's type (the runtime binds, then
    # decomposes and compiles)
    assert bind(g, seq=size).node(out).type == concrete.node(out).type
    got = _values(g, feeds, params, {"seq": size})
    want = _values(concrete, feeds, params)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
