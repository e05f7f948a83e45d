"""`nnlang predict` for every kind of model: several inputs (--input NAME=VALUE, --npz) checked
against numpy on the checkpoint's weights, numbers written out, and sequence outputs decoded
through the data set's character tokenizer (weights set by hand, so the answer is known)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnlang.train import checkpoint
from tests.faults.conftest import cli

# two feature inputs and a regression output
TWO = """
model Two {
  input a: float32[batch, 3]
  input b: float32[batch, 2]
  input y: float32[batch]
  out = dense(a, 1, use_bias = false) + dense(b, 1) |> squeeze(axis = 1)
  output out
  loss mse(out, y)
}
train Two { data = "two.npz" batch = 4 }
"""
# a sequence model on `dates` whose logits are an embedding of decoder_in (plus the source's
# mean embedding): with that table set to the identity and the source's to zero, position t
# predicts decoder_in[t] itself
ECHO = """
model Echo(vocab = 62) {
  input source: int32[batch, 32]
  input decoder_in: int32[batch, 11]
  input target: int32[batch, 11]
  context = mean(embedding(source, vocab, vocab), axis = 1, keepdims = true)
  logits = embedding(decoder_in, vocab, vocab) + context
  output logits
  loss cross_entropy(logits, target)
}
train Echo { data = dates(n_train = 16, n_test = 4) batch = 8 }
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    y = a.sum(1) - b[:, 0]
    np.savez(d / "two.npz", **{f"{s}_{k}": v[sl].astype(np.float32)
                               for s, sl in (("train", slice(0, 16)), ("test", slice(16, 20)))
                               for k, v in (("a", a), ("b", b), ("y", y))})
    (d / "two.nn").write_text(TWO)
    (d / "echo.nn").write_text(ECHO)
    for name in ("two", "echo"):
        cli("train", f"{name}.nn", "--backend", "reference", "--out", f"run-{name}",
            "--max-steps", "1", code=0, cwd=d)
    ck = checkpoint.load(d / "run-echo")
    state = {k: np.zeros_like(v) for k, v in ck.state.items()}
    state["logits.weight"] = 10 * np.eye(62, dtype=np.float32)
    checkpoint.save(d / "echo.npz", state, ck.meta)
    np.savez(d / "ab.npz", a=a[:3].astype(np.float32), b=b[:3].astype(np.float32),
             y=y[:3].astype(np.float32))
    return d, a[:3], b[:3]


def two_expected(d, a, b):
    state = checkpoint.load(d / "run-two").state
    return (a @ state["out.weight"] + b @ state["out_1.weight"] + state["out_1.bias"])[:, 0]


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_several_inputs_by_name(work):
    d, a, b = work
    flags = []
    for i in range(3):
        flags += ["-i", "a=" + ",".join(map(repr, a[i].tolist())),
                  "--input", f"b=[{b[i, 0].item()!r}, {b[i, 1].item()!r}]"]
    out = cli("predict", "two.nn", "-c", "run-two", *flags, "--backend", "reference",
              "--json", code=0, cwd=d)
    got = json_lines(out)
    assert [r["kind"] for r in got] == ["value"] * 3 and got[0]["shape"] == []
    assert got[0]["input"].startswith("a=") and "; b=" in got[0]["input"]
    np.testing.assert_allclose([r["value"] for r in got], two_expected(d, a, b), rtol=1e-5)


def test_many_examples_run_a_batch_at_a_time(work, monkeypatch):
    """Every example is predicted, in order, in forward calls of at most the run's batch (4):
    whole reviews pad to the longest of their batch, and all at once could need gigabytes."""
    from nnlang.runtime.net import Net
    d = work[0]
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    np.savez(d / "ten.npz", a=a.astype(np.float32), b=b.astype(np.float32))
    sizes = []
    forward = Net.forward
    monkeypatch.setattr(Net, "forward", lambda net, feeds: sizes.append(len(feeds["a"])) or
                        forward(net, feeds))
    got = json_lines(cli("predict", "two.nn", "-c", "run-two", "--npz", "ten.npz", "--backend",
                         "reference", "--json", code=0, cwd=d))
    assert sizes == [4, 4, 2]
    assert [r["input"] for r in got] == [f"ten.npz[{i}]" for i in range(10)]
    np.testing.assert_allclose([r["value"] for r in got], two_expected(d, a, b), rtol=1e-5)


