"""Python's cyclic garbage collector held off while a graph is built or compiled.

Building the unrolled RNN graphs allocates ~10^6 small objects that all stay alive; each time
the allocation count crosses the collector's threshold it walks the whole young heap, and the
full collections walk everything: 40-50% of a warm LSTM compile (1.3 s -> 0.7 s without).
Nothing built there is garbage until the build is over, so collecting meanwhile finds nothing.
"""
from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager

# NOTE: one count for the process, not a `was` per call: with two Nets compiled in two threads,
# the first build to end turned the collector on under the second, and a build that read
# gc.isenabled() between another's read and its disable() left it off for good
_lock = threading.Lock()
_users = 0
_was = True


def _forget_after_fork() -> None:
    """NOTE: a child forked while another thread built has no such thread, so nothing would
    end that build's pause: the collector stayed off for the child's life."""
    global _lock, _users
    if _users:
        _users = 0
        if _was:
            gc.enable()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


@contextmanager
def paused_gc():
    """Collector off inside (nested and concurrent uses are fine); on again, as it was before
    the first of them, once the last one ends."""
    global _users, _was
    with _lock:
        if _users == 0:
            _was = gc.isenabled()
        _users += 1
        gc.disable()
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _was:
                gc.enable()
