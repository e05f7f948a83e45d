"""tril and triu: the lower or upper triangle of the last two axes (a batch of matrices), the
rest zero, as numpy and PyTorch. Library primitives: the kept part depends on an element's
row and column, which the generated elementwise kernels do not see.
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.dims import fmt_shape
from nnlang.ops.lowering import GRID_LOOP, prange
from nnlang.ops.registry import MOVEMENT, Sample, ShapeError, TensorType, register


def _triangle_shape(op: str):
    def shape_rule(x: TensorType, *, k) -> TensorType:
        if x.rank < 2:
            raise ShapeError(f"{op} needs a matrix or a batch of them (rank 2 or more), got "
                             f"{fmt_shape(x.shape)}", arg=0,
                             hint="it keeps a triangle of the last two axes")
        if not -2**63 <= k < 2**63:   # NOTE: both kernels and ONNX's Trilu take an int64
            raise ShapeError(f"{op}: k = {k} is outside the int64 range", attr="k",
                             hint="a k at or past the last column keeps every entry, one at or "
                                  "below minus the row count none")
        return x
    return shape_rule


def triangle_kernel(x, out, k, upper):
    """x, out: [outer, rows, cols]; keeps column j of row i where j - i <= k (j - i >= k when
    upper), zero elsewhere."""
    outer, rows, cols = x.shape
    zero = x.dtype.type(0)
    for r in prange(outer * rows):
        o, i = r // rows, r % rows
        for j in range(cols):
            keep = j - i >= k if upper else j - i <= k
            out[o, i, j] = x[o, i, j] if keep else zero


def _matrices(x) -> tuple[int, int, int]:
    return int(np.prod(x.shape[:-2], dtype=np.int64)), x.shape[-2], x.shape[-1]


def _triangle_numba(upper: bool):
    def lower(be, a, xs, out):
        shape = _matrices(out)
        return be.specialize(be.jit(triangle_kernel, parallel=True),
                             (xs[0].reshape(shape), out.reshape(shape), np.int64(a["k"]), upper))
    return lower


def triangle_cuda_source(be, t: str) -> tuple[str, str]:
    """One thread per element of [outer, rows, cols]."""
    name, ct = f"nn_triangle_{t}", be.ctype(t)
    return name, (
        f'extern "C" __global__ void {name}(long long total, long long rows, long long cols,\n'
        f"    long long k, int upper, const {ct}* __restrict__ x, {ct}* __restrict__ out) {{\n"
        + GRID_LOOP +
        "    const long long d = e % cols - (e / cols) % rows;\n"
        f"    out[e] = (upper ? d >= k : d <= k) ? x[e] : ({ct})0;\n"
        "  }\n}\n")


def _triangle_cuda(upper: bool):
    def lower(be, a, xs, out):
        _, rows, cols = _matrices(out)
        kernel = be.library_kernel(*triangle_cuda_source(be, str(out.dtype)))
        return be.launch(kernel, out.size, (np.int64(out.size), np.int64(rows), np.int64(cols),
                                            np.int64(a["k"]), np.int32(upper), xs[0], out))
    return lower


_SAMPLES = (Sample(((4, 4),)), Sample(((2, 3, 5),), {"k": 1}), Sample(((2, 5, 3),), {"k": -2}),
            Sample(((3, 4),), {"k": 7}), Sample(((2, 3, 4),), {"k": -1}, domain="int:9",
                                                dtypes=("int32",), grad=False))


def _register(op: str, upper: bool, which: str) -> None:
    np_fn = np.triu if upper else np.tril
    register(op, "x: tensor, k: int = 0", _triangle_shape(op),
             impl=lambda x, *, k: np_fn(x, k),
             # NOTE: linear, each element kept or zeroed: the op is its own adjoint
             grad=lambda b, n, g: (b.emit(op, g, k=n.attrs["k"]),),
             lower={"numba": _triangle_numba(upper), "cuda": _triangle_cuda(upper)},
             onnx=lambda e, n, x: e.op("Trilu", x, e.const(n.attrs["k"], "int64"),
                                       upper=int(upper)),
             family="movement", traits={MOVEMENT},
             doc=f"the {which} triangle of the last two axes, zero elsewhere, as np.{op}(x, k) "
                 f"and torch.{op}(x, diagonal): k = 0 is the main diagonal, k > 0 above it, "
                 f"k < 0 below",
             samples=_SAMPLES)


_register("tril", False, "lower")
_register("triu", True, "upper")
