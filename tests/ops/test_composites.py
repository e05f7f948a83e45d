"""Composite op matrix: every composite's samples are decomposed, interpreted in float64 and
compared with the independent numpy in tests/reference.py; plus initializers, parameter counts,
symbolic batch dims and the shape errors users see.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnlang.ir.dims import Sym, numel
from nnlang.ir.graph import Builder, Graph
from nnlang.ops import registry
from nnlang.ops.init import INITIALIZERS, fans, init_spec, initialize
from nnlang.ops.registry import ParamSpec, ShapeError, TensorType
from nnlang.passes.decompose import decompose
from nnlang.runtime.interpret import interpret
from tests.op_graphs import op_graph, sample_attrs
from tests.reference import REFERENCES, TRAINING_REFERENCES

COMPOSITES = sorted(n for n, op in registry.all_ops().items() if op.is_composite)
CASES = [(n, i) for n in COMPOSITES for i in range(len(registry.get(n).samples))]


def run(name, sample, training=False, seed=0):
    """The composite decomposed and interpreted in float64: (result, the reference's positional
    arguments (inputs, then parameters), attrs, the declared type)."""
    g, feeds, values, out = op_graph(name, sample, seed=seed)
    declared = g.node(out).type
    low = decompose(g, training=training)
    assert not [n.op for n in low if registry.get(n.op).is_composite]
    got = interpret(low, {**feeds, "_rng": 7}, values, want={"y": low.outputs["out"]})["y"]
    assert low.node(low.outputs["out"]).type == declared, \
        "shape rule disagrees with decomposition"
    n_tensors = sum(p.kind in ("tensor", "tensor?") for p in registry.get(name).sig.params)
    args = [feeds.get(f"x{i}") for i in range(n_tensors)]
    args += [values[k] for k in g.params]
    return got, args, sample_attrs(name, sample), declared


def test_every_composite_has_samples_and_reference():
    missing = [n for n in COMPOSITES if not registry.get(n).samples or n not in REFERENCES]
    assert not missing, f"composites without samples or a reference: {missing}"
    undocumented = [n for n in COMPOSITES if len(registry.get(n).doc) < 10]
    assert not undocumented


@pytest.mark.parametrize("name,index", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_matches_reference(name, index):
    sample = registry.get(name).samples[index]
    got, args, attrs, declared = run(name, sample)
    want = REFERENCES[name](*args, **attrs)
    assert got.shape == tuple(declared.shape)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 if declared.dtype == "float64"
                               else 1e-6)


@pytest.mark.parametrize("name", sorted(TRAINING_REFERENCES))
def test_training_mode_matches_reference(name):
    for sample in registry.get(name).samples:
        got, args, attrs, _ = run(name, sample, training=True)
        np.testing.assert_allclose(got, TRAINING_REFERENCES[name](*args, **attrs), rtol=1e-9,
                                   atol=1e-9)


@pytest.mark.parametrize("name,index", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_symbolic_batch(name, index):
    """Shape rules and decompositions work on a symbolic batch dim and agree with each other."""
    sample = registry.get(name).samples[index]
    g, _, _, out = op_graph(name, sample, batch=Sym.of("batch"))
    declared = g.node(out).type
    low = decompose(g, training=True)
    assert low.node(low.outputs["out"]).type == declared


def test_dropout_training_statistics():
    g = Graph()
    b = Builder(g)
    x = g.add_node("input", [], {"name": "x", "dtype": "float64", "shape": [200, 50]},
                   TensorType((200, 50), "float64"))
    g.inputs["x"] = x
    g.outputs["y"] = b.dropout(x, rate=0.3)
    g.outputs["z"] = b.dropout(x, rate=0.3)
    low = decompose(g, training=True)
    xs = np.ones((200, 50))
    env = interpret(low, {"x": xs, "_rng": 3}, want=dict(low.outputs))
    y, z = env["y"], env["z"]
    assert set(np.unique(y)) <= {0.0, 1 / 0.7}
    assert abs((y == 0).mean() - 0.3) < 0.02
    assert (y != z).any(), "two dropout sites must draw different masks"
    assert abs(y.mean() - 1.0) < 0.05


def _noise(op, dtype="float64", shape=(400, 250), **attrs):
    """Two sites of `op` on x of `shape`, decomposed for training and interpreted: (y, z)."""
    g = Graph()
    b = Builder(g)
    x = g.add_node("input", [], {"name": "x", "dtype": dtype, "shape": list(shape)},
                   TensorType(shape, dtype))
    g.inputs["x"] = x
    g.outputs["y"] = getattr(b, op)(x, **attrs)
    g.outputs["z"] = getattr(b, op)(x, **attrs)
    low = decompose(g, training=True)
    assert low.node(low.outputs["y"]).type == TensorType(shape, dtype)
    env = interpret(low, {"x": np.full(shape, np.nan, dtype), "_rng": 5},
                    want=dict(low.outputs))
    return env["y"], env["z"]


def _ks(sample, cdf) -> float:
    """Kolmogorov-Smirnov distance of a sample from a distribution's CDF."""
    s = np.sort(sample.ravel())
    f = cdf(s)
    n = len(s)
    return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


