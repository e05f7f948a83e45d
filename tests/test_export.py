"""ONNX export (`nnlang export`, `nnlang.export_onnx`): every model in models/ and every model the
docs define exports, passes onnx.checker, and ONNX Runtime's outputs match nnlang's `forward`
within 1e-5: the models on a batch of the data set they train on, the doc examples on inputs
drawn in range; and the graph keeps a symbolic batch, named inputs/outputs and the weights."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import nnlang
from nnlang.export.onnx_model import build_model
from nnlang.frontend.parser import parse
from nnlang.ir.dims import Sym
from nnlang.ir.dims import bind as bind_dim
from nnlang.ops import registry
from nnlang.ops.registry import ShapeError, TensorType
from nnlang.passes.shapes import bind
from nnlang.runtime.indices import index_inputs
from nnlang.train import feeds
from tests import reference
from tests.test_docs import DATA_BLOCKS, GOOD
from tests.tiny_run import tiny_data, tiny_source

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def run_onnx(proto, inputs: dict) -> dict:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {i.name: inputs[i.name] for i in sess.get_inputs()})))


def assert_matches(net, inputs: dict):
    proto = nnlang.export_onnx(net)
    want = net.forward(inputs)
    got = run_onnx(proto, inputs)
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=TOL, err_msg=k)
    return proto


def real_batch(program, n: int) -> dict:
    """The first `n` test examples of the data set the model's train section names."""
    if not os.environ.get("NNLANG_DATA_DIR"):
        pytest.skip("NNLANG_DATA_DIR is not set: real data sets unavailable")
    ds = feeds.load_data(program.train.data)
    mapping = feeds.match_inputs(program.graph, ds.inputs, ds.targets, need_targets=False)
    split = ds.test if len(ds.test) else ds.train
    # NOTE: through `batches`, so whole reviews (ragged rows) come padded as the trainer pads
    arrays = next(feeds.batches({a: split.arrays[a] for a in mapping.values()}, n, np.arange(n)))
    return feeds.model_arrays(program.graph, arrays, mapping)


def drawn_batch(net, n: int, seed: int = 0, lengths: dict | None = None) -> dict:
    """Inputs of the model's declared types, its symbols other than batch at `lengths`: ids
    within the table they index, else normal."""
    rng = np.random.default_rng(seed)
    rows = {c.name: c.rows for c in index_inputs(net.graph("predict"))}
    env = {**(lengths or {}), "batch": n}
    out = {}
    for name, nid in net.user.inputs.items():
        if name.startswith("_"):
            continue
        node = net.user.node(nid)
        shape = tuple(int(bind_dim(d, env)) for d in node.shape)
        if node.dtype.startswith("int"):
            out[name] = rng.integers(0, rows.get(name, 10), shape).astype(node.dtype)
        elif node.dtype == "bool":
            out[name] = rng.random(shape) < 0.7
        else:
            out[name] = rng.normal(size=shape).astype(node.dtype)
    return out


MODELS = sorted(p.stem for p in (ROOT / "models").glob("*.nn"))


# NOTE: 12-14 s each; their ops are exported and checked by the other models and the op samples
_EXPORT_SLOW = ("gpt", "lstm_full", "conv1d")


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow)
                                  if m in _EXPORT_SLOW else m for m in MODELS])
def test_model_exports_and_matches_on_real_data(name):
    program = nnlang.load(ROOT / "models" / f"{name}.nn")
    net = nnlang.compile(program, batch=8)
    assert_matches(net, real_batch(program, 8))


@pytest.mark.parametrize("name,maxlen", [("lstm", 12),
                                         pytest.param("gru", 30, marks=pytest.mark.slow)])
def test_recurrence_is_one_scan_whatever_the_length(name, maxlen):
    """The recurrent layer is one ONNX Scan whose body is one step (the carried state, the
    sequence read per step), so the file's size does not grow with the sequence."""
    program = nnlang.load(ROOT / "models" / f"{name}.nn", {"maxlen": maxlen})
    net = nnlang.compile(program, batch=8)
    proto = assert_matches(net, real_batch(program, 8))
    scans = [n for n in proto.graph.node if n.op_type == "Scan"]
    assert len(scans) == 1 and len(proto.graph.node) < 40
    body = next(a.g for a in scans[0].attribute if a.name == "body")
    names = [i.name.split("_")[0] for i in body.input]
    assert names[0] == "carry" and names[1:] == [f"x{k}" for k in range(len(names) - 1)]


def _doc_models():
    """(id, source, model name) for every model a docs example defines."""
    sources = [(f"language{k}", src) for k, src in enumerate(GOOD)]
    sources += [(f"data-{name or k}", body) for k, (kind, key, name, body)
                in enumerate(DATA_BLOCKS) if kind == "nn"]
    for tag, src in sources:
        for item in parse(src, "example.nn").items:
            if type(item).__name__ == "ModelDef":
                yield pytest.param(src, item.name, id=f"{tag}-{item.name}")


