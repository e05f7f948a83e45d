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
