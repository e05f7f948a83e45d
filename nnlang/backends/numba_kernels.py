"""`tensor_at`, which generated multi-tensor kernels import (`render_numba.render_multi`): the
numba side of the multi-tensor launch. Library primitives' kernels live in their registry
entries (`ops/`), jitted by `NumbaBackend.jit`.
"""
from __future__ import annotations

import numba
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
