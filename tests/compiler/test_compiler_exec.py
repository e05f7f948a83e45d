"""Compiled executables against the reference interpreter and independent numpy, fused and
unfused; library ops; updates; the kernel cache."""
import itertools
import math

import numpy as np
import pytest

from nnlang.errors import NNError
from nnlang.ir.graph import Builder, Graph, TensorType
from nnlang.ops.random import _normal_impl, _uniform_impl
from nnlang.runtime.executable import compile_graph
from nnlang.runtime.interpret import interpret

RNG = np.random.default_rng(0)


def leaf(g, op, name, shape, dtype="float32"):
    attrs = {"name": name, "dtype": dtype, "shape": list(shape)}
    nid = g.add_node(op, [], attrs, TensorType(tuple(shape), dtype), name=name)
    (g.inputs if op == "input" else g.params)[name] = nid
    return nid


def rand(shape, dtype="float32"):
    return RNG.standard_normal(shape).astype(dtype)


def check(g, feeds, state=None, numpy_ref=None, tol=1e-5):
    """Runs fused and unfused; both must match the interpreter (and `numpy_ref` if given)."""
    want = {**g.outputs, **g.losses, **g.metrics}
    ref = interpret(g, feeds, state, want=want)
    for disable in ((), ("fuse",)):
        exe = compile_graph(g, disable=disable, state=state)
        out = exe.run(feeds)
        for k in want:
            np.testing.assert_allclose(out[k], ref[k], rtol=tol, atol=tol, err_msg=k)
            assert out[k].dtype == ref[k].dtype
        if numpy_ref is not None:
            for k, v in numpy_ref.items():
                np.testing.assert_allclose(out[k], v, rtol=tol, atol=tol, err_msg=k)
    return exe


def test_bias_sigmoid():
    g = Graph()
    b = Builder(g)
    x, bias = leaf(g, "input", "x", (6, 5)), leaf(g, "param", "b", (5,))
    g.outputs["y"] = b.sigmoid(b.add(x, bias))
    feeds, st = {"x": rand((6, 5))}, {"b": rand(5)}
    check(g, feeds, st, {"y": 1 / (1 + np.exp(-(feeds["x"] + st["b"])))})


def test_softmax_and_layernorm():
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", (4, 7))
    m = b.reduce_max(x, axes=[-1], keepdims=True)
    e = b.exp(b.sub(x, b.broadcast_to(m, shape=[4, 7])))
    s = b.reduce_sum(e, axes=[-1], keepdims=True)
    g.outputs["p"] = b.div(e, b.broadcast_to(s, shape=[4, 7]))
    n = b.const(1 / 7)
    mean = b.mul(b.reduce_sum(x, axes=[1], keepdims=True), n)
    d = b.sub(x, b.broadcast_to(mean, shape=[4, 7]))
    var = b.mul(b.reduce_sum(b.mul(d, d), axes=[1], keepdims=True), n)
    g.outputs["ln"] = b.div(d, b.sqrt(b.add(var, b.const(1e-5))))
    xv = rand((4, 7))
    ex = np.exp(xv - xv.max(-1, keepdims=True))
    ln = (xv - xv.mean(1, keepdims=True)) / np.sqrt(xv.var(1, keepdims=True) + 1e-5)
    check(g, {"x": xv}, numpy_ref={"p": ex / ex.sum(-1, keepdims=True), "ln": ln}, tol=1e-4)


def test_matmul_relu_and_axis0_sum():
    g = Graph()
    b = Builder(g)
    x, w = leaf(g, "input", "x", (5, 3)), leaf(g, "param", "w", (3, 4))
    h = b.maximum(b.add(b.matmul(x, w), b.const(np.ones(4, np.float32))), b.const(0.0))
    g.outputs["h"] = h
    g.outputs["col"] = b.reduce_sum(h, axes=[0])
    g.outputs["wt"] = b.matmul(b.transpose(x, perm=[1, 0]), x)
    feeds, st = {"x": rand((5, 3))}, {"w": rand((3, 4))}
    hv = np.maximum(feeds["x"] @ st["w"] + 1, 0)
    check(g, feeds, st, {"h": hv, "col": hv.sum(0), "wt": feeds["x"].T @ feeds["x"]})


