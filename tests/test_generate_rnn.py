"""Incremental decoding of recurrent models (nnlang/runtime/decode_graphs.py): the step graph
carries each rnn/lstm/gru layer's state from token to token; its logits against the full forward
pass at every position, greedy and beam tokens against full recomputation, and the models that
still recompute their prefix."""
from __future__ import annotations

import numpy as np
import pytest

from nnlang.data.chars import CharTokenizer
from nnlang.frontend.elaborate import load
from nnlang.passes.pipeline import forward_graph
from nnlang.runtime.decode_graphs import PROMPT_MASK, derive
from nnlang.runtime.generate import Generator, options_from
from nnlang.runtime.net import Net, _compile

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?'-:;()"   # ids 2..38 (the models score 40)
# two stacked layers of each kind, the second masked by the tokens (pad 0 keeps its state)
LM = """
model RnnLm(vocab = 40, maxlen = 12) {
  input tokens: int32[batch, maxlen]
  x = embedding(tokens, vocab, 8)
  h = lstm(x, 8, return_sequences = true) |> CELL(6, return_sequences = true, mask = tokens != 0)
  output logits = dense(h, vocab)
}
generate RnnLm {
  tokens = tokens
  logits = logits
}
"""
# an LSTM encoder-decoder: the decoder starts from the encoder's final (h, c)
SEQ2SEQ = """
model S2s(vocab = 16, src_len = 9, tgt_len = 7) {
  input source: int32[batch, src_len]
  input decoder_in: int32[batch, tgt_len]
  enc, h, c = embedding(source, vocab, 8) |> lstm(10, return_state = true, mask = source != 0)
  y = embedding(decoder_in, vocab, 8) |> lstm(10, initial_h = h, initial_c = c, return_sequences = true)
  output logits = dense(y, vocab)
}
generate S2s {
  source = source
  tokens = decoder_in
  logits = logits
  start = 1
  stop = 2
}
"""


def lm(cell="lstm", backend="reference", seed=0):
    return Net(load(LM.replace("CELL", cell)), backend=backend, batch=2, seed=seed)


def generator(net, tok, recompute=False):
    gen = Generator(net, net.program.generate, tok)
    if recompute:   # the reference: every token reruns the model on the whole prefix
        gen.graphs, gen.mode = None, "recompute"
    return gen


def step_logits(net, tokens, prompt_len, extra=None, zero_state=False):
    """Prefill on tokens[:, :prompt_len], then one step per later position: the logits of
    every position from the carried state, [batch, len, vocab]."""
    spec = net.program.generate
    graphs = derive(net.user, spec)
    batch, steps = tokens.shape
    state = dict(net.state)
    prefill = _compile(forward_graph(graphs.prefill, batch, "float32", ("outputs",)),
                       net.backend, state)
    keep = np.arange(steps) < prompt_len
    out = prefill.run({spec.tokens: np.where(keep, tokens, 0),
                       PROMPT_MASK: np.broadcast_to(keep, tokens.shape).astype(np.float32),
                       **(extra or {})})
    for name in graphs.caches:
        state[name] = np.array(out[name]) * (0 if zero_state else 1)
    step = _compile(forward_graph(graphs.step, batch, "float32", ("outputs",)), net.backend,
                    state)
    got = [np.array(out["logits"])[:, :prompt_len]]
    for t in range(prompt_len, steps):
        feeds = {spec.tokens: tokens[:, t:t + 1], "_pos": np.full(batch, t, np.int32),
                 **{k: out[k] for k in graphs.statics}}
        got.append(np.array(step.run(feeds)["logits"]))
    return np.concatenate(got, axis=1)


def random_tokens(shape, vocab=40, seed=0):
    return np.random.default_rng(seed).integers(3, vocab, shape).astype(np.int32)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_step_logits_match_the_full_forward_at_every_position(cell):
    net = lm(cell)
    tokens = random_tokens((2, 12))
    full = net.forward({"tokens": tokens})["logits"]
    got = step_logits(net, tokens, 3)
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)
    # the step really reads the carried state: from zeros the logits differ
    blind = step_logits(net, tokens, 3, zero_state=True)
    assert np.abs(blind[:, 3:] - full[:, 3:]).max() > 1e-3
    graphs = derive(net.user, net.program.generate)
    assert set(graphs.caches) == {"_state:0.h", "_state:0.c", "_state:1.h"} | (
        {"_state:1.c"} if cell == "lstm" else set())


