"""Kernel -> CUDA C source (after `fuse`, the CUDA twin of `render_numba.py`), compiled by
`backends/cupy_backend.py` through NVRTC, or by `nvcc` in the tests.

Sizes and the strides of loads and element outputs are kernel arguments, so one source serves
every batch size and every view layout (an output may be a slice of a concat's buffer).
Elementwise kernels use one thread per output element in a grid-stride loop. Kernels ending in
a reduction use one block per kept (output) element: each thread folds a strided share of the
reduced elements, then a shared-memory tree combines the block's partials (`blockDim.x` must
be a power of two; the launcher picks it).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from nnlang.codegen.kernel import Kernel
from nnlang.codegen.scalar_ops import ScalarLang
from nnlang.ops import registry
from nnlang.ops.reduce import accumulator_dtype

CTYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long",
          "int16": "short", "int8": "signed char", "uint8": "unsigned char", "bool": "bool"}

_device = "__device__ __forceinline__ "


class CudaLang(ScalarLang):
    """CUDA spellings of the neutral scalar ops: float32 math uses the `f` functions."""

    funcs = {"exp": "exp", "expm1": "expm1", "log": "log", "sqrt": "sqrt", "tanh": "tanh",
             "erf": "erf", "abs": "fabs", "sign": "nn_sign", "sigmoid": "nn_sigmoid",
             "max": "fmax", "min": "fmin", "pow": "pow"}
    funcs_f32 = {"exp": "expf", "expm1": "expm1f", "log": "logf", "sqrt": "sqrtf",
                 "tanh": "tanhf", "erf": "erff", "abs": "fabsf", "sigmoid": "nn_sigmoidf",
                 "max": "fmaxf", "min": "fminf", "pow": "powf"}
    funcs_int = {"abs": "nn_abs", "sign": "nn_sign", "max": "nn_max", "min": "nn_min"}
    templates = {"where": "({0} ? {1} : {2})",   # maximum/minimum: see ScalarLang.templates
                 "maximum": "(({0} >= {1} || {0} != {0}) ? {0} : {1})",
                 "minimum": "(({0} <= {1} || {0} != {0}) ? {0} : {1})"}
    dtype_names = CTYPES
    # NOTE: each helper's first two lines are a comment and the signature, as `used_helpers`
    # scans the text after them for calls of other helpers
    helper_module = None
    helpers = {
        # NOTE: 1 / (1 + exp(-x)) as the reference interpreter and torch.sigmoid: exact in the
        # negative tail, where the tanh form cancels; exp's overflow to inf gives the right 0
        "nn_sigmoidf": "// sigmoid (float32)\n" + _device + "float nn_sigmoidf(float x) {\n"
                       "  return 1.0f / (1.0f + expf(-x));\n}\n",
        "nn_sigmoid": "// sigmoid\n" + _device + "double nn_sigmoid(double x) {\n"
                      "  return 1.0 / (1.0 + exp(-x));\n}\n",
        # NOTE: x != x keeps a NaN (np.sign's, the numba backend's); ints never take it
        "nn_sign": "// sign (0 at 0, nan at nan)\ntemplate <class T> " + _device +
                   "T nn_sign(T x) {\n"
                   "  return x != x ? x : (T)((x > (T)0) - (x < (T)0));\n}\n",
        "nn_abs": "// integer abs\ntemplate <class T> " + _device + "T nn_abs(T x) {\n"
                  "  return x < (T)0 ? -x : x;\n}\n",
        "nn_max": "// integer max\ntemplate <class T> " + _device + "T nn_max(T a, T b) {\n"
                  "  return a > b ? a : b;\n}\n",
        "nn_min": "// integer min\ntemplate <class T> " + _device + "T nn_min(T a, T b) {\n"
                  "  return a < b ? a : b;\n}\n",
    }

    def cast(self, x: str, dtype: str) -> str:
        return f"(({x}) != 0)" if dtype == "bool" else f"(({CTYPES[dtype]})({x}))"

    def literal(self, value, dtype: str) -> str:
        if dtype == "bool":
            return "true" if bool(value) else "false"
        if dtype.startswith(("int", "uint")):
            suffix = "LL" if dtype == "int64" else ""
            if dtype in ("int32", "int64") and int(value) == np.iinfo(dtype).min:
                # NOTE: -2147483648 is the negation of an out-of-range literal in C
                return f"(({CTYPES[dtype]})({int(value) + 1}{suffix} - 1))"
            return f"(({CTYPES[dtype]}){int(value)}{suffix})"
        v = float(value)
        if not math.isfinite(v):
            text = "NAN" if math.isnan(v) else ("INFINITY" if v > 0 else "-INFINITY")
            return text if dtype == "float32" else f"((double){text})"
        # NOTE: repr of a float32 value read back as a float literal is that exact value
        return f"{v!r}f" if dtype == "float32" else repr(v)

    def reduce_step(self, op: str, acc: str, v: str, dtype: str = "float32") -> str:
        if op == "sum":
            return f"{acc} += {v};"
        if dtype in ("float32", "float64"):
            # NOTE: fmaxf/fminf drop a NaN; np.max/np.min (the reductions' impl) and
            # torch.amax/amin keep it
            return f"{acc} = {self.keep_nan(op, acc, v)};"
        return f"{acc} = nn_{op}({acc}, {v});"

    def expr(self, op: str, template: str, args: list[str], dtype: str, in_dtypes) -> str:
        if op == "cast":
            return self.cast(args[0], dtype)
        # NOTE: numpy computes a mixed op in the result dtype (int + float32 in float32), so
        # float results cast their odd operands first; C would divide two ints as ints
        if registry.is_float(dtype):
            offset = len(args) - len(in_dtypes)  # `where` lists no dtype for its condition
            args = [a if i < offset or in_dtypes[i - offset] == dtype else self.cast(a, dtype)
                    for i, a in enumerate(args)]
        template = self.templates.get(op, template)
        funcs = {"float32": {**self.funcs, **self.funcs_f32}, "float64": self.funcs}.get(
            dtype, {**self.funcs, **self.funcs_int})
        if op in ("abs", "sign", "maximum", "minimum") and not registry.is_float(in_dtypes[0]):
            funcs = {**self.funcs, **self.funcs_int}
        text = re.sub(r"\b([a-z_][a-z0-9_]*)\(",
                      lambda m: funcs.get(m.group(1), m.group(1)) + "(", template)
        text = text.format(*args)
        if dtype == "bool" or registry.is_float(dtype):
            return text
        return self.cast(text, dtype)


CUDA = CudaLang()

PRELUDE = ("#ifndef NN_CUDA_PRELUDE\n#define NN_CUDA_PRELUDE\n"
           "// NVRTC has no <math.h>: spell the special float values as bit patterns\n"
           "#ifndef INFINITY\n#define INFINITY __int_as_float(0x7f800000)\n#endif\n"
           "#ifndef NAN\n#define NAN __int_as_float(0x7fffffff)\n#endif\n#endif\n")

_META = re.compile(r"^// nnlang: (.*)$", re.M)


@dataclass(frozen=True)
class LaunchInfo:
    """What a launcher needs to know about a kernel, kept in its source's `// nnlang:` line."""
    rank: int
    loads: int
    outputs: int                    # output arguments: element stores not made in place, and
                                    # the reduction's output when any
    reduce_axes: tuple[int, ...] = ()
    acc_bytes: int = 0              # shared memory per thread of a reduction

    def line(self) -> str:
        axes = ",".join(map(str, self.reduce_axes)) or "-"
        return (f"// nnlang: rank={self.rank} loads={self.loads} outputs={self.outputs} "
                f"reduce={axes} acc_bytes={self.acc_bytes}")

    @staticmethod
    def parse(source: str) -> "LaunchInfo":
        m = _META.search(source)
        if m is None:
            raise ValueError("not an nnlang CUDA kernel (no '// nnlang:' line)")
        kv = dict(item.split("=") for item in m.group(1).split())
        axes = () if kv["reduce"] == "-" else tuple(int(a) for a in kv["reduce"].split(","))
        return LaunchInfo(int(kv["rank"]), int(kv["loads"]), int(kv["outputs"]), axes,
                          int(kv["acc_bytes"]))


