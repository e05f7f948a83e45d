"""The joint train graph: roles, state updates, dropout on/off, L2, and float64 retyping."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from nnlang.frontend.train_config import TrainConfig
from nnlang.passes.shapes import verify

BN = """
model B { input x: float32[batch, 3, 4]  y = batch_norm(x)  output y  loss l = mean(y * y) }
train B { optimizer = sgd(lr = 0.1) }
"""


def test_batch_norm_running_stats_follow_pytorch():
    net = nnlang.compile(BN, backend="reference", batch=5)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(5, 3, 4)).astype("float32")
    net.train_step({"x": x})
    np.testing.assert_allclose(net.state["y.running_mean"], 0.1 * x.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(net.state["y.running_var"],
                               0.9 + 0.1 * x.var(axis=(0, 2), ddof=1), rtol=1e-5)
    # evaluation normalizes with the running statistics, not the batch's
    mean, var = net.state["y.running_mean"], net.state["y.running_var"]
    gamma, beta = net.state["y.gamma"][None, :, None], net.state["y.beta"][None, :, None]
    expect = (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5) * gamma + beta
    np.testing.assert_allclose(net.forward({"x": x})["y"], expect, rtol=1e-4, atol=1e-5)


def test_train_graph_roles_and_updates():
    net = nnlang.compile(BN, backend="reference", batch=4)
    g = net.graph("train")
    verify(g)
    roles = {n.role for n in g}
    assert roles == {"fwd", "bwd", "optim"}
    assert set(g.updates) == {"y.gamma", "y.beta", "y.running_mean", "y.running_var",
                                      "optimizer.step"}
    bwd = [n for n in g if n.role == "bwd" and n.span is not None]
    assert bwd and all(n.span.line == 2 for n in bwd), "backward nodes keep forward spans"


def test_dropout_only_in_training():
    src = """model D { input x: float32[batch, 64]  y = dropout(x, 0.5)  output y
                       loss l = mean(y) }"""
    net = nnlang.compile(src, backend="reference", batch=2)
    x = np.ones((2, 64), np.float32)
    np.testing.assert_array_equal(net.forward({"x": x})["y"], x)
    assert any(n.op == "random_uniform" for n in net.graph("train"))


def test_l2_penalty_adds_to_the_loss():
    src = """model L { input x: float32[batch, 2]  param w: float32[2, 2] = ones()
                       loss l = mean(x @ w) }
             train L { l2 = 0.5  optimizer = sgd(lr = 0.1) }"""   # the loss before the update
    net = nnlang.compile(src, backend="reference", batch=1)
    loss = net.train_step({"x": np.zeros((1, 2), np.float32)})
    assert loss == pytest.approx(0.5 * 4)



def test_l1_penalty_is_the_sum_of_absolute_values():
    """Keras' L1: l1 * sum(|w|), its gradient l1 * sign(w): the loss before a step, and one
    SGD step on a weight the data loss does not reach (w - lr * l1 * sign(w)); l1_on puts it
    on a bias (rank 1), which the default leaves alone."""
    src = """model L { input x: float64[batch, 2]  param w: float64[2, 2] = normal(std = 1.0)
                       param c: float64[3] = normal(std = 1.0)  loss l = mean(x) }
             train L { l1 = 0.5  l1_on = [w, c]  optimizer = sgd(lr = 0.1) }"""
    net = nnlang.compile(src, backend="reference", batch=1, dtype="float64", seed=3)
    w, c = net.state["w"].copy(), net.state["c"].copy()
    assert (w < 0).any() and (w > 0).any()
    loss = net.train_step({"x": np.zeros((1, 2))})
    assert loss == pytest.approx(0.5 * (np.abs(w).sum() + np.abs(c).sum()), rel=1e-12)
    np.testing.assert_allclose(net.state["w"], w - 0.1 * 0.5 * np.sign(w), rtol=1e-12)
    np.testing.assert_allclose(net.state["c"], c - 0.1 * 0.5 * np.sign(c), rtol=1e-12)

SHIPPED = sorted((Path(__file__).parent.parent / "models").glob("*.nn"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_emitted_op_names_its_source_line(path):
    """--emit ir, backward and fused end each op's line with the .nn line it came from; the
    optimizer's and clipping's ops showed `@?` in fused (ir and backward left the @ out)."""
    net = nnlang.compile(path, backend="reference")
    for what in ("ir", "backward", "fused"):
        ops = [line for line in nnlang.emit(net, what).splitlines()
               if re.match(r"\s*%\d+", line)]
        unplaced = [line for line in ops if not re.search(r" @\d+$", line)]
        assert ops and not unplaced, (what, unplaced[:5])


PLACED = """model P {
  input x: float32[batch, 2]
  y = dense(x, 2)
  loss l = mean(y * y)
}
train P {
  l2 = 0.1
  optimizer = adam(lr = 0.01)
  clip_norm = 1.0
  l1 = 0.2
}
"""


@pytest.mark.parametrize("ranks", [1, 2])
def test_training_ops_point_at_the_setting_that_made_them(ranks):
    """Each generated training op is placed at the train setting it comes from (the gradient
    sync, which has none, at the train section), and an implicit optimizer at the section."""
    from nnlang.passes.pipeline import train_graph
    program = nnlang.load(PLACED)
    g = train_graph(program.graph, program.train, 4, ranks=ranks, rank=0)
    assert all(n.span is not None for n in g)
    lines = {op: {n.span.line for n in g if n.op == op and n.role in ("bwd", "optim")}
             for op in ("abs", "minimum", "sqrt", "allreduce_sum")}
    assert lines["abs"] == {10}   # l1: |w|
    assert lines["minimum"] == {9}   # clipping's scale
    assert lines["sqrt"] == {8, 9}   # Adam's and clipping's norm
    assert lines["allreduce_sum"] == ({6} if ranks > 1 else set())
    l2 = [n for n in g if n.op == "const" and n.role == "bwd" and
          n.attrs.get("value") == pytest.approx(0.1)]
    assert l2 and {n.span.line for n in l2} == {7}
    assert g.node(g.params["optimizer.step"]).span.line == 8
    implicit = nnlang.load(PLACED.replace("  optimizer = adam(lr = 0.01)\n", ""))
    g = train_graph(implicit.graph, implicit.train, 4)
    assert {n.span.line for n in g if n.op == "sqrt"} == {6, 8}   # the section, clip_norm
    bare = nnlang.load(PLACED.split("train")[0])   # no train section: the model's line
    g = train_graph(bare.graph, bare.train or TrainConfig(), 4)
    assert {n.span.line for n in g if n.role == "optim"} == {1}


def test_training_ops_of_a_setting_not_the_files_point_where_it_was_given():
    """An optimizer (or clip_norm, l1, l2) given with --set, or by fit's config, makes ops the
    file's own setting did not: --emit placed them at the file's `optimizer = adam(...)` line,
    whose optimizer is not the one that ran. Now at the --set value on the command line, or
    said to be no line of the file; a setting the file gives and nothing replaced keeps its
    line."""
    from nnlang.errors import Given, Span
    from nnlang.runtime.net import Net
    from nnlang.train.overrides import resolve
    item = "optimizer=sgd(lr = 0.5, momentum = 0.9)"
    value = Span("<command line>", 1, 17, 1, 6 + len(item), f"--set {item}")
    sets = Given({"optimizer": "sgd(lr = 0.5, momentum = 0.9)", "l1": 0.3},
                 {"optimizer": (Span("<command line>", 1, 7, 1, 16, f"--set {item}"), value)})
    program, cfg, *_ = resolve(PLACED, None, sets)
    assert cfg.optimizer.name == "sgd"
    g = Net(program, backend="reference", batch=4, config=cfg).graph("train")
    optim = {n.span for n in g if n.role == "optim"}   # the optimizer's, clipping's (line 9)
    assert value in optim and optim - {value} <= {s for s in optim if s.line == 9}
    assert {n.span.line for n in g if n.op == "minimum"} == {9}   # clip_norm: the file's
    l1 = {n.span for n in g if n.op == "abs"}   # no place on the command line: not line 10
    assert l1 and all(s.file != "<string>" for s in l1)
    net = Net(program, backend="reference", batch=4, config=cfg)
    for what in ("ir", "backward", "fused"):
        text = nnlang.emit(net, what)
        assert "@(--set optimizer=sgd(lr = 0.5, momentum = 0.9))" in text, what
        assert not re.search(r"%\d+ = mul.* @8$", text, re.M), what
    # a value a shell passed with a newline in it stays on the op's line (a kernel's comment)
    assert Span("<command line>", 1, 7, 1, 9, "--set l2=\n 0.1").label() == "(--set l2= 0.1)"
    fitted = resolve(PLACED, {"optimizer": "sgd"})
    g = Net(fitted[0], backend="reference", batch=4, config=fitted[1]).graph("train")
    optim = {n.span for n in g if n.role == "optim"}
    assert {s.line for s in optim if s.file == "<string>"} <= {9}   # clip_norm: the file's
    assert any(s.file == "<config>" for s in optim)
    assert "@(optimizer = sgd(lr=0.01, momentum=0.0" in nnlang.emit(
        Net(fitted[0], backend="reference", batch=4, config=fitted[1]), "backward")


def test_float64_graphs_stay_float64():
    net = nnlang.compile(BN, backend="reference", batch=3, dtype="float64")
    assert {n.dtype for n in net.graph("train")} <= {"float64", "bool", "int64", "int32"}


def test_model_without_loss_cannot_train():
    net = nnlang.compile("model M { input x: float32[batch, 2]  output y = exp(x) }",
                         backend="reference", batch=2)
    with pytest.raises(NNError, match="declares no loss") as err:
        net.train_step({"x": np.zeros((2, 2), np.float32)})
    # where the loss would read from, with that output in the hint's example
    assert str(err.value.span) == "<string>:1:50"  # exp(x)
    assert "`loss cross_entropy(y, label)`" in err.value.hint


# *** every loss in the registry (docs/contributing.md: a new loss is checked here) ***

def _loss_cases():
    from nnlang.ops import registry
    from tests.op_graphs import sample_cases
    return [pytest.param(name, s, id=case) for case, name, s in sample_cases()
            if registry.get(name).family == "losses"]


@pytest.mark.parametrize("name,sample", _loss_cases())
def test_every_loss_is_a_scalar_and_rejects_targets_of_another_batch(name, sample):
    """A loss reduces to a scalar in its predictions' dtype (a per-example vector would be
    refused as a model's `loss` only where a user writes it), and a target whose batch
    differs is a ShapeError naming the target (arg 1), which the frontend puts a caret on."""
    from nnlang.ops import registry
    from nnlang.ops.registry import ShapeError, TensorType
    from tests.op_graphs import op_graph, sample_attrs
    op = registry.get(name)
    g, _, _, out = op_graph(name, sample, "float64")
    assert g.node(out).shape == () and g.node(out).dtype == "float64", name
    types = [g.node(g.inputs[f"x{i}"]).type for i in range(len(sample.shapes))]
    target = types[1]
    types[1] = TensorType((target.shape[0] + 1,) + tuple(target.shape[1:]), target.dtype)
    with pytest.raises(ShapeError) as info:
        op.shape(*types, **sample_attrs(name, sample))
    assert info.value.arg == 1, (name, info.value.message)


NOISE = """model N { input x: float32[batch, 6]
  param w: float32[6] = ones()
  e = random_normal_like(x, stddev = 2.0)
  u = random_uniform_like(x, low = 1.0, high = 2.0)
  output e
  output u
  loss l = mean(square(x * w + e))
  metric e0 = mean(e)
  metric u0 = mean(u) }
