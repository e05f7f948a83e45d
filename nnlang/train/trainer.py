"""The training loop on top of a compiled `Net`: `fit` (progress, validation, divergence guard,
Ctrl-C between whole steps, checkpoints, resume), written as the named steps of one `_Training`.
Settings are resolved in `overrides.py`, the resumed checkpoint found in `resume.py`; using a
trained model (`evaluate_checkpoint`, `predict`) is in `inference.py`. The CLI wraps these.
"""
from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table

from nnlang.data.registry import trained_words
from nnlang.errors import NNError, said_as, warn
from nnlang.files import as_bool, as_path
from nnlang.frontend.train_config import setting_span
from nnlang.ops.optim import plateau_scale
from nnlang.ops.signature import show_value
from nnlang.passes.pipeline import (DIVIDED_VALUE, DIVISOR, divided_key, divided_terms,
                                    named_losses)
from nnlang.train import checkpoint, feeds
from nnlang.train.data_parallel import Ranks
from nnlang.train.guard import DivergenceGuard
from nnlang.train.interrupts import Interrupts, test_signal
from nnlang.train.overrides import given_at, given_span, resolve
from nnlang.train.progress import (LINE_EVERY_S, default_console, fmt, live, outlive_terminal,
                                   progress, say)
from nnlang.train.init_from import start_run, words_to_start_from
from nnlang.train.resume import describe_resume, find_checkpoint
from nnlang.train.runs import PLOT_HINT, RunDir, curve_names, draw_curves


# NOTE: SIGTERM is what batch schedulers (Slurm) send before they kill a job: saved like a Ctrl-C
# SIGPIPE: the CLI's stdout lost its reader (`nnlang train | head`): saved too, said on stderr
# SIGHUP: the terminal is gone (an ssh session dropped): saved too, said where stdout still goes
_STOPPED_BY = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated",
               signal.SIGPIPE: "output closed", signal.SIGHUP: "hung up"}
_SAID = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)",
         signal.SIGPIPE: "standard output closed (broken pipe)",
         signal.SIGHUP: "hung up (SIGHUP)"}


def _asked(interrupts: Interrupts | None) -> signal.Signals | None:
    """What asks this process to stop (`Ranks.agree` votes on it), or None."""
    return interrupts.signal if interrupts is not None and interrupts.requested else None


