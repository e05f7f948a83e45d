"""GPU-backend tests. `@pytest.mark.gpu` tests need CuPy and an NVIDIA device and skip without
them; the rest (nvcc compiles, the host harness) run anywhere `nvcc`/a C++ compiler exists.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # NOTE: `tests.golden_values` is imported as a package module
    sys.path.insert(0, str(ROOT))


def _gpu_missing() -> str | None:
    try:
        from nnlang.backends.cupy_backend import require_cupy
        require_cupy()
    except Exception as e:  # an NNError saying what is missing
        return str(e).splitlines()[0]
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [it for it in items if it.get_closest_marker("gpu")]
    if not gpu_items:
        return
    reason = _gpu_missing()
    if reason:
        for it in gpu_items:
            it.add_marker(pytest.mark.skip(reason=f"needs CuPy and an NVIDIA GPU: {reason}"))


@pytest.fixture(scope="session")
def nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        pytest.skip("nvcc is not on PATH (install the CUDA toolkit to compile generated CUDA)")
    return path


# NOTE: set by test_host_asan.py for its child pytest, which runs with libasan preloaded
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"] \
    if os.environ.get("NNLANG_HOST_ASAN") == "1" else []


@pytest.fixture(scope="session")
def host_cxx() -> list[str]:
    """A C++20 compiler for the host harness: the system c++, or nvcc driving it."""
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return [name, *ASAN_FLAGS]
    if shutil.which("nvcc"):
        return ["nvcc", "-x", "c++", "-Xcompiler", "-fPIC"]
    pytest.skip("no C++ compiler on PATH for the host harness")
