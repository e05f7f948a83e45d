"""A scan's time loop as generated numba code (runtime/scan.py asks for it): one `@njit` driver
per scan body that copies step t in, calls the body's GEMMs and fused kernels, and stores the
step's output, so the loop costs no Python per step.

GEMMs go straight to the BLAS numpy ships (its `cblas_?gemm`), passed to the driver as a ctypes
function: numba's own np.dot needs scipy, and a ctypes function baked in as a global would
keep numba from caching the driver on disk (one passed as an argument caches fine).
"""
from __future__ import annotations

import ctypes

import numba
import numpy as np

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


class Unsupported(Exception):
    """A body call the driver cannot express: the runtime keeps the Python loop."""


def copy_loop(dst: str, dst_at: str, src: str, src_at: str, shape) -> list[str]:
    """Lines copying src[src_at, ...] into dst[dst_at, ...] element by element over `shape`.
    NOTE: numba's array assignment (`dst[...] = src`) compiles a broadcasting implementation
    per pair of types (~1 s each) and the string formatting of its error message: ~9 s of the
    LSTM's two cold drivers; these loops compile in milliseconds and run as fast."""
    if not shape:
        raise Unsupported("a 0-d copy")
    idx = [f"j{k}" for k in range(len(shape))]
    lines = [f"{'    ' * k}for {j} in range({n}):" for k, (j, n) in enumerate(zip(idx, shape))]
    at = ", ".join(idx)
    lines.append(f"{'    ' * len(shape)}{dst}[{dst_at}{at}] = {src}[{src_at}{at}]")
    return lines


class DriverSource:
    """Collects the driver's arguments and lines from the body's prebound calls."""

    def __init__(self, kernel_of):
        self.kernel_of = kernel_of        # compiled entry -> its numba dispatcher
        self.args: list = []              # the driver's array arguments, p0, p1, ...
        self._ids: dict[int, str] = {}
        self.kernels: dict = {}           # dispatcher -> global name in the driver module
        self.lines: list[str] = []
        self.dtype = None

    def array(self, x: np.ndarray) -> str:
        if id(x) not in self._ids:
            self._ids[id(x)] = f"p{len(self.args)}"
            self.args.append(x)
        return self._ids[id(x)]

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
            self.lines += copy_loop(self.array(dst), "", self.array(src), "", dst.shape)
        elif fn in self.kernel_of:
            disp = self.kernel_of[fn]
            name = self.kernels.setdefault(disp, f"k{len(self.kernels)}")
            self.lines.append(f"{name}({', '.join(self.value(a) for a in args)})")
        else:
            raise Unsupported(getattr(fn, "__name__", repr(fn)))

    def gemm(self, a, b, out) -> None:
        la, lb, lo = gemm_layout(a), gemm_layout(b), gemm_layout(out)
        if la is None or lb is None or lo is None or lo[0] or \
                not a.dtype == b.dtype == out.dtype or a.dtype.name not in ("float32", "float64"):
            raise Unsupported("a GEMM operand BLAS cannot read in place")
        if self.dtype not in (None, a.dtype.name):
            raise Unsupported("GEMMs of two dtypes")
        self.dtype = a.dtype.name
        ints = [self.value(int(v)) for v in (la[0], la[1], lb[0], lb[1], lo[1])]
        self.lines.append(f"gemm(blas, {self.array(a)}, {ints[0]}, {ints[1]}, "
                          f"{self.array(b)}, {ints[2]}, {ints[3]}, {self.array(out)}, {ints[4]})")


def render_driver(name: str, steps: int, reverse: bool, width: int, init, carry, out, y,
                  pairs, calls, kernel_of) -> tuple[str, list, str | None]:
    """(module source, the driver's arguments after `blas` and `steps`, the GEMM dtype or
    None); raises Unsupported when some call cannot be generated. The length is an argument,
    so one compiled driver serves every sequence length."""
    if carry.ndim != 2 or carry.shape[1] != width:
        raise Unsupported("a carry that is not [batch, width]")
    src = DriverSource(kernel_of)
    head = copy_loop(src.array(carry), "", src.array(init), "", carry.shape)
    copies = [line for buf, seq in pairs
              for line in copy_loop(src.array(buf), "", src.array(seq), "t, ", buf.shape)]
    for fn, args in calls:
        src.call(fn, args)
    o, yy, c = src.array(out), src.array(y), src.array(carry)
    tail = [*copy_loop(o, "t, ", yy, "", y.shape), *copy_loop(c, "", yy, "", carry.shape)]
    params = ", ".join(f"p{k}" for k in range(len(src.args)))
    t = "steps - 1 - i" if reverse else "i"
    imports = [f"{k} = sys.modules[{d.py_func.__module__!r}].{d.__name__}"
               for d, k in src.kernels.items()]
    body = "\n".join(["import sys", "", "import numba", "import numpy as np", "",
                      "from nnlang.backends.numba_scan import gemm", "", *imports, "", "",
                      "@numba.njit(cache=True, nogil=True)",
                      f"def {name}(blas, steps, {params}):",
                      "    # the time loop of one scan: step t in, the body's calls, y out",
                      *[f"    {h}" for h in head],
                      "    for i in range(steps):",
                      f"        t = {t}",
                      *[f"        {line}" for line in (*copies, *src.lines, *tail)], ""])
    return body, src.args, src.dtype
