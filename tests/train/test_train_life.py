"""After the first run: early stopping and best.npz, the plateau schedule, explicit val_*
arrays, the l1 setting, and a library loop whose schedule moves with `Net.end_epoch`."""
import io
import json
import os
import re
import shutil
import signal
import threading
from dataclasses import replace

import numpy as np
import pytest
from rich.console import Console

import nnlang
from nnlang.errors import NNError
from nnlang.runtime.net import Net
from nnlang.train import checkpoint
from nnlang.train.inference import evaluate_checkpoint
from nnlang.train.interrupts import Interrupts
from nnlang.train.trainer import fit
from tests.faults.conftest import cli
from tests.tiny_run import tiny_source


def overfit_source(extra: str, epochs: int = 30) -> str:
    """The tiny model on a tiny train set with random labels: it memorizes the train set and
    its validation loss rises after a few epochs."""
    source = tiny_source("adam(lr = 0.05)", None).replace("epochs = 2", f"epochs = {epochs}")
    return source.rstrip().rstrip("}") + f"  {extra}\n}}\n"


def overfit_data(folder, val: bool = True, n_train: int = 8, n_val: int = 24):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n_train + n_val, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=n_train + n_val).astype(np.int32)
    arrays = dict(train_x=x[:n_train], train_label=y[:n_train],
                  test_x=x[n_train:], test_label=y[n_train:])
    if val:  # NOTE: test = val, so eval of best.npz can be compared with the logged best
        arrays.update(val_x=x[n_train:], val_label=y[n_train:])
    np.savez(folder / "tiny.npz", **arrays)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def train(folder, extra: str, epochs: int = 30, val: bool = True):
    overfit_data(folder, val)
    (folder / "tiny.nn").write_text(overfit_source(extra, epochs))
    return fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference",
               progress=False)


def test_early_stop_keeps_the_best_epoch(folder):
    h = train(folder, "early_stop = 3")
    val = [r["val_loss"] for r in h.rows]
    best = int(np.argmin(val))
    assert h.stopped == "early_stop"
    assert len(h.rows) == best + 1 + 3 < 30          # stopped exactly at the patience
    assert h.best == {"monitor": "val_loss", "mode": "min", "value": val[best],
                      "epoch": best + 1}
    ck = checkpoint.load(folder / "run" / "best.npz")
    assert ck.epoch == best + 1
    assert checkpoint.load(folder / "run").epoch == len(h.rows)
    split, res = evaluate_checkpoint(str(folder / "tiny.nn"), folder / "run",
                                     backend="reference")
    assert split == "test" and res["loss"] == pytest.approx(val[best], rel=1e-5)
    out = cli("eval", "tiny.nn", "--checkpoint", "run", "--backend", "reference", code=0)
    assert "best.npz" in out and f"epoch {best + 1}" in out, out
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["stopped"] == "early_stop" and summary["best"]["epoch"] == best + 1
    from nnlang.train.trainer import summary_table
    assert f"best.npz holds epoch {best + 1}'s" in summary_table(h).title
    # NOTE: a new run from this one starts from the same weights eval scored: the best epoch's
    net = nnlang.compile(str(folder / "tiny.nn"), backend="reference", init_from=folder / "run")
    assert net.init_report.source.name == "best.npz"
    for name, value in net.parameters().items():
        np.testing.assert_array_equal(value, ck.state[name])


def test_resuming_a_run_that_stopped_early_trains_nothing(folder):
    """Its last checkpoint stays as it was (resume is for interrupted runs); a larger
    early_stop (`--set`) trains on."""
    h = train(folder, "early_stop = 3")
    before = (folder / "run" / "checkpoint.npz").read_bytes()
    again = fit(str(folder / "tiny.nn"), out=folder / "run", resume=True, backend="reference",
                progress=False)
    assert again.stopped == "early_stop" and len(again.rows) == len(h.rows)
    assert (folder / "run" / "checkpoint.npz").read_bytes() == before
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["val"]["loss"] == pytest.approx(h.rows[-1]["val_loss"])
    more = fit(str(folder / "tiny.nn"), out=folder / "run", resume=True, backend="reference",
               progress=False, overrides={"early_stop": 30})
    assert len(more.rows) > len(h.rows)


