"""Models from PyTorch's and Keras' official examples, ported to .nn as a user writes them
from docs/language.md, where a port found something nnlang got wrong."""
from __future__ import annotations

import numpy as np

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


def test_lstm_seq2seq_on_one_hot_characters_decodes_one_step_at_a_time():
    """Keras' example feeds one-hot characters: `one_hot` of the decoder's tokens is each
    position's own row, as `embedding` is, yet generation called it a mix of positions and
    reran the whole decoder for every character. Greedy decoding with the carried LSTM state
    equals a loop that reruns the full model per character (Keras' decode_sequence)."""
    net = nnlang.compile(LSTM_SEQ2SEQ, backend="reference", batch=2, seed=5)
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
