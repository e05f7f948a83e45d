"""Generated numba kernels against numpy: reductions in every axis position, row-strided loads
passed flat, row blocks split over threads, and the float32 tanh/sigmoid approximation."""
import numpy as np
import pytest

from nnlang.backends.blas import run_parts
from nnlang.ir.graph import Builder, Graph
from nnlang.runtime.executable import compile_graph
from nnlang.runtime.interpret import interpret
from tests.compiler.test_compiler_exec import leaf, rand


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["sum", "max"])
@pytest.mark.parametrize("shape,axes", [((300, 257), (0,)), ((6, 7, 5, 4), (1, 2)),
                                        ((5, 6, 7), (2,)), ((3, 4, 5), (0, 2)),
                                        ((400, 300), (1,)), ((300, 37), (0, 1)),
                                        ((3, 50, 21), (1, 2))])
def test_reduction_in_any_axis_position(shape, axes, op, dtype):
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", shape, dtype)
    e = b.exp(b.mul(x, x))
    g.outputs["e"] = e
    g.outputs["r"] = getattr(b, f"reduce_{op}")(e, axes=list(axes))
    feeds = {"x": rand(shape, dtype) * 0.5}
    exe = compile_graph(g)
    out = exe.run(feeds)
    want = np.exp(feeds["x"].astype(np.float64) ** 2)
    red = want.sum(axis=axes) if op == "sum" else want.max(axis=axes)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out["r"], red, rtol=tol)
    np.testing.assert_allclose(out["e"], want, rtol=tol)
    assert exe.summary()["kernels"] == 1


@pytest.mark.parametrize("axes", [(1,), (0, 1)])
def test_a_float32_sum_accumulates_in_float64_in_any_order(axes):
    """Each row is 1e8, 999 ones, then -1e8, doubled in the kernel: the ones survive only in a
    float64 accumulator, whatever order the (vectorized) sum adds them in. Exact."""
    x = np.ones((6, 1001), np.float32)
    x[:, 0], x[:, -1] = 1e8, -1e8
    g = Graph()
    b = Builder(g)
    xs = leaf(g, "input", "x", x.shape)
    g.outputs["r"] = b.reduce_sum(b.add(xs, xs), axes=list(axes))
    want = np.full((6,), 1998.0) if axes == (1,) else 6 * 1998.0
    np.testing.assert_array_equal(compile_graph(g).run({"x": x})["r"], want)
    # NOTE: the reference interpreter (backend="reference", constant folding) too: numpy's
    # float32 pairwise sum gave 1984 a row, so the backends disagreed on the same graph
    np.testing.assert_array_equal(interpret(g, {"x": x}, want={"r": g.outputs["r"]})["r"], want)


def test_gate_slices_are_indexed_flat_and_vectorizable():
    g = Graph()
    b = Builder(g)
    z = leaf(g, "input", "z", (64, 512))
    gates = [b.slice(z, axis=1, start=k * 128, stop=(k + 1) * 128, step=1) for k in range(4)]
    c = b.add(b.mul(b.sigmoid(gates[0]), b.tanh(gates[1])), b.sigmoid(gates[2]))
    g.outputs["h"] = b.mul(c, b.tanh(gates[3]))
    feeds = {"z": rand((64, 512))}
    exe = compile_graph(g)
    out = exe.run(feeds)
    q = [feeds["z"][:, k * 128:(k + 1) * 128].astype(np.float64) for k in range(4)]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    want = (sig(q[0]) * np.tanh(q[1]) + sig(q[2])) * np.tanh(q[3])
    np.testing.assert_allclose(out["h"], want, rtol=2e-6, atol=2e-6)
    src = "".join(exe.kernel_sources())
    # NOTE: an unsigned offset, so numba adds no wraparound branch and the loop vectorizes
    assert "in0_s0" in src and "in0[numba.uintp(in0_o + i0 * in0_s0 + i1)]" in src


