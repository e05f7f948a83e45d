"""Bad data and bad train settings through the real `nnlang train`: damaged dataset archives
(never a partial data set, never a cache entry), broken user files, lossy or non-finite data,
bad data options, and out-of-range optimizer/schedule/train settings. Every case must fail
with exit 1 and an error that names the file (and row/column) or the setting/flag."""
from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.faults.conftest import ROOT, cli

SHARED = os.environ.get("NNLANG_DATA_DIR")


def shared(rel: str) -> Path:
    """A real dataset file under $NNLANG_DATA_DIR (read only: corrupt copies, never it)."""
    path = Path(SHARED or "") / rel
    if not SHARED or not path.is_file():
        pytest.skip(f"needs NNLANG_DATA_DIR with {rel}")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own, so "no cache entry" is checked where the loader writes."""
    d = tmp_path / "cache"
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(d))
    return d


def flip(data: bytes, at: int, n: int = 64) -> bytes:
    at = min(max(at, 0), len(data) - n)
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + n]) + data[at + n:]


def train(*args, cwd=None) -> str:
    return cli("train", *map(str, args), code=1, cwd=cwd)


# *** the known archives, damaged: header, middle and end of each ***

POSITIONS = {"header": lambda n: 0, "middle": lambda n: n // 2, "end": lambda n: n - 64}


@pytest.mark.parametrize("where", list(POSITIONS))
def test_damaged_imdb_archive(where, tmp_path, cache):
    good = shared("imdb/aclImdb_v1-labeled.tar.gz")
    data = good.read_bytes()
    bad = tmp_path / "data" / "imdb" / good.name
    bad.parent.mkdir(parents=True)
    bad.write_bytes(flip(data, POSITIONS[where](len(data))))
    out = train(ROOT / "models/lstm.nn", "--data-dir", tmp_path / "data", "--out", tmp_path / "r")
    for words in (f"{bad} is corrupt", f"--data-dir ({tmp_path / 'data'})",
                  "checksum mismatch", "delete it"):
        assert words in out, out
    assert not list(cache.glob("processed/imdb-*")), "a damaged archive left a cache entry"
    assert str(bad) not in (cache / "verified.json").read_text() \
        if (cache / "verified.json").exists() else True


@pytest.mark.parametrize("cut", [0.1, pytest.param(0.9, marks=pytest.mark.slow)])
def test_truncated_imdb_archive(cut, tmp_path, cache):
    good = shared("imdb/aclImdb_v1-labeled.tar.gz")
    data = good.read_bytes()
    bad = tmp_path / "imdb" / "aclImdb_v1.tar.gz"  # the Stanford name: an unknown archive
    bad.parent.mkdir()
    bad.write_bytes(data[: int(len(data) * cut)])
    out = train(ROOT / "models/lstm.nn", "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert f"{bad} is corrupt: truncated gzip: the file ends at byte" in out, out
    assert not list(cache.glob("processed/imdb-*"))


@pytest.mark.slow
@pytest.mark.parametrize("frac", [0.1, 0.25, 0.75, 0.9])
def test_damaged_imdb_archive_anywhere(frac, tmp_path, cache):
    """The issue's case: 64 bytes flipped at 90% trained on 20,009 of 25,000 reviews."""
    good = shared("imdb/aclImdb_v1-labeled.tar.gz")
    data = good.read_bytes()
    bad = tmp_path / "imdb" / good.name
    bad.parent.mkdir()
    bad.write_bytes(flip(data, int(len(data) * frac)))
    out = train(ROOT / "models/lstm.nn", "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert f"{bad} is corrupt" in out and "checksum mismatch" in out, out
    assert not list(cache.glob("processed/imdb-*"))


def test_incomplete_imdb_archive_is_refused(tmp_path, cache):
    """A well-formed archive of the right name but missing reviews is not a data set."""
    import io
    import tarfile
    bad = tmp_path / "imdb" / "aclImdb_v1.tar.gz"
    bad.parent.mkdir()
    with tarfile.open(bad, "w:gz") as tar:
        for name in ("train/pos/0_9.txt", "train/neg/0_1.txt", "test/pos/0_8.txt"):
            info = tarfile.TarInfo(f"aclImdb/{name}")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"good"))
    out = train(ROOT / "models/lstm.nn", "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert "missing members: train/neg has 1 of 12,500 reviews" in out, out
    assert "test/neg has 0 of 12,500" in out
    assert not (cache / "processed").exists()


MNIST = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def mnist_dir(tmp_path: Path, name: str, bad_file: str, damage) -> Path:
    """<tmp>/<name>/ with links to the three good files and a damaged copy of `bad_file`."""
    d = tmp_path / "data" / name
    d.mkdir(parents=True)
    for f in MNIST:
        src = shared(f"{name}/{f}")
        if f == bad_file:
            (d / f).write_bytes(damage(src.read_bytes()))
        else:
            (d / f).symlink_to(src)
    return d / bad_file


MNIST_CASES = [
    ("mnist", "t10k-labels-idx1-ubyte.gz", "header", "not a gzip file"),
    ("mnist", "t10k-labels-idx1-ubyte.gz", "middle", "is corrupt"),
    ("mnist", "t10k-labels-idx1-ubyte.gz", "end", "gzip"),
    ("mnist", "train-images-idx3-ubyte.gz", "middle", "is corrupt"),
    ("fashion-mnist", "t10k-labels-idx1-ubyte.gz", "end", "gzip"),
] + [pytest.param(n, f, w, "is corrupt", marks=pytest.mark.slow)
     for n in ("mnist", "fashion-mnist") for f in MNIST for w in POSITIONS]


@pytest.mark.parametrize("name, file, where, words", MNIST_CASES)
def test_damaged_mnist_file(name, file, where, words, tmp_path, cache):
    bad = mnist_dir(tmp_path, name, file, lambda b: flip(b, POSITIONS[where](len(b))))
    out = train(ROOT / "models/mlp.nn", "--data", name, "--data-dir", tmp_path / "data",
                "--out", tmp_path / "r")
    assert f"{bad} is corrupt" in out and words in out, out
    assert "checksum mismatch" in out and "--data-dir" in out


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[: len(b) // 2], "truncated gzip: the file ends at byte 2,271"),
    (lambda b: b"", "not a gzip file"),
    (lambda b: gzip.compress(b"\0\0\x09\x01" + gzip.decompress(b)[4:]), "not a uint8 IDX file"),
    (lambda b: gzip.compress(gzip.decompress(b)[:-100]), "header says (10000,)"),
    (lambda b: gzip.compress(gzip.decompress(b)[:8] + b"\x0a" * 10000), "label 10 at row 0"),
])
def test_broken_idx_file(damage, words, tmp_path, cache):
    bad = mnist_dir(tmp_path, "mnist", "t10k-labels-idx1-ubyte.gz", damage)
    out = train(ROOT / "models/mlp.nn", "--data-dir", tmp_path / "data", "--out", tmp_path / "r")
    assert f"{bad} is corrupt" in out and words in out, out