def test_outputs_without_a_batch_dim_are_left_out_with_a_note(work):
    """A mean over the batch is no answer about one example; it was an internal error."""
    d = work[0]
    (d / "avg.nn").write_text(TWO.replace("  output out\n",
                                          "  output out\n  output avg = mean(out)\n"))
    (d / "only_avg.nn").write_text(TWO.replace("  output out\n", "  output avg = mean(out)\n"))
    out = cli("predict", "avg.nn", "-c", "run-two", "--npz", "ab.npz", "--backend", "reference",
              code=0, cwd=d)
    assert "note: output(s) avg have no batch dim" in out
    got = json_lines(cli("predict", "avg.nn", "-c", "run-two", "--npz", "ab.npz", "--backend",
                         "reference", "--json", code=0, cwd=d))
    assert [r["output"] for r in got] == ["out"] * 3
    out = cli("predict", "only_avg.nn", "-c", "run-two", "--npz", "ab.npz", "--backend",
              "reference", cwd=d)
    assert "has no output with one row per example (avg: float32[])" in out


def test_several_inputs_from_an_npz(work):
    d, a, b = work
    out = cli("predict", "two.nn", "-c", "run-two", "--npz", "ab.npz", "--backend",
              "reference", "--json", code=0, cwd=d)
    got = json_lines(out)
    assert [r["input"] for r in got] == ["ab.npz[0]", "ab.npz[1]", "ab.npz[2]"]
    np.testing.assert_allclose([r["value"] for r in got], two_expected(d, a, b), rtol=1e-5)
    table = cli("predict", "two.nn", "-c", "run-two", "--npz", "ab.npz", "--backend",
                "reference", code=0, cwd=d)
    assert "value" in table and f"{got[1]['value']:.6g}" in table and "label" not in table


def test_sequence_output_is_decoded_through_the_tokenizer(work):
    d, _, _ = work
    args = ("predict", "echo.nn", "-c", "echo.npz", "-i", "source=Fri, 5 Mar 2021",
            "-i", "decoder_in=<start>2021-03-05", "-i", "source=1/2/03",
            "-i", "decoder_in=<start>1999<end>", "--backend", "reference")
    got = json_lines(cli(*args, "--json", code=0, cwd=d))
    assert [r["kind"] for r in got] == ["sequence", "sequence"]
    assert [r["text"] for r in got] == ["2021-03-05", "1999"]
    assert got[0]["ids"][:3] == [1, 10, 8]   # <start> '2' '0': ids 0-2 are pad/start/end
    assert len(got[0]["probability"]) == 11 and min(got[0]["probability"]) > 0.9
    table = cli(*args, code=0, cwd=d)
    assert "text" in table and "2021-03-05" in table and "1999" in table


def test_numbers_written_out_equal_a_npy_file(work, tmp_path):
    d, a, b = work
    from nnlang.train.inference import encode_input
    node = type("Node", (), {"shape": ("batch", 3), "dtype": "float32",
                             "type": "float32[batch, 3]"})()
    np.save(tmp_path / "a.npy", a[0])
    one = encode_input("a", node, [str(tmp_path / "a.npy")], {}, "the input")
    row = a[0].tolist()
    for text in (",".join(map(repr, row)), " ".join(map(repr, row)), repr(row)):
        np.testing.assert_array_equal(encode_input("a", node, [text], {}, "the input"), one)


LENGTHS = """
model Len {
  symbol seq
  input x: float32[batch, seq, 2]
  input y: float32[batch]
  out = sum(dense(x, 1, use_bias = false), axis = 1) |> squeeze(axis = 1)
  output out
  loss mse(out, y)
}
train Len { data = "len.npz" batch = 4 }
"""


def test_examples_of_different_lengths_for_a_symbolic_length(tmp_path):
    """One net runs any length of `symbol seq`, but `predict len.nn a3.npy a5.npy` stopped:
    "the examples have different shapes", hint "give every example the same number of
    values". Each run of examples of one length is its own forward call, in order; the values
    are numpy's on the checkpoint's weight."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "len.npz", x=rng.normal(size=(8, 4, 2)).astype(np.float32),
             y=rng.normal(size=8).astype(np.float32))
    (tmp_path / "len.nn").write_text(LENGTHS)
    cli("train", "len.nn", "--backend", "reference", "--out", "run", "--max-steps", "1",
        code=0, cwd=tmp_path)
    w = checkpoint.load(tmp_path / "run").state["out.weight"]
    xs = [rng.normal(size=(n, 2)).astype(np.float32) for n in (3, 5, 5, 3)]
    for i, x in enumerate(xs):
        np.save(tmp_path / f"x{i}.npy", x)
    got = json_lines(cli("predict", "len.nn", "-c", "run", *[f"x{i}.npy" for i in range(4)],
                         "--backend", "reference", "--json", code=0, cwd=tmp_path))
    assert [r["input"] for r in got] == [f"x{i}.npy" for i in range(4)]
    np.testing.assert_allclose([r["value"] for r in got], [(x @ w).sum() for x in xs],
                               rtol=1e-5)


def test_a_short_text_shows_its_own_positions_only(work):
    """A text shorter than its fixed-length input is padded: the sequence output showed a
    prediction for every pad position too (`predict gpt.nn "This movie was"` printed 128
    characters, most read from padding). Only the text's own positions are shown, as a
    PyTorch/HF model's logits cover only the ids given."""
    d, _, _ = work
    got = json_lines(cli("predict", "echo.nn", "-c", "echo.npz", "-i", "source=5 Mar 2021",
                         "-i", "decoder_in=<start>19", "-i", "source=1/2/03",
                         "-i", "decoder_in=<start>2021-03-05", "--backend", "reference",
                         "--json", code=0, cwd=d))
    assert [len(r["ids"]) for r in got] == [3, 11]
    assert [len(r["probability"]) for r in got] == [3, 11]
    assert got[0]["ids"][0] == 1 and got[0]["text"] == "19" and got[1]["text"] == "2021-03-05"


