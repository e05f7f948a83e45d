"""The generated kernels stay inside their arrays: the host-run tests (the host harness, and
every model's golden values through the CPU stand-in for CuPy) again, in a child pytest whose
kernels are compiled with AddressSanitizer and whose Python has libasan preloaded, so a read
or write past the end of an array fails with the kernel and the address.

Arrays of one memory-plan buffer share it, so this catches accesses beyond a buffer, not a
stray read of a neighbour inside one; the golden values catch those.

It reruns the whole host harness under ASan (about 100 s), so it is marked `slow`: run it with
`python -m pytest -m slow tests/gpu/test_host_asan.py` after changing a kernel or a lowering.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _libasan() -> str | None:
    try:
        path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                              text=True, check=False).stdout.strip()
    except OSError:
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_host_kernels_under_address_sanitizer(host_cxx, tmp_path):
    if host_cxx[0] == "nvcc":
        pytest.skip("AddressSanitizer needs the host C++ compiler (gcc or clang)")
    lib = _libasan()
    if lib is None:
        pytest.skip("no libasan.so (gcc's AddressSanitizer runtime) found")
    # NOTE: reports go to files: the child pytest captures its tests' stderr
    log = tmp_path / "asan"
    env = dict(os.environ, LD_PRELOAD=lib, NNLANG_HOST_ASAN="1",
               ASAN_OPTIONS=f"detect_leaks=0:halt_on_error=1:log_path={log}")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "t"), "tests/gpu/test_host_harness.py",
         "tests/gpu/test_cupy_backend.py", "-m", "not gpu", "-k", "golden or kernels"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=900)
    reports = "".join(p.read_text() for p in tmp_path.glob("asan*"))
    assert not reports, reports[:6000]
    out = done.stdout + done.stderr
    assert done.returncode == 0 and " passed" in out, out[-6000:]
