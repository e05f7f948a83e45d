"""models/seq2seq.nn at inference: `generate`'s greedy decoding with the KV cache (encoder run
once, one decoder step per character) against an independent loop that reruns the whole model
for every character, and the held-out exact match (`nnlang generate --eval`) it feeds."""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.data import load_dataset
from nnlang.data.chars import tokenizer_from_meta
from nnlang.runtime.generate import held_out
from tests.faults.conftest import ROOT

SMALL = {"dim": 16, "heads": 2, "ffn": 32, "layers": 1}


@pytest.fixture(scope="module")
def model():
    ds = load_dataset("dates", n_train=8, n_test=8)
    net = nnlang.compile(nnlang.load(str(ROOT / "models/seq2seq.nn"), SMALL),
                         backend="reference", batch=8, seed=3)
    return net, ds, tokenizer_from_meta(ds.meta)


def recompute_greedy(net, source, tok, length):
    """[N, length] ids, rerunning the full forward pass per position: position t is the
    argmax (padding and <start> excluded, as generate does) of the logits at t given the ids
    before it."""
    dec = np.full((len(source), length), tok.pad_id, np.int32)
    dec[:, 0] = tok.bos_id
    out = np.zeros_like(dec)
    for t in range(length):
        logits = np.asarray(net.forward({"source": source, "decoder_in": dec})["logits"])
        z = logits[:, t].astype(np.float64)
        z[:, [tok.pad_id, tok.bos_id]] = -np.inf
        out[:, t] = z.argmax(-1)
        if t + 1 < length:
            dec[:, t + 1] = out[:, t]
    return out


def through_end(row, end):
    row = [int(i) for i in row]
    return row[:row.index(end) + 1] if end in row else row


def test_greedy_with_the_cache_equals_full_recomputation(model):
    net, ds, tok = model
    source = ds.test["source"]
    want = recompute_greedy(net, source, tok, 11)
    prompts = [tok.decode(r) for r in source]
    got = net.generate(prompts, greedy=True, tokenizer=tok)
    assert got.mode == "incremental"
    assert [s.ids for s in got.samples] == [through_end(r, tok.eos_id) for r in want]



def test_held_out_says_a_setting_the_sections_decoding_drops(model):
    """`nnlang generate --eval` decodes by the generate section too: its `beam = 2` dropped the
    section's temperature without a word, as net.generate did. Said once per net."""
    import warnings

    from nnlang.errors import NNWarning
    _, ds, tok = model
    source = (ROOT / "models/seq2seq.nn").read_text().replace("  stop = 2\n",
                                                             "  stop = 2\n  beam = 2\n"
                                                             "  temperature = 0.7\n")
    net = nnlang.compile(nnlang.load(source, SMALL), backend="reference", batch=8, seed=3)
    rows = ds.test["source"][:2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        held_out(net, rows, rows, tok, greedy=True)
        held_out(net, rows, rows, tok)
        held_out(net, rows, rows, tok)
    said = [str(w.message) for w in caught if issubclass(w.category, NNWarning)]
    assert len(said) == 1 and "generate setting 'temperature' has no effect" in said[0], said

def test_held_out_exact_match_counts_whole_sequences(model):
    """Targets equal to the greedy output for rows 0-4, one character off for rows 5-7."""
    net, ds, tok = model
    source = ds.test["source"]
    target = recompute_greedy(net, source, tok, 11)
    target[5:, 0] = np.where(target[5:, 0] == 3, 4, 3)
    r = held_out(net, source, target, tok, chunk=3, greedy=True)   # chunks 3+3+2 (padded)
    assert (r["hits"], r["n"], r["exact_match"]) == (5, 8, 5 / 8)
    assert r["hit"] == [True] * 5 + [False] * 3 and r["mode"] == "incremental"
    # NOTE: one sample per source row: the last chunk's padding rows were returned as samples too
    assert [s.prompt for s in r["samples"]] == [tok.decode(row) for row in source]
    beam = held_out(net, source, target, tok, beam=2)
    assert beam["n"] == 8 and all(len(s.ids) <= 11 for s in beam["samples"])
    # no rows at all: said so (it was "must be rows of token ids ... got [0, 32]")
    with pytest.raises(nnlang.NNError, match=r"hold no examples \(\[0, "):
        held_out(net, source[:0], target[:0], tok, greedy=True)


def test_later_decoder_positions_do_not_reach_earlier_ones(model):
    """What makes a greedy loop (and the cache) valid: causal self-attention."""
    net, ds, tok = model
    source = ds.test["source"]
    forced = ds.test["decoder_in"]
    logits = np.asarray(net.forward({"source": source, "decoder_in": forced})["logits"])
    other = forced.copy()
    other[:, 6:] = (other[:, 6:] + 5) % 62
    again = np.asarray(net.forward({"source": source, "decoder_in": other})["logits"])
    np.testing.assert_allclose(again[:, :6], logits[:, :6], rtol=1e-5, atol=1e-6)
    assert not np.allclose(again[:, 6:], logits[:, 6:])


def test_held_out_sets_the_sections_stop_strings_aside(model, tmp_path):
    """A generate section's `stop_strings` (text generation's default, as --stop-string) made
    every --eval of the model an error ("drop stop_strings", which no flag can): held-out
    decoding compares ids through the stop token, so it sets them aside and scores as without."""
    net, ds, tok = model
    text = (ROOT / "models/seq2seq.nn").read_text().replace("  stop = 2\n",
                                                            '  stop = 2\n  stop_strings = "-"\n')
    (tmp_path / "s.nn").write_text(text)
    other = nnlang.compile(nnlang.load(str(tmp_path / "s.nn"), SMALL), backend="reference",
                           batch=8, seed=3)
    assert other.program.generate.defaults["stop_strings"] == ("-",)
    source = ds.test["source"]
    target = recompute_greedy(net, source, tok, 11)
    got = held_out(other, source, target, tok, greedy=True)
    assert (got["hits"], got["n"]) == (8, 8)
    with pytest.raises(nnlang.NNError, match="drop stop_strings"):
        held_out(other, source, target, tok, greedy=True, stop_strings=["-"])