def test_sequence_kind_and_decoding_without_training():
    import nnlang
    from nnlang.train.inference import interpret_output, output_kind
    from tests.faults.conftest import ROOT
    g = nnlang.load(str(ROOT / "models/seq2seq.nn")).graph
    assert output_kind(g, g.outputs["logits"], np.zeros((2, 11, 62))) == ("sequence", True)
    scores = np.zeros((1, 4, 5))
    scores[0, [0, 1, 2, 3], [3, 4, 0, 2]] = 5.0       # words 3, 4, then padding, then 2
    words = {"kind": "text", "vocab": ["<pad>", "<oov>", "good", "very", "film"],
             "tokenizer": {"pad_id": 0}}
    r, = interpret_output(scores, "sequence", True, None, words)
    assert r["ids"] == [3, 4, 0, 2] and r["text"] == "very film good"
    assert r["probability"][0] == pytest.approx(np.exp(5) / (np.exp(5) + 4))
    # 5 classes over a 4-word vocabulary (a model may score ids its tokenizer lacks, as
    # generate allows): those write nothing; 5 classes over 6 words are not its words
    r, = interpret_output(scores, "sequence", True, None, {**words, "vocab": words["vocab"][:4]})
    assert r["text"] == "very good"
    r, = interpret_output(scores, "sequence", True, None,
                          {**words, "vocab": words["vocab"] + ["bad"]})
    assert r["text"] is None


def test_text_for_an_input_of_symbolic_length(work, tmp_path):
    """A character-tokenized input declared [batch, n] runs at each text's own length; it
    was an internal error (the tokenizer took the symbol for a length)."""
    d = work[0]
    (d / "echo_sym.nn").write_text(ECHO.replace("model Echo(vocab = 62) {",
                                                "model Echo(vocab = 62) {\n  symbol n")
                                   .replace("int32[batch, 32]", "int32[batch, n]"))
    cli("train", "echo_sym.nn", "--backend", "reference", "--out", "run-echo-sym",
        "--max-steps", "1", code=0, cwd=d)
    got = json_lines(cli("predict", "echo_sym.nn", "-c", "run-echo-sym", "--backend",
                         "reference", "-i", "source=5 Mar 2021", "-i", "decoder_in=<start>20",
                         "-i", "source=Friday, the 5th of March", "-i", "decoder_in=<start>",
                         "--json", code=0, cwd=d))
    assert [r["kind"] for r in got] == ["sequence", "sequence"]


def test_a_text_of_symbolic_length_predicts_as_it_does_alone(work, tmp_path):
    """Texts of a character-tokenized input declared [batch, n] were padded to the longest
    text of the call: the shorter one showed a character for every pad position (its output
    depended on the other examples), and a model reading the whole source (Echo's unmasked
    mean) gave other values at its real positions too. Each example must read as it does
    alone: runs of one length, as arrays of a symbolic length run."""
    d = work[0]
    (d / "echo_len.nn").write_text(ECHO.replace("model Echo(vocab = 62) {",
                                                "model Echo(vocab = 62) {\n  symbol n\n  symbol m")
                                   .replace("int32[batch, 32]", "int32[batch, n]")
                                   .replace("int32[batch, 11]", "int32[batch, m]"))
    cli("train", "echo_len.nn", "--backend", "reference", "--out", "run-echo-len",
        "--max-steps", "1", code=0, cwd=d)
    examples = [("5 Mar 2021", "<start>2021-03"), ("Fri, 5 Mar", "<start>20"),
                ("Friday, the 5th of March 2021", "<start>")]

    def predict(*pairs):
        flags = [f for s, t in pairs for f in ("-i", f"source={s}", "-i", f"decoder_in={t}")]
        return json_lines(cli("predict", "echo_len.nn", "-c", "run-echo-len", "--backend",
                              "reference", *flags, "--json", code=0, cwd=d))
    together = predict(*examples)
    for pair, got in zip(examples, together):
        (alone,) = predict(pair)
        # <start> and one id per character: as many positions as the example's own tokens
        assert len(got["ids"]) == len(pair[1]) - len("<start>") + 1, got
        assert got["ids"] == alone["ids"] and got["text"] == alone["text"], pair
        np.testing.assert_allclose(got["probability"], alone["probability"], rtol=1e-6)


