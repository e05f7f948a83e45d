"""The generated CUDA kernels run on the CPU: the exact source `render_cuda` emits is compiled
as host C++ with the CUDA built-ins emulated (`host_cuda.py`), launched with the backend's own
`launch_config`, and compared with a numpy evaluation of the same kernel description (each
op's registry `impl`, the semantics the reference interpreter uses). Runs without a GPU.

What this cannot show: warp scheduling, memory coalescing and NVRTC specifics; those are the
`@pytest.mark.gpu` tests' job.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnlang.backends.cupy_backend import CupyBackend
from nnlang.codegen.render_cuda import (MultiTensor, launch_config, launch_info,
                                        module_source, params)
from nnlang.ops import index, movement, registry, windows
from nnlang.ops.random import (_normal_impl, _uniform_impl, normal_cuda_source,
                               uniform_cuda_source)
from tests.golden_values import models
from tests.gpu import host_cuda
from tests.gpu.host_cuda import launch
from tests.gpu.test_nvcc import model_sources, op_sources

RB = CupyBackend(render_only=True)  # what the library kernels' sources ask (C types, prelude)

MAX_BLOCKS = 3  # few blocks, so every grid-stride loop goes round more than once


def build(host_cxx, tmp_path, stem, source, kernels):
    try:
        return host_cuda.build(host_cxx, tmp_path, stem, source, kernels)
    except RuntimeError as e:
        pytest.fail(str(e))


# *** a numpy evaluation of a kernel description: the expected values ***

def _random_input(rng, shape, dtype):
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("int"):
        return rng.integers(0, 3, size=shape).astype(dtype)
    # NOTE: positive and away from 0, so log, sqrt, pow and div stay finite in every kernel
    return rng.uniform(0.5, 2.0, size=shape).astype(dtype)


def evaluate(k, loop_shape, inputs: dict) -> dict:
    env = dict(inputs)
    for name, value, dtype in k.consts:
        env[name] = np.asarray(value, dtype)
    for op in k.body:
        impl = registry.get(op.op).impl
        xs = [env[a] for a in op.args]
        with np.errstate(all="ignore"):
            out = impl(*xs, dtype=op.dtype) if op.op == "cast" else impl(*xs)
        env[op.out] = np.broadcast_to(np.asarray(out).astype(op.dtype), loop_shape)
    result = {arg: np.broadcast_to(env[v], loop_shape) for v, arg in k.stores}
    if k.reduce:
        v = np.broadcast_to(env[k.reduce.value], loop_shape).astype(np.float64)
        fn = {"sum": np.sum, "max": np.max, "min": np.min}[k.reduce.op]
        result[k.reduce.arg] = fn(v, axis=k.reduce.axes).astype(k.reduce.dtype)
    return result


# NOTE: the emulated threads of a reducing block meet at a barrier several times per output,
# which is slow on a small CPU; the kernels are generic in sizes, so all but the MLP run with
# each loop size capped (a size > 1 stays > 1, so the broadcast pattern is the model's)
CAP = {"mlp": None}


@pytest.mark.parametrize("model", models())
def test_model_kernels_run_on_the_host(model, host_cxx, tmp_path):
    """Every distinct fused kernel of the model's train graph."""
    sources = model_sources(model)
    cap = CAP.get(model, 7)
    shapes = [tuple(min(d, cap) if cap else d for d in s.loop_shape) for s in sources]
    seen = run_kernels(host_cxx, tmp_path, model, [(model, s) for s in sources], shapes)
    print(f"{model}: {seen} distinct kernel launches checked on the host")


def test_every_op_sample_kernel_runs_on_the_host(host_cxx, tmp_path):
    """Every distinct fused kernel of every op's samples, forward and backward, in float32 and
    float64: a new op's kernels are checked here by existing."""
    kernels, _ = op_sources()
    seen = run_kernels(host_cxx, tmp_path, "ops", kernels, [s.loop_shape for _, s in kernels])
    print(f"{seen} distinct kernel launches checked on the host")


