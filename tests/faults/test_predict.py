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
    np.save(d / "one_a.npy", x[0])
    np.savez(d / "both.npz", a=x, b=np.zeros((2, 2), np.float32))
    (d / "both_named.npy").write_bytes((d / "both.npz").read_bytes())
    (d / "text.npy").write_text("1,2,3\n")
    (d / "folder.npz").mkdir(exist_ok=True)
    (d / "latin.jsonl").write_bytes('{"a": [1, 2, 3], "b": [0.5, -1]}\n{"a": "caf\u00e9"}\n'
                                    .encode("latin-1"))
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
    (["--npz", "folder.npz"], ["--npz folder.npz is a folder, not a file"]),   # "not found"
    # the decoder's "can't decode byte 0xe9 in position 40", with no line
    (["--jsonl", "latin.jsonl"], ["latin.jsonl:2:11: error: not UTF-8 text: byte 0xe9"]),
    (["--npz", "notes.txt"], ["cannot read --npz notes.txt", "numpy.savez"]),
    # a .npy where an archive goes, and an archive named .npy: an internal error (TypeError),
    # and 'holds <U11 values, not numbers'
    (["--npz", "one_a.npy"], ["--npz one_a.npy is a .npy file (one array), not an .npz archive",
                              "numpy.savez"]),
    (["-i", "a=both_named.npy", "-i", B], ["both_named.npy is an .npz archive (arrays a, b), "
                                           "not a .npy file", "--npz both_named.npy"]),
    # numpy read a file without its header as a pickle: "contains pickled (object) data"
    (["-i", "a=text.npy", "-i", B], ["text.npy is not a .npy file (it does not start with "
                                     "numpy's header)", "numpy.save"]),
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


def test_an_image_models_npy_that_is_no_array_is_named(tmp_path):
    """A picture given as a .npy path that holds no array: a text file was an internal error
    (numpy's ValueError about pickled data), an .npz archive 'an image of shape (4,)'."""
    from tests.test_predict import DIGITS
    (tmp_path / "digits.nn").write_text(DIGITS)
    cli("train", "digits.nn", "--backend", "reference", "--max-steps", "1", "--out", "run",
        code=0, cwd=tmp_path)
    (tmp_path / "text.npy").write_text("0 0 0\n")
    np.savez(tmp_path / "pair.npz", image=np.zeros((2, 784), np.uint8), label=np.zeros(2))
    (tmp_path / "pair.npy").write_bytes((tmp_path / "pair.npz").read_bytes())
    for name, words in [("text.npy", "text.npy is not a .npy file"),
                        ("pair.npy", "pair.npy is an .npz archive (arrays image, label)")]:
        out = cli("predict", "digits.nn", "-c", "run", name, "--backend", "reference",
                  cwd=tmp_path)
        assert words in out, out


def test_examples_from_a_pipe(npz_files):
    """`--jsonl <(...)` or `--csv <(...)` (a pipe, no regular file): 'file not found' for the
    path the shell made; the examples are read as from a file."""
    import os
    import threading
    fifo = npz_files / "rows.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    text = '{"a": [1, 2, 3], "b": [0.5, -1]}\n'
    feeder = threading.Thread(target=fifo.write_text, args=(text,), daemon=True)
    feeder.start()
    out = cli("predict", "two.nn", "-c", "run-two", "--jsonl", fifo, "--backend", "reference",
              "--json", code=0, cwd=npz_files)
    feeder.join(10)
    (npz_files / "rows.jsonl").write_text(text)
    want = cli("predict", "two.nn", "-c", "run-two", "--jsonl", "rows.jsonl", "--backend",
               "reference", "--json", code=0, cwd=npz_files)
    assert out.replace("rows.fifo", "rows.jsonl") == want
