"""A net trained from Python saved as a checkpoint the CLI reads (`nnlang.save`): the other
direction of `nnlang.restore`. The file is an ordinary checkpoint (checkpoint.py), its meta
built from what the `Net` knows; what only a data loader knows (a vocabulary) is left out, and
the commands that would need it say so (`checkpoint.check_encoding`).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from nnlang.errors import NNError
from nnlang.files import as_path, write_atomic
from nnlang.train import checkpoint, feeds
from nnlang.train.runs import RUN_FILES, ensure_free

SAVED_BY = "nnlang.save"   # config.json's mark of a folder this wrote (so a save may replace it)


def save(net, path, data=None) -> Path:
    """Writes `net` (weights, optimizer state, step, epoch, lr_scale, and the model's source,
    name, overrides, train settings and dtype) to `path`; returns the checkpoint file.

    `path` is a folder, which then holds what a run directory holds for the CLI: its
    `checkpoint.npz` and `config.json`. A folder, not a bare .npz, because `nnlang train
    --resume --out FOLDER` continues a run folder and writes its checkpoint, metrics and
    config there, while `eval`/`predict`/`export`/`--init-from` take a run folder as they take
    a file: one shape every command reads. A path ending in .npz writes just that file, for
    the commands that read one (`-c`, `--init-from`, `nnlang.restore`).

    `data`: the data set the loop was fed from (a `Dataset` from `nnlang.data.load_dataset`,
    or its spec, loaded now as `nnlang train --data SPEC` loads it, and then the data set the
    CLI's eval and --resume load): its vocabulary or tokenizer and class names go in, so
    `eval`, `predict` and `--resume` encode text as the loop did. Without it a restored net's own
    record (or its `net.tokenizer`) is kept; else none is written, and those commands refuse
    a data set that would build a vocabulary of its own rather than guess.

    Saving again into the same folder replaces the save (a loop may save every epoch); a
    folder holding other files, or a run of `nnlang train`, is refused. Written atomically:
    an error (an unwritable folder, a full disk) leaves the earlier save there unchanged."""
    from nnlang.runtime.net import Net
    if not isinstance(net, Net):
        raise NNError(f"nnlang.save writes a compiled Net, not {type(net).__name__}",
                      hint="net = nnlang.compile(...) (or nnlang.restore), train it, then "
                           "nnlang.save(net, path)")
    path = as_path(path, "the save's path", "a folder (or a .npz file) to write")
    record, choice = _data_record(net, data)
    # NOTE: one step's state and counters: a step in another thread between the two reads
    # would save its weights with the step count before it (the net's lock is reentrant)
    with net._lock:
        state, meta = net.state_dict(), _meta(net, choice)
    if record is not None:
        meta["data"] = record
    if path.suffix.lower() == ".npz":
        return _write(path, state, meta)
    _check_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NNError(f"cannot create the folder {path} ({err.strerror or err})",
                      hint="save to a folder you can write") from None
    ensure_free(path)   # NOTE: a training run writing there now would overwrite the save
    saved = _write(path / checkpoint.FILENAME, state, meta)
    # NOTE: eval and predict prefer a run's best.npz; one left there is not this net
    (path / checkpoint.BEST).unlink(missing_ok=True)
    config = {"model": meta["model"], "file": meta["file"], "hparams": meta["hparams"],
              "overrides": meta["overrides"], "train": meta["config"], "backend": meta["backend"],
              "dataset": None, "saved_by": SAVED_BY}
    text = json.dumps(config, indent=2, default=checkpoint.json_default) + "\n"
    _write_text(path / "config.json", text)
    return saved


def _meta(net, data_choice=None) -> dict:
    program = net.program
    # NOTE: the net's own batch and seed, which `compile(batch=, seed=)` may have set apart
    # from the train section's: the seed draws its dropout masks, so a restored net given the
    # section's seed took other masks from its next step on
    cfg = replace(net.config, batch=net.batch, seed=net.seed,
                  data=data_choice or net.config.data)
    meta = {"model": program.model, "file": program.file, "source": program.source,
            "overrides": dict(program.overrides), "hparams": program.hparams,
            "config": checkpoint.config_to_dict(cfg), "backend": net.backend,
            "dtype": net.dtype, "epoch": net.epoch, "step_in_epoch": 0, "step": net.step,
            "total_steps": net.total_steps, "lr_scale": net.lr_scale,
            # NOTE: the data order a fresh `nnlang train` of this seed draws: the loop's own
            # order is the loop's, which nnlang never saw
            "rng_state": feeds.order_rng(cfg.seed).bit_generator.state,
            "saved_by": SAVED_BY}
    if net.steps_per_epoch:
        meta["steps_per_epoch"] = net.steps_per_epoch
    return meta


def _data_record(net, data) -> tuple[dict | None, object]:
    """(The checkpoint's `data` entry, or None; the train setting `data` names it by, or None
    to keep the net's). Eval, predict and generate read its `meta`."""
    if data is None:
        if getattr(net, "trained_data", None) is not None:
            return net.trained_data, None   # NOTE: a restored run's: its vocabulary goes on
        tok = getattr(net, "tokenizer", None)
        return (None if tok is None else
                {"name": None, "meta": {"tokenizer": tok.settings()}}), None
    from nnlang.data import Dataset
    choice = None
    if not isinstance(data, Dataset):
        if not isinstance(data, (str, Path)):
            raise NNError(f"data={type(data).__name__}: pass the Dataset the net was trained "
                          "on (nnlang.data.load_dataset) or its name, e.g. \"imdb-sample\"")
        # NOTE: as `nnlang train --data SPEC` reads it (the train section's options it takes,
        # files beside the .nn file), and the data the CLI's eval and --resume then load
        choice = feeds.replace_data(net.config.data, str(data))
        file = net.program.file
        data = feeds.load_data(choice, None, Path(file).parent if Path(file).is_file() else None,
                               None, net.program)
    return {"name": data.name, "meta": feeds.predict_meta(data.meta)}, choice


def _write(path: Path, state: dict, meta: dict) -> Path:
    try:
        return checkpoint.save(path, state, meta)
    except NNError as err:
        raise NNError(err.message, hint="a save there before (if any) is unchanged; save to a "
                                        "folder you can write") from None


def _write_text(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as err:
        raise NNError(f"cannot write {path} ({err.strerror or err})",
                      hint="save to a folder you can write") from None


def _check_folder(path: Path) -> None:
    """A folder a save may write: new, empty, or an earlier save's."""
    if path.exists() and not path.is_dir():
        raise NNError(f"{path} is a file, and nnlang.save writes a folder",
                      hint="pass a folder's path, or a path ending in .npz for one file")
    if not path.is_dir() or not any(path.iterdir()):
        return
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    names = sorted(p.name for p in path.iterdir())
    if not isinstance(config, dict) or config.get("saved_by") != SAVED_BY:
        what = "a run of nnlang train" if isinstance(config, dict) and \
            {"model", "train"} <= config.keys() else "files that are not a save's"
        raise NNError(f"{path} already holds {what} ({', '.join(names[:4])}"
                      f"{' ...' if len(names) > 4 else ''}); saving there would overwrite them",
                      hint="save to a new or empty folder (a run of nnlang train goes on with "
                           "`nnlang train --resume`)")
    if foreign := [n for n in names if n not in RUN_FILES and not n.startswith(".")]:
        raise NNError(f"{path} holds files besides an earlier save ({', '.join(foreign[:4])}); "
                      "saving there would leave them beside another net",
                      hint="save to a new or empty folder")