def _acc_dtype(k: Kernel) -> str:
    return accumulator_dtype(k.reduce.op, k.reduce.dtype)


@dataclass(frozen=True)
class MultiTensor:
    """A 1-d elementwise kernel launched once over several tensors (`passes/multi_tensor.py`):
    each array parameter is a table of device pointers, one per tensor, and `nn_starts` holds
    the tensors' offsets in the combined element range (one entry more than tensors). The
    optimizer update of every parameter is one such launch, as in apex's multi_tensor_apply."""
    kernel: Kernel
    reduce = None   # NOTE: class attributes, so code that takes a Kernel reads these too

    @property
    def name(self) -> str:
        return f"{self.kernel.name}_multi"

    @property
    def header(self) -> list[str]:
        return self.kernel.header


def _output_ctypes(k: Kernel) -> list[tuple[str, str]]:
    """(C type, argument) of each element output with an argument of its own: a store into a
    loaded array (an in-place state update) writes through that load's pointer instead."""
    dtypes = {op.out: op.dtype for op in k.body}
    dtypes.update({name: ld.dtype for name, ld in k.loads.items()})
    dtypes.update({name: dtype for name, _, dtype in k.consts})
    written = _in_place_args(k)
    return [(CTYPES[dtypes[value]], arg) for value, arg in k.stores if arg not in written]


