"""The `Dataset` every loader returns and the trainer/`predict` consume: named arrays per split.

`Dataset.encode` turns one raw user input (review text, image) into the arrays a model expects.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Arrays(dict):
    """A split's {name: array}, knowing where it came from, for error messages about its rows."""

    where: str = ""
    lines = None   # a table's rows: the file line of each, for errors (None: no file lines)

    def row(self, i: int) -> str:
        """Row `i` as errors say it: with its line in the file when the rows have lines."""
        return f"row {i}" if self.lines is None else f"row {i} (line {int(self.lines[i])})"


@dataclass
class Split:
    """One split; all arrays are aligned on axis 0 (one row per example)."""

    arrays: dict[str, np.ndarray]
    lines: np.ndarray | None = None   # a table's rows: the line of each in its file

    def __post_init__(self):
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            from nnlang.data.cache import DataError
            raise DataError(f"arrays in a split must have the same length, got {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


@dataclass
class Dataset:
    """A loaded dataset. `meta["kind"]` ("text", "image" or "arrays") selects how `encode` works.

    meta holds e.g. `vocab` + `tokenizer` (text), `class_names`, `num_classes`, `source`, `sample`.
    """

    name: str
    train: Split
    test: Split
    inputs: list[str]
    targets: list[str]
    meta: dict = field(default_factory=dict)
    val: Split | None = None   # given validation examples (.npz val_*), used over val_split
    _word_ids: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        source = self.meta.get("source")
        origin = source if isinstance(source, str) else f"dataset '{self.name}'"
        tables = self.meta.get("split_sources", {})   # a split read from a file of its own
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            if split is None:
                continue
            split.arrays = Arrays(split.arrays)
            split.arrays.where = f"{tables.get(name, origin)} ({name} split)"
            split.arrays.lines = split.lines

    def encode(self, raw) -> dict[str, np.ndarray]:
        """One raw example -> a batch of one, e.g. review text -> {"tokens": int32[1, maxlen]},
        a 28x28 array or .png/.npy path -> {"image": float32[1, 1, 28, 28]}."""
        kind = self.meta.get("kind")
        if kind == "text":
            from nnlang.data import tokenize
            if self._word_ids is None:
                self._word_ids = {w: i for i, w in enumerate(self.meta["vocab"])}
            texts = [raw] if isinstance(raw, str) else list(raw)
            return {self.inputs[0]: tokenize.encode(texts, self._word_ids,
                                                    self.meta["tokenizer"]["maxlen"])}
        if kind == "image":
            from nnlang.data.image import encode_image
            return {self.inputs[0]: encode_image(raw, self.meta["image_shape"])}
        if isinstance(raw, dict):
            return {k: np.asarray(raw[k])[None] for k in self.inputs}
        if len(self.inputs) != 1:
            from nnlang.data.cache import DataError
            raise DataError(f"dataset '{self.name}' has inputs {self.inputs}; "
                            "pass a dict with one array per input")
        like = self.train.arrays[self.inputs[0]]
        return {self.inputs[0]: np.asarray(raw, dtype=like.dtype).reshape(1, *like.shape[1:])}
