"""Compile cost of a scan (runtime/scan.py, backends/numba_scan.py): the generated time-loop
driver calls the body's kernels with the signatures they were compiled for, and a second
compile of the same graph (a new process, here a new backend) compiles nothing and runs no
pass: the outer plan and both body plans come from the plan cache."""
from __future__ import annotations

import re

import numba
import numpy as np
import pytest

import nnlang
from nnlang.backends.numba_backend import NumbaBackend
from nnlang.backends.numba_scan import blas_gemms, copy_loop, render_driver
from nnlang.passes import plan
from nnlang.passes.pipeline import train_graph
from nnlang.runtime.executable import compile_graph


def _lstm_train_graph(batch=5):
    program = nnlang.load("models/lstm.nn", {"maxlen": 7, "units": 4, "vocab": 11,
                                             "embed": 3})
    return train_graph(program.graph, program.train, batch, "float32")


def _signatures(backend):
    """Every signature numba holds for the kernels and drivers the backend used."""
    return {sig for fn, _ in backend._entries for sig in fn.signatures}


def test_driver_reuses_the_body_kernels_and_a_warm_compile_compiles_nothing(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NNLANG_PLAN_CACHE", raising=False)
    g = _lstm_train_graph()
    cold = compile_graph(g, NumbaBackend())
    assert cold.summary()["scan_loops"] == 2     # forward and reverse (gradient) loops
    literal = [t for sig in _signatures(cold.backend) for t in sig
               if isinstance(t, numba.types.Literal)]
    # NOTE: a literal int in the driver made numba compile each body kernel a second time
    assert literal == []
    monkeypatch.setattr(plan, "optimize", lambda *a, **k: pytest.fail("a pass ran when warm"))
    warm = compile_graph(g, NumbaBackend())
    assert warm.backend.compiled == 0
    assert warm.backend.cache_hits == cold.backend.compiled + cold.backend.cache_hits


def test_copy_loop_copies_every_element_at_an_offset():
    src = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    dst = np.zeros((3, 4), np.float32)
    lines = copy_loop("dst", "", "src", "t, ", dst.shape)
    code = "def f(dst, src, t):\n" + "\n".join(f"    {line}" for line in lines)
    scope: dict = {}
    exec(code, scope)
    numba.njit(scope["f"])(dst, src, 1)
    np.testing.assert_array_equal(dst, src[1])


@numba.njit(cache=False)
def _double(n0, n1, in0, out0):
    """A kernel typed for a contiguous 2-D input: a restrided step of a sequence cannot be
    passed to it in place."""
    for i0 in range(n0):
        for i1 in range(n1):
            out0[i0, i1] = in0[i0, i1] * 2


def _run_driver(steps, init, carry, out, y, pairs, calls, kernel_of):
    source, args, _, _ = render_driver("scan_loop", steps, False, carry.shape[1], init, carry,
                                       out, y, pairs, calls, kernel_of,
                                       own={id(b) for b, _ in pairs} | {id(y)})
    scope: dict = {}
    exec(source.replace("cache=True", "cache=False"), scope)   # NOTE: no file to cache beside
    scope["scan_loop"](blas_gemms()["float32"], steps, 0, carry.shape[0], carry.shape[0], *args)
    return source


@pytest.mark.parametrize("kernel", [False, True])
def test_a_body_reads_a_column_slice_of_a_wider_sequence(kernel):
    """A body input whose sequence is a column slice of a wider one (rows 2W apart, where the
    body's buffer has them W apart) is read in place by a GEMM, at the sequence's leading
    dimension. A kernel typed for a contiguous 2-D input cannot take it so: that input alone
    is copied in per step, and the output still moves. Values against numpy either way."""
    rng = np.random.default_rng(0)
    steps, batch, width = 4, 3, 5
    wide = rng.standard_normal((steps, batch, 2 * width)).astype(np.float32)
    seq = wide[:, :, width:]
    buf, mid = np.zeros((batch, width), np.float32), np.zeros((batch, width), np.float32)
    w = rng.standard_normal((width, width)).astype(np.float32)
    init, carry, y = (np.zeros((batch, width), np.float32) for _ in range(3))
    out = np.zeros((steps, batch, width), np.float32)
    if kernel:
        _double(batch, width, buf, mid)
        sig = _double.signatures[0]
        calls = [(_double, (batch, width, buf, mid)), (np.matmul, (mid, w, y))]
        kernel_of = {_double: (_double, sig)}
    else:
        calls, kernel_of = [(np.matmul, (buf, w, y))], {}
    source = _run_driver(steps, init, carry, out, y, [(buf, seq)], calls, kernel_of)
    loop = source.split("for i in range(steps):")[1]
    copies_in = [ln for ln in loop.splitlines() if "[t, j0, j1]" in ln
                 and not ln.strip().startswith("p0[")]     # NOTE: p0, the carry
    assert bool(copies_in) == kernel, source      # a step copied in, or read in place
    assert ("np.int64(10)" in loop) != kernel, source     # the sequence's leading dimension
    want = np.einsum("tbk,kn->tbn", seq * (2 if kernel else 1), w)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [5, 64])
