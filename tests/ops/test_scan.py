"""The `scan` recurrences (ops/scan.py, ops/rnn.py) against the goldens the unrolled rnn, lstm
and gru wrote before they became scans (tests/golden/rnn/generate.py): values and gradients of
every input and weight, one direction and both, last state and whole sequence."""
from __future__ import annotations

import numpy as np
import pytest

from tests.golden.rnn.generate import CASES, FILE, evaluate

GOLDEN = np.load(FILE)


@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_matches_unrolled_golden(case):
    op, sample = CASES[case]
    got = evaluate(op, sample)
    for key, value in got.items():
        np.testing.assert_allclose(value, GOLDEN[f"{case}/{key}"], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{case}: {key}")


SEQ2SEQ = """
# the classic Keras encoder-decoder: the decoder LSTM starts from the encoder's (h, c)
model Seq2seq(vocab = 6, steps = 5, units = 16) {
  input src: int32[batch, steps]
  input dec_in: int32[batch, steps]
  input target: int32[batch, steps]
  enc_out, h, c = lstm(embedding(src, vocab, 8), units, return_state = true)
  y = lstm(embedding(dec_in, vocab, 8), units, return_sequences = true, initial_h = h,
           initial_c = c)
  logits = dense(y, vocab)
  loss cross_entropy(logits, target)
}
train Seq2seq {
  optimizer = adam(lr = 0.02)
  batch = 32
}
"""


def _reverse_task(rng, n=32, steps=5, vocab=6):
    """Reverse a sequence of tokens 2..vocab-1; the decoder is fed the target shifted right
    behind a start token 1 (teacher forcing)."""
    src = rng.integers(2, vocab, size=(n, steps)).astype(np.int32)
    target = src[:, ::-1].copy()
    dec_in = np.concatenate([np.ones((n, 1), np.int32), target[:, :-1]], axis=1)
    return {"src": src, "dec_in": dec_in, "target": target}


def test_encoder_decoder_lstm_learns_to_reverse():
    import nnlang
    net = nnlang.compile(nnlang.load(SEQ2SEQ), seed=0)
    rng = np.random.default_rng(0)
    losses = [net.train_step(_reverse_task(rng)) for _ in range(60)]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # log(6) = 1.79 is guessing; the reversal needs the encoder's state to reach the decoder
    assert first > 1.5 and last < 0.6 * first, (first, last)


def test_return_state_is_a_tuple_in_the_language():
    import nnlang
    from nnlang.errors import NNError
    src = """
model M() {
  input x: float32[batch, 4, 3]
  seq, h = gru(x, 5, return_sequences = true, return_state = true)
  output s = seq
  output last = h
}
"""
    g = nnlang.load(src).graph
    assert [tuple(g.node(v).shape[1:]) for v in g.outputs.values()] == [(4, 5), (5,)]
    with pytest.raises(NNError, match="3 names but the right side gives 2"):
        nnlang.load(src.replace("seq, h =", "seq, h, c ="))


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_compiled_scan_at_real_widths_matches_the_interpreter(model):
    """Batch 64 and 128 units, where a fold in the backward body once compiled to NaN
    gradients that the small shapes of the op matrix did not show."""
    import nnlang
    program = nnlang.load(f"models/{model}.nn", {"maxlen": 6, "units": 128, "vocab": 50,
                                                  "embed": 8})
    rng = np.random.default_rng(0)
    feeds = {"tokens": rng.integers(0, 50, size=(64, 6)).astype(np.int32),
             "label": rng.integers(0, 2, 64).astype(np.float32)}
    losses = {}
    for backend in ("reference", "numba"):
        net = nnlang.compile(program, backend=backend, batch=64, seed=0)
        losses[backend] = [net.train_step(feeds) for _ in range(3)]
    assert np.isfinite(losses["numba"]).all()
    np.testing.assert_allclose(losses["numba"], losses["reference"], rtol=1e-4)


def test_a_row_of_only_padding_gets_the_true_loss_gradient():
    import nnlang
    src = """
model M {
  symbol seq
  input tokens: int32[batch, seq]
  input label: float32[batch]
  h = lstm(embedding(tokens, 50, 8), 8, mask = tokens != 0)
  logit = dense(h, 1) |> squeeze(axis = -1)
  loss bce_with_logits(logit, label)
}
"""
    net = nnlang.compile(src, backend="reference", batch=2, dtype="float64", seed=0)
    feeds = {"tokens": np.zeros((2, 3), np.int32), "label": np.array([0.0, 1.0], np.float32)}
    # the bias gradient of a mean bce is mean(sigmoid(logit) - label); h = 0 on padding only
    assert net.gradients(feeds)["logit.bias"][0] == pytest.approx(np.mean(0.5 - feeds["label"]))


# NOTE: ~15 s each (a bidirectional model compiled at batch 32); gru and rnn share the lstm's
# driver code, so the default suite runs the lstm
@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow),
                                  pytest.param("rnn", marks=pytest.mark.slow)])
