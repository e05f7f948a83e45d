"""Deeply nested source: elaboration and formatting recurse over the syntax tree, and a chain
such as `x + x + ... + x` (thousands of terms) or `x |> relu |> ... |> relu` is a tree that deep.

`deep_stack` runs such a pass on a worker thread with a large stack and a recursion limit to
match; `check_nesting` (called by the parser) turns anything deeper than `MAX_NESTING` into a
located error instead of a crash.
"""
from __future__ import annotations

import functools
import sys
import threading
from dataclasses import fields, is_dataclass

from nnlang.errors import NNError

MAX_NESTING = 50_000          # syntax-tree levels: terms of a chain, nested calls, repeats
_FRAMES_PER_LEVEL = 6         # Python frames one level costs in the deepest pass (elaboration)
_STACK_BYTES = 1 << 30        # reserved, not committed: pages are touched only as used

_local = threading.local()


def deep_stack(fn):
    """Runs `fn` where recursion as deep as `MAX_NESTING` levels fits (once per call chain:
    nested uses run in place)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if getattr(_local, "inside", False):
            return fn(*args, **kwargs)
        result: dict = {}

        def work():
            _local.inside = True
            try:
                result["value"] = fn(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - re-raised on the calling thread
                result["error"] = err

        worker = threading.Thread(target=work, name=f"nnlang-{fn.__name__}", daemon=True)
        with _LIMIT_LOCK:
            _raise_limit()
        try:
            try:
                _start_with_big_stack(worker)
            except (RuntimeError, ValueError):  # NOTE: no room for a big stack: run in place
                work()
            else:
                worker.join()
        finally:
            _local.inside = False
            _restore_limit()
        err = result.get("error")
        if isinstance(err, RecursionError):  # NOTE: nesting check_nesting does not see
            raise NNError("the model nests too deeply to elaborate (blocks calling blocks, "
                          "or very long chains)", hint="split long chains into several "
                          "statements; use `repeat N { ... }` to stack layers") from None
        if err is not None:
            raise err.with_traceback(err.__traceback__)
        return result["value"]
    return run


def _start_with_big_stack(worker: threading.Thread) -> None:
    # NOTE: stack_size applies to threads started while it is set; the lock keeps it ours
    with _LIMIT_LOCK:
        old = threading.stack_size(_STACK_BYTES)
        try:
            worker.start()
        finally:
            threading.stack_size(old)


# The recursion limit is per interpreter: raised while any deep pass runs, restored after the
# last one ends.
_LIMIT_LOCK = threading.Lock()
_users = 0
_saved_limit = 0


def _raise_limit():
    global _users, _saved_limit
    if _users == 0:
        _saved_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(_saved_limit, MAX_NESTING * _FRAMES_PER_LEVEL + 10_000))
    _users += 1


def _restore_limit():
    global _users
    with _LIMIT_LOCK:
        _users -= 1
        if _users == 0:
            sys.setrecursionlimit(_saved_limit)


def check_nesting(module) -> None:
    """NNError at the first statement whose syntax tree is deeper than `MAX_NESTING` (walked
    without recursion)."""
    stack = [(item, 1, item) for item in module.items]
    while stack:
        node, depth, top = stack.pop()
        if depth > MAX_NESTING:
            raise NNError(f"this statement nests more than {MAX_NESTING:,} levels deep "
                          "(terms of one chain, nested calls or repeats)", top.span,
                          "split it into several statements, e.g. `a = ...` then `b = a + ...`")
        for child in _children(node):
            stack.append((child, depth + 1, top if depth > 1 else child))


@functools.lru_cache(maxsize=None)
def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name != "span")


def _children(node):
    for name in _field_names(type(node)):
        value = getattr(node, name)
        if isinstance(value, tuple):
            yield from (v for v in value if is_dataclass(v) and hasattr(v, "span"))
        elif is_dataclass(value) and hasattr(value, "span"):
            yield value