@dataclass
class History:
    """What `fit` returns: one row per epoch (as in metrics.jsonl), the loss of every step this
    call took, the final validation and test results, and why training stopped early (None,
    "max_steps", "interrupted", "terminated" (SIGTERM), "output closed" (SIGPIPE), "hung up"
    (SIGHUP), "early_stop"). NOTE: train_loss includes the l1/l2 penalties, val/test loss not.
    `best`: the monitored value's best epoch (weights in best.npz)."""
    rows: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    val: dict | None = None
    test: dict | None = None
    run_dir: Path | None = None
    stopped: str | None = None
    net: object = None
    best: dict | None = None

    @property
    def checkpoint(self) -> Path | None:
        return self.run_dir / checkpoint.FILENAME if self.run_dir else None

    def __reduce_ex__(self, protocol):
        # NOTE: a process pool returning fit's result pickles it; the error was the Net's own,
        # about a net the caller never sent
        if self.net is None:
            return super().__reduce_ex__(protocol)
        raise NNError("fit's History holds the trained Net, which cannot be pickled (to be "
                      "sent to or from another process)",
                      hint="send what you need: history.test, history.val, history.rows, "
                           "history.losses, history.best and history.run_dir (where "
                           "nnlang.restore(model, run_dir) gives the net back)")

    def __repr__(self) -> str:
        # NOTE: a notebook shows the value of `fit(...)`: the dataclass repr listed the loss of
        # every step (thousands of numbers) and the Net; this is the run in one line
        parts = [f"{len(self.rows)} epoch{'s' if len(self.rows) != 1 else ''}",
                 f"{len(self.losses)} step{'s' if len(self.losses) != 1 else ''}"]
        if self.rows:
            last = {k[len("train_"):]: v for k, v in self.rows[-1].items()
                    if k.startswith("train_") and isinstance(v, (int, float))}
            parts.append(f"last epoch: {fmt(last)}")
        for split in ("val", "test"):
            if getattr(self, split):
                parts.append(f"{split}: {fmt(getattr(self, split))}")
        if self.stopped:
            parts.append(f"stopped: {self.stopped}")
        if self.run_dir:
            parts.append(f"run_dir: {self.run_dir}")
        return f"<History {'; '.join(parts)}>"

    def plot(self):
        """The loss and each metric per epoch, train and val, as the run's pngs draw them (one
        panel each): a matplotlib `Figure`, which a notebook shows as the cell's value. A bare
        Figure, not pyplot's, so the notebook's backend stays as it is."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise NNError("History.plot() draws with matplotlib, which is not installed",
                          hint="pip install 'nnlang[plot]' (or matplotlib)") from None
        names = curve_names(self.rows)
        if not names:
            raise NNError("this History has no epoch to plot: training stopped before the "
                          "first epoch ended", hint="history.losses holds each step's loss")
        fig = Figure(figsize=(5 * len(names), 3.5))
        for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names):
            draw_curves(ax, self.rows, name)
        fig.tight_layout()
        return fig

    def __copy__(self) -> "History":
        return replace(self)

    def __deepcopy__(self, memo) -> "History":
        return History(**{k: copy.deepcopy(getattr(self, k), memo)
                          for k in self.__dataclass_fields__})


def evaluate(net, arrays: dict, batch: int, console: Console | None = None,
             ranks: Ranks | None = None, what: str = "evaluating",
             header: bool = True) -> dict | None:
    """Loss (the sum of the model's losses) and metrics over ALL of `arrays`: the last partial
    batch runs at its own size (Net compiles one more batch size) and counts by its size; a
    mean over kept rows (`divided_terms`, in a value or as its term) counts by its divisor on
    the batch (kept rows, their class weights), so it is the whole set's mean over its kept rows.
    With a `console`, a progress bar (a terminal) or a line every LINE_EVERY_S (otherwise),
    labelled `what` (`header`: progress's).
    `ranks`: each rank evaluates its rows of every batch when every loss and metric is a mean
    over rows (Ranks.means_over_rows), else batches r, r + N, r + 2N ... whole, and the sums
    are added up.
    NOTE: a metric that is not a mean over rows (exp of the mean loss, a masked mean) has the
    1-process number only on the 1-process run's batches: a shard's value differs. Whole
    batches hold the global batch on every rank, so rows are split when that is exact."""
    n = feeds.length(arrays)
    if n == 0:
        return None
    loss_names, named = list(net.user.losses), named_losses(net.user.losses)
    terms = _divided(net.user)
    totals: dict = {}
    count, first, every = -(-n // batch), 0, 1
    split = ranks is not None and ranks.many and ranks.all_row_means
    if ranks is not None and ranks.many:
        # NOTE: a rank with a cold cache compiles the evaluation's kernels here (whole
        # batches: the last partial one's size too, on the rank it falls to); the others
        # wait for it untimed, as for the training step, not in the timed sum below
        if split:
            net.prepare("eval", max(batch // ranks.size, 1))
        else:
            first, every = ranks.rank, ranks.size
            net.prepare("eval", min(batch, n))
            if n % batch and n > batch and (count - 1) % every == first:
                net.prepare("eval", n % batch)
        ranks.compiled()
        ranks.same_statistics(net)
    batches = feeds.batches(arrays, batch, feeds.eval_order(arrays), start=first,
                            drop_last=False, every=every)
    for b in progress(batches, len(range(first, count, every)), what, console, header):
        b = ranks.shard(b) if split else b
        k = feeds.length(b)
        if k == 0:
            continue
        out, divided = net.evaluate_divided(b)
        res = {"loss": out["loss"] if named else sum(out[name] for name in loss_names)}
        res.update({name: out[name] for name in named})
        res.update({m: out[m] for m in net.user.metrics})
        for key, v in res.items():
            # NOTE: a mean over kept rows (or class weights) counts by its own divisor, the
            # rest of the value by the batch's rows
            v -= sum(c * divided[t][0] for c, t in terms.get(key, ()))
            totals[key] = totals.get(key, 0.0) + v * k
        for t, (v, d) in divided.items():
            totals[("sum", t)] = totals.get(("sum", t), 0.0) + v * d
            totals[("divisor", t)] = totals.get(("divisor", t), 0.0) + d
    keys = ["loss", *named, *net.user.metrics,
            *((part, t) for t in sorted({t for ts in terms.values() for _, t in ts})
              for part in ("sum", "divisor"))]
    if ranks:
        totals = ranks.total(totals, keys)
    totals = {k: totals.get(k, 0.0) for k in keys}
    # NOTE: with every row of the set ignored the mean is 0, as each batch's is
    return {key: totals[key] / n + sum(c * totals[("sum", t)] / (totals[("divisor", t)] or 1.0)
                                       for c, t in terms.get(key, ()))
            for key in keys if isinstance(key, str)}


def _divided(user) -> dict:
    """Each reported value's means over kept rows, (factor, id) (pipeline's divided_terms):
    the losses', their total's ("loss", of all of them) and the metrics'."""
    terms = {name: divided_terms(user, nid) for name, nid in (user.losses | user.metrics).items()}
    terms["loss"] = [term for name in user.losses for term in terms[name]]
    return {k: v for k, v in terms.items() if v}


# *** fit ***

class _Sums:
    """Running means of the training loss and metrics over one epoch, each over the rows
    trained on: a step's value counts by its rows (every step's batch is whole), and a mean
    over kept rows among its terms (`terms`: `_divided`) by that step's divisor, as
    `evaluate` counts them. NOTE: the mean of the steps' values weighed a batch that kept 2
    rows as much as one that kept 8."""

    def __init__(self, state: dict | None = None, terms: dict | None = None):
        self.terms = terms or {}
        state = state or {}
        self.n = state.get("n", 0)
        self.sums = dict(state.get("sums", {}))
        # NOTE: how many steps each sum holds. A checkpoint saved inside an epoch before the
        # step reported each of several losses (train_kl, ...) has no counts and no sums of
        # them: each of its sums holds all n steps
        self.counts = {k: state.get("counts", {}).get(k, self.n) for k in self.sums}

    def add(self, loss: float, metrics: dict) -> None:
        self.n += 1
        values = {"loss": loss, **{k: v for k, v in metrics.items() if not divided_key(k)}}
        for k, v in values.items():
            # NOTE: the step's value less its means over kept rows, which count apart below
            v -= sum(c * metrics.get(f"{DIVIDED_VALUE}{t}", 0.0)
                     for c, t in self.terms.get(k, ()))
            self._add(k, v)
        for t in {t for ts in self.terms.values() for _, t in ts}:
            if f"{DIVIDED_VALUE}{t}" in metrics:
                d = metrics[f"{DIVISOR}{t}"]
                self._add(f"{DIVIDED_VALUE}{t}", metrics[f"{DIVIDED_VALUE}{t}"] * d)
                self._add(f"{DIVISOR}{t}", d)

    def _add(self, k: str, v: float) -> None:
        self.sums[k] = self.sums.get(k, 0.0) + v
        self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict:
        """Each value's mean over the rows the epoch's steps trained on; a value some of its
        steps lack (a resumed old checkpoint's) is left out: divided by every step it was too
        small, and over its own steps it is not the epoch's."""
        if not self.n:
            return {}
        out = {}
        for k, v in self.sums.items():
            terms = self.terms.get(k, ())
            if divided_key(k) or any(self.counts.get(f"{DIVISOR}{t}") != self.n
                                      for _, t in terms) or self.counts[k] != self.n:
                continue
            # NOTE: with every row of the epoch ignored the mean is 0, as each batch's is
            out[k] = v / self.n + sum(c * self.sums[f"{DIVIDED_VALUE}{t}"]
                                      / (self.sums[f"{DIVISOR}{t}"] or 1.0) for c, t in terms)
        return out

    def missing(self, names) -> list[str]:
        """Those of `names` that `means` leaves out: values the steps so far did not report,
        and means over kept rows whose terms' sums they lack (NOTE: a checkpoint saved inside
        an epoch before those were counted holds `loss` without them, and its row dropped
        train_loss silently)."""
        return [k for k in names if self.n and (k not in self.sums or any(
            f"{DIVISOR}{t}" not in self.sums for _, t in self.terms.get(k, ())))]

    def state(self) -> dict:
        return {"n": self.n, "sums": self.sums, "counts": self.counts}


TIE_TOLERANCE = 1e-6  # relative: well above float32 rounding (~1e-7) of a validation mean


class _Watch:
    """The monitored value (train section's monitor/mode) as early stopping, the
    plateau schedule and best.npz see it: the best so far and the epochs since it improved."""

    def __init__(self, cfg, graph, state: dict | None = None):
        self.monitor, self.mode = cfg.watched(graph)
        state = state or {}
        if state.get("monitor", self.monitor) != self.monitor or \
                state.get("mode", self.mode) != self.mode:
            # NOTE: a resume that watches another value (or the other way) starts over: the
            # old best is not a value of this monitor, and nothing ever improved on it
            state = {}
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        self.bad, self.plateau_bad = state.get("bad", 0), state.get("plateau_bad", 0)

    def update(self, value: float, epoch: int) -> bool:
        """Counts one finished epoch (1-based `epoch`); True when it is the best so far."""
        better = math.isfinite(value) and (self.best is None or self._beats(value, self.best))
        if better:
            self.best, self.best_epoch, self.bad, self.plateau_bad = value, epoch, 0, 0
        else:
            self.bad, self.plateau_bad = self.bad + 1, self.plateau_bad + 1
        return better

    def _beats(self, value: float, best: float) -> bool:
        # NOTE: a tie is no improvement. The value is a mean of float32 per-batch numbers, so
        # two epochs with the same 47 of 60 rows right gave val_acc 0.78333332538 and
        # 0.78333332836 (and other digits again on 2 ranks): which epoch was "best", and
        # whether plateau lowered the rate, followed rounding noise, and 1 and N processes kept
        # different best.npz. Only a change beyond float32 rounding counts.
        margin = TIE_TOLERANCE * max(abs(value), abs(best))
        return value < best - margin if self.mode == "min" else value > best + margin

    def state(self) -> dict:
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best,
                "best_epoch": self.best_epoch, "bad": self.bad, "plateau_bad": self.plateau_bad}

    def summary(self) -> dict | None:
        return None if self.best is None else {"monitor": self.monitor, "mode": self.mode,
                                               "value": self.best, "epoch": self.best_epoch}


def check_watch(program, cfg, val: dict, spans: dict | None = None) -> None:
    """early_stop and the plateau schedule need validation data and a monitor the model
    computes: clear errors at the setting that asks for them (`spans`: the --set values',
    `Given.spans`)."""
    from nnlang.frontend.train_config import mode_problem, monitor_problem
    users = [n for n, on in (("early_stop", cfg.early_stop),
                             ("schedule", cfg.schedule and cfg.schedule.name == "plateau"),
                             ("monitor", cfg.monitor))
             if on]
    if not users:
        return
    monitor = cfg.watched(program.graph)[0]
    # NOTE: the file's line only for the file's own value: `--set monitor=val_foo` over a file's
    # valid `monitor = "val_kl"` was put under that line, as if val_kl named nothing
    file_says = getattr(program.train, "monitor", None)
    span = setting_span(program, "monitor") if cfg.monitor == file_says else None
    given = "" if span is not None or cfg.monitor is None else " (given by --set monitor=...)"
    span = span or given_span(spans or {}, "monitor")
    if unknown := monitor_problem(monitor, program.graph, given):   # NOTE: --set monitor=...
        raise NNError(unknown[0], span, hint=unknown[1])
    # NOTE: here, not where the file is read: `--set mode=min` answers it as well
    if unclear := mode_problem(monitor, cfg.mode, program.graph, given):
        raise NNError(unclear[0], span, hint=unclear[1])
    # NOTE: a training value needs no val data. A validation value without it is located
    # where it came from: the user's monitor (its line, or the --set flag), which early_stop
    # on another line only follows, else (the default val_loss) the setting that watches it.
    # A monitor alone (best.npz's) asked for a value that never comes, so it is refused too
    if not val and monitor.startswith("val_"):
        what = {"early_stop": "early_stop", "schedule": "the plateau schedule",
                "monitor": "best.npz"}[users[0]]
        if cfg.monitor is not None:
            message, where = f"{what} watches monitor = {monitor!r}{given}", span
        else:
            # NOTE: a --set value is located at its flag, as --set monitor's is; the file's
            # line only when the file gave it (a --set over it replaced it)
            name = users[0]
            said = "" if getattr(program.train, name, None) == getattr(cfg, name) else \
                f" (given by --set {name}=...)"
            message = f"{what}{said} watches {monitor}"
            where = given_span(spans or {}, name) if said else setting_span(program, name)
        raise NNError(f"{message}, but this run has no validation data", where,
                      hint="set val_split (e.g. val_split = 0.2), or give val_* arrays in the "
                           f'.npz; or watch a training value (monitor = "train_{monitor[4:]}")')


