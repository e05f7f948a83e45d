"""Dataset arrays -> model inputs (by name, by role, casts, reshapes, errors), the validation
carve, batching, and how flags and `--set` values override the train section."""
import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from nnlang.frontend.train_config import Choice, TrainConfig
from nnlang.train import feeds
from nnlang.train.overrides import apply_overrides, split_overrides

MLP = """
model Mlp {
  input image: float32[batch, 784]
  input label: int32[batch]
  logits = dense(image, 10)
  output logits
  loss cross_entropy(logits, label)
}
"""
ROLES = """
model Roles {
  input x: float32[batch, 6]
  input y: int32[batch]
  logits = dense(x, 2)
  output logits
  loss cross_entropy(logits, y)
}
"""


def graph(src):
    return nnlang.load(src).graph


def test_roles_follow_the_outputs():
    features, targets = feeds.input_roles(graph(ROLES))
    assert list(features) == ["x"] and list(targets) == ["y"]


def test_match_by_name_then_reshape_and_cast():
    g = graph(MLP)
    mapping = feeds.match_inputs(g, ["image"], ["label"])
    assert mapping == {"image": "image", "label": "label"}
    arrays = {"image": np.zeros((5, 1, 28, 28), np.float64), "label": np.ones(5, np.float32)}
    out = feeds.model_arrays(g, arrays, mapping)
    assert out["image"].shape == (5, 784) and out["image"].dtype == np.float32
    assert out["label"].dtype == np.int32


def test_match_by_role():
    assert feeds.match_inputs(graph(ROLES), ["tokens"], ["label"]) == {"x": "tokens",
                                                                        "y": "label"}
    # a name match takes its array first; the rest pair up by role
    assert feeds.match_inputs(graph(ROLES), ["a"], ["y"]) == {"x": "a", "y": "y"}


def test_unmatched_inputs_name_both_sides():
    with pytest.raises(NNError) as err:
        feeds.match_inputs(graph(ROLES), ["a", "b"], ["label"], "dataset 'pairs'")
    e = err.value
    assert "dataset 'pairs'" in e.message and "no array for x" in e.message
    assert "x: float32[batch, 6]" in e.hint and "a, b" in e.hint and "label" in e.hint


def test_an_array_named_in_another_case_is_named_as_the_close_match():
    # an .npz with 'Label' for the model's 'label': the error listed both sides and left the
    # reader to spot the capital
    with pytest.raises(NNError) as err:
        feeds.match_inputs(graph(MLP), ["image", "Label"], [], "dataset 'd'")
    assert "no array for label (did you mean 'Label'?" in err.value.message
    # and it points at the input's declaration (line 4 of MLP), not at nothing
    assert (err.value.span.line, err.value.span.col) == (4, 3)
    with pytest.raises(NNError) as err:
        feeds.match_inputs(graph(ROLES), ["a", "b"], ["label"], "dataset 'pairs'")
    assert "did you mean" not in err.value.message   # no guess where none is close


def test_shape_mismatch_names_both_sides():
    g = graph(MLP)
    with pytest.raises(NNError) as err:
        feeds.model_arrays(g, {"image": np.zeros((3, 1, 20, 20)), "label": np.zeros(3)},
                           {"image": "image", "label": "label"})
    assert "dataset array 'image' has shape [3, 1, 20, 20]" in err.value.message
    assert "model input 'image' is declared float32[batch, 784]" in err.value.message


def test_carve_takes_the_end_of_one_seeded_shuffle():
    arrays = {"x": np.arange(20), "y": np.arange(20) * 10}
    train, val = feeds.carve(arrays, 0.25, seed=3)
    assert len(train["x"]) == 15 and len(val["x"]) == 5
    assert sorted(np.concatenate([train["x"], val["x"]])) == list(range(20))
    np.testing.assert_array_equal(val["y"], val["x"] * 10)
    again = feeds.carve(arrays, 0.25, seed=3)[1]
    np.testing.assert_array_equal(again["x"], val["x"])
    assert not np.array_equal(feeds.carve(arrays, 0.25, seed=4)[1]["x"], val["x"])
    assert feeds.carve(arrays, 0.0, seed=3) == (arrays, {})
    # NOTE: any val_split > 0 asks for validation data: 20 x 0.01 rounds to no row, and an
    # empty validation set was carved without a word; 0.99 still leaves a row to train on
    for split in (0.01, 0.99):
        train, val = feeds.carve(arrays, split, seed=3)
        assert len(val["x"]) >= 1 and len(train["x"]) >= 1
        assert sorted(np.concatenate([train["x"], val["x"]])) == list(range(20))


