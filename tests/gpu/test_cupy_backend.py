"""The CuPy backend end to end: golden values of every model (forward, loss, gradients,
parameters after 3 Adam steps), float64 training steps against the reference, a short training
run, checkpoints, the CUDA-graph switch and the library kernels.

Every test runs twice: on `host`, CuPy is the CPU stand-in of `fake_cupy.py` (the backend's own
code, the generated kernels as host C++, every launch's arguments checked against the kernel
signature), so it runs in CI; on `gpu`, it is the real CuPy on an NVIDIA device, skipped
without one (see conftest).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import nnlang
from tests.golden_values import BATCH, GOLDEN, OVERRIDES, ROOT, compute, feeds_for, models
from tests.gpu import fake_cupy
from tests.train.test_train_cli import make_tiny
from tests.train.test_train_cli import nnlang as cli


@pytest.fixture(params=["host", pytest.param("gpu", marks=pytest.mark.gpu)])
def cupy(request, monkeypatch, tmp_path):
    """The cupy module the backend will import: the host stand-in or the real one."""
    if request.param == "host":
        return fake_cupy.install(monkeypatch, request.getfixturevalue("host_cxx"), tmp_path)
    import cupy
    return cupy


# NOTE: on the stand-in every launch runs as host C++ (5-11 s a model); these models use no op
# or kernel kind the others lack (cross-attention is attention, a masked LSTM is the LSTM's
# scan with more elementwise ops, gpt's causal attention is in the host harness, the GRU's
# scan is the LSTM's kind, conv1d's unfold and pooling are the CNN's in one dimension fewer,
# the transformer's attention runs in its CUDA-graph case below), so the default suite leaves
# them to `-m slow`, as it does with the GPU itself
_STAND_IN_SLOW = ("gpt", "lstm_full", "seq2seq", "seq2seq_lstm", "gru", "conv1d",
                  "transformer")
STAND_IN_MODELS = [pytest.param(m, marks=pytest.mark.slow) if m in _STAND_IN_SLOW else m
                   for m in models()]


def _host(cupy, values: dict) -> dict:
    return {k: cupy.asnumpy(v) for k, v in values.items()}


@pytest.mark.parametrize("model", STAND_IN_MODELS)
def test_model_matches_golden_values(model, cupy):
    golden = dict(np.load(GOLDEN / f"{model}.npz"))
    got = _host(cupy, compute(model, "cupy"))
    assert sorted(got) == sorted(golden)
    # NOTE: the numba backend's tolerances; parameters after Adam steps are compared in float64
    # below (Adam turns float32 noise in an exactly-zero gradient into +-lr)
    for key in sorted(k for k in golden if not k.startswith("param:")):
        np.testing.assert_allclose(got[key], golden[key], rtol=2e-4, atol=2e-5,
                                   err_msg=f"{model} {key} (cupy)")


@pytest.mark.parametrize("model", STAND_IN_MODELS)
def test_training_steps_match_reference_in_float64(model, cupy):
    ref = compute(model, "reference", "float64")
    got = _host(cupy, compute(model, "cupy", "float64"))
    for key in sorted(ref):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-7, atol=1e-9,
                                   err_msg=f"{model} {key}")


def _noisy_batch(program, copies: int = 8):
    rng = np.random.default_rng(0)
    feeds = {k: np.repeat(v, copies, axis=0) for k, v in feeds_for(program).items()}
    return {k: (v + 0.1 * rng.normal(size=v.shape)).astype(v.dtype)
            if v.dtype.kind == "f" else v for k, v in feeds.items()}


def test_training_lowers_the_loss_and_keeps_state_on_the_device(cupy):
    program = nnlang.load(ROOT / "models" / "mlp.nn", OVERRIDES["mlp"])
    net = nnlang.compile(program, backend="cupy", batch=16, seed=0)
    feeds = _noisy_batch(program)
    losses = [net.train_step(feeds) for _ in range(40)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(isinstance(v, cupy.ndarray) for v in net.state.values())
    exe = net._exe("train", 16)[0]
    assert all("__global__" in s for s in exe.kernel_sources())


def test_unfetched_steps_are_read_in_one_transfer(cupy):
    """train_step(fetch=False) leaves the loss and metrics on the device; fetch() reads every
    such step's at once, the same numbers as steps that read their own."""
    program = nnlang.load(ROOT / "models" / "conv1d.nn", OVERRIDES["conv1d"])
    feeds = _noisy_batch(program, 2)
    ref = nnlang.compile(program, backend="cupy", batch=2 * BATCH, seed=0)
    want = [(ref.train_step(feeds), ref.last_metrics) for _ in range(5)]
    net = nnlang.compile(program, backend="cupy", batch=2 * BATCH, seed=0)
    net.train_step(feeds)                               # compiles, and reads its loss
    net.fetch()
    reads, uploads = fake_cupy.COUNTS["to_host"], fake_cupy.COUNTS["to_device"]
    assert all(net.train_step(feeds, fetch=False) is None for _ in range(4))
    if cupy.ndarray is fake_cupy.ndarray:
        assert fake_cupy.COUNTS["to_host"] == reads  # NOTE: no step waited for the device
        # NOTE: and a step copies up only what is fed: the batch and the learning rate
        fed = [name for name, _ in net._exe("train", 2 * BATCH)[0]._feeds if name != "_rng"]
        assert sorted(fed) == sorted([*feeds, "_lr"])
        assert fake_cupy.COUNTS["to_device"] == uploads + 4 * len(fed)
    got = net.fetch()
    if cupy.ndarray is fake_cupy.ndarray:
        assert fake_cupy.COUNTS["to_host"] == reads + 1
    assert net.fetch() == []
    assert len(got) == 4 and got[-1][1] == net.last_metrics and want[0][1]
    for (loss, metrics), (want_loss, want_metrics) in zip(got, want[1:]):
        # NOTE: within an ulp: the embedding's gradient adds by atomics, in the threads' order
        assert loss == pytest.approx(want_loss, rel=1e-6) and metrics == want_metrics


