"""Runs STEPS training steps of a reference model (small sizes) on fixed random batches with
nnlang.distributed, as one of the ranks `mpirun` started (or alone), and saves rank 0's
parameters: `python tests/distributed_steps.py MODEL OUT.npz [STEPS]`. The multi-process
tests compare the files N = 1, 2, 4 give (tests/test_distributed.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
# small enough that 4 ranks on 2 cores take seconds, big enough to have every layer kind
SIZES = {"mlp": {"hidden1": 32, "hidden2": 16},
         "cnn": {},
         "lstm": {"vocab": 50, "maxlen": 12, "embed": 8, "units": 8},
         "gru": {"vocab": 50, "maxlen": 12, "embed": 8, "units": 8},
         "transformer": {"vocab": 50, "maxlen": 12, "embed": 16, "heads": 2, "ffn": 32,
                         "layers": 1}}


def batches(model: str, steps: int, batch: int = BATCH, seed: int = 0):
    """The same global batches on every rank."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        if model == "mlp":
            yield {"image": rng.normal(size=(batch, 784)).astype(np.float32),
                   "label": rng.integers(0, 10, batch).astype(np.int32)}
        elif model == "cnn":
            yield {"image": rng.normal(size=(batch, 1, 28, 28)).astype(np.float32),
                   "label": rng.integers(0, 10, batch).astype(np.int32)}
        else:
            yield {"tokens": rng.integers(0, 50, (batch, 12)).astype(np.int32),
                   "label": rng.integers(0, 2, batch).astype(np.float32)}


def main(model: str, out: str, steps: int = 20) -> None:
    import nnlang
    import nnlang.distributed as dist
    dist.init()
    net = nnlang.compile(str(ROOT / "models" / f"{model}.nn"), batch=BATCH // dist.size(),
                         seed=1, overrides=SIZES[model])
    dist.broadcast_parameters(net)
    for b in batches(model, steps):
        net.train_step(dist.shard(b))
    if dist.lead():
        np.savez(out, **net.parameters())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