def test_prompts_of_different_lengths_prefill_to_their_own_end():
    net = lm("lstm")
    tokens = random_tokens((2, 12), seed=3)
    full = net.forward({"tokens": tokens})["logits"]
    spec = net.program.generate
    graphs = derive(net.user, spec)
    prefill = _compile(forward_graph(graphs.prefill, 2, "float32", ("outputs",)), net.backend,
                       dict(net.state))
    lengths = np.array([2, 7])
    keep = np.arange(12) < lengths[:, None]
    out = prefill.run({"tokens": np.where(keep, tokens, 0), PROMPT_MASK: keep.astype("f4")})
    rows = np.arange(2)
    np.testing.assert_allclose(np.array(out["logits"])[rows, lengths - 1],
                               full[rows, lengths - 1], atol=1e-5, rtol=0)
    # the state after each row's own prompt: one full forward per row, cut at its length
    for r, n in enumerate(lengths):
        cut = np.where(np.arange(12) < n, tokens[r], 0)[None].repeat(2, 0)
        want = prefill.run({"tokens": cut, PROMPT_MASK: np.ones((2, 12), "f4")})
        for name in graphs.caches:
            if name.startswith("_state:0"):   # the unmasked layer: zeros after n change it
                continue
            np.testing.assert_allclose(np.array(out[name])[r], np.array(want[name])[0],
                                       atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_greedy_with_the_carried_state_gives_the_tokens_of_full_recomputation(backend):
    net = lm("lstm", backend)
    tok = CharTokenizer(CHARS)
    prompts = ["the movie", "a"]     # different lengths share the batch
    opts = options_from(net.program.generate, {"max_new": 8})
    got = generator(net, tok).generate(prompts, opts)
    want = generator(net, tok, recompute=True).generate(prompts, opts)
    assert got.mode == "incremental" and want.mode == "recompute"
    assert [s.ids for s in got.samples] == [s.ids for s in want.samples]
    # 3 + 9 fill maxlen = 12, and the prediction at position 11 is a 4th token
    assert [len(s.ids) for s in got.samples] == [4, 8]


def test_beam_search_with_the_carried_state_matches_recomputation():
    net = lm("gru")
    tok = CharTokenizer(CHARS)
    opts = options_from(net.program.generate, {"max_new": 5, "beam": 3})
    got = generator(net, tok).generate(["the", "ok"], opts)
    want = generator(net, tok, recompute=True).generate(["the", "ok"], opts)
    assert [s.ids for s in got.samples] == [s.ids for s in want.samples]
    assert [s.score for s in got.samples] == pytest.approx([s.score for s in want.samples],
                                                            abs=1e-5)


def test_an_lstm_encoder_decoder_steps_from_the_encoders_state():
    net = Net(load(SEQ2SEQ), backend="reference", batch=2, seed=4)
    source = random_tokens((2, 9), 16, seed=1)
    source[0, 5:] = 0   # padding, masked by the encoder
    dec = random_tokens((2, 7), 16, seed=2)
    full = net.forward({"source": source, "decoder_in": dec})["logits"]
    got = step_logits(net, dec, 1, {"source": source})
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)
    tok = CharTokenizer("0123456789-")   # 13 ids, the model scores 16
    for opts in ({"max_new": 7}, {"max_new": 5, "beam": 2}):
        opts = options_from(net.program.generate, opts)
        runs = [generator(net, tok, r).generate(["12-34", "7"], opts) for r in (False, True)]
        assert runs[0].mode == "incremental"
        assert [s.ids for s in runs[0].samples] == [s.ids for s in runs[1].samples]


@pytest.mark.parametrize("layer, words", [
    ("lstm(x, 8, return_sequences = true, bidirectional = true)", "bidirectional"),
    # NOTE: a step graph carrying the state forward would have read the tokens the wrong way
    ("lstm(x, 8, return_sequences = true, go_backwards = true)", "go_backwards"),
    ("lstm(x, 8) |> unsqueeze(axis = 1) |> broadcast_to(shape = [batch, maxlen, 8])",
     "return_sequences = false"),
])
def test_recurrent_layers_that_see_later_tokens_still_recompute(layer, words):
    source = LM.replace("lstm(x, 8, return_sequences = true) |> CELL(6, return_sequences = "
                        "true, mask = tokens != 0)", layer)
    net = Net(load(source), backend="reference", batch=2, seed=0)
    got = generator(net, CharTokenizer(CHARS)).generate(
        ["ab"], options_from(net.program.generate, {"max_new": 2}))
    assert got.mode == "recompute" and words in got.reason and "lstm" in got.reason


@pytest.mark.parametrize("layer", ["flip(x, axis = -1) |> lstm(8, return_sequences = true)",
                                   "x[:, :, ::-1] |> lstm(8, return_sequences = true)"])
