"""Text for language models: `imdb_text`, the IMDB review text cut into fixed-length chunks of
character ids (`tokens`, and `next` = the same text one character later; see chars.py).

Characters, not words or subwords: the vocabulary is ~100 symbols, so the embedding and the
output layer stay tiny and a model this machine can train in minutes still spells real words;
any text made of known characters round-trips exactly (decode(encode(s)) == s).
"""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from nnlang.data import imdb
from nnlang.data.chars import PAD, UNK, CharTokenizer
from nnlang.data.tokenize import _BR
from nnlang.data.cache import DataError, load_processed, processed_path, save_processed, sha256_of
from nnlang.data.dataset import Dataset, Split

TEXT_VERSION = 1          # bump when the text processing changes: it keys the array cache
MIN_COUNT = 50            # characters rarer than this in the train text are left out
SEPARATOR = "\n"          # ends every review, so a model learns where reviews end


def tokenizer(chars: str) -> CharTokenizer:
    """0 pads, 1 stands for a character rarer than MIN_COUNT, then the characters; a review
    ends with SEPARATOR, so it is the token that ends a generated one."""
    return CharTokenizer(chars, (PAD, UNK), eos=SEPARATOR)


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
                   test_chunks: int = 400, words: list[str] | None = None) -> Dataset:
    """IMDB review text as character chunks of `maxlen`: `train_chunks` from the archive's
    train reviews and `test_chunks` from its test reviews (the validation data). `words`: a
    trained model's tokens (<pad>, <unk>, then characters), encoded with instead of the
    characters this text counts."""
    return text_chunks("imdb-text", imdb.find_source(data_dir), maxlen, train_chunks,
                       test_chunks, data_dir, imdb.REMOTE, words)


def text_chunks(name, source, maxlen, train_chunks, test_chunks, data_dir=None, remote=None,
                words: list[str] | None = None):
    check_options(name, maxlen, train_chunks, test_chunks)
    chars = None if words is None else _trained_chars(name, words)
    # NOTE: a folder's path alone kept serving the old text after the folder was replaced
    stamp = [sha256_of(source)] if source.is_file() else imdb.folder_stamp(source)
    parts = [*stamp, str(maxlen), str(train_chunks), str(test_chunks), str(TEXT_VERSION)]

    def key_of(parts: list[str]) -> str:
        return f"{name}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}"
    key = key_of(parts)
    cached = load_processed(key)
    # NOTE: a model's characters serve from the text's own encoding when they are its
    # characters (a resumed run); other ones key their own entry: the sample counts 89
    # characters 50+ times, the full archive 108, so each gives most characters other ids
    if chars is not None and (cached is None or str(cached["chars"]) != chars):
        key = key_of([*parts, chars])
        cached = load_processed(key)
    if cached is None:
        docs = imdb.read_reviews(source, data_dir, remote)
        cached = _process(docs, maxlen, train_chunks, test_chunks, chars)
        save_processed(key, cached)  # NOTE: a read-only cache dir just means no cache
    tok = tokenizer(str(cached["chars"]))
    splits = {s: Split({"tokens": cached[f"{s}_x"][:, :-1], "next": cached[f"{s}_x"][:, 1:]})
              for s in ("train", "test")}
    meta = {"kind": "sequence", "tokenizer": tok.settings(), "vocab_size": tok.vocab_size,
            "source": str(source), "cache": str(processed_path(key)),
            "counts": {s: len(splits[s]) for s in splits}}
    # NOTE: the archive's test reviews are the validation data, checked every epoch
    return Dataset(name, splits["train"], splits["test"], ["tokens"], ["next"], meta,
                   val=splits["test"])


def _trained_chars(name: str, words: list[str]) -> str:
    """The characters of a trained model's tokens, when they are a tokenizer of this kind:
    any other layout (a word vocabulary, `dates`' <pad> <start> <end>) would give its
    embedding rows other meanings."""
    specials = [PAD, UNK]   # NOTE: tokenizer()'s
    if words[:len(specials)] != specials or any(len(w) != 1 for w in words[len(specials):]):
        shown = ", ".join(map(repr, words[:4]))
        raise DataError(f"{name}: the trained model's tokens ({shown}, ...) are not this data "
                        f"set's kind ({', '.join(specials)}, then one id per character), so "
                        "its ids cannot be kept",
                        "evaluate the model on the kind of data it was trained on, or train a "
                        "new one")
    return "".join(words[len(specials):])


def _process(docs, maxlen: int, train_chunks: int, test_chunks: int,
             chars: str | None = None) -> dict:
    texts = {s: [clean(t) + SEPARATOR for split, _, _, t in docs if split == s]
             for s in ("train", "test")}
    if chars is None:
        counts = Counter()
        for t in texts["train"]:
            counts.update(t)
        # NOTE: the separator ends every review, and a review's end is the tokenizer's eos:
        # a text of fewer than MIN_COUNT reviews (a user's own folder) must still have it
        chars = "".join(sorted({c for c, n in counts.items() if n >= MIN_COUNT} | {SEPARATOR}))
    tok = tokenizer(chars)
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
