"""Concatenation in place (`passes/concat_in_place.py`): pieces stored into their slice of the
concat's buffer, the concat copying only the rest; results against numpy, with the pass on and
off, and the buffers of values live at the same time never shared."""
import numpy as np
import pytest

import nnlang
from nnlang.ir.graph import Builder, Graph
from nnlang.passes.rewrite import result_ids
from nnlang.passes.schedule import base_of
from nnlang.runtime.executable import compile_graph
from tests.compiler.test_compiler_exec import leaf, rand
from tests.golden_values import OVERRIDES, ROOT, feeds_for


def _concat_steps(exe):
    return [s for s in exe.steps if s.kind == "call" and exe.graph.node(s.nodes[0]).op == "concat"]


def _gates():
    """tanh/sigmoid of two inputs concatenated along the last axis (an RNN's gates), with a
    fed input as a third piece, which is copied."""
    g = Graph()
    b = Builder(g)
    x, y, z = (leaf(g, "input", n, (4, 3)) for n in "xyz")
    t, s = b.tanh(b.mul(x, y)), b.sigmoid(b.add(x, y))
    cat = b.concat(t, s, z, axis=1)                          # [4, 9]
    g.outputs["out"] = b.mul(cat, b.const(2.0))
    feeds = {n: rand((4, 3)) for n in "xyz"}
    q = {k: v.astype(np.float64) for k, v in feeds.items()}
    want = 2 * np.concatenate([np.tanh(q["x"] * q["y"]), 1 / (1 + np.exp(-(q["x"] + q["y"]))),
                               q["z"]], axis=1)
    return g, feeds, want


