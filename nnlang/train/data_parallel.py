"""What `fit` does differently as one of N data-parallel processes (`mpirun -n N nnlang train`):
each rank trains on its shard of every global batch, rank 0 alone prints and writes, and every
decision the loop takes (when to read losses, stop, save) is taken on numbers all ranks share.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal

import numpy as np
from rich.console import Console

from nnlang.backends import collective
from nnlang.backends.ctrl_c import STOP_SIGNALS
from nnlang.data.ragged import Ragged
from nnlang.errors import NNError
from nnlang.passes.pipeline import divided_terms
from nnlang.train import feeds

SIGNAL_RANK_VAR = "NNLANG_TEST_SIGNAL_RANK"  # tests: only this rank runs the test signal hook
MEAN_TOLERANCE = 1e-5  # relative: a mean's shards vs the whole batch, float32 rounding (~1e-7)
SPREAD_TO_TELL = 1e-2  # relative: shards closer than this cannot show a non-mean (spread² ~ tol)
# NOTE: what a rank asks to stop by (a signal, or a closed stdout as SIGPIPE), voted on at each
# agreement; a mixed vote goes to the first here, so every rank stops by the same one (rank 0's
# word, each rank's exit code): a rank the others' request stopped before its own `pkill`
# arrived said SIGINT's and exited 130 in a job ended by SIGTERM or SIGHUP
STOPS = STOP_SIGNALS + ((signal.SIGPIPE,) if hasattr(signal, "SIGPIPE") else ())


class Ranks:
    """The training loop's view of the process group (a group of one outside mpirun)."""

    def __init__(self, world: collective.World):
        self.world = world
        self.size, self.rank = world.size, world.rank
        self.many = world.size > 1
        # NOTE: set by means_over_rows; until it is known, evaluation takes whole batches,
        # exact for any metric
        self.all_row_means = False

    @classmethod
    def join(cls, backend: str) -> "Ranks":
        if collective.launched_size() > 1 and backend == "reference":
            raise collective.interpreter_refused(collective.launched_size(),
                                                 "use --backend numba (or cupy) under mpirun")
        ranks = cls(collective.init() if collective.launched_size() > 1
                    else collective.World())
        if ranks.many and backend == "cupy":
            from nnlang.backends.cupy_backend import require_cupy
            ranks.world.use_gpu(require_cupy())
        return ranks

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def console(self, console: Console) -> Console:
        """Rank 0's console, without colour under mpirun (Open MPI gives each rank a terminal
        even when the job's output goes to a file); the other ranks print nothing (their
        errors still reach stderr). Soft-wrapped as the CLI's: that terminal is an
        80-column pty whatever mpirun's own output is, where an epoch's line was cut in two."""
        if not self.lead:
            return Console(quiet=True)
        # NOTE: not a terminal either, so an evaluation's progress is lines, not a bar; of the
        # caller's class, which keeps its answer to a closed stdout (the CLI's `_Console`)
        return type(console)(file=console.file, color_system=None, highlight=False,
                             width=console.width, soft_wrap=console.soft_wrap,
                             force_terminal=False) \
            if self.many else console

    def batch(self, batch: int, span=None) -> int:
        """This rank's part of the global batch."""
        return self.world.per_rank(batch, span, hint=f"use a batch that {self.size} divides "
                                   f"(e.g. --batch {max(batch // self.size, 1) * self.size}), "
                                   "or another -n")

    def shard(self, arrays: dict) -> dict:
        """This rank's rows of a batch (a global one, or the last partial one of evaluation)."""
        if not self.many:
            return arrays
        rows = self.world.shard(len(next(iter(arrays.values()))))
        return {k: v[rows] for k, v in arrays.items()}

    def same_settings(self, parts: dict) -> None:
        """Every rank was started as rank 0 was: each part (name -> a JSON-able value) is
        hashed and compared with rank 0's, and one that differs on any rank is an error on
        every rank, before their collectives meet with different sizes (a different batch or
        epoch count trained silently wrong, or crashed in MPI)."""
        if not self.many:
            return
        # NOTE: a callable part is computed here, so a single process pays nothing for it
        parts = {k: v() if callable(v) else v for k, v in parts.items()}
        names = sorted(parts)
        mine = np.stack([np.frombuffer(hashlib.sha256(json.dumps(
            parts[n], sort_keys=True, default=str).encode()).digest(), np.uint8) for n in names])
        lead = mine.copy()
        self.world.broadcast({"settings": lead})
        differ = self.world.sum((mine != lead).any(axis=1), "comparing the ranks' settings")
        bad = [n for n, d in zip(names, differ) if d > 0]
        if bad:
            raise NNError(f"the {self.size} processes were not started alike: their "
                          f"{', '.join(bad)} differ from rank 0's",
                          hint="start every rank with the same .nn file, flags and data")

    @staticmethod
    def digest(splits) -> list[str]:
        """A hash of each split's arrays, bytes and all: ranks given data sets of the same
        shape but other values (a stale copy on one machine) are told apart."""
        out = []
        for split in splits:
            h = hashlib.blake2b(digest_size=16)
            for name in sorted(split):
                a = split[name]
                for part in ((a.flat, a.offsets) if isinstance(a, Ragged) else (a,)):
                    part = np.ascontiguousarray(part)
                    h.update(f"{name}{part.dtype}{part.shape}".encode())
                    h.update(part.data)
            out.append(h.hexdigest())
        return out

    def same_start(self, net) -> None:
        """Rank 0's parameters and optimizer state everywhere (they are equal already when
        nothing differs between the ranks' files; this makes sure)."""
        self.world.broadcast(net.state)

    def same_statistics(self, net) -> None:
        """Rank 0's values of the weights no gradient trains (batch norm's running statistics)
        on every rank, before an evaluation: each rank's follow its own rows, and rank 0's are
        the ones saved, so a validation (and the early stopping and best.npz that go by it)
        mixing every rank's was not the saved model's. PyTorch DDP's broadcast_buffers."""
        if not self.many:
            return
        user = net.user
        self.world.broadcast({k: net.state[k] for k, nid in user.params.items()
                              if not user.node(nid).attrs.get("trainable", True)})

    def means_over_rows(self, net, batch: dict, say) -> None:
        """Checks on one global batch that each loss and metric is a mean over the batch's rows
        (the mean of the N shards' values is the whole batch's value). The step averages the
        ranks' gradients and the loop the ranks' metrics: right for a mean, silently other for
        a sum over the batch (N times too small a gradient) or exp of a mean. A loss nearer a
        sum over the rows than a mean is an error; any other that is not a mean (a mean over a
        mask's real tokens) and a metric get a note (validation and test evaluate whole
        batches, so only
        a metric's training column is the ranks' mean). Rows are split in evaluation only when
        every value passed and the shards differed enough to show a non-mean."""
        if not self.many:
            return
        n = feeds.length(batch)
        m = n // self.size
        whole = net.evaluate(batch)
        parts = [net.evaluate({k: v[r * m:(r + 1) * m] for k, v in batch.items()})
                 for r in range(self.size)]
        user = net.user

        def off(name, scale=1):
            return abs(float(np.mean([p[name] for p in parts])) * scale - float(whole[name]))

        def size(name):
            return abs(float(whole[name]))
        # NOTE: cross_entropy over kept rows (ignore_index) or class weights divides by the
        # global batch's divisor in the step of N ranks (ops/losses.py), so it trains and reads
        # as one process's; a shard's value is still not the batch's (a shard of ignored rows
        # is 0, which looked like a sum and stopped the run), so it is evaluated whole, unsaid
        exact = {name for name in (*user.losses, *user.metrics)
                 if divided_terms(user, (user.losses | user.metrics)[name])}
        # NOTE: a mean's shards agree with the whole to float32 rounding. 1e-3 let gpt.nn's
        # exp(cross_entropy) pass as a mean at its first batch (130.436 against 130.554), so
        # its validation perplexity under N ranks was the mean of the shards' perplexities
        other = [name for name in (*user.losses, *user.metrics) if name not in exact
                 and off(name) > 1e-7 + MEAN_TOLERANCE * size(name)]
        # NOTE: and a non-mean f(mean) departs from the shards' mean by ~f''·spread², so when
        # the shards' values are almost equal (an untrained model: every row's loss near log C;
        # a zero-initialized head: all equal) the check cannot tell: such a value is evaluated
        # as a non-mean (whole batches, exact for any value), without a note
        unsure = [name for name in (*user.losses, *user.metrics) if name not in other and
                  name not in exact and
                  max(abs(float(p[name]) - float(whole[name])) for p in parts)
                  < 1e-7 + SPREAD_TO_TELL * size(name)]
        for name in other:
            if name in user.losses and off(name, self.size) < off(name):   # NOTE: sum-like
                what = f"loss '{name}'" if len(user.losses) > 1 else "the loss"
                raise NNError(
                    f"{what} is a sum over the batch's rows, so {self.size} processes would "
                    f"train another model than one: the step averages their gradients, each "
                    f"1/{self.size} of the batch's (on one global batch, the shards' mean "
                    f"{np.mean([p[name] for p in parts]):.6g} against {float(whole[name]):.6g})",
                    user.node(user.losses[name]).span,
                    hint="write the loss as a mean over the batch (mean(...) rather than "
                         "sum(...)), or train on one process")
        self.all_row_means = not other and not unsure and not exact
        losses = [name for name in other if name in user.losses]
        metrics = [name for name in other if name in user.metrics]
        if losses and self.lead:
            say(f"note: loss {', '.join(losses)} is not a mean over the batch's rows: each step "
                f"averages the {self.size} processes' gradients (as PyTorch's "
                "DistributedDataParallel does), so the result differs a little from 1 "
                "process's")
        if metrics and self.lead:
            say(f"note: metric{'s' if len(metrics) > 1 else ''} {', '.join(metrics)} "
                f"{'are' if len(metrics) > 1 else 'is'} not a mean over the batch's rows: the "
                f"training column is the mean of the {self.size} processes' values, not the "
                "1-process number (validation and test are exact)")

    def agree(self, taken: list, stop) -> tuple[list, signal.Signals | None]:
        """The steps' (loss, metrics) averaged over the ranks, and what stops them all (a
        signal of `STOPS`; None: go on) given what stops this rank (`stop`, or None): one
        small allreduce per read."""
        if not self.many:
            return taken, stop or None
        # NOTE: in the step's own order (the model's: its losses, then its metrics), which is
        # the same on every rank; sorted, the epoch line and metrics.csv of N ranks put
        # `kl` before `reconstruction` where one process follows the model
        keys = list(taken[0][1]) if taken else []
        flat = _votes(stop) + [v for loss, m in taken for v in (loss, *(m[k] for k in keys))]
        total = self.world.sum(flat, "reading the steps' losses")
        per = total[len(STOPS):].reshape(len(taken), 1 + len(keys)) / self.size
        return [(float(r[0]), dict(zip(keys, map(float, r[1:])))) for r in per], \
            _agreed(total)

    def stop(self, stop, what: str = "agreeing to stop") -> signal.Signals | None:
        """What stops every rank (as `agree`) given what stops this one (a Ctrl-C that
        reached one of them stops all)."""
        if not self.many:
            return stop or None
        return _agreed(self.world.sum(_votes(stop), what))

    def total(self, sums: dict, keys: list) -> dict:
        """Evaluation sums (weighted by rows) added over the ranks."""
        if not self.many:
            return sums
        got = self.world.sum([sums.get(k, 0.0) for k in keys], "summing the evaluation")
        return dict(zip(keys, map(float, got)))

    def signals_here(self) -> bool:
        wanted = os.environ.get(SIGNAL_RANK_VAR)
        return wanted is None or not self.many or int(wanted) == self.rank

    def compiled(self) -> None:
        """Waits for the slowest rank's compile (its length is unbounded, so untimed)."""
        self.world.barrier("waiting for every rank's compile", timed=False)


def _votes(stop) -> list[float]:
    return [float(stop is not None and stop is not False and stop == s) for s in STOPS]


def _agreed(total) -> signal.Signals | None:
    return next((s for s, n in zip(STOPS, total) if n > 0), None)