def test_a_batch_run_in_row_parts_gives_the_interpreters_gradients(cell):
    """At batch 32 the numba loop runs the rows in two parts at once (their rows never meet):
    every gradient, through a mask, both directions and a returned state, equals the float64
    interpreter's."""
    import nnlang
    state = ", c" if cell == "lstm" else ""
    src = f"""
model M {{
  symbol seq
  input tokens: int32[batch, seq]
  input label: float32[batch]
  x = embedding(tokens, 40, 6)
  both = {cell}(x, 8, mask = tokens != 0, bidirectional = true, return_sequences = true)
  hs, h{state} = {cell}(both, 8, mask = tokens != 0, return_state = true)
  logit = dense(h, 1) |> squeeze(axis = -1)
  loss bce_with_logits(logit, label)
}}
"""
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 40, size=(32, 7)).astype(np.int32)
    tokens[::3, :3] = 0   # padding at the front of every third row
    feeds = {"tokens": tokens, "label": rng.integers(0, 2, 32).astype(np.float32)}
    got = nnlang.compile(src, backend="numba", batch=32, seed=0)
    want = nnlang.compile(src, backend="reference", batch=32, dtype="float64", seed=0)
    g_got, g_want = got.gradients(feeds), want.gradients(feeds)
    assert sorted(g_got) == sorted(g_want)
    for name in g_want:
        np.testing.assert_allclose(g_got[name], g_want[name], rtol=2e-3, atol=2e-6,
                                   err_msg=name)
    (exe, _), = [v for k, v in got._exes.items() if k[0] == "grad"]
    headers = [s[0] for b in [exe, *exe.bodies] for s in b._sources if isinstance(s, tuple)]
    assert sum("rows in 2 parts at once" in h for h in headers) >= 4, headers


@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow),
                                  pytest.param("rnn", marks=pytest.mark.slow), "scan"])
def test_one_example_or_one_step(cell):
    """Batch 1 (one review to predict, one prompt to generate from) and sequences of one step:
    numpy calls a [1, k] column slice contiguous, while the scan driver types it as a strided
    view (and a step of a one-step sequence as the sequence is typed); a kernel the driver
    calls must take the driver's types. Values are those of the rows in a bigger batch,
    gradients the float64 interpreter's."""
    import nnlang
    state = ", c" if cell == "lstm" else ""
    layers = f"""
  both = {cell}(x, 6, bidirectional = true, return_sequences = true)
  hs, h{state} = {cell}(both, 4, mask = x[:, :, 0] > -1.0, return_state = true)"""
    if cell == "scan":   # a user block whose step reads the carry through an elementwise op
        layers = """
  hs, h = scan Cell(broadcast_to(0.5, shape = [batch, 3]), u = u) over x"""
    src = f"""
block Cell(x, h, u) {{
  h2 = tanh((h * x) @ u + h)
  return h2, h2
}}
model M {{
  symbol seq
  input x: float32[batch, seq, 3]
  input label: float32[batch]
  param u: float32[3, 3]{layers}
  logit = dense(h, 1) |> squeeze(axis = -1)
  output out = logit
  loss bce_with_logits(logit, label)
}}
"""
    rng = np.random.default_rng(2)
    net = nnlang.compile(src, backend="numba", seed=0)
    want = nnlang.compile(src, backend="reference", dtype="float64", seed=0)
    for rows, steps in ((1, 5), (2, 1)):
        feeds = {"x": rng.normal(size=(3, steps, 3)).astype(np.float32),
                 "label": np.array([1.0, 0.0, 1.0], np.float32)}
        part = {k: v[:rows] for k, v in feeds.items()}
        np.testing.assert_allclose(net.forward(part)["out"], net.forward(feeds)["out"][:rows],
                                   rtol=1e-5, atol=1e-6)
        got, ref = net.gradients(part), want.gradients(part)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=2e-3, atol=2e-6,
                                       err_msg=f"{name} at batch {rows}, {steps} step(s)")


