"""Host arrays on cache lines (backends/aligned.py): the numba backend's buffers and a model's
state."""
import numpy as np
import pytest

import nnlang
from nnlang.backends.aligned import ALIGN, aligned_copy, aligned_empty, aligned_zeros


@pytest.mark.parametrize("shape,dtype", [((), np.float32), ((7,), np.float64),
                                         ((3, 5, 2), np.int32), ((1000, 3), np.float32)])
def test_aligned_arrays_start_on_a_cache_line_and_hold_their_values(shape, dtype):
    rng = np.random.default_rng(0)
    value = rng.normal(size=shape).astype(dtype)
    for a in (aligned_empty(shape, dtype, spare=100), aligned_zeros(shape, dtype),
              aligned_copy(value, dtype)):
        assert a.ctypes.data % ALIGN == 0
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
    assert not aligned_zeros(shape, dtype).any()
    np.testing.assert_array_equal(aligned_copy(value, dtype), value)


def test_a_numba_nets_buffers_and_state_start_on_cache_lines():
    src = """model M {
  input x: float32[batch, 12]
  input y: int32[batch]
  logits = dense(x, 16) |> relu |> dense(3)
  loss cross_entropy(logits, y)
}
train M { optimizer = adam(lr = 0.01)  batch = 8 }
"""
    net = nnlang.compile(src, backend="numba", batch=8)
    net.train_step({"x": np.ones((8, 12), np.float32), "y": np.zeros(8, np.int32)})
    exe, _ = net._exes[("train", 8)]
    assert exe.buffers and all(b.ctypes.data % ALIGN == 0 for b in exe.buffers)
    assert len(net.state) > 4   # weights, biases and Adam's slots
    assert all(a.ctypes.data % ALIGN == 0 for a in net.state.values())
