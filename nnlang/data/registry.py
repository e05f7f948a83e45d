"""Dataset names -> loaders: the entry point of `nnlang.data` (`load_dataset`, `list_datasets`).

Also loads the small real samples shipped in `nnlang/data/samples/` (`imdb-sample`,
`mnist-sample`), so a first run works with no network and no data dir.
"""
from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nnlang.data import dates, imdb, mnist, npz, text
from nnlang.data.cache import DataError, remember, sha256_of
from nnlang.data.dataset import Dataset
from nnlang.errors import did_you_mean
from nnlang.files import user_path

SAMPLES_DIR = Path(__file__).parent / "samples"
IMDB_SAMPLE = SAMPLES_DIR / "imdb-sample.tar.gz"
MNIST_SAMPLE = SAMPLES_DIR / "mnist-sample.npz"


# The samples are byte-reproducible (make_samples.py): any other content is a damaged install.
SAMPLE_SHA256 = {
    IMDB_SAMPLE.name: "02573179e7f08203de7f4fb701b53596653981bbf259207a219793b31cf2dfec",
    MNIST_SAMPLE.name: "78de74fd6d0df3bfbcbe63bc48a9a0e36fddde39be1b9dcdeda62956717eb0fc",
}
IMDB_SAMPLE_COUNTS = {"train/neg": 1250, "train/pos": 1250, "test/neg": 500, "test/pos": 500}


def load_imdb_sample(data_dir=None, vocab: int = 20000, maxlen: int | None = 200,
                     words: list[str] | None = None) -> Dataset:
    """A balanced subset of real IMDB reviews shipped with nnlang (see samples/make_samples.py)."""
    ds = imdb.load_reviews("imdb-sample", _sample_file(IMDB_SAMPLE), vocab, maxlen,
                           expect=IMDB_SAMPLE_COUNTS, words=words)
    ds.meta.update(sample=True, counts={"train": len(ds.train), "test": len(ds.test)})
    return ds


def load_imdb_text_sample(data_dir=None, maxlen: int = 128, train_chunks: int = 8000,
                          test_chunks: int = 400, words: list[str] | None = None) -> Dataset:
    """imdb_text from the bundled review sample (no data dir needed)."""
    return text.text_chunks("imdb-text-sample", _sample_file(IMDB_SAMPLE), maxlen,
                            train_chunks, test_chunks, words=words)


def load_mnist_sample(data_dir=None) -> Dataset:
    """A subset of real MNIST digits shipped with nnlang (see samples/make_samples.py)."""
    with np.load(_sample_file(MNIST_SAMPLE), allow_pickle=False) as z:
        arrays = {k: z[k] for k in mnist.FILES}
    meta = {"sample": True, "source": str(MNIST_SAMPLE),
            "counts": {"train": len(arrays["train_label"]), "test": len(arrays["test_label"])}}
    return mnist.from_uint8("mnist-sample", arrays, [str(i) for i in range(10)], meta)


def _sample_file(path: Path) -> Path:
    hint = "reinstall nnlang, or run python -m nnlang.data.samples.make_samples DATA_DIR"
    if not path.is_file():
        raise DataError(f"the bundled sample {path} is missing from this installation", hint)
    sha = sha256_of(path)
    if sha != SAMPLE_SHA256[path.name]:
        raise DataError(f"the bundled sample {path} is corrupt: checksum mismatch (sha256 {sha}, "
                        f"expected {SAMPLE_SHA256[path.name]})", hint)
    remember(path, sha)
    return path


@dataclass(frozen=True)
class Entry:
    loader: Callable[..., Dataset]
    summary: str
    check: Callable[..., None] | None = None  # check(name, **options): DataError if bad


