"""`nnlang compile`: the optimized graph, the generated backward pass and the kernels that run."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

import nnlang
from nnlang.errors import NNError, Span
from nnlang.files import write_atomic
from nnlang.ir.dims import DEFAULT_LENGTH, MAX_BATCH
from nnlang_cli.app import (MODEL_HELP, PATH, SET_HELP, app, check_output, console, notes_for,
                            parse_overrides, reporting, writing)


def compile_cmd(
    file: Path = typer.Argument(..., help="A .nn file."),
    emit: str = typer.Option("summary", "--emit",
                             help="user | ir | backward | fused | kernels | summary"),
    backend: str = typer.Option("numba", "--backend", help="numba | cupy | reference"),
    mode: Optional[str] = typer.Option(None, "--mode", help="train | eval | predict "
                                       "(default: train, or predict for a model with no loss)"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, max=MAX_BATCH,
                                        help="Batch size (default: the train section's)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    lengths: Optional[list[str]] = typer.Option(
        None, "--length", help=f"The size a symbolic length (symbol seq) is compiled at: "
                               f"--length seq=40 (default {DEFAULT_LENGTH}); repeatable."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write to a file.", **PATH),
    **switched_off: bool,
):
    """Compile a model and show what runs: --emit summary (default), user, ir, backward, fused
    or kernels."""
    disable = tuple(name[len("no_"):] for name, off in switched_off.items() if off)
    with reporting():
        if output is not None:
            output = check_output(output, reads={"the model file": file})
        program = nnlang.load(file, parse_overrides(sets), model)
        net = nnlang.compile(program, backend=backend, batch=batch, disable=disable,
                             init_from=False)   # NOTE: the graph and kernels need no weights
        net.lengths.update(_parse_lengths(lengths, net))
        text = nnlang.emit(net, emit, mode)   # NOTE: None: emit's default for the model
        if output is not None:
            with writing(output):
                write_atomic(output, text)
    if output is not None:
        notes_for(output, console()).print(Text(f"wrote {output}"))
    else:
        console().print(Text(text), end="", soft_wrap=True)


def _parse_lengths(items: list[str] | None, net) -> dict:
    """`["seq=40"]` -> {"seq": 40}: sizes of the model's symbolic lengths (not batch, which is
    --batch); errors point into the flag."""
    out: dict = {}
    for item in items or []:
        source = f"--length {item}"
        name, eq, value = item.partition("=")
        name = name.strip()
        span = Span("<command line>", 1, 10, 1, 10 + max(len(item), 1), source)
        known = ", ".join(net.lengths) or "none"
        if not eq:
            raise NNError(f"--length expects name=size, got '{item}'", span,
                          f"e.g. --length seq=40 (the model's symbolic lengths: {known})")
        if not net.lengths and name != "batch":
            raise NNError(f"--length {name}: model '{net.program.model}' has no symbolic lengths",
                          span, "--length sizes a dim declared `symbol seq`; this model's dims "
                                "are all fixed, so leave --length out")
        if name not in net.lengths:
            raise NNError(f"--length {name}: model '{net.program.model}' has no symbolic length "
                          f"'{name}'", span,
                          "use --batch for the batch" if name == "batch" else
                          f"its symbolic lengths: {known}")
        if name in out:   # NOTE: which one was meant is not ours to guess (as --set twice)
            raise NNError(f"--length {name} is given twice", span,
                          f"give each length once: --length {name}=...")
        if not value.strip().isdigit() or int(value) < 1:
            raise NNError(f"--length {name}: the size must be a whole number >= 1, got "
                          f"'{value}'", span, f"e.g. --length {name}=40")
        out[name] = int(value)
    return out


def _with_pass_switches(fn):
    """`fn` with one `--no-<pass>` flag per optimizer pass, taken from the pass list itself
    (`nnlang.pass_switches()`), so a new pass gets its flag without an edit here."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    for name, text in nnlang.pass_switches().items():
        flag = typer.Option(False, f"--no-{name.replace('_', '-')}", help=text)
        params.append(inspect.Parameter(f"no_{name}", inspect.Parameter.KEYWORD_ONLY,
                                        default=flag, annotation=bool))
    fn.__signature__ = sig.replace(parameters=params)
    return fn


app.command("compile")(_with_pass_switches(compile_cmd))
