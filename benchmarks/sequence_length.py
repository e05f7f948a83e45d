"""Training-step time and memory of the whole-review LSTM (models/lstm_full.nn: `symbol seq`,
batch 64, 128 units) against the sequence length, each length in a fresh process so its peak
memory is its own.

    python benchmarks/sequence_length.py [--lengths 50,100,200,500,1000,2000] [--steps 5]
                                         [--memory-only 5000]

Per length: the median step (after one untimed step), ms per token-step (flat when the step
time grows linearly), the planned buffer bytes of the step, what of it the forward scan keeps
for the backward (its stacked output and its input projection: the saved activations), and
the process's peak resident memory. `--memory-only` lengths run one step (no timing).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, resource, statistics, time
import numpy as np
import nnlang
T, steps = {length}, {steps}
net = nnlang.compile({model!r}, backend="numba", seed=0)
rng = np.random.default_rng(0)
feeds = {{"tokens": rng.integers(1, 20000, size=(64, T)).astype(np.int32),
          "label": rng.integers(0, 2, size=64).astype(np.float32)}}
net.train_step(feeds)
times = []
for _ in range(steps):
    t = time.perf_counter()
    net.train_step(feeds)
    times.append(time.perf_counter() - t)
exe = [e for k, e in net._exes.items() if k[0] == "train"][0]
exe = exe[0] if isinstance(exe, tuple) else exe
g = exe.graph
saved = 0
for n in g:
    if n.op == "scan" and not n.attrs["reverse"]:
        for i in [n.id, *n.inputs[1:1 + n.attrs["body"].n_seqs]]:
            m = g.node(i)
            saved += int(np.prod([int(d) for d in m.shape])) * np.dtype(m.dtype).itemsize
print("PROBE" + json.dumps({{"length": T, "step_s": statistics.median(times) if times else None,
    "planned_bytes": exe.memory.total_bytes, "saved_bytes": saved,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def probe(length: int, steps: int) -> dict:
    code = _PROBE.format(length=length, steps=steps, model=str(ROOT / "models" / "lstm_full.nn"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=os.environ)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE")]
    if p.returncode or not line:
        raise SystemExit(f"length {length} failed:\n{p.stderr[-2000:]}")
    return json.loads(line[-1][5:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="50,100,200,500,1000,2000")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--memory-only", default="5000")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = [probe(int(t), args.steps) for t in args.lengths.split(",") if t]
    rows += [probe(int(t), 0) for t in args.memory_only.split(",") if t]
    mib = 1 << 20
    print("| tokens | step ms | us per token-step | planned MiB | saved activations MiB | "
          "peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        step = r["step_s"]
        cells = (["-", "-"] if step is None else
                 [f"{step * 1e3:.0f}", f"{step * 1e6 / (64 * r['length']):.2f}"])
        print(f"| {r['length']} | {cells[0]} | {cells[1]} | {r['planned_bytes'] / mib:.0f} | "
              f"{r['saved_bytes'] / mib:.0f} | {r['peak_rss_bytes'] / mib:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