def test_summary_json_holds_the_runs_own_numbers(folder):
    """summary.json is what a script parses after a run: its step count, the last epoch's
    training loss and the test results, against numbers counted apart from it (8 training rows
    in batches of 4 are 2 steps an epoch; an epoch's training loss is the mean of its steps';
    the test set scored again from the last checkpoint). Only `stopped`, `best` and `val` were ever
    read back, so a `step` one off passed every test."""
    h = train(folder, "", epochs=3)
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["step"] == 3 * (8 // 4) == len(h.losses)
    assert checkpoint.load(folder / "run").step == summary["step"]
    assert summary["train"]["loss"] == pytest.approx(np.mean(h.losses[-2:]), rel=1e-6)
    # NOTE: the summary scores the last epoch's weights (eval of the folder takes best.npz)
    split, res = evaluate_checkpoint(str(folder / "tiny.nn"), folder / "run" / "checkpoint.npz",
                                     backend="reference")
    assert split == "test" and summary["test"]["loss"] == pytest.approx(res["loss"], rel=1e-6)
    assert summary["test"]["acc"] == pytest.approx(res["acc"], rel=1e-6)


def test_the_summary_table_puts_each_splits_numbers_on_its_row(folder):
    """The table printed at the end of a run: its train row is the last epoch's training means,
    its val row the last validation and its test row the test set's. The runs above test on
    their validation arrays, so a val row showing the test results passed."""
    from nnlang.train.trainer import summary_table
    overfit_data(folder)
    data = dict(np.load(folder / "tiny.npz"))
    data["test_x"], data["test_label"] = data["test_x"][:12] * 3, data["test_label"][:12]
    np.savez(folder / "tiny.npz", **data)
    (folder / "tiny.nn").write_text(overfit_source("", 2))
    h = fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference", progress=False)
    assert h.val["loss"] != pytest.approx(h.test["loss"], rel=1e-3)
    out = io.StringIO()
    Console(file=out, width=120).print(summary_table(h))
    rows = {line.split()[0]: line.split()[1:] for line in out.getvalue().splitlines()
            if line.split() and line.split()[0] in ("train", "val", "test")}
    assert rows["train"] == [f"{h.rows[-1]['train_loss']:.4f}", f"{h.rows[-1]['train_acc']:.4f}"]
    assert rows["val"] == [f"{h.rows[-1]['val_loss']:.4f}", f"{h.rows[-1]['val_acc']:.4f}"]
    assert rows["test"] == [f"{h.test['loss']:.4f}", f"{h.test['acc']:.4f}"]


def test_eval_without_a_test_split_scores_the_runs_own_validation_rows(folder):
    """A data set with no test split is evaluated on the run's seeded validation carve
    (evaluate_checkpoint; docs/generation.md for --eval): the rows its last epoch validated on,
    so eval of checkpoint.npz gives that epoch's val numbers. No test compared the two, so
    carving with another seed (rows the run trained on) passed."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    np.savez(folder / "tiny.npz", train_x=x, train_label=(x[:, 0] > 0).astype(np.int32))
    (folder / "tiny.nn").write_text(tiny_source("adam(lr = 0.05)", 0.25))
    h = fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference", progress=False)
    split, res = evaluate_checkpoint(str(folder / "tiny.nn"), folder / "run" / "checkpoint.npz",
                                     backend="reference")
    assert split == "val"
    assert res["loss"] == pytest.approx(h.rows[-1]["val_loss"], rel=1e-6)
    assert res["acc"] == pytest.approx(h.rows[-1]["val_acc"], rel=1e-6)


def test_the_logged_lr_is_the_rate_of_the_epochs_last_step(folder):
    """metrics.jsonl/csv's `lr` under a per-step schedule: the rate the epoch's last step ran
    at, by the published cosine rule lr (1 + cos(pi t / T)) / 2 (8 rows in batches of 4: steps
    0-1, 2-3, 4-5 of T = 6). The only lr columns read back were constant within an epoch, so
    logging the next step's rate passed."""
    import math
    h = train(folder, "schedule = cosine()", epochs=3)
    want = [0.05 * (1 + math.cos(math.pi * (2 * e + 1) / 6)) / 2 for e in range(3)]
    assert [r["lr"] for r in h.rows] == pytest.approx(want, rel=1e-9)
    log = (folder / "run" / "metrics.jsonl").read_text()
    logged = [json.loads(line) for line in log.splitlines()]
    assert [r["lr"] for r in logged] == pytest.approx(want, rel=1e-9)


def test_monitor_max_on_a_metric(folder):
    h = train(folder, 'early_stop = 2\n  monitor = "val_acc"', epochs=12)
    acc = [r["val_acc"] for r in h.rows]
    assert h.best["mode"] == "max" and h.best["value"] == max(acc)
    assert h.best["epoch"] == acc.index(max(acc)) + 1


def test_early_stop_on_a_train_value_needs_no_validation_data(folder):
    """Keras' EarlyStopping(monitor="loss") without validation data: `monitor` names a
    training value (`train_<metric>`, `loss`), which each epoch's row shows; best.npz keeps its
    best epoch. The 8 random-label rows are memorised (train_acc 1.0), then nothing improves."""
    h = train(folder, 'early_stop = 2\n  monitor = "train_acc"', epochs=30, val=False)
    acc = [r["train_acc"] for r in h.rows]
    best = acc.index(max(acc))
    assert h.stopped == "early_stop" and len(h.rows) == best + 1 + 2 < 30
    assert h.best == {"monitor": "train_acc", "mode": "max", "value": max(acc),
                      "epoch": best + 1}
    assert checkpoint.load(folder / "run" / "best.npz").epoch == best + 1
    shutil.rmtree(folder / "run")
    h = train(folder, 'early_stop = 3\n  monitor = "loss"', epochs=6, val=False)
    loss = [r["train_loss"] for r in h.rows]
    assert h.best["mode"] == "min" and h.best["value"] == min(loss)
    assert h.best["epoch"] == loss.index(min(loss)) + 1


def test_a_train_monitor_watches_the_training_value_beside_validation_data(folder):
    h = train(folder, 'early_stop = 30\n  monitor = "train_loss"', epochs=5)
    loss = [r["train_loss"] for r in h.rows]
    assert "val_loss" in h.rows[0]
    assert h.best["value"] == min(loss) and h.best["epoch"] == loss.index(min(loss)) + 1


@pytest.mark.parametrize("mode, tie, better", [
    ("max", (0.7833333253860474, 0.7833333283662796), 0.8),
    ("min", (0.4354, 0.4354 - 3e-9), 0.43)])
def test_a_tie_in_float32_rounding_is_no_improvement(mode, tie, better):
    """Two epochs with the same 47 of 60 validation rows right logged val_acc 0.78333332538
    and 0.78333332836 (float32 per-batch means; other digits again on 2 ranks): the second
    counted as an improvement, so best.npz, early stopping's count and plateau's cut followed
    rounding noise, and 1 and 2 processes kept different best epochs. A tie is no
    improvement (Keras' min_delta = 0: only a strictly better value counts); a real one is."""
    from nnlang.train.trainer import _Watch
    monitor = "val_acc" if mode == "max" else "val_loss"
    program = nnlang.load(overfit_source(f'early_stop = 2\n  monitor = "{monitor}"'))
    watch = _Watch(program.train, program.graph)
    assert watch.mode == mode
    assert watch.update(tie[0], 3)
    assert not watch.update(tie[1], 5)
    assert (watch.best_epoch, watch.bad, watch.plateau_bad) == (3, 1, 1)
    assert watch.update(better, 6) and watch.best_epoch == 6


def test_a_resume_that_changes_the_monitor_starts_its_watch_over(folder):
    """A run that watched val_loss, resumed with monitor = "val_acc": its best was the old
    loss value (about 1.1), against which no accuracy (mode max) ever counted, so early
    stopping stopped at the patience and best.npz kept the val_loss epoch. The new monitor's
    best is that of the epochs it watched."""
    h = train(folder, "early_stop = 20", epochs=2)
    assert h.best["monitor"] == "val_loss"
    more = fit(str(folder / "tiny.nn"), out=folder / "run", resume=True, backend="reference",
               progress=False, overrides={"monitor": "val_acc", "epochs": 6})
    assert len(more.rows) == 6 and more.stopped is None
    acc = [r["val_acc"] for r in more.rows[2:]]     # the epochs the new monitor watched
    assert more.best == {"monitor": "val_acc", "mode": "max", "value": max(acc),
                         "epoch": 3 + acc.index(max(acc))}
    assert checkpoint.load(folder / "run" / "best.npz").epoch == more.best["epoch"]


def test_monitor_min_on_a_named_loss(folder):
    """A loss is minimised whatever its name: monitor = "val_cross_entropy" beside a penalty
    loss was taken as a metric (mode max), so best.npz kept the worst epoch."""
    overfit_data(folder)
    source = overfit_source('early_stop = 3\n  monitor = "val_cross_entropy"').replace(
        "  metric acc", "  loss pen = 0.001 * sum(abs(h.weight))\n  metric acc")
    (folder / "tiny.nn").write_text(source)
    h = fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference", progress=False)
    ce = [r["val_cross_entropy"] for r in h.rows]
    assert h.best["mode"] == "min" and h.best["value"] == min(ce)
    assert checkpoint.load(folder / "run" / "best.npz").epoch == ce.index(min(ce)) + 1


def test_a_metric_is_watched_the_way_it_is_better(folder):
    """A metric was always maximised, so a metric that is a loss (`cross_entropy`, `mae`...)
    kept its worst epoch in best.npz and early stopping waited for it to rise. A loss op is
    minimised and an accuracy maximised; of a metric of the model's own making the way is
    asked (`mode`), not guessed."""
    overfit_data(folder)
    (folder / "tiny.nn").write_text(overfit_source('early_stop = 3\n  monitor = "val_ce"')
                                    .replace("  metric acc", "  metric ce = cross_entropy("
                                             "logits, label)\n  metric acc"))
    h = fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference", progress=False)
    ce = [r["val_ce"] for r in h.rows]
    assert h.best["mode"] == "min" and h.best["value"] == min(ce)
    assert checkpoint.load(folder / "run" / "best.npz").epoch == ce.index(min(ce)) + 1
    own = overfit_source('monitor = "val_gap"').replace(
        "  metric acc", "  metric gap = mean(abs(logits))\n  metric acc")
    (folder / "own.nn").write_text(own)

    def run(**overrides):
        return fit(str(folder / "own.nn"), out=folder / "own", backend="reference",
                   progress=False, overrides={"epochs": 2, **overrides})
    with pytest.raises(NNError) as err:
        run()
    text = err.value.render()
    assert "own.nn:17:13:" in text and "val_gap" in text and 'mode = "min"' in text, text
    assert not (folder / "own").exists()
    gap = [r["val_gap"] for r in run(mode="min").rows]    # --set mode answers it
    assert gap[0] != gap[1]
    assert checkpoint.load(folder / "own" / "best.npz").epoch == gap.index(min(gap)) + 1


def test_check_refuses_an_unknown_monitor(folder):
    """The model's losses and metrics are known when the file is checked, so `nnlang check`
    refuses a monitor that `nnlang train` would."""
    (folder / "tiny.nn").write_text(overfit_source('monitor = "val_accuracy"'))
    out = cli("check", "tiny.nn", code=1)
    assert "tiny.nn:16:13: error: monitor = 'val_accuracy' names no validation or training " \
        "value" in out
    assert "hint: monitor one of: val_loss, val_acc, train_loss, train_acc, loss" in out, out


def test_a_set_monitor_that_names_nothing_is_not_put_under_the_files_monitor(folder):
    """`--set monitor=val_foo` over the file's valid `monitor = "val_ce"` was reported at
    that line, under "val_ce", as if the file's value named nothing; it is the --set value."""
    overfit_data(folder)
    (folder / "tiny.nn").write_text(overfit_source('early_stop = 2\n  monitor = "val_ce"')
                                    .replace("  loss cross_entropy(logits, label)",
                                             "  loss ce = cross_entropy(logits, label)\n"
                                             "  loss pen = 0.01 * mean(h * h)"))
    with pytest.raises(NNError) as err:
        fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference", progress=False,
            overrides={"monitor": "test_ce"})
    text = err.value.render()
    assert err.value.span is None and "val_ce\"" not in text, text
    assert "monitor = 'test_ce' (given by --set monitor=...) names no validation or " \
        "training value" in text
    assert "monitor one of: val_loss, val_ce, val_pen, val_acc, train_loss, train_ce, " \
        "train_pen, train_acc, loss" in text, text
    assert not (folder / "run").exists()


