"""Checkpoints: every state array (parameters and optimizer slots) plus what resume, `eval` and
`predict` need (epoch/step, data-order RNG state, model source, resolved config, dataset meta),
in one .npz written atomically. The non-array part is one JSON string under `__meta__`.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from nnlang.errors import NNError, with_article
from nnlang.files import as_path, cannot_read, write_atomic
from nnlang.frontend.source import same_program
from nnlang.frontend.train_config import Choice, TrainConfig
from nnlang.ops.optim import OPTIMIZER_PREFIX, OPTIMIZERS, SCHEDULES, same_slots

FORMAT = 1
FILENAME = "checkpoint.npz"
BEST = "best.npz"     # beside FILENAME: the best epoch's state by the monitored value
_META = "__meta__"
_STATE = "state/"


@dataclass
class Checkpoint:
    """A loaded checkpoint: `state` arrays by name and the JSON `meta` dict."""
    state: dict
    meta: dict
    path: Path | None = None

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.meta["epoch"]

    @property
    def step(self) -> int:
        """Global training steps taken."""
        return self.meta["step"]

    @property
    def config(self) -> TrainConfig:
        return config_from_dict(self.meta["config"])

    @property
    def data_meta(self) -> dict:
        return self.meta.get("data", {}).get("meta", {})

    def trained_on_other_source(self, source: str | None) -> bool:
        """Does the .nn text `source` differ from the one this run was trained from, beyond
        comments and spacing? (False when either is unknown.)"""
        return source is not None and self.meta.get("source") is not None and \
            not same_program(self.meta["source"], source)

    def load_into(self, net, optimizer: bool = True) -> None:
        """The run's whole state into `net`: the weights, the optimizer's slots (unless not
        `optimizer`) and its place in the schedule (step, epoch, plateau reductions), so
        training goes on where it stopped: the one place both a resumed run and
        `nnlang.restore` take it from."""
        state = {k: v for k, v in self.state.items() if not k.startswith(OPTIMIZER_PREFIX)}
        if optimizer:
            # NOTE: a resume may change the optimizer. One that keeps the same slots (another
            # lr, momentum added to sgd, adam <-> adamw) goes on with the run's state: its
            # slots the run had are loaded, new ones (momentum added) start at zero. Another
            # starts fresh, as a new torch.optim optimizer does, step count included: an
            # rmsprop's momentum buffer (steps g / sqrt(avg g^2)) loaded as sgd's (sums of
            # gradients) moved the weights by 7 in a few steps, and Adam's bias correction
            # at the run's step count scaled its first steps from zeroed moments ~3x past lr.
            # The net's step (the schedule's place) is set from the meta below either way.
            own = {k: v for k, v in net.state_dict().items() if k.startswith(OPTIMIZER_PREFIX)}
            if same_slots(self.config.optimizer.name, net.config.optimizer.name):
                state |= {k: self.state.get(k, v) for k, v in own.items()}
            else:
                state |= {k: np.zeros_like(v) for k, v in own.items()}
        net.load_state_dict(state)
        net.step, net.epoch = self.step, self.epoch
        net.lr_scale = self.meta.get("lr_scale", 1.0)


def save(path, state: dict, meta: dict) -> Path:
    """Writes `state` and `meta` to `path` atomically: a temp file in the same folder, fsync,
    then `os.replace`, so a crash or Ctrl-C never leaves a half-written checkpoint behind."""
    path = Path(path)
    arrays = {_STATE + k: np.asarray(v) for k, v in state.items()}
    arrays[_META] = np.array(json.dumps({"format": FORMAT, **meta}, default=json_default))
    try:
        return write_atomic(path, lambda f: np.savez(f, **arrays), fsync=True)
    except OSError as err:
        # NOTE: write_atomic removed its temp file, so the file there is the previous save
        raise NNError(f"cannot write checkpoint {path} ({err.strerror or err})",
                      hint="the checkpoint there (if any) is the last one saved, unchanged; free "
                           "space or fix the folder, then --resume goes on from it") from None


def load(path, prefer_best: bool = False) -> Checkpoint:
    """Reads a checkpoint file, or `checkpoint.npz` inside a run directory (`best.npz` when
    it holds one and `prefer_best`: what eval and predict use)."""
    path = as_path(path, "the checkpoint", "a run directory or a checkpoint .npz")
    if path.is_dir():
        path = path / (BEST if prefer_best and (path / BEST).is_file() else FILENAME)
    if not path.is_file():
        raise NNError(f"checkpoint not found: {path}",
                      hint="pass a checkpoint.npz, or the run directory that holds one")
    arrays = False
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):   # NOTE: a .npy holds one bare array, not an archive
            raise KeyError(_META)
        with z:
            arrays = bool(z.files)
            meta = json.loads(str(z[_META][()]))
            state = {k[len(_STATE):]: z[k] for k in z.files if k.startswith(_STATE)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
            json.JSONDecodeError) as err:
        if isinstance(err, OSError) and (refused := cannot_read(path, err)):
            raise refused from None   # NOTE: not "may be truncated ...; train again"
        # NOTE: zlib.error: a damaged np.savez_compressed archive (numpy reads those too)
        if isinstance(err, KeyError) and arrays:
            # NOTE: most likely a library loop's np.savez(path, **net.parameters())
            raise NNError(f"{path} is not a readable nnlang checkpoint (arrays without its "
                          f"'{_META}' entry)",
                          hint="weights saved with np.savez load into a compiled net: "
                               f"net.load_state_dict(dict(np.load('{path.name}'))), then use "
                               "that net (net.forward, nnlang.export_onnx(net)), or "
                               "nnlang.save(net, FOLDER) it as a checkpoint") from None
        if Path(path).suffix.lower() == ".onnx":   # NOTE: it said "(ValueError)", train again
            raise NNError(f"{path} is an ONNX file (what nnlang export writes), not an nnlang "
                          "checkpoint", hint="pass the run directory (runs/<model>-<time>/) or "
                          "its checkpoint.npz; an .onnx file is for ONNX Runtime") from None
        raise unreadable(path, f"no '{_META}' entry" if isinstance(err, KeyError)
                         else type(err).__name__) from None
    if not isinstance(meta, dict):
        raise unreadable(path, f"its meta is {with_article(type(meta).__name__)}, not a JSON "
                               "object")
    fmt = meta.get("format")
    if fmt != FORMAT:
        # NOTE: every nnlang so far wrote format 1, so any other number is a newer nnlang's
        # file (what to do: upgrade), and no number at all a file nnlang did not write
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < FORMAT:
            raise unreadable(path, f"'format' is {fmt!r}, not a checkpoint format")
        raise NNError(f"{path} has checkpoint format {fmt}, written by a newer nnlang; this "
                      f"nnlang reads format {FORMAT}",
                      hint="upgrade nnlang to read it, or use a checkpoint this version "
                           "wrote")
    _check_meta(path, meta)
    _check_values(path, state, meta.get("dtype", "float32"))
    return Checkpoint(state, meta, path)


def check_encoding(path, meta: dict, ds, instead: str) -> str | None:
    """What the checkpoint `path` (its `meta`) cannot vouch for when it names no data
    (`nnlang.save` without `data`): a data set `ds` that encodes text with a vocabulary is an
    error (built now from the data, its ids could stand for other words than the net learned,
    and nothing would say so); one whose loader scales images gives a note to print (the
    loop may have fed other scaling). `instead`: what to do in Python instead."""
    from nnlang.data.registry import trained_words
    if "data" in meta:
        return None
    if trained_words(ds.meta) is not None:
        raise NNError(f"{path} was saved by nnlang.save without its data set, so the "
                      f"vocabulary its text was encoded with is unknown; data set '{ds.name}' "
                      f"would encode with one of its own", hint=f"save it with nnlang.save("
                      f"net, path, data=...) (the Dataset the loop was fed from, or its name), "
                      f"or {instead}")
    if ds.meta.get("kind") == "image":
        return (f"note: {path} was saved by nnlang.save without its data set: its images are "
                f"read as '{ds.name}' scales them ({ds.meta.get('scale', 'its loader')}); a "
                f"loop fed other scaling gets other numbers (nnlang.save(net, path, data=...) "
                f"records the data set)")
    return None


def _check_choice(path, choice: Choice, registry: dict, what: str) -> None:
    """The optimizer or schedule a resume rebuilds: a known name with every option, each of its
    type, as a run writes it (else a KeyError or TypeError inside the resumed run)."""
    from nnlang.ops.signature import BindError
    if choice.name not in registry:
        raise unreadable(path, f"unknown {what} '{choice.name}' in its config")
    sig = registry[choice.name].sig
    try:
        bound = sig.bind([], dict(choice.options))
    except (BindError, TypeError) as err:
        raise unreadable(path, f"its config's {what} {choice.name}: {err}") from None
    if missing := sorted(set(bound) - set(choice.options)):
        raise unreadable(path, f"its config's {what} {choice.name} has no "
                               f"{', '.join(missing)}")
    for p in sig.params:   # NOTE: bind fills defaults but takes any value
        v = choice.options[p.name]
        ok = isinstance(v, bool) if p.kind == "bool" else \
            isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            raise unreadable(path, f"its config's {what} {choice.name}: {p.name} = {v!r} is "
                                   f"not {with_article(p.kind)}")


def _check_values(path, state: dict, dtype: str) -> None:
    """A run never saves an exploded state (the divergence guard stops first), so NaN or inf in
    a weight or optimizer slot, or a value its `dtype` cannot hold (inf once cast), means a
    damaged or foreign file: predict and export gave NaN with exit 0 and a resume 'diverged'
    at its first step."""
    top = float(np.finfo(dtype if dtype in ("float32", "float64") else "float32").max)
    for name, a in state.items():
        if a.dtype.kind not in "biuf":
            raise NNError(f"{path}: parameter '{name}' holds {a.dtype} values, not numbers",
                          hint="the file is damaged or was written by another program; use "
                               "another checkpoint or train again")
        if a.dtype.kind != "f":
            continue
        ok = np.isfinite(a) & (np.abs(a) <= top)
        if not ok.all():
            at = np.unravel_index(int(np.argmin(ok)), a.shape)
            beyond = f", beyond {dtype}" if np.isfinite(a[at]) else ""
            raise NNError(f"{path}: parameter '{name}' holds {a[at]} (at "
                          f"{list(map(int, at))}){beyond}",
                          hint="the file is damaged or comes from a run that diverged; use an "
                               "earlier checkpoint or train again")


def refuse_overwrite(path, reads: dict, flag: str = "-o", reader: str = "the command") -> None:
    """An error when `path` is one of the files `reader` reads ({what: path}; a run directory
    stands for its checkpoints): the write would destroy its own input (`export -o
    run/checkpoint.npz` replaced the trained weights with the ONNX file)."""
    path = Path(path)
    if not path.is_file():
        return
    for what, source in reads.items():
        source = Path(source)
        # NOTE: a run's checkpoint.npz and best.npz go together: either one, or the folder
        run = source if source.is_dir() else source.parent \
            if source.name in (FILENAME, BEST) else None
        files = [run / FILENAME, run / BEST] if run else [source]
        if any(f.is_file() and f.samefile(path) for f in files):
            raise NNError(f"{flag} {path}: this is {what} {reader} reads; writing there "
                          "would destroy it", hint="name another output file")


def unreadable(path, why: str) -> NNError:
    return NNError(f"{path} is not a readable nnlang checkpoint ({why})",
                   hint="it may be truncated or written by another program; use another "
                        "checkpoint or train again")


# the meta every checkpoint of this format holds, by its JSON type; eval, predict, export,
# --resume and --init-from each read some of it, so it is checked here, once, where the file is
# named, not as a KeyError in whichever command reached the missing part first
_NEEDED = {"model": str, "epoch": int, "step": int, "config": dict, "rng_state": dict}
_OPTIONAL = {"step_in_epoch": int, "total_steps": int, "steps_per_epoch": int, "hparams": dict,
             "overrides": dict, "source": str, "file": str, "data": dict}


def _check_meta(path, meta: dict) -> None:
    for key, kind in [*_NEEDED.items(), *_OPTIONAL.items()]:
        if key not in meta:
            if key in _NEEDED:
                raise unreadable(path, f"its meta has no '{key}'")
            continue
        value = meta[key]
        if not isinstance(value, kind) or isinstance(value, bool) or \
                (kind is int and value < 0):
            want = {int: "a whole number", str: "text", dict: "a JSON object"}[kind]
            raise unreadable(path, f"'{key}' is {value!r}, not {want}")
    if not isinstance(meta.get("data", {}).get("meta", {}), dict):
        raise unreadable(path, f"'data.meta' is {meta['data']['meta']!r}, not a JSON object")
    unknown = sorted(set(meta["config"]) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise unreadable(path, f"unknown train setting '{unknown[0]}' in its config")
    try:
        cfg = config_from_dict(meta["config"])
    except NNError as err:
        raise unreadable(path, f"its config: {err.message}") from None
    except (TypeError, KeyError, AttributeError, ValueError) as err:
        raise unreadable(path, f"its config: {type(err).__name__} {err}") from None
    _check_choice(path, cfg.optimizer, OPTIMIZERS, "optimizer")
    if cfg.schedule is not None:
        _check_choice(path, cfg.schedule, SCHEDULES, "schedule")
    try:
        np.random.PCG64().state = meta["rng_state"]
    except (TypeError, KeyError, ValueError):
        raise unreadable(path, "'rng_state' is not a PCG64 state") from None


# *** config <-> JSON ***

def config_to_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict) -> TrainConfig:
    def choice(c):
        return None if c is None else Choice(c["name"], dict(c.get("options", {})))
    return TrainConfig(**{**d, "data": choice(d.get("data")), "optimizer": choice(d["optimizer"]),
                          "schedule": choice(d.get("schedule"))})


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, tuple, set)):
        return str(o) if isinstance(o, Path) else list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
