"""Commands that inspect a model without training it: `check` (summary table), `graph` (DOT/SVG),
`fmt` (canonical text) and `ops` (the op reference).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from nnlang.errors import NNError, did_you_mean
from nnlang.files import write_atomic
from nnlang.ir.dims import MAX_BATCH
from nnlang_cli.app import (MODEL_HELP, PATH, SET_HELP, app, check_output, console, err_console,
                            notes_for, parse_overrides, print_error, print_warnings, reporting,
                            writing)



def load_program(path: Path, sets: list[str] | None, model: str | None):
    """Parse and elaborate one file, or standard input for `-` (raises NNError)."""
    from nnlang.frontend.elaborate import elaborate
    from nnlang.frontend.parser import parse, parse_file
    from nnlang.frontend.source import STDIN_FILE, read_stdin

    module = parse(read_stdin(sys.stdin.buffer), STDIN_FILE) if is_stdin(path) else \
        parse_file(path)
    return elaborate(module, parse_overrides(sets), model)


def is_stdin(path: Path) -> bool:
    return str(path) == "-"


def stdin_once(files: list[Path]) -> None:
    """`-` reads standard input to its end, so a second `-` would read nothing."""
    if sum(is_stdin(p) for p in files) > 1:
        raise typer.BadParameter("- (standard input) can be given once", param_hint="FILES")


# *** check ***

CHECK_ROWS = 200  # the most rows `check` draws by default (--rows)


def summary_table(s, most: int = 0, width: int | None = None) -> tuple[Table | Group, int]:
    """The summary table with at most `most` rows (0: all), and how many it left out. Wider
    than `width` (a narrow terminal), the rows as a list instead, one line per value: a
    table's cells were cut to "…" there (the shapes, the counts), lost to the reader."""
    from nnlang.ir.summary import HEADERS, cut_rows, table_cells

    head, left_out, tail = cut_rows(table_cells(s), most)
    rows = head + ([None] if left_out else []) + tail   # None: the rows left out
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="right" if i >= 3 else "left", no_wrap=True,
                     style={0: "bold", 1: "cyan"}.get(i))
    for cells in rows:
        t.add_row(*(Text("⋮", style="dim") for _ in HEADERS) if cells is None else
                  (Text(c) for c in cells))
    if width is None or Console(width=1 << 20).measure(t).maximum <= width:
        return t, left_out
    lines = []
    for cells in rows:
        if cells is None:
            lines.append(Text("⋮", style="dim"))
            continue
        lines.append(Text.assemble((cells[0], "bold"), " ", (cells[1], "cyan")))
        lines += [Text(f"  {h}: {c}") for h, c in zip(HEADERS[2:], cells[2:]) if c]
    return Group(*lines), left_out


@app.command()
def check(
    files: list[Path] = typer.Argument(..., help="One or more .nn files; - reads one from "
                                                 "standard input."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, max=MAX_BATCH,
                                        help="Batch size for FLOPs and memory "
                                             "(default: the train section's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Only report errors and warnings (no summary)."),
    rows: int = typer.Option(CHECK_ROWS, "--rows", min=0,
                             help="Most table rows to draw: the first and the last ones, and "
                                  "how many were left out between them; 0 draws every row."),
):
    """Parse, elaborate and shape-check models; print a summary table.

    One row per op: layer path, output shape, parameters, forward FLOPs and activation memory
    (at the train section's batch size, or --batch), then totals. A table longer than --rows
    (200) shows its first and last rows.
    """
    from nnlang.frontend.source import STDIN_FILE
    from nnlang.ir.summary import (header_lines, summarize, total_lines,
                                   training_memory_problem)

    stdin_once(files)
    failed = False
    out = console()
    with reporting():
        for path in files:
            name = STDIN_FILE if is_stdin(path) else path
            try:
                prog = load_program(path, sets, model)
                print_warnings(prog)
                s = summarize(prog, batch)
            except NNError as err:
                print_error(err)
                failed = True
                continue
            warning = training_memory_problem(prog, s.batch)
            if warning:
                err_console().print(Text(f"warning: {name}: {warning}", style="yellow"))
            if quiet:
                continue
            for line in header_lines(s):
                out.print(Text(line))
            table, left_out = summary_table(s, rows, out.width)
            out.print(table)
            if left_out:
                out.print(Text(f"{left_out:,} rows left out (--rows 0 draws every row)",
                               style="dim"))
            for line in total_lines(s):
                out.print(Text(line))
            out.print(Text(f"ok: {name}", style="green"))
            if len(files) > 1:
                out.print()
    if failed:
        raise typer.Exit(1)


