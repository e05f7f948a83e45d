"""`nnlang cache`: where the user cache is, what it holds per kind (`nnlang.user_cache.KINDS`),
`nnlang cache prune` to bound it (least recently used kernels and plans first) and `nnlang
cache clear` to remove it (everything in it is made again when next needed)."""
from __future__ import annotations

import inspect
import os

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from nnlang_cli.app import _Typer, app, console, reporting

cache_app = _Typer(name="cache", rich_markup_mode="rich", no_args_is_help=False,
                   add_completion=False, pretty_exceptions_enable=False,
                   invoke_without_command=True)


def _root_text() -> str:
    from nnlang.user_cache import user_cache_dir
    how = "$NNLANG_CACHE_DIR" if os.environ.get("NNLANG_CACHE_DIR") else "the default"
    return f"{user_cache_dir()} ({how})"


@cache_app.callback()
def cache(ctx: typer.Context):
    """Show where the cache is and what it holds (compiled kernels, compiled plans, downloaded
    data); `nnlang cache prune` bounds it, `nnlang cache clear` removes it."""
    if ctx.invoked_subcommand is None:
        info()


@cache_app.command()
def info():
    """Show the cache folder and the files and bytes it holds per kind."""
    from nnlang.ir.summary import human
    from nnlang.user_cache import KINDS, max_size, usage

    out = console()
    with reporting():
        rows = [(kind, *usage(kind)) for kind in KINDS]
    out.print(Text(f"cache: {_root_text()}"))
    t = Table(box=box.SIMPLE_HEAD, show_edge=False)
    t.add_column("kind", style="cyan", no_wrap=True)
    t.add_column("files", justify="right")
    t.add_column("size", justify="right")
    t.add_column("what")
    for kind, files, size in rows:
        t.add_row(Text(kind), Text(f"{files:,}"), Text(human(size, "B")), Text(KINDS[kind]))
    t.add_row(Text("total"), Text(f"{sum(r[1] for r in rows):,}"),
              Text(human(sum(r[2] for r in rows), "B")), Text(""))
    out.print(t)
    out.print(Text(f"bound: {_bound_text(max_size())} for kernels and plans, least recently "
                   "used removed first (nnlang cache prune; $NNLANG_CACHE_MAX_SIZE)"))
    out.print(Text("remove: nnlang cache clear [--kernels] [--plans] [--data] (made again "
                   "when next needed)"))


def _bound_text(limit) -> str:
    from nnlang.ir.summary import human
    return "none" if limit is None else human(limit, "B")


@cache_app.command()
def prune(
    max_size: str = typer.Option(None, "--max-size", metavar="SIZE",
                                 help="Bound kernels and plans to SIZE (e.g. 500M, 2G; 0: no "
                                      "bound); default $NNLANG_CACHE_MAX_SIZE, else 2G."),
):
    """Remove the least recently used compiled kernels and plans until they fit the bound (to
    90% of it); entries used in the last 10 minutes, or by another run now, stay. A run that
    writes new kernels or plans prunes too, at most once an hour. Downloaded data stays."""
    from nnlang.errors import NNError
    from nnlang.ir.summary import human
    from nnlang.user_cache import DEFAULT_MAX_SIZE, IN_USE_S, MAX_SIZE_ENV, PRUNED
    from nnlang.user_cache import parse_size
    from nnlang.user_cache import prune as prune_cache
    from nnlang.user_cache import usage, user_cache_dir

    out = console()
    with reporting():
        # NOTE: a $NNLANG_CACHE_MAX_SIZE that is no size is an error here, where a run only
        # warns: this command would remove, down to the default 2G, what it meant to keep
        said, text = ("--max-size ", max_size) if max_size is not None else \
            (f"{MAX_SIZE_ENV}=", os.environ.get(MAX_SIZE_ENV) or None)
        try:
            limit = DEFAULT_MAX_SIZE if text is None else parse_size(text)
        except ValueError:
            raise NNError(f"{said}{text!r} is not a size", None,
                          f"e.g. {said}500M, 2G or 10GiB (K, M, G, T: powers of 1024; 0: no "
                          "bound)") from None
        out.print(Text(f"cache: {_root_text()}"))
        if limit is None:   # NOTE: 'pruned to none' read as 'pruned to nothing'
            out.print(Text(f"no bound ({said}{text!r}): nothing removed"))
            return
        try:
            files, size = prune_cache(limit)
        except OSError as err:   # NOTE: its lock cannot be written: a read-only cache
            raise NNError(f"cannot prune the cache at {user_cache_dir()} "
                          f"({err.strerror or err})", None,
                          "check that folder's permissions (the cache belongs to whoever made "
                          "it); a read-only cache is only read, and grows no further") from None
        out.print(Text(f"pruned to {_bound_text(limit)}: removed {files:,} "
                       f"file{'' if files == 1 else 's'}, {human(size, 'B')}"))
        # NOTE: said, or 'removed 0 files' under a tiny bound read as a cache already within it
        left = sum(usage(kind)[1] for kind in PRUNED)
        if left > limit:
            out.print(Text(f"still over the bound: {human(left, 'B')} in use (used in the last "
                           f"{IN_USE_S // 60} minutes, or by another run or prune now)"))


@cache_app.command()
def clear(
    kernels: bool = typer.Option(False, "--kernels", help="Remove the compiled kernels."),
    plans: bool = typer.Option(False, "--plans", help="Remove the compiled plans."),
    data: bool = typer.Option(False, "--data", help="Remove downloaded and processed data."),
):
    """Remove the cache's files (all kinds, or those named); nothing outside the cache folder.
    Safe while another run compiles: what it needs again is made again."""
    from nnlang.ir.summary import human
    from nnlang.user_cache import KINDS
    from nnlang.user_cache import clear as clear_kind

    chosen = [k for k, on in (("kernels", kernels), ("plans", plans), ("data", data)) if on]
    out = console()
    out.print(Text(f"cache: {_root_text()}"))
    with reporting():
        for kind in chosen or KINDS:
            files, size = clear_kind(kind)
            out.print(Text(f"removed {kind}: {files:,} file{'' if files == 1 else 's'}, "
                           f"{human(size, 'B')}"))


# NOTE: the row in `nnlang --help` is the docstring's first paragraph on one line, as
# `_Typer.command` makes it for a command
app.add_typer(cache_app, name="cache",
              short_help=" ".join(inspect.cleandoc(cache.__doc__).split("\n\n")[0].split()))
