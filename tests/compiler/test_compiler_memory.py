"""Memory planning: the planner on synthetic lifetimes, and no allocation in steady state."""
import numpy as np

from nnlang.ir.graph import Builder, Graph, TensorType
from nnlang.passes.memory import Lifetime, plan_buffers
from nnlang.runtime.executable import compile_graph


def test_planner_reuses_non_overlapping():
    lts = [Lifetime(0, 1000, 0, 1), Lifetime(1, 1000, 1, 2), Lifetime(2, 1000, 2, 3),
           Lifetime(3, 1000, 3, 4)]
    assign, sizes = plan_buffers(lts)
    assert assign[0] == assign[2] and assign[1] == assign[3] and assign[0] != assign[1]
    assert len(sizes) == 2


def test_planner_never_shares_overlapping():
    lts = [Lifetime(k, 64 * (k + 1), k % 3, k % 3 + 2) for k in range(9)]
    assign, sizes = plan_buffers(lts)
    for a in lts:
        for c in lts:
            if a.key < c.key and not (a.end < c.start or c.end < a.start):
                assert assign[a.key] != assign[c.key]
    for lt in lts:
        assert sizes[assign[lt.key]] >= lt.nbytes


def test_planner_best_fit_and_grow():
    assign, sizes = plan_buffers([Lifetime(0, 4096, 0, 0), Lifetime(1, 128, 0, 0),
                                  Lifetime(2, 100, 1, 1), Lifetime(3, 8192, 2, 2)])
    assert assign[2] == assign[1]                 # the small free buffer fits best
    assert len(sizes) == 2 and max(sizes) == 8192  # the large one grows instead of a third


def test_planner_keeps_row_widths_apart():
    """In a scan body whose loop runs parts of the batch at once, a buffer holding a [B, 8]
    value and later a [B, 49] one would put row r of one in another row's bytes of the other,
    so parts raced (a masked LSTM's backward gave wrong gradients one call in a few)."""
    lts = [Lifetime(0, 32 * 8 * 4, 0, 0, row=8 * 4), Lifetime(1, 32 * 49 * 4, 1, 1, row=49 * 4),
           Lifetime(2, 32 * 8 * 4, 2, 2, row=8 * 4), Lifetime(3, 32 * 4, 3, 3, row=4)]
    assign, sizes = plan_buffers(lts)
    assert assign[0] == assign[2]                       # the same width still shares
    assert len({assign[0], assign[1], assign[3]}) == 3  # other widths never do
    assert sizes[assign[1]] >= 32 * 49 * 4


def mlp_graph(depth=6):
    g = Graph()
    b = Builder(g)
    x = g.add_node("input", [], {"name": "x", "dtype": "float32", "shape": [8, 16]},
                   TensorType((8, 16), "float32"), name="x")
    g.inputs["x"] = x
    h = x
    for k in range(depth):
        w = g.add_node("param", [], {"name": f"w{k}", "dtype": "float32", "shape": [16, 16]},
                       TensorType((16, 16), "float32"), name=f"w{k}")
        g.params[f"w{k}"] = w
        h = b.maximum(b.matmul(h, w), b.const(0.0))
    g.losses["l"] = b.reduce_sum(b.mul(h, h), axes=None)
    return g


def test_steady_state_allocates_nothing():
    g = mlp_graph()
    exe = compile_graph(g, state={f"w{k}": np.eye(16, dtype=np.float32) for k in range(6)})
    feeds = {"x": np.ones((8, 16), np.float32)}
    exe.run(feeds)
    ids = {nid: (a.__array_interface__["data"][0], id(a)) for nid, a in exe.arrays.items()}
    first = exe.run(feeds)["l"]
    assert {nid: (a.__array_interface__["data"][0], id(a))
            for nid, a in exe.arrays.items()} == ids
    assert exe.run(feeds)["l"] == first == 8 * 16
    # liveness lets the 12 intermediates share a handful of buffers
    assert exe.summary()["buffers"] <= 4


def _state_graph(read_after=False, transposed=False):
    """w <- 0.5 * w (or 0.5 * w^T); with `read_after`, y = x @ w is built after the update, so
    its matmul runs after the update kernel and needs the old w."""
    g = Graph()
    b = Builder(g)
    w = g.add_node("param", [], {"name": "w", "dtype": "float32", "shape": [3, 3]},
                   TensorType((3, 3), "float32"), name="w")
    g.params["w"] = w
    x = g.add_node("input", [], {"name": "x", "dtype": "float32", "shape": [2, 3]},
                   TensorType((2, 3), "float32"), name="x")
    g.inputs["x"] = x
    src = b.transpose(w, perm=[1, 0]) if transposed else w
    g.updates = {"w": b.mul(src, b.const(0.5))}
    if read_after:
        g.outputs["y"] = b.matmul(x, w)
    else:
        g.outputs["s"] = b.reduce_sum(x, axes=None)
    return g