def test_batches_drop_the_remainder_only_for_training():
    arrays = {"x": np.arange(10)}
    assert [len(b["x"]) for b in feeds.batches(arrays, 4)] == [4, 4]
    assert [len(b["x"]) for b in feeds.batches(arrays, 4, drop_last=False)] == [4, 4, 2]
    order = np.arange(10)[::-1]
    assert [list(b["x"]) for b in feeds.batches(arrays, 4, order, start=1)] == [[5, 4, 3, 2]]


def test_replace_data_keeps_the_options_the_new_dataset_accepts():
    imdb = Choice("imdb", {"vocab": 100, "maxlen": 20})
    assert feeds.replace_data(imdb, "imdb-sample") == Choice("imdb-sample", imdb.options)
    assert feeds.replace_data(imdb, "mnist-sample") == Choice("mnist-sample", {})
    assert feeds.replace_data(imdb, "imdb(maxlen=50)") == Choice("imdb", {"vocab": 100,
                                                                         "maxlen": 50})


def test_replace_data_with_another_table_drops_the_tables_beside_the_old_one(tmp_path):
    # `nnlang eval reg.nn -c RUN --data new.csv` evaluated the train section's test table
    # (regval.csv, beside reg.csv), not new.csv, and printed its numbers as new.csv's; from
    # another folder it failed on a regval.csv the user never named
    reg = Choice("reg.csv", {"target": "price", "val": "v.csv", "test": "t.csv"})
    assert feeds.replace_data(reg, "new.csv") == Choice("new.csv", {"target": "price"})
    assert feeds.replace_data(reg, "other/new.csv(test=nt.csv)") == \
        Choice("other/new.csv", {"target": "price", "test": "nt.csv"})
    # the same table: its tables stay (--data "reg.csv(target=y)" changes the target only)
    assert feeds.replace_data(reg, "reg.csv(target=y)") == Choice("reg.csv", {**reg.options,
                                                                            "target": "y"})


def test_a_set_option_of_another_optimizer_or_schedule_says_where_it_goes():
    """language.md: --set takes an optimizer's or a schedule's option by its name. On an adam
    run without a schedule, --set momentum=0.9 and --set gamma=0.5 were "unknown train
    setting", with a hint listing neither optimizer nor schedule."""
    cfg = TrainConfig()
    with pytest.raises(NNError, match="unknown train setting 'momentum'") as info:
        apply_overrides(cfg, {"momentum": 0.9})
    assert info.value.hint == ("'momentum' is an option of optimizer sgd, rmsprop, not of adam: "
                               "add --set optimizer=sgd")
    with pytest.raises(NNError) as info:
        apply_overrides(cfg, {"gamma": 0.5})
    assert info.value.hint == ("'gamma' is an option of schedule step, exponential (this run "
                               "has none): add --set schedule=step")
    with pytest.raises(NNError) as info:
        apply_overrides(cfg, {"zzz": 1})
    assert "optimizer, schedule" in info.value.hint


def test_flag_overrides():
    cfg = TrainConfig(optimizer=Choice("sgd", {"lr": 0.1, "momentum": 0.0}))
    new = apply_overrides(cfg, {"lr": 1, "momentum": 0.9, "epochs": 3.0, "clip_norm": 1})
    assert new.optimizer.options == {"lr": 1.0, "momentum": 0.9}
    assert (new.epochs, new.batch, new.clip_norm) == (3, cfg.batch, 1.0)
    # NOTE: a None is --set X=none: it switches an optional setting off, and is no batch size
    assert apply_overrides(new, {"clip_norm": None}).clip_norm is None
    with pytest.raises(NNError, match="'batch' must be a number, got none"):
        apply_overrides(cfg, {"batch": None})
    with pytest.raises(NNError, match="unknown train setting 'beta1'"):
        apply_overrides(cfg, {"beta1": 0.5})
    with pytest.raises(NNError, match="out of range"):
        apply_overrides(cfg, {"val_split": 1.5})
    assert apply_overrides(cfg, {"optimizer": "adam"}).optimizer.options["lr"] == 0.1


