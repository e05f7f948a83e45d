"""Commands that train and use models: `train`, `eval` and `predict`, thin wrappers over
`nnlang.train.trainer` (`fit`, `evaluate_checkpoint`, `predict`).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich import box
from rich.table import Table
from rich.text import Text

from nnlang.ir.dims import MAX_BATCH
from nnlang.train.progress import say
from nnlang_cli.app import (HUNG_UP, INTERRUPTED, MODEL_HELP, OUTPUT_CLOSED, PATH, TERMINATED, app,
                            console, err_console, finite_float, one_process, parse_overrides,
                            reporting)


@contextmanager
def every_rank_stops():
    """Under mpirun, a rank that fails (after saying why) ends the whole job at once, instead
    of leaving the others waiting in the next allreduce."""
    try:
        yield
    except typer.Exit as e:
        from nnlang.backends.collective import current
        if e.exit_code not in (0, INTERRUPTED, TERMINATED, OUTPUT_CLOSED, HUNG_UP) and \
                current() is not None:
            current().abort(e.exit_code)
        raise


BACKEND_HELP = "numba (CPU, default), cupy (NVIDIA GPU) or reference (numpy interpreter, slow)."
DATA_HELP = ("A dataset name (imdb, mnist, imdb-sample...) or a .npz/.csv path; replaces the "
             "train section's `data`, keeping the options the new dataset accepts.")
DATA_DIR_HELP = "Look for dataset files here first."
CKPT_HELP = ("A checkpoint .npz, or a run directory: its best.npz (the best validation epoch) "
             "when it has one, else its checkpoint.npz.")


@app.command()
def train(
    file: Path = typer.Argument(..., help="The .nn file."),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP, **PATH),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1,
                                         help="Passes over the training set."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, max=MAX_BATCH,
                                        help="Examples per step (the global batch under mpirun)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="The optimizer's learning rate.",
                                       callback=finite_float),
    sets: Optional[list[str]] = typer.Option(
        None, "--set", help="name=value: a model hyper-parameter, or a train setting / "
                            "optimizer option (clip_norm, l2, momentum, monitor=train_loss...); "
                            "a path needs no quotes and is read from the current folder "
                            "(init_from=runs/RUN); repeatable."),
    backend: str = typer.Option("numba", "--backend", help=BACKEND_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the run: the initial "
                                       "weights, the data order and the validation carve."),
    # NOTE: no min/max here: the range is the setting's own, checked in one place
    # (frontend/train_config.py), which names this flag in its error
    val_split: Optional[float] = typer.Option(
        None, "--val-split", callback=finite_float,
        help="The share of the training set held out for validation, in [0, 1)."),
    out: Optional[Path] = typer.Option(None, "--out",
                                       help="Run directory (default runs/<model>-<time>/).",
                                       **PATH),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue the run in --out (default: the model's newest "
                                     "run, runs/<model>-*; one a kill -9 left with no "
                                     "checkpoint is an error naming it)."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1,
                                            help="Stop after this many steps (smoke tests)."),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from", help="Start a new run from the weights of another run (its "
                                  "directory or a checkpoint): every parameter with the same "
                                  "name and shape; the optimizer starts fresh.", **PATH),
    init_skip_mismatch: bool = typer.Option(
        False, "--init-skip-mismatch", help="With --init-from: keep this model's own initial "
                                            "values for parameters of another shape."),
):
    """Train a model. Flags override the file's train section; with none, it is used as is.

    Writes runs/<model>-<time>/ (or --out): config.json, metrics.jsonl/.csv, checkpoint.npz,
    summary.json and plots. Ctrl-C saves a checkpoint; --resume continues from it.
    """
    from nnlang.train.trainer import fit
    with every_rank_stops(), reporting():
        history = fit(str(file), {"epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
                                  "val_split": val_split}, data, backend=backend,
                      overrides=parse_overrides(sets), model=model, data_dir=data_dir, out=out,
                      resume=resume, max_steps=max_steps, console=console(),
                      init_from=init_from, init_skip_mismatch=init_skip_mismatch)
    code = {"interrupted": INTERRUPTED, "terminated": TERMINATED,
            "output closed": OUTPUT_CLOSED, "hung up": HUNG_UP}.get(history.stopped)
    if code:
        raise typer.Exit(code)


@app.command("eval")
def eval_(
    file: Path = typer.Argument(..., help="The .nn file the checkpoint was trained from."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CKPT_HELP, **PATH),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP, **PATH),
    backend: str = typer.Option("numba", "--backend", help=BACKEND_HELP),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, max=MAX_BATCH,
                                        help="Examples per forward pass (default: the train "
                                             "section's batch)."),
):
    """Loss and metrics of a trained model on the test split of its dataset (or --data)."""
    from nnlang.train.inference import evaluate_checkpoint
    out = one_process("eval")
    if out is None:
        return
    with reporting():
        split, result = evaluate_checkpoint(str(file), checkpoint, data, data_dir, backend,
                                            batch, out)
    t = Table(box=box.SIMPLE_HEAD, title=f"{split} set")
    t.add_column("split", style="bold")
    for k in result:
        t.add_column(k, justify="right")
    t.add_row(split, *(f"{v:.4f}" for v in result.values()))
    out.print(t)


PREDICT_INPUTS_HELP = ("Values for a model whose outputs read one input (a label input aside): "
                       "review text or .txt paths (text models), .png/.npy paths (image "
                       "models), .npy paths or numbers like 1,2.5,3 (array models); one "
                       "example each.")
NAMED_HELP = ("NAME=VALUE: the value of input NAME for one example (text, numbers like 1,2.5,3, "
              "or a .npy path); repeat each name once per example. For models whose outputs "
              "read several inputs.")
JSONL_HELP = ('A file with one JSON object per line and example, {"NAME": value} per model input '
              '(numbers, nested lists, or text for a text input).')
CSV_HELP = ("A table with a header and one row of numbers per example, for a model with one "
            "input: the row's columns are its values (a target column such as 'label' is "
            "skipped, so a training table works as it is).")
NPZ_HELP = ("A .npz with one array per model input, named like the inputs, one row per example "
            "(arrays named like a training target are skipped).")


@app.command()
def predict(
    file: Path = typer.Argument(..., help="The .nn file the checkpoint was trained from."),
    inputs: Optional[list[str]] = typer.Argument(None, help=PREDICT_INPUTS_HELP),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CKPT_HELP, **PATH),
    named: Optional[list[str]] = typer.Option(None, "--input", "-i", help=NAMED_HELP),
    npz: Optional[Path] = typer.Option(None, "--npz", help=NPZ_HELP, **PATH),
    jsonl: Optional[Path] = typer.Option(None, "--jsonl", help=JSONL_HELP, **PATH),
    csv: Optional[Path] = typer.Option(None, "--csv", help=CSV_HELP, **PATH),
    backend: str = typer.Option("numba", "--backend", help=BACKEND_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print every result as one JSON line "
                                                       "(all values, for scripts)."),
):
    """The model's outputs for raw inputs: the class and its probability for a classifier,
    the numbers for a regression, the text (or ids) of a sequence output, the shape and a
    summary for a tensor (all with --json). The examples come as arguments, --input
    NAME=VALUE, --npz, --jsonl or --csv."""
    from nnlang.train.inference import predict as run_predict
    out = one_process("predict")
    if out is None:
        return
    # NOTE: each batch's results are printed when it is done (a table per output and batch,
    # the same table as one batch's; JSON lines the same): over a big --jsonl nothing came
    # until the end, and an error on a late line lost every result before it
    with reporting():
        for results in run_predict(str(file), checkpoint, inputs, backend,
                                   None if as_json else out, named=named, npz=npz, jsonl=jsonl,
                                   csv=csv):
            _warn_not_finite(results, as_json)
            if as_json:
                for r in results:
                    # NOTE: json.dumps writes inf and nan as Infinity / NaN, which is not JSON
                    # (jq and JSON.parse refuse the line): null instead, as the warning says
                    typer.echo(json.dumps(_finite_or_null(r), allow_nan=False))
                continue
            for name in dict.fromkeys(r["output"] for r in results):
                out.print(_result_table([r for r in results if r["output"] == name]))


def _finite_or_null(value):
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def _warn_not_finite(results: list[dict], as_json: bool) -> None:
    """A model's output can overflow on an input far from its training data; the numbers (and
    a class read from them) then mean nothing, which the table or JSON alone does not say."""
    bad = [r for r in results if any(not np.isfinite(np.asarray(r[k], np.float64)).all()
                                     for k in ("value", "probability") if k in r)]
    for r in bad:
        say(err_console(), f"warning: output '{r['output']}' of input {_short(r['input'])!r} "
                           "is not finite (inf or nan: the input is far outside what the model "
                           "was trained on?)" + ("; --json writes it as null" if as_json else ""))


def _result_table(results: list[dict]) -> Table:
    """One output's results: label and probability for classes, the decoded text (or ids) of a
    sequence, else the numbers (or the shape and a summary of a large tensor)."""
    t = Table(box=box.SIMPLE_HEAD)
    kind = results[0]["kind"]
    classes = kind in ("class", "binary")
    columns = ("input", "output", "label", "probability") if classes else \
        ("input", "output", "text" if kind == "sequence" else "value")
    for c in columns:
        t.add_column(c, justify="right" if c == "probability" else "left",
                     overflow="ellipsis", max_width=50 if c == "input" else None, no_wrap=True)
    for r in results:
        if classes:
            t.add_row(Text(_short(r["input"])), r["output"], r["label"],
                      f"{r['probability']:.4f}")
        elif kind == "sequence":
            text = r["text"] if r["text"] is not None else " ".join(map(str, r["ids"]))
            t.add_row(Text(_short(r["input"])), r["output"], Text(text))
        else:
            t.add_row(Text(_short(r["input"])), r["output"], _numbers(r))
    return t


def _numbers(r: dict) -> str:
    v = np.asarray(r["value"], dtype=np.float64)
    if r["kind"] == "value":
        return " ".join(f"{x:.6g}" for x in v.ravel()) if v.ndim else f"{float(v):.6g}"
    return (f"shape {list(v.shape)}: min {v.min():.4g}, mean {v.mean():.4g}, max {v.max():.4g}"
            " (--json for all values)")


def _short(text: str, width: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
