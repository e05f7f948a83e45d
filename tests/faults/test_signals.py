"""Ctrl-C and kill -9 during training: the checkpoint describes exactly the steps applied, and
every resume is bit-identical to an uninterrupted run. The fast cases use the reference
backend on a tiny model; the slow one runs benchmarks/signal_resume.py's trials (numba)."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from nnlang.train import checkpoint, trainer
from nnlang.train.trainer import fit
from tests.faults.conftest import ROOT, cli, cli_process
from tests.tiny_run import tiny_data, tiny_source

TINY = tiny_source()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """tiny.nn and tiny.npz: 10 steps an epoch, 20 in all."""
    monkeypatch.chdir(tmp_path)
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(TINY)
    return tmp_path


def assert_bit_identical(a: Path, b: Path):
    ca, cb = checkpoint.load(a), checkpoint.load(b)
    assert (ca.step, ca.epoch) == (cb.step, cb.epoch)
    assert ca.state.keys() == cb.state.keys()
    for k in ca.state:
        assert ca.state[k].dtype == cb.state[k].dtype, k
        assert ca.state[k].tobytes() == cb.state[k].tobytes(), k
    # NOTE: and the logged epochs (their training means over every step of the epoch, the
    # steps before the cut included): dropping the cut epoch's partial sums left the weights
    # bit-identical and logged the mean of the resumed steps alone
    def logged(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in rows]
    assert logged(b) == logged(a)


def straight(tiny) -> Path:
    cli("train", "tiny.nn", "--backend", "reference", "--out", "straight", code=0)
    return tiny / "straight"


@pytest.mark.parametrize("spec, code, saved_step", [
    ("7", 130, 7),          # Ctrl-C in epoch 1: saved exactly where it stopped
    ("14:KILL", -9, 10),    # kill -9 in epoch 2: the end-of-epoch-1 checkpoint is left
    ("12:TERM", 143, 12),   # SIGTERM (Slurm's notice before it kills a job): as Ctrl-C
    ("13:HUP", 129, 13),    # SIGHUP (a dropped ssh session): as SIGTERM
])
def test_signal_then_resume_is_bit_identical(tiny, spec, code, saved_step):
    ref = straight(tiny)
    # NOTE: a PYTHONPATH already set (one naming the checkout's nnlang_cli) is kept
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    p = cli_process("train", "tiny.nn", "--backend", "reference", "--out", "cut", code=code,
                    cwd=tiny, env={"NNLANG_TEST_SIGNAL_AT_STEP": spec, "PYTHONPATH": path})
    if code == 130:
        assert "interrupted at epoch 1, step 7 (global step 7)" in p.stdout
        assert "resume with: nnlang train tiny.nn --out cut --resume" in p.stdout
    if code == 143:   # it ended the process with no word and lost the epoch's steps
        assert "terminated (SIGTERM) at epoch 2, step 2 (global step 12)" in p.stdout
        assert "resume with: nnlang train tiny.nn --out cut --resume" in p.stdout
    if code == 129:   # it ended the process with no word, as kill -9 does
        assert "hung up (SIGHUP) at epoch 2, step 3 (global step 13)" in p.stdout
        assert "resume with: nnlang train tiny.nn --out cut --resume" in p.stdout
    assert checkpoint.load(tiny / "cut").step == saved_step
    (tiny / "cut" / ".checkpoint.npz.k9x.tmp").write_bytes(b"PK half")  # a save kill -9 cut
    (tiny / "cut" / ".metrics.jsonl.k9x.tmp").write_text('{"epoch": 1, "st')  # ... and a log's
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", "cut", "--resume", code=0)
    at = f"at epoch 1, step {saved_step}" if saved_step < 10 else \
        "after epoch 1" if saved_step == 10 else f"at epoch 2, step {saved_step - 10}"
    assert f"resuming cut/checkpoint.npz {at} (global step {saved_step})" in out
    assert_bit_identical(ref, tiny / "cut")
    assert not list((tiny / "cut").glob("*.tmp"))


def test_the_same_seed_in_two_fresh_processes_is_bit_identical(tiny):
    """README's promise (Training runs): the same seed and flags on one machine and thread
    count give the same checkpoint in any process. Each process plans the graph afresh (no
    plan cache, whose hit would hide a plan that depends on the process) under another string
    hash seed, the order a set of names iterates in; the random draws are in the graph."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    src = TINY.replace("h = dense(x, hidden) |> relu", "h = dense(x, hidden) |> relu |> dropout(0.3)")
    assert src != TINY, "the tiny model changed: give it its dropout elsewhere"
    (tiny / "tiny.nn").write_text(src)
    for run, hash_seed in (("one", "1"), ("two", "2")):
        cli_process("train", "tiny.nn", "--seed", "4", "--out", run, code=0, cwd=tiny,
                    env={"PYTHONPATH": path, "PYTHONHASHSEED": hash_seed,
                         "NNLANG_PLAN_CACHE": "0"})
    assert_bit_identical(tiny / "one", tiny / "two")


