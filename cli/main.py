"""Entry point of the `nnlang` command: the typer app with every command module registered.

`python -m nnlang_cli.main ...` works like the installed `nnlang` script.
"""
from __future__ import annotations

import nnlang_cli.cache_cmds  # noqa: F401  (registers cache)
import nnlang_cli.compile_cmds  # noqa: F401  (registers compile)
import nnlang_cli.inspect_cmds  # noqa: F401  (registers check, graph, fmt, ops)
from nnlang_cli.app import app

try:
    import nnlang_cli.train_cmds  # noqa: F401  (registers train, eval, predict)
    import nnlang_cli.export_cmds  # noqa: F401  (registers export)
    import nnlang_cli.generate_cmds  # noqa: F401  (registers generate)
except ModuleNotFoundError as err:
    if err.name not in ("nnlang_cli.train_cmds", "nnlang_cli.generate_cmds"):
        raise

__all__ = ["app"]

if __name__ == "__main__":
    from nnlang_cli import run
    run(prog_name=None)
