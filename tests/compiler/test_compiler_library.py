"""Library primitives (ops lowered by their registry entry's `lower`, not fused): every sample,
forward and backward, compiled for numba against the interpreter (the ops' numpy `impl`);
the `impl`s of tests/reference.py's PRIMITIVES against that independent numpy; and a missing
lowering is an error that names the op, its line and the backend.
"""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from nnlang.ops import registry
from nnlang.runtime.executable import compile_graph
from nnlang.runtime.interpret import interpret
from tests.op_graphs import op_graph, op_graph_with_grads, sample_cases
from tests.reference import PRIMITIVES

LIBRARY = [(case, name, s) for case, name, s in sample_cases() if registry.get(name).lower]


@pytest.mark.parametrize("case,name,sample", LIBRARY, ids=[c for c, _, _ in LIBRARY])
def test_numba_lowering_matches_the_interpreter(case, name, sample):
    g, feeds, params = op_graph_with_grads(name, sample, "float64")
    got = compile_graph(g, state={k: v.copy() for k, v in params.items()}).run(feeds)
    want = interpret(g, feeds, params, want=g.outputs)
    for key in g.outputs:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{case} {key}")


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_impl_matches_the_reference(name):
    for sample in registry.get(name).samples:
        g, feeds, _, _ = op_graph(name, sample)
        x = [feeds[f"x{i}"] for i in range(len(sample.shapes))]
        attrs = {p.name: sample.attrs.get(p.name, p.default) for p in registry.get(name).sig.params
                 if p.kind not in ("tensor", "tensor?")}
        np.testing.assert_allclose(registry.get(name).impl(*x, **attrs),
                                   PRIMITIVES[name](*x, **attrs), rtol=1e-12, err_msg=name)


def test_every_call_step_op_has_both_lowerings():
    """Every op the schedule leaves as a library call, in any op's sample graph, lowers on
    both targets."""
    from nnlang.passes.plan import plan
    called = set()
    for _, name, sample in sample_cases():
        g, steps, _, _ = plan(op_graph_with_grads(name, sample, "float32")[0])
        called |= {g.node(s.nodes[0]).op for s in steps if s.kind == "call"}
    assert "cumsum" in called and "matmul" in called and "scan" in called
    # NOTE: a scan is the executable's own loop over its body's executable (runtime/scan.py)
    for op in called - {"scan"}:
        assert set(registry.get(op).lower) == {"numba", "cuda"}, op


def test_a_missing_lowering_names_the_op_its_line_and_the_backend(monkeypatch):
    monkeypatch.delitem(registry.get("matmul").lower, "numba")
    src = "model M {\n  input x: float32[batch, 4]\n  output y = dense(x, 3, use_bias = false)\n}\n"
    with pytest.raises(NNError) as info:
        nnlang.compile(src, backend="numba", batch=2).forward({"x": np.ones((2, 4), "float32")})
    text = info.value.render()
    assert "'matmul'" in text and "numba backend" in text and ":3:" in text, text


def test_a_composite_left_by_a_gradient_rule_is_named_as_such(monkeypatch):
    """A gradient that emits a composite (`b.square`) reaches the backend undecomposed: the
    error says so and how to write it, instead of asking for a lowering of `square`."""
    def grad(b, n, g):
        return (b.mul(g, b.square(n.inputs[0])),)
    monkeypatch.setattr(registry.get("exp"), "grad", grad)
    monkeypatch.setenv("NNLANG_PLAN_CACHE", "0")   # NOTE: a cached plan predates the patch
    src = ("model M {\n  input x: float32[batch, 4]\n  param w: float32[4] = ones\n"
           "  y = exp(x * w)\n  loss sum(y)\n}\n")
    with pytest.raises(NNError) as info:
        nnlang.compile(src, backend="numba", batch=2).train_step({"x": np.ones((2, 4), "f4")})
    text = info.value.render()
    assert "'square' is a composite" in text and ":4:" in text and "b.mul(d, d)" in text, text
