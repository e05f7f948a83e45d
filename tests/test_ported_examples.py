"""Models from PyTorch's and Keras' official examples, ported to .nn as a user writes them
from docs/language.md, where a port found something nnlang got wrong."""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.data.chars import END, PAD, START, CharTokenizer

# *** Keras lstm_seq2seq: one-hot characters, the encoder's (h, c) start the decoder ***
LSTM_SEQ2SEQ = """
model Translate(chars = 10, src_len = 6, tgt_len = 5, latent = 8) {
  input encoder_input: int32[batch, src_len]
  input decoder_input: int32[batch, tgt_len]    # <start> + target
  input decoder_target: int32[batch, tgt_len]   # target + <end>
  _, state_h, state_c = lstm(one_hot(encoder_input, chars), latent, return_state = true)
  dec = lstm(one_hot(decoder_input, chars), latent, return_sequences = true,
             initial_h = state_h, initial_c = state_c)
  logits = dense(dec, chars)
  output logits
  loss cross_entropy(logits, decoder_target)
}
generate Translate {
  source = encoder_input
  tokens = decoder_input
  logits = logits
  start = 1
  stop = 2
}
"""


@pytest.mark.parametrize("decoder", [
    "dec = lstm(one_hot(decoder_input, chars), latent, return_sequences = true,",
    # Keras' own decoder: LSTM(latent_dim, return_sequences=True, return_state=True), its
    # states dropped (`decoder_outputs, _, _ = decoder_lstm(...)`)
    "dec, _, _ = lstm(one_hot(decoder_input, chars), latent, return_sequences = true,\n"
    "                   return_state = true,",
], ids=["decoder", "decoder_states_dropped"])
def test_lstm_seq2seq_on_one_hot_characters_decodes_one_step_at_a_time(decoder):
    """Keras' example feeds one-hot characters: `one_hot` of the decoder's tokens is each
    position's own row, as `embedding` is, yet generation called it a mix of positions and
    reran the whole decoder for every character; so it did for a decoder with return_state
    whose states nothing reads. Greedy decoding with the carried LSTM state equals a loop that
    reruns the full model per character (Keras' decode_sequence)."""
    source = LSTM_SEQ2SEQ.replace(
        "dec = lstm(one_hot(decoder_input, chars), latent, return_sequences = true,", decoder)
    assert decoder in source
    net = nnlang.compile(source, backend="reference", batch=2, seed=5)
    tok = CharTokenizer("abcdefg", specials=(PAD, START, END))
    prompts = ["abc", "gfed"]
    gen = net.generate(prompts, tokenizer=tok, greedy=True)
    assert gen.mode == "incremental", gen.reason
    source = np.zeros((2, 6), np.int32)
    for r, p in enumerate(prompts):
        source[r, :len(p)] = [tok.ids[c] for c in p]
    dec = np.zeros((2, 5), np.int32)
    dec[:, 0] = tok.bos_id
    want = [[], []]
    for t in range(5):
        z = np.asarray(net.forward({"encoder_input": source, "decoder_input": dec})["logits"])
        z = z[:, t].astype(np.float64)
        z[:, [tok.pad_id, tok.bos_id]] = -np.inf     # never generated
        for r in range(2):
            if not want[r] or want[r][-1] != tok.eos_id:
                want[r].append(int(z[r].argmax()))
        if t + 1 < 5:
            dec[:, t + 1] = z.argmax(-1)
    assert [s.ids for s in gen.samples] == want


# *** Keras text_classification_with_transformer: GlobalAveragePooling1D on channels last ***
TEXT_TRANSFORMER = """
block TransformerBlock(x, embed_dim, num_heads, ff_dim) {
  att = multi_head_attention(x, heads = num_heads, dim = num_heads * embed_dim)
  out1 = layer_norm(x + dropout(att, 0.1), eps = 1e-6)
  ffn = dense(out1, ff_dim, activation = "relu") |> dense(embed_dim)
  return layer_norm(out1 + dropout(ffn, 0.1), eps = 1e-6)
}
model TextTransformer(vocab = 50, maxlen = 8, embed_dim = 32) {
  input tokens: int32[batch, maxlen]
  input label: int32[batch]
  x = embedding(tokens, vocab, embed_dim)
  p = positional_encoding(x, kind = "learned", max_len = maxlen)
  t = TransformerBlock(p, embed_dim, 2, 32)
  pooled = POOL
  output pooled
  logits = dropout(pooled, 0.1) |> dense(20, activation = "relu") |> dropout(0.1) |> dense(2)
  loss cross_entropy(logits, label)
}
"""


