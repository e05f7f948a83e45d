"""The built wheel carries the grammar and the CLI: install it into a bare target directory and
use it from outside the source tree, so nothing can be found by accident in the checkout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True,
                       timeout=300)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"building the wheel failed:\n{err.stderr.decode()[-2000:]}")
    wheel = next(out.glob("nnlang-*.whl"))
    target = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def _run(target, code, cwd):
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_wheel_ships_grammar_and_cli(installed, tmp_path):
    code = ("import nnlang, nnlang_cli.main; from nnlang.frontend.parser import grammar_path;"
            "p = grammar_path(); assert 'site' in str(p), p;"
            "prog = nnlang.load('model M { input x: float32[batch, 3]\\n output y = exp(x) }');"
            "print(prog.graph.node(prog.graph.outputs['y']).type)")
    r = _run(installed, code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "float32[batch, 3]" in r.stdout


def test_wheel_ships_data_samples(installed, tmp_path):
    code = ("from nnlang.data import load_dataset; d = load_dataset('mnist-sample');"
            "print(len(d.train), len(d.test))")
    r = _run(installed, code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["5000", "1000"]
