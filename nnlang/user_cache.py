"""The user's cache folder, the one rule for where cached files go: `$NNLANG_CACHE_DIR` (or
`~/.cache/nnlang`) is the root, holding downloaded data sets (`data/cache.py`), compiled plans
(`plans/`, `passes/plan_cache.py`) and compiled kernels (`kernels/`, `backends/numba_backend.py`).
Everything cached can be made again, so a cache that cannot be written is a warning, not an error,
and `nnlang cache clear` (`clear`) may remove any of it, even while another run uses it. A cache
that cannot be written (a shared pre-built one) is still read: plans, kernels, data. Kernels and
plans are bounded (`prune`: least recently used first, as ccache's max_size); data sets are not.
"""
from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from nnlang.files import last_used, user_path

_warned: set = set()
_damaged: set = set()
_private: dict = {}


def user_cache_dir() -> Path:
    if os.environ.get("NNLANG_CACHE_DIR"):
        return user_path(os.environ["NNLANG_CACHE_DIR"])
    try:
        return Path.home() / ".cache" / "nnlang"
    except RuntimeError:
        return _homeless()


def _homeless() -> Path:
    """NOTE: no home folder (HOME unset, and a user with no passwd entry: `docker run -u
    12345`), where Path.home() raises and every compile was an internal error: a temporary
    cache of this process's own, said once (the one warning the cache gives)."""
    if not _warned:
        _warned.add("home")
        print("warning: no home folder (HOME is unset and this user has none), so the cache is "
              "a temporary folder removed at exit (the next run compiles again)\n  hint: set "
              "NNLANG_CACHE_DIR (or HOME) to a writable folder", file=sys.stderr)
    return private_dir("cache")


def temporary() -> bool:
    """Is the cache a temporary folder (`_homeless`), gone when this process ends?"""
    return "cache" in _private and user_cache_dir() == _private["cache"]


def cache_subdir(name: str) -> Path | None:
    """<root>/<name>, created if need be; None (after a warning) when it cannot be written."""
    path = user_cache_dir() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "no write permission")
    except OSError as err:
        cache_unwritable(path, err)
        return None
    return path


def private_dir(name: str) -> Path:
    """A folder of this process's own, removed at exit: where files that must exist on disk
    (kernel modules to import) go when the cache cannot take them."""
    if name not in _private:
        _private[name] = Path(tempfile.mkdtemp(prefix=f"nnlang-{name}-"))
        atexit.register(shutil.rmtree, _private[name], ignore_errors=True)
    return _private[name]


def cache_unwritable(path, err: OSError) -> None:
    """One warning per process on stderr: the run goes on without the cache (slower next time)."""
    if _warned:  # NOTE: one is enough: plans and kernels share the folder
        return
    _warned.add(str(path))
    why = err.strerror or str(err)
    print(f"warning: cannot write the cache at {path} ({why}); going on without saving to it "
          "(the next run compiles again what this one did)\n  hint: point NNLANG_CACHE_DIR to "
          "a writable folder with free space", file=sys.stderr)


def cache_damaged(path, err: BaseException) -> None:
    """One line on stderr per damaged entry: the entry is dropped and made again, so the run goes
    on, but a disk that keeps damaging files is worth knowing about."""
    if str(path) in _damaged:
        return
    _damaged.add(str(path))
    why = f"{type(err).__name__}: {err}".splitlines()[0][:120]
    print(f"warning: the cache entry {path} is damaged ({why}); rebuilding it", file=sys.stderr)


def discard_damaged(path, err: BaseException) -> None:
    """A damaged entry said once and removed, so the caller rebuilds it."""
    cache_damaged(path, err)
    remove_quietly(path)


def remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # NOTE: a read-only cache keeps the bad entry; it is checked (and skipped) each run


# *** what the cache holds, per kind (`nnlang cache`) ***
KINDS = {"kernels": "compiled kernels (their source and numba's machine code)",
         "plans": "compiled plans (optimized graph, schedule, memory plan)",
         "data": "downloaded data sets, their processed forms and checksum records"}