def _in_place_args(k: Kernel) -> set[str]:
    return {arg for _, arg in k.stores} & {ld.arg for ld in k.loads.values()}


def params(k: Kernel | MultiTensor) -> list[tuple[str, str]]:
    """(C type, name) of every kernel parameter: sizes, each load and its strides, outputs; for
    a multi-tensor launch the tensor count, their starts and a pointer table per array.

    NOTE: a load that is also stored to (an in-place update) loses `const`; it keeps
    `__restrict__`, since the kernel reaches that memory through no other pointer."""
    multi = isinstance(k, MultiTensor)
    k = k.kernel if multi else k
    written = _in_place_args(k)

    def load_type(ld):
        return f"{'' if ld.arg in written else 'const '}{CTYPES[ld.dtype]}*"
    if multi:
        return ([("int", "n_tensors"), ("const long long* __restrict__", "nn_starts")]
                + [(f"{load_type(ld)} const* __restrict__", ld.arg) for ld in k.loads.values()]
                + [(f"{t}* const* __restrict__", arg) for t, arg in _output_ctypes(k)])
    out = [("int", f"n{a}") for a in range(k.loop_rank)]
    for ld in k.loads.values():
        out.append((f"{load_type(ld)} __restrict__", ld.arg))
        out += [("int", f"{ld.arg}_s{a}") for a in range(k.loop_rank)]
    # NOTE: element outputs take strides too: one may be a slice of a concat's buffer
    for t, arg in _output_ctypes(k):
        out.append((f"{t}* __restrict__", arg))
        out += [("int", f"{arg}_s{a}") for a in range(k.loop_rank)]
    if k.reduce:
        out.append((f"{CTYPES[k.reduce.dtype]}* __restrict__", k.reduce.arg))
    return out


def _decode(axes: list[int], flat: str, pad: str) -> list[str]:
    """Row-major indices i<axis> of `flat` over the loop sizes of `axes`."""
    if not axes:
        return []
    lines = [f"{pad}int {flat}_r = {flat};"]
    for a in reversed(axes[1:]):
        lines.append(f"{pad}const int i{a} = {flat}_r % n{a}; {flat}_r /= n{a};")
    lines.append(f"{pad}const int i{axes[0]} = {flat}_r;")
    return lines


def _strided_load(k: Kernel, ld) -> str:
    terms = [f"i{a} * {ld.arg}_s{a}" for a in range(k.loop_rank) if not ld.broadcast[a]]
    return f"{ld.arg}[{' + '.join(terms) or '0'}]"


def _strided_store(k: Kernel, arg: str) -> str:
    return f"{arg}[{' + '.join(f'i{a} * {arg}_s{a}' for a in range(k.loop_rank))}]"


