"""Ctrl-C held over a stretch of work that must not be cut in the middle: a kernel's compile
(numba_backend) and a training step with its counters (`Net.train_step`)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

# NOTE: the signals that ask a run to stop (and training to save first): Ctrl-C, SIGTERM (`kill`,
# a batch scheduler's notice) and SIGHUP (the terminal is gone: an ssh session dropped, the
# window closed), which Windows lacks
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + \
    ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


def asks_to_stop(handler):
    """Marks a signal handler that makes SIGHUP a stop (the CLI's, `fit`'s own), which `fit`
    takes over to save first. NOTE: any other handler is the program's (a daemon's "reload
    the configuration"), and SIG_IGN is nohup's: both are left in place (`Interrupts`)."""
    handler.asks_to_stop = True
    return handler


def takes_over(sig, handler) -> bool:
    """May `fit` replace `handler` of `sig` with its stop request? SIGINT and SIGTERM always;
    SIGHUP only at its default (which would end the process unsaved) or where it already
    asks to stop (`asks_to_stop`)."""
    if sig != getattr(signal, "SIGHUP", None):
        return True
    return handler is signal.SIG_DFL or getattr(handler, "asks_to_stop", False)


@contextmanager
def ctrl_c_held():
    """Ctrl-C (SIGINT), and SIGTERM or SIGHUP where Python handles it (`fit`'s `Interrupts`),
    during the block is recorded, then given to the handler that was in place once the block
    ends (Python's KeyboardInterrupt, or `fit`'s `Interrupts`).
    NOTE: numba runs Python inside LLVM's object-cache callbacks (llvmlite, through ctypes);
    a KeyboardInterrupt raised there is printed as "Exception ignored on calling ctypes callback
    function" and dropped, and the compile goes on with a library that lacks its object code
    (a false "damaged cache" warning, or an error). Held one kernel at a time (~0.2 s each to
    compile), a cold compile still stops soon after the key is pressed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed, old = [], {}
    for sig in STOP_SIGNALS:
        # NOTE: only a Python handler runs Python: SIG_DFL and SIG_IGN are not callable, and
        # None is a handler set outside Python
        if callable(signal.getsignal(sig)):
            old[sig] = signal.signal(sig, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pressed):
            signal.raise_signal(sig)