def test_a_body_whose_rows_meet_is_not_cut_into_row_parts():
    """Row parts need every row of a step computed from that row alone: a reduction over the
    batch, a product by a per-row value, or a weight computed in the body (whose first dim
    may equal the batch) keep the loop whole."""
    from nnlang.ir.graph import Builder, Graph, TensorType
    from nnlang.runtime.scan import _rows_never_meet

    def body(make):
        g = Graph()
        b = Builder(g)
        x = g.add_node("input", [], {"name": "x0", "dtype": "float32", "shape": [4, 3]},
                       TensorType((4, 3), "float32"), name="x0")
        g.inputs["x0"] = x
        w = g.add_node("param", [], {"name": "w0", "dtype": "float32", "shape": [3, 3],
                                     "init": ("zeros", {}), "trainable": False},
                       TensorType((3, 3), "float32"), name="w0")
        g.params["w0"] = w
        g.outputs["y"] = make(b, x, w)
        return g
    assert _rows_never_meet(body(lambda b, x, w: b.tanh(b.matmul(x, b.transpose(
        w, perm=[1, 0])))), 4)
    assert not _rows_never_meet(body(lambda b, x, w: b.add(x, b.reduce_sum(
        x, axes=[0], keepdims=True))), 4)
    assert not _rows_never_meet(body(lambda b, x, w: b.matmul(b.transpose(x, perm=[1, 0]),
                                                               x)), 4)
    assert not _rows_never_meet(body(lambda b, x, w: b.matmul(x, b.mul(w, w))), 3)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)     # a constant read row by row
    assert not _rows_never_meet(body(lambda b, x, w: b.add(x, b.const(rows))), 4)
    same = np.tile(np.arange(3, dtype=np.float32), (4, 1))   # equal rows: any part may read
    assert _rows_never_meet(body(lambda b, x, w: b.add(x, b.const(same))), 4)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_mask_of_numbers_keeps_every_nonzero_step(cell):
    """A mask of token ids (`mask = tokens`) marks the nonzero steps real, as attention's
    key_padding_mask reads it: the state is PyTorch's run over each row's real tokens alone.
    A version multiplied the state by the mask's value, so id 5 scaled the update by 5."""
    torch = pytest.importorskip("torch")
    src = f"""
model M {{
  symbol seq
  input tokens: int32[batch, seq]
  input x: float64[batch, seq, 3]
  output h = {cell}(x, 4, mask = tokens)
}}
"""
    net = nnlang_compile(src)
    p = net.parameters()
    torch_cell = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    twin = torch_cell(3, 4, batch_first=True, dtype=torch.float64)
    order = np.r_[4:8, 0:4, 8:12] if cell == "gru" else slice(None)  # Keras z, r, h; torch r, z, n
    bias = p["h.bias"] if cell != "gru" else p["h.bias"][0]
    with torch.no_grad():
        twin.weight_ih_l0.copy_(torch.tensor(p["h.kernel"][:, order].T))
        twin.weight_hh_l0.copy_(torch.tensor(p["h.recurrent"][:, order].T))
        twin.bias_ih_l0.copy_(torch.tensor(bias[order]))
        twin.bias_hh_l0.copy_(torch.tensor(p["h.bias"][1][order] if cell == "gru" else 0 * bias))
    rng = np.random.default_rng(0)
    tokens = np.array([[0, 0, 5, 7, 2], [3, 1, 9, 0, 0]], np.int32)
    x = rng.normal(size=(2, 5, 3))
    got = net.forward({"tokens": tokens, "x": x})["h"]
    for row, real in enumerate(tokens != 0):
        out = twin(torch.tensor(x[row:row + 1, real]))[1]
        want = (out[0] if cell == "lstm" else out)[0, 0].detach().numpy()
        np.testing.assert_allclose(got[row], want, rtol=1e-10, atol=1e-12, err_msg=row)