# a character model whose logits are a lookup of its input character: the loss is known from
# the table and the ids alone
CHAR_LOOKUP = """
model Lookup(vocab = 108) {
  input tokens: int32[batch, 16]
  input next: int32[batch, 16]
  logits = embedding(tokens, vocab, vocab)
  output logits
  loss cross_entropy(logits, next)
}
train Lookup { data = imdb_text_sample(maxlen = 16, train_chunks = 32, test_chunks = 8)
               batch = 3 }
"""


def test_eval_encodes_text_with_the_characters_the_run_was_trained_with(tmp_path):
    """A character model trained on one text evaluated on another (`--data imdb-text` for a
    run trained on imdb-text-sample: 108 characters against the sample's 89) got the new
    text's own character ids, silently other ids for most characters. Eval must encode with
    the checkpoint's characters: here those of the sample in reverse order."""
    from nnlang.data import load_dataset
    from nnlang.data.chars import CharTokenizer, tokenizer_from_meta
    (tmp_path / "lm.nn").write_text(CHAR_LOOKUP)
    cli("train", "lm.nn", "--backend", "reference", "--max-steps", "1", "--out", "run",
        code=0, cwd=tmp_path)
    ck = checkpoint.load(tmp_path / "run")
    own = tokenizer_from_meta(ck.data_meta)
    trained = CharTokenizer(own.chars[::-1], own.specials, eos="\n")
    ck.meta["data"]["meta"]["tokenizer"] = trained.settings()
    table = np.random.default_rng(0).normal(size=(108, 108)).astype(np.float32)
    checkpoint.save(tmp_path / "rev.npz", {"logits.weight": table}, ck.meta)
    # the held-out text, written back from the data set's own ids, then encoded by hand
    test = load_dataset("imdb-text-sample(maxlen=16, train_chunks=32, test_chunks=8)").test
    ids = {t: i for i, t in enumerate(trained.vocab)}
    x, y = (np.vectorize(lambda i: ids[own.vocab[i]])(test[k]) for k in ("tokens", "next"))
    z = table[x].astype(np.float64)
    z -= z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, y[..., None], -1).mean()
    out = cli("eval", "lm.nn", "-c", "rev.npz", "--backend", "reference", code=0, cwd=tmp_path)
    assert f"{want:.4f}" in out, (want, out)


def test_json_stays_json_when_an_output_overflows(work):
    """An input far from the training data can overflow the model: --json printed `Infinity`
    and `NaN`, which JSON does not have (jq and JSON.parse refuse the line), and numpy's
    RuntimeWarning named a line of the backend. Now null, with a warning naming the example."""
    d = work[0]
    ck = checkpoint.load(d / "run-two")
    state = {k: np.full_like(v, 10.0) for k, v in ck.state.items() if not k.startswith("opt")}
    checkpoint.save(d / "tens.npz", state, ck.meta)
    out = cli("predict", "two.nn", "-c", "tens.npz", "-i", "a=3e38,0,0", "-i", "b=0,0",
              "-i", "a=1,2,3", "-i", "b=1,1", "--json", code=0, cwd=d)

    def strict(word):
        raise ValueError(f"not JSON: {word}")
    got = [json.loads(line, parse_constant=strict) for line in out.splitlines()
           if line.startswith("{")]
    assert [r["value"] for r in got] == [None, 10 * 6 + 10 * 2 + 10]
    assert "warning: output 'out' of input 'a=3e38,0,0; b=0,0' is not finite" in out
    assert "RuntimeWarning" not in out


