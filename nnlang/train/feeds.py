"""Dataset arrays -> model inputs: which dataset array feeds which `input`, dtype casts and
reshapes to the declared shapes, the seeded validation carve, and shuffled fixed-size batches
(variable-length rows: bucketed by length, each batch padded to its own length).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from nnlang.data.ragged import Ragged, padded_length
from nnlang.errors import NNError, closest, said_as
from nnlang.files import user_path
from nnlang.frontend.train_config import Choice, setting_span
from nnlang.ir.dims import Sym

TARGET_NAMES = ("label", "labels", "y", "target", "targets")


# *** which array feeds which input ***

def input_roles(graph) -> tuple[dict, dict]:
    """(features, targets) of a user graph, as {input name: node id}. Features are the inputs an
    `output` depends on; targets are the rest (labels only the losses and metrics read)."""
    inputs = {k: v for k, v in graph.inputs.items() if not k.startswith("_")}
    if graph.outputs:
        needed = graph.ancestors(graph.outputs.values())
        features = {k: v for k, v in inputs.items() if v in needed}
    else:  # NOTE: no outputs to trace from, so fall back on conventional label names
        features = {k: v for k, v in inputs.items() if k not in TARGET_NAMES}
    return features, {k: v for k, v in inputs.items() if k not in features}


def match_inputs(graph, ds_inputs: list[str], ds_targets: list[str], dataset: str = "dataset",
                 need_targets: bool = True) -> dict[str, str]:
    """{model input: dataset array}: by name first, then by role (the remaining dataset inputs
    feed the remaining features and the remaining targets the remaining targets, in order)."""
    features, targets = input_roles(graph)
    if not need_targets:
        targets = {}
        ds_targets = []
    available = list(ds_inputs) + list(ds_targets)
    mapping = {m: m for m in (*features, *targets) if m in available}
    for model_side, ds_side in ((features, ds_inputs), (targets, ds_targets)):
        left = [m for m in model_side if m not in mapping]
        spare = [a for a in ds_side if a not in mapping.values()]
        if left and len(left) == len(spare):
            mapping.update(zip(left, spare))
    missing = [m for m in (*features, *targets) if m not in mapping]
    if missing:
        def fmt(names, g=None):
            if not names:
                return "none"
            return ", ".join(f"{n}: {g.node(graph.inputs[n]).type}" if g else n for n in names)
        # NOTE: names match exactly; a near miss (`Label` for `label`) is named, not left to
        # the reader to find in the lists of the hint
        unused = [a for a in available if a not in mapping.values()]
        guesses = {m: closest(m, unused) for m in missing}
        said = ", ".join(f"{m} (did you mean '{guesses[m]}'? names match exactly, case "
                         "included)" if guesses[m] else m for m in missing)
        # NOTE: located at the (first) input left without an array: the model's side of the
        # mismatch, whichever of the train section or --data named the data set
        raise NNError(
            f"cannot match the model's inputs to the arrays of {dataset}: no array for {said}",
            graph.node(graph.inputs[missing[0]]).span,
            hint=f"model inputs {fmt(list(features), graph)} (targets: {fmt(list(targets), graph)})"
                 f"; dataset inputs {fmt(ds_inputs)} (targets: {fmt(ds_targets)}). Rename the "
                 "model's inputs to the dataset's names, or give each side the same number of "
                 "inputs and targets")
    return mapping


def conform(name: str, arr: np.ndarray, node, what: str = "the value",
            row=None) -> np.ndarray:
    """Casts `arr` to the input's dtype and reshapes each example to its declared shape
    ([N, 1, 28, 28] -> [N, 784] when the sizes agree); `row(i)` says row i in errors."""
    if isinstance(arr, Ragged):
        return _conform_ragged(name, arr, node, what)
    want = tuple(node.shape[1:])
    got = tuple(arr.shape[1:])
    fixed = all(isinstance(d, int) for d in want)
    if got != want and fixed and int(np.prod(got)) == int(np.prod(want)):
        arr = arr.reshape((arr.shape[0],) + want)
    elif len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
        raise NNError(f"{what} has shape {list(arr.shape)} ({_per_example(got)}), but model "
                      f"input '{name}' is declared {node.type}", node.span,
                      hint="change the input's declared shape, or the dataset options "
                           "(e.g. maxlen), or " + said_as("--set", "override (overrides=)")
                           + " the model's hyper-parameters to match")
    check_values(name, arr, np.dtype(node.dtype), what, row)
    return np.ascontiguousarray(arr, dtype=node.dtype)


def _conform_ragged(name: str, rows: Ragged, node, what: str) -> Ragged:
    """Variable-length rows feed an input whose length is a symbol: [batch, seq]."""
    if len(node.shape) != 2 or not isinstance(node.shape[1], Sym):
        raise NNError(f"{what} has rows of different lengths (up to "
                      f"{int(rows.lengths.max(initial=0)):,}), but model input '{name}' is "
                      f"declared {node.type}", node.span,
                      hint="declare its length as a symbol (`symbol seq` and "
                           f"`input {name}: {node.dtype}[batch, seq]`), or give the dataset a "
                           "fixed length (e.g. maxlen = 200)")
    check_values(name, rows.flat[:, None], np.dtype(node.dtype), what)
    return rows.astype(node.dtype)


def check_values(name: str, arr: np.ndarray, dtype: np.dtype, what: str,
                 row_name=None) -> None:
    """Refuses data that would train on garbage or be changed by the cast to `dtype`: NaN or
    infinity, a fraction or an out-of-range value for an integer input, a complex number.
    Runs once when a data set is loaded, so a bad row is named before any training step;
    `row_name(i)` says row i (a table's says its line)."""
    def bad(mask, why: str, hint: str):
        flat = mask.reshape(len(mask), -1).any(axis=1) if mask.ndim > 1 else mask
        row = int(np.argmax(flat))
        value = arr[row].flat[int(np.argmax(mask[row].reshape(-1)))] if arr.ndim > 1 \
            else arr[row]
        said = row_name(row) if row_name else f"row {row}"
        raise NNError(f"{what}, {said}: {value!s} {why} (model input '{name}' is "
                      f"{dtype.name})", hint=hint)

    kind = arr.dtype.kind
    if kind not in "biufc":
        raise NNError(f"{what} holds {arr.dtype} values, not numbers (model input '{name}')")
    if kind == "c":
        if dtype.kind != "c" and np.any(arr.imag != 0):
            bad(arr.imag != 0, "has an imaginary part", "the model takes real numbers: pass "
                "the real and imaginary parts as separate features")
        arr = arr.real
    if kind in "fc":
        if not np.all(finite := np.isfinite(arr)):
            bad(~finite, "is not a finite number", "remove or fill in the rows with NaN or "
                "infinity")
        if dtype.kind in "iu" and not np.all(whole := arr == np.round(arr)):
            bad(~whole, "is not a whole number", f"input '{name}' takes integers (e.g. class "
                "ids): round the data first, or declare the input as float32")
    if dtype.kind == "f" and kind == "f" and arr.dtype.itemsize > dtype.itemsize and arr.size:
        big = np.abs(arr) > np.finfo(dtype).max
        if big.any():
            bad(big, f"does not fit in {dtype.name}", "scale the data down")
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            bad((arr < info.min) | (arr > info.max), f"does not fit in {dtype.name}",
                f"{dtype.name} holds {info.min}..{info.max}")


def _per_example(shape) -> str:
    return f"{int(np.prod(shape))} values per example" if shape else "a scalar per example"


def model_arrays(graph, arrays: dict, mapping: dict[str, str]) -> dict[str, np.ndarray]:
    """A split's arrays renamed, cast and reshaped for the model's inputs."""
    where = getattr(arrays, "where", "")
    what = f"{where}, array" if where else "dataset array"
    row = arrays.row if hasattr(arrays, "row") else None
    return {m: conform(m, arrays[a], graph.node(graph.inputs[m]), f"{what} '{a}'", row)
            for m, a in mapping.items()}


def check_ids(graph, ds, mapping: dict[str, str], splits=None) -> None:
    """An id past the model's tables or classes, in any split (or those of `splits`), is an
    error naming the file, split, array and row before training: a test split's bad label
    would otherwise stop the run only after its last epoch, at the first evaluation of that
    split."""
    from nnlang.passes.pipeline import forward_graph
    from nnlang.runtime.indices import index_inputs
    splits = (ds.train, ds.val, ds.test) if splits is None else splits
    lengths = data_lengths(graph, splits, mapping)
    checks = [c for c in index_inputs(forward_graph(graph, 1, lengths=lengths))
              if c.name in mapping]
    by_width: dict = {}   # the checks of the graph at each padded length of ragged rows

    def checks_at(key, arrays, row):
        if key not in by_width:
            first = _first_row(arrays, mapping, row)
            by_width[key] = [c for c in index_inputs(forward_graph(
                graph, 1, lengths=_sizes(graph, first, lengths))) if c.name in mapping]
        return by_width[key]

    for split in splits:
        if split is None or not len(split):
            continue
        found = [f for c in checks if not isinstance(split.arrays[mapping[c.name]], Ragged)
                 if (f := _bad_fixed(c, split.arrays[mapping[c.name]])) is not None]
        found += _bad_ragged(split.arrays, mapping, checks_at)
        if found:
            row, c, value = min(found, key=lambda f: f[0])
            name = mapping[c.name]
            where = getattr(split.arrays, "where", "") or f"dataset '{ds.name}'"
            said = split.arrays.row(row) if hasattr(split.arrays, "row") else f"row {row}"
            raise NNError(f"{where}, array '{name}', {said}: the id "
                          f"{value!s} is outside the {c.rows} values model input "
                          f"'{c.name}' takes here (0 to {c.rows - 1})", span=c.node.span,
                          hint="the data's vocabulary or class count is larger than the "
                               "model's; raise it in the model (e.g. " + said_as(
                                   "--set vocab=...", "overrides={'vocab': ...}") + ") or fix "
                               "the data")


def _bad_fixed(c, arr):
    """(row, check, id) of the first bad id of `arr` (rows of one length), or None."""
    flat = np.asarray(arr).reshape(len(arr), -1)
    if c.at is not None:   # the columns that reach the op (the graph's batch is 1)
        flat = flat[:, c.at]
    bad = c.bad(flat)
    if not bad.any():
        return None
    at = int(np.argmax(bad.reshape(-1)))
    return at // max(flat.shape[1], 1), c, flat.reshape(-1)[at]


def _bad_ragged(arrays, mapping: dict[str, str], checks_at) -> list:
    """(row, check, id) of the first bad id of each ragged array. The part of a row that
    reaches an op (ids[:, -5:]) depends on its length, so rows are checked in groups of one
    padded length (padded_length, the width the trainer pads a batch to) with the graph built
    at that length; a position of the padding, before a short row, is not the row's and is
    not checked. NOTE: before, a partial read of ragged rows was left to the step's check,
    which names no data row, and reaches the test split only after the last epoch."""
    ragged = {m: arrays[a] for m, a in mapping.items()
              if a in arrays and isinstance(arrays[a], Ragged)}
    if not ragged:
        return []
    widths = np.stack([[padded_length(n) for n in r.lengths] for r in ragged.values()], 1)
    found = []
    for k, name in enumerate(ragged):
        for w in np.unique(widths[:, k]):
            rows = np.flatnonzero(widths[:, k] == w)
            for group, checks in _checks_of(name, widths, rows, arrays, checks_at):
                found += _bad_rows(ragged[name], group, checks)
    return found


def _checks_of(name: str, widths: np.ndarray, rows: np.ndarray, arrays, checks_at):
    """[(rows, the checks of input `name` for them)] for rows where `name` has one padded
    length. NOTE: the graph at every combination of the ragged inputs' lengths was one graph
    per pair (304 for two inputs of 1-700 tokens, 17 s on a small Transformer); a check of one
    input depends on its own length only, unless a view of it takes another's: the checks at
    the rows' shortest and longest other lengths agree then, and one graph serves them all."""
    def own(row):
        return [c for c in checks_at(tuple(widths[row]), arrays, int(row)) if c.name == name]

    def said(checks):
        return [(c.rows, c.skip, c.node.span, None if c.at is None else c.at.tobytes())
                for c in checks]
    total = widths[rows].sum(axis=1)   # NOTE: `name`'s own length is the same in every row
    least = own(rows[np.argmin(total)])
    if said(least) == said(own(rows[np.argmax(total)])):
        return [(rows, least)]
    keys, group = np.unique(widths[rows], axis=0, return_inverse=True)
    return [(rows[group.reshape(-1) == g], own(rows[group.reshape(-1) == g][0]))
            for g in range(len(keys))]


def _bad_rows(part_of, rows: np.ndarray, checks: list) -> list:
    """(row, check, id) of the first bad id of `rows` of one ragged array under each check."""
    found = []
    part = part_of[rows]
    ids_all = part.padded().reshape(len(rows), -1)
    width = ids_all.shape[1]
    # the row's own positions: the last `length` of each padded row (front padding)
    mine_all = np.arange(width)[None, :] >= (width - part.lengths)[:, None]
    for c in checks:
        ids, mine = ids_all, mine_all
        if c.at is not None:
            ids, mine = ids[:, c.at], mine[:, c.at]
        bad = c.bad(ids) & mine
        if bad.any():
            at = int(np.argmax(bad.reshape(-1)))
            found.append((int(rows[at // ids.shape[1]]), c, ids.reshape(-1)[at]))
    return found


def _first_row(arrays, mapping: dict[str, str], row: int) -> dict:
    """Row `row` of each array a model input reads, padded as its batch would be."""
    first = {m: arrays[a][row:row + 1] for m, a in mapping.items() if a in arrays}
    return {m: v.padded() if isinstance(v, Ragged) else np.asarray(v) for m, v in first.items()}


def _sizes(graph, first: dict, lengths: dict) -> dict:
    from nnlang.runtime.net import _sizes_of
    return _sizes_of(graph, first, lengths, 1)[1] if lengths else lengths


def data_lengths(graph, splits, mapping: dict[str, str], default: dict | None = None) -> dict:
    """The sizes of the model's symbols other than the batch (`symbol seq`) in the first row
    of the first split that has rows, padded as its batch will be: the lengths the model runs
    at. NOTE: bound at 1 (the ids' check) or 16 (the step compiled before the first epoch), a
    fixed slice (x[:, 1:3], x[:, 20:22]) or a loss over a sequence's places was refused before
    training on data that has them. A symbol no input carries keeps its `default` (1)."""
    lengths = default or {s: 1 for s in graph.symbols if s != "batch"}
    split = next((s for s in splits if s is not None and len(s)), None)
    if not lengths or split is None:
        return lengths
    return _sizes(graph, _first_row(split.arrays, mapping, 0), lengths)


# *** validation carve and batches ***

def train_and_val(graph, ds, mapping: dict, val_split: float, seed: int) -> tuple[dict, dict]:
    """(train, val) model arrays: the dataset's own validation split (.npz val_*) when it has
    one, else the val_split carve of its training split."""
    train = model_arrays(graph, ds.train.arrays, mapping)
    if ds.val is not None and len(ds.val):
        return train, model_arrays(graph, ds.val.arrays, mapping)
    return carve(train, val_split, seed)


def carve(arrays: dict, val_split: float, seed: int) -> tuple[dict, dict]:
    """(train, val): validation is the END of the train split after one seeded shuffle."""
    n = length(arrays)
    n_val = int(round(n * val_split))
    if val_split <= 0 or n == 0:
        return arrays, {}
    n_val = min(max(n_val, 1), n - 1)
    if n < 2:
        raise NNError(f"val_split={val_split} needs at least 2 training examples, got {n}")
    order = np.random.default_rng(np.random.SeedSequence([seed, 1])).permutation(n)
    cut = n - n_val
    return ({k: v[order[:cut]] for k, v in arrays.items()},
            {k: v[order[cut:]] for k, v in arrays.items()})


def order_rng(seed: int) -> np.random.Generator:
    """The data-order generator: one permutation per epoch, drawn in epoch order."""
    return np.random.default_rng(np.random.SeedSequence([seed, 2]))


BUCKET_BATCHES = 50  # batches per chunk sorted by length: larger pads less, shuffles less


def epoch_order(arrays: dict, batch: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's example order, drawn from `rng` alone (so a resumed run redraws it exactly).
    Fixed-length data: a permutation. Variable-length rows: bucketed, so a batch holds rows of
    similar length and pads little: a permutation cut into chunks of BUCKET_BATCHES batches,
    each sorted by length and cut into batches; the full batches then run in shuffled order.
    The leftover partial batch, which `batches` drops, is the permutation's last examples,
    taken before the sort: a sorted chunk's leftover would always be its longest rows."""
    order = rng.permutation(length(arrays))
    ragged = [v for v in arrays.values() if isinstance(v, Ragged)]
    if not ragged:
        return order
    lengths = ragged[0].lengths
    chunk = batch * BUCKET_BATCHES
    full = len(order) // batch
    for lo in range(0, full * batch, chunk):
        part = order[lo:min(lo + chunk, full * batch)]
        order[lo:lo + len(part)] = part[np.argsort(lengths[part], kind="stable")]
    shuffled = order[:full * batch].reshape(full, batch)[rng.permutation(full)]
    return np.concatenate([shuffled.reshape(-1), order[full * batch:]])


def eval_order(arrays: dict) -> np.ndarray | None:
    """Evaluation order: variable-length rows by length (fewer sizes, less padding; the means
    do not depend on the order), else as stored (None)."""
    ragged = [v for v in arrays.values() if isinstance(v, Ragged)]
    return np.argsort(ragged[0].lengths, kind="stable") if ragged else None


def batches(arrays: dict, batch: int, order: np.ndarray | None = None, start: int = 0,
            drop_last: bool = True, every: int = 1):
    """Yields {name: array[batch...]} in `order`, from batch number `start`, then every
    `every`-th one (a rank's share of an evaluation); the last partial batch only when
    `drop_last` is off (evaluation runs it at its own size)."""
    n = length(arrays)
    stop = n // batch if drop_last else -(-n // batch)
    for i in range(start, stop, every):
        sel = slice(i * batch, (i + 1) * batch)
        idx = order[sel] if order is not None else sel
        yield {k: v[idx].padded() if isinstance(v, Ragged) else v[idx]
               for k, v in arrays.items()}


def length(arrays: dict) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


# *** which dataset ***

def accepted_options(name: str) -> set[str] | None:
    """The options the loader for dataset `name` takes (None: an unknown name)."""
    from nnlang.data.registry import DATASETS, FILE_LOADERS, canonical_name
    key = canonical_name(name)
    if key is not None:
        loader, skip = DATASETS[key].loader, {"data_dir"}
    elif Path(name).suffix.lower() in FILE_LOADERS:
        loader, skip = FILE_LOADERS[Path(name).suffix.lower()], {"path"}
    else:
        return None
    return set(inspect.signature(loader).parameters) - skip


def replace_data(current: Choice | None, spec: str) -> Choice:
    """`--data imdb-sample` keeps the train section's options the new dataset accepts;
    `--data "imdb(maxlen=50)"` sets options too (and they win). Another file does not keep the
    tables named beside the old one (a .csv's `val`, `test`)."""
    from nnlang.data.npz import FILE_OPTIONS
    from nnlang.data.registry import _parse_spec  # NOTE: the one parser for "name(k=v)" specs
    name, options = _parse_spec(spec, {})
    allowed = accepted_options(name) or set()
    if current is None or Path(current.name) != Path(name):
        # NOTE: `--data new.csv` kept `test = "regval.csv"`, so eval scored the old test table
        # and printed it as new.csv's
        allowed -= set(FILE_OPTIONS)
    kept = {k: v for k, v in (current.options if current else {}).items() if k in allowed}
    return Choice(name, {**kept, **options})


def load_data(choice: Choice | None, data_dir=None, base_dir=None, words=None, program=None):
    """The dataset a train section (or --data) names; relative file paths are also looked up
    next to the .nn file (`base_dir`). `words`: the vocabulary a checkpoint was trained with,
    which a text data set encodes with (its embedding rows are those words, in that order).
    With the `program`, an error of the data set its train section names (a missing file, a
    bad row) is located at that `data` setting."""
    from nnlang.data import DataError
    try:
        return _load_data(choice, data_dir, base_dir, words)
    except DataError as err:
        # NOTE: DataError leaves where to its caller: `data = "x.csv"` with no x.csv said no line
        span = setting_span(program, "data") if program is not None and program.train and \
            program.train.data == choice else None
        if span is None or err.span is not None:
            raise
        raise NNError(err.message, span, err.hint) from None


def _load_data(choice: Choice | None, data_dir, base_dir, words):
    from nnlang.data import load_dataset
    if choice is None:
        raise NNError("no dataset: the train section has no `data = ...` setting",
                      hint="pass --data NAME or a .npz/.csv path")
    if data_dir is not None and not user_path(data_dir).is_dir():
        what = "does not exist" if not user_path(data_dir).exists() else "is not a directory"
        raise NNError(f"--data-dir {data_dir} {what}",
                      hint="pass the folder that holds the dataset folders (e.g. DIR/mnist/)")
    name = choice.name
    path = user_path(name)
    if (base_dir is not None and path.suffix and not path.is_absolute() and not path.exists()
            and (Path(base_dir) / path).is_file()):
        name = str(Path(base_dir) / path)
    return load_dataset(name, data_dir=data_dir, words=words, **choice.options)


def predict_meta(meta: dict) -> dict:
    """The part of a dataset's meta that `predict` needs and JSON can hold (vocab, tokenizer,
    image shape, class names...); bulky or machine-specific entries are left out."""
    skip = {"ids", "cache", "source", "counts"}
    out = {}
    for k, v in meta.items():
        if k in skip or isinstance(v, np.ndarray):
            continue
        if isinstance(v, (str, int, float, bool, list, dict, tuple)) or v is None:
            out[k] = list(v) if isinstance(v, tuple) else v
    return out
