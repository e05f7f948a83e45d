"""Which checkpoint a `fit(..., resume=...)` continues, and saying so: the run it picked, its
settings, and what this call changes."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from nnlang.errors import NNError, said_as
from nnlang.ops.optim import same_slots
from nnlang.train import checkpoint
from nnlang.train.overrides import resolve
from nnlang.train.progress import say
from nnlang.train.runs import RunDir, already_a_run, ensure_free, foreign_files, is_run


def find_checkpoint(program_or_path, config, overrides, model, out, resume, runs_root):
    """The checkpoint `resume` names: a path, or True for the run in `out` (default: the newest
    run of the model). A fresh run refuses an `out` that already holds a checkpoint."""
    if not resume:
        if out is not None and (Path(out) / checkpoint.FILENAME).is_file():
            raise NNError(f"{out} already holds a training run", hint=already_a_run())
        if out is not None and (foreign := foreign_files(out)):
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4
                                              else "")
            raise NNError(f"{said_as('--out', 'out=')} {out} already holds files that are not "
                          "an nnlang run's "
                          f"({shown}); a run there would overwrite them",
                          hint=said_as("pass --out with a new or empty folder, e.g. --out "
                                       "runs/NAME", "pass out= a new or empty folder, e.g. "
                                       "out='runs/NAME'"))
        return None
    if resume is not True:
        return checkpoint.load(resume)
    if out is not None:
        if not (Path(out) / checkpoint.FILENAME).is_file() and is_run(out):
            raise _never_saved(out, "train it again without " + said_as(
                f"--resume (--out {out} is reused)", f"resume (out={str(out)!r} is reused)"))
        return checkpoint.load(out)
    name = resolve(program_or_path, config, overrides, model)[0].model
    where = RunDir.latest(name, runs_root)
    newest = RunDir.latest(name, runs_root, checkpointed=False)
    if newest is not None and newest != where:
        # NOTE: else an older run went on, said to be "the newest run", not the one just cut
        other = f", or pass {said_as('--out ', 'resume=')}{where} to resume the newest run " \
            "that has one" if where else ""
        raise _never_saved(newest, "train it again without " + said_as(
            f"--resume (--out {newest})", f"resume (out={str(newest)!r})") + other)
    if where is None:
        raise NNError(f"no run of '{name}' with a checkpoint under {runs_root}/",
                      hint=said_as("pass --out RUN_DIR", "pass resume=RUN_DIR") +
                      " to say which run to resume")
    return checkpoint.load(where)


def _never_saved(run, hint: str) -> NNError:
    """A run folder with no checkpoint: a run saves at each epoch's end and on Ctrl-C, so a
    kill -9 (or a crash) before its first epoch ended left none ("checkpoint not found" read as
    a mistyped --out); or its run is still in that epoch (then the error says it is in use)."""
    ensure_free(run)
    return NNError(f"{run} holds no checkpoint to resume: its run stopped before the end of its "
                   "first epoch without one (a kill -9, a crash, or a checkpoint it could not "
                   "write)", hint=hint)


def describe_resume(console: Console, ckpt, cfg, hp: dict, picked: bool) -> None:
    """Says which run is resumed (`picked`: found as the newest run of the model) and its
    settings, and every setting or --set value that this call changes."""
    # NOTE: epochs 1-based and the step within the epoch, as the interrupt message says them
    within = ckpt.meta.get("step_in_epoch", 0)
    at = f"at epoch {ckpt.epoch + 1}, step {within}" if within else f"after epoch {ckpt.epoch}"
    say(console, f"resuming {ckpt.path} {at} (global step {ckpt.step})")
    old = ckpt.config
    if picked:
        opts = old.optimizer.options
        say(console, f"  the newest run of {ckpt.meta.get('model')}: data "
                     f"{old.data.name if old.data else '-'}, {old.optimizer.name} lr "
                     f"{opts.get('lr')}, batch {old.batch}, epochs {old.epochs}, seed "
                     f"{old.seed}" + "".join(f", {k}={v}" for k, v in
                                             (ckpt.meta.get("overrides") or {}).items())
                     + f" (pass {said_as('--out', 'resume=')}RUN_DIR to pick another)")
    changed = [f"{k} {a} -> {b}" for k, a, b in _setting_changes(old, cfg)]
    ran = {**(ckpt.meta.get("hparams") or {}), **(ckpt.meta.get("overrides") or {})}
    changed += [f"{k} {ran.get(k)} -> {v}" for k, v in hp.items() if ran.get(k) != v]
    if changed:
        say(console, "note: this resume changes the run's " + ", ".join(changed))


def _setting_changes(old, new) -> list[tuple]:
    """(setting, old value, new value) of each train setting (optimizer options as
    `adam.lr`) that differs; another optimizer is one entry as written (each option of both,
    `sgd.lr 0.05 -> None`, was noise), saying when the run's optimizer state is not carried."""
    a, b = _flat_settings(old, new.optimizer.name), _flat_settings(new, old.optimizer.name)
    if not same_slots(old.optimizer.name, new.optimizer.name):
        b["optimizer"] += " (its state starts fresh)"
    return [(k, a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def _flat_settings(cfg, other_optimizer: str) -> dict:
    flat = {k: v for k, v in asdict(cfg).items() if k != "optimizer"}
    for k in ("data", "schedule"):   # NOTE: as written: imdb(maxlen=200), not a dict
        flat[k] = _written(getattr(cfg, k))
    if cfg.optimizer.name != other_optimizer:
        flat["optimizer"] = str(cfg.optimizer)
    else:
        flat.update({f"{cfg.optimizer.name}.{k}": v for k, v in cfg.optimizer.options.items()})
    return flat


def _written(choice) -> str | None:
    if choice is None:
        return None
    return str(choice) if choice.options else choice.name
