"""The user's cache folder, the one rule for where cached files go: `$NNLANG_CACHE_DIR` (or
`~/.cache/nnlang`) is the root, holding downloaded data sets (`data/cache.py`), compiled plans
(`plans/`, `passes/plan_cache.py`) and compiled kernels (`kernels/`, `backends/numba_backend.py`).
Everything cached can be made again, so a cache that cannot be written is a warning, not an error,
and `nnlang cache clear` (`clear`) may remove any of it, even while another run uses it. A cache
that cannot be written (a shared pre-built one) is still read: plans, kernels, data.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from nnlang.files import user_path

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
    return [root / kind]


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
