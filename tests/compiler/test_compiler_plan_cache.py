"""The on-disk plan cache: a second compile of the same graph skips the passes and runs the same
plan; anything that changes the graph, the switches or the compiler is a miss; a broken entry
costs only time."""
import os

import numpy as np
import pytest

import nnlang
from nnlang.ir.graph import Builder, Graph
from nnlang.passes import plan, plan_cache
from nnlang.runtime.executable import compile_graph
from tests.compiler.test_compiler_exec import leaf, rand


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NNLANG_PLAN_CACHE", raising=False)
    return tmp_path / "plans"


def small_graph(scale=0.5):
    g = Graph()
    b = Builder(g)
    x = leaf(g, "input", "x", (8, 5))
    w = leaf(g, "param", "w", (5, 3))
    h = b.tanh(b.mul(b.matmul(x, w), b.const(scale)))
    g.outputs["h"] = b.add(h, b.const(1.0))
    return g


def numpy_ref(x, w, scale=0.5):
    # NOTE: compare with an atol: the float32 tanh is within a few ulp of 1, so tanh + 1 near
    # 0 (an input of ~-3) has a relative error of ~1e-5 (the inputs come from a generator the
    # whole test run shares, so which values occur depends on the tests before)
    return np.tanh(x @ w * scale) + 1.0


