"""Each optimizing pass: a before/after dump check, and the same compiled result on and off."""
import numpy as np
import pytest

from nnlang.errors import NNError
from nnlang.ir.graph import Builder, Graph, TensorType
from nnlang.passes.cse import eliminate_common
from nnlang.passes.dce import eliminate_dead
from nnlang.passes.fold import fold_constants
from nnlang.passes.optimize import SWITCHES, optimize
from nnlang.runtime.executable import compile_graph
from nnlang.runtime.interpret import interpret


def sample_graph():
    """Folding, simplification, common and dead subexpressions all have work here."""
    g = Graph()
    b = Builder(g)
    x = g.add_node("input", [], {"name": "x", "dtype": "float32", "shape": [3, 4]},
                   TensorType((3, 4), "float32"), name="x")
    g.inputs["x"] = x
    two = b.add(b.const(1.0), b.const(1.0))                          # folds to 2
    t = b.transpose(b.transpose(x, perm=[1, 0]), perm=[1, 0])         # double transpose
    y = b.mul(b.neg(b.neg(t)), b.const(1.0))                          # neg neg, x*1
    a1, a2 = b.exp(y), b.exp(y)                                       # common
    b.tanh(x)                                                         # dead
    z = b.reshape(b.add(b.mul(a1, two), a2), shape=[3, 4])            # same-shape reshape
    g.outputs["z"] = b.cast(b.sub(b.div(z, b.const(1.0)), b.const(0.0)), dtype="float32")
    return g, {"x": np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)}


def ops(g):
    return sorted(n.op for n in g)


def test_fold_constants_dump():
    g, _ = sample_graph()
    before = g.dump()
    after = eliminate_dead(fold_constants(g)).dump()
    assert "transpose" in before and "neg" in before and "cast" in before
    for gone in ("transpose", "neg", "reshape", "cast", "div", "sub"):
        assert gone not in after, after
    assert "value=[2.]" in after  # 1 + 1 folded
    assert g.dump() == before     # passes copy; the input graph is untouched


def test_cse_merges_equal_nodes_but_not_different_salts():
    g, _ = sample_graph()
    assert ops(eliminate_common(g)).count("exp") == 1 and ops(g).count("exp") == 2
    b = Builder(g)
    key = b.rng_key()
    r1, r2 = b.random_uniform(key, shape=[2], salt=1), b.random_uniform(key, shape=[2], salt=2)
    r3 = b.random_uniform(key, shape=[2], salt=1)
    c1, c2 = b.const(np.arange(5.0)), b.const(np.arange(5.0))
    c3 = b.const(np.arange(5.0) + 1)
    for n in (r1, r2, r3, c1, c2, c3):
        g.node(n).attrs["root"] = True
    out = eliminate_common(g)
    assert sum(1 for n in out if n.op == "random_uniform") == 2
    assert sum(1 for n in out if n.op == "const" and n.shape == (5,)) == 2


def test_dce_keeps_results_updates_and_params():
    g, _ = sample_graph()
    p = g.add_node("param", [], {"name": "w", "dtype": "float32", "shape": [2]},
                   TensorType((2,), "float32"), name="w")
    b = Builder(g)
    upd = b.mul(p, b.const(0.5))
    g.updates = {"w": upd}
    out = eliminate_dead(g)
    assert "tanh" in ops(g) and "tanh" not in ops(out)
    assert upd in out.nx and p in out.nx


@pytest.mark.parametrize("name", SWITCHES)
def test_pass_on_and_off_same_result(name):
    g, feeds = sample_graph()
    ref = interpret(g, feeds, want=g.outputs)["z"]
    on = compile_graph(g).run(feeds)["z"]
    off = compile_graph(g, disable=(name,)).run(feeds)["z"]
    np.testing.assert_allclose(on, ref, rtol=1e-6)
    np.testing.assert_allclose(off, ref, rtol=1e-6)



def test_identity_rules_fold_only_the_identity_side():
    """x - 0 and x / 1 are x, but 0 - x is -x and 1 / x its reciprocal: the simplification
    that folds the first two must leave the others (numpy written out below)."""
    g = Graph()
    b = Builder(g)
    x = g.add_node("input", [], {"name": "x", "dtype": "float64", "shape": [3, 4]},
                   TensorType((3, 4), "float64"), name="x")
    g.inputs["x"] = x
    zero, one = b.const(0.0, "float64"), b.const(1.0, "float64")
    g.outputs = {"a": b.sub(zero, x), "b": b.div(one, x), "c": b.sub(x, zero),
                 "d": b.div(x, one), "e": b.mul(one, x), "f": b.add(zero, x)}
    xs = np.random.default_rng(4).uniform(0.5, 2.0, (3, 4))
    folded = fold_constants(g)
    runs = (interpret(folded, {"x": xs}, want=folded.outputs), compile_graph(g).run({"x": xs}))
    for got in runs:
        for k, want in {"a": -xs, "b": 1 / xs, "c": xs, "d": xs, "e": xs, "f": xs}.items():
            np.testing.assert_allclose(got[k], want, rtol=1e-15, err_msg=k)

