"""Kernel -> readable numba source: one `@numba.njit` function with explicit loops.

Loop sizes are arguments, so one source serves every batch size. Kernels are serial and
release the GIL; the runtime runs large ones as row blocks on several threads (`split_rows`).
Emitted after `fuse`, compiled by `backends/numba_backend.py`.
"""
from __future__ import annotations

from nnlang.codegen.kernel import Kernel
from nnlang.codegen.scalar_ops import PYTHON, ScalarLang
from nnlang.ops import registry
from nnlang.ops.reduce import accumulator_dtype

PARALLEL_MIN = 1 << 16  # elements; below this thread start-up costs more than it saves
COLUMNS_MIN = 64        # columns a block of a split column reduction keeps (vector loops)
# NOTE: a column reduction splits from here (elements): the LSTM's bias gradient (12800 x 512)
# took 5.0 ms whole and 2.7 ms as two blocks; the MLP's small ones made its step slower
# (2.1-2.6 -> 2.6-3.1 ms), their blocks on the pool meeting its threaded BLAS
COLUMNS_SPLIT_MIN = 1 << 20
LANES = 4  # independent accumulators of an innermost-axis max (`_row_out`)

PRELUDE = "import math\n\nimport numba\nimport numpy as np\n"
JIT = "@numba.njit(cache=True, fastmath=False, error_model='numpy', nogil=True)"


def split_rows(k: Kernel, loop_shape) -> bool:
    """Is the kernel worth running as row blocks of its outer axis on several threads?

    NOTE: the runtime splits calls instead of numba's `parallel=True`: a parfor kernel took
    ~3 s more to compile, and the serial kernel serves both the split and the whole call.
    Only a kept outer axis splits, so every block writes its own part of the outputs."""
    total = 1
    for d in loop_shape:
        total *= d
    return total >= PARALLEL_MIN and loop_shape[0] > 1 and \
        not (k.reduce is not None and 0 in k.reduce.axes)


def column_reduction(k: Kernel, loop_shape) -> bool:
    """Is the kernel a column reduction (every axis reduced but the innermost: a bias
    gradient) wide enough to run as column blocks, at some number of rows?"""
    return k.reduce is not None and len(loop_shape) >= 2 and \
        sorted(k.reduce.axes) == list(range(len(loop_shape) - 1)) and \
        loop_shape[-1] >= 2 * COLUMNS_MIN


def split_columns(k: Kernel, loop_shape) -> bool:
    """Is the kernel a column reduction worth running as column blocks on several threads at
    this size? Each block reads its columns of every row and writes its part of the result,
    so no partial sums meet."""
    total = 1
    for d in loop_shape:
        total *= d
    return total >= COLUMNS_SPLIT_MIN and column_reduction(k, loop_shape)


def inner_kept(k: Kernel) -> bool:
    """A reduction whose innermost loop axis is kept (a column sum, a bias gradient)."""
    return k.reduce is not None and k.loop_rank - 1 not in k.reduce.axes


def _acc_dtype(k: Kernel) -> str:
    return accumulator_dtype(k.reduce.op, k.reduce.dtype)


def _index(bcast, order_names) -> str:
    return ", ".join("0" if b else i for b, i in zip(bcast, order_names))


def _flat_index(arg: str, bcast, order_names) -> str:
    """A row-strided array as a flat 1-D array from an offset: the offset and the outer strides
    are arguments, the last stride is 1. NOTE: the offset lets a scan driver pass a step's
    view as its whole sequence and an index (`numba_scan.py`); a slice there cost numba
    ~0.03 s of compile each, ~0.4 s of each LSTM driver's cold compile.

    NOTE: the index is cast unsigned, so numba emits no negative-index wraparound branch and
    LLVM vectorizes the loop (offsets are never negative: `executable._row_strided`). Signed,
    an LSTM cell's 4 strided gate loads took 10.1 us; unsigned 2.0, and 489 vs 3057 us over
    [50176, 32] rows (row slices taken before the inner loop: 2.2 and 750)."""
    terms = [f"{arg}_o"] + [f"{i} * {arg}_s{a}" for a, (b, i) in
                            enumerate(zip(bcast[:-1], order_names)) if not b]
    if not bcast[-1]:
        terms.append(order_names[-1])
    return f"numba.uintp({' + '.join(terms)})"


