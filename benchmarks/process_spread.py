"""Step time over many fresh processes: each framework alone in its own process, alternating
(nnlang, torch, nnlang, ...), so what one process's memory layout, thread placement or data
does to its steps shows as spread between processes (the median within a process hides it).

    python benchmarks/process_spread.py [--models lstm,gru] [--processes 10] [--rounds 8]
                                        [--torch-flush-denormal]

Each process runs benchmarks/step_time.py --only <side> (warm-up, then `--rounds` single steps
after an idle gap; its median is one sample here). Reports each side's per-process medians,
their min / median / max, and the ratio of the medians. The kernel cache is warmed first, so
no nnlang process compiles. `--torch-flush-denormal` runs PyTorch with
torch.set_flush_denormal(True), as nnlang's CPU steps run (backends/denormals.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(model: str, side: str, rounds: int, env: dict) -> float:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        p = subprocess.run([sys.executable, str(HERE / "step_time.py"), "--models", model,
                            "--rounds", str(rounds), "--no-compile-times", "--only", side,
                            "--out", f.name], env=env, capture_output=True, text=True)
        # NOTE: the child's own message (no torch, an unknown model, ...), not a
        # CalledProcessError that hides it
        if p.returncode:
            raise SystemExit(f"benchmarks/step_time.py --only {side} --models {model} failed:\n"
                             + (p.stderr.strip() or p.stdout.strip() or "no output"))
        r = json.loads(Path(f.name).read_text())["results"][0]
    key = "nnlang_ms" if side == "nnlang" else "torch_ms"
    if key not in r:
        raise SystemExit(f"benchmarks/step_time.py --only {side} --models {model}: no time "
                         f"measured ({r.get('nnlang_error', 'no error recorded')})")
    return r[key]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lstm,gru")
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--torch-flush-denormal", action="store_true")
    args = ap.parse_args(argv)
    env = {**os.environ, "TORCH_FLUSH_DENORMAL": "1" if args.torch_flush_denormal else "0"}
    env.setdefault("NNLANG_DATA_DIR", str(HERE.parents[1] / "shared" / "datasets"))
    rows = []
    for model in args.models.split(","):
        one(model, "nnlang", 1, env)  # NOTE: fills the kernel cache; its time is not counted
        runs = {"nnlang": [], "torch": []}
        for _ in range(args.processes):
            for side in runs:
                runs[side].append(one(model, side, args.rounds, env))
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows.append((model, runs, med))
        print(f"{model}: " + "; ".join(f"{k} {sorted(round(x, 1) for x in v)}"
                                       for k, v in runs.items()), file=sys.stderr, flush=True)
    print(f"{args.processes} fresh processes per side, alternating; torch flush_denormal: "
          f"{args.torch_flush_denormal}\n")
    print("| model | nnlang ms min / median / max | torch ms min / median / max | "
          "nnlang/torch (medians) |")
    print("|---|---:|---:|---:|")
    for model, runs, med in rows:
        cells = [f"{min(v):.1f} / {med[k]:.1f} / {max(v):.1f}" for k, v in runs.items()]
        print(f"| {model} | {cells[0]} | {cells[1]} | {med['nnlang'] / med['torch']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
