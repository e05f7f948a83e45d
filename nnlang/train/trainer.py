"""The training loop on top of a compiled `Net`: `fit` (progress, validation, divergence guard,
Ctrl-C between whole steps, checkpoints, resume). Settings are resolved in `overrides.py`;
using a trained model (`evaluate_checkpoint`, `predict`) is in `inference.py`. The CLI commands
wrap these.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table

from nnlang.errors import NNError
from nnlang.train import checkpoint, feeds
from nnlang.ops.optim import learning_rate
from nnlang.train.runs import PLOT_HINT, RunDir
from nnlang.train.overrides import resolve


@dataclass
class History:
    """What `fit` returns: one row per epoch (as in metrics.jsonl), the loss of every step this
    call took, the final validation and test results, and why training stopped early (None,
    "max_steps", "interrupted"). NOTE: train_loss includes the l2 penalty, val/test loss not."""
    rows: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    val: dict | None = None
    test: dict | None = None
    run_dir: Path | None = None
    stopped: str | None = None
    net: object = None

    @property
    def checkpoint(self) -> Path | None:
        return self.run_dir / checkpoint.FILENAME if self.run_dir else None


# *** resolving the program and its config ***

def evaluate(net, arrays: dict, batch: int, console: Console | None = None) -> dict | None:
    """Loss (the sum of the model's losses) and metrics over ALL of `arrays`: the last partial
    batch runs at its own size (Net compiles one more batch size) and counts by its size.
    With a `console`, a progress bar (a terminal) or a line every LINE_EVERY_S (otherwise)."""
    n = feeds.length(arrays)
    if n == 0:
        return None
    loss_names = list(net.user.losses)
    totals: dict = {}
    for b in _progress(feeds.batches(arrays, batch, drop_last=False), -(-n // batch),
                       "evaluating", console):
        k = feeds.length(b)
        out = net.evaluate(b)
        res = {"loss": sum(out[name] for name in loss_names)}
        if len(loss_names) > 1:
            res.update({name: out[name] for name in loss_names})
        res.update({m: v for m, v in out.items() if m not in loss_names})
        for key, v in res.items():
            totals[key] = totals.get(key, 0.0) + v * k
    return {k: v / n for k, v in totals.items()}


def _progress(items, total: int, what: str, console: Console | None):
    """`items`, shown as they go: a bar on a terminal, a line every LINE_EVERY_S elsewhere."""
    if console is None:
        yield from items
        return
    if not console.is_terminal:
        say(console, f"{what}: {total} batches")
        t0 = last = time.perf_counter()
        for i, item in enumerate(items):
            yield item
            now = time.perf_counter()
            if now - last >= LINE_EVERY_S:
                say(console, f"{what}: {i + 1}/{total} batches, {now - t0:.0f}s")
                last = now
        return
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=total)
        for item in items:
            yield item
            bar.advance(task)


# *** fit ***

class _Sums:
    """Running means of the training loss and metrics over one epoch."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.n = state.get("n", 0)
        self.sums = dict(state.get("sums", {}))

    def add(self, loss: float, metrics: dict) -> None:
        self.n += 1
        for k, v in {"loss": loss, **metrics}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict:
        return {k: v / self.n for k, v in self.sums.items()} if self.n else {}

    def state(self) -> dict:
        return {"n": self.n, "sums": self.sums}


# how often the training loop reads the steps' losses (for the progress bar and the NaN guard)
READ_EVERY_S = 0.2
READ_EVERY_STEPS = 50
# without a progress bar (stdout not a terminal), a line at least this often
LINE_EVERY_S = 30.0


class _Interrupts:
    """Ctrl-C while training. A KeyboardInterrupt raised at any bytecode could land between a
    step's kernels or between the step and its counters, so the checkpoint would describe a
    state that no number of whole steps gives. Inside `fit` SIGINT only records the request;
    the loop acts on it where its state is whole (`check`, between steps). Inside `immediate()`
    (compiling, validation: nothing there changes the training state) it raises at once, so a
    long compile stays interruptible. A second Ctrl-C while the checkpoint is written is
    recorded, not acted on: the save finishes."""

    def __init__(self):
        self.requested = False
        self._immediate = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None

    def _handler(self, signum, frame):
        self.requested = True
        if self._immediate:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextmanager
    def immediate(self):
        self.check()
        self._immediate = True
        try:
            yield
        finally:
            self._immediate = False

    def hold(self) -> None:
        """From here on (the interrupted run's checkpoint) every Ctrl-C is only recorded."""
        self._immediate = False


def _test_signal() -> tuple[int, int] | None:
    """NNLANG_TEST_SIGNAL_AT_STEP=K[:KILL]: the process signals itself (SIGINT, or SIGKILL)
    right after global step K is queued, so tests land an interrupt at a chosen step."""
    spec = os.environ.get("NNLANG_TEST_SIGNAL_AT_STEP")
    if not spec:
        return None
    step, _, kind = spec.partition(":")
    return int(step), (signal.SIGKILL if kind.upper() == "KILL" else signal.SIGINT)


def _fmt(values: dict | None) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in (values or {}).items())


