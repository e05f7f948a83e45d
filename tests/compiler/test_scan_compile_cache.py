"""Compile cost of a scan (runtime/scan.py, backends/numba_scan.py): the generated time-loop
driver calls the body's kernels with the signatures they were compiled for, and a second
compile of the same graph (a new process, here a new backend) compiles nothing and runs no
pass: the outer plan and both body plans come from the plan cache."""
from __future__ import annotations

import numba
import numpy as np
import pytest

import nnlang
from nnlang.backends.numba_backend import NumbaBackend
from nnlang.backends.numba_scan import copy_loop
from nnlang.passes import plan
from nnlang.passes.pipeline import train_graph
from nnlang.runtime.executable import compile_graph


def _lstm_train_graph():
    program = nnlang.load("models/lstm.nn", {"maxlen": 7, "units": 4, "vocab": 11,
                                             "embed": 3})
    return train_graph(program.graph, program.train, 5, "float32")


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


def test_the_driver_reads_and_writes_the_sequences_in_place(tmp_path, monkeypatch):
    """The LSTM's forward loop copies nothing in per step but the stored GEMM result: its body
    reads step t of the input projection and writes step t of the stacked output where they
    are (numba_scan.render_driver's moves), and the backward loop stacks dgates once."""
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    exe = compile_graph(_lstm_train_graph(), NumbaBackend())
    drivers = [src for _, src in (s for s in exe._sources if isinstance(s, tuple))
               if "def scan_loop" in src]
    assert len(drivers) == 2
    forward = next(d for d in drivers if "t = i\n" in d)
    # NOTE: p0 is the carry (copied before the loop, then from step t's output row)
    copies_in = [ln for ln in forward.splitlines() if "[t, j0, j1]" in ln.split("=")[-1]
                 and not ln.strip().startswith("p0[")]
    assert copies_in == [], forward
    assert "[t * " in forward          # the body's flat views of step t, in place
    widths = sorted(int(exe.graph.node(s.nodes[0]).shape[2]) for s in exe.steps
                    if s.kind != "kernel" and exe.graph.node(s.nodes[0]).op == "scan")
    assert widths == [2 * 4 + 4 * 4] * 2   # [h, c, z] forward; [dh, dc, dgates] backward
