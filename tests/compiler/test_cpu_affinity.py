"""Where the numba backend's threads run during a step (backends/cpu_affinity.py)."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nnlang.backends import cpu_affinity

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(cpu_affinity.allowed_cpus()) < 2,
    reason="needs a platform that can pin threads, and at least 2 CPUs")

ALL = set(cpu_affinity.allowed_cpus())


@pytest.fixture(autouse=True)
def _pinning_on(monkeypatch):
    monkeypatch.delenv(cpu_affinity.ENV, raising=False)


def _in_thread(fn):
    box = []
    t = threading.Thread(target=lambda: box.append(fn()))
    t.start()
    t.join()
    return box[0]


def test_a_step_stays_on_one_cpu_and_gives_the_thread_its_affinity_back():
    def body():
        before = os.sched_getaffinity(0)
        with cpu_affinity.pinned():
            inside = os.sched_getaffinity(0)
            now = cpu_affinity.current_cpu()
        return before, inside, now, os.sched_getaffinity(0)
    before, inside, now, after = _in_thread(body)
    assert len(inside) == 1 and inside <= ALL
    assert now in inside   # /proc agrees with the pinning
    assert after == before == ALL


def test_a_thread_the_user_placed_is_left_where_the_user_put_it():
    mine = set(cpu_affinity.allowed_cpus()[1:])

    def body():
        os.sched_setaffinity(0, mine)
        with cpu_affinity.pinned():
            return os.sched_getaffinity(0)
    assert _in_thread(body) == mine


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(cpu_affinity.ENV, "0")

    def body():
        with cpu_affinity.pinned():
            return os.sched_getaffinity(0)
    assert _in_thread(body) == ALL


def test_a_second_thread_stepping_meanwhile_is_not_pinned_to_the_same_cpu():
    inside, release = threading.Event(), threading.Event()

    def first():
        with cpu_affinity.pinned():
            inside.set()
            # NOTE: no timeout: a 10 s one could end this step on a stalled host before the second
            # began, which was then pinned (a failure that was only the scheduler's)
            release.wait()
    t = threading.Thread(target=first)
    t.start()
    try:
        assert inside.wait(120)
        def second():
            with cpu_affinity.pinned():
                return os.sched_getaffinity(0)
        assert _in_thread(second) == ALL
    finally:
        release.set()
        t.join()


def test_pool_workers_get_one_cpu_other_than_the_steps_while_a_step_runs():
    def affinities(ex):
        barrier = threading.Barrier(3)   # NOTE: a hang guard, past any scheduling delay
        return list(ex.map(lambda _: (barrier.wait(120), os.sched_getaffinity(0))[1], range(3)))
    with ThreadPoolExecutor(3, initializer=cpu_affinity.register_worker) as ex:
        with cpu_affinity.pinned():
            home = os.sched_getaffinity(0)
            during = affinities(ex)   # the threads start inside the step
        after = affinities(ex)
        with cpu_affinity.pinned():
            home_again = os.sched_getaffinity(0)
            again = affinities(ex)    # started threads are moved when a step begins
    for cpus in during:
        assert len(cpus) == 1 and not cpus & home
    for cpus in again:
        assert len(cpus) == 1 and not cpus & home_again
    assert after == [ALL] * 3


def test_a_numba_train_step_leaves_the_callers_affinity_as_it_was():
    import nnlang
    src = """model M {
  input x: float32[batch, 8]
  input y: int32[batch]
  logits = dense(x, 3)
  loss cross_entropy(logits, y)
}
train M { optimizer = sgd(lr = 0.1)  batch = 4 }
"""
    net = nnlang.compile(src, backend="numba", batch=4)
    feeds = {"x": np.ones((4, 8), np.float32), "y": np.array([0, 1, 2, 0], np.int32)}

    def body():
        before = os.sched_getaffinity(0)
        net.train_step(feeds)
        return before, os.sched_getaffinity(0)
    before, after = _in_thread(body)
    assert after == before


@pytest.mark.parametrize("threads,split,pins", [(1, True, True), (1, False, False),
                                                (2, True, False)])
def test_the_numba_session_pins_only_steps_that_its_pool_splits(threads, split, pins):
    from nnlang.backends.numba_backend import NumbaBackend

    def body():
        with NumbaBackend().session(threads, split):
            return os.sched_getaffinity(0)
    got = _in_thread(body)
    assert (len(got) == 1) if pins else got == ALL


def test_an_executable_knows_whether_its_step_splits_work():
    import nnlang

    def exe(width):
        src = f"""model M {{
  input x: float32[batch, {width}]
  output y = dense(x, {width}, use_bias = false)
}}
"""
        net = nnlang.compile(src, backend="numba", batch=256)
        net.forward({"x": np.ones((256, width), np.float32)})
        return net._exes[("predict", 256)][0]
    from nnlang.backends.blas import workers
    assert not exe(8).splits                        # 2*256*8*8 flops: one call, no pool
    assert exe(1024).splits == (workers() > 1)     # 2*256*1024*1024: split by rows
