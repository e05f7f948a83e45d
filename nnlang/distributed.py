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

import math
from numbers import Real

import numpy as np

from nnlang.backends import collective
from nnlang.errors import NNError, with_article

__all__ = ["init", "rank", "size", "is_distributed", "shard", "allreduce_mean",
           "broadcast_parameters", "lead", "use_gpu"]


def init(timeout: float | None = None):
    """Joins the processes mpirun started (a group of one without mpirun, MPI not imported).
    Nets compiled afterwards average their gradients over the group. `timeout`: seconds a
    collective may wait before this process gives up on a dead or hung rank (default 60, or
    NNLANG_DIST_TIMEOUT)."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, Real)
                                or not 0 < timeout < math.inf):
        # NOTE: the watchdog thread compares it with seconds waited; text there was a
        # TypeError in a thread, and 0 or a negative number a timeout at the first collective
        raise NNError(f"init(timeout={timeout!r}): a positive number of seconds",
                      hint="e.g. init(timeout=120), how long a rank waits for the others")
    return collective.init(None if timeout is None else float(timeout))


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
    if not isinstance(arrays, dict):
        raise NNError(f"shard takes a dict of input name -> array, not "
                      f"{with_article(type(arrays).__name__)}",
                      hint="dist.shard({\"image\": x, \"label\": y})")
    # NOTE: a scalar input (a temperature) is the same on every rank: it is not split
    arrays = {k: np.asarray(v) if isinstance(v, (list, tuple)) else v
              for k, v in arrays.items()}
    rows = {k: np.shape(v)[0] for k, v in arrays.items() if np.ndim(v)}
    if not rows:
        raise NNError("shard: no array with rows to split" + (
            f" (only the scalars {', '.join(map(str, arrays))})" if arrays else ""),
            hint="give the global batch: arrays whose first dim is the batch")
    if len(set(rows.values())) > 1:
        raise NNError("shard: the arrays have different numbers of rows (" + ", ".join(
            f"{k}: {n}" for k, n in rows.items()) + ")", hint="every input of one batch holds "
            "the same examples")
    world = _world()
    n = next(iter(rows.values()))
    world.per_rank(n, hint=f"give every rank as many rows: a batch that {world.size} divides, "
                           "or drop the last partial batch")
    mine = world.shard(n)
    return {k: v[mine] if k in rows else v for k, v in arrays.items()}


def allreduce_mean(values) -> np.ndarray | np.float64:
    """The mean over the ranks of a host array (losses, metrics, your own gradients), of its
    shape: a number's is a number (np.float64)."""
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise NNError(f"allreduce_mean takes numbers (a float, a list or an array of them): "
                      f"{err}", hint="e.g. dist.allreduce_mean([loss])") from None
    world = _world()
    # NOTE: the sum comes back 1-d for a number, which float() and f"{x:.4f}" refuse
    mean = world.sum(values, "allreduce_mean").reshape(values.shape) / world.size
    return mean[()] if mean.ndim == 0 else mean


def broadcast_parameters(net) -> None:
    """Rank 0's parameters, optimizer state and step on every rank (after loading a
    checkpoint on rank 0 alone, or to be sure all ranks start equal)."""
    from nnlang.runtime.net import Net
    if not isinstance(net, Net):
        raise NNError("broadcast_parameters takes a compiled Net, not "
                      f"{with_article(type(net).__name__)}",
                      hint="dist.broadcast_parameters(nnlang.compile(...))")
    # NOTE: the state dict, not net.state: a net restored from a checkpoint (or that took a
    # step) holds the optimizer's slots and step count, a fresh one not yet, so the ranks
    # broadcast different lists: the others kept no momentum and step 0, and rank 0's extra
    # broadcasts were left to meet their next collectives. state_dict() has every slot on all
    # ranks (zeros before the first step), and loading it sets the step
    state = net.state_dict()
    _world().broadcast(state)
    net.load_state_dict(state)