@pytest.mark.parametrize("disable", [(), ("concat_in_place",), ("fuse",)])
def test_kernel_outputs_are_stored_into_their_slices(disable):
    g, feeds, want = _gates()
    exe = compile_graph(g, disable=disable)
    np.testing.assert_allclose(exe.run(feeds)["out"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(exe.run(feeds)["out"], want, rtol=1e-6, atol=1e-6)  # steady
    pieces = exe.memory.pieces
    if "concat_in_place" in disable:
        assert not pieces
        return
    # NOTE: the two computed values live in the concat's buffer; the fed input is copied
    assert len(pieces) == 2 and {(p.start, p.stop) for p in pieces.values()} == {(0, 3), (3, 6)}
    (step,) = _concat_steps(exe)
    cat = step.nodes[0]
    assert all(p.concat == cat for p in pieces.values())
    for nid in pieces:
        assert np.shares_memory(exe.arrays[nid], exe.arrays[cat])
        assert nid not in exe.memory.assign   # no buffer of its own


def test_a_gemm_result_is_stored_into_its_columns():
    """A 2-D GEMM writes its piece through BLAS's row stride (an LSTM step's z in the stacked
    output); split over threads (large enough) and whole, against numpy."""
    for rows in (4, 16384):
        g = Graph()
        b = Builder(g)
        x, w, y = leaf(g, "input", "x", (rows, 64)), leaf(g, "input", "w", (64, 96)), \
            leaf(g, "input", "y", (rows, 5))
        z = b.matmul(x, w)
        cat = b.concat(b.tanh(y), z, axis=1)                    # z at columns 5..101
        g.outputs["out"] = b.mul(cat, b.const(2.0))
        feeds = {"x": rand((rows, 64)), "w": rand((64, 96)), "y": rand((rows, 5))}
        q = {k: v.astype(np.float64) for k, v in feeds.items()}
        want = 2 * np.concatenate([np.tanh(q["y"]), q["x"] @ q["w"]], axis=1)
        exe = compile_graph(g)
        for _ in range(2):
            np.testing.assert_allclose(exe.run(feeds)["out"], want, rtol=1e-4, atol=1e-4)
        assert exe.memory.pieces[z].start == 5 and z not in exe.memory.assign


def test_nested_concats_share_the_outer_buffer():
    """Per-step gate gradients concatenated, then all steps concatenated (the LSTM backward)."""
    g = Graph()
    b = Builder(g)
    xs = [leaf(g, "input", f"x{t}", (2, 3)) for t in range(3)]
    steps = [b.concat(b.exp(x), b.tanh(x), axis=1) for x in xs]          # [2, 6] each
    total = b.concat(*steps, axis=0)                                       # [6, 6]
    g.outputs["total"] = b.mul(total, total)
    g.outputs["first"] = b.reduce_sum(steps[0], axes=[1])                  # a piece read later
    feeds = {f"x{t}": rand((2, 3)) for t in range(3)}
    q = [feeds[f"x{t}"].astype(np.float64) for t in range(3)]
    cat = np.concatenate([np.concatenate([np.exp(v), np.tanh(v)], axis=1) for v in q], axis=0)
    exe = compile_graph(g)
    out = exe.run(feeds)
    np.testing.assert_allclose(out["total"], cat * cat, rtol=1e-6)
    np.testing.assert_allclose(out["first"], cat[:2].sum(1), rtol=1e-6)
    pieces = exe.memory.pieces
    outer = next(s.nodes[0] for s in _concat_steps(exe) if s.nodes[0] not in pieces)
    inner = [s.nodes[0] for s in _concat_steps(exe) if s.nodes[0] in pieces]
    assert len(inner) == 3 and all(pieces[c].concat == outer for c in inner)
    assert sum(p.concat in inner for p in pieces.values()) == 6
    assert all(np.shares_memory(exe.arrays[n], exe.arrays[outer]) for n in pieces)


def test_pieces_that_cannot_live_in_a_slice_are_copied():
    """A result, and a value read through a reshape no slice of the concat can take."""
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", (4, 3))
    res, flat_read = b.exp(x), b.tanh(x)
    g.outputs["res"] = res
    g.outputs["flat"] = b.mul(b.reshape(flat_read, shape=[12]), b.const(3.0))
    kept = b.sigmoid(x)
    g.outputs["cat"] = b.mul(b.concat(res, flat_read, kept, axis=1), b.const(1.0))
    feeds = {"x": rand((4, 3))}
    exe = compile_graph(g)
    out = exe.run(feeds)
    v = feeds["x"].astype(np.float64)
    np.testing.assert_allclose(out["res"], np.exp(v), rtol=1e-6)
    np.testing.assert_allclose(out["flat"], 3 * np.tanh(v).reshape(12), rtol=1e-6)
    np.testing.assert_allclose(out["cat"], np.concatenate(
        [np.exp(v), np.tanh(v), 1 / (1 + np.exp(-v))], axis=1), rtol=1e-6)
    pieces = exe.memory.pieces
    assert base_of(exe.views, res) not in pieces and flat_read not in pieces
    assert len(pieces) == 1 and next(iter(pieces.values())).start == 6


def test_a_value_in_two_concats_is_stored_into_both():
    """The GRU's gate gradients: one value in two concats. The kernel that computes it stores
    it into each concat's slice (`shared_pieces.py` gives the second concat a copy, which
    fuses into that kernel), so neither concat copies anything."""
    g = Graph()
    b = Builder(g)
    x, y = leaf(g, "input", "x", (4, 3)), leaf(g, "input", "y", (4, 3))
    t, s, e = b.tanh(b.mul(x, y)), b.sigmoid(b.add(x, y)), b.exp(y)
    g.outputs["one"] = b.mul(b.concat(t, s, axis=1), b.const(2.0))
    g.outputs["two"] = b.mul(b.concat(t, e, axis=1), b.const(3.0))
    feeds = {n: rand((4, 3)) for n in "xy"}
    v = {k: a.astype(np.float64) for k, a in feeds.items()}
    tv = np.tanh(v["x"] * v["y"])
    kernels = {}
    for disable in ((), ("concat_in_place",)):
        exe = compile_graph(g, disable=disable)
        out = exe.run(feeds)
        np.testing.assert_allclose(out["one"], 2 * np.concatenate(
            [tv, 1 / (1 + np.exp(-(v["x"] + v["y"])))], axis=1), rtol=1e-6)
        np.testing.assert_allclose(out["two"], 3 * np.concatenate([tv, np.exp(v["y"])], axis=1),
                                   rtol=1e-6)
        kernels[disable] = exe.summary()["kernels"]
    exe = compile_graph(g)
    steps = _concat_steps(exe)
    assert len(steps) == 2 and len(exe.memory.pieces) == 4
    for step in steps:   # NOTE: every input of each concat lives in its buffer
        cat = exe.graph.node(step.nodes[0])
        assert all(exe.memory.pieces[i].concat == cat.id for i in cat.inputs)
    assert kernels[()] == kernels[("concat_in_place",)]   # the copy is no kernel of its own


def _true_intervals(exe) -> dict:
    """Each stored value's steps from its write to its last read (through views; results and
    fed inputs: the whole call), a concat's spanning all its pieces'."""
    g, steps, views, pieces = exe.graph, exe.steps, exe.views, exe.memory.pieces
    span = {nid: [-1, -1] for nid in g.inputs.values()}
    for k, s in enumerate(steps):
        for out in s.outputs:
            span[out] = [k, k]
    for k, s in enumerate(steps):
        for m in s.nodes:
            for i in g.node(m).inputs:
                b = base_of(views, i)
                if b in span:
                    span[b][1] = max(span[b][1], k)
    for r in result_ids(g):
        if base_of(views, r) in span:
            span[base_of(views, r)][1] = len(steps)
    for nid in list(pieces):
        root = nid
        while root in pieces:
            root = pieces[root].concat
        span[root] = [min(span[root][0], span[nid][0]), max(span[root][1], span[nid][1])]
    return span


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_rnn_trains_the_same_with_and_without_and_no_live_buffer_is_shared(model):
    program = nnlang.load(ROOT / "models" / f"{model}.nn", OVERRIDES[model])
    feeds = feeds_for(program)
    runs = {}
    for disable in ((), ("concat_in_place",)):
        net = nnlang.compile(program, backend="numba", batch=2, seed=0, disable=disable)
        losses = [net.train_step(feeds) for _ in range(3)]
        runs[disable] = (losses, {k: v.copy() for k, v in net.parameters().items()})
        exe = net._exe("train", 2)[0]
        if not disable:
            assert exe.summary()["concat_pieces_in_place"] > 0
            span, assign = _true_intervals(exe), exe.memory.assign
            by_buffer: dict = {}
            for nid, buf in assign.items():
                if nid in span:
                    by_buffer.setdefault(buf, []).append(span[nid])
            for spans in by_buffer.values():
                spans.sort()
                for (_, end), (start, _) in zip(spans, spans[1:]):
                    assert end < start, "two values live at once share a buffer"
    (l_on, p_on), (l_off, p_off) = runs[()], runs[("concat_in_place",)]
    assert l_on == l_off
    for k in p_on:
        np.testing.assert_array_equal(p_on[k], p_off[k], err_msg=k)
