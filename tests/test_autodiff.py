"""Every differentiable op's generated backward graph against float64 central differences.

For each registry sample: y = op(inputs); L = sum(y * c) for a fixed random cotangent c; the
gradient graph built by `passes/autodiff.py` must match (L(x + h e) - L(x - h e)) / 2h, checked
as inner products with random directions (JAX's check_vjp), which is cheap for big tensors.
On numba the compiled forward is also checked against the interpreter.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnlang.ir.graph import Builder
from nnlang.ops import registry
from nnlang.ops.registry import NONDIFF, RANDOM, SOURCE, is_float
from nnlang.passes.autodiff import backward
from nnlang.passes.decompose import decompose
from nnlang.passes.shapes import verify
from nnlang.runtime.interpret import interpret
from tests.op_graphs import op_graph


def _cases():
    for name, op in sorted(registry.all_ops().items()):
        if op.has(SOURCE) or op.has(NONDIFF) or op.has(RANDOM):
            continue
        for k, sample in enumerate(op.samples):
            if sample.grad:
                yield pytest.param(name, sample, id=f"{name}-{k}")


def _loss_graph(name, sample):
    g, feeds, params, out = op_graph(name, sample)
    g = decompose(g)
    if "_rng" in g.inputs:  # NOTE: a fixed key gives dropout a fixed mask, so L is smooth
        feeds["_rng"] = np.int64(7)
    out = g.outputs["out"]
    b = Builder(g)
    rng = np.random.default_rng(1)
    cot = b.const(rng.normal(size=[int(d) for d in g.node(out).shape]), "float64")
    loss = b.reduce_sum(b.mul(out, cot), axes=None)
    wrt = {k: v for k, v in {**g.inputs, **g.params}.items()
           if is_float(g.node(v).dtype) and not k.startswith("_")}
    return g, feeds, params, loss, wrt


def _eval(g, loss, feeds, params):
    return float(interpret(g, feeds, params, want={"l": loss})["l"])


def _compiled(g, grads, feeds, params):
    """(forward output, {wrt: gradient}) computed by kernels the Numba backend generated for
    this graph."""
    from nnlang.runtime.executable import compile_graph
    forward = g.outputs["out"]
    g = g.copy()
    g.outputs = {"out": forward, **{f"g{nid}": gid for nid, gid in grads.items()}}
    exe = compile_graph(g, backend="numba", state=params)
    out = exe.run({k: v for k, v in feeds.items() if k in g.inputs})
    return out["out"], {nid: out[f"g{nid}"] for nid in grads}


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("name,sample", list(_cases()))
def test_gradient_matches_finite_differences(name, sample, backend):
    g, feeds, params, loss, wrt = _loss_graph(name, sample)
    grads = backward(g, loss, list(wrt.values()))
    verify(g)
    env = interpret(g, feeds, params)
    if backend == "numba":
        # NOTE: the forward too: an elementwise op's `expr` (what the kernels compute) must
        # agree with its `impl` (what the interpreter and finite differences use); its
        # gradient rule is built from other ops, so a wrong expr passes every gradient check
        forward, compiled = _compiled(g, grads, feeds, params)
        np.testing.assert_allclose(forward, env[g.outputs["out"]], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{name}: the numba kernels' forward disagrees "
                                           "with the interpreter (impl)")
        env = {**env, **{grads[n]: v for n, v in compiled.items()}}
    rng = np.random.default_rng(2)
    h = 1e-6
    for key, nid in wrt.items():
        values = feeds if key in feeds else params
        x = values[key]
        analytic = env[grads[nid]] if nid in grads else np.zeros_like(x)
        assert analytic.shape == x.shape, f"{name}: gradient of {key} has the wrong shape"
        for _ in range(2):
            d = rng.normal(size=x.shape)
            values[key] = x + h * d
            up = _eval(g, loss, feeds, params)
            values[key] = x - h * d
            down = _eval(g, loss, feeds, params)
            values[key] = x
            numeric = (up - down) / (2 * h)
            exact = float(np.sum(analytic * d))
            assert numeric == pytest.approx(exact, rel=1e-5, abs=1e-6), \
                f"{name}: d/d{key} disagrees with finite differences"


def test_every_differentiable_op_has_a_gradient_case():
    missing = [n for n, op in registry.all_ops().items()
               if not (op.has(SOURCE) or op.has(NONDIFF) or op.has(RANDOM))
               and not any(s.grad for s in op.samples)]
    assert not missing, f"ops without a gradient sample: {missing}"


def test_fan_out_gradients_add_up():
    # y = x * x uses x twice; dy/dx = 2x only if both contributions are summed
    from nnlang.ops.registry import Sample
    g, feeds, params, out = op_graph("mul", Sample(((3,), (3,))))
    g.node(out).inputs = (g.inputs["x0"], g.inputs["x0"])
    g.nx.remove_edge(g.inputs["x1"], out, 1)
    g.nx.add_edge(g.inputs["x0"], out, key=1)
    b = Builder(g)
    loss = b.reduce_sum(out, axes=None)
    grads = backward(g, loss, [g.inputs["x0"]])
    got = interpret(g, feeds, params)[grads[g.inputs["x0"]]]
    np.testing.assert_allclose(got, 2 * feeds["x0"])


def test_integer_paths_get_no_gradient():
    from nnlang.ops.registry import Sample
    g, feeds, params, out = op_graph("gather", Sample(((7, 3), (2, 5)), domain="int:7",
                                                      dtypes=(None, "int32")))
    b = Builder(g)
    loss = b.reduce_sum(out, axes=None)
    grads = backward(g, loss, [g.inputs["x0"], g.inputs["x1"]])
    assert g.inputs["x1"] not in grads and g.inputs["x0"] in grads


@pytest.mark.parametrize("name", ["softplus", "bce_with_logits"])
def test_the_stable_softplus_has_the_true_gradient_at_a_zero_logit(name):
    # max(z, 0) + log(1 + e**-|z|) is smooth, but its pieces have kinks at z = 0 whose
    # gradients must add up to sigmoid(0) = 1/2; a zero logit is common (a zero-initialized
    # bias on an all-padding row) and finite differences of random samples never land on it
    from nnlang.ops.registry import Sample
    logits = name == "bce_with_logits"
    g, feeds, params, _ = op_graph(name, Sample(((4,), (4,)) if logits else ((4,),)))
    z = np.array([0.0, 0.0, 1.5, -2.0])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    feeds.update({"x0": z, "x1": y} if logits else {"x0": z})
    g = decompose(g)
    loss = Builder(g).reduce_sum(g.outputs["out"], axes=None)
    grads = backward(g, loss, [g.inputs["x0"]])
    got = interpret(g, feeds, params)[grads[g.inputs["x0"]]]
    sigmoid = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(got, (sigmoid - y) / len(z) if logits else sigmoid, rtol=1e-12)


def test_reparameterization_gradient_flows_through_mu_and_logvar_only():
    """A VAE's z = mu + exp(0.5 * logvar) * eps with eps = random_normal_like(mu): in float64
    with a fixed step key, the gradients to mu and logvar match central differences (the same
    eps in each evaluation), and no gradient reaches the noise's own argument."""
    from nnlang.ir.graph import Graph
    from nnlang.ops.registry import TensorType
    g = Graph()
    b = Builder(g)
    ins = {}
    for name in ("mu", "logvar", "other"):
        ins[name] = g.add_node("input", [], {"name": name, "dtype": "float64", "shape": [5, 3]},
                               TensorType((5, 3), "float64"))
        g.inputs[name] = ins[name]
    eps = b.random_normal_like(ins["mu"])
    z = b.add(ins["mu"], b.mul(b.exp(b.mul(ins["logvar"], b.const(0.5, "float64"))), eps))
    noise_only = b.random_normal_like(ins["other"], stddev=2.0)
    rng = np.random.default_rng(3)
    c1, c2 = (b.const(rng.normal(size=(5, 3)), "float64") for _ in range(2))
    g.losses["l"] = b.add(b.reduce_sum(b.mul(b.mul(z, z), c1), axes=None),
                          b.reduce_sum(b.mul(noise_only, c2), axes=None))
    g = decompose(g, training=True)
    loss = g.losses["l"]
    grads = backward(g, loss, [g.inputs[n] for n in ("mu", "logvar", "other")])
    feeds = {n: rng.normal(size=(5, 3)) for n in ("mu", "logvar", "other")}
    feeds["_rng"] = np.int64(9)
    env = interpret(g, feeds)
    h = 1e-6
    for name in ("mu", "logvar"):
        got = env[grads[g.inputs[name]]]
        want = np.zeros((5, 3))
        for i in np.ndindex(5, 3):
            up, down = ({**feeds, name: feeds[name].copy()} for _ in range(2))
            up[name][i] += h
            down[name][i] -= h
            want[i] = (_eval(g, loss, up, {}) - _eval(g, loss, down, {})) / (2 * h)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=name)
        assert np.abs(want).min() > 0
    other = grads.get(g.inputs["other"])
    assert other is None or not np.any(env[other])