def stride_args(k: Kernel, strided) -> list[str]:
    """Extra trailing arguments for the arrays passed flat: each one's offset, then its outer
    strides, in elements."""
    return [name for a in k.args if a in strided
            for name in (f"{a}_o", *(f"{a}_s{d}" for d in range(k.loop_rank - 1)))]


def render_body(k: Kernel, lang: ScalarLang = PYTHON, strided=()) -> str:
    """The function text alone (no header): the unit that is deduplicated and cached.

    NOTE: numba types a non-contiguous array (a gate slice of a matmul result) with layout 'A'
    and LLVM then never vectorizes the loop; arrays named in `strided` whose last axis is
    contiguous are passed flat with explicit outer strides instead (`executable.py`), so the
    innermost index is unit-stride (10x on an LSTM cell kernel)."""
    idx = [f"i{a}" for a in range(k.loop_rank)]
    full = (False,) * k.loop_rank

    def at(arg, bcast):
        return f"{arg}[{_flat_index(arg, bcast, idx) if arg in strided else _index(bcast, idx)}]"
    reduced = set(k.reduce.axes) if k.reduce else set()
    kept = [a for a in range(k.loop_rank) if a not in reduced]
    order = kept + sorted(reduced)
    lines = [JIT, f"def {k.name}({', '.join(k.args + stride_args(k, strided))}):"]
    pad = "    "
    for name, value, dtype in k.consts:
        lines.append(f"{pad}{name} = {lang.literal(value, dtype)}")
    if inner_kept(k):
        lines += _inner_kept_loops(k, lang, at, full)
        return _module(lines, lang)
    if k.reduce is None:
        for axis in order:
            lines.append(f"{pad}for i{axis} in range(n{axis}):")
            pad += "    "
        lines += _body(k, pad, lang, at, full)
        return _module(lines, lang)
    lines += _inner_reduced_loops(k, lang, at, full, order, len(kept))
    return _module(lines, lang)


def _inner_reduced_loops(k: Kernel, lang: ScalarLang, at, full, order,
                         n_kept: int) -> list[str]:
    """A reduction over the innermost axis: each row of values goes to a scratch row, which is
    then folded (`_row_out`).

    NOTE: one scalar accumulator makes the whole loop a strict-order chain that LLVM will not
    vectorize (no fastmath), so exp in a softmax ran at libm speed; the split lets the value
    loop vectorize. The row holds the values in their own dtype: a float32 value widened to
    a float64 row kept that loop from vectorizing (a softmax's exp and sum over
    [32, 4, 128, 128]: 4.7 ms, 3.0 with a float32 row)."""
    red, last = k.reduce, k.loop_rank - 1
    pad = "    "
    if len(order) - n_kept >= 2:
        return [f"{pad}row = np.empty((n{last},), np.{_acc_dtype(k)})",
                *_columns_then_fold(k, lang, at, full, order, n_kept)]
    lines = [f"{pad}row = np.empty((n{last},), np.{red.dtype})"]
    for axis in order[:-1]:
        lines.append(f"{pad}for i{axis} in range(n{axis}):")
        pad += "    "
    lines.append(f"{pad}for i{last} in range(n{last}):")
    lines += _body(k, pad + "    ", lang, at, full)
    lines.append(f"{pad}    row[i{last}] = {red.value}")
    return lines + _row_out(k, lang, order, n_kept, pad)