def test_the_driver_reads_and_writes_the_sequences_in_place(batch):
    """Neither LSTM loop copies a step of a sequence in: each body reads step t of its
    sequences and writes step t of the stacked output where they are (numba_scan's moves).
    The backward reads the forward's stored carries and pre-activations, column slices of
    its wider output, at that output's row stride. The loops run by rows (at batch 64 in two
    parts at once), each part with its rows of every sequence."""
    # NOTE: the module's kernel cache, not a cold one of its own: the sources are the same
    # either way, and batch 5's kernels are then warm for the tests below that read them
    exe = compile_graph(_lstm_train_graph(batch), NumbaBackend())
    drivers = [src for _, src in (s for s in exe._sources if isinstance(s, tuple))
               if "def scan_loop" in src]
    assert len(drivers) == 2
    for driver in drivers:
        # NOTE: p0 is the carry (copied before the loop, then from step t's output row); a
        # part's rows of it are a view vN
        carry = {"p0", *re.findall(r"(v\d+) = p0\[r0:r0 \+ nb\]", driver)}
        copies_in = [ln for ln in driver.splitlines()
                     if re.search(r"\[t, (r0 \+ )?j0, j1\]", ln.split("=")[-1])
                     and ln.strip().split("[")[0] not in carry]
        assert copies_in == [], driver
        # NOTE: the body's flat views of step t, in place: each passed as its whole sequence
        # at an offset, not sliced (numba compiled each slice for ~0.03 s)
        kernel_calls = [ln for ln in driver.splitlines() if re.match(r"\s+k\d+\(", ln)]
        assert kernel_calls and not any("[" in ln for ln in kernel_calls), driver
        assert any("t * batch * " in ln for ln in kernel_calls), driver
        assert "r0 * " in driver, driver
    backward = next(d for d in drivers if "t = steps - 1 - i" in d)
    width = exe.graph.node(next(n for n in exe.graph if n.op == "scan"
                                and not n.attrs["reverse"]).id).shape[2]
    assert f"np.int64({width})" in backward      # the forward output's row stride
    widths = sorted(int(exe.graph.node(s.nodes[0]).shape[2]) for s in exe.steps
                    if s.kind != "kernel" and exe.graph.node(s.nodes[0]).op == "scan")
    # [dh, dc, dgates] backward; [h, c, z, the step's incoming h and c] forward
    assert widths == [2 * 4 + 4 * 4, 2 * 4 + 4 * 4 + 2 * 4]


