"""Variable-length rows (`imdb(maxlen = none)`): `Ragged` indexing and padding, the bucketed
epoch order (a permutation, batches of similar lengths, fixed by the seed), IMDB whole reviews,
and training on them with a `symbol` length, resumed exactly."""
from __future__ import annotations

import numpy as np
import pytest

from nnlang.data.dataset import Dataset, Split
from nnlang.data.ragged import Ragged, padded_length
from nnlang.errors import NNError
from nnlang.train import feeds
from nnlang.train.trainer import fit


def random_rows(n: int, seed: int = 0, longest: int = 60) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, 50, rng.integers(1, longest))) for _ in range(n)]


def test_padded_length_ladder():
    assert [padded_length(n) for n in (1, 16, 17, 128, 129, 256, 257, 2500)] == \
        [16, 16, 32, 128, 160, 256, 320, 2560]
    sizes = {padded_length(n) for n in range(1, 2501)}
    assert len(sizes) <= 26 and all(padded_length(n) < 1.25 * n + 16 for n in range(1, 3000))


def test_ragged_rows_index_and_pad_like_lists():
    rows = random_rows(30)
    r = Ragged.from_rows(rows)
    pick = np.array([7, 3, 3, 29])
    sub = r[pick]
    assert [sub.row(i).tolist() for i in range(len(sub))] == [rows[i] for i in pick]
    dense = sub.padded()
    assert dense.shape == (4, padded_length(max(len(rows[i]) for i in pick)))
    for i, k in enumerate(pick):  # front padding, as the fixed-length tokenizer pads
        n = len(rows[k])
        assert dense[i, dense.shape[1] - n:].tolist() == rows[k]
        assert not dense[i, :dense.shape[1] - n].any()


