"""The training loop on the reference backend: determinism, resume equivalence (after whole
epochs, mid-epoch and after Ctrl-C), the NaN guard, atomic checkpoints and the run directory."""
import io
import json

import numpy as np
import pytest
from rich.console import Console

from nnlang.errors import NNError
from nnlang.runtime.net import Net
from nnlang.train import checkpoint
from nnlang.train.trainer import fit
from tests.tiny_run import tiny_data, tiny_source

TINY = tiny_source()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """tiny.nn next to tiny.npz: 52 train examples (42 train + 10 val: 10 steps of 4 per epoch,
    2 dropped) and 9 test examples."""
    monkeypatch.chdir(tmp_path)
    tiny_data(tmp_path)
    (tmp_path / "tiny.nn").write_text(TINY)
    return tmp_path / "tiny.nn"


def run(path, out=None, **kw):
    kw.setdefault("backend", "reference")
    kw.setdefault("progress", False)
    return fit(str(path), out=out, save=out is not None, **kw)


def params(history) -> dict:
    return history.net.state_dict()


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-7, err_msg=k)


def test_same_seed_same_numbers(tiny):
    a, b = run(tiny), run(tiny)
    assert a.losses == b.losses and len(a.losses) == 2 * (42 // 4)
    assert a.rows[-1]["val_loss"] == b.rows[-1]["val_loss"]
    assert_same_state(params(a), params(b))
    c = run(tiny, config={"seed": 1})
    assert c.losses != a.losses


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_resume_after_an_epoch_equals_straight_run(tiny, tmp_path, backend):
    straight = run(tiny, tmp_path / "straight", backend=backend)
    run(tiny, tmp_path / "split", config={"epochs": 1}, backend=backend)
    resumed = run(tiny, tmp_path / "split", config={"epochs": 2}, resume=True, backend=backend)
    assert_same_state(params(straight), params(resumed))
    assert resumed.losses == straight.losses[len(straight.losses) // 2:]
    rows = [json.loads(line) for line in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["val_loss"] == straight.rows[1]["val_loss"]


@pytest.mark.parametrize("every, stop, reads", [
    (4, None, [4, 4, 2, 4, 4, 2]),       # 10 steps an epoch, each epoch's last read short
    (1, None, [1] * 20),
    (4, 13, [4, 4, 2, 3]),               # max_steps reads the steps before it stops
])
def test_losses_are_read_every_few_steps(tiny, monkeypatch, every, stop, reads):
    """The loop leaves steps' losses unread (on a GPU, unwaited for) between reads; what it
    records is the same, step for step, however often it reads."""
    from nnlang.train import trainer
    straight = run(tiny, max_steps=stop)
    real, counts = Net.fetch, []

    def counting(self, *args, **kw):
        taken = real(self, *args, **kw)
        counts.append(len(taken))
        return taken
    monkeypatch.setattr(Net, "fetch", counting)
    monkeypatch.setattr(trainer, "READ_EVERY_STEPS", every)
    monkeypatch.setattr(trainer, "READ_EVERY_S", float("inf"))
    got = run(tiny, max_steps=stop)
    assert [c for c in counts if c] == reads
    assert got.losses == straight.losses
    assert [r["train_loss"] for r in got.rows] == [r["train_loss"] for r in straight.rows]
    assert [r["train_acc"] for r in got.rows] == [r["train_acc"] for r in straight.rows]


def test_resume_inside_an_epoch_equals_straight_run(tiny, tmp_path):
    straight = run(tiny, tmp_path / "straight")
    first = run(tiny, tmp_path / "split", max_steps=13)  # stops 3 steps into epoch 2
    assert first.stopped == "max_steps"
    ck = checkpoint.load(tmp_path / "split")
    assert (ck.epoch, ck.meta["step_in_epoch"], ck.step) == (1, 3, 13)
    resumed = run(tiny, tmp_path / "split", resume=tmp_path / "split/checkpoint.npz")
    assert_same_state(params(straight), params(resumed))
    # the partly trained epoch's running means carry over, so the row matches too
    assert resumed.rows[-1]["train_loss"] == pytest.approx(straight.rows[-1]["train_loss"])
    assert [r["epoch"] for r in resumed.rows] == [1, 2]


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tiny, tmp_path, monkeypatch):
    straight = run(tiny, tmp_path / "straight")
    real = Net.train_step

    def interrupting(self, feeds, fetch=True):
        if self.step == 7:
            raise KeyboardInterrupt
        return real(self, feeds, fetch)
    monkeypatch.setattr(Net, "train_step", interrupting)
    out = io.StringIO()
    stopped = run(tiny, tmp_path / "split", console=Console(file=out, width=300))
    assert stopped.stopped == "interrupted"
    # NOTE: in fit's words from Python: it said 'resume with: nnlang train tiny.nn --out ...'
    assert f"resume with: fit('{tiny}', resume='{tmp_path / 'split'}', backend='reference')" \
        in out.getvalue(), out.getvalue()
    ck = checkpoint.load(tmp_path / "split/checkpoint.npz")
    assert (ck.epoch, ck.meta["step_in_epoch"], ck.step) == (0, 7, 7)
    monkeypatch.setattr(Net, "train_step", real)
    resumed = run(tiny, tmp_path / "split", resume=True)
    assert_same_state(params(straight), params(resumed))


def test_divergence_stops_with_a_clear_error(tiny):
    with pytest.raises(NNError, match=r"diverged: the loss is (nan|inf) at epoch 1, step \d+"):
        run(tiny, config={"lr": 1e30})


def test_the_divergence_hint_names_what_a_python_caller_sets(tiny, monkeypatch):
    """From Python the hint said 'lower the learning rate (--lr)', a flag of the CLI: fit(model)
    takes the rate as {"lr": ...}, and a Net's fit takes none (its rate is compiled into it).
    The CLI's words stay the flags (tests/faults/test_training.py)."""
    with pytest.raises(NNError) as err:
        run(tiny, config={"lr": 1e30})
    assert "{\"lr\": ...}" in err.value.hint and "{\"clip_norm\": 1}" in err.value.hint
    assert "--" not in err.value.hint, err.value.hint
    net = run(tiny, config={"epochs": 1}).net
    real = Net.fetch
    monkeypatch.setattr(Net, "fetch", lambda self, *a, **kw: [
        (float("nan"), m) for _, m in real(self, *a, **kw)])
    with pytest.raises(NNError, match="diverged") as err:
        fit(net, {"epochs": 1}, save=False, progress=False)
    assert "compiled into the net: compile one with a smaller lr" in err.value.hint
    assert "--" not in err.value.hint and "{" not in err.value.hint, err.value.hint


def test_divergence_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    real = Net.fetch

    def poisoned(self, *args, **kw):  # NOTE: the 13th step's loss on is NaN
        taken = real(self, *args, **kw)
        first = self.step - len(taken)
        return [(float("nan") if first + i >= 12 else loss, m)
                for i, (loss, m) in enumerate(taken)]
    monkeypatch.setattr(Net, "fetch", poisoned)
    with pytest.raises(NNError) as err:
        run(tiny, tmp_path / "r")
    assert "epoch 2, step 3" in err.value.message
    assert "checkpoint.npz" in err.value.hint
    assert checkpoint.load(tmp_path / "r").epoch == 1


def _meta(epoch: int, step: int) -> dict:
    """The meta every checkpoint holds (checkpoint.load refuses one without it)."""
    from nnlang.frontend.train_config import TrainConfig
    return {"model": "M", "epoch": epoch, "step": step,
            "config": checkpoint.config_to_dict(TrainConfig()),
            "rng_state": np.random.default_rng(0).bit_generator.state}


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    old = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    checkpoint.save(path, old, _meta(1, 5))

    def failing_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")  # the temp file is open and partly written
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(NNError, match="cannot write checkpoint.*disk full") as err:
        checkpoint.save(path, {"w": np.zeros((2, 3), np.float32)}, _meta(2, 9))
    # NOTE: it gave no hint: whether the earlier checkpoint survived, and how to go on
    assert "last one saved, unchanged" in err.value.hint and "--resume" in err.value.hint
    ck = checkpoint.load(path)
    np.testing.assert_array_equal(ck.state["w"], old["w"])
    assert ck.epoch == 1 and ck.step == 5
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temp file left


def test_checkpoint_load_errors(tmp_path):
    with pytest.raises(NNError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "missing.npz")
    checkpoint.save(tmp_path / "good.npz", {"w": np.ones(3, np.float32)}, _meta(0, 0))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(NNError, match="not a readable nnlang checkpoint"):
        checkpoint.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", w=np.ones(3))
    with pytest.raises(NNError, match="not a readable nnlang checkpoint"):
        checkpoint.load(tmp_path / "other.npz")


def test_run_directory_contents(tiny, tmp_path):
    h = run(tiny, tmp_path / "r", overrides={"hidden": 6})
    r = tmp_path / "r"
    names = {p.name for p in r.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.csv", "checkpoint.npz",
            "summary.json"} <= names
    cfg = json.loads((r / "config.json").read_text())
    assert cfg["model"] == "Tiny" and cfg["overrides"] == {"hidden": 6}
    assert cfg["hparams"]["hidden"] == 6 and cfg["train"]["optimizer"]["name"] == "adam"
    assert cfg["dataset"]["name"] == "tiny" and cfg["dataset"]["val"] == 10
    rows = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert {"step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time"} <= set(rows[0])
    header = (r / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["epoch", "step", "train_loss", "train_acc"]
    ck = checkpoint.load(r)
    assert ck.meta["source"] == TINY and ck.meta["overrides"] == {"hidden": 6}
    weights = set(h.net.user.params)
    assert len(weights) == 4 and weights <= set(ck.state)
    assert {f"optimizer.{slot}.{w}" for w in weights for slot in "mv"} <= set(ck.state)
    assert ck.config.val_split == 0.2 and ck.meta["rng_state"]["bit_generator"] == "PCG64"
    summary = json.loads((r / "summary.json").read_text())
    assert summary["test"] == pytest.approx(h.test)
    try:
        import matplotlib  # noqa: F401
        assert {"loss.png", "acc.png"} <= names
    except ImportError:
        pass


def test_plots_cover_the_values_of_every_row_not_only_the_first(tmp_path):
    # rows of a run begun by an older nnlang (val_kl but no train_kl) and resumed by this one
    # drew no kl.png: the plots took their names from the first row's train_ columns
    pytest.importorskip("matplotlib")
    from nnlang.train.runs import RunDir
    run_dir = RunDir.create("Vae", tmp_path / "r", tmp_path)
    try:
        run_dir.log({"epoch": 1, "train_loss": 3.0, "val_loss": 2.9, "val_kl": 0.5})
        run_dir.log({"epoch": 2, "train_loss": 2.0, "train_kl": 0.4, "val_loss": 2.1,
                     "val_kl": 0.3, "train_m": 1.0})
        assert sorted(p.name for p in run_dir.plot()) == ["kl.png", "loss.png", "m.png"]
    finally:
        run_dir.release()


TWO_LOSSES = TINY.replace("  loss cross_entropy(logits, label)\n",
                          "  loss ce = cross_entropy(logits, label)\n"
                          "  loss small = 0.01 * mean(h * h)\n")


def test_each_named_loss_is_in_the_epoch_line_history_and_metrics_files(tmp_path, monkeypatch):
    # a model with several losses (models/vae.nn: reconstruction and kl) showed only their sum
    # while training, though validation and test showed each (as Keras shows each in its
    # progress line and history)
    import io

    from rich.console import Console
    monkeypatch.chdir(tmp_path)
    tiny_data(tmp_path)
    (tmp_path / "two.nn").write_text(TWO_LOSSES)
    out = io.StringIO()
    h = run(tmp_path / "two.nn", tmp_path / "r", config={"epochs": 1},
            console=Console(file=out, width=200))
    row = h.rows[-1]
    assert {"train_ce", "train_small", "val_ce", "val_small"} <= set(row)
    # the train columns are the means over the epoch's steps of the losses each step computed:
    # their sum is the epoch's loss (no l1/l2 penalty here)
    assert row["train_ce"] + row["train_small"] == pytest.approx(row["train_loss"], rel=1e-6)
    assert row["train_small"] > 0
    said = [line for line in out.getvalue().splitlines() if line.startswith("epoch 1/1")][-1]
    assert f"loss {row['train_loss']:.4f}  ce {row['train_ce']:.4f}  small " \
           f"{row['train_small']:.4f}" in said and f"val loss {row['val_loss']:.4f}" in said
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[2:6] == ["train_loss", "train_ce", "train_small", "train_acc"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert set(summary["train"]) == {"loss", "ce", "small", "acc"}


def test_resuming_an_old_checkpoint_without_the_named_losses_sums_reports_no_wrong_means(
        tmp_path, monkeypatch):
    # a checkpoint saved inside an epoch before the step reported each loss holds the running
    # sum of `loss` alone: the resumed epoch added the rest of its steps' ce and small and
    # divided by all its steps, so train_ce was about 7/10 of the real mean, silently
    import io

    from rich.console import Console
    monkeypatch.chdir(tmp_path)
    tiny_data(tmp_path)
    (tmp_path / "two.nn").write_text(TWO_LOSSES)
    straight = run(tmp_path / "two.nn", tmp_path / "straight")
    run(tmp_path / "two.nn", tmp_path / "split", max_steps=13)   # 3 steps into epoch 2
    path = tmp_path / "split" / "checkpoint.npz"
    ck = checkpoint.load(path)
    ck.meta["partial"]["sums"] = {"loss": ck.meta["partial"]["sums"]["loss"],
                                  "acc": ck.meta["partial"]["sums"]["acc"]}
    ck.meta["partial"].pop("counts", None)
    del ck.meta["format"]
    checkpoint.save(path, ck.state, ck.meta)   # as the older nnlang wrote it
    out = io.StringIO()
    resumed = run(tmp_path / "two.nn", tmp_path / "split", resume=True,
                  console=Console(file=out, width=300))
    want, got = straight.rows[-1], resumed.rows[-1]
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
    assert got["train_acc"] == pytest.approx(want["train_acc"], rel=1e-6)
    assert "train_ce" not in got and "train_small" not in got
    assert "leaves out train_ce, train_small" in out.getvalue()
    # a checkpoint of this nnlang carries them: the resumed row is the straight run's
    run(tmp_path / "two.nn", tmp_path / "new", max_steps=13)
    again = run(tmp_path / "two.nn", tmp_path / "new", resume=True).rows[-1]
    for k in ("train_loss", "train_ce", "train_small", "train_acc"):
        assert again[k] == pytest.approx(want[k], rel=1e-6), k


def test_resuming_a_checkpoint_without_the_kept_rows_sums_says_what_the_row_leaves_out(
        tmp_path, monkeypatch):
    """A checkpoint saved inside an epoch by the nnlang before the train columns were means
    over kept rows holds `loss` and `acc` as sums of the steps' values, without the divided
    terms' sums: the resumed epoch's row left train_loss and train_acc out without a word
    (the note named only values the sums lacked altogether). It says so now."""
    import io

    from rich.console import Console
    from nnlang.passes.pipeline import DIVIDED_VALUE, DIVISOR
    monkeypatch.chdir(tmp_path)
    tiny_data(tmp_path)
    (tmp_path / "kept.nn").write_text(TINY.replace(
        "cross_entropy(logits, label)", "cross_entropy(logits, label, ignore_index = 0)").replace(
        "accuracy(logits, label)", "accuracy(logits, label, ignore_index = 0)"))
    run(tmp_path / "kept.nn", tmp_path / "split", max_steps=13)   # 3 steps into epoch 2
    path = tmp_path / "split" / "checkpoint.npz"
    ck = checkpoint.load(path)
    part = ck.meta["partial"]
    assert any(k.startswith(DIVISOR) for k in part["sums"])
    for key in ("sums", "counts"):   # as the older nnlang wrote it
        part[key] = {k: v for k, v in part[key].items()
                     if not k.startswith((DIVIDED_VALUE, DIVISOR))}
    checkpoint.save(path, ck.state, ck.meta)
    out = io.StringIO()
    got = run(tmp_path / "kept.nn", tmp_path / "split", resume=True,
              console=Console(file=out, width=300)).rows[-1]
    assert "train_loss" not in got and "train_acc" not in got
    assert "leaves out train_loss, train_acc" in out.getvalue()


def test_an_unnamed_loss_among_several_leaves_loss_the_total_in_training_and_validation():
    # `loss 0.01 * mean(h * h)` is named 'loss', the total's name: evaluation reported that
    # one loss as val_loss, while train_loss was the sum of both
    import nnlang
    from nnlang.train.trainer import evaluate
    src = TINY.replace("  loss cross_entropy(logits, label)\n",
                       "  loss cross_entropy(logits, label)\n  loss 0.01 * mean(h * h)\n")
    net = nnlang.compile(src, backend="reference", batch=4)
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(8, 4)).astype(np.float32),
              "label": rng.integers(0, 3, 8).astype(np.int32)}
    # each loss alone, from a model holding only it (the same weights: the same seed and names)
    small = src.replace("  loss cross_entropy(logits, label)\n", "")
    ce = nnlang.compile(TINY, backend="reference", batch=4).evaluate(arrays)["cross_entropy"]
    total = ce + nnlang.compile(small, backend="reference", batch=4).evaluate(arrays)["loss"]
    each = net.evaluate(arrays)   # the total under `loss`, as training reports it
    assert each["loss"] == pytest.approx(total, rel=1e-6)
    assert each["cross_entropy"] == pytest.approx(ce, rel=1e-6)
    got = evaluate(net, arrays, 8)
    assert got["loss"] == pytest.approx(total, rel=1e-6)
    assert got["cross_entropy"] == pytest.approx(ce, rel=1e-6)
    assert net.train_step(arrays) == pytest.approx(total, rel=1e-6)   # before the update
    assert set(net.last_metrics) == {"cross_entropy", "acc"}


def test_default_run_directory_and_resuming_the_newest_run(tiny, tmp_path):
    fit(str(tiny), {"epochs": 1}, backend="reference", progress=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("tiny-") and (run_dir / "checkpoint.npz").is_file()
    h = fit(str(tiny), {"epochs": 2}, backend="reference", progress=False, resume=True)
    assert h.run_dir.resolve() == run_dir and [r["epoch"] for r in h.rows] == [1, 2]
    with pytest.raises(NNError, match="already holds a training run"):
        fit(str(tiny), backend="reference", progress=False, out=run_dir)


def test_the_explosion_rule():
    """Over EXPLODED x the first loss (at least 1) for EXPLODED_STEPS steps in a row, or not
    finite; one spike is forgiven unless a checkpoint is due while it lasts."""
    from nnlang.train.guard import EXPLODED, DivergenceGuard
    g = DivergenceGuard()
    g.check(2.0, 0, 0, 1, None)
    assert g.start == 2.0
    big = EXPLODED * 2.0 * 1.01
    for step, loss in enumerate([big, 1.0, big, big, 1.5, 0.5], start=2):
        g.check(loss, 0, step - 1, step, None)   # spikes of 1 and 2 steps pass
    g.settle(None)
    for step in (8, 9):
        g.check(big, 0, step - 1, step, None)
    with pytest.raises(NNError, match=r"step 8 \(global step 8\), over 10000 times its start"):
        g.settle(None)                        # a streak open at a checkpoint counts
    g = DivergenceGuard(start=1e-3)                       # a loss near 0 is judged against 1
    g.check(EXPLODED * 0.5, 0, 0, 1, None)
    g.settle(None)
    for step in (1, 2):
        g.check(EXPLODED * 2, 0, step - 1, step, None)
    with pytest.raises(NNError, match=r"step 1 \(global step 1\)"):
        g.check(EXPLODED * 2, 0, 2, 3, None)
    with pytest.raises(NNError, match="the loss is nan"):
        DivergenceGuard(start=1.0).check(float("nan"), 0, 0, 1, None)
    g = DivergenceGuard(start=-3.0)          # sizes: a loss that runs off downward diverged
    for step in (1, 2):
        g.check(-EXPLODED * 3.0 * 1.01, 0, step - 1, step, None)
    with pytest.raises(NNError, match=r"the loss is -3.03e\+04 at epoch 1, step 1 \(global "
                                      r"step 1\), over 10000 times its start \(-3\) in size"):
        g.check(-EXPLODED * 3.0 * 1.01, 0, 2, 3, None)
    g = DivergenceGuard(start=-3.0)
    for step in range(1, 6):
        g.check(-EXPLODED * 3.0 * 0.99, 0, step - 1, step, None)   # within the limit
    g.settle(None)


def test_a_nan_after_a_gradient_that_is_not_finite_under_clip_norm_is_not_told_to_clip(tiny):
    """d sqrt(s) / ds is inf at s = 0 while the loss is finite: the clipped global norm is inf
    and the step makes the weights nan (torch's clip_grad_norm_ does the same), so the next
    step's loss is nan. The hint told a run that clips to set clip_norm; it now says why
    clipping did not help."""
    tiny.write_text(TINY.replace("loss cross_entropy(logits, label)",
                                 "param s: float32[3] = zeros\n"
                                 "  loss cross_entropy(logits, label) + mean(sqrt(s))")
                    .replace("batch = 4", "batch = 4\n  clip_norm = 1.0"))
    with pytest.raises(NNError, match=r"loss is nan at epoch 1, step 2 ") as err:
        run(tiny)
    hint = err.value.diagnostics[0].hint
    assert "set clip_norm" not in hint and "clip_norm = 1 cannot bound a gradient" in hint


def test_the_newest_run_is_found_by_its_time_then_its_suffix(tmp_path):
    """A bare --resume takes the newest run of the model: runs started in one second are
    suffixed -2, -3, ... -10, and sorting their names put -10 before -2 (and a folder of
    another name after them all)."""
    from nnlang.train.runs import RunDir
    names = ["tiny-20261206-140511-99", "tiny-20261206-140512", "tiny-20261206-140512-2",
             "tiny-20261206-140512-10", "tiny-mine", "tiny-20261205-235959"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.npz").write_bytes(b"")
    assert RunDir.latest("Tiny", tmp_path).name == "tiny-20261206-140512-10"
    (tmp_path / "tiny-20261206-140512-10" / "checkpoint.npz").unlink()   # none to resume
    assert RunDir.latest("Tiny", tmp_path).name == "tiny-20261206-140512-2"
    assert RunDir.latest("Other", tmp_path) is None


def _exact(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_fit_of_a_net_trains_it_on_as_a_resume_does(tiny, tmp_path):
    """Keras's `model.fit` called again trains on: `fit(net)` was refused ("a model is a .nn
    path or source text, not Net"), and fitting `net.program` started from fresh weights. One
    epoch then fit(net, 1 more) is, bit for bit, one 2-epoch fit and a --resume of the first
    epoch's run (same data order, validation, optimizer state and counters)."""
    straight = run(tiny)
    first = run(tiny, config={"epochs": 1})
    net = first.net
    more = fit(net, {"epochs": 1}, save=False, progress=False)
    assert more.net is net and (net.epoch, net.step) == (2, 20)
    _exact(net.state_dict(), params(straight))
    assert more.losses == straight.losses[10:] and [r["epoch"] for r in more.rows] == [2]
    assert more.rows[0]["val_loss"] == straight.rows[1]["val_loss"]
    run(tiny, tmp_path / "split", config={"epochs": 1})
    resumed = run(tiny, tmp_path / "split", config={"epochs": 2}, resume=True)
    _exact(net.state_dict(), params(resumed))
    # initial_epoch: `epochs` is the total to reach (Keras's meaning), here one more
    again = fit(net, {"epochs": 3}, initial_epoch=2, save=False, progress=False)
    assert [r["epoch"] for r in again.rows] == [3] and net.epoch == 3
    console = Console(file=io.StringIO(), width=200)
    none = fit(net, {"epochs": 3}, initial_epoch=3, save=False, console=console)
    assert none.rows == [] and net.step == 30
    assert "nothing to train: the net has 3 of 3 epochs" in console.file.getvalue()
    with pytest.raises(NNError, match=r"initial_epoch=1\): the net has trained 3 epoch"):
        fit(net, {"epochs": 4}, initial_epoch=1, save=False, progress=False)
    with pytest.raises(NNError, match="'optimizer' is compiled into the net"):
        fit(net, {"lr": 0.5}, save=False, progress=False)


def test_fit_of_a_net_stopped_inside_an_epoch_finishes_that_epoch(tiny):
    """max_steps stops inside epoch 2; fit(net) goes on with that epoch's order and its
    running means, as a resume of that checkpoint does."""
    straight = run(tiny)
    first = run(tiny, max_steps=13)
    more = fit(first.net, {"epochs": 2}, initial_epoch=1, save=False, progress=False)
    _exact(more.net.state_dict(), params(straight))
    assert more.rows[-1]["train_loss"] == pytest.approx(straight.rows[-1]["train_loss"])


def test_fit_of_a_restored_or_compiled_net(tiny, tmp_path):
    """nnlang.restore's net goes on as --resume of its checkpoint does; a compiled net that no
    fit trained starts its data order from the seed, as a new run."""
    import nnlang
    straight = run(tiny)
    run(tiny, tmp_path / "split", config={"epochs": 1})
    net = nnlang.restore(str(tiny), tmp_path / "split", backend="reference")
    fit(net, {"epochs": 1}, save=False, progress=False)
    _exact(net.state_dict(), params(straight))
    fresh = nnlang.compile(str(tiny), backend="reference", init_from=False)
    fit(fresh, {"epochs": 2}, save=False, progress=False)
    _exact(fresh.state_dict(), params(straight))


def test_fit_of_a_net_compiled_with_a_seed_draws_everything_from_that_seed(tiny, tmp_path):
    """compile(seed=3) drew the weights (and dropout) from seed 3, but fit(net) carved the
    validation set and shuffled from the train section's seed 0, and its checkpoint said
    seed 0, so a --resume of that run drew other dropout masks: it was neither a seed-3 run
    nor a seed-0 one. Now it is, bit for bit, fit(path, seed=3), and its run resumes as one."""
    import nnlang
    straight = run(tiny, config={"seed": 3})
    net = nnlang.compile(str(tiny), backend="reference", seed=3, init_from=False)
    fit(net, {"epochs": 2}, out=tmp_path / "net", progress=False)
    _exact(net.state_dict(), params(straight))
    assert checkpoint.load(tmp_path / "net" / "checkpoint.npz").config.seed == 3
    # the net's own seed is the compiled one (the refusal named the section's 0)
    other = nnlang.compile(str(tiny), backend="reference", seed=3, init_from=False)
    with pytest.raises(NNError, match=r"'seed' is compiled into the net \(3\), not 5"):
        fit(other, {"seed": 5}, save=False, progress=False)


def test_a_restored_nets_records_are_its_own(tiny, tmp_path):
    """restore() set the net's loop_state to the checkpoint's meta dict itself, and its
    trained_data to that dict's "data" (a deepcopy of the net shared trained_data too): the
    checkpoint eval, predict and generate are handed was where fit(net) goes on from, and a
    change to one record changed the others. A change to the checkpoint's meta here makes
    fit(net) start the epoch's data order over; each object must be independent, and fit(net)
    then gives the straight run's weights (as test_fit_of_a_restored_or_compiled_net)."""
    import copy

    from nnlang.train.inference import restore
    straight = run(tiny)
    run(tiny, tmp_path / "split", config={"epochs": 1})
    net, ckpt, _ = restore(str(tiny), tmp_path / "split", backend="reference")
    kept = copy.deepcopy(net.loop_state)
    ckpt.meta["epoch"], ckpt.meta["data"]["name"] = 7, "other"
    assert net.loop_state == kept and net.trained_data == kept["data"]
    twin = copy.deepcopy(net)
    twin.trained_data["name"] = "twin's"
    net.loop_state["data"]["name"] = "changed"
    assert net.trained_data == kept["data"]
    fit(net, {"epochs": 1}, save=False, progress=False)
    _exact(net.state_dict(), params(straight))


def test_a_nets_fit_in_a_new_run_directory_keeps_its_own_best(tiny, tmp_path):
    """fit(net) writes a new run directory, and its best is one of its own epochs (the watch
    starts over, as Keras's callbacks do): an earlier fit's best epoch, whose weights that
    folder does not hold, is not this call's. (mode = max on val_loss, which falls here: the
    earlier fit's epoch 1 would stay the best.)"""
    watch = {"monitor": "val_loss", "mode": "max"}
    first = run(tiny, config={"epochs": 1, **watch})
    more = fit(first.net, {"epochs": 1, **watch}, out=tmp_path / "more", progress=False)
    assert more.rows[0]["val_loss"] < first.rows[0]["val_loss"]
    assert more.best == {"monitor": "val_loss", "mode": "max", "epoch": 2,
                         "value": more.rows[0]["val_loss"]}
    assert checkpoint.load(tmp_path / "more/best.npz").epoch == 2


def test_fit_of_a_net_at_another_batch_equals_a_resume_at_that_batch(tiny, tmp_path):
    """The batch is the loop's (a --resume may change it at an epoch's end, Keras's fit takes
    batch_size each call): the net compiles the step for it; inside an epoch it is refused as
    a resume refuses it."""
    first = run(tiny, config={"epochs": 1})
    fit(first.net, {"epochs": 1, "batch": 8}, save=False, progress=False)
    run(tiny, tmp_path / "split", config={"epochs": 1})
    resumed = run(tiny, tmp_path / "split", config={"epochs": 2, "batch": 8}, resume=True)
    _exact(first.net.state_dict(), params(resumed))
    assert first.net.step == resumed.net.step == 10 + 42 // 8
    cut = run(tiny, max_steps=13)
    with pytest.raises(NNError, match="stopped inside an epoch at batch 4"):
        fit(cut.net, {"batch": 8}, save=False, progress=False)


def test_fit_of_a_net_that_counts_its_own_epochs(tiny):
    """A net compiled with steps_per_epoch counts its epochs in train_step: the loop's
    end_epoch() was an error ("would count one twice"); another count than the data's is
    refused, since the epoch schedules would move elsewhere than the loop's epochs."""
    import nnlang
    straight = run(tiny)
    net = nnlang.compile(str(tiny), backend="reference", init_from=False, steps_per_epoch=10)
    fit(net, {"epochs": 2}, save=False, progress=False)
    assert (net.step, net.epoch) == (20, 2)
    _exact(net.state_dict(), params(straight))
    other = nnlang.compile(str(tiny), backend="reference", init_from=False, steps_per_epoch=7)
    with pytest.raises(NNError, match="counts an epoch every 7 steps .* is 10 steps"):
        fit(other, save=False, progress=False)


def test_a_nets_fit_that_stops_or_has_nothing_to_train_names_fits_settings(tiny):
    """fit(net) stopped by max_steps, or with nothing to train (max_steps reached, the run
    stopped early), told a notebook user to '--resume with a larger --max-steps', that 'the
    checkpoint is at step 5' (there is none) and to 'pass --set early_stop=N': flags and a
    checkpoint of the CLI. They name the net and fit's own settings."""
    def said(model, config, **kw):
        out = io.StringIO()
        fit(model, config, save=False, backend="reference", progress=False,
            console=Console(file=out, width=300), **kw)
        return out.getvalue()
    net = run(tiny, config={"epochs": 1}, max_steps=5).net
    texts = [said(net, {"epochs": 1}, max_steps=7)]
    assert "stopped by max_steps 7 at epoch 1, step 7 of 10 (global step 7); fit(net) with " \
           "a larger max_steps, or none, trains on" in texts[-1]
    texts.append(said(net, {"epochs": 1}, max_steps=7))
    assert "nothing to train: the net is at step 7, max_steps 7 (a larger one trains more)" \
        in texts[-1]
    for flag in ("--resume", "--max-steps", "--set", "checkpoint"):
        assert not any(flag in text for text in texts), flag


def test_a_python_fits_errors_and_notes_name_its_arguments_not_the_clis_flags(tiny, tmp_path):
    """fit(path) from Python was told the CLI's flags: '--init-from starts a new run ...,
    --resume continues a run', 'given twice: --data ... and --set data=', 'lower --batch',
    'stopped by --max-steps 5 ...; --resume with a larger --max-steps', 'pass --epochs to
    train more', 'pass --resume to continue it, or another --out'. Python's words are fit's arguments and config keys; the CLI keeps its flags
    (tests/faults/test_training.py, test_finetune.py)."""
    texts = []
    for kw in ({"init_from": tmp_path, "resume": True},
               {"data": "tiny.npz", "overrides": {"data": "other.npz"}},
               {"config": {"batch": 60}}):
        with pytest.raises(NNError) as err:
            run(tiny, **kw)
        texts.append(str(err.value))
    assert "init_from starts a new run from another run's weights, resume continues" in texts[0]
    assert "given twice: fit(data=tiny.npz) and overrides={'data': 'other.npz'}" in texts[1]
    assert "fit's data=, or its config's 'data'" in texts[1]
    assert 'lower fit\'s {"batch": ...}, or its val_split' in texts[2]

    def said(**kw):
        out = io.StringIO()
        run(tiny, tmp_path / "cut", console=Console(file=out, width=300), **kw)
        return out.getvalue()
    texts += [said(max_steps=5), said(resume=True, max_steps=5),
              said(resume=True, config={"epochs": 1}), said(resume=True, config={"epochs": 1})]
    assert "stopped by max_steps 5 at epoch 1, step 5 of 10 (global step 5); " \
           "fit(..., resume=RUN) with a larger max_steps, or none, trains on" in texts[3]
    assert "the checkpoint is at step 5, max_steps 5 (pass a larger one" in texts[4]
    assert "the checkpoint has 1 of 1 epochs (pass a larger epochs to train more)" in texts[6]
    for kw, words in (({"out": tmp_path / "cut"}, "pass resume=True to continue it, or "
                                                  "another out= for a new run"),
                      ({"resume": True, "runs_root": tmp_path / "none"},
                       "pass resume=RUN_DIR to say which run to resume"),
                      ({"out": tmp_path / "tiny.npz"}, "pass out= a folder's path"),
                      ({"out": tmp_path / "tiny.npz" / "run"},
                       "pass out= a writable folder that has free space"),
                      ({"data": {"train_x": np.zeros((8, 5), np.float32),
                                 "train_label": np.zeros(8, np.int32)}},
                       "or override (overrides=) the model's hyper-parameters to match")):
        with pytest.raises(NNError) as err:
            fit(str(tiny), backend="reference", progress=False, **kw)
        assert words in str(err.value), err.value
        texts.append(str(err.value))
    assert not any("--" in text for text in texts), texts


def test_a_nets_fit_after_an_early_stop_trains_again_as_keras_fit_does(tiny):
    """Keras's EarlyStopping (and ReduceLROnPlateau) reset their wait and best at each fit's
    start (`on_train_begin`), so `model.fit` called again trains again. fit(net) on a net whose
    run stopped early trained nothing ('nothing to train: the run stopped early') until
    early_stop was raised: the new call counted on from the old run's patience. A --resume of
    that run still goes on with its count (test_train_life)."""
    watch = {"early_stop": 1, "monitor": "val_loss", "mode": "max"}
    first = run(tiny, config={"epochs": 6, **watch})
    assert first.stopped == "early_stop" and len(first.rows) < 6
    net = first.net
    epoch, step = net.epoch, net.step
    out = io.StringIO()
    again = fit(net, {"epochs": 3}, save=False, backend="reference", progress=False,
                console=Console(file=out, width=300))
    assert "nothing to train" not in out.getvalue()
    # NOTE: with patience 1 and a fresh best, this call runs at least 2 epochs (the first
    # sets the best, which only a second can fail to beat)
    assert len(again.rows) >= 2 and net.epoch == epoch + len(again.rows)
    assert net.step == step + 10 * len(again.rows)
    assert again.best["epoch"] == epoch + 1 and again.best["value"] == again.rows[0]["val_loss"]


def test_a_nets_fit_holds_out_what_its_fits_held_out_and_says_so_in_fits_words(tiny):
    """A compiled net that no fit trained was refused any val_split but the file's ('this run
    held out val_split = 0.2', a run that never was): it held nothing out, so its fit takes
    one as a new run does. A net a fit trained keeps its held-out examples; that refusal, and
    inside an epoch those of other data or another batch, said 'this checkpoint' and hinted
    --val-split, --init-from and --data: they name the net and fit's settings."""
    import nnlang
    straight = run(tiny, config={"val_split": 0.3})
    fresh = nnlang.compile(str(tiny), backend="reference", init_from=False)
    more = fit(fresh, {"epochs": 2, "val_split": 0.3}, save=False, progress=False)
    _exact(fresh.state_dict(), params(straight))
    assert more.rows[-1]["val_loss"] == straight.rows[-1]["val_loss"]
    trained = run(tiny, config={"epochs": 1}).net
    with pytest.raises(NNError) as err:
        fit(trained, {"val_split": 0}, save=False, progress=False)
    assert err.value.message.startswith("the net's fit held out val_split = 0.2 of its data")
    assert "leave val_split out (it stays 0.2)" in err.value.hint
    cut = run(tiny, max_steps=13).net
    np.savez(tiny.parent / "other.npz", **np.load(tiny.parent / "tiny.npz"))
    for change, said in (({"batch": 8}, "the net stopped inside an epoch at batch 4; fit(net) "
                                        "finishes that epoch at it, not 8"),
                         ({"data": "other.npz"}, "the net stopped inside an epoch on data "
                                                 "tiny.npz; fit(net) goes on with that epoch's "
                                                 "rows, not other.npz")):
        with pytest.raises(NNError) as err:
            fit(cut, change, save=False, progress=False)
        assert err.value.message == said
        assert "leave " in err.value.hint and "--" not in err.value.hint


def test_a_fit_that_diverged_leaves_no_place_its_net_is_not_at(tiny, monkeypatch):
    """The guard stops in the middle of a read: steps 13 to 20 ran (the net is at step 20)
    but the loop counted 12, and the net's place said 'epoch 2, step 2 at global step 20':
    a fit(net) after it went on with epoch 2's order from its 3rd batch and counted epoch 2
    ended at step 28. Every place the net keeps is one of its own steps."""
    from nnlang.train import trainer
    first = run(tiny, config={"epochs": 1})
    net = first.net
    real = Net.fetch
    monkeypatch.setattr(trainer, "READ_EVERY_S", 1e9)   # NOTE: one read at the epoch's end

    def poisoned(self, *args, **kw):  # NOTE: the 13th step's loss on is NaN
        taken = real(self, *args, **kw)
        start = self.step - len(taken)
        return [(float("nan") if start + i >= 12 else loss, m)
                for i, (loss, m) in enumerate(taken)]
    monkeypatch.setattr(Net, "fetch", poisoned)
    with pytest.raises(NNError, match="diverged"):
        fit(net, {"epochs": 1}, save=False, progress=False)
    state = net.loop_state
    assert net.step == 20
    assert state is None or state["epoch"] * 10 + state["step_in_epoch"] == net.step


def test_a_refused_fit_of_a_net_leaves_its_schedule_as_it_was(tiny, tmp_path, monkeypatch):
    """A fit(net) refused in its setup (another batch inside an epoch) had set the net's
    total steps to the refused run's (20 -> 15): its cosine rate, and so each later
    train_step, moved. Reference: a net restored from the same run's checkpoint."""
    import nnlang
    monkeypatch.chdir(tmp_path)
    cosine = TINY.replace("epochs = 2", "epochs = 2\n  schedule = cosine")
    (tmp_path / "cos.nn").write_text(cosine)
    cut = run(tmp_path / "cos.nn", tmp_path / "cut", max_steps=13).net
    with pytest.raises(NNError, match="inside an epoch at batch 4"):
        fit(cut, {"batch": 8}, save=False, progress=False)
    same = nnlang.restore(str(tmp_path / "cos.nn"), tmp_path / "cut/checkpoint.npz",
                          backend="reference")
    assert same.step == cut.step == 13
    assert cut.total_steps == same.total_steps == 20
    assert cut.learning_rate() == same.learning_rate()


def test_fit_takes_a_dict_of_arrays_as_a_npz_of_them(tmp_path):
    """`fit(model, data={"x": x, "y": y})` (Keras' fit(x, y) habit) failed with "'dict' object
    has no attribute 'inputs'"; it trains as the same arrays saved in a .npz do, bit for bit,
    and a fit(net) takes them too. Text where numbers belong is a located refusal."""
    import numpy as np

    from nnlang.errors import NNError
    from nnlang.train.trainer import fit
    src = ("model M {\n  input x: float32[batch, 4]\n  input y: int32[batch]\n"
           "  h = dense(x, 3)\n  loss cross_entropy(h, y)\n}\n"
           "train M {\n  epochs = 1\n  batch = 4\n  optimizer = sgd(lr = 0.1)\n}\n")
    rng = np.random.default_rng(0)
    x = rng.random((16, 4), dtype=np.float32)
    y = rng.integers(0, 3, 16).astype(np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    quiet = {"save": False, "progress": False, "backend": "reference"}
    a = fit(src, data={"x": x, "y": y}, **quiet)
    b = fit(src, data=str(tmp_path / "d.npz"), **quiet)
    assert a.losses == b.losses
    for k, v in b.net.state_dict().items():
        np.testing.assert_array_equal(a.net.state_dict()[k], v)
    more = fit(a.net, {"epochs": 1}, data={"x": x, "y": y}, **quiet)
    assert more.net.epoch == 2
    with pytest.raises(NNError, match="array 'x' is <U1"):
        fit(src, data={"x": ["a"] * 16, "y": y}, **quiet)
