"""The divergence guard of the training loop: a loss that is not finite, or has exploded far
past its start, stops training with the step named, before an exploded state is saved."""
from __future__ import annotations

import math

import numpy as np

from nnlang.errors import NNError, said_as


# a loss above EXPLODED x its start (at least 1) in size for EXPLODED_STEPS steps in a row
# diverged
EXPLODED = 1e4
EXPLODED_STEPS = 3


class DivergenceGuard:
    """Stops a run whose loss is not finite or has exploded. Its start is the loss of the
    run's first step, at the initial weights (later ones may have exploded already: with
    --lr 1e6 the second is), kept in the checkpoint so a resumed run judges alike; sizes are
    compared (a loss may run off downward), the start's taken as at least 1
    so a loss that starts near 0 is not judged by its noise. Healthy training moves
    a loss by a few times, a step size far too big multiplies it by 1e10 and more within a few
    steps (--lr 1e6: 1e22 with Adam, 1e30 with SGD): a factor of 1e4 leaves room both ways.
    One spike is forgiven; a streak still open when a checkpoint is due counts, so an
    exploded state is never saved over the last good one."""

    def __init__(self, start: float | None = None, clip_norm: float | None = None,
                 net: bool = False):
        self.start, self.clip_norm, self.net = start, clip_norm, net
        self._streak: list = []   # (loss, epoch, step in epoch, global step) above the limit

    def check(self, loss: float, epoch: int, done: int, step: int, run) -> None:
        if not math.isfinite(loss):
            raise diverged(loss, epoch, done, step, run, initial=self.start is None,
                           clip_norm=self.clip_norm, net=self.net)
        if self.start is None:
            self.start = loss
            return
        # NOTE: by size: a loss unbounded below (a sign slip, a log-likelihood whose variance
        # collapses) runs off to -1e30 as finitely as one that explodes upward
        if abs(loss) > EXPLODED * max(abs(self.start), 1.0):
            self._streak.append((loss, epoch, done, step))
            if len(self._streak) >= EXPLODED_STEPS:
                self.settle(run)
        else:
            self._streak = []

    def check_state(self, state: dict, epoch: int, done: int, step: int, run) -> None:
        """Raises when a weight or optimizer slot about to be saved is not finite. A step's loss
        is computed before its update, so the update of the last step before a checkpoint can
        make the weights nan while every loss read was finite; saved, that state replaced the
        last good checkpoint with one that resume, predict and export refuse."""
        for name, a in state.items():
            a = np.asarray(a)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                bad = a.flat[int(np.argmin(np.isfinite(a)))]
                raise diverged(None, epoch, done, step, run, clip_norm=self.clip_norm,
                               net=self.net, weight=(name, bad))

    def settle(self, run) -> None:
        """Raises if the loss is above the limit now (a checkpoint is due)."""
        if self._streak:
            loss, epoch, done, step = self._streak[0]
            raise diverged(loss, epoch, done, step, run, self.start, clip_norm=self.clip_norm,
                           net=self.net)


def diverged(loss, epoch, done, step, run, start: float | None = None,
             initial: bool = False, clip_norm: float | None = None,
             net: bool = False, weight: tuple | None = None) -> NNError:
    """`initial`: the loss of the run's first step, at the initial weights: no step size made
    it, so the hint names what can (the rate could not, and it was what the hint named).
    `weight`: (name, value) of a state array that is not finite after step `done` of `epoch`,
    whose loss was finite (`loss` is then None).
    `clip_norm`: the run's, which the hint does not tell it to set again. `net`: a fit of a
    Net, whose rate and clip_norm are compiled into it (fit cannot change them)."""
    last = None
    if run is not None and run.checkpoint.is_file():
        last = f"the last good checkpoint is {run.checkpoint}"
    # NOTE: in the caller's words: a Python fit has no --lr flag, and a Net's fit takes no lr
    rate = "compiled into the net: compile one with a smaller lr" if net else \
        said_as("--lr", 'fit\'s {"lr": ...}')
    clip = "the same" if net else said_as("--set clip_norm=1", '{"clip_norm": 1}')
    # NOTE: with clipping on, a nan loss often comes from a gradient that is not finite (a
    # sqrt, log or division at 0) at the step before: its global norm is inf or nan, which
    # scales it to nan (as torch's clip_grad_norm_ does) and the weights with it
    cause = f"lower the learning rate ({rate}), or set clip_norm ({clip})" if not clip_norm \
        else (f"lower the learning rate ({rate}); clip_norm = {clip_norm:g} cannot bound a "
              "gradient that is not finite (a sqrt, log or division at 0 in the model), which "
              "makes the weights nan at the step before the loss shows it")
    if weight is not None:
        cause = ("a gradient that is not finite (a sqrt, log or division at 0 in the model) "
                 "makes the weights nan in one update, as does a learning rate far too large "
                 f"({rate})")
    hint = f"{cause}; " + (last or "no checkpoint was written before it diverged")
    if initial:
        hint = ("the loss is not finite at the initial weights, before any update: the model "
                "or the data gives it (a log, division or sqrt of a value that can be 0 or "
                "negative, or nan/inf in the data), not the learning rate")
    why = "" if start is None else (f", over {EXPLODED:g} times its start ({start:.4g})"
                                    f"{' in size' if loss < 0 else ''} for {EXPLODED_STEPS} "
                                    "steps in a row")
    if weight is not None:
        return NNError(f"training diverged: the update of epoch {epoch + 1}, step {done} "
                       f"(global step {step}) made '{weight[0]}' {weight[1]} (the step's loss, "
                       f"computed before its update, was finite)", hint=hint)
    return NNError(f"training diverged: the loss is {loss:.4g} at epoch {epoch + 1}, step "
                   f"{done + 1} (global step {step}){why}", hint=hint)
