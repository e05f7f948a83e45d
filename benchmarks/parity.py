"""Accuracy parity: the same model trained by nnlang and by PyTorch, from the same initial weights,
on the same real data in the same batch order, with the model's own train section (optimizer,
lr, batch, epochs, clipping, L2, schedule). Records test accuracy and wall time after every epoch.

    python benchmarks/parity.py --model mlp --epochs 3 [--seeds 0,1,2] [--backend numba]
                                [--limit-train N] [--limit-test N] [--out parity.json]

Data: nnlang's loaders (`load_dataset`; MNIST for mlp, Fashion-MNIST for cnn, IMDB vocab 20000
maxlen 200 for lstm/gru/conv1d), and the arrays they return feed both sides, so tokenization is
identical. Batch order: the trainer's (`feeds.order_rng(seed)`, one permutation per epoch), so
the nnlang side sees exactly the batches `nnlang train` would; torch gets the same batches.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402
from torch_models import (MODELS, build, hits, load_nnlang, loss_fn, model_path,  # noqa: E402
                          nnlang_trainable)


def _eval_batch(n: int, batch: int, cap: int = 1000) -> int:
    """A batch dividing the test set (so nnlang compiles one extra size, not two), else `batch`."""
    best = max((d for d in range(1, min(cap, n) + 1) if n % d == 0), default=batch)
    return best if best >= 100 or best == n else batch


def _length(arrays: dict) -> int:
    return len(next(iter(arrays.values())))


def _data(program, cfg, limit_train, limit_test, data=None):
    from nnlang.train import feeds
    ds = feeds.load_data(feeds.replace_data(cfg.data, data) if data else cfg.data)
    mapping = feeds.match_inputs(program.graph, ds.inputs, ds.targets, ds.name)
    train = feeds.model_arrays(program.graph, ds.train.arrays, mapping)
    test = feeds.model_arrays(program.graph, ds.test.arrays, mapping)
    return ds.name, _subset(train, limit_train), _subset(test, limit_test)


def _subset(arrays: dict, limit: int | None) -> dict:
    """A fixed random `limit` examples (the same for every seed). NOTE: not the first `limit`:
    IMDB's splits are ordered by label, so a prefix would hold one class only."""
    n = _length(arrays)
    if not limit or limit >= n:
        return arrays
    keep = np.sort(np.random.default_rng(12345).permutation(n)[:limit])
    return {k: v[keep] for k, v in arrays.items()}


def _torch_optimizer(module, cfg):
    import torch
    o = cfg.optimizer.options
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.optimizer.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.optimizer.name == "adam" else torch.optim.AdamW
        return cls(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                   weight_decay=o["weight_decay"], fused=True)
    if cfg.optimizer.name == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                               nesterov=o["nesterov"], weight_decay=o["weight_decay"])
    if cfg.optimizer.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o["lr"], alpha=o["alpha"], eps=o["eps"],
                                   momentum=o["momentum"], weight_decay=o["weight_decay"])
    raise ValueError(f"no torch optimizer for {cfg.optimizer.name}")


def _tensors(b: dict, feat: str, lab: str):
    import torch
    x = torch.from_numpy(np.ascontiguousarray(b[feat]))
    return (x if x.is_floating_point() else x.long()), torch.from_numpy(b[lab])


