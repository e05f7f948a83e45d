"""IMDB on the real archive (parsed once per module), the bundled sample and the array cache."""
import os
from pathlib import Path

import numpy as np
import pytest

from nnlang.data import imdb, load_dataset, tokenize
from nnlang.data.registry import IMDB_SAMPLE


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = os.environ.get("NNLANG_DATA_DIR")
    if not root or not list(Path(root).glob("imdb/aclImdb_v1*.tar.gz")):
        pytest.skip("needs NNLANG_DATA_DIR with imdb/aclImdb_v1*.tar.gz")
    cache_dir = tmp_path_factory.mktemp("imdb-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NNLANG_CACHE_DIR", str(cache_dir))
        ds = load_dataset("imdb", data_dir=root)
    return ds, cache_dir, root


def test_full_counts_and_labels(full):
    ds, _, _ = full
    assert (len(ds.train), len(ds.test)) == (25000, 25000)
    for split in (ds.train, ds.test):
        assert split["tokens"].shape == (25000, 200) and split["tokens"].dtype == np.int32
        assert split["label"].dtype == np.float32
        assert split["label"].tolist() == [0.0] * 12500 + [1.0] * 12500  # (label, id) order
    assert ds.meta["ids"]["train"][:3].tolist() == [0, 1, 2]


def test_full_vocab_and_ids(full):
    ds, _, _ = full
    vocab = ds.meta["vocab"]
    assert len(vocab) == 20000 and len(set(vocab)) == 20000
    assert vocab[:6] == ["<pad>", "<oov>", "the", ".", ",", "and"]
    for split in (ds.train, ds.test):
        t = split["tokens"]
        assert t.min() >= 0 and t.max() < 20000
        # front padding: once a row has a non-pad token, no pad follows
        started = np.maximum.accumulate(t != 0, axis=1)
        assert not np.any(started & (t == 0))
    assert (ds.train["tokens"] == tokenize.OOV_ID).any()


def test_full_rows_match_the_tokenizer(full):
    """Rows of the full set re-derived from the same reviews in the bundled sample."""
    ds, _, _ = full
    ids = {w: i for i, w in enumerate(ds.meta["vocab"])}
    texts = {d[:3]: d[3] for d in imdb.read_reviews(IMDB_SAMPLE)}
    longest = max((k for k in texts if k[0] == "train"), key=lambda k: len(texts[k]))
    rows = {}
    for key in [("train", 1, 0), ("test", 0, 25), longest]:
        split, label, rid = key
        rows[key] = np.flatnonzero(ds.meta["ids"][split] == rid)[label]  # neg row, then pos
        want = tokenize.encode([texts[key]], ids, 200)[0]
        np.testing.assert_array_equal(getattr(ds, split)["tokens"][rows[key]], want)
    toks = tokenize.tokenize(texts[longest])
    assert len(toks) > 200  # truncated, yet the row still ends with the review's last token
    assert ds.train["tokens"][rows[longest], -1] == ids.get(toks[-1], tokenize.OOV_ID)


def test_second_load_uses_cache(full, monkeypatch):
    ds, cache_dir, root = full
    path = Path(ds.meta["cache"])
    assert path.is_file() and path.parent.parent == cache_dir
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(imdb, "_process", lambda *a: pytest.fail("cache was not used"))
    again = load_dataset("imdb", data_dir=root)
    assert again.meta["vocab"] == ds.meta["vocab"]
    np.testing.assert_array_equal(again.test["tokens"], ds.test["tokens"])


def test_encode_review(full):
    ds, _, _ = full
    out = ds.encode("This movie was not good at all!")["tokens"]
    assert out.shape == (1, 200) and out.dtype == np.int32
    words = ["this", "movie", "was", "not", "good", "at", "all", "!"]
    assert out[0, -8:].tolist() == [ds.meta["vocab"].index(w) for w in words]
    assert not out[0, :-8].any()


def test_sample_loads_balanced():
    ds = load_dataset("imdb-sample", maxlen=100)
    assert ds.name == "imdb-sample" and ds.meta["sample"] is True
    assert ds.meta["counts"] == {"train": 2500, "test": 1000}
    assert np.bincount(ds.train["label"].astype(int)).tolist() == [1250, 1250]
    assert np.bincount(ds.test["label"].astype(int)).tolist() == [500, 500]
    assert ds.train["tokens"].shape == (2500, 100) and ds.train["tokens"].max() < 20000
    assert IMDB_SAMPLE.stat().st_size < 2_100_000


def test_unwritable_cache_still_loads(tiny_imdb, tmp_path, monkeypatch, load_tiny):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(blocker / "cache"))
    ds = load_tiny(tiny_imdb, vocab=50, maxlen=5)
    assert len(ds.train) == 4 and not Path(ds.meta["cache"]).exists()


