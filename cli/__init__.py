"""The `nnlang` command line (installed as the package `nnlang_cli`; see pyproject.toml)."""

# the commands that compile kernels on the CPU backend (export traces on the reference one)
COMPILING = ("compile", "train", "eval", "predict", "generate")


def run(prog_name: str | None = "nnlang") -> None:
    """The installed `nnlang` script. Loading the commands imports numpy, numba and typer,
    a few tenths of a second in which a Ctrl-C would otherwise print Python's traceback; it
    ends as a Ctrl-C during a command does (`app.reporting`): one word and exit 130."""
    import sys
    try:
        if compiles(sys.argv[1:]):
            from nnlang.backends.worker_start import start_early
            start_early()   # NOTE: on a cold cache its warm-up runs beside the imports below
        from nnlang_cli.main import app
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    try:
        app(prog_name=prog_name)
    except SystemExit as end:
        _leave(end.code)
        raise


def compiles(args: list[str]) -> bool:
    """Will this command line compile kernels with numba (a compiling command, not its help,
    on the default backend)?"""
    words = [a for a in args if not a.startswith("-")]
    if not words or words[0] not in COMPILING or {"--help", "-h"} & set(args):
        return False
    for k, arg in enumerate(args):
        if arg == "--backend" and k + 1 < len(args):
            arg = f"--backend={args[k + 1]}"
        if arg.startswith("--backend=") and arg != "--backend=numba":
            return False
    return True


def _leave(code) -> None:
    """Ends the process with the command's exit code, once its output is out and the exit
    handlers have run, without the interpreter's teardown: freeing numba's and LLVM's objects
    one by one took 0.3-0.5 s at the end of every command (a warm `nnlang compile`: 1.55 s,
    1.25 s without). Where the teardown matters it returns and the exit goes on as usual: in
    a data-parallel rank (mpi4py finalizes MPI after Python's own teardown), or where the
    output cannot be written."""
    import atexit
    import os
    import sys
    import threading
    if "mpi4py" in sys.modules or not hasattr(threading, "_shutdown"):
        return
    # NOTE: what the interpreter's exit does first: a thread's own exit handlers (an executor's
    # pool ends), then the threads it waits for are joined
    threading._shutdown()
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr, flush=True)
        code = 1
    os._exit(code & 0xFF)
