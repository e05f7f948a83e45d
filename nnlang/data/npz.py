"""User data files -> `Dataset`: `.npz` archives of named arrays and numeric `.csv` tables.

.npz: array names are the model's input/target names, optionally prefixed `train_`/`val_`/`test_`
(val_* arrays are the validation set, used instead of carving val_split); without prefixes the
whole file is train and test is empty (the trainer carves validation).
.csv: a header row, numbers only; the `target` column becomes `label` and all other columns,
in file order, become `x` float32 [N, F] (names kept in meta["feature_names"]); the `val` and
`test` options name tables of the same columns for those splits.
"""
from __future__ import annotations

import csv
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from nnlang.data.cache import DataError
from nnlang.data.dataset import Dataset, Split
from nnlang.errors import did_you_mean
from nnlang.files import cannot_read

TARGET_NAMES = ("label", "labels", "y", "target")
NPZ_HINT = ("write it with numpy.savez('data.npz', train_x=x, train_label=y) (arrays of numbers, "
            "one row per example)")


# options that name files beside the data file: they belong to that file, not to another
FILE_OPTIONS = ("val", "test")


def check_options(name: str, target=None, targets=None, val=None, test=None) -> None:
    """The options of the .csv (`target`, `val`, `test`) and .npz (`targets`) loaders."""
    if target is not None and not (isinstance(target, str) and target):
        raise DataError(f"{name}: option target={target!r} must be a column name",
                        'e.g. csv("table.csv", target = "y")')
    for option, file in (("val", val), ("test", test)):
        if file is not None and not (isinstance(file, str) and file.lower().endswith(".csv")):
            raise DataError(f"{name}: option {option}={file!r} must name a .csv file",
                            f'e.g. csv("train.csv", {option} = "{option}.csv")')
    if targets is not None and not (isinstance(targets, list)
                                    and all(isinstance(t, str) for t in targets)):
        raise DataError(f"{name}: option targets={targets!r} must be a list of array names",
                        'e.g. npz("data.npz", targets = ["y"])')


def load_npz(path: Path, targets: list[str] | None = None) -> Dataset:
    """Inputs are all arrays except `targets` (default: those named label/labels/y/target)."""
    return arrays_dataset(read_npz(path), path, path.stem, targets)


def arrays_dataset(arrays: dict, path, name: str, targets: list[str] | None = None) -> Dataset:
    """The data set of `arrays` as a .npz holds them (bare names: all training data; or
    train_/val_/test_ prefixes); `path` names where they came from in the errors."""
    prefixed = [k for k in arrays if k.startswith(("train_", "val_", "test_"))]
    if prefixed and len(prefixed) != len(arrays):
        bare = sorted(set(arrays) - set(prefixed))
        raise DataError(f"{path}: arrays {bare} have no train_/test_ prefix but others do",
                        "prefix every array (train_, val_ or test_), or none (then the whole "
                        "file is training data)")
    if prefixed:
        split = {s: {k[len(s) + 1:]: v for k, v in arrays.items() if k.startswith(s + "_")}
                 for s in ("train", "val", "test")}
        for s in ("val", "test"):
            if split[s] and split["train"] and split[s].keys() != split["train"].keys():
                raise DataError(f"{path}: train arrays {sorted(split['train'])} and {s} arrays "
                                f"{sorted(split[s])} differ",
                                f"give {s}_* arrays of the same names as the train_* ones")
    else:
        split = {"train": arrays, "val": {}, "test": {}}
    train = split["train"]
    if not train:
        raise DataError(f"{path} holds no training arrays (it has {sorted(arrays) or 'none'})",
                        NPZ_HINT)
    test = split["test"] or {k: v[:0] for k, v in train.items()}
    names = list(train)
    tgt = list(targets) if targets is not None else [n for n in names if n in TARGET_NAMES]
    if unknown := [t for t in tgt if t not in train]:
        raise DataError(f"{path}: target(s) {unknown} not among arrays {names}",
                        did_you_mean(unknown[0], names))
    meta = {"kind": "arrays", "source": str(path)}
    return Dataset(name, _split(path, "train_" if prefixed else "", train),
                   _split(path, "test_", test), [n for n in names if n not in tgt], tgt, meta,
                   _split(path, "val_", split["val"]) if split["val"] else None)


# NOTE: sequences saved as they are (numpy makes rows of several lengths an object array)
RAGGED_HINT = ("save arrays of numbers; rows of different lengths: pad each to the longest "
               "with 0 at the front (as whole IMDB reviews pad) into one [examples, length] "
               "array; a model whose length is a `symbol` runs at that length, and "
               "`tokens != 0` is its padding mask")