def test_sigint_inside_a_step_waits_for_the_step(tiny, monkeypatch):
    """The issue's 937-vs-936 fault: SIGINT delivered after a step's kernels ran but before its
    counter moved. The step finishes and counts, then the loop stops; resume is exact."""
    from nnlang.runtime.net import _Interpreted
    ref = straight(tiny)
    real, steps = _Interpreted.run, []

    def signalled(self, feeds, fetch=True):
        out = real(self, feeds, fetch)
        steps.extend([1] if self.g.updates else [])   # NOTE: the train graph updates state
        if self.g.updates and len(steps) == 6:  # the 6th step ran; step += 1 comes next
            os.kill(os.getpid(), signal.SIGINT)
        return out
    monkeypatch.setattr(_Interpreted, "run", signalled)
    before = signal.getsignal(signal.SIGINT)
    h = fit("tiny.nn", backend="reference", out="cut", progress=False)
    assert h.stopped == "interrupted" and signal.getsignal(signal.SIGINT) is before
    ck = checkpoint.load(tiny / "cut")
    assert (ck.epoch, ck.meta["step_in_epoch"], ck.step) == (0, 6, 6)
    assert len(h.losses) == 6
    monkeypatch.setattr(_Interpreted, "run", real)
    fit("tiny.nn", backend="reference", out="cut", resume=True, progress=False)
    assert_bit_identical(ref, tiny / "cut")


def test_a_second_ctrl_c_does_not_break_the_checkpoint(tiny, monkeypatch):
    real = checkpoint.save
    calls = []

    def save_interrupted(path, state, meta):
        calls.append(meta["step"])
        os.kill(os.getpid(), signal.SIGINT)  # pressed again while the checkpoint is written
        return real(path, state, meta)
    monkeypatch.setattr(trainer.checkpoint, "save", save_interrupted)
    monkeypatch.setenv("NNLANG_TEST_SIGNAL_AT_STEP", "3")  # the first Ctrl-C, after step 3
    h = fit("tiny.nn", backend="reference", out="cut", progress=False)
    assert h.stopped == "interrupted" and calls == [3]
    assert checkpoint.load(tiny / "cut").step == 3
    assert not [p for p in (tiny / "cut").iterdir() if p.suffix == ".tmp"]