@pytest.mark.parametrize("extra, sets, at", [
    ('early_stop = 2\n  monitor = "val_acc"', {}, 'monitor = "val_acc"'),
    ('monitor = "val_acc"', {}, 'monitor = "val_acc"'),
    ("early_stop = 2", {"monitor": "val_acc"}, "--set"),
    ("", {"monitor": "val_acc"}, "--set"),
    ("early_stop = 2", {}, "early_stop = 2"),
])
def test_a_validation_monitor_without_validation_data_is_located_at_the_monitor(
        folder, extra, sets, at):
    """A monitor of a validation value with no validation data: the file's `monitor = ...`
    under early_stop was reported at the early_stop line, `--set monitor=val_acc` was too (or
    without a word of the flag), and a monitor alone was ignored (no best.npz ever). The error
    points at the monitor the user wrote: its line, or the --set flag; the default val_loss
    at the early_stop that watches it."""
    overfit_data(folder, False)
    (folder / "tiny.nn").write_text(overfit_source(extra, 2))
    with pytest.raises(NNError, match="no validation data") as err:
        fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference", progress=False,
            overrides=sets)
    text = err.value.render()
    if at == "--set":
        assert err.value.span is None and "(given by --set monitor=...)" in text, text
    else:
        line = next(i for i, t in enumerate(overfit_source(extra, 2).splitlines(), 1) if at in t)
        assert f"tiny.nn:{line}:" in text and at.split(" = ")[0] in text, text
    assert 'monitor = "train_' in err.value.hint
    assert not (folder / "run").exists()


