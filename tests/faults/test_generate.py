"""Bad input to `nnlang generate`: prompts the tokenizer or the model cannot take, models that
do not say how to generate, and bad sampling flags: each a clear error, exit 1, no traceback."""
from __future__ import annotations

import pytest

from tests.faults.conftest import cli

LM = """
model TinyLm(vocab = 108, maxlen = 24, dim = 16) {
  input tokens: int32[batch, maxlen]
  input next: int32[batch, maxlen]
  x = embedding(tokens, vocab, dim)
  h = positional_encoding(x, kind = "learned", max_len = maxlen)
  h2 = h + multi_head_attention(layer_norm(h), heads = 2, causal = true)
  logits = dense(layer_norm(h2), vocab)
  output logits
  loss cross_entropy(logits, next)
}
train TinyLm {
  data = imdb_text_sample(maxlen = maxlen, train_chunks = 32, test_chunks = 8)
  batch = 16
  epochs = 1
}
"""
GENERATE = """
generate TinyLm {
  tokens = tokens
  logits = logits
}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny language model (reference backend: no compile)."""
    folder = tmp_path_factory.mktemp("gen")
    (folder / "lm.nn").write_text(LM + GENERATE)
    (folder / "plain.nn").write_text(LM)
    cli("train", folder / "lm.nn", "--backend", "reference", "--out", folder / "run", code=0)
    return folder


def generate(run, *args, file="lm.nn", code=1):
    return cli("generate", run / file, "-c", run / "run", "--backend", "reference", *args,
               code=code)


def test_a_good_prompt_works(run):
    out = generate(run, "--prompt", "The film", "--prompt", "A", "--max-new", "5", code=0)
    assert out.count("--- greedy") == 2 and "The film" in out


@pytest.mark.parametrize("args,words", [
    (["--prompt", "caf\u00e9 \u2603"], ["'\u2603'", "position 6", "not in the tokenizer"]),
    (["--prompt", ""], ["the prompt is empty"]),
    ([], ["no prompt given", "--prompt"]),
    (["--prompt", "x" * 30], ["30 tokens", "longer than", "(23)"]),
    (["--prompt", "ok", "--prompt", "x" * 24], ["prompt 2", "longer than"]),
    (["--prompt", "a", "--temperature", "0"], ["--temperature", "must be > 0"]),
    (["--prompt", "a", "--top-p", "1.5"], ["--top-p", "in (0, 1]"]),
    (["--prompt", "a", "--top-k", "0"], ["--top-k", ">= 1"]),
    (["--prompt", "a", "--beam", "0"], ["--beam", ">= 1"]),
    (["--prompt", "a", "--max-new", "0"], ["--max-new", ">= 1"]),
    (["--prompt", "a", "--beam", "2", "--temperature", "0.5"], ["deterministic", "--beam 2"]),
    (["--prompt", "a", "--stop", "xyz"], ["stop token 'xyz'", "not in the tokenizer"]),
    (["--prompt", "a", "--stop", "500"], ["stop token id 500", "outside the vocabulary"]),
    (["--prompt-file", "missing.txt"], ["--prompt-file missing.txt", "cannot read"]),
])
def test_bad_prompts_and_flags(run, args, words):
    out = generate(run, *args)
    for w in words:
        assert w in out, out


def test_a_model_without_a_generate_section(run):
    out = generate(run, "--prompt", "a", file="plain.nn")
    assert "has no generate section" in out and "plain.nn" in out and "tokens =" in out


@pytest.mark.parametrize("section,words", [
    ("generate TinyLm {\n  tokens = next2\n  logits = logits\n}",
     ["bad.nn:17:12", "'next2' is not an input", "did you mean 'next'"]),
    ("generate TinyLm {\n  tokens = tokens\n}", ["bad.nn:16:1", "next-token logits"]),
    ("generate TinyLm {\n  tokens = x\n  logits = logits\n}", ["'x' is not an input"]),
    ("generate TinyLm {\n  tokens = tokens\n  logits = logits\n  temperature = -1\n}",
     ["bad.nn:19:17", "temperature must be > 0"]),
    ("generate Other {\n  tokens = tokens\n  logits = logits\n}",
     ["generate section for unknown model 'Other'"]),
])
def test_bad_generate_sections(run, section, words):
    bad = run / "bad.nn"
    bad.write_text(LM.strip() + "\n" + section + "\n")
    out = cli("check", bad)
    for w in words:
        assert w in out, out


def test_no_token_input(tmp_path):
    bad = tmp_path / "reg.nn"
    bad.write_text("model Reg {\n  input x: float32[batch, 8]\n  output y = dense(x, 4)\n}\n"
                   "generate Reg {\n  tokens = x\n  logits = y\n}\n")
    out = cli("check", bad)
    assert "reg.nn:6:12" in out and "must be int token ids [batch, len]" in out


def test_a_section_stop_token_the_tokenizer_lacks_points_at_the_section(run):
    (run / "stop.nn").write_text(LM + GENERATE.replace("logits = logits",
                                                       "logits = logits\n  stop = \"\u2603\""))
    out = generate(run, "--prompt", "a", file="stop.nn")
    assert "stop.nn:" in out and "stop token '\u2603' is not in the tokenizer" in out
    assert "--stop" not in out.split("hint")[0]