# how often the training loop reads the steps' losses (for the progress bar and the guard)
READ_EVERY_S = 0.2
READ_EVERY_STEPS = 50


@dataclass
class _Position:
    """Where the loop is: the epoch, its steps done, their running sums, and the data-order RNG
    state the epoch began with. Changed together, so a checkpoint always sees a whole one."""
    epoch: int
    done: int
    sums: _Sums
    rng_state: dict
    ended: bool = False   # the epoch's validation, watch and end-of-epoch checkpoint are done


def fit(program_or_path, config=None, data=None, *, backend: str = "numba",
        overrides: dict | None = None, model: str | None = None, data_dir=None, out=None,
        resume=False, max_steps: int | None = None, save: bool = True, progress: bool = True,
        console: Console | None = None, runs_root="runs", init_from=None,
        init_skip_mismatch: bool = False, initial_epoch: int | None = None) -> History:
    """Trains a model (a .nn path, source text, `Program`, or a `Net` to train on) and returns
    a `History`.

    config: a TrainConfig replacing the train section, or a dict of overrides (epochs, batch,
        lr, seed, val_split, clip_norm, l2, optimizer options, data).
    data: a `Dataset`, a name/path spec replacing the train section's `data`, or a dict of
        arrays named as a .npz's ({"x": x, "y": y}; train_/val_/test_ prefixes split them).
    overrides: `--set` values: model hyper-parameters (or train settings when not one).
    out: the run directory (default runs/<model>-<stamp>/); save=False writes none.
    resume: True to continue the run in `out` (or the newest runs/<model>-*), or a path to a
        run directory or checkpoint. The checkpoint's config and overrides are the base; new
        flags apply on top (e.g. more epochs).
    init_from: a run directory or checkpoint whose weights (by name and shape) start this new
        run (see `nnlang.train.init_from`); init_skip_mismatch keeps fresh those of another shape.
    A `Net` (the History's `net`, `nnlang.restore`'s, `nnlang.compile`'s) trains on in place, as
        Keras's `model.fit` called again: from its weights, optimizer state, step and epoch, and
        (a net a fit or `restore` left) the data order and partial epoch where that run stopped,
        so 1 epoch and then `fit(net, {"epochs": 1})` gives what one 2-epoch fit (or a --resume)
        does (a schedule over the run's steps, as cosine, decays over this call's total, as a
        --resume with more epochs does). `epochs` counts the epochs to run now, unless
        `initial_epoch` (the net's epochs so far) is given: then it is the total to reach.
        Only the loop's settings (epochs, data, batch, val_split, early_stop, monitor, mode)
        may change; the rest is compiled into the net. Inside an epoch data and batch stay
        the epoch's; val_split stays what a fit of the net held out (else it would validate
        on examples it trained on).
        Its run directory is a new one (or `out`); the History's rows are this call's epochs.
        Early stopping and the plateau schedule count from this call's start, as Keras's
        callbacks reset at each fit: the best value and the epochs without improvement start
        over (the lr a plateau lowered stays lowered), so a net whose run stopped early trains
        again. A --resume (fit(path, resume=...)) goes on with its run's count instead.
    All randomness comes from the config's seed: the same seed gives the same numbers.
    """
    return _Training.setup(program_or_path, config, data, backend=backend, overrides=overrides,
                           model=model, data_dir=data_dir, out=out, resume=resume,
                           max_steps=max_steps, save=save, progress=progress,
                           console=console or default_console(), runs_root=runs_root,
                           init_from=init_from, init_skip_mismatch=init_skip_mismatch,
                           initial_epoch=initial_epoch).run()