# *** graph ***

GRAPH_FORMATS = (".dot", ".svg", ".png", ".pdf")


@app.command()
def graph(
    file: Path = typer.Argument(..., help="A .nn file."),
    output: Path = typer.Option(..., "-o", "--output", help="out.dot, out.svg, out.png or out.pdf",
                                **PATH),
    depth: Optional[int] = typer.Option(None, "--depth", min=1,
                                        help="Collapse block paths deeper than N into one box."),
    params: bool = typer.Option(False, "--params", help="Also draw weights and constants."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    backward: bool = typer.Option(False, "--backward",
                                  help="Draw the generated backward pass beside the forward."),
    fused: bool = typer.Option(False, "--fused", help="Draw each fused kernel as a cluster."),
):
    """Draw the model graph: blocks and layers as clusters, edges labelled with shapes."""
    from nnlang.ir.dot import GraphvizMissing, render, to_dot

    if output.suffix.lower() not in GRAPH_FORMATS:
        raise typer.BadParameter(f"unknown format '{output.suffix}'; use one of "
                                 + ", ".join(GRAPH_FORMATS), param_hint="-o")
    with reporting():
        output = check_output(output)
        prog = load_program(file, sets, model)
    title = f"{prog.model} ({file})"
    if backward or fused:
        import nnlang
        with reporting():
            net = nnlang.compile(prog, backend="reference", init_from=False)
            text = nnlang.dot(net, backward=backward, fused=fused, depth=depth,
                              show_params=params, title=title)
    else:  # NOTE: what nnlang.dot draws without them, with no compile (nor its memory check)
        text = to_dot(prog.graph, depth=depth, show_params=params, title=title)
    try:
        with writing(output):
            written = render(text, output)
    except NNError as err:
        print_error(err)
        raise typer.Exit(1)
    except GraphvizMissing as missing:
        err_console().print(Text(
            f"Graphviz's `dot` program is not installed, so {output} was not drawn; the graph "
            f"is in {missing.args[0]}.\nInstall it with `apt-get install graphviz` (or `brew "
            f"install graphviz`), then run: dot -T{output.suffix[1:].lower()} {missing.args[0]} -o "
            f"{output}"))
        raise typer.Exit(1)
    except RuntimeError as err:
        err_console().print(Text(str(err)))
        raise typer.Exit(1)
    notes_for(written, console()).print(Text(f"wrote {written}"))


# *** fmt ***

# NOTE: the exit codes of `fmt --check`, as black and ruff: a file that cannot be read or parsed
# is not "would reformat", so a pre-commit hook or CI step can tell the two apart
FMT_CHANGED = 1
FMT_UNREADABLE = 2


@app.command()
def fmt(
    files: list[Path] = typer.Argument(..., help="One or more .nn files; - reads standard input "
                                                 "and writes the formatted text to standard "
                                                 "output."),
    check_only: bool = typer.Option(False, "--check",
                                    help=f"Change nothing; exit {FMT_CHANGED} if a file would "
                                         f"be reformatted, {FMT_UNREADABLE} if one cannot be "
                                         "read or parsed, 0 if all are formatted."),
    write: bool = typer.Option(False, "--write", "-w",
                               help="Rewrite the files in place (- is still written to "
                                    "standard output)."),
):
    """Print .nn files in canonical form (2-space indent, one statement per line).

    Exit codes: 0 done; 1 a file could not be read or parsed; with --check, 1 a file would be
    reformatted and 2 a file could not be read or parsed.
    """
    from nnlang.frontend.fmt import format_source
    from nnlang.frontend.source import BOM, STDIN_FILE, read_source, read_stdin

    if check_only and write:
        raise typer.BadParameter("use --check or --write, not both")
    stdin_once(files)
    bad = failed = False
    with reporting():
        for path in files:
            stdin = is_stdin(path)
            name = STDIN_FILE if stdin else str(path)
            try:
                if write and not stdin and path.exists() and not path.is_dir() and \
                        not path.is_file():
                    # NOTE: a pipe or device has no file to rewrite: the text went back into
                    # the pipe (a FIFO with no reader left waited forever), "reformatted"
                    raise NNError(f"--write {path}: this is no regular file (a pipe or a "
                                  "device), so there is no file to rewrite",
                                  hint="without --write, fmt prints the formatted text")
                # NOTE: read once, the byte-order mark kept: the canonical text (what fmt
                # prints) has none, so a source that starts with one is not formatted
                raw = (read_stdin(sys.stdin.buffer, keep_bom=True) if stdin
                       else read_source(path, keep_bom=True))
                text = format_source(raw.removeprefix(BOM), name)
            except NNError as err:
                print_error(err)
                failed = True
                continue
            changed = text != raw
            if check_only:
                if changed:
                    err_console().print(Text(f"would reformat {name}"))
                    bad = True
            elif write and not stdin:
                if changed:
                    with writing(path, "--write"):
                        # NOTE: whole or not at all: a full disk must not cut the user's source
                        write_atomic(path, text)
                    err_console().print(Text(f"reformatted {path}"))
            else:
                sys.stdout.write(text)
    if failed:
        raise typer.Exit(FMT_UNREADABLE if check_only else 1)
    if bad:
        raise typer.Exit(FMT_CHANGED)


# *** ops ***

def one_line(doc: str) -> str:
    """The first sentence of an op's doc."""
    doc = " ".join(doc.split())
    m = re.match(r"^(.+?[.!?])\s+(?=[A-Z])", doc)
    return (m.group(1) if m else doc).rstrip(".")


def listed_ops() -> dict:
    """Ops a .nn file can call, grouped by family in registry order (graph leaves excluded)."""
    from nnlang.ops import registry

    groups: dict[str, list] = {}
    for name, op in registry.all_ops().items():
        if op.family == "source":
            continue
        groups.setdefault(op.family or "other", []).append(op)
    return groups


def ops_markdown() -> str:
    """The op reference table of docs/language.md (regenerate: `nnlang ops --markdown`)."""
    lines = []
    for family, ops in listed_ops().items():
        lines += [f"#### {family}", "", "| op | signature | description |", "|---|---|---|"]
        for op in ops:
            doc = " ".join(op.doc.split()).replace("|", "\\|")
            lines.append(f"| `{op.name}` | `{op.name}({op.sig})` | {doc} |".replace(
                "`|`", "`\\|`"))
        lines.append("")
    return "\n".join(lines)


@app.command()
def ops(
    name: Optional[str] = typer.Argument(None, help="Show one op in full."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the docs table (Markdown)."),
):
    """List the ops a model can call, grouped by family, or show one op in full."""
    from nnlang.ops import registry

    out = console()
    if markdown:
        sys.stdout.write(ops_markdown())
        return
    if name is not None:
        op = registry.get(name)
        if op is None:
            print_error(NNError(f"unknown op '{name}'", None,
                                did_you_mean(name, registry.all_ops()) or
                                "run `nnlang ops` for the list"))
            raise typer.Exit(1)
        out.print(Text(f"{op.name}({op.sig})", style="bold"))
        out.print(Text(f"family: {op.family}" + (f"   traits: {', '.join(sorted(op.traits))}"
                                                  if op.traits else "")))
        # NOTE: the elaborator takes these two of every call of a layer with weights
        # (frontend/calls.py), so no signature lists them: said here, or no one finds them
        out.print(Text("owns weights; every call also takes share = <layer> (use that "
                       "layer's weights) and trainable = false (freeze them)"
                       if op.params else "no weights"))
        out.print()
        for p in op.sig.params:
            out.print(Text(f"  {p}"))
        out.print()
        out.print(Text(" ".join(op.doc.split())))
        return
    for family, group in listed_ops().items():
        t = Table(title=family, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  show_edge=False)
        t.add_column("op", style="cyan", no_wrap=True)
        t.add_column("signature")
        t.add_column("description")
        for op in group:
            sig = ", ".join(str(p) for p in op.sig.params)
            t.add_row(Text(op.name), Text(sig), Text(one_line(op.doc)))
        out.print(t)
