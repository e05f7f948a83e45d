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
    ({"target": "rooms", "val": "frac.csv"}, ["frac.csv", "column 'rooms' has fractions"]),
])
def test_bad_split_tables(tables, options, words):
    (tables / "other.csv").write_text("area,price\n1,2\n")
    (tables / "frac.csv").write_text(HEAD + "60,2.5,170\n")
    with pytest.raises(DataError) as info:
        load_dataset(tables / "train.csv", **{"target": "price", **options})
    text = str(info.value.render() if hasattr(info.value, "render") else info.value)
    for w in words:
        assert w in text, text