def test_dtypes_int_bool_float64():
    g = Graph()
    b = Builder(g)
    i, x = leaf(g, "input", "i", (3, 4), "int32"), leaf(g, "input", "x", (3, 4), "float64")
    f = b.cast(i, dtype="float64")
    g.outputs["w"] = b.where(b.gt(x, f), b.mul(x, f), b.neg(x))
    g.outputs["s"] = b.add(i, i)
    g.outputs["m"] = b.reduce_max(i, axes=None)
    feeds = {"i": RNG.integers(-3, 3, (3, 4)).astype(np.int32), "x": rand((3, 4), "float64")}
    xv, fv = feeds["x"], feeds["i"].astype(np.float64)
    check(g, feeds, numpy_ref={"w": np.where(xv > fv, xv * fv, -xv), "s": 2 * feeds["i"]})


def test_gather_scatter_onehot_argmax():
    g = Graph()
    b = Builder(g)
    t, idx = leaf(g, "param", "t", (7, 3)), leaf(g, "input", "idx", (2, 5), "int32")
    rows = b.gather(t, idx)
    g.outputs["rows"] = rows
    g.outputs["back"] = b.scatter_add(b.exp(rows), idx, rows=7)
    g.outputs["oh"] = b.one_hot(idx, depth=7)
    g.outputs["am"] = b.argmax(rows, axis=-1)
    feeds, st = {"idx": RNG.integers(0, 7, (2, 5)).astype(np.int32)}, {"t": rand((7, 3))}
    back = np.zeros((7, 3), np.float32)
    np.add.at(back, feeds["idx"].ravel(), np.exp(st["t"][feeds["idx"]]).reshape(-1, 3))
    check(g, feeds, st, {"rows": st["t"][feeds["idx"]], "back": back,
                         "am": st["t"][feeds["idx"]].argmax(-1)})


def test_unfold_fold_slice_concat():
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", (2, 3, 6, 5))
    win = dict(kernel=[3, 2], stride=[1, 2], pads=[1, 1, 0, 0], dilation=[1, 1])
    cols = b.unfold(x, pad_value=0.0, **win)
    g.outputs["cols"] = cols
    g.outputs["back"] = b.fold(b.mul(cols, cols), size=[3, 6], **win)
    sl = b.slice(x, axis=3, start=1, stop=4, step=1)
    g.outputs["cat"] = b.concat(b.exp(sl), x, axis=3)
    g.outputs["pad"] = b.unslice(sl, axis=3, start=0, stop=3, step=1, size=5)
    g.outputs["flat"] = b.reshape(b.transpose(x, perm=[0, 2, 1, 3]), shape=[2, -1])
    check(g, {"x": rand((2, 3, 6, 5))})


def test_random_uniform_bit_exact():
    g = Graph()
    b = Builder(g)
    key = b.rng_key()
    g.outputs["u"] = b.random_uniform(key, shape=[3, 50], salt=4)
    exe = compile_graph(g)
    for k in (0, 123456789):
        out = exe.run({"_rng": np.int64(k)})
        assert np.array_equal(out["u"], _uniform_impl(np.int64(k), shape=[3, 50], salt=4))
    a, c = exe.run({})["u"], exe.run({})["u"]  # the runtime advances the key itself
    assert not np.array_equal(a, c)


def _splitmix(z: int) -> int:
    m = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _normal_by_hand(key: int, salt: int, j: int) -> float:
    """Element j of random_normal, in Python integers: Box-Muller of counters 2j and 2j + 1."""
    base = (key * 0x100000001B3 + salt * 0x9E3779B1) & ((1 << 64) - 1)
    u1 = ((_splitmix((base + 2 * j) & ((1 << 64) - 1)) >> 40) + 1) / 2 ** 24
    u2 = (_splitmix((base + 2 * j + 1) & ((1 << 64) - 1)) >> 40) / 2 ** 24
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def test_random_normal_on_numba_is_the_impls_and_an_offset_shifts_the_stream():
    """The numba kernel draws what `impl` (and a by-hand Box-Muller) draws; offset k starts at
    element k, which is how a data-parallel rank draws the rows it draws in 1 process."""
    g = Graph()
    b = Builder(g)
    key = b.rng_key()
    g.outputs["z"] = b.random_normal(key, shape=[3, 50], salt=4)
    g.outputs["row2"] = b.random_normal(key, shape=[50], salt=4, offset=100)
    exe = compile_graph(g)
    for k in (0, 123456789, -7):
        out = exe.run({"_rng": np.int64(k)})
        want = _normal_impl(np.int64(k), shape=[3, 50], salt=4)
        np.testing.assert_allclose(out["z"], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out["row2"], want[2], rtol=1e-6, atol=1e-6)
        for j in (0, 1, 77, 149):
            assert out["z"].flat[j] == pytest.approx(_normal_by_hand(k, 4, j), rel=1e-6,
                                                     abs=1e-6)
    a, c = exe.run({})["z"], exe.run({})["z"]  # the runtime advances the key itself
    assert not np.array_equal(a, c)