@pytest.mark.parametrize("src,model", list(_doc_models()))
def test_doc_example_exports_and_matches(src, model):
    program = nnlang.load(src, model=model)
    # NOTE: every example declares what it computes, so each one exports (issue 17)
    assert program.graph.outputs, f"the docs' model {model} declares no output"
    net = nnlang.compile(program, backend="reference", batch=5)
    proto = nnlang.export_onnx(net)
    # NOTE: the file keeps every symbol (`symbol seq`) a named dim, so one file runs each
    # length; nnlang binds them from the feeds, a plan per length
    symbols = sorted(set(net.lengths))
    declared = {d.dim_param for i in proto.graph.input for d in i.type.tensor_type.shape.dim}
    assert set(symbols) <= declared
    for k, size in enumerate((3, 6) if symbols else (None,)):
        inputs = drawn_batch(net, 5, seed=k, lengths={s: size for s in symbols})
        want, got = net.forward(inputs), run_onnx(proto, inputs)
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=TOL, err_msg=name)


SEQ = Sym.of("seq")


@pytest.mark.parametrize("n,start,stop,step,want", [
    (10, 0, SEQ, 1, SEQ),      # the first seq rows of a table (learned positions)
    (SEQ, 0, None, 1, SEQ),    # the whole symbolic dim
    (SEQ, 0, SEQ, 1, SEQ),
    (10, 2, 7, 2, 3),          # ints as ever
    (SEQ, 0, 3, 1, 3),         # fixed entries of a symbolic axis (a first token)
    (SEQ, 1, 2, 1, 1),
])
def test_slice_by_a_symbol_shape(n, start, stop, step, want):
    """A slice whose result is a dim is legal before its symbols are bound, so a symbolic
    model decomposes (and exports) unbound; bound, it is the int slice."""
    t = registry.get("slice").shape(TensorType((n, 4)), axis=0, start=start, stop=stop,
                                   step=step)
    assert t.shape == (want, 4)
    back = registry.get("unslice").shape(t, axis=0, start=start, stop=stop, step=step, size=n)
    assert back.shape == (n, 4)


@pytest.mark.parametrize("n,start,stop,step", [
    (10, 1, SEQ, 1), (10, 0, SEQ, 2), (SEQ, 1, None, 1), (SEQ, 0, 3, 2), (SEQ, 3, 1, 1),
    (Sym.of("other"), 0, SEQ, 1)])
def test_slice_by_a_symbol_refused_where_the_size_is_no_dim(n, start, stop, step):
    with pytest.raises(ShapeError, match="symbolic length"):
        registry.get("slice").shape(TensorType((n, 4)), axis=0, start=start, stop=stop,
                                    step=step)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_positions_on_a_symbolic_length(kind):
    """One file, any length: the table's first `seq` rows are cut at run time, as nnlang cuts
    them for each bound length."""
    src = f"""model Pos {{
  symbol seq
  input x: float32[batch, seq, 6]
  output y = positional_encoding(x, kind = "{kind}", max_len = 9) |> dense(3)
}}"""
    net = nnlang.compile(nnlang.load(src), backend="reference", batch=2)
    proto = nnlang.export_onnx(net)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", 6]
    for seq in (1, 4, 9):
        x = np.random.default_rng(seq).normal(size=(2, seq, 6)).astype(np.float32)
        np.testing.assert_allclose(run_onnx(proto, {"x": x})["y"], net.forward({"x": x})["y"],
                                   rtol=0, atol=TOL)


@pytest.mark.parametrize("op, want", [("max", np.any), ("min", np.all)])
def test_max_and_min_over_bools(op, want):
    """Opset 17's ReduceMax/ReduceMin take no bool: the file failed to load in ONNX Runtime."""
    src = f"model M {{ input x: bool[batch, 3]  output y = {op}(x, axis = -1) }}"
    net = nnlang.compile(nnlang.load(src), backend="reference", batch=3)
    x = np.array([[True, False, True], [False] * 3, [True] * 3])
    got = assert_matches(net, {"x": x})
    np.testing.assert_array_equal(run_onnx(got, {"x": x})["y"], want(x, axis=-1))


def test_positions_of_a_symbolic_length():
    """positions(x, axis) counts the places the input has at run time: one file, any length."""
    src = """model P {
  symbol seq
  input tokens: int32[batch, seq]
  output pos = positions(tokens, axis = 1)
  output h = embedding(positions(tokens, axis = 1), 9, 3)
}"""
    net = nnlang.compile(nnlang.load(src), backend="reference", batch=2)
    proto = nnlang.export_onnx(net)
    for seq in (1, 4, 9):
        tokens = np.zeros((2, seq), np.int32)
        np.testing.assert_array_equal(run_onnx(proto, {"tokens": tokens})["pos"], np.arange(seq))
        assert_matches(net, {"tokens": tokens})