def run_seed(name: str, seed: int, epochs: int | None, backend: str, limit_train, limit_test,
             threads: int, sides=("nnlang", "torch"), data: str | None = None,
             constant_lr: bool = False, clip_norm: float | None = None) -> dict:
    import torch

    import nnlang
    from nnlang.runtime.net import Net
    from nnlang.train import feeds
    from nnlang.ops.optim import learning_rate
    from nnlang.train.trainer import evaluate
    torch.set_num_threads(threads)
    program = nnlang.load(str(model_path(name)))
    cfg = program.train.with_overrides(seed=seed, epochs=epochs)
    if constant_lr:  # NOTE: the reference runs use the optimizer's lr throughout
        cfg = dataclasses.replace(cfg, schedule=None)
    if clip_norm is not None:
        cfg = dataclasses.replace(cfg, clip_norm=clip_norm or None)
    dataset, train, test = _data(program, cfg, limit_train, limit_test, data)
    feat, lab = [k for k in program.graph.inputs if not k.startswith("_")][:2]
    n, batch = _length(train), cfg.batch
    per_epoch = n // batch
    eval_batch = _eval_batch(_length(test), batch)

    # the trainer's setup: a Net with the run's config, its total steps for schedules
    net = Net(program, backend=backend, batch=batch, seed=seed)
    net.config, net.total_steps = cfg, cfg.epochs * per_epoch
    module = build(name, program.hparams)
    load_nnlang(module, nnlang_trainable(net))
    opt, lossf = _torch_optimizer(module, cfg), loss_fn(module.loss_kind)
    l2_params = [p for p in module.parameters() if p.requires_grad and p.dim() >= 2]

    def torch_step(x, y, lr):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = lossf(module(x), y)
        if cfg.l2:  # nnlang's l2: Keras-style, on weight matrices and kernels only
            loss = loss + cfg.l2 * sum((p * p).sum() for p in l2_params)
        loss.backward()
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip_norm)
        opt.step()
        return loss.item()

    def torch_eval():
        module.eval()
        correct = 0
        with torch.no_grad():
            for b in feeds.batches(test, 1000, drop_last=False):
                x, y = _tensors(b, feat, lab)
                correct += hits(module.loss_kind, module(x), y)
        module.train()
        return correct / _length(test)

    acc_key = next(iter(program.graph.metrics))
    rng = feeds.order_rng(seed)
    rows = []
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        row = {"epoch": epoch + 1}
        if "nnlang" in sides:
            net.epoch = epoch
            t0 = time.perf_counter()
            losses = []
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for b in feeds.batches(train, batch, order):
                    losses.append(net.train_step(b))
            row["nnlang_train_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = evaluate(net, test, eval_batch)
            row.update(nnlang_eval_s=time.perf_counter() - t0, nnlang_acc=res[acc_key],
                       nnlang_test_loss=res["loss"], nnlang_train_loss=float(np.mean(losses)))
        if "torch" in sides:
            t0 = time.perf_counter()
            losses = []
            step = epoch * per_epoch
            for i, b in enumerate(feeds.batches(train, batch, order)):
                lr = learning_rate(cfg.optimizer.options["lr"], cfg.schedule, step + i, epoch,
                                   cfg.epochs * per_epoch)
                losses.append(torch_step(*_tensors(b, feat, lab), lr))
            row["torch_train_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            row.update(torch_acc=torch_eval(), torch_eval_s=time.perf_counter() - t0,
                       torch_train_loss=float(np.mean(losses)))
        rows.append(row)
        print(f"[{name} seed {seed}] " + "  ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
            file=sys.stderr, flush=True)
    return {"model": name, "seed": seed, "dataset": dataset, "train_examples": n,
            "test_examples": _length(test), "batch": batch, "steps_per_epoch": per_epoch,
            "config": str(cfg), "rows": rows}


def _cell(values, fmt):
    vals = [v for v in values if v is not None]
    if not vals:
        return "not measured yet"
    med = format(statistics.median(vals), fmt)
    return med if len(vals) == 1 else f"{med} [{format(min(vals), fmt)}-{format(max(vals), fmt)}]"


def table(runs: list[dict]) -> str:
    """Per epoch: medians over seeds (with the range when there are several)."""
    lines = ["| model | epoch | seeds | nnlang test acc | torch test acc | nnlang train s/epoch | "
             "torch train s/epoch |", "|---|---:|---:|---:|---:|---:|---:|"]
    epochs = max(len(r["rows"]) for r in runs)
    for e in range(epochs):
        rows = [r["rows"][e] for r in runs if len(r["rows"]) > e]
        lines.append(
            f"| {runs[0]['model']} | {e + 1} | {len(rows)} | "
            f"{_cell([x.get('nnlang_acc') for x in rows], '.4f')} | "
            f"{_cell([x.get('torch_acc') for x in rows], '.4f')} | "
            f"{_cell([x.get('nnlang_train_s') for x in rows], '.1f')} | "
            f"{_cell([x.get('torch_train_s') for x in rows], '.1f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=MODELS)
    ap.add_argument("--epochs", type=int, default=None, help="default: the train section's")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--limit-train", type=int, default=None,
                    help="a fixed random N train examples (smoke runs)")
    ap.add_argument("--limit-test", type=int, default=None,
                    help="a fixed random N test examples")
    ap.add_argument("--only", choices=("nnlang", "torch"), default=None,
                    help="train one side only (e.g. the torch reference while nnlang is built)")
    ap.add_argument("--constant-lr", action="store_true",
                    help="drop the train section's schedule (the reference recipe)")
    ap.add_argument("--clip-norm", type=float, default=None,
                    help="gradient clipping by global norm (0: none); default: the section's")
    ap.add_argument("--data", help="another dataset spec (e.g. mnist-sample for a smoke run)")
    ap.add_argument("--out", help="JSON results file (default: none)")
    ap.add_argument("--markdown", help="also write the markdown table here")
    args = ap.parse_args(argv)
    os.environ.setdefault("NNLANG_DATA_DIR",
                          str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    sides = (args.only,) if args.only else ("nnlang", "torch")
    machine = machine_info()  # before the runs: the load average is the one at the start
    runs = [run_seed(args.model, int(s), args.epochs, args.backend, args.limit_train,
                     args.limit_test, args.threads, sides, args.data, args.constant_lr,
                     args.clip_norm)
            for s in args.seeds.split(",")]
    r0 = runs[0]
    head = (f"{args.model} on {r0['dataset']}: {r0['train_examples']} train / "
            f"{r0['test_examples']} test examples, batch {r0['batch']}, {r0['config']}; nnlang "
            f"backend {args.backend}, torch threads {args.threads}. Machine: {describe(machine)}")
    md = head + "\n\n" + table(runs)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "args": vars(args),
                                              "runs": runs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