DATASETS = {
    "imdb": Entry(imdb.load_imdb, "IMDB movie reviews, 25,000/25,000, pos/neg; options vocab, "
                  "maxlen", imdb.check_options),
    "imdb-sample": Entry(load_imdb_sample, "2,500/1,000 real IMDB reviews bundled with nnlang",
                         imdb.check_options),
    "imdb-text": Entry(text.load_imdb_text, "IMDB review text as character chunks for language "
                       "models (tokens, next); options maxlen, train_chunks, test_chunks",
                       text.check_options),
    "imdb-text-sample": Entry(load_imdb_text_sample, "imdb-text from the 3,500 bundled reviews",
                              text.check_options),
    "mnist": Entry(mnist.load_mnist, "MNIST handwritten digits, 60,000/10,000, 28x28"),
    "mnist-sample": Entry(load_mnist_sample, "5,000/1,000 real MNIST digits bundled with nnlang"),
    "fashion-mnist": Entry(mnist.load_fashion_mnist, "Fashion-MNIST clothing, 60,000/10,000"),
    "dates": Entry(dates.load_dates, "generated dates in 14 written formats -> ISO 2021-03-05 "
                   "(sequence to sequence), 20,000/2,000; options n_train, n_test, seed",
                   dates.check_options),
}
FILE_LOADERS = {".npz": npz.load_npz, ".csv": npz.load_csv}
# `csv("table.csv", target = "y")`: the call form of a file, for options in the train section.
FILE_FORMS = {"csv": ".csv", "npz": ".npz"}


def canonical_name(name: str) -> str | None:
    """"fashion_mnist" -> "fashion-mnist"; None if `name` is not a registered dataset."""
    key = name.lower().replace("_", "-")
    return key if key in DATASETS else None


def list_datasets() -> list[str]:
    """Names `load_dataset` accepts besides .npz/.csv paths; `DATASETS[name].summary` tells more."""
    return sorted(DATASETS)


def trained_words(meta: dict) -> list[str] | None:
    """The vocabulary a trained model's text was encoded with, from its checkpoint's data
    meta, as `load_dataset(words=...)` takes it (one token per id, special tokens first):
    IMDB's words, or a character tokenizer's tokens; None for data without one. A loader
    refuses a vocabulary of another kind than its own."""
    from nnlang.data.chars import tokenizer_from_meta
    if meta.get("vocab") is not None:
        return list(meta["vocab"])
    chars = tokenizer_from_meta(meta)
    return None if chars is None else list(chars.vocab)


def load_dataset(spec: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 words: list[str] | None = None, **options) -> Dataset:
    """Load a dataset by name ("imdb", "imdb(vocab=10000, maxlen=100)", "mnist", ...) or from a
    user file ("data.npz", "data.csv", 'csv("data.csv", target=y)'). `data_dir` is searched
    before the default places.

    `words`: a trained model's vocabulary, which a text data set then encodes with (others
    have none to take).

    Raises DataError (never a traceback) for unknown names, bad options and missing files.
    """
    name, options = _parse_spec(spec, options)
    check_options(name, options)
    try:
        return _load(name, options, data_dir, words)
    except MemoryError:
        # NOTE: imdb(maxlen = 3000000000) asked numpy for 27 TiB: an internal error
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise DataError(f"dataset '{name}'{f' ({given})' if given else ''} does not fit in "
                        "this machine's memory", "lower its sizes (maxlen, vocab, the number "
                        "of examples), or use a machine with more memory") from None


def _load(name: str, options: dict, data_dir, words) -> Dataset:
    key = canonical_name(name)
    if key is not None:
        loader = DATASETS[key].loader
        if words is not None and "words" in inspect.signature(loader).parameters:
            options["words"] = list(words)
        return loader(data_dir=data_dir, **options)
    path = user_path(name)
    if not path.is_file() and data_dir is not None and (user_path(data_dir) / path).is_file():
        path = user_path(data_dir) / path
    if path.is_dir():
        raise DataError(f"data path {path} is a folder, not a .npz or .csv file",
                        "pass the .npz or .csv file itself")
    if not path.is_file():
        # NOTE: `feeds.load_data` also looks beside the .nn file, where a relative path failed
        hint = ("a relative path is looked for in the current directory, beside the .nn file "
                "and in --data-dir")
        raise DataError(f"data file not found: {path}", hint)
    return FILE_LOADERS[path.suffix.lower()](path, **options)


