"""A reversible character tokenizer for sequence-to-sequence data sets (`dates`): text <-> ids.

Its settings travel in a data set's meta["tokenizer"] (and so in every checkpoint), so `predict`
and `generate` encode prompts and decode outputs exactly as the data set did.
"""
from __future__ import annotations

import re

import numpy as np

from nnlang.data.cache import DataError

TOKENIZER_VERSION = 1
PAD, START, END = "<pad>", "<start>", "<end>"
PAD_ID, START_ID, END_ID = 0, 1, 2
SPECIALS = [PAD, START, END]
# a special token may be written out in a text, e.g. a decoder input "<start>2021-03"
_TOKEN = re.compile("|".join(map(re.escape, SPECIALS)) + "|.", re.S)


def make_tokenizer(alphabet: str, source_len: int, target_len: int) -> dict:
    """The JSON-able settings: ids 0-2 are pad/start/end, then one id per character."""
    chars = sorted(set(alphabet))
    return {"type": "chars", "version": TOKENIZER_VERSION, "vocab": SPECIALS + chars,
            "pad_id": PAD_ID, "start_id": START_ID, "end_id": END_ID,
            "source_len": source_len, "target_len": target_len, "padding": "post"}


def encode(texts: list[str], tok: dict, length: int, what: str = "input") -> np.ndarray:
    """Strings -> int32 [N, length], each padded at the END with pad; `<start>`, `<end>` and
    `<pad>` written in a text are those tokens. A character outside the vocabulary or a text
    longer than `length` is a DataError naming the text and position."""
    ids = {c: i for i, c in enumerate(tok["vocab"])}
    out = np.full((len(texts), length), tok["pad_id"], np.int32)
    for row, text in enumerate(texts):
        tokens = _TOKEN.findall(text)
        if len(tokens) > length:
            raise DataError(f"{what} {text!r} has {len(tokens)} tokens; the model reads at "
                            f"most {length}", "shorten it")
        for col, ch in enumerate(tokens):
            if ch not in ids:
                known = "".join(tok["vocab"][len(SPECIALS):])
                raise DataError(f"{what} {text!r}: character {ch!r} at position {col + 1} is "
                                f"not in the tokenizer's alphabet", f"known characters: {known!r}")
            out[row, col] = ids[ch]
    return out


def decoder_input(targets: np.ndarray, tok: dict) -> np.ndarray:
    """Teacher forcing: [start] + target[:-1] per row (the target ends with `end`)."""
    start = np.full((len(targets), 1), tok["start_id"], targets.dtype)
    return np.concatenate([start, targets[:, :-1]], axis=1)


def decode(ids, tok: dict) -> str:
    """Ids -> text, stopping at the first `end`; pad and start are dropped."""
    vocab, out = tok["vocab"], []
    for i in np.asarray(ids).ravel().tolist():
        if i == tok["end_id"]:
            break
        if i >= len(SPECIALS) and i < len(vocab):
            out.append(vocab[i])
    return "".join(out)


class Tokenizer:
    """The settings above as the object `nnlang generate` reads from meta["text_tokenizer"]
    (docs/generation.md): encode / decode / vocab_size / pad_id / bos_id / eos_id / id_of."""

    def __init__(self, tok: dict):
        self.tok = tok
        self.vocab_size = len(tok["vocab"])
        self.pad_id, self.bos_id, self.eos_id = tok["pad_id"], tok["start_id"], tok["end_id"]

    def encode(self, text: str) -> list[int]:
        """Raises DataError naming a character outside the alphabet."""
        return encode([text], self.tok, len(_TOKEN.findall(text)), "prompt")[0].tolist()

    def decode(self, ids) -> str:
        return decode(ids, self.tok)

    def id_of(self, token: str) -> int | None:
        return self.tok["vocab"].index(token) if token in self.tok["vocab"] else None
