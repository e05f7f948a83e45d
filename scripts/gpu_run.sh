#!/usr/bin/env bash
# Installs nnlang from this working tree, runs the GPU tests and the GPU step-time benchmark on
# a machine with an NVIDIA GPU whose image already has CuPy, numba, networkx, typer, rich,
# pytest and torch, but not lark, and no network.
#
# lark comes from a wheel carried with the tree; fetch it once on a machine with network:
#     pip download lark -d vendor/        (or into .whl/ or shared/wheels/)
#
# Usage: scripts/gpu_run.sh            results go to $OUT (if set) or ./gpu_results
# Limits (seconds): GPU_TEST_S (default 300) for the GPU tests, GPU_BENCH_S (150) per benchmark
# run; GPU_HOST_TESTS=1 also runs the CPU-only tests of tests/gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-$PWD/gpu_results}"
mkdir -p "$RESULTS"
PY="${PYTHON:-python}"

nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$RESULTS/nvidia-smi.txt"
"$PY" -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.runtimeGetVersion())" \
    > "$RESULTS/versions.txt" 2>&1

if ! "$PY" -c "import lark" 2>/dev/null; then
    wheel=$(ls vendor/lark-*.whl .whl/lark-*.whl shared/wheels/lark-*.whl 2>/dev/null | head -n 1)
    if [ -z "$wheel" ]; then
        echo "no lark wheel under vendor/, .whl/ or shared/wheels/ (pip download lark -d vendor/)" >&2
        exit 2
    fi
    "$PY" -m pip install --no-deps --no-index "$wheel" 2>&1 | tail -n 2
fi
"$PY" -m pip install --no-deps --no-build-isolation . > "$RESULTS/install.txt" 2>&1 \
    || { echo "pip install failed, see $RESULTS/install.txt" >&2; exit 3; }

# NOTE: run from the tree (the tests import tests.golden_values), against the installed package
# NOTE: each part has a time limit, so one hang cannot spend the whole device lease
timeout "${GPU_TEST_S:-300}" "$PY" -m pytest -q -m gpu tests/gpu -rs -s \
    --junitxml="$RESULTS/pytest-gpu.xml" 2>&1 | tee "$RESULTS/pytest-gpu.txt"
status=${PIPESTATUS[0]}

timeout "${GPU_BENCH_S:-150}" "$PY" benchmarks/gpu_step_time.py --rounds 30 \
    --out "$RESULTS/gpu_step_time.json" 2>&1 | tee "$RESULTS/gpu_step_time.txt"
# the same with the steady-state step captured into a CUDA graph and replayed
NNLANG_CUDA_GRAPH=1 timeout "${GPU_BENCH_S:-150}" "$PY" benchmarks/gpu_step_time.py --rounds 30 \
    --out "$RESULTS/gpu_step_time_graph.json" 2>&1 | tee "$RESULTS/gpu_step_time_graph.txt"

if [ -n "${GPU_HOST_TESTS:-}" ]; then  # the CPU-only tests, which CI runs anyway
    "$PY" -m pytest -q tests/gpu -m "not gpu" 2>&1 | tail -n 3 | tee "$RESULTS/pytest-host.txt"
fi
exit "$status"