def check_options(name: str, options: dict) -> None:
    """DataError unless `name` is a dataset or a .npz/.csv path and `options` are ones its
    loader takes, with valid values."""
    key = canonical_name(name)
    if key is not None:
        entry = DATASETS[key]
        _check_names(key, entry.loader, options, skip={"data_dir", "words"})
        if entry.check is not None:
            entry.check(key, **options)
        return
    suffix = Path(name).suffix.lower()
    if suffix not in FILE_LOADERS and (suffix == ".gz" or Path(name).is_file()):
        # NOTE: a file, not a misspelt data set name: the data sets are no help here
        inner = Path(name[:-3]).suffix.lower() if suffix == ".gz" else ""
        hint = (f"decompress it first (gunzip {name})" if inner in FILE_LOADERS else
                "save the data as a .csv table or numpy.savez arrays (docs/data.md)")
        raise DataError(f"cannot read {name}: nnlang reads .npz and .csv files", hint)
    if suffix not in FILE_LOADERS:
        close = difflib.get_close_matches(name.lower(), list(DATASETS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise DataError(f"unknown dataset '{name}'", f"{hint}known datasets: "
                        f"{', '.join(list_datasets())}, or a path to a .npz/.csv file")
    _check_names(name, FILE_LOADERS[suffix], options, skip={"path"})
    npz.check_options(name, **options)


# NOTE: the name is anything but parentheses: a path with a space, a leading ~ or a drive
# letter took its options for part of a file name ("unknown dataset 'my data.csv(target=y)'")
_CALL = re.compile(r"^\s*([^()]+?)\s*\((.*)\)\s*$", re.S)


def _parse_spec(spec, options: dict) -> tuple[str, dict]:
    """"imdb(vocab=100)" -> ("imdb", {"vocab": 100}); 'csv("r.csv", target=y)' -> ("r.csv",
    {"target": "y"}) (a bare name is a string); keyword arguments win over the string."""
    m = _CALL.match(str(spec)) if isinstance(spec, str) else None
    if not m:
        return str(spec), options
    name = m[1]
    try:
        call = ast.parse(f"f({m[2]})", mode="eval").body
        if call.args:
            if name not in FILE_FORMS or len(call.args) != 1:
                raise ValueError("options must be written name=value")
            path = _literal(call.args[0])
            if not isinstance(path, str) or not path.lower().endswith(FILE_FORMS[name]):
                raise ValueError(f"{name}() reads a {FILE_FORMS[name]} file, got {path!r}")
            name = path
        parsed = {}
        for kw in call.keywords:
            if kw.arg is None:
                raise ValueError(f"'**{ast.unparse(kw.value)}' is not an option")
            if kw.arg in parsed:   # NOTE: ast.parse keeps both; a dict kept the last
                raise ValueError(f"option '{kw.arg}' is given twice")
            parsed[kw.arg] = _literal(kw.value)
    except (SyntaxError, ValueError) as e:
        raise DataError(f"cannot parse dataset options in '{spec}' ({e})",
                        'write e.g. imdb(vocab=20000, maxlen=200) or csv("t.csv", target=y)'
                        ) from None
    return name, {**parsed, **options}


_NN_WORDS = {"none": None, "true": True, "false": False}


def _dotted(node) -> bool:
    return isinstance(node, ast.Name) or isinstance(node, ast.Attribute) and _dotted(node.value)


def _literal(node):
    """A Python literal, .nn's `none`, `true` and `false`, or another bare name as its string
    (`target=y` means `target="y"`; a column named none is written "none"), in a list too
    (`targets=[aux]`)."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Name):
        return _NN_WORDS.get(node.id, node.id)
    if _dotted(node):   # NOTE: a bare file name, test=t.csv: Python reads t.csv as an attribute
        return ast.unparse(node)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"'{ast.unparse(node)}' is not a value") from None


def _check_names(name: str, loader, options: dict, skip: set[str]) -> None:
    allowed = [p for p in inspect.signature(loader).parameters if p not in skip]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        guess = did_you_mean(unknown[0], allowed)
        raise DataError(f"dataset '{name}' has no option(s) {', '.join(unknown)}",
                        f"{guess + ' ' if guess else ''}accepted options: "
                        f"{', '.join(allowed) or 'none'}")