def test_a_probability_of_one_half_is_the_class_binary_accuracy_counts():
    """binary_accuracy calls prob > 0.5 positive; predict called prob >= 0.5 positive, so an
    example at exactly 0.5 (float32's sigmoid of any |logit| < 3e-8, an all-zero weight) was
    'pos' in predict and counted as 'neg' by eval's accuracy."""
    import nnlang
    from nnlang.train.inference import interpret_output
    net = nnlang.compile("""
model B {
  input x: float32[batch, 2]
  input y: float32[batch]
  logit = squeeze(dense(x, 1), axis = 1)
  output prob = sigmoid(logit)
  loss bce_with_logits(logit, y)
  metric acc = binary_accuracy(prob, y)
}""", backend="reference", batch=3)
    net.load_state_dict({k: np.zeros_like(v) for k, v in net.parameters().items()},
                        strict=False)
    x, y = np.ones((3, 2), np.float32), np.zeros(3, np.float32)
    assert net.evaluate({"x": x, "y": y})["acc"] == 1.0    # every example counted as class 0
    got = interpret_output(np.asarray(net.forward({"x": x})["prob"]), "binary")
    assert [r["class"] for r in got] == [0, 0, 0] and got[0]["probability"] == 0.5


DIGITS = """
model Digits {
  input image: float32[batch, 784]
  input label: int32[batch]
  logits = dense(image, 10)
  output logits
  loss cross_entropy(logits, label)
}
train Digits { data = mnist_sample batch = 8 }
"""


