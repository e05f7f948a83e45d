"""models/seq2seq.nn at inference: the temporary greedy decoder (benchmarks/seq2seq_greedy.py)
agrees with one teacher-forced forward pass over its own output, which holds only if no
position of the decoder sees a later one (causal self-attention, cross-attention per row)."""
from __future__ import annotations

import importlib.util

import numpy as np

import nnlang
from nnlang.data import load_dataset
from tests.faults.conftest import ROOT

SMALL = {"dim": 16, "heads": 2, "ffn": 32, "layers": 1}


def _greedy_module():
    spec = importlib.util.spec_from_file_location("seq2seq_greedy",
                                                  ROOT / "benchmarks" / "seq2seq_greedy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_greedy_output_is_its_own_teacher_forced_argmax():
    ds = load_dataset("dates", n_train=8, n_test=8)
    tok = ds.meta["tokenizer"]
    net = nnlang.compile(nnlang.load(str(ROOT / "models/seq2seq.nn"), SMALL),
                         backend="reference", batch=8, seed=3)
    source = ds.test["source"]
    got = _greedy_module().greedy(net, source, tok, 11)
    forced = np.concatenate([np.full((8, 1), tok["start_id"], np.int32), got[:, :-1]], 1)
    logits = np.asarray(net.forward({"source": source, "decoder_in": forced})["logits"])
    assert np.array_equal(logits.argmax(-1), got)
    # a decoder input that differs only after position t leaves positions <= t unchanged
    other = forced.copy()
    other[:, 6:] = (other[:, 6:] + 5) % 62
    again = np.asarray(net.forward({"source": source, "decoder_in": other})["logits"])
    np.testing.assert_allclose(again[:, :6], logits[:, :6], rtol=1e-5, atol=1e-6)
    assert not np.allclose(again[:, 6:], logits[:, 6:])
