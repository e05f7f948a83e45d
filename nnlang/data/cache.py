"""Finding, downloading and verifying dataset files: the first step of `load_dataset`.

Lookup order is `data_dir`, `$NNLANG_DATA_DIR`, `/usr/share/datasets`, then the user cache
(`$NNLANG_CACHE_DIR` or `~/.cache/nnlang`); downloads are checksummed and written atomically.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nnlang.errors import NNError
from nnlang.files import as_path, drop_stale_temps, new_file_mode, user_path, write_atomic
from nnlang.user_cache import discard_damaged, temporary, user_cache_dir

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
    # sha256 of other known-good local copies (the un-gzipped file, a distribution's repack)
    known: tuple[str, ...] = ()

    def sha256s(self) -> set[str]:
        algo, want = self.checksum.split(":", 1)
        return {*self.known, *([want] if algo == "sha256" else [])}


def search_roots(data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """(root, how it was chosen) for every root searched for dataset files, in priority order."""
    roots = [(as_path(data_dir, "data_dir", "the folder to look for data sets in"),
              "--data-dir")] if data_dir is not None else []
    if os.environ.get("NNLANG_DATA_DIR"):
        roots.append((user_path(os.environ["NNLANG_DATA_DIR"]), "$NNLANG_DATA_DIR"))
    return [*roots, *((d, "the system datasets dir") for d in SYSTEM_DIRS),
            (user_cache_dir(), "the user cache")]


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Roots searched for dataset files, in priority order."""
    return [root for root, _ in search_roots(data_dir)]


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
        except CannotWrite:
            raise   # NOTE: the network is fine, the folder is not: no 'put these files' list
        except DataError as e:
            failed.append((r, e.message))
    if failed:
        raise missing_error(name, remotes, data_dir, failed)
    return paths


def missing_error(name: str, remotes: list[Remote], data_dir, failed) -> DataError:
    target = user_cache_dir() / name
    lines = [f"dataset '{name}' is not available locally and could not be downloaded "
             f"({failed[0][1]})"]
    if temporary():   # NOTE: no home folder: a folder removed at exit is no place for them
        lines += [f"download these files into DIR/{name}/:"]
        lines += [f"  {r.filename}    <- {mirror_url(name, r)}" for r, _ in failed]
    else:
        lines += [f"put these files in {target}/:"]
        lines += [f"  {target / r.filename}    <- {mirror_url(name, r)}" for r, _ in failed]
    searched = ", ".join(str(d) for d in candidate_dirs(name, data_dir))
    hint = (f"{'then' if temporary() else 'or'} pass --data-dir DIR (or set NNLANG_DATA_DIR=DIR) "
            f"where DIR/{name}/ holds all of {', '.join(r.filename for r in remotes)}; "
            f"searched: {searched}")
    return DataError("\n".join(lines), hint)


def mirror_url(name: str, r: Remote) -> str:
    """`$NNLANG_DATA_MIRROR/<name>/<filename>` when a mirror is set, else the official URL."""
    mirror = os.environ.get("NNLANG_DATA_MIRROR")
    return f"{mirror.rstrip('/')}/{name}/{r.filename}" if mirror else r.url


