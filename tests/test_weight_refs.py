"""Layer weights as values (`h.weight`, the path `nnlang check` prints): an L1 penalty on one
layer and an embedding tied to the output projection, values and gradients against numpy; an
unknown path is a located error with a did-you-mean hint."""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.frontend.fmt import format_source

PENALIZED = """
model Pen {
  input x: float32[batch, 4]
  input label: int32[batch]
  h = dense(x, 6) |> relu
  logits = dense(h, 3)
  output logits
  loss cross_entropy(logits, label)
  loss sparse = 0.01 * sum(abs(h.weight))
}
"""

TIED = """
model Tied(vocab = 11, dim = 4) {
  input tokens: int32[batch, 5]
  input label: int32[batch]
  emb = embedding(tokens, vocab, dim)
  pooled = mean(emb, axis = 1)
  logits = pooled @ transpose(emb.weight, perm = [1, 0])  # the embedding is the output layer
  output logits
  loss cross_entropy(logits, label)
}
"""


def _softmax_ce_grad(logits, label):
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(label)), label]))
    p[np.arange(len(label)), label] -= 1
    return loss, p / len(label)


def test_l1_penalty_on_one_layer():
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(5, 4)), "label": rng.integers(0, 3, 5).astype(np.int32)}
    net = nnlang.compile(PENALIZED, backend="reference", dtype="float64", batch=5)
    w = net.parameters()
    assert net.evaluate(feeds)["sparse"] == pytest.approx(0.01 * np.abs(w["h.weight"]).sum())
    plain = nnlang.compile(PENALIZED.replace("  loss sparse = 0.01 * sum(abs(h.weight))\n", ""),
                           backend="reference", dtype="float64", batch=5)
    plain.load_state_dict(w)
    with_pen, without = net.gradients(feeds), plain.gradients(feeds)
    # the penalty adds 0.01 * sign(W) to h.weight's gradient and nothing anywhere else
    np.testing.assert_allclose(with_pen["h.weight"] - without["h.weight"],
                               0.01 * np.sign(w["h.weight"]), atol=1e-12)
    for k in ("h.bias", "logits.weight", "logits.bias"):
        np.testing.assert_allclose(with_pen[k], without[k], atol=1e-12)


def test_tied_embedding_matches_numpy():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 11, (3, 5)).astype(np.int32)
    label = rng.integers(0, 11, 3).astype(np.int32)
    net = nnlang.compile(TIED, backend="reference", dtype="float64", batch=3)
    assert list(net.parameters()) == ["emb.weight"]   # one matrix, used twice
    e = net.parameters()["emb.weight"]
    pooled = e[tokens].mean(1)
    logits = pooled @ e.T
    np.testing.assert_allclose(net.forward({"tokens": tokens})["logits"], logits, atol=1e-12)
    loss, dlogits = _softmax_ce_grad(logits, label)
    want = dlogits.T @ pooled                          # through the output projection
    dpooled = dlogits @ e
    np.add.at(want, tokens, np.repeat(dpooled[:, None, :] / tokens.shape[1], 5, axis=1))
    got = net.gradients({"tokens": tokens, "label": label})["emb.weight"]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert net.evaluate({"tokens": tokens, "label": label})["cross_entropy"] == \
        pytest.approx(loss)


def test_weight_paths_inside_repeat_and_blocks():
    src = """
block Layer(x) {
  inner = dense(x, 4)
  return inner + 0.0 * sum(inner.weight)
}
model Deep {
  input x: float32[batch, 4]
  h = x
  repeat 2 {
    h = Layer(h)
  }
  output y = h
  loss total = sum(abs(h.0.inner.weight)) + sum(abs(h.1.inner.weight))
}
"""
    program = nnlang.load(src)
    assert {"h.0.inner.weight", "h.1.inner.weight"} <= set(program.graph.params)
    net = nnlang.compile(program, backend="reference", dtype="float64", batch=2)
    w = net.parameters()
    got = net.evaluate({"x": np.zeros((2, 4))})["total"]
    assert got == pytest.approx(np.abs(w["h.0.inner.weight"]).sum()
                                + np.abs(w["h.1.inner.weight"]).sum())


@pytest.mark.parametrize("ref, words", [
    ("h.wieght", ["no weight 'h.wieght' here", "did you mean 'h.weight'?"]),
    ("logits.weight", ["no weight 'logits.weight' here", "'logits' is defined later"]),
    ("h.7.weight", ["no weight 'h.7.weight'"]),
])
def test_unknown_weight_path_is_located(ref, words):
    src = PENALIZED.replace("  loss sparse = 0.01 * sum(abs(h.weight))\n", "") \
        .replace("h = dense(x, 6) |> relu", f"h = dense(x, 6) |> relu\n  s = sum({ref})")
    with pytest.raises(nnlang.NNError) as info:
        nnlang.load(src, model="Pen")
    text = info.value.render()
    assert "<string>:6:" in text and "^" * len(ref) in text
    for w in words:
        assert w in text, text