def test_val_arrays_are_the_validation_set(folder, capsys):
    h = train(folder, "val_split = 0.5", epochs=1)  # NOTE: val_* wins over val_split
    assert "its own validation split (24 examples)" in " ".join(capsys.readouterr().out.split())
    config = json.loads((folder / "run" / "config.json").read_text())
    assert config["dataset"]["val"] == 24 and config["dataset"]["train"] == 8
    assert h.val is not None


def test_plateau_lowers_the_lr_after_patience(folder):
    h = train(folder, "schedule = plateau(factor = 0.5, patience = 2)", epochs=10)
    scale, best, bad, cuts = 1.0, np.inf, 0, 0
    for r in h.rows:   # the rule, replayed on the logged val_loss
        assert r["lr"] == pytest.approx(0.05 * scale, rel=1e-9), r
        if r["val_loss"] < best:
            best, bad = r["val_loss"], 0
        else:
            bad += 1
        if bad >= 2:
            scale, bad, cuts = scale * 0.5, 0, cuts + 1
    assert cuts >= 1
    assert checkpoint.load(folder / "run").meta["lr_scale"] == scale


def test_plateau_resume_is_exact(folder):
    extra = "schedule = plateau(factor = 0.5, patience = 1)"
    whole = train(folder, extra, epochs=6)
    fit(str(folder / "tiny.nn"), out=folder / "half", backend="reference", progress=False,
        config={"epochs": 3})
    resumed = fit(str(folder / "tiny.nn"), out=folder / "half", backend="reference",
                  progress=False, resume=True, config={"epochs": 6})
    assert [r["lr"] for r in resumed.rows] == [r["lr"] for r in whole.rows]
    for k, v in whole.net.state_dict().items():
        np.testing.assert_array_equal(resumed.net.state_dict()[k], v, err_msg=k)