def kind_paths(kind: str) -> list[Path]:
    """The files and folders of the cache root that hold one kind (`KINDS`); nothing else in
    the root is ever counted or removed (a root set to a shared folder keeps the rest)."""
    root = user_cache_dir()
    if kind == "data":
        from nnlang.data.cache import cached_paths
        return cached_paths()
    # NOTE: a kernels or plans folder linked elsewhere (a bigger disk) holds nnlang's files
    # only: they are counted, pruned and cleared there, the link kept. Taken for a file, the
    # link was all that was counted, and the bound unlinked it: the files it led to, never
    # counted again, stayed, and the next run began a new folder in the root. A dangling link
    # stays a file, so `clear` removes it and the next run can write there
    path = root / kind
    return [path.resolve() if path.is_symlink() and path.is_dir() else path]


def _files(path: Path):
    """Every file (and link: never followed) under path, or path itself when it is one."""
    if path.is_symlink() or path.is_file():
        yield path
    elif path.is_dir():
        for top, dirs, files in os.walk(path):   # NOTE: os.walk does not enter linked folders
            for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
                yield Path(top) / name


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:   # NOTE: removed meanwhile by another run
        return 0


def usage(kind: str) -> tuple[int, int]:
    """(files, bytes) the cache holds of one kind."""
    sizes = [_size(f) for p in kind_paths(kind) for f in _files(p)]
    return len(sizes), sum(sizes)


def clear(kind: str) -> tuple[int, int]:
    """Removes every file of one kind; returns (files, bytes) removed. NOTE: folders stay: a
    run compiling meanwhile writes its next file into them (numba saves its index into the
    kernel's `__pycache__`); a file it needs that is gone is made again (a removed kernel
    compiles anew, `NumbaBackend.compile`)."""
    count = freed = 0
    kept = []
    for p in kind_paths(kind):
        for f in list(_files(p)):
            size = _size(f)
            try:
                os.unlink(f)
            except FileNotFoundError:   # NOTE: another run removed or replaced it meanwhile
                continue
            except OSError as err:
                kept.append((f, err.strerror or str(err)))
                continue
            count, freed = count + 1, freed + size
    if kept:
        from nnlang.errors import NNError
        more = f" (and {len(kept) - 1} more)" if len(kept) > 1 else ""
        raise NNError(f"cannot remove {kept[0][0]} ({kept[0][1]}){more}; removed {count} "
                      f"other files of the {kind} cache", None,
                      "check that folder's permissions (the cache belongs to whoever made it)")
    return count, freed


# *** a bound on what compiling leaves (kernels, plans): least recently used first ***
MAX_SIZE_ENV = "NNLANG_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 2 * 2**30   # NOTE: a kernel is ~20 KB with numba's files, a plan 0.2-1.3 MB
PRUNED = ("kernels", "plans")   # NOTE: not data: a pruned download would be fetched again
IN_USE_S = 600        # entries used (loaded, compiled, written) this recently are never removed
PRUNE_EVERY_S = 3600  # a run that writes new entries checks the bound at most this often
_STAMP = ".prune-lock"
_KERNEL = re.compile(r"k_[0-9a-f]{24}")   # the key every file of one kernel carries
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int | None:
    """'2G', '500M', '1.5GiB', '20Gi', '123456' -> bytes; K, M, G, T (alone or with B, iB, i:
    kubernetes' 20Gi) are all powers of 1024, as java's -Xmx and docker's --memory (ccache's
    kB/MB/GB are powers of 1000); a bare number is bytes; '0' -> None (no bound, as ccache's
    max_size 0). ValueError for anything else."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b|i)?\s*", str(text).lower())
    if m is None or (m.group(2) == "" and str(text).strip().lower().endswith(("i", "ib"))):
        raise ValueError(f"{text!r} is not a size")
    # NOTE: exact, not a float: a long number overflowed one (an OverflowError that ended the
    # run writing a kernel); only 0 is no bound: '0.1' rounded down to it; and a bound past any
    # disk is 2**63 bytes (the most a file size holds), which `nnlang cache` can print
    n = math.ceil(Decimal(m.group(1)) * _UNITS[m.group(2)])
    return min(n, 2**63) or None


def max_size() -> int | None:
    """The bound on kernels and plans together: $NNLANG_CACHE_MAX_SIZE, else 2 GiB (None: no
    bound). A value that is no size is said once and the default used (the cache never fails a
    run)."""
    text = os.environ.get(MAX_SIZE_ENV)
    if not text:
        return DEFAULT_MAX_SIZE
    try:
        return parse_size(text)
    except ValueError:
        if MAX_SIZE_ENV not in _warned:
            _warned.add(MAX_SIZE_ENV)
            print(f"warning: {MAX_SIZE_ENV}={text!r} is not a size; the cache keeps its default "
                  "bound of 2 GiB\n  hint: e.g. 500M, 2G or 10GiB (0: no bound)", file=sys.stderr)
        return DEFAULT_MAX_SIZE


def touch(path) -> None:
    """Marks a cache entry used now, so pruning keeps it longest (a read-only cache: no mark)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _entries() -> dict:
    """{entry: [(file, size, mtime)]}: one kernel's files (its module, numba's index and data,
    the compiled marks) are one entry, removed together; every other file is its own."""
    out = defaultdict(list)
    for kind in PRUNED:
        for p in kind_paths(kind):
            for f in _files(p):
                try:
                    st = f.lstat()
                except OSError:   # NOTE: removed meanwhile by another run
                    continue
                m = _KERNEL.search(f.name)
                out[(kind, m.group()) if m else (kind, str(f))].append((f, st.st_size,
                                                                        st.st_mtime))
    return out