@pytest.mark.parametrize("model", ["lstm", "gru", "lstm_full"])
def test_one_driver_serves_every_batch_size(tmp_path, monkeypatch, model):
    """The loops' code holds no batch size (offsets of step t are written with the driver's
    `batch` argument), so a new batch size, such as an evaluation's last partial batch,
    compiles no loop of its own; a masked LSTM's backward too (its body sums each row)."""
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    program = nnlang.load(f"models/{model}.nn", {"units": 4, "vocab": 11, "embed": 3,
                                                 **({} if model == "lstm_full" else
                                                    {"maxlen": 7})})

    def drivers(batch):
        g = train_graph(program.graph, program.train, batch, "float32",
                        lengths={"seq": 6} if model == "lstm_full" else None)
        exe = compile_graph(g, NumbaBackend())
        return sorted(src for _, src in (s for s in exe._sources if isinstance(s, tuple))
                      if "def scan_loop" in src)
    first = drivers(5)
    assert len(first) == 2 and drivers(3) == first == drivers(64)
    assert all("r0 * " in d for d in first)


def test_the_lstm_backward_reads_what_the_forward_stored():
    """The last h's gradient starts the backward loop's carry (no [T, B, C] of zeros around
    one step), the carries come from the forward's own columns (no concat after the loop),
    and the recurrent weight enters the backward body transposed, a contiguous copy (the
    values are checked against finite differences in tests/ops/test_scan.py)."""
    exe = compile_graph(_lstm_train_graph(), NumbaBackend())
    g = exe.graph
    back = next(n for n in g if n.op == "scan" and n.attrs["reverse"])
    fwd = next(n for n in g if n.op == "scan" and not n.attrs["reverse"])
    assert not [n for n in g if n.op == "unslice" and len(n.shape) == 3]
    assert not [n for n in g if n.op == "concat" and len(n.shape) == 3]
    assert g.node(back.inputs[0]).op == "reshape"              # the last step's dh, dc
    # NOTE: the backward reads no input projection: the forward stored the pre-activations
    assert back.attrs["body"].n_seqs == 2
    carries = g.node(back.inputs[1])
    assert carries.op == "slice" and carries.inputs[0] == fwd.id and \
        carries.attrs["start"] == 2 * 4 + 4 * 4                # after [h, c, z]
    body = back.attrs["body"]
    weights = [g.node(i) for i in back.inputs[1 + body.n_seqs:]]
    # U^T alone: the bias is in the stored pre-activations
    assert [(w.op, tuple(w.shape)) for w in weights] == [("transpose", (4 * 4, 4))]
    drivers = [src for _, src in exe._sources if "def scan_loop" in src]
    backward = next(d for d in drivers if "t = steps - 1 - i" in d)
    # one fused cell kernel a step: dc * f, which the carry gradient stores, is in it too
    assert [ln.strip()[:3] for ln in backward.splitlines() if re.match(r"\s+k\d\(", ln)] == \
        ["k0("], backward
    (call,) = [ln for ln in backward.splitlines() if "gemm(" in ln]
    tb = re.search(r"\], np\.int64\(\d\), np\.int64\(\d+\), p\d+, np\.int64\((\d)\)", call)
    assert tb and tb.group(1) == "0", call    # the weight operand is read untransposed


@pytest.mark.parametrize("model,on,off", [("lstm", [1, 2], [2, 5]), ("gru", [1, 3], [2, 5])])
def test_a_bias_broadcast_over_time_is_a_weight_of_the_body(model, on, off):
    """fold hands the scan's bias "sequence" (one vector broadcast over time and batch) to the
    body as a weight: no per-step copy, no bias add before the loop, and drops the sequences
    a body never reads (the backward's zero dy; the LSTM's input projection, whose sums with
    h @ U the forward stored). With fold off they stay sequences, and three training steps
    give the same losses either way."""
    over = {"maxlen": 7, "units": 4, "vocab": 11, "embed": 3}
    program = nnlang.load(f"models/{model}.nn", over)
    feeds = {"tokens": np.random.default_rng(0).integers(0, 11, (5, 7)).astype(np.int32),
             "label": np.array([0, 1, 1, 0, 1], np.float32)}
    losses, seqs = {}, {}
    for disable in ((), ("fold",)):
        net = nnlang.compile(program, batch=5, seed=0, disable=disable)
        losses[disable] = [net.train_step(feeds) for _ in range(3)]
        g = net._exe("train", 5)[0].graph
        seqs[disable] = sorted(n.attrs["body"].n_seqs for n in g if n.op == "scan")
    assert seqs[()] == on and seqs[("fold",)] == off
    np.testing.assert_allclose(losses[()], losses[("fold",)], rtol=1e-6)