def test_random_normal_like_draws_normal_noise_in_training():
    """100,000 draws: mean, standard deviation and the whole distribution (KS distance from
    the normal CDF, written with math.erf) of N(mean, stddev); x's values (NaN here) are
    not read; two sites draw different noise."""
    y, z = _noise("random_normal_like", mean=1.5, stddev=0.5)
    assert y.dtype == np.float64 and np.isfinite(y).all()
    assert abs(y.mean() - 1.5) < 0.005 and abs(y.std() - 0.5) < 0.005
    phi = np.vectorize(lambda v: 0.5 * (1 + math.erf((v - 1.5) / (0.5 * math.sqrt(2)))))
    assert _ks(y, phi) < 0.008   # 1.36 / sqrt(n) = 0.0043 is the 5% critical value
    assert abs(np.corrcoef(y.ravel(), z.ravel())[0, 1]) < 0.02, "two sites draw apart"
    assert abs(np.corrcoef(y[:, :-1].ravel(), y[:, 1:].ravel())[0, 1]) < 0.02


def test_random_uniform_like_draws_in_low_high_in_training():
    y, z = _noise("random_uniform_like", low=-1.0, high=3.0)
    assert y.min() >= -1.0 and y.max() < 3.0
    assert _ks(y, lambda v: (v + 1.0) / 4.0) < 0.008
    assert not np.array_equal(y, z)


def test_noise_ops_refuse_a_negative_spread_and_an_int_tensor():
    for op, attrs, what in (("random_normal_like", {"stddev": -1.0}, "stddev"),
                            ("random_uniform_like", {"low": 2.0, "high": 1.0}, "high - low")):
        with pytest.raises(ShapeError, match=what):
            registry.get(op).shape(TensorType((2, 3), "float32"), **{
                **{p.name: p.default for p in registry.get(op).sig.params[1:]}, **attrs})
    with pytest.raises(ShapeError, match="needs a float tensor"):
        registry.get("random_normal_like").shape(TensorType((2, 3), "int32"), mean=0.0,
                                                 stddev=1.0)


def test_concat_from_user_side():
    g = Graph()
    b = Builder(g)
    xs = []
    for i, n in enumerate((2, 3, 4)):
        xs.append(g.add_node("input", [], {"name": f"x{i}", "dtype": "float64",
                                           "shape": [2, n]}, TensorType((2, n), "float64")))
    y = b.concat(*xs, axis=-1)
    assert g.node(y).type == TensorType((2, 9), "float64")
    feeds = {f"x{i}": np.full((2, n), float(i)) for i, n in enumerate((2, 3, 4))}
    out = interpret(g, feeds, want={"y": y})["y"]
    np.testing.assert_array_equal(out, np.concatenate(list(feeds.values()), axis=-1))


# *** parameters and initializers ***

def _count(name, shapes, **attrs):
    op = registry.get(name)
    attrs = {**{p.name: p.default for p in op.sig.params if p.kind not in ("tensor", "tensor?")},
             **attrs}
    types = [TensorType(s, "int32" if name == "embedding" else "float32") for s in shapes]
    return sum(numel(s.shape) for s in op.params(*types, **attrs).values())