def test_ctrl_c_while_the_end_of_epoch_checkpoint_is_written(tiny, monkeypatch):
    """The Ctrl-C acts after the epoch's end, whose validation early stopping had counted; the
    checkpoint said step 10 of epoch 1, so the resume validated epoch 1 again and counted it
    twice (early_stop = 1 then stopped at once)."""
    settings = {"early_stop": 1, "epochs": 3}
    h = fit("tiny.nn", settings, backend="reference", out="straight", progress=False)
    real, sent = checkpoint.save, []

    def save_interrupted(path, state, meta):
        if not sent and meta["epoch"] == 1 and Path(path).name == "checkpoint.npz":
            sent.append(meta["step"])
            os.kill(os.getpid(), signal.SIGINT)
        return real(path, state, meta)
    monkeypatch.setattr(trainer.checkpoint, "save", save_interrupted)
    cut = fit("tiny.nn", settings, backend="reference", out="cut", progress=False)
    assert cut.stopped == "interrupted" and sent == [10]
    ck = checkpoint.load(tiny / "cut")
    assert (ck.epoch, ck.meta["step_in_epoch"], ck.meta["watch"]["bad"]) == (1, 0, 0)
    monkeypatch.setattr(trainer.checkpoint, "save", real)
    resumed = fit("tiny.nn", settings, backend="reference", out="cut", resume=True,
                  progress=False)
    assert resumed.stopped == h.stopped
    assert_bit_identical(tiny / "straight", tiny / "cut")
    watch = [checkpoint.load(tiny / run).meta["watch"] for run in ("cut", "straight")]
    assert watch[0] == watch[1]


def test_a_resume_at_an_epochs_last_step_prints_no_zero_throughput(tiny, monkeypatch):
    """Ctrl-C right after an epoch's last step: the resumed run trains no step of that epoch,
    and printed (and logged) "0 samples/s 0.0s" for it, as if training had stalled."""
    monkeypatch.setenv("NNLANG_TEST_SIGNAL_AT_STEP", "10")  # step 10 of 10 in epoch 1
    cli("train", "tiny.nn", "--backend", "reference", "--out", "cut", code=130)
    monkeypatch.delenv("NNLANG_TEST_SIGNAL_AT_STEP")
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", "cut", "--resume", code=0)
    line = next(ln for ln in out.splitlines() if ln.startswith("epoch 1/2"))
    assert "samples/s" not in line and "no steps left (resumed at the epoch's end)" in line
    rows = [json.loads(r) for r in (tiny / "cut/metrics.jsonl").read_text().splitlines()]
    assert rows[0]["samples_per_s"] is None and rows[1]["samples_per_s"] > 0