def test_cache_key_changes_with_options(tiny_imdb, isolated, load_tiny):
    a = load_tiny(tiny_imdb, vocab=50, maxlen=5)
    b = load_tiny(tiny_imdb, vocab=50, maxlen=7)
    assert a.meta["cache"] != b.meta["cache"] and b.train["tokens"].shape[1] == 7
    assert len(list((isolated / "processed").glob("*.npz"))) == 2


def test_corrupt_archive(tmp_path):
    d = tmp_path / "imdb"
    d.mkdir()
    (d / "aclImdb_v1.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(imdb.DataError, match="aclImdb_v1.tar.gz is corrupt: truncated gzip"):
        load_dataset("imdb", data_dir=tmp_path)


def test_incomplete_archive_is_refused_and_not_cached(tiny_imdb, isolated):
    """A well-formed archive that lacks reviews is damaged: aclImdb v1 has 12,500 per folder."""
    with pytest.raises(imdb.DataError, match="missing members: train/neg has 2 of 12,500") as e:
        load_dataset("imdb", data_dir=tiny_imdb)
    assert "found through --data-dir" in e.value.message
    assert not (isolated / "processed").exists()


def test_cache_follows_the_content(tiny_imdb, isolated, load_tiny):
    """The array cache is keyed by the archive's content: a changed archive is read again."""
    from tests.data.conftest import TINY_REVIEWS, write_reviews
    path = tiny_imdb / "imdb" / "aclImdb_v1.tar.gz"
    a = load_tiny(tiny_imdb)
    write_reviews(path, {**TINY_REVIEWS, "train/pos/2_7.txt": "zanzibar zanzibar zanzibar"})
    b = load_tiny(tiny_imdb)
    assert len(a.train) == 4 and len(b.train) == 5 and "zanzibar" in b.meta["vocab"]
    assert a.meta["cache"] != b.meta["cache"]


REVIEWS = {"train/pos/0_9.txt": "Great film!<br />Loved it.", "train/pos/1_8.txt": "Fine cast.",
           "train/neg/0_1.txt": "Awful. I hated it", "test/pos/0_10.txt": "Great, zanzibar!",
           "test/neg/0_3.txt": "Awful awful"}


def write_folder(root: Path, reviews: dict[str, str]) -> Path:
    """An extracted aclImdb/ folder under root/imdb/ holding `reviews`."""
    for name, text in reviews.items():
        path = root / "imdb" / "aclImdb" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_imdb_text_of_a_few_reviews_ends_each_with_its_separator(tmp_path):
    """imdb-text on a user's own small folder: with fewer than 50 reviews the separator "\\n"
    is rarer than the 50 uses a character needs, and the tokenizer, whose end of a review is
    that character, crashed with KeyError '\\n'. The separator is always a token."""
    import re
    from collections import Counter
    train = [re.sub(r"<br\s*/?>", " ", t) + "\n" for k, t in REVIEWS.items()
             if k.startswith("train/")]
    counts = Counter("".join(train))
    assert max(counts.values()) < 50   # no character is frequent enough to be in the vocabulary
    n_train = len("".join(train)) // 9   # every chunk of maxlen + 1 = 9 characters
    ds = load_dataset(f"imdb-text(maxlen=8, train_chunks={n_train}, test_chunks=1)",
                      data_dir=write_folder(tmp_path, REVIEWS))
    assert ds.meta["tokenizer"]["vocab"] == ["<pad>", "<unk>", "\n"]
    # all chunks, in stream order: one separator per review (the last may be cut off)
    ids = np.concatenate([ds.train["tokens"], ds.train["next"][:, -1:]], axis=1).reshape(-1)
    assert (ids == 2).sum() in (len(train), len(train) - 1)
    assert np.all(ids[ids != 2] == 1)


def test_imdb_text_cache_follows_a_replaced_folder(tmp_path, isolated):
    """imdb-text from an extracted folder was cached under the folder's path alone: a folder
    replaced by other reviews kept giving the old text."""
    import shutil
    spec = "imdb-text(maxlen=4, train_chunks=2, test_chunks=1)"
    a = load_dataset(spec, data_dir=write_folder(tmp_path, REVIEWS))
    shutil.rmtree(tmp_path / "imdb")
    other = {k: "zzzzz " * 20 for k in REVIEWS}   # 'z' and ' ' 60+ times: in the vocabulary
    b = load_dataset(spec, data_dir=write_folder(tmp_path, other))
    assert a.meta["tokenizer"]["vocab"] == ["<pad>", "<unk>", "\n"]
    assert b.meta["tokenizer"]["vocab"] == ["<pad>", "<unk>", "\n", " ", "z"]
    assert a.meta["cache"] != b.meta["cache"]


def test_folder_without_a_test_split_is_a_data_error(tmp_path, isolated):
    """An extracted folder with train/ only: keying its cache read the test folders' stats and
    crashed (FileNotFoundError) instead of saying which reviews are missing."""
    root = write_folder(tmp_path, {k: v for k, v in REVIEWS.items() if k.startswith("train/")})
    with pytest.raises(imdb.DataError, match="test/neg has 0 of 12,500 reviews"):
        load_dataset("imdb", data_dir=root)
