"""User data files -> `Dataset`: `.npz` archives of named arrays and numeric `.csv` tables.

.npz: array names are the model's input/target names, optionally prefixed `train_`/`test_`;
without prefixes the whole file is train and test is empty (the trainer carves validation).
.csv: a header row, numbers only; the `target` column becomes `label` and all other columns,
in file order, become `x` float32 [N, F] (names kept in meta["feature_names"]).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from nnlang.data.cache import DataError
from nnlang.data.dataset import Dataset, Split

TARGET_NAMES = ("label", "labels", "y", "target")


def load_npz(path: Path, targets: list[str] | None = None) -> Dataset:
    """Inputs are all arrays except `targets` (default: those named label/labels/y/target)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: _narrow(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path} as .npz ({e})") from None
    prefixed = [k for k in arrays if k.startswith(("train_", "test_"))]
    if prefixed and len(prefixed) != len(arrays):
        bare = sorted(set(arrays) - set(prefixed))
        raise DataError(f"{path}: arrays {bare} have no train_/test_ prefix but others do",
                        "prefix every array, or none (then the whole file is training data)")
    if prefixed:
        split = {s: {k[len(s) + 1:]: v for k, v in arrays.items() if k.startswith(s + "_")}
                 for s in ("train", "test")}
        if split["test"] and split["test"].keys() != split["train"].keys():
            raise DataError(f"{path}: train arrays {sorted(split['train'])} and test arrays "
                            f"{sorted(split['test'])} differ")
    else:
        split = {"train": arrays, "test": {}}
    train = split["train"]
    if not train:
        raise DataError(f"{path} holds no training arrays")
    test = split["test"] or {k: v[:0] for k, v in train.items()}
    names = list(train)
    tgt = list(targets) if targets is not None else [n for n in names if n in TARGET_NAMES]
    if unknown := [t for t in tgt if t not in train]:
        raise DataError(f"{path}: target(s) {unknown} not among arrays {names}")
    meta = {"kind": "arrays", "source": str(path)}
    return Dataset(path.stem, _split(path, train), _split(path, test),
                   [n for n in names if n not in tgt], tgt, meta)


def load_csv(path: Path, target: str = "label") -> Dataset:
    """`target` column -> `label` (int32 if all whole numbers, else float32); the rest -> `x`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({e})") from None
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise DataError(f"{path} has no data rows; expected a header row and numeric rows")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise DataError(f"{path}: no column '{target}' in header {header}",
                        "pass target=<column name> to choose the label column")
    try:
        data = np.array([[float(v) for v in r] for r in rows[1:]], np.float64)
    except ValueError as e:
        bad = next(i for i, r in enumerate(rows[1:], 2) if not _numeric(r))
        raise DataError(f"{path}:{bad}: non-numeric value ({e})",
                        "the CSV loader takes numbers only") from None
    if data.ndim != 2 or data.shape[1] != len(header):
        raise DataError(f"{path}: every row must have {len(header)} values like the header")
    t = header.index(target)
    y = data[:, t]
    label = y.astype(np.int32) if np.all(y == np.round(y)) else y.astype(np.float32)
    x = np.delete(data, t, axis=1).astype(np.float32)
    train = Split({"x": x, "label": label})
    test = Split({"x": x[:0], "label": label[:0]})
    meta = {"kind": "arrays", "source": str(path),
            "feature_names": [h for i, h in enumerate(header) if i != t], "target_column": target}
    return Dataset(path.stem, train, test, ["x"], ["label"], meta)


def _numeric(row) -> bool:
    try:
        [float(v) for v in row]
        return True
    except ValueError:
        return False


def _narrow(a: np.ndarray) -> np.ndarray:
    # The compiler works in 32 bits, but numpy defaults to 64.
    return a.astype({np.float64: np.float32, np.int64: np.int32}.get(a.dtype.type, a.dtype))


def _split(path: Path, arrays: dict) -> Split:
    try:
        return Split(arrays)
    except DataError as e:
        raise DataError(f"{path}: {e.message}") from None