def test_a_resume_that_changes_the_optimizer_takes_its_slots(folder):
    """A run on adam resumed with --set optimizer=sgd --set momentum=0.9: the new optimizer's
    slots (momentum) start at zero, and Adam's m and v are not loaded into the sgd net (they
    were, and went on into its checkpoints); a strict load_state_dict of a partial optimizer
    state would refuse the checkpoint."""
    from nnlang_cli.app import parse_overrides
    train(folder, "", epochs=1)
    more = fit(str(folder / "tiny.nn"), out=folder / "run", resume=True, backend="reference",
               progress=False, overrides=parse_overrides(["optimizer=sgd", "momentum=0.9",
                                                          "epochs=2"]))
    params = set(more.net.parameters())
    want = params | {"optimizer.step"} | {f"optimizer.momentum.{k}" for k in params}
    assert len(more.rows) == 2 and more.net.step > 0
    assert set(more.net.state_dict()) == want
    assert set(checkpoint.load(folder / "run").state) == want


def _first_batch_of_epoch(folder, epoch: int, batch: int = 4) -> dict:
    """The first batch `fit` trains on in `epoch` (0-based) of overfit_data, seed 0."""
    from nnlang.train import feeds
    data = np.load(folder / "tiny.npz")
    arrays = {"x": data["train_x"], "label": data["train_label"]}
    rng = feeds.order_rng(0)
    for _ in range(epoch + 1):
        order = feeds.epoch_order(arrays, batch, rng)
    return next(feeds.batches(arrays, batch, order))


