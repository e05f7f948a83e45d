"""Data-parallel scaling on this machine and projected for a cluster (docs/distributed.md).

    python benchmarks/distributed_scaling.py [--models mlp,cnn,...] [--pairs 3] [--steps 30]
                                             [--out results.json] [--table results.json]
                                             [--step-ms mlp=1.5,lstm=49.3,...]

For each reference model, at its train section's (global) batch, paired runs alternate
  A: 1 process on all cores (2 threads here), and
  B: `mpirun -n 2`, each rank bound to one core (1 thread), batch / 2 per rank;
the samples/s ratio B/A of each pair, and its median, say what data parallelism gains over
threads. Each B run also measures the pure communication cost: the allreduce of the model's
gradient buffer alone (after a barrier, so no waiting for a slower rank), against the step.
A third run, 1 process on 1 core, gives the step time the cluster projection starts from.

Projection (weak scaling: every rank keeps the train section's batch): a ring allreduce moves
2 (N - 1) / N x the buffer per rank, plus 2 (N - 1) latencies (ALPHA_S each), so
efficiency = step / (step + allreduce) without overlap; the batch multiple that gets 90%.
The step it starts from is the measured 1-core step, or the one `--step-ms` gives for a model
(docs/distributed.md projects from nnlang's 2-thread steps on a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mlp", "cnn", "lstm", "gru", "transformer")
MIN_TIMED_S = 3.0
ALPHA_S = 20e-6            # per-message latency of a TCP ring hop (10/100 GbE)
LINKS_GBIT = (10, 100)
RANKS = (8, 64)


# *** one run (a worker process, or rank of one) ***

def worker(model: str, steps: int, out: str, one_cpu: bool) -> None:
    if one_cpu:  # NOTE: before nnlang reads the allowed CPUs (its thread count)
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import numpy as np

    import nnlang
    import nnlang.distributed as dist
    world = dist.init()
    program = nnlang.load(str(ROOT / "models" / f"{model}.nn"))
    batch = program.train.batch
    # NOTE: total_steps only so that a cosine schedule is told the run's length (each worker
    # warned it was not); the steps timed here do not depend on the rate
    net = nnlang.compile(program, batch=batch // dist.size(), seed=0, total_steps=10**6)
    dist.broadcast_parameters(net)
    rng = np.random.default_rng(0)
    feeds = [dist.shard(random_batch(net, batch, rng)) for _ in range(4)]
    for k in range(3):
        net.train_step(feeds[k % 4])
    world.barrier("warm-up")
    t0 = time.perf_counter()
    for k in range(3):
        net.train_step(feeds[k % 4])
    # NOTE: at least MIN_TIMED_S of steps (a 2 ms step x 30 is too short to time on a shared
    # machine); rank 0's count for all, so the ranks run the same steps
    guess = int(MIN_TIMED_S / max((time.perf_counter() - t0) / 3, 1e-6)) if dist.lead() else 0
    steps = max(steps, int(world.sum([guess], "the step count")[0]))
    world.seconds = 0.0
    t0 = time.perf_counter()
    for k in range(steps):
        net.train_step(feeds[k % 4])
    wall = time.perf_counter() - t0
    waited = world.seconds / steps
    n = sum(int(v.size) for v in net.parameters().values())
    buf = np.ones(n, np.float32)
    res = np.empty_like(buf)
    times = []
    for _ in range(20):
        world.barrier("timing the allreduce")
        t = time.perf_counter()
        world.allreduce_sum(buf, res)
        times.append(time.perf_counter() - t)
    if dist.lead():
        Path(out).write_text(json.dumps({
            "model": model, "ranks": dist.size(), "threads": len(os.sched_getaffinity(0)),
            "batch": batch, "samples_per_s": steps * batch / wall, "step_s": wall / steps,
            # NOTE: the fastest of 20: what the bytes cost, without a descheduled peer
            "allreduce_in_step_s": waited, "allreduce_s": min(times),
            "allreduce_median_s": statistics.median(times),
            "grad_bytes": 4 * n}))


def random_batch(net, batch: int, rng) -> dict:
    """Random inputs of the reference models' kinds: images or word ids, class ids or 0/1."""
    import numpy as np
    g, hp = net.user, net.program.hparams
    out = {}
    for name, nid in g.inputs.items():
        n = g.node(nid)
        shape = [batch, *(int(d) for d in n.shape[1:])]
        if name == "label":
            high = hp.get("classes", 2)
            out[name] = rng.integers(0, high, size=shape).astype(n.dtype)
        elif n.dtype.startswith("int"):
            out[name] = rng.integers(2, hp.get("vocab", 100), size=shape).astype(n.dtype)
        else:
            out[name] = rng.random(size=shape, dtype=np.float32)
    return out


# *** the driver ***