def test_state_round_trips_through_the_host(cupy):
    """parameters(), state_dict() and load_state_dict() move state between host and device:
    a second net loaded with the first one's state continues exactly as the first does."""
    program = nnlang.load(ROOT / "models" / "lstm.nn", OVERRIDES["lstm"])
    feeds = feeds_for(program)
    a = nnlang.compile(program, backend="cupy", batch=BATCH, seed=0)
    a.train_step(feeds)
    saved = a.state_dict()
    assert all(type(v) is np.ndarray for v in saved.values())
    b = nnlang.compile(program, backend="cupy", batch=BATCH, seed=1)
    b.train_step(feeds)           # NOTE: builds b's slots, then overwrites everything
    b.load_state_dict(saved)
    b.step = a.step
    # NOTE: within an ulp, not bit for bit: the embedding's gradient is a scatter-add of
    # atomicAdds, whose order the threads decide (on a GPU as in the host harness)
    assert a.train_step(feeds) == pytest.approx(b.train_step(feeds), rel=1e-6)
    for k, v in a.parameters().items():
        np.testing.assert_allclose(b.parameters()[k], v, rtol=1e-6, atol=1e-8, err_msg=k)


DROPOUT = """
model Drop(hidden = 16) {
  input x: float32[batch, 8]
  input label: int32[batch]
  h = dense(x, hidden) |> relu |> dropout(0.5)
  logits = dense(h, 3)
  loss cross_entropy(logits, label)
  metric acc = accuracy(logits, label)
}
"""