def fit(program_or_path, config=None, data=None, *, backend: str = "numba",
        overrides: dict | None = None, model: str | None = None, data_dir=None, out=None,
        resume=False, max_steps: int | None = None, save: bool = True, progress: bool = True,
        console: Console | None = None, runs_root="runs") -> History:
    """Trains a model (a .nn path, source text or `Program`) and returns a `History`.

    config: a TrainConfig replacing the train section, or a dict of overrides (epochs, batch,
        lr, seed, val_split, clip_norm, l2, optimizer options, data).
    data: a `Dataset`, or a name/path spec replacing the train section's `data`.
    overrides: `--set` values: model hyper-parameters (or train settings when not one).
    out: the run directory (default runs/<model>-<stamp>/); save=False writes none.
    resume: True to continue the run in `out` (or the newest runs/<model>-*), or a path to a
        run directory or checkpoint. The checkpoint's config and overrides are the base; new
        flags apply on top (e.g. more epochs).
    All randomness comes from the config's seed: the same seed gives the same numbers.
    """
    from nnlang.runtime.net import Net, check_backend
    console = console or Console()
    check_backend(backend)
    if isinstance(config, dict):
        data = config.get("data") if data is None else data
        config = {k: v for k, v in config.items() if k != "data"}
    ckpt = _find_checkpoint(program_or_path, config, overrides, model, out, resume, runs_root)
    program, cfg, source, file, hp = resolve(
        program_or_path, config, overrides, model or (ckpt.meta["model"] if ckpt else None),
        base=ckpt.config if ckpt else None,
        base_overrides=ckpt.meta.get("overrides") if ckpt else None)
    if ckpt is not None:
        _describe_resume(console, ckpt, cfg, hp, picked=resume is True and out is None)
    if ckpt and source is not None and ckpt.meta.get("source") not in (None, source):
        say(console, f"note: {file} differs from the source this checkpoint was trained with")
    if max_steps is not None and max_steps < 1:
        raise NNError(f"--max-steps must be at least 1, not {max_steps}")
    if cfg.epochs < 1:
        raise NNError(f"epochs must be at least 1, not {cfg.epochs}", hint="pass --epochs N")
    cfg, ds, mapping, (train, val, test) = _data(program, cfg, data, data_dir, file)
    n = feeds.length(train)
    per_epoch = n // cfg.batch
    if per_epoch == 0:
        raise NNError(f"{n} training examples do not fill one batch of {cfg.batch}",
                      hint="lower --batch, or lower val_split")
    if n % cfg.batch:
        say(console, f"note: the training step is compiled for batch {cfg.batch}, so each "
                      f"epoch drops the last {n % cfg.batch} of {n} shuffled examples")

    # NOTE: before the compile: a run that cannot be saved fails now, not after a minute
    run = None
    if save:
        run = RunDir(ckpt.path.parent) if ckpt else RunDir.create(program.model, out, runs_root)

    net = Net(program, backend=backend, batch=cfg.batch, seed=cfg.seed)
    net.config = cfg
    net.total_steps = cfg.epochs * per_epoch
    rng = feeds.order_rng(cfg.seed)
    start_epoch, skip, partial = 0, 0, None
    guard = _Guard()
    if ckpt is not None:
        net.load_state_dict(ckpt.state)
        net.step = ckpt.step
        rng.bit_generator.state = ckpt.meta["rng_state"]
        start_epoch, skip = ckpt.epoch, ckpt.meta.get("step_in_epoch", 0)
        partial = ckpt.meta.get("partial")
        guard = _Guard(ckpt.meta.get("loss_start"))
        if skip and ckpt.config.batch != cfg.batch:
            raise NNError(f"this checkpoint stopped inside an epoch at batch {ckpt.config.batch};"
                          f" resume it with the same batch size, not {cfg.batch}")
    if run is not None:
        run.drop_stale_temps()
        run.keep_rows(start_epoch)  # a fresh run starts empty; a resumed one drops later rows
        run.write_json("config.json", {
            "model": program.model, "file": file, "hparams": program.hparams, "overrides": hp,
            "train": checkpoint.config_to_dict(cfg), "backend": backend,
            "dataset": {"name": ds.name, "options": cfg.data.options if cfg.data else {},
                        "train": n, "val": feeds.length(val), "test": feeds.length(test),
                        "feeds": mapping, "meta": small_meta(ds.meta)},
            "resumed_from": str(ckpt.path) if ckpt else None})

    history = History(rows=run.rows() if run else [], run_dir=run.path if run else None, net=net)
    data_info = {"name": ds.name, "choice": asdict(cfg.data) if cfg.data else None,
                 "inputs": ds.inputs, "targets": ds.targets, "feeds": mapping,
                 "meta": feeds.predict_meta(ds.meta)}

    def save_ckpt(epoch: int, step_in_epoch: int, rng_state: dict, sums: _Sums | None):
        if run is None:
            return None
        meta = {"model": program.model, "file": file, "source": source, "overrides": hp,
                "hparams": program.hparams, "config": checkpoint.config_to_dict(cfg),
                "backend": backend, "dtype": net.dtype, "epoch": epoch,
                "step_in_epoch": step_in_epoch, "step": net.step,
                "total_steps": net.total_steps, "rng_state": rng_state,
                "partial": sums.state() if sums else None, "data": data_info,
                "loss_start": guard.start}
        return checkpoint.save(run.checkpoint, net.state_dict(), meta)

    if start_epoch >= cfg.epochs:
        say(console, f"nothing to train: the checkpoint has {start_epoch} of {cfg.epochs} "
                      "epochs (pass --epochs to train more)")
    show = progress and console.is_terminal
    lines = progress and not show
    signal_at = _test_signal()
    epoch, done, sums, epoch_state = start_epoch, skip, _Sums(partial), rng.bit_generator.state
    with _Interrupts() as interrupts:
        try:
            if start_epoch < cfg.epochs:
                with interrupts.immediate():
                    _compile(net, cfg.batch, console, progress)
            for epoch in range(start_epoch, cfg.epochs):
                # NOTE: one tuple: the loop's (epoch, done, sums, rng state) always agree
                if epoch > start_epoch or not skip:
                    sums, done, epoch_state = _Sums(), 0, rng.bit_generator.state
                net.epoch = epoch
                order = rng.permutation(n)
                t0, seen, start_done = time.perf_counter(), 0, done
                columns = (TextColumn(f"epoch {epoch + 1}/{cfg.epochs}"), BarColumn(),
                           MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                           TimeRemainingColumn())
                with Progress(*columns, console=console, disable=not show) as bar:
                    task = bar.add_task("train", total=per_epoch, completed=done, stats="")
                    unread, read_at, line_at = 0, time.perf_counter(), time.perf_counter()
                    for b in feeds.batches(train, cfg.batch, order, start=done):
                        # NOTE: overflow warnings are noise here; a non-finite loss is the report
                        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                            net.train_step(b, fetch=False)
                        unread += 1
                        if signal_at and net.step == signal_at[0]:
                            os.kill(os.getpid(), signal_at[1])
                        stop = max_steps is not None and net.step >= max_steps
                        # NOTE: reading a step's loss waits for it; on a GPU the steps in
                        # between queue up without waiting (a few per refresh, all at the end)
                        if stop or done + unread == per_epoch or unread == READ_EVERY_STEPS \
                                or time.perf_counter() - read_at >= READ_EVERY_S \
                                or interrupts.requested:
                            done = _take(net, sums, history, epoch, done, run, guard)
                            unread, read_at = 0, time.perf_counter()
                            seen = (done - start_done) * cfg.batch
                            rate = seen / max(read_at - t0, 1e-9)
                            stats = f"{_fmt(sums.means())}  {rate:,.0f} samples/s"
                            bar.update(task, completed=done, stats=stats)
                            if lines and read_at - line_at >= LINE_EVERY_S:
                                say(console, f"epoch {epoch + 1}/{cfg.epochs}  step {done}/"
                                             f"{per_epoch}  {stats}")
                                line_at = read_at
                        interrupts.check()
                        if stop:
                            history.stopped = "max_steps"
                            break
                wall = time.perf_counter() - t0
                with interrupts.immediate():
                    val_res = evaluate(net, val, cfg.batch, console if show else None) \
                        if val else None
                lr = learning_rate(cfg.optimizer.options["lr"], cfg.schedule,
                                   max(net.step - 1, 0), epoch, net.total_steps)
                row = {"epoch": epoch + 1, "step": net.step,
                       **{f"train_{k}": v for k, v in sums.means().items()},
                       **{f"val_{k}": v for k, v in (val_res or {}).items()},
                       "lr": lr, "samples_per_s": seen / max(wall, 1e-9), "time": wall}
                history.rows.append(row)
                history.val = val_res
                say(console, f"epoch {epoch + 1}/{cfg.epochs}  {_fmt(sums.means())}"
                              + (f"  | val {_fmt(val_res)}" if val_res else "")
                              + f"  | {row['samples_per_s']:,.0f} samples/s  {wall:.1f}s")
                guard.settle(run)  # NOTE: an exploded state is never saved
                if run is not None:
                    run.log(row)
                if done < per_epoch:  # stopped by max_steps inside the epoch
                    save_ckpt(epoch, done, epoch_state, sums)
                else:
                    save_ckpt(epoch + 1, 0, rng.bit_generator.state, None)
                interrupts.check()
                if history.stopped:
                    break
        except KeyboardInterrupt:
            interrupts.hold()
            # NOTE: the steps already run count (their updates are in the state), finite or not
            done = _take(net, sums, history, epoch, done, None, None)
            path = save_ckpt(epoch, done, epoch_state, sums)
            history.stopped = "interrupted"
            where = f"; checkpoint saved to {path}" if path else ""
            say(console, f"interrupted at epoch {epoch + 1}, step {done} (global step "
                         f"{net.step}){where}")
            if path:
                flag = f" --backend {backend}" if backend != "numba" else ""
                say(console, f"resume with: nnlang train {file} --out {run.path} --resume{flag}")
            return history

    try:
        history.test = evaluate(net, test, cfg.batch) if test else None
    except KeyboardInterrupt:
        # NOTE: training is complete and saved; only the test numbers are missing
        history.stopped = "interrupted"
        say(console, "interrupted during the test evaluation; training finished"
                     + (f" and is saved in {run.checkpoint}" if run else ""))
        return history
    if run is not None:
        run.write_json("summary.json", {"epochs": len(history.rows), "step": net.step,
                                        "stopped": history.stopped,
                                        "train": _last_train(history.rows),
                                        "val": history.val, "test": history.test})
        if run.plot() is None:
            say(console, PLOT_HINT)
    console.print(summary_table(history))
    if run is not None:
        say(console, f"run directory: {run.path}")
    return history