def download(r: Remote, dest: Path, name: str) -> Path:
    """Stream `r` into `dest` with a progress bar; verify the checksum before it appears there."""
    url = mirror_url(name, r)
    algo, want = r.checksum.split(":", 1)
    digest = hashlib.new(algo)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{r.filename}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise CannotWrite(dest, name, url, e) from None
    try:
        # NOTE: as open() makes a file, not mkstemp's 0600: a cache shared by several accounts
        # held data sets that only the one who fetched them could read
        os.chmod(tmp, new_file_mode())
        with (os.fdopen(fd, "wb") as out,
              urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp):
            total = int(resp.headers.get("Content-Length") or 0) or None
            with _progress() as bar:
                task = bar.add_task(f"{name}/{r.filename}", total=total)
                while chunk := resp.read(1 << 20):
                    _put(out, chunk, dest, name, url)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
            _put(out, b"", dest, name, url)
        if digest.hexdigest() != want:
            raise DataError(f"checksum mismatch for {url}: {algo} {digest.hexdigest()}, "
                            f"expected {want}", "the download is corrupt or the mirror is wrong")
        try:
            os.replace(tmp, dest)
        except OSError as e:
            raise CannotWrite(dest, name, url, e) from None
        drop_stale_temps(dest, ".part")   # NOTE: a killed download's, each as big as the file
        return dest
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class CannotWrite(DataError):
    """A download the cache folder cannot take (full, read-only, not a folder): said as such,
    naming the file, not as a download that failed, which sent users to check their network."""

    def __init__(self, dest: Path, name: str, url: str, err: OSError):
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        where = ("free space there, or set NNLANG_CACHE_DIR to a folder with room" if full
                 else "set NNLANG_CACHE_DIR to a folder you can write")
        super().__init__(f"cannot write {dest} ({err.strerror or err}) while downloading "
                         f"dataset '{name}'",
                         f"{where}; or download {url} yourself into DIR/{name}/ and pass "
                         f"--data-dir DIR")


def _put(out, chunk: bytes, dest: Path, name: str, url: str) -> None:
    """Writes a downloaded chunk (b"": flushes); a local write error is `CannotWrite`."""
    try:
        out.write(chunk)
        if not chunk:
            out.flush()
    except OSError as e:
        raise CannotWrite(dest, name, url, e) from None


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


# *** verifying local files ***

def origin(path: Path, data_dir=None) -> str:
    """Where `path` was found, for error messages: "$NNLANG_DATA_DIR (/data)", "--data-dir (d)"."""
    for root, how in search_roots(data_dir):
        if Path(path).is_relative_to(root):
            return f"{how} ({root})" if how.startswith(("-", "$")) else f"{how} {root}"
    return str(Path(path).parent)


def in_user_cache(path: Path) -> bool:
    return Path(path).is_relative_to(user_cache_dir())


def corrupt(path: Path, why: str, data_dir=None, remote: Remote | None = None,
            sha: str | None = None) -> DataError:
    """The error for a damaged dataset file: which file, what is wrong, where it was found, how
    to get a good one. `sha` (the file's sha256) is compared with `remote`'s published ones."""
    lines = [f"{path} is corrupt: {why}", f"  found through {origin(path, data_dir)}"]
    if remote is not None and sha is not None and sha not in remote.sha256s():
        lines.append(f"  checksum mismatch: sha256 {sha}, expected "
                     f"{' or '.join(sorted(remote.sha256s()))}")
    url = f" from {remote.url}" if remote else ""
    if in_user_cache(path):
        hint = f"delete it and nnlang downloads it again{url}"
    else:
        hint = (f"delete it (nnlang then looks in the next place, or downloads it{url}), or "
                "replace it with a good copy")
    return DataError("\n".join(lines), hint)


def cached_paths() -> list[Path]:
    """What data sets leave in the user cache (`nnlang cache`): one folder per downloaded data
    set (`fetch`), their processed forms and the record of verified checksums."""
    from nnlang.data.registry import DATASETS
    root = user_cache_dir()
    # NOTE: and the temporary files of the record's writes a kill -9 left in the root, which
    # no kind counted or cleared
    temps = sorted(root.glob(f".{_verified_file().name}.*.tmp")) if root.is_dir() else []
    return [*(root / name for name in sorted(DATASETS)), _processed_dir(), _verified_file(),
            *temps]


def _processed_dir() -> Path:
    return user_cache_dir() / "processed"


def _verified_file() -> Path:
    return user_cache_dir() / "verified.json"


