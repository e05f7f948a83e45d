"""What machine a benchmark ran on: CPU model and cores, library versions, BLAS threading, and
numpy's measured SGEMM peak (the yardstick for the GEMM GFLOP/s columns)."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time

import numpy as np

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _lscpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in fields.items()}


def _versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("numba", "torch"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def blas_info() -> dict:
    """threadpoolctl's view of the BLAS pools when it is installed, else numpy's build config.
    NOTE: the OPENBLAS_* variables are reported, never changed: on some processors they are set
    (e.g. a forced core type) and make numpy's GEMM slower; the peak is measured as-is."""
    info: dict = {"env": {k: os.environ[k] for k in BLAS_ENV if k in os.environ}}
    try:
        from threadpoolctl import threadpool_info
        info["threadpoolctl"] = threadpool_info()
    except ImportError:
        info["threadpoolctl"] = "not installed"
        try:
            cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            info["numpy_blas"] = {k: cfg.get(k) for k in ("name", "version",
                                                          "openblas configuration")}
        except Exception:  # noqa: BLE001 - older numpy has no mode="dicts"; the info is optional
            pass
    return info


def machine_info() -> dict:
    cpu = _lscpu()
    return {"cpu": cpu.get("Model name", platform.processor()),
            "cores": os.cpu_count(), "threads_per_core": cpu.get("Thread(s) per core"),
            "flags_avx512": "avx512f" in cpu.get("Flags", ""),
            "os": platform.platform(), "loadavg_1m": os.getloadavg()[0], **_versions(),
            "blas": blas_info()}


def sgemm_peak(n: int = 1024, repeats: int = 20) -> dict:
    """numpy's float32 n x n matmul rate in GFLOP/s (median and best of `repeats`)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    for _ in range(3):
        np.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    flops = 2 * n ** 3
    return {"n": n, "median_gflops": flops / statistics.median(times) / 1e9,
            "best_gflops": flops / min(times) / 1e9}


def describe(m: dict) -> str:
    """One markdown paragraph for a report header."""
    env = ", ".join(f"{k}={v}" for k, v in m["blas"]["env"].items()) or "none set"
    return (f"{m['cpu']}, {m['cores']} cores (1-min load average at start: "
            f"{m['loadavg_1m']:.1f}); Python {m['python']}, numpy {m['numpy']}, "
            f"numba {m['numba']}, torch {m['torch']}; BLAS env: {env}")


def main(argv=None) -> int:
    import argparse
    import json
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    print(json.dumps({**machine_info(), "sgemm": sgemm_peak()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
