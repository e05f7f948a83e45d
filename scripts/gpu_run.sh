#!/usr/bin/env bash
# Issue 19's one run on a borrowed NVIDIA GPU: the [gpu] tests (CuPy against the golden values
# and the float64 reference on every model), benchmarks/gpu_step_time.py plain and with CUDA
# graphs, `nnlang train --backend cupy` of the CNN on Fashion-MNIST and the LSTM on IMDB, and
# generation on the GPU. How to run it and read it: docs/performance.md, "The GPU run".
#
#   scripts/gpu_prepare.sh      here, once, with network: lark's wheel and the data into .gpu/
#   scripts/gpu_run.sh          there: the device tool's run(command="bash scripts/gpu_run.sh",
#                               carry=[".gpu"], timeout_s=420)
#   GPU_DRY=1 scripts/gpu_run.sh    here, no GPU: every step in its smallest form (the CuPy
#                               stand-in, numba training), to see the script work first
#
# The machine (the 'cuda' image) has python3 with CuPy, numba, networkx, typer, rich, pytest and
# torch, but not lark, and no network. Steps run most valuable first, each under its own limit
# cut to what is left of GPU_BUDGET_S (default 330 s); a step that fails or times out does not
# stop the next, and one that no time is left for is skipped and named in the summary.
# GPU_STEPS=a,b reruns only those steps (names: tests bench bench-graph tests-slow train-cnn
# train-lstm generate generate-bench); GPU_STEP_S=N gives each step N seconds instead of its own
# limit (a rerun of a training cut off). Exit status 1 when a step failed or timed out.
#
# Results go to $OUT (else ./gpu_results), at most 8 files since the device tool returns no more:
# summary.txt (versions, each step's status and the tail of its output), log.txt (everything),
# pytest-gpu.xml, pytest-gpu-slow.xml, gpu_step_time.json, gpu_step_time_graph.json,
# train.txt (the runs' summary.json and metrics.jsonl) and generate_bench.json. Each is
# written as its step ends, so a run cut off still returns what finished.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RESULTS="${OUT:-$ROOT/gpu_results}"
WORK="${GPU_WORK:-${TMPDIR:-/tmp}/nnlang-gpu}"   # NOTE: outside $OUT: it must hold <= 8 files
PY="${PYTHON:-python3}"
DRY="${GPU_DRY:-}"
BUDGET="${GPU_BUDGET_S:-330}"
START=$SECONDS
FAILED_STEPS=()
SKIPPED_STEPS=()
mkdir -p "$RESULTS" "$WORK"
SUMMARY="$RESULTS/summary.txt"
LOG="$RESULTS/log.txt"
: > "$SUMMARY"
: > "$LOG"
export PYTHONUNBUFFERED=1 NNLANG_CACHE_DIR="$WORK/cache" NNLANG_DATA_DIR="$WORK/data"

note() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME LIMIT COMMAND...: COMMAND under min(LIMIT, budget left) seconds, its output into
# log.txt and its last lines into summary.txt; never stops the script
run_step() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${GPU_STEPS:-}" ] && [[ ",$GPU_STEPS," != *",$name,"* ]]; then
        return 0
    fi
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 15 ]; then
        note "== $name: SKIPPED, the budget (GPU_BUDGET_S=$BUDGET) is spent"
        SKIPPED_STEPS+=("$name")
        return 0
    fi
    limit=${GPU_STEP_S:-$limit}
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS part="$WORK/step-$name.txt"
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$part" >> "$LOG"
    local rc=${PIPESTATUS[0]} how=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        how="TIMED OUT"
    elif [ "$rc" -ne 0 ]; then
        how="FAILED"
    fi
    [ "$rc" -ne 0 ] && FAILED_STEPS+=("$name")
    note "== $name: $how (exit $rc) in $((SECONDS - t0))s"
    # NOTE: also on stdout, which is what the device tool shows of a run
    grep -v "Warning\|^  net\.\|^$" "$part" | tail -n 14 | tee -a "$SUMMARY"
}

# *** the machine and the software, before anything can fail ***
{
    echo "date: $(date -u +%FT%TZ)  dry: ${DRY:-no}  budget: ${BUDGET}s"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
        || echo "nvidia-smi: none"
    "$PY" - <<'EOF' 2>&1
import platform
print("python", platform.python_version())
for name in ("numpy", "numba", "torch", "lark"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:
        print(name, "missing:", e)
try:
    import cupy
    print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "driver", cupy.cuda.runtime.driverGetVersion())
except Exception as e:
    print("cupy missing:", type(e).__name__, e)
EOF
} | tee -a "$SUMMARY"

# *** install: lark from .gpu/wheels, nnlang from this tree, both into $WORK/site (--upgrade:
# a rerun on the same machine must not keep the last call's copy) ***
SITE="$WORK/site"
if ! "$PY" -c "import lark" 2>/dev/null; then
    wheel=$(ls .gpu/wheels/lark-*.whl 2>/dev/null | head -n 1)
    if [ -z "$wheel" ]; then
        note "no lark wheel in .gpu/wheels: run scripts/gpu_prepare.sh here and carry .gpu"
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$wheel" \
        >> "$LOG" 2>&1 || note "installing $wheel FAILED (log.txt): nnlang cannot parse a model"
fi
if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$SITE" . \
        >> "$LOG" 2>&1; then
    note "nnlang installed into $SITE"
else  # NOTE: the tree itself is as good for the steps; only the install is then untested
    note "pip install of the tree FAILED (log.txt); running nnlang from the tree"
    mkdir -p "$SITE" && ln -sfn "$ROOT/cli" "$SITE/nnlang_cli"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
