"""What generated kernels import: the scalar helpers their expressions call
(`ScalarLang.funcs_f32`, the sum of a row) and `tensor_at`, the numba side of the multi-tensor
launch (`render_numba.render_multi`). Library primitives' kernels live in their registry
entries (`ops/`), jitted by `NumbaBackend.jit`.

NOTE: the helpers live here, not in each kernel's module, so numba compiles each once per
process and caches it beside the package: defined in every module, they were compiled once per
kernel (0.06-0.23 s each; a quarter of the LSTM's cold compile). Each is still inlined into
its callers by LLVM, keeping its own float flags while the kernels keep strict float math:
'contract' fuses the polynomials' multiply-adds into FMAs (the exp over 2M floats: 1.27 ms
without, 0.75 with; an LSTM step's cell kernel on 32 rows: 16.4-17.7 us forward and 17.2
backward, 11.4-13.1 and 12.0 with). A kernel's cache key includes this file's text
(`NumbaBackend.compile`), since a cached kernel holds the helpers' code it was linked with.
"""
from __future__ import annotations

import math

from nnlang.backends import numba_config  # noqa: F401, I001  (numba's settings first)
import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _voidptr(typingctx, address):
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(address), codegen


@numba.njit(inline="always")
def tensor_at(address, n, dtype):
    """The `n` elements of `dtype` at `address` as a 1-d array: a multi-tensor kernel takes a
    table of addresses per argument, as the CUDA one takes pointer tables.

    NOTE: a tuple of arrays instead made numba's compile time superlinear in the tuple length
    (repeat 100 of a dense layer: 56 s) and fails at 1000; the caller keeps the arrays alive."""
    return numba.carray(_voidptr(address), n, dtype)


_scalar = numba.njit(cache=True, error_model="numpy", fastmath={"contract"})


@_scalar
def exp_f32(x):
    """Cephes expf in float32, branch-free so LLVM vectorizes the loop calling it (numba has
    no vector math library here): <= 1.02 ulp over 20M random arguments, 5x faster than libm
    in a softmax. x = n ln2 + r with n rounded by the 1.5 * 2^23 trick (math.floor is a libm
    call), then 2^(n-1) from the exponent bits. The clamps are selects (they keep NaN),
    x > 88.73 overflows to inf by itself, and x < -86.99 gives exponent bits 0, so 0 (results
    below 2^-125 flush to zero)."""
    t = np.float32(-87.6) if x < np.float32(-87.6) else x
    t = np.float32(89.0) if t > np.float32(89.0) else t
    n = (t * np.float32(1.44269504088896341) + np.float32(12582912.0)) - np.float32(12582912.0)
    r = t - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    return (y + y) * np.int32((np.int32(n) + np.int32(126)) << 23).view(np.float32)


@_scalar
def tanh_f32(x):
    """Eigen's generic_fast_tanh_float, a rational form in float32 with no libm call: <= 3e-7
    off, saturating to 1 - 2e-7 (an exp-based tanh was 16x slower in an LSTM cell kernel)."""
    x = min(max(x, np.float32(-7.99881172180175781)), np.float32(7.99881172180175781))
    x2 = x * x
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


# NOTE: 1 / (1 + e**-x) keeps the relative precision of the negative tail, where the tanh form
# 0.5 * (tanh(x / 2) + 1) cancels (float32 gave 0 from x = -16, 0.9% off at -12); e**-x
# overflows to inf below -709 (-88.7 in float32) and 1 / inf is the right 0
@_scalar
def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@_scalar
def sigmoid_f32(x):
    return np.float32(1.0) / (np.float32(1.0) + exp_f32(-x))


@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def row_sum(row, n, acc):
    """A reduction's row summed into `acc` (render_numba._row_out). 'reassoc' lets LLVM sum
    in vector lanes; the kernel around it keeps strict float math."""
    for j in range(n):
        acc += row[j]
    return acc