def test_optimize_rejects_unknown_pass():
    g, _ = sample_graph()
    with pytest.raises(NNError, match="unknown pass.*nope"):
        optimize(g, disable=("nope",))


def test_topo_is_networkx_lexicographic_order_and_follows_changes():
    import networkx as nx

    import nnlang
    from nnlang.passes.pipeline import train_graph
    program = nnlang.load("models/gru.nn", {"maxlen": 6})
    g = train_graph(program.graph, program.train, 4)
    assert g.topo() == list(nx.lexicographical_topological_sort(g.nx))
    before = g.topo()
    b = Builder(g)
    first = next(n for n in before if g.node(n).dtype == "float32" and g.users(n))
    new = b.exp(first)
    later = next(n for n in before if first in g.node(n).inputs)
    g.set_inputs(later, [new if i == first else i for i in g.node(later).inputs])
    assert g.topo() == list(nx.lexicographical_topological_sort(g.nx)) != before
    assert g.ancestors([later]) == nx.ancestors(g.nx, later) | {later}


def test_elementwise_between_inverse_transposes_runs_untransposed():
    """transpose(where(x > 0, g, 0) * 2, p^-1) with x and g transposed by p: the relu and its
    gradient between channels-last conv/pool lowerings; fold removes every transpose."""
    g = Graph()
    b = Builder(g)
    x = g.add_node("input", [], {"name": "x", "dtype": "float32", "shape": [2, 3, 4, 5]},
                   TensorType((2, 3, 4, 5), "float32"), name="x")
    gy = g.add_node("input", [], {"name": "gy", "dtype": "float32", "shape": [2, 3, 4, 5]},
                    TensorType((2, 3, 4, 5), "float32"), name="gy")
    g.inputs.update(x=x, gy=gy)
    p = [0, 3, 1, 2]
    xt, gt = b.transpose(x, perm=p), b.transpose(gy, perm=p)
    zero = b.const(np.zeros((1, 1, 1, 1), np.float32))
    masked = b.where(b.gt(xt, zero), gt, zero)
    g.outputs["z"] = b.transpose(b.mul(masked, b.const(2.0)), perm=[0, 2, 3, 1])
    rng = np.random.default_rng(3)
    feeds = {k: rng.standard_normal((2, 3, 4, 5)).astype(np.float32) for k in ("x", "gy")}
    out = eliminate_dead(fold_constants(g))
    assert "transpose" not in ops(out), out.dump()
    want = np.where(feeds["x"] > 0, feeds["gy"], 0) * 2
    np.testing.assert_allclose(interpret(out, feeds, want=out.outputs)["z"], want, rtol=1e-6)
    np.testing.assert_allclose(compile_graph(g).run(feeds)["z"], want, rtol=1e-6)


def _gate_graph(consumer):
    """z = x + h @ u + bias, its two halves along axis 1 each read by `consumer`."""
    g = Graph()
    b = Builder(g)
    for name, shape in (("x", (4, 6)), ("h", (4, 3)), ("u", (3, 6)), ("bias", (6,))):
        g.inputs[name] = g.add_node("input", [], {"name": name, "dtype": "float32",
                                                  "shape": list(shape)},
                                    TensorType(shape, "float32"), name=name)
    i = g.inputs
    z = b.add(b.add(i["x"], b.matmul(i["h"], i["u"])), i["bias"])
    halves = [b.slice(z, axis=1, start=k * 3, stop=(k + 1) * 3, step=1) for k in range(2)]
    g.outputs["a"] = consumer(b, halves[0], i)
    g.outputs["b"] = consumer(b, halves[1], i)
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal(g.node(v).shape).astype(np.float32) for n, v in i.items()}
    q = {k: v.astype(np.float64) for k, v in feeds.items()}
    zv = q["x"] + q["h"] @ q["u"] + q["bias"]
    return g, feeds, zv


