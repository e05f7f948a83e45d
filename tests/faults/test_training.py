"""The bad-input and fault corpus of training and using a model: `train` flags and runs that
cannot go on (divergence, an unwritable --out, a bare --resume), `eval`/`predict` with missing,
truncated or foreign checkpoints and inputs of the wrong kind, what predict prints for each
kind of output, and caches that cannot be written (they only warn)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnlang.train import checkpoint
from tests.faults.conftest import ROOT, cli, cli_process
from tests.tiny_run import tiny_data, tiny_source

TINY = tiny_source(val_split=None)
# the same data, other models: a regression (one number), an autoencoder (4 numbers) and one
# whose output is a 20-number tensor
REGRESSION = """
model Reg(hidden = 8) {
  input x: float32[batch, 4]
  input label: float32[batch]
  y = dense(x, hidden) |> relu |> dense(1) |> squeeze(axis = 1)
  output y
  loss mse(y, label)
}
train Reg { data = "tiny.npz" batch = 4 }
"""
AUTOENCODER = """
model Ae(code = 2, width = 4) {
  input x: float32[batch, 4]
  input label: int32[batch]
  recon = dense(x, code) |> relu |> dense(width) |> sigmoid
  output recon
  loss mse(recon, x)
}
train Ae { data = "tiny.npz" batch = 4 }
"""
OTHER = """
model Other(hidden = 5) {
  input x: float32[batch, 4]
  input label: int32[batch]
  logits = dense(x, hidden) |> dense(3)
  output logits
  loss cross_entropy(logits, label)
}
train Other { data = "tiny.npz" batch = 4 }
"""
WIDE = """
model Wide(width = 20) {
  input x: float32[batch, 4]
  input label: int32[batch]
  h = dense(x, width) |> relu
  logits = dense(h, 3)
  output h
  loss cross_entropy(logits, label)
}
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One folder with the models, tiny.npz, a few inputs and trained runs (made once)."""
    d = tmp_path_factory.mktemp("training")
    x = tiny_data(d, total=50, train=40)
    for name, text in (("tiny", TINY), ("reg", REGRESSION), ("ae", AUTOENCODER),
                       ("other", OTHER)):
        (d / f"{name}.nn").write_text(text)
    np.save(d / "one.npy", x[0])
    np.save(d / "wide.npy", np.zeros(7, np.float32))
    (d / "notes.txt").write_text("hello")
    (d / "tiny.onnx").write_bytes(b"\x08\x08\x12\x06nnlang")   # what nnlang export begins with
    for name in ("tiny", "reg", "ae"):
        cli("train", f"{name}.nn", "--backend", "reference", "--out", f"run-{name}",
            "--epochs", "1", code=0, cwd=d)
    ck = d / "run-tiny" / "checkpoint.npz"
    (d / "cut.npz").write_bytes(ck.read_bytes()[:300])
    c = checkpoint.load(ck)
    checkpoint.save(d / "future.npz", c.state, {k: v for k, v in c.meta.items()
                                                 if k != "format"})
    z = dict(np.load(d / "future.npz"))
    meta = json.loads(str(z["__meta__"]))
    z["__meta__"] = np.array(json.dumps({**meta, "format": 99}))
    np.savez(d / "future.npz", **z)
    np.savez(d / "foreign.npz", weights=np.ones(3))
    return d


# *** train: flags and runs that cannot go on ***

@pytest.mark.parametrize("args, code, words", [
    (["--backend", "nonsense"], 1, ["unknown backend 'nonsense'", "numba"]),
    (["--epochs", "0"], 2, ["--epochs", "greater than or equal to 1"]),
    (["--max-steps", "0"], 2, ["--max-steps", "greater than or equal to 1"]),
    (["--resume"], 1, ["no run of 'Tiny'", "--out RUN_DIR"]),
    (["--resume", "--out", "nowhere"], 1, ["checkpoint not found: nowhere"]),
    (["--out", "tiny.npz/run"], 1, ["cannot write tiny.npz/run", "--out"]),
    # it said "cannot write tiny.npz (File exists)"
    (["--out", "tiny.npz"], 1, ["--out tiny.npz: this is a file", "a folder's path"]),
    (["--out", "run-tiny"], 1, ["already holds a training run", "--resume"]),
    (["--lr", "1e6"], 1, ["training diverged", "over 10000 times its start", "(--lr)",
                          "--set clip_norm=1"]),
    (["--lr", "1e6", "--set", "optimizer=sgd"], 1, ["training diverged", "step"]),
    (["--data", "one.npy"], 1, ["one.npy"]),
    (["--set", "l1=0.5", "--set", "l1_on=h.wieght"], 1,
     ["train setting 'l1_on': the model has no weight 'h.wieght'", "did you mean 'h.weight'"]),
    # a list of paths written as in the train section (`l1_on = [h.weight]`), not quoted: it
    # was refused as "not a literal"
    (["--set", "l1=0.5", "--set", "l1_on=[logits.weight, h.wieght]"], 1,
     ["train setting 'l1_on': the model has no weight 'h.wieght'", "did you mean 'h.weight'"]),
    (["--set", "schedule=step"], 1, ["schedule step: missing required argument 'step_size'",
                                     "--set schedule=step --set NAME=VALUE"]),
    (["--set", "optimizer=none"], 1, ["'optimizer' cannot be none"]),
    # a value that is no name is named as --set wrote it, not as Python spells it ('True')
    (["--set", "optimizer=true"], 1, ["unknown optimizer 'true'"]),
    (["--set", "schedule=false"], 1, ["unknown schedule 'false'"]),
    (["--set", "data=true"], 1, ["unknown dataset 'true'"]),
    # a fraction where a whole number belongs, refused as the train section refuses it: a
    # warm-up of 2.5 steps ran at 0.4, 0.8 and then 1.2 times the base rate
    (["--set", "schedule=cosine(warmup=2.5)"], 1,
     ["schedule cosine: argument 'warmup': expected an integer, got 2.5"]),
    (["--set", "schedule=plateau", "--set", "patience=1.5"], 1,
     ["schedule plateau: argument 'patience': expected an integer, got 1.5"]),
    (["--init-skip-mismatch"], 1, ["--init-skip-mismatch applies to the weights of --init-from"]),
    # an empty --model was taken for no --model at all, and the file's one model was trained
    (["--model", "", "--out", "empty-model"], 1, ["no model named ''", "models: Tiny"]),
    (["--val-split", "0.25", "--set", "monitor=val_accuracy"], 1,
     ["monitor = 'val_accuracy' (given by --set monitor=...) names no validation or training",
      "val_loss, val_acc"]),
    # a rate out of its own range is that error, not the schedule's (it said "would rise from 0")
    (["--set", "schedule=cosine(min_lr=0.01)", "--lr", "0"], 1,
     ["train setting 'lr' (given by --lr or --set lr=...): 0.0 is out of range"]),
])
def test_train_refuses(work, args, code, words):
    out = cli("train", "tiny.nn", "--backend", "reference", *args, code=code, cwd=work)
    for w in words:
        assert w in out, out


def test_a_rising_cosine_schedule_made_by_the_lr_flag_names_the_flag(work):
    """The file's cosine(min_lr = 0.01) is sound at its lr; --lr 0.001 makes it rise, and a
    flag has no place on the command line to point at, so the message says which flag."""
    src = (work / "tiny.nn").read_text()
    (work / "cos.nn").write_text(src.rstrip()[:-1] + "  schedule = cosine(min_lr = 0.01)\n}\n")
    cli("train", "cos.nn", "--backend", "reference", "--max-steps", "1", "--out", "ok", code=0,
        cwd=work)
    out = cli("train", "cos.nn", "--backend", "reference", "--lr", "0.001", code=1, cwd=work)
    assert out.startswith("error: schedule cosine: min_lr 0.01 is above the learning rate "
                          "0.001, so the rate would rise from 0.001 to 0.01 over the run "
                          "(given by --lr)"), out


@pytest.mark.parametrize("args, shown, col, width, words", [
    (["--set", "lr=abc"], "lr=abc", 10, 3, "train setting 'lr' must be a number, got \"abc\""),
    (["--set", "epochs=-1"], "epochs=-1", 14, 2,
     "train setting 'epochs': -1 is out of range: epochs must be >= 1"),
    (["--set", "optimizer=sgd", "--set", "momentum=2"], "momentum=2", 16, 1,
     "optimizer sgd: argument 'momentum': 2 is out of range: momentum must be in [0, 1)"),
    (["--set", "optimizer=sgd", "--set", "momentum=abc"], "momentum=abc", 16, 3,
     "optimizer sgd: argument 'momentum': expected a number"),
    # the name, which no setting of this run has
    (["--set", "momentum=0.5"], "momentum=0.5", 7, 8, "unknown train setting 'momentum'"),
    # a name that is neither a setting nor a hyper-parameter: it pointed at the model's header
    (["--set", "epohcs=3"], "epohcs=3", 7, 6,
     "--set epohcs: model 'Tiny' has no hyper-parameter 'epohcs'"),
    (["--set", "optimizer=foo"], "optimizer=foo", 17, 3, "unknown optimizer 'foo'"),
    (["--set", "optimizer=none"], "optimizer=none", 17, 4,
     "train setting 'optimizer' cannot be none"),
    (["--set", "schedule=cosine(warmup=2.5)"], "schedule=cosine(warmup=2.5)", 16, 18,
     "schedule cosine: argument 'warmup': expected an integer, got 2.5"),
    (["--set", "beta1=1"], "beta1=1", 13, 1, "train setting 'beta1': 1.0 is out of range"),
    # a cosine "decay" whose floor is above the rate rose over the run (lr 0.05 in tiny.nn)
    (["--set", "schedule=cosine", "--set", "min_lr=0.1"], "min_lr=0.1", 14, 3,
     "schedule cosine: min_lr 0.1 is above the learning rate 0.05"),
    (["--set", "schedule=cosine(min_lr=0.01)", "--set", "lr=0.001"], "lr=0.001", 10, 5,
     "schedule cosine: min_lr 0.01 is above the learning rate 0.001"),
    # nesterov without momentum ran plain SGD without a word (torch.optim.SGD refuses it)
    (["--set", "optimizer=sgd", "--set", "nesterov=true"], "nesterov=true", 16, 4,
     "sgd(): nesterov = true needs a momentum"),
    (["--set", "l2_on=nope"], "l2_on=nope", 13, 4,
     "train setting 'l2_on': the model has no weight 'nope'"),
    (["--set", "lr=0.1", "--lr", "0.2"], "lr=0.1", 10, 3,
     "train setting 'lr' is given twice: --lr 0.2 and --set lr=0.1"),
    # --data won silently, where every other setting given twice is refused
    (["--data", "tiny.npz", "--set", "data=mnist"], "data=mnist", 12, 5,
     "train setting 'data' is given twice: --data tiny.npz and --set data=mnist"),
    (["--set", "data=nonesuch"], "data=nonesuch", 12, 8, "unknown dataset 'nonesuch'"),
    # --init-from won silently over --set init_from=...
    (["--init-from", "run-reg", "--set", "init_from=run-tiny"], "init_from=run-tiny", 17, 8,
     "train setting 'init_from' is given twice: --init-from run-reg and --set "
     "init_from=run-tiny"),
    (["--set", "init_from=nowhere"], "init_from=nowhere", 17, 7,
     "init_from (given by --set init_from=...): no checkpoint at nowhere"),
    (["--val-split", "0.25", "--set", "monitor=val_bogus"], "monitor=val_bogus", 15, 9,
     "monitor = 'val_bogus' (given by --set monitor=...) names no validation or training"),
    # what watches the default val_loss without validation data: it said where the file's
    # early_stop line would be, no place at all for a --set one
    (["--set", "early_stop=2"], "early_stop=2", 18, 1,
     "early_stop (given by --set early_stop=...) watches val_loss, but this run has no "
     "validation data"),
    (["--set", "schedule=plateau"], "schedule=plateau", 16, 7,
     "the plateau schedule (given by --set schedule=...) watches val_loss, but this run has "
     "no validation data"),
])
def test_a_bad_train_setting_from_set_is_located(work, args, shown, col, width, words):
    """A train setting given a wrong value (or a name no setting has) by --set is an error at
    <command line>:1:col with a caret under that value (or name), as a model
    hyper-parameter's --set error is: they said only the setting's name, with no place."""
    out = cli("train", "tiny.nn", "--backend", "reference", *args, cwd=work)
    assert f"<command line>:1:{col}: error: {words}" in out, out
    lines = out.splitlines()
    at = lines.index(f"   1 | --set {shown}")
    assert lines[at + 1] == " " * (len("   1 | ") + col - 1) + "^" * width, out


def test_a_loss_not_finite_at_the_initial_weights_is_not_blamed_on_the_rate(work, tmp_path):
    """A loss that is nan before any update comes from the model or the data: the hint said
    to lower the learning rate, which cannot change it."""
    (tmp_path / "nan.nn").write_text(REGRESSION.replace("mse(y, label)", "mean(log(y - 1e6))")
                                     .replace('"tiny.npz"', f'"{work / "tiny.npz"}"'))
    out = cli("train", tmp_path / "nan.nn", "--backend", "reference", "--out", tmp_path / "run",
              "--max-steps", "2")
    assert "training diverged: the loss is nan at epoch 1, step 1 (global step 1)" in out, out
    assert "at the initial weights, before any update" in out and "--lr" not in out, out


def test_divergence_keeps_the_last_good_checkpoint(work, tmp_path):
    run = tmp_path / "run"
    cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--epochs", "1", code=0,
        cwd=work)
    good = checkpoint.load(run)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume",
              "--epochs", "3", "--lr", "1e6", cwd=work)
    assert "diverged" in out and f"last good checkpoint is {run}/checkpoint.npz" in out
    after = checkpoint.load(run)
    assert after.step == good.step
    assert all(np.array_equal(after.state[k], good.state[k]) for k in good.state)


# sqrt(y * y) at y = 0: a finite loss (0) whose gradient is inf * 0 = nan, so the first update
# makes the weights nan while that step's loss, computed before it, is finite
NAN_UPDATE = REGRESSION.replace("|> relu |> dense(1)", "|> relu |> dense(1, init = \"zeros\")") \
    .replace("mse(y, label)", "mean(sqrt(y * y))")


@pytest.mark.parametrize("args", [["--max-steps", "1"], ["--batch", "40", "--epochs", "2"]],
                         ids=["inside-epoch", "epoch-end"])
def test_an_update_that_makes_the_weights_nan_is_never_saved(work, tmp_path, args):
    """The guard read only losses, each computed before its step's update: an update that made
    the weights nan right before a checkpoint (the end of an epoch, or --max-steps) was saved,
    with exit 0 or as 'the last good checkpoint', which resume, predict and export refuse."""
    (tmp_path / "nan.nn").write_text(NAN_UPDATE.replace('"tiny.npz"', f'"{work / "tiny.npz"}"'))
    run = tmp_path / "run"
    out = cli("train", tmp_path / "nan.nn", "--backend", "reference", "--out", run, *args)
    assert ("training diverged: the update of epoch 1, step 1 (global step 1) made "
            "'dense.weight' nan") in out, out
    assert "a gradient that is not finite" in out, out
    assert "no checkpoint was written before it diverged" in out, out
    assert not (run / "checkpoint.npz").exists()


def test_bare_resume_says_which_run_and_what_changes(work, tmp_path):
    (tmp_path / "tiny.nn").write_text(TINY)
    (tmp_path / "tiny.npz").write_bytes((work / "tiny.npz").read_bytes())
    cli("train", "tiny.nn", "--backend", "reference", "--epochs", "1", "--seed", "3", code=0,
        cwd=tmp_path)
    out = cli("train", "tiny.nn", "--backend", "reference", "--resume", "--epochs", "2",
              "--lr", "0.01", code=0, cwd=tmp_path)
    assert "resuming runs/tiny-" in out
    assert "the newest run of Tiny: data tiny.npz, adam lr 0.05, batch 4, epochs 1, seed 3" \
        in out
    assert "this resume changes the run's epochs 1 -> 2, adam.lr 0.05 -> 0.01" in out


LR_HP = TINY.replace("model Tiny(", "model Tiny(lr = 0.05, ").replace(
    "optimizer = adam(lr = 0.05)", "optimizer = sgd(lr = lr)")


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_applies_a_hyper_parameter_the_train_section_reads(work, tmp_path):
    """`optimizer = sgd(lr = lr)`, resumed with --set lr=0.5: the note said it changed, the run
    went on at 0.05."""
    (tmp_path / "lr.nn").write_text(LR_HP)
    (tmp_path / "tiny.npz").write_bytes((work / "tiny.npz").read_bytes())
    run = tmp_path / "run"
    cli("train", "lr.nn", "--backend", "reference", "--out", run, "--epochs", "1", code=0,
        cwd=tmp_path)
    out = cli("train", "lr.nn", "--backend", "reference", "--out", run, "--resume", "--epochs",
              "2", "--set", "lr=0.5", code=0, cwd=tmp_path)
    assert "sgd.lr 0.05 -> 0.5" in out
    assert [row["lr"] for row in metrics(run)] == [0.05, 0.5]
    assert json.loads((run / "config.json").read_text())["train"]["optimizer"]["options"][
        "lr"] == 0.5


def test_set_none_switches_a_setting_off(work, tmp_path):
    (tmp_path / "clip.nn").write_text(TINY.replace("batch = 4", "batch = 4\n  clip_norm = 0.05"
                                                   "\n  schedule = cosine()"))
    (tmp_path / "tiny.npz").write_bytes((work / "tiny.npz").read_bytes())
    runs = {}
    for name, sets in (("off", ["--set", "clip_norm=none", "--set", "schedule=none"]),
                       ("zero", ["--set", "clip_norm=0", "--set", "schedule=constant"]),
                       ("on", [])):
        cli("train", "clip.nn", "--backend", "reference", "--out", name, "--epochs", "1", *sets,
            code=0, cwd=tmp_path)
        runs[name] = metrics(tmp_path / name)[0]["train_loss"]
    train = json.loads((tmp_path / "off" / "config.json").read_text())["train"]
    assert train["clip_norm"] is None and train["schedule"] is None
    assert runs["off"] == pytest.approx(runs["zero"], rel=1e-6) and runs["off"] != runs["on"]


def test_set_takes_an_optimizer_or_schedule_with_its_options(work, tmp_path):
    runs = {}
    for name, sets in (("call", ["--set", "schedule=step(step_size=1, gamma=0.5)", "--set",
                                 "optimizer=sgd(lr=0.2, momentum=0.9)"]),
                       ("apart", ["--set", "schedule=step", "--set", "step_size=1", "--set",
                                  "gamma=0.5", "--set", "optimizer=sgd", "--set", "lr=0.2",
                                  "--set", "momentum=0.9"])):
        cli("train", "tiny.nn", "--backend", "reference", "--out", tmp_path / name, *sets,
            code=0, cwd=work)
        runs[name] = json.loads((tmp_path / name / "config.json").read_text())["train"]
    assert runs["call"]["schedule"] == {"name": "step", "options": {
        "step_size": 1, "gamma": 0.5, "warmup": 0}}
    assert runs["call"]["optimizer"]["options"]["momentum"] == 0.9
    assert runs["call"] == runs["apart"]
    assert [r["lr"] for r in metrics(tmp_path / "call")] == [0.2, 0.1]


def test_resume_on_other_data_is_said_and_refused_inside_an_epoch(work, tmp_path):
    (tmp_path / "tiny.nn").write_text(TINY)
    for name in ("tiny.npz", "other.npz"):
        (tmp_path / name).write_bytes((work / "tiny.npz").read_bytes())
    run = tmp_path / "run"
    cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--max-steps", "2", code=0,
        cwd=tmp_path)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume", "--data",
              "other.npz", cwd=tmp_path)
    assert "changes the run's data tiny.npz -> other.npz" in out
    assert "stopped inside an epoch on data tiny.npz; resume it on the same data" in out
    # NOTE: at --max-steps already, a resume trains nothing (it took one more step each time)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume",
              "--max-steps", "2", code=0, cwd=tmp_path)
    assert "nothing to train: the checkpoint is at step 2" in out
    assert checkpoint.load(run).step == 2


@pytest.mark.parametrize("change", ["fewer rows", "other values"])
def test_resume_inside_an_epoch_on_changed_data_is_refused(tmp_path, change):
    """The data file edited between Ctrl-C and --resume: the epoch went on over another
    permutation (or with 52 rows shrunk to 20, "0 samples/s" and on), silently not the run
    that was interrupted."""
    (tmp_path / "tiny.nn").write_text(TINY)
    tiny_data(tmp_path)
    cli("train", "tiny.nn", "--backend", "reference", "--out", "r", "--max-steps", "5", code=0,
        cwd=tmp_path)
    z = dict(np.load(tmp_path / "tiny.npz"))
    if change == "fewer rows":
        z["train_x"], z["train_label"] = z["train_x"][:20], z["train_label"][:20]
    else:
        z["train_x"] = z["train_x"] + 1
    np.savez(tmp_path / "tiny.npz", **z)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", "r", "--resume",
              cwd=tmp_path)
    rows = 20 if change == "fewer rows" else 52
    assert "this checkpoint stopped inside an epoch (step 5) of training data that has changed " \
           f"since (52 training examples then, {rows} now)" in out, out
    assert "--init-from" in out


def test_resume_keeps_the_validation_carve(work, tmp_path):
    (tmp_path / "tiny.nn").write_text(tiny_source(val_split=0.2))
    (tmp_path / "tiny.npz").write_bytes((work / "tiny.npz").read_bytes())
    run = tmp_path / "run"
    cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--epochs", "1", code=0,
        cwd=tmp_path)
    for flag in (["--seed", "3"], ["--val-split", "0.3"]):
        out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume",
                  "--epochs", "2", *flag, cwd=tmp_path)
        assert "would validate on examples it trained on" in out


def test_resume_after_a_cut_metrics_line(work, tmp_path):
    """Power loss or a full disk cut the log's last line: the resume drops it (the checkpoint is
    the truth for what ran); a damaged line before the last is an error naming it."""
    run = tmp_path / "run"
    cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--epochs", "2", code=0,
        cwd=work)
    log = run / "metrics.jsonl"
    whole = log.read_text()
    log.write_text(whole[:150])
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume",
              "--epochs", "3", code=0, cwd=work)
    assert f"{log}:1 is cut off" in out, out
    assert [r["epoch"] for r in map(json.loads, log.read_text().splitlines())] == [3]
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0][:40], *lines, ""]))
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume",
              "--epochs", "4", cwd=work)
    assert f"{log}:1 is damaged" in out and "--out" in out, out


def test_a_resume_that_cannot_write_keeps_the_metrics_log(work, tmp_path):
    """A full disk (here: a file-size limit below the log's size) when a resume starts: it
    rewrote metrics.jsonl in place (truncated, then cut at the limit), so the rows of the epochs
    trained before were lost, though the checkpoint and everything else stayed."""
    import resource
    import signal
    run = tmp_path / "run"
    cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--epochs", "2", code=0,
        cwd=work)
    before = {n: (run / n).read_bytes() for n in ("metrics.jsonl", "metrics.csv",
                                                   "checkpoint.npz")}

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # NOTE: EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
    p = cli_process("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume",
                    "--epochs", "3", code=1, cwd=work, env={"PYTHONPATH": str(ROOT)},
                    preexec_fn=limited)
    assert "cannot write" in p.stdout + p.stderr, p.stdout + p.stderr
    assert {n: (run / n).read_bytes() for n in before} == before
    assert not list(run.glob(".*.tmp"))



def test_plots_cut_by_a_full_disk_keep_the_plots_there(work, tmp_path):
    """A full disk (here: a file-size limit between the checkpoint's size and the plots') when
    a resume redraws its plots: savefig wrote into loss.png itself, truncated it and left it
    cut at the limit, a broken png in the run folder. The plots there stay whole, the warning
    names the file, and no temporary file is left. Training finished and is saved, so the
    command succeeds (it exited 1 as if the run had failed) with the warning on stderr."""
    import resource
    import signal
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--epochs", "2", code=0,
        cwd=work)
    plots = {p.name: p.read_bytes() for p in run.glob("*.png")}
    limit = min(map(len, plots.values())) - 100
    assert plots and (run / "checkpoint.npz").stat().st_size < limit - 1000

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # NOTE: EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    p = cli_process("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume",
                    "--epochs", "3", code=0, cwd=work,
                    # NOTE: a PYTHONPATH already set (one naming the checkout's nnlang_cli) kept
                    env={"PYTHONPATH": os.pathsep.join(filter(None, [
                        str(ROOT), os.environ.get("PYTHONPATH")]))},
                    preexec_fn=limited)
    assert f"warning: the plots were not written: cannot write {run / 'loss.png'} (File too " \
           "large)" in p.stderr, p.stdout + p.stderr
    assert f"free space there, then --resume goes on from {run / 'checkpoint.npz'}" in p.stderr
    assert checkpoint.load(run).epoch == 3 and "summary" in p.stdout
    assert {p.name: p.read_bytes() for p in run.glob("*.png")} == plots
    assert not list(run.glob(".*.tmp"))


def test_a_full_disk_while_the_log_is_written_says_to_resume_there(work, tmp_path,
                                                                  monkeypatch):
    """The disk fills up as epoch 2's row goes into metrics.jsonl: the hint was to 'pass --out
    with a writable folder that has free space', a new run that trains from the start. The
    checkpoint of epoch 1 is there: free space and --resume; that resume finishes the run."""
    import builtins
    from nnlang.train import runs
    run = tmp_path / "run"
    appended = []

    def full(file, mode="r", *args, **kw):
        if mode == "a" and Path(file).name == "metrics.jsonl":
            appended.append(file)
            if len(appended) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return builtins.open(file, mode, *args, **kw)
    with monkeypatch.context() as patch:
        patch.setattr(runs, "open", full, raising=False)
        out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--epochs", "3",
                  cwd=work)
    assert f"cannot write {run / 'metrics.jsonl'} (No space left on device)" in out, out
    assert f"free space there, then --resume goes on from {run / 'checkpoint.npz'}" in out, out
    assert checkpoint.load(run).epoch == 1
    cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume", cwd=work, code=0)
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3]


def test_a_model_file_that_can_be_read_once_trains(work, tmp_path):
    """`nnlang train /dev/stdin < tiny.nn` (or `<(...)`, a pipe): train read the file, then
    read it again to elaborate it, got nothing the second time and said 'this file defines no
    model' at 1:1. (A file saved between the two reads trained one model under another's
    source.) The one text read is what is trained and what the checkpoint keeps."""
    run = tmp_path / "run"
    cli_process("train", "/dev/stdin", "--backend", "reference", "--out", run, "--epochs", "1",
                code=0, cwd=work, input=TINY)
    assert checkpoint.load(run).meta["source"] == TINY


def test_out_through_a_symbolic_link_to_nothing(work, tmp_path):
    """--out (or a folder above it) a symbolic link whose target is gone (a moved or
    unmounted disk): 'cannot write OUT (File exists)', mkdir's word. It names the link."""
    (tmp_path / "disk").symlink_to(tmp_path / "unmounted")
    for out in (tmp_path / "disk", tmp_path / "disk" / "run"):
        text = cli("train", "tiny.nn", "--backend", "reference", "--out", out, "--epochs", "1",
                   cwd=work)
        assert f"{tmp_path / 'disk'} is a symbolic link to {tmp_path / 'unmounted'}, which " \
               "does not exist" in text, text
    assert not (tmp_path / "unmounted").exists()

