"""A scan's time loop as generated numba code (runtime/scan.py asks for it): one `@njit` driver
per scan body that copies step t in, calls the body's GEMMs and fused kernels, and stores the
step's output, so the loop costs no Python per step.

GEMMs go straight to the BLAS numpy ships (its `cblas_?gemm`), passed to the driver as a ctypes
function: numba's own np.dot needs scipy, and a ctypes function baked in as a global would
keep numba from caching the driver on disk (one passed as an argument caches fine).
"""
from __future__ import annotations

import ctypes
import inspect
import itertools
import re

from nnlang.backends import numba_config  # noqa: F401, I001  (numba's settings first)
import numba
import numba.experimental.function_type  # noqa: F401  (numba types KernelAddress by it)
import numpy as np
from numba.core import types

from nnlang.backends.aligned import byte_range
from nnlang.backends.base import run_in_order
from nnlang.backends.blas import run_parts

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _blas_library():
    try:
        from threadpoolctl import threadpool_info
        infos = [i for i in threadpool_info() if i["user_api"] == "blas"]
    except Exception:  # NOTE: no way to find numpy's BLAS: the runtime loops in Python
        return None
    for info in infos:
        lib = ctypes.CDLL(info["filepath"])
        for prefix, suffix, index in (("scipy_", "64_", ctypes.c_int64), ("", "64_",
                                      ctypes.c_int64), ("scipy_", "", ctypes.c_int),
                                      ("", "", ctypes.c_int)):
            names = [f"{prefix}cblas_{t}gemm{suffix}" for t in "sd"]
            if all(hasattr(lib, n) for n in names):
                return lib, names, index
    return None


_GEMMS: dict | None = None


def blas_gemms() -> dict:
    """{dtype: ctypes cblas gemm} for float32 and float64, or {} without a usable BLAS."""
    global _GEMMS
    if _GEMMS is None:
        found, _GEMMS = _blas_library(), {}
        if found:
            lib, names, index = found
            for dtype, name, real in zip(("float32", "float64"), names,
                                         (ctypes.c_float, ctypes.c_double)):
                fn = getattr(lib, name)
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, index, index, index,
                               real, ctypes.c_void_p, index, ctypes.c_void_p, index, real,
                               ctypes.c_void_p, index]
                fn.restype = None
                _GEMMS[dtype] = fn
    return _GEMMS