def _run(cmd: list[str], env: dict | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    subprocess.run(cmd + [out], check=True, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL)
    return json.loads(Path(out).read_text())


def _mpirun() -> list[str]:
    exe = Path(sys.executable).parent / "mpirun"
    return [str(exe) if exe.exists() else "mpirun", "--bind-to", "core", "-n", "2"]


MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OPENBLAS_NUM_THREADS": "1"}


def measure(model: str, pairs: int, steps: int) -> dict:
    me = [sys.executable, __file__, "--worker", model, str(steps)]
    one_core = _run([sys.executable, __file__, "--one-cpu", "--worker", model, str(steps)])
    runs = []
    for _ in range(pairs):
        a = _run(me)
        b = _run(_mpirun() + me, MPI_ENV)
        runs.append({"threads": a, "ranks": b, "ratio": b["samples_per_s"] / a["samples_per_s"]})
    return {"model": model, "one_core": one_core, "pairs": runs,
            "median_ratio": statistics.median(r["ratio"] for r in runs),
            "allreduce_s": statistics.median(r["ranks"]["allreduce_s"] for r in runs),
            "grad_bytes": runs[0]["ranks"]["grad_bytes"]}


def project(step_s: float, nbytes: int) -> dict:
    """Efficiency per (ranks, Gbit/s) and the batch multiple that reaches 90%."""
    out = {}
    for n in RANKS:
        for gbit in LINKS_GBIT:
            comm = 2 * (n - 1) / n * nbytes / (gbit * 1e9 / 8) + 2 * (n - 1) * ALPHA_S
            out[f"{n}x{gbit}"] = {"allreduce_s": comm, "efficiency": step_s / (step_s + comm),
                                  "batch_x_for_90": max(1.0, 9 * comm / step_s)}
    return out


def table(results: list[dict], step_ms: dict[str, float] | None = None) -> str:
    lines = ["| model | grad MB | 1 core step ms | 2 ranks x 1 / 1 x 2 threads (samples/s) "
             "| 2 ranks / 1 core (ideal 2) | allreduce ms (2 ranks) | allreduce / step |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        step = r["one_core"]["step_s"]
        b = r["pairs"][0]["ranks"]
        ratios = ", ".join(f"{p['ratio']:.2f}" for p in r["pairs"])
        speedup = statistics.median(p["ranks"]["samples_per_s"] for p in r["pairs"]) \
            / r["one_core"]["samples_per_s"]
        lines.append(f"| {r['model']} | {r['grad_bytes'] / 1e6:.2f} | {1e3 * step:.1f} | "
                     f"{r['median_ratio']:.2f} ({ratios}) | {speedup:.2f} | "
                     f"{1e3 * r['allreduce_s']:.3f} | {r['allreduce_s'] / b['step_s']:.1%} |")
    lines += ["", "| model | grad MB | step ms | " + " | ".join(
        f"{n} ranks, {g} Gbit/s" for n in RANKS for g in LINKS_GBIT) + " |",
              "|---|---|---|" + "---|" * (len(RANKS) * len(LINKS_GBIT))]
    for r in results:
        step = (step_ms or {}).get(r["model"], 1e3 * r["one_core"]["step_s"]) / 1e3
        p = project(step, r["grad_bytes"])
        lines.append(f"| {r['model']} | {r['grad_bytes'] / 1e6:.2f} | {1e3 * step:.1f} | "
                     + " | ".join(f"{v['efficiency']:.0%} (x{v['batch_x_for_90']:.1f}, "
                                  f"{1e3 * v['allreduce_s']:.1f} ms)" for v in p.values()) + " |")
    return "\n".join(lines)


def _step_ms(spec: str | None) -> dict[str, float]:
    """`mlp=1.5,lstm=49.3` -> {"mlp": 1.5, "lstm": 49.3}."""
    out = {}
    for item in filter(None, (spec or "").split(",")):
        name, sep, ms = item.partition("=")
        try:
            out[name.strip()] = float(ms)
        except ValueError:
            raise SystemExit(f"--step-ms: {item!r} is not MODEL=MS (e.g. mlp=1.5)") from None
        if not sep:
            raise SystemExit(f"--step-ms: {item!r} is not MODEL=MS (e.g. mlp=1.5)")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "STEPS", "OUT"))
    ap.add_argument("--one-cpu", action="store_true")
    ap.add_argument("--table", default=None, help="print the tables of a saved --out file")
    ap.add_argument("--step-ms", default=None, metavar="MODEL=MS,...",
                    help="project the cluster from these step times (ms) instead of the "
                         "measured 1-core step")
    # NOTE: parse_args, not parse_known_args: a mistyped flag must fail, not start the full run
    args = ap.parse_args(argv)
    step_ms = _step_ms(args.step_ms)
    if args.table:
        print(table(json.loads(Path(args.table).read_text()), step_ms))
        return
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2], args.one_cpu)
        return
    results = []
    for model in args.models.split(","):
        results.append(measure(model, args.pairs, args.steps))
        print(f"{model}: ratio {results[-1]['median_ratio']:.2f}", flush=True)
    print(table(results, step_ms))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