def test_out_with_the_users_files_is_refused_and_they_are_kept(work, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.json").write_text("x\n")
    (proj / "metrics.csv").write_text("y\n")
    for out_dir, cwd in ((proj, work), (".", proj)):
        out = cli("train", work / "tiny.nn", "--backend", "reference", "--data",
                  work / "tiny.npz", "--out", out_dir, "--epochs", "1", cwd=cwd)
        assert "already holds files that are not an nnlang run's" in out and "config.json" in out
        assert "new or empty folder" in out
    assert sorted(p.name for p in proj.iterdir()) == ["config.json", "metrics.csv"]
    assert (proj / "config.json").read_text() == "x\n"
    assert (proj / "metrics.csv").read_text() == "y\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    cli("train", "tiny.nn", "--backend", "reference", "--out", empty, "--epochs", "1", code=0,
        cwd=work)
    assert (empty / "checkpoint.npz").is_file()


def _two_at_once(work, *args) -> list[subprocess.CompletedProcess]:
    """Starts two `nnlang train tiny.nn ARGS` at the same moment; returns both when done."""
    cmd = [sys.executable, "-m", "nnlang_cli.main", "train", "tiny.nn", "--backend",
           "reference", "--epochs", "40", *map(str, args)]
    procs = [subprocess.Popen(cmd + ["--seed", str(seed)], cwd=work, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for seed in (1, 2)]
    out = [p.communicate(timeout=600)[0] for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o) for p, o in zip(procs, out)]