def test_bucketed_order_is_a_seeded_permutation_of_similar_lengths():
    arrays = {"tokens": Ragged.from_rows(random_rows(1000, longest=400)),
              "label": np.zeros(1000, np.float32)}
    lengths = arrays["tokens"].lengths
    order = feeds.epoch_order(arrays, 16, feeds.order_rng(3))
    assert sorted(order) == list(range(1000))
    np.testing.assert_array_equal(order, feeds.epoch_order(arrays, 16, feeds.order_rng(3)))
    assert not np.array_equal(order, feeds.epoch_order(arrays, 16, feeds.order_rng(4)))

    def padding(order):
        full = order[:len(order) // 16 * 16].reshape(-1, 16)
        return sum(padded_length(lengths[b].max()) * 16 - lengths[b].sum() for b in full)
    random = np.random.default_rng(0).permutation(1000)
    assert padding(order) < 0.2 * padding(random)
    batch_max = [lengths[b].max() for b in order[:992].reshape(-1, 16)]
    assert batch_max != sorted(batch_max), "the batches must run in shuffled order"


def test_bucketed_batches_run_in_shuffled_order_within_a_chunk():
    """epoch_order sorts each chunk of BUCKET_BATCHES batches by length, then runs the full
    batches in shuffled order. With two chunks (the test above) the batches' longest rows fell
    twice, so leaving the batches in sorted order passed it; in one chunk, unshuffled batches
    run shortest first every epoch. A shuffled order has about half its steps falling."""
    arrays = {"tokens": Ragged.from_rows(random_rows(640, longest=400)),
              "label": np.zeros(640, np.float32)}
    lengths = arrays["tokens"].lengths
    assert 640 <= 16 * feeds.BUCKET_BATCHES   # one chunk
    rng = feeds.order_rng(0)
    for _ in range(3):   # epochs
        order = feeds.epoch_order(arrays, 16, rng)
        assert sorted(order) == list(range(640))
        longest = lengths[order].reshape(-1, 16).max(axis=1)
        assert np.sum(np.diff(longest) < 0) > 10


def test_the_examples_an_epoch_drops_are_not_the_longest():
    """The partial batch left over is drawn at random: sorted first, it was the longest rows of
    the last chunk, and the longest reviews missed about one epoch in ten."""
    rows = random_rows(1000, longest=400)
    lengths = np.array([len(r) for r in rows])
    arrays = {"tokens": Ragged.from_rows(rows), "label": np.zeros(1000, np.float32)}
    rng = feeds.order_rng(5)
    dropped = np.concatenate([feeds.epoch_order(arrays, 64, rng)[-(1000 % 64):]
                              for _ in range(200)])
    longest = np.argsort(lengths)[-50:]
    # NOTE: 40 of 1,000 dropped an epoch: 4% of the drops are expected among the 50 longest
    assert np.isin(dropped, longest).mean() < 0.1
    assert abs(lengths[dropped].mean() - lengths.mean()) < 0.1 * lengths.mean()


def test_fixed_length_order_is_the_plain_permutation():
    arrays = {"x": np.zeros((50, 3)), "label": np.zeros(50)}
    np.testing.assert_array_equal(feeds.epoch_order(arrays, 8, feeds.order_rng(1)),
                                  feeds.order_rng(1).permutation(50))


def test_imdb_whole_reviews_end_like_the_fixed_length_rows():
    from nnlang.data import load_dataset
    whole = load_dataset("imdb-sample", maxlen=None)
    cut = load_dataset("imdb-sample", maxlen=100)
    tokens = whole.train["tokens"]
    assert isinstance(tokens, Ragged) and len(tokens) == len(cut.train["tokens"])
    assert tokens.lengths.max() > 1000  # whole reviews, not cut
    for i in (0, 5, 1234):
        np.testing.assert_array_equal(tokens.row(i)[-100:], cut.train["tokens"][i][-100:]
                                      [-len(tokens.row(i)):])
    batch = whole.encode(["a great film", "bad"])["tokens"]
    assert batch.shape == (2, 16) and (batch[:, -1] != 0).all()


SOURCE = """
model Bag {
  symbol seq
  input tokens: int32[batch, seq]
  input label: float32[batch]
  keep = cast(tokens != 0, dtype = "float32") |> unsqueeze(axis = -1)
  x = embedding(tokens, 50, 4)
  pooled = sum(x * keep, axis = 1) / maximum(sum(keep, axis = 1), 1.0)
  logit = dense(pooled, 1) |> squeeze(axis = -1)
  loss bce_with_logits(logit, label)
}
train Bag {
  optimizer = adam(lr = 0.01)
  batch = 8
  epochs = 2
  val_split = 0
}
"""


def ragged_dataset() -> Dataset:
    rows = random_rows(60, seed=1)
    label = np.array([r[-1] % 2 for r in rows], np.float32)
    split = Split({"tokens": Ragged.from_rows(rows), "label": label})
    return Dataset("bag", split, Split({"tokens": Ragged.from_rows(rows[:10]),
                                        "label": label[:10]}), ["tokens"], ["label"])


def test_training_on_whole_rows_resumes_exactly(tmp_path):
    kw = dict(data=ragged_dataset(), backend="reference", progress=False)
    whole = fit(SOURCE, out=tmp_path / "whole", **kw)
    assert whole.test is not None
    fit(SOURCE, out=tmp_path / "half", max_steps=4, **kw)  # stops inside epoch 1
    resumed = fit(SOURCE, out=tmp_path / "half", resume=True, **kw)
    for k, v in whole.net.state_dict().items():
        np.testing.assert_array_equal(resumed.net.state_dict()[k], v, err_msg=k)


def test_whole_rows_need_a_symbolic_length():
    with pytest.raises(NNError, match="(?s)rows of different lengths .* declare its length "
                                      "as a symbol") as err:
        fit(SOURCE.replace("  symbol seq\n", "").replace("[batch, seq]", "[batch, 64]"),
            data=ragged_dataset(), backend="reference", progress=False, save=False)
    # NOTE: it named no line: the input declaration is what the hint asks to change
    span = err.value.diagnostics[0].span
    assert span is not None and (span.line, span.col) == (3, 3), span


TAIL = """
model Tail {
  symbol seq
  input tokens: int32[batch, seq]
  input label: int32[batch]
  x = embedding(tokens[:, -5:], 20, 4)
  logits = dense(flatten(x), 3)
  output logits
  loss cross_entropy(logits, label)
}
"""


def test_ids_a_part_of_whole_rows_reads_are_checked_before_training_naming_the_row():
    """Whole rows of which only the last 5 tokens reach the embedding: the check before
    training skipped such a partial read of ragged rows (the step's check named no data row,
    and saw the test split only after the last epoch). Each row's read part depends on its
    length; the reference is numpy's own last 5 of each row (all of a shorter one)."""
    import nnlang
    graph = nnlang.load(TAIL).graph
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(1, 20, n)) for n in rng.integers(1, 40, 30)]
    long, short = (next(i for i, r in enumerate(rows) if cond(len(r)))
                   for cond in (lambda n: n > 20, lambda n: n < 5))
    label = np.zeros(30, np.int32)

    def check(rows, test_rows=rows):
        ds = Dataset("tail", Split({"tokens": Ragged.from_rows(rows), "label": label}),
                     Split({"tokens": Ragged.from_rows(test_rows), "label": label}),
                     ["tokens"], ["label"])
        feeds.check_ids(graph, ds, feeds.match_inputs(graph, ds.inputs, ds.targets))

    def first_bad(rows):   # the reference: the first row whose last 5 tokens hold an id >= 20
        return next(i for i, r in enumerate(rows) if max(r[-5:]) >= 20)

    head = [list(r) for r in rows]
    head[long][0] = 99   # never read: the embedding sees the last 5 tokens only
    check(head)
    for i, place in ((long, -2), (short, 0)):
        bad = [list(r) for r in rows]
        bad[i][place] = 25
        assert first_bad(bad) == i
        for train, test, split in ((bad, rows, "train"), (rows, bad, "test")):
            with pytest.raises(NNError) as err:
                check(train, test)
            assert f"dataset 'tail' ({split} split), array 'tokens', row {i}: the id 25 " \
                   "is outside the 20 values" in err.value.message
            assert err.value.span is not None and err.value.span.line == 6