def test_a_masked_bidirectional_layer_gives_zeros_at_the_pads_as_pytorch():
    """return_sequences of a masked bidirectional LSTM: at real steps PyTorch's bidirectional
    run over the row's real tokens alone, at pads zeros (PyTorch's packed sequences, Keras'
    Bidirectional). The backward half showed its final state at front pads, so a sum over
    time depended on a row's padding."""
    torch = pytest.importorskip("torch")
    src = """
model M {
  symbol seq
  input tokens: int32[batch, seq]
  input x: float64[batch, seq, 3]
  output hs = lstm(x, 4, mask = tokens != 0, bidirectional = true, return_sequences = true)
}
"""
    net = nnlang_compile(src)
    p = net.parameters()
    twin = torch.nn.LSTM(3, 4, batch_first=True, bidirectional=True, dtype=torch.float64)
    with torch.no_grad():
        for side, pre in (("", "hs."), ("_reverse", "hs.backward_")):
            getattr(twin, f"weight_ih_l0{side}").copy_(torch.tensor(p[pre + "kernel"].T))
            getattr(twin, f"weight_hh_l0{side}").copy_(torch.tensor(p[pre + "recurrent"].T))
            getattr(twin, f"bias_ih_l0{side}").copy_(torch.tensor(p[pre + "bias"]))
            getattr(twin, f"bias_hh_l0{side}").zero_()
    rng = np.random.default_rng(0)
    tokens = np.array([[0, 0, 5, 7, 2], [3, 1, 9, 0, 0], [4, 4, 4, 4, 4]], np.int32)
    x = rng.normal(size=(3, 5, 3))
    got = net.forward({"tokens": tokens, "x": x})["hs"]
    for row, real in enumerate(tokens != 0):
        want = np.zeros((5, 8))
        want[real] = twin(torch.tensor(x[row:row + 1, real]))[0][0].detach().numpy()
        np.testing.assert_allclose(got[row], want, rtol=1e-10, atol=1e-12, err_msg=row)


def _torch_twin_of(torch, p, cell, layers):
    """PyTorch's bidirectional nn.LSTM/GRU/RNN holding nnlang's weights, layer k from the
    nnlang layer named layers[k] (Keras gate order; torch's GRU is r, z, n)."""
    kind = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    twin = kind(p[layers[0] + ".kernel"].shape[0], p[layers[0] + ".recurrent"].shape[0],
                num_layers=len(layers), batch_first=True, bidirectional=True,
                dtype=torch.float64)
    order = np.r_[4:8, 0:4, 8:12] if cell == "gru" else slice(None)
    with torch.no_grad():
        for k, name in enumerate(layers):
            for side, pre in (("", name + "."), ("_reverse", name + ".backward_")):
                bias = p[pre + "bias"]
                getattr(twin, f"weight_ih_l{k}{side}").copy_(
                    torch.tensor(p[pre + "kernel"][:, order].T))
                getattr(twin, f"weight_hh_l{k}{side}").copy_(
                    torch.tensor(p[pre + "recurrent"][:, order].T))
                getattr(twin, f"bias_ih_l{k}{side}").copy_(
                    torch.tensor((bias[0] if cell == "gru" else bias)[order]))
                getattr(twin, f"bias_hh_l{k}{side}").copy_(
                    torch.tensor(bias[1][order] if cell == "gru" else 0 * bias))
    return twin


@pytest.mark.parametrize("cell, merge", [("lstm", "concat"), ("gru", "sum"), ("lstm", "ave"),
                                         ("rnn", "mul")])