def test_two_runs_into_one_out_folder(work, tmp_path):
    """Two trainings started at once with the same --out both passed the 'already holds a
    training run' check, both exited 0, and the folder held one run's checkpoint and both runs'
    metrics interleaved. One of them must refuse."""
    done = _two_at_once(work, "--out", tmp_path / "r")
    assert sorted(p.returncode for p in done) == [0, 1], [p.stdout for p in done]
    loser = next(p.stdout for p in done if p.returncode)
    assert "Traceback" not in loser and "internal error" not in loser, loser
    assert "in use by another training run" in loser or "already holds a training run" in loser
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == list(range(1, 41))
    winner = 1 + [p.returncode for p in done].index(0)
    assert checkpoint.load(tmp_path / "r").config.seed == winner


def test_max_steps_at_the_runs_own_end_stops_nothing_short(work, tmp_path):
    """tiny: 40 examples at batch 4, 2 epochs = 20 steps. A run cut short says so: its last
    line of epoch 2 read like a whole epoch, and nothing said the run had not finished."""
    for steps, stopped, said in (
            (20, None, None),
            (15, "max_steps", "stopped by --max-steps 15 at epoch 2, step 5 of 10"),
            (10, "max_steps", "stopped by --max-steps 10 after epoch 1 of 2")):
        run = tmp_path / f"run{steps}"
        out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--max-steps",
                  str(steps), code=0, cwd=work)
        assert json.loads((run / "summary.json").read_text())["stopped"] == stopped
        assert (said in out) if said else "--max-steps" not in out, out