def test_handler_restored_after_an_error(tiny):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Exception, match="diverged"):
        fit("tiny.nn", {"lr": 1e30}, backend="reference", progress=False)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_twenty_four_random_signals_resume_bit_identical(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import signal_resume
    rows = signal_resume.run_trials(24, ["mlp", "cnn", "gru"], seed=1, work=tmp_path)
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    # NOTE: an async signal may come after a run finished (timed from the reference run)
    assert sum(r["result"] == "bit-identical" for r in rows) >= 18


def test_ctrl_c_in_the_test_evaluation_keeps_the_finished_run(tiny, monkeypatch):
    real = trainer.evaluate

    def interrupted_on_test(net, arrays, batch, *args, **kwargs):
        if len(next(iter(arrays.values()))) == 9:  # the test split (the val split has 10)
            raise KeyboardInterrupt
        return real(net, arrays, batch, *args, **kwargs)
    monkeypatch.setattr(trainer, "evaluate", interrupted_on_test)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", "r", code=130)
    assert "interrupted during the test evaluation; training finished" in out
    assert checkpoint.load(tiny / "r").step == 20


def _ctrl_c_inside_llvm(monkeypatch, hook: str, sig=signal.SIGINT) -> list:
    """The issue's cold-compile Ctrl-C: SIGINT arrives while numba runs Python inside one of
    LLVM's object-cache callbacks (`hook`, called through ctypes). Python raises the
    KeyboardInterrupt there, where ctypes prints it as "Exception ignored on calling ctypes
    callback function" and drops it, and numba goes on with a library missing its object code.
    Returns the list the first signal's hook name is appended to."""
    from numba.core.registry import cpu_target
    engine = cpu_target.target_context.codegen()._engine._ee
    real, sent = getattr(engine, hook), []

    def signalled(*args):
        if not sent:
            sent.append(hook)
            os.kill(os.getpid(), sig)  # NOTE: Python's handler runs right here
        return real(*args)
    monkeypatch.setattr(engine, hook, signalled)
    return sent


@pytest.mark.parametrize("command, hook, sig", [
    (("compile", "model.nn"), "_object_cache_notify", signal.SIGINT),
    (("compile", "model.nn"), "_object_cache_getbuffer", signal.SIGINT),
    (("train", "model.nn", "--max-steps", "1", "--out", "run"), "_object_cache_notify",
     signal.SIGINT),
    (("train", "model.nn", "--max-steps", "1", "--out", "run"), "_object_cache_notify",
     signal.SIGTERM),   # training takes SIGTERM as it takes Ctrl-C
])
def test_ctrl_c_inside_an_llvm_callback_of_a_cold_compile(tiny, monkeypatch, command, hook, sig):
    """It stops the command at once with the usual word and exit 130: no traceback, no false
    "damaged cache entry" warning, no compile that finishes as if nothing was pressed (before,
    `compile` printed the traceback and exited 0; `train` compiled on and trained a step)."""
    # NOTE: kernels no other test (nor another case of this one) compiled: sizes are kernel
    # arguments and the backend keeps the modules it loaded for the whole process, so only a
    # constant of their own makes them new
    scale = 1 + (1 + ["_object_cache_notify", "_object_cache_getbuffer"].index(hook) +
                 2 * (command[0] == "train") + 4 * (sig == signal.SIGTERM)) / 1024
    assert "logits = dense(h, classes)\n" in TINY
    (tiny / "model.nn").write_text(TINY.replace("logits = dense(h, classes)\n",
                                                f"logits = dense(h, classes) * {scale}\n"))
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tiny / "cold-cache"))
    from nnlang.backends import numba_backend
    monkeypatch.setattr(numba_backend, "_spawn_worker", lambda: None)  # NOTE: all compiled here
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    sent = _ctrl_c_inside_llvm(monkeypatch, hook, sig)
    out = cli(*command, code=130 if sig == signal.SIGINT else 143)
    assert sent and not unraisable, [u.exc_value for u in unraisable]
    word = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert word in out and "damaged" not in out, out
    if command[0] == "train":
        assert "global step 0" in out and checkpoint.load(tiny / "run").step == 0


def test_sigterm_inside_an_llvm_callback_of_an_unheld_compile(tiny, monkeypatch):
    """A compile outside the held region (numba's own cache=True helpers, compiled at their
    first call: a rank that mpirun ended because another rank failed met one): Python printed
    the Terminated with a traceback as "ignored", the compile then failed, and the command
    said "internal error: RuntimeError: no compiled object yet". It says it was terminated."""
    (tiny / "model.nn").write_text(TINY.replace("logits = dense(h, classes)\n",
                                                "logits = dense(h, classes) * 1.0123\n"))
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tiny / "cold-cache"))
    from contextlib import nullcontext
    from nnlang.backends import numba_backend
    monkeypatch.setattr(numba_backend, "_spawn_worker", lambda: None)
    monkeypatch.setattr(numba_backend, "ctrl_c_held", nullcontext)   # NOTE: as an unheld one
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    sent = _ctrl_c_inside_llvm(monkeypatch, "_object_cache_notify", signal.SIGTERM)
    out = cli("compile", "model.nn", code=143)
    assert sent and not unraisable, [u.exc_value for u in unraisable]
    assert "terminated (SIGTERM)" in out and "internal error" not in out, out


@pytest.mark.parametrize("command, where", [
    (("compile", "tiny.nn"), "nnlang.compile"),
    (("check", "tiny.nn"), "nnlang_cli.inspect_cmds.load_program"),
])
def test_ctrl_c_in_any_command_says_interrupted_and_exits_130(tiny, monkeypatch, command, where):
    """The rule train, eval and predict followed, for every command (`reporting`): before,
    `compile` and `check` exited 130 without a word (typer's own KeyboardInterrupt handling)."""
    def pressed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(where, pressed)
    out = cli(*command, code=130)
    assert out.strip() == "interrupted"