def test_npz_pixels_are_scaled_as_a_png_of_them_is(tmp_path):
    """An image model's --npz rows of uint8 pixels (as the IDX files and PIL give them) went in
    as 0..255, while the same pixels as a .png or .npy path were scaled to 0..1 as in training:
    another class, at probability 1.0."""
    from nnlang.data import load_dataset
    (tmp_path / "digits.nn").write_text(DIGITS)
    cli("train", "digits.nn", "--backend", "reference", "--max-steps", "1", "--out", "run",
        code=0, cwd=tmp_path)
    state = checkpoint.load(tmp_path / "run").state
    pixels = (load_dataset("mnist-sample").test["image"][:3, 0] * 255).round().astype(np.uint8)
    np.savez(tmp_path / "digits.npz", image=pixels)
    got = json_lines(cli("predict", "digits.nn", "-c", "run", "--npz", "digits.npz",
                         "--backend", "reference", "--json", code=0, cwd=tmp_path))
    logits = pixels.reshape(3, 784) / 255.0 @ state["logits.weight"] + state["logits.bias"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert [r["class"] for r in got] == p.argmax(1).tolist()
    np.testing.assert_allclose([r["probability"] for r in got], p.max(1), rtol=1e-5)


CONDITIONAL = """
model Conditional {
  input IMAGE: float32[batch, 784]
  input label: int32[batch]
  logits = dense(concat(IMAGE, one_hot(label, 10), axis = -1), 3)
  output logits
  loss mean(logits * logits)
}
train Conditional { data = mnist_sample batch = 8 }
"""


@pytest.mark.parametrize("image", ["image", "x"])
def test_a_conditional_image_models_label_input_is_a_class_id(tmp_path, image):
    """A conditional model (a CVAE's label one-hot beside the picture) on an image data set:
    predict read every input as a picture, and the label's 3 failed with "image has shape (),
    expected 28 x 28". The picture input matches by name or, as in training, by role."""
    from nnlang.data import load_dataset
    (tmp_path / "c.nn").write_text(CONDITIONAL.replace("IMAGE", image))
    cli("train", "c.nn", "--backend", "reference", "--max-steps", "1", "--out", "run",
        code=0, cwd=tmp_path)
    state = checkpoint.load(tmp_path / "run").state
    pixels = (load_dataset("mnist-sample").test["image"][:2, 0] * 255).round().astype(np.uint8)
    labels = np.array([3, 7], np.int32)
    np.savez(tmp_path / "c.npz", **{image: pixels, "label": labels})
    np.save(tmp_path / "one.npy", pixels[1])
    want = np.concatenate([pixels.reshape(2, 784) / 255.0, np.eye(10)[labels]], 1) \
        @ state["logits.weight"] + state["logits.bias"]
    got = json_lines(cli("predict", "c.nn", "-c", "run", "--npz", "c.npz", "--backend",
                         "reference", "--json", code=0, cwd=tmp_path))
    np.testing.assert_allclose([r["value"] for r in got], want, rtol=1e-5, atol=1e-6)
    got = json_lines(cli("predict", "c.nn", "-c", "run", "--input", f"{image}=one.npy",
                         "--input", "label=7", "--backend", "reference", "--json", code=0,
                         cwd=tmp_path))
    np.testing.assert_allclose([r["value"] for r in got], want[1:], rtol=1e-5, atol=1e-6)


CUT = """
model Cut {
  input x: float32[batch, 1]
  input y: float32[batch]
  logit = squeeze(dense(x, 1), axis = 1)
  output OUT
  loss bce_with_logits(logit, y)
  metric acc = binary_accuracy(ON, y, threshold = T)
}
"""


@pytest.mark.parametrize("out, on, t, cut", [
    ("prob = sigmoid(logit)", "prob", 0.8, 0.8),              # the metric's own cut
    ("prob = sigmoid(logit)", "logit", 1.0, 1 / (1 + np.exp(-1.0))),   # a logit's cut
    ("logit", "logit", 0.0, 0.5),                             # threshold 0 on a logit output
    ("logit", "sigmoid(logit)", 0.3, 0.3)])
def test_binary_predictions_cut_where_the_models_binary_accuracy_does(tmp_path, out, on, t, cut):
    """predict called every probability above 0.5 class 1, whatever the threshold the model's
    binary_accuracy (and so eval's accuracy) counts with."""
    rng = np.random.default_rng(3)
    x = np.linspace(-3, 3, 13).astype(np.float32)[:, None]
    np.savez(tmp_path / "d.npz", train_x=x, train_y=(x[:, 0] > 0).astype(np.float32),
             test_x=x, test_y=(x[:, 0] > 0).astype(np.float32))
    src = CUT.replace("OUT", out).replace("ON", on).replace("T", repr(t))
    (tmp_path / "cut.nn").write_text(src + "train Cut { data = npz(\"d.npz\") batch = 4 }\n")
    cli("train", "cut.nn", "--backend", "reference", "--out", "run", "--max-steps", "1",
        code=0, cwd=tmp_path)
    ck = checkpoint.load(tmp_path / "run")
    w = rng.uniform(0.5, 2.0)
    state = {**ck.state, "logit.weight": np.full((1, 1), w, np.float32),
             "logit.bias": np.zeros(1, np.float32)}
    checkpoint.save(tmp_path / "set.npz", state, ck.meta)
    raw = ["--", *[repr(v) for v in x[:, 0].tolist()]]
    got = json_lines(cli("predict", "cut.nn", "-c", "set.npz", "--backend", "reference",
                         "--json", *raw, code=0, cwd=tmp_path))
    p = 1 / (1 + np.exp(-w * x[:, 0].astype(np.float64)))
    assert [r["class"] for r in got] == (p > cut).astype(int).tolist()
    assert len(set(r["class"] for r in got)) == 2


def test_several_inputs_from_json_lines(work):
    """--jsonl: one object per line, {"NAME": values} per input (a target key skipped, blank
    lines too); a bad line is an error at its line (and column), naming the key and the
    count of values the input takes."""
    d, a, b = work
    lines = [json.dumps({"a": a[i].tolist(), "b": [[b[i, 0]], [b[i, 1]]], "y": 0.5})
             for i in range(3)]
    (d / "ab.jsonl").write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
    got = json_lines(cli("predict", "two.nn", "-c", "run-two", "--jsonl", "ab.jsonl",
                         "--backend", "reference", "--json", code=0, cwd=d))
    assert [r["input"] for r in got] == ["ab.jsonl:1", "ab.jsonl:3", "ab.jsonl:4"]
    np.testing.assert_allclose([r["value"] for r in got], two_expected(d, a, b), rtol=1e-5)
    for bad, message in (
            ('{"a": [1, 2, 3], "b": [1, 2, 3]}', "bad.jsonl:2: key 'b' has 3 values, but model "
                                                 "input 'b' takes 2 per example"),
            ('{"a": [1, 2, 3], "b": [1, 2],}', "bad.jsonl:2:30: not JSON"),
            ('[1, 2, 3]', "bad.jsonl:2: a JSON list, not an object"),
            ('{"a": [1, 2, 3]}', "bad.jsonl:2: no value for model input(s) b"),
            ('{"a": [1, 2, 3], "bb": [1, 2]}', "bad.jsonl:2: key 'bb': the model has no input "
                                               "'bb'"),
            ('{"a": [[1, 2], [3]], "b": [1, 2]}', "bad.jsonl:2: key 'a' is not numbers of one "
                                                  "shape")):
        (d / "bad.jsonl").write_text(lines[0] + "\n" + bad + "\n")
        out = cli("predict", "two.nn", "-c", "run-two", "--jsonl", "bad.jsonl", "--backend",
                  "reference", cwd=d)
        assert message in out, out
    assert "pass the inputs one way, not --npz and --jsonl" in cli(
        "predict", "two.nn", "-c", "run-two", "--npz", "ab.npz", "--jsonl", "ab.jsonl", cwd=d)


def test_results_come_a_batch_at_a_time_so_a_late_bad_line_keeps_the_earlier_ones(work):
    """predict gathered every result before printing any: over a big --jsonl nothing came
    until the end, and an error on a late line lost every result before it. Each batch's
    results are printed when it is done (the model's batch is 4: lines 1-8 are two batches),
    in --json and in the table, then the located error of line 9."""
    d, a, b = work
    rng = np.random.default_rng(5)
    a9, b9 = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    lines = [json.dumps({"a": a9[i].tolist(), "b": b9[i].tolist()}) for i in range(8)]
    (d / "late.jsonl").write_text("\n".join(lines + ['{"a": [1, 2, 3]}']) + "\n")
    out = cli("predict", "two.nn", "-c", "run-two", "--jsonl", "late.jsonl", "--backend",
              "reference", "--json", cwd=d)
    got = json_lines(out)
    assert [r["input"] for r in got] == [f"late.jsonl:{i}" for i in range(1, 9)]
    np.testing.assert_allclose([r["value"] for r in got], two_expected(d, a9, b9), rtol=1e-5)
    assert "late.jsonl:9: no value for model input(s) b" in out
    table = cli("predict", "two.nn", "-c", "run-two", "--jsonl", "late.jsonl", "--backend",
                "reference", cwd=d)
    assert all(f"late.jsonl:{i} " in table for i in range(1, 9))
    assert table.index("late.jsonl:8 ") < table.index("late.jsonl:9: no value")
    # whole runs print as before: one table per output, one JSON line per result
    (d / "ok.jsonl").write_text("\n".join(lines[:3]) + "\n")
    table = cli("predict", "two.nn", "-c", "run-two", "--jsonl", "ok.jsonl", "--backend",
                "reference", code=0, cwd=d)
    assert table.count("input") == 1 and table.count("ok.jsonl:") == 3


def test_json_lines_split_at_newlines_only_and_null_or_true_is_no_number(work):
    """A JSON string may hold U+2028 (LINE SEPARATOR) unescaped (json.dumps(ensure_ascii=False)
    writes it so): str.splitlines cut the line there and a valid file was "not JSON". A null or
    a true among the values became NaN or 1.0: one was refused as "nan is not a finite number"
    at "row 1" (the user wrote null, on line 2), the other taken silently. Lines end at \n (a
    \r\n too, as Windows writes them); null and booleans are errors at their line."""
    d, a, b = work
    rows = [{"a": a[i].tolist(), "b": [[b[i, 0]], [b[i, 1]]], "y": "x\u2028y"}
            for i in range(2)]
    (d / "ls.jsonl").write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows),
                                encoding="utf-8", newline="")
    (d / "plain.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    want = json_lines(cli("predict", "two.nn", "-c", "run-two", "--jsonl", "plain.jsonl",
                          "--backend", "reference", "--json", code=0, cwd=d))
    got = json_lines(cli("predict", "two.nn", "-c", "run-two", "--jsonl", "ls.jsonl",
                         "--backend", "reference", "--json", code=0, cwd=d))
    assert [r["input"] for r in got] == ["ls.jsonl:1", "ls.jsonl:2"]
    assert [r["value"] for r in got] == [r["value"] for r in want]
    for bad, value in (('{"a": [1, null, 3], "b": [1, 2]}', "null"),
                       ('{"a": [1, 2, 3], "b": [true, 2]}', "true"),
                       ('{"a": null, "b": [1, 2]}', "null")):
        (d / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n" + bad + "\n")
        out = cli("predict", "two.nn", "-c", "run-two", "--jsonl", "bad.jsonl", "--backend",
                  "reference", code=1, cwd=d)
        key = "b" if value == "true" else "a"
        assert f"bad.jsonl:2: key '{key}' holds {value}, not a number" in out, out


def test_a_bad_value_in_json_lines_is_named_by_its_line(work):
    """A value encode_input refuses (infinity, a fraction for an int input) was said at "row N":
    the example's index in its run, counted from 0, blank lines left out (and, for inputs of
    symbolic length, from the start of its run of one shape: "row 0" for line 4). It is the
    line, as every other --jsonl error says it."""
    d, a, b = work
    good = json.dumps({"a": a[0].tolist(), "b": [[b[0, 0]], [b[0, 1]]]})
    (d / "inf.jsonl").write_text(good + "\n\n" + good.replace("[[", "[[1e999, ", 1).replace(
        f"[[1e999, {b[0, 0]}], ", "[[1e999], ") + "\n")
    out = cli("predict", "two.nn", "-c", "run-two", "--jsonl", "inf.jsonl", "--backend",
              "reference", code=1, cwd=d)
    assert "--jsonl inf.jsonl, key 'b', line 3: inf is not a finite number" in out, out


ONE = """
model One {
  input x: float32[batch, 2]
  input label: float32[batch]
  p = squeeze(dense(x, 1), axis = 1)
  output p
  loss mse(p, label)
}
train One { data = csv("reg.csv", target = "price") batch = 2 }
"""


def test_a_table_of_examples_for_a_model_with_one_input(tmp_path):
    """--csv: the training table's format (a header, numbers), each row an example of the one
    input, its target column skipped; bad cells and tables are errors at file:line."""
    (tmp_path / "reg.csv").write_text("area,rooms,price\n50,2,150.5\n72,3,210\n95,4,280\n")
    (tmp_path / "one.nn").write_text(ONE)
    cli("train", "one.nn", "--backend", "reference", "--out", "run", "--max-steps", "1",
        code=0, cwd=tmp_path)
    state = checkpoint.load(tmp_path / "run").state
    x = np.array([[50, 2], [72, 3], [95, 4]], np.float64)
    want = (x @ state["p.weight"] + state["p.bias"])[:, 0]
    got = json_lines(cli("predict", "one.nn", "-c", "run", "--csv", "reg.csv", "--backend",
                         "reference", "--json", code=0, cwd=tmp_path))
    assert [r["input"] for r in got] == ["reg.csv:2", "reg.csv:3", "reg.csv:4"]
    np.testing.assert_allclose([r["value"] for r in got], want, rtol=1e-5)
    (tmp_path / "new.csv").write_text("area,rooms\n\n95,4\n")   # no target: the same
    got = json_lines(cli("predict", "one.nn", "-c", "run", "--csv", "new.csv", "--backend",
                         "reference", "--json", code=0, cwd=tmp_path))
    assert [r["input"] for r in got] == ["new.csv:3"]
    np.testing.assert_allclose(got[0]["value"], want[2], rtol=1e-5)
    for table, message in (("area,rooms\n50,2\n72,\n", "bad.csv:3: column 'rooms' is empty"),
                           ("rooms,area\n2,50\n", "columns ['rooms', 'area'] are not the ones "
                                                  "the model was trained on, in order: "
                                                  "['area', 'rooms']"),
                           ("area,rooms\n50,2,7\n", "bad.csv:2: the row has 3 values but the "
                                                    "header has 2 columns")):
        (tmp_path / "bad.csv").write_text(table)
        out = cli("predict", "one.nn", "-c", "run", "--csv", "bad.csv", "--backend",
                  "reference", cwd=tmp_path)
        assert message in out, out


@pytest.mark.parametrize("flag", ["--npz", "--jsonl"])
def test_an_input_path_that_is_no_file_says_what_it_is(work, flag):
    """`--npz` or `--jsonl` of a folder said "file not found", though the path is there; an
    empty device (/dev/null) is read, and holds no example."""
    d = work[0]
    out = cli("predict", "two.nn", "-c", "run-two", flag, str(d), "--backend", "reference",
              cwd=d)
    assert f"{flag} {d} is a folder, not a file" in out, out
    out = cli("predict", "two.nn", "-c", "run-two", flag, "/dev/null", "--backend", "reference",
              cwd=d)
    assert ("cannot read --npz /dev/null" if flag == "--npz" else
            "--jsonl /dev/null holds no example") in out, out
    assert f"{flag} file not found: nope" in cli("predict", "two.nn", "-c", "run-two", flag,
                                                 "nope", "--backend", "reference", cwd=d)


def test_json_lines_are_read_a_line_at_a_time(work):
    """--jsonl read the whole file into memory (and split it into a list of its lines) before
    the first example ran: a file of many gigabytes could not be predicted. It is read as the
    examples run: the first batch takes memory far below the file's size, and the whole file
    predicts as the same rows from an .npz do."""
    import tracemalloc

    import nnlang
    from nnlang.train.inference import model_inputs
    d, a, b = work
    pad = "x" * 50_000   # a target key, skipped, that makes each line long
    lines = [json.dumps({"a": a[i % 3].tolist(), "b": b[i % 3].tolist(), "y": pad})
             for i in range(300)]
    (d / "big.jsonl").write_text("\n".join(lines) + "\n")
    size = (d / "big.jsonl").stat().st_size
    batches = model_inputs(nnlang.load(TWO).graph, {}, size=4, jsonl=d / "big.jsonl")
    tracemalloc.start()
    try:
        first, described = next(batches)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    batches.close()
    assert described == [f"big.jsonl:{i}" for i in range(1, 5)] and first["a"].shape == (4, 3)
    assert peak < size / 20, (peak, size)
    got = json_lines(cli("predict", "two.nn", "-c", "run-two", "--jsonl", "big.jsonl",
                         "--backend", "reference", "--json", code=0, cwd=d))
    assert len(got) == 300 and got[-1]["input"] == "big.jsonl:300"
    np.testing.assert_allclose([r["value"] for r in got], np.tile(two_expected(d, a, b), 100),
                               rtol=1e-5)