def test_resume_with_other_shapes_names_the_checkpoint(work, tmp_path):
    """eval said '<checkpoint> does not fit model ...'; resume only 'state value 'h.weight' has
    shape (4, 8), the model expects (4, 6)', naming no file."""
    shutil.copytree(work / "run-tiny", tmp_path / "r")
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", tmp_path / "r", "--resume",
              "--epochs", "2", "--set", "hidden=6", cwd=work)
    assert f"{tmp_path / 'r' / 'checkpoint.npz'} does not fit model 'Tiny'" in out, out
    assert "'h.weight'" in out and "(4, 6)" in out


def test_resume_of_another_models_run_says_so(work, tmp_path):
    out = cli("train", "other.nn", "--backend", "reference", "--out", work / "run-tiny",
              "--resume", cwd=work)
    assert "the run being resumed trained model 'Tiny', which this file does not define" in out


def test_a_model_name_too_long_for_the_default_run_folder(work, tmp_path):
    """runs/<model>-<time> passes the 255-byte limit on one name for a long model name: the
    error named 'runs' and hinted at free space."""
    name = "M" + "x" * 245
    (tmp_path / "long.nn").write_text(TINY.replace("Tiny", name))
    shutil.copy(work / "tiny.npz", tmp_path / "tiny.npz")
    out = cli("train", "long.nn", "--backend", "reference", cwd=tmp_path)
    assert f"cannot write runs/{name.lower()}-" in out and "File name too long" in out
    assert "hint: pass --out with a shorter folder name" in out


