"""Fusion asserted by kernel counts (tinygrad's assert_kernel_count), plus group structure."""
import numpy as np

from nnlang.ir.graph import Builder, Graph, TensorType
from nnlang.passes.fuse import format_groups, fuse
from nnlang.runtime.executable import compile_graph
from nnlang.runtime.interpret import interpret


def graph_with_input(shape):
    g = Graph()
    x = g.add_node("input", [], {"name": "x", "dtype": "float32", "shape": list(shape)},
                   TensorType(tuple(shape), "float32"), name="x")
    g.inputs["x"] = x
    return g, Builder(g), x


def assert_kernel_count(g, n, feeds=None):
    exe = compile_graph(g)
    assert exe.summary()["kernels"] == n, exe.groups_text()
    if feeds is not None:
        want = {**g.outputs, **g.losses}
        ref = interpret(g, feeds, want=want)
        out = exe.run(feeds)
        for k in want:
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6)
    return exe


def test_elementwise_chain_is_one_kernel():
    g, b, x = graph_with_input((8, 8))
    g.outputs["y"] = b.add(b.mul(b.exp(x), b.const(2.0)), b.const(1.0))
    exe = assert_kernel_count(g, 1, {"x": np.ones((8, 8), np.float32)})
    assert "exp_f32(" in exe.kernel_sources()[0]  # float32 exp: the vectorizable form


def test_softmax_last_axis_at_most_three_kernels():
    g, b, x = graph_with_input((16, 10))
    m = b.reduce_max(x, axes=[-1], keepdims=True)
    e = b.exp(b.sub(x, b.broadcast_to(m, shape=[16, 10])))
    s = b.reduce_sum(e, axes=[-1], keepdims=True)
    g.outputs["p"] = b.div(e, b.broadcast_to(s, shape=[16, 10]))
    exe = assert_kernel_count(g, 3, {"x": np.random.default_rng(1).standard_normal(
        (16, 10)).astype(np.float32)})
    assert "reduce_sum" in exe.groups_text()


def test_mean_of_loss_fuses_into_reduction():
    g, b, x = graph_with_input((32, 4))
    sq = b.mul(b.sub(x, b.const(0.5)), b.sub(x, b.const(0.5)))
    g.losses["mse"] = b.mul(b.reduce_sum(sq, axes=None), b.const(1 / 128))
    assert_kernel_count(g, 2, {"x": np.arange(128, dtype=np.float32).reshape(32, 4)})


def test_never_fuses_across_matmul_or_gather():
    g, b, x = graph_with_input((4, 4))
    h = b.matmul(b.exp(x), b.exp(x))
    idx = b.const(np.array([0, 2], np.int32), "int32")
    g.outputs["y"] = b.tanh(b.gather(b.neg(h), idx))
    exe = assert_kernel_count(g, 3, {"x": np.eye(4, dtype=np.float32)})
    assert exe.summary()["calls"] == 2


def test_value_used_by_two_groups_is_materialized():
    g, b, x = graph_with_input((5, 6))
    e = b.exp(x)
    g.outputs["a"] = b.reduce_sum(e, axes=[1])
    g.outputs["c"] = b.reduce_max(e, axes=[0])
    fused = fuse(g)
    groups = fused.groups
    owner = [grp for grp in groups if e in grp.members]
    assert len(owner) == 1 and e in owner[0].outputs
    text = format_groups(fused, groups)
    assert f"%{e} = exp" in text
    assert_kernel_count(g, 2, {"x": np.ones((5, 6), np.float32)})


def test_broadcast_input_is_an_index_map():
    g, b, x = graph_with_input((3, 4))
    row = b.reduce_sum(x, axes=[0], keepdims=True)
    g.outputs["y"] = b.mul(x, b.broadcast_to(b.exp(row), shape=[3, 4]))
    exe = assert_kernel_count(g, 3, {"x": np.ones((3, 4), np.float32)})
    assert "[0, i1]" in "".join(exe.kernel_sources())


def test_independent_siblings_meeting_in_a_concat_are_one_kernel():
    """Four gate gradients of one RNN step: same loop shape, one concat, no dependency."""
    g, b, x = graph_with_input((6, 5))
    gates = [b.mul(b.sub(b.const(1.0), b.tanh(x)), b.const(float(k))) for k in range(4)]
    g.outputs["z"] = b.concat(*gates, axis=1)
    x0 = np.linspace(-2, 2, 30, dtype=np.float32).reshape(6, 5)
    exe = assert_kernel_count(g, 1, {"x": x0})
    assert exe.summary()["calls"] == 1   # the concat


def test_siblings_that_depend_on_each_other_stay_apart():
    """b's chain reads a's value through a matmul, so one kernel for both would be a cycle."""
    g, b, x = graph_with_input((5, 5))
    first = b.tanh(x)
    second = b.exp(b.matmul(first, x))
    g.outputs["z"] = b.concat(first, second, axis=0)
    x0 = np.linspace(-1, 1, 25, dtype=np.float32).reshape(5, 5)
    assert_kernel_count(g, 2, {"x": x0})


def test_a_value_two_groups_read_is_computed_once_in_one_kernel():
    """e feeds two outputs: the walk from the consumers puts it in one group, and the other
    group loaded it back from memory. With one loop shape and no reduction they are one
    kernel, which stores only the two outputs. If the second reads e through a matmul too,
    one kernel would be a cycle: they stay apart."""
    g, b, x = graph_with_input((6, 5))
    e = b.exp(x)
    g.outputs["a"] = b.add(e, b.const(1.0))
    g.outputs["c"] = b.mul(e, b.tanh(x))
    x0 = np.linspace(-2, 2, 30, dtype=np.float32).reshape(6, 5)
    exe = assert_kernel_count(g, 1, {"x": x0})
    (grp,) = [grp for s in exe.steps for grp in s.kernel_groups]
    assert len(grp.outputs) == 2 and e not in grp.outputs

    g, b, x = graph_with_input((5, 5))
    e = b.exp(x)
    g.outputs["a"] = b.add(e, b.const(1.0))
    g.outputs["c"] = b.mul(e, b.matmul(e, x))
    assert_kernel_count(g, 2, {"x": np.linspace(-1, 1, 25, dtype=np.float32).reshape(5, 5)})


def test_a_long_chain_is_cut_into_runs_that_compute_the_same():
    """A chain longer than MAX_GROUP ops (and its gradient, which reads every step's value)
    becomes runs of at most MAX_GROUP: numba's compile time grows faster than the kernel."""
    from nnlang.passes.autodiff import backward
    from nnlang.passes.fuse import MAX_GROUP
    n = 2 * MAX_GROUP + 7
    g, b, x = graph_with_input((4, 8))
    h = x
    for k in range(n):
        h = b.tanh(b.mul(h, b.const(1.0 + 0.01 * (k % 3))))
    loss = b.reduce_sum(b.mul(h, h), axes=None)
    g.outputs["loss"] = loss
    g.outputs["dx"] = backward(g, loss, [x])[x]
    fused = fuse(g)
    assert max(len(grp.members) for grp in fused.groups) <= MAX_GROUP
    assert len(fused.groups) >= 2 * (2 * n // MAX_GROUP)   # forward and backward both cut
    feeds = {"x": np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)}
    ref = interpret(g, feeds, want=dict(g.outputs))
    out = compile_graph(g).run(feeds)
    for k in ("loss", "dx"):
        np.testing.assert_allclose(out[k], ref[k], rtol=2e-5, atol=1e-6)