def test_a_bidirectional_layer_returns_both_directions_states_as_pytorchs_packed_run(cell, merge):
    """PyTorch's nn.LSTM(num_layers = 2, bidirectional = True) over pack_padded_sequence,
    ported as two bidirectional layers with a mask from the lengths: the outputs (zeros at
    pads, the directions merged as Keras' Bidirectional(merge_mode) merges them) and the last
    layer's h_n / c_n, returned in Keras' order (forward h, c, then backward h, c). Before,
    return_state with bidirectional = true and merge_mode were refused."""
    torch = pytest.importorskip("torch")
    lstm = cell == "lstm"
    states = "hf, cf, hb, cb" if lstm else "hf, hb"
    src = f"""
model M {{
  input x: float64[batch, 6, 3]
  input lengths: int32[batch]
  real = positions(x, axis = 1) < unsqueeze(lengths, axis = 1)
  l1 = {cell}(x, 4, return_sequences = true, bidirectional = true, mask = real)
  l2, {states} = {cell}(l1, 4, return_sequences = true, bidirectional = true, mask = real,
                        return_state = true, merge_mode = "{merge}")
  output l2
  output state = concat({", ".join(f"unsqueeze({n}, axis = 0)" for n in states.split(", "))},
                        axis = 0)
}}
"""
    net = nnlang_compile(src)
    twin = _torch_twin_of(torch, net.parameters(), cell, ["l1", "l2"])
    rng = np.random.default_rng(2)
    x, lengths = rng.normal(size=(3, 6, 3)), np.array([6, 2, 4], np.int32)
    got = net.forward({"x": x, "lengths": lengths})
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(lengths),
                                                     batch_first=True, enforce_sorted=False)
    out, h_n = twin(packed)
    out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)[0]
    fwd, bwd = out[..., :4].detach().numpy(), out[..., 4:].detach().numpy()
    want = {"concat": out.detach().numpy(), "sum": fwd + bwd, "ave": (fwd + bwd) / 2,
            "mul": fwd * bwd}[merge]
    np.testing.assert_allclose(got["l2"], want, rtol=1e-10, atol=1e-12)
    h_n, c_n = h_n if lstm else (h_n, None)
    last = [h_n[2], c_n[2], h_n[3], c_n[3]] if lstm else [h_n[2], h_n[3]]   # layer 2's
    np.testing.assert_allclose(got["state"], np.stack([t.detach().numpy() for t in last]),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_bidirectional_stack_starts_from_pytorchs_h0(cell):
    """PyTorch's nn.LSTM(num_layers = 2, bidirectional = True)(packed, (h_0, c_0)): each
    layer's initial_h (and initial_c) is its two directions' states side by side,
    concat(h_0[2k], h_0[2k + 1]) (Keras' Bidirectional(initial_state = [fh, fc, bh, bc])).
    It was refused ("initial_h with bidirectional = true is not supported")."""
    torch = pytest.importorskip("torch")
    lstm = cell == "lstm"
    c = lambda k: f", initial_c = c{k}" if lstm else ""   # noqa: E731
    src = f"""
model M {{
  input x: float64[batch, 6, 3]
  input lengths: int32[batch]
  input h1: float64[batch, 8]
  input h2: float64[batch, 8]
  {"input c1: float64[batch, 8]" if lstm else ""}
  {"input c2: float64[batch, 8]" if lstm else ""}
  real = positions(x, axis = 1) < unsqueeze(lengths, axis = 1)
  l1 = {cell}(x, 4, return_sequences = true, bidirectional = true, mask = real,
              initial_h = h1{c(1)})
  l2, {"hf, cf, hb, cb" if lstm else "hf, hb"} = {cell}(l1, 4, return_sequences = true,
              bidirectional = true, mask = real, initial_h = h2{c(2)}, return_state = true)
  output l2
  output h_n = concat(hf, hb, axis = -1)
}}
"""
    net = nnlang_compile(src)
    twin = _torch_twin_of(torch, net.parameters(), cell, ["l1", "l2"])
    rng = np.random.default_rng(3)
    x, lengths = rng.normal(size=(3, 6, 3)), np.array([6, 2, 4], np.int32)
    h_0, c_0 = rng.normal(size=(4, 3, 4)), rng.normal(size=(4, 3, 4))
    feeds = {"x": x, "lengths": lengths, **{f"h{k + 1}": np.concatenate(h_0[2 * k:2 * k + 2], -1)
                                            for k in range(2)}}
    if lstm:
        feeds.update({f"c{k + 1}": np.concatenate(c_0[2 * k:2 * k + 2], -1) for k in range(2)})
    got = net.forward(feeds)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(lengths),
                                                     batch_first=True, enforce_sorted=False)
    out, h_n = twin(packed, (torch.tensor(h_0), torch.tensor(c_0)) if lstm else torch.tensor(h_0))
    out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)[0]
    np.testing.assert_allclose(got["l2"], out.detach().numpy(), rtol=1e-10, atol=1e-12)
    h_n = (h_n[0] if lstm else h_n).detach().numpy()
    np.testing.assert_allclose(got["h_n"], np.concatenate([h_n[2], h_n[3]], -1), rtol=1e-10,
                               atol=1e-12)


def test_a_bidirectional_layer_given_one_directions_state_says_how_to_give_both():
    import nnlang
    from nnlang.errors import NNError
    with pytest.raises(NNError) as err:
        nnlang.load("""
model M {
  input x: float32[batch, 5, 3]
  input h0: float32[batch, 4]
  output y = gru(x, 4, bidirectional = true, initial_h = h0)
}
""")
    text = err.value.render()
    assert "<string>:5:" in text and "[batch, 8]" in text, text
    assert "initial_h = concat(forward, backward, axis = -1)" in text, text


@pytest.mark.parametrize("option, words", [
    ('bidirectional = true, merge_mode = "avg"', ["unknown merge_mode \"avg\"", "'ave'"]),
    ('bidirectional = true, merge_mode = "none"', ["merge_mode = None", "hs[:, :, 0:units]"]),
    ('merge_mode = "sum"', ["has one", "add bidirectional = true"]),
])
def test_a_merge_mode_nnlang_has_not_is_located(option, words):
    import nnlang
    from nnlang.errors import NNError
    src = ("model M {\n  input x: float32[batch, 5, 3]\n"
           f"  output y = lstm(x, 4, return_sequences = true, {option})\n}}\n")
    with pytest.raises(NNError) as err:
        nnlang.load(src)
    text = err.value.render()
    line = src.splitlines()[2]
    assert f"<string>:3:{line.index('merge_mode = ') + 14}:" in text, text   # at the value
    for w in words:
        assert w in text, text