def test_a_run_that_cannot_start_leaves_no_folder(work):
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", "never", "--init-from",
              "run-tiny", "--set", "hidden=5", cwd=work)
    assert "parameter 'h.weight' is [4, 8]" in out and not (work / "never").exists()


def test_without_a_terminal_training_says_what_it_does(work, tmp_path, monkeypatch):
    from nnlang.train import trainer
    monkeypatch.setattr(trainer, "LINE_EVERY_S", 0.0)
    monkeypatch.setattr(trainer, "READ_EVERY_S", 0.0)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", tmp_path / "r", code=0,
              cwd=work)
    assert "compiling the training step" in out and "compiled in" in out
    assert "epoch 1/2  step 1/10" in out and "epoch 2/2  step 10/10" in out
    out = cli("eval", "tiny.nn", "-c", tmp_path / "r", "--backend", "reference", code=0,
              cwd=work)
    assert "evaluating: 3 batches" in out


def test_a_slow_validation_or_test_set_shows_progress(work, tmp_path, monkeypatch):
    """Validation in a pipe and the final test evaluation everywhere ran with no progress at
    all: minutes of silence after an epoch's last step on a large test set. They show lines
    as training does, and only when slow (LINE_EVERY_S; 0 here, so every batch)."""
    from nnlang.train import progress
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", tmp_path / "r",
              "--val-split", "0.25", code=0, cwd=work)
    assert "validation: 3/3 batches" in out and "test set: 3/3 batches" in out
    monkeypatch.setattr(progress, "LINE_EVERY_S", 30.0)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", tmp_path / "q",
              "--val-split", "0.25", code=0, cwd=work)
    # a fast pass adds no lines
    assert "| val loss" in out and "validation:" not in out and "test set:" not in out


def test_a_dumb_terminal_gets_the_lines_not_a_bar(work, tmp_path, monkeypatch):
    """TERM=dumb (Emacs shells, some CI runners) is a terminal that cannot move the cursor:
    rich draws a bar there only once it ends, so an epoch showed no progress at all until its
    end, and each finished bar left blank lines behind. It gets the lines of a pipe."""
    from nnlang.train import progress, trainer
    monkeypatch.setattr(trainer, "LINE_EVERY_S", 0.0)
    monkeypatch.setattr(trainer, "READ_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: stdout is a terminal
    monkeypatch.setenv("TERM", "dumb")
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", tmp_path / "r", code=0,
              cwd=work)
    assert "epoch 1/2  step 1/10" in out and "epoch 2/2  step 10/10" in out
    assert "\u2501" not in out  # no bar drawn
    out = cli("eval", "tiny.nn", "-c", tmp_path / "r", "--backend", "reference", code=0,
              cwd=work)
    assert "evaluating: 3 batches" in out and "\u2501" not in out
    assert "\n\n\n" not in out  # the finished bar left two blank lines


# *** eval and predict: checkpoints and inputs ***

@pytest.mark.parametrize("ckpt, words", [
    ("missing.npz", ["checkpoint not found: missing.npz"]),
    ("cut.npz", ["cut.npz is not a readable nnlang checkpoint", "truncated"]),
    ("foreign.npz", ["foreign.npz is not a readable nnlang checkpoint"]),
    # a newer nnlang's file says what to do: upgrade (the message had no hint)
    ("future.npz", ["checkpoint format 99, written by a newer nnlang", "reads format 1",
                    "upgrade nnlang"]),
    ("notes.txt", ["notes.txt is not a readable nnlang checkpoint"]),
    ("one.npy", ["one.npy is not a readable nnlang checkpoint", "no '__meta__' entry"]),
    # an exported file said "(ValueError)" and "train again"
    ("tiny.onnx", ["tiny.onnx is an ONNX file (what nnlang export writes), not an nnlang "
                   "checkpoint", "pass the run directory"]),
])
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_bad_checkpoints(work, command, ckpt, words):
    extra = ["one.npy"] if command == "predict" else []
    out = cli(command, "tiny.nn", *extra, "-c", ckpt, "--backend", "reference", cwd=work)
    for w in words:
        assert w in out, out



@pytest.mark.parametrize("code, words", [
    (errno.EACCES, ["cannot read run-tiny/", "(Permission denied)", "check that you may "
                                                                    "read it"]),
    (errno.EIO, ["cannot read run-tiny/", "(Input/output error)", "the file system could not "
                                                                  "read it"]),
])
def test_a_checkpoint_the_file_system_will_not_read_is_not_called_damaged(work, monkeypatch,
                                                                          code, words):
    """Another account's checkpoint (mode 600) or a failing disk: the error called the file
    'not a readable nnlang checkpoint (PermissionError)' and told the user it 'may be truncated
    or written by another program; ... train again'. (numpy opens the file, so the refusal
    is made there: root reads any mode.)"""
    load = np.load

    def refused(file, *args, **kw):
        if Path(file).parent.name == "run-tiny":
            raise OSError(code, os.strerror(code), str(file))
        return load(file, *args, **kw)
    monkeypatch.setattr(np, "load", refused)
    out = cli("eval", "tiny.nn", "-c", "run-tiny", "--backend", "reference", cwd=work)
    for w in words:
        assert w in out, out
    assert "truncated" not in out and "train again" not in out, out

def _rewritten(work, name, arrays=None, meta=None, compressed=False):
    """work/NAME: run-tiny's checkpoint with `arrays` replaced and its meta edited by `meta`."""
    z = dict(np.load(work / "run-tiny" / checkpoint.FILENAME))
    z.update(arrays or {})
    if meta is not None:
        z["__meta__"] = np.array(json.dumps(meta(json.loads(str(z["__meta__"])))))
    (np.savez_compressed if compressed else np.savez)(work / name, **z)
    return work / name


def _without(*keys):
    return lambda m: {k: v for k, v in m.items() if k not in keys}


# a checkpoint written by another program (or edited) is refused where it is read, by every
# command, not with a KeyError or TypeError deep inside the one that uses the missing part
BAD_META = {
    "no_config": (_without("config"), "no 'config'"),
    "no_epoch": (_without("epoch"), "no 'epoch'"),
    # was 'has checkpoint format None; this nnlang reads format 1', as if a version could read it
    "no_format": (_without("format"), "'format' is None, not a checkpoint format"),
    "no_model": (_without("model"), "no 'model'"),
    "list": (lambda m: [1, 2], "its meta is a list, not a JSON object"),
    "odd_key": (lambda m: {**m, "config": {**m["config"], "zzz": 1}},
                "unknown train setting 'zzz'"),
    "step_text": (lambda m: {**m, "step": "ten"}, "'step' is 'ten', not a whole number"),
    "rng": (lambda m: {**m, "rng_state": {"x": 1}}, "'rng_state' is not a PCG64 state"),
    "data_meta": (lambda m: {**m, "data": {**m["data"], "meta": [1]}},
                  "'data.meta' is [1], not a JSON object"),
    # eval went on, resume was an internal KeyError / TypeError
    "optimizer": (lambda m: {**m, "config": {**m["config"], "optimizer": {"name": "bogus"}}},
                  "unknown optimizer 'bogus' in its config"),
    "lr_text": (lambda m: {**m, "config": {**m["config"], "optimizer": {
        "name": "adam", "options": {**m["config"]["optimizer"]["options"], "lr": "x"}}}},
        "its config's optimizer adam:"),
    "options": (lambda m: {**m, "config": {**m["config"], "optimizer": {
        "name": "adam", "options": {"lr": 0.1}}}},
        "its config's optimizer adam has no beta1, beta2, eps, weight_decay"),
}


