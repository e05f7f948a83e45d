"""`nnlang train`, `eval` and `predict` through typer's CliRunner on the reference backend:
a tiny .npz model end to end, resume, clean errors, and text predict on imdb-sample."""
import csv
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from nnlang.data import cache
from nnlang.train import feeds
from nnlang_cli.main import app
from tests.tiny_run import tiny_data, tiny_source

TINY = tiny_source("sgd(lr = 0.1)", val_split=None)
SENTIMENT = """
model Sentiment(vocab = 100, maxlen = 20, dim = 8) {
  input tokens: int32[batch, maxlen]
  input label: float32[batch]
  pooled = embedding(tokens, vocab, dim) |> mean(axis = 1)
  logits = dense(pooled, 1) |> squeeze(axis = 1)
  output prob = sigmoid(logits)
  loss bce_with_logits(logits, label)
  metric acc = binary_accuracy(logits, label)
}
train Sentiment {
  data = imdb(vocab = 100, maxlen = 20)
  optimizer = adam(lr = 0.01)
  batch = 8
}
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    return make_tiny(tmp_path, monkeypatch)


def make_tiny(tmp_path, monkeypatch):
    """tmp_path as the working directory, holding tiny.nn, its data and one.npy."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "SYSTEM_DIRS", [])
    x = tiny_data(tmp_path, total=50, train=40)
    np.save("one.npy", x[0])
    (tmp_path / "tiny.nn").write_text(TINY)
    return tmp_path


