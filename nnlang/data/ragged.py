"""Variable-length rows (whole reviews, `imdb(maxlen = none)`): one flat array and row offsets.

A split holds a `Ragged` where other datasets hold an [N, maxlen] array; it indexes like one
(`rows[order]`), and the trainer pads each batch to its own length (`padded`), rounded up to a
few sizes (`padded_length`) so a model with a `symbol` length builds few plans.
"""
from __future__ import annotations

import numpy as np


def padded_length(n: int) -> int:
    """n rounded up to a multiple of 16 up to 128, then to 4 sizes per doubling (160, 192,
    224, 256, 320, ...): at most ~22 sizes up to 2,500 tokens, at most 25% padding."""
    n = int(n)
    step = max(16, (1 << max(n - 1, 1).bit_length()) // 8)
    return max(step, -(-n // step) * step)


class Ragged:
    """Rows of different lengths: row i is flat[offsets[i]:offsets[i + 1]]."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = np.asarray(flat), np.asarray(offsets, np.int64)

    @classmethod
    def from_rows(cls, rows, dtype=np.int32) -> "Ragged":
        lengths = np.fromiter((len(r) for r in rows), np.int64, count=len(rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.fromiter((x for r in rows for x in r), dtype, count=int(offsets[-1]))
        return cls(flat, offsets)

    @property
    def dtype(self):
        return self.flat.dtype

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def __getitem__(self, index) -> "Ragged":
        """The rows `index` (a slice or an array of row numbers), in that order."""
        picked = np.arange(len(self))[index]
        lengths = self.lengths[picked]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        starts = np.repeat(self.offsets[picked] - offsets[:-1], lengths)
        return Ragged(self.flat[starts + np.arange(offsets[-1])], offsets)

    def astype(self, dtype) -> "Ragged":
        return Ragged(self.flat.astype(dtype, copy=False), self.offsets)

    def padded(self, pad: int = 0) -> np.ndarray:
        """[rows, padded_length(longest)], each row at the end (front padding, as the fixed-
        length tokenizer pads)."""
        lengths = self.lengths
        width = padded_length(int(lengths.max(initial=1)))
        out = np.full((len(self), width), pad, self.flat.dtype)
        cols = width - lengths
        rows = np.repeat(np.arange(len(self)), lengths)
        within = np.arange(len(self.flat)) - np.repeat(self.offsets[:-1], lengths)
        out[rows, np.repeat(cols, lengths) + within] = self.flat
        return out
