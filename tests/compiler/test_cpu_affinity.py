"""Where the numba backend's threads run during a step (backends/cpu_affinity.py)."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from nnlang.backends import cpu_affinity

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(cpu_affinity.allowed_cpus()) < 2,
    reason="needs a platform that can pin threads, and at least 2 CPUs")

HOME = cpu_affinity.allowed_cpus()[0]


@pytest.fixture(autouse=True)
def _pinning_on(monkeypatch):
    monkeypatch.delenv(cpu_affinity.ENV, raising=False)


def _in_thread(fn):
    box = []
    t = threading.Thread(target=lambda: box.append(fn()))
    t.start()
    t.join()
    return box[0]


def test_a_step_runs_on_the_first_cpu_and_gives_the_thread_its_affinity_back():
    def body():
        before = os.sched_getaffinity(0)
        with cpu_affinity.pinned():
            inside = os.sched_getaffinity(0)
        return before, inside, os.sched_getaffinity(0)
    before, inside, after = _in_thread(body)
    assert inside == {HOME}
    assert after == before == set(cpu_affinity.allowed_cpus())


def test_a_thread_kept_off_the_first_cpu_is_left_where_the_user_put_it():
    other = cpu_affinity.allowed_cpus()[1]

    def body():
        os.sched_setaffinity(0, {other})
        with cpu_affinity.pinned():
            return os.sched_getaffinity(0)
    assert _in_thread(body) == {other}


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(cpu_affinity.ENV, "0")

    def body():
        with cpu_affinity.pinned():
            return os.sched_getaffinity(0)
    assert _in_thread(body) == set(cpu_affinity.allowed_cpus())


def test_a_second_thread_stepping_meanwhile_is_not_pinned_to_the_same_cpu():
    inside, release = threading.Event(), threading.Event()

    def first():
        with cpu_affinity.pinned():
            inside.set()
            release.wait(10)
    t = threading.Thread(target=first)
    t.start()
    inside.wait(10)
    try:
        def second():
            with cpu_affinity.pinned():
                return os.sched_getaffinity(0)
        assert _in_thread(second) == set(cpu_affinity.allowed_cpus())
    finally:
        release.set()
        t.join()


def test_pool_workers_get_one_cpu_other_than_the_steps_while_a_step_runs():
    def affinities(ex):
        barrier = threading.Barrier(3)
        return list(ex.map(lambda _: (barrier.wait(10), os.sched_getaffinity(0))[1], range(3)))
    with ThreadPoolExecutor(3, initializer=cpu_affinity.register_worker) as ex:
        with cpu_affinity.pinned():
            during = affinities(ex)   # the threads start inside the step
        after = affinities(ex)
        with cpu_affinity.pinned():
            again = affinities(ex)    # started threads are moved when a step begins
    for cpus in during + again:
        assert len(cpus) == 1 and HOME not in cpus
    assert after == [set(cpu_affinity.allowed_cpus())] * 3


def test_a_numba_train_step_leaves_the_callers_affinity_as_it_was():
    import numpy as np

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
