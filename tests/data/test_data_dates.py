"""The generated `dates` data set (nnlang/data/dates.py) and its character tokenizer (chars.py):
every source text parses back, with the standard library, to its target's date; the split, the
seed and the tokenizer behave as documented."""
import datetime as dt
import re

import numpy as np
import pytest

from nnlang.data import DataError, load_dataset
from nnlang.data import chars, dates
from nnlang.data.chars import tokenizer_from_meta

# strptime patterns for the 14 formats, written independently of dates.FORMATS
PATTERNS = ["%B %d, %Y", "%d %B %Y", "%b %d, %Y", "%d %b %Y", "%A, %B %d, %Y", "%a, %d %b %Y",
            "%m/%d/%Y", "%m/%d/%y", "%d.%m.%Y", "%d.%m.%y", "%Y%m%d", "the %d of %B, %Y",
            "%b %d %y", "%Y-%m-%d"]


def parse(text: str) -> set[dt.date]:
    """Every date `text` can be read as (a date with a weekday must name the right one)."""
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text, flags=re.I)
    found = set()
    for pattern in PATTERNS:
        try:
            d = dt.datetime.strptime(text, pattern).date()
        except ValueError:
            continue
        if "%a" in pattern.lower() and d.strftime(pattern[:2]).lower() not in text.lower():
            continue  # strptime does not check the weekday
        if "%y" in pattern:  # the data set's pivot: 50-99 are 19xx, 00-49 are 20xx
            d = d.replace(year=(1900 if d.year % 100 >= 50 else 2000) + d.year % 100)
        found.add(d)
    return found


@pytest.fixture(scope="module")
def ds():
    return load_dataset("dates", n_train=3000, n_test=500)


def test_every_source_reads_as_its_target(ds):
    tok = tokenizer_from_meta(ds.meta)
    for split in (ds.train, ds.test):
        for src, tgt in zip(split["source"], split["target"]):
            text, want = tok.decode(src), dt.date.fromisoformat(tok.decode(tgt))
            assert want in parse(text), (text, want)


def test_all_formats_and_cases_occur(ds):
    tok = tokenizer_from_meta(ds.meta)
    texts = [tok.decode(s) for s in ds.train["source"]]
    shapes = {re.sub(r"[a-z]+", "a", re.sub(r"[A-Z]+", "A", re.sub(r"\d", "9", t)))
              for t in texts}
    assert len(shapes) > 30
    assert any(t.isupper() for t in texts) and any(t.islower() and "," in t for t in texts)


def test_arrays_layout(ds):
    tok = ds.meta["tokenizer"]
    assert ds.inputs == ["source", "decoder_in"] and ds.targets == ["target"]
    assert tok["vocab"][:3] == ["<pad>", "<start>", "<end>"]
    assert ds.meta["vocab_size"] == len(tok["vocab"]) == 62
    src, dec, tgt = ds.train["source"], ds.train["decoder_in"], ds.train["target"]
    assert src.shape == (3000, 32) and dec.shape == tgt.shape == (3000, 11)
    assert src.dtype == dec.dtype == tgt.dtype == np.int32
    assert (tgt[:, -1] == 2).all() and (dec[:, 0] == 1).all()
    assert (dec[:, 1:] == tgt[:, :-1]).all()              # teacher forcing: shifted by one
    lengths = (src != 0).sum(1)
    assert ((src != 0) == (np.arange(32) < lengths[:, None])).all()  # padded at the end only


def test_test_dates_never_occur_in_training(ds):
    train = {bytes(r) for r in ds.train["target"]}
    assert not any(bytes(r) in train for r in ds.test["target"])


def test_deterministic_from_the_seed():
    a, b = load_dataset("dates(n_train=50, n_test=10)"), load_dataset("dates", n_train=50,
                                                                       n_test=10)
    c = load_dataset("dates", n_train=50, n_test=10, seed=1)
    for k in ("source", "decoder_in", "target"):
        assert np.array_equal(a.train[k], b.train[k]) and np.array_equal(a.test[k], b.test[k])
    assert not np.array_equal(a.train["source"], c.train["source"])


@pytest.mark.parametrize("text", ["Fri, 5 Mar 2021", "the 31st of DECEMBER, 1999", "1/2/03",
                                  "<start>2021-03-05<end>"])
def test_tokenizer_round_trip(text):
    tok = dates.tokenizer()
    ids = tok.encode_batch([text], 32)
    plain = text.replace("<start>", "").split("<end>")[0]
    assert tok.decode(ids[0]) == plain
    if text.startswith("<start>"):
        assert ids[0, 0] == tok.id_of(chars.START) == 1 and ids[0, 11] == tok.id_of(chars.END) == 2


@pytest.mark.parametrize("text, words", [
    ("5 März 2021", ["'ä' at position 4", "not in the tokenizer's alphabet"]),
    ("x" * 33, ["33 tokens", "at most 32"]),
])
def test_tokenizer_refuses(text, words):
    with pytest.raises(DataError) as err:
        dates.tokenizer().encode_batch([text], 32)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("spec, words", [
    ("dates(n_train=0)", ["n_train must be a whole number >= 1, got 0"]),
    ("dates(n_test=1.5)", ["n_test must be a whole number >= 0"]),
    ("dates(seed=-1)", ["seed must be"]),
    ("dates(size=10)", ["has no option(s) size", "n_train, n_test, seed"]),
])
def test_bad_options(spec, words):
    with pytest.raises(DataError) as err:
        load_dataset(spec)
    for w in words:
        assert w in str(err.value) + str(getattr(err.value, "hint", ""))


def test_generation_tokenizer_agrees_with_the_arrays(ds):
    """The tokenizer `nnlang generate` rebuilds from meta["tokenizer"] (docs/generation.md)."""
    t = tokenizer_from_meta(ds.meta)
    assert (t.vocab_size, t.pad_id, t.bos_id, t.eos_id) == (62, 0, 1, 2)
    assert t.id_of("<start>") == 1 and t.id_of("a") == ds.meta["tokenizer"]["vocab"].index("a")
    assert t.id_of("ä") is None
    src = ds.test["source"][0]
    text = t.decode(src)
    assert t.encode(text) == src[: len(text)].tolist() and t.encode("") == []
    assert t.encode("<start>19") == [1, 9, 17]
    with pytest.raises(DataError, match="'ä' at position 2"):
        t.encode("Mä")


def test_settings_survive_json_and_older_checkpoints():
    """meta["tokenizer"] is what checkpoints keep; those written before it held "specials"
    (dates: exactly <pad>/<start>/<end>) rebuild the same ids."""
    import json
    from nnlang.data.chars import CharTokenizer
    tok = dates.tokenizer()
    settings = json.loads(json.dumps(tok.settings()))
    older = {k: v for k, v in settings.items() if k != "specials"}
    for s in (settings, older):
        again = CharTokenizer.from_settings(s)
        assert again.vocab == tok.vocab and (again.bos_id, again.eos_id) == (1, 2)
    lm = CharTokenizer.from_settings(CharTokenizer("ab\n", eos="\n").settings())
    assert (lm.unk_id, lm.eos_id, lm.bos_id) == (1, 4, None)
    assert lm.decode([2, 4, 3, 1, 0]) == "a\nb\ufffd"   # an eos character is text, not an end