def test_triangles_on_a_symbolic_length():
    """tril/triu export as one Trilu each, whose mask the runtime sizes from the input: one
    file runs every length (a causal mask over scores [batch, seq, seq])."""
    src = """model Tri {
  symbol seq
  input x: float32[batch, seq, seq]
  output lo = tril(x)  output up = triu(x, k = 1)  output band = tril(triu(x, -1), 2)
}"""
    net = nnlang.compile(nnlang.load(src), backend="reference", batch=2)
    proto = nnlang.export_onnx(net)
    assert [n.op_type for n in proto.graph.node].count("Trilu") == 4
    for seq in (1, 3, 6):
        x = np.random.default_rng(seq).normal(size=(2, seq, seq)).astype(np.float32)
        got = run_onnx(proto, {"x": x})
        for name, want in (("lo", np.tril(x)), ("up", np.triu(x, 1)),
                           ("band", np.tril(np.triu(x, -1), 2))):
            np.testing.assert_array_equal(got[name], want, err_msg=f"{name} at seq {seq}")


def test_global_max_pool_over_a_symbolic_length():
    """global_max_pool over a `symbol seq` axis (max over time, a text CNN's pooling) checks and
    runs, but its export stopped in a TypeError: its decomposition sized a window from the
    unbound length. The file runs every length, each equal to numpy's max over the axis."""
    src = """model GMax {
  symbol seq
  input x: float32[batch, seq, 3]
  output y = global_max_pool(x, channels_last = true)
  output z = global_max_pool(permute(x, [0, 2, 1]))
}"""
    net = nnlang.compile(nnlang.load(src), backend="reference", batch=2)
    proto = nnlang.export_onnx(net)
    for seq in (1, 4, 7):
        x = np.random.default_rng(seq).normal(size=(2, seq, 3)).astype(np.float32)
        got = run_onnx(proto, {"x": x})
        for name in ("y", "z"):
            np.testing.assert_array_equal(got[name], x.max(axis=1), err_msg=f"{name} at {seq}")


def test_cross_entropy_over_a_symbolic_class_axis():
    """Logits over the places of a sequence (a pointer: which token answers), labels one place
    id per row: the export stopped in a bare ShapeError (a one-hot of depth `seq`). The file
    gives numpy's mean of -log softmax at the label, at every length."""
    src = """model Ptr {
  symbol seq
  input score: float32[batch, seq]
  input label: int32[batch]
  output ce = cross_entropy(score, label)
}"""
    net = nnlang.compile(nnlang.load(src), backend="reference", batch=3)
    proto = nnlang.export_onnx(net)
    for seq in (2, 5, 9):
        rng = np.random.default_rng(seq)
        score = rng.normal(size=(3, seq)).astype(np.float32)
        label = rng.integers(0, seq, 3).astype(np.int32)
        logp = score - np.log(np.exp(score).sum(axis=1, keepdims=True))
        got = run_onnx(proto, {"score": score, "label": label})["ce"]
        np.testing.assert_allclose(got, -logp[np.arange(3), label].mean(), rtol=1e-5)


def test_tutorial_loss_and_conv_options_export():
    """A causal conv1d, cross_entropy with label_smoothing and ignore_index (ids and
    probabilities), huber and kl_div (log_target too), each an output: ONNX Runtime gives the
    forward's values, with ignored rows among the labels."""
    src = """model Port {
  input x: float32[batch, 3, 8]
  input label: int32[batch]
  input soft: float32[batch, 4]
  input t: float32[batch, 4]
  h = conv1d(x, 4, 3, dilation = 2, padding = "causal") |> relu
  z = dense(flatten(h), 4)
  output h
  output ce = cross_entropy(z, label, label_smoothing = 0.1, ignore_index = 0)
  output ces = cross_entropy(z, soft, label_smoothing = 0.2)
  output hub = huber(z, t, delta = 0.5)
  output kl = kl_div(log_softmax(z), soft)
  output kll = kl_div(log_softmax(z), log_softmax(t), log_target = true)
}"""
    net = nnlang.compile(src, backend="reference", batch=5, seed=0)
    rng = np.random.default_rng(0)
    soft = rng.uniform(0.1, 1.0, (5, 4))
    inputs = {"x": rng.normal(size=(5, 3, 8)).astype(np.float32),
              "label": np.array([0, 1, 0, 3, 2], np.int32),
              "soft": (soft / soft.sum(1, keepdims=True)).astype(np.float32),
              "t": rng.normal(size=(5, 4)).astype(np.float32)}
    assert_matches(net, inputs)