CONSUMERS = ["eval", "predict", "export", "resume", "init-from"]


def _consume(command, bad, work, tmp_path) -> tuple[str, Path]:
    """Runs COMMAND on the checkpoint `bad` (resume: as the checkpoint of a copy of run-tiny);
    expects exit 1; returns the output and the path the command was given."""
    if command == "resume":
        shutil.copytree(work / "run-tiny", tmp_path / "r")
        shutil.copy(bad, tmp_path / "r" / checkpoint.FILENAME)
        bad = tmp_path / "r" / checkpoint.FILENAME
        args = ["train", "tiny.nn", "--resume", "--out", tmp_path / "r", "--epochs", "2"]
    elif command == "init-from":
        args = ["train", "tiny.nn", "--init-from", bad, "--out", tmp_path / "r"]
    else:
        args = [command, "tiny.nn", *(["one.npy"] if command == "predict" else []), "-c", bad,
                *(["-o", tmp_path / "m.onnx"] if command == "export" else [])]
    out = cli(*args, *([] if command == "export" else ["--backend", "reference"]), cwd=work)
    return out, bad


@pytest.mark.parametrize("case", list(BAD_META))
@pytest.mark.parametrize("command", CONSUMERS)
def test_checkpoint_with_bad_meta(work, tmp_path, command, case):
    edit, words = BAD_META[case]
    out, bad = _consume(command, _rewritten(work, f"meta-{case}.npz", meta=edit), work, tmp_path)
    assert f"{bad} is not a readable nnlang checkpoint" in out and words in out, out


@pytest.mark.parametrize("value, words", [
    (np.float32(np.nan), "holds nan (at [5, 1])"), (np.float32(-np.inf), "holds -inf (at [5, 1])"),
    # a float32 run's weights, written as float64: the cast to float32 made it inf
    (np.float64(1e300), "holds 1e+300 (at [5, 1]), beyond float32")])
@pytest.mark.parametrize("command", CONSUMERS)
def test_checkpoint_with_non_finite_weights(work, tmp_path, command, value, words):
    """A run never saves an exploded state, so a NaN weight means a damaged or foreign file.
    predict printed 'label 0, probability nan' and export wrote the NaN into the .onnx (exit 0);
    resume and --init-from 'diverged at step 1: lower the learning rate', resume naming the
    damaged file as 'the last good checkpoint'."""
    w = np.ones((8, 3), value.dtype)
    w[5, 1] = value
    out, bad = _consume(command, _rewritten(work, "nonfinite.npz", {"state/logits.weight": w}),
                        work, tmp_path)
    assert f"{bad}: parameter 'logits.weight' {words}" in out, out
    assert "training diverged" not in out and "lower the learning rate" not in out


@pytest.mark.parametrize("array, words", [
    (np.array(["a"] * 8), "holds <U1 values, not numbers"),
    (np.ones(8) * (1 + 1j), "holds complex128 values, not numbers")])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_checkpoint_with_a_weight_that_is_no_numbers(work, tmp_path, command, array, words):
    """'state value 'h.bias' holds text': right, but not which file."""
    out, bad = _consume(command, _rewritten(work, "text.npz", {"state/h.bias": array}), work,
                        tmp_path)
    assert f"{bad}: parameter 'h.bias' {words}" in out, out


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_damaged_compressed_checkpoint(work, tmp_path, command):
    """np.savez_compressed writes a checkpoint nnlang reads; a flipped byte inside it is a zlib
    error, which was an internal error."""
    import struct
    path = _rewritten(work, "packed.npz", compressed=True)
    data = bytearray(path.read_bytes())
    # the first member's deflate stream starts with a block of the reserved type 3
    name_len, extra_len = struct.unpack("<HH", data[26:30])
    data[30 + name_len + extra_len] = 0xFF
    path.write_bytes(bytes(data))
    extra = {"predict": ["one.npy"], "export": ["-o", tmp_path / "m.onnx"]}.get(command, [])
    out = cli(command, "tiny.nn", *extra, "-c", path, cwd=work)
    assert "packed.npz is not a readable nnlang checkpoint" in out, out


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_checkpoint_of_another_model(work, command):
    extra = ["one.npy"] if command == "predict" else []
    out = cli(command, "other.nn", *extra, "-c", "run-tiny", "--backend", "reference",
              cwd=work)
    assert "holds model 'Tiny'" in out and "no model named 'Tiny'" in out, out
    assert "the .nn file the checkpoint was trained from" in out


@pytest.mark.parametrize("label, words", [(5, "the id 5 is outside"), (-1, "the id -1 is outside")])
def test_eval_names_the_row_of_a_bad_label(work, label, words):
    """train said 'bad.npz (test split), array 'label', row 3: the id 5 is outside ...'; eval of
    the same file only "input 'label' holds the id 5", naming no file or row."""
    x = np.zeros((6, 4), np.float32)
    np.savez(work / "bad.npz", train_x=x, train_label=np.zeros(6, int), test_x=x,
             test_label=np.array([0, 1, 2, label, 0, 1]))
    out = cli("eval", "tiny.nn", "-c", "run-tiny", "--data", "bad.npz", "--backend",
              "reference", cwd=work)
    assert f"bad.npz (test split), array 'label', row 3: {words}" in out, out


@pytest.mark.parametrize("inputs, words", [
    (["missing.npy"], ["input file not found: missing.npy"]),
    (["wide.npy"], ["shape [1, 7]", "'x'"]),
    (["notes.txt"], ["not a .npy file"]),
])
def test_predict_refuses_inputs_of_the_wrong_kind(work, inputs, words):
    out = cli("predict", "tiny.nn", *inputs, "-c", "run-tiny", "--backend", "reference",
              cwd=work)
    for w in words:
        assert w in out, out


def test_predict_a_file_for_a_text_model(tmp_path):
    from nnlang.train.inference import _no_files_for_text
    from nnlang.errors import NNError
    with pytest.raises(NNError, match="'digit.png' looks like a file, but this model reads"):
        _no_files_for_text(["a fine film", "digit.png"])
    _no_files_for_text(["review.txt", "it was great. truly"])


def test_predict_tells_classes_from_numbers(work):
    out = cli("predict", "tiny.nn", "one.npy", "-c", "run-tiny", "--backend", "reference",
              code=0, cwd=work)
    assert "label" in out and "probability" in out
    out = cli("predict", "reg.nn", "one.npy", "-c", "run-reg", "--backend", "reference",
              code=0, cwd=work)
    assert "label" not in out and "probability" not in out and "value" in out
    r = json.loads(cli("predict", "reg.nn", "one.npy", "-c", "run-reg", "--backend",
                       "reference", "--json", code=0, cwd=work))
    assert r["kind"] == "value" and r["shape"] == [] and isinstance(r["value"], float)
    assert f"{r['value']:.6g}" in out   # the real output, not a sigmoid of it
    r = json.loads(cli("predict", "ae.nn", "one.npy", "-c", "run-ae", "--backend",
                       "reference", "--json", code=0, cwd=work))
    assert r["kind"] == "value" and r["shape"] == [4] and len(r["value"]) == 4


