"""Writing a file so that readers see the old file or the whole new one, never a part of it:
checkpoints, run records, cached plans, kernels and data sets all go through `write_atomic`.
Also the checks of the Python API's path and bool arguments (`as_path`, `as_bool`), and
`read_npy`, the one reader of a .npy file the user names."""
from __future__ import annotations

import errno
import glob
import os
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from nnlang.errors import NNError, with_article


def as_path(value, what: str, hint: str | None = None) -> Path:
    """`value` as a Path (`user_path`); from Python anything else (None, an int, a dict of
    weights) is an error naming `what`, where pathlib would raise a bare TypeError."""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        got = repr(value) if value is None or isinstance(value, (bool, int, float)) else \
            with_article(type(value).__name__)
        raise NNError(f"{what} is a path (a str or a pathlib.Path), not {got}", hint=hint)
    return user_path(value)


def as_bool(value, what: str) -> bool:
    """`value` as True or False (numpy's bools too); from Python anything else is an error
    naming `what`: a truthy string (strict="no", greedy="yes") or number switched a setting
    the other way than the caller meant, without a word."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    got = repr(value) if value is None or isinstance(value, (str, int, float)) else \
        with_article(type(value).__name__)
    raise NNError(f"{what} is True or False, not {got}",
                  hint="a non-empty string counts as True in Python: pass the bool itself"
                  if isinstance(value, str) else None)


def user_path(value: str | os.PathLike) -> Path:
    """A path a user wrote, with a leading ~ the home folder: no shell expands it after `=`
    (`--out=~/runs/a`), in a .nn file (`data = "~/d.npz"`) or in a quoted variable
    (`NNLANG_DATA_DIR="~/data"`), where it named a folder '~' in the working directory. A ~
    with no home to expand to (`~nobody/x`) stays as written. A folder named '~' is `./~/x`,
    as in a shell: the working directory's, made absolute. NOTE: Path("./~/x") is Path("~/x"),
    which the next user_path would expand, so the text as written decides (the CLI's path
    options come here as text: `nnlang_cli.app.PATH`)."""
    path = Path(value)
    if not os.fspath(value).startswith("~"):
        return Path.cwd() / path if path.parts[:1] and path.parts[0].startswith("~") else path
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def read_npy(path: Path) -> np.ndarray:
    """The one array of the .npy file `path`; an error naming the file when it holds none: an
    .npz archive under a .npy name (np.load gave an NpzFile, which went on as one odd value:
    "holds <U11 values, not numbers") or a file that is no .npy at all (numpy took it for a
    pickle: "contains pickled (object) data", or an internal error)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if head.startswith(b"PK\x03\x04"):
            with np.load(path, allow_pickle=False) as z:
                names = ", ".join(z.files)
            raise NNError(f"{path} is an .npz archive (arrays {names}), not a .npy file of one "
                          "example", hint=f"pass it as --npz {path}: its arrays named like the "
                                          "model's inputs, one row per example")
        if head != b"\x93NUMPY":
            raise NNError(f"{path} is not a .npy file (it does not start with numpy's header)",
                          hint="write it with numpy.save(path, array)")
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, OSError) and (refused := cannot_read(path, err)):
            raise refused from None
        raise NNError(f"cannot read {path} ({err})",
                      hint="write it with numpy.save(path, array)") from None


def cannot_read(path, err: OSError, cls=NNError) -> NNError | None:
    """The error (of class `cls`) for a file the file system would not read: permissions or a
    failing disk, said as such; None for an OSError without an errno (numpy's and zipfile's
    for a file of the wrong format), whose caller says what is wrong with the file. Those
    refusals were called truncated or corrupt files, with the advice to train again."""
    if err.errno is None:
        return None
    hint = "check that you may read it (ls -l)" if err.errno in (errno.EACCES, errno.EPERM) \
        else "the file system could not read it; use a copy that is whole"
    return cls(f"cannot read {path} ({err.strerror or err})", hint=hint)


CWD_GONE = "the working directory no longer exists (deleted or moved while the shell was in it)"
CWD_HINT = "cd to a folder that exists (cd \"$PWD\" if it was made again), then run it again"


