"""A kernel loading a view of a broadcast (zero strides) on the numba backend: a slice of a
broadcast constant, which `fold` makes from an LSTM's backward step, was once passed to the
kernel as a one-element flat array and read past its end (NaN or garbage, no error)."""
import numpy as np
import pytest

import nnlang
from nnlang.backends.numba_backend import _row_strided
from nnlang.passes.fold import FOLD_LIMIT

# NOTE: the slice stays a view only while the broadcast is too big to fold into a constant, so
# the default passes need more than FOLD_LIMIT elements; without `fold` any size shows it
COLS = 2 * FOLD_LIMIT // 8
CASES = {
    "last axis": f"slice(broadcast_to(2.0, [batch, {2 * COLS}]), axis = 1, start = {COLS})",
    "a column of rows": f"slice(broadcast_to(broadcast_to(2.0, [batch, 1]), [batch, {2 * COLS}]),"
                        f" axis = 1, start = {COLS})",
    "a row of columns": f"slice(broadcast_to(broadcast_to(2.0, [1, {2 * COLS}]), "
                        f"[batch, {2 * COLS}]), axis = 1, start = {COLS})",
}


@pytest.mark.parametrize("disable", [(), ("fold",)], ids=["default", "no-fold"])
@pytest.mark.parametrize("case", CASES)
def test_a_slice_of_a_broadcast_constant_is_read_as_its_value(case, disable):
    src = f"""
model M() {{
  input x: float32[batch, {COLS}]
  output y = x * {CASES[case]}
}}
"""
    x = np.random.default_rng(0).standard_normal((8, COLS)).astype(np.float32)
    net = nnlang.compile(nnlang.load(src), backend="numba", batch=8, disable=disable)
    np.testing.assert_array_equal(net.forward({"x": x})["y"], 2 * x)


def test_an_array_broadcast_along_its_last_axis_is_not_passed_flat():
    """The flat index steps one element along the last axis; outer axes take any stride."""
    base = np.arange(6, dtype=np.float32)
    assert _row_strided(np.broadcast_to(base[:1], (4, 6))[:, 2:]) is None
    assert _row_strided(np.broadcast_to(base[:2, None], (2, 6))) is None
    flat, strides = _row_strided(np.broadcast_to(base, (4, 6))[:, 1:])
    assert strides == [0] and flat.tolist() == base[1:].tolist()
    flat, strides = _row_strided(np.arange(24, dtype=np.float32).reshape(4, 6)[:, 2:])
    assert strides == [6] and flat[strides[0]:strides[0] + 4].tolist() == [8, 9, 10, 11]