def _removal_order(item) -> int:
    """numba's index first (a reader then misses, never finds an index without its data), the
    kernel's module last."""
    name = item[0].name
    return 0 if name.endswith(".nbi") else 2 if name.endswith(".py") else 1


def _in_use(files) -> bool:
    """Is a kernel's module flocked by another process (`compile_worker.held`: compiling or
    loading it right now)? NOTE: a lock we cannot take is an entry we leave."""
    module = next((f for f, _, _ in files if f.suffix == ".py"), None)
    if module is None:
        return False
    try:
        import fcntl
        fd = os.open(module, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def prune(limit: int | None, in_use_s: float = IN_USE_S) -> tuple[int, int]:
    """Removes the least recently used kernels and plans until they hold at most 90% of `limit`
    bytes (so the next few writes do not prune again), when they hold more than `limit`;
    returns (files, bytes) removed. Never removes an entry used in the last `in_use_s` seconds
    (`last_used`: a time in the future is long ago) or one another process holds, and runs in
    one process at a time (the others skip it). A run that needs a removed entry makes it
    again, as after `clear`."""
    root = user_cache_dir()
    if limit is None or not root.is_dir():
        return 0, 0
    try:
        import fcntl
        lock = os.open(root / _STAMP, os.O_CREAT | os.O_WRONLY, 0o644)
    except ImportError:
        lock = None
    try:
        if lock is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0, 0   # NOTE: another process is pruning now
            # NOTE: not empty: an empty file in the cache is what a failed write leaves
            os.pwrite(lock, b"nnlang: the last prune of this cache (its time) and its lock\n", 0)
        entries = _entries()
        total = sum(size for files in entries.values() for _, size, _ in files)
        if total <= limit:
            return 0, 0
        now, count, freed = time.time(), 0, 0
        used = {k: max(last_used(t, now) for _, _, t in fs) for k, fs in entries.items()}
        for key in sorted(entries, key=used.get):
            files = entries[key]
            if total <= 0.9 * limit:
                break
            if now - used[key] < in_use_s or _in_use(files):
                continue
            for f, size, _ in sorted(files, key=_removal_order):
                try:
                    os.unlink(f)
                except OSError:   # NOTE: gone meanwhile, or not ours to remove: left
                    continue
                count, freed, total = count + 1, freed + size, total - size
        return count, freed
    finally:
        if lock is not None:
            os.close(lock)


def maybe_prune() -> None:
    """`prune` to `max_size()` if no process did in the last PRUNE_EVERY_S seconds: called
    where a run writes a new kernel or plan, so the cache stays bounded without a command."""
    limit = max_size()
    if limit is None:
        return
    try:
        now = time.time()
        if now - last_used((user_cache_dir() / _STAMP).stat().st_mtime, now) < PRUNE_EVERY_S:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    try:
        prune(limit)
    except OSError:   # NOTE: a cache that cannot be pruned is only a bigger cache
        pass
