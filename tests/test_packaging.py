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
def venv(tmp_path_factory):
    """A fresh virtual environment with only the built wheel installed; its dependencies come
    from this environment through a .pth file, so the test needs no network beyond the build."""
    out = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                        str(ROOT)], check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"building the wheel failed:\n{err.stderr.decode()[-2000:]}")
    wheel = next(out.glob("nnlang-*.whl"))
    env_dir = out / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=600)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True).stdout
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site.strip()) / "deps.pth").write_text("\n".join(deps) + "\n")
    # NOTE: --ignore-installed: the .pth above also exposes any nnlang installed here, which
    # pip would otherwise take as "already satisfied" and skip installing the wheel
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--ignore-installed", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return env_dir


def _run(venv, args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_console_script_checks_a_model(venv, tmp_path):
    (tmp_path / "mlp.nn").write_text((ROOT / "models" / "mlp.nn").read_text())
    r = _run(venv, [str(venv / "bin" / "nnlang"), "check", "mlp.nn"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Total params: 535,818" in r.stdout


def test_wheel_ships_grammar_and_samples(venv, tmp_path):
    code = ("import nnlang; from nnlang.frontend.parser import grammar_path;"
            f"assert str(grammar_path()).startswith({str(venv)!r}), grammar_path();"
            f"assert nnlang.__file__.startswith({str(venv)!r}), nnlang.__file__;"
            "from nnlang.data import load_dataset; d = load_dataset('mnist-sample');"
            "print(len(d.train), len(d.test))")
    r = _run(venv, [str(venv / "bin" / "python"), "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["5000", "1000"]
