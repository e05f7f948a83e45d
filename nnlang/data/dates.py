"""The `dates` data set: dates written in many formats -> ISO 8601 (`2021-03-05`), generated.

A sequence-to-sequence task with real structure (month names, ordinals, two-digit years, US and
European orders told apart by their separators), deterministic from a seed, no files. The test
split's dates never occur in the training split, in any format.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from nnlang.data.chars import END, PAD, START, CharTokenizer
from nnlang.data.cache import DataError
from nnlang.data.dataset import Dataset, Split

FIRST, LAST = dt.date(1950, 1, 1), dt.date(2049, 12, 31)
SOURCE_LEN = 32   # the longest format, "Wednesday, September 30, 2021", has 29 characters
TARGET_LEN = 11   # "YYYY-MM-DD" and <end>
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ALPHABET = "".join(MONTHS + DAYS).lower() + "".join(MONTHS + DAYS).upper() + \
    "0123456789 ,./-thsndr"
TEST_FRACTION = 0.1  # of all dates in the range, held out for the test split


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _yy(y: int) -> str:
    return f"{y % 100:02d}"  # read back as 1950-2049: 50-99 are 19xx, 00-49 are 20xx


# One function per written format; `m` is the month's name, `w` the weekday's.
FORMATS = [
    lambda d, m, w: f"{m} {d.day}, {d.year}",              # March 5, 2021
    lambda d, m, w: f"{d.day} {m} {d.year}",               # 5 March 2021
    lambda d, m, w: f"{m[:3]} {d.day}, {d.year}",          # Mar 5, 2021
    lambda d, m, w: f"{d.day:02d} {m[:3]} {d.year}",       # 05 Mar 2021
    lambda d, m, w: f"{w}, {m} {d.day}, {d.year}",         # Friday, March 5, 2021
    lambda d, m, w: f"{w[:3]}, {d.day} {m[:3]} {d.year}",  # Fri, 5 Mar 2021
    lambda d, m, w: f"{d.month}/{d.day}/{d.year}",         # 3/5/2021 (US: month first)
    lambda d, m, w: f"{d.month:02d}/{d.day:02d}/{_yy(d.year)}",  # 03/05/21
    lambda d, m, w: f"{d.day}.{d.month}.{d.year}",         # 5.3.2021 (European: day first)
    lambda d, m, w: f"{d.day:02d}.{d.month:02d}.{_yy(d.year)}",  # 05.03.21
    lambda d, m, w: f"{d.year}{d.month:02d}{d.day:02d}",   # 20210305
    lambda d, m, w: f"the {_ordinal(d.day)} of {m}, {d.year}",  # the 5th of March, 2021
    lambda d, m, w: f"{m[:3]} {_ordinal(d.day)} {_yy(d.year)}",  # Mar 5th 21
    lambda d, m, w: d.isoformat(),                          # 2021-03-05
]
CASES = (str, str.lower, str.upper)


def written(date: dt.date, fmt: int, case: int) -> str:
    """`date` in format number `fmt` (an index into FORMATS) and letter case `case`."""
    text = FORMATS[fmt](date, MONTHS[date.month - 1], DAYS[date.weekday()])
    return CASES[case](text)


def tokenizer() -> CharTokenizer:
    """Ids 0-2 are <pad>/<start>/<end>, then the alphabet's characters in sorted order."""
    return CharTokenizer("".join(sorted(set(ALPHABET))), (PAD, START, END))


def load_dates(data_dir=None, n_train: int = 20000, n_test: int = 2000, seed: int = 0) -> Dataset:
    """`source` (the written date), `decoder_in` ([start] + the ISO date) and `target` (the ISO
    date + [end]), all int32 character ids; `n_train`/`n_test` examples from disjoint dates."""
    check_options("dates", n_train=n_train, n_test=n_test, seed=seed)
    tok = tokenizer()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 16]))
    days = rng.permutation((LAST - FIRST).days + 1)
    cut = int(len(days) * TEST_FRACTION)
    splits = {}
    for name, pool, n in (("test", days[:cut], n_test), ("train", days[cut:], n_train)):
        picked = rng.choice(pool, n)
        fmts, cases = rng.integers(len(FORMATS), size=n), rng.integers(len(CASES), size=n)
        dates = [FIRST + dt.timedelta(days=int(k)) for k in picked]
        src = [written(d, int(f), int(c)) for d, f, c in zip(dates, fmts, cases)]
        tgt = tok.encode_batch([d.isoformat() for d in dates], TARGET_LEN, "target")
        tgt[:, TARGET_LEN - 1] = tok.end_id
        splits[name] = Split({"source": tok.encode_batch(src, SOURCE_LEN, "source"),
                              "decoder_in": tok.decoder_input(tgt), "target": tgt})
    meta = {"kind": "chars", "tokenizer": tok.settings(source_len=SOURCE_LEN,
                                                       target_len=TARGET_LEN),
            "vocab_size": tok.vocab_size, "source": f"generated (seed {seed})",
            "counts": {"train": n_train, "test": n_test}}
    return Dataset("dates", splits["train"], splits["test"], ["source", "decoder_in"],
                   ["target"], meta)


# NOTE: the examples are written one by one in Python (about 10 us each): n_train = 3e9 ran
# for hours before running out of memory, with no word; 10 million take a couple of minutes
MAX_EXAMPLES = 10_000_000


def check_options(name: str, n_train: int = 20000, n_test: int = 2000, seed: int = 0) -> None:
    for key, value, low in (("n_train", n_train, 1), ("n_test", n_test, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"dataset '{name}': {key} must be a whole number >= {low}, got "
                            f"{value!r}", "e.g. dates(n_train=20000, n_test=2000, seed=0)")
        if key != "seed" and value > MAX_EXAMPLES:
            raise DataError(f"dataset '{name}': {key} must be at most {MAX_EXAMPLES:,}, got "
                            f"{value:,}", "the examples are generated in Python, and the "
                            "dates repeat long before that (there are about 100 years of them)")
