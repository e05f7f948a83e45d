"""Symbolic lengths (`symbol seq`) at their edges: what an op cannot do with a symbolic dim is
refused by `nnlang check` at the call, what it can do compiles (no internal error), and a length
bound from the feeds that a shape rule refuses is an error at the op's line.
"""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from tests.faults.conftest import cli


def model(*lines: str) -> str:
    body = "".join(f"  {line}\n" for line in lines)
    return ("model M {\n  symbol seq\n  input s: float32[batch, seq, 8]\n"
            "  input tok: int32[batch, seq]\n" + body + "  loss mean(y)\n}\n")


REFUSED = [
    (["y = dense(transpose(s, perm = [0, 2, 1]), 4)"], "m.nn:5:13",
     "its weight 'weight' would be [seq, 4], which depends on the symbol seq"),
    (["y = concat(s, s[:, 0:2, :], axis = 1)"], "m.nn:5:", "slice"),
    # NOTE: it said "cannot add the symbolic length 2 to seq": 2 is the concrete one
    (["y = concat(s[:, 0:2, :], s, axis = 1)"], "m.nn:5:",
     "cannot join a piece of length seq to pieces of length 2"),
    # NOTE: it read ones_like(s), no op, and passed on the did-you-mean 'unslice'
    (["y = concat(s, (s * 0 + 1)[:, :, 0:2] |> transpose(perm = [0, 2, 1]), axis = 1)"],
     "m.nn:5:17", "concat along axis 1: [batch, 2, seq] does not match [batch, seq, 8] outside "
     "that axis"),
    (["y = positional_encoding(s, kind = \"learned\")"], "m.nn:5:",
     "learned positions on the symbolic length seq need max_len"),
    # NOTE: found by a fuzzer: on a symbolic length a max_len of 0 or less passed check (a
    # learned weight of 0 rows) and every batch then failed with "exceeds max_len = -1"
    (["y = positional_encoding(s, max_len = -1)"], "m.nn:5:40",
     "positional_encoding: max_len must be a positive integer, got -1"),
    (["y = positional_encoding(s, kind = \"learned\", max_len = 0)"], "m.nn:5:58",
     "positional_encoding: max_len must be a positive integer, got 0"),
    (["y = layer_norm(transpose(s, perm = [0, 2, 1]))"], "m.nn:5:", "must be concrete"),
    (["y = conv1d(transpose(s, perm = [0, 2, 1]), 4, 3)"], "m.nn:5:", "must be concrete"),
    # NOTE: it said the weight [4, seq, 3] depends on the symbol: an embedding's [batch, seq,
    # dim] read as channels first, for which channels_last = true is the fix
    (["y = conv1d(s, 4, 3)"], "m.nn:5:", "for [batch, len, channels] (an embedding's output) "
     "pass channels_last = true"),
    (["y = multi_head_attention(s, s[:, 0:3, :], heads = 2, causal = true)"], "m.nn:5:",
     "a symbolic length needs the keys' length to be the queries'"),
]


@pytest.mark.parametrize("lines,where,words", REFUSED, ids=[r[2][:24] for r in REFUSED])
def test_refused_at_check_with_the_line(tmp_path, lines, where, words):
    path = tmp_path / "m.nn"
    path.write_text(model(*lines))
    out = cli("check", path)
    assert where in out and words in out, out


# NOTE: a symbol's size comes with the data, so arithmetic other than products and sums of like
# terms cannot be a size at check time; it said "unsupported operand type(s) for -: 'Sym' and
# 'int'", and `seq * 0.5` passed check to fail at run time with a size of 3.0
SIZE_ARITHMETIC = [
    ("y = s[:, seq - 1]", "m.nn:5:12: error: cannot compute seq - 1: seq is a symbolic size, "
     "known only when data arrives", "hint: index from the end instead: x[:, -1] is x[:, seq - 1]"),
    ("y = s[:, seq - 3]", "cannot compute seq - 3", "x[:, -3] is x[:, seq - 3]"),
    ("y = reshape(s, [batch, seq / 2, 16])", "m.nn:5:26: error: cannot compute seq / 2: seq is a "
     "symbolic size", "in reshape, write -1 for the one size to infer"),
    ("y = reshape(s, [batch, seq * 0.5, 16])", "cannot compute seq * 0.5: seq is a symbolic size",
     "can only be multiplied by whole numbers or symbols (2 * seq, batch * seq)"),
    ("y = reshape(s, [batch, seq + 1, 8])", "cannot compute seq + 1: seq is a symbolic size",
     "or added to like terms (seq + seq)"),
    ("y = s[:, 1 - seq]", "cannot compute 1 - seq: seq is a symbolic size", "x[:, -1]"),
]


@pytest.mark.parametrize("line,where,hint", SIZE_ARITHMETIC, ids=[r[0] for r in SIZE_ARITHMETIC])
def test_arithmetic_on_a_symbol_says_what_a_size_allows(tmp_path, line, where, hint):
    path = tmp_path / "m.nn"
    path.write_text(model(line))
    out = cli("check", path)
    assert where in out and hint in out and "Sym" not in out, out


ACCEPTED = [
    "y = dense(s, 4)",
    # the size arithmetic that is supported, and what the hints above suggest
    "y = reshape(s, [batch, 2 * seq, 4]) + reshape(s, [batch, seq + seq, 4])",
    "y = s[:, -1] + s[:, -3] + s[:, -3:][:, 0] + reshape(s, [batch, -1, 4])[:, 0, 0:1]",
    "y = multi_head_attention(s, key_padding_mask = tok != 0, heads = 2)",
    "y = positional_encoding(s) + positional_encoding(s, kind = \"learned\", max_len = 64)",
    "y = softmax(s, axis = 1) * layer_norm(s)",
    "y = embedding(tok, 10, 8) + s",
    "y = concat(s, s, axis = 1)",
    "y = global_max_pool(s, channels_last = true)",
]