def _row_out(k: Kernel, lang: ScalarLang, order, n_kept: int, pad) -> list[str]:
    """`row` folded (at `pad`) and stored. A sum goes to `row_sum`, whose loop LLVM may
    reorder into vector lanes (the 4 lanes here before took 3.0 of the 4.7 ms above; with
    row_sum 1.8). A max or min folds into LANES independent accumulators, combined pairwise (so the
    order is fixed): LLVM does not vectorize a max chain even when allowed to reorder."""
    red, last = k.reduce, k.loop_rank - 1
    out_idx = ", ".join(f"i{a}" for a in order[:n_kept]) or "0"
    store = f"{'    ' * (1 + n_kept)}{red.arg}[{out_idx}] = "
    if red.op == "sum":
        total = f"row_sum(row, n{last}, {lang.reduce_init(red.op, _acc_dtype(k))})"
        return [store + lang.cast(total, red.dtype)]
    lanes = [f"acc{j}" for j in range(LANES)]
    lines = [f"{pad}{' = '.join(lanes)} = {lang.reduce_init(red.op, _acc_dtype(k))}",
             f"{pad}for j in range(0, n{last} - {LANES - 1}, {LANES}):",
             *[f"{pad}    {lang.reduce_step(red.op, a, f'row[j + {j}]')}"
               for j, a in enumerate(lanes)],
             f"{pad}for j in range(n{last} - n{last} % {LANES}, n{last}):",
             f"{pad}    {lang.reduce_step(red.op, lanes[0], 'row[j]')}"]
    total = lanes
    while len(total) > 1:
        total = [lang.keep_nan(red.op, total[j], total[j + 1]) for j in range(0, len(total), 2)]
    return lines + [store + lang.cast(total[0], red.dtype)]


def _columns_then_fold(k: Kernel, lang: ScalarLang, at, full, order, n_kept: int) -> list[str]:
    """A reduction over the innermost axis and outer ones too (a whole-tensor sum, a gradient
    norm): `row` accumulates each column over the outer reduced axes, then its columns are
    folded (`_row_out`).

    NOTE: a row at a time into 4 lanes chained every addition through 4 accumulators; the
    columns are independent, so that loop vectorizes (sum of squares over [20000, 128], one
    thread: 2.6-3.1 ms in lanes, 0.76 by columns)."""
    red, last = k.reduce, k.loop_rank - 1
    lines, pad = [], "    "
    for depth, axis in enumerate(order[:-1]):
        if depth == n_kept:
            lines += _filled("row", [last], lang.reduce_init(red.op, _acc_dtype(k)), pad)
        lines.append(f"{pad}for i{axis} in range(n{axis}):")
        pad += "    "
    lines.append(f"{pad}for i{last} in range(n{last}):")
    lines += _body(k, pad + "    ", lang, at, full)
    lines.append(f"{pad}    {lang.reduce_step(red.op, f'row[i{last}]', red.value)}")
    return lines + _row_out(k, lang, order, n_kept, "    " * (1 + n_kept))


def _filled(name: str, axes: list[int], value: str, pad: str) -> list[str]:
    """A scratch array set to `value` by loops over its axes.

    NOTE: with scratch arrays made by `np.empty((...,), dtype)` and set in loops, numba compiles
    no `.fill` overload (~0.05 s a dtype and rank), and one `np.empty` overload a dtype (the
    int and tuple shapes were two), in the parent and again in the compile worker: such
    overloads are compiled anew in every process, not cached (the LSTM's cold compile made 8)."""
    lines = []
    for depth, a in enumerate(axes):
        lines.append(f"{pad}{'    ' * depth}for i{a} in range(n{a}):")
    index = ", ".join(f"i{a}" for a in axes)
    return lines + [f"{pad}{'    ' * len(axes)}{name}[{index}] = {value}"]


def _body(k: Kernel, pad: str, lang: ScalarLang, at, full) -> list[str]:
    """Loads, scalar ops and element stores at the innermost loop level."""
    lines = [f"{pad}{name} = {at(ld.arg, ld.broadcast)}" for name, ld in k.loads.items()]
    for op in k.body:
        rhs = lang.expr(op.op, registry.get(op.op).expr, list(op.args), op.dtype, op.in_dtypes)
        lines.append(f"{pad}{op.out} = {rhs}")
    lines += [f"{pad}{at(arg, full)} = {value}" for value, arg in k.stores]
    return lines


