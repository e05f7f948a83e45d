"""Device operations per training step on the CuPy backend (kernel launches, fills, copies,
matmuls), per model at its full size: counted on the CPU stand-in for CuPy
(`tests/gpu/fake_cupy.py`), so no GPU is needed. The count does not depend on the data or the
batch size (the batch here is 2, to keep the emulated kernels fast).

    python benchmarks/gpu_launch_count.py [--models mlp,lstm,...]

On a GPU each operation costs CuPy some microseconds of Python before the device sees it, so
this is the launch overhead a step pays without CUDA graphs.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.golden_values import feeds_for, models  # noqa: E402
from tests.gpu import fake_cupy  # noqa: E402


def count(model: str) -> dict:
    import nnlang
    program = nnlang.load(ROOT / "models" / f"{model}.nn")
    net = nnlang.compile(program, backend="cupy", batch=2, seed=0)
    feeds = feeds_for(program)
    net.train_step(feeds, fetch=False)   # NOTE: builds and compiles the step
    before = dict(fake_cupy.COUNTS)
    net.train_step(feeds, fetch=False)
    exe = net._exe("train", 2)[0]
    return {"model": model, "steps": len(exe.steps),
            **{k: v - before.get(k, 0) for k, v in fake_cupy.COUNTS.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(models()))
    args = ap.parse_args(argv)
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        print("no C++ compiler on PATH (the stand-in compiles the kernels as host C++)")
        return 2
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        fake_cupy.install(mp, [cxx], Path(tmp))
        print(f"{'model':<12} {'device ops':>10} {'steps':>6} {'uploads':>8} {'reads':>6}")
        for model in args.models.split(","):
            r = count(model)
            print(f"{model:<12} {r.get('device_operations', 0):>10} {r['steps']:>6} "
                  f"{r.get('to_device', 0):>8} {r.get('to_host', 0):>6}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