@pytest.mark.parametrize("ref, hint", [
    # the docs' own example path (PyTorch's naming) was offered 'h.0.out.weight'
    ("h.0.attn.q.weight", "the weights of layer 'h.0.attn': h.0.attn.wq, h.0.attn.bq, "
                          "h.0.attn.wk, h.0.attn.bk, h.0.attn.wv, h.0.attn.bv, h.0.attn.wo, "
                          "h.0.attn.bo"),
    ("h.0.attn.wqq", "did you mean 'h.0.attn.wq'?"),
    ("h.1.ffn.kernel", "the weights of layer 'h.1.ffn': h.1.ffn.weight, h.1.ffn.bias"),
])
def test_a_path_under_a_layer_names_that_layers_weights(ref, hint):
    src = f"""
block Enc(x) {{
  attn = multi_head_attention(x, heads = 2)
  ffn = dense(attn, 4)
  return relu(ffn)
}}
model Deep {{
  input x: float32[batch, 3, 4]
  h = x
  repeat 2 {{
    h = Enc(h)
  }}
  output y = h
  loss total = sum(abs({ref}))
}}
"""
    with pytest.raises(nnlang.NNError) as info:
        nnlang.load(src)
    assert f"hint: {hint}" in info.value.render(), info.value.render()
    from nnlang.train.overrides import resolve   # --set l2_on=[...] says the same
    with pytest.raises(nnlang.NNError) as info:
        resolve(src.replace(f"  loss total = sum(abs({ref}))\n", "  loss total = sum(h)\n"),
                sets={"l2": 0.1, "l2_on": [ref]})
    assert f"hint: {hint}" in info.value.render(), info.value.render()


def test_format_keeps_weight_paths():
    assert "sum(abs(h.weight))" in format_source(PENALIZED)


# *** l1_on / l2_on: penalties on the weights they name ***

SECTION = """
model Part {
  input x: float32[batch, 4]
  input label: int32[batch]
  h = dense(x, 6, trainable = false) |> relu
  g = dense(h, 5) |> relu
  logits = dense(g, 3)
  output logits
  loss cross_entropy(logits, label)
}
train Part {
  l1 = 0.01
  SETTINGS
}
"""


def test_l1_on_penalizes_only_the_named_weights():
    rng = np.random.default_rng(2)
    feeds = {"x": rng.normal(size=(5, 4)), "label": rng.integers(0, 3, 5).astype(np.int32)}

    def grads(settings):
        net = nnlang.compile(SECTION.replace("SETTINGS", settings), backend="reference",
                             dtype="float64", batch=5, seed=3)
        return net.parameters(), net.gradients(feeds)
    w, named = grads("l1_on = [g.weight, logits.bias]")
    _, other = grads("l1_on = [logits.weight]")
    _, plain = grads("")   # l1 on every trainable matrix: g.weight and logits.weight
    # the penalty's share of each gradient: l1 * sign(w) on the named weights, nothing else
    for k, on in (("g.weight", True), ("logits.bias", True), ("logits.weight", False),
                  ("g.bias", False)):
        diff = named[k] - other[k] + (0.01 * np.sign(w[k]) if k == "logits.weight" else 0)
        np.testing.assert_allclose(diff, 0.01 * np.sign(w[k]) * on, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(plain["logits.weight"], other["logits.weight"], atol=1e-12)
    assert "h.weight" not in named   # frozen: no gradient at all


@pytest.mark.parametrize("settings, words", [
    ("l1_on = [h.weight, g.weight]", ["<string>:13:12:", "l1_on names 'h.weight', a frozen "
                                      "weight", "drop it from the list"]),
    ("l1_on = [g.wieght]", ["<string>:13:12:", "no weight 'g.wieght'",
                            "did you mean 'g.weight'?"]),
    ("l2_on = [g.weight]", ["<string>:13:11:", "l2 is 0", "e.g. l2 = 1e-4"]),
    ("l1_on = 3", ["l1_on lists weights by path"]),
])
def test_bad_penalty_lists(settings, words):
    with pytest.raises(nnlang.NNError) as info:
        nnlang.load(SECTION.replace("SETTINGS", settings))
    text = info.value.render()
    for w in words:
        assert w in text, text


@pytest.mark.parametrize("given, words", [
    (["--set", "l1_on=[h.weight]"], ["<command line>:1:13: error: train setting 'l1_on' names "
                                     "'h.weight', a frozen weight", "drop it from the list"]),
    (["--set", "l2_on=[g.weight]"], ["<command line>:1:13: error: train setting 'l2_on' names "
                                     "the weights of the l2 penalty, but l2 is 0",
                                     "e.g. --set l2=1e-4"]),
])
def test_penalty_lists_from_set_are_refused_as_the_sections_are(tmp_path, given, words):
    """--set l1_on=[a frozen weight] trained with the penalty silently dropped (and --set
    l2_on=[...] with l2 = 0 applied no penalty), where the same list in the train section is a
    located error; fit's settings go through the same check."""
    from typer.testing import CliRunner
    from nnlang_cli.main import app
    (tmp_path / "part.nn").write_text(SECTION.replace("SETTINGS", ""))
    out = CliRunner().invoke(app, ["train", str(tmp_path / "part.nn"), "--out",
                                   str(tmp_path / "run"), *given]).output
    for w in words:
        assert w in out, out
    assert not (tmp_path / "run").exists()
    from nnlang.train.overrides import resolve
    key, value = given[1].split("=")
    with pytest.raises(nnlang.NNError, match=words[0].split("error: ")[1]):
        resolve(SECTION.replace("SETTINGS", ""), config={key: [value[1:-1]]})


def test_set_l2_0_still_turns_off_a_sections_l2_on():
    from nnlang.train.overrides import resolve
    _, cfg, *_ = resolve(SECTION.replace("l1 = 0.01", "l2 = 0.01").replace(
        "SETTINGS", "l2_on = [g.weight]"), sets={"l2": 0.0})
    assert cfg.l2 == 0 and cfg.penalties("g.weight", 2) == {}