@pytest.mark.parametrize("spelled,guess", [("Adam", "adam"), ("SGD", "sgd"), ("adamm", "adam")])
def test_a_misspelt_optimizer_in_set_suggests_the_name(spelled, guess):
    """`--set optimizer=Adam(lr=0.1)` (Keras' class name) as the train section says it."""
    with pytest.raises(NNError) as err:
        apply_overrides(TrainConfig(), {"optimizer": f"{spelled}(lr=0.1)"})
    assert err.value.hint == f"did you mean '{guess}'?"


def test_set_values_split_between_model_and_training():
    src = "model M(hidden = 4, lr = 1) {\n input x: float32[batch, 2]\n}\n"
    hp, train = split_overrides({"hidden": 8, "lr": 2, "clip_norm": 1.0, "bogus": 1}, src, "m")
    assert hp == {"hidden": 8, "lr": 2, "bogus": 1}  # unknown names: the model reports them
    assert train == {"clip_norm": 1.0}


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_ids_outside_the_table_are_an_error_before_the_step(backend):
    """A token id past the embedding's rows would wrap silently in gather and write out of
    bounds in scatter_add; the error names the input and points at the embedding call."""
    text = """
model Emb {
  input tokens: int32[batch, 5]
  input label: int32[batch]
  e = embedding(tokens, 11, 4)
  logits = dense(flatten(e), 3)
  output logits
  loss cross_entropy(logits, label)
}
"""
    net = nnlang.compile(text, backend=backend, batch=2)
    tokens = np.arange(10, dtype=np.int32).reshape(2, 5)
    before = {k: v.copy() for k, v in net.parameters().items()}
    net.train_step({"tokens": tokens, "label": np.array([0, 2])})   # ids 0..9: fine
    trained = {k: v.copy() for k, v in net.parameters().items()}
    assert any(not np.array_equal(before[k], trained[k]) for k in before)
    for bad in (11, -1):
        tokens[1, 3] = bad
        with pytest.raises(NNError) as err:
            net.train_step({"tokens": tokens, "label": np.array([0, 2])})
        assert f"the id {bad}, outside the 11 values" in err.value.message
        assert err.value.span is not None and err.value.span.line == 5
        for k, v in net.parameters().items():   # nothing was updated
            np.testing.assert_array_equal(v, trained[k])
    with pytest.raises(NNError):
        net.forward({"tokens": tokens})


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_ids_computed_in_the_model_outside_the_table_are_a_located_error(backend):
    """Found by a fuzzer: ids the model computes are no input the call checks first; numba's
    gather wrapped them around to another row silently, the reference raised an IndexError."""
    text = """
model Emb(shift = 0) {
  input tokens: int32[batch, 5]
  input label: int32[batch]
  e = embedding(tokens + shift, 11, 4)
  logits = dense(flatten(e), 3)
  output logits
  loss cross_entropy(logits, label)
}
"""
    tokens = np.arange(10, dtype=np.int32).reshape(2, 5)
    net = nnlang.compile(text, backend=backend, batch=2, overrides={"shift": 1})
    net.train_step({"tokens": tokens, "label": np.array([0, 2])})   # ids 1..10: fine
    for shift, bad in ((2, 11), (-12, -12)):
        net = nnlang.compile(text, backend=backend, batch=2, overrides={"shift": shift})
        before = {k: v.copy() for k, v in net.parameters().items()}
        for call in (net.forward, net.train_step):
            with pytest.raises(NNError) as err:
                call({"tokens": tokens, "label": np.array([0, 2])})
            assert f"gather: index {bad} is out of bounds for axis 0 with size 11" in \
                err.value.message
            assert err.value.span is not None and err.value.span.line == 5
        for k, v in net.parameters().items():   # nothing was updated
            np.testing.assert_array_equal(v, before[k])


def test_labels_past_the_classes_are_an_error_not_a_zero_loss():
    """cross_entropy one-hot encodes int labels; label 10 of 10 classes would be a row of
    zeros, a sample that adds nothing to the loss."""
    net = nnlang.compile(MLP, backend="numba", batch=4)
    image = np.zeros((4, 784), np.float32)
    net.evaluate({"image": image, "label": np.array([0, 9, 3, 1])})
    with pytest.raises(NNError) as err:
        net.evaluate({"image": image, "label": np.array([0, 10, 3, 1])})
    assert "input 'label' holds the id 10, outside the 10 values" in err.value.message
    assert err.value.span is not None