def test_bidirectional_states_on_a_symbolic_length_get_a_hint_that_gives_them():
    """return_state with return_sequences on a symbolic length is refused; for a bidirectional
    layer the hint must not say h = hs[:, -1] (the backward h is at step 0, and a masked
    layer shows zeros at pads): its two-call form, written as it says, gives the states of
    the numeric-length layer."""
    import re

    import nnlang
    from nnlang.errors import NNError
    src = """model M {
  symbol seq
  input x: float64[batch, seq, 3]
  input tokens: int32[batch, seq]
  hs, hf, cf, hb, cb = lstm(x, 4, return_sequences = true, return_state = true,
                            bidirectional = true, mask = tokens)
  output o = concat(hs[:, 0], hf, cf, hb, cb, axis = -1)
}
"""
    with pytest.raises(NNError) as err:
        nnlang.load(src)
    text = err.value.render()
    assert "<string>:5:" in text and "hs[:, -1]" not in text, text
    seq, states = re.search(r"`(hs = .*?)`, then .*?`(_, .*?)`", text.split("hint:")[1]).groups()
    args = "x, 4, bidirectional = true, mask = tokens"
    lines = src.splitlines()
    fixed = src.replace(lines[4] + "\n" + lines[5] + "\n", "  " + seq.replace("...", args) +
                        "\n  " + states.replace("...", args) + "\n")
    _hint_runs_as_the_fixed_length_model(fixed, src)


@pytest.mark.parametrize("cell, bidirectional", [("rnn", False), ("lstm", False),
                                                   ("gru", False), ("lstm", True)])
def test_masked_rows_read_as_alone_against_numpy(cell, bidirectional):
    """The two PyTorch comparisons above against the numpy reference (tests/reference.py, run
    unmasked on each row's real tokens), so a run without PyTorch checks them too: a mask of
    token ids keeps every nonzero step, and a bidirectional layer's outputs are zero at pads."""
    from tests.reference import RNN
    both = ", bidirectional = true, return_sequences = true" if bidirectional else ""
    src = f"""
model M {{
  symbol seq
  input tokens: int32[batch, seq]
  input x: float64[batch, seq, 3]
  output h = {cell}(x, 4, mask = tokens{both})
}}
"""
    net = nnlang_compile(src)
    p = net.parameters()
    sides = ["h."] + (["h.backward_"] if bidirectional else [])
    weights = [p[pre + w] for pre in sides for w in ("kernel", "recurrent", "bias")]
    states = [None] * (2 if cell == "lstm" else 1)
    rng = np.random.default_rng(0)
    tokens = np.array([[0, 0, 5, 7, 2], [3, 1, 9, 0, 0], [4, 4, 4, 4, 4]], np.int32)
    x = rng.normal(size=(3, 5, 3))
    got = net.forward({"tokens": tokens, "x": x})["h"]
    for row, real in enumerate(tokens != 0):
        alone = RNN[cell](x[row:row + 1, real], None, *states, *weights, units=4,
                          activation="tanh", return_sequences=bidirectional,
                          bidirectional=bidirectional)[0]
        want = alone
        if bidirectional:
            want = np.zeros((5, 8))
            want[real] = alone
        np.testing.assert_allclose(got[row], want, rtol=1e-10, atol=1e-12, err_msg=row)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_outputs_before_a_rows_first_real_step_are_zero_with_an_initial_state(cell):
    """Keras masking with initial_state (and PyTorch's packed sequences): no output before a
    row's first real step, so zeros there, not initial_h; then the run over the row's real
    tokens from initial_h (numpy reference, unmasked), and at end pads the last output again.
    Before, the front pads showed initial_h."""
    from tests.reference import RNN
    lstm = cell == "lstm"
    src = f"""
model M {{
  symbol seq
  input tokens: int32[batch, seq]
  input x: float64[batch, seq, 3]
  input h0: float64[batch, 4]
  {"input c0: float64[batch, 4]" if lstm else ""}
  output hs = {cell}(x, 4, mask = tokens != 0, return_sequences = true, initial_h = h0
                     {", initial_c = c0" if lstm else ""})
}}
"""
    net = nnlang_compile(src)
    p = net.parameters()
    rng = np.random.default_rng(0)
    tokens = np.array([[0, 0, 5, 7, 0], [3, 1, 9, 0, 0]], np.int32)
    feeds = {"tokens": tokens, "x": rng.normal(size=(2, 5, 3)), "h0": rng.normal(size=(2, 4))}
    if lstm:
        feeds["c0"] = rng.normal(size=(2, 4))
    got = net.forward(feeds)["hs"]
    for row, real in enumerate(tokens != 0):
        given = [feeds["h0"][row:row + 1]] + ([feeds["c0"][row:row + 1]] if lstm else [])
        alone = RNN[cell](feeds["x"][row:row + 1, real], None, *given, p["hs.kernel"],
                          p["hs.recurrent"], p["hs.bias"], units=4, activation="tanh",
                          return_sequences=True, bidirectional=False)[0]
        first, last = np.flatnonzero(real)[[0, -1]]
        want = np.zeros((5, 4))
        want[real] = alone
        want[last + 1:] = alone[-1]
        np.testing.assert_allclose(got[row], want, rtol=1e-10, atol=1e-12, err_msg=row)
        assert first == 0 or not got[row, :first].any()