def test_output_kind_comes_from_the_losses():
    import nnlang
    from nnlang.train.inference import output_kind
    cases = [(TINY, "probs", (2, 3), ("class", False)),
             (REGRESSION, "y", (2,), ("value", False)),
             (AUTOENCODER, "recon", (2, 4), ("value", False)),
             (OTHER, "logits", (2, 3), ("class", True)),
             (WIDE, "h", (2, 20), ("tensor", False))]
    for source, name, shape, want in cases:
        g = nnlang.load(source).graph
        assert output_kind(g, g.outputs[name], np.zeros(shape)) == want, name
    g = nnlang.load(str(ROOT / "models/gru.nn")).graph
    assert output_kind(g, g.outputs["prob"], np.zeros(2)) == ("binary", False)


def test_tensor_outputs_print_a_summary():
    from nnlang_cli.train_cmds import _numbers
    r = {"kind": "tensor", "value": np.arange(40.0).reshape(2, 20).tolist()}
    assert _numbers(r) == "shape [2, 20]: min 0, mean 19.5, max 39 (--json for all values)"


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_ctrl_c_in_eval_and_predict_exits_130(work, monkeypatch, command):
    from nnlang.runtime.net import Net

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(Net, "_run", interrupted)
    extra = ["one.npy"] if command == "predict" else []
    out = cli(command, "tiny.nn", *extra, "-c", "run-tiny", "--backend", "reference",
              code=130, cwd=work)
    assert "interrupted" in out


def test_resume_of_a_run_on_a_read_only_file_system_says_how_to_go_on(work, tmp_path,
                                                                     monkeypatch):
    """--resume of a run on a read-only mount (an archive, a finished job's share) said
    "pass --out with a writable folder", which starts no resume; the run is unchanged and
    it says how to go on from it: a copy in a writable place."""
    import tempfile

    from nnlang.train import checkpoint, runs
    run = tmp_path / "ro-run"
    shutil.copytree(work / "run-tiny", run)
    before = (run / checkpoint.FILENAME).read_bytes()

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == run:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return tempfile.TemporaryFile(*args, dir=dir, **kwargs)
    monkeypatch.setattr(runs.tempfile, "TemporaryFile", read_only)
    out = cli("train", "tiny.nn", "--backend", "reference", "--out", run, "--resume",
              "--epochs", "3", cwd=work)
    assert f"cannot write {run} (Read-only file system)" in out, out
    assert f"cp -r {run} NEW" in out and "--out NEW --resume" in out, out
    assert (run / checkpoint.FILENAME).read_bytes() == before


# *** caches: optional, so a cache that cannot be written only warns ***

def test_kernel_files_live_under_the_cache_root(tmp_path, monkeypatch):
    from nnlang.backends import numba_backend
    from nnlang.passes import plan_cache
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    assert numba_backend.cache_dir() == tmp_path / "kernels"
    assert plan_cache.plan_dir() == tmp_path / "plans"


SOURCE = "import numba\n\n@numba.njit(cache=True)\ndef twice(x):\n    return 2 * x\n"


@pytest.mark.parametrize("err, which", [
    (errno.ENOSPC, ""), (errno.EROFS, ""),
    (errno.ENOSPC, ".nb"),    # only numba's own cache files (.nbi/.nbc) cannot be written
])
def test_full_or_read_only_cache_warns_and_leaves_no_temp_file(tmp_path, monkeypatch, capsys,
                                                                 err, which):
    from nnlang import user_cache
    from nnlang.backends import numba_backend
    from nnlang.passes import plan_cache
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(user_cache, "_warned", set())
    real = os.replace

    def failing(src, dst):
        if str(tmp_path) in str(dst) and which in str(dst):
            raise OSError(err, os.strerror(err))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", failing)
    plan_cache.store("k" * 64, {"plan": 1})
    backend = numba_backend.NumbaBackend()
    fn = backend.compile(SOURCE + f"# {err} {which}\n", "twice")
    entry, _ = backend.specialize(fn, (21,))
    assert entry(21) == 42
    warning = capsys.readouterr().err
    assert "warning: cannot write the cache" in warning and os.strerror(err) in warning
    assert warning.count("warning:") == 1
    # NOTE: the markers in kernels/compiled/ are empty by design; no other file may be
    left = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "compiled"]
    assert not [p for p in left if p.suffix == ".tmp" or p.stat().st_size == 0], left
    if which:  # no "in numba's cache" marker for a kernel numba could not save
        assert not (tmp_path / "kernels/compiled").exists()


def test_a_read_only_warm_cache_is_read_for_kernels(tmp_path, monkeypatch, capsys):
    """A warm cache this process cannot write (a shared pre-built one, a read-only mount): its
    plans and data were read, but every kernel was written to a private folder and compiled
    again (numba's cache locators all need a folder they can write). A kernel the cache holds
    is read from it with numba's machine code beside it, and nothing is said; one it lacks
    compiles in the private folder after one warning. NOTE: root (CI) writes past chmod, so the
    cache is made read-only where this process asks: os.access and the writers refuse."""
    import tempfile

    from nnlang import user_cache
    from nnlang.backends import numba_backend
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(user_cache, "_warned", set())
    source = SOURCE + "# a warm read-only cache\n"
    warm = numba_backend.NumbaBackend()
    warm.specialize(warm.compile(source, "twice"), (21,))
    access, temporary, replace = os.access, tempfile.TemporaryFile, os.replace

    def inside(path):
        return path is not None and Path(path).is_relative_to(tmp_path)

    def refused(*args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        False if inside(path) and mode & os.W_OK else access(path, mode, **kw)))
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, dir=None, **kw: (
        refused() if inside(dir) else temporary(*a, dir=dir, **kw)))
    monkeypatch.setattr(os, "replace", lambda src, dst: (
        refused() if inside(dst) else replace(src, dst)))
    cold = numba_backend.NumbaBackend()   # NOTE: a new one loads the module anew, as a new run
    fn = cold.compile(source, "twice")
    assert cold.specialize(fn, (21,))[0](21) == 42
    assert Path(fn.py_func.__code__.co_filename).parent == tmp_path / "kernels"
    assert (sum(fn._cache_hits.values()), sum(fn._cache_misses.values())) == (1, 0)
    assert capsys.readouterr().err == ""
    new = cold.compile(SOURCE + "# not in the cache\n", "twice")
    assert cold.specialize(new, (21,))[0](21) == 42
    assert capsys.readouterr().err.count("warning: cannot write the cache") == 1