def test_slices_of_an_elementwise_value_compute_it_themselves():
    """Each half's kernel adds its own slices (the bias broadcast by numpy rules): the whole z
    is never computed."""
    g, feeds, zv = _gate_graph(lambda b, half, i: b.tanh(half))
    out = eliminate_dead(fold_constants(g))
    full = [n for n in out if n.op == "add" and tuple(n.shape) == (4, 6)]
    assert not full and sum(n.op == "add" for n in out) == 4, out.dump()
    for graph in (out, g):
        got = compile_graph(graph).run(feeds)
        np.testing.assert_allclose(got["a"], np.tanh(zv[:, :3]), rtol=1e-6)
        np.testing.assert_allclose(got["b"], np.tanh(zv[:, 3:]), rtol=1e-6)
    assert len([s for s in compile_graph(g).steps if s.kind == "kernel"]) == 2


def test_slices_read_by_a_matmul_keep_the_elementwise_value():
    """A slice feeding a matmul would make the add a kernel of its own per slice: no rewrite."""
    g, feeds, zv = _gate_graph(lambda b, half, i: b.matmul(half, b.transpose(half, perm=[1, 0])))
    out = eliminate_dead(fold_constants(g))
    assert [tuple(n.shape) for n in out if n.op == "add"] == [(4, 6), (4, 6)], out.dump()
    got = compile_graph(g).run(feeds)
    np.testing.assert_allclose(got["a"], zv[:, :3] @ zv[:, :3].T, rtol=1e-5)


def test_multi_tensor_merges_independent_runs_of_one_kernel():
    """x*2+1 and y*2+1 (other shapes, independent) become one launch; u*3+1 is another kernel
    and stays apart; with the pass off, three kernels."""
    g = Graph()
    b = Builder(g)
    feeds = {}
    for name, shape in (("x", (8,)), ("y", (3, 4)), ("u", (5,))):
        g.inputs[name] = g.add_node("input", [], {"name": name, "dtype": "float32",
                                                  "shape": list(shape)},
                                    TensorType(shape, "float32"), name=name)
        feeds[name] = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    for k, scale in (("x", 2.0), ("y", 2.0), ("u", 3.0)):
        g.outputs[k + "2"] = b.add(b.mul(g.inputs[k], b.const(scale)), b.const(1.0))
    exe = compile_graph(g)
    assert [(s.kind, len(s.kernel_groups)) for s in exe.steps] == [("multi", 2), ("kernel", 1)]
    assert [s.kind for s in compile_graph(g, disable=("multi_tensor",)).steps] == ["kernel"] * 3
    out = exe.run(feeds)
    for k, scale in (("x", 2.0), ("y", 2.0), ("u", 3.0)):
        np.testing.assert_allclose(out[k + "2"], feeds[k] * scale + 1, rtol=1e-6)


def test_multi_tensor_takes_a_one_element_tensor_with_its_scalars():
    """x*s+1 on x [8] and on y [1], s a scalar input: y's loop is 1 long, and s is still a
    scalar there, so y's kernel is x's and joins its launch. It was a kernel of its own (s
    read as a [1] tensor): the Adam update of a dense layer's one bias, one more cold compile
    and launch of a kernel every other parameter shares."""
    g = Graph()
    b = Builder(g)
    feeds = {}
    for name, shape in (("x", (8,)), ("y", (1,)), ("s", ())):
        g.inputs[name] = g.add_node("input", [], {"name": name, "dtype": "float32",
                                                  "shape": list(shape)},
                                    TensorType(shape, "float32"), name=name)
        feeds[name] = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    for k in ("x", "y"):
        g.outputs[k + "s"] = b.add(b.mul(g.inputs[k], g.inputs["s"]), b.const(1.0))
    exe = compile_graph(g)
    assert [(s.kind, len(s.kernel_groups)) for s in exe.steps] == [("multi", 2)]
    out = exe.run(feeds)
    for k in ("x", "y"):
        np.testing.assert_allclose(out[k + "s"], feeds[k] * feeds["s"] + 1, rtol=1e-6)


def test_multi_tensor_keeps_a_kernel_that_reads_another_apart():
    """Unfused, x*2 then (x*2)*2 are the same kernel twice, but the second reads the first:
    they are never one launch; y*2 may join either."""
    g = Graph()
    b = Builder(g)
    for name in ("x", "y"):
        g.inputs[name] = g.add_node("input", [], {"name": name, "dtype": "float32",
                                                  "shape": [8]},
                                    TensorType((8,), "float32"), name=name)
    first = b.mul(g.inputs["x"], b.const(2.0))
    g.outputs["x4"] = b.mul(first, b.const(2.0))
    g.outputs["y2"] = b.mul(g.inputs["y"], b.const(2.0))
    exe = compile_graph(g, disable=("fuse",))
    for s in exe.steps:
        assert not (first in s.nodes and g.outputs["x4"] in s.nodes)
    assert any(s.kind == "multi" for s in exe.steps)
    x, y = np.arange(8, dtype=np.float32), np.ones(8, np.float32)
    out = exe.run({"x": x, "y": y})
    np.testing.assert_array_equal(out["x4"], x * 4)
    np.testing.assert_array_equal(out["y2"], y * 2)


