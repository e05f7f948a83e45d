"""Ctrl-C (and SIGTERM, which batch schedulers such as Slurm send before they kill a job, and
SIGHUP, a terminal that is gone) during training: a request acted on between whole steps, so a
checkpoint always describes a state that some number of whole steps gives (used by
`trainer.fit`)."""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from nnlang.backends.ctrl_c import STOP_SIGNALS, asks_to_stop, takes_over


class Interrupts:
    """Ctrl-C while training. A KeyboardInterrupt raised at any bytecode could land between a
    step's kernels or between the step and its counters, so the checkpoint would describe a
    state that no number of whole steps gives. Inside `fit` SIGINT only records the request;
    the loop acts on it where its state is whole (`check`, between steps). Inside `immediate()`
    (compiling, validation: nothing there changes the training state) it raises at once, so a
    long compile stays interruptible. A second Ctrl-C while the checkpoint is written is
    recorded, not acted on: the save finishes. SIGTERM and SIGHUP are the same request
    (`signal` says which came first); SIGHUP is left alone where it is ignored (`nohup`: the
    user asked the run to outlive the terminal) or the program handles it (`takes_over`).
    `on_hangup` runs at a SIGHUP, in the handler: the terminal is gone, so the caller stops
    its writes to it from failing. `request` makes
    the same request from Python: the CLI's, when standard output's reader is gone (`nnlang
    train ... | head`), as SIGPIPE. (A write to a terminal that is gone, EIO, raises a real
    SIGHUP: `nnlang_cli.app._hang_up`.)"""

    SIGNALS = STOP_SIGNALS
    active: list = []   # the instances entered and not yet left, innermost last

    def __init__(self, deferred: bool = False, on_hangup=None):
        """`deferred`: `immediate()` only records too (data-parallel ranks, which must stop
        together: one that raised alone in a validation would leave the others waiting)."""
        self.on_hangup = on_hangup
        self.requested = False
        self.signal = signal.SIGINT   # the first signal received (a bare Ctrl-C elsewhere: SIGINT)
        self._immediate = False
        self._deferred = deferred
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS
                         if takes_over(sig, signal.getsignal(sig))}
        Interrupts.active.append(self)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}
        Interrupts.active.remove(self)

    @classmethod
    def request(cls, sig) -> bool:
        """A stop requested as if `sig` had arrived, from the main thread; False when no
        training is running to take it. NOTE: not a real SIGPIPE handler: with one, any write
        to any closed pipe or socket (a data loader's, a notebook's) would stop training."""
        if not cls.active or threading.current_thread() is not threading.main_thread():
            return False
        cls.active[-1]._handler(sig, None)
        return True

    @asks_to_stop
    def _handler(self, signum, frame):
        if signum == getattr(signal, "SIGHUP", None) and self.on_hangup is not None:
            self.on_hangup()
        if not self.requested:
            self.signal = signal.Signals(signum)
        self.requested = True
        if self._immediate:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextmanager
    def immediate(self):
        if self._deferred:
            yield
            return
        self.check()
        self._immediate = True
        try:
            yield
        finally:
            self._immediate = False

    def hold(self) -> None:
        """From here on (the interrupted run's checkpoint) every Ctrl-C is only recorded."""
        self._immediate = False


def test_signal() -> tuple[int, int] | None:
    """NNLANG_TEST_SIGNAL_AT_STEP=K[:KILL|:TERM|:HUP]: the process signals itself (SIGINT,
    SIGKILL, SIGTERM or SIGHUP) right after global step K is queued, so tests land an interrupt
    at a chosen step."""
    spec = os.environ.get("NNLANG_TEST_SIGNAL_AT_STEP")
    if not spec:
        return None
    step, _, kind = spec.partition(":")
    # NOTE: "val" signals at the start of the first validation instead
    return (step if step == "val" else int(step)), \
        {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM,
         "HUP": getattr(signal, "SIGHUP", None)}.get(kind.upper(), signal.SIGINT)
