"""The bad-input corpus of `nnlang predict` with several inputs: a missing, extra, misnamed,
repeated or misshaped input, given by --input NAME=VALUE, by --npz or as bare arguments, and
text the data set's tokenizer cannot encode. Each a located error (the flag, the array), exit 1.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.faults.conftest import cli
from tests.test_predict import work  # noqa: F401  (the trained models two.nn and echo.nn)

A, B = "a=1,2,3", "b=0.5,-1"


@pytest.fixture(scope="module")
def npz_files(work):  # noqa: F811
    d = work[0]
    x = np.zeros((2, 3), np.float32)
    np.savez(d / "only_a.npz", a=x)
    np.savez(d / "extra.npz", a=x, b=np.zeros((2, 2), np.float32), c=x)
    np.savez(d / "rows.npz", a=x, b=np.zeros((3, 2), np.float32))
    np.savez(d / "wide.npz", a=np.zeros((2, 4), np.float32), b=np.zeros((2, 2), np.float32))
    (d / "notes.txt").write_text("hello")
    return d


@pytest.mark.parametrize("args, words", [
    ([], ["predict needs inputs", "--input NAME=VALUE", "--npz FILE"]),
    (["-i", A], ["--input: no value for model input(s) b", "b: float32[batch, 2]"]),
    (["-i", A, "-i", B, "-i", "c=4"], ["--input c: the model has no input 'c'", "read a, b"]),
    (["-i", "aa=1,2,3", "-i", B], ["no input 'aa'", "did you mean 'a'?"]),
    (["-i", A, "-i", B, "-i", "y=1"], ["--input y: 'y' is a training target",
                                       "predict does not read it"]),
    (["-i", A, "-i", B, "-i", "b=3,4"], ["one value per example", "a 1 time(s), b 2 time(s)"]),
    (["-i", "a"], ["--input 'a' is not NAME=VALUE"]),
    (["1,2,3"], ["read 2 inputs, so their values need names", "--input NAME=VALUE"]),
    (["1,2,3", "-i", A], ["pass the inputs one way, not inputs and --input"]),
    (["-i", A, "--npz", "only_a.npz"], ["not --input and --npz"]),
    (["-i", "a=1,2", "-i", B], ["--input a has shape [1, 2]", "'a' is declared float32[batch, 3]"]),
    (["-i", "a=hello", "-i", B], ["'hello' is not a .npy file", "write the numbers"]),
    # which row, its length and the expected one: it said "the examples have different
    # shapes ([2], [3])", sorted, so not even which was wrong
    (["-i", A, "-i", "a=1,2", "-i", B, "-i", B],
     ["--input a, row 1 (1,2) has 2 values, but model input 'a' takes 3 per example",
      "hint: give every example 3 values"]),
    (["-i", A, "-i", A, "-i", "a=1,2,3,4", "-i", B, "-i", B, "-i", B],
     ["--input a, row 2 (1,2,3,4) has 4 values, but model input 'a' takes 3 per example"]),
    (["-i", "a=1,nan,3", "-i", B], ["--input a, row 0: nan is not a finite number"]),
    (["--npz", "missing.npz"], ["--npz file not found: missing.npz"]),
    (["--npz", "notes.txt"], ["cannot read --npz notes.txt", "numpy.savez"]),
    (["--npz", "only_a.npz"], ["--npz only_a.npz: no value for model input(s) b"]),
    (["--npz", "extra.npz"], ["--npz extra.npz: array 'c': the model has no input 'c'"]),
    (["--npz", "rows.npz"], ["one row per example", "a [2, 3], b [3, 2]"]),
    (["--npz", "wide.npz"], ["--npz wide.npz, array 'a' has shape [2, 4]",
                             "declared float32[batch, 3]"]),
])
def test_predict_refuses_inputs(npz_files, args, words):
    out = cli("predict", "two.nn", "-c", "run-two", *args, "--backend", "reference",
              cwd=npz_files)
    for w in words:
        assert w in out, out


@pytest.mark.parametrize("source, decoder_in, words", [
    ("5 März 2021", "<start>", ["--input source '5 März 2021': character 'ä' at position 4",
                                "known characters"]),
    ("Wednesday, September the 30th, 2021", "<start>", ["has 35 tokens", "at most 32"]),
    ("5 Mar 2021", "<start>2021-03-05<end>", ["--input decoder_in", "12 tokens", "at most 11"]),
])
def test_predict_refuses_text_the_tokenizer_cannot_encode(work, source, decoder_in,  # noqa: F811
                                                          words):
    out = cli("predict", "echo.nn", "-c", "echo.npz", "-i", f"source={source}", "-i",
              f"decoder_in={decoder_in}", "--backend", "reference", cwd=work[0])
    for w in words:
        assert w in out, out