def test_global_pool_of_a_features_last_sequence_is_a_located_warning():
    """Keras' GlobalAveragePooling1D pools the time steps of [batch, steps, features];
    global_avg_pool reads axis 1 as the channels, so the port's `global_avg_pool(t)` averaged
    each position's 32 features and fed [batch, 8] to the head, with no word. The warning is
    at the pool, and its hint's channels_last = true pools the steps (numpy's mean over axis
    1 of the block's output)."""
    program = nnlang.load(TEXT_TRANSFORMER.replace("POOL", "global_avg_pool(t)"))
    (warning,) = program.warnings
    text = warning.render()
    assert text.startswith("<string>:14:12: warning: global_avg_pool averages the 32 features "
                           "of each of the 8 steps of [batch, 8, 32]"), text
    assert "global_avg_pool(t, channels_last = true)" in text and "mean(t, axis = 1)" in text
    for fixed in ("global_avg_pool(t, channels_last = true)", "mean(t, axis = 1)"):
        src = TEXT_TRANSFORMER.replace("POOL", fixed).replace("  output pooled\n",
                                                               "  output pooled\n  output t\n")
        assert nnlang.load(src).warnings == []
        net = nnlang.compile(src, backend="reference", batch=2, seed=1, dtype="float64")
        rng = np.random.default_rng(0)
        out = net.forward({"tokens": rng.integers(0, 50, (2, 8)).astype(np.int32),
                           "label": np.array([0, 1], np.int32)})
        np.testing.assert_allclose(out["pooled"], np.asarray(out["t"]).mean(axis=1),
                                   rtol=1e-12)
    max_pool = nnlang.load(TEXT_TRANSFORMER.replace("POOL", "global_max_pool(t)")).warnings
    assert [w.render().split(": warning: ")[1].split(" the 32")[0] for w in max_pool] == \
        ["global_max_pool takes the max of"]


def test_keras_and_pytorch_layers_without_an_op_say_what_to_write():
    """RepeatVector and TimeDistributed (Keras' addition_rnn) and LSTMCell (PyTorch's
    time_sequence_prediction) had only "see `nnlang ops`", or "did you mean 'lstm'?" for a
    cell whose output the example feeds back. RepeatVector's formula, run, is numpy's repeat."""
    def hint(call):
        try:
            nnlang.load(f"model M {{\n  input x: float32[batch, 3]\n  output y = {call}\n}}")
        except nnlang.NNError as e:
            return e.diagnostics[0].hint
        raise AssertionError(f"{call} was accepted")
    formula = hint("RepeatVector(x, 4)").split(": ", 1)[1].split(" (Keras'")[0]
    assert "broadcast_to(unsqueeze(x, axis = 1)" in formula
    net = nnlang.compile("model M {\n  input x: float32[batch, 3]\n  output y = "
                         f"{formula.replace('n, units', '4, 3')}\n}}",
                         backend="reference", batch=2, dtype="float64")
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(net.forward({"x": x})["y"], np.repeat(x[:, None], 4, axis=1))
    assert "TimeDistributed(Dense(k)) is dense(x, k)" in hint("time_distributed(x)")
    for cell, layer in (("LSTMCell", "lstm"), ("gru_cell", "gru"), ("SimpleRNNCell", "rnn")):
        assert f"{layer}(x, units, return_sequences = true)" in hint(f"{cell}(x)")
        assert "scan Cell(...) over" in hint(f"{cell}(x)")


def test_pytorch_plateau_patience_zero_says_its_count_here():
    """PyTorch's word_language_model divides lr by 4 after any epoch whose validation loss
    does not improve: ReduceLROnPlateau(factor = 0.25, patience = 0). Here patience counts
    from 1 (docs/language.md), and patience = 0 was refused with ">= 1 (epochs)" alone."""
    src = """model M {
  input x: float32[batch, 3]
  input y: float32[batch]
  loss mse(squeeze(dense(x, 1), axis = -1), y)
}
train M {
  schedule = plateau(factor = 0.25, patience = 0)
}"""
    with pytest.raises(nnlang.NNError) as err:
        nnlang.load(src)
    text = str(err.value)
    assert "<string>:7:48" in text and "ReduceLROnPlateau(patience = 0)" in text, text
    assert "is patience = 1 here" in text
    assert nnlang.load(src.replace("patience = 0", "patience = 1")).train.schedule is not None
