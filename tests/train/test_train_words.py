"""A text model's embedding rows stand for the words of the data it was trained on: evaluating
it on (or fine-tuning it with) text encodes that text with the checkpoint's vocabulary, never
with one built from the new data's own train split (the ids would then name other rows)."""
import numpy as np
import pytest

from nnlang.data import load_dataset
from nnlang.data.tokenize import OOV_ID, PAD_ID
from nnlang.train import checkpoint
from nnlang.train.inference import evaluate_checkpoint
from nnlang.train.trainer import fit

SOURCE = """
model Small(vocab = 300, maxlen = 40) {
  input tokens: int32[batch, maxlen]
  input label: float32[batch]
  x = embedding(tokens, vocab, 8)
  h = lstm(x, 8)
  logit = dense(h, 1) |> squeeze(axis = -1)
  loss bce_with_logits(logit, label)
  metric acc = binary_accuracy(sigmoid(logit), label)
}
train Small {
  data = imdb_sample(vocab = vocab, maxlen = maxlen)
  optimizer = adam(lr = 1e-2)
  batch = 50
  epochs = 1
}
"""


def _reordered(words: list[str]) -> list[int]:
    """A vocabulary order another training run could have found: the words reversed, the
    padding and out-of-vocabulary ids kept."""
    assert words[PAD_ID] and words[OOV_ID] and {PAD_ID, OOV_ID} == {0, 1}
    return [0, 1, *range(len(words) - 1, 1, -1)]


def test_a_text_data_set_encodes_with_the_words_it_is_given():
    own = load_dataset("imdb-sample", vocab=300, maxlen=40)
    words = own.meta["vocab"]
    order = _reordered(words)
    given = [words[i] for i in order]
    ds = load_dataset("imdb-sample", vocab=300, maxlen=40, words=given)
    assert ds.meta["vocab"] == given
    # the same reviews, each word under its position in `given` (numpy written separately)
    new_id = np.empty(len(words), np.int64)
    new_id[order] = np.arange(len(words))
    np.testing.assert_array_equal(ds.test.arrays["tokens"], new_id[own.test.arrays["tokens"]])
    assert not np.array_equal(ds.test.arrays["tokens"], own.test.arrays["tokens"])


@pytest.mark.slow
def test_eval_uses_the_checkpoint_words(tmp_path, monkeypatch):
    """A checkpoint whose vocabulary and embedding rows are reordered together is the same
    model: `eval --data` scores it exactly as the original."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.nn").write_text(SOURCE)
    fit("small.nn", out=tmp_path / "run", progress=False)
    ck = checkpoint.load(tmp_path / "run")
    words = ck.data_meta["vocab"]
    order = _reordered(words)
    state = dict(ck.state)
    emb = state["x.weight"].copy()
    emb[:len(words)] = emb[order]
    state["x.weight"] = emb
    meta = dict(ck.meta)
    meta["data"] = {**meta["data"], "meta": {**ck.data_meta,
                                             "vocab": [words[i] for i in order]}}
    checkpoint.save(tmp_path / "moved.npz", state, meta)
    _, want = evaluate_checkpoint("small.nn", tmp_path / "run", data="imdb-sample")
    _, got = evaluate_checkpoint("small.nn", tmp_path / "moved.npz", data="imdb-sample")
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["acc"] == want["acc"]
    # fine-tuning from it encodes the data with its words too, and the new run keeps them
    fit("small.nn", out=tmp_path / "tuned", init_from=tmp_path / "moved.npz", max_steps=1,
        progress=False)
    assert checkpoint.load(tmp_path / "tuned").data_meta["vocab"] == [words[i] for i in order]
