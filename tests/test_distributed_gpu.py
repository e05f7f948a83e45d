"""Data parallelism on GPUs (issue 18): the CuPy backend's step reduces its gradient buffer with
ONE NCCL allReduce on the step's stream, so a captured CUDA graph keeps it. Run through the
host stand-in for CuPy (tests/gpu/fake_cupy.py) with an NCCL stand-in that records each call
and, as N ranks holding the same shard would, writes N times the buffer."""
from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest

import nnlang
from nnlang.backends import collective
from tests.gpu import fake_cupy
from tests.gpu.conftest import host_cxx  # noqa: F401  (the fixture the stand-in compiles with)
from tests.tiny_run import tiny_source

RANKS = 2


class FakeNccl:
    """cupy.cuda.nccl's names nnlang uses; allReduce records and sums N equal buffers."""
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0

    def __init__(self):
        self.calls, self.done, self.made = [], 0, []

    def get_unique_id(self):
        return (1, 2, 3)

    def NcclCommunicator(self, size, uid, rank):  # noqa: N802  (CuPy's name)
        self.made.append((size, uid, rank))
        return types.SimpleNamespace(allReduce=self.all_reduce)

    def all_reduce(self, send, recv, count, dtype, op, stream):
        self.calls.append((count, dtype, op, stream))
        kind = ctypes.c_float if dtype == self.NCCL_FLOAT32 else ctypes.c_double
        src = np.ctypeslib.as_array((kind * count).from_address(send))
        dst = np.ctypeslib.as_array((kind * count).from_address(recv))

        def run():
            self.done += 1
            np.multiply(src, RANKS, out=dst)
        fake_cupy._effect(run)  # NOTE: recorded, not run, while a stream captures


class FakeComm:
    """The MPI side: rank 0 of 2, handing the NCCL id to itself."""

    def Get_rank(self):  # noqa: N802
        return 0

    def Get_size(self):  # noqa: N802
        return RANKS

    def bcast(self, value, root=0):
        return value


@pytest.fixture
def gpu_ranks(monkeypatch, host_cxx, tmp_path):  # noqa: F811
    cp = fake_cupy.install(monkeypatch, host_cxx, tmp_path)
    nccl = FakeNccl()
    cp.cuda.nccl = nccl
    monkeypatch.setattr(fake_cupy._Stream, "ptr", property(id), raising=False)
    monkeypatch.setattr(collective, "_current", collective.World(FakeComm(), timeout=600))
    return cp, nccl


def _steps(backend: str, steps: int = 4) -> dict:
    net = nnlang.compile(tiny_source(), backend=backend, batch=4, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int32)
    for _ in range(steps):
        net.train_step({"x": x, "label": y})
    return net.parameters()


@pytest.mark.parametrize("graph", ["0", "1"])
def test_nccl_allreduce_on_the_step_stream(gpu_ranks, monkeypatch, graph):
    cp, nccl = gpu_ranks
    monkeypatch.setenv("NNLANG_CUDA_GRAPH", graph)
    got = _steps("cupy")
    monkeypatch.setattr(collective, "_current", None)
    ref = _steps("numba")
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    n = sum(v.size for v in ref.values())
    assert nccl.made == [(RANKS, (1, 2, 3), 0)]       # one communicator, made once
    assert nccl.done == 4                              # each step reduced once...
    assert {c[:3] for c in nccl.calls} == {(n, FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM)}
    # ...on the stream the step ran on: the capture's own stream when a graph records it
    streams = {c[3] for c in nccl.calls}
    assert len(streams) == (2 if graph == "1" else 1)


def test_nccl_sums_a_float64_weights_gradient_in_float64(gpu_ranks, monkeypatch):
    """A float64 weight of a float32 net: its gradient is reduced by a FLOAT64 allReduce of its
    own beside the float32 gradients' (the step's build raised concat's ShapeError before)."""
    from tests.test_distributed import MIXED
    cp, nccl = gpu_ranks
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int32)

    def steps(backend):
        net = nnlang.compile(MIXED, backend=backend, batch=4, seed=1)
        for _ in range(3):
            net.train_step({"x": x, "label": y})
        return net.state_dict()
    got = steps("cupy")
    monkeypatch.setattr(collective, "_current", None)
    ref = steps("numba")
    for k in ref:
        assert got[k].dtype == ref[k].dtype, k
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert sorted({c[:2] for c in nccl.calls}) == [(12, FakeNccl.NCCL_FLOAT64),
                                                   (67, FakeNccl.NCCL_FLOAT32)]
    assert nccl.done == 6