def test_ctrl_c_while_the_installed_script_loads_its_modules():
    """The `nnlang` script spends a few tenths of a second importing numpy, numba and typer
    before any command runs; a Ctrl-C there printed Python's KeyboardInterrupt traceback. The
    interrupt is raised here from the import itself, so the test does not race the clock."""
    import subprocess
    probe = ("import builtins, nnlang_cli\n"
             "real = builtins.__import__\n"
             "def interrupted(name, *a, **k):\n"
             "    if name == 'typer':\n"
             "        raise KeyboardInterrupt\n"
             "    return real(name, *a, **k)\n"
             "builtins.__import__ = interrupted\n"
             "nnlang_cli.run()\n")
    proc = subprocess.run([sys.executable, "-c", probe, "check", "models/mlp.nn"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "interrupted\n", "")


def test_resume_of_a_run_killed_before_its_first_checkpoint(tiny):
    """kill -9 in epoch 1 leaves a run folder (config.json) and no checkpoint: `--resume` said
    "checkpoint not found: cut/checkpoint.npz" with the hint to pass a checkpoint, as if the
    folder were mistyped; it says why there is none and that training it again (without
    --resume) is the way on, and that run ends as an uninterrupted one."""
    ref = straight(tiny)
    cli_process("train", "tiny.nn", "--backend", "reference", "--out", "cut", code=-9,
                cwd=tiny, env={"NNLANG_TEST_SIGNAL_AT_STEP": "5:KILL", "PYTHONPATH": str(ROOT)})
    assert not (tiny / "cut" / "checkpoint.npz").exists()
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", "cut", "--resume")
    assert "cut holds no checkpoint to resume" in out and "before the end of its first epoch" \
        in out and "without --resume" in out, out
    cli("train", "tiny.nn", "--backend", "reference", "--out", "cut", code=0)
    assert_bit_identical(ref, tiny / "cut")


def test_bare_resume_does_not_pass_over_a_newer_run_killed_before_its_checkpoint(tiny):
    """`--resume` without --out takes the model's newest run. A kill -9 in the newest run's
    first epoch left it no checkpoint, and the resume went on with an older run instead, saying
    it was "the newest run of Tiny": the run the user meant is named, and why it cannot go on."""
    cli("train", "tiny.nn", "--backend", "reference", "--epochs", "1", "--out",
        "runs/tiny-20261206-100000", code=0)
    cli_process("train", "tiny.nn", "--backend", "reference", "--out",
                "runs/tiny-20261206-110000", code=-9, cwd=tiny,
                env={"NNLANG_TEST_SIGNAL_AT_STEP": "5:KILL", "PYTHONPATH": str(ROOT)})
    out = cli("train", "tiny.nn", "--backend", "reference", "--resume")
    assert "runs/tiny-20261206-110000 holds no checkpoint to resume" in out, out
    assert "--out runs/tiny-20261206-100000" in out and "resuming" not in out, out


def test_resume_of_a_run_still_in_its_first_epoch_says_it_is_in_use(tiny):
    """A run still training its first epoch has no checkpoint yet and holds its folder: a
    --resume there is told the folder is in use, not that its run was killed."""
    from nnlang.train.runs import RunDir
    cli("train", "tiny.nn", "--backend", "reference", "--out", "cut", "--max-steps", "1", code=0)
    (tiny / "cut" / "checkpoint.npz").unlink()   # as in its first epoch
    running = RunDir(tiny / "cut")
    try:
        out = cli("train", "tiny.nn", "--backend", "reference", "--out", "cut", "--resume")
    finally:
        running.release()
    assert "cut is in use by another training run" in out and "kill" not in out, out


def test_sigterm_while_the_summary_and_plots_are_written(tiny, monkeypatch, capsys):
    """SIGTERM after the test evaluation, while summary.json and the plots are written (most of
    a second with matplotlib): no handler was installed there, so the process ended without a
    word (exit -15), where Ctrl-C or SIGTERM in the test evaluation just before says that
    training finished and is saved. The handler below stands for that default action."""
    from nnlang.train.runs import RunDir
    real = RunDir.plot

    def plot_terminated(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    def died(signum, frame):
        raise RuntimeError("the process would have ended here without a word")
    monkeypatch.setattr(RunDir, "plot", plot_terminated)
    old = signal.signal(signal.SIGTERM, died)
    try:
        h = fit("tiny.nn", backend="reference", out="cut")
    finally:
        signal.signal(signal.SIGTERM, old)
    out = " ".join(capsys.readouterr().out.split())   # NOTE: rich wraps at its width
    assert h.stopped == "terminated", out
    assert "terminated (SIGTERM) while writing the summary and plots; training finished and " \
           "is saved in cut/checkpoint.npz" in out, out
    assert checkpoint.load(tiny / "cut").step == 20


@pytest.mark.parametrize("sig, code, word", [
    ("SIGTERM", 143, "terminated (SIGTERM)"),
    ("SIGHUP", 129, "hung up (SIGHUP)"),   # NOTE: it ended the process silently too (-1)
])
@pytest.mark.parametrize("command, module, name", [
    (("check", "tiny.nn"), "nnlang_cli.inspect_cmds", "load_program"),
    (("train", "tiny.nn", "--backend", "reference"), "nnlang.train.feeds", "load_data"),
])
def test_sigterm_outside_training_says_terminated_and_exits_143(tiny, command, module, name,
                                                                sig, code, word):
    """SIGTERM while a command loads its data or model (before training's own handler, which
    saves first) ended the process silently with -15; it now says so, exit 143, as `fit`
    does while training. In a process of its own: SIGTERM's default action ends it. SIGHUP
    alike, with exit 129."""
    import subprocess
    probe = (f"import signal, {module} as m\n"
             "def killed(*args, **kwargs):\n"
             f"    signal.raise_signal(signal.{sig})\n"
             f"    raise AssertionError('{sig} did not stop the command')\n"
             f"m.{name} = killed\n"
             "from nnlang_cli.main import app\n"
             "app(prog_name='nnlang')\n")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", probe, *command], cwd=tiny, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": path})
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, word + "\n", "")