@pytest.mark.parametrize("name,shapes,attrs,want", [
    ("dense", [(Sym.of("batch"), 784)], {"units": 512}, 401_920),
    ("conv2d", [(Sym.of("batch"), 1, 28, 28)], {"filters": 32, "kernel": 3}, 320),
    ("lstm", [(Sym.of("batch"), 10, 128)], {"units": 128}, 131_584),
    ("gru", [(Sym.of("batch"), 10, 128)], {"units": 128}, 99_072),
    ("multi_head_attention", [(Sym.of("batch"), 10, 128)], {"heads": 8}, 66_048),
    ("layer_norm", [(Sym.of("batch"), 10, 128)], {}, 256),
    ("embedding", [(Sym.of("batch"), 200)], {"vocab": 20_000, "dim": 128}, 2_560_000),
    ("lstm", [(Sym.of("batch"), 10, 128)], {"units": 64, "bidirectional": True},
     2 * (128 * 256 + 64 * 256 + 256)),
])
def test_parameter_counts(name, shapes, attrs, want):
    assert _count(name, shapes, **attrs) == want


def test_fans():
    assert fans((784, 512)) == (784, 512)
    assert fans((32, 3, 5, 5)) == (75, 800)
    assert fans((7,)) == (7, 7)


def test_glorot_uniform_bound_and_variance():
    w = initialize(ParamSpec((300, 200), ("glorot_uniform", {})), np.random.default_rng(0))
    bound = math.sqrt(6 / 500)
    assert w.dtype == np.float32 and np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    assert abs(w.var() - 2 / 500) < 0.05 * 2 / 500


@pytest.mark.parametrize("name,var", [("he_normal", 2 / 400), ("glorot_normal", 2 / 700),
                                      ("lecun_normal", 1 / 400), ("he_uniform", 2 / 400)])
def test_variance_scaling(name, var):
    w = initialize(ParamSpec((400, 300), (name, {})), np.random.default_rng(1))
    assert abs(w.var() - var) < 0.05 * var


def test_orthogonal():
    rng = np.random.default_rng(2)
    w = initialize(ParamSpec((64, 256), ("orthogonal", {})), rng).astype(np.float64)
    np.testing.assert_allclose(w @ w.T, np.eye(64), atol=1e-5)
    w = initialize(ParamSpec((50, 20), ("orthogonal", {"gain": 2.0})), rng).astype(np.float64)
    np.testing.assert_allclose(w.T @ w, 4 * np.eye(20), atol=1e-4)