def run_kernels(host_cxx, tmp_path, stem: str, sources, shapes) -> int:
    """Each distinct (kernel, loop shape) of `sources` [(what, CudaSource)] built in one
    library and run on `shapes`, against `evaluate`; returns how many ran."""
    kernels = [s.kernel for _, s in sources]
    source, names = module_source(kernels)
    lib = build(host_cxx, tmp_path, stem, source,
                {n: [t for t, _ in params(k)] for k, n in zip(kernels, names)})
    rng = np.random.default_rng(0)
    seen = set()
    for (what, _), k, name, shape in zip(sources, kernels, names, shapes):
        if (name, shape) in seen:
            continue
        seen.add((name, shape))
        if isinstance(k, MultiTensor):
            _check_multi(lib, name, k, shape, rng, f"{what} {name}")
            continue
        _check_kernel(lib, name, k, shape, rng, what)
    return len(seen)


def _check_kernel(lib, name: str, k, shape, rng, what: str) -> None:
    inputs, args = {}, [np.int32(d) for d in shape]
    for sname, ld in k.loads.items():
        x = _random_input(rng, tuple(1 if b else d for b, d in zip(ld.broadcast, shape)),
                          ld.dtype)
        inputs[sname] = x
        args += [x] + [np.int32(s // x.itemsize) for s in x.strides]
    want = {a: np.array(v) for a, v in evaluate(k, shape, inputs).items()}
    outs, bases = {}, []
    for _, arg in k.stores:
        if arg in in_place_loads(k):  # NOTE: a state update, stored into its load
            outs[arg] = inputs[in_place_loads(k)[arg]]
            continue
        outs[arg], base = _row_padded(shape, want[arg].dtype)
        bases.append(base)
        args += [base] + [np.int32(s // base.itemsize) for s in outs[arg].strides]
    if k.reduce:
        outs[k.reduce.arg] = np.zeros(want[k.reduce.arg].shape, k.reduce.dtype)
        args.append(outs[k.reduce.arg])
    grid, block, _ = launch_config(launch_info(k), shape, MAX_BLOCKS)
    launch(lib, name, grid, block, args)
    for arg, got in outs.items():
        np.testing.assert_allclose(got, want[arg], rtol=1e-4, atol=1e-5, equal_nan=True,
                                   err_msg=f"{what} {name} {arg} loop {shape}\n"
                                           + "".join(k.header))
    for base in bases:  # NOTE: nothing stored outside the output's own elements
        if shape:
            pad = base[..., shape[-1]:]
            assert np.array_equal(pad, np.full(pad.shape, _SENTINEL[pad.dtype.kind], pad.dtype),
                                  equal_nan=pad.dtype.kind == "f"), (name, shape)


_SENTINEL = {"f": np.nan, "i": -7, "u": 7, "b": True}


def in_place_loads(k) -> dict[str, str]:
    """{argument: SSA name of its load} for the stores an in-place update makes into a load."""
    by_arg = {ld.arg: name for name, ld in k.loads.items()}
    return {arg: by_arg[arg] for _, arg in k.stores if arg in by_arg}


def _row_padded(shape, dtype):
    """An output as the leading columns of a wider buffer filled with a sentinel (a concat
    piece's layout): (the view, its buffer, passed with the view's strides as CuPy passes a
    view's pointer)."""
    if not shape:
        out = np.zeros(shape, dtype)
        return out, out
    base = np.full((*shape[:-1], shape[-1] + 3), _SENTINEL[np.dtype(dtype).kind], dtype)
    return base[..., :shape[-1]], base


def _check_multi(lib, name: str, m: MultiTensor, sizes, rng, what: str) -> None:
    """One multi-tensor launch over tensors of `sizes`, each compared with the numpy
    evaluation of the member kernel on that tensor alone."""
    k = m.kernel
    tensors = []
    written = in_place_loads(k)
    for n in sizes:
        inputs = {s: _random_input(rng, (1,) if ld.broadcast[0] else (n,), ld.dtype)
                  for s, ld in k.loads.items()}
        want = {a: np.array(v) for a, v in evaluate(k, (n,), inputs).items()}
        outs = {arg: inputs[written[arg]] if arg in written else
                np.full(n, np.nan, want[arg].dtype) for _, arg in k.stores}
        tensors.append((inputs, want, outs))

    def table(arrays):
        return np.array([a.ctypes.data for a in arrays], np.uint64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    args = [np.int32(len(sizes)), starts]
    args += [table([t[0][s] for t in tensors]) for s in k.loads]
    args += [table([t[2][arg] for t in tensors]) for _, arg in k.stores if arg not in written]
    grid, block, _ = launch_config(launch_info(m), [int(starts[-1])], MAX_BLOCKS)
    launch(lib, name, grid, block, args)
    for i, (_, want, outs) in enumerate(tensors):
        for arg, got in outs.items():
            np.testing.assert_allclose(got, want[arg], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{what} tensor {i} of {list(sizes)}: {arg}")


def test_multi_tensor_launch(host_cxx, tmp_path):
    """Tensors of several sizes (an empty one too) in one launch whose grid-stride loop crosses
    from tensor to tensor, with a scalar load broadcast to every element."""
    from nnlang.codegen.kernel import Kernel, Load, ScalarOp
    k = Kernel("k_axpy", 1, {"a0": Load("in0", "float32", (False,)),
                             "a1": Load("in1", "float32", (True,))},
               [("c0", 2.0, "float32")],
               [ScalarOp("v0", "mul", ("a0", "a1"), "float32", ("float32", "float32")),
                ScalarOp("v1", "add", ("v0", "c0"), "float32", ("float32", "float32"))],
               [("v0", "out0"), ("v1", "out1")])
    m = MultiTensor(k)
    source, names = module_source([m])
    lib = build(host_cxx, tmp_path, "multi", source, {names[0]: [t for t, _ in params(m)]})
    rng = np.random.default_rng(4)
    for sizes in ([5, 0, 300, 1, 77], [1], [0, 2000]):
        _check_multi(lib, names[0], m, sizes, rng, "k_axpy")


def test_strided_and_broadcast_loads(host_cxx, tmp_path):
    """Loads through transposed and sliced views (strides are kernel arguments)."""
    from nnlang.codegen.kernel import Kernel, Load, ScalarOp
    k = Kernel("k_strided", 2, {"a0": Load("in0", "float32", (False, False)),
                                "a1": Load("in1", "float32", (True, False))},
               [], [ScalarOp("v0", "mul", ("a0", "a1"), "float32", ("float32", "float32"))],
               [("v0", "out0")])
    source, names = module_source([k])
    lib = build(host_cxx, tmp_path, "strided", source, {names[0]: [t for t, _ in params(k)]})
    rng = np.random.default_rng(1)
    base = rng.normal(size=(7, 10)).astype(np.float32)
    x = base.T[::2]                                  # (5, 7), strides (2, 10) elements
    row = rng.normal(size=(1, 7)).astype(np.float32)
    out = np.zeros((5, 7), np.float32)
    # NOTE: pass the base buffer with the view's strides, as CuPy passes a view's pointer
    args = [np.int32(5), np.int32(7), base, np.int32(2), np.int32(10), row, np.int32(7),
            np.int32(1), out, np.int32(7), np.int32(1)]
    launch(lib, names[0], 2, 4, args)
    np.testing.assert_array_equal(out, x * row)


def test_library_kernels_on_the_host(host_cxx, tmp_path):
    parts = {"gather": index.gather_cuda_source(RB, "float32", "int32"),
             "scatter": index.scatter_add_cuda_source(RB, "float32", "int64"),
             "one_hot": index.one_hot_cuda_source(RB, "float32", "int32"),
             "random": uniform_cuda_source(RB), "normal": normal_cuda_source(RB)}
    ptypes = {
        parts["gather"][0]: ["long long"] * 3 + ["const float*", "const int*", "float*",
                                                 "long long*"],
        parts["scatter"][0]: ["long long"] * 3 + ["const float*", "const long long*", "float*",
                                                  "long long*"],
        parts["one_hot"][0]: ["long long"] * 2 + ["const int*", "float*"],
        parts["random"][0]: ["long long", "const long long*", "unsigned long long", "float*"],
        parts["normal"][0]: ["long long", "const long long*", "unsigned long long",
                             "unsigned long long", "float*"]}
    lib = build(host_cxx, tmp_path, "library", "".join(s for _, s in parts.values()), ptypes)
    rng = np.random.default_rng(2)

    table = rng.normal(size=(6, 4)).astype(np.float32)
    idx = np.array([[0, 5, -1], [2, -6, 3]], np.int32)   # -1 and -6 count from the end
    out = np.zeros((2, 3, 4), np.float32)
    bad = np.zeros(1, np.int64)
    launch(lib, parts["gather"][0], 2, 8, [np.int64(24), np.int64(4), np.int64(6), table, idx, out,
                                           bad])
    np.testing.assert_array_equal(out, table[idx])
    assert bad[0] == 0
    # NOTE: ids numpy refuses (7, -7 of 6 rows) set the fault flag and read no row (they
    # wrapped into the table before); their rows of `out` keep what they held
    idx = np.array([[0, 7, 1], [2, -7, 3]], np.int32)
    out = np.full((2, 3, 4), 9, np.float32)
    launch(lib, parts["gather"][0], 2, 8, [np.int64(24), np.int64(4), np.int64(6), table, idx, out,
                                           bad])
    assert bad[0] == 1
    np.testing.assert_array_equal(out[:, 1], 9)
    np.testing.assert_array_equal(out[[0, 1, 0, 1], [0, 0, 2, 2]], table[[0, 2, 1, 3]])

    src = rng.normal(size=(5, 3)).astype(np.float32)
    sidx = np.array([1, 1, 0, 3, -1], np.int64)
    got = np.zeros((4, 3), np.float32)
    bad = np.zeros(1, np.int64)
    launch(lib, parts["scatter"][0], 2, 4, [np.int64(15), np.int64(3), np.int64(4), src, sidx, got,
                                            bad])
    want = np.zeros((4, 3), np.float32)
    np.add.at(want, sidx, src)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert bad[0] == 0
    # NOTE: an id past the rows added into memory after `out`; now it flags and adds nothing
    wide = np.zeros((6, 3), np.float32)   # `got` is its first 4 rows; 2 rows past them
    launch(lib, parts["scatter"][0], 2, 4, [np.int64(15), np.int64(3), np.int64(4), src,
                                            np.array([1, 4, 0, 3, 5], np.int64), wide[:4], bad])
    assert bad[0] == 1
    np.testing.assert_array_equal(wide[4:], 0)

    hot_idx = np.array([0, 3, 9, -1], np.int32)
    hot = np.full((4, 4), 7, np.float32)
    launch(lib, parts["one_hot"][0], 1, 8, [np.int64(16), np.int64(4), hot_idx, hot])
    np.testing.assert_array_equal(hot, (hot_idx[:, None] == np.arange(4)).astype(np.float32))

    for key, salt in ((0, 0), (123456789, 3), (-5, 7), (2**62 + 11, 1)):
        got = np.zeros(1000, np.float32)
        salt_term = np.uint64((salt * 0x9E3779B1) & ((1 << 64) - 1))
        launch(lib, parts["random"][0], 3, 64, [np.int64(1000), np.int64(key), salt_term, got])
        np.testing.assert_array_equal(got, _uniform_impl(np.int64(key), shape=(1000,), salt=salt))
        # random_normal: the same draws as impl (libm and numpy may differ in the last bit of
        # a float64 log or cos), and an offset (a rank's first row) shifts the stream
        for offset in (0, 500):
            got = np.zeros(1000, np.float32)
            launch(lib, parts["normal"][0], 3, 64, [np.int64(1000), np.int64(key), salt_term,
                                                    np.uint64(offset), got])
            want = _normal_impl(np.int64(key), shape=(1500,), salt=salt)[offset:offset + 1000]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis, widths", [(1, [3, 0, 1, 5]),   # an empty piece in between
                                         (0, [2, 1]), (2, [1] * 11), (1, [0, 4])])
def test_concat_kernel_on_the_host(axis, widths, host_cxx, tmp_path):
    name, source = movement.concat_cuda_source(RB, "float32")
    lib = build(host_cxx, tmp_path, "concat", source,
                {name: ["long long", "long long", "int", "const long long*",
                        "const float* const*", "float*"]})
    rng = np.random.default_rng(8)
    base = [3, 2, 4]
    xs = [rng.normal(size=[w if a == axis else d for a, d in enumerate(base)]).astype(np.float32)
          for w in widths]
    want = np.concatenate(xs, axis=axis)
    inner = int(np.prod(want.shape[axis + 1:]))
    starts = np.concatenate([[0], np.cumsum([x.shape[axis] * inner for x in xs])]).astype(np.int64)
    table = np.array([x.ctypes.data for x in xs], np.uint64)
    got = np.full(want.shape, np.nan, np.float32)
    launch(lib, name, MAX_BLOCKS, 8, [np.int64(got.size), np.int64(want.shape[axis] * inner),
                                      np.int32(len(xs)), starts, table, got])
    np.testing.assert_array_equal(got, want)


WINDOWS = [  # (image shape, kernel, stride, pads, dilation)
    ((2, 7, 9, 3), [3, 2], [2, 1], [1, 0, 2, 1], [1, 2]),   # 2-d: strided, dilated, padded
    ((3, 1, 11, 4), [1, 5], [1, 1], [0, 0, 0, 0], [1, 1]),  # the text CNN's 1-d window, lifted
    ((1, 5, 5, 2), [2, 2], [3, 3], [0, 1, 0, 1], [1, 1]),   # stride wider than the window
]


@pytest.mark.parametrize("shape, kernel, stride, pads, dilation", WINDOWS)
def test_unfold_and_fold_kernels_on_the_host(shape, kernel, stride, pads, dilation, host_cxx,
                                             tmp_path):
    """The CUDA im2col/col2im against the ops' numpy definitions (`ops/movement.py`), with the
    -inf padding max pooling uses."""
    un = windows.unfold_cuda_source(RB, "float32")
    fo = windows.fold_cuda_source(RB, "float32")
    dims = ["long long"] + ["int"] * 13
    lib = build(host_cxx, tmp_path, "windows", un[1] + fo[1],
                {un[0]: dims + ["float", "const float*", "float*"],
                 fo[0]: dims + ["const float*", "float*"]})
    window = dict(kernel=kernel, stride=stride, pads=pads, dilation=dilation)
    x = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    for pad in (0.0, -np.inf):
        want = registry.get("unfold").impl(x, **window, pad_value=pad)
        got = np.full(want.shape, np.nan, np.float32)
        ints = [np.int32(d) for d in (*shape[1:], *want.shape[1:5], *stride, *dilation,
                                      pads[0], pads[2])]
        launch(lib, un[0], MAX_BLOCKS, 64, [np.int64(got.size), *ints, np.float32(pad), x, got])
        np.testing.assert_array_equal(got, want)
    cols = np.random.default_rng(7).normal(size=want.shape).astype(np.float32)
    want = registry.get("fold").impl(cols, size=list(shape[1:3]), **window)
    got = np.full(want.shape, np.nan, np.float32)
    launch(lib, fo[0], MAX_BLOCKS, 64, [np.int64(got.size), *ints, cols, got])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


POOLS = [  # (image shape, kernel, stride, pads)
    ((2, 6, 7, 3), [2, 2], [2, 2], [0, 0, 0, 1]),   # LeNet's 2x2/2, one padded column
    ((1, 7, 7, 2), [3, 3], [1, 2], [1, 1, 1, 1]),   # overlapping windows: cells in several
    ((2, 1, 9, 4), [1, 3], [1, 2], [0, 0, 1, 0]),   # a 1-d window, lifted
]


@pytest.mark.parametrize("shape, kernel, stride, pads", POOLS)
def test_window_max_kernels_on_the_host(shape, kernel, stride, pads, host_cxx, tmp_path):
    """Max pooling and its gradient against the ops' numpy definitions, with ties (the first
    largest cell takes the gradient) and a NaN (it wins)."""
    fw = windows.window_max_cuda_source(RB, "float32")
    bw = windows.window_max_grad_cuda_source(RB, "float32")
    dims = ["long long"] + ["int"] * 13
    lib = build(host_cxx, tmp_path, "pool", fw[1] + bw[1],
                {fw[0]: dims + ["const float*", "float*"],
                 bw[0]: dims + ["const float*", "const float*", "float*"]})
    rng = np.random.default_rng(9)
    x = rng.integers(0, 4, size=shape).astype(np.float32)   # NOTE: small integers: many ties
    x[0, 0, 1, 0] = np.nan
    window = {"kernel": kernel, "stride": stride, "pads": pads}
    want = registry.get("window_max").impl(x, **window)
    g = rng.normal(size=want.shape).astype(np.float32)
    want_grad = registry.get("window_max_grad").impl(x, g, **window)
    ints = [np.int32(d) for d in (*shape[1:], *want.shape[1:3], *kernel, *stride, 1, 1,
                                  pads[0], pads[2])]
    got = np.zeros(want.shape, np.float32)
    launch(lib, fw[0], MAX_BLOCKS, 64, [np.int64(got.size), *ints, x, got])
    np.testing.assert_array_equal(got, want)
    got_grad = np.full(x.shape, np.nan, np.float32)
    launch(lib, bw[0], MAX_BLOCKS, 64, [np.int64(x.size), *ints, x, g, got_grad])
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op, ref", [("max", np.max), ("min", np.min)])
@pytest.mark.parametrize("axes, shape", [((1,), (6, 300)), ((0,), (300, 6))])
def test_max_and_min_reductions_keep_a_nan_on_the_host(op, ref, axes, shape, host_cxx,
                                                       tmp_path):
    """np.max (np.min) gives nan for a row holding one; the kernel folded with fmaxf, which
    drops a NaN, so a row gave its largest number (and a row of NaNs -inf). Rows with a NaN
    first, in the middle, last, all NaN, and none; each row is spread over a block's threads."""
    from nnlang.codegen.kernel import Kernel, Load, Reduce
    k = Kernel("k_nanmax", 2, {"a0": Load("in0", "float32", (False, False))}, [], [], [],
               Reduce(op, axes, "a0", "out0", "float32"))
    source, names = module_source([k])
    lib = build(host_cxx, tmp_path, "nanmax", source, {names[0]: [t for t, _ in params(k)]})
    rows = np.random.default_rng(4).normal(size=(6, 300)).astype(np.float32)
    rows[0, 0] = rows[1, 150] = rows[2, 299] = np.nan
    rows[3] = np.nan
    x = np.ascontiguousarray(rows if axes == (1,) else rows.T)
    red = np.zeros(6, np.float32)
    grid, block, smem = launch_config(launch_info(k), shape, MAX_BLOCKS)
    launch(lib, names[0], grid, block, [np.int32(shape[0]), np.int32(shape[1]), x,
                                        np.int32(shape[1]), np.int32(1), red])
    np.testing.assert_array_equal(red, ref(rows, axis=1))


@pytest.mark.parametrize("op, axes, shape", [("sum", (0, 1), (150, 200)),   # one 1024-thread block
                                             ("max", (0,), (37, 5)),        # outer axis reduced
                                             ("sum", (1,), (9, 300))])      # rows > blocks
def test_reductions_on_the_host(op, axes, shape, host_cxx, tmp_path):
    from nnlang.codegen.kernel import Kernel, Load, Reduce, ScalarOp
    k = Kernel("k_red", 2, {"a0": Load("in0", "float32", (False, False))}, [],
               [ScalarOp("v0", "exp", ("a0",), "float32", ("float32",))], [("v0", "out0")],
               Reduce(op, axes, "v0", "out1", "float32"))
    source, names = module_source([k])
    lib = build(host_cxx, tmp_path, "red", source, {names[0]: [t for t, _ in params(k)]})
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    want = evaluate(k, shape, {"a0": x})
    full = np.zeros(shape, np.float32)
    red = np.zeros(want["out1"].shape, np.float32)
    grid, block, smem = launch_config(launch_info(k), shape, MAX_BLOCKS)
    assert smem == block * (8 if op == "sum" else 4)  # float32 sums accumulate in double
    launch(lib, names[0], grid, block, [np.int32(shape[0]), np.int32(shape[1]), x,
                                        np.int32(shape[1]), np.int32(1), full,
                                        np.int32(shape[1]), np.int32(1), red])
    np.testing.assert_allclose(full, want["out0"], rtol=1e-6)
    np.testing.assert_allclose(red.reshape(want["out1"].shape), want["out1"], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sign_keeps_a_nan_on_the_host(dtype, host_cxx, tmp_path):
    """np.sign(nan) is nan, as the numba and reference backends give (and abs's gradient,
    g * sign(x), with it); the CUDA helper's (x > 0) - (x < 0) gave 0 for a NaN x."""
    from nnlang.codegen.kernel import Kernel, Load, ScalarOp
    k = Kernel("k_sign", 1, {"a0": Load("in0", dtype, (False,))}, [],
               [ScalarOp("v0", "sign", ("a0",), dtype, (dtype,))], [("v0", "out0")])
    source, names = module_source([k])
    lib = build(host_cxx, tmp_path, "sign", source, {names[0]: [t for t, _ in params(k)]})
    x = np.array([np.nan, 0.0, -0.0, 2.0, -3.0, np.inf, -np.inf, 1e-30], dtype)
    out = np.zeros_like(x)
    launch(lib, names[0], 2, 4, [np.int32(x.size), x, np.int32(1), out, np.int32(1)])
    np.testing.assert_array_equal(out, np.sign(x))


def test_a_grid_stride_loop_that_would_pass_2_31_is_refused():
    """An element kernel's index is a 32-bit int stepped by grid * block: with fewer than
    2**31 elements but within one stride of it, e + stride passed INT_MAX (undefined; in
    practice a negative index and a write before the buffer). Such a launch is refused; one
    whose last stride stays below 2**31 is not."""
    from nnlang.backends.cupy_backend import CudaFunction
    from nnlang.codegen.kernel import Kernel, Load, ScalarOp
    from nnlang.errors import NNError
    k = Kernel("k_big", 1, {"a0": Load("in0", "float32", (False,))}, [],
               [ScalarOp("v0", "neg", ("a0",), "float32", ("float32",))], [("v0", "out0")])
    be, fn = CupyBackend(render_only=True), CudaFunction(None, launch_info(k))
    small = np.zeros(1, np.float32)   # only the sizes matter: nothing is launched
    grid, block, _ = launch_config(fn.info, [2**31 - 1], be.max_blocks)
    with pytest.raises(NNError, match="2\\*\\*31"):
        be.specialize(fn, (2**31 - 1, small, small))
    be.specialize(fn, (2**31 - grid * block, small, small))


def test_a_view_whose_offsets_pass_2_31_is_refused():
    """The loop guard above counted the loop's elements only: a view into a larger buffer (a
    slice of a concat, one step of a sequence) with a small loop could address elements past
    2**31 through its strides, and a 32-bit i * stride wraps. Such a launch is refused; one
    whose last element is at 2**31 - 1 is not."""
    from numpy.lib.stride_tricks import as_strided

    from nnlang.backends.cupy_backend import CudaFunction
    from nnlang.codegen.kernel import Kernel, Load, ScalarOp
    from nnlang.errors import NNError
    k = Kernel("k_view", 2, {"a0": Load("in0", "float32", (False, False))}, [],
               [ScalarOp("v0", "neg", ("a0",), "float32", ("float32",))], [("v0", "out0")])
    be, fn = CupyBackend(render_only=True), CudaFunction(None, launch_info(k))
    out = np.zeros((3, 4), np.float32)   # only the strides matter: nothing is launched
    tiny = np.zeros(1, np.float32)
    # rows 2**30 elements apart: the last row starts at 2 * 2**30 = 2**31
    far = as_strided(tiny, shape=(3, 4), strides=(4 * 2**30, 4))
    with pytest.raises(NNError, match="2\\*\\*31"):
        be.specialize(fn, (3, 4, far, out))
    near = as_strided(tiny, shape=(3, 4), strides=(4 * (2**30 - 2), 4))   # last: 2**31 - 1
    be.specialize(fn, (3, 4, near, out))


def test_a_stride_past_2_31_on_an_axis_of_one_is_no_traceback():
    """An axis of size 1 is never stepped along, so its stride addresses nothing: a one-row
    view of a buffer whose rows lie 2**31 elements apart fits the 32-bit indices. Its stride
    still went to the kernel as an int32 argument: 'OverflowError: Python integer 2147483648
    out of bounds for int32', a traceback, where the launch is fine (the guard above counted
    the reach as 0 and let it through)."""
    from numpy.lib.stride_tricks import as_strided

    from nnlang.backends.cupy_backend import CudaFunction
    from nnlang.codegen.kernel import Kernel, Load, ScalarOp
    k = Kernel("k_row", 2, {"a0": Load("in0", "float32", (False, False))}, [],
               [ScalarOp("v0", "neg", ("a0",), "float32", ("float32",))], [("v0", "out0")])
    be, fn = CupyBackend(render_only=True), CudaFunction(None, launch_info(k))
    out = np.zeros((1, 4), np.float32)
    row = as_strided(np.zeros(1, np.float32), shape=(1, 4), strides=(4 * 2**31, 4))
    _, (_, _, _, flat, _) = be.specialize(fn, (1, 4, row, out))
    assert [int(a) for a in flat if not isinstance(a, np.ndarray)] == [1, 4, 0, 1, 0, 1]