def _holds_objects(zf, member: str) -> bool:
    """Does the .npy `member` of the archive hold Python objects (read from its header)?"""
    fmt = np.lib.format
    try:
        with zf.open(member) as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else \
                fmt.read_array_header_2_0
            return read(f)[2].hasobject
    except ValueError:
        return False


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """{name: array} of a .npz, every array numeric with one row per example."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(".npy")]
            for n in names:
                key = n[:-4]
                with zf.open(n) as f:
                    try:
                        arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
                    except ValueError as e:
                        if _holds_objects(zf, n):
                            raise DataError(f"{path}: array '{key}' is an object array "
                                            "(Python objects, e.g. rows of different "
                                            "lengths), not numbers",
                                            RAGGED_HINT) from None
                        raise DataError(f"{path}: array '{key}' cannot be read ({e})",
                                        NPZ_HINT) from None
    except zipfile.BadZipFile as e:
        raise DataError(f"{path} is not a valid .npz file ({e}): truncated, corrupt or not a "
                        "zip archive", NPZ_HINT) from None
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, OSError) and (refused := cannot_read(path, e, DataError)):
            raise refused from None
        raise DataError(f"cannot read {path} as .npz ({e}): truncated or corrupt",
                        NPZ_HINT) from None
    for key, a in arrays.items():
        if a.dtype.kind not in "biufc":
            raise DataError(f"{path}: array '{key}' holds {a.dtype} values, not numbers",
                            "convert it to numbers first (e.g. class names to integer ids)")
        if a.ndim == 0:
            raise DataError(f"{path}: array '{key}' is a single value; every array needs one "
                            "row per example", NPZ_HINT)
    return {k: _narrow(v) for k, v in arrays.items()}


def load_csv(path: Path, target: str = "label", val: str | None = None,
             test: str | None = None) -> Dataset:
    """`target` column -> `label` (int32 if all whole numbers, else float32); the rest -> `x`.
    `val` and `test` name tables of the same columns (beside `path` when relative): the
    validation set (used instead of carving val_split) and the test split."""
    header, data, lines = read_csv(path)
    if target not in header:
        choose = ('choose the label column with csv("file.csv", target = "name") in the train '
                  'section, or --data "file.csv(target=name)"')
        guess = did_you_mean(target, header)
        raise DataError(f"{path}: no column '{target}' in header {header}",
                        f"{guess} {choose}" if guess else choose)
    t = header.index(target)   # NOTE: one only: read_csv refuses a name given twice
    tables, sources = {}, {}
    for option, file in (("val", val), ("test", test)):
        if file is None:
            continue
        other = path.parent / file
        if not other.is_file():
            raise DataError(f"{path}: the {option} table {other} does not exist",
                            f"{option} = \"...\" is a path beside {path.name}")
        columns, *tables[option] = read_csv(other)
        sources[option] = str(other)
        if columns != header:
            raise DataError(f"{other}: columns {columns} differ from {path.name}'s {header}",
                            f"give the {option} table the same header as the training one")
    # NOTE: one dtype for the target of all tables, int32 only when every table holds whole
    # numbers: whole prices in one and 170.5 in another are a regression, and a model that
    # takes class ids still refuses the fraction, at its table and row (feeds.check_values)
    whole = all(_ids(rows[:, t]) for rows in (data, *(r for r, _ in tables.values())))
    train = _csv_split(data, lines, t, np.int32 if whole else np.float32)
    splits = {option: _csv_split(rows, at, t, train["label"].dtype)
              for option, (rows, at) in tables.items()}
    x, label = train["x"], train["label"]
    meta = {"kind": "arrays", "source": str(path),
            "feature_names": [h for i, h in enumerate(header) if i != t], "target_column": target,
            "split_sources": sources}
    return Dataset(path.stem, train, splits.get("test", Split({"x": x[:0], "label": label[:0]})),
                   ["x"], ["label"], meta, splits.get("val"))


def _ids(y: np.ndarray) -> bool:
    """Whether a target column can be int32 class ids: whole numbers that int32 holds. A whole
    number beyond it (a regression target of 3e9) stays a float: the cast made it -2**31."""
    info = np.iinfo(np.int32)
    return bool(np.all(y == np.round(y)) and np.all((y >= info.min) & (y <= info.max)))


def _csv_split(data: np.ndarray, lines: np.ndarray, t: int, label_dtype) -> Split:
    """A table's rows as `x` (every column but `t`) and `label` (column `t`)."""
    return Split({"x": np.delete(data, t, axis=1).astype(np.float32),
                  "label": data[:, t].astype(label_dtype)}, lines)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def read_csv(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(header, float64 [rows, columns], each row's line in the file); every cell a finite
    number, errors at file:line."""
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column name
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header, rows, lines, end = None, [], [], 0
            for row in reader:
                start, end = end + 1, reader.line_num
                if any("\n" in c or "\r" in c for c in row):
                    # NOTE: a lone quote opens a value that csv reads on to the next quote
                    # (often the end of the file): the row's count of values, said at its
                    # last line, would point far from the cause
                    raise DataError(f"{path}:{start}: a quoted value runs from line {start} "
                                    f"to line {end}", "a value's opening quote on line "
                                    f"{start} has no closing quote on that line")
                if not any(c.strip() for c in row):
                    continue
                if header is None:
                    header = [h.strip() for h in row]
                    _check_separator(path, reader.line_num, header)
                    _check_names(path, reader.line_num, header)
                    continue
                rows.append(_csv_row(path, reader.line_num, header, row))
                lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise _not_utf8(path) or DataError(f"cannot read {path} ({e})") from None
    except (OSError, csv.Error) as e:
        if isinstance(e, OSError) and (refused := cannot_read(path, e, DataError)):
            raise refused from None
        raise DataError(f"cannot read {path} ({e})",
                        "save it as a UTF-8 CSV file with a header row") from None
    if header is None:
        raise DataError(f"{path} is empty; expected a header row and rows of numbers")
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    return header, np.array(rows, np.float64), np.array(lines, np.int64)


SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "bars"}


def _check_separator(path: Path, line: int, header: list[str]) -> None:
    """A header read as one column that another separator splits: the file is not
    comma-separated (a spreadsheet set to a European locale writes semicolons)."""
    if len(header) != 1:
        return
    for sep, name in SEPARATORS.items():
        if sep in header[0]:
            raise DataError(f"{path}:{line}: the header is one column '{header[0]}': the "
                            f"file looks separated by {name}",
                            "nnlang reads CSV separated by commas: save it with commas (and "
                            "'.' as the decimal point)")


def _check_names(path: Path, line: int, header: list[str]) -> None:
    """Every column has a name, and only one column has it: a feature is known by its name
    (meta["feature_names"], the target option), and a second 'label' was silently a feature."""
    for i, name in enumerate(header, 1):
        if not name:
            hint = ("a table saved by pandas with its index has an unnamed first column: save "
                    "it with index=False, or name the column" if i == 1 else
                    "a comma at the end of the header adds an empty column: remove it, or "
                    "name the column" if i == len(header) else "name the column")
            raise DataError(f"{path}:{line}: column {i} of the header has no name", hint)
        if header.index(name) != i - 1:
            where = " and ".join(str(j + 1) for j, h in enumerate(header) if h == name)
            raise DataError(f"{path}:{line}: the header names column '{name}' twice (columns "
                            f"{where})", "rename one of them: each column is known by its name "
                            "(the target, or one feature)")


def _not_utf8(path: Path) -> DataError | None:
    """The error for a file that is not UTF-8, at the line of its first bad byte (the
    decoder's own position counts from a read buffer, not from the file)."""
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return DataError(f"{path}:{line}: byte "
                         f"0x{data[e.start]:02x} is not UTF-8",
                         "save it as a UTF-8 CSV file (it may be Latin-1 or Windows-1252)")
    except OSError:
        pass
    return None


def _csv_row(path: Path, line: int, header: list[str], row: list[str]) -> list[float]:
    if len(row) != len(header):
        missing = f" (no value for {', '.join(header[len(row):])})" if len(row) < len(header) \
            else ""
        raise DataError(f"{path}:{line}: the row has {len(row)} values but the header has "
                        f"{len(header)} columns{missing}", "every row needs one value per column")
    out = []
    for name, cell in zip(header, row):
        try:
            # NOTE: float() takes Python's digit separators (1_000); a CSV number has none
            v = None if "_" in cell else float(cell)
        except ValueError:
            v = None
        if v is None or not math.isfinite(v):
            what = "is empty" if not cell.strip() else f"'{cell.strip()}' is not a finite number"
            raise DataError(f"{path}:{line}: column '{name}' {what}",
                            "the CSV loader takes numbers only: fill in or drop the row")
        if abs(v) > FLOAT32_MAX:
            # NOTE: every column becomes float32 (or int32), where this value is infinity
            raise DataError(f"{path}:{line}: column '{name}' {cell.strip()} does not fit in "
                            f"float32 (at most {FLOAT32_MAX:.4g})", "scale the column down")
        out.append(v)
    return out


def _narrow(a: np.ndarray) -> np.ndarray:
    # The compiler works in 32 bits, but numpy defaults to 64. Integers that do not fit stay
    # 64-bit, so the cast to the model's input type reports them instead of wrapping around.
    if a.dtype == np.int64 and a.size and (a.min() < -2**31 or a.max() >= 2**31):
        return a
    if a.dtype == np.float64 and a.size and np.nanmax(np.abs(a), initial=0) > 3.4e38:
        return a
    return a.astype({np.float64: np.float32, np.int64: np.int32}.get(a.dtype.type, a.dtype))


def _split(path: Path, prefix: str, arrays: dict) -> Split:
    lengths = {f"{prefix}{k}": len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{path}: arrays have different numbers of rows: " +
                        ", ".join(f"'{k}' {n}" for k, n in lengths.items()),
                        "every array needs one row per example")
    return Split(arrays)