def test_simple_initializers():
    rng = np.random.default_rng(3)
    assert (initialize(ParamSpec((3, 4), ("ones", {})), rng) == 1).all()
    assert (initialize(ParamSpec((3,), ("constant", {"value": 0.5})), rng) == 0.5).all()
    u = initialize(ParamSpec((100, 100), ("uniform", {})), rng)
    assert np.abs(u).max() <= 0.05 and np.abs(u).max() > 0.049
    n = initialize(ParamSpec((200, 200), ("normal", {"std": 0.02, "mean": 1.0})), rng)
    assert abs(n.mean() - 1.0) < 0.001 and abs(n.std() - 0.02) < 0.001
    t = initialize(ParamSpec((200, 200), ("truncated_normal", {"std": 0.1})), rng)
    assert np.abs(t).max() <= 0.2
    bias = initialize(ParamSpec((12,), ("unit_forget_bias", {"units": 3})), rng)
    np.testing.assert_array_equal(bias, [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert {"xavier_uniform", "kaiming_normal", "lecun_uniform"} <= set(INITIALIZERS)


def test_default_initializers_follow_keras():
    lstm = registry.get("lstm")
    x = TensorType((Sym.of("batch"), 5, 8))
    attrs = {p.name: p.default for p in lstm.sig.params[1:]} | {"units": 4}
    specs = lstm.params(x, **attrs)
    assert specs["kernel"].init[0] == "glorot_uniform"
    assert specs["recurrent"].init[0] == "orthogonal"
    assert specs["bias"].init == ("unit_forget_bias", {"units": 4})
    bn = registry.get("batch_norm").params(TensorType((2, 3, 4)), momentum=0.1, eps=1e-5)
    assert not bn["running_mean"].trainable and bn["gamma"].init[0] == "ones"


def test_init_spec_errors():
    assert init_spec(("normal", {"std": 0.1})) == ("normal", {"std": 0.1})
    with pytest.raises(ShapeError, match="unknown initializer") as err:
        init_spec("glorot_unifrom")
    assert "glorot_uniform" in err.value.hint
    with pytest.raises(ShapeError, match="has no parameter"):
        init_spec(("normal", {"sigma": 1.0}))


# *** shape errors users see ***

def _shape_error(name, types, **attrs):
    op = registry.get(name)
    attrs = {**{p.name: p.default for p in op.sig.params if p.kind not in ("tensor", "tensor?")},
             **attrs}
    with pytest.raises(ShapeError) as err:
        op.shape(*types, **attrs)
    return err.value


def test_conv2d_on_flat_input_says_reshape():
    err = _shape_error("conv2d", [TensorType((Sym.of("batch"), 784))], filters=32, kernel=3)
    assert err.message == ("conv2d expects [batch, channels, height, width] but got "
                           "[batch, 784]: reshape first?")
    assert err.arg == 0


@pytest.mark.parametrize("name,types,attrs,text", [
    ("lstm", [TensorType((4, 8))], {"units": 3}, "expects [batch, time, features]"),
    ("lstm", [TensorType((4, 5, Sym.of("feats")))], {"units": 3}, "must be a number"),
    ("dense", [TensorType((4, 8), "int32")], {"units": 3}, "needs a float tensor"),
    ("dense", [TensorType((4, 8))], {"units": 3, "activation": "rellu"}, "unknown activation"),
    ("cross_entropy", [TensorType((4, 5)), TensorType((5,), "int32")], {}, "need labels [4]"),
    ("mse", [TensorType((4, 1)), TensorType((4,))], {}, "differ"),
    ("multi_head_attention", [TensorType((2, 3, 10))], {"heads": 3}, "not divisible"),
    ("max_pool2d", [TensorType((1, 1, 2, 2))], {"size": 3}, "does not fit"),
    ("embedding", [TensorType((2, 3))], {"vocab": 5, "dim": 2}, "integer token ids"),
])
def test_shape_errors(name, types, attrs, text):
    assert text in _shape_error(name, types, **attrs).message


def test_dense_applies_to_last_dim_and_counts_flops():
    from nnlang.ir.summary import op_flops
    op = registry.get("dense")
    x = TensorType((Sym.of("batch"), 7, 16))
    attrs = {p.name: p.default for p in op.sig.params[1:]} | {"units": 4}
    out = op.shape(x, **attrs)
    assert out.shape == (Sym.of("batch"), 7, 4)
    x, w, bias = TensorType((5, 7, 16)), TensorType((16, 4)), TensorType((4,))
    # NOTE: the GEMM and the bias add (dense has no FLOP rule: its decomposition is counted)
    assert op_flops("dense", [x, w, bias], op.shape(x, **attrs), **attrs) == \
        2 * 5 * 7 * 16 * 4 + 5 * 7 * 4


def test_conv_same_padding_matches_tensorflow():
    op = registry.get("conv2d")
    attrs = {p.name: p.default for p in op.sig.params[1:]}
    out = op.shape(TensorType((1, 3, 10, 9)), **{**attrs, "filters": 2, "kernel": 4,
                                                 "stride": 3, "padding": "same"})
    assert out.shape == (1, 2, 4, 3)  # ceil(10/3), ceil(9/3)


def _gemm(m, k, n):
    return 2 * m * k * n   # the textbook count: a multiply-add per (row, col, k) is 2 FLOPs


# NOTE: the wants are written out from the layers' formulas: the GEMMs, then one FLOP per
# element of each bias add, gate nonlinearity and product, as `check` counts them outside a loop
@pytest.mark.parametrize("name,shape,attrs,want", [
    ("conv2d", (8, 3, 32, 32), {"filters": 16, "kernel": 3, "padding": "same"},
     2 * 8 * 16 * 32 * 32 * 3 * 9 + 8 * 16 * 32 * 32),   # the GEMM and the bias add
    # groups = 4: each filter sees its group's 16 / 4 channels only, a quarter of the GEMM
    ("conv2d", (8, 16, 32, 32), {"filters": 8, "kernel": 3, "padding": "same", "groups": 4},
     2 * 8 * 8 * 32 * 32 * 4 * 9 + 8 * 8 * 32 * 32),
    # B=8, T=10, F=32, U=16: x @ W once, h @ U per step; per step and row, 4U bias add, 4U
    # add of h @ U, 3U sigmoids, 2U tanh, 3U products and U add (c), as Keras' cell
    ("lstm", (8, 10, 32), {"units": 16},
     _gemm(80, 32, 64) + 10 * _gemm(8, 16, 64) + 80 * 17 * 16),
    # GRU (reset_after), B=2, T=5, F=3, U=4: input bias 3U, recurrent bias 3U, z and r (add,
    # sigmoid) 4U, candidate (r * rh, add, tanh) 3U, mix (z * h, 1 - z, * hh, add) 4U
    ("gru", (2, 5, 3), {"units": 4}, _gemm(10, 3, 12) + 5 * _gemm(2, 4, 12) + 10 * 17 * 4),
    ("rnn", (2, 5, 3), {"units": 4}, _gemm(10, 3, 4) + 5 * _gemm(2, 4, 4) + 10 * 3 * 4),
    # q [2, 5, 8], 2 heads: four projections and the two attention GEMMs, four bias adds, then
    # per score (2 * 2 * 5 * 5) the scaling and the softmax's max, sub, exp, sum and div
    ("multi_head_attention", (2, 5, 8), {"heads": 2},
     4 * _gemm(10, 8, 8) + 2 * _gemm(2 * 2 * 5, 4, 5) + 4 * 10 * 8 + 6 * 2 * 2 * 5 * 5),
])
def test_flops(name, shape, attrs, want):
    from nnlang.ir.summary import op_flops
    op = registry.get(name)
    attrs = {p.name: p.default for p in op.sig.params if p.kind not in ("tensor", "tensor?")} \
        | attrs
    x = TensorType(shape)
    slots = [None] * (sum(p.kind in ("tensor", "tensor?") for p in op.sig.params) - 1)
    weights = [TensorType(spec.shape) for spec in op.params(x, **attrs).values()]
    assert op_flops(name, [x, *slots, *weights], op.shape(x, **attrs), **attrs) == want


# op -> why its `flops` rule counts less than its decomposition (which would run as written)
RULE_BELOW_DECOMPOSITION = {
    "relu": "where(x <= 0, 0, x) is one max per element, as maximum(x, 0) counts",
}


def test_flops_rules_agree_with_decompositions():
    """`check` counts a composite by its `flops` rule, or else by what its decomposition runs;
    a rule must give the decomposition's count, so that a model's total does not depend on a
    layer being one call or its parts (multi_head_attention's rule left out the bias adds,
    the scaling and the softmax; gru's and lstm's, with the scan's, the gate math)."""
    from nnlang.ir.graph import op_attrs, slots
    from nnlang.ir.summary import _composite_flops, _freeze, _flops

    differ, seen = set(), set()
    for name, op in registry.all_ops().items():
        if op.flops is None or op.decompose is None:
            continue
        for sample in op.samples:
            g, _, _, out = op_graph(name, sample, dtype="float32")
            node = g.node(out)
            ins = tuple(None if i is None else g.node(i).type for i in slots(g, node))
            rule = _flops(name, ins, node.type, _freeze(op_attrs(node)))
            parts = _composite_flops(op, ins, op_attrs(node))
            seen.add(name)
            if rule != parts:
                differ.add(name)
                assert name in RULE_BELOW_DECOMPOSITION and rule < parts, \
                    f"{name} {sample.shapes} {sample.attrs}: rule {rule}, decomposition {parts}"
    assert differ == set(RULE_BELOW_DECOMPOSITION), "an exception is no longer needed"
    assert seen >= {"relu"}
