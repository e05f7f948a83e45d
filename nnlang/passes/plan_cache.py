"""An on-disk cache of the compiled plan (`plan.py`: optimize -> schedule -> multi-tensor ->
memory), so the second run of a model skips the passes: on the unrolled LSTM they take ~0.6 s,
unpickling the plan ~0.15 s.

The key is a fingerprint of the graph that goes in (every node's op, inputs, attributes, type,
span, path and role; the graph's tables), the disabled passes, and the source of the
whole `nnlang` package, so any change to the model, the settings or the compiler itself is a
miss, never a stale plan. Entries are written atomically with a sha256 of the pickle, checked
before it is unpickled; a damaged entry is a warning and a miss (removed, then rebuilt).
`NNLANG_PLAN_CACHE=0` switches the cache off.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from nnlang.files import last_used, write_atomic
from nnlang.ir.graph import Graph
from nnlang.user_cache import (cache_unwritable, discard_damaged, maybe_prune, touch,
                               user_cache_dir)

_FORMAT = 2  # bump when what is pickled changes shape
# entries kept; older ones are removed when a new one is written. NOTE: a model with a symbolic
# length has one plan per padded length (~22 for whole IMDB reviews, per kind of step)
KEEP = 160


def enabled() -> bool:
    return os.environ.get("NNLANG_PLAN_CACHE", "1") not in ("0", "", "false", "no")


def plan_dir() -> Path:
    return user_cache_dir() / "plans"


@lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of every source file of the installed package and the library versions that
    shape a plan: a developer's edit to a pass invalidates every cached plan."""
    import networkx
    h = hashlib.sha256(f"{_FORMAT}|{np.__version__}|{networkx.__version__}".encode())
    root = Path(__file__).resolve().parents[1]   # the nnlang package
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _feed(h, v) -> None:
    """Feeds one attribute value into the hash, unambiguously (type tag, then content)."""
    if isinstance(v, np.ndarray):
        h.update(f"A{v.dtype.str}{v.shape}".encode())
        h.update(np.ascontiguousarray(v).tobytes())
    elif isinstance(v, dict):
        h.update(f"D{len(v)}".encode())
        for k in sorted(v, key=repr):
            _feed(h, k)
            _feed(h, v[k])
    elif isinstance(v, (list, tuple)):
        h.update(f"{'L' if isinstance(v, list) else 'T'}{len(v)}".encode())
        for x in v:
            _feed(h, x)
    else:
        h.update(f"{type(v).__name__}:{v!r};".encode())


def graph_key(g: Graph, disable=()) -> str:
    h = hashlib.sha256(compiler_fingerprint().encode())
    _feed(h, sorted(disable))
    for nid in sorted(g.nx.nodes):
        n = g.node(nid)
        s = n.span
        h.update(f"|{nid}:{n.op}{n.inputs}{n.type}{n.path}:{n.role}:{n.name}".encode())
        if s is not None:
            # NOTE: a file name of bytes that are not UTF-8 (Linux allows any) holds surrogates.
            # The label holds the words of a span outside any file (`--set optimizer=...`): two
            # values of one length had one key, and --emit showed the first's at the second's
            h.update(f"@{s.file}:{s.line}:{s.col}:{s.end_line}:{s.end_col}:{s.label()}".encode(
                errors="surrogateescape"))
        _feed(h, n.attrs)
    _feed(h, [g.inputs, g.params, g.outputs, g.losses, g.metrics, g.symbols, g.model,
              g.updates, g.grads, g.groups, g.salt])
    return h.hexdigest()


_MAGIC = b"nnlang-plan"


def load(key: str):
    """The cached plan under `key`, or None (absent or damaged: then removed, with a warning)."""
    path = plan_dir() / f"{key}.pkl"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        # NOTE: a pickle has no checksum of its own: a flipped bit unpickles into a plan with
        # other offsets or dtypes, which trains silently wrong or fails deep in the run
        head, _, body = data.partition(b"\n")
        magic, fmt, digest = head.split(b" ")
        if magic != _MAGIC or int(fmt) != _FORMAT:
            raise ValueError("written by another version of nnlang")
        if hashlib.sha256(body).hexdigest().encode() != digest:
            raise ValueError("checksum mismatch")
        plan = pickle.loads(body)
        touch(path)   # NOTE: used now: both prunings remove the least recently used first
        return plan
    except Exception as e:  # noqa: BLE001 -- whatever a damaged entry raises, it is a miss
        discard_damaged(path, e)
        return None


def store(key: str, plan) -> None:
    """Writes the plan atomically; a read-only or full cache only costs the next run time (and
    a warning)."""
    folder = plan_dir()
    try:
        body = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return  # NOTE: a plan that does not pickle is only not cached
    head = b"%s %d %s\n" % (_MAGIC, _FORMAT, hashlib.sha256(body).hexdigest().encode())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{key}.pkl", head + body)
        _prune(folder)
        maybe_prune()
    except OSError as err:
        cache_unwritable(folder, err)


def _prune(folder: Path) -> None:
    """Keeps the KEEP most recently used entries: every model, batch size, length and edit of the compiler
    adds one (1.3 MB for the unrolled LSTM, 0.2 MB for the Transformer)."""
    now = time.time()
    entries = sorted(((last_used(t, now), p) for p in folder.glob("*.pkl")
                      if (t := _mtime(p)) is not None), reverse=True)
    for _, old in entries[KEEP:]:
        old.unlink(missing_ok=True)


def _mtime(path: Path) -> float | None:
    """None for an entry another process (a rank sharing the cache) deleted meanwhile: it is no
    sign of an unwritable cache."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