def gemm_layout(x: np.ndarray):
    """(transposed, leading dimension) of a 2-D operand BLAS can read in place, or None."""
    if x.ndim != 2:
        return None
    item = x.itemsize
    s0, s1 = x.strides
    if (s1 == item or x.shape[1] == 1) and s0 % item == 0 and s0 >= item * x.shape[1]:
        return False, max(s0 // item, x.shape[1], 1)
    if (s0 == item or x.shape[0] == 1) and s1 % item == 0 and s1 >= item * x.shape[0]:
        return True, max(s1 // item, x.shape[0], 1)
    return None


@numba.njit(cache=True, nogil=True)
def gemm(blas, a, ta, lda, b, tb, ldb, out, ldc):
    """out = a @ b (row-major BLAS; `ta`/`tb`: the operand is stored transposed)."""
    m, k = a.shape
    n = b.shape[1]
    blas(ROW_MAJOR, TRANS if ta else NO_TRANS, TRANS if tb else NO_TRANS, m, n, k, 1.0,
         a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, out.ctypes.data, ldc)


class KernelAddress(types.WrapperAddressProtocol):
    """A compiled kernel passed to a driver as a first-class function (numba calls it through
    the address of its C wrapper). A global dispatcher instead is linked into the driver, and
    LLVM optimizes and generates the kernel's code once more there: 1.3 of the LSTM backward
    driver's 2.4 s cold compile. The driver's type then names only the kernel's signature,
    so it compiles without the kernel and one cached driver serves any kernel of that type."""

    def __init__(self, fn, sig):
        self.fn, self.sig = fn, sig
        self._address = None   # NOTE: known once the kernel is compiled or loaded (`together`)

    def __wrapper_address__(self) -> int:
        if self._address is None:
            done = self.fn.overloads[self.sig]
            self._address = done.library.get_pointer_to_function(
                done.fndesc.llvm_cfunc_wrapper_name)
        return self._address

    def signature(self):
        return types.none(*self.sig)


class Unsupported(Exception):
    """A body call the driver cannot express: the runtime keeps the Python loop."""


def copy_loop(dst: str, dst_at: str, src: str, src_at: str, shape, names=None) -> list[str]:
    """Lines copying src[src_at, ...] into dst[dst_at, ...] element by element over `shape`.
    NOTE: numba's array assignment (`dst[...] = src`) compiles a broadcasting implementation
    per pair of types (~1 s each) and the string formatting of its error message: ~9 s of the
    LSTM's two cold drivers; these loops compile in milliseconds and run as fast."""
    if not shape:
        raise Unsupported("a 0-d copy")
    lines, names = [], names or itertools.count()
    # NOTE: a view (step t, rows r0..) is taken once, not once per element; each under its own
    # name (`names`: one count per driver), as numba gives a variable one type
    if "[" in dst:
        lines.append(f"v{next(names)} = {dst}")
        dst = lines[-1].split(" = ")[0]
    if "[" in src:
        lines.append(f"v{next(names)} = {src}")
        src = lines[-1].split(" = ")[0]
    idx = [f"j{k}" for k in range(len(shape))]
    lines += [f"{'    ' * k}for {j} in range({n}):" for k, (j, n) in enumerate(zip(idx, shape))]
    at = ", ".join(idx)
    lines.append(f"{'    ' * len(shape)}{dst}[{dst_at}{at}] = {src}[{src_at}{at}]")
    return lines


class Unmovable(Unsupported):
    """A view of a moved buffer that the driver cannot index in the sequence: that buffer is
    copied instead (`buf`: its id)."""

    def __init__(self, buf: int, why: str):
        super().__init__(why)
        self.buf = buf


def movable(buf: np.ndarray, seq: np.ndarray) -> bool:
    """Can the body read and write seq[t] itself for `buf`? Either every step is laid out as
    `buf`, or (`restrided`) a [batch, width] buffer's rows sit further apart in the sequence,
    a column slice of a wider one (the forward's stored values, which the backward reads)."""
    return (buf.flags.c_contiguous and seq.ndim == buf.ndim + 1 and seq.dtype == buf.dtype
            and (seq.strides[1:] == buf.strides or restrided(buf, seq))
            and seq.strides[0] > 0 and seq.strides[0] % seq.itemsize == 0)


def restrided(buf: np.ndarray, seq: np.ndarray) -> bool:
    item = buf.itemsize
    return (buf.ndim == 2 and seq.ndim == 3 and seq.strides[2] == item
            and seq.strides[1] > buf.strides[0] and seq.strides[1] % item == 0)


class DriverSource:
    """Collects the driver's arguments and lines from the body's prebound calls.

    A moved buffer (a body input or its output) is never copied: each call's view of it
    becomes the same view of step t of its sequence, written in the driver as an index
    expression (`moved`)."""

    def __init__(self, kernel_of, moved=(), rows=None):
        self.kernel_of = kernel_of        # compiled entry -> (its numba dispatcher, signature)
        # (batch, [(lo, hi) byte ranges of per-row memory]): each call then works on rows
        # r0 .. r0 + nb of every per-row array, so the batch can run in parts (`row_parts`)
        self.rows = rows
        self.names = itertools.count()    # the copy loops' view names
        self.args: list = []              # the driver's array arguments, p0, p1, ...
        self._ids: dict[int, str] = {}      # id(array) -> its expression in the driver
        self._params: dict[int, str] = {}   # id(array) -> its argument name
        self._spans: dict[int, str] = {}  # id(sequence) -> its flat 1-D view's argument
        self.moved = [(*byte_range(buf), buf, seq) for buf, seq in moved]
        # id(x) -> (the row stride (elements) of x's expression where it differs from x's
        # own, id of the restrided moved buffer x views)
        self.restride: dict[int, tuple[int, int]] = {}
        self.kernels: dict = {}           # (dispatcher, signature) -> its argument, k0, ..
        self.lines: list[str] = []
        self.dtype = None

    def array(self, x: np.ndarray, stride: int | None = None, n1: int | None = None) -> str:
        """x's expression; `stride`: the row stride of a flat (row-strided 1-D) kernel
        argument, which a row range needs, and `n1` its row's length."""
        if id(x) not in self._ids:
            expr = self._in_step(x, stride, n1)
            self._ids[id(x)] = self._rows_of(x, expr or self._param(x), stride)
        return self._ids[id(x)]

    def per_row(self, x: np.ndarray) -> bool:
        if self.rows is None:
            return False
        lo, hi = byte_range(x)
        return any(a <= lo and hi <= b for a, b in self.rows[1])

    def _rows_of(self, x: np.ndarray, expr: str, stride: int | None) -> str:
        """`expr` narrowed to the rows r0 .. r0 + nb when x is per-row memory."""
        if not self.per_row(x):
            return expr
        batch = self.rows[0]
        if x.ndim == 2 and x.shape[0] == batch:
            if expr.endswith("[t]"):
                return f"{expr[:-3]}[t, r0:r0 + nb]"
            if expr.endswith("]") and "[t, :, " in expr:
                return expr.replace("[t, :, ", "[t, r0:r0 + nb, ")
            return f"{expr}[r0:r0 + nb]"
        if x.ndim == 1 and stride is None and x.shape[0] == batch and \
                x.strides[0] == x.itemsize:
            stride = 1   # NOTE: one value a row (a row's sum in the masked LSTM's backward)
        if x.ndim == 1 and stride is not None and x.shape[0] >= (batch - 1) * stride:
            row = self.restride.get(id(x), (stride,))[0]
            if expr.endswith("]"):            # a flat slice of step t: [a:b]
                head, rng = expr[:-1].rsplit("[", 1)
                a, b = rng.split(":")
                return f"{head}[{a} + r0 * {row}:{b}]"
            return f"{expr}[r0 * {row}:]"
        raise Unsupported("per-row memory the driver cannot split by rows")

    def count(self, n: int, per_row: int, extra: int = 0) -> str:
        """n = (batch - 1) * per_row + extra, or batch * per_row when extra is 0, written with
        the driver's `batch` argument when it runs by rows, so one driver serves every batch
        size (its offsets held the batch: each new size compiled its loops again). Callers
        pass only counts of a step's [batch, ...] values, whose rows are the batch."""
        if self.rows is None:
            return str(n)
        if extra == 0 and n == self.rows[0] * per_row:
            return f"batch * {per_row}"
        if n == (self.rows[0] - 1) * per_row + extra:
            return f"(batch - 1) * {per_row} + {extra}"
        return str(n)

    def _param(self, x: np.ndarray) -> str:
        if id(x) not in self._params:
            self._params[id(x)] = f"p{len(self.args)}"
            self.args.append(x)
        return self._params[id(x)]

    def _flat(self, seq: np.ndarray) -> str:
        if id(seq) not in self._spans:
            n = (byte_range(seq)[1] - seq.ctypes.data) // seq.itemsize
            self._spans[id(seq)] = self._param(
                np.lib.stride_tricks.as_strided(seq, shape=(n,), strides=(seq.itemsize,)))
        return self._spans[id(seq)]

    def _in_step(self, x: np.ndarray, stride: int | None, n1: int | None) -> str | None:
        """x's expression in the sequence when x views a moved buffer, else None."""
        lo, hi = byte_range(x)
        for start, stop, buf, seq in self.moved:
            if lo >= stop or hi <= start:
                continue
            if lo < start or hi > stop:
                raise Unmovable(id(buf), "a view across a moved buffer's bounds")
            off, step = (x.ctypes.data - start) // x.itemsize, seq.strides[0] // x.itemsize
            if restrided(buf, seq):
                return self._restrided(x, buf, seq, off, step, stride, n1)
            if x.shape == buf.shape and x.strides == buf.strides and off == 0:
                return f"{self._param(seq)}[t]"
            if x.ndim == 1 and (x.strides[0] == x.itemsize or x.shape[0] <= 1):
                at = f"t * {self._step(seq, step)} + {off}"
                # NOTE: a batch size only where the view spans every row of the step's buffer
                size = self.count(x.shape[0], stride, n1) if stride and n1 else \
                    self.count(x.shape[0], buf.size // buf.shape[0]) if x.size == buf.size \
                    and buf.ndim and buf.shape[0] else str(x.shape[0])
                return f"{self._flat(seq)}[{at}:{at} + {size}]"
            if x.ndim == 2 == buf.ndim and x.strides == buf.strides and \
                    x.shape[0] == buf.shape[0] and off + x.shape[1] <= buf.shape[1]:
                return f"{self._param(seq)}[t, :, {off}:{off + x.shape[1]}]"
            raise Unmovable(id(buf), "a view of a moved buffer the driver cannot index")
        return None

    def _restrided(self, x, buf, seq, off, step, stride, n1) -> str:
        """x's expression in a sequence whose rows are `row` elements apart where buf's are
        `width`: a GEMM operand or a copy's side (2-D, the BLAS reads the row stride), or a
        kernel's flat argument over whole rows of one column range (its stride becomes
        `row`); a kernel's 2-D argument is typed contiguous, so it cannot move."""
        width, row = buf.shape[1], seq.strides[1] // x.itemsize
        r, c = divmod(off, width)
        if x.ndim == 2 and x.strides == buf.strides and r == 0 and \
                x.shape[0] == buf.shape[0] and c + x.shape[1] <= width:
            self.restride[id(x)] = row, id(buf)
            return f"{self._param(seq)}[t, :, {c}:{c + x.shape[1]}]"
        if x.ndim == 1 and stride == width and n1 is not None and c + n1 <= width and \
                x.strides[0] == x.itemsize and (x.shape[0] - n1) % width == 0:
            self.restride[id(x)] = row, id(buf)
            at = f"t * {self._step(seq, step)} + {r * row + c}"
            size = self.count((x.shape[0] - n1) // width * row + n1, row, n1)
            return f"{self._flat(seq)}[{at}:{at} + {size}]"
        raise Unmovable(id(buf), "a view the driver cannot index at another row stride")

    def _step(self, seq: np.ndarray, step: int) -> str:
        """The elements from one step of a [steps, batch, ...] sequence to the next."""
        if self.rows is None or seq.ndim < 2 or seq.shape[1] != self.rows[0]:
            return str(step)
        return self.count(step, seq.strides[1] // seq.itemsize)   # NOTE: rows of a wider one

    def value(self, v) -> str:
        if isinstance(v, np.ndarray) and v.ndim:
            return self.array(v)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            # NOTE: a bare literal types as Literal[int] and numba would compile the kernel
            # again for it (~1 s each on the LSTM body); int64 is the signature it has already
            return f"np.int64({int(v)})"
        raise Unsupported(f"argument {type(v).__name__}")

    def call(self, fn, args) -> None:
        if fn in (run_in_order, run_parts):   # NOTE: parts of one call run in turn here
            for inner in args[0]:
                self.call(*inner)
        elif fn is np.matmul:
            self.gemm(*args)
        elif fn is np.copyto:
            dst, src = args
            if dst.shape != src.shape:
                raise Unsupported("a broadcasting copy")
            shape = dst.shape
            if self.rows is not None:
                if not (self.per_row(dst) and self.per_row(src) and shape[0] == self.rows[0]):
                    raise Unsupported("a copy that is not by rows")
                shape = ("nb", *shape[1:])
            self.lines += copy_loop(self.array(dst), "", self.array(src), "", shape, self.names)
        elif fn in self.kernel_of:
            disp, sig = self.kernel_of[fn]
            exprs = self._kernel_args(disp, args)
            kernel = (disp, self._driver_types(sig, args, exprs))
            name = self.kernels.setdefault(kernel, f"k{len(self.kernels)}")
            self.lines.append(f"{name}({', '.join(exprs)})")
        else:
            raise Unsupported(getattr(fn, "__name__", repr(fn)))

    def _driver_types(self, sig, args, exprs) -> tuple:
        """The kernel's signature with its arrays typed as the driver's expressions are: numba
        types a column slice of a step (`p[t, :, a:b]`) as strided, where the array the kernel
        was typed from may be contiguous (a [1, k] slice at batch 1), and a step of a sequence
        (`p[t]`) as the sequence's layout. A kernel called through its address must take
        exactly these types, so the driver may need a signature of its own."""
        out = list(sig)
        for k, (v, e) in enumerate(zip(args, exprs)):
            head, _, index = e.partition("[")
            if isinstance(v, np.ndarray) and v.ndim > 1 and head[:1] == "p" and \
                    head[1:].isdigit():
                layout = numba.typeof(self.args[int(head[1:])]).layout
                if index and (layout != "C" or index.count(", ") >= 2):
                    layout = "A"
                if layout != out[k].layout:
                    out[k] = out[k].copy(layout=layout)
        return tuple(out)

    def _kernel_args(self, disp, args) -> list[str]:
        """A generated kernel's arguments (n0, n1.., arrays.., each flat array's offset and
        outer strides `<array>_o`, `<array>_s0`..); with rows, n0 is the part's row count and
        each flat array starts at row r0. A flat array that is a range of another (step t of
        a sequence, rows from r0) is passed whole, at its offset (`offset_form`)."""
        names = list(inspect.signature(disp.py_func).parameters)
        value = dict(zip(names, args))
        # NOTE: only a 2-D kernel's flat argument spans rows of n1 elements each
        n1 = int(value["n1"]) if "n1" in value and "n2" not in value else None
        out, strides, offsets = [], {}, {}
        for name, v in zip(names, args):
            if isinstance(v, np.ndarray) and v.ndim:
                s0 = value.get(f"{name}_s0")
                expr = self.array(v, None if s0 is None else int(s0), n1)
                if f"{name}_o" in value:
                    expr, offsets[f"{name}_o"] = offset_form(expr)
                out.append(expr)
                if id(v) in self.restride:
                    row, buf = self.restride[id(v)]
                    if s0 is None:
                        raise Unmovable(buf, "a kernel's 2-D argument")
                    strides[f"{name}_s0"] = row
            elif name == "n0" and self.rows is not None:
                if int(v) != self.rows[0]:
                    raise Unsupported("a kernel whose outer loop is not the batch")
                out.append("nb")
            elif name in offsets:
                out.append(offsets[name])
            else:
                out.append(self.value(strides.get(name, v)))
        return out

    def gemm(self, a, b, out) -> None:
        la, lb, lo = gemm_layout(a), gemm_layout(b), gemm_layout(out)
        if la is None or lb is None or lo is None or lo[0] or \
                not a.dtype == b.dtype == out.dtype or a.dtype.name not in ("float32", "float64"):
            raise Unsupported("a GEMM operand BLAS cannot read in place")
        if self.dtype not in (None, a.dtype.name):
            raise Unsupported("GEMMs of two dtypes")
        self.dtype = a.dtype.name
        ea, eb, eo = self.array(a), self.array(b), self.array(out)
        lds = [self._ld(x, layout) for x, layout in ((a, la), (b, lb), (out, lo))]
        ints = [self.value(int(v)) for v in (la[0], lds[0], lb[0], lds[1], lds[2])]
        self.lines.append(f"gemm(blas, {ea}, {ints[0]}, {ints[1]}, "
                          f"{eb}, {ints[2]}, {ints[3]}, {eo}, {ints[4]})")

    def _ld(self, x: np.ndarray, layout) -> int:
        """The leading dimension BLAS reads x's expression at: x's own, or the row stride of
        the sequence x was moved to (rows only: a transposed operand's columns cannot move)."""
        if id(x) not in self.restride:
            return layout[1]
        row, buf = self.restride[id(x)]
        if layout[0]:
            raise Unmovable(buf, "a transposed GEMM operand")
        return row


_FLAT_RANGE = re.compile(r"(p\d+)\[([^\[\]:,]+):[^\[\],]*\]")


def offset_form(expr: str) -> tuple[str, str]:
    """(array, offset) of a flat argument's expression: `p5[a:b]` or `p5[a:]` (`_in_step`,
    `_rows_of`) as `p5` and `a`, which the kernel adds to its index (`render_numba`). NOTE:
    numba spent ~0.03 s of compile on each slice; the kernel reads only its own elements, so
    the range's end is not needed."""
    found = _FLAT_RANGE.fullmatch(expr)
    if not found:
        return expr, "np.int64(0)"
    at = found[2].strip()
    return found[1], f"np.int64({at})" if at.isdigit() else at   # NOTE: as `value` says


def render_driver(name: str, steps: int, reverse: bool, width: int, init, carry, out, y,
                  pairs, calls, kernel_of, own=frozenset(), rows=None
                  ) -> tuple[str, list, str | None, bool]:
    """(module source, the driver's arguments after `blas, steps, r0, nb, batch` (the kernels it
    calls, `KernelAddress`es, then arrays), the GEMM dtype or None, whether it runs by rows);
    raises Unsupported when some call cannot be generated. `kernel_of`: compiled entry (or
    one still pending) -> (numba dispatcher, signature).
    The length is an argument, so one compiled driver serves every sequence length.

    `rows`: (batch, byte ranges of the per-row memory) when the body's rows never meet
    (runtime/scan.py, `row_parts`): every call then works on rows r0 .. r0 + nb only, so
    parts of the batch can run the loop at once on different threads. Without, r0 = 0 and
    nb = batch.

    `own`: ids of the body's input and output buffers that no other body value shares; each
    of them whose sequence has its layout at every step is moved there (read or written in
    place, no copy; measured on the LSTM at 200 steps: the copies took 10 of the forward
    loop's ~45 ms and 25-30 of the backward's)."""
    if carry.ndim != 2 or carry.shape[1] != width:
        raise Unsupported("a carry that is not [batch, width]")
    moves = [(buf, seq) for buf, seq in [*pairs, (y, out)]
             if id(buf) in own and movable(buf, seq)]
    if rows is not None:
        try:
            return (*_render_moving(name, reverse, init, carry, out, y, pairs, calls,
                                    kernel_of, moves, rows), True)
        except Unsupported:
            pass
    return (*_render_moving(name, reverse, init, carry, out, y, pairs, calls, kernel_of,
                            moves, None), False)


def _render_moving(name, reverse, init, carry, out, y, pairs, calls, kernel_of, moves, rows):
    """`_render` with as many of `moves` as the body's views allow: each buffer some view of
    which the driver cannot index in its sequence is copied instead."""
    while True:
        try:
            return _render(name, reverse, init, carry, out, y, pairs, calls, kernel_of, moves,
                           rows)
        except Unmovable as err:
            kept = [m for m in moves if id(m[0]) != err.buf]
            if len(kept) == len(moves):
                raise Unsupported(str(err)) from None
            moves = kept


def _render(name, reverse, init, carry, out, y, pairs, calls, kernel_of, moves, rows):
    src = DriverSource(kernel_of, moves, rows)
    moved = {id(buf) for buf, _ in moves}
    at = "t, r0 + " if rows else "t, "     # a row of step t of a sequence

    def by_rows(shape):
        return ("nb", *shape[1:]) if rows else shape
    head = copy_loop(src.array(carry), "", src.array(init), "", by_rows(carry.shape), src.names)
    copies = [line for buf, seq in pairs if id(buf) not in moved
              for line in copy_loop(src.array(buf), "", src._param(seq), at, by_rows(buf.shape),
                                    src.names)]
    for fn, args in calls:
        src.call(fn, args)
    c = src.array(carry)
    if id(y) in moved:   # the next carry is read back from the step's row of the output
        tail = copy_loop(c, "", src._param(out), at, by_rows(carry.shape), src.names)
    else:
        o, yy = src._param(out), src.array(y)
        tail = [*copy_loop(o, at, yy, "", by_rows(y.shape), src.names),
                *copy_loop(c, "", yy, "", by_rows(carry.shape), src.names)]
    params = ", ".join([*src.kernels.values(), *(f"p{k}" for k in range(len(src.args)))])
    t = "steps - 1 - i" if reverse else "i"
    callees = [f"# {k}: {fn.__name__} ({fn.py_func.__module__})"
               for (fn, _), k in src.kernels.items()]
    body = "\n".join(["import numba", "import numpy as np", "",
                      "from nnlang.backends.numba_scan import gemm", "", *callees, "", "",
                      "@numba.njit(cache=True, nogil=True)",
                      f"def {name}(blas, steps, r0, nb, batch, {params}):",
                      "    # the time loop of one scan: step t in, the body's calls, y out",
                      *[f"    {h}" for h in head],
                      "    for i in range(steps):",
                      f"        t = {t}",
                      *[f"        {line}" for line in (*copies, *src.lines, *tail)], ""])
    kernels = [KernelAddress(fn, sig) for fn, sig in src.kernels]
    return body, [*kernels, *src.args], src.dtype
