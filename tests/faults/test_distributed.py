"""Data-parallel runs that go wrong: a batch the ranks cannot split, an MPI launch without
mpi4py, a rank killed mid-epoch (the job ends, the checkpoint survives, --resume finishes the
run as if nothing happened), Ctrl-C reaching one rank only."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from nnlang.backends import collective
from nnlang.train import checkpoint
from tests.faults.conftest import cli
from tests.test_distributed import _nnlang, mpirun
from tests.tiny_run import tiny_data, tiny_source


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.nn").write_text(tiny_source())
    tiny_data(tmp_path)
    return tmp_path


@pytest.mark.parametrize("batch, hint", [("3", "--batch 2"), ("5", "--batch 4")])
def test_batch_that_does_not_split_over_the_ranks(tiny, monkeypatch, batch, hint):
    """In process, as rank 0 of 2 (the next test runs the real mpirun)."""
    world = collective.World()
    world.size = 2
    monkeypatch.setattr(collective, "_current", world)
    monkeypatch.setattr(collective, "launched_size", lambda: 2)
    out = cli("train", str(tiny / "tiny.nn"), "--batch", batch, "--out", str(tiny / "run"))
    assert f"the batch of {batch} does not split over 2 processes" in out and hint in out
    assert not (tiny / "run" / "checkpoint.npz").exists()


def test_batch_that_does_not_split_points_at_the_train_section(tiny, monkeypatch):
    """The batch written in the file: the error shows where (the --batch flag: it says so)."""
    world = collective.World()
    world.size = 2
    monkeypatch.setattr(collective, "_current", world)
    monkeypatch.setattr(collective, "launched_size", lambda: 2)
    src = (tiny / "tiny.nn").read_text().replace("batch = 4", "batch = 5")
    (tiny / "tiny.nn").write_text(src)
    out = cli("train", str(tiny / "tiny.nn"), "--out", str(tiny / "run"))
    line = src.splitlines().index("  batch = 5") + 1
    assert f"tiny.nn:{line}:11: error: the batch of 5 does not split over 2 processes" in out


@pytest.mark.slow
def test_batch_that_does_not_split_ends_every_rank(tiny):
    got = mpirun(2, _nnlang(), "train", "tiny.nn", "--batch", "3", cwd=tiny, timeout=600)
    assert got.returncode != 0
    text = got.stdout + got.stderr
    assert "the batch of 3 does not split over 2 processes" in text
    assert "--batch 2" in text and "Traceback" not in text
    assert not list(tiny.glob("runs/*/checkpoint.npz"))


def test_an_error_before_the_ranks_join_is_said_once(tiny):
    """An unknown --backend is refused before the ranks join: every rank said it (the error
    twice under `mpirun -n 2`), where an error after joining was rank 0's alone."""
    got = mpirun(2, _nnlang(), "train", "tiny.nn", "--backend", "tpu", cwd=tiny)
    assert got.returncode != 0
    text = got.stdout + got.stderr
    assert text.count("error: unknown backend 'tpu'") == 1, text


def test_a_loss_the_ranks_cannot_average_ends_the_run_before_it_writes(tiny):
    """`mpirun -n 2 nnlang train` of a model whose loss sums over the batch: one located error,
    no run directory (it trained, silently to other parameters than one process)."""
    src = (tiny / "tiny.nn").read_text().replace(
        "loss cross_entropy(logits, label)", "loss sum(square(logits)) * 0.01")
    (tiny / "tiny.nn").write_text(src)
    got = mpirun(2, _nnlang(), "train", "tiny.nn", "--out", "run", cwd=tiny)
    text = got.stdout + got.stderr
    assert got.returncode != 0, text
    assert "tiny.nn:8:8: error: the loss is a sum over the batch's rows" in text
    assert "Traceback" not in text and not (tiny / "run").exists()


def test_ranks_started_with_different_settings_stop_at_once(tiny):
    """Two ranks whose --max-steps differ (two machines whose files differ): one clear error
    on both before training, not collectives of different sizes (those crashed in MPI)."""
    import subprocess

    from tests.test_distributed import _mpirun, mpi_env
    one = [_nnlang(), "train", "tiny.nn", "--out", "run"]
    got = subprocess.run([_mpirun(), "--oversubscribe", "-n", "1", *one, "--max-steps", "3",
                          ":", "-n", "1", *one, "--max-steps", "4"], cwd=tiny, env=mpi_env(),
                         capture_output=True, text=True, timeout=240)
    text = got.stdout + got.stderr
    assert got.returncode != 0
    assert "the 2 processes were not started alike: their max_steps differ" in text, text
    assert "Traceback" not in text and not (tiny / "run" / "checkpoint.npz").exists()