def test_reversing_each_tokens_features_decodes_with_the_cache(layer):
    """flip over the feature axis reverses each position's own features: generation stepped
    with the cache, as for a slice of that axis; it recomputed every prefix, saying flip "mixes
    positions". The ids are those of recomputing the whole prefix per token."""
    source = LM.replace("lstm(x, 8, return_sequences = true) |> CELL(6, return_sequences = "
                        "true, mask = tokens != 0)", layer)
    net = Net(load(source), backend="reference", batch=2, seed=0)
    opts = options_from(net.program.generate, {"max_new": 4})
    runs = [generator(net, CharTokenizer(CHARS), r).generate(["ab", "c"], opts)
            for r in (False, True)]
    assert runs[0].mode == "incremental", runs[0].reason
    assert [s.ids for s in runs[0].samples] == [s.ids for s in runs[1].samples]


def test_a_scan_over_the_tokens_recomputes_and_says_it_is_the_scan():
    """A hand-written cell under `scan` on the token stream recomputes its prefix (only the
    builtin rnn/lstm/gru carry their state from token to token), and the reason names the
    scan at its line: it named the `transpose` that the scan lowers to, an op the model does
    not contain as written."""
    source = """
block Cell(x, h, w) {
  h2 = tanh(x @ w + h)
  return h2, h2
}
model RnnLm(vocab = 40, maxlen = 12) {
  input tokens: int32[batch, maxlen]
  param w: float32[8, 6]
  x = embedding(tokens, vocab, 8)
  h, last = scan Cell(broadcast_to(0.0, shape = [batch, 6]), w = w) over x
  output logits = dense(h, vocab)
}
generate RnnLm {
  tokens = tokens
  logits = logits
}
"""
    net = Net(load(source), backend="reference", batch=2, seed=0)
    got = generator(net, CharTokenizer(CHARS)).generate(
        ["ab", "c"], options_from(net.program.generate, {"max_new": 3}))
    assert got.mode == "recompute"
    assert got.reason.startswith("scan (<string>:10)"), got.reason
    assert "transpose" not in got.reason and "rnn, lstm or gru" in got.reason, got.reason
    assert [len(s.ids) for s in got.samples] == [3, 3]


# CS224n's NMT: a bidirectional LSTM encoder, a decoder started from a projection of its final
# states, multiplicative (Luong) attention over the encoder's outputs, [context; h] -> tanh
LUONG = """
model Nmt(vocab = 16, src_len = 9, tgt_len = 7, units = 6) {
  input source: int32[batch, src_len]
  input decoder_in: int32[batch, tgt_len]
  keep = source != 0
  enc, hf, cf, hb, cb = lstm(embedding(source, vocab, 8), units, mask = keep,
                             bidirectional = true, return_state = true, return_sequences = true)
  h0 = dense(concat(hf, hb, axis = -1), units, use_bias = false)
  c0 = dense(concat(cf, cb, axis = -1), units, use_bias = false)
  dec = lstm(embedding(decoder_in, vocab, 8), units, initial_h = h0, initial_c = c0,
             return_sequences = true)
  scores = dec @ transpose(dense(enc, units, use_bias = false), perm = [0, 2, 1])
  alpha = softmax(where(unsqueeze(keep, axis = 1), scores, -1e9))
  o = dense(concat(alpha @ enc, dec, axis = -1), units) |> tanh
  output logits = dense(o, vocab)
}
generate Nmt {
  source = source
  tokens = decoder_in
  logits = logits
  start = 1
  stop = 2
}
"""


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_a_luong_attention_decoder_steps_with_the_carried_state(backend):
    """Luong's [context; h] is a concat of each position's own features: generation recomputed
    every prefix, saying concat "mixes positions". Step logits equal the full forward pass at
    every position, and greedy and beam ids those of full recomputation."""
    net = Net(load(LUONG), backend=backend, batch=2, seed=4)
    source = random_tokens((2, 9), 16, seed=1)
    source[0, 5:] = 0
    dec = random_tokens((2, 7), 16, seed=2)
    full = net.forward({"source": source, "decoder_in": dec})["logits"]
    np.testing.assert_allclose(step_logits(net, dec, 1, {"source": source}), full, atol=1e-5,
                               rtol=0)
    tok = CharTokenizer("0123456789-")
    for opts in ({"max_new": 7}, {"max_new": 5, "beam": 3}):
        opts = options_from(net.program.generate, opts)
        runs = [generator(net, tok, r).generate(["12-34", "7", "9-0"], opts) for r in (False, True)]
        assert runs[0].mode == "incremental", runs[0].reason
        assert [s.ids for s in runs[0].samples] == [s.ids for s in runs[1].samples]
    # a concat along the time axis still recomputes
    shifted = LUONG.replace("concat(alpha @ enc, dec, axis = -1)",
                            "concat(dec[:, 0:1], dec[:, 0:tgt_len - 1], axis = 1)")
    net = Net(load(shifted), backend="reference", batch=2, seed=4)
    got = generator(net, tok).generate(["1"], options_from(net.program.generate, {"max_new": 2}))
    assert got.mode == "recompute" and got.reason.startswith(("concat", "slice")), got.reason