train N { optimizer = sgd(lr = 0.01) }"""


def _noise_metrics(seed, steps=3, backend="numba"):
    net = nnlang.compile(NOISE, backend=backend, batch=4, seed=seed)
    x = np.ones((4, 6), np.float32)
    out = []
    for _ in range(steps):
        net.train_step({"x": x})
        out.append((net.last_metrics["e0"], net.last_metrics["u0"]))
    return net, out


def test_model_noise_is_fresh_each_step_and_reproducible_from_the_seed():
    net, a = _noise_metrics(seed=1)
    assert len({m for m, _ in a}) == 3 and len({u for _, u in a}) == 3, "fresh every step"
    assert all(1.0 <= u < 2.0 for _, u in a)
    assert _noise_metrics(seed=1)[1] == a, "the same seed draws the same noise"
    assert _noise_metrics(seed=2)[1] != a
    np.testing.assert_allclose(_noise_metrics(seed=1, backend="reference")[1], a, rtol=1e-5)
    # evaluation and predict: the expected value, at any batch size (the batch is symbolic)
    for n in (4, 3):
        out = net.forward({"x": np.ones((n, 6), np.float32)})
        np.testing.assert_array_equal(out["e"], np.zeros((n, 6), np.float32))
        np.testing.assert_array_equal(out["u"], np.full((n, 6), 1.5, np.float32))
    assert sum(n.op == "random_normal" for n in net.graph("train")) == 1
