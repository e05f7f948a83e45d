"""`nnlang compile`: the optimized graph, the generated backward pass and the kernels that run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

import nnlang
from nnlang_cli.app import app, check_output, console, parse_overrides, reporting, writing

PASS_NAMES = ("fold", "cse", "matmul_sum", "dce", "fuse", "multi_tensor",
              "concat_in_place")


@app.command("compile")
def compile_cmd(
    file: Path = typer.Argument(..., help="A .nn file."),
    emit: str = typer.Option("summary", "--emit",
                             help="user | ir | backward | fused | kernels | summary"),
    backend: str = typer.Option("numba", "--backend", help="numba | cupy | reference"),
    mode: str = typer.Option("train", "--mode", help="train | eval | predict"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1,
                                        help="Batch size (default: the train section's)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a hyper-parameter."),
    model: Optional[str] = typer.Option(None, "--model", help="Which model of the file."),
    no_fold: bool = typer.Option(False, "--no-fold", help="Skip constant folding."),
    no_cse: bool = typer.Option(False, "--no-cse", help="Skip common-subexpression elimination."),
    no_matmul_sum: bool = typer.Option(False, "--no-matmul-sum",
                                       help="Keep sums of matmuls (e.g. per-step RNN weight "
                                            "gradients) as they are."),
    no_dce: bool = typer.Option(False, "--no-dce", help="Skip dead-code elimination."),
    no_fuse: bool = typer.Option(False, "--no-fuse", help="One kernel per op."),
    no_multi_tensor: bool = typer.Option(False, "--no-multi-tensor",
                                         help="One launch per tensor for the optimizer update "
                                              "(and other runs of one elementwise kernel)."),
    no_concat_in_place: bool = typer.Option(False, "--no-concat-in-place",
                                            help="Concats copy their inputs instead of each "
                                                 "input being stored in its slice."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write to a file."),
):
    """Compile a model and show what runs: --emit ir, backward, fused or kernels."""
    flags = (no_fold, no_cse, no_matmul_sum, no_dce, no_fuse, no_multi_tensor,
             no_concat_in_place)
    disable = tuple(name for name, off in zip(PASS_NAMES, flags) if off)
    with reporting():
        if output is not None:
            check_output(output)
        program = nnlang.load(file, parse_overrides(sets), model)
        net = nnlang.compile(program, backend=backend, batch=batch, disable=disable)
        text = nnlang.emit(net, emit, mode)
        if output is not None:
            with writing(output):
                output.write_text(text, encoding="utf-8")
    if output is not None:
        console().print(Text(f"wrote {output}"))
    else:
        console().print(Text(text), end="", soft_wrap=True)
