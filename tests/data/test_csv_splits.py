"""A .csv data set's own validation and test tables (`csv("t.csv", val = ..., test = ...)`):
loaded as those splits, used by training instead of val_split, and bad ones refused."""
from __future__ import annotations

import numpy as np
import pytest

from nnlang.data import load_dataset
from nnlang.data.cache import DataError

HEAD = "area,rooms,price\n"


@pytest.fixture
def tables(tmp_path):
    (tmp_path / "train.csv").write_text(HEAD + "50,2,150.5\n72,3,210\n95,4,280.25\n120,5,330\n")
    (tmp_path / "val.csv").write_text(HEAD + "60,2,170\n")
    (tmp_path / "test.csv").write_text(HEAD + "80,3,230\n100,4,290\n")
    return tmp_path


def test_val_and_test_tables_are_their_splits(tables):
    ds = load_dataset(tables / "train.csv", target="price", val="val.csv", test="test.csv")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 1, 2)
    np.testing.assert_array_equal(ds.val["x"], [[60, 2]])
    np.testing.assert_array_equal(ds.test["label"], np.array([230, 290], np.float32))
    assert ds.val["label"].dtype == ds.train["label"].dtype == np.float32


def test_trainer_validates_on_the_val_table(tables):
    from nnlang.train import feeds
    import nnlang
    program = nnlang.load("""
model Price {
  input x: float32[batch, 2]
  input label: float32[batch]
  p = squeeze(dense(x, 1), axis = 1)
  output p
  loss mse(p, label)
}""")
    ds = load_dataset(tables / "train.csv", target="price", val="val.csv")
    mapping = feeds.match_inputs(program.graph, ds.inputs, ds.targets)
    train, val = feeds.train_and_val(program.graph, ds, mapping, 0.5, 0)
    assert len(train["x"]) == 4 and val["label"].tolist() == [170.0]  # no carve of train


@pytest.mark.parametrize("options, words", [
    ({"val": "missing.csv"}, ["the val table", "missing.csv", "does not exist"]),
    ({"test": "other.csv"}, ["other.csv", "columns", "differ"]),
    ({"val": 3}, ["option val=3 must name a .csv file"]),
])
def test_bad_split_tables(tables, options, words):
    (tables / "other.csv").write_text("area,price\n1,2\n")
    with pytest.raises(DataError) as info:
        load_dataset(tables / "train.csv", **{"target": "price", **options})
    text = str(info.value.render() if hasattr(info.value, "render") else info.value)
    for w in words:
        assert w in text, text


def test_whole_training_targets_and_a_fraction_in_another_table(tables):
    """Whole prices in the training table and 170.5 in the validation one is a regression
    (the model's float32 label says so): it was refused because the training table's whole
    numbers were taken for classes. The tables' targets are float32 together, and a model
    that takes class ids still refuses the fraction, naming the table and row."""
    import nnlang
    from nnlang.errors import NNError
    from nnlang.train import feeds
    (tables / "whole.csv").write_text(HEAD + "50,2,150\n72,3,210\n95,4,280\n")
    (tables / "frac.csv").write_text(HEAD + "60,2,170\n61,2,170.5\n")
    ds = load_dataset(tables / "whole.csv", target="price", val="frac.csv")
    assert ds.train["label"].dtype == ds.val["label"].dtype == np.float32
    np.testing.assert_array_equal(ds.val["label"], [170, 170.5])
    np.testing.assert_array_equal(ds.train["label"], [150, 210, 280])
    for dtype, loss in (("float32", "mse(p, label)"),
                        ("int32", 'mse(p, cast(label, dtype = "float32"))')):
        program = nnlang.load(f"""
model Price {{
  input x: float32[batch, 2]
  input label: {dtype}[batch]
  p = squeeze(dense(x, 1), axis = 1)
  output p
  loss {loss}
}}""")
        mapping = feeds.match_inputs(program.graph, ds.inputs, ds.targets)
        if dtype == "float32":
            _, val = feeds.train_and_val(program.graph, ds, mapping, 0.0, 0)
            assert val["label"].tolist() == [170.0, 170.5]
        else:
            with pytest.raises(NNError, match=r"frac.csv \(val split\), array 'label', "
                                              r"row 1 \(line 3\): 170.5 is not a whole number"):
                feeds.train_and_val(program.graph, ds, mapping, 0.0, 0)