def test_updates_write_state():
    g = Graph()
    b = Builder(g)
    w = leaf(g, "param", "w", (3, 2))
    g.losses["l"] = b.reduce_sum(b.mul(w, w), axes=None)
    g.updates = {"w": b.sub(w, b.mul(b.const(0.1), w))}
    w0 = rand((3, 2))
    shared = w0.copy()
    exe = compile_graph(g, state={"w": shared})
    out = exe.run({})
    assert exe.state["w"] is shared, "a fitting state array is shared, not copied"
    np.testing.assert_allclose(out["l"], (w0 * w0).sum(), rtol=1e-5)
    np.testing.assert_allclose(exe.state["w"], w0 * 0.9, rtol=1e-6)
    exe.run({})
    np.testing.assert_allclose(exe.state["w"], w0 * 0.81, rtol=1e-6)
    exe.state["w"] = w0
    np.testing.assert_allclose(exe.state["w"], w0)


def test_kernel_dedup_and_disk_cache(tmp_path):
    from nnlang.backends.numba_backend import NumbaBackend
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", (4, 3))
    h = x
    for _ in range(20):  # identical steps, as an unrolled RNN produces
        h = b.tanh(b.matmul(b.add(h, b.const(0.5)), b.const(np.eye(3, dtype=np.float32))))
    g.outputs["h"] = h
    ex = compile_graph(g)
    # tanh of step k fuses with the add of step k+1: 21 launches, 3 distinct sources
    assert ex.summary()["kernels"] == 21 and ex.summary()["distinct_kernels"] == 3
    fresh = compile_graph(g, NumbaBackend())  # a new backend: compiles nothing, loads numba's disk cache
    assert fresh.backend.compiled == 0 and fresh.backend.cache_hits >= 1


