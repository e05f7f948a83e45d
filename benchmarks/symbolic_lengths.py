"""What a new sequence length costs a net whose length is a `symbol`: the Transformer with
`symbol seq` runs one training step at each length; the first length pays the kernel compiles,
every later one only rebuilds its plan (specialize, decompose, autodiff, optimize, schedule,
memory, binding the cached kernels), which this prints (wall and CPU seconds: on a shared
machine the CPU time is the steadier number) with the kernels compiled meanwhile.

    python benchmarks/symbolic_lengths.py [--lengths 32,48,64,128,256] [--batch 32]
                                           [--mode train|predict]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import nnlang
from nnlang.backends.base import get_backend

MODEL = Path(__file__).resolve().parents[1] / "models" / "transformer.nn"


def symbolic_transformer() -> str:
    """models/transformer.nn with `symbol seq` as the token dim (max_len stays `maxlen`)."""
    src, fixed = MODEL.read_text(), "input tokens: int32[batch, maxlen]"
    if fixed not in src:  # NOTE: else it would time the fixed-length model without saying so
        raise SystemExit(f"benchmarks/symbolic_lengths.py: {MODEL} no longer declares "
                         f"`{fixed}`; update symbolic_transformer() to its new input line")
    return src.replace(fixed, "symbol seq\n  input tokens: int32[batch, seq]")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="32,48,64,128,80,256")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mode", default="train", choices=("train", "predict"))
    args = ap.parse_args(argv)
    net = nnlang.compile(symbolic_transformer(), batch=args.batch,
                         overrides={"maxlen": 512, "vocab": 2000})
    backend = get_backend("numba")
    rng = np.random.default_rng(0)
    print(f"{'seq':>5} {'build s':>8} {'build cpu s':>11} {'first run s':>11} "
          f"{'new kernel sources':>18} "
          f"{'compiled or loaded':>18}")
    for n in (int(x) for x in args.lengths.split(",")):
        tokens = rng.integers(1, 2000, (args.batch, n)).astype(np.int32)
        feeds = {"tokens": tokens, "label": rng.integers(0, 2, args.batch).astype(np.float32)}
        sources, loads = len(backend._modules), backend.compiled + backend.cache_hits
        start, cpu = time.perf_counter(), time.process_time()
        net._exe(args.mode, args.batch, {"seq": n})
        built, cpu = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        net.train_step(feeds) if args.mode == "train" else net.forward(feeds)
        ran = time.perf_counter() - start
        print(f"{n:>5} {built:>8.3f} {cpu:>11.3f} {ran:>11.3f} "
              f"{len(backend._modules) - sources:>18} "
              f"{backend.compiled + backend.cache_hits - loads:>18}")


if __name__ == "__main__":
    main()
