"""User .npz and .csv files (nnlang/data/npz.py)."""
import numpy as np
import pytest

from nnlang.data import DataError, load_dataset


def test_npz_without_prefixes_is_all_train(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.inputs == ["x"] and ds.targets == ["y"] and ds.name == "d"
    assert len(ds.train) == 6 and len(ds.test) == 0
    assert ds.train["x"].dtype == np.float32 and ds.train["y"].dtype == np.int32
    assert ds.test["x"].shape == (0, 2)
    assert ds.encode([1.0, 2.0])["x"].tolist() == [[1.0, 2.0]]


def test_npz_with_prefixes_and_explicit_targets(tmp_path):
    np.savez(tmp_path / "d.npz", train_image=np.zeros((5, 3), np.float32),
             train_aux=np.ones((5,), np.float32), test_image=np.zeros((2, 3), np.float32),
             test_aux=np.ones((2,), np.float32))
    ds = load_dataset(str(tmp_path / "d.npz"), targets=["aux"])
    assert (len(ds.train), len(ds.test)) == (5, 2)
    assert ds.inputs == ["image"] and ds.targets == ["aux"]


@pytest.mark.parametrize("arrays, match", [
    ({"train_x": np.zeros(3), "y": np.zeros(3)}, "no train_/test_ prefix"),
    ({"x": np.zeros(3), "label": np.zeros(4)}, "different numbers of rows: 'x' 3, 'label' 4"),
    ({"train_x": np.zeros(3), "test_z": np.zeros(3)}, "differ"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "d.npz")


def test_npz_of_rows_of_different_lengths_says_to_pad_them(tmp_path):
    """Sequences of different lengths saved as they are (numpy makes an object array) for a
    model of `symbol seq`: the hint said only "arrays of numbers, one row per example"; it
    names the object array and how to pad the rows (docs/data.md)."""
    rows = np.empty(3, object)
    rows[:] = [np.arange(1, n + 1) for n in (2, 5, 3)]
    np.savez(tmp_path / "d.npz", tokens=rows, label=np.zeros(3))
    with pytest.raises(DataError, match="'tokens' is an object array") as err:
        load_dataset(tmp_path / "d.npz")
    assert "rows of different lengths: pad each to the longest with 0 at the front" in \
        err.value.hint


def test_npz_and_csv_targets_in_another_case_name_the_close_match(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros(3), label=np.zeros(3))
    with pytest.raises(DataError, match=r"target\(s\) \['Label'\] not among") as e:
        load_dataset(tmp_path / "d.npz", targets=["Label"])
    assert e.value.hint == "did you mean 'label'?"
    (tmp_path / "d.csv").write_text("a,Label\n1,0\n")
    with pytest.raises(DataError, match="no column 'label'") as e:
        load_dataset(tmp_path / "d.csv")
    assert e.value.hint.startswith("did you mean 'Label'?")


def test_csv(tmp_path):
    (tmp_path / "d.csv").write_text("a,kind,b\n1,0,2.5\n3,1,4\n5,2,6\n")
    ds = load_dataset("d.csv", data_dir=tmp_path, target="kind")
    assert ds.inputs == ["x"] and ds.targets == ["label"]
    assert ds.train["x"].tolist() == [[1, 2.5], [3, 4], [5, 6]]
    assert ds.train["x"].dtype == np.float32
    assert ds.train["label"].tolist() == [0, 1, 2] and ds.train["label"].dtype == np.int32
    assert ds.meta["feature_names"] == ["a", "b"] and len(ds.test) == 0


def test_csv_errors(tmp_path):
    (tmp_path / "d.csv").write_text("a,label\n1,0\nx,1\n")
    with pytest.raises(DataError, match=r"d.csv:3: column 'a' 'x' is not a finite number"):
        load_dataset(tmp_path / "d.csv")
    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    with pytest.raises(DataError, match="no column 'y'"):
        load_dataset(tmp_path / "d.csv", target="y")


@pytest.mark.parametrize("spec", ["r.csv(target=y)", "r.csv(target='y')",
                                  'csv("r.csv", target=y)', "csv('r.csv', target='y')"])
def test_csv_target_spellings(tmp_path, monkeypatch, spec):
    """A bare name is a string, and csv("file", ...) is the train section's spelling."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.csv").write_text("a,y\n1,0.5\n2,1.5\n")
    ds = load_dataset(spec)
    assert ds.meta["target_column"] == "y" and ds.train["label"].tolist() == [0.5, 1.5]


@pytest.mark.parametrize("spec", ["d.npz(targets=[aux])", 'npz("d.npz", targets=["aux"])'])
def test_bare_names_in_a_data_spec_list_are_strings(tmp_path, monkeypatch, spec):
    """`targets=[aux]` is `targets=["aux"]`, as a bare `target=y` is "y" (docs/data.md: a bare
    word as an option value is a string); it was "'[aux]' is not a value"."""
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.ones((2, 3), "f4"), aux=np.arange(2, dtype="f4"))
    ds = load_dataset(spec)
    assert ds.targets == ["aux"] and ds.train["aux"].tolist() == [0.0, 1.0]


def test_nn_words_in_a_data_spec_are_the_nn_values():
    """`--data "imdb(maxlen=none)"` is whole reviews, as `maxlen = none` is in a .nn file."""
    from nnlang.train.feeds import replace_data
    assert replace_data(None, "imdb-sample(maxlen=none)").options == {"maxlen": None}
    assert replace_data(None, "x.csv(target=none_col)").options == {"target": "none_col"}
    assert replace_data(None, 'x.csv(target="none")').options == {"target": "none"}
    ds = load_dataset("imdb-sample(maxlen=none)")
    assert ds.train["tokens"].lengths.max() > 500


def test_csv_byte_order_mark_is_not_part_of_the_header(tmp_path):
    (tmp_path / "b.csv").write_bytes("\ufeffa,label\n1,0\n2,1\n".encode())
    assert load_dataset(tmp_path / "b.csv").meta["feature_names"] == ["a"]


@pytest.mark.parametrize("sep, name", [(";", "semicolons"), ("\t", "tabs")])
def test_csv_of_another_separator_says_so(tmp_path, sep, name):
    """A semicolon-separated file (a European spreadsheet's CSV) read as one column: the error
    was "column 'a;b;label' '1;2;0' is not a finite number", which does not say why."""
    (tmp_path / "s.csv").write_text(sep.join(["a", "b", "label"]) + "\n" +
                                    sep.join(["1", "2", "0"]) + "\n")
    with pytest.raises(DataError, match=rf"s.csv:1: the header is one column .* separated by "
                                        rf"{name}") as e:
        load_dataset(tmp_path / "s.csv")
    assert "commas" in e.value.hint


@pytest.mark.parametrize("header, match, hint", [
    # two features of one name: meta["feature_names"] held both, and nothing said which was which
    ("a,b,a,label", r"d.csv:2: the header names column 'a' twice \(columns 1 and 3\)", "rename"),
    ("a,label,label", r"d.csv:2: the header names column 'label' twice \(columns 2 and 3\)",
     "rename"),
    ("a, b ,b,label", r"d.csv:2: the header names column 'b' twice \(columns 2 and 3\)", "rename"),
    # pandas' to_csv writes its index as a first column without a name
    (",a,b,label", r"d.csv:2: column 1 of the header has no name", "index=False"),
    ("a,,b,label", r"d.csv:2: column 2 of the header has no name", "name the column"),
    ("a,b,label,", r"d.csv:2: column 4 of the header has no name", "comma at the end"),
])
def test_csv_header_names_each_column_once(tmp_path, header, match, hint):
    n = len(header.split(","))
    (tmp_path / "d.csv").write_text("\n" + header + "\n" + ",".join(["1"] * n) + "\n")
    with pytest.raises(DataError, match=match) as e:
        load_dataset(tmp_path / "d.csv")
    assert hint in e.value.hint


def test_csv_val_table_header_names_each_column_once(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n")
    (tmp_path / "v.csv").write_text("a,a,label\n1,2,0\n")
    with pytest.raises(DataError, match=r"v.csv:1: the header names column 'a' twice"):
        load_dataset(tmp_path / "d.csv", val="v.csv")


def test_csv_not_utf8_names_its_line(tmp_path):
    """A Latin-1 file: the error gave a byte position inside a read buffer, not the line."""
    rows = ["a,label"] + [f"{i},0" for i in range(3000)]
    rows[2500] = "1,0 caf\xe9"
    (tmp_path / "l.csv").write_bytes("\n".join(rows).encode("latin-1"))
    with pytest.raises(DataError, match=r"l.csv:2501: byte 0xe9 is not UTF-8") as e:
        load_dataset(tmp_path / "l.csv")
    assert "UTF-8" in e.value.hint


@pytest.mark.parametrize("name", ["t.csv.gz", "t.txt"])
def test_a_file_of_another_kind_is_not_an_unknown_dataset(tmp_path, monkeypatch, name):
    """An existing file nnlang does not read (a gzipped table) was "unknown dataset", with
    the names of the built-in data sets as the hint."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(b"a,label\n1,0\n")
    with pytest.raises(DataError, match=rf"cannot read {name}: nnlang reads \.npz and \.csv "
                                        "files") as e:
        load_dataset(name)
    if name.endswith(".gz"):
        assert f"gunzip {name}" in e.value.hint