@pytest.mark.parametrize("sample, damage", [
    ("IMDB_SAMPLE", lambda b: flip(b, len(b) // 2)),
    ("MNIST_SAMPLE", lambda b: b[:-1000]),
])
def test_damaged_bundled_sample(sample, damage, tmp_path, monkeypatch, cache):
    from nnlang.data import registry
    good = getattr(registry, sample)
    bad = tmp_path / good.name
    bad.write_bytes(damage(good.read_bytes()))
    monkeypatch.setattr(registry, sample, bad)
    name = "imdb-sample" if sample == "IMDB_SAMPLE" else "mnist-sample"
    model = "lstm.nn" if name == "imdb-sample" else "mlp.nn"
    out = train(ROOT / "models" / model, "--data", name, "--out", tmp_path / "r")
    assert f"the bundled sample {bad} is corrupt: checksum mismatch" in out, out
    assert "reinstall nnlang" in out
    assert not list(cache.glob("processed/*"))


# *** user files: .npz and .csv ***

REG = """
model Reg {
  input x: float32[batch, 2]
  input label: float32[batch]
  y = squeeze(dense(x, 1), axis = 1)
  output y
  loss mse(y, label)
}
train Reg {
  data = "reg.csv"
  batch = 2
}
"""
CLS = """
model Cls {
  input x: float32[batch, 2]
  input label: int32[batch]
  logits = dense(x, 10)
  output logits
  loss cross_entropy(logits, label)
}
train Cls {
  data = "ok.npz"
  batch = 2
}
"""


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "reg.nn").write_text(REG)
    (tmp_path / "cls.nn").write_text(CLS)
    return tmp_path


X = np.arange(16, dtype=np.float64).reshape(8, 2)

NPZ_CASES = {
    "strings": (dict(x=X, label=np.array(list("abcdefgh"))),
                ["strings.npz: array 'label' holds <U1 values, not numbers"]),
    "objects": (None, ["objects.npz: array 'label' is an object array", "save arrays of numbers"]),
    "scalar": (dict(x=np.float64(1), label=np.arange(8)), ["array 'x' is a single value"]),
    "lengths": (dict(x=X, label=np.arange(7)),
                ["lengths.npz: arrays have different numbers of rows: 'x' 8, 'label' 7"]),
    "test_only": (dict(test_x=X, test_label=np.arange(8)),
                  ["test_only.npz holds no training arrays", "test_label"]),
    "empty": ({}, ["empty.npz holds no training arrays (it has none)"]),
    "prefixes": (dict(train_x=X, label=np.arange(8)), ["have no train_/test_ prefix"]),
    "fraction": (dict(x=X, label=np.array([0, 1, 2, 9.7, 3, 4, 5, 6])),
                 ["fraction.npz (train split), array 'label', row 3: 9.7 is not a whole number",
                  "model input 'label' is int32"]),
    "complex": (dict(x=X + np.eye(8, 2) * 1j, label=np.arange(8)),
                ["complex.npz (train split), array 'x', row 0:", "has an imaginary part"]),
    "nan": (dict(x=np.where(X == 11, np.nan, X), label=np.arange(8)),
            ["nan.npz (train split), array 'x', row 5: nan is not a finite number"]),
    "inf": (dict(train_x=X, train_label=np.arange(8), test_x=np.where(X == 3, np.inf, X),
                 test_label=np.arange(8)),
            ["inf.npz (test split), array 'x', row 1: inf is not a finite number"]),
    "overflow": (dict(x=X, label=np.array([0, 1, 2, 3, 2**40, 5, 6, 7])),
                 ["overflow.npz (train split), array 'label', row 4: 1099511627776 does not fit "
                  "in int32"]),
    "test_label": (dict(train_x=X, train_label=np.arange(8), test_x=X,
                        test_label=np.array([0, 1, 2, 3, 4, 5, 6, 10])),
                   ["test_label.npz (test split), array 'label', row 7: the id 10 is outside "
                    "the 10 values model input 'label' takes here (0 to 9)",
                    "loss cross_entropy(logits, label)"]),
    "val_label": (dict(train_x=X, train_label=np.arange(8), val_x=X[:4],
                       val_label=np.array([0, -1, 2, 3])),
                  ["val_label.npz (val split), array 'label', row 1: the id -1"]),
    "huge": (dict(x=np.where(X == 6, 1e300, X), label=np.arange(8)),
             ["array 'x', row 3: 1e+300 does not fit in float32"]),
    "rank": (dict(x=X.reshape(8, 2, 1, 1)[:, :1], label=np.arange(8)),
             ["has shape [8, 1, 1, 1]", "model input 'x' is declared float32[batch, 2]"]),
}


def write_npz(path: Path, arrays):
    if arrays is None:  # an object array: numpy writes it pickled
        np.savez(path, x=X, label=np.array([{"a": 1}] * 8, dtype=object))
    else:
        np.savez(path, **arrays)


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_npz(case, work):
    arrays, words = NPZ_CASES[case]
    write_npz(work / f"{case}.npz", arrays)
    out = train("cls.nn", "--data", f"{case}.npz", "--out", "r", cwd=work)
    for w in words:
        assert w in out, out


@pytest.mark.parametrize("damage, words", [
    (lambda b: b"not a zip", "is not a valid .npz file"),
    (lambda b: b[: len(b) // 2], "is not a valid .npz file"),
    (lambda b: b"", "is not a valid .npz file"),
    (lambda b: b[:200] + bytes(x ^ 0xFF for x in b[200:260]) + b[260:], "ok.npz"),
])
def test_damaged_npz(damage, words, work):
    np.savez_compressed(work / "ok.npz", x=X, label=np.arange(8))
    (work / "ok.npz").write_bytes(damage((work / "ok.npz").read_bytes()))
    out = train("cls.nn", "--out", "r", cwd=work)
    assert words in out, out


def test_npy_named_npz(work):
    np.save(work / "x.npy", X)
    shutil.copy(work / "x.npy", work / "ok.npz")
    assert "ok.npz is not a valid .npz file" in train("cls.nn", "--out", "r", cwd=work)


CSV_CASES = [
    ("a,b,label\n1,2,3\n4,5\n", ["short.csv:3: the row has 2 values but the header has 3 "
                                  "columns (no value for label)"]),
    ("a,b,label\n1,2,3\n4,5,6,7\n", ["long.csv:3: the row has 4 values"]),
    ("a,b,label\n", ["header.csv has a header but no data rows"]),
    ("", ["empty.csv is empty"]),
    ("a,b,label\n1,2,3\n\n4,x,6\n", ["text.csv:4: column 'b' 'x' is not a finite number"]),
    ("a,b,label\n1,,3\n", ["blank.csv:2: column 'b' is empty"]),
    ("a,b,label\n1,nan,3\n", ["nan.csv:2: column 'b' 'nan' is not a finite number"]),
    ("a,b,label\n1,2,inf\n", ["inf.csv:2: column 'label' 'inf' is not a finite number"]),
    ("a,b,y\n1,2,3\n", ["nolabel.csv: no column 'label'", 'csv("file.csv", target = "name")']),
    (b"a,b,label\n1,2,\xff\n", ["latin.csv:2: byte 0xff is not UTF-8"]),
    ("a,b,label\n1,2,3\n4,1e39,6\n", ["big.csv:3: column 'b' 1e39 does not fit in float32"]),
    ("a,b,label\n1,2,3\n4,5,-1e39\n", ["neg.csv:3: column 'label' -1e39 does not fit in float32"]),
    # "uq.csv:5: the row has 1 values": the quote opened on line 3 swallowed lines 3 to 5
    ('a,b,label\n1,2,3\n"4,5,6\n7,8,9\n1,2,3\n', ["uq.csv:3: a quoted value runs from line 3 "
                                                     "to line 5", "closing quote"]),
    # which of the two is the target? the other one was taken as a feature, silently
    ("a,label,label\n1,2,3\n4,5,6\n", ["twice.csv:1: the header names column 'label' "
                                        "twice (columns 2 and 3)"]),
    # Python's float() reads 1_000 as 1000; spreadsheets and pandas take it as text
    ("a,b,label\n1,2,3\n4,1_000,6\n", ["under.csv:3: column 'b' '1_000' is not a "
                                        "finite number"]),
]
CSV_NAMES = ["short", "long", "header", "empty", "text", "blank", "nan", "inf", "nolabel",
             "latin", "big", "neg", "uq", "twice", "under"]


@pytest.mark.parametrize("text, words", CSV_CASES, ids=CSV_NAMES)
def test_bad_csv(text, words, work, request):
    name = request.node.callspec.id
    path = work / f"{name}.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = train("reg.nn", "--data", path.name, "--out", "r", cwd=work)
    for w in words:
        assert w in out, out
    assert "Warning" not in out, out



@pytest.mark.parametrize("name", ["reg.csv", "reg.npz"])
def test_a_data_file_the_file_system_will_not_read_is_not_called_corrupt(work, monkeypatch,
                                                                         name):
    """A table or archive of another account (mode 600): an .npz was 'cannot read it as .npz
    ([Errno 13] Permission denied: ...): truncated or corrupt', a .csv got the hint to save it
    as a UTF-8 CSV. (The refusal is made where the file is opened: root reads any mode.)"""
    import builtins
    import errno
    import os
    import zipfile
    from nnlang.data import npz
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n4,5,6\n")
    np.savez(work / "reg.npz", x=X[:4], label=np.arange(4.0))

    def refused(file):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
    zip_init = zipfile.ZipFile.__init__
    monkeypatch.setattr(npz, "open", lambda file, *a, **k: refused(file) or builtins.open(
        file, *a, **k), raising=False)
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda self, file, *a, **k: refused(
        file) or zip_init(self, file, *a, **k))
    out = train("reg.nn", "--data", name, "--out", "r", cwd=work)
    assert f"cannot read {name} (Permission denied)" in out and "ls -l" in out, out
    assert "corrupt" not in out and "UTF-8" not in out, out

def test_csv_with_a_byte_order_mark_trains(work):
    """Excel's UTF-8 CSVs start with a BOM: it is not part of the first column's name."""
    (work / "reg.csv").write_bytes(b"\xef\xbb\xbfa,b,label\n1,2,3\n4,5,6\n")
    cli("train", "reg.nn", "--out", "r", "--max-steps", "1", code=0, cwd=work)


@pytest.mark.parametrize("spec", ["reg.csv(target=y)", 'csv("reg.csv", target=y)'])
def test_csv_target_on_the_command_line(spec, work):
    (work / "reg.csv").write_text("a,b,y\n1,2,3\n4,5,6\n")
    cli("train", "reg.nn", "--data", spec, "--out", "r", "--max-steps", "1", code=0, cwd=work)
    assert '"target": "y"' in (work / "r" / "config.json").read_text()


@pytest.mark.parametrize("folder", ["my data", "~"])
def test_csv_options_on_the_command_line_after_any_path(folder, work, monkeypatch):
    """A path with a space or a leading ~ (the home folder) followed by options was 'unknown
    dataset' ('my data/reg.csv(target=y)'): the options' pattern took only word characters,
    dots and slashes for the name."""
    where = work / ("home" if folder == "~" else folder)
    where.mkdir()
    monkeypatch.setenv("HOME", str(work / "home"))
    (where / "reg.csv").write_text("a,b,y\n1,2,3\n4,5,6\n")
    cli("train", "reg.nn", "--data", f"{folder}/reg.csv(target=y)", "--out", "r",
        "--max-steps", "1", code=0, cwd=work)
    assert '"target": "y"' in (work / "r" / "config.json").read_text()


def test_csv_target_in_the_train_section(work):
    (work / "reg.csv").write_text("a,b,y\n1,2,3\n4,5,6\n")
    (work / "reg.nn").write_text(REG.replace('"reg.csv"', 'csv("reg.csv", target = "y")'))
    cli("train", "reg.nn", "--out", "r", "--max-steps", "1", code=0, cwd=work)


def test_a_whole_target_beyond_int32_keeps_its_value(work):
    """A target column of whole numbers became int32 class ids even where int32 cannot hold
    them: 3e9 was cast to -2**31 and the regression trained on that without a word. With the
    features 0 the prediction is the zero bias, so the first loss is the mean of label**2."""
    (work / "reg.csv").write_text("a,b,label\n0,0,3000000000\n0,0,3000000000\n")
    cli("train", "reg.nn", "--backend", "reference", "--out", "r", "--max-steps", "1", code=0,
        cwd=work)
    first = json.loads((work / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_loss"] == pytest.approx(3e9 ** 2, rel=1e-6)


def test_a_missing_data_file_named_in_the_file_is_located(work):
    """DataError has no span and leaves locating it to its caller, which did not: a train
    section's `data = "reg.csv"` with no reg.csv said no line."""
    out = cli("train", "reg.nn", "--backend", "reference", "--out", "r", cwd=work)
    assert 'reg.nn:10:10: error: data file not found: reg.csv\n  10 |   data = "reg.csv"' \
        in out, out


def test_eval_locates_a_missing_data_file_named_in_the_file(work):
    """The same for `nnlang eval` of a run whose data set is the train section's: the file was
    moved after training, and the error said no line."""
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n4,5,6\n7,8,9\n1,1,1\n")
    cli("train", "reg.nn", "--backend", "reference", "--out", "r", "--max-steps", "1",
        cwd=work, code=0)
    (work / "reg.csv").unlink()
    out = cli("eval", "reg.nn", "-c", "r", "--backend", "reference", cwd=work)
    assert 'reg.nn:10:10: error: data file not found: reg.csv\n  10 |   data = "reg.csv"' \
        in out, out


def test_eval_of_a_table_without_test_rows_says_how_to_give_them(work):
    """A .csv run trained without val_split has nothing held out: the hint named only the
    .npz way (train_*/test_* arrays), not a table's `test = "test.csv"` option."""
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n4,5,6\n7,8,9\n1,1,1\n")
    cli("train", "reg.nn", "--backend", "reference", "--out", "r", "--max-steps", "1",
        cwd=work, code=0)
    out = cli("eval", "reg.nn", "-c", "r", "--backend", "reference", cwd=work)
    assert "nothing of it was held out" in out and 'test = "test.csv"' in out, out


def test_a_test_table_beyond_int32_is_not_class_ids(work):
    """Whole targets in the training table and 3e9 in the test one: a regression (the model's
    label is float32), evaluated on 3e9 itself, not on the int32 cast's -2**31 (and not
    refused as "beyond int32" because the training table held small whole numbers)."""
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n4,5,6\n")
    (work / "t.csv").write_text("a,b,label\n1,2,3000000000\n")
    (work / "reg.nn").write_text(REG.replace('"reg.csv"', 'csv("reg.csv", test = "t.csv")'))
    cli("train", "reg.nn", "--backend", "reference", "--out", "r", "--max-steps", "1",
        code=0, cwd=work)
    loss = json.loads((work / "r" / "summary.json").read_text())["test"]["loss"]
    assert 8.99e18 < loss < 9.01e18, loss   # (3e9 - p)^2 for a small prediction p


# *** data names, options and places ***

@pytest.mark.parametrize("args, words", [
    (["--data", "mnsit"], ["unknown dataset 'mnsit'", "did you mean 'mnist'?"]),
    (["--data", "imdb(maxlen=-1)"], ["imdb: option maxlen=-1 must be an integer >= 1"]),
    (["--data", "imdb(vocab=0)"], ["imdb: option vocab=0 must be an integer >= 3"]),
    (["--data", "imdb(vocab=1.5)"], ["imdb: option vocab=1.5 must be an integer"]),
    (["--data", "imdb(max_len=5)"], ["dataset 'imdb' has no option(s) max_len",
                                     "accepted options: vocab, maxlen"]),
    (["--data", "imdb(5)"], ["cannot parse dataset options", "name=value"]),
    (["--data", "imdb(vocab=)"], ["cannot parse dataset options"]),
    (["--data", "csv('x.txt')"], ["csv() reads a .csv file"]),
    (["--data", "reg.csv(target=3)"], ["option target=3 must be a column name"]),
    # the last of two values silently won
    (["--data", "reg.csv(target=label, target=b)"], ["cannot parse dataset options",
                                                     "option 'target' is given twice"]),
    (["--data", 'csv("reg.csv", target="a", target="b")'], ["option 'target' is given twice"]),
    (["--data", "reg.csv(**{})"], ["cannot parse dataset options", "'**{}' is not an option"]),
    (["--data", "missing.npz"], ["data file not found: missing.npz", "beside the .nn file"]),
    # a folder was "data file not found", for a path that is there
    (["--data", "folder.csv"], ["data path folder.csv is a folder, not a .npz or .csv file"]),
    # found by a fuzzer: numpy's MemoryError for 2,500 rows of 3e9 tokens, an internal error
    (["--data", "imdb_sample(maxlen=3000000000)"],
     ["dataset 'imdb_sample' (maxlen=3000000000) does not fit in this machine's memory"]),
    # found by a fuzzer: 3e9 generated dates ran for hours (10 us each) with no word
    (["--data", "dates(n_train=3000000000)"],
     ["dataset 'dates': n_train must be at most 10,000,000, got 3,000,000,000"]),
    (["--data-dir", "no/such/dir"], ["--data-dir no/such/dir does not exist"]),
    (["--data-dir", "reg.nn"], ["--data-dir reg.nn is not a directory"]),
])
def test_bad_data_choice(args, words, work):
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n")
    (work / "folder.csv").mkdir()
    out = train("reg.nn", *args, "--out", "r", cwd=work)
    for w in words:
        assert w in out, out


def test_a_bare_table_name_is_a_path(work):
    """`target=y` is the string "y", but `test=t.csv` was "'t.csv' is not a value"."""
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n4,5,6\n")
    (work / "t.csv").write_text("a,b,label\n7,8,9\n")
    out = cli("train", "reg.nn", "--data", "reg.csv(test=t.csv)", "--out", "r", "--max-steps",
              "1", code=0, cwd=work)
    assert "test " in out


@pytest.mark.parametrize("data, words", [
    ("imdb(maxlen = -1)", ["reg.nn:10:24: error: imdb: option maxlen=-1 must be"]),
    ("imdb(vocab = 2, maxlen = 0)", ["reg.nn:10:23: error: imdb: option vocab=2",
                                     "reg.nn:10:35: error: imdb: option maxlen=0"]),
    ("mnits", ["reg.nn:10:10: error: unknown dataset 'mnits'", "did you mean 'mnist'?"]),
    ('csv("reg.txt")', ["reg.nn:10:10: error: csv() reads a .csv file, got \"reg.txt\""]),
    ('imdb("reg.csv")', ["imdb() takes keyword arguments only"]),
    ('csv("reg.csv", targte = "y")', ["dataset 'reg.csv' has no option(s) targte"]),
])
def test_bad_data_setting(data, words, work):
    (work / "reg.nn").write_text(REG.replace('"reg.csv"', data))
    out = train("reg.nn", "--out", "r", cwd=work)
    for w in words:
        assert w in out, out


# *** optimizer, schedule and train settings ***

# (setting line in the train section, expected words): every option of every optimizer and
# schedule (nnlang/ops/optim.py) and every numeric train setting, just out of range.
SETTING_CASES = [
    ("optimizer = sgd(lr = -0.1)", "sgd() argument 'lr': -0.1 is out of range: lr must be > 0"),
    ("optimizer = sgd(lr = 0)", "lr must be > 0"),
    ("optimizer = sgd(momentum = 1.0)", "momentum must be in [0, 1)"),
    ("optimizer = sgd(momentum = -0.5)", "momentum must be in [0, 1)"),
    ("optimizer = sgd(weight_decay = -1e-4)", "weight_decay must be >= 0"),
    ("optimizer = adam(beta1 = 1.0)", "beta1 must be in [0, 1)"),
    ("optimizer = adam(beta2 = -0.1)", "beta2 must be in [0, 1)"),
    ("optimizer = adam(eps = 0)", "eps must be > 0"),
    ("optimizer = adam(weight_decay = -1)", "weight_decay must be >= 0"),
    ("optimizer = adamw(lr = -1e-3)", "adamw() argument 'lr'"),
    ("optimizer = adamw(beta2 = 1.5)", "beta2 must be in [0, 1)"),
    ("optimizer = adamw(eps = -1e-8)", "eps must be > 0"),
    ("optimizer = adamw(weight_decay = -0.01)", "weight_decay must be >= 0"),
    ("optimizer = rmsprop(alpha = 1.0)", "alpha must be in [0, 1)"),
    ("optimizer = rmsprop(eps = 0.0)", "eps must be > 0"),
    ("optimizer = rmsprop(momentum = 2)", "momentum must be in [0, 1)"),
    ("optimizer = rmsprop(lr = -0.01)", "rmsprop() argument 'lr'"),
    ("optimizer = rmsprop(weight_decay = -2)", "weight_decay must be >= 0"),
    ("schedule = constant(warmup = -1)", "warmup must be >= 0"),
    ("schedule = step(step_size = 0)", "step_size must be >= 1"),
    ("schedule = step(step_size = 2, gamma = 0)", "gamma must be > 0"),
    ("schedule = step(step_size = 2, warmup = -5)", "warmup must be >= 0"),
    ("schedule = exponential(gamma = -0.9)", "gamma must be > 0"),
    ("schedule = cosine(min_lr = -1e-5)", "min_lr must be >= 0"),
    ("schedule = cosine(warmup = -10)", "warmup must be >= 0"),
    ("epochs = 0", "train setting 'epochs': 0 is out of range: epochs must be >= 1"),
    ("val_split = 1.0", "val_split must be in [0, 1)"),
    ("val_split = -0.1", "val_split must be in [0, 1)"),
    ("seed = -1", "seed must be >= 0"),
    ("clip_norm = -1.0", "clip_norm must be >= 0"),
    ("l2 = -0.001", "l2 must be >= 0"),
]


@pytest.mark.parametrize("line, words", SETTING_CASES, ids=[c[0] for c in SETTING_CASES])
def test_bad_setting_in_the_file(line, words, work):
    src = REG.replace("  batch = 2\n", "  batch = 2\n  " + line + "\n")
    (work / "reg.nn").write_text(src)
    out = train("reg.nn", "--out", "r", cwd=work)
    row = src.splitlines().index("  " + line) + 1
    assert f"reg.nn:{row}:" in out and words in out, out


@pytest.mark.parametrize("args, words", [
    (["--lr", "-1"], "train setting 'lr' (given by --lr or --set lr=...): -1.0 is out of range"),
    (["--lr", "0"], "lr must be > 0"),
    (["--set", "lr=-0.5"], "-0.5 is out of range: lr must be > 0"),
    # a --set value is shown where it was given (tests/faults/test_training.py)
    (["--set", "beta1=1"], "<command line>:1:13: error: train setting 'beta1': 1.0 is out of "
                           "range"),
    (["--set", "eps=0"], "eps must be > 0"),
    (["--set", "weight_decay=-1"], "weight_decay must be >= 0"),
    (["--set", "seed=-3"], "<command line>:1:12: error: train setting 'seed': -3 is out of "
                           "range"),
    (["--seed", "-3"], "(given by --seed or --set seed=...): -3 is out of range"),
    (["--set", "epochs=0"], "epochs"),
    (["--set", "clip_norm=-2"], "clip_norm must be >= 0"),
    (["--set", "l2=-1"], "l2 must be >= 0"),
    (["--set", "val_split=1.5"], "val_split"),
    # NOTE: the flag's own range was [0, 0.99], another than the setting's (docs/data.md)
    (["--val-split", "1"], "(given by --val-split or --set val_split=...): 1.0 is out of range: "
                           "val_split must be in [0, 1)"),
    (["--set", "optimizer=sgd", "--set", "momentum=1"], "momentum must be in [0, 1)"),
    # in range as written, out of it in float32, where the update runs: lr 0 trained nothing
    # with exit 0, beta 1 and eps 0 gave NaN reported as "lower the learning rate"
    (["--lr", "1e-320"], "1e-320 is 0.0 in float32, the precision training runs in: lr must "
                         "be > 0 there"),
    (["--set", "beta2=0.9999999999"], "0.9999999999 is 1.0 in float32"),
    (["--set", "eps=1e-50"], "1e-50 is 0.0 in float32"),
    # the flag won silently, as --set X twice is an error
    (["--set", "lr=0.1", "--lr", "0.2"], "'lr' is given twice: --lr 0.2 and --set lr=0.1"),
    (["--seed", "2", "--set", "seed=1"], "'seed' is given twice: --seed 2 and --set seed=1"),
    (["--set", "val_split=0.1", "--val-split", "0.3"], "--val-split 0.3 and --set val_split=0.1"),
])
def test_bad_setting_flag(args, words, work):
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n")
    (work / "folder.csv").mkdir()
    out = train("reg.nn", *args, "--out", "r", cwd=work)
    assert words in out, out


def test_a_non_finite_lr_flag_is_a_usage_error(work):
    # NOTE: the flag's own check (exit 2, typer's code for a bad option value) comes first
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n")
    out = cli("train", "reg.nn", "--lr", "nan", "--out", "r", code=2, cwd=work)
    assert "nan is not a finite number" in out


def test_val_split_flag_takes_the_settings_range(work):
    """--val-split takes what `val_split` and --set val_split take, [0, 1) (it stopped at 0.99)."""
    (work / "reg.csv").write_text("a,b,label\n" + "1,2,3\n" * 400)
    cli("train", "reg.nn", "--val-split", "0.995", "--out", "r", "--max-steps", "1", code=0,
        cwd=work)
    assert '"val_split": 0.995' in (work / "r" / "config.json").read_text()


def test_set_train_settings_are_applied(work):
    """`--set lr=...` was silently dropped when the --lr flag was not given."""
    (work / "reg.csv").write_text("a,b,label\n1,2,3\n4,5,6\n")
    cli("train", "reg.nn", "--set", "lr=0.25", "--set", "seed=7", "--out", "r",
        "--max-steps", "1", code=0, cwd=work)
    config = (work / "r" / "config.json").read_text()
    assert '"lr": 0.25' in config and '"seed": 7' in config


# *** the processed-data cache, damaged: a warning and a rebuild, never a crash ***

@pytest.mark.parametrize("damage", [
    lambda b: b[:len(b) // 2], lambda b: b[:-10], lambda b: flip(b, 40, 1),
    lambda b: flip(b, len(b) // 2, 1), lambda b: flip(b, len(b) - 30, 1), lambda b: b"",
])
def test_damaged_processed_cache_is_rebuilt(damage, cache, capsys):
    from nnlang.data.cache import load_processed, save_processed
    arrays = {"train_x": np.arange(300, dtype=np.int32).reshape(30, 10),
              "vocab": np.array(["a", "b"]), "train_label": np.ones(30, np.int8)}
    path = save_processed("imdb-sample-t", arrays)
    assert {k: v.tolist() for k, v in load_processed("imdb-sample-t").items()} == \
        {k: v.tolist() for k, v in arrays.items()}
    path.write_bytes(damage(path.read_bytes()))
    assert load_processed("imdb-sample-t") is None
    assert not path.exists(), "the damaged entry was kept"
    err = capsys.readouterr().err
    assert "is damaged" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("rows, words", [(0, ["holds no training examples"]),
                                         (1, ["1 training example does not fill one batch of 2",
                                              "lower --batch"])])
def test_a_table_without_enough_training_rows(tmp_path, rows, words):
    """An npz with no training rows was told to 'lower val_split', which it does not use."""
    np.savez(tmp_path / "e.npz", train_x=np.zeros((rows, 3), np.float32),
             train_label=np.zeros(rows, np.int32), test_x=np.zeros((2, 3), np.float32),
             test_label=np.zeros(2, np.int32))
    (tmp_path / "e.nn").write_text("""model E {
  input x: float32[batch, 3]
  input label: int32[batch]
  loss cross_entropy(dense(x, 2), label)
}
train E { data = npz("e.npz") batch = 2 }
""")
    out = cli("train", "e.nn", "--backend", "reference", "--out", "run", code=1, cwd=tmp_path)
    for w in words:
        assert w in out, out
    assert "Traceback" not in out
