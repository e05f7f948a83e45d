"""An LSTM whose time dim is a `symbol` (issue 15): one compiled net trains at several lengths
with the values and parameter updates of fresh nets declared at each length, and a padding mask
(`tokens != 0`, pads at the front) keeps a padded review's state as if it were unpadded.
"""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from tests.symbolic_lengths import assert_fresh_nets_agree

SOURCE = """
model Rec(vocab = 30) {
  symbol seq
  input tokens: int32[batch, seq]
  input label: float32[batch]
  mask = tokens != 0
  x = embedding(tokens, vocab, 5)
  h = lstm(x, 4, mask = mask)
  g = gru(x, 3, return_sequences = true, mask = mask) |> sum(axis = 1)
  y = dense(concat(h, g, axis = -1), 1) |> squeeze(axis = -1)
  output out = y
  loss mse(y, label)
}
train Rec {
  optimizer = sgd(lr = 0.5)
  batch = 3
}
"""
LENGTHS = (6, 11, 3)


def concrete(n: int) -> str:
    return SOURCE.replace("  symbol seq\n", "").replace("seq]", f"{n}]")


def feeds(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 30, (3, n)).astype(np.int32)
    tokens[0, :n // 2] = 0  # a padded front, as the loaders pad
    return {"tokens": tokens, "label": rng.normal(size=3).astype(np.float32)}


@pytest.mark.parametrize("backend", ["reference", pytest.param("numba", marks=pytest.mark.slow)])
def test_one_lstm_net_runs_every_length_as_fresh_nets(backend):
    net = nnlang.compile(SOURCE, seed=3, backend=backend)
    got = {}
    for k, n in enumerate(LENGTHS):
        loss = net.train_step(feeds(n, k))
        got[n] = (loss, net.forward(feeds(n, 10 + k))["out"], net.parameters())
    # plain SGD: equal parameters after the step mean equal gradients
    assert_fresh_nets_agree(concrete, LENGTHS, feeds, got, seed=3, backend=backend)


def test_front_padding_does_not_move_the_state():
    """A review padded at the front gives the unpadded review's output: the masked lstm keeps
    its zero state through the pads (the gru's summed sequence repeats the zero state too)."""
    net = nnlang.compile(SOURCE, seed=1, backend="reference")
    review = np.array([[4, 9, 2, 17]], np.int32)
    padded = np.concatenate([np.zeros((1, 5), np.int32), review], axis=1)
    np.testing.assert_allclose(net.forward({"tokens": padded})["out"],
                               net.forward({"tokens": review})["out"], rtol=1e-6, atol=1e-7)
    # without a mask the pads do move it: the check above can fail
    plain = nnlang.compile(SOURCE.replace(", mask = mask", ""), seed=1, backend="reference")
    assert not np.allclose(plain.forward({"tokens": padded})["out"],
                           plain.forward({"tokens": review})["out"], atol=1e-6)


def test_return_state_with_the_sequence_on_a_symbolic_length_is_refused():
    src = SOURCE.replace("h = lstm(x, 4, mask = mask)",
                         "s, h, c = lstm(x, 4, return_sequences = true, return_state = true)")
    with pytest.raises(NNError, match="return_state with return_sequences = true needs a "
                                      "numeric time dim"):
        nnlang.compile(src, backend="reference")


@pytest.mark.slow  # ~15 s of CPU: the reference backend runs whole reviews step by step
def test_lstm_full_trains_on_whole_reviews(tmp_path):
    """models/lstm_full.nn (shrunk) trains on `imdb-sample` at `maxlen = none`: bucketed
    batches of whole reviews, each its own length, through one net with a symbolic length."""
    import json

    from tests.faults.conftest import cli
    from tests.regen import MODELS
    cli("train", str(MODELS / "lstm_full.nn"), "--data", "imdb-sample", "--max-steps", "3",
        "--set", "embed=4", "--set", "units=3", "--set", "vocab=200", "--batch", "4",
        "--backend", "reference", "--out", str(tmp_path / "run"), code=0)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
            if x]
    assert rows and rows[0]["step"] == 3 and np.isfinite(rows[0]["train_loss"])


def test_masked_lstm_gradients_agree_with_the_reference_every_call():
    """A masked LSTM's backward loop at a batch the loops split into parts (32 rows, two
    threads) gives the reference backend's gradients on every call: a version that split it
    by rows raced, and gave a different, wrong answer one call in a few (found by a tester)."""
    source = """
model M {
  symbol seq
  input tokens: int32[batch, seq]
  input label: float32[batch]
  x = embedding(tokens, 50, 8)
  h = lstm(x, 8, mask = tokens != 0)
  logit = dense(h, 1) |> squeeze(axis = -1)
  loss bce_with_logits(logit, label)
}
"""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, size=(32, 160)).astype(np.int32)
    for row in tokens:
        row[:rng.integers(0, 159)] = 0    # front padding of every length
    feeds = {"tokens": tokens, "label": rng.integers(0, 2, 32).astype(np.float32)}
    want = nnlang.compile(source, backend="reference", batch=32, seed=0).gradients(feeds)
    net = nnlang.compile(source, backend="numba", batch=32, seed=0)
    for _ in range(6):
        got = net.gradients(feeds)
        for k, g in want.items():
            np.testing.assert_allclose(got[k], g, rtol=2e-4, atol=2e-5 * np.abs(g).max(),
                                       err_msg=k)