def _input(g, name, shape):
    g.inputs[name] = g.add_node("input", [], {"name": name, "dtype": "float32",
                                              "shape": list(shape)},
                                TensorType(shape, "float32"), name=name)
    return g.inputs[name]


def test_a_view_of_a_uniform_constant_is_a_broadcast_scalar():
    """A slice of a broadcast constant too big to fold (a scan body's ones) becomes the one
    value broadcast, which a kernel takes as a literal, not a zero-stride array; times 1 it is
    gone. Mixed signed zeros are not one value and stay as they are."""
    g = Graph()
    b = Builder(g)
    x = _input(g, "x", (64, 128))
    ones = b.broadcast_to(b.reshape(b.const(1.0), shape=[1, 1]), shape=[64, 256])
    threes = b.broadcast_to(b.reshape(b.const(3.0), shape=[1, 1]), shape=[64, 256])
    g.outputs["a"] = b.mul(b.slice(ones, axis=1, start=0, stop=128, step=1), x)
    g.outputs["b"] = b.mul(b.slice(threes, axis=1, start=128, stop=256, step=1), x)
    zeros = np.zeros((64, 128), np.float32)
    zeros[0, 0] = -0.0
    g.outputs["c"] = b.add(x, b.transpose(b.transpose(b.const(zeros), perm=[1, 0]),
                                          perm=[1, 0]))
    out = eliminate_dead(fold_constants(g))
    assert out.outputs["a"] == out.inputs["x"], out.dump()            # x * 1 through views
    three = out.node(out.outputs["b"])
    scalar = [out.node(i) for i in three.inputs if out.node(i).op == "broadcast_to"]
    assert scalar and out.node(scalar[0].inputs[0]).attrs["value"].shape == (), out.dump()
    feeds = {"x": np.random.default_rng(4).standard_normal((64, 128)).astype(np.float32)}
    got = compile_graph(g).run(feeds)
    np.testing.assert_array_equal(got["a"], feeds["x"])
    np.testing.assert_allclose(got["b"], 3 * feeds["x"], rtol=1e-6)
    np.testing.assert_array_equal(got["c"], feeds["x"] + zeros)




def _dense_relu_graph(bias_shape, out_shape, pre_is_output):
    """Two dense layers on [2, 3, 4] tokens with a ReLU between, as the frontend builds them:
    rows = reshape(x) @ w, the bias added to the rows, the ReLU on them reshaped to
    `out_shape`, its rows read by the second GEMM. `pre_is_output`: the bias is added to the
    rows reshaped to [2, 3, 4] and that pre-activation is also an output (as the backward keeps
    it), the ReLU on its rows."""
    g = Graph()
    b = Builder(g)
    x = g.add_node("input", [], {"name": "x", "dtype": "float32", "shape": [2, 3, 4]},
                   TensorType((2, 3, 4), "float32"), name="x")
    w = g.add_node("param", [], {"name": "w", "dtype": "float32", "shape": [4, 4]},
                   TensorType((4, 4), "float32"), name="w")
    bias = g.add_node("param", [], {"name": "b", "dtype": "float32", "shape": list(bias_shape)},
                      TensorType(tuple(bias_shape), "float32"), name="b")
    g.inputs["x"] = x
    g.params.update(w=w, b=b)
    rows = b.matmul(b.reshape(x, shape=[6, 4]), w)
    zero = b.const(0.0)
    if pre_is_output:
        pre = b.add(b.reshape(rows, shape=list(out_shape)), bias)
        g.outputs["pre"] = pre
        relu = b.maximum(b.reshape(pre, shape=[6, 4]), zero)
    else:
        relu = b.reshape(b.maximum(b.reshape(b.add(rows, bias), shape=list(out_shape)), zero),
                         shape=[6, 4])
    g.outputs["next"] = b.matmul(relu, w)
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    state = {"w": rng.standard_normal((4, 4)).astype(np.float32),
             "b": rng.standard_normal(bias_shape).astype(np.float32)}
    pre = ((feeds["x"].reshape(6, 4) @ state["w"]) + state["b"]).reshape(out_shape)
    want = {"next": np.maximum(pre.reshape(6, 4), 0) @ state["w"]}
    if pre_is_output:
        want["pre"] = pre
    return g, feeds, state, want


