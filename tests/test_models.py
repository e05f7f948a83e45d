"""The reference workloads in models/: each checks cleanly, has the parameter count of the
Keras/PyTorch model it mirrors, and its summary matches tests/golden/summary/<model>.txt.

Regenerate the summary goldens (prints a diff of what changed) with:

    python -m tests.regen
"""
from __future__ import annotations

import difflib

import pytest

from nnlang.frontend.elaborate import load
from nnlang.ir.summary import summarize
from tests.regen import MODELS, SUMMARY_DIR, rel, summary_text

ALL = sorted(p.stem for p in MODELS.glob("*.nn"))

# Keras counts: Dense(u) on n inputs n*u + u; Embedding(V, d) V*d; LSTM(u) on n features
# 4*(n*u + u*u + u); GRU(u, reset_after=True) 3*(n*u + u*u + 2*u); Conv1D/Conv2D(f, k) on c
# channels f*c*prod(k) + f. PyTorch: MultiheadAttention(d) 4*d*d + 4*d; LayerNorm(d) 2*d.
EMBED = 20000 * 128                                     # Keras Embedding(20000, 128)
HEAD = 128 * 1 + 1                                      # Keras Dense(1) on 128 inputs
ENCODER = ((4 * 128 * 128 + 4 * 128)                    # torch MultiheadAttention(128, 4)
           + 2 * 128                                    # LayerNorm(128)
           + (128 * 512 + 512) + (512 * 128 + 128)      # Linear(128, 512), Linear(512, 128)
           + 2 * 128)                                   # LayerNorm(128)
SMALL_FFN = (64 * 256 + 256) + (256 * 64 + 64)          # Linear(64, 256), Linear(256, 64)
SMALL_ENCODER = (4 * 64 * 64 + 4 * 64) + SMALL_FFN + 2 * 2 * 64     # attention, ffn, 2 norms
SMALL_DECODER = 2 * (4 * 64 * 64 + 4 * 64) + SMALL_FFN + 3 * 2 * 64  # self + cross, 3 norms
REFERENCE = {
    # Keras Dense(512) on 784 inputs, Dense(256) on 512, Dense(10) on 256
    "mlp": (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10),
    # Conv2D(32, 3) on 1 channel, Conv2D(64, 3) on 32, Dense(128) on 64*7*7, Dense(10) on 128
    "cnn": (32 * 1 * 9 + 32) + (64 * 32 * 9 + 64) + (3136 * 128 + 128) + (128 * 10 + 10),
    # Keras LSTM(128) on 128 features: 4 * (128*128 + 128*128 + 128) = 131,584
    "lstm": EMBED + 4 * (128 * 128 + 128 * 128 + 128) + HEAD,
    "lstm_full": EMBED + 4 * (128 * 128 + 128 * 128 + 128) + HEAD,   # lstm on whole reviews
    # Keras GRU(128, reset_after=True): 3 * (128*128 + 128*128 + 2*128) = 99,072
    "gru": EMBED + 3 * (128 * 128 + 128 * 128 + 2 * 128) + HEAD,
    # Keras Conv1D(128, 5) on 128 channels: 128*128*5 + 128 = 82,048
    "conv1d": EMBED + (128 * 128 * 5 + 128) + HEAD,
    # learned positions Embedding(128, 128), 2 x torch TransformerEncoderLayer(128, 4, 512)
    # (198,272 each), Dense(1)
    "transformer": EMBED + 128 * 128 + 2 * ENCODER + HEAD,
    # character GPT: Embedding(108, 128), learned positions (128, 128), 2 pre-norm decoder
    # layers (the same pieces as ENCODER), a final LayerNorm(128), Linear(128, 108)
    "gpt": 108 * 128 + 128 * 128 + 2 * ENCODER + 2 * 128 + (128 * 108 + 108),
    # torch nn.Transformer(64, 4, 2 + 2 layers, dim_feedforward=256) without its final norms:
    # two Embedding(62, 64), learned positions (32 + 11) x 64, Linear(64, 62)
    "seq2seq": 2 * 62 * 64 + (32 + 11) * 64 + 2 * SMALL_ENCODER + 2 * SMALL_DECODER
    + (64 * 62 + 62),
    # Keras seq2seq: two Embedding(62, 32), encoder and decoder LSTM(128) on 32 features
    # (4 * (128 * (32 + 128) + 128) = 82,432 each), Dense(62) on 128
    "seq2seq_lstm": 2 * 62 * 32 + 2 * 4 * (128 * (32 + 128) + 128) + (128 * 62 + 62),
    # the Keras VAE, dense: Dense(256) on 784, Dense(2) on 256 twice (mu, logvar), Dense(256)
    # on 2, Dense(784) on 256
    "vae": (784 * 256 + 256) + 2 * (256 * 2 + 2) + (2 * 256 + 256) + (256 * 784 + 784),
}
# The numbers the task quotes, as a check on the formulas above.
QUOTED = {"mlp": 535_818, "cnn": 421_642, "lstm": 2_691_713, "lstm_full": 2_691_713,
          "gru": 2_659_201, "conv1d": 2_642_177, "transformer": 2_973_057, "gpt": 440_940,
          "seq2seq": 248_190,
          "seq2seq_lstm": 176_830,  # by hand: 3,968 + 2 x 82,432 + 7,998
          "vae": 404_244}           # by hand: 200,960 + 2 x 514 + 768 + 201,488


def test_reference_formulas_match_quoted_counts():
    assert REFERENCE == QUOTED


def test_every_model_has_a_reference():
    assert set(ALL) == set(REFERENCE), "add the reference count of new models to REFERENCE"


@pytest.mark.parametrize("name", ALL)
def test_param_count(name):
    s = summarize(load(rel(MODELS / f"{name}.nn")))
    assert s.total_params == REFERENCE[name]
    assert s.trainable_params == s.total_params
    assert sum(r.params for r in s.rows) == s.total_params


@pytest.mark.parametrize("name", ALL)
def test_summary_golden(name):
    golden = SUMMARY_DIR / f"{name}.txt"
    got = summary_text(MODELS / f"{name}.nn")
    want = golden.read_text() if golden.exists() else ""
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            str(golden), "now"))
        pytest.fail(f"summary of {name} changed (regenerate: python -m tests.regen)\n{diff}")


def test_train_sections():
    mlp = load(rel(MODELS / "mlp.nn")).train
    assert (mlp.batch, mlp.epochs, mlp.data.name, mlp.optimizer.name) == (128, 10, "mnist", "adam")
    assert mlp.optimizer.options["lr"] == pytest.approx(1e-3) and mlp.schedule.name == "cosine"
    lstm = load(rel(MODELS / "lstm.nn")).train
    assert lstm.clip_norm == 1.0 and lstm.data.options == {"vocab": 20000, "maxlen": 200}
    assert load(rel(MODELS / "cnn.nn")).train.batch == 64
    tr = load(rel(MODELS / "transformer.nn"))
    assert tr.train.batch == 32 and tr.train.data.options == {"vocab": 20000, "maxlen": 128}


def test_transformer_encoder_is_one_block_repeated():
    prog = load(rel(MODELS / "transformer.nn"))
    text = (MODELS / "transformer.nn").read_text()
    assert text.count("multi_head_attention(") == 1 and "repeat layers" in text
    assert {p.split(".")[1] for p in prog.graph.params if p.startswith("h.")} == {"0", "1"}


def test_overrides_change_the_model():
    prog = load(rel(MODELS / "mlp.nn"), overrides={"hidden1": 256})
    assert summarize(prog).total_params == (784 * 256 + 256) + (256 * 256 + 256) + 2570