COMPUTED_LABELS = """
model Computed(shift = 0) {
  input x: float32[batch, 4]
  input label: int32[batch]
  logits = dense(x, 5)
  t = label + shift
  output logits
  loss cross_entropy(logits, t, ignore_index = -100)
  metric acc = accuracy(logits, t, ignore_index = -100)
}
"""


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_labels_computed_in_the_model_past_the_classes_are_a_located_error(backend):
    """Labels the model computes (here label + shift) are no input checked before the call:
    one past the classes was a row of zeros in cross_entropy's one_hot and a miss in accuracy,
    silently, where PyTorch's cross_entropy raises "Target 5 is out of bounds". -100, the
    ignore_index, stays allowed and leaves its row out."""
    net = nnlang.compile(COMPUTED_LABELS, backend=backend, batch=3, overrides={"shift": 3})
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    got = net.evaluate({"x": x, "label": np.array([-103, 0, 1], np.int32)})  # t: -100, 3, 4
    p = net.parameters()
    w, bias = (p[k] for k in sorted(p, key=lambda k: p[k].ndim, reverse=True))
    z = x.astype(np.float64) @ w + bias
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    np.testing.assert_allclose(got["cross_entropy"], -(logp[1, 3] + logp[2, 4]) / 2, rtol=1e-5)
    assert got["acc"] == pytest.approx(np.mean(z[1:].argmax(-1) == [3, 4]))
    trained = {k: v.copy() for k, v in net.parameters().items()}
    for label, bad in (([0, 2, 1], 5), ([-4, 0, 1], -1)):
        for call in (net.evaluate, net.train_step):
            with pytest.raises(NNError) as err:
                call({"x": x, "label": np.array(label, np.int32)})
            assert f"cross_entropy: the id {bad} is outside the 5 classes" in err.value.message
            assert err.value.span is not None and err.value.span.line == 8
        for k, v in net.parameters().items():   # nothing was updated
            np.testing.assert_array_equal(v, trained[k])
    alone = COMPUTED_LABELS.replace("cross_entropy(logits, t, ignore_index = -100)",
                                    "mean(logits * logits)")
    net = nnlang.compile(alone, backend=backend, batch=3, overrides={"shift": 3})
    with pytest.raises(NNError) as err:
        net.evaluate({"x": x, "label": np.array([0, 2, 1], np.int32)})
    assert "accuracy: the id 5 is outside the 5 classes" in err.value.message
    assert err.value.span.line == 9


FLOAT_LABELS = """
model M {
  input x: float32[batch, 4]
  input label: float32[batch]
  logits = dense(x, 5)
  output logits
  loss cross_entropy(logits, cast(label, dtype = "int32"))
  metric acc = accuracy(logits, cast(label, dtype = "int32"))
}
"""


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_labels_cast_from_a_float_input_are_checked_as_the_ids_the_cast_gives(backend):
    """A float input cast to int ids is no fed id: the cast changes its values (5.5 -> 5,
    -0.5 -> 0, NaN -> an arbitrary int). Fold dropped the graph's check of such ids as fed,
    and the check before the call read the floats: a NaN label (neither < 0 nor >= 5) went
    through to one_hot as a row of zeros, silently, and -0.5, which the cast makes class 0,
    was refused as 'the id 0'. The ids the cast gives are checked, as for any id the model
    computes."""
    net = nnlang.compile(FLOAT_LABELS, backend=backend, batch=3)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    p = net.parameters()
    w, bias = (p[k] for k in sorted(p, key=lambda k: p[k].ndim, reverse=True))
    z = x.astype(np.float64) @ w + bias
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    got = net.evaluate({"x": x, "label": np.array([-0.5, 2.7, 4.0], np.float32)})  # 0, 2, 4
    np.testing.assert_allclose(got["cross_entropy"], -(logp[0, 0] + logp[1, 2] + logp[2, 4]) / 3,
                               rtol=1e-5)
    assert got["acc"] == pytest.approx(np.mean(z.argmax(-1) == [0, 2, 4]))
    for label in ([0.0, 5.5, 1.0], [0.0, np.nan, 1.0]):
        with pytest.raises(NNError) as err:
            net.evaluate({"x": x, "label": np.array(label, np.float32)})
        assert "is outside the 5 classes" in err.value.message
        assert err.value.span is not None and err.value.span.line == 7