def test_large_kernels_run_as_row_blocks():
    g = Graph()
    b = Builder(g)
    x, bias = leaf(g, "input", "x", (512, 300)), leaf(g, "param", "b", (300,))
    g.outputs["y"] = b.tanh(b.add(x, bias))
    g.outputs["s"] = b.reduce_sum(b.mul(x, x), axes=[1])
    feeds, st = {"x": rand((512, 300))}, {"b": rand(300)}
    exe = compile_graph(g, state=st)
    out = exe.run(feeds)
    np.testing.assert_allclose(out["y"], np.tanh(feeds["x"] + st["b"]), atol=1e-6)
    np.testing.assert_allclose(out["s"], (feeds["x"].astype(np.float64) ** 2).sum(1), rtol=1e-5)
    assert all(fn is run_parts for fn, _ in exe._calls)


def test_float32_tanh_and_sigmoid_are_accurate():
    from nnlang.backends.numba_kernels import sigmoid_f32 as sigmoid, tanh_f32 as tanh
    x = np.concatenate([np.linspace(-12, 12, 20001), [0.0, -0.0, 1e-30, np.inf, -np.inf]])
    x = x.astype(np.float32)
    t = np.array([tanh(v) for v in x], np.float32)
    assert np.abs(t - np.tanh(x.astype(np.float64))).max() < 4e-7
    assert np.all(np.abs(t) <= 1) and t[x.size - 5] == 0
    s = np.array([sigmoid(v) for v in x], np.float32)
    assert np.abs(s - 1 / (1 + np.exp(-x.astype(np.float64)))).max() < 3e-7
    assert np.isnan(tanh(np.float32(np.nan)))