def test_a_cold_scan_driver_compiles_in_the_worker(tmp_path, monkeypatch):
    """Cold, the scan bodies' kernels and drivers wait with the rest of the executable's
    (`together` nests), so the compile worker can take them: here it is given everything. A
    driver's BLAS argument crosses as a placeholder and its kernels as their signatures
    (`KernelAddress`); this process then loads every kernel and driver from the worker's
    cache and runs them."""
    from nnlang.backends import numba_backend
    from nnlang.runtime.interpret import interpret
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba_backend, "workers", lambda: 2)
    sent = []
    real_send = numba_backend._send_jobs

    def send(worker, jobs, claims):
        sent.extend(fn for fn, _ in jobs)
        return real_send(worker, jobs, claims)
    monkeypatch.setattr(numba_backend, "_send_jobs", send)
    monkeypatch.setattr(numba_backend, "claim", lambda claims, k: False)   # all theirs
    g = _lstm_train_graph()
    exe = compile_graph(g, NumbaBackend())
    drivers = [fn for fn in sent if fn.__name__ == "scan_loop"]
    assert len(drivers) == 2
    assert exe.backend.compiled == 0          # the worker compiled them all
    rng = np.random.default_rng(0)
    feeds = {n.attrs["name"]: rng.integers(0, 11, n.shape).astype(n.dtype)
             if np.dtype(n.dtype).kind == "i" else rng.random(n.shape).astype(n.dtype)
             for n in g if n.op == "input" and n.attrs["name"] != "_rng"}
    params = {k: np.array(v) for k, v in exe.state.items()}
    want = {k: v for k, v in g.losses.items()}
    got = exe.run(feeds)
    ref = interpret(g, feeds, params, want=want)
    for k in want:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5)


def test_a_cold_lowerings_kernel_compiles_in_the_worker_and_a_warm_one_starts_none(
        tmp_path, monkeypatch):
    """The embedding's gradient (`scatter_add`: a lowering's kernel, not a generated one)
    missing from numba's disk cache waits with the generated kernels, so the compile worker
    can take it: compiled at once, it was a cold LSTM's first compile in this process, before
    the worker had started. On disk, it loads at once and starts no worker."""
    from numba.core import config

    from nnlang.backends import numba_backend
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path / "nn"))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))     # the worker's
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "numba"))  # this process's
    monkeypatch.setattr(numba_backend, "workers", lambda: 2)
    sent = []
    real_send = numba_backend._send_jobs

    def send(worker, jobs, claims):
        sent.extend(fn.__name__ for fn, _ in jobs)
        return real_send(worker, jobs, claims)
    monkeypatch.setattr(numba_backend, "_send_jobs", send)
    monkeypatch.setattr(numba_backend, "claim", lambda claims, k: False)   # all theirs
    g = _lstm_train_graph()
    cold = compile_graph(g, NumbaBackend())
    assert "scatter_add_kernel" in sent
    assert cold.backend.compiled == 0
    spawned = []
    monkeypatch.setattr(numba_backend, "_spawn_worker", lambda: spawned.append(1))
    warm = compile_graph(g, NumbaBackend())
    assert spawned == [] and warm.backend.compiled == 0
    assert warm.backend.cache_hits == cold.backend.cache_hits