def nnlang_compile(src):
    import nnlang
    net = nnlang.compile(src, backend="reference", dtype="float64", seed=0)
    rng = np.random.default_rng(1)   # nonzero biases, so a bias slot mixed up shows
    net.load_state_dict({k: v + 0.3 * rng.normal(size=v.shape) for k, v in
                         net.parameters().items()})
    return net


@pytest.mark.parametrize("cell, option, words", [
    ("gru", "reset_after = false", ["reset_after = true", "under scan"]),
    ("lstm", "recurrent_activation = \"hard_sigmoid\"", ["gates are sigmoid", "under scan"]),
    ("rnn", "stateful = true", ["initial_h"]),
    ("lstm", "unroll = true", ["one loop node"]),
    ("gru", "batch_first = true", ["[batch, time, features]"]),
    ("lstm", "num_layers = 2", ["return_sequences = true) |> lstm("]),
    # Keras' encoder-decoder habit (issue 15's words): the hint named initial_h alone
    ("lstm", "initial_state = [x[:, 0], x[:, 0]]", ["initial_h = h, initial_c = c"]),
    ("gru", "initial_state = [x[:, 0]]", ["initial_h = h"]),
])
def test_keras_and_pytorch_recurrent_options_get_their_nnlang_form(cell, option, words):
    """Options a Keras or PyTorch user writes on a recurrent layer that have no counterpart
    here: the hint was the nearest spelling (reset_after -> "did you mean 'return_state'?",
    recurrent_activation -> 'recurrent_init') or the whole signature."""
    import nnlang
    from nnlang.errors import NNError
    src = f"model M {{\n  input x: float32[batch, 5, 3]\n  output y = {cell}(x, 4, {option})\n}}\n"
    with pytest.raises(NNError) as err:
        nnlang.load(src)
    text = err.value.render()
    assert f"has no parameter '{option.split()[0]}'" in text and "<string>:3:" in text, text
    assert "did you mean" not in text and "parameters: x: tensor" not in text, text
    if cell != "lstm":
        assert "initial_c" not in text, text
    for w in words:
        assert w in text, text


