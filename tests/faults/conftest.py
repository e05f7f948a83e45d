"""The bad-input and fault corpus: every case runs the real `nnlang` command (in-process through
typer's runner, or in a bounded subprocess where signals, file systems or hangs are the point)
and asserts what a user must see: a clear error naming the file, line or flag, exit 1, and never
a traceback, an "internal error" or a hang."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "faults-cache"))


def _clean(text: str) -> str:
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    return text


def cli(*args: str, code: int = 1, cwd=None) -> str:
    """Runs `nnlang ARGS` in-process; asserts the exit code and that stdout+stderr hold no
    traceback and no internal error; returns them."""
    from nnlang_cli.main import app
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)
    out = result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"raised {result.exception!r}\n{out}")
    assert result.exit_code == code, f"exit {result.exit_code}, wanted {code}\n{out}"
    return _clean(out)


def cli_process(*args: str, code: int | None = 1, timeout: float = 600, env=None, cwd=None,
                **kw) -> subprocess.CompletedProcess:
    """Runs `python -m nnlang_cli.main ARGS` in a subprocess bounded by `timeout` (a hang fails
    the test); asserts the exit code (unless None) and a clean output."""
    # NOTE: `timeout` guards against hangs, not slowness: a cold numba `train tiny.nn` took
    # about 45 s of a former 120 s on a 2-core host loaded by other work
    full = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "nnlang_cli.main", *map(str, args)],
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full, **kw)
    _clean(proc.stdout + proc.stderr)
    if code is not None:
        assert proc.returncode == code, \
            f"exit {proc.returncode}, wanted {code}\n{proc.stdout}\n{proc.stderr}"
    return proc