@pytest.mark.parametrize("first, then, step", [
    # sgd's first step from a fresh buffer is lr * g; rmsprop's momentum buffer (steps
    # g / sqrt(avg g^2), not gradients) loaded as sgd's moved the weights far more
    ("rmsprop(lr = 0.01, momentum = 0.9)", "sgd(lr = 0.05, momentum = 0.9)",
     lambda g: 0.05 * g),
    # Adam's first step from fresh moments is lr * g / (|g| + eps) (torch.optim.Adam); at the
    # run's step count its bias correction scaled zeroed moments to ~0.64 of that here
    ("sgd(lr = 0.05, momentum = 0.9)", "adam(lr = 0.01)",
     lambda g: 0.01 * g / (np.abs(g) + 1e-8)),
])
def test_a_resume_onto_an_optimizer_of_other_slots_starts_it_fresh(folder, first, then, step):
    """A resume switched to an optimizer that keeps other state starts that optimizer as
    a new torch.optim one would: zero buffers and step count, while the schedule's place goes
    on. The first resumed step is checked against the published update from the checkpoint's
    weights and that batch's gradient."""
    from nnlang_cli.app import parse_overrides
    overfit_data(folder, val=False)
    (folder / "tiny.nn").write_text(tiny_source(first, None).replace("epochs = 2", "epochs = 1"))
    fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference", progress=False)
    before = checkpoint.load(folder / "run")
    said = io.StringIO()
    more = fit(str(folder / "tiny.nn"), out=folder / "run", resume=True, backend="reference",
               progress=False, max_steps=before.step + 1, console=Console(file=said, width=300),
               overrides=parse_overrides([f"optimizer={then}", "epochs=2"]))
    old, new = first.partition("(")[0], then.partition("(")[0]
    assert re.search(rf"optimizer {old}\(lr=[^)]*\) -> {new}\(lr=[^)]*\) \(its state starts "
                     r"fresh\)", said.getvalue().replace("\n", " "))
    assert f"{old}.lr" not in said.getvalue()
    probe = nnlang.compile(str(folder / "tiny.nn"), backend="reference")
    probe.load_state_dict({k: v for k, v in before.state.items() if k in probe.parameters()})
    grads = probe.gradients(_first_batch_of_epoch(folder, 1))
    after = more.net.parameters()
    for k, g in grads.items():
        want = before.state[k].astype(np.float64) - step(g.astype(np.float64))
        np.testing.assert_allclose(after[k], want, rtol=1e-5, atol=1e-6, err_msg=k)
    assert more.net.step == before.step + 1          # the schedule's place goes on
    assert more.net.state_dict()["optimizer.step"] == 1