def say(console: Console, text: str) -> None:
    # NOTE: paths and hints hold brackets (nnlang[plot]) that rich would take as markup
    console.print(text, markup=False, highlight=False)


def _find_checkpoint(program_or_path, config, overrides, model, out, resume, runs_root):
    """The checkpoint `resume` names: a path, or True for the run in `out` (default: the newest
    run of the model). A fresh run refuses an `out` that already holds a checkpoint."""
    if not resume:
        if out is not None and (Path(out) / checkpoint.FILENAME).is_file():
            raise NNError(f"{out} already holds a training run", hint="pass --resume to "
                          "continue it, or another --out for a new run")
        return None
    if resume is not True:
        return checkpoint.load(resume)
    if out is not None:
        return checkpoint.load(out)
    name = resolve(program_or_path, config, overrides, model)[0].model
    where = RunDir.latest(name, runs_root)
    if where is None:
        raise NNError(f"no run of '{name}' with a checkpoint under {runs_root}/",
                      hint="pass --out RUN_DIR to say which run to resume")
    return checkpoint.load(where)


def _data(program, cfg, data, data_dir, file):
    """(config, dataset, input mapping, (train, val, test) arrays ready for the model)."""
    if data is not None and not isinstance(data, (str, Path)):
        ds = data
    else:
        if data is not None:
            cfg = replace(cfg, data=feeds.replace_data(cfg.data, str(data)))
        base_dir = Path(file).parent if file != "<string>" else None
        ds = feeds.load_data(cfg.data, data_dir, base_dir)
    mapping = feeds.match_inputs(program.graph, ds.inputs, ds.targets, f"dataset '{ds.name}'")
    train, val = feeds.carve(feeds.model_arrays(program.graph, ds.train.arrays, mapping),
                             cfg.val_split, cfg.seed)
    test = feeds.model_arrays(program.graph, ds.test.arrays, mapping) if len(ds.test) else {}
    return cfg, ds, mapping, (train, val, test)