def _inner_kept_loops(k: Kernel, lang: ScalarLang, at, full) -> list[str]:
    """Loops in memory order; the kept axes after the first reduced one index an accumulator
    array, reset for each index of the kept axes before it.

    NOTE: the scalar-accumulator form runs the reduced axes innermost, which strides through
    memory when a kept axis follows them (a [12800, 512] -> [512] bias gradient took 35 ms;
    this takes ~3). Serial only: the accumulator is shared by the outer iterations."""
    red = k.reduce
    first = min(red.axes)
    inner = [a for a in range(first, k.loop_rank) if a not in red.axes]
    kept = [a for a in range(k.loop_rank) if a not in red.axes]
    aidx = ", ".join(f"i{a}" for a in inner)
    pad = "    "
    lines = [f"{pad}acc = np.empty(({', '.join(f'n{a}' for a in inner)},), "
             f"np.{_acc_dtype(k)})"]
    for axis in range(first):
        lines.append(f"{pad}for i{axis} in range(n{axis}):")
        pad += "    "
    lines += _filled("acc", inner, lang.reduce_init(red.op, _acc_dtype(k)), pad)
    base = pad
    for axis in range(first, k.loop_rank):
        lines.append(f"{pad}for i{axis} in range(n{axis}):")
        pad += "    "
    lines += _body(k, pad, lang, at, full)
    lines.append(f"{pad}{lang.reduce_step(red.op, f'acc[{aidx}]', red.value)}")
    pad = base
    for a in inner:
        lines.append(f"{pad}for i{a} in range(n{a}):")
        pad += "    "
    out_idx = ", ".join(f"i{a}" for a in kept)
    lines.append(f"{pad}{red.arg}[{out_idx}] = {lang.cast(f'acc[{aidx}]', red.dtype)}")
    return lines


def _module(lines: list[str], lang: ScalarLang) -> str:
    helpers = lang.used_helpers("\n".join(lines))
    return PRELUDE + "".join("\n" + h for h in helpers) + "\n\n" + "\n".join(lines) + "\n"


def render_header(k: Kernel) -> str:
    return "".join(f"# {line}\n" for line in ["computes:"] + ["  " + h for h in k.header])


def render(k: Kernel, loop_shape, lang: ScalarLang = PYTHON, strided=()) -> tuple[str, str]:
    """(header comment, function source) for one kernel; serial (see `split_rows`)."""
    return render_header(k), render_body(k, lang, strided)


MULTI_IMPORT = "\nfrom nnlang.backends.numba_kernels import tensor_at\n"


def _arg_dtypes(k: Kernel) -> dict[str, str]:
    """The element dtype of each array argument (loads, then stored values)."""
    dtypes = {op.out: op.dtype for op in k.body}
    dtypes.update({name: ld.dtype for name, ld in k.loads.items()})
    dtypes.update({name: dtype for name, _, dtype in k.consts})
    out = {ld.arg: ld.dtype for ld in k.loads.values()}
    for value, arg in k.stores:
        out.setdefault(arg, dtypes[value])
    return out


def render_multi(k: Kernel, body: str, count: int) -> tuple[str, str]:
    """(header, source) of one launch of a 1-d elementwise kernel over `count` tensors: the
    kernel itself plus a loop applying it to each tensor in turn (its loop sizes in `ns`, each
    argument a table of that argument's address in every tensor, read by `tensor_at`). The
    optimizer update of every parameter is one such launch, as PyTorch's multi-tensor (foreach)
    optimizers do. The source and its compile time do not depend on `count`."""
    single = {ld.arg for ld in k.loads.values() if ld.broadcast[0]}
    dtypes = _arg_dtypes(k)
    args = k.args[1:]
    views = [f"            tensor_at({a}[t], {'1' if a in single else 'n'}, "
             f"{PYTHON.dtype_names[dtypes[a]]})," for a in args]
    lines = ["", "", JIT,
             f"def {k.name}_multi(ns, {', '.join(args)}):",
             "    for t in range(ns.shape[0]):",
             "        n = ns[t]",
             f"        {k.name}(",
             "            n,", *views,
             "        )"]
    header = "".join(f"# {line}\n" for line in
                     [f"computes, for each of {count} tensors in one launch:"] +
                     ["  " + h for h in k.header])
    # NOTE: the kernel is inlined into the loop (numba IR), not compiled as a function of its
    # own: that compile (its Python and C wrappers, its own LLVM module and cache entry) was
    # ~0.1 s of the multi's ~0.5, for code LLVM inlined into the loop anyway
    source = body.replace(PRELUDE, PRELUDE + MULTI_IMPORT, 1).replace(
        JIT, JIT.replace("cache=True", "inline='always'"), 1)
    return header, source + "\n".join(lines) + "\n"