def nnlang(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_eval_predict(tiny):
    r = nnlang("train", "tiny.nn", "--backend", "reference", "--out", "run", "--epochs", "1",
               "--lr", "0.05", "--set", "hidden=6")
    assert r.exit_code == 0, r.output
    assert "epoch 1/1" in r.output and "test" in r.output and "run directory: run" in r.output
    cfg = json.loads((tiny / "run/config.json").read_text())
    assert cfg["train"]["optimizer"]["options"]["lr"] == 0.05 and cfg["train"]["epochs"] == 1
    assert cfg["hparams"]["hidden"] == 6
    r = nnlang("eval", "tiny.nn", "--checkpoint", "run", "--backend", "reference")
    assert r.exit_code == 0, r.output
    summary = json.loads((tiny / "run/summary.json").read_text())
    assert f"{summary['test']['loss']:.4f}" in r.output  # the --set hidden=6 model, restored
    r = nnlang("predict", "tiny.nn", "one.npy", "one.npy", "-c", "run/checkpoint.npz",
               "--backend", "reference")
    assert r.exit_code == 0, r.output
    assert r.output.count("one.npy") == 2 and "probs" in r.output


def test_resume_from_the_command_line(tiny):
    assert nnlang("train", "tiny.nn", "--backend", "reference", "--out", "run",
                  "--epochs", "1").exit_code == 0
    # the checkpoint's config (1 epoch) is the base; flags extend it
    r = nnlang("train", "tiny.nn", "--backend", "reference", "--out", "run", "--resume",
               "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "epoch 2/2" in r.output and "epoch 1/2" not in r.output
    rows = (tiny / "run/metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1, 2]


POINTER = """
model Pointer {
  symbol seq
  input x: float32[batch, seq, 3]
  input label: int32[batch]
  h = dense(x, 4) |> tanh
  pair = sum(h[:, 18:20], axis = 1)
  score = dense(h + unsqueeze(pair, axis = 1), 1) |> squeeze(axis = -1)
  output p = softmax(score, axis = 1)
  loss cross_entropy(score, label)
}
train Pointer {
  data = "ptr.npz"
  batch = 4
  epochs = 1
}
"""


def test_train_and_eval_a_symbolic_length_the_data_gives(tmp_path, monkeypatch):
    """A fixed slice h[:, 18:20] and a loss over the places of a `symbol seq` (docs/language.md
    says both work) on sequences of 24: `train` and `eval` stopped before the first step,
    "slice 18:20 of a dim of size 1 is empty (with seq = 1)" and "1 class" (the data's ids
    were checked on the model bound at length 1), then "... of size 16" (the step compiled
    before the first epoch was bound at the default length), not at the data's own length."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("ptr.npz", train_x=rng.normal(size=(12, 24, 3)).astype(np.float32),
             train_label=rng.integers(0, 24, 12).astype(np.int32),
             test_x=rng.normal(size=(4, 24, 3)).astype(np.float32),
             test_label=rng.integers(0, 24, 4).astype(np.int32))
    (tmp_path / "ptr.nn").write_text(POINTER)
    r = nnlang("train", "ptr.nn", "--backend", "reference", "--out", "run")
    assert r.exit_code == 0, r.output
    assert "epoch 1/1" in r.output
    r = nnlang("eval", "ptr.nn", "--checkpoint", "run", "--backend", "reference")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert f"{summary['test']['loss']:.4f}" in r.output


@pytest.mark.parametrize("args, message", [
    (["train", "tiny.nn", "--set", "nope=1"], "has no hyper-parameter 'nope'"),
    (["train", "tiny.nn", "--backend", "tpu"], "unknown backend 'tpu'"),
    (["train", "tiny.nn", "--data", "missing.npz"], "data file not found"),
    (["train", "tiny.nn", "--lr", "1e30", "--out", "bad"], "training diverged"),
    (["eval", "tiny.nn", "--checkpoint", "nothing.npz"], "checkpoint not found"),
    (["predict", "tiny.nn", "x.npy", "-c", "nothing"], "checkpoint not found"),
])
def test_errors_exit_1_without_a_traceback(tiny, args, message):
    r = nnlang(*args, "--backend", "reference") if "--backend" not in args else nnlang(*args)
    assert r.exit_code == 1
    assert message in r.output and "Traceback" not in r.output


def test_predict_text_with_the_checkpoint_vocabulary(tiny, monkeypatch):
    (tiny / "sentiment.nn").write_text(SENTIMENT)
    r = nnlang("train", "sentiment.nn", "--data", "imdb-sample", "--max-steps", "1",
               "--backend", "reference", "--out", "run")
    assert r.exit_code == 0, r.output
    (tiny / "review.txt").write_text("A wonderful film, great acting!")
    # NOTE: predict must not load the dataset again: the vocab comes from the checkpoint
    def no_data(*args, **kw):
        raise AssertionError("predict loaded the dataset")
    monkeypatch.setattr(feeds, "load_data", no_data)
    r = nnlang("predict", "sentiment.nn", "review.txt", "a dull and boring mess", "-c", "run",
               "--backend", "reference")
    assert r.exit_code == 0, r.output
    assert "review.txt" in r.output and "a dull and boring mess" in r.output
    labels = [line.split()[-2] for line in r.output.splitlines() if " prob " in line]
    assert len(labels) == 2 and set(labels) <= {"pos", "neg"}


KEPT_ROWS = TINY.replace(
    "loss cross_entropy(logits, label)", "loss cross_entropy(logits, label, ignore_index = 0)"
).replace("metric acc = accuracy(logits, label)",
          "metric acc = accuracy(logits, label, ignore_index = 0)\n"
          "  metric wce = 0.5 * cross_entropy(logits, label, weight = [0.5, 1.0, 4.0]) "
          "+ mean(square(logits))").replace("batch = 4", "batch = 8")


def test_kept_row_means_are_the_whole_sets_in_train_and_eval(tmp_path, monkeypatch):
    """cross_entropy and accuracy with ignore_index, and cross_entropy with class weights
    beside a plain mean, over 21 rows in batches of 8, 8 and 5 that ignore different numbers of
    rows: the val and test numbers of `nnlang train` and `nnlang eval` are the whole set's mean
    over its kept rows (its weighted rows), as a numpy computation over all 21 rows at once
    gives, not each batch's mean weighted by its rows."""
    from tests import reference
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(82, 4)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)).astype(np.int32)
    y[[40, 41, 42, 43, 44, 45, 50, 61, 62, 63, 64, 65, 66, 77]] = 0   # uneven ignored rows
    np.savez("tiny.npz", train_x=x[:40], train_label=y[:40], val_x=x[40:61],
             val_label=y[40:61], test_x=x[61:], test_label=y[61:])
    (tmp_path / "tiny.nn").write_text(KEPT_ROWS)
    r = nnlang("train", "tiny.nn", "--backend", "reference", "--out", "run", "--epochs", "1")
    assert r.exit_code == 0, r.output
    saved = np.load("run/checkpoint.npz")
    p = {k: saved[f"state/{k}"].astype(np.float64)
         for k in ("h.weight", "h.bias", "logits.weight", "logits.bias")}

    def whole(xs, ys):
        z = np.maximum(xs @ p["h.weight"] + p["h.bias"], 0) @ p["logits.weight"] \
            + p["logits.bias"]
        return {"loss": reference.cross_entropy(z, ys, ignore_index=0),
                "acc": reference.accuracy(z, ys, ignore_index=0),
                "wce": 0.5 * reference.cross_entropy(z, ys, weight=[0.5, 1.0, 4.0])
                + np.mean(z * z)}
    val, test = whole(x[40:61], y[40:61]), whole(x[61:], y[61:])
    row = next(csv.DictReader(open("run/metrics.csv")))
    summary = json.loads(open("run/summary.json").read())
    for k in val:
        assert float(row[f"val_{k}"]) == pytest.approx(val[k], rel=1e-5), k
        assert summary["test"][k] == pytest.approx(test[k], rel=1e-5), k
    r = nnlang("eval", "tiny.nn", "--checkpoint", "run", "--backend", "reference")
    assert r.exit_code == 0, r.output
    line = next(s for s in r.output.splitlines() if s.split()[:1] == ["test"] and "set" not in s)
    assert line.split()[1:] == [f"{test[k]:.4f}" for k in ("loss", "acc", "wce")], r.output


def test_the_epochs_train_columns_are_means_over_the_rows_trained_on(tmp_path, monkeypatch):
    """The train_loss and train_acc of an epoch were the mean of its steps' values: with
    ignore_index, each a mean over its own batch's kept rows, so a batch that kept 2 rows
    weighed as much as one that kept 8. They are the mean over every kept row trained on, as a
    numpy computation over the epoch's 40 rows at once gives (the weights held still by a
    vanishing learning rate, so every step sees the same ones)."""
    from tests import reference
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)).astype(np.int32)
    y[:17] = 0   # 17 of 40 rows ignored: batches of 8 keep different counts
    np.savez("tiny.npz", train_x=x, train_label=y)
    (tmp_path / "tiny.nn").write_text(KEPT_ROWS.replace("sgd(lr = 0.1)", "sgd(lr = 1e-30)"))
    r = nnlang("train", "tiny.nn", "--backend", "reference", "--out", "run", "--epochs", "1")
    assert r.exit_code == 0, r.output
    saved = np.load("run/checkpoint.npz")
    p = {k: saved[f"state/{k}"].astype(np.float64)
         for k in ("h.weight", "h.bias", "logits.weight", "logits.bias")}
    z = np.maximum(x @ p["h.weight"] + p["h.bias"], 0) @ p["logits.weight"] + p["logits.bias"]
    want = {"loss": reference.cross_entropy(z, y, ignore_index=0),
            "acc": reference.accuracy(z, y, ignore_index=0),
            "wce": 0.5 * reference.cross_entropy(z, y, weight=[0.5, 1.0, 4.0]) + np.mean(z * z)}
    row = next(csv.DictReader(open("run/metrics.csv")))
    for k in want:
        assert float(row[f"train_{k}"]) == pytest.approx(want[k], rel=1e-5), k