def test_no_home_folder_warns_once_and_compiles(monkeypatch, capsys):
    """HOME unset and a user with no passwd entry (`docker run -u 12345`, OpenShift's random
    uid): Path.home() raises, and every compile was "internal error: RuntimeError: Could not
    determine home directory". The cache is then a temporary folder of the process's own,
    after one warning that says how to keep one."""
    import pwd

    from nnlang import user_cache
    from nnlang.backends import numba_backend
    from nnlang.passes import plan_cache
    monkeypatch.delenv("NNLANG_CACHE_DIR")
    monkeypatch.delenv("HOME", raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    monkeypatch.setattr(user_cache, "_warned", set())
    plan_cache.store("h" * 64, {"plan": 1})
    assert plan_cache.load("h" * 64) == {"plan": 1}
    backend = numba_backend.NumbaBackend()
    entry, _ = backend.specialize(backend.compile(SOURCE + "# homeless\n", "twice"), (21,))
    assert entry(21) == 42
    warning = capsys.readouterr().err
    assert warning.count("warning:") == 1 and "no home folder" in warning, warning
    assert "NNLANG_CACHE_DIR" in warning
    # NOTE: a data set that could not be downloaded: not "put these files in" that folder
    from nnlang.data.cache import Remote, missing_error
    remote = Remote("a.gz", "https://example.invalid/a.gz", "sha256:00")
    err = missing_error("toy", [remote], None, [(remote, "offline")])
    assert "put these files in" not in err.message and "DIR/toy/" in err.message
    assert "a.gz    <- https://example.invalid/a.gz" in err.message


@pytest.mark.parametrize("suffix, damage", [
    (".nbi", lambda b: b[:len(b) // 2]), (".nbc", lambda b: b[:len(b) // 2]),
    (".nbc", lambda b: b"garbage"), (".nbi", lambda b: b""),
])
def test_a_damaged_kernel_cache_warns_and_compiles_again(tmp_path, monkeypatch, capsys, suffix,
                                                         damage):
    """A truncated .nbi/.nbc once failed every later run with an internal error."""
    from nnlang.backends import numba_backend
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    source = SOURCE + f"# damaged {suffix} {damage(bytes(range(200)))[:50]!r}\n"
    entry, _ = numba_backend.NumbaBackend().specialize(
        numba_backend.NumbaBackend().compile(source, "twice"), (21,))
    assert entry(21) == 42
    (bad,) = (tmp_path / "kernels").rglob(f"*{suffix}")
    bad.write_bytes(damage(bad.read_bytes()))
    capsys.readouterr()
    backend = numba_backend.NumbaBackend()   # a fresh module: numba reads its disk cache
    entry, _ = backend.specialize(backend.compile(source, "twice"), (21,))
    assert entry(21) == 42
    warning = capsys.readouterr().err
    assert "is damaged" in warning and warning.count("\n") == 1, warning
    assert backend.compiled == 1    # compiled again, and saved for the next run
    assert len(list((tmp_path / "kernels").rglob("*.nbi"))) == 1


def test_a_flipped_bit_in_cached_machine_code_is_caught(tmp_path):
    """numba checks that a cache file parses, not that it holds the code it wrote: one flipped
    bit in a .nbc loaded unnoticed at about half the positions tried, and at most others
    crashed every later run (SIGSEGV, abort). Each data file's checksum is written beside it
    and checked before the file is loaded; the probe runs in its own process, where a crash
    is an exit code."""
    probe = ("import os, sys\n"
             "from nnlang.backends import numba_backend\n"
             "b = numba_backend.NumbaBackend()\n"
             f"entry, _ = b.specialize(b.compile({SOURCE!r}, 'twice'), (21,))\n"
             "print(entry(21), b.compiled)\n")
    env = {**os.environ, "NNLANG_CACHE_DIR": str(tmp_path)}

    def run():
        return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, timeout=600,
                              capture_output=True, text=True)
    assert run().stdout.split() == ["42", "1"]
    (data,) = (tmp_path / "kernels").rglob("*.nbc")
    for where in (0.1, 0.5, 0.9):
        code = bytearray(data.read_bytes())
        code[int(len(code) * where)] ^= 0x10
        data.write_bytes(code)
        p = run()
        assert (p.returncode, p.stdout.split()) == (0, ["42", "1"]), (where, p.stderr)
        assert "differs from the checksum" in p.stderr and p.stderr.count("\n") == 1
        p = run()   # compiled again and summed anew: the next run loads it quietly
        assert (p.stdout.split(), p.stderr) == (["42", "0"], "")


@pytest.mark.parametrize("damage", [lambda b: b[:16] + b"garbage" * 4, lambda b: b[:len(b) // 2]])
def test_a_damaged_bytecode_file_of_a_kernel_module_is_not_read(tmp_path, damage):
    """Where Python writes bytecode (PYTHONDONTWRITEBYTECODE unset, as by default), importing a
    kernel module left its .pyc in the cache, and Python trusts a .pyc whose header matches
    the source: one with a damaged body failed every later run ("internal error: ValueError:
    bad marshal data"), unlike the cache's other files, which are checked. Kernel modules are
    compiled from their source each time (a few small files), so no .pyc is read or left."""
    probe = ("from nnlang.backends import numba_backend\n"
             "b = numba_backend.NumbaBackend()\n"
             f"entry, _ = b.specialize(b.compile({SOURCE!r}, 'twice'), (21,))\n"
             "print(entry(21))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["NNLANG_CACHE_DIR"] = str(tmp_path)

    def run():
        return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, timeout=600,
                              capture_output=True, text=True)
    assert run().stdout.split() == ["42"]
    for pyc in (tmp_path / "kernels").rglob("*.pyc"):
        pyc.write_bytes(damage(pyc.read_bytes()))
    p = run()
    assert (p.returncode, p.stdout.split()) == (0, ["42"]), p.stderr[-2000:]
    assert not list((tmp_path / "kernels").rglob("*.pyc"))


@pytest.mark.slow
def test_runs_compiling_into_one_cold_cache_at_once_warn_of_nothing(work, tmp_path):
    """The ranks of `mpirun -n 2 nnlang train` (or two runs on one machine) compile the same
    kernels into one cache at the same time. numba's machine code differs from one process to
    the next, so one process's checksum was left beside the other's file: every cold
    data-parallel start printed false "is damaged" warnings (0-8 a run here) and compiled
    those kernels again. Each kernel is now compiled and summed by one process at a time; the
    others wait for it and load it."""
    env = {**os.environ, "NNLANG_CACHE_DIR": str(tmp_path / "cache"), "NNLANG_PLAN_CACHE": "0"}

    def train(out):
        return subprocess.Popen([sys.executable, "-m", "nnlang_cli.main", "train", "tiny.nn",
                                 "--out", str(tmp_path / out), "--epochs", "1"], cwd=work,
                                env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    runs = [train(out) for out in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in runs]
    outs.append(train("c").communicate(timeout=300))
    for out, err in outs:
        assert "damaged" not in err, err
    assert all(p.returncode == 0 for p in runs), outs
    a, b = checkpoint.load(tmp_path / "a"), checkpoint.load(tmp_path / "b")
    assert all(np.array_equal(a.state[k], b.state[k]) for k in a.state)


def test_a_run_on_a_damaged_warm_kernel_cache_trains_the_same(work, tmp_path):
    env = {"NNLANG_CACHE_DIR": str(tmp_path / "cache"), "NNLANG_PLAN_CACHE": "0"}
    cli_process("train", "tiny.nn", "--out", tmp_path / "r1", "--epochs", "1", code=0, cwd=work,
                env=env)
    index, data = (sorted((tmp_path / "cache/kernels").rglob(f"*{s}"), key=lambda p: p.name)
                   for s in (".nbi", ".nbc"))
    index[0].write_bytes(index[0].read_bytes()[:30])
    # NOTE: a module of one kernel (the update's module holds a multi-tensor variant beside the
    # plain one, which a warm run need not load), not the one whose index is cut
    module = [p.name.split(".")[0] for p in data]
    bad = next(p for p, m in zip(data, module)
               if not p.name.startswith(index[0].name[:-4]) and module.count(m) == 1)
    bad.write_bytes(bad.read_bytes()[:-100])
    p = cli_process("train", "tiny.nn", "--out", tmp_path / "r2", "--epochs", "1", code=0,
                    cwd=work, env=env)
    assert p.stderr.count("is damaged") == 2, p.stderr
    a, b = checkpoint.load(tmp_path / "r1"), checkpoint.load(tmp_path / "r2")
    assert all(np.array_equal(a.state[k], b.state[k]) for k in a.state)


def test_unusable_cache_dir_in_a_real_run(work):
    """A cache folder that cannot even be made (its parent is a file): the run trains."""
    p = cli_process("train", "tiny.nn", "--out", "run-nocache", "--epochs", "1", code=0,
                    cwd=work, env={"NNLANG_CACHE_DIR": str(work / "one.npy" / "cache")})
    assert "warning: cannot write the cache" in p.stderr
    assert checkpoint.load(work / "run-nocache").step == 10


def test_run_files_get_the_modes_of_the_umask(work, tmp_path):
    """Checkpoints and the run's JSON are written through a temporary file (atomic replace);
    they must still get the permissions any file the user creates gets, not mkstemp's 0600
    (other users of a shared --out could not read them)."""
    import os
    old = os.umask(0o022)
    try:
        cli("train", "tiny.nn", "--backend", "reference", "--epochs", "1", "--out",
            tmp_path / "r", code=0, cwd=work)
    finally:
        os.umask(old)
    for name in ("checkpoint.npz", "config.json", "summary.json"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name