def _stamp(path: Path) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def sha256_of(path: Path) -> str:
    """The file's sha256; remembered (by size and mtime) for files that `remember` was told of,
    so a verified 28 MB archive is not hashed again on every run."""
    entry = _read_verified().get(str(Path(path).resolve()))
    if entry and entry[:2] == _stamp(path):
        return entry[2]
    return file_hash(path)


def remember(path: Path, sha: str) -> None:
    """Records that `path`, as it is now, passed verification (its content hash is `sha`)."""
    table, key, entry = _read_verified(), str(Path(path).resolve()), [*_stamp(path), sha]
    if table.get(key) != entry:
        table[key] = entry
        _write_atomic(_verified_file(), json.dumps(table, indent=0).encode())


def _read_verified() -> dict:
    try:
        table = json.loads(_verified_file().read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _write_atomic(path: Path, data: bytes) -> bool:
    """`files.write_atomic`, creating the folder; False (and nothing written) when it cannot:
    these files are a cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        return True
    except OSError:
        return False


@contextmanager
def checked_gzip(path: Path, data_dir=None, remote: Remote | None = None):
    """Opens a .gz for streaming and, once the body is done, reads it to the end so its CRC and
    length are checked; gzip/zlib errors become a `corrupt` error with the compressed byte."""
    with open(path, "rb") as raw:
        gz = gzip.GzipFile(fileobj=raw)
        size = os.fstat(raw.fileno()).st_size
        try:
            if size == 0:  # gzip reads an empty file as empty data, not as an error
                raise gzip.BadGzipFile("the file is empty")
            yield gz
            while gz.read(1 << 20):
                pass
        except EOFError:
            why = f"truncated gzip: the file ends at byte {size:,} before the gzip stream does"
        except gzip.BadGzipFile as e:
            if raw.tell() <= 10 and "CRC" not in str(e):
                why = f"not a gzip file ({e})"
            else:  # NOTE: the CRC is only checked at the end, so "where" is only a bound
                why = (f"gzip check failed, damaged data before byte {raw.tell():,} of "
                       f"{size:,} ({e})")
        except zlib.error as e:
            why = f"bad compressed data near byte {raw.tell():,} of {size:,} ({e})"
        except tarfile.ReadError as e:
            why = f"damaged tar data near byte {raw.tell():,} of {size:,} ({e})"
        else:
            return
    raise corrupt(path, why, data_dir, remote,
                  sha=file_hash(path) if remote is not None else None) from None


# *** processed-array cache (e.g. tokenized IMDB) ***

def processed_path(key: str) -> Path:
    return _processed_dir() / f"{key}.npz"


def save_processed(key: str, arrays: dict) -> Path | None:
    """Atomically write `arrays` as an .npz; returns None (no cache) if the dir isn't writable.
    Only arrays derived from a verified source may be saved here."""
    import io

    import numpy as np
    path = processed_path(key)
    buf = io.BytesIO()
    # the digest travels inside the entry: a zip's CRCs miss damage to its directory (a renamed
    # or lost member) and a half-written file must not pass for a smaller data set
    np.savez(buf, **arrays, **{_DIGEST: np.array(_digest(arrays))})
    return path if _write_atomic(path, buf.getvalue()) else None


_DIGEST = "__sha256__"


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = arrays[k]
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_processed(key: str) -> dict | None:
    """The cached arrays, or None when the entry is missing or damaged (then removed, with a
    warning): the caller rebuilds it from the verified source."""
    import numpy as np
    path = processed_path(key)
    if not path.is_file():
        return None
    try:
        # every array is read here, inside the try: a zip only finds a bad CRC or member when
        # it is read, and the caller must not meet that later as a crash
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if _DIGEST not in arrays:
            return None  # written by an older nnlang: a plain miss, rebuilt with a digest
        if str(arrays.pop(_DIGEST)) != _digest(arrays):
            raise ValueError("checksum mismatch")
        return arrays
    except Exception as e:  # noqa: BLE001 -- a damaged zip raises almost anything
        discard_damaged(path, e)
        return None