def cwd_gone() -> bool:
    """Was the working directory deleted? Then every relative path fails, as 'No such file'."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


def lost_with_cwd(path) -> bool:
    """Is `path` relative while the working directory is gone? Its 'No such file' is then the
    folder's, not the file's: the one test behind each error that says so."""
    return not Path(path).is_absolute() and cwd_gone()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits open() gives a new file (mkstemp's temporary files get 0600)."""
    return 0o666 & ~_umask()


def _encoded(data: bytes | str) -> bytes:
    """Text as UTF-8. NOTE: a file name of bytes that are not UTF-8 (Linux allows any) reaches
    text as surrogates, which UTF-8 cannot encode: `nnlang graph café.nn` (in Latin-1) was an
    internal error writing its title. They are written as the terminal shows them, \\udce9."""
    return data.encode("utf-8", "backslashreplace") if isinstance(data, str) else data


# NOTE: a temporary file (`write_atomic`'s `.<name>.*.tmp`, a download's `.<name>.*.part`)
# untouched this long is a killed process's (kill -9, a power cut): a live writer writes to it
# (its mtime moves) until it renames it, and no write pauses for an hour
STALE_TEMP_S = 3600.0
CLOCK_SKEW_S = 60     # a file time this far ahead of the clock is a file server's skew


def last_used(mtime: float, now: float) -> float:
    """When a file (a cache entry, a temporary file) was last used, by its time: one in the
    future (a cache copied from a machine whose clock runs ahead, a clock set back) says
    nothing, so it is taken as long ago (0). NOTE: taken as now, such a cache entry stayed "in
    use" for good and outlived the bound, and such a temporary file was never removed; up to
    CLOCK_SKEW_S ahead is a file server's clock, and just written: now."""
    if mtime <= now:
        return mtime
    return now if mtime - now <= CLOCK_SKEW_S else 0.0


def drop_stale_temps(path, suffix: str = ".tmp", older_than: float = STALE_TEMP_S) -> int:
    """Removes the temporary files of writes of `path` that a killed process left beside it
    (`.<name>.*<suffix>`, not modified for `older_than` seconds; a live one is kept); each
    was as big as the file (a checkpoint, a download) and nothing else ever removed it.
    Returns how many it removed."""
    path, now, removed = Path(path), time.time(), 0
    try:
        temps = list(path.parent.glob(f".{glob.escape(path.name)}.*{suffix}"))
    except OSError:
        return 0
    for tmp in temps:
        try:
            # NOTE: a time in the future (a clock set back) kept the file for good
            if now - last_used(tmp.lstat().st_mtime, now) >= older_than:
                tmp.unlink()
                removed += 1
        except OSError:   # NOTE: renamed or removed meanwhile (its writer is alive), or ours not
            pass
    return removed


def write_atomic(path, data: bytes | str | Callable[[IO[bytes]], None],
                 fsync: bool = False) -> Path:
    """Writes `data` (bytes, text, or a function writing to the open binary file) to a temporary
    file `.<name>.*.tmp` beside `path`, then renames it over `path`. With `fsync` the bytes
    reach the disk before the rename (checkpoints). On any failure, a full disk or Ctrl-C
    included, the temporary file is removed and the error raised.

    A file that is there already is replaced as open(path, "w") would write it: a symlink's
    target is written (the link stays), its permission bits stay, and a read-only file (no
    write bit: even root's rename would go past it) raises PermissionError, untouched.

    A path that is no regular file (a device such as /dev/null or /dev/stdout, a FIFO, a
    shell's `>(...)`) is written in place: there is nothing to keep whole, and the rename put
    a regular file where root's /dev/null was (or a reader's FIFO), or failed for /dev/stdout,
    a link to a pipe that has no folder to make the temporary file in."""
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        special = False
    if special and not os.path.isdir(path):
        with open(path, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(_encoded(data))
        return Path(path)
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = new_file_mode()   # NOTE: mkstemp's 0600, not what open() would give
    else:
        if not mode & 0o222:
            raise PermissionError(errno.EACCES, "the file is read-only", str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(_encoded(data))
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    drop_stale_temps(path)   # NOTE: the next successful write of a file ends a kill -9's leftovers
    return path

