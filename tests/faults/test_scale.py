"""Models with many parameters: `repeat N` of a small layer compiles in time linear in N (the
multi-tensor optimizer update once took a tuple of every parameter and hung at repeat 250),
and the one-launch update computes what the per-parameter updates do."""
from __future__ import annotations

import cProfile
import pstats

import numpy as np
import pytest

import nnlang
from nnlang.ir.graph import Builder, Graph, TensorType
from nnlang.runtime.executable import compile_graph
from tests.faults.conftest import cli_process


def deep_model(n: int) -> str:
    """`n` dense+tanh layers of width 8 trained with Adam: 2n parameters in one update."""
    return f"""
model Deep(n = {n}) {{
  input x: float32[batch, 8]
  input y: float32[batch, 8]
  h = x
  repeat n {{
    h = dense(h, 8) |> tanh
  }}
  output h
  loss mean((h - y) ** 2)
}}

train Deep {{
  optimizer = adam(lr = 1e-3)
  batch = 16
  epochs = 1
}}
"""


def _compiles(tmp_path, n: int, timeout: float) -> None:
    # NOTE: `timeout` is a hang guard, not a speed bound: a cold compile of 250 layers took
    # 58 s of a former 120 s on a 2-core host loaded by other work
    path = tmp_path / f"deep{n}.nn"
    path.write_text(deep_model(n))
    out = cli_process("compile", path, code=0, timeout=timeout).stdout
    assert "multi_tensor_launches: 1" in out, out


def _trained(n: int, disable=(), steps: int = 2) -> dict:
    net = nnlang.compile(deep_model(n), seed=0, disable=disable)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        loss = net.train_step({"x": rng.standard_normal((16, 8), np.float32),
                               "y": rng.standard_normal((16, 8), np.float32)})
        assert np.isfinite(loss)
    return net.parameters()


def test_repeat_250_compiles(tmp_path):
    _compiles(tmp_path, 250, timeout=600)


def test_repeat_250_update_in_one_launch_matches_one_per_parameter():
    merged, apart = _trained(250), _trained(250, disable=("multi_tensor",))
    initial = nnlang.compile(deep_model(250), seed=0).parameters()
    assert merged.keys() == apart.keys() and len(merged) == 500
    for name in merged:
        assert not np.array_equal(merged[name], initial[name]), name  # every one moved
        np.testing.assert_array_equal(merged[name], apart[name], err_msg=name)


@pytest.mark.slow
def test_repeat_1000_compiles_and_trains(tmp_path):
    _compiles(tmp_path, 1000, timeout=1500)
    merged, apart = _trained(1000, steps=1), _trained(1000, disable=("multi_tensor",), steps=1)
    for name in merged:
        np.testing.assert_array_equal(merged[name], apart[name], err_msg=name)


def test_one_launch_updates_every_member_of_many():
    """w <- w * 0.5 + s over 97 parameters of assorted sizes (one of them large enough that
    the launch is split over threads mid-tensor), against numpy."""
    sizes = [2, 7, 70_001] + [(k % 13) + 2 for k in range(94)]
    g = Graph()
    b = Builder(g)
    g.inputs["s"] = s = g.add_node("input", [], {"name": "s", "dtype": "float32", "shape": []},
                                   TensorType((), "float32"), name="s")
    updates = {}
    for k, n in enumerate(sizes):
        name = f"w{k}"
        g.params[name] = w = g.add_node("param", [], {"name": name, "dtype": "float32",
                                                      "shape": [n]},
                                        TensorType((n,), "float32"), name=name)
        updates[name] = b.add(b.mul(w, b.const(0.5)), s)
    g.updates = updates
    rng = np.random.default_rng(0)
    w0 = {f"w{k}": rng.standard_normal(n).astype(np.float32) for k, n in enumerate(sizes)}
    state = {k: v.copy() for k, v in w0.items()}
    exe = compile_graph(g, state=state)
    assert [(st.kind, len(st.kernel_groups)) for st in exe.steps] == [("multi", len(sizes))]
    exe.run({"s": np.float32(3.0)})
    for name, v in w0.items():
        np.testing.assert_array_equal(state[name], v * np.float32(0.5) + np.float32(3.0),
                                      err_msg=name)


def _fusion_work(n: int) -> tuple[int, int]:
    """(Python calls made by fusion's planning, nodes) of deep_model(n) trained with clip_norm:
    its optimizer concatenates the 2n gradients, each its own group, which merge as siblings."""
    from nnlang.passes.fuse import plan_groups
    from nnlang.passes.optimize import optimize
    from nnlang.passes.pipeline import train_graph
    program = nnlang.load(deep_model(n).replace("epochs = 1", "epochs = 1\n  clip_norm = 1.0"))
    g = optimize(train_graph(program.graph, program.train, 16), disable=("fuse",))
    profile = cProfile.Profile()
    profile.enable()
    plan_groups(g)
    profile.disable()
    return pstats.Stats(profile).total_calls, len(g)


def test_fusion_work_grows_with_the_graph_not_its_square():
    """A counted quantity, not a time: merging k sibling groups rebuilt the growing group's
    sorted members and asked the graph for the readers of each of its stored values at every
    merge, O(k^2) (doubling the layers: 2.46x the calls for 1.98x the nodes; a 128-layer GPT's
    fusion took 10 s, 7 of them in that concat)."""
    (small, small_nodes), (big, big_nodes) = _fusion_work(40), _fusion_work(80)
    assert big / small < 1.1 * big_nodes / small_nodes, (small, big, small_nodes, big_nodes)


def _fold_work(n: int) -> tuple[int, int]:
    """(Python calls made by constant folding, nodes) of deep_model(n)'s train graph with four
    identities a layer (x*1, +0, /1, -0): each a replacement, forward and backward, among 2n
    parameters' gradients and Adam state updates."""
    from nnlang.passes.fold import fold_constants
    from nnlang.passes.pipeline import train_graph
    source = deep_model(n).replace("|> tanh", "|> tanh\n    h = (h * 1.0 + 0.0) / 1.0 - 0.0")
    program = nnlang.load(source)
    g = train_graph(program.graph, program.train, 16)
    nodes = len(g)
    profile = cProfile.Profile()
    profile.enable()
    fold_constants(g, inplace=True)
    profile.disable()
    return pstats.Stats(profile).total_calls, nodes


def test_fold_work_grows_with_the_graph_not_its_square():
    """A counted quantity, not a time: each replacement scanned every state update and gradient
    entry (`replace_value`) and rebuilt the set of named values, O(replacements x parameters)
    (doubling the layers here: 2.32x the calls for 1.99x the nodes; a 128-layer GPT's fold
    took 1.7 s, 2.7x its time at 64). `References` keeps them while the pass runs."""
    (small, small_nodes), (big, big_nodes) = _fold_work(40), _fold_work(80)
    assert big / small < 1.05 * big_nodes / small_nodes, (small, big, small_nodes, big_nodes)
