"""Deeply nested source: elaboration and formatting recurse over the syntax tree, and a chain
such as `x + x + ... + x` (thousands of terms) or `x |> relu |> ... |> relu` is a tree that deep.

`deep_stack` runs such a pass on a worker thread with a large stack and a recursion limit to
match (a Ctrl-C stops that thread too, before the caller gets its KeyboardInterrupt);
`NestingGuard` (lark's post-lexer) and `check_nesting` (after the parse) turn anything deeper
than `MAX_NESTING` into a located error instead of a crash.
"""
from __future__ import annotations

import ctypes
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
        done = threading.Event()

        def work():
            _local.inside = True
            try:
                result["value"] = fn(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - re-raised on the calling thread
                result["error"] = err
            finally:
                result["ended"] = True
                # NOTE: put back by the thread that recursed, once it has: put back by the
                # caller at a Ctrl-C, under this thread still thousands of calls deep, it made
                # Python abort the whole process ("Fatal Python error: Cannot recover from
                # stack overflow"), a notebook's kernel with it
                _restore_limit()
                done.set()

        worker = threading.Thread(target=work, name=f"nnlang-{fn.__name__}", daemon=True)
        with _LIMIT_LOCK:
            _raise_limit()
        try:
            _start_with_big_stack(worker)
        except (RuntimeError, ValueError):  # NOTE: no room for a big stack: run in place
            work()
        except BaseException:  # NOTE: a Ctrl-C in start(): the thread may have begun
            if worker.ident is None:
                _restore_limit()
            else:
                _stop(worker, result)
            raise
        else:
            # NOTE: not join(): once interrupted, Python 3.11's join takes the thread for ended
            # (is_alive() False while it still runs)
            try:
                done.wait()
            except BaseException:  # NOTE: Ctrl-C: the pass stops too, then it is raised here
                _stop(worker, result)
                raise
            worker.join()
        finally:
            _local.inside = False
        err = result.get("error")
        if isinstance(err, RecursionError):  # NOTE: nesting check_nesting does not see
            raise NNError("the model nests too deeply to elaborate (blocks calling blocks, "
                          "or very long chains)", hint="split long chains into several "
                          "statements; use `repeat N { ... }` to stack layers") from None
        if err is not None:
            raise err.with_traceback(err.__traceback__)
        return result["value"]
    return run


def _stop(worker: threading.Thread, result: dict) -> None:
    """Raises KeyboardInterrupt inside `worker` (unless it is ending already) and waits until
    it has ended, so no pass is left running behind the caller's Ctrl-C."""
    if not result.get("ended"):
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident),
                                                   ctypes.py_object(KeyboardInterrupt))
    while worker.is_alive():
        try:
            worker.join()
        except BaseException:  # noqa: BLE001 - a second Ctrl-C: it is stopping already
            pass


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


class TooDeep(Exception):
    """Raised by `NestingGuard` while lark parses: `start` is the statement's first token,
    `at` the token where its nesting passed `MAX_NESTING` (the parser adds file and source)."""

    def __init__(self, start, at):
        super().__init__()
        self.start, self.at = start, at


# tokens an operand ends with: a name or `-` after one starts a new statement or is binary
_OPERAND_END = frozenset({"NAME", "NUMBER", "STRING", "WEIGHT_PATH", "TRUE", "FALSE", "NONE",
                          "RPAR", "RSQB"})
_OPERANDS = frozenset({"NAME", "NUMBER", "STRING", "WEIGHT_PATH", "TRUE", "FALSE", "NONE"})


class NestingGuard:
    """A lark post-lexer that refuses a statement nesting deeper than `MAX_NESTING` while it is
    parsed, from a lower bound on its depth read off the tokens: the open calls, lists,
    subscripts and braces around a token, plus the longest run of `+`/`-`, of `*`/`/`/`@` or
    of `|>` at its bracket level (a left-deep chain, each operator one level). NOTE: a 1.2 MB
    line `y = x + x + ...` (300,000 terms) was refused by `check_nesting` after the whole
    parse and transform: 22 s and 560 MB; this stops at the limit's term, in about 2 s. The
    bound never exceeds the real depth (it leaves the statement's own levels out), so
    `check_nesting` stays the exact check of what this misses (`- - - x`, `((x))` ...)."""

    always_accept = ()

    def process(self, stream):
        frames = [[0, 0, 0]]         # per open bracket: the +, * and |> runs at its level
        nodes, kinds = 0, []         # brackets that are tree levels (not a plain `( )`)
        prev, start = None, None
        for tok in stream:
            kind, text = tok.type, tok.value
            top = frames[-1]
            if kind in _OPERANDS:
                # NOTE: no expression goes on with a name or keyword: after an operand, a
                # name starts the next statement (as `loss`, `output`... do below)
                if prev in _OPERAND_END or prev in ("LBRACE", "RBRACE") or prev is None:
                    top[0] = top[1] = top[2] = 0
                    start = tok
            elif text == "+" or (text == "-" and prev in _OPERAND_END):
                top[0] += 1
                top[1] = 0
                if nodes + top[0] > MAX_NESTING:
                    raise TooDeep(start or tok, tok)
            elif text in ("*", "/", "@"):
                top[1] += 1
                if nodes + top[1] > MAX_NESTING:
                    raise TooDeep(start or tok, tok)
            elif text == "|>":
                top[2] += 1
                top[0] = top[1] = 0
                if nodes + top[2] > MAX_NESTING:
                    raise TooDeep(start or tok, tok)
            elif text in ("(", "[", "{"):
                node = text != "(" or prev == "NAME"    # a call, not a parenthesis
                nodes += node
                kinds.append(node)
                frames.append([0, 0, 0])
                if nodes > MAX_NESTING:
                    raise TooDeep(start or tok, tok)
            elif text in (")", "]", "}"):
                if kinds:
                    nodes -= kinds.pop()
                    frames.pop()
            elif text != "-":
                # `,` `:` `=` a comparison, `**`, a keyword: the runs before it end here
                top[0] = top[1] = top[2] = 0
                if text.isalpha() and kind == text.upper():   # a keyword: `loss`, `output`...
                    start = tok
            prev = kind
            yield tok


def too_deep(span) -> NNError:
    return NNError(f"this statement nests more than {MAX_NESTING:,} levels deep (terms of one "
                   "chain, nested calls or repeats)", span,
                   "split it into several statements, e.g. `a = ...` then `b = a + ...`")


def check_nesting(module) -> None:
    """NNError at the first statement whose syntax tree is deeper than `MAX_NESTING` (walked
    without recursion)."""
    stack = [(item, 1, item) for item in module.items]
    while stack:
        node, depth, top = stack.pop()
        if depth > MAX_NESTING:
            raise too_deep(top.span)
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
