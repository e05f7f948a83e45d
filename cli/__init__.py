"""The `nnlang` command line (installed as the package `nnlang_cli`; see pyproject.toml)."""


def run() -> None:
    """The installed `nnlang` script. Loading the commands imports numpy, numba and typer,
    a few tenths of a second in which a Ctrl-C would otherwise print Python's traceback; it
    ends as a Ctrl-C during a command does (`app.reporting`): one word and exit 130."""
    import sys
    try:
        from nnlang_cli.main import app
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    app(prog_name="nnlang")