def test_a_tilde_in_a_path_the_shell_does_not_expand_is_the_home_folder(tiny, monkeypatch):
    """`--out=~/runs/a`, `--data=~/d.npz` and `--data-dir=~/d` (no shell expands a ~ after
    `=`), `data = "~/d.npz"` in the train section and `NNLANG_DATA_DIR="~/data"` (a cron or
    systemd line) reach nnlang with the ~ as written: --out made a folder named '~' in the
    working directory (one `rm -rf ~` away from the home folder), the others were 'not
    found'. A ~ is the home folder, as a shell (and numpy, pandas, torchvision) reads it."""
    home = tiny / "home"
    (home / "d").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (tiny / "tiny.npz").rename(home / "d" / "tiny.npz")
    r = nnlang("train", "tiny.nn", "--backend", "reference", "--epochs", "1",
               "--data=~/d/tiny.npz", "--out=~/runs/a")
    assert r.exit_code == 0, r.output
    assert not (tiny / "~").exists() and (home / "runs/a/checkpoint.npz").is_file()
    r = nnlang("eval", "tiny.nn", "--backend", "reference", "--checkpoint=~/runs/a",
               "--data=~/d/tiny.npz")
    assert r.exit_code == 0, r.output
    (tiny / "t2.nn").write_text(TINY.replace('"tiny.npz"', '"~/d/tiny.npz"'))
    r = nnlang("train", "t2.nn", "--backend", "reference", "--epochs", "1", "--out", "b")
    assert r.exit_code == 0, r.output
    r = nnlang("train", "tiny.nn", "--backend", "reference", "--epochs", "1", "--out", "c",
               "--data-dir=~/d")
    assert r.exit_code == 0, r.output
    assert not (tiny / "~").exists()
    monkeypatch.setenv("NNLANG_DATA_DIR", "~/d")   # NOTE: where named data sets are looked for
    assert (home / "d", "$NNLANG_DATA_DIR") in cache.search_roots()