# a loss above EXPLODED x its start (at least 1) for EXPLODED_STEPS steps in a row diverged
EXPLODED = 1e4
EXPLODED_STEPS = 3


class _Guard:
    """Stops a run whose loss is not finite or has exploded. Its start is the loss of the
    run's first step, at the initial weights (later ones may have exploded already: with
    --lr 1e6 the second is), kept in the checkpoint so a resumed run judges alike; at least 1
    so a loss that starts near 0 is not judged by its noise. Healthy training moves
    a loss by a few times, a step size far too big multiplies it by 1e10 and more within a few
    steps (--lr 1e6: 1e22 with Adam, 1e30 with SGD): a factor of 1e4 leaves room both ways.
    One spike is forgiven; a streak still open when a checkpoint is due counts, so an
    exploded state is never saved over the last good one."""

    def __init__(self, start: float | None = None):
        self.start = start
        self._streak: list = []   # (loss, epoch, step in epoch, global step) above the limit

    def check(self, loss: float, epoch: int, done: int, step: int, run) -> None:
        if not math.isfinite(loss):
            raise _diverged(loss, epoch, done, step, run)
        if self.start is None:
            self.start = loss
            return
        if loss > EXPLODED * max(self.start, 1.0):
            self._streak.append((loss, epoch, done, step))
            if len(self._streak) >= EXPLODED_STEPS:
                self.settle(run)
        else:
            self._streak = []

    def settle(self, run) -> None:
        """Raises if the loss is above the limit now (a checkpoint is due)."""
        if self._streak:
            loss, epoch, done, step = self._streak[0]
            raise _diverged(loss, epoch, done, step, run, self.start)