@pytest.mark.parametrize("bias_shape,out_shape,pre_is_output,loop_shape", [
    ((4,), (2, 3, 4), False, (2, 3, 4)), ((4,), (2, 3, 4), True, (2, 3, 4)),
    ((6, 4), (2, 3, 4), False, (6, 4)), ((4,), (2, 12), False, (6, 4))])
def test_a_bias_add_and_its_relu_meet_across_a_reshape(bias_shape, out_shape, pre_is_output,
                                                       loop_shape):
    """A reshape between the bias add and the ReLU kept them two kernels. The add moves past
    the reshape to the ReLU that reads it (fold._reshaped_elementwise), unless its bias is
    over the rows or the reshape changes the last axis; then, or when the add's value is
    needed elsewhere, the ReLU, whose rows only a GEMM reads, moves back to the add's shape
    (fold._elementwise_of_reshape). One kernel, in `loop_shape`. Values against numpy, with
    fold on and off."""
    g, feeds, state, want = _dense_relu_graph(bias_shape, out_shape, pre_is_output)
    for switches in ((), ("fold",)):
        exe = compile_graph(g, state=state, disable=switches)
        out = exe.run(feeds)
        for name in want:
            np.testing.assert_allclose(out[name], want[name], rtol=1e-5, atol=1e-5)
        kernels = [tuple(s.group.loop_shape) for s in exe.steps if s.kind == "kernel"]
        assert kernels == [loop_shape] if not switches else len(kernels) == 2, kernels


@pytest.mark.parametrize("perm", [[1, 0, 2], [2, 0, 1, 3]])
def test_scatter_of_a_transposed_gradient_scatters_it_in_place(perm):
    """scatter_add(transpose(g, p), idx): the time-major embedding's gradient. Fold transposes
    the ids instead, so no transposed copy of g is made, and the sums stay numpy's add.at."""
    g = Graph()
    b = Builder(g)
    shape = (3, 4, 2, 5)[4 - len(perm):]
    idx_shape = tuple(shape[p] for p in perm[:-1])
    g.inputs["g"] = g.add_node("input", [], {"name": "g", "dtype": "float32",
                                             "shape": list(shape)},
                               TensorType(shape, "float32"), name="g")
    g.inputs["i"] = g.add_node("input", [], {"name": "i", "dtype": "int32",
                                             "shape": list(idx_shape)},
                               TensorType(idx_shape, "int32"), name="i")
    g.outputs["w"] = b.scatter_add(b.transpose(g.inputs["g"], perm=perm), g.inputs["i"], rows=6)
    rng = np.random.default_rng(7)
    feeds = {"g": rng.standard_normal(shape).astype(np.float32),
             "i": rng.integers(-6, 6, idx_shape).astype(np.int32)}   # repeats, negative ids
    want = np.zeros((6, 5))
    np.add.at(want, feeds["i"].ravel(),
              feeds["g"].astype(np.float64).transpose(perm).reshape(-1, 5))
    out = eliminate_dead(fold_constants(g))
    moved = [n for n in out if n.op == "transpose"]
    assert [out.node(n.inputs[0]).name for n in moved] == ["i"], out.dump()
    np.testing.assert_allclose(interpret(out, feeds, want=out.outputs)["w"], want, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(compile_graph(g).run(feeds)["w"], want, rtol=1e-5, atol=1e-6)


def test_check_ids_on_fed_labels_goes_and_on_computed_ones_stays():
    """check_ids guards class ids the model computes; fed ones are checked before the call
    (naming the input), so fold drops the graph's check of them and keeps the other."""
    g = Graph()
    b = Builder(g)
    g.inputs["y"] = g.add_node("input", [], {"name": "y", "dtype": "int32", "shape": [4]},
                               TensorType((4,), "int32"), name="y")
    g.outputs["fed"] = b.check_ids(b.reshape(g.inputs["y"], shape=[4, 1]), depth=5)
    g.outputs["computed"] = b.check_ids(b.add(g.inputs["y"], b.const(3, dtype="int32")), depth=5)
    out = eliminate_dead(fold_constants(g))
    checked = [out.node(n.inputs[0]).op for n in out if n.op == "check_ids"]
    assert checked == ["add"], out.dump()
    y = np.array([0, 1, 4, 1], np.int32)
    got = interpret(out, {"y": y}, want={"fed": out.outputs["fed"]})
    np.testing.assert_array_equal(got["fed"], y.reshape(4, 1))
    with pytest.raises(NNError, match="the id 7"):
        interpret(out, {"y": y}, want=out.outputs)["computed"]
