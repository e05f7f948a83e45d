"""Finding, downloading (from a local HTTP server) and failing clearly: nnlang/data/cache.py."""
import errno
import hashlib
import http.server
import os
import shutil
import tempfile
import threading
from functools import partial

import pytest

from nnlang.data import DataError, cache, list_datasets, load_dataset
from nnlang.data.cache import Remote, download
from nnlang.data.mnist import FILES
from nnlang.errors import NNError


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; shut down after the test (daemon thread, so bounded)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=root))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_checksum_and_atomic_write(server, tmp_path, monkeypatch):
    root, url = server
    payload = b"real bytes " * 50_000
    (root / "toy").mkdir()
    (root / "toy" / "blob.bin").write_bytes(payload)
    monkeypatch.setenv("NNLANG_DATA_MIRROR", url)
    good = Remote("blob.bin", "https://example.invalid/blob.bin",
                  "sha256:" + hashlib.sha256(payload).hexdigest())
    dest = tmp_path / "dl" / "blob.bin"
    assert download(good, dest, "toy") == dest and dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]

    bad = Remote("blob.bin", good.url, "md5:" + "0" * 32)
    dest2 = tmp_path / "dl2" / "blob.bin"
    with pytest.raises(DataError, match="checksum mismatch"):
        download(bad, dest2, "toy")
    assert list(dest2.parent.iterdir()) == []  # neither the file nor a .part temp file


def test_mnist_downloaded_from_mirror(server, real_data, isolated, monkeypatch):
    root, url = server
    shutil.copytree(real_data("mnist/*.gz") / "mnist", root / "mnist")
    monkeypatch.setenv("NNLANG_DATA_MIRROR", url)
    monkeypatch.delenv("NNLANG_DATA_DIR")
    ds = load_dataset("mnist")
    assert len(ds.train) == 60000
    assert sorted(p.name for p in (isolated / "mnist").iterdir()) == sorted(
        f"{s}.gz" for s in FILES.values())
    # A corrupted mirror copy fails its published checksum and leaves nothing behind.
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b tampered")
    shutil.rmtree(isolated / "mnist")
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_dataset("mnist")
    assert not (isolated / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert str(isolated / "mnist" / "t10k-labels-idx1-ubyte.gz") in e.value.message


@pytest.mark.parametrize("name, expected", [
    ("mnist", "mnist/train-images-idx3-ubyte.gz"),
    ("fashion-mnist", "fashion-mnist/t10k-labels-idx1-ubyte.gz"),
    ("imdb", "imdb/aclImdb_v1.tar.gz"),
])
def test_missing_data_without_network(name, expected, tmp_path, isolated, monkeypatch):
    monkeypatch.delenv("NNLANG_DATA_DIR", raising=False)
    with pytest.raises(DataError) as e:
        load_dataset(name, data_dir=tmp_path / "empty")
    text = str(e.value)
    assert str(isolated / expected) in text
    assert "--data-dir" in text and "NNLANG_DATA_DIR" in text and str(tmp_path / "empty") in text
    assert not list(isolated.rglob("*.part"))


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("NNLANG_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(cache, "SYSTEM_DIRS", [tmp_path / "sys"])
    dirs = cache.candidate_dirs("mnist", tmp_path / "arg")
    assert dirs == [tmp_path / "arg" / "mnist", tmp_path / "arg", tmp_path / "env" / "mnist",
                    tmp_path / "env", tmp_path / "sys" / "mnist", tmp_path / "sys",
                    cache.user_cache_dir() / "mnist", cache.user_cache_dir()]


def test_registry_names_and_errors():
    assert list_datasets() == ["dates", "fashion-mnist", "imdb", "imdb-sample", "imdb-text",
                               "imdb-text-sample", "mnist", "mnist-sample"]
    with pytest.raises(DataError, match="unknown dataset 'minst'") as e:
        load_dataset("minst")
    assert "did you mean 'mnist'" in e.value.hint
    assert isinstance(e.value, NNError) and "hint:" in str(e.value)
    with pytest.raises(DataError, match="no option"):
        load_dataset("mnist-sample", vocab=3)
    with pytest.raises(DataError, match="cannot parse"):
        load_dataset("imdb-sample(maxlen=)")
    with pytest.raises(DataError, match="not found"):
        load_dataset("nope.npz")


def test_spec_string_options():
    ds = load_dataset("imdb_sample(vocab=500, maxlen=40)")
    assert ds.train["tokens"].shape == (2500, 40) and ds.train["tokens"].max() < 500
    assert len(ds.meta["vocab"]) == 500


def test_a_downloaded_file_has_the_permissions_of_any_file_written(server, tmp_path, monkeypatch):
    """A download landed as mkstemp made its temporary file, 0600, where every other file of
    the cache (plans, kernels, processed arrays) follows the umask: in a cache shared by a
    team's accounts or a container's users (one NNLANG_CACHE_DIR), the others could not read
    the data set the first one fetched. It is made as open() would make it."""
    import os
    import stat
    root, url = server
    payload = b"shared bytes " * 1000
    (root / "toy").mkdir()
    (root / "toy" / "blob.bin").write_bytes(payload)
    monkeypatch.setenv("NNLANG_DATA_MIRROR", url)
    remote = Remote("blob.bin", "https://example.invalid/blob.bin",
                    "sha256:" + hashlib.sha256(payload).hexdigest())
    old = os.umask(0o022)
    try:
        dest = download(remote, tmp_path / "dl" / "blob.bin", "toy")
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


class _FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _toy(server, monkeypatch, payload: bytes) -> Remote:
    root, url = server
    (root / "toy").mkdir()
    (root / "toy" / "blob.bin").write_bytes(payload)
    monkeypatch.setenv("NNLANG_DATA_MIRROR", url)
    return Remote("blob.bin", "https://example.invalid/blob.bin",
                  "sha256:" + hashlib.sha256(payload).hexdigest())


def test_a_download_onto_a_full_disk_names_the_file_and_the_full_disk(server, isolated,
                                                                       monkeypatch):
    """A cache that fills up mid-download: the error said 'could not be downloaded' with a
    list of files to fetch by hand into the same full folder, as if the network had failed.
    It names the file being written and the full disk, and leaves no part file behind."""
    remote = _toy(server, monkeypatch, b"x" * 3_000_000)
    fdopen = os.fdopen
    monkeypatch.setattr(cache.os, "fdopen", lambda *a, **k: _FullDisk(fdopen(*a, **k), 1 << 20))
    with pytest.raises(DataError) as e:
        cache.fetch("toy", [remote])
    dest = isolated / "toy" / "blob.bin"
    assert e.value.message.startswith(f"cannot write {dest} (No space left on device)")
    assert "NNLANG_CACHE_DIR" in e.value.hint and "free space" in e.value.hint
    assert list((isolated / "toy").iterdir()) == []


def test_a_download_into_a_cache_folder_that_cannot_be_written_is_an_error(server, isolated,
                                                                           monkeypatch):
    """The data set's folder there but not writable (another account's cache, a read-only
    mount): the temporary file could not be made and the OSError came out as a traceback."""
    remote = _toy(server, monkeypatch, b"y" * 1000)
    (isolated / "toy").mkdir(parents=True)

    def refused(*args, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kw.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(DataError) as e:
        cache.fetch("toy", [remote])
    assert e.value.message.startswith(f"cannot write {isolated / 'toy' / 'blob.bin'} "
                                      "(Read-only file system)")
    assert "NNLANG_CACHE_DIR" in e.value.hint and "--data-dir" in e.value.hint
