"""The host stand-in for CuPy (`fake_cupy.py`) rejects what would go wrong on a GPU, so the
CuPy backend passing on it means something: wrong argument types and counts, host arrays where
device memory is needed, misaligned pointers, too much shared memory, implicit host reads."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.gpu import fake_cupy

SOURCE = r'''
extern "C" __global__ void k_scale(int n, const float* __restrict__ x, float a,
                                   float* __restrict__ y) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x)
    y[e] = a * x[e];
}
'''


@pytest.fixture
def cp(monkeypatch, host_cxx, tmp_path):
    return fake_cupy.install(monkeypatch, host_cxx, tmp_path)


@pytest.fixture
def k_scale(cp):
    return cp.RawModule(code=SOURCE).get_function("k_scale")


def test_a_correct_launch_runs_the_kernel(cp, k_scale):
    x = cp.asarray(np.arange(10, dtype=np.float32))
    y = cp.zeros(10, cp.float32)
    k_scale((2,), (4,), (np.int32(10), x, np.float32(3), y))
    np.testing.assert_array_equal(cp.asnumpy(y), 3 * np.arange(10, dtype=np.float32))


@pytest.mark.parametrize("change, message", [
    (lambda a, cp: (np.int64(10), *a[1:]), "not a numpy int32"),          # wrong width
    (lambda a, cp: (10, *a[1:]), "not a numpy int32"),                    # a Python int
    (lambda a, cp: (a[0], cp.asnumpy(a[1]), *a[2:]), "for a pointer"),    # a host array
    (lambda a, cp: (a[0], a[1].astype(np.float64), *a[2:]), "a float64 array"),
    (lambda a, cp: a[:3], "3 arguments for 4 parameters"),
    (lambda a, cp: (a[0], a[1].view(np.uint8)[1:5].view(np.float32), *a[2:]), "not aligned"),
    (lambda a, cp: list(a), "must be a tuple"),
])
def test_bad_kernel_arguments_are_rejected(cp, k_scale, change, message):
    x = cp.asarray(np.arange(10, dtype=np.float32))
    args = (np.int32(10), x, np.float32(3), cp.zeros(10, cp.float32))
    with pytest.raises((TypeError, ValueError), match=message):
        k_scale((2,), (4,), change(args, cp))


def test_launch_limits(cp, k_scale):
    args = (np.int32(1), cp.zeros(1, cp.float32), np.float32(1), cp.zeros(1, cp.float32))
    with pytest.raises(ValueError, match="threads"):
        k_scale((1,), (2048,), args)
    with pytest.raises(ValueError, match="shared memory"):
        k_scale((1,), (32,), args, shared_mem=49 * 1024)
    with pytest.raises(TypeError, match="grid must be a tuple"):
        k_scale(1, (32,), args)


def test_device_arrays_are_not_host_arrays(cp):
    x = cp.zeros((2, 3), cp.float32)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError):
        np.add(x, 1)
    with pytest.raises(TypeError, match="host numpy array"):
        cp.copyto(x, np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="host numpy array"):
        x[...] = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="Shape mismatch"):
        x.set(np.ones((3, 2), np.float32))
    with pytest.raises(TypeError, match="cannot be set"):
        x.set(np.ones((2, 3), np.float64))
    with pytest.raises(RuntimeError, match="non-contiguous"):
        x.T.set(np.ones((3, 2), np.float32))
    x[...] = 2.0                                # scalars and device values are fine
    x.set(np.full((2, 3), 5, np.float32))
    np.testing.assert_array_equal(cp.asnumpy(x + x), np.full((2, 3), 10, np.float32))


def test_modules_made_together_are_built_together(cp):
    """One compiler run for every module made since the last launch; the same kernel name in
    two modules stays two kernels."""
    a = cp.RawModule(code=SOURCE).get_function("k_scale")
    b = cp.RawModule(code=SOURCE.replace("a * x[e]", "a + x[e]")).get_function("k_scale")
    x, y = cp.asarray(np.ones(4, np.float32)), cp.zeros(4, cp.float32)
    a((1,), (4,), (np.int32(4), x, np.float32(3), y))
    np.testing.assert_array_equal(cp.asnumpy(y), 3)
    b((1,), (4,), (np.int32(4), x, np.float32(3), y))
    np.testing.assert_array_equal(cp.asnumpy(y), 4)
    assert fake_cupy._COMPILER.libraries == 1


def test_stream_capture_records_and_replays(cp, k_scale):
    """Captured work runs only when the graph is launched, each time, with the kernel
    arguments it was captured with; host copies, syncs and allocations inside a capture are
    refused."""
    x = cp.asarray(np.ones(4, np.float32))
    y = cp.zeros(4, cp.float32)
    k_scale((1,), (4,), (np.int32(4), x, np.float32(2), y))   # builds the module first
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        k_scale((1,), (4,), (np.int32(4), y, np.float32(3), x))   # x = 3 * y
        for refused in (lambda: x.set(np.zeros(4, np.float32)), lambda: cp.asnumpy(x),
                        lambda: cp.sum(x), lambda: x == y, lambda: cp.argmax(x)):
            with pytest.raises(RuntimeError, match="capturing"):
                refused()
        graph = stream.end_capture()
    np.testing.assert_array_equal(cp.asnumpy(x), 1)    # nothing ran yet
    graph.launch(stream=stream)
    np.testing.assert_array_equal(cp.asnumpy(x), 6)
    y.set(np.full(4, 10, np.float32))                  # new data, same pointers
    graph.launch(stream=stream)
    np.testing.assert_array_equal(cp.asnumpy(x), 30)
    with pytest.raises(RuntimeError, match="default"):
        cp.cuda.get_current_stream().begin_capture()


def test_launch_count_script(host_cxx, capsys, monkeypatch):
    """benchmarks/gpu_launch_count.py: a step's device operations, and that it uploads only
    its fed inputs (image, label, learning rate) and reads nothing back."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import gpu_launch_count
    assert gpu_launch_count.main(["--models", "mlp"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == "mlp" and int(row[1]) > 0 and row[3:] == ["3", "0"], row
    # docs/performance.md's table gives the count (it said 31 after the step made 30)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "performance.md").read_text()
    # (its last row, the build as it is)
    assert re.findall(r"\| device operations[^|]*\| (\d+) \|", doc)[-1] == row[1]


def test_capture_refuses_a_matmul_cupy_would_copy_an_operand_for(cp):
    """cupy.matmul hands cuBLAS a C- or (in 2-D) F-ordered matrix as it is and copies any
    other operand into a temporary of its own (cupy/_core/_routines_linalg.pyx), an allocation
    a capture must not make; the stand-in let such products through."""
    x, w = cp.zeros((4, 6), cp.float32), cp.zeros((6, 3), cp.float32)
    out, bout = cp.zeros((4, 3), cp.float32), cp.zeros((2, 4, 4), cp.float32)
    wt, wide, batch = (cp.zeros(s, cp.float32) for s in ((3, 6), (4, 12), (2, 4, 6)))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        cp.matmul(x, w, out=out)         # as they are
        cp.matmul(x, wt.T, out=out)      # a plain transpose
        for a, b, o in ((x[::-1], w, out), (x[:, ::2], w[:3], out), (wide[:, :6], w, out),
                        (batch, batch.transpose(0, 2, 1), bout)):
            with pytest.raises(RuntimeError, match="strided operand"):
                cp.matmul(a, b, out=o)
        stream.end_capture()