@pytest.mark.parametrize("model", ["dropout", "cnn", "lstm", "transformer"])
def test_cuda_graph_switch_gives_the_same_steps(cupy, monkeypatch, model):
    """NNLANG_CUDA_GRAPH=1 replays a captured step (or, where capture fails, launches as
    before with a warning): the losses are those of plain launches. Dropout's random key
    changes every step (a replay that froze it would show); the CNN's max pooling, the
    accuracy's argmax and the LSTM's concat of every step's state must allocate nothing
    inside the step, which the stand-in's capture refuses."""
    if model == "dropout":
        program = nnlang.load(DROPOUT)
        rng = np.random.default_rng(0)
        feeds = {"x": rng.normal(size=(BATCH, 8)).astype(np.float32),
                 "label": np.array([0, 2], np.int32)}
    else:
        program = nnlang.load(ROOT / "models" / f"{model}.nn", OVERRIDES[model])
        feeds = feeds_for(program)
    plain = nnlang.compile(program, backend="cupy", batch=BATCH, seed=0)
    want = [plain.train_step(feeds) for _ in range(4)]
    monkeypatch.setenv("NNLANG_CUDA_GRAPH", "1")
    graphed = nnlang.compile(program, backend="cupy", batch=BATCH, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [graphed.train_step(feeds) for _ in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(set(want)) == 4     # NOTE: the steps differ, so a stale replay would show
    failed = [str(w.message) for w in caught if "capture failed" in str(w.message)]
    exe = graphed._exe("train", BATCH)[0]
    if cupy.ndarray is fake_cupy.ndarray:  # NOTE: on a GPU the fallback is allowed, and shown
        assert not failed and exe._step._graph is not None
    print("CUDA graph:", "replayed" if exe._step._graph is not None else f"fell back: {failed}")


STRIDED_OPERANDS = """
model R {
  input x: float32[batch, 6]
  input y: float32[batch, 3]
  param w: float32[6, 3] = normal(std = 0.5)
  param v: float32[3, 3] = normal(std = 0.5)
  h = flip(x, axis = 0) @ w + x[:, ::2] @ v
  loss mean((h - y) * (h - y))
}
train R { optimizer = sgd(lr = 0.1) }
"""


def test_a_captured_step_copies_strided_matmul_operands_into_its_own_scratch(cupy, monkeypatch):
    """A matmul of a reversed or stepped view (flip over the batch, x[:, ::2]; also a column
    slice, a transposed batch): cupy.matmul copies such an operand into a temporary it
    allocates on every call, which a captured step must not do (the pool hands the memory on
    while the graph keeps writing it; the stand-in refuses it as it refuses a matmul into a
    strided out). The LSTM's and the transformer's steps fell back to plain launches for it.
    The captured steps' losses against numpy's SGD on the same weights."""
    monkeypatch.setenv("NNLANG_CUDA_GRAPH", "1")
    net = nnlang.compile(STRIDED_OPERANDS, backend="cupy", batch=4, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    y = rng.normal(size=(4, 3)).astype(np.float32)
    p = {k: v.astype(np.float64) for k, v in net.parameters().items()}
    want = []
    for _ in range(4):
        a, b = x[::-1].astype(np.float64), x[:, ::2].astype(np.float64)
        d = a @ p["w"] + b @ p["v"] - y
        want.append(np.mean(d * d))
        g = 2 * d / d.size
        p = {"w": p["w"] - 0.1 * a.T @ g, "v": p["v"] - 0.1 * b.T @ g}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [net.train_step({"x": x, "y": y}) for _ in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert len(set(want)) == 4
    failed = [str(w.message) for w in caught if "capture failed" in str(w.message)]
    if cupy.ndarray is fake_cupy.ndarray:
        assert not failed and net._exe("train", 4)[0]._step._graph is not None, failed


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    return make_tiny(tmp_path, monkeypatch)


def test_train_resume_eval_predict_commands(cupy, tiny):
    """`nnlang train/eval/predict --backend cupy` on a tiny data set: a run, its checkpoint
    (device state saved through the host), a resumed second epoch, and the checkpoint restored
    onto the device for eval and predict."""
    r = cli("train", "tiny.nn", "--backend", "cupy", "--out", "run", "--epochs", "1")
    assert r.exit_code == 0, r.output
    r = cli("train", "tiny.nn", "--backend", "cupy", "--out", "run", "--resume", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "epoch 2/2" in r.output
    r = cli("eval", "tiny.nn", "--checkpoint", "run", "--backend", "cupy")
    assert r.exit_code == 0, r.output
    summary = json.loads((tiny / "run/summary.json").read_text())
    assert f"{summary['test']['loss']:.4f}" in r.output
    r = cli("predict", "tiny.nn", "one.npy", "-c", "run/checkpoint.npz", "--backend", "cupy")
    assert r.exit_code == 0, r.output
    assert "one.npy" in r.output and "probs" in r.output


def _cuda_lowering(op: str):
    from nnlang.ops import registry
    return registry.get(op).lower["cuda"]


def test_random_uniform_is_bit_exact_on_the_device(cupy):
    from nnlang.backends.cupy_backend import get_backend
    from nnlang.ops.random import _uniform_impl
    be = get_backend()
    for key, salt in ((0, 0), (987654321, 5), (-3, 2)):
        out = cupy.zeros((7, 1001), cupy.float32)
        fn, args = _cuda_lowering("random_uniform")(be, {"salt": salt},
                                                    [cupy.asarray(np.int64(key))], out)
        fn(*args)
        np.testing.assert_array_equal(cupy.asnumpy(out),
                                      _uniform_impl(np.int64(key), shape=(7, 1001), salt=salt))


def test_random_normal_lowering_draws_the_impls_numbers(cupy):
    """The CUDA lowering of random_normal (the key read on the device, the salt and a rank's
    offset as arguments) against `impl`."""
    from nnlang.backends.cupy_backend import get_backend
    from nnlang.ops.random import _normal_impl
    be = get_backend()
    for key, salt, offset in ((0, 0, 0), (987654321, 5, 7007), (-3, 2, 3)):
        out = cupy.zeros((7, 1001), cupy.float32)
        fn, args = _cuda_lowering("random_normal")(be, {"salt": salt, "offset": offset},
                                                   [cupy.asarray(np.int64(key))], out)
        fn(*args)
        want = _normal_impl(np.int64(key), shape=(7 * 1001 + offset,), salt=salt)[offset:]
        np.testing.assert_allclose(cupy.asnumpy(out).ravel(), want, rtol=1e-6, atol=1e-6)


def test_library_ops_match_numpy(cupy):
    from nnlang.backends.cupy_backend import get_backend
    be = get_backend()
    rng = np.random.default_rng(0)
    table = rng.normal(size=(9, 3)).astype(np.float32)
    # NOTE: negative ids count from the end; one past the table (12 here, once) is no longer
    # wrapped into it but flagged (test_ids_computed_past_a_table_...)
    idx = np.array([[1, -1], [8, -9]], np.int32)
    out = cupy.empty((2, 2, 3), cupy.float32)
    fn, args = _cuda_lowering("gather")(be, {}, [cupy.asarray(table), cupy.asarray(idx)], out)
    fn(*args)
    np.testing.assert_array_equal(cupy.asnumpy(out), table[idx])
    src = rng.normal(size=(4, 3)).astype(np.float32)
    sidx = np.array([2, 2, 0, -1], np.int32)
    out = cupy.full((5, 3), 9, cupy.float32)
    fn, args = _cuda_lowering("scatter_add")(be, {}, [cupy.asarray(src), cupy.asarray(sidx)],
                                             out)
    fn(*args)
    want = np.zeros((5, 3), np.float32)
    np.add.at(want, sidx, src)
    np.testing.assert_allclose(cupy.asnumpy(out), want, rtol=1e-6)


@pytest.mark.slow   # NOTE: ~10-17 s on the stand-in, each library kernel a host C++ build
def test_every_library_primitive_sample_matches_the_interpreter(cupy):
    """Every sample of every op lowered by its registry entry (matmul, gather, cumsum, ...)
    in float64, compiled for CuPy against the interpreter (the ops' `impl`): the CUDA
    lowering of a new primitive runs here by existing (test_nvcc only compiles it; a wrong
    index in its source passed every CPU test). Forward only: the gradients of library
    primitives are library primitives with samples of their own (scatter_add, fold, ...)."""
    from nnlang.ops import registry
    from nnlang.runtime.executable import compile_graph
    from nnlang.runtime.interpret import interpret
    from tests.op_graphs import op_graph, sample_cases
    cases = [(c, n, s) for c, n, s in sample_cases() if registry.get(n).lower]
    assert any(n == "cumsum" for _, n, _ in cases)
    for case, name, sample in cases:
        g, feeds, params, _ = op_graph(name, sample, "float64")
        exe = compile_graph(g, backend="cupy", state={k: v.copy() for k, v in params.items()})
        got = exe.run(feeds)
        want = interpret(g, feeds, params, want=g.outputs)
        for key in g.outputs:
            np.testing.assert_allclose(cupy.asnumpy(got[key]), want[key], rtol=1e-10,
                                       atol=1e-12, err_msg=f"{case} {key}")


def test_maximum_and_minimum_keep_a_nan(cupy):
    """As np.maximum and torch: nan on either side gives nan (fmax/fmin, their CUDA spelling
    before, drop a nan on either side); relu keeps it too."""
    src = """model M { input x: float32[batch, 3]
      output a = maximum(0.5, x)  output b = minimum(x, 1.0)  output r = relu(x) }"""
    x = np.array([[np.nan, -1.0, 2.0]], np.float32)
    out = _host(cupy, nnlang.compile(src, backend="cupy", batch=1).forward({"x": x}))
    np.testing.assert_array_equal(out["a"], [[np.nan, 0.5, 2.0]])
    np.testing.assert_array_equal(out["b"], [[np.nan, -1.0, 1.0]])
    np.testing.assert_array_equal(out["r"], [[np.nan, 0.0, 2.0]])


def test_reversed_views_forward_and_backward(cupy):
    """flip and negative-step subscripts are views with negative strides: the fused kernels
    read them through their strides (kernel arguments, the pointer at the view's first
    element), and the gradient writes through the same flip; against numpy, with a symbolic
    length."""
    src = """model M {
  symbol seq
  input x: float64[batch, seq, 4]
  output r = x[:, ::-1] * 2 + x
  output s = exp(x[::-1, :, 3:0:-2])
  output f = flip(x, axis = [0, 2])
  loss sum(r * r) / 2 + sum(s) + sum(f * x)
}"""
    net = nnlang.compile(src, backend="cupy", dtype="float64")
    x = np.random.default_rng(0).normal(size=(3, 5, 4))
    out = _host(cupy, net.forward({"x": x}))
    r = 2 * x[:, ::-1] + x
    np.testing.assert_allclose(out["r"], r, rtol=1e-12)
    np.testing.assert_allclose(out["s"], np.exp(x[::-1, :, 3:0:-2]), rtol=1e-12)
    np.testing.assert_array_equal(out["f"], x[::-1, :, ::-1])
    grad = r + 2 * r[:, ::-1] + 2 * x[::-1, :, ::-1]
    grad[:, :, 3:0:-2] += np.exp(x[::-1, :, 3:0:-2])[::-1]
    got = _host(cupy, net.gradients({"x": x}, inputs=["x"]))["x"]
    np.testing.assert_allclose(got, grad, rtol=1e-12)


def test_ids_computed_past_a_table_are_the_located_error_numba_gives(cupy):
    """Issue 14: every backend gives the same answer. Ids the model computes past its table
    (t + 3 into 3 rows) are a located error on numba and the reference backend; the CUDA
    gather wrapped them into the table (rows 0, 1, 2 returned silently), and its gradient's
    scatter_add wrote past the end of its output. A call with ids in range then runs."""
    from nnlang.errors import NNError
    src = ("model M {\n  input x: float32[batch, 4]\n  input t: int32[batch]\n"
           "  output e = gather(x, t + 3)\n}\n")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for backend in ("numba", "cupy"):
        net = nnlang.compile(src, backend=backend, batch=3)
        # NOTE: the CUDA kernel flags the fault without the id
        with pytest.raises(NNError, match=r"<string>:4:14: error: gather: (index \d+|an index) "
                                          r"is out of bounds for axis 0 with size 3"):
            net.forward({"x": x, "t": np.array([0, 1, 2], np.int32)})
        got = _host(cupy, net.forward({"x": x, "t": np.array([-3, -1, -2], np.int32)}))
        np.testing.assert_array_equal(got["e"], x[[0, 2, 1]])


def test_labels_computed_past_the_classes_are_the_located_error_numba_gives(cupy):
    """cross_entropy's one_hot of a label the model computes past the classes (t + 3 into 4
    classes) was a row of zeros on every backend, a sample silently scored as no class; the
    CUDA check flags it and the read says it at the loss, as numba does. -100 (ignore_index)
    and labels in range run, with the loss numba gives."""
    from nnlang.errors import NNError
    src = ("model M {\n  input x: float32[batch, 4]\n  input t: int32[batch]\n"
           "  output y = x\n  loss cross_entropy(x, t + 3, ignore_index = -100)\n}\n")
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    want = nnlang.compile(src, backend="numba", batch=3).evaluate(
        {"x": x, "t": np.array([-103, 0, -2], np.int32)})
    net = nnlang.compile(src, backend="cupy", batch=3)
    for t in ([0, 1, 2], [-4, 0, 0]):
        with pytest.raises(NNError, match=r"<string>:5:8: error: cross_entropy: (the|an) id "
                                          r".*is outside the 4 classes it may take \(0 to 3, "
                                          r"or -100 \(ignore_index\)\)"):
            net.evaluate({"x": x, "t": np.array(t, np.int32)})
    got = net.evaluate({"x": x, "t": np.array([-103, 0, -2], np.int32)})
    np.testing.assert_allclose(float(got["cross_entropy"]), want["cross_entropy"], rtol=1e-6)


def test_compile_graph_dispatches_to_cupy(cupy):
    from nnlang.backends.cupy_backend import CupyBackend, DeviceState
    from nnlang.passes.pipeline import forward_graph
    from nnlang.runtime.executable import compile_graph
    program = nnlang.load(ROOT / "models" / "mlp.nn", OVERRIDES["mlp"])
    exe = compile_graph(forward_graph(program.graph, BATCH), backend="cupy")
    assert isinstance(exe.backend, CupyBackend) and isinstance(exe.state, DeviceState)
    assert all(isinstance(a, cupy.ndarray) for a in exe.state.values())


def test_gpu_benchmark_script_runs(cupy, tmp_path, monkeypatch):
    """benchmarks/gpu_step_time.py end to end (torch on the CPU on `host`), so the one script
    that runs on a borrowed GPU does not fail there for a reason a CPU could have shown."""
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_step_time
    out = tmp_path / "gpu.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu_step_time.main(["--models", "mlp,conv1d", "--rounds", "1", "--warmup", "0",
                        "--batch", "4", "--pipeline", "2", "--torch-device", device,
                        "--out", str(out)])
    for r in json.loads(out.read_text())["models"]:
        assert "nnlang_error" not in r, r
        assert r["nnlang_ms"] > 0 and r["torch_ms"] > 0 and r["kernels"]["kernels"] > 0, r
        assert r["nnlang_pipelined_ms"] > 0 and r["pipelined_steps"] == 2, r
