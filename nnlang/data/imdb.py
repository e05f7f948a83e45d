"""IMDB Large Movie Review loader: `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt` -> tokens.

Reads a `aclImdb_v1*.tar.gz` (streamed, never extracted) or an extracted `aclImdb/` folder;
`unsup` is ignored. Tokenized arrays are cached as .npz in the user cache (see `cache.py`).
"""
from __future__ import annotations

import hashlib
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np

from nnlang.data import tokenize
from nnlang.data.cache import (DataError, Remote, candidate_dirs, fetch, load_processed,
                               processed_path, save_processed)
from nnlang.data.dataset import Dataset, Split

# Published checksum of the official archive (84,125,825 bytes, includes the unsup reviews);
# the same sha256 is listed by TFDS and others, its md5 is 7c2ac02c03563afcf9b574c7e56c153a.
REMOTE = Remote("aclImdb_v1.tar.gz",
                "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                "sha256:c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe")
_MEMBER = re.compile(r"(?:.*/)?(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
LABELS = {"neg": 0, "pos": 1}


def find_source(data_dir=None) -> Path:
    """The first `aclImdb_v1*.tar.gz` or `aclImdb/` folder in the search dirs, else download."""
    for d in candidate_dirs("imdb", data_dir):
        if (d / "aclImdb" / "train").is_dir():
            return d / "aclImdb"
        tars = sorted(d.glob("aclImdb_v1*.tar.gz")) if d.is_dir() else []
        if tars:
            return tars[0]
    return fetch("imdb", [REMOTE], data_dir)[REMOTE.filename]


def load_imdb(data_dir=None, vocab: int = 20000, maxlen: int = 200) -> Dataset:
    """25,000 train + 25,000 test movie reviews; `label` is 1.0 for pos and 0.0 for neg."""
    return load_reviews("imdb", find_source(data_dir), vocab, maxlen)


def load_reviews(name: str, source: Path, vocab: int, maxlen: int, meta=None) -> Dataset:
    """Tokenize (or load from cache) the reviews under `source`, a tarball or `aclImdb/` dir."""
    for opt, v in (("vocab", vocab), ("maxlen", maxlen)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (3 if opt == "vocab" else 1):
            raise DataError(f"{name}: option {opt}={v!r} must be an integer >= "
                            f"{3 if opt == 'vocab' else 1}")
    key = f"{name}-{_source_key(source, vocab, maxlen)}"
    cached = load_processed(key)
    if cached is None:
        cached = _process(source, vocab, maxlen)
        save_processed(key, cached)  # NOTE: a read-only cache dir just means no cache
    vocab_list = cached["vocab"].tolist()
    splits = {s: Split({"tokens": cached[f"{s}_tokens"], "label": cached[f"{s}_label"]})
              for s in ("train", "test")}
    meta = {"kind": "text", "vocab": vocab_list, "vocab_size": vocab,
            "tokenizer": {"version": tokenize.TOKENIZER_VERSION, "maxlen": maxlen,
                          "vocab": vocab, "pad_id": tokenize.PAD_ID, "oov_id": tokenize.OOV_ID,
                          "padding": "pre", "truncating": "pre (keeps the end)"},
            "num_classes": 2, "class_names": ["neg", "pos"], "source": str(source),
            "cache": str(processed_path(key)), "ids": {s: cached[f"{s}_id"] for s in splits},
            **(meta or {})}
    return Dataset(name, splits["train"], splits["test"], ["tokens"], ["label"], meta)


def _source_key(source: Path, vocab: int, maxlen: int) -> str:
    """Changes whenever the source file, the options or the tokenizer change."""
    if source.is_dir():
        stats = [(source / s / lab).stat() for s in ("train", "test") for lab in LABELS]
    else:
        stats = [source.stat()]
    parts = [str(source.resolve()), *(f"{st.st_size}:{st.st_mtime_ns}" for st in stats),
             str(vocab), str(maxlen), str(tokenize.TOKENIZER_VERSION)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def read_reviews(source: Path) -> list[tuple[str, int, int, str]]:
    """[(split, label, id, text)] sorted by (split, label, id): train first, neg before pos."""
    docs = []
    try:
        if source.is_dir():
            for path in source.glob("*/*/*.txt"):
                m = _MEMBER.match(path.relative_to(source).as_posix())
                if m:
                    docs.append((*_key(m), path.read_text("utf-8", errors="replace")))
        else:
            with tarfile.open(source, "r:gz") as tar:
                for member in tar:  # streaming: members are read in archive order, once
                    m = _MEMBER.match(member.name)
                    if m and member.isfile():
                        text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                        docs.append((*_key(m), text))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{source} is truncated or corrupt ({e})",
                        "delete it so it is downloaded again, or replace it") from None
    if not docs:
        raise DataError(f"{source} holds no reviews (expected aclImdb/train/pos/<id>_<rating>.txt)")
    docs.sort(key=lambda d: (d[0] != "train", d[1], d[2]))
    return docs


def _key(m: re.Match) -> tuple[str, int, int]:
    return m[1], LABELS[m[2]], int(m[3])


def _process(source: Path, vocab: int, maxlen: int) -> dict[str, np.ndarray]:
    docs = read_reviews(source)
    toks = [tokenize.tokenize(text) for _, _, _, text in docs]
    is_train = [d[0] == "train" for d in docs]
    if not any(is_train):
        raise DataError(f"{source} has no train/ reviews to build the vocabulary from")
    words = tokenize.build_vocab((t for t, tr in zip(toks, is_train) if tr), vocab)
    ids = {w: i for i, w in enumerate(words)}
    out = {"vocab": np.array(words)}
    for split in ("train", "test"):
        rows = [i for i, d in enumerate(docs) if d[0] == split]
        out[f"{split}_tokens"] = tokenize.encode((toks[i] for i in rows), ids, maxlen)
        out[f"{split}_label"] = np.array([docs[i][1] for i in rows], np.float32)
        out[f"{split}_id"] = np.array([docs[i][2] for i in rows], np.int32)
    return out