class _Training:
    """One call of `fit` as named steps: `setup` (settings, data, run directory, net, resumed
    state), then `run`: `train_epoch` and `end_epoch` (validation, log, checkpoint) per epoch,
    `interrupted` on Ctrl-C, `finish` (test set, summary)."""

    @classmethod
    def setup(cls, program_or_path, config, data, *, backend, overrides, model, data_dir, out,
              resume, max_steps, save, progress, console, runs_root, init_from=None,
              init_skip_mismatch=False, initial_epoch=None) -> "_Training":
        from nnlang.runtime.net import Net, check_backend
        given = program_or_path if isinstance(program_or_path, Net) else None
        if given is not None:
            backend = given.backend
        check_backend(backend)
        # NOTE: save="no" or progress="no" is truthy, and an int for a folder failed deep in
        # pathlib (out=3 a TypeError) or was never read (data_dir with data given as arrays)
        save, progress = as_bool(save, "fit(save=...)"), as_bool(progress, "fit(progress=...)")
        init_skip_mismatch = as_bool(init_skip_mismatch, "fit(init_skip_mismatch=...)")
        if isinstance(resume, (bool, np.bool_)):
            resume = bool(resume)
        elif resume is not None:
            as_path(resume, "fit(resume=...)", "True to continue the newest run, or a run "
                    "directory or checkpoint")
        for what, value in (("data_dir", data_dir), ("out", out), ("runs_root", runs_root)):
            if value is not None:
                as_path(value, f"fit({what}=...)")
        ranks = Ranks.join(backend)  # NOTE: rank 0 alone prints and writes the run directory
        console, save = ranks.console(console), save and ranks.lead
        if isinstance(config, dict):
            data = config.get("data") if data is None else data
            config = {k: v for k, v in config.items() if k != "data"}
        if init_from is not None and resume:
            # NOTE: before the resumed run is looked for, whose absence would hide the conflict
            raise NNError(said_as("--init-from", "init_from") + " starts a new run from "
                          "another run's weights, " + said_as("--resume", "resume") +
                          " continues a run: pass one of them")
        if given is not None:
            _continuing(given, overrides, model, resume, init_from, initial_epoch)
            find_checkpoint(given.program, config, None, None, out, False, runs_root)
            ckpt = checkpoint.Checkpoint(given.state_dict(), _loop_state(given))
            # NOTE: with no epochs given, a net trains the train section's epochs more (the
            # base's own is the total its last fit reached)
            ckpt.meta["config"]["epochs"] = (given.program.train or given.config).epochs
            program_or_path = given.program
        else:
            if initial_epoch is not None:
                raise NNError("fit(initial_epoch=...) applies to a Net that trains on (its "
                              "epochs so far); a model trains from epoch 0",
                              hint="pass the Net (history.net) to fit, or leave initial_epoch "
                                   "out; fit(..., resume=RUN) continues a saved run")
            ckpt = find_checkpoint(program_or_path, config, overrides, model, out, resume,
                                   runs_root)
        program, cfg, source, file, hp = resolve(
            program_or_path, config, overrides,
            model if model is not None else (ckpt.meta["model"] if ckpt else None),
            base=ckpt.config if ckpt else None,
            base_overrides=ckpt.meta.get("overrides") if ckpt else None)
        # NOTE: an error loading the data is at --set data=..., when that named it
        spans = getattr(overrides, "spans", {})
        data_at = spans if data is None else {}
        if data is not None and "data" in (overrides or {}) and "data" not in hp:
            # NOTE: as any setting given twice (overrides.resolve): --data won silently
            said, other = (data if isinstance(data, (str, Path)) else "(arrays)",
                           overrides["data"])
            other = other if isinstance(other, str) else show_value(other)
            raise NNError("train setting 'data' is given twice: " + said_as(
                              f"--data {said} and --set data={other}",
                              f"fit(data={said}) and overrides={{'data': {other!r}}}"),
                          given_span(spans, "data"),
                          hint="give it once: " + said_as("--data VALUE, or --set data=VALUE",
                                                          "fit's data=, or its config's "
                                                          "'data'"))
        if init_from is not None and "init_from" in (overrides or {}) and "init_from" not in hp:
            # NOTE: as --data with --set data=...: --init-from won silently
            raise NNError("train setting 'init_from' is given twice: " + said_as(
                              f"--init-from {init_from} and --set init_from="
                              f"{overrides['init_from']}",
                              f"fit(init_from={init_from!r}) and overrides={{'init_from': "
                              f"{overrides['init_from']!r}}}"),
                          given_span(spans, "init_from"),
                          hint="give it once: " + said_as("--init-from RUN, or --set "
                                                          "init_from=RUN", "fit's init_from=, "
                                                          "or its overrides' 'init_from'"))
        if data is not None and isinstance(data, (str, Path)):
            # NOTE: before the resume is described, so a changed data set is said like the rest
            cfg = replace(cfg, data=feeds.replace_data(cfg.data, str(data)))
            data = None
        for warning in program.warnings:
            say(console, warning.render())
        if given is not None:
            cfg = _more_epochs(ckpt, cfg, initial_epoch)
            say(console, f"training the net on from epoch {ckpt.epoch} (global step "
                         f"{ckpt.step}) to epoch {cfg.epochs}")
        elif ckpt is not None:
            describe_resume(console, ckpt, cfg, hp, picked=resume is True and out is None)
        if ckpt and ckpt.trained_on_other_source(source):
            say(console, f"note: {file} differs from the source this checkpoint was trained "
                         "with")
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(
                max_steps, (int, np.integer)) or max_steps < 1):
            # NOTE: a str ("3") was a TypeError from the comparison
            raise NNError(f"--max-steps (max_steps=) is a whole number of at least 1, not "
                          f"{max_steps!r}")
        with given_at(spans if init_from is None else {}, "init_from"):
            words, start = (trained_words(ckpt.data_meta), ckpt) if ckpt else \
                words_to_start_from(program, cfg, init_from, False, file)
        if given is not None and "data" not in ckpt.meta:
            start = None   # NOTE: a net no run trained: its data is this call's, as a new run's
        with given_at(data_at, "data"):
            cfg, ds, mapping, splits = _data(program, cfg, data, data_dir, file, words)
        if start is not None:
            note = checkpoint.check_encoding(start.path, start.meta, ds, "train it on in "
                                             "Python (nnlang.restore, net.train_step)")
            if note:
                say(console, note)
        if cfg.val_split > 0 and ds.val is not None and len(ds.val):
            say(console, f"note: data set '{ds.name}' has its own validation split "
                         f"({len(ds.val)} examples), which is used instead of val_split = "
                         f"{cfg.val_split:g}")
        check_watch(program, cfg, splits[1], spans)
        ranks.same_settings({
            "model": [program.model, source if source is not None else file],
            "hyper-parameters": hp,
            "train settings": checkpoint.config_to_dict(cfg), "backend": backend,
            "max_steps": max_steps, "resumed checkpoint": ckpt and [ckpt.epoch, ckpt.step],
            "data": lambda: ranks.digest(splits)})
        # NOTE: before the run directory is made; located when the batch is the file's
        local_batch = ranks.batch(cfg.batch, setting_span(program, "batch") if
                                  program.train and program.train.batch == cfg.batch else None)
        self = cls()
        self.console, self.backend, self.max_steps = console, backend, max_steps
        self.local_batch = local_batch   # NOTE: a fit(net) of another batch compiles it here
        self.continuing = given is not None
        self.ranks = ranks
        self.program, self.cfg, self.source, self.file, self.hp = program, cfg, source, file, hp
        self.ds, self.mapping = ds, mapping
        self.train, self.val, self.test = splits
        self.n = feeds.length(self.train)
        self.per_epoch = self._steps_per_epoch()
        # NOTE: before the compile: a run that cannot be saved fails now, not after a minute
        self.run_dir = None
        fresh_dir = ckpt is None or ckpt.path is None   # NOTE: a Net's run writes a new one
        made = save and fresh_dir and not (out is not None and Path(out).exists())
        if save:
            self.run_dir = RunDir.create(program.model, out, runs_root) if fresh_dir else \
                RunDir(ckpt.path.parent)
        # NOTE: a Net's fit refused below leaves the net as it was (its schedule's total)
        kept = (given.total_steps, given.lengths) if given is not None else None
        try:
            # NOTE: a resumed float64 net (`nnlang.save` of one) trains on in float64
            if given is not None:
                if given.steps_per_epoch not in (None, self.per_epoch):
                    raise NNError(f"fit(net): the net counts an epoch every "
                                  f"{given.steps_per_epoch} steps (compiled with "
                                  f"steps_per_epoch), and an epoch of this data at batch "
                                  f"{cfg.batch} is {self.per_epoch} steps",
                                  hint=f"compile it with steps_per_epoch={self.per_epoch}, or "
                                       "without (fit counts the epochs)")
                self.net = given
                given.total_steps = cfg.epochs * self.per_epoch   # NOTE: as a resume's net
            else:
                self.net = Net(program, backend=backend, batch=local_batch, seed=cfg.seed,
                               config=cfg, total_steps=cfg.epochs * self.per_epoch,
                               dtype=ckpt.meta.get("dtype", "float32") if ckpt else None)
            # NOTE: the step compiled before the first epoch runs at the data's length
            self.net.lengths = feeds.data_lengths(program.graph, (ds.train, ds.val, ds.test),
                                                  mapping, self.net.lengths)
            # NOTE: Open MPI gives each rank a terminal even when mpirun's output goes to a
            # file, so a data-parallel run prints lines, not live bars
            self.show = progress and live(console) and not ranks.many
            self.lines = progress and not self.show
            self.progress = progress
            self._restore(ckpt)
            self.cfg, self.init_report = start_run(self.net, cfg, init_from,
                                                   init_skip_mismatch, ckpt is not None, file,
                                                   console)
            if ranks.many:
                # NOTE: a loss the ranks cannot average ends the run before it writes anything;
                # compiling the check's evaluations is untimed, as the step's
                ranks.means_over_rows(self.net, next(feeds.batches(self.train, cfg.batch)),
                                      lambda text: say(console, text))
                ranks.compiled()
            ranks.same_start(self.net)
            self._write_config(ckpt)
        except BaseException:
            if kept is not None:
                given.total_steps, given.lengths = kept
            # NOTE: a run that could not start (a bad --init-from) leaves no empty folder
            if self.run_dir is not None:
                self.run_dir.release()
            if made and not any(self.run_dir.path.iterdir()):
                self.run_dir.path.rmdir()
            raise
        return self

    def _steps_per_epoch(self) -> int:
        per_epoch = self.n // self.cfg.batch
        if self.n == 0:
            raise NNError("the data set holds no training examples",
                          hint="check the file's train rows (or train_* arrays)")
        if per_epoch == 0:
            some = "1 training example does" if self.n == 1 else \
                f"{self.n} training examples do"
            raise NNError(f"{some} not fill one batch of {self.cfg.batch}",
                          hint=said_as("lower --batch, or --val-split",
                                       'lower fit\'s {"batch": ...}, or its val_split'))
        if self.n % self.cfg.batch:
            say(self.console, f"note: the training step is compiled for batch {self.cfg.batch}"
                              f", so each epoch drops the last {self.n % self.cfg.batch} of "
                              f"{self.n} shuffled examples")
        return per_epoch

    def _restore(self, ckpt) -> None:
        """The loop's starting point: a fresh run, or the checkpoint's state, step, data order,
        partial epoch and divergence baseline."""
        self.rng = feeds.order_rng(self.cfg.seed)
        self.start_epoch, self.skip, partial = 0, 0, None
        self.guard = DivergenceGuard(clip_norm=self.cfg.clip_norm, net=self.continuing)
        self.watch = _Watch(self.cfg, self.program.graph)
        if ckpt is not None:
            try:
                ckpt.load_into(self.net)
            except NNError as err:   # NOTE: as eval and predict say it: which file
                raise NNError(f"{ckpt.path} does not fit model '{self.program.model}': "
                              f"{err.message}", hint=err.hint) from None
            # NOTE: a Net's fit starts its watch over, as Keras's EarlyStopping and
            # ReduceLROnPlateau do at each fit's start (wait 0, no best): a net whose run stopped
            # early trains again; a --resume goes on with its run's count
            self.watch = _Watch(self.cfg, self.program.graph,
                                None if self.continuing else ckpt.meta.get("watch"))
            self.rng.bit_generator.state = ckpt.meta["rng_state"]
            self.start_epoch, self.skip = ckpt.epoch, ckpt.meta.get("step_in_epoch", 0)
            partial = ckpt.meta.get("partial")
            self.guard = DivergenceGuard(ckpt.meta.get("loss_start"), self.cfg.clip_norm,
                                         self.continuing)
            if self.skip and ckpt.config.batch != self.cfg.batch and self.continuing:
                raise NNError(f"the net stopped inside an epoch at batch {ckpt.config.batch}; "
                              f"fit(net) finishes that epoch at it, not {self.cfg.batch}",
                              hint="leave batch out to finish the epoch first (max_steps ends "
                                   "a fit there), then fit at the new batch")
            if self.skip and ckpt.config.batch != self.cfg.batch:
                raise NNError(f"this checkpoint stopped inside an epoch at batch "
                              f"{ckpt.config.batch}; resume it with the same batch size, not "
                              f"{self.cfg.batch}")
            if ckpt.path is not None or "data" in ckpt.meta:
                # NOTE: a net no fit trained (nnlang.compile's) held nothing out yet
                _same_held_out(ckpt.config, self.cfg, self.ds, bool(self.skip),
                               self.continuing)
            if self.skip and ckpt.meta.get("train_digest") not in \
                    (None, Ranks.digest([self.train])[0]):
                raise NNError(f"this checkpoint stopped inside an epoch (step {self.skip}) of "
                              f"training data that has changed since ({ckpt.meta.get('train_rows')}"
                              f" training examples then, {self.n} now); the rest of the epoch "
                              "would go over other rows",
                              hint="restore the data the run was trained on, or start a new run "
                                   "from these weights with " + said_as("--init-from",
                                                                        "fit(init_from=...)"))
        self.pos = _Position(self.start_epoch, self.skip, _Sums(partial, _divided(self.net.user)),
                             self.rng.bit_generator.state)
        graph = self.program.graph
        if lost := self.pos.sums.missing(["loss", *named_losses(graph.losses), *graph.metrics]):
            # NOTE: an older nnlang's checkpoint (the step reported no named losses), or one
            # of the model before it had these values
            say(self.console, f"note: {ckpt.path} stopped inside epoch {self.start_epoch + 1} "
                              f"without the running sums of {', '.join(lost)} (an older "
                              f"nnlang's checkpoint, or an older version of the model): that "
                              f"epoch's row leaves out {', '.join('train_' + k for k in lost)}")
        rows = self.run_dir.rows() if self.run_dir else []
        self.history = History(rows=rows, run_dir=self.run_dir.path if self.run_dir else None,
                               net=self.net, best=self.watch.summary())

    def _write_config(self, ckpt) -> None:
        ds, cfg = self.ds, self.cfg
        self.data_info = {"name": ds.name, "choice": asdict(cfg.data) if cfg.data else None,
                          "inputs": ds.inputs, "targets": ds.targets, "feeds": self.mapping,
                          "meta": feeds.predict_meta(ds.meta)}
        if self.run_dir is None:
            return
        self.run_dir.drop_stale_temps()
        if ckpt is None or ckpt.path is None:
            # NOTE: a best.npz of an earlier run in this folder is not this run's
            self.run_dir.best.unlink(missing_ok=True)
        # NOTE: a fresh run starts empty; a resumed one drops the rows past its checkpoint
        self.run_dir.keep_rows(self.start_epoch)
        self.history.rows = self.run_dir.rows()
        self.run_dir.write_json("config.json", {
            "model": self.program.model, "file": self.file, "hparams": self.program.hparams,
            "overrides": self.hp, "train": checkpoint.config_to_dict(cfg),
            "backend": self.backend,
            "dataset": {"name": ds.name, "options": cfg.data.options if cfg.data else {},
                        "train": self.n, "val": feeds.length(self.val),
                        "test": feeds.length(self.test), "feeds": self.mapping,
                        "meta": small_meta(ds.meta)},
            "resumed_from": str(ckpt.path) if ckpt and ckpt.path else None})

    def save(self, epoch: int, step_in_epoch: int, rng_state: dict, sums: _Sums | None,
             path=None):
        """The checkpoint (or `path`) of the state after `step_in_epoch` steps of `epoch` (None:
        no run directory)."""
        # NOTE: checked on every rank (only the first has a run directory), so all stop together
        state = self.net.state_dict()
        self.guard.check_state(state, self.pos.epoch, self.pos.done, self.net.step, self.run_dir)
        if self.run_dir is None:
            return None
        return checkpoint.save(path or self.run_dir.checkpoint, state,
                               self.meta(epoch, step_in_epoch, rng_state, sums))

    def meta(self, epoch: int, step_in_epoch: int, rng_state: dict, sums: _Sums | None) -> dict:
        """A checkpoint's meta: where the loop is after `step_in_epoch` steps of `epoch`."""
        net = self.net
        meta = {"model": self.program.model, "file": self.file, "source": self.source,
                "overrides": self.hp, "hparams": self.program.hparams,
                "config": checkpoint.config_to_dict(self.cfg), "backend": self.backend,
                "dtype": net.dtype, "epoch": epoch, "step_in_epoch": step_in_epoch,
                "step": net.step, "total_steps": net.total_steps, "rng_state": rng_state,
                "partial": sums.state() if sums else None, "data": self.data_info,
                "loss_start": self.guard.start, "lr_scale": net.lr_scale,
                "watch": self.watch.state(), "best": self.watch.summary()}
        if step_in_epoch:
            # NOTE: only a checkpoint inside an epoch needs it (a resume goes on with that
            # epoch's permutation of these rows), so a run that saves at epoch ends hashes nothing
            meta["train_digest"], meta["train_rows"] = Ranks.digest([self.train])[0], self.n
        return meta

    def keep_place(self) -> None:
        """The loop's place on the net, so `fit(net)` goes on from here (as `interrupted`
        saves it: after the epoch's end once it ended, else inside the epoch)."""
        pos = self.pos
        if self.net.step != self.step_at_start + len(self.history.losses):
            # NOTE: an error left steps the loop never counted (the guard stopped reading in
            # the middle of a read): no place of the loop is this net's, so a fit(net) goes on
            # as after train_step calls, from the net's epoch with a new data order
            self.net.loop_state = None
            return
        at = (pos.epoch + 1, 0, self.rng.bit_generator.state, None) if pos.ended else \
            (pos.epoch, pos.done, pos.rng_state, pos.sums)
        self.net.loop_state = copy.deepcopy(self.meta(*at))

    # *** the loop ***
    def run(self) -> History:
        self._undo_hangup = None
        self._stop_agreed = False   # the ranks' answer at the last read (`_take`)
        self.step_at_start = self.net.step   # NOTE: with the losses taken, the steps counted
        try:
            return self._run()
        finally:
            self.keep_place()
            if self.run_dir is not None:
                self.run_dir.release()
            if self._undo_hangup is not None:
                self._undo_hangup()

    def _hung_up(self) -> None:
        """SIGHUP (in its handler): the console's writes to a terminal that is gone fail."""
        if self._undo_hangup is None:
            self._undo_hangup = outlive_terminal(self.console)

    def _run(self) -> History:
        cfg, watch = self.cfg, self.watch
        end = cfg.epochs
        if self.start_epoch >= cfg.epochs:
            say(self.console, f"nothing to train: the net has {self.start_epoch} of "
                              f"{cfg.epochs} epochs (a larger epochs with initial_epoch, or "
                              "none, trains more)" if self.continuing else
                              f"nothing to train: the checkpoint has {self.start_epoch} of "
                              f"{cfg.epochs} epochs (pass " + said_as("--epochs", "a larger "
                                                                      "epochs") + " to train more)")
        elif cfg.early_stop and watch.bad >= cfg.early_stop:   # NOTE: a resumed run that had
            end, self.history.stopped = self.start_epoch, "early_stop"   # stopped early (a
            # Net's fit starts its watch over, `_restore`)
            say(self.console, f"nothing to train: the run stopped early after epoch "
                              f"{self.start_epoch} ({watch.monitor} had not improved for "
                              f"{watch.bad} epoch(s); best {watch.best:.4f} at epoch "
                              f"{watch.best_epoch}); pass "
                              + said_as("--set early_stop=N", "{'early_stop': N}")
                              + f" with N > {watch.bad} to train on")
        elif self.max_steps is not None and self.net.step >= self.max_steps:
            end, self.history.stopped = self.start_epoch, "max_steps"
            # NOTE: a fit(net) has no checkpoint or flags: its words are the net's and fit's
            say(self.console, f"nothing to train: the net is at step {self.net.step}, "
                              f"max_steps {self.max_steps} (a larger one trains more)"
                              if self.continuing else
                              f"nothing to train: the checkpoint is at step {self.net.step}, "
                              + said_as("--max-steps", "max_steps")
                              + f" {self.max_steps} (pass a larger one to train more)")
        with Interrupts(deferred=self.ranks.many, on_hangup=self._hung_up) as interrupts:
            try:
                if self.start_epoch < end:
                    with interrupts.immediate():
                        _compile(self.net, self.local_batch, self.console, self.progress)
                    self.ranks.compiled()
                for epoch in range(self.start_epoch, end):
                    seen, wall = self.train_epoch(epoch, interrupts)
                    self.end_epoch(seen, wall, interrupts)
                    # NOTE: every rank stops here, or none (a Ctrl-C during the validation),
                    # on what they agreed: a signal that lands after the agreement waits for
                    # the next one (acted on here, this rank alone would stop: `_take`)
                    self._agreed(interrupts, self.ranks.stop(_asked(interrupts)))
                    interrupts.check()
                    if self.history.stopped:
                        break
            except KeyboardInterrupt:
                interrupts.hold()
                return self.interrupted(interrupts.signal)
        if self.history.stopped == "max_steps" and self.start_epoch < end:
            # NOTE: else the last epoch line reads as a whole epoch of a finished run
            pos = self.pos
            at = f"after epoch {pos.epoch + 1} of {self.cfg.epochs}" if pos.ended else \
                f"at epoch {pos.epoch + 1}, step {pos.done} of {self.per_epoch}"
            say(self.console, f"stopped by max_steps {self.max_steps} {at} (global step "
                              f"{self.net.step}); fit(net) with a larger max_steps, or none, "
                              "trains on" if self.continuing else
                              f"stopped by {said_as('--max-steps', 'max_steps')} "
                              f"{self.max_steps} {at} (global step {self.net.step}); "
                              + said_as("--resume with a larger --max-steps",
                                        "fit(..., resume=RUN) with a larger max_steps")
                              + ", or none, trains on")
        return self.finish()

    def train_epoch(self, epoch: int, interrupts: Interrupts) -> tuple[int, float]:
        """Runs the epoch's steps (from where a resumed epoch stopped); returns the examples
        trained on and the wall time."""
        cfg, net = self.cfg, self.net
        if epoch > self.start_epoch or not self.skip:
            self.pos = _Position(epoch, 0, _Sums(terms=_divided(net.user)),
                                 self.rng.bit_generator.state)
        pos = self.pos
        order = feeds.epoch_order(self.train, cfg.batch, self.rng)
        signal_at = test_signal() if self.ranks.signals_here() else None
        many = self.ranks.many
        t0, seen, start_done = time.perf_counter(), 0, pos.done
        columns = (TextColumn(f"epoch {epoch + 1}/{cfg.epochs}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                   TimeRemainingColumn())
        with Progress(*columns, console=self.console, disable=not self.show) as bar:
            task = bar.add_task("train", total=self.per_epoch, completed=pos.done, stats="")
            unread, read_at, line_at = 0, time.perf_counter(), time.perf_counter()
            for b in feeds.batches(self.train, cfg.batch, order, start=pos.done):
                # NOTE: overflow warnings are noise here; a non-finite loss is the report
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    net.train_step(self.ranks.shard(b), fetch=False)
                unread += 1
                if signal_at and net.step == signal_at[0]:
                    os.kill(os.getpid(), signal_at[1])
                stop = self.max_steps is not None and net.step >= self.max_steps
                # NOTE: reading a step's loss waits for it; on a GPU the steps in between
                # queue up without waiting (a few per progress refresh, all at the end).
                # Ranks read together (an allreduce), so only at steps all of them count
                read = stop or pos.done + unread == self.per_epoch or unread == READ_EVERY_STEPS
                if read or not many and (time.perf_counter() - read_at >= READ_EVERY_S
                                         or interrupts.requested):
                    self._take(check=True, interrupts=interrupts)
                    unread, read_at = 0, time.perf_counter()
                    seen = (pos.done - start_done) * cfg.batch
                    stats = f"{fmt(pos.sums.means())}  " \
                            f"{seen / max(read_at - t0, 1e-9):,.0f} samples/s"
                    bar.update(task, completed=pos.done, stats=stats)
                    if self.lines and read_at - line_at >= LINE_EVERY_S:
                        say(self.console, f"epoch {epoch + 1}/{cfg.epochs}  step {pos.done}/"
                                          f"{self.per_epoch}  {stats}")
                        line_at = read_at
                if not many:
                    interrupts.check()
                elif read and self._stop_agreed:   # NOTE: ranks stop at the same step
                    raise KeyboardInterrupt
                if stop:
                    # NOTE: at the run's own last step, --max-steps cut nothing short
                    last = epoch + 1 == cfg.epochs and pos.done == self.per_epoch
                    self.history.stopped = None if last else "max_steps"
                    break
        return seen, time.perf_counter() - t0

    def end_epoch(self, seen: int, wall: float, interrupts: Interrupts) -> None:
        """Validation, the epoch's row (printed and logged) and its checkpoint."""
        cfg, net, pos, history = self.cfg, self.net, self.pos, self.history
        signal_at = test_signal() if self.ranks.signals_here() else None
        if signal_at and signal_at[0] == "val" and pos.epoch == 0:
            os.kill(os.getpid(), signal_at[1])
        with interrupts.immediate():
            val_res = evaluate(net, self.val, cfg.batch, self.console if self.progress
                               else None, self.ranks, "validation", header=False) \
                if self.val else None
        row = {"epoch": pos.epoch + 1, "step": net.step,
               **{f"train_{k}": v for k, v in pos.sums.means().items()},
               **{f"val_{k}": v for k, v in (val_res or {}).items()},
               "lr": net.learning_rate(max(net.step - 1, 0)),
               # NOTE: a run resumed at its epoch's last step trains none of it here: its
               # throughput is unknown (null), not 0 samples/s as if training had stalled
               "samples_per_s": seen / max(wall, 1e-9) if seen else None, "time": wall}
        history.rows.append(row)
        history.val = val_res
        speed = f"{row['samples_per_s']:,.0f} samples/s  {wall:.1f}s" if seen else \
            "no steps left (resumed at the epoch's end)"
        say(self.console, f"epoch {pos.epoch + 1}/{cfg.epochs}  {fmt(pos.sums.means())}"
                          + (f"  | val {fmt(val_res)}" if val_res else "") + f"  | {speed}")
        self.guard.settle(self.run_dir)  # NOTE: an exploded state is never saved
        if self.run_dir is not None:
            self.run_dir.log(row)
        if pos.done < self.per_epoch:  # stopped by max_steps inside the epoch
            self.save(pos.epoch, pos.done, pos.rng_state, pos.sums)
            return
        self.watch_epoch(val_res, pos.sums.means())
        if not net.steps_per_epoch:   # NOTE: a fit(net) of a net that counts them itself
            net.end_epoch()
        self.save(pos.epoch + 1, 0, self.rng.bit_generator.state, None)
        pos.ended = True

    def watch_epoch(self, val_res: dict | None, train_res: dict) -> None:
        """After a whole epoch (its validation results and training means): best.npz when the
        monitored value improved, the plateau schedule's reduction, and early stopping."""
        from nnlang.frontend.train_config import watched_value
        cfg, net, watch = self.cfg, self.net, self.watch
        epoch = self.pos.epoch + 1
        value = watched_value(watch.monitor, val_res, train_res)
        if value is None:
            return  # NOTE: only a run with early_stop or plateau checked the monitor's name
        if watch.update(value, epoch):
            self.history.best = watch.summary()
            self.save(epoch, 0, self.rng.bit_generator.state, None,
                      path=self.run_dir.best if self.run_dir else None)
        schedule = cfg.schedule
        if schedule and schedule.name == "plateau" \
                and watch.plateau_bad >= schedule.options["patience"]:
            base = cfg.optimizer.options["lr"]
            net.lr_scale = plateau_scale(schedule, base, net.lr_scale)
            watch.plateau_bad = 0
            say(self.console, f"plateau: {watch.monitor} has not improved for "
                              f"{schedule.options['patience']} epoch(s); lr is now "
                              f"{net.learning_rate():.4g}")
        if cfg.early_stop and watch.bad >= cfg.early_stop:
            self.history.stopped = "early_stop"
            where = f"; its weights are in {self.run_dir.best}" if self.run_dir else ""
            say(self.console, f"early stop: {watch.monitor} has not improved for "
                              f"{watch.bad} epoch(s); best {watch.best:.4f} at epoch "
                              f"{watch.best_epoch}{where}")

    def _take(self, check: bool, interrupts: Interrupts | None = None) -> None:
        """Reads the losses and metrics of the steps run since the last read into the epoch's
        sums and step count (averaged over the ranks); with `check`, a diverged loss stops
        training."""
        pos, net = self.pos, self.net
        taken = net.fetch(divided=True)
        if check:
            taken, stop = self.ranks.agree(taken, _asked(interrupts))
            # NOTE: the rank stops on this answer, not on its own flag read later: a signal
            # (`pkill` reaches the ranks one after another) that landed after the agreement
            # stopped this rank alone, and the others waited in their next collective until
            # NNLANG_DIST_TIMEOUT (60 s), then ended with exit 1
            self._stop_agreed = stop is not None
            self._agreed(interrupts, stop)
        first = net.step - len(taken)
        for i, (loss, metrics) in enumerate(taken):
            if check:
                self.guard.check(loss, pos.epoch, pos.done, first + i + 1, self.run_dir)
            pos.sums.add(loss, metrics)
            self.history.losses.append(loss)
            pos.done += 1

    def _agreed(self, interrupts: Interrupts | None, stop) -> None:
        """The ranks' answer (`Ranks.agree`) taken as this rank's request: all stop by it."""
        if stop is not None and interrupts is not None:
            interrupts.requested, interrupts.signal = True, stop

    def interrupted(self, sig=signal.SIGINT) -> History:
        """Ctrl-C (or SIGTERM, SIGHUP) between whole steps: the steps run so far count (their
        updates are in the state, finite or not); the checkpoint describes exactly them."""
        self._take(check=False)
        pos = self.pos
        if pos.ended:
            # NOTE: a Ctrl-C during the epoch's end acts after it: the watch (early stopping,
            # plateau, best) has counted this epoch's validation, so only the end-of-epoch
            # checkpoint matches it; saved as mid-epoch, the resume counted that validation twice
            path = self.save(pos.epoch + 1, 0, self.rng.bit_generator.state, None)
            at = f"after epoch {pos.epoch + 1}"
        else:
            path = self.save(pos.epoch, pos.done, pos.rng_state, pos.sums)
            at = f"at epoch {pos.epoch + 1}, step {pos.done}"
        self.history.stopped = _STOPPED_BY[sig]
        self.ranks.world.barrier("saving the checkpoint")  # NOTE: no rank exits before it
        where = f"; checkpoint saved to {path}" if path else ""
        out = _said_on(self.console, sig)
        say(out, f"{_SAID[sig]} {at} (global step {self.net.step}){where}")
        if path:
            flag = f" --backend {self.backend}" if self.backend != "numba" else ""
            say(out, "resume with: " + said_as(
                f"nnlang train {self.file} --out {self.run_dir.path} --resume{flag}",
                f"fit({str(self.file)!r}, resume={str(self.run_dir.path)!r}"
                + (f", backend={self.backend!r}" if flag else "") + ")"))
        return self.history

    def finish(self) -> History:
        """The test set's results, summary.json, plots and the summary table."""
        history, run = self.history, self.run_dir
        history.val = history.val or _last(history.rows, "val")
        # NOTE: ranks evaluate to the end together: a Ctrl-C then is only recorded. The summary
        # and plots are inside too: SIGTERM there (no handler) ended the process without a word
        plotted, doing = [], "during the test evaluation"
        with Interrupts(deferred=self.ranks.many, on_hangup=self._hung_up) as interrupts:
            try:
                with interrupts.immediate():
                    history.test = evaluate(self.net, self.test, self.cfg.batch,
                                            self.console if self.progress else None,
                                            self.ranks, "test set", header=False) \
                        if self.test else None
                    if run is not None:
                        doing = "while writing the summary and plots"
                        run.write_json("summary.json", {
                            "epochs": len(history.rows), "step": self.net.step,
                            "stopped": history.stopped, "best": history.best,
                            "train": _last(history.rows, "train"), "val": history.val,
                            "test": history.test})
                        plotted = _plots(run)
            except KeyboardInterrupt:
                # NOTE: training is complete and saved; only the test numbers (or the summary
                # and plots, which a --resume writes) are missing
                history.stopped = _STOPPED_BY[interrupts.signal]
                say(_said_on(self.console, interrupts.signal),
                    f"{_SAID[interrupts.signal]} {doing}; training finished"
                    + (f" and is saved in {run.checkpoint}" if run else ""))
                return history
        if plotted is None:
            say(self.console, PLOT_HINT)
        self.console.print(summary_table(history))
        if run is not None:
            say(self.console, f"run directory: {run.path}")
        return history


def _plots(run: RunDir) -> list | None:
    """The run's pngs, or [] with a warning when they cannot be written: the plots are a view
    of metrics.jsonl, drawn after training finished and was saved, so a failure there (a full
    disk, a broken matplotlib or font) ended a finished run with an error and exit code 1."""
    try:
        return run.plot()
    except Exception as err:   # NOTE: not KeyboardInterrupt: `finish` says that one
        why = err.message if isinstance(err, NNError) else f"{type(err).__name__}: {err}"
        then = err.hint if isinstance(err, NNError) and err.hint else \
            said_as("a --resume of the run draws them again", "history.plot() draws them")
        warn(f"the plots were not written: {why}", hint=f"training finished and is saved in "
             f"{run.path} (the curves' numbers in metrics.jsonl); {then}")
        return []


def _continuing(net, overrides, model, resume, init_from, initial_epoch) -> None:
    """What a `fit` of a Net cannot take: it is built already, and trains on from where it is."""
    for what, value, hint in (
            ("overrides", overrides, "pass them to nnlang.compile, which builds the net"),
            ("model", model, "the net is one model already"),
            ("resume", resume, "the net trains on from its own place; fit(path, resume=RUN) "
                               "continues a saved run"),
            ("init_from", init_from, "the net's weights are its own; nnlang.compile(..., "
                                     "init_from=RUN) starts a net from a run's")):
        if value:
            raise NNError(f"fit(net, {what}=...): a Net trains on from its own weights and "
                          f"settings; {what} applies when fit builds the net", hint=hint)
    if initial_epoch is not None and (isinstance(initial_epoch, bool) or not isinstance(
            initial_epoch, (int, np.integer)) or initial_epoch != net.epoch):
        raise NNError(f"fit(net, initial_epoch={initial_epoch!r}): the net has trained "
                      f"{net.epoch} epoch(s)", hint=f"pass initial_epoch={net.epoch} (then epochs "
                      "is the total to reach), or leave it out to run `epochs` more")


def _loop_state(net) -> dict:
    """A checkpoint's meta for a Net that trains on: where its last fit (or the restored run)
    stopped when the net is still there, else its step and epoch with a new data order."""
    state = net.loop_state
    if state is not None and state.get("step") == net.step and state.get("epoch") == net.epoch:
        return copy.deepcopy(state)
    # NOTE: trained by train_step since (or never by a fit): the data order starts over. The
    # net's batch and seed, which compile(batch=, seed=) may have set apart from the section's:
    # with the section's seed the loop carved and shuffled from another seed than the weights
    # and dropout drew from, and its run resumed with other dropout masks (as saved._meta)
    return {"model": net.program.model,
            "config": checkpoint.config_to_dict(replace(net.config, batch=net.batch,
                                                        seed=net.seed)),
            "dtype": net.dtype, "epoch": net.epoch, "step": net.step, "step_in_epoch": 0,
            "rng_state": feeds.order_rng(net.seed).bit_generator.state,
            "lr_scale": net.lr_scale}


# train settings that only the loop reads, which a Net's fit may change
_LOOP_SETTINGS = ("epochs", "data", "batch", "val_split", "early_stop", "monitor", "mode")


def _more_epochs(ckpt, cfg, initial_epoch):
    """The resolved settings of a Net's fit: `epochs` more than it has (the total, with
    `initial_epoch`); a compiled setting changed is refused."""
    compiled = replace(ckpt.config, epochs=cfg.epochs, init_from=cfg.init_from)
    for k in (f.name for f in fields(cfg)):
        if k not in _LOOP_SETTINGS and getattr(cfg, k) != getattr(compiled, k):
            raise NNError(f"fit(net): train setting '{k}' is compiled into the net "
                          f"({show_value(getattr(compiled, k))}), not "
                          f"{show_value(getattr(cfg, k))}",
                          hint="compile a net with it (nnlang.compile(model, ...), then "
                               "nnlang.save and fit(model, resume=...) to keep the weights), or "
                               "leave it out")
    return replace(cfg, epochs=cfg.epochs if initial_epoch is not None else
                   ckpt.epoch + cfg.epochs)


def _said_on(console: Console, sig) -> Console:
    """Where the word on why training stopped goes: stderr once stdout's reader is gone."""
    if sig == signal.SIGPIPE:
        return Console(file=sys.stderr, soft_wrap=True, highlight=False)
    return console


def _same_held_out(old, new, ds, inside_epoch: bool, net: bool = False) -> None:
    """A resumed run (a `net`'s fit) trains on the data it started with: another data set
    inside an epoch, or another validation carve (val_split, or the seed that draws it) at any
    point, would train on examples it validated or validate on examples it trained on."""
    if inside_epoch and old.data != new.data:
        names = [getattr(c.data, "name", "a Python data set") for c in (old, new)]
        if net:   # NOTE: a fit(net) has no checkpoint or --data: the net's words
            raise NNError(f"the net stopped inside an epoch on data {names[0]}; fit(net) "
                          f"goes on with that epoch's rows, not {names[1]}",
                          hint="leave data out to finish the epoch first (max_steps ends a "
                               "fit there), then fit on the new data")
        raise NNError(f"this checkpoint stopped inside an epoch on data {names[0]}; resume it "
                      f"on the same data, not {names[1]}", hint="resume without "
                      + said_as("--data", "data=") + ", or finish the epoch first and then "
                      "change it")
    if ds.val is not None and len(ds.val):
        return  # NOTE: the data set's own validation split does not depend on either
    if old.val_split != new.val_split or (new.val_split > 0 and old.seed != new.seed):
        if net:
            raise NNError(f"the net's fit held out val_split = {old.val_split:g} of its data "
                          f"(drawn by seed {old.seed}); val_split = {new.val_split:g} now "
                          "would validate on examples it trained on, or train on those it "
                          "validated on", hint=f"leave val_split out (it stays "
                                               f"{old.val_split:g}), or give the validation "
                                               "examples as the data set's own (.npz val_*)")
        raise NNError(f"this run held out val_split = {old.val_split:g} of its data, drawn by "
                      f"seed {old.seed}; resuming with val_split = {new.val_split:g}, seed "
                      f"{new.seed} would validate on examples it trained on",
                      hint="resume with the run's own " + said_as(
                          "--seed and --val-split, or start a new run from its weights with "
                          "--init-from", "seed and val_split, or start a new run from its "
                          "weights with fit(init_from=...)"))


def _arrays(data: dict):
    """The Dataset of `fit(data={name: array})`: the names as in a .npz (bare, or train_/val_/
    test_ prefixed; label/labels/y/target the targets), each a numeric array, one row per
    example."""
    from nnlang.data.npz import arrays_dataset
    arrays = {}
    for k, v in data.items():
        a = np.asarray(v)
        if not isinstance(k, str) or a.dtype.kind not in "biuf" or a.ndim == 0:
            raise NNError(f"fit(data=...): array {k!r} is {a.dtype} of shape {a.shape}; data "
                          "is {name: numeric array with one row per example}",
                          hint='e.g. data={"x": x, "y": y}, named as the model\'s inputs')
        arrays[k] = a
    return arrays_dataset(arrays, "fit(data=...)", "arrays")


def _data(program, cfg, data, data_dir, file, words=None):
    """(config, dataset, input mapping, (train, val, test) arrays ready for the model); text
    encoded with `words` when the run continues or starts from a checkpoint that has them."""
    if isinstance(data, dict):
        # NOTE: a dict of arrays (Keras' fit(x, y) habit) went on as a Dataset and failed
        # with "'dict' object has no attribute 'inputs'"; read as a .npz's arrays are
        ds = _arrays(data)
    elif data is not None and not isinstance(data, (str, Path)):
        ds = data
    else:
        if data is not None:
            cfg = replace(cfg, data=feeds.replace_data(cfg.data, str(data)))
        base_dir = Path(file).parent if file != "<string>" else None
        ds = feeds.load_data(cfg.data, data_dir, base_dir, words, program)
    mapping = feeds.match_inputs(program.graph, ds.inputs, ds.targets, f"dataset '{ds.name}'")
    train, val = feeds.train_and_val(program.graph, ds, mapping, cfg.val_split, cfg.seed)
    test = feeds.model_arrays(program.graph, ds.test.arrays, mapping) if len(ds.test) else {}
    feeds.check_ids(program.graph, ds, mapping)  # NOTE: after the casts' own checks
    return cfg, ds, mapping, (train, val, test)


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


def _last(rows: list, split: str) -> dict | None:
    """The last epoch's row of one split's values (a resumed run that trains no epoch has
    only the rows of its log)."""
    got = {k[len(split) + 1:]: v for k, v in (rows[-1] if rows else {}).items()
           if k.startswith(split + "_")}
    return got or None


def small_meta(meta: dict) -> dict:
    """Dataset meta for config.json: without the vocabulary list (it is in the checkpoint)."""
    small = feeds.predict_meta(meta)
    if "vocab" in small:
        small["vocab"] = f"<{len(small['vocab'])} words>"
    return small


def summary_table(history: History) -> Table:
    """train (last epoch) / val / test rows of loss and metrics."""
    results = {"train": _last(history.rows, "train"), "val": history.val, "test": history.test}
    results = {k: v for k, v in results.items() if v}
    cols = list(dict.fromkeys(k for v in results.values() for k in v))
    best = (history.best or {}).get("epoch")
    # NOTE: by the last row's epoch: a fit(net)'s rows start at the net's epoch. best.npz only
    # where the run directory holds it (a fit(net)'s new one has none of an earlier epoch)
    last = history.rows[-1].get("epoch", len(history.rows)) if history.rows else 0
    saved = history.run_dir is None or (Path(history.run_dir) / checkpoint.BEST).is_file()
    title = "summary" if best in (None, last) else \
        (f"summary of the last epoch's weights (best.npz holds epoch {best}'s, which eval, "
         "predict and export use)" if saved else
         f"summary of the last epoch's weights (epoch {best}'s were the best)")
    t = Table(box=box.SIMPLE_HEAD, title=title)
    t.add_column("split", style="bold")
    for c in cols:
        t.add_column(c, justify="right")
    for split, values in results.items():
        t.add_row(split, *(f"{values[c]:.4f}" if c in values else "" for c in cols))
    return t