def _closed_pipe():
    """The write end of a pipe whose reader is gone: `nnlang ... | head -1` once head exited."""
    read, write = os.pipe()
    os.close(read)
    return write


def test_stdout_closed_while_training_saves_and_says_so_on_stderr(tiny):
    """`nnlang train ... | head -3`: once head exited, the next line printed ended the run
    with exit 1 and no word, its steps lost (no checkpoint). It stops as a SIGTERM does:
    the checkpoint saved, the resume command on stderr (stdout is gone), exit 141 (128 + 13,
    the shell's code for a writer killed by SIGPIPE), never a BrokenPipeError traceback."""
    import subprocess
    proc = subprocess.Popen([sys.executable, "-m", "nnlang_cli.main", "train", "tiny.nn",
                             "--backend", "reference", "--out", "cut", "--epochs", "500"],
                            cwd=tiny, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not lines or not lines[-1].startswith("epoch 1/500"):
        lines.append(proc.stdout.readline())
        assert lines[-1], lines
    proc.stdout.close()   # NOTE: the next line printed (499 epochs more) meets EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert re.search(r"standard output closed \(broken pipe\) (at|after) epoch", err), err
    assert "checkpoint saved to cut/checkpoint.npz" in err, err
    assert "resume with: nnlang train tiny.nn --out cut --resume --backend reference" in err
    ckpt = checkpoint.load(tiny / "cut")
    assert 10 <= ckpt.step < 500 * 10


@pytest.mark.parametrize("command", [("ops",), ("check", "tiny.nn"), ("--help",),
                                     ("train", "tiny.nn", "--backend", "reference")])
def test_a_closed_stdout_ends_any_command_quietly_with_141(tiny, command):
    """A reader that is gone before the first line (`nnlang ops | head -0`): exit 1, as a
    user error (typer's EPIPE), or a BrokenPipeError reported as an internal error (2); now
    141, as a process SIGPIPE ended, and nothing on stderr (head asked for no more)."""
    import subprocess
    write = _closed_pipe()
    try:
        proc = subprocess.run([sys.executable, "-m", "nnlang_cli.main", *command], cwd=tiny,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=600)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, ""), proc.stderr
    assert not (tiny / "runs").exists() or not list((tiny / "runs").glob("*/checkpoint.npz"))