def test_l1_adds_lambda_sum_abs_weights(folder):
    overfit_data(folder)
    program = nnlang.load(overfit_source(""))
    feeds = {"x": np.ones((4, 4), np.float32), "label": np.array([0, 1, 2, 0], np.int32)}
    nets = [Net(program, backend="reference", config=replace(program.train, l1=l1))
            for l1 in (0.0, 0.01)]
    w = nets[1].parameters()
    penalty = 0.01 * sum(np.abs(v).astype(np.float64).sum() for v in w.values() if v.ndim >= 2)
    assert penalty > 0
    diff = nets[1].train_step(feeds) - nets[0].train_step(feeds)
    assert diff == pytest.approx(penalty, rel=1e-4)


def test_library_loop_advances_an_epoch_schedule(folder):
    overfit_data(folder)
    program = nnlang.load(overfit_source("schedule = step(step_size = 1, gamma = 0.5)"))
    net = Net(program, backend="reference")
    feeds = {"x": np.ones((4, 4), np.float32), "label": np.array([0, 1, 2, 0], np.int32)}
    assert net.learning_rate() == pytest.approx(0.05)
    net.train_step(feeds)
    assert net.step == 1 and net.learning_rate() == pytest.approx(0.05)
    assert net.end_epoch() == 1
    assert net.learning_rate() == pytest.approx(0.025)