def test_grouped_conv_export():
    """conv1d and conv2d with groups (a depthwise one among them, channels last too): ONNX
    Runtime gives the forward's values."""
    src = """model Grouped {
  input x: float32[batch, 4, 9]
  input img: float32[batch, 3, 6, 5]
  output h = conv1d(x, 6, 3, groups = 2, padding = "same")
  output d = conv2d(img, 6, 3, groups = 3, stride = [1, 2])
  output c = conv2d(permute(img, [0, 2, 3, 1]), 3, 2, groups = 3, channels_last = true)
}"""
    net = nnlang.compile(src, backend="reference", batch=2, seed=0)
    rng = np.random.default_rng(1)
    proto = assert_matches(net, {"x": rng.normal(size=(2, 4, 9)).astype(np.float32),
                                 "img": rng.normal(size=(2, 3, 6, 5)).astype(np.float32)})
    assert "MatMul" in [n.op_type for n in proto.graph.node]


def test_class_weights_export():
    """cross_entropy's weight (with ignore_index and label_smoothing, and over probabilities)
    and bce_with_logits' pos_weight (a number, and one per column): ONNX Runtime gives the
    forward's values, and the forward numpy's."""
    src = """model Weighted {
  input x: float32[batch, 6]
  input label: int32[batch]
  input soft: float32[batch, 3]
  input multi: float32[batch, 3]
  z = dense(x, 3)
  output ce = cross_entropy(z, label, weight = [0.5, 2.0, 1.0])
  output cei = cross_entropy(z, label, weight = [0.5, 2.0, 1.0], ignore_index = 0,
                             label_smoothing = 0.1)
  output ces = cross_entropy(z, soft, weight = [0.5, 2.0, 1.0])
  output bce = bce_with_logits(z, multi, pos_weight = 3.0)
  output bcec = bce_with_logits(z, multi, pos_weight = [0.5, 1.0, 4.0])
}"""
    net = nnlang.compile(src, backend="reference", batch=5, seed=0)
    rng = np.random.default_rng(0)
    soft = rng.uniform(0.1, 1.0, (5, 3))
    inputs = {"x": rng.normal(size=(5, 6)).astype(np.float32),
              "label": np.array([0, 1, 0, 2, 1], np.int32),
              "soft": (soft / soft.sum(1, keepdims=True)).astype(np.float32),
              "multi": rng.integers(0, 2, (5, 3)).astype(np.float32)}
    assert_matches(net, inputs)
    w = [0.5, 2.0, 1.0]
    hidden = inputs["x"].astype(np.float64) @ net.parameters()["z.weight"].astype(np.float64) \
        + net.parameters()["z.bias"]
    got = run_onnx(nnlang.export_onnx(net), inputs)
    np.testing.assert_allclose(got["cei"], reference.cross_entropy(
        hidden, inputs["label"], weight=w, ignore_index=0, label_smoothing=0.1), rtol=1e-5)
    np.testing.assert_allclose(got["bcec"], reference.bce_with_logits(
        hidden, inputs["multi"], pos_weight=[0.5, 1.0, 4.0]), rtol=1e-5)