def test_a_cold_parallel_lowering_runs_from_its_pending_entry(tmp_path, monkeypatch):
    """Dropout's `uniform_kernel` (a lowering's kernel compiled parallel) missing from numba's
    disk cache waits in `together` like a generated kernel; its call, which runs one parallel
    launch at a time, then runs the entry filled in later: the same mask as the reference."""
    from numba.core import config

    from nnlang.backends import numba_backend
    from nnlang.ir.graph import Builder, Graph
    from nnlang.ops.registry import TensorType
    from nnlang.passes.decompose import decompose
    from nnlang.runtime.interpret import interpret
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path / "nn"))
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "numba"))
    monkeypatch.setattr(numba_backend, "workers", lambda: 1)   # no worker: this process
    g = Graph()
    x = g.add_node("input", [], {"name": "x", "dtype": "float32", "shape": [64, 50]},
                   TensorType((64, 50), "float32"))
    g.inputs["x"] = x
    g.outputs["y"] = Builder(g).dropout(x, rate=0.3)
    low = decompose(g, training=True)
    after = []   # per compile of uniform_kernel: did it come after the build (Pending)?
    real_entry = NumbaBackend._entry

    def entry(self, fn, sig):
        if fn.__name__ == "uniform_kernel":
            after.append(self._waiting is None)
        return real_entry(self, fn, sig)
    monkeypatch.setattr(NumbaBackend, "_entry", entry)
    exe = compile_graph(low, NumbaBackend())
    assert after and all(after)
    feeds = {"x": np.ones((64, 50), np.float32), "_rng": 3}
    ref = interpret(low, feeds, want=dict(low.outputs))
    np.testing.assert_array_equal(exe.run(feeds)["y"], ref["y"])


def test_cold_jobs_go_costliest_first_with_each_kernel_once_and_claimed_once(tmp_path):
    """A cold compile's job list, which both processes go down claiming jobs: every signature
    of one kernel in one job (one cache index per kernel), the costliest first; a job claimed
    by one process is not the other's."""
    from nnlang.backends import numba_backend
    from nnlang.backends.compile_worker import claim

    def kernel(size):
        fn = type("K", (), {})()
        fn.py_func = type("F", (), {"__code__": type("C", (), {"co_code": b"x" * size})()})()
        return fn
    big, other, small = kernel(3000), kernel(2500), [kernel(200) for _ in range(3)]
    todo = [(small[0], "a"), (big, "a"), (other, "a"), (big, "b"), *[(k, "a") for k in small[1:]]]
    jobs = numba_backend._jobs(todo)
    assert [fn for fn, _ in jobs][:2] == [big, other]
    assert dict(jobs)[big] == ["a", "b"] and len(jobs) == 5
    assert [claim(str(tmp_path), k) for k in (0, 1, 0, 2, 1)] == [True, True, False, True, False]


def test_the_worker_runs_its_parents_nnlang_not_the_current_folders(tmp_path, monkeypatch):
    """The worker is this process's nnlang even where another comes first on a fresh
    process's path (the current folder, PYTHONPATH): that one, with other kernel helpers,
    would compile nothing (`linked_key`), or whatever its version does."""
    import os
    from nnlang.backends import numba_backend
    other = tmp_path / "nnlang" / "backends"
    other.mkdir(parents=True)
    (tmp_path / "nnlang" / "__init__.py").write_text("")
    (other / "__init__.py").write_text("")
    (other / "compile_worker.py").write_text(
        f"open({str(tmp_path / 'ran')!r}, 'w').write('the other nnlang')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    worker = numba_backend._spawn_worker()
    worker.stdin.close()   # NOTE: no jobs: this nnlang's worker ends once numba is warm
    assert worker.wait(timeout=300) is not None
    assert not (tmp_path / "ran").exists()


def test_the_worker_imports_what_its_parent_does_not_the_current_folders(tmp_path,
                                                                          monkeypatch):
    """A folder named numba in the current folder (a checkout of it), which the parent does
    not import (its path does not hold the current folder): a `-c` worker put that folder
    first on its path, imported that numba and died, so a cold compile ran all in the
    parent."""
    from nnlang.backends import numba_backend
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text(
        f"open({str(tmp_path / 'ran')!r}, 'w').write('the other numba')\n")
    monkeypatch.chdir(tmp_path)
    # a pathlib.Path there too (a notebook's sys.path.append(Path(...))) is skipped, not a
    # NameError in the worker's -c
    monkeypatch.setattr(numba_backend.sys, "path", [p for p in numba_backend.sys.path
                                                    if p not in ("", str(tmp_path))] + [tmp_path])
    worker = numba_backend._spawn_worker()
    # NOTE: an empty job list: the worker warms numba up, reads it and ends well (0)
    assert numba_backend._send_jobs(worker, [], str(tmp_path))
    assert worker.wait(timeout=300) == 0
    assert not (tmp_path / "ran").exists()


def test_a_worker_that_dies_costs_time_not_correctness(tmp_path, monkeypatch):
    """A compile worker that exits at once (here: a process that never reads its jobs) leaves
    the parent to compile everything, the jobs the dead worker could have claimed included."""
    import subprocess
    import sys

    from nnlang.backends import numba_backend
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba_backend, "workers", lambda: 2)
    started = []

    def short_lived():
        started.append(1)
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    monkeypatch.setattr(numba_backend, "_spawn_worker", short_lived)
    g = _lstm_train_graph()
    exe = compile_graph(g, NumbaBackend())
    assert started == [1]
    assert exe.backend.compiled == exe.summary()["distinct_kernels"]   # all in this process
    assert exe.summary()["scan_loops"] == 2
    warm = compile_graph(g, NumbaBackend())
    assert warm.backend.compiled == 0


