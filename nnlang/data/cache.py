"""Finding and downloading dataset files: the first step of `load_dataset`, before any parsing.

Lookup order is `data_dir`, `$NNLANG_DATA_DIR`, `/usr/share/datasets`, then the user cache
(`$NNLANG_CACHE_DIR` or `~/.cache/nnlang`); downloads are checksummed and written atomically.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nnlang.errors import NNError
from nnlang.user_cache import user_cache_dir

# Debian's dataset-* packages (e.g. dataset-fashion-mnist) install here. A list so tests can
# empty it and not depend on what the machine has installed.
SYSTEM_DIRS = [Path("/usr/share/datasets")]
DOWNLOAD_TIMEOUT_S = 30


class DataError(NNError):
    """A dataset problem the user can fix: missing files, bad checksum, corrupt data, bad option.

    Has no source span; the caller may re-raise it at the `data:` setting's span.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, None, hint)


@dataclass(frozen=True)
class Remote:
    """One file of a dataset: its canonical name, official URL and published checksum."""

    filename: str
    url: str
    checksum: str               # "sha256:<hex>" or "md5:<hex>", of the file as published
    aliases: tuple[str, ...] = ()  # other accepted local names, e.g. the un-gzipped file


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Roots searched for dataset files, in priority order."""
    roots = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("NNLANG_DATA_DIR"):
        roots.append(Path(os.environ["NNLANG_DATA_DIR"]))
    return [*roots, *SYSTEM_DIRS, user_cache_dir()]


def candidate_dirs(name: str, data_dir=None) -> list[Path]:
    """`<root>/<name>/` then `<root>/` itself, for every search root."""
    return [d for root in search_dirs(data_dir) for d in (root / name, root)]


def find_files(name: str, remotes: list[Remote], data_dir=None) -> dict[str, Path] | None:
    """The first directory holding *all* files of a dataset (never mix sources), else None."""
    for d in candidate_dirs(name, data_dir):
        found = {}
        for r in remotes:
            hit = next((d / n for n in (r.filename, *r.aliases) if (d / n).is_file()), None)
            if hit is None:
                break
            found[r.filename] = hit
        else:
            return found
    return None


def fetch(name: str, remotes: list[Remote], data_dir=None) -> dict[str, Path]:
    """Local paths of a dataset's files, downloading the missing ones into the user cache."""
    found = find_files(name, remotes, data_dir)
    if found is not None:
        return found
    target = user_cache_dir() / name
    paths, failed = {}, []
    for r in remotes:
        dest = target / r.filename
        if failed:  # after one failure (usually: no network) don't wait on the others
            if not dest.is_file():
                failed.append((r, ""))
            continue
        try:
            paths[r.filename] = dest if dest.is_file() else download(r, dest, name)
        except DataError as e:
            failed.append((r, e.message))
    if failed:
        raise missing_error(name, remotes, data_dir, failed)
    return paths


def missing_error(name: str, remotes: list[Remote], data_dir, failed) -> DataError:
    target = user_cache_dir() / name
    lines = [f"dataset '{name}' is not available locally and could not be downloaded "
             f"({failed[0][1]})", f"put these files in {target}/:"]
    lines += [f"  {target / r.filename}    <- {mirror_url(name, r)}" for r, _ in failed]
    searched = ", ".join(str(d) for d in candidate_dirs(name, data_dir))
    hint = (f"or pass --data-dir DIR (or set NNLANG_DATA_DIR=DIR) where DIR/{name}/ holds all of "
            f"{', '.join(r.filename for r in remotes)}; searched: {searched}")
    return DataError("\n".join(lines), hint)


def mirror_url(name: str, r: Remote) -> str:
    """`$NNLANG_DATA_MIRROR/<name>/<filename>` when a mirror is set, else the official URL."""
    mirror = os.environ.get("NNLANG_DATA_MIRROR")
    return f"{mirror.rstrip('/')}/{name}/{r.filename}" if mirror else r.url


def download(r: Remote, dest: Path, name: str) -> Path:
    """Stream `r` into `dest` with a progress bar; verify the checksum before it appears there."""
    url = mirror_url(name, r)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest.parent}: {e.strerror}") from None
    algo, want = r.checksum.split(":", 1)
    digest = hashlib.new(algo)
    fd, tmp = tempfile.mkstemp(prefix=f".{r.filename}.", suffix=".part", dir=dest.parent)
    try:
        with (os.fdopen(fd, "wb") as out,
              urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp):
            total = int(resp.headers.get("Content-Length") or 0) or None
            with _progress() as bar:
                task = bar.add_task(f"{name}/{r.filename}", total=total)
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
        if digest.hexdigest() != want:
            raise DataError(f"checksum mismatch for {url}: {algo} {digest.hexdigest()}, "
                            f"expected {want}", "the download is corrupt or the mirror is wrong")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _progress():
    # Imported here: rich costs ~0.1 s to import and only downloads need it.
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    # stderr, so `nnlang predict ... > out.txt` output stays clean.
    return Progress(TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
                    console=Console(stderr=True))


def file_hash(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# *** processed-array cache (e.g. tokenized IMDB) ***

def processed_path(key: str) -> Path:
    return user_cache_dir() / "processed" / f"{key}.npz"


def save_processed(key: str, arrays: dict) -> Path | None:
    """Atomically write `arrays` as an .npz; returns None (no cache) if the dir isn't writable."""
    import numpy as np
    path = processed_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return path
    except OSError:
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_processed(key: str) -> dict | None:
    import numpy as np
    path = processed_path(key)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None  # missing or damaged cache: rebuild