def test_ranks_with_other_data_of_the_same_shape_stop_and_say_it_once(tiny):
    """A stale copy of the data on one machine (same rows, other values) trained silently on
    the mix of both; the error that every rank meets is printed by rank 0 alone."""
    import shutil
    import subprocess

    from tests.test_distributed import _mpirun, mpi_env
    other = tiny / "other"
    other.mkdir()
    shutil.copy(tiny / "tiny.nn", other / "tiny.nn")
    data = dict(np.load(tiny / "tiny.npz"))
    data = {k: (v * 2 + 1 if v.dtype.kind == "f" else v) for k, v in data.items()}
    np.savez(other / "tiny.npz", **data)
    one = [_nnlang(), "train", "tiny.nn", "--out", str(tiny / "run")]
    got = subprocess.run([_mpirun(), "--oversubscribe", "-n", "1", "--wdir", str(tiny), *one,
                          ":", "-n", "1", "--wdir", str(other), *one], env=mpi_env(),
                         capture_output=True, text=True, timeout=240)
    text = got.stdout + got.stderr
    assert got.returncode != 0
    assert text.count("the 2 processes were not started alike: their data differ") == 1, text
    assert not (tiny / "run" / "checkpoint.npz").exists()


def test_the_reference_backend_refuses_several_ranks(tiny, monkeypatch):
    """The interpreter has no collectives: each rank would silently train its own model."""
    monkeypatch.setattr(collective, "launched_size", lambda: 2)
    out = cli("train", str(tiny / "tiny.nn"), "--backend", "reference", "--out",
              str(tiny / "run"))
    assert "the reference backend runs in one process" in out and "--backend numba" in out