def test_ctrl_c_while_compiling_stops_the_worker_instead_of_waiting_for_it(tmp_path,
                                                                            monkeypatch):
    """A Ctrl-C (KeyboardInterrupt) while this process compiles its share of a cold compile
    ends the worker and comes out at once; it waited for the worker's whole list before (here
    a worker that takes its jobs and then needs 5 minutes)."""
    import subprocess
    import sys
    import time

    from nnlang.backends import numba_backend
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba_backend, "workers", lambda: 2)
    workers, interrupts = [], []

    def slow_worker():
        workers.append(subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time; sys.stdin.buffer.read(); time.sleep(300)"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL))
        return workers[-1]
    real = NumbaBackend._entry

    def interrupted(self, fn, sig):
        if self._waiting is None and fn.py_func.__module__.startswith("nnlang_kernels."):
            interrupts.append(time.perf_counter())
            raise KeyboardInterrupt   # NOTE: the first kernel this process compiles itself
        return real(self, fn, sig)
    monkeypatch.setattr(numba_backend, "_spawn_worker", slow_worker)
    monkeypatch.setattr(NumbaBackend, "_entry", interrupted)
    g = _lstm_train_graph()
    try:
        with pytest.raises(KeyboardInterrupt):
            compile_graph(g, NumbaBackend())
        # NOTE: timed from the interrupt: building the graph up to the first kernel (2-3 s
        # here, several times that on a loaded host) counted against a 15 s bound before;
        # waiting for the worker would take its 300 s, so the bound only tells the two apart
        assert time.perf_counter() - interrupts[0] < 60
        assert len(workers) == 1 and workers[0].poll() is not None
    finally:
        for w in workers:   # NOTE: not left sleeping behind a failed test
            w.kill()
            w.wait()


def test_a_body_without_a_driver_runs_its_pending_kernels_in_the_python_loop(tmp_path,
                                                                            monkeypatch):
    """A body the driver cannot express keeps the Python loop; its kernel calls were built
    inside the outer `together`, still pending then, and run once it has filled them."""
    from nnlang.backends import numba_backend
    from nnlang.backends.numba_scan import Unsupported
    from nnlang.runtime.interpret import interpret
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))

    def cannot(*a, **k):
        raise Unsupported("not here")
    monkeypatch.setattr(numba_backend, "render_driver", cannot)
    g = _lstm_train_graph()
    exe = compile_graph(g, NumbaBackend())
    assert not any("def scan_loop" in src for _, src in exe._sources)
    rng = np.random.default_rng(1)
    feeds = {n.attrs["name"]: rng.integers(0, 11, n.shape).astype(n.dtype)
             if np.dtype(n.dtype).kind == "i" else rng.random(n.shape).astype(n.dtype)
             for n in g if n.op == "input" and n.attrs["name"] != "_rng"}
    params = {k: np.array(v) for k, v in exe.state.items()}
    got, ref = exe.run(feeds), interpret(g, feeds, params, want=dict(g.losses))
    for k in g.losses:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5)