@pytest.mark.parametrize("transposed", [True, False, "with a constant"])
def test_sum_of_matmuls_is_one_matmul_of_concats(transposed):
    """With transposed operands (h_t^T, and h_0^T folded into a constant) the rows of h_t
    are stacked, and the product takes that stack's transpose: no concat of transposes."""
    from nnlang.passes.matmul_sum import merge_matmul_sums
    g = Graph()
    b = Builder(g)
    hs = [leaf(g, "input", f"h{t}", (6, 5)) for t in range(5)]
    gs = [leaf(g, "input", f"g{t}", (6, 7)) for t in range(5)]
    extra = leaf(g, "input", "c", (5, 7))
    h0 = rand((5, 6))
    terms = [b.matmul(b.transpose(h, perm=[1, 0]) if transposed else b.reshape(h, shape=[5, 6]), x)
             for h, x in zip(hs, gs)]
    if transposed == "with a constant":
        terms[0] = b.matmul(b.const(h0), gs[0])
    total = extra
    for t in terms:
        total = b.add(total, t)
    g.outputs["w"] = total
    merged = merge_matmul_sums(g)
    from nnlang.passes.dce import eliminate_dead
    merged = eliminate_dead(merged)
    assert sum(n.op == "matmul" for n in merged) == 1
    (cat,) = [n for n in merged if n.op == "concat" and len(n.inputs) == 5 and
              merged.node(n.inputs[-1]).shape == ((6, 5) if transposed else (5, 6))]
    assert cat.attrs["axis"] == (0 if transposed else 1)
    assert all(merged.node(i).op != "transpose" for i in cat.inputs)
    feeds = {k: rand(g.node(v).shape) for k, v in g.inputs.items()}
    want = feeds["c"].astype(np.float64)
    for t in range(5):
        h = feeds[f"h{t}"].T if transposed else feeds[f"h{t}"].reshape(5, 6)
        if t == 0 and transposed == "with a constant":
            h = h0
        want = want + h.astype(np.float64) @ feeds[f"g{t}"]
    out = compile_graph(g).run(feeds)["w"]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_float32_exp_is_within_one_ulp():
    """On a grid, and (<= 1.02 ulp, its multiply-adds fused) over random arguments in the loop
    a kernel calls it from."""
    import numba

    from nnlang.backends.numba_kernels import exp_f32 as exp
    x = np.concatenate([np.linspace(-86.9, 88.7, 40001), [0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(np.float32)
    got = np.array([exp(v) for v in x], np.float32)
    want = np.exp(x.astype(np.float64))
    assert (np.abs(got - want) / np.spacing(want.astype(np.float32))).max() <= 1.0

    @numba.njit(error_model="numpy")
    def loop(xs, out):
        for i in range(xs.size):
            out[i] = exp(xs[i])
    x = np.random.default_rng(5).uniform(-86.9, 88.7, 2_000_000).astype(np.float32)
    got = np.empty_like(x)
    loop(x, got)
    want = np.exp(x.astype(np.float64))
    assert (np.abs(got - want) / np.spacing(want.astype(np.float32))).max() <= 1.02
    for v, w in [(np.inf, np.inf), (-np.inf, 0.0), (88.8, np.inf), (-87.5, 0.0), (-1e9, 0.0)]:
        assert exp(np.float32(v)) == w
    assert np.isnan(exp(np.float32(np.nan)))


@pytest.mark.parametrize("sa,sb", [((600, 300), (300, 500)), ((128, 3000), (3000, 700)),
                                   ((8, 4, 128, 160), (8, 4, 160, 128)), ((3, 64, 32), (32, 16)),
                                   ((64, 12801), (12801, 96))])
def test_matmul_calls_split_over_threads_match_numpy(sa, sb):
    """By rows, by columns (a wide product), by K (a long one, into a strided out, twice: the
    parts' sum must not keep the first call's), by batch, and a small one left whole."""
    from nnlang.backends.blas import _summed, matmul_call, run_parts, workers
    a, b = rand(sa), rand(sb)
    shape = np.broadcast_shapes(sa[:-2], sb[:-2]) + (sa[-2], sb[-1])
    out = np.empty(shape[:-1] + (shape[-1] + 7,), np.float32)[..., 3:3 + shape[-1]]
    fn, args = matmul_call(a, b, out)
    want = run_parts if sa[-1] < 12800 else _summed
    assert (fn is want) == (workers() > 1 and sa[0] != 3)
    for _ in range(2):
        fn(*args)
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-3)


def test_sums_of_column_sums_and_matmuls_share_one_concat():
    from nnlang.passes.dce import eliminate_dead
    from nnlang.passes.matmul_sum import merge_matmul_sums
    g = Graph()
    b = Builder(g)
    hs = [leaf(g, "input", f"h{t}", (6, 5)) for t in range(5)]
    gs = [leaf(g, "input", f"g{t}", (6, 7)) for t in range(5)]
    w = bias = None
    for h, x in zip(hs, gs):
        mm, cs = b.matmul(b.transpose(h, perm=[1, 0]), x), b.reduce_sum(x, axes=[0])
        w, bias = (mm, cs) if w is None else (b.add(w, mm), b.add(bias, cs))
    g.outputs["w"], g.outputs["b"] = w, bias
    merged = eliminate_dead(merge_matmul_sums(g))
    ops = [n.op for n in merged]
    assert ops.count("matmul") == 1 and ops.count("reduce_sum") == 1 and ops.count("concat") == 2
    feeds = {k: rand(g.node(v).shape) for k, v in g.inputs.items()}
    out = compile_graph(g).run(feeds)
    H = np.concatenate([feeds[f"h{t}"] for t in range(5)]).astype(np.float64)
    G = np.concatenate([feeds[f"g{t}"] for t in range(5)]).astype(np.float64)
    np.testing.assert_allclose(out["w"], H.T @ G, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["b"], G.sum(0), rtol=1e-5, atol=1e-5)


def test_stacked_gradients_and_weight_gradient_share_one_concat():
    """The time-major projection's gradient stacks [1, B, G] pieces of the same g_t that the
    recurrent weight gradient concatenates (in the other order): fold turns the first into a
    reshape of a row concat, and matmul_sum reuses that concat in its order."""
    from nnlang.passes.cse import eliminate_common
    from nnlang.passes.dce import eliminate_dead
    from nnlang.passes.fold import fold_constants
    from nnlang.passes.matmul_sum import merge_matmul_sums
    g = Graph()
    b = Builder(g)
    hs = [leaf(g, "input", f"h{t}", (6, 5)) for t in range(5)]
    gs = [leaf(g, "input", f"g{t}", (6, 7)) for t in range(5)]
    g.outputs["stack"] = b.concat(*[b.reshape(x, shape=[1, 6, 7]) for x in gs], axis=0)
    w = None
    for h, x in reversed(list(zip(hs, gs))):
        mm = b.matmul(b.transpose(h, perm=[1, 0]), x)
        w = mm if w is None else b.add(w, mm)
    g.outputs["w"] = w
    out_g = eliminate_dead(merge_matmul_sums(eliminate_common(fold_constants(g))))
    ops = [n.op for n in out_g]
    assert ops.count("matmul") == 1 and ops.count("concat") == 2, out_g.dump()  # g_t, h_t
    feeds = {k: rand(g.node(v).shape) for k, v in g.inputs.items()}
    out = compile_graph(g).run(feeds)
    H = np.concatenate([feeds[f"h{t}"] for t in range(5)]).astype(np.float64)
    G = np.concatenate([feeds[f"g{t}"] for t in range(5)]).astype(np.float64)
    np.testing.assert_array_equal(out["stack"], np.stack([feeds[f"g{t}"] for t in range(5)]))
    np.testing.assert_allclose(out["w"], H.T @ G, rtol=1e-5, atol=1e-5)


def test_blas_threads_steps_with_mid_size_products_and_no_big_batched_one():
    """BLAS's own threads for the RNNs' small recurrent products and the MLP's mid-size ones;
    nnlang's split when every product is big (the text CNN) or a batched one is (attention)."""
    from nnlang.backends.blas import threaded_blas_pays, workers
    two = workers() > 1
    rnn = [((64, 128), (128, 512))] * 200 + [((128, 12800), (12800, 512))] * 2
    assert threaded_blas_pays(rnn) == two
    assert threaded_blas_pays([((128, 784), (784, 512)), ((128, 256), (256, 10))]) == two
    assert not threaded_blas_pays([((12544, 640), (640, 128)), ((640, 12544), (12544, 128)),
                                   ((64, 128), (128, 1))])
    assert not threaded_blas_pays([((32, 4, 128, 32), (32, 4, 32, 128)),
                                   ((4096, 128), (128, 64))])


def test_steps_in_two_threads_give_the_process_back_its_blas_threads():
    """Two Nets stepping in two threads: each step limited BLAS to one thread and restored what it
    had found, so the second to start found the first's limit and restored that, last: the
    program's numpy ran on one BLAS thread from then on (seen with two MLPs trained in two
    threads: OpenBLAS 2 threads before, 1 after). The user's own setting (here 2) comes back."""
    import threading

    from nnlang.backends.blas import _blas_controllers, blas_threads
    ctl = _blas_controllers()
    if not ctl:
        pytest.skip("threadpoolctl finds no BLAS")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with blas_threads(1):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with blas_threads(1):
            b_in.set()
            a_out.wait(10)

    def in_a_thread(fn):   # NOTE: threadpoolctl lets one live thread at a time set OpenBLAS's
        t = threading.Thread(target=fn)   # limits: the user's setting is made by one that ends
        t.start()
        t.join()
    users = []
    in_a_thread(lambda: users.append(ctl.limit(limits=2)))
    want = [i["num_threads"] for i in ctl.info()]
    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [i["num_threads"] for i in ctl.info()] == want
    finally:
        in_a_thread(users[0].restore_original_limits)


@pytest.mark.parametrize("shape,keep", [((3000, 520), True), ((40, 75, 384), True),
                                        ((3000, 100), False), ((300, 520), False)])
def test_a_column_sum_splits_by_columns_and_sums_every_row(shape, keep, monkeypatch):
    """A bias gradient (a sum over every axis but the last) runs as column blocks on the pool
    when it has the columns for it: each block sums its columns over every row, through a
    strided view of the input, next to an elementwise output of the same kernel."""
    from nnlang.backends import numba_backend
    from nnlang.runtime.interpret import interpret
    monkeypatch.setattr(numba_backend, "workers", lambda: 2)
    g = Graph()
    b = Builder(g)
    wide = leaf(g, "input", "x", (*shape[:-1], shape[-1] + 8))
    x = b.slice(wide, axis=len(shape) - 1, start=3, stop=3 + shape[-1], step=1)   # strided
    y = b.mul(x, b.const(np.float32(0.5)))
    g.outputs["y"] = y
    g.outputs["s"] = b.reduce_sum(y, axes=list(range(len(shape) - 1)))
    exe = compile_graph(g)
    kernel_calls = [c for c in exe._calls if c[0] is run_parts]
    assert bool(kernel_calls) == keep
    feeds = {"x": rand((*shape[:-1], shape[-1] + 8))}
    got, want = exe.run(feeds), interpret(g, feeds, want=dict(g.outputs))
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)
    np.testing.assert_allclose(got["s"], want["s"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hidden, batch, threaded", [(512, 128, True), (512, 256, False)])
def test_a_step_keeps_to_the_callers_thread_limit(hidden, batch, threaded, monkeypatch):
    """A program that limits native threads around nnlang's calls (threadpoolctl's
    `threadpool_limits(1)`, as joblib and scikit-learn do, or OMP_NUM_THREADS=1 /
    OPENBLAS_NUM_THREADS=1 in its environment) got more threads inside each step: a step whose
    products run on BLAS's threads set OpenBLAS to 2 for its length, and a split step handed
    half its GEMMs to nnlang's pool thread. Under the limit a step runs on the calling thread
    alone, gives numpy's answer, and leaves the limit as it was."""
    import nnlang
    from nnlang.backends import blas
    from threadpoolctl import threadpool_info, threadpool_limits
    ctl = blas._blas_controllers()
    if not ctl or blas.workers() < 2:
        pytest.skip("one core, or threadpoolctl finds no BLAS: nothing to limit")
    net = nnlang.compile("model M {\n  input x: float32[batch, 784]\n"
                         f"  output y = dense(x, {hidden}) |> relu\n}}\n", batch=batch, seed=0)
    x = np.random.default_rng(0).standard_normal((batch, 784)).astype(np.float32)
    net.prepare("predict")
    exe = next(e for k, (e, _) in net._exes.items() if k[0] == "predict")
    assert exe.threaded_blas == threaded
    seen, submits, pool = [], [], blas.pool()

    class Counted:
        def submit(self, *a):
            submits.append(a)
            return pool.submit(*a)
    monkeypatch.setattr(blas, "pool", Counted)
    exe._calls.insert(0, (lambda: seen.append([c.num_threads for c in ctl.lib_controllers]), ()))
    p = net.parameters()
    want = np.maximum(x.astype(np.float64) @ p["y.weight"] + p["y.bias"], 0)
    with threadpool_limits(limits=1):
        before = threadpool_info()
        np.testing.assert_allclose(net.forward({"x": x})["y"], want, rtol=1e-4, atol=1e-4)
        assert threadpool_info() == before
    assert seen == [[1] * len(ctl.lib_controllers)] and not submits
    net.forward({"x": x})   # NOTE: unlimited, the same step does use more threads
    assert submits or max(seen[-1]) > 1


def test_a_step_in_a_second_thread_keeps_the_limit_when_the_first_ends():
    """Two threads step under the program's threadpool_limits(1): the first to enter reads the
    limit for both, and when it left, the count the second's step still used went back to
    every core, so the rest of the second's split work went half to nnlang's pool thread. Each
    step keeps the limit it began under until it ends."""
    import threading

    from threadpoolctl import threadpool_limits

    from nnlang.backends import blas
    if not blas._blas_controllers() or blas.workers() < 2:
        pytest.skip("one core, or threadpoolctl finds no BLAS: nothing to limit")
    ran = []
    calls = [(lambda: ran.append(threading.current_thread()), ())] * 4
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with blas.blas_threads(1):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with blas.blas_threads(1):
            b_in.set()
            a_out.wait(10)
            blas.run_parts(calls)
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    with threadpool_limits(limits=1):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert ran == [threads[1]] * 4


def test_numba_num_threads_bounds_the_pool():
    """NUMBA_NUM_THREADS=1 (numba's own setting, which benchmarks/export_bench.py --threads
    sets to give nnlang N threads) left nnlang's pool at one thread per core: its split
    kernels and GEMMs, numba kernels run in numba's place, kept to none of it."""
    import os
    import subprocess
    import sys

    from nnlang.backends import cpu_affinity
    if len(cpu_affinity.allowed_cpus()) < 2:
        pytest.skip("one core: the pool has one thread anyway")
    probe = ("import threading, numpy as np, nnlang\nfrom nnlang.backends import blas\n"
             "net = nnlang.compile('model M {\\n  input x: float32[batch, 1024]\\n"
             "  output y = dense(x, 512)\\n}\\n', batch=256, seed=0)\n"
             "net.forward({'x': np.ones((256, 1024), np.float32)})\n"
             "print(blas.workers(), sorted(t.name for t in threading.enumerate()))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "NUMBA_NUM_THREADS": "1"}, timeout=600)
    assert done.stdout.strip() == "1 ['MainThread']", done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("name, value, words", [
    ("NUMBA_NUM_THREADS", "0", "NUMBA_NUM_THREADS=0"),
    ("NUMBA_NUM_THREADS", "-2", "NUMBA_NUM_THREADS=-2"),
    ("NUMBA_THREADING_LAYER", "bogus", "NUMBA_THREADING_LAYER=bogus"),
])
def test_a_numba_thread_setting_numba_refuses_is_named(name, value, words):
    """NUMBA_NUM_THREADS=0 (or a threading layer numba does not know) failed at the first
    parallel kernel of a step (dropout's mask) with "internal error: ValueError: Number of
    threads specified must be > 0. hint: this is a bug in nnlang": it is the environment's
    setting, and the error names it and says what to set instead."""
    import os
    import subprocess
    import sys
    probe = ("import numpy as np, nnlang\n"
             "src = 'model M {\\n  input x: float32[batch, 8]\\n  input y: int32[batch]\\n"
             "  logits = dense(x, 8) |> dropout(0.5) |> dense(2)\\n"
             "  loss cross_entropy(logits, y)\\n}\\n'\n"
             "try:\n    nnlang.compile(src, batch=4, seed=0).train_step("
             "{'x': np.ones((4, 8), np.float32), 'y': np.zeros(4, np.int32)})\n"
             "except nnlang.NNError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, name: value}, timeout=600)
    assert words in done.stdout and "hint: " in done.stdout, done.stdout + done.stderr[-2000:]


_COMPILES_PROBE = """
import json
import numpy as np
from numba.core import event
from nnlang.ir.graph import Builder, Graph, TensorType
from nnlang.runtime.executable import compile_graph
g = Graph()
b = Builder(g)
feeds = {}
for name, shape in (("x", (6, 5)), ("y", (8,)), ("z", (3, 4))):
    g.inputs[name] = g.add_node("input", [], {"name": name, "dtype": "float32",
                                              "shape": list(shape)},
                                TensorType(shape, "float32"), name=name)
    feeds[name] = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
x = g.inputs["x"]
g.outputs["cols"] = b.reduce_sum(b.mul(x, x), axes=[0])
g.outputs["all"] = b.reduce_sum(b.mul(x, x), axes=[0, 1])
for k in ("y", "z"):
    g.outputs[k + "2"] = b.add(b.mul(g.inputs[k], b.const(2.0)), b.const(1.0))
with event.install_recorder("numba:compile") as rec:
    exe = compile_graph(g)
out = exe.run(feeds)
x64 = feeds["x"].astype(np.float64)
assert np.allclose(out["cols"], (x64 ** 2).sum(0), rtol=1e-5)
assert np.allclose(out["all"], (x64 ** 2).sum(), rtol=1e-5)
assert np.allclose(out["y2"], feeds["y"] * 2 + 1) and np.allclose(out["z2"], feeds["z"] * 2 + 1)
assert [s.kind for s in exe.steps].count("multi") == 1
fns = [e.data["dispatcher"].py_func for _, e in rec.buffer if e.is_start]
print(json.dumps([(f.__module__, f.__name__) for f in fns]))
"""


def test_a_cold_process_compiles_each_kernel_once_and_no_fill(tmp_path):
    """What numba compiles in a fresh process (no compile worker) for two reductions and a
    multi-tensor launch: each generated module's kernel once. The reductions' scratch rows
    were reset with `.fill`, an overload numba compiled anew in every process (and in the
    compile worker again, ~0.05 s each), and the multi-tensor launch compiled its kernel as a
    function of its own before the loop calling it (~0.1 s of its ~0.5)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "NNLANG_CACHE_DIR": str(tmp_path),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    done = subprocess.run([sys.executable, "-c", _COMPILES_PROBE], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    compiled = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [name for _, name in compiled if name == "fill_impl"]
    kernels = [module for module, _ in compiled if module.startswith("nnlang_kernels.")]
    assert len(kernels) == 3 and len(set(kernels)) == 3, compiled
