"""Training-step time of each reference model: nnlang (one compiled step: forward, backward, Adam)
against PyTorch eager on the CPU (fused Adam, the same batch and the same initial weights).

    python benchmarks/step_time.py [--models mlp,cnn,...] [--rounds 20] [--backend numba]
                                   [--threads 2] [--block 1] [--out results.json]

The two frameworks alternate (nnlang step, torch step, ...) for `--rounds` rounds after warm-up,
so slow drift of a shared machine hits both; each model reports the median of the paired ratios.
With `--block N` each framework runs N steps in a row per round (timing all but the first), as
in training; by default each round is one step of each, after an idle pause.
GFLOP/s counts only the GEMM/conv work (forward FLOPs x 3 for forward + backward), against
numpy's measured SGEMM peak. Compile times are measured in fresh subprocesses: cold (empty
NNLANG_CACHE_DIR) and warm (a second process with the same cache dir); the table shows the
build of the training step's executable, the JSON also the first step with it.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info, sgemm_peak  # noqa: E402
from torch_models import (MODELS, ROOT, build, feature_name, forward_gemm_flops,  # noqa: E402
                          load_nnlang, loss_fn, model_path, nnlang_trainable, random_batch)

NOT_MEASURED = "not measured yet"


def _torch_step(module, opt, lossf, x, y, clip_norm=None):
    opt.zero_grad(set_to_none=True)
    loss = lossf(module(x), y)
    loss.backward()
    if clip_norm:  # NOTE: the train section's clip_norm is part of nnlang's step too
        import torch
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip_norm)
    opt.step()
    return loss.item()  # NOTE: nnlang's train_step hands back a Python float too


def _to_torch(feeds: dict, feat: str, lab: str):
    import torch
    x = torch.as_tensor(feeds[feat])
    x = x.long() if not x.is_floating_point() else x
    return x, torch.as_tensor(feeds[lab])


def _timed_block(step, gap: float, block: int) -> float:
    """After `gap` s of untimed sleep, `block` steps back to back: the one step's time
    (block 1), or the median of all but the first (which absorbs waking the thread pools)."""
    time.sleep(gap)
    times = []
    for _ in range(block):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] if block > 1 else times)


def time_model(name: str, backend: str, rounds: int, warmup: int, batch: int | None,
               threads: int, torch_only: bool = False, gap: float = 0.2,
               block: int = 1, nnlang_only: bool = False) -> dict:
    """Alternating rounds of both frameworks; the torch side alone when nnlang fails to compile
    or run the model (the error is recorded).

    NOTE: `gap` seconds of sleep (untimed) before each step let the other runtime's worker
    threads park: OpenBLAS and OpenMP workers spin for a while after a call, and on a 2-core
    machine a spinning pool of one framework slows the other's next step many times over.
    With `block` > 1 each framework runs that many steps in a row per round, as in training,
    and a round's time is the median of all but its first step."""
    import torch

    import nnlang
    torch.set_num_threads(threads)
    if os.environ.get("TORCH_FLUSH_DENORMAL") == "1":  # NOTE: PyTorch's default keeps them
        torch.set_flush_denormal(True)
    program = nnlang.load(str(model_path(name)))
    batch = batch or program.train.batch
    out = {"model": name, "batch": batch, "backend": backend,
           "gemm_gflop_per_step": 3 * forward_gemm_flops(name, batch, program.hparams) / 1e9}
    init = nnlang.compile(program, backend="reference", batch=batch, seed=0)  # weights, shapes
    module = build(name, program.hparams)
    load_nnlang(module, nnlang_trainable(init))
    o = program.train.optimizer.options
    clip = program.train.clip_norm
    opt = torch.optim.Adam(module.parameters(), lr=o["lr"], betas=(o["beta1"], o["beta2"]),
                           eps=o["eps"], weight_decay=o["weight_decay"], fused=True)
    lossf = loss_fn(module.loss_kind)
    feeds = random_batch(init, batch, np.random.default_rng(0))
    x, y = _to_torch(feeds, *feature_name(init))

    net = None
    try:
        if torch_only:
            raise RuntimeError("--only torch")
        net = nnlang.compile(program, backend=backend, batch=batch, seed=0)
        t0 = time.perf_counter()
        net.train_step(feeds)  # the first step compiles; keep its time apart
        out["first_step_s"] = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001 - report the torch side and why nnlang is missing
        out["nnlang_error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        net = None
    for _ in range(warmup):
        if net:
            net.train_step(feeds)
        if not nnlang_only:
            _torch_step(module, opt, lossf, x, y, clip)
    t_nn, t_torch = [], []
    for _ in range(rounds):
        if net:
            t_nn.append(_timed_block(lambda: net.train_step(feeds), gap, block))
        if not nnlang_only:
            t_torch.append(_timed_block(lambda: _torch_step(module, opt, lossf, x, y, clip), gap,
                                        block))
    if t_torch:
        out["torch_ms"] = 1e3 * statistics.median(t_torch)
        out["torch_ms_all"] = [1e3 * t for t in t_torch]
        out["torch_gflops"] = out["gemm_gflop_per_step"] / (out["torch_ms"] / 1e3)
    if net and nnlang_only:
        out["nnlang_ms"] = 1e3 * statistics.median(t_nn)
        out["nnlang_ms_all"] = [1e3 * t for t in t_nn]
    elif net:
        out["nnlang_ms"] = 1e3 * statistics.median(t_nn)
        out["nnlang_ms_all"] = [1e3 * t for t in t_nn]
        out["ratio"] = statistics.median(a / b for a, b in zip(t_nn, t_torch))
        out["nnlang_gflops"] = out["gemm_gflop_per_step"] / (out["nnlang_ms"] / 1e3)
    return out


# *** compile times, each in a fresh process ***

_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import nnlang, numpy as np
sys.path.insert(0, {bench!r})
from torch_models import random_batch
t1 = time.perf_counter()
net = nnlang.compile({path!r}, backend={backend!r}, batch={batch}, seed=0)
feeds = random_batch(net, net.batch, np.random.default_rng(0))
t2 = time.perf_counter()
net.graph("train")  # builds the training step's executable: the compile alone
tb = time.perf_counter()
net.train_step(feeds)
t3 = time.perf_counter()
net.train_step(feeds)
t4 = time.perf_counter()
print("PROBE" + json.dumps({{"import_s": t1 - t0, "build_s": tb - t2, "first_step_s": t3 - t2,
                            "second_step_s": t4 - t3}}))
"""


def compile_times(name: str, backend: str, batch: int | None, timeout: float = 1800) -> dict:
    """Cold: a fresh process with an empty NNLANG_CACHE_DIR; warm: a second process that finds
    the first one's cache. build_s: building the training step's executable (the compile);
    first_step_s: that and running the first step (which also faults in every fresh buffer);
    second_step_s: the next step."""
    import nnlang
    batch = batch or nnlang.load(str(model_path(name))).train.batch
    code = _PROBE.format(bench=str(Path(__file__).resolve().parent), path=str(model_path(name)),
                         backend=backend, batch=batch)
    out = {}
    with tempfile.TemporaryDirectory(prefix="nnlang-cache-") as cache:
        env = {**os.environ, "NNLANG_CACHE_DIR": cache}
        for kind in ("cold", "warm"):
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, timeout=timeout, cwd=ROOT)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("PROBE")]
            if p.returncode or not line:
                out[kind] = {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
                break
            out[kind] = json.loads(line[-1][5:])
    return out


# *** report ***

def _f(v, fmt):
    return NOT_MEASURED if v is None else format(v, fmt)


def table(results: list[dict], peak: float) -> str:
    rows = ["| model | batch | nnlang ms | torch ms | nnlang/torch (median of pairs) | GEMM GFLOP "
            "per step | nnlang GFLOP/s (% of SGEMM peak) | torch GFLOP/s (% of peak) | cold "
            "compile s | warm compile s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        def rate(key):
            v = r.get(key)
            return NOT_MEASURED if v is None else f"{v:.1f} ({100 * v / peak:.0f}%)"
        ct = r.get("compile", {})
        cold, warm = (ct.get(k, {}).get("build_s") for k in ("cold", "warm"))
        rows.append(f"| {r['model']} | {r['batch']} | {_f(r.get('nnlang_ms'), '.1f')} | "
                    f"{_f(r.get('torch_ms'), '.1f')} | {_f(r.get('ratio'), '.2f')} | "
                    f"{r['gemm_gflop_per_step']:.3f} | {rate('nnlang_gflops')} | "
                    f"{rate('torch_gflops')} | {_f(cold, '.1f')} | {_f(warm, '.1f')} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--batch", type=int, default=None,
                    help="override every model's batch (smoke runs); default: the train section")
    ap.add_argument("--no-compile-times", action="store_true",
                    help="skip the cold/warm compile subprocesses")
    ap.add_argument("--gap", type=float, default=0.2,
                    help="untimed sleep (s) before each step so idle worker threads park")
    ap.add_argument("--block", type=int, default=1,
                    help="steps in a row per framework and round (the first untimed), as in "
                         "training; 1: single steps, each after the gap")
    ap.add_argument("--only", choices=("torch", "nnlang"), default=None,
                    help="time one side alone (benchmarks/process_spread.py runs each side in "
                         "its own fresh processes)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("NNLANG_DATA_DIR",
                          str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))

    machine = machine_info()
    peak_before = sgemm_peak()
    results = []
    for name in args.models.split(","):
        r = time_model(name, args.backend, args.rounds, args.warmup, args.batch, args.threads,
                       args.only == "torch", args.gap, args.block, args.only == "nnlang")
        if not args.no_compile_times and "nnlang_error" not in r:
            r["compile"] = compile_times(name, args.backend, args.batch)
        results.append(r)
        print(f"{name}: nnlang {_f(r.get('nnlang_ms'), '.1f')} ms, "
              f"torch {_f(r.get('torch_ms'), '.1f')} ms"
              + (f"  [nnlang: {r['nnlang_error']}]" if "nnlang_error" in r else ""),
              file=sys.stderr, flush=True)
    peak_after = sgemm_peak()
    peak = statistics.median([peak_before["median_gflops"], peak_after["median_gflops"]])
    report = (f"Machine: {describe(machine)}. numpy SGEMM 1024^3 peak: {peak:.1f} GFLOP/s "
              f"(median before/after: {peak_before['median_gflops']:.1f} / "
              f"{peak_after['median_gflops']:.1f}). nnlang backend: {args.backend}; torch "
              f"threads: {args.threads}; {args.rounds} alternating rounds after {args.warmup} "
              f"warm-up steps, {args.gap} s untimed gap before each "
              + ("step" if args.block == 1 else
                 f"block of {args.block} steps (median of the last {args.block - 1})")
              + ".\n\n"
              + table(results, peak))
    print(report)
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"machine": machine, "sgemm": [peak_before, peak_after], "peak_gflops": peak,
             "args": vars(args), "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
