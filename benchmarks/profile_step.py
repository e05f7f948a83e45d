"""Where one nnlang training step spends its time, for tuning the numba backend.

    python benchmarks/profile_step.py MODEL [--steps 7] [--breakdown] [--top 12]

Prints load time, the first `train_step` (compile; run with an empty NNLANG_CACHE_DIR for the
cold number, again for warm), the median steady step, the executable summary, and with
`--breakdown` the time per call signature (kernel ops and loop shape, or library op and input
shapes), summed over its calls, slowest first.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import nnlang
from nnlang.runtime.indices import index_inputs

ROOT = Path(__file__).resolve().parent.parent


def random_feeds(net) -> dict:
    """Inputs of the right shapes; ids spread over their whole range (an embedding's gather and
    scatter_add touch as many rows as real tokens do), other ints and labels 0 or 1."""
    prog, batch = net.program, net.batch
    rng = np.random.default_rng(0)
    rows = {c.name: c.rows for c in index_inputs(prog.graph)}
    feeds = {}
    for name, nid in prog.graph.inputs.items():
        n = prog.graph.node(nid)
        shape = [batch if not isinstance(d, int) else d for d in n.shape]
        if n.dtype.startswith("int") or name == "label":
            high = rows.get(name, 2) if name != "label" else 2
            feeds[name] = rng.integers(0, high, size=shape).astype(n.dtype)
        else:
            feeds[name] = rng.normal(size=shape).astype(n.dtype)
    return feeds


def breakdown(net, feeds, top: int, reps: int = 3) -> None:
    """Times every call inside real steps (wrapped calls, so inputs are fed as usual: replaying
    the calls alone reads buffers a later step reused, e.g. garbage token ids)."""
    exe, _ = net._exes[("train", net.batch)]
    times = [0.0] * len(exe._calls)
    calls = list(exe._calls)

    def timed(i, fn):
        def run(*args):
            t = time.perf_counter()
            fn(*args)
            times[i] += (time.perf_counter() - t) / reps
        return run
    step = exe._step
    # NOTE: the launcher runs the calls it was built with, so a timed one is built around them
    exe._step = exe.backend.launcher([(timed(i, fn), args) for i, (fn, args) in enumerate(calls)],
                                     exe._updates, exe.threaded_blas)
    try:
        for _ in range(reps):
            net.train_step(feeds)
    finally:
        exe._step = step
    by_sig: dict = {}
    for i, s in enumerate(exe.steps):
        g = exe.graph
        if s.kind == "kernel":
            ops = [g.node(m).op for m in s.nodes]
            key = (f"kernel {len(ops)} nodes {'_'.join(dict.fromkeys(ops))[:50]}",
                   tuple(s.group.loop_shape))
        else:
            n = g.node(s.nodes[0])
            key = (f"{s.kind} {n.op}", tuple(tuple(g.node(j).shape) for j in n.inputs[:2]))
        n, total = by_sig.get(key, (0, 0.0))
        by_sig[key] = (n + 1, total + times[i])
    print(f"sum of calls {sum(times) * 1e3:.1f} ms")
    for (what, shape), (n, t) in sorted(by_sig.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"  {t * 1e3:8.2f} ms {n:5d}x {t / n * 1e6:9.1f} us  {what} {shape}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a name in models/ (lstm) or a .nn file's path")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    path = Path(args.model) if args.model.endswith(".nn") else \
        ROOT / "models" / f"{args.model}.nn"
    if not path.is_file():
        ap.error(f"no model file {path}: give a name in models/ (lstm) or a .nn file's path")
    net = nnlang.compile(str(path), backend="numba")
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
        breakdown(net, feeds, args.top)


if __name__ == "__main__":
    main()