@pytest.mark.parametrize("command", [("check", "tiny.nn"), ("--help",),
                                     ("train", "tiny.nn", "--backend", "reference")])
def test_output_to_a_full_disk_is_an_error_naming_standard_output(tiny, command):
    """`nnlang ... > log.txt` on a full disk (/dev/full stands in): "internal error: OSError:
    [Errno 28]" (exit 70), or a traceback for --help; now an error naming standard output."""
    import subprocess
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "nnlang_cli.main", *command], cwd=tiny,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot write standard output: No space left on "
                                  "device\n"), proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_closed_stdout_and_stderr_at_start_still_train(tiny):
    """Started with stdout and stderr closed (`nnlang train ... >&- 2>&-`, a daemon's
    children): Python has no sys.stdout, and the first line printed crashed (an
    AttributeError traceback, or exit 70 with nowhere to say it); the run saves its files."""
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "nnlang_cli.main", "train", "tiny.nn",
                           "--backend", "reference", "--out", "run", "--epochs", "1"],
                          cwd=tiny, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=600, preexec_fn=lambda: (os.close(1), os.close(2)))
    assert proc.returncode == 0
    assert checkpoint.load(tiny / "run").epoch == 1


def _train_on_a_closed_terminal(tiny, hang_up: bool) -> "subprocess.Popen":
    """`nnlang train` whose stdout and stdin are a terminal (a pty) that is gone after the first
    epoch's line: its master is closed (the window, the ssh session), then, with `hang_up`,
    SIGHUP is sent, as the shell does to its jobs. stderr is kept, to see what went wrong."""
    import subprocess
    import time
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nnlang_cli.main", "train", "tiny.nn",
                             "--backend", "reference", "--out", "cut", "--epochs", "500"],
                            cwd=tiny, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                            start_new_session=True)
    os.close(slave)
    shown = b""
    try:
        while b"epoch 1/500" not in shown:
            chunk = os.read(master, 4096)
            assert chunk, shown
            shown += chunk
    finally:
        os.close(master)
    if hang_up:
        time.sleep(0.2)   # NOTE: writes to the gone terminal fail (EIO) before the signal too
        proc.send_signal(signal.SIGHUP)
    return proc


@pytest.mark.parametrize("hang_up", [True, False])
def test_a_closed_terminal_saves_exits_129_and_resumes(tiny, hang_up):
    """A dropped ssh session or a closed window: SIGHUP ended training as kill -9 does, its
    steps since the last epoch lost; before the signal, a progress write to the gone terminal
    (EIO) ended it with exit 1. Now it stops at a whole step as SIGTERM does: the checkpoint
    saved, exit 129 (128 + 1), no traceback, and --resume goes on from it."""
    proc = _train_on_a_closed_terminal(tiny, hang_up)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 129, err
    assert err == "", err
    step = checkpoint.load(tiny / "cut").step
    assert 10 <= step < 500 * 10
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", "cut", "--resume",
              "--max-steps", str(step + 3), code=0, cwd=tiny)
    assert f"(global step {step})" in out.split("resuming cut/checkpoint.npz", 1)[1], out
    assert checkpoint.load(tiny / "cut").step == step + 3


