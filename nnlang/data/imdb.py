"""IMDB Large Movie Review loader: `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt` -> tokens.

Reads a `aclImdb_v1*.tar.gz` (streamed, never extracted) or an extracted `aclImdb/` folder;
`unsup` is ignored. Tokenized arrays are cached as .npz in the user cache (see `cache.py`).
"""
from __future__ import annotations

import hashlib
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from nnlang.data import tokenize
from nnlang.data.cache import (DataError, Remote, candidate_dirs, checked_gzip, corrupt, fetch,
                               load_processed, processed_path, remember, save_processed,
                               sha256_of)
from nnlang.data.dataset import Dataset, Split
from nnlang.data.ragged import Ragged

# Published checksum of the official archive (84,125,825 bytes, includes the unsup reviews);
# the same sha256 is listed by TFDS and others, its md5 is 7c2ac02c03563afcf9b574c7e56c153a.
# Also known: aclImdb_v1-labeled.tar.gz (28,630,965 bytes), the same reviews without unsup.
REMOTE = Remote("aclImdb_v1.tar.gz",
                "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                "sha256:c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
                known=("fc132c2a23a4d23eec474b518907765dbc9c59e648c1e57ac8010670238ed697",))
_MEMBER = re.compile(r"(?:.*/)?(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
LABELS = {"neg": 0, "pos": 1}
# Reviews per folder in every release of aclImdb v1: an archive with fewer is damaged.
FULL_COUNTS = {f"{s}/{lab}": 12500 for s in ("train", "test") for lab in LABELS}


def find_source(data_dir=None) -> Path:
    """The first `aclImdb_v1*.tar.gz` or `aclImdb/` folder in the search dirs, else download."""
    for d in candidate_dirs("imdb", data_dir):
        if (d / "aclImdb" / "train").is_dir():
            return d / "aclImdb"
        tars = sorted(d.glob("aclImdb_v1*.tar.gz")) if d.is_dir() else []
        if tars:
            return tars[0]
    return fetch("imdb", [REMOTE], data_dir)[REMOTE.filename]


def load_imdb(data_dir=None, vocab: int = 20000, maxlen: int | None = 200,
              words: list[str] | None = None) -> Dataset:
    """25,000 train + 25,000 test movie reviews; `label` is 1.0 for pos and 0.0 for neg.
    maxlen = None keeps whole reviews: `tokens` is then a `Ragged` of variable-length rows.
    `words`: a trained model's vocabulary to encode with, instead of one built from the train
    split (a checkpoint's embedding rows are those words)."""
    return load_reviews("imdb", find_source(data_dir), vocab, maxlen, expect=FULL_COUNTS,
                        data_dir=data_dir, remote=REMOTE, words=words)


def load_reviews(name: str, source: Path, vocab: int, maxlen: int | None, meta=None,
                 expect: dict[str, int] | None = None, data_dir=None,
                 remote: Remote | None = None, words: list[str] | None = None) -> Dataset:
    """Tokenize (or load from cache) the reviews under `source`, a tarball or `aclImdb/` dir.

    `expect` ({"train/pos": 12500, ...}) is checked after the archive was read to its end, and
    only a source that passed is cached: a damaged archive raises and leaves no cache entry.
    """
    check_options(name, vocab, maxlen)
    if words is not None and words[:2] != [tokenize.PAD, tokenize.OOV]:
        # NOTE: a character model's tokens (<pad>, <unk>, a, b...) taken for words would
        # encode nearly every word as out-of-vocabulary
        shown = ", ".join(map(repr, words[:4]))
        raise DataError(f"{name}: the trained model's tokens ({shown}, ...) are not a word "
                        f"vocabulary ({tokenize.PAD}, {tokenize.OOV}, then words), so its ids "
                        "cannot be kept", "evaluate the model on the kind of data "
                        "it was trained on, or train a new one")
    sha = sha256_of(source) if source.is_file() else None
    key = _entry_key(name, source, sha, vocab, maxlen, None)
    cached = load_processed(key)
    # NOTE: a model's words serve from the data's own encoding when they are its vocabulary
    # (a resumed run); else (a model trained on other reviews) the reviews are encoded with
    # them, read and tokenized once
    if words is not None and (cached is None or cached["vocab"].tolist() != list(words)):
        key = _entry_key(name, source, sha, vocab, maxlen, words)
        cached = load_processed(key)
    if cached is None:
        cached = _process_and_cache(key, source, sha, vocab, maxlen, words, expect, data_dir,
                                    remote)
    vocab_list = cached["vocab"].tolist()
    splits = {s: Split({"tokens": _tokens(cached, s), "label": cached[f"{s}_label"]})
              for s in ("train", "test")}
    meta = {"kind": "text", "vocab": vocab_list, "vocab_size": vocab,
            "tokenizer": {"version": tokenize.TOKENIZER_VERSION, "maxlen": maxlen,
                          "vocab": vocab, "pad_id": tokenize.PAD_ID, "oov_id": tokenize.OOV_ID,
                          "padding": "pre", "truncating": "pre (keeps the end)"},
            "num_classes": 2, "class_names": ["neg", "pos"], "source": str(source),
            "cache": str(processed_path(key)), "ids": {s: cached[f"{s}_id"] for s in splits},
            **(meta or {})}
    return Dataset(name, splits["train"], splits["test"], ["tokens"], ["label"], meta)


def _process_and_cache(key, source, sha, vocab, maxlen, words, expect, data_dir, remote):
    """The reviews read, checked, tokenized and encoded with `words` (else with the train
    split's vocabulary), cached under `key` only when the archive passed its checks."""
    docs = read_reviews(source, data_dir, remote)
    _check_counts(source, docs, expect, data_dir, remote, sha)
    cached = _process(docs, vocab, maxlen, words)
    if sha is not None:
        remember(source, sha)
    save_processed(key, cached)  # NOTE: a read-only cache dir just means no cache
    return cached


def check_options(name: str, vocab: int = 20000, maxlen: int | None = 200) -> None:
    """vocab counts the padding and out-of-vocabulary ids, so it needs one more for a word;
    maxlen = none keeps whole reviews."""
    for opt, v, low in (("vocab", vocab, 3), ("maxlen", 1 if maxlen is None else maxlen, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise DataError(f"{name}: option {opt}={v!r} must be an integer >= {low}",
                            "e.g. imdb(vocab = 20000, maxlen = 200), or maxlen = none for "
                            "whole reviews")


def _entry_key(name: str, source: Path, sha: str | None, vocab: int, maxlen: int,
               words: list[str] | None) -> str:
    return f"{name}-{_source_key(source, sha, vocab, maxlen, words)}"


def _source_key(source: Path, sha: str | None, vocab: int, maxlen: int,
                words: list[str] | None = None) -> str:
    """Changes whenever the source's content, the options or the tokenizer change."""
    parts = [sha] if sha is not None else folder_stamp(source)
    parts += [str(vocab), str(maxlen), str(tokenize.TOKENIZER_VERSION)]
    if words is not None:
        parts.append(hashlib.sha256("\n".join(words).encode()).hexdigest())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def folder_stamp(source: Path) -> list[str]:
    """What keys the cache of an extracted aclImdb/ folder (hashing 50,000 files on every run
    would cost more than reading them): its path and its review folders' sizes and times,
    which change when reviews are added, removed or the folder is replaced."""
    stats = [(source / s / lab).stat() if (source / s / lab).is_dir() else None
             for s in ("train", "test") for lab in LABELS]
    return [str(source.resolve()),
            *(f"{st.st_size}:{st.st_mtime_ns}" if st else "-" for st in stats)]


def read_reviews(source: Path, data_dir=None,
                 remote: Remote | None = None) -> list[tuple[str, int, int, str]]:
    """[(split, label, id, text)] sorted by (split, label, id): train first, neg before pos.

    A tarball is read to its very end (gzip CRC and length checked), so a damaged archive is an
    error rather than the reviews before the damage."""
    docs = []
    if source.is_dir():
        for path in source.glob("*/*/*.txt"):
            m = _MEMBER.match(path.relative_to(source).as_posix())
            if m:
                docs.append((*_key(m), path.read_text("utf-8", errors="replace")))
    else:
        with checked_gzip(source, data_dir, remote) as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for member in tar:  # streaming: members are read in archive order, once
                    m = _MEMBER.match(member.name)
                    if m and member.isfile():
                        text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                        docs.append((*_key(m), text))
                end = tar.offset
            # tarfile takes a damaged member header for the end of the archive: what follows
            # the end must be padding. (Read it all first: a CRC error is the better message.)
            stopped_early = False
            while chunk := gz.read(1 << 20):
                stopped_early = stopped_early or bool(chunk.strip(b"\0"))
        if stopped_early:
            raise corrupt(source, f"damaged tar member header at byte {end:,} of the "
                          "uncompressed archive", data_dir, remote, sha256_of(source))
    if not docs:
        raise DataError(f"{source} holds no reviews (expected aclImdb/train/pos/<id>_<rating>.txt)")
    docs.sort(key=lambda d: (d[0] != "train", d[1], d[2]))
    return docs


def _check_counts(source: Path, docs, expect, data_dir, remote, sha) -> None:
    got = Counter(f"{split}/{'pos' if label else 'neg'}" for split, label, _, _ in docs)
    wrong = [f"{k} has {got[k]:,} of {n:,} reviews" for k, n in (expect or {}).items()
             if got[k] != n]
    if not any(split == "train" for split, *_ in docs):
        wrong.append("no train/ reviews")
    if wrong:
        raise corrupt(source, f"missing members: {'; '.join(wrong)}", data_dir, remote, sha)


def _key(m: re.Match) -> tuple[str, int, int]:
    return m[1], LABELS[m[2]], int(m[3])


def _process(docs, vocab: int, maxlen: int, words=None) -> dict[str, np.ndarray]:
    toks = [tokenize.tokenize(text) for _, _, _, text in docs]
    is_train = [d[0] == "train" for d in docs]
    if words is None:
        words = tokenize.build_vocab((t for t, tr in zip(toks, is_train) if tr), vocab)
    ids = {w: i for i, w in enumerate(words)}
    out = {"vocab": np.array(words)}
    for split in ("train", "test"):
        rows = [i for i, d in enumerate(docs) if d[0] == split]
        if maxlen is None:  # NOTE: stored flat + offsets; see `_tokens`
            ragged = Ragged.from_rows([[ids.get(w, tokenize.OOV_ID) for w in toks[i]]
                                       for i in rows])
            out[f"{split}_tokens"], out[f"{split}_offsets"] = ragged.flat, ragged.offsets
        else:
            out[f"{split}_tokens"] = tokenize.encode((toks[i] for i in rows), ids, maxlen)
        out[f"{split}_label"] = np.array([docs[i][1] for i in rows], np.float32)
        out[f"{split}_id"] = np.array([docs[i][2] for i in rows], np.int32)
    return out


def _tokens(cached: dict, split: str):
    """A split's tokens: [N, maxlen], or whole reviews as a `Ragged` (maxlen = none)."""
    if f"{split}_offsets" in cached:
        return Ragged(cached[f"{split}_tokens"], cached[f"{split}_offsets"])
    return cached[f"{split}_tokens"]