def passes_must_not_run(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the optimizing passes ran: the cached plan was not used")
    monkeypatch.setattr(plan, "optimize", fail)


def test_second_compile_loads_the_plan_and_computes_the_same(cache, monkeypatch):
    x, w = rand((8, 5)), rand((5, 3))
    first = compile_graph(small_graph(), state={"w": w})
    assert len(list(cache.glob("*.pkl"))) == 1
    passes_must_not_run(monkeypatch)
    second = compile_graph(small_graph(), state={"w": w})
    np.testing.assert_allclose(second.run({"x": x})["h"], numpy_ref(x, w), rtol=1e-5, atol=1e-6)
    assert second.summary() == first.summary()


def test_a_changed_graph_or_switch_is_a_miss(cache):
    base = plan_cache.graph_key(small_graph())
    assert plan_cache.graph_key(small_graph()) == base        # deterministic
    assert plan_cache.graph_key(small_graph(scale=0.25)) != base  # a constant's value
    assert plan_cache.graph_key(small_graph(), disable=("fuse",)) != base
    g = small_graph()
    g.node(g.outputs["h"]).attrs["root"] = True
    assert plan_cache.graph_key(g) != base                    # an attribute
    x, w = rand((8, 5)), rand((5, 3))
    exe = compile_graph(small_graph(scale=0.25), state={"w": w})
    np.testing.assert_allclose(exe.run({"x": x})["h"], numpy_ref(x, w, 0.25), rtol=1e-5, atol=1e-6)


def test_a_set_optimizer_of_another_value_is_a_miss_and_emit_shows_its_own(cache):
    """Two --set optimizer values of one length made ops whose spans lay at the same places
    on the command line: one key, so --emit fused of the second showed the first's value in
    its @(...) (a plan with the other run's spans). The words of such a span are in the key;
    the kernels are the same, so the second compiles none."""
    from nnlang.errors import Given, Span
    from nnlang.runtime.net import Net
    from nnlang.train.overrides import resolve
    src = """model M {
  input x: float32[batch, 3]
  loss l = reduce_sum(dense(x, 2))
}
"""
    shown, compiled = [], []
    for lr in ("0.5", "0.7"):
        item = f"optimizer=sgd(lr = {lr})"
        at = Span("<command line>", 1, 17, 1, 6 + len(item), f"--set {item}")
        program, cfg, *_ = resolve(src, None, Given({"optimizer": f"sgd(lr = {lr})"},
                                                    {"optimizer": (at, at)}))
        net = Net(program, backend="numba", batch=2, config=cfg)
        compiled.append(net._exe("train", 2)[0].backend.compiled)
        shown.append({line.split("@", 1)[1] for line in nnlang.emit(net, "fused").splitlines()
                      if "@(" in line})
    assert shown == [{"(--set optimizer=sgd(lr = 0.5))"}, {"(--set optimizer=sgd(lr = 0.7))"}]
    assert compiled[1] == compiled[0]   # the process's count: nothing compiled again


def test_the_compiler_source_is_part_of_the_key(cache, monkeypatch):
    base = plan_cache.graph_key(small_graph())
    monkeypatch.setattr(plan_cache, "compiler_fingerprint", lambda: "an edited pass")
    assert plan_cache.graph_key(small_graph()) != base


def test_a_corrupt_entry_is_a_miss_and_is_rewritten(cache):
    compile_graph(small_graph(), state={"w": rand((5, 3))})
    (entry,) = cache.glob("*.pkl")
    entry.write_bytes(b"not a pickle")
    x, w = rand((8, 5)), rand((5, 3))
    exe = compile_graph(small_graph(), state={"w": w})
    np.testing.assert_allclose(exe.run({"x": x})["h"], numpy_ref(x, w), rtol=1e-5, atol=1e-6)
    assert plan_cache.load(entry.stem) is not None


@pytest.mark.parametrize("where", ["constant", "header", "start", "middle", "end"])
def test_a_damaged_entry_is_a_warning_and_computes_as_a_fresh_compile(where, cache, capsys):
    """A pickle has no checksum: a flipped bit in a constant once trained with another value,
    silently, on every later run."""
    x, w = rand((8, 5)), rand((5, 3))
    compile_graph(small_graph(scale=0.3), state={"w": w})
    (entry,) = cache.glob("*.pkl")
    data = bytearray(entry.read_bytes())
    at = {"constant": data.find(np.float32(0.3).tobytes()), "header": 20, "start": 120,
          "middle": len(data) // 2, "end": len(data) - 3}[where]
    assert at > 0
    data[at] ^= 0x04
    entry.write_bytes(bytes(data))
    capsys.readouterr()
    exe = compile_graph(small_graph(scale=0.3), state={"w": w})
    np.testing.assert_allclose(exe.run({"x": x})["h"], numpy_ref(x, w, 0.3), rtol=1e-5, atol=1e-6)
    assert "is damaged" in capsys.readouterr().err
    assert plan_cache.load(entry.stem) is not None  # rebuilt


def test_switched_off_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv("NNLANG_PLAN_CACHE", "0")
    compile_graph(small_graph(), state={"w": rand((5, 3))})
    assert not cache.exists() or not list(cache.iterdir())


def test_a_whole_model_trains_the_same_from_the_cached_plan(cache, monkeypatch):
    """Two fresh Nets of the MLP, the second built from the cached plan: same losses over three
    Adam steps as the first (which ran the passes)."""
    rng = np.random.default_rng(1)
    feeds = {"image": rng.random((16, 784), dtype=np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32)}
    runs = []
    for _ in range(2):
        net = nnlang.compile("models/mlp.nn", batch=16, seed=0)
        runs.append([net.train_step(feeds) for _ in range(3)])
        passes_must_not_run(monkeypatch)
    assert runs[0] == runs[1]
    assert runs[0][2] < runs[0][0]


def test_old_entries_are_pruned(cache, monkeypatch):
    monkeypatch.setattr(plan_cache, "KEEP", 2)
    for scale in (0.1, 0.2, 0.3):
        compile_graph(small_graph(scale), state={"w": rand((5, 3))})
    assert len(list(cache.glob("*.pkl"))) == 2
    assert plan_cache.load(plan_cache.graph_key(small_graph(0.3))) is not None


def test_an_entry_another_process_deleted_while_pruning_is_no_error(cache, monkeypatch):
    """Ranks sharing a cache prune it at once: a file gone between the listing and its stat
    was reported as an unwritable cache."""
    monkeypatch.setattr(plan_cache, "KEEP", 1)
    cache.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (cache / f"{name}.pkl").write_bytes(b"x")
    listed = list(cache.glob("*.pkl"))
    (cache / "b.pkl").unlink()
    monkeypatch.setattr(type(cache), "glob", lambda self, pattern: iter(listed))
    plan_cache._prune(cache)
    assert len([p for p in listed if p.exists()]) == 1


def test_the_collector_is_paused_while_compiling_and_restored_after(cache, monkeypatch):
    """The build runs with gc off (nnlang/gc_pause.py) and leaves it as it found it, after an
    error too."""
    import gc

    from nnlang.gc_pause import paused_gc
    seen = []
    real = plan.optimize
    monkeypatch.setattr(plan, "optimize", lambda *a, **k: seen.append(gc.isenabled()) or
                        real(*a, **k))
    assert gc.isenabled()
    nnlang.compile("models/mlp.nn", batch=4).train_step(
        {"image": np.zeros((4, 784), np.float32), "label": np.zeros(4, np.int32)})
    assert seen == [False] and gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("a failed build")
    assert gc.isenabled()


def test_two_threads_building_at_once_keep_the_collector_paused_until_both_are_done():
    """Two Nets compiled in two threads (a library use): the first build to finish turned the
    collector back on under the second (`was` is per call), and a second build that read
    `gc.isenabled()` between the first's read and its `disable()` left it off for good. The
    pause now counts its users: off while any build runs, as it was once the last one ends."""
    import gc
    import threading

    from nnlang.gc_pause import paused_gc
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first():
        with paused_gc():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with paused_gc():
            b_in.set()
            a_out.wait(10)
            seen.append(gc.isenabled())   # NOTE: the first build is over, this one is not

    assert gc.isenabled()
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [False] and gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_while_another_thread_builds_collects_garbage():
    """A fork while another thread compiles (a data loader's workers started meanwhile): the
    child had the collector off and the build counted as running, with no thread left to
    end it, so it never collected again. The child runs no build: the collector is on."""
    import gc
    import threading

    from nnlang.gc_pause import paused_gc
    inside, done = threading.Event(), threading.Event()

    def build():
        with paused_gc():
            inside.set()
            done.wait()   # NOTE: held until the child has answered (the test sets it)
    t = threading.Thread(target=build)
    t.start()
    try:
        assert inside.wait(120) and not gc.isenabled()
        pid = os.fork()
        if pid == 0:   # NOTE: the child reports by exit code only
            with paused_gc():
                pass
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        done.set()
        t.join()
    assert gc.isenabled()