def test_force_color_into_a_log_file_gives_lines_not_a_redrawn_bar(tiny, monkeypatch):
    """FORCE_COLOR=1 (set in many CI configurations for coloured logs) made rich take a log
    file for a terminal: the progress bar was redrawn there with a carriage return and
    cursor codes at every refresh, thousands of them an hour. Colour is what was asked for;
    a bar redraws only on a real terminal (or TTY_INTERACTIVE=1), else one line per epoch."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    r = nnlang("train", "tiny.nn", "--backend", "reference", "--out", "run", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "\r" not in r.stdout and "\x1b[2K" not in r.stdout and "\x1b[?25l" not in r.stdout
    assert re.search(r"epoch 2/2  loss \d", re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)), r.stdout


def test_a_folder_named_tilde_is_reached_as_dot_slash_tilde(tiny, monkeypatch):
    """A folder literally named '~' in the working directory is named `./~/...`, as in a
    shell (a quoted or escaped ~ is the home folder: `user_path`). Path("./~/r") is
    Path("~/r"), so `--out ./~/r` wrote to the home folder (or refused a run there) and
    `data = "./~/d.npz"` was looked for there; both name the folder '~' here."""
    home = tiny / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tiny / "~").mkdir()
    (tiny / "tiny.npz").rename(tiny / "~" / "tiny.npz")
    (tiny / "t2.nn").write_text(TINY.replace('"tiny.npz"', '"./~/tiny.npz"'))
    r = nnlang("train", "t2.nn", "--backend", "reference", "--epochs", "1", "--out", "./~/r")
    assert r.exit_code == 0, r.output
    assert (tiny / "~/r/checkpoint.npz").is_file() and not list(home.iterdir())
    r = nnlang("eval", "tiny.nn", "--backend", "reference", "--checkpoint", "./~/r",
               "--data", "./~/tiny.npz")
    assert r.exit_code == 0, r.output
    r = nnlang("train", "tiny.nn", "--backend", "reference", "--epochs", "1", "--out", "c",
               "--data-dir", "./~", "--data", "tiny.npz")
    assert r.exit_code == 0, r.output
    assert not list(home.iterdir())
