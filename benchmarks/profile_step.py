"""Where one nnlang training step spends its time, for tuning the numba backend.

    python benchmarks/profile_step.py MODEL [--steps 7] [--breakdown] [--top 12]

Prints load time, the first `train_step` (compile; run with an empty NNLANG_CACHE_DIR for the
cold number, again for warm), the median steady step, the executable summary, and with
`--breakdown` the time per step kind/op and the slowest calls (each call timed alone, so the
sum is a little above the real step).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import nnlang

ROOT = Path(__file__).resolve().parent.parent


def random_feeds(net) -> dict:
    prog, batch = net.program, net.batch
    rng = np.random.default_rng(0)
    feeds = {}
    for name, nid in prog.graph.inputs.items():
        n = prog.graph.node(nid)
        shape = [batch if not isinstance(d, int) else d for d in n.shape]
        if n.dtype.startswith("int") or name == "label":
            feeds[name] = rng.integers(0, 2, size=shape).astype(n.dtype)
        else:
            feeds[name] = rng.normal(size=shape).astype(n.dtype)
    return feeds


def breakdown(exe, top: int, reps: int = 3) -> None:
    times = [0.0] * len(exe._calls)
    with exe.backend.session():
        for _ in range(reps):
            for i, (fn, args) in enumerate(exe._calls):
                t = time.perf_counter()
                fn(*args)
                times[i] += (time.perf_counter() - t) / reps
    by_kind: dict = {}
    for i, t in enumerate(times):
        s = exe.steps[i]
        key = s.kind if s.kind == "kernel" else f"{s.kind}:{exe.graph.node(s.nodes[0]).op}"
        n, total = by_kind.get(key, (0, 0.0))
        by_kind[key] = (n + 1, total + t)
    print(f"sum of calls {sum(times) * 1e3:.1f} ms")
    for key, (n, t) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"  {key:<22} {n:5d} calls {t * 1e3:8.1f} ms")
    for i in sorted(range(len(times)), key=lambda i: -times[i])[:top]:
        s = exe.steps[i]
        ops = [exe.graph.node(m).op for m in s.nodes]
        print(f"  {times[i] * 1e3:7.2f} ms {s.kind:<6} {len(ops):3d} nodes {ops[:4]} "
              f"{s.group.loop_shape if s.group else exe.graph.node(s.nodes[0]).shape}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    t0 = time.perf_counter()
    net = nnlang.compile(str(ROOT / "models" / f"{args.model}.nn"), backend="numba")
    feeds = random_feeds(net)
    t1 = time.perf_counter()
    net.train_step(feeds)
    t2 = time.perf_counter()
    steps = []
    for _ in range(args.steps):
        t = time.perf_counter()
        net.train_step(feeds)
        steps.append(time.perf_counter() - t)
    exe, _ = net._exes[("train", net.batch)]
    print(f"{args.model}: load {t1 - t0:.2f} s, first step (compile) {t2 - t1:.2f} s, "
          f"steady median {statistics.median(steps) * 1e3:.1f} ms "
          f"{[round(s * 1e3, 1) for s in steps]}")
    print(exe.summary())
    if args.breakdown:
        breakdown(exe, args.top)


if __name__ == "__main__":
    main()
