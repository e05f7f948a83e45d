"""Kernel -> readable numba source: one `@numba.njit` function with explicit loops.

Loop sizes are arguments, so one source serves every batch size; `prange` goes on the outer
loop only when the work is large enough to pay for threads. Emitted after `fuse`, compiled by
`backends/numba_backend.py`.
"""
from __future__ import annotations

from nnlang.codegen.kernel import Kernel
from nnlang.codegen.scalar_ops import PYTHON, ScalarLang
from nnlang.ops import registry

PARALLEL_MIN = 1 << 16  # elements; below this thread start-up costs more than it saves

PRELUDE = "import math\n\nimport numba\nimport numpy as np\n"


def wants_parallel(k: Kernel, loop_shape) -> bool:
    total = 1
    for d in loop_shape:
        total *= d
    kept = [a for a in range(k.loop_rank) if not (k.reduce and a in k.reduce.axes)]
    return total >= PARALLEL_MIN and bool(kept) and loop_shape[kept[0]] > 1


def _index(bcast, order_names) -> str:
    return ", ".join("0" if b else i for b, i in zip(bcast, order_names))


def _flat_index(arg: str, bcast, order_names) -> str:
    """A row-strided array as a flat 1-D array: outer strides are arguments, the last is 1."""
    terms = [f"{i} * {arg}_s{a}" for a, (b, i) in enumerate(zip(bcast[:-1], order_names))
             if not b]
    if not bcast[-1]:
        terms.append(order_names[-1])
    return " + ".join(terms) or "0"


def stride_args(k: Kernel, strided) -> list[str]:
    """Extra trailing arguments for the arrays passed flat: their outer strides in elements."""
    return [f"{a}_s{d}" for a in k.args if a in strided for d in range(k.loop_rank - 1)]


def render_body(k: Kernel, parallel: bool, lang: ScalarLang = PYTHON, strided=()) -> str:
    """The function text alone (no header): the unit that is deduplicated and cached.

    NOTE: numba types a non-contiguous array (a gate slice of a matmul result) with layout 'A'
    and LLVM then never vectorizes the loop; arrays named in `strided` whose last axis is
    contiguous are passed flat with explicit outer strides instead (`executable.py`), so the
    innermost index is unit-stride (10x on an LSTM cell kernel)."""
    idx = [f"i{a}" for a in range(k.loop_rank)]
    full = (False,) * k.loop_rank

    def at(arg, bcast):
        return _flat_index(arg, bcast, idx) if arg in strided else _index(bcast, idx)
    reduced = set(k.reduce.axes) if k.reduce else set()
    kept = [a for a in range(k.loop_rank) if a not in reduced]
    order = kept + sorted(reduced)
    lines = [f"@numba.njit(cache=True, fastmath=False, error_model='numpy', "
             f"parallel={parallel})",
             f"def {k.name}({', '.join(k.args + stride_args(k, strided))}):"]
    pad = "    "
    for name, value, dtype in k.consts:
        lines.append(f"{pad}{name} = {lang.literal(value, dtype)}")
    acc = None
    for depth, axis in enumerate(order):
        rng = "numba.prange" if parallel and depth == 0 else "range"
        if k.reduce and depth == len(kept):
            acc_dtype = "float64" if k.reduce.op == "sum" and k.reduce.dtype == "float32" \
                else k.reduce.dtype  # NOTE: float32 sums accumulate in float64 for accuracy
            acc = "acc"
            lines.append(f"{pad}acc = {lang.reduce_init(k.reduce.op, acc_dtype)}")
        lines.append(f"{pad}for i{axis} in {rng}(n{axis}):")
        pad += "    "
    for name, ld in k.loads.items():
        lines.append(f"{pad}{name} = {ld.arg}[{at(ld.arg, ld.broadcast)}]")
    for op in k.body:
        rhs = lang.expr(op.op, registry.get(op.op).expr, list(op.args), op.dtype, op.in_dtypes)
        lines.append(f"{pad}{op.out} = {rhs}")
    for value, arg in k.stores:
        lines.append(f"{pad}{arg}[{at(arg, full)}] = {value}")
    if k.reduce:
        lines.append(f"{pad}{lang.reduce_step(k.reduce.op, acc, k.reduce.value)}")
        pad = "    " * (1 + len(kept))
        out_idx = ", ".join(f"i{a}" for a in kept) or "0"
        lines.append(f"{pad}{k.reduce.arg}[{out_idx}] = {lang.cast(acc, k.reduce.dtype)}")
    helpers = lang.used_helpers("\n".join(lines))
    return PRELUDE + "".join("\n\n" + h for h in helpers) + "\n\n" + "\n".join(lines) + "\n"


def render_header(k: Kernel) -> str:
    return "".join(f"# {line}\n" for line in ["computes:"] + ["  " + h for h in k.header])


def render(k: Kernel, loop_shape, lang: ScalarLang = PYTHON, strided=()) -> tuple[str, str]:
    """(header comment, function source) for one kernel."""
    return render_header(k), render_body(k, wants_parallel(k, loop_shape), lang, strided)