@pytest.mark.parametrize("line", ACCEPTED, ids=[a.split("(")[0][4:] + str(i)
                                                for i, a in enumerate(ACCEPTED)])
def test_accepted_ops_compile(tmp_path, line):
    path = tmp_path / "m.nn"
    path.write_text(model(line))
    out = cli("compile", path, "--backend", "reference", code=0)
    # compiled at the default length a feed would replace, and saying so
    assert "seq = 16 (a symbol without a size: compiled at this length" in out, out


def test_docs_symbols_example_compiles(tmp_path):
    path = tmp_path / "sym.nn"
    path.write_text("model Symbols {\n  symbol steps\n  input x: float32[batch, steps, 16]\n"
                    "  output y = dense(x, 8)\n}\n")
    assert "steps = 16 (a symbol without a size" in cli("compile", path, "--mode", "predict",
                                                         "--backend", "reference", code=0)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_entries_from_the_back_of_a_symbolic_axis(backend):
    """x[:, -2] and x[:, -3:-1] on a symbolic length give numpy's entries at every length that
    has them, and a length too short is an error at the index."""
    net = nnlang.compile(model("y = s[:, -2] + s[:, -3:-1][:, 1] + s[:, -1]", "output y"),
                         backend=backend)
    rng = np.random.default_rng(0)
    for n in (3, 4, 11):
        s = rng.normal(size=(2, n, 8)).astype(np.float32)
        np.testing.assert_allclose(net.forward({"s": s})["y"],
                                   2 * s[:, -2] + s[:, -1], rtol=1e-6, atol=1e-6)
    with pytest.raises(NNError, match=r"<string>:5:.*is empty \(with batch = 2, seq = 1\)"):
        net.forward({"s": np.zeros((2, 1, 8), np.float32)})


def test_a_bound_length_over_max_len_is_an_error_at_the_line():
    net = nnlang.compile(model("y = positional_encoding(s, kind = \"learned\", max_len = 6)"),
                         backend="reference")
    net.evaluate({"s": np.zeros((2, 6, 8), np.float32)})
    with pytest.raises(NNError, match=r"<string>:5:.*sequence length 7 exceeds max_len = 6 "
                                      r"\(with batch = 2, seq = 7\)") as err:
        net.evaluate({"s": np.zeros((2, 7, 8), np.float32)})
    # NOTE: the length is the batch's, padding included: bucketed batches of whole reviews
    # pad past the longest review (2,739 tokens to 3,072), which max_len = longest did not allow
    assert "padding included" in str(err.value) and "docs/data.md" in str(err.value)


@pytest.mark.parametrize("shape,words", [
    ((2, 0, 8), "input 's' has seq = 0"),
    ((2, 3, 5), "input 's' has shape [2, 3, 5]"),
])
def test_bad_feeds_are_named(shape, words):
    net = nnlang.compile(model("y = dense(s, 4)"), backend="reference")
    with pytest.raises(NNError) as info:
        net.evaluate({"s": np.zeros(shape, np.float32)})
    assert words in str(info.value)


def test_feeds_that_are_not_a_batch_of_the_declared_kind():
    """Not a dict, a single value, fractional values for int ids (which a cast would cut
    silently), and the missing-input hint lists the model's own inputs only."""
    net = nnlang.compile("model M {\n  input ids: int32[batch, 3]\n"
                         "  output y = embedding(ids, 10, 4)\n}\n", backend="reference")
    for feeds, words in [(None, "feeds are NoneType"), ({"ids": np.int32(3)}, "single value"),
                         ({"ids": np.full((2, 3), 1.9, np.float32)}, "not whole numbers")]:
        with pytest.raises(NNError, match=words):
            net.forward(feeds)
    assert net.forward({"ids": np.full((2, 3), 2.0, np.float32)})["y"].shape == (2, 3, 4)
    two = nnlang.compile("model M {\n  input a: float32[batch, 2]\n  input b: float32[batch, 2]"
                         "\n  loss mean(a * b)\n}\n", backend="reference")
    with pytest.raises(NNError) as info:
        two.train_step({"a": np.zeros((2, 2), np.float32)})
    assert "the model's inputs: a, b" in str(info.value) and "_lr" not in str(info.value)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_causal_self_attention_on_a_symbolic_length_is_the_concrete_ones(backend):
    """`causal = true` was refused on a symbolic length ("causal masking needs concrete
    lengths"), though a hand-written mask through triu runs there; it now masks at the bound
    length: equal to the model compiled at each concrete length."""
    def source(seq):
        return (f"model A {{\n  {'symbol seq' if seq == 'seq' else ''}\n"
                f"  input x: float32[batch, {seq}, 8]\n"
                "  output y = multi_head_attention(x, heads = 2, causal = true)\n}")
    any_length = nnlang.compile(source("seq"), backend=backend, batch=2, seed=1)
    rng = np.random.default_rng(0)
    for n in (1, 3, 6):
        fixed = nnlang.compile(source(str(n)), backend=backend, batch=2, seed=1)
        fixed.load_state_dict(any_length.parameters())
        x = rng.normal(size=(2, n, 8)).astype(np.float32)
        got = any_length.forward({"x": x})["y"]
        np.testing.assert_allclose(got, fixed.forward({"x": x})["y"], rtol=1e-6, atol=1e-7)
        # the first position attends to itself alone whatever follows it
        x2 = x.copy()
        x2[:, 1:] = rng.normal(size=x2[:, 1:].shape)
        np.testing.assert_allclose(any_length.forward({"x": x2})["y"][:, 0], got[:, 0],
                                   rtol=1e-6, atol=1e-7)
