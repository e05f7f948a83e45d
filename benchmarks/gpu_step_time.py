"""Training-step time on an NVIDIA GPU: nnlang's cupy backend against PyTorch CUDA (fused Adam,
the same batch and the same initial weights), per reference model, as a ratio.

    python benchmarks/gpu_step_time.py [--models mlp,cnn,...] [--rounds 30] [--out results.json]

Both sides end a step by reading the loss (nnlang's train_step returns a float; the torch step
calls .item()), so each timed step includes its device sync. The frameworks alternate for
`--rounds` rounds after warm-up; each model reports the median of the paired ratios. The
pipelined columns time groups of `--pipeline` steps that read only the last loss, as
`nnlang train` does (`train_step(fetch=False)`, then `fetch()`), against torch steps that do
not call .item() until the group's last. nnlang uploads the batch every step; torch's stays on
the device.

`--stand-in` runs the same code without a GPU: nnlang's cupy backend on the CPU stand-in of the
tests (tests/gpu/fake_cupy.py, every kernel as host C++) and torch on the CPU. Its times mean
nothing; it shows that the script, its flags and the backend's code path work before a GPU run
(scripts/gpu_run.sh) spends device time on them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_models import (MODELS, build, feature_name, load_nnlang, loss_fn,  # noqa: E402
                          model_path, random_batch)


def _host_params(net) -> dict:
    import cupy
    g = net.user
    return {k: cupy.asnumpy(net.state[k]) for k, nid in g.params.items()
            if g.node(nid).attrs.get("trainable", True)}


def time_model(name: str, rounds: int, warmup: int, batch: int | None,
               device: str = "cuda", pipeline: int = 10) -> dict:
    import torch

    import nnlang
    program = nnlang.load(str(model_path(name)))
    batch = batch or program.train.batch
    out = {"model": name, "batch": batch}
    dev = torch.device(device)
    module = build(name, program.hparams).to(dev)
    o = program.train.optimizer.options
    cfg_clip = program.train.clip_norm
    lossf = loss_fn(module.loss_kind)
    try:
        net = nnlang.compile(program, backend="cupy", batch=batch, seed=0)
        init = nnlang.compile(program, backend="reference", batch=batch, seed=0)
        feeds = random_batch(init, batch, np.random.default_rng(0))
        t0 = time.perf_counter()
        net.train_step(feeds)
        out["first_step_s"] = time.perf_counter() - t0
        module.cpu()
        load_nnlang(module, _host_params(net))  # NOTE: the weights after nnlang's first step
        module.to(dev)
    except Exception as err:  # noqa: BLE001 - report the torch side and why nnlang is missing
        out["nnlang_error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        net = None
        init = nnlang.compile(program, backend="reference", batch=batch, seed=0)
        feeds = random_batch(init, batch, np.random.default_rng(0))
    opt = torch.optim.Adam(module.parameters(), lr=o["lr"], betas=(o["beta1"], o["beta2"]),
                           eps=o["eps"], weight_decay=o["weight_decay"],
                           fused=dev.type == "cuda")
    feat, lab = feature_name(init)
    x = torch.as_tensor(feeds[feat]).to(dev)
    x = x.long() if not x.is_floating_point() else x
    y = torch.as_tensor(feeds[lab]).to(dev)

    def torch_steps(k: int = 1):
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss = lossf(module(x), y)
            loss.backward()
            if cfg_clip:  # NOTE: the train section's clip_norm is part of nnlang's step too
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg_clip)
            opt.step()
        return loss.item()

    def nnlang_steps(k: int):
        for _ in range(k):
            net.train_step(feeds, fetch=False)
        return net.fetch()[-1][0]

    for _ in range(warmup):
        if net:
            net.train_step(feeds)
        torch_steps()
    t_nn, t_torch = [], []
    for _ in range(rounds):
        if net:
            t0 = time.perf_counter()
            net.train_step(feeds)
            t_nn.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch_steps()
        t_torch.append(time.perf_counter() - t0)
    out["torch_ms"] = 1e3 * statistics.median(t_torch)
    if net:
        out["nnlang_ms"] = 1e3 * statistics.median(t_nn)
        out["ratio"] = statistics.median(a / b for a, b in zip(t_nn, t_torch))
    if net and pipeline:  # NOTE: as `nnlang train` runs: steps queue up, one read per group
        p_nn, p_torch = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            nnlang_steps(pipeline)
            p_nn.append((time.perf_counter() - t0) / pipeline)
            t0 = time.perf_counter()
            torch_steps(pipeline)
            p_torch.append((time.perf_counter() - t0) / pipeline)
        out["pipelined_steps"] = pipeline
        out["nnlang_pipelined_ms"] = 1e3 * statistics.median(p_nn)
        out["torch_pipelined_ms"] = 1e3 * statistics.median(p_torch)
        out["pipelined_ratio"] = statistics.median(a / b for a, b in zip(p_nn, p_torch))
    if net:
        exe = net._exe("train", batch)[0]
        out["kernels"] = exe.summary()
        out["cuda_graph"] = getattr(exe._step, "_graph", None) is not None  # NNLANG_CUDA_GRAPH=1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--pipeline", type=int, default=10,
                    help="also time groups of this many steps with one read each (0: off)")
    ap.add_argument("--torch-device", default="cuda",
                    help="torch's device (cpu: a smoke run of this script without a GPU)")
    ap.add_argument("--stand-in", action="store_true",
                    help="no GPU: nnlang on the tests' CPU stand-in for CuPy, torch on the CPU "
                         "(checks the code path; the times mean nothing)")
    args = ap.parse_args(argv)
    device = "cpu" if args.stand_in else args.torch_device
    stand_in = _install_stand_in() if args.stand_in else None
    try:
        return _run(args, device)
    finally:
        if stand_in is not None:  # NOTE: `import cupy` is the real one again for the caller
            stand_in.undo()


def _run(args, device: str) -> int:
    import torch
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else device,
               "torch": torch.__version__,
               "models": []}
    print(f"{'model':<12} {'batch':>5} {'nnlang ms':>10} {'torch ms':>9} {'ratio':>6} "
          f"{'pipelined':>9}")
    for name in args.models.split(","):
        r = time_model(name, args.rounds, args.warmup, args.batch, device, args.pipeline)
        results["models"].append(r)
        print(f"{name:<12} {r['batch']:>5} {r.get('nnlang_ms', float('nan')):>10.3f} "
              f"{r['torch_ms']:>9.3f} {r.get('ratio', float('nan')):>6.2f} "
              f"{r.get('pipelined_ratio', float('nan')):>9.2f}  "
              f"{r.get('nnlang_error', '')}", flush=True)
        if args.out:  # NOTE: after every model, so a run cut off by its time limit keeps those done
            Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def _install_stand_in():
    """`import cupy` gives the tests' host stand-in (it compiles with c++) until the returned
    monkeypatch is undone."""
    import pytest  # NOTE: the stand-in installs itself through pytest's monkeypatch
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:  # NOTE: the stand-in is `tests.gpu.fake_cupy`
        sys.path.insert(0, str(root))
    from tests.gpu import fake_cupy
    cxx = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if cxx is None:
        sys.exit("--stand-in needs a C++ compiler (c++, g++ or clang++) on PATH")
    patch = pytest.MonkeyPatch()
    fake_cupy.install(patch, [cxx], Path(tempfile.mkdtemp(prefix="gpu-stand-in-")))
    return patch


if __name__ == "__main__":
    sys.exit(main())