def test_pytorchs_lengths_get_the_mask_that_packs_as_pytorch_does():
    """`gru(x, 4, lengths = lengths)`, PyTorch's pack_padded_sequence habit, listed the whole
    signature; the hint's mask, written as it says, gives each row's run over its first
    `length` steps alone (numpy reference)."""
    import re

    import nnlang
    from nnlang.errors import NNError
    from tests.reference import RNN
    src = """model M {
  input x: float64[batch, 5, 3]
  input lengths: int32[batch]
  output y = gru(x, 4, lengths = lengths)
}
"""
    with pytest.raises(NNError) as err:
        nnlang.load(src)
    text = err.value.render()
    assert "has no parameter 'lengths'" in text and "parameters: x: tensor" not in text, text
    mask = re.search(r"(mask = .*?\))$", " ".join(text.split("hint:")[1].split())).group(1)
    net = nnlang_compile(src.replace("lengths = lengths", mask))
    p = net.parameters()
    rng = np.random.default_rng(0)
    x, lengths = rng.normal(size=(3, 5, 3)), np.array([5, 1, 3], np.int32)
    got = net.forward({"x": x, "lengths": lengths})["y"]
    for row, n in enumerate(lengths):
        want = RNN["gru"](x[row:row + 1, :n], None, None, p["y.kernel"], p["y.recurrent"],
                          p["y.bias"], units=4, activation="tanh", return_sequences=False,
                          bidirectional=False)[0]
        np.testing.assert_allclose(got[row], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_return_state_with_every_step_on_a_symbolic_length_gets_a_hint_that_gives_h(cell):
    """return_state with return_sequences on a symbolic time dim is refused; the hint said
    "or run a second layer for the sequence" (a second layer has its own weights, so not the
    same h). The final h is the outputs' last step, masked or not: the hint's form, written
    as it says, gives return_state's h at a numeric length."""
    import re

    import nnlang
    from nnlang.errors import NNError
    extra = ", c" if cell == "lstm" else ""
    src = f"""model M {{
  symbol seq
  input x: float64[batch, seq, 3]
  input tokens: int32[batch, seq]
  hs, h{extra} = {cell}(x, 4, return_sequences = true, return_state = true, mask = tokens)
  output o = h
}}
"""
    with pytest.raises(NNError) as err:
        nnlang.load(src)
    text = err.value.render()
    assert "<string>:5:" in text and "second layer" not in text, text
    hint = text.split("hint:")[1]
    outputs, last = re.search(r"`(hs = .*?)` then `(h = .*?)`", hint).groups()
    fixed = src.replace(src.splitlines()[4], "  " + outputs.replace("...", "x, 4, mask = tokens")
                        + "\n  " + last)
    _hint_runs_as_the_fixed_length_model(fixed, src)


def _hint_runs_as_the_fixed_length_model(fixed: str, src: str) -> None:
    """The model a hint's text fixed computes what `src` at length 5 does, masked rows too."""
    import nnlang
    numeric = src.replace("  symbol seq\n", "").replace("batch, seq", "batch, 5")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(3, 5, 3)),
             "tokens": np.array([[0, 0, 5, 7, 2], [3, 1, 9, 0, 0], [4, 4, 4, 4, 4]], np.int32)}
    got = nnlang.compile(fixed, backend="reference", seed=0).forward(feeds)["o"]
    want = nnlang.compile(numeric, backend="reference", seed=0).forward(feeds)["o"]
    np.testing.assert_array_equal(got, want)


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_dropout_and_recurrent_dropout_follow_keras_in_training(cell):
    """docs/language.md: dropout / recurrent_dropout are Keras' per-sequence masks, on the
    inputs and on h before the recurrent GEMM (GRU's update gate still mixes the undropped h,
    as Keras' GRUCell's `z * h_tm1`). The training graph, interpreted with a fixed key, against
    a numpy cell fed the masks the graph drew: one [batch, 1, features] input mask and one
    [batch, units] state mask for the whole sequence, each 0 or 1 / (1 - rate)."""
    from nnlang.ops.registry import Sample
    from nnlang.passes.decompose import decompose
    from nnlang.runtime.interpret import interpret
    from tests.op_graphs import op_graph
    B, T, F, U = 3, 4, 5, 2
    g, feeds, params, _ = op_graph(cell, Sample(((B, T, F),), {
        "units": U, "return_sequences": True, "dropout": 0.5, "recurrent_dropout": 0.5}))
    low = decompose(g, training=True)
    env = interpret(low, {**feeds, "_rng": np.int64(11)}, params)

    def mask(shape):
        found = [v for v in env.values() if v.shape == shape and set(np.unique(v)) == {0, 2}]
        assert len(found) == 1, f"one dropout mask of shape {shape} for the whole sequence"
        return found[0]

    x, dm, rm = feeds["x0"], mask((B, 1, F)), mask((B, U))
    W, R, bias = params["kernel"], params["recurrent"], params["bias"]
    h, c, want = np.zeros((B, U)), np.zeros((B, U)), []
    for t in range(T):
        xt, hr = x[:, t] * dm[:, 0], h * rm
        if cell == "rnn":
            h = np.tanh(xt @ W + hr @ R + bias)
        elif cell == "lstm":
            i, f, gg, o = np.split(xt @ W + hr @ R + bias, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
            h = _sigmoid(o) * np.tanh(c)
        else:
            xz, xr, xh = np.split(xt @ W + bias[0], 3, axis=1)
            hz, hr_, hh = np.split(hr @ R + bias[1], 3, axis=1)
            z, r = _sigmoid(xz + hz), _sigmoid(xr + hr_)
            h = z * h + (1 - z) * np.tanh(xh + r * hh)
        want.append(h)
    np.testing.assert_allclose(env[low.outputs["out"]], np.stack(want, axis=1), rtol=1e-10,
                               atol=1e-12)
