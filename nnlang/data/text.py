"""Text for language models: a reversible character tokenizer and `imdb_text`, the IMDB review
text cut into fixed-length chunks (`tokens`, and `next` = the same text one character later).

Characters, not words or subwords: the vocabulary is ~100 symbols, so the embedding and the
output layer stay tiny and a model this machine can train in minutes still spells real words;
any text made of known characters round-trips exactly (decode(encode(s)) == s).
"""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from nnlang.data import imdb
from nnlang.data.tokenize import _BR
from nnlang.data.cache import DataError, load_processed, processed_path, save_processed, sha256_of
from nnlang.data.dataset import Dataset, Split

TEXT_VERSION = 1          # bump when the text processing changes: it keys the array cache
PAD_ID, UNK_ID = 0, 1     # 0 pads, 1 stands for a character outside the vocabulary
MIN_COUNT = 50            # characters rarer than this in the train text are left out
SEPARATOR = "\n"          # ends every review, so a model learns where reviews end
UNK_TEXT = "\ufffd"       # how an out-of-vocabulary id decodes


class Tokenizer:
    """What generation needs from a data set's tokenizer (see docs/generation.md)."""

    vocab_size: int
    pad_id: int = PAD_ID
    bos_id: int | None = None
    eos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def id_of(self, token: str) -> int | None:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per character: 0 padding, 1 unknown, then `chars` in order."""

    def __init__(self, chars: str):
        self.chars = chars
        self.ids = {c: i + 2 for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + 2
        self.eos_id = self.ids.get(SEPARATOR)

    def encode(self, text: str) -> list[int]:
        """Raises DataError naming the first character outside the vocabulary."""
        out = []
        for i, c in enumerate(text):
            got = self.ids.get(c)
            if got is None:
                raise DataError(f"character {c!r} (U+{ord(c):04X}) at position {i} of the "
                                f"prompt is not in the tokenizer's vocabulary",
                                f"the model knows {len(self.chars)} characters: "
                                f"{self.chars.strip()[:60]!r}...; replace or remove it")
            out.append(got)
        return out

    def encode_lossy(self, text: str) -> list[int]:
        """Training text: unknown characters become UNK_ID."""
        return [self.ids.get(c, UNK_ID) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 2] if 2 <= i < self.vocab_size else
                       (UNK_TEXT if i == UNK_ID else "") for i in map(int, ids))

    def id_of(self, token: str) -> int | None:
        return self.ids.get(token)


def clean(text: str) -> str:
    """IMDB's HTML line breaks become spaces, as in the word tokenizer."""
    return _BR.sub(" ", text).replace("\u2019", "'")


def check_options(name: str, maxlen: int = 128, train_chunks: int = 8000,
                  test_chunks: int = 400) -> None:
    for opt, v in (("maxlen", maxlen), ("train_chunks", train_chunks),
                   ("test_chunks", test_chunks)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise DataError(f"{name}: option {opt}={v!r} must be an integer >= 1",
                            "e.g. imdb_text(maxlen = 128, train_chunks = 8000)")


def load_imdb_text(data_dir=None, maxlen: int = 128, train_chunks: int = 8000,
                   test_chunks: int = 400) -> Dataset:
    """IMDB review text as character chunks of `maxlen`: `train_chunks` from the archive's
    train reviews and `test_chunks` from its test reviews (the validation data)."""
    return text_chunks("imdb-text", imdb.find_source(data_dir), maxlen, train_chunks,
                       test_chunks, data_dir, imdb.REMOTE)


def text_chunks(name, source, maxlen, train_chunks, test_chunks, data_dir=None, remote=None):
    check_options(name, maxlen, train_chunks, test_chunks)
    sha = sha256_of(source) if source.is_file() else str(source.resolve())
    parts = [sha, str(maxlen), str(train_chunks), str(test_chunks), str(TEXT_VERSION)]
    key = f"{name}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}"
    cached = load_processed(key)
    if cached is None:
        docs = imdb.read_reviews(source, data_dir, remote)
        cached = _process(docs, maxlen, train_chunks, test_chunks)
        save_processed(key, cached)  # NOTE: a read-only cache dir just means no cache
    tok = CharTokenizer(str(cached["chars"]))
    splits = {s: Split({"tokens": cached[f"{s}_x"][:, :-1], "next": cached[f"{s}_x"][:, 1:]})
              for s in ("train", "test")}
    meta = {"kind": "sequence", "text_tokenizer": tok, "vocab_size": tok.vocab_size,
            "source": str(source), "cache": str(processed_path(key)),
            "counts": {s: len(splits[s]) for s in splits}}
    # NOTE: the archive's test reviews are the validation data, checked every epoch
    return Dataset(name, splits["train"], splits["test"], ["tokens"], ["next"], meta,
                   val=splits["test"])


def _process(docs, maxlen: int, train_chunks: int, test_chunks: int) -> dict:
    texts = {s: [clean(t) + SEPARATOR for split, _, _, t in docs if split == s]
             for s in ("train", "test")}
    counts = Counter()
    for t in texts["train"]:
        counts.update(t)
    chars = "".join(sorted(c for c, n in counts.items() if n >= MIN_COUNT))
    tok = CharTokenizer(chars)
    out = {"chars": np.array(chars)}
    rng = np.random.default_rng(0)
    for split, want in (("train", train_chunks), ("test", test_chunks)):
        order = rng.permutation(len(texts[split]))  # mixes positive and negative reviews
        stream = np.array(tok.encode_lossy("".join(texts[split][i] for i in order)), np.int32)
        n = len(stream) // (maxlen + 1)
        if n < want:
            raise DataError(f"{split}_chunks={want} is more than the {n:,} chunks of "
                            f"{maxlen + 1} characters in the {split} text")
        starts = np.sort(rng.choice(n, size=want, replace=False)) * (maxlen + 1)
        out[f"{split}_x"] = np.stack([stream[s:s + maxlen + 1] for s in starts])
    return out