def _element(k: Kernel, pad: str, load=_strided_load, store=_strided_store) -> list[str]:
    """Loads, the SSA body and the element stores at the current loop index (`load` and
    `store` spell the addresses)."""
    lines = []
    for name, ld in k.loads.items():
        lines.append(f"{pad}const {CTYPES[ld.dtype]} {name} = {load(k, ld)};")
    for op in k.body:
        rhs = CUDA.expr(op.op, registry.get(op.op).expr, list(op.args), op.dtype, op.in_dtypes)
        lines.append(f"{pad}const {CTYPES[op.dtype]} {op.out} = {rhs};")
    for value, arg in k.stores:
        lines.append(f"{pad}{store(k, arg)} = {value};")
    return lines


def _render_multi(m: MultiTensor) -> str:
    k = m.kernel
    if k.loop_rank != 1 or k.reduce is not None:
        raise ValueError(f"a multi-tensor launch needs a 1-d elementwise kernel, not {k.name}")
    sig = ",\n    ".join(f"{t} {n}" for t, n in params(m))
    lines = [f'extern "C" __global__ void {m.name}(\n    {sig}) {{']
    for name, value, dtype in k.consts:
        lines.append(f"  const {CTYPES[dtype]} {name} = {CUDA.literal(value, dtype)};")
    # NOTE: 64-bit element indices: the tensors together may hold more than 2**31 elements
    lines += ["  const long long total = nn_starts[n_tensors];",
              "  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;"
              " e += (long long)gridDim.x * blockDim.x) {",
              "    // the tensor holding element e: the last one starting at or before it",
              "    int t = 0;",
              "    for (int hi = n_tensors - 1; t < hi;) {",
              "      const int mid = (t + hi + 1) / 2;",
              "      if (nn_starts[mid] <= e) t = mid; else hi = mid - 1;",
              "    }",
              "    const long long i0 = e - nn_starts[t];"]
    # NOTE: members are contiguous vectors (multi_tensor.flat_group), so no strides
    lines += _element(k, "    ",
                      load=lambda k, ld: f"{ld.arg}[t][{'0' if ld.broadcast[0] else 'i0'}]",
                      store=lambda k, arg: f"{arg}[t][i0]")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def render_function(k: Kernel | MultiTensor) -> str:
    """The `extern "C" __global__` function alone (no prelude or helpers)."""
    if isinstance(k, MultiTensor):
        return _render_multi(k)
    sig = ",\n    ".join(f"{t} {n}" for t, n in params(k))
    lines = [f'extern "C" __global__ void {k.name}(\n    {sig}) {{']
    for name, value, dtype in k.consts:
        lines.append(f"  const {CTYPES[dtype]} {name} = {CUDA.literal(value, dtype)};")
    axes = list(range(k.loop_rank))
    if k.reduce is None:
        total = " * ".join(f"n{a}" for a in axes)
        lines += [f"  const int total = {total};",
                  "  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total;"
                  " e += gridDim.x * blockDim.x) {"]
        lines += _decode(axes, "e", "    ")
        lines += _element(k, "    ")
        lines.append("  }")
    else:
        red = sorted(k.reduce.axes)
        kept = [a for a in axes if a not in red]
        acc_t = CTYPES[_acc_dtype(k)]
        init = CUDA.reduce_init(k.reduce.op, _acc_dtype(k))
        n_out = " * ".join(f"n{a}" for a in kept) or "1"
        n_red = " * ".join(f"n{a}" for a in red)
        lines += ["  extern __shared__ unsigned char nn_smem[];",
                  f"  {acc_t}* partial = reinterpret_cast<{acc_t}*>(nn_smem);",
                  f"  const int n_out = {n_out};",
                  f"  const int n_red = {n_red};",
                  "  for (int o = blockIdx.x; o < n_out; o += gridDim.x) {"]
        lines += _decode(kept, "o", "    ")
        lines += [f"    {acc_t} acc = {init};",
                  "    for (int r = threadIdx.x; r < n_red; r += blockDim.x) {"]
        lines += _decode(red, "r", "      ")
        lines += _element(k, "      ")
        acc_dtype = _acc_dtype(k)
        lines.append(f"      {CUDA.reduce_step(k.reduce.op, 'acc', k.reduce.value, acc_dtype)}")
        step = CUDA.reduce_step(k.reduce.op, "partial[threadIdx.x]",
                                "partial[threadIdx.x + s]", acc_dtype)
        lines += ["    }",
                  "    partial[threadIdx.x] = acc;",
                  "    __syncthreads();",
                  "    for (int s = blockDim.x / 2; s > 0; s >>= 1) {",
                  f"      if (threadIdx.x < s) {step}",
                  "      __syncthreads();",
                  "    }",
                  "    if (threadIdx.x == 0) "
                  f"{k.reduce.arg}[o] = {CUDA.cast('partial[0]', k.reduce.dtype)};",
                  "    __syncthreads();  // partial[] is reused by the next output",
                  "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def launch_info(k: Kernel | MultiTensor) -> LaunchInfo:
    if isinstance(k, MultiTensor):
        return LaunchInfo(1, len(k.kernel.loads), len(_output_ctypes(k.kernel)))
    acc = np.dtype(_acc_dtype(k)).itemsize if k.reduce else 0
    return LaunchInfo(k.loop_rank, len(k.loads), len(_output_ctypes(k)) + bool(k.reduce),
                      tuple(sorted(k.reduce.axes)) if k.reduce else (), acc)


def render_parts(k: Kernel | MultiTensor) -> tuple[list[str], str]:
    """(helper definitions used, the kernel function with its `// nnlang:` line)."""
    fn = launch_info(k).line() + "\n" + render_function(k)
    return CUDA.used_helpers(fn), fn


def render_body(k: Kernel | MultiTensor) -> str:
    """One self-contained CUDA source: prelude, helpers and the kernel (the unit cached)."""
    helpers, fn = render_parts(k)
    return PRELUDE + "".join("\n" + h for h in helpers) + "\n" + fn


def render_header(k: Kernel | MultiTensor) -> str:
    return "".join(f"// {line}\n" for line in ["computes:"] + ["  " + h for h in k.header])


def render(k: Kernel | MultiTensor, loop_shape=None) -> tuple[str, str]:
    """(header comment, source) for one kernel; the signature of `render_numba.render`."""
    return render_header(k), render_body(k)


# *** rendered kernels as a render-only CuPy backend records them (`nvcc` tests, --emit) ***

@dataclass(frozen=True)
class CudaSource:
    kernel: Kernel | MultiTensor
    loop_shape: tuple[int, ...]     # the sizes this graph launches it with (a multi-tensor
    header: str                     # launch: each tensor's size)
    source: str


def multi_tensor(kernels: list[Kernel]) -> MultiTensor | None:
    """The one launch for a multi-tensor step's member kernels, or None when they render
    differently (then each runs on its own)."""
    if len({render_function(k) for k in kernels}) != 1:
        return None
    return MultiTensor(kernels[0])


def module_source(kernels: list[Kernel]) -> tuple[str, list[str]]:
    """One translation unit holding each distinct kernel once (helpers once, names made unique
    by numbering): (source, the kernel name per input kernel)."""
    helpers: list[str] = []
    fns: dict[str, str] = {}
    names = []
    for k in kernels:
        used, fn = render_parts(k)
        helpers += [h for h in used if h not in helpers]
        if fn not in fns:
            fns[fn] = f"{k.name}_{len(fns)}"
        names.append(fns[fn])
    first = {render_parts(k)[1]: k.name for k in reversed(kernels)}
    body = [fn.replace(f" {first[fn]}(\n", f" {name}(\n", 1) for fn, name in fns.items()]
    return PRELUDE + "".join("\n" + h for h in helpers) + "".join("\n" + b for b in body), names


# *** launch configuration, shared by the CuPy launcher and the host harness ***

BLOCK = 256


def launch_config(info: LaunchInfo, sizes, max_blocks: int) -> tuple[int, int, int]:
    """(grid, block, shared bytes) for loop `sizes`; grid 0 means nothing to do."""
    total = math.prod(sizes)
    if total == 0:
        return 0, 1, 0
    if not info.reduce_axes:
        return min(-(-total // BLOCK), max_blocks), BLOCK, 0
    n_red = math.prod(sizes[a] for a in info.reduce_axes)
    n_out = total // n_red
    # NOTE: a power of two (the tree halves it), no wider than the rows are long; one output
    # that is long (a norm of a whole weight) gets a full block of 1024
    block = 1 << max(5, min(8, (n_red - 1).bit_length()))
    if n_out < 8 and n_red >= 1 << 14:
        block = 1024
    return min(n_out, max_blocks), block, block * info.acc_bytes