def test_cross_entropy_options_over_a_symbolic_class_axis():
    """label_smoothing's e / classes and ignore_index's kept count over a class axis the
    export leaves symbolic: numpy's smoothed mean over the kept rows, at every length."""
    src = """model Ptr {
  symbol seq
  input score: float32[batch, seq]
  input label: int32[batch]
  output ce = cross_entropy(score, label, label_smoothing = 0.2, ignore_index = 1)
}"""
    proto = nnlang.export_onnx(nnlang.compile(nnlang.load(src), backend="reference", batch=4))
    for seq in (2, 5, 9):
        rng = np.random.default_rng(seq)
        score = rng.normal(size=(4, seq)).astype(np.float32)
        label = np.array([1, 0, seq - 1, 1], np.int32)
        logp = score - np.log(np.exp(score).sum(axis=1, keepdims=True))
        rows = -0.8 * logp[np.arange(4), label] - 0.2 * logp.mean(axis=1)
        got = run_onnx(proto, {"score": score, "label": label})["ce"]
        np.testing.assert_allclose(got, rows[label != 1].mean(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_masked_positions_do_not_move_with_front_padding(kind):
    """With the mask, a front-padded row's positions count from its first real token: the same
    review in a wider batch gets the same values, in nnlang and in the exported file."""
    src = f"""model Pos {{
  symbol seq
  input tokens: int32[batch, seq]
  x = embedding(tokens, 20, 6)
  output y = positional_encoding(x, kind = "{kind}", max_len = 12, mask = tokens != 0)
}}"""
    net = nnlang.compile(nnlang.load(src), backend="numba", batch=2, seed=0)
    proto = nnlang.export_onnx(net)
    review = np.array([4, 9, 2, 7], np.int32)
    rows = []
    for width in (4, 7, 12):
        tokens = np.zeros((2, width), np.int32)
        tokens[0, width - 4:] = review
        tokens[1, -1] = 5
        got = net.forward({"tokens": tokens})["y"]
        np.testing.assert_allclose(run_onnx(proto, {"tokens": tokens})["y"], got, rtol=0,
                                   atol=TOL)
        rows.append(got[0, width - 4:])
    np.testing.assert_allclose(rows[1], rows[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(rows[2], rows[0], rtol=0, atol=1e-6)
    unmasked = nnlang.compile(nnlang.load(src.replace(", mask = tokens != 0", "")),
                              backend="numba", batch=2, seed=0)
    np.testing.assert_allclose(unmasked.forward({"tokens": review[None].repeat(2, 0)})["y"][0],
                               rows[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_over_a_symbolic_length(reverse):
    """A scan whose sequence length is a symbol exports as one Scan that runs any length,
    against nnlang's interpreter on the graph bound to each length."""
    from nnlang.ir.graph import Builder, Graph
    from nnlang.runtime.interpret import interpret
    body = registry.get("scan").samples[0].attrs["body"]   # an Elman step, float64, batch 2
    g = Graph()
    for name, shape in (("h0", (2, 3)), ("xs", (Sym.of("steps"), 2, 3)), ("w", (3, 3))):
        g.inputs[name] = g.add_node("input", [], {"name": name, "dtype": "float64",
                                                  "shape": list(shape)},
                                    TensorType(shape, "float64"), name=name)
    g.outputs["out"] = Builder(g).scan(*g.inputs.values(), body=body, reverse=reverse)
    proto = build_model(g, {})
    rng = np.random.default_rng(0)
    for steps in (1, 5):
        feeds = {"h0": rng.normal(size=(2, 3)), "xs": rng.normal(size=(steps, 2, 3)),
                 "w": rng.normal(size=(3, 3))}
        bound = bind(g, steps=steps)
        want = interpret(bound, feeds, {})[bound.outputs["out"]]
        np.testing.assert_allclose(run_onnx(proto, feeds)["out"], want, rtol=0, atol=TOL)



def test_a_user_scan_attending_with_multi_head_attention_exports_as_one_scan():
    """A step of multi_head_attention over an encoder's outputs (its keys and values, split
    into heads, read whole every step: tests/ops/test_user_scan.py) exports as one Scan; ONNX
    Runtime gives nnlang's values."""
    from tests.ops.test_user_scan import MHA_STEP
    net = nnlang.compile(MHA_STEP.replace("float64", "float32"), backend="reference", seed=3)
    rng = np.random.default_rng(0)
    src = rng.integers(1, 10, (2, 5)).astype(np.int32)
    src[0, 3:] = 0
    proto = assert_matches(net, {"src": src, "y": rng.normal(size=(2, 3, 4)).astype(np.float32),
                                 "h0": rng.normal(size=(2, 4)).astype(np.float32)})
    assert [n.op_type for n in proto.graph.node].count("Scan") == 1


def test_a_nested_user_scan_on_the_models_weights_exports_at_any_length():
    """A sentence loop whose step runs a word loop on the model's weights
    (tests/ops/test_user_scan.py): one outer Scan holding the inner one; ONNX Runtime gives
    nnlang's values at two lengths of the symbolic sentence axis."""
    from tests.ops.test_user_scan import NESTED
    net = nnlang.compile(NESTED.replace("float64", "float32"), backend="reference", seed=1)
    proto = nnlang.export_onnx(net)
    assert [n.op_type for n in proto.graph.node].count("Scan") == 1
    rng = np.random.default_rng(0)
    for n in (4, 1):
        assert_matches(net, {"x": rng.normal(size=(2, n, 6)).astype(np.float32),
                             "h0": rng.normal(size=(2, 4)).astype(np.float32)})


def test_scans_three_deep_export_as_numpy_computes_them():
    """A sentence loop running a word loop running a character loop (tests/ops/test_user_scan.py)
    exports as one outer Scan; ONNX Runtime gives the independent numpy loops' values at other
    batch sizes and sentence counts than the net was compiled at."""
    from tests.ops.test_user_scan import THREE_DEEP, _three_deep_numpy
    net = nnlang.compile(THREE_DEEP, dtype="float64", batch=2, seed=1, backend="reference")
    proto = nnlang.export_onnx(net)
    assert [n.op_type for n in proto.graph.node].count("Scan") == 1
    rng = np.random.default_rng(0)
    for batch, n in ((2, 3), (5, 1)):
        feeds = {"x": rng.normal(size=(batch, n, 12)), "h0": rng.normal(size=(batch, 4))}
        got, (ys, ms) = run_onnx(proto, feeds), _three_deep_numpy(net.parameters(), feeds)
        np.testing.assert_allclose(got["ys"], ys, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(got["ms"], ms, rtol=1e-12, atol=1e-13)


def test_reversals_on_a_symbolic_length_and_batch():
    """flip, x[:, ::-1] (a Slice with steps -1 from the last entry) and a stepped subscript of
    a fixed axis, exported with a symbolic length and batch: one file, numpy's values at
    every size. A slice of a symbolic dim keeping the shape exported as Identity, which for
    the reversal would have dropped it."""
    src = """
model M {
  symbol seq
  input x: float32[batch, seq, 6]
  output r = x[:, ::-1]
  output f = flip(x, axis = [0, -1])
  output s = x[:, :, 5:0:-2] + x[:, :, ::2]
  output g = gru(x, 4, go_backwards = true, return_sequences = true)
}
"""
    net = nnlang.compile(src, backend="reference", seed=0)
    proto = nnlang.export_onnx(net)
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 1), (3, 5)):
        x = rng.normal(size=(batch, seq, 6)).astype(np.float32)
        got = run_onnx(proto, {"x": x})
        np.testing.assert_array_equal(got["r"], x[:, ::-1])
        np.testing.assert_array_equal(got["f"], x[::-1, :, ::-1])
        np.testing.assert_array_equal(got["s"], x[:, :, 5:0:-2] + x[:, :, ::2])
        np.testing.assert_allclose(got["g"], net.forward({"x": x})["g"], atol=TOL)


def test_graph_interface_and_symbolic_batch():
    net = nnlang.compile(ROOT / "models" / "cnn.nn", backend="reference", batch=2)
    proto = nnlang.export_onnx(net)
    g = proto.graph
    assert [i.name for i in g.input] == ["image"]   # the label only fed the loss
    assert [o.name for o in g.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 28, 28]
    assert max(o.version for o in proto.opset_import if o.domain == "") >= 17
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    for name, value in net.parameters().items():
        np.testing.assert_array_equal(weights[name], value)
    # one file runs at any batch size
    for n in (1, 7):
        x = np.random.default_rng(n).normal(size=(n, 1, 28, 28)).astype(np.float32)
        got = run_onnx(proto, {"image": x})["logits"]
        ref = nnlang.compile(ROOT / "models" / "cnn.nn", backend="reference", batch=n)
        ref.load_state_dict(net.parameters())
        np.testing.assert_allclose(got, ref.forward({"image": x})["logits"], atol=TOL)


def test_cli_export_of_a_trained_checkpoint(tmp_path, monkeypatch):
    """A real run's weights: the file holds them and ORT gives the restored net's outputs."""
    from nnlang.train import checkpoint
    from nnlang.train.inference import restore
    from tests.faults.conftest import cli
    x = tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(tiny_source())
    monkeypatch.chdir(tmp_path)
    cli("train", "tiny.nn", "--out", "run", code=0)
    out = cli("export", "tiny.nn", "-c", "run", "-o", "tiny.onnx", code=0)
    assert "wrote tiny.onnx" in out and re.search(r"inputs x float32\[batch, 4\]", out)
    # NOTE: a run directory gives its best epoch's weights, and says so, as eval and predict do
    assert re.search(r"using run/best\.npz \(best val_loss [0-9.]+, epoch \d\)", out), out
    proto = onnx.load(tmp_path / "tiny.onnx")
    net = restore("tiny.nn", "run", backend="numba")[0]
    got = run_onnx(proto, {"x": x[:9]})["probs"]
    np.testing.assert_allclose(got, net.forward({"x": x[:9]})["probs"], atol=TOL)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    trained = checkpoint.load(tmp_path / "run", prefer_best=True).state
    assert all(np.array_equal(weights[k], trained[k]) for k in net.parameters())


def test_a_float64_net_exports_in_float64():
    """A net compiled with dtype="float64" exported a float32 file: its weights rounded to
    float32 and ONNX Runtime's outputs float32 where nnlang's forward gives float64."""
    src = """model Wide {
  symbol seq
  input x: float32[batch, seq, 3]
  input ids: int32[batch, seq]
  h = lstm(x + embedding(ids, 7, 3), 4, return_sequences = true, mask = ids)
  output y = dense(h, 2) |> softmax
  output z = sum(x * 0.1, axis = -1)
}"""
    net = nnlang.compile(src, backend="reference", dtype="float64", seed=0)
    proto = nnlang.export_onnx(net)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name, value in net.parameters().items():
        assert weights[name].dtype == np.float64
        np.testing.assert_array_equal(weights[name], value)
    rng = np.random.default_rng(0)
    for seq in (1, 5):
        feeds = {"x": rng.normal(size=(2, seq, 3)),
                 "ids": rng.integers(0, 7, (2, seq)).astype(np.int32)}
        want, got = net.forward(feeds), run_onnx(proto, feeds)
        for k in want:
            assert got[k].dtype == want[k].dtype == np.float64, k
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-12, err_msg=k)


def test_a_dim_computed_from_symbols_is_named_by_its_formula():
    """A dim that is a product of symbols (`flatten` over a symbolic length: 2*seq) was an
    unnamed dim in the file, and `nnlang export` described it as 0 (`f float32[batch, 0]`)."""
    from nnlang.export import describe
    net = nnlang.compile("""model Flat {
  symbol seq
  input x: float32[batch, seq, 4]
  output f = flatten(dense(x, 2))
  output r = reshape(x, [-1, 4])
}""", backend="reference", seed=0)
    proto = nnlang.export_onnx(net)
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in proto.graph.output}
    assert dims == {"f": ["batch", "2*seq"], "r": ["batch*seq", 4]}
    assert "outputs f float32[batch, 2*seq], r float32[batch*seq, 4]" in describe(proto)
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    got = run_onnx(proto, {"x": x})
    np.testing.assert_allclose(got["f"], net.forward({"x": x})["f"], rtol=0, atol=TOL)
    assert got["f"].shape == (3, 10) and got["r"].shape == (15, 4)


def test_an_output_sized_by_an_input_it_does_not_read():
    """`broadcast_to(w, [batch, 4])` takes only its size from the input x: nnlang binds the
    batch from x's feed, but the export dropped x (no output reads its values) and then refused
    the op ("no input declares the dim 'batch'"), with a hint that the op does not export."""
    net = nnlang.compile("""model Sized {
  input x: float32[batch, 4]
  param w: float32[4] = glorot_uniform
  output z = broadcast_to(w, [batch, 4])
}""", backend="reference", seed=0)
    proto = nnlang.export_onnx(net)
    assert [i.name for i in proto.graph.input] == ["x"]
    for n in (1, 5):
        feeds = {"x": np.zeros((n, 4), np.float32)}
        got, want = run_onnx(proto, feeds), net.forward(feeds)
        np.testing.assert_array_equal(got["z"], np.broadcast_to(net.parameters()["w"], (n, 4)))
        np.testing.assert_array_equal(got["z"], want["z"])


def test_library_export_writes_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    proto = nnlang.export_onnx(ROOT / "models" / "mlp.nn", path=path)
    assert onnx.load(path) == proto
    onnx.checker.check_model(str(path), full_check=True)


def test_outputs_named_like_inputs_weights_or_made_up_values():
    """`output x` of an input and `output w` of a param are those values under their own names
    (ONNX refused the file: x assigned twice), and an output named like one of the emitter's
    made-up names (mul_2) does not take that name from it."""
    net = nnlang.compile("""
model Edge {
  input x: float32[batch, 4]
  param w: float32[4] = glorot_uniform
  h = dense(x, 4)
  output x
  output w
  output h
  output mul_2 = x * 2.0
  output add_4 = mul_2 + 1.0
}
""", backend="reference", seed=1)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    proto = assert_matches(net, {"x": x})
    got = run_onnx(proto, {"x": x})
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["w"], net.parameters()["w"])
    assert [o.name for o in proto.graph.output] == ["x", "w", "h", "mul_2", "add_4"]


# *** every op: its registry samples, batch symbolic, through ONNX Runtime ***

NO_ONNX = {"fold", "window_max_grad", "random_uniform", "random_normal",
           "allreduce_sum"}   # docs/export.md says why


def _op_cases():
    from tests.op_graphs import sample_cases
    for case, name, sample in sample_cases():
        op = registry.get(name)
        # NOTE: a composite exports as its primitives, each checked here; the composites'
        # own samples (~100 more cases) run with -m slow
        marks = (pytest.mark.slow,) if op.is_composite else ()
        if op.family != "source":
            yield pytest.param(name, sample, id=case, marks=marks)


def _sample_graph(name, sample):
    """(graph, feeds, params) of a sample in float32 with a symbolic batch; a sample whose dim
    0 cannot be a batch (reshape to [2, 6]) keeps its sizes, and one whose attributes fix its
    dtype (a scan's body) keeps that dtype."""
    from tests.op_graphs import op_graph
    tries = (("float32", Sym.of("batch")), ("float32", None), ("float64", None))
    for k, (dtype, batch) in enumerate(tries):
        try:
            return op_graph(name, sample, dtype, batch=batch)[:3]
        except ShapeError:
            if k == len(tries) - 1:
                raise


@pytest.mark.parametrize("name,sample", list(_op_cases()))
def test_every_op_sample_through_onnx_runtime(name, sample):
    """Each op's samples, exported with a symbolic batch (dim 0), against nnlang's reference
    interpreter on the same decomposed graph: every emitter, its attributes and dtypes."""
    from nnlang.passes.decompose import decompose
    from nnlang.runtime.interpret import interpret
    g, feeds, params = _sample_graph(name, sample)
    if registry.get(name).has("random") or name in NO_ONNX:
        with pytest.raises(nnlang.NNError, match=f"cannot export op '{name}'"):
            build_model(g, params)
        return
    params = {k: v.astype(g.node(g.params[k]).dtype) for k, v in params.items()}
    proto = build_model(g, params)
    n = next(len(v) for v in feeds.values())
    # NOTE: the graph the file holds, bound (a squeeze of every size-1 dim keeps a symbolic
    # batch of 1); a scan's body takes its types when built, which `bind` does not reach, so
    # there the batch is bound first, as the compiler does
    d = decompose(g, training=False)
    d = decompose(bind(g, batch=n), training=False) if any(x.op == "scan" for x in d) \
        else bind(d, batch=n)
    ref = np.asarray(interpret(d, feeds, params)[d.outputs["out"]])
    got = run_onnx(proto, feeds)["out"]
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=TOL)


def test_an_elementwise_op_without_an_onnx_name_cannot_be_exported(monkeypatch):
    """`_unary`/`_binary` without `onnx=` (as docs/contributing.md's first example): the export
    names the op, instead of an ONNX node with an empty op type that the checker rejects."""
    from nnlang.ops.elementwise import _unary
    from nnlang.ops.registry import Sample
    from tests.op_graphs import op_graph
    monkeypatch.setattr(registry, "OPS", dict(registry.OPS))   # NOTE: gone after the test
    _unary("scratch_softsign", "{0} / (1 + abs({0}))", lambda x: x / (1 + np.abs(x)), None)
    g, _, params, _ = op_graph("scratch_softsign", Sample(((3, 4),)), "float32")
    with pytest.raises(nnlang.NNError, match="cannot export op 'scratch_softsign'"):
        build_model(g, params)


def test_export_bench_smoke(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.delenv("NNLANG_DATA_DIR", raising=False)   # drawn inputs: no data needed
    import export_bench
    rows = export_bench.main(["--models", "mlp", "--rounds", "1"])
    assert rows[0]["max_abs_diff"] <= TOL and rows[0]["onnx_bytes"] > 4 * 784 * 512
    assert "| mlp |" in capsys.readouterr().out


def test_export_bench_and_its_table_cover_every_model(monkeypatch):
    """The benchmark's default is every model in models/, and docs/export.md has a row for
    each (it had 6 of 10)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import export_bench
    assert export_bench.MODELS == MODELS
    doc = (ROOT / "docs" / "export.md").read_text()
    assert [m for m in MODELS if f"\n| {m} | " not in doc] == []


@pytest.mark.parametrize("model", MODELS)
def test_export_table_size_and_nodes_are_the_export(model):
    """docs/export.md's size and node count of each model are what exporting it gives now (the
    lstm row said 26 nodes after its export had grown to 27)."""
    doc = (ROOT / "docs" / "export.md").read_text()
    size, nodes = re.search(rf"\n\| {model} \| ([\d.]+) MB \| (\d+) \|", doc).groups()
    proto = nnlang.export_onnx(str(ROOT / "models" / f"{model}.nn"))
    assert (f"{proto.ByteSize() / 1e6:.2f}", len(proto.graph.node)) == (size, int(nodes))


def test_overrides_for_a_model_that_is_built_already_are_refused_not_dropped():
    """export_onnx(net, overrides={"h": 5}) wrote the net's h = 3 model without a word (and a
    Program's): overrides there are an error unless they agree, as with a checkpoint."""
    src = "model M(h = 3) {\n  input x: float32[batch, 4]\n  output y = dense(x, h)\n}\n"
    net = nnlang.compile(src, seed=0)
    for model, holder in ((net, "this compiled net"), (nnlang.load(src), "this Program")):
        with pytest.raises(nnlang.NNError, match=f"overrides cannot change .*: {holder} has h = 3"):
            nnlang.export_onnx(model, overrides={"h": 5})
        with pytest.raises(nnlang.NNError, match=f"{holder} holds model 'M', not 'N'"):
            nnlang.export_onnx(model, model_name="N")
        proto = nnlang.export_onnx(model, overrides={"h": np.int64(3)}, model_name="M")
        dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
        assert dims[1:] == [3]
    assert [i.dims for i in nnlang.export_onnx(src, overrides={"h": 5}).graph.initializer
            if len(i.dims) == 2] == [[4, 5]]