def test_updates_are_written_in_place_when_nothing_reads_the_old_value():
    import nnlang
    net = nnlang.compile("models/mlp.nn", batch=8)
    exe = net._exe("train", 8)[0]
    g = exe.graph
    assert set(exe.memory.in_place) == set(g.updates.values())
    assert not exe._updates and not set(exe.memory.in_place) & set(exe.memory.assign)
    w0 = np.arange(9, dtype=np.float32).reshape(3, 3)
    state = {"w": w0.copy()}
    exe = compile_graph(_state_graph(), state=state)
    assert exe.memory.in_place
    # NOTE: stored through the load's own argument: a second pointer to the same array would
    # make LLVM's overlap check fail and run the loop unvectorized
    (update,) = [k for k in exe.kernel_sources() if "mul" in k.split("import")[0]]
    assert "in0[i0, i1] = " in update and "out0" not in update
    exe.run({"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(state["w"], 0.5 * w0)


def test_no_update_in_place_when_the_old_value_is_read_later_or_transposed():
    w0 = np.arange(9, dtype=np.float32).reshape(3, 3)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    state = {"w": w0.copy()}
    exe = compile_graph(_state_graph(read_after=True), state=state)
    assert not exe.memory.in_place
    np.testing.assert_allclose(exe.run({"x": x})["y"], x @ w0)
    np.testing.assert_array_equal(state["w"], 0.5 * w0)
    state = {"w": w0.copy()}
    exe = compile_graph(_state_graph(transposed=True), state=state)
    assert not exe.memory.in_place
    exe.run({"x": x})
    np.testing.assert_array_equal(state["w"], 0.5 * w0.T)


def test_one_launch_whose_updates_are_partly_in_place_runs_each_kernel():
    """w1 <- w1/2 and w2 <- w2/2 are one multi-tensor step; a matmul after it reads the old w2,
    so only w1 is written in place, the two kernels differ, and each runs on its own."""
    g = Graph()
    b = Builder(g)
    ws = []
    for name in ("w1", "w2"):
        ws.append(g.add_node("param", [], {"name": name, "dtype": "float32", "shape": [3, 3]},
                             TensorType((3, 3), "float32"), name=name))
        g.params[name] = ws[-1]
    g.updates = {name: b.mul(w, b.const(0.5)) for name, w in zip(("w1", "w2"), ws)}
    x = g.add_node("input", [], {"name": "x", "dtype": "float32", "shape": [2, 3]},
                   TensorType((2, 3), "float32"), name="x")
    g.inputs["x"] = x
    g.outputs["y"] = b.matmul(x, ws[1])
    w0 = np.arange(9, dtype=np.float32).reshape(3, 3)
    state = {"w1": w0.copy(), "w2": w0.copy() + 1}
    exe = compile_graph(g, state=state)
    assert [s.kind for s in exe.steps].count("multi") == 1
    assert list(exe.memory.in_place.values()) == ["w1"]
    xv = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(exe.run({"x": xv})["y"], xv @ (w0 + 1))
    np.testing.assert_array_equal(state["w1"], 0.5 * w0)
    np.testing.assert_array_equal(state["w2"], 0.5 * (w0 + 1))


def test_a_convs_columns_are_freed_before_their_gradient_is_written():
    """The backward of a matmul built the input's gradient first, so a conv's unfolded columns
    (read by nothing but the forward GEMM and the weight gradient's) lived beside their
    gradient of the same size: the CNN's train step held 54.0 MB of buffers, 46.8 now (LSTM
    142 -> 109 MB). The weight's gradient is scheduled first, and the columns die with it."""
    import nnlang
    from nnlang.passes.memory import lifetimes

    src = """model C {
  input x: float32[batch, 4, 12, 12]
  input y: float32[batch, 8, 12, 12]
  h = conv2d(x, 6, 3, padding = 1) |> relu
  loss mse(conv2d(h, 8, 3, padding = 1), y)
}"""
    net = nnlang.compile(src, batch=8)
    exe = net._exe("train", 8)[0]
    g = exe.graph
    spans = {lt.key: lt for lt in lifetimes(g, exe.steps, exe.views)}
    cols = [nid for nid in spans if g.node(nid).op == "unfold" and
            g.node(nid).shape[-1] == 6]         # the second conv's columns: h unfolded
    assert len(cols) == 1
    size = spans[cols[0]].nbytes
    grads = [lt for lt in spans.values() if lt.nbytes == size and lt.key != cols[0]
             and g.node(lt.key).op == "matmul"]
    assert grads, "the columns' gradient (a matmul of the columns' size) was not found"
    assert all(spans[cols[0]].end < lt.start for lt in grads)
