"""Data-parallel training for people who write their own loop: launch the script with
`mpirun -n N python train.py`, call `init()` before `nnlang.compile`, and every `train_step`
averages its gradients over the N processes (one allreduce inside the compiled step).

    import nnlang, nnlang.distributed as dist
    dist.init()
    net = nnlang.compile("models/mlp.nn", batch=128 // dist.size())
    dist.broadcast_parameters(net)
    for batch in batches:                       # the same global batches on every rank
        net.train_step(dist.shard(batch))
"""
from __future__ import annotations

import numpy as np

from nnlang.backends import collective
from nnlang.errors import NNError

__all__ = ["init", "rank", "size", "is_distributed", "shard", "allreduce_mean",
           "broadcast_parameters", "lead", "use_gpu"]


def init(timeout: float | None = None):
    """Joins the processes mpirun started (a group of one without mpirun, MPI not imported).
    Nets compiled afterwards average their gradients over the group. `timeout`: seconds a
    collective may wait before this process gives up on a dead or hung rank (default 60, or
    NNLANG_DIST_TIMEOUT)."""
    return collective.init(timeout)


def use_gpu() -> int:
    """One GPU per process (`backend="cupy"`): selects this rank's device among those of its
    machine and returns its index. Call after `init`, before compiling."""
    from nnlang.backends.cupy_backend import require_cupy
    return _world().use_gpu(require_cupy())


def _world():
    return collective.current() or collective.init()


def rank() -> int:
    return _world().rank


def size() -> int:
    return _world().size


def is_distributed() -> bool:
    """More than one process, joined by `init`."""
    return collective.current() is not None


def lead() -> bool:
    """Rank 0: the process that should print and write files."""
    return rank() == 0


def shard(arrays: dict) -> dict:
    """This rank's rows of a global batch {name: array}: contiguous, batch / size of them (a
    batch the ranks do not divide is an error: the step averages the ranks' gradients with
    equal weights, the batch's mean only when the shards are equal)."""
    world = _world()
    rows = {k: len(v) for k, v in arrays.items()}
    if len(set(rows.values())) > 1:
        # NOTE: the rows are cut by the first array's count: a label array of another length
        # was cut at the same place, so a rank trained on inputs and labels that do not pair
        raise NNError("dist.shard: the batch's arrays have different row counts (" +
                      ", ".join(f"{k}: {n}" for k, n in rows.items()) + ")",
                      hint="give every array the batch's rows on its first axis")
    n = next(iter(rows.values()))
    world.per_rank(n, hint=f"give every rank as many rows: a batch that {world.size} divides, "
                           "or drop the last partial batch")
    rows = world.shard(n)
    return {k: v[rows] for k, v in arrays.items()}


def allreduce_mean(values) -> np.ndarray:
    """The mean over the ranks of a host array (losses, metrics, your own gradients)."""
    world = _world()
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise NNError("dist.allreduce_mean: the values must make one array of numbers (a "
                      f"list of scalars, or arrays of one shape), got {values!r:.80}",
                      hint="reduce each array with its own call, or stack them first") from None
    return world.sum(values, "allreduce_mean") / world.size


def broadcast_parameters(net) -> None:
    """Rank 0's parameters and optimizer state on every rank (after loading a checkpoint on
    rank 0 alone, or to be sure all ranks start equal)."""
    _world().broadcast(net.state)