COLUMN_LABELS = """
model M {
  input x: float32[batch, 4]
  input t: int32[batch, 2]
  logits = dense(x, 5)
  output logits
  loss cross_entropy(logits, t[:, 1])
  metric acc = accuracy(logits, t[:, 1])
}
"""


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_only_the_slice_of_a_fed_input_that_reaches_the_loss_is_checked(backend, tmp_path):
    """The labels are column 1 of a fed table whose column 0 holds big values the loss never
    reads (as torch's cross_entropy(z, t[:, 1]) never sees them). The whole table was checked
    against the 5 classes: a false refusal, at the step and before training. A bad label in
    the column is still the located error, naming the dataset's row."""
    from nnlang.data import load_dataset
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    t = np.array([[100, 1], [-200, 4], [300, 0]], np.int32)
    net = nnlang.compile(COLUMN_LABELS, backend=backend, batch=3)
    p = net.parameters()
    w, bias = (p[k] for k in sorted(p, key=lambda k: p[k].ndim, reverse=True))
    z = x.astype(np.float64) @ w + bias
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    got = net.evaluate({"x": x, "t": t})
    np.testing.assert_allclose(got["cross_entropy"], -logp[[0, 1, 2], [1, 4, 0]].mean(),
                               rtol=1e-5)
    assert got["acc"] == pytest.approx(np.mean(z.argmax(-1) == [1, 4, 0]))
    net.train_step({"x": x, "t": t})
    with pytest.raises(NNError) as err:
        net.evaluate({"x": x, "t": np.array([[0, 1], [0, 5], [0, 0]], np.int32)})
    assert "input 't' holds the id 5, outside the 5 values" in err.value.message
    assert err.value.span is not None and err.value.span.line in (7, 8)
    graph = nnlang.load(COLUMN_LABELS).graph
    for rows, bad in ((t, None), (np.array([[0, 1], [0, 2], [7, 9]], np.int32), 9)):
        np.savez(tmp_path / "d.npz", train_x=x, train_t=rows)
        ds = load_dataset(tmp_path / "d.npz")
        mapping = feeds.match_inputs(graph, ds.inputs, ds.targets)
        if bad is None:
            feeds.check_ids(graph, ds, mapping)
            continue
        with pytest.raises(NNError) as err:
            feeds.check_ids(graph, ds, mapping)
        assert "array 't', row 2: the id 9 is outside the 5 values" in err.value.message


def test_a_bad_table_row_is_named_by_its_line_in_the_file(tmp_path):
    """A .csv table's bad value was said as "row 7": the array's row, counted from 0 after
    the header and any blank lines, which is not where an editor shows it. The line is said."""
    import csv
    from nnlang.data import load_dataset
    lines = ["", "a,b,label", "0.1,0.2,0", "", "0.3,0.4,1", '"0.5",0.6,2', "0.7,0.8,1"]
    program = nnlang.load(ROLES.replace("float32[batch, 6]", "float32[batch, 2]"))
    graph = program.graph
    for bad, message in (("2", "the id 2 is outside"), ("0.5", "0.5 is not a whole number")):
        text = lines[:5] + [f'"0.5",0.6,{bad}'] + lines[6:]
        (tmp_path / "t.csv").write_text("\r\n".join(text) + "\r\n")
        # the reference: the csv module's own line count at the row whose label is bad
        with open(tmp_path / "t.csv", newline="") as f:
            reader = csv.reader(f)
            line = next(reader.line_num for row in reader if row and row[-1] == bad)
        assert line == 6
        ds = load_dataset(tmp_path / "t.csv")
        mapping = feeds.match_inputs(graph, ds.inputs, ds.targets)
        with pytest.raises(NNError) as err:
            feeds.train_and_val(graph, ds, mapping, 0.0, 0)
            feeds.check_ids(graph, ds, mapping)
        assert f"t.csv (train split), array 'label', row 2 (line {line}): " in err.value.message
        assert message in err.value.message
