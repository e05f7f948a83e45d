"""Tokenizer, vocabulary and padding rules (nnlang/data/tokenize.py) on hand-written inputs."""
import tarfile

import numpy as np
import pytest

from nnlang.data import DataError, load_dataset
from nnlang.data.tokenize import OOV_ID, PAD_ID, build_vocab, encode, tokenize


@pytest.mark.parametrize("text, tokens", [
    ("Great film!", ["great", "film", "!"]),
    ("I didn't like it.<br /><br />Really?!",
     ["i", "didn't", "like", "it", ".", "really", "?", "!"]),
    ("one<br>two<br/>three<BR />four", ["one", "two", "three", "four"]),
    ("A 10/10 movie...", ["a", "10", "/", "10", "movie", ".", ".", "."]),
    ("Don\u2019t say 'no'", ["don't", "say", "'", "no", "'"]),
    ("Clichéd CAFÉ", ["clichéd", "café"]),
    ("  ", []),
])
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


def test_vocab_order_counts_then_word():
    docs = [["b", "a", "c"], ["c", "b", "d"], ["c"]]
    assert build_vocab(docs, 10) == ["<pad>", "<oov>", "c", "b", "a", "d"]  # a/b tie broken by word
    assert build_vocab(docs, 4) == ["<pad>", "<oov>", "c", "b"]            # ids < vocab
    assert build_vocab(reversed(docs), 10) == build_vocab(docs, 10)
    with pytest.raises(DataError):
        build_vocab(docs, 2)


def test_encode_pads_front_and_keeps_end():
    ids = {"<pad>": 0, "<oov>": 1, "a": 2, "b": 3}
    out = encode([["a", "b"], ["a", "x", "b", "b", "a"], []], ids, maxlen=3)
    assert out.dtype == np.int32
    assert out.tolist() == [[PAD_ID, 2, 3], [3, 3, 2], [0, 0, 0]]
    assert encode(["A x!"], ids, 4).tolist() == [[0, 2, OOV_ID, OOV_ID]]


def test_tiny_imdb_vocab_is_from_train_only(tiny_imdb, load_tiny):
    ds = load_tiny(tiny_imdb, vocab=50, maxlen=6)
    assert len(ds.train) == 4 and len(ds.test) == 2
    assert "zanzibar" not in ds.meta["vocab"] and "unsupervised" not in ds.meta["vocab"]
    assert ds.meta["vocab"][:4] == ["<pad>", "<oov>", ".", "great"]  # 5 and 4 times in train
    # Order is (split, label, id): neg before pos.
    assert ds.train["label"].tolist() == [0, 0, 1, 1] and ds.test["label"].tolist() == [0, 1]
    words = {w: i for i, w in enumerate(ds.meta["vocab"])}
    great_film = [0, words["great"], words["film"], words[","], OOV_ID, words["!"]]
    assert ds.test["tokens"][1].tolist() == great_film
    # "A great cast, a great story!" has 8 tokens: the last 6 are kept.
    kept = ["a", "great", "story", "!"]
    assert ds.train["tokens"][3][-4:].tolist() == [words[w] for w in kept]
    assert ds.encode("great zanzibar")["tokens"].tolist() == [[0, 0, 0, 0, words["great"], 1]]


def test_extracted_folder_matches_tarball(tiny_imdb, tmp_path, load_tiny):
    with tarfile.open(tiny_imdb / "imdb" / "aclImdb_v1.tar.gz") as tar:
        tar.extractall(tmp_path / "x" / "imdb", filter="data")
    a = load_tiny(tiny_imdb, vocab=50, maxlen=6)
    b = load_tiny(tmp_path / "x", vocab=50, maxlen=6)
    assert b.meta["source"].endswith("aclImdb")
    assert a.meta["vocab"] == b.meta["vocab"]
    for split in ("train", "test"):
        for k in ("tokens", "label"):
            np.testing.assert_array_equal(getattr(a, split)[k], getattr(b, split)[k])


def test_bad_options(tiny_imdb):
    with pytest.raises(DataError, match="maxlen"):
        load_dataset("imdb", data_dir=tiny_imdb, maxlen=0)
    with pytest.raises(DataError, match="accepted options: vocab, maxlen"):
        load_dataset("imdb", data_dir=tiny_imdb, max_len=10)


@pytest.mark.parametrize("spec, words, words_of", [
    ("imdb-sample(maxlen=8)", ["<pad>", "<unk>", "\n", " ", "a"], "not a word vocabulary"),
    ("imdb-text-sample(maxlen=8, train_chunks=4, test_chunks=4)", ["<pad>", "<oov>", "the"],
     "not this data set's kind"),
    ("imdb-text-sample(maxlen=8, train_chunks=4, test_chunks=4)",
     ["<pad>", "<start>", "<end>", "a"], "not this data set's kind"),
])
def test_a_trained_vocabulary_of_another_kind_is_refused(spec, words, words_of):
    """A checkpoint's vocabulary encodes the data `eval` or `--init-from` loads; a character
    model's tokens taken as words (nearly every word out-of-vocabulary), or a word model's
    (or `dates`' <start>/<end> layout) given to the character text, gave ids that mean other
    things to the model, silently."""
    with pytest.raises(DataError, match=words_of):
        load_dataset(spec, words=words)