def _take(net, sums: _Sums, history: History, epoch: int, done: int, run,
          guard: _Guard | None) -> int:
    """Reads the losses and metrics of the steps run since the last read into the epoch's
    sums; returns the epoch's step count. A diverged loss stops training (with a `guard`)."""
    taken = net.fetch()
    first = net.step - len(taken)
    for i, (loss, metrics) in enumerate(taken):
        if guard is not None:
            guard.check(loss, epoch, done, first + i + 1, run)
        sums.add(loss, metrics)
        history.losses.append(loss)
        done += 1
    return done


def _diverged(loss, epoch, done, step, run, start: float | None = None) -> NNError:
    last = None
    if run is not None and run.checkpoint.is_file():
        last = f"the last good checkpoint is {run.checkpoint}"
    hint = "lower the learning rate (--lr), or set clip_norm; " + (
        last or "no checkpoint was written before it diverged")
    why = "" if start is None else (f", over {EXPLODED:g} times its start ({start:.4g}) for "
                                    f"{EXPLODED_STEPS} steps in a row")
    return NNError(f"training diverged: the loss is {loss:.4g} at epoch {epoch + 1}, step "
                   f"{done + 1} (global step {step}){why}", hint=hint)


def _compile(net, batch: int, console: Console, progress: bool) -> None:
    """Compiles the training step before the first epoch, so its time is said apart and not
    counted in epoch 1's samples/s."""
    if progress:
        say(console, "compiling the training step (slow on a model's first run; cached "
                     "afterwards)")
    t0 = time.perf_counter()
    net.prepare("train", batch)
    if progress:
        say(console, f"compiled in {time.perf_counter() - t0:.1f}s")