def test_kernels_import_their_scalar_helpers_and_are_keyed_on_them(tmp_path, monkeypatch):
    """Two kernels calling tanh import one compiled helper (numba compiles it once per
    process, not once per kernel module); the source of what kernels import is part of their
    key, since a cached kernel holds the code of the helpers it was linked with."""
    from nnlang.backends import numba_backend, numba_kernels
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", (4, 3))
    eye = b.const(np.eye(3, dtype=np.float32))
    h = b.matmul(b.tanh(b.mul(x, b.const(0.5))), eye)   # the matmul keeps the two apart
    g.outputs["h"] = b.add(b.tanh(h), b.const(1.0))
    feeds = {"x": rand((4, 3))}
    exe = compile_graph(g, numba_backend.NumbaBackend())
    users = [src for src in exe.kernel_sources() if "tanh_f32(" in src]
    assert len(users) == 2
    for src in users:
        assert "from nnlang.backends.numba_kernels import tanh_f32" in src
        assert "def tanh_f32" not in src
    assert len(numba_kernels.tanh_f32.overloads) == 1
    want = np.tanh(np.tanh(feeds["x"].astype(np.float64) * 0.5)) + 1
    np.testing.assert_allclose(exe.run(feeds)["h"], want, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(numba_backend, "_IMPORTED", "the helpers changed")
    other = compile_graph(g, numba_backend.NumbaBackend())
    assert not set(other.backend._modules) & set(exe.backend._modules)


def test_kernel_key_covers_the_llvm_options_kernels_compile_under(tmp_path):
    """numba_config sets LLVM options every kernel compiles under, which numba's own cache does
    not key on: a new version that retunes one must not load the old version's kernels from a
    user's cache (its key changed only by a hand bump of VERSION, which could be forgotten)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from nnlang.backends import numba_backend

    def key_of(root) -> str:
        # NOTE: run in `root`: `python -c` puts the current folder first on the path
        code = "from nnlang.backends import numba_backend as b; print(b.__file__, b._IMPORTED)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
        assert done.returncode == 0, done.stderr
        where, key = done.stdout.split()
        assert Path(where).is_relative_to(root)
        return key

    package = Path(numba_backend.__file__).parents[1]
    shutil.copytree(package, tmp_path / "nnlang", ignore=shutil.ignore_patterns("__pycache__"))
    assert key_of(tmp_path) == numba_backend._IMPORTED   # a copy elsewhere: the same kernels
    config = tmp_path / "nnlang" / "backends" / "numba_config.py"
    config.write_text(config.read_text() + 'llvm.set_option("nnlang", "-unroll-threshold=150")\n')
    assert key_of(tmp_path) != numba_backend._IMPORTED


def _leave_the_costliest_job_to_the_worker(monkeypatch):
    """The worker's share without the race: this process, on two or more threads, never
    claims the first job, so the worker (once warm) does, or, where it compiles nothing, this
    process compiles it after the worker has ended. The unforced race is lost by a worker
    starting on a loaded machine: this process had compiled all 7 small kernels first."""
    from nnlang.backends import blas, numba_backend
    if blas.workers() < 2:
        pytest.skip("one thread: no compile worker is started")
    claim = numba_backend.claim
    monkeypatch.setattr(numba_backend, "claim", lambda claims, k: k != 0 and claim(claims, k))


def test_cold_kernels_compile_in_a_second_process(tmp_path, monkeypatch):
    """With many kernels missing from the cache, a worker process compiles part of them into
    numba's disk cache while this one compiles the rest; the results are the same."""
    from nnlang.backends.numba_backend import NumbaBackend
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    _leave_the_costliest_job_to_the_worker(monkeypatch)
    g = Graph()
    b = Builder(g)
    h = leaf(g, "input", "x", (4, 3))
    eye = b.const(np.eye(3, dtype=np.float32))
    for op in ("exp", "tanh", "sigmoid", "neg", "abs", "sign", "erf"):
        # NOTE: the matmuls keep the ops apart: one distinct kernel each
        h = b.matmul(b.emit(op, b.mul(h, b.const(0.25))), eye)
    g.outputs["h"] = h
    feeds = {"x": rand((4, 3))}
    exe = compile_graph(g, NumbaBackend())
    assert exe.backend.cache_hits >= 1          # the worker's share, loaded from disk
    assert exe.backend.compiled + exe.backend.cache_hits == exe.summary()["distinct_kernels"]
    names = [p.name for p in (tmp_path / "kernels" / "compiled").iterdir()]
    sums = [n for n in names if n.endswith(".crc32")]   # each kernel's data files' checksums
    assert len(names) - len(sums) == len(sums) == exe.summary()["distinct_kernels"]
    np.testing.assert_allclose(exe.run(feeds)["h"], interpret(g, feeds, want=g.outputs)["h"],
                               rtol=1e-5, atol=1e-6)
    warm = compile_graph(g, NumbaBackend())      # markers: no worker, all from the cache
    assert warm.backend.compiled == 0


def test_a_worker_with_other_kernel_helpers_than_its_parent_compiles_nothing(tmp_path,
                                                                              monkeypatch):
    """A worker whose helper modules on disk are not the ones its parent keys kernels on
    (nnlang upgraded under a running process, another nnlang first on the worker's path)
    would link the parent's kernels with other helpers and cache them under the parent's key:
    it leaves them all to the parent, which compiles them itself, with the same values."""
    from nnlang.backends import numba_backend
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba_backend, "_IMPORTED", "the helpers before an upgrade")
    _leave_the_costliest_job_to_the_worker(monkeypatch)
    g = Graph()
    b = Builder(g)
    h = leaf(g, "input", "x", (4, 3))
    eye = b.const(np.eye(3, dtype=np.float32))
    for op in ("exp", "tanh", "sigmoid", "neg", "abs", "sign", "erf"):
        h = b.matmul(b.emit(op, b.mul(h, b.const(0.25))), eye)   # one distinct kernel each
    g.outputs["h"] = h
    feeds = {"x": rand((4, 3))}
    exe = compile_graph(g, numba_backend.NumbaBackend())
    assert exe.backend.cache_hits == 0
    assert exe.backend.compiled == exe.summary()["distinct_kernels"]
    np.testing.assert_allclose(exe.run(feeds)["h"], interpret(g, feeds, want=g.outputs)["h"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("win", [
    dict(kernel=[3], stride=[2], pads=[1, 2], dilation=[2]),
    dict(kernel=[3, 2], stride=[1, 2], pads=[1, 1, 0, 1], dilation=[1, 2]),
    dict(kernel=[2, 2, 2], stride=[1, 2, 1], pads=[0, 1, 1, 0, 0, 0], dilation=[1, 1, 2]),
], ids=["1d", "2d", "3d"])
def test_window_slice_copies(win):
    """ops/windows.py's slice copies (the 3-d lowering) against a loop over every
    output position, and fold as unfold's adjoint: <unfold(x), c> == <x, fold(c)>."""
    from nnlang.ops.windows import fold_call, unfold_call
    nd = len(win["kernel"])
    x = rand((2, 7, 6, 5)[:1 + nd] + (3,)).astype(np.float64)
    spatial = x.shape[1:-1]
    outs = [(n + win["pads"][2 * i] + win["pads"][2 * i + 1]
             - win["dilation"][i] * (win["kernel"][i] - 1) - 1) // win["stride"][i] + 1
            for i, n in enumerate(spatial)]
    cols = np.empty((2, *outs, *win["kernel"], 3))
    fn, args = unfold_call(np, dict(win, pad_value=-5.0), x, cols)
    fn(*args)
    for pos in itertools.product(*map(range, outs)):
        for tap in itertools.product(*map(range, win["kernel"])):
            at = [p * s + t * d - lo for p, s, t, d, lo in
                  zip(pos, win["stride"], tap, win["dilation"], win["pads"][0::2])]
            inside = all(0 <= a < n for a, n in zip(at, spatial))
            want = x[(slice(None), *at)] if inside else -5.0
            np.testing.assert_array_equal(cols[(slice(None), *pos, *tap)], want)
    c = RNG.standard_normal(cols.shape)
    back = np.empty_like(x)
    fn, args = fold_call(np, dict(win, size=list(spatial)), c, back)
    fn(*args)
    fn, args = unfold_call(np, dict(win, pad_value=0.0), x, cols)
    fn(*args)
    assert np.isclose(np.vdot(cols, c), np.vdot(x, back), rtol=1e-12)


@pytest.mark.parametrize("shape,win", [
    ((3, 9, 4), dict(kernel=[3], stride=[2], pads=[1, 1])),
    ((2, 7, 6, 5), dict(kernel=[2, 3], stride=[2, 1], pads=[0, 1, 1, 1])),
    ((2, 4, 4, 3, 2), dict(kernel=[2, 2, 2], stride=[2, 2, 1], pads=[0, 0, 0, 0, 1, 0])),
], ids=["1d", "2d", "3d"])
def test_window_max_and_gradient(shape, win):
    """Max pooling's primitives (numba kernels; slice copies for 3-d) against a loop over the
    windows: the largest cell, and g routed to the first largest cell, NaN included, and
    padding never chosen: the first two places of the last axis are -inf, so its first
    windows hold -inf padding tied with -inf cells only (the slice copies gave their g to
    the padding, dropping it)."""
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", shape)
    y = b.window_max(x, **win)
    gy = leaf(g, "input", "gy", g.node(y).shape)
    g.outputs["y"], g.outputs["dx"] = y, b.window_max_grad(x, gy, **win)
    feeds = {"x": np.round(rand(shape), 1), "gy": rand(g.node(y).shape)}  # rounded: ties
    feeds["x"][..., :2, :] = -np.inf
    feeds["x"].flat[5] = np.nan
    want_y = np.full(g.node(y).shape, -np.inf, np.float32)
    want_dx = np.zeros(shape, np.float32)
    spatial, outs = shape[1:-1], g.node(y).shape[1:-1]
    for bi in range(shape[0]):
        for pos in itertools.product(*map(range, outs)):
            for c in range(shape[-1]):
                cells = []
                for tap in itertools.product(*map(range, win["kernel"])):
                    at = tuple(p * s + t - lo for p, s, t, lo in
                               zip(pos, win["stride"], tap, win["pads"][0::2]))
                    if all(0 <= a < n for a, n in zip(at, spatial)):
                        cells.append((feeds["x"][(bi, *at, c)], at))
                vals = [v for v, _ in cells]
                k = next(i for i, v in enumerate(vals) if np.isnan(v)) if np.isnan(vals).any() \
                    else int(np.argmax(vals))
                want_y[(bi, *pos, c)] = vals[k]
                want_dx[(bi, *cells[k][1], c)] += feeds["gy"][(bi, *pos, c)]
    out = compile_graph(g).run(feeds)
    np.testing.assert_array_equal(out["y"], want_y)
    np.testing.assert_allclose(out["dx"], want_dx, rtol=1e-6, atol=1e-6)
    ref = interpret(g, feeds, want=g.outputs)
    np.testing.assert_array_equal(ref["y"], want_y)
    np.testing.assert_allclose(ref["dx"], want_dx, rtol=1e-6, atol=1e-6)


def test_transpose_read_by_many_matmuls_is_copied_once():
    from nnlang.passes.schedule import COPY_REUSED_TRANSPOSE
    g = Graph()
    b = Builder(g)
    u = leaf(g, "param", "u", (4, 6))
    ut = b.transpose(u, perm=[1, 0])
    xs = [leaf(g, "input", f"x{i}", (3, 6)) for i in range(COPY_REUSED_TRANSPOSE)]
    for i, x in enumerate(xs):
        g.outputs[f"y{i}"] = b.matmul(x, ut)
    feeds, st = {f"x{i}": rand((3, 6)) for i in range(len(xs))}, {"u": rand((4, 6))}
    exe = check(g, feeds, st, {f"y{i}": feeds[f"x{i}"] @ st["u"].T for i in range(len(xs))})
    assert [s.kind for s in exe.steps].count("copy") == 1



def test_gather_of_negative_ids_counts_from_the_end_as_numpy():
    """gather is table[idx] (its doc): -1 is the last row, -rows the first, on the numba
    lowering as in numpy, and the ids past either end are refused."""
    g = Graph()
    b = Builder(g)
    table, idx = leaf(g, "input", "table", (5, 3)), leaf(g, "input", "idx", (2, 3), "int32")
    g.outputs["out"] = b.gather(table, idx)
    exe = compile_graph(g)
    t, ids = rand((5, 3)), np.array([[-1, 0, -5], [4, -2, -1]], np.int32)
    np.testing.assert_array_equal(exe.run({"table": t, "idx": ids})["out"], t[ids])
    for bad in (-6, 5):
        with pytest.raises(NNError, match="out of bounds"):
            exe.run({"table": t, "idx": np.array([[0, bad, 1], [2, 3, 4]], np.int32)})

def test_scatter_add_kernel_refuses_rows_outside_its_output():
    g = Graph()
    b = Builder(g)
    src, idx = leaf(g, "input", "src", (4, 3)), leaf(g, "input", "idx", (4,), "int32")
    g.outputs["out"] = b.scatter_add(src, idx, rows=5)
    exe = compile_graph(g)
    ok = exe.run({"src": rand((4, 3)), "idx": np.array([0, 4, -5, 2], np.int32)})["out"]
    assert ok.shape == (5, 3)
    with pytest.raises(NNError, match="scatter_add: index out of range"):
        exe.run({"src": rand((4, 3)), "idx": np.array([0, 5, 1, 2], np.int32)})


def test_a_kernel_file_removed_before_its_import_is_written_again(tmp_path, monkeypatch):
    """`nnlang cache clear` in another process may remove a kernel's file between its writing
    and numba's cache=True decorator, which needs the file: the kernel compiles anyway."""
    from nnlang.backends import numba_backend
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    written = numba_backend._kernel_file
    removed = []

    def removed_once(key, source):
        path = written(key, source)
        if not removed:
            path.unlink()
            removed.append(path)
        return path
    monkeypatch.setattr(numba_backend, "_kernel_file", removed_once)
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", (4, 3))
    g.outputs["y"] = b.exp(b.mul(x, b.const(0.5)))
    feeds = {"x": rand((4, 3))}
    exe = compile_graph(g, numba_backend.NumbaBackend())
    assert removed and removed[0].exists()
    np.testing.assert_allclose(exe.run(feeds)["y"], np.exp(feeds["x"].astype(np.float64) * 0.5),
                               rtol=1e-6)


# NOTE: constants no other test's kernels hold, so no kernel of it is loaded in this process
# already (from an earlier test's cache, which would leave nothing to compile)
_OWN_KERNELS = """model Own {
  input x: float32[batch, 5]
  input y: float32[batch, 2]
  h = dense(x, 3) |> tanh
  output z = dense(h * 0.3171 + 0.0419, 2)
  loss mse(z, y)
}
train Own { optimizer = adam(lr = 0.00137) batch = 4 }"""


def test_a_cold_cache_starts_the_compile_worker_early_and_the_build_takes_it(tmp_path,
                                                                             monkeypatch):
    """On a cold cache `nnlang.compile` starts the compile worker before its imports and the
    parse (`worker_start.start_early`), so numba's start in it overlaps them; the build's first
    missing kernel takes that worker rather than starting another, and it compiles its share.
    A warm cache starts none."""
    import nnlang
    from nnlang.backends import worker_start
    from nnlang.backends.base import get_backend
    worker_start.stop_early()   # NOTE: one an earlier test's compile left untaken
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    _leave_the_costliest_job_to_the_worker(monkeypatch)
    started = []
    spawn = worker_start.spawn
    monkeypatch.setattr(worker_start, "spawn", lambda: started.append(spawn()) or started[-1])
    net = nnlang.compile(_OWN_KERNELS, init_from=False)
    assert len(started) == 1 and started[0].poll() is None   # waiting for its jobs
    backend = get_backend("numba")
    hits = backend.cache_hits
    feeds = {"x": rand((4, 5)), "y": rand((4, 2))}
    assert np.isfinite(float(np.asarray(net.train_step(feeds))))
    assert len(started) == 1                          # the same worker: none started at the build
    assert started[0].wait(timeout=600) == 0          # it took its jobs and ended
    assert backend.cache_hits > hits                  # its share, loaded from disk
    warm = nnlang.compile(_OWN_KERNELS, init_from=False)
    warm.train_step(feeds)
    assert len(started) == 1


def test_a_worker_started_early_that_no_build_takes_ends(tmp_path, monkeypatch):
    """A compile that fails before building (a model that does not check) ends the worker it
    started early; so does a build with no kernel to compile, and one started for other caches
    is not handed to a build of these (it would fill the other cache). A cache with a kernel
    compiled into it starts none."""
    import nnlang
    from nnlang.backends import worker_start
    from nnlang.backends.numba_backend import NumbaBackend
    from nnlang.errors import NNError
    worker_start.stop_early()   # NOTE: one an earlier test's compile left untaken
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setattr(worker_start, "_two_cpus", lambda: True)
    started = []
    spawn = worker_start.spawn
    monkeypatch.setattr(worker_start, "spawn", lambda: started.append(spawn()) or started[-1])
    with pytest.raises(NNError):
        nnlang.compile("model M {\n  input x: float32[batch, 3]\n  y = nope(x)\n  output y\n}")
    assert len(started) == 1 and started[0].wait(timeout=60) is not None
    worker_start.start_early()
    assert len(started) == 2
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path / "b"))
    taken = worker_start.take()
    try:
        assert started[1].wait(timeout=60) is not None   # the one for cache a, ended
        assert len(started) == 3 and taken is started[2]
    finally:
        worker_start.stop(taken)
    worker_start.start_early()
    assert len(started) == 4
    g = Graph()
    x = leaf(g, "input", "x", (2, 3))
    g.outputs["y"] = Builder(g).matmul(x, leaf(g, "param", "w", (3, 4)))   # no kernel
    compile_graph(g, NumbaBackend())
    assert started[3].wait(timeout=60) is not None
    (tmp_path / "b" / "kernels" / "compiled").mkdir(parents=True, exist_ok=True)
    (tmp_path / "b" / "kernels" / "compiled" / "marker").write_text("")
    worker_start.start_early()   # NOTE: something compiled here already: not cold
    assert len(started) == 4