def test_sighup_in_a_library_loop_on_a_gone_terminal(tiny):
    """`nnlang.fit` in a user's program (where it handles SIGTERM, it handles SIGHUP alike),
    printing to a terminal that is gone: the save is not lost to a failed print (OSError EIO),
    the user's console is given back as it was, and their SIGHUP handler is restored. Under
    nohup (SIGHUP ignored) training goes on to the end. In a process of its own: SIGHUP's
    default action would end pytest."""
    import subprocess
    probe = """
import os, signal, sys
from rich.console import Console
from nnlang.train import checkpoint
from nnlang.train.trainer import fit
master, slave = os.openpty()
os.environ["NNLANG_TEST_SIGNAL_AT_STEP"] = "13:HUP"
tty = open(slave, "w")
console = Console(file=tty, force_terminal=True)
real_kill = os.kill
def hang_up(pid, sig):   # the test hook's signal: the terminal goes first, then SIGHUP
    os.close(master)
    real_kill(pid, sig)
os.kill = hang_up
h = fit("tiny.nn", backend="reference", out="cut", console=console)
assert h.stopped == "hung up", h.stopped
assert checkpoint.load("cut").step == 13
assert console.file is tty
os.kill = real_kill
assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
signal.signal(signal.SIGHUP, signal.SIG_IGN)   # nohup
h = fit("tiny.nn", backend="reference", out="nohup", progress=False,
        console=Console(file=open(os.devnull, "w")))
assert h.stopped is None and checkpoint.load("nohup").step == 20, h.stopped
assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tiny, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")


def test_a_programs_own_sighup_handler_stays_during_fit(tiny):
    """A program that handles SIGHUP itself (a daemon's "reload the configuration", as nginx
    or gunicorn) and trains with `fit`: the SIGHUP stop (for a terminal that is gone, where
    SIGHUP's default would end the process) replaced that handler during training, so a
    reload stopped the run. The program's handler runs and training goes on, as under
    nohup; with SIGHUP at its default, fit still stops and saves. In a process of its own:
    SIGHUP's default action would end pytest."""
    import subprocess
    probe = """
import io, os, signal
from rich.console import Console
from nnlang.train import checkpoint
from nnlang.train.trainer import fit
got = []
mine = lambda signum, frame: got.append(signum)
signal.signal(signal.SIGHUP, mine)
os.environ["NNLANG_TEST_SIGNAL_AT_STEP"] = "13:HUP"
h = fit("tiny.nn", backend="reference", out="reload", console=Console(file=io.StringIO()))
assert (h.stopped, got, checkpoint.load("reload").step) == (None, [signal.SIGHUP], 20), \\
    (h.stopped, got)
assert signal.getsignal(signal.SIGHUP) is mine
signal.signal(signal.SIGHUP, signal.SIG_DFL)
h = fit("tiny.nn", backend="reference", out="cut", console=Console(file=io.StringIO()))
assert (h.stopped, checkpoint.load("cut").step) == ("hung up", 13), h.stopped
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tiny, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on Windows")
def test_a_hang_up_leaves_sighup_ignored_for_the_exit_only():
    """After a command whose write found the terminal gone, SIGHUP is ignored so the shell's
    late SIGHUP does not end the exiting process before its exit 129. A program running
    commands in one process (nnlang_cli.run, a CliRunner) then had SIGHUP ignored for every
    later command, as under nohup: a real hang-up no longer stopped them. The next command
    handles SIGHUP again (raises Terminated, as at the default); the signal is raised only
    while a handler is set, so pytest itself is never hung up."""
    from nnlang_cli import app
    before = signal.getsignal(signal.SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with pytest.raises(app.Terminated):
            with app._sigterm_raises():
                app._hang_up()   # what a write to a gone terminal does
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN   # for the exit path
        with app._sigterm_raises():
            assert signal.getsignal(signal.SIGHUP) is app._terminate
            with pytest.raises(app.Terminated):
                signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
        # a program's own nohup stays ignored
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with app._sigterm_raises():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
