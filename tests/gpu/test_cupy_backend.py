"""The CuPy backend on a real GPU: golden values of every model (forward, loss, gradients,
parameters after 3 Adam steps), float64 training steps against the reference, a short
training run, and the library kernels. Skipped without CuPy or a device (see conftest).
"""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from tests.golden_values import BATCH, GOLDEN, OVERRIDES, ROOT, compute, feeds_for, models

pytestmark = pytest.mark.gpu


def _host(values: dict) -> dict:
    import cupy
    return {k: cupy.asnumpy(v) for k, v in values.items()}


@pytest.fixture
def cupy_route(monkeypatch):
    """Routes `compile_graph(backend="cupy")` to the CuPy executable whether or not
    `runtime/executable.py` dispatches on the backend yet (see test_compile_graph_dispatches)."""
    import nnlang.runtime.executable as ex
    from nnlang.backends import cupy_backend as cb
    plain = ex.compile_graph

    def routed(g, backend="numba", disable=(), state=None):
        if backend == "cupy":
            return cb.compile_graph(g, disable, state)
        return plain(g, backend, disable, state)
    monkeypatch.setattr(ex, "compile_graph", routed)


@pytest.mark.parametrize("model", models())
def test_model_matches_golden_values(model, cupy_route):
    golden = dict(np.load(GOLDEN / f"{model}.npz"))
    got = _host(compute(model, "cupy"))
    assert sorted(got) == sorted(golden)
    # NOTE: the numba backend's tolerances; parameters after Adam steps are compared in float64
    # below (Adam turns float32 noise in an exactly-zero gradient into +-lr)
    for key in sorted(k for k in golden if not k.startswith("param:")):
        np.testing.assert_allclose(got[key], golden[key], rtol=2e-4, atol=2e-5,
                                   err_msg=f"{model} {key} (cupy)")


@pytest.mark.parametrize("model", models())
def test_training_steps_match_reference_in_float64(model, cupy_route):
    ref = compute(model, "reference", "float64")
    got = _host(compute(model, "cupy", "float64"))
    for key in sorted(ref):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-7, atol=1e-9,
                                   err_msg=f"{model} {key}")


def test_training_lowers_the_loss_and_keeps_state_on_the_device(cupy_route):
    import cupy
    program = nnlang.load(ROOT / "models" / "mlp.nn", OVERRIDES["mlp"])
    net = nnlang.compile(program, backend="cupy", batch=16, seed=0)
    rng = np.random.default_rng(0)
    feeds = feeds_for(program)
    feeds = {k: np.repeat(v, 8, axis=0) for k, v in feeds.items()}
    feeds = {k: (v + 0.1 * rng.normal(size=v.shape)).astype(v.dtype)
             if v.dtype.kind == "f" else v for k, v in feeds.items()}
    losses = [net.train_step(feeds) for _ in range(40)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(isinstance(v, cupy.ndarray) for v in net.state.values())
    exe = net._exe("train", 16)[0]
    assert all("__global__" in s for s in exe.kernel_sources())


def test_random_uniform_is_bit_exact_on_the_device():
    import cupy
    from nnlang.backends.cupy_backend import get_backend
    from nnlang.ops.random import _uniform_impl
    be = get_backend()
    for key, salt in ((0, 0), (987654321, 5), (-3, 2)):
        out = cupy.zeros((7, 1001), cupy.float32)
        fn, args = be._random_uniform({"salt": salt}, [cupy.asarray(np.int64(key))], out)
        fn(*args)
        np.testing.assert_array_equal(cupy.asnumpy(out),
                                      _uniform_impl(np.int64(key), shape=(7, 1001), salt=salt))


def test_library_ops_match_numpy():
    import cupy
    from nnlang.backends.cupy_backend import get_backend
    be = get_backend()
    rng = np.random.default_rng(0)
    table = rng.normal(size=(9, 3)).astype(np.float32)
    idx = np.array([[1, -1], [8, 12]], np.int32)
    out = cupy.empty((2, 2, 3), cupy.float32)
    fn, args = be._gather({}, [cupy.asarray(table), cupy.asarray(idx)], out)
    fn(*args)
    np.testing.assert_array_equal(cupy.asnumpy(out), np.take(table, idx, axis=0, mode="wrap"))
    src = rng.normal(size=(4, 3)).astype(np.float32)
    sidx = np.array([2, 2, 0, -1], np.int32)
    out = cupy.full((5, 3), 9, cupy.float32)
    fn, args = be._scatter_add({}, [cupy.asarray(src), cupy.asarray(sidx)], out)
    fn(*args)
    want = np.zeros((5, 3), np.float32)
    np.add.at(want, sidx, src)
    np.testing.assert_allclose(cupy.asnumpy(out), want, rtol=1e-6)


def test_compile_graph_dispatches_to_cupy():
    """Needs the backend hook in runtime/executable.py and backends/base.py (see the report)."""
    from nnlang.backends.cupy_backend import CupyExecutable
    from nnlang.passes.pipeline import forward_graph
    from nnlang.runtime.executable import compile_graph
    program = nnlang.load(ROOT / "models" / "mlp.nn", OVERRIDES["mlp"])
    exe = compile_graph(forward_graph(program.graph, BATCH), backend="cupy")
    assert isinstance(exe, CupyExecutable)
