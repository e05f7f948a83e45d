"""Shared fixtures for the dataset tests: an isolated cache, real-data lookup, tiny fixtures."""
import io
import os
import tarfile
from pathlib import Path

import pytest

from nnlang.data import cache


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test touches ~/.cache, /usr/share/datasets or the network (port 9 refuses at once)."""
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NNLANG_DATA_MIRROR", "http://127.0.0.1:9")
    monkeypatch.setattr(cache, "SYSTEM_DIRS", [])
    return tmp_path / "cache"


def real_dir(*need: str) -> Path:
    """$NNLANG_DATA_DIR if it holds the files (globs) in `need`, else skip the test."""
    root = os.environ.get("NNLANG_DATA_DIR")
    if not root:
        pytest.skip("NNLANG_DATA_DIR is not set (point it at the real datasets to run this)")
    missing = [n for n in need if not list(Path(root).glob(n))]
    if missing:
        pytest.skip(f"NNLANG_DATA_DIR={root} lacks {missing}")
    return Path(root)


def write_reviews(path: Path, reviews: dict[str, str]) -> Path:
    """{"train/pos/0_9.txt": text, ...} -> an aclImdb_v1-style .tar.gz at `path`."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in reviews.items():
            data = text.encode()
            info = tarfile.TarInfo(f"aclImdb/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


TINY_REVIEWS = {
    "train/pos/0_9.txt": "Great great film!<br /><br />I loved it.",
    "train/pos/1_8.txt": "A great cast, a great story!",
    "train/neg/0_1.txt": "Awful film. I hated it...",
    "train/neg/1_2.txt": "Boring, boring and awful?",
    "test/pos/0_10.txt": "Great film, zanzibar!",       # 'zanzibar' appears only in test
    "test/neg/0_3.txt": "Awful awful zanzibar",
    "train/unsup/0_0.txt": "unsupervised reviews are ignored ignored ignored",
}


# Test modules get these through fixtures: importing from conftest breaks when other test
# folders have their own conftest.py.
@pytest.fixture
def real_data():
    return real_dir


@pytest.fixture
def tiny_imdb(tmp_path) -> Path:
    """A data dir holding imdb/aclImdb_v1.tar.gz with TINY_REVIEWS."""
    d = tmp_path / "data" / "imdb"
    d.mkdir(parents=True)
    write_reviews(d / "aclImdb_v1.tar.gz", TINY_REVIEWS)
    return tmp_path / "data"


def load_tiny_imdb(data_dir, vocab: int = 50, maxlen: int = 6):
    """The imdb loader on a tiny archive or folder: `load_dataset("imdb")` refuses those (it
    expects all 50,000 reviews), so this skips only that count check."""
    from nnlang.data import imdb
    return imdb.load_reviews("imdb", imdb.find_source(data_dir), vocab, maxlen,
                             data_dir=data_dir)


@pytest.fixture
def load_tiny():
    return load_tiny_imdb