NN=("$PY" -m nnlang_cli.main)

# *** data: .gpu/data's xz files (scripts/gpu_prepare.sh) unpacked where nnlang looks: the bare
# IDX files (their sha256 are known) and an aclImdb/ folder; Python's lzma, since the image
# may have no xz ***
"$PY" - "$WORK/data" <<'EOF' >> "$LOG" 2>&1 || note "unpacking .gpu/data FAILED (log.txt)"
import lzma, shutil, sys, tarfile
from pathlib import Path
data, src = Path(sys.argv[1]), Path(".gpu/data")
(data / "fashion-mnist").mkdir(parents=True, exist_ok=True)
for f in sorted(src.glob("fashion-mnist/*.xz")):
    out = data / "fashion-mnist" / f.stem
    if not out.exists():
        with lzma.open(f) as a, open(f"{out}.part", "wb") as b:
            shutil.copyfileobj(a, b)
        Path(f"{out}.part").rename(out)
if (src / "imdb.tar.xz").exists() and not (data / "imdb" / "aclImdb" / "train").is_dir():
    with tarfile.open(src / "imdb.tar.xz", "r:xz") as t:
        # NOTE: the "data" filter (Python >= 3.12) refuses links and paths outside the folder
        t.extractall(data / "imdb", **({"filter": "data"} if hasattr(tarfile, "data_filter")
                                       else {}))
print("data:", sorted(str(p.relative_to(data)) for p in data.glob("*/*")))
EOF
note "setup done in $((SECONDS - START))s"

# *** the steps, most valuable first ***
PYTEST=("$PY" -m pytest -v -p no:cacheprovider --durations=10 -rfEs)
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    PYTEST+=(--timeout=120)   # NOTE: one hung test ends as a failure, not as the step's limit
fi
if [ -n "$DRY" ]; then  # the selections must collect; the host side of the tests runs in CI
    PYTEST+=(--collect-only -q)
    BENCH=("$PY" benchmarks/gpu_step_time.py --stand-in --models mlp --rounds 1 --warmup 0
           --batch 4 --pipeline 2)
    TRAIN=(--backend numba --max-steps 2)
    GEN_BACKEND=numba
    GEN_BENCH=(--backend numba --batches 1 --lengths 4,8 --rounds 1)
else
    BENCH=("$PY" benchmarks/gpu_step_time.py --rounds 30)
    TRAIN=(--backend cupy)
    GEN_BACKEND=cupy
    GEN_BENCH=(--backend cupy --rounds 1)
fi

run_step tests 150 "${PYTEST[@]}" -m "gpu and not slow" tests/gpu \
    --junitxml="$RESULTS/pytest-gpu.xml"
run_step bench 100 "${BENCH[@]}" --out "$RESULTS/gpu_step_time.json"
# the same with the steady-state step captured into a CUDA graph and replayed
run_step bench-graph 80 env NNLANG_CUDA_GRAPH=1 "${BENCH[@]}" \
    --out "$RESULTS/gpu_step_time_graph.json"
# golden values and float64 steps of the models the default suite leaves to -m slow
run_step tests-slow 150 "${PYTEST[@]}" -m "gpu and slow" tests/gpu \
    --junitxml="$RESULTS/pytest-gpu-slow.xml"

train_step() {  # NAME LIMIT FILE ARGS...: a fresh run in $WORK/runs/NAME, its metrics kept
    local name=$1 limit=$2 file=$3
    shift 3
    rm -rf "$WORK/runs/$name"
    run_step "train-$name" "$limit" "${NN[@]}" train "$file" "$@" "${TRAIN[@]}" \
        --out "$WORK/runs/$name"
    [ -d "$WORK/runs/$name" ] || return 0
    for f in summary.json metrics.jsonl; do
        [ -e "$WORK/runs/$name/$f" ] && { echo "# $name $f"; cat "$WORK/runs/$name/$f"; }
    done >> "$RESULTS/train.txt"
}
train_step cnn 150 models/cnn.nn --data fashion-mnist
train_step lstm 180 models/lstm.nn --data imdb
# the decode step on the device under the host-side processors, two prompts of two lengths
# (left padding); the weights of a short run, since only the path is checked here
generate_check() {
    "$PY" -m nnlang_cli.main train models/gpt.nn --max-steps 20 --backend "$GEN_BACKEND" \
        --out "$WORK/runs/gpt" > /dev/null \
    && "$PY" -m nnlang_cli.main generate models/gpt.nn -c "$WORK/runs/gpt" \
        --backend "$GEN_BACKEND" -p "This movie" -p "I" --max-new 24 --top-k 5 --seed 0 \
        --repetition-penalty 1.2 --no-repeat-ngram-size 3 --num-return-sequences 2 --json
}
export -f generate_check
export PY WORK GEN_BACKEND
rm -rf "$WORK/runs/gpt"
run_step generate 120 bash -c generate_check
run_step generate-bench 90 "$PY" benchmarks/generate_bench.py "${GEN_BENCH[@]}" \
    --out "$RESULTS/generate_bench.json"
timeout 30 "${NN[@]}" cache >> "$LOG" 2>&1   # what the run left in the cache

note "done in $((SECONDS - START))s; failed: ${FAILED_STEPS[*]:-none}"
if [ "${#SKIPPED_STEPS[@]}" -gt 0 ]; then
    note "skipped: rerun with GPU_STEPS=$(IFS=,; echo "${SKIPPED_STEPS[*]}")"
fi
note "files: $(ls "$RESULTS" | tr '\n' ' ')"
[ "${#FAILED_STEPS[@]}" -eq 0 ]