def test_library_loop_decays_a_cosine_schedule_over_the_steps_it_is_given(folder):
    """The published rule: lr = min + (base - min) (1 + cos(pi t / T)) / 2 after the warm-up;
    a net that does not know T warns that the rate stays at the base."""
    import math
    import warnings
    source = overfit_source("schedule = cosine(warmup = 2, min_lr = 0.01)")
    feeds = {"x": np.ones((4, 4), np.float32), "label": np.array([0, 1, 2, 0], np.int32)}
    net = nnlang.compile(source, backend="reference", total_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rates = []
        for _ in range(10):
            rates.append(net.learning_rate())
            net.train_step(feeds)
    want = [0.05 * (t + 1) / 2 if t < 2 else
            0.01 + 0.04 * (1 + math.cos(math.pi * (t - 2) / 8)) / 2 for t in range(10)]
    assert rates == pytest.approx(want)
    blind = nnlang.compile(source, backend="reference")
    with pytest.warns(UserWarning, match="total_steps"):
        blind.train_step(feeds)


def test_library_loop_counts_epochs_from_the_data_size(folder):
    """Issue: "net.epoch advances with an explicit net.end_epoch() or from the data size".
    With steps_per_epoch the loop calls train_step only: a step schedule halves every 3 steps,
    and a cosine schedule decays over the train section's epochs (4) times 3 steps, by the
    published rules; calling end_epoch() as well would count an epoch twice, so it is refused."""
    import math

    from nnlang.errors import NNError
    feeds = {"x": np.ones((4, 4), np.float32), "label": np.array([0, 1, 2, 0], np.int32)}
    net = nnlang.compile(overfit_source("schedule = step(step_size = 1, gamma = 0.5)", 4),
                         backend="reference", steps_per_epoch=3)
    # NOTE: asked ahead (a schedule plotted before the loop) and after it, the rate at a step
    # is the one that step uses: the step's own epoch, not the net's current one (all 0.05
    # before the loop, all 0.0125 after it, was what learning_rate(step) said)
    planned = [net.learning_rate(t) for t in range(8)]
    assert planned == pytest.approx([0.05 * 0.5 ** (t // 3) for t in range(8)])
    rates = []
    for _ in range(8):
        rates.append(net.learning_rate())
        net.train_step(feeds)
    assert rates == pytest.approx([0.05 * 0.5 ** (t // 3) for t in range(8)])
    assert (net.step, net.epoch) == (8, 2)
    assert [net.learning_rate(t) for t in range(8)] == pytest.approx(planned)
    # NOTE: a state dict carries the step count; a net that counts epochs from it goes on in
    # the step's epoch (it stayed at epoch 0, and its next step ran at the base rate)
    again = nnlang.compile(overfit_source("schedule = step(step_size = 1, gamma = 0.5)", 4),
                           backend="reference", steps_per_epoch=3)
    again.load_state_dict(net.state_dict())
    assert (again.step, again.epoch) == (8, 2)
    assert again.learning_rate() == pytest.approx(0.05 * 0.5 ** 2)
    with pytest.raises(NNError, match="twice"):
        net.end_epoch()
    cos = nnlang.compile(overfit_source("schedule = cosine()", 4), backend="reference",
                         steps_per_epoch=3)
    assert cos.total_steps == 12
    rates = []
    for _ in range(12):
        rates.append(cos.learning_rate())
        cos.train_step(feeds)
    assert rates == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 12)) / 2
                                   for t in range(12)])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(NNError, match="steps_per_epoch"):
            nnlang.compile(overfit_source(""), backend="reference", steps_per_epoch=bad)


@pytest.mark.parametrize("extra, val, words", [
    ("early_stop = 0", True, ["early_stop", ">= 1"]),
    ("early_stop = -2", True, ["early_stop", ">= 1"]),
    ('early_stop = 2\n  monitor = "val_f1"', True, ["monitor", "val_f1", "val_acc"]),
    ('early_stop = 2\n  mode = "up"', True, ["mode", "'min', 'max'"]),
    ("early_stop = 2", False, ["early_stop", "no validation data", "val_split"]),
    ("schedule = plateau(patience = 2)", False, ["plateau", "no validation data"]),
    ("schedule = plateau(factor = 2.0)", True, ["factor", "(0, 1)"]),
    ("l1 = -0.1", True, ["l1", ">= 0"]),
])
def test_bad_settings_are_located(folder, extra, val, words):
    with pytest.raises(NNError) as err:
        train(folder, extra, epochs=2, val=val)
    text = err.value.render()
    assert "tiny.nn:" in text, text
    for w in words:
        assert w in text, text


@pytest.mark.parametrize("sets, words", [
    ({"batch": 7.5}, "'batch' must be a whole number"),
    ({"epochs": 1.9}, "'epochs' must be a whole number"),
    ({"monitor": 3}, "'monitor' is a name"),
    ({"beta1": "high"}, "'beta1' must be a number"),
])
def test_set_values_keep_the_settings_types(folder, sets, words):
    """--set of a train setting is checked as the train section checks it, not truncated or
    taken as another type."""
    overfit_data(folder)
    (folder / "tiny.nn").write_text(overfit_source("", 1))
    with pytest.raises(NNError, match=words):
        fit(str(folder / "tiny.nn"), out=folder / "run", backend="reference", progress=False,
            overrides=sets)



def _open_files() -> set[str]:
    """What this process's file descriptors point at (Linux's /proc)."""
    seen = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            seen.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:   # NOTE: the listing's own descriptor, closed by now
            pass
    return seen


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_a_sweep_of_fits_on_one_net_leaves_nothing_open(folder):
    """A long-lived program (a notebook, a sweep) fits one net again and again, and one fit
    ends by an error from the program's own console: each run folder's lock is let go (a
    new run in that folder is allowed), no descriptor, thread or signal handler stays behind,
    and the net trains on."""
    overfit_data(folder)
    net = nnlang.compile(overfit_source("", epochs=1), backend="reference")
    # NOTE: the first fit opens what stays open by design (matplotlib's fonts for the plots)
    fit(net, out=folder / "first", progress=False)
    files, threads, handler = _open_files(), threading.active_count(), \
        signal.getsignal(signal.SIGINT)
    for k in range(4):
        fit(net, out=folder / f"sweep{k}", progress=False)

    class Broken(io.StringIO):
        def write(self, text):
            raise OSError("the program's log is gone")
    with pytest.raises(OSError, match="log is gone"):
        fit(net, out=folder / "broken", console=Console(file=Broken(), force_terminal=True))
    assert _open_files() == files
    assert threading.active_count() == threads
    assert signal.getsignal(signal.SIGINT) is handler and Interrupts.active == []
    step = net.step
    h = fit(net, out=folder / "broken", progress=False)
    assert net.step > step and h.rows
