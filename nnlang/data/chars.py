"""The character tokenizer of the text data sets (`imdb_text`, `dates`): text <-> ids, reversible.

Its settings travel in a data set's meta["tokenizer"] (and so in every checkpoint), so `predict`
and `generate` encode prompts and decode outputs exactly as the data set did.
"""
from __future__ import annotations

import re

import numpy as np

from nnlang.data.cache import DataError

TOKENIZER_VERSION = 1
PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
UNK_TEXT = "\ufffd"       # how an unknown-character id decodes


class CharTokenizer:
    """Ids 0.. are the special tokens (`specials`, <pad> first, so padding is 0), then one id
    per character of `chars` in order. <unk> (if a special) stands for characters outside the
    vocabulary in training text; <start>/<end> (if specials) mark a sequence's ends and may be
    written out in a text ("<start>2021-03"); `eos` names an ordinary character that ends a
    sequence instead (imdb_text's "\\n")."""

    def __init__(self, chars: str, specials=(PAD, UNK), eos: str | None = None):
        if not specials or specials[0] != PAD:
            raise ValueError("a tokenizer's first special token is <pad> (id 0)")
        self.chars, self.specials = chars, list(specials)
        self.vocab = self.specials + list(chars)
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)
        self.pad_id = 0
        self.unk_id, self.bos_id = self.ids.get(UNK), self.ids.get(START)
        self.eos_id = self.ids.get(END) if eos is None else self.ids[eos]
        self.end_id = self.ids.get(END)  # decoding stops here (an eos character is text)
        written = [t for t in self.specials if t in (START, END)]
        self._token = re.compile("|".join(map(re.escape, written)) + "|." if written else ".",
                                 re.S)

    # *** settings: JSON for meta["tokenizer"] and checkpoints ***
    def settings(self, **extra) -> dict:
        out = {"type": "chars", "version": TOKENIZER_VERSION, "vocab": self.vocab,
               "specials": len(self.specials), "pad_id": self.pad_id, "padding": "post"}
        for key, value in (("unk_id", self.unk_id), ("start_id", self.bos_id),
                           ("end_id", self.end_id)):
            if value is not None:
                out[key] = value
        if self.eos_id is not None and self.eos_id != self.end_id:
            out["eos"] = self.vocab[self.eos_id]
        return {**out, **extra}

    @classmethod
    def from_settings(cls, tok: dict) -> "CharTokenizer":
        vocab = tok["vocab"]
        # NOTE: checkpoints written before "specials" was stored had exactly pad/start/end
        n = tok.get("specials", 3)
        return cls("".join(vocab[n:]), vocab[:n], tok.get("eos"))

    # *** text -> ids ***
    def tokens(self, text: str) -> list[str]:
        return self._token.findall(text)

    def encode(self, text: str, what: str = "the prompt") -> list[int]:
        """Raises DataError naming the first character outside the vocabulary (1-based)."""
        out = []
        for col, t in enumerate(self.tokens(text)):
            got = self.ids.get(t)
            if got is None:
                raise DataError(f"{what} {text!r}: character {t!r} at position {col + 1} "
                                f"(U+{ord(t[0]):04X}) is not in the tokenizer's alphabet",
                                f"known characters ({len(self.chars)}): {self.chars[:70]!r}"
                                f"{'...' if len(self.chars) > 70 else ''}; replace or "
                                "remove it")
            out.append(got)
        return out

    def encode_lossy(self, text: str) -> list[int]:
        """Training text: characters outside the vocabulary become <unk>."""
        return [self.ids.get(c, self.unk_id) for c in text]

    def encode_batch(self, texts, length: int | None, what: str = "input") -> np.ndarray:
        """Strings -> int32 [N, length] (None: the longest text's tokens, at least 1), padded
        at the END with <pad>. A text longer than `length` tokens, or with an unknown
        character, is a DataError naming it."""
        if length is None:
            length = max([len(self.tokens(t)) for t in texts] + [1])
        out = np.full((len(texts), length), self.pad_id, np.int32)
        for row, text in enumerate(texts):
            n = len(self.tokens(text))
            if n > length:
                raise DataError(f"{what} {text!r} has {n} tokens; the model reads at most "
                                f"{length}", "shorten it")
            ids = self.encode(text, what)
            out[row, :len(ids)] = ids
        return out

    def decoder_input(self, targets: np.ndarray) -> np.ndarray:
        """Teacher forcing: [<start>] + target[:-1] per row (the target ends with <end>)."""
        start = np.full((len(targets), 1), self.bos_id, targets.dtype)
        return np.concatenate([start, targets[:, :-1]], axis=1)

    # *** ids -> text ***
    def decode(self, ids) -> str:
        """Stops at the first <end>; other special tokens are dropped, <unk> is U+FFFD."""
        out, n = [], len(self.specials)
        for i in np.asarray(ids).ravel().tolist():
            if i == self.end_id:
                break
            if n <= i < self.vocab_size:
                out.append(self.vocab[i])
            elif i == self.unk_id:
                out.append(UNK_TEXT)
        return "".join(out)

    def id_of(self, token: str) -> int | None:
        return self.ids.get(token)


def tokenizer_from_meta(meta: dict) -> CharTokenizer | None:
    """The tokenizer a data set's (or a checkpoint's) meta describes, or None."""
    tok = meta.get("tokenizer")
    if isinstance(tok, dict) and tok.get("type") == "chars":
        return CharTokenizer.from_settings(tok)
    return None
