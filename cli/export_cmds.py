"""`nnlang export`: a trained model's inference graph as an ONNX file (`nnlang.export`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from nnlang_cli.app import (PATH, app, check_output, notes_for, one_process,
                            reporting)
from nnlang_cli.train_cmds import CKPT_HELP


@app.command()
def export(
    file: Path = typer.Argument(..., help="The .nn file the checkpoint was trained from."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CKPT_HELP, **PATH),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="The .onnx file (default: <file>.onnx here).",
                                          **PATH),
):
    """Write the model's inference graph with the checkpoint's weights as ONNX (opset 17):
    symbolic batch, the model's inputs and `output`s by name; labels and losses left out."""
    from nnlang.export import describe, export_onnx
    out = one_process("export")
    if out is None:
        return
    output = output or Path(file.stem + ".onnx")
    with reporting():
        output = check_output(output, reads={"the model file": file, "the checkpoint": checkpoint})
        out = notes_for(output, out)
        proto = export_onnx(str(file), checkpoint, output, console=out)
    size = proto.ByteSize()   # NOTE: not the file's: /dev/stdout's size is 0
    shown = f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
    out.print(Text(f"wrote {output} ({shown}): {describe(proto)}"))