TWO = """
model Two {
  symbol a
  symbol b
  input q: int32[batch, a]
  input d: int32[batch, b]
  input label: float32[batch]
  x = sum(embedding(q, 20, 4), axis = 1)
  y = sum(embedding(d[:, -3:], 30, 4), axis = 1)
  logit = dense(x + y, 1) |> squeeze(axis = -1)
  loss bce_with_logits(logit, label)
}
"""


def test_two_ragged_inputs_are_checked_with_a_graph_per_length_of_each_not_per_pair(
        monkeypatch):
    """Two ragged inputs: the check built the graph at every pair of padded lengths (here 1 + 16
    x 16 pairs at most; 304 for rows of 1-700 tokens, 17 s on a small Transformer). A check of
    one input depends on its own length: two graphs per length of each input suffice. The ids
    found are those numpy finds (all of q below 20; the last 3 of d below 30)."""
    import nnlang
    from nnlang.passes import pipeline
    graph = nnlang.load(TWO).graph
    rng = np.random.default_rng(0)
    q = [list(rng.integers(1, 20, n)) for n in rng.integers(1, 250, 200)]
    d = [list(rng.integers(1, 30, n)) for n in rng.integers(1, 250, 200)]
    built = []
    real = pipeline.forward_graph
    monkeypatch.setattr(pipeline, "forward_graph", lambda *a, **k: built.append(1) or
                        real(*a, **k))

    def check(q, d):
        ds = Dataset("two", Split({"q": Ragged.from_rows(q), "d": Ragged.from_rows(d),
                                   "label": np.zeros(200, np.float32)}), None, ["q", "d"],
                     ["label"])
        feeds.check_ids(graph, ds, feeds.match_inputs(graph, ds.inputs, ds.targets))
    check(q, d)
    lengths = [{padded_length(len(r)) for r in rows} for rows in (q, d)]
    pairs = {(padded_length(len(a)), padded_length(len(b))) for a, b in zip(q, d)}
    assert len(built) <= 1 + 2 * sum(map(len, lengths)) < len(pairs)
    long = next(i for i, r in enumerate(d) if len(r) > 10)
    for rows, i, place, message in ((d, long, 0, None), (d, long, -2, f"array 'd', row {long}:"),
                                    (q, 7, 0, "array 'q', row 7:")):
        bad = [list(r) for r in rows]
        bad[i][place] = 40
        if message is None:   # never read: d's embedding sees its last 3 tokens only
            check(q, bad)
            continue
        with pytest.raises(NNError, match=message):
            check(bad, d) if rows is q else check(q, bad)