def _describe_resume(console: Console, ckpt, cfg, hp: dict, picked: bool) -> None:
    """Says which run is resumed (`picked`: found as the newest run of the model) and its
    settings, and every setting or --set value that this call changes."""
    say(console, f"resuming {ckpt.path} (epoch {ckpt.epoch}, step {ckpt.step})")
    old = ckpt.config
    if picked:
        opts = old.optimizer.options
        say(console, f"  the newest run of {ckpt.meta.get('model')}: data "
                     f"{old.data.name if old.data else '-'}, {old.optimizer.name} lr "
                     f"{opts.get('lr')}, batch {old.batch}, epochs {old.epochs}, seed "
                     f"{old.seed}" + "".join(f", {k}={v}" for k, v in
                                             (ckpt.meta.get("overrides") or {}).items())
                     + " (pass --out RUN_DIR to pick another)")
    changed = [f"{k} {a} -> {b}" for k, a, b in _setting_changes(old, cfg)]
    changed += [f"{k} {v0} -> {v}" for k, v in hp.items()
                if (v0 := (ckpt.meta.get("overrides") or {}).get(k)) != v]
    if changed:
        say(console, "note: this resume changes the run's " + ", ".join(changed))


def _setting_changes(old, new) -> list[tuple]:
    """(setting, old value, new value) of each train setting (optimizer options as
    `adam.lr`) that differs."""
    a, b = _flat_settings(old), _flat_settings(new)
    return [(k, a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def _flat_settings(cfg) -> dict:
    flat = {k: v for k, v in asdict(cfg).items() if k != "optimizer"}
    flat.update({f"{cfg.optimizer.name}.{k}": v for k, v in cfg.optimizer.options.items()})
    return flat


def _last_train(rows: list) -> dict | None:
    if not rows:
        return None
    return {k[len("train_"):]: v for k, v in rows[-1].items() if k.startswith("train_")}


def small_meta(meta: dict) -> dict:
    """Dataset meta for config.json: without the vocabulary list (it is in the checkpoint)."""
    small = feeds.predict_meta(meta)
    if "vocab" in small:
        small["vocab"] = f"<{len(small['vocab'])} words>"
    return small


def summary_table(history: History) -> Table:
    """train (last epoch) / val / test rows of loss and metrics."""
    results = {"train": _last_train(history.rows), "val": history.val, "test": history.test}
    results = {k: v for k, v in results.items() if v}
    cols = list(dict.fromkeys(k for v in results.values() for k in v))
    t = Table(box=box.SIMPLE_HEAD, title="summary")
    t.add_column("split", style="bold")
    for c in cols:
        t.add_column(c, justify="right")
    for split, values in results.items():
        t.add_row(split, *(f"{values[c]:.4f}" if c in values else "" for c in cols))
    return t


# *** trained models: eval and predict ***