def test_mpi_launch_without_mpi4py(tiny, monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setattr(collective, "_current", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # NOTE: what a missing package does
    out = cli("train", str(tiny / "tiny.nn"), "--out", str(tiny / "run"))
    assert "started by an MPI launcher (2 ranks) but mpi4py cannot be imported" in out
    assert "pip install 'nnlang[mpi]'" in out


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_bad_timeout_setting(monkeypatch, value):
    import nnlang
    monkeypatch.setenv(collective.TIMEOUT_VAR, value)
    with pytest.raises(nnlang.NNError, match=f"NNLANG_DIST_TIMEOUT='{value}' is not a positive"):
        collective.World(HungComm())


class HungComm:
    """An MPI communicator whose peer never answers."""

    def Get_rank(self):  # noqa: N802  (mpi4py's names)
        return 0

    def Get_size(self):  # noqa: N802
        return 2


def _params(path) -> dict:
    return checkpoint.load(path).state


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_resume_finishes_it(tiny):
    """kill -9 of rank 1 at global step 15 (epoch 2 of 2, 10 steps each): the job ends with
    a message instead of hanging, epoch 1's checkpoint is intact, and `--resume` (with 2
    ranks again) ends with the parameters of an uninterrupted run."""
    from nnlang.train.trainer import fit
    whole = fit(str(tiny / "tiny.nn"), out=tiny / "whole", progress=False)
    env = {"NNLANG_TEST_SIGNAL_AT_STEP": "15:KILL", "NNLANG_TEST_SIGNAL_RANK": "1",
           collective.TIMEOUT_VAR: "20"}
    got = mpirun(2, _nnlang(), "train", "tiny.nn", "--out", "run", cwd=tiny, env=env,
                 timeout=150)
    text = got.stdout + got.stderr
    assert got.returncode != 0, text
    assert "signal 9" in text or "waited 20 s" in text, text
    saved = checkpoint.load(tiny / "run" / "checkpoint.npz")
    assert (saved.epoch, saved.meta["step_in_epoch"]) == (1, 0)
    resumed = mpirun(2, _nnlang(), "train", "tiny.nn", "--out", "run", "--resume", cwd=tiny,
                     timeout=150)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = _params(whole.checkpoint), _params(tiny / "run" / "checkpoint.npz")
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_both_at_the_same_step(tiny):
    env = {"NNLANG_TEST_SIGNAL_AT_STEP": "3", "NNLANG_TEST_SIGNAL_RANK": "1"}
    got = mpirun(2, _nnlang(), "train", "tiny.nn", "--out", "run", cwd=tiny, env=env,
                 timeout=150)
    text = got.stdout + got.stderr
    assert "interrupted at epoch 1, step 10" in text, text
    assert "resume with: nnlang train" in text
    assert (tiny / "run" / "checkpoint.npz").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("rank", ["0", "1"])
def test_ctrl_c_during_validation_on_one_rank_stops_both_after_it(tiny, rank):
    """The ranks finish the validation together (a rank that stopped alone left the other
    waiting 60 s in its allreduce), then stop at the same place and resume from it."""
    env = {"NNLANG_TEST_SIGNAL_AT_STEP": "val", "NNLANG_TEST_SIGNAL_RANK": rank,
           collective.TIMEOUT_VAR: "20"}
    got = mpirun(2, _nnlang(), "train", "tiny.nn", "--out", "run", cwd=tiny, env=env,
                 timeout=150)
    text = got.stdout + got.stderr
    assert got.returncode == 130, text
    # NOTE: the ranks act on it after the epoch's end, which counted that validation
    assert "interrupted after epoch 1 (global step 10)" in text and "waited" not in text, text
    assert checkpoint.load(tiny / "run" / "checkpoint.npz").epoch == 1


HUNG_RANK = """
import threading
from nnlang.backends.collective import World

class Hung:  # an MPI communicator whose peer never answers
    def Get_rank(self): return 0
    def Get_size(self): return 2
    def Allreduce(self, *a, **k): threading.Event().wait()

World(Hung(), timeout=1.0).sum([1.0], "reading the steps' losses")
"""


def test_a_rank_that_never_answers_ends_the_wait(tmp_path):
    """The watchdog: a collective that waits past the timeout says why and exits (mpirun then
    ends the other ranks) instead of hanging the job."""
    import subprocess
    got = subprocess.run([sys.executable, "-c", HUNG_RANK], capture_output=True, text=True,
                         timeout=300)
    assert got.returncode == 1
    assert "rank 0 of 2 waited 1 s in reading the steps' losses without an answer" in got.stderr
    assert "another rank died or hangs" in got.stderr and "--resume" in got.stderr


LATE_TIMEOUT = """
import threading
import nnlang.distributed as dist
from nnlang.backends import collective

class Hung:  # an MPI communicator whose peer never answers
    def Get_rank(self): return 0
    def Get_size(self): return 2
    def Allreduce(self, *a, **k): threading.Event().wait()

collective._mpi_comm = Hung
print("rank", dist.rank(), "of", dist.size(), flush=True)  # joins the group with the default
dist.init(timeout=1)
dist.allreduce_mean([1.0])
"""


def test_init_timeout_holds_after_the_group_was_joined(tmp_path):
    """`dist.rank()` before `dist.init(timeout=1)` joined the group with the default 60 s, and
    the later init's timeout was dropped: a rank waited 60 s, not the 1 s asked for."""
    import os
    import subprocess
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2"}
    env.pop(collective.TIMEOUT_VAR, None)
    # NOTE: 55 s: the default 60 s wait alone runs past it, while a slow start-up on a loaded
    # host (3 s here, the 1 s wait included) has room; it was 30 s
    try:
        got = subprocess.run([sys.executable, "-c", LATE_TIMEOUT], capture_output=True,
                             text=True, timeout=55, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("init(timeout=1) after dist.rank() did not set the wait")
    assert got.returncode == 1, got.stdout + got.stderr
    assert "rank 0 of 2 waited 1 s in allreduce_mean without an answer" in got.stderr


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_others(tiny):
    """Rank 1 fails at its start (its model file is missing) while rank 0 goes on to compile
    and wait for it: the job ends with rank 1's error, not a hang."""
    from tests.test_distributed import _mpirun, mpi_env
    import subprocess
    cmd = [_mpirun(), "--oversubscribe", "-n", "1", _nnlang(), "train", "tiny.nn", "--out", "run",
           ":", "-n", "1", _nnlang(), "train", "missing.nn", "--out", "run"]
    got = subprocess.run(cmd, cwd=tiny, env=mpi_env(), capture_output=True, text=True,
                         timeout=150)
    text = got.stdout + got.stderr
    assert got.returncode != 0, text
    assert "missing.nn" in text and "Traceback" not in text
    assert "run directory:" not in text


def test_a_signal_just_after_the_ranks_agreed_does_not_stop_one_rank_alone(tiny, monkeypatch):
    """`pkill -TERM -f "nnlang train"` reaches the ranks one after another. A signal that
    landed on a rank just after the read where the ranks agree to stop (answer: no) stopped
    that rank alone at the check that followed, while the other went on into validation and
    waited in its collective for 60 s, then ended with exit 1. The rank now stops where the
    ranks agree next (here: after the epoch's validation, which every rank runs), as a
    Ctrl-C during validation does. In process, as rank 0 of 2 whose peer holds the same
    shard (tests/test_distributed.py `Copies`)."""
    import signal

    from nnlang.train import data_parallel
    from nnlang.train.trainer import fit
    from tests.test_distributed import Copies
    monkeypatch.setattr(collective, "_current", Copies(2))
    monkeypatch.setattr(collective, "launched_size", lambda: 2)
    monkeypatch.chdir(tiny)
    agree, calls = data_parallel.Ranks.agree, []

    def agree_then_signal(self, taken, stop):
        got = agree(self, taken, stop)
        calls.append(got[1])
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)   # NOTE: lands before the next bytecode
        return got
    monkeypatch.setattr(data_parallel.Ranks, "agree", agree_then_signal)
    h = fit("tiny.nn", out="run", progress=False)
    assert not calls[0] and h.stopped == "interrupted", (calls, h.stopped)
    assert len(h.rows) == 1 and "val_loss" in h.rows[0], h.rows   # the validation all ran
    assert checkpoint.load(tiny / "run").epoch == 1


def test_a_rank_stopped_by_anothers_sigterm_says_and_exits_as_sigterm(tiny, monkeypatch, capsys):
    """`pkill -TERM` (or -HUP) reaches the ranks one after another: a rank whose own signal
    had not come yet when the ranks agreed to stop (another rank's had) said "interrupted" and
    exited 130 as if Ctrl-C, so rank 0's word and mpirun's exit status were SIGINT's or
    SIGTERM's by chance. Every rank now stops by the signal the ranks agreed on. In process,
    as rank 0 of 2 whose peer got SIGTERM before the first read."""
    import signal

    from nnlang.train.data_parallel import STOPS
    from nnlang.train.trainer import fit
    from tests.test_distributed import Copies
    world = Copies(2)
    sums = []

    def peer_terminated(values, what=""):
        total = 2 * np.asarray(values, np.float64)
        if what == "reading the steps' losses" and not sums:
            # NOTE: the first read: the peer's vote is SIGTERM, this rank's none
            total[:len(STOPS)] = np.asarray(values[:len(STOPS)]) + \
                [s == signal.SIGTERM for s in STOPS]
            sums.append(what)
        return total
    world.sum = peer_terminated
    monkeypatch.setattr(collective, "_current", world)
    monkeypatch.setattr(collective, "launched_size", lambda: 2)
    monkeypatch.chdir(tiny)
    h = fit("tiny.nn", out="run", progress=False)
    out = " ".join(capsys.readouterr().out.split())
    assert h.stopped == "terminated", out
    assert "terminated (SIGTERM) at epoch 1, step 10 (global step 10)" in out, out


@pytest.mark.slow
@pytest.mark.parametrize("kind, code, word", [("TERM", 143, "terminated (SIGTERM)"),
                                              ("HUP", 129, "hung up (SIGHUP)")])
def test_sigterm_on_one_rank_stops_both_as_sigterm(tiny, kind, code, word):
    """The real job of the test above: rank 1 alone gets SIGTERM (SIGHUP); rank 0 said
    "interrupted" and the job exited 130."""
    env = {"NNLANG_TEST_SIGNAL_AT_STEP": f"3:{kind}", "NNLANG_TEST_SIGNAL_RANK": "1"}
    got = mpirun(2, _nnlang(), "train", "tiny.nn", "--out", "run", cwd=tiny, env=env,
                 timeout=150)
    text = got.stdout + got.stderr
    assert got.returncode == code, text
    assert f"{word} at epoch 1, step 10" in text, text
    assert (tiny / "run" / "checkpoint.npz").is_file()


RAISES_ON_RANK_0 = """
import time
import nnlang.distributed as dist
dist.init(timeout=300)   # NOTE: a watchdog past the run's limit: only an end at once passes
if dist.rank() == 0:
    time.sleep(0.5)
    raise ValueError("a bug in the user's loop")
dist.allreduce_mean([1.0])   # rank 1 waits here for rank 0
print("rank 1 went on", flush=True)
"""


def test_an_uncaught_exception_on_one_rank_ends_the_job_at_once(tmp_path):
    """A user's script under `mpirun -n 2` that raises on rank 0: it printed the traceback,
    and rank 1 waited in its collective for the watchdog (then said a rank died).
    The traceback is printed and the job ends at once, as torchrun ends a failed job. The
    watchdog here (300 s) is longer than the run's limit (120 s), so no wall-clock bound is needed:
    a job that waits for it times out; one that ends at once passes however loaded the host
    (a bound of 40 s under a 60 s watchdog left two ranks' start-up on a slow host little
    room)."""
    (tmp_path / "script.py").write_text(RAISES_ON_RANK_0)
    got = mpirun(2, sys.executable, "script.py", cwd=tmp_path, timeout=120)
    text = got.stdout + got.stderr
    assert got.returncode != 0, text
    assert "ValueError: a bug in the user's loop" in text, text
    assert "rank 1 went on" not in text and "without an answer" not in text, text
