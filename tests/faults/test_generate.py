"""Bad input to `nnlang generate`: prompts the tokenizer or the model cannot take, models that
do not say how to generate, and bad sampling flags: each a clear error, exit 1, no traceback."""
from __future__ import annotations

import json

import pytest

from tests.faults.conftest import ROOT, cli

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


def test_the_header_writes_the_sampling_settings_as_given(run):
    out = generate(run, "--prompt", "A", "--max-new", "2", "--top-k", "1000000",
                   "--temperature", "0.5", code=0)
    assert "--- sampled (temperature 0.5, top_k 1000000, seed 0)" in out, out


@pytest.mark.parametrize("args,words", [
    (["--prompt", "caf\u00e9 \u2603"], ["'\u2603'", "position 6", "not in the tokenizer"]),
    (["--prompt", ""], ["the prompt is empty"]),
    ([], ["no prompt given", "--prompt"]),
    (["--prompt", "x" * 30], ["30 tokens", "longer than", "(24)",
                                "the length of the model's input 'tokens'"]),
    (["--prompt", "ok", "--prompt", "x" * 25], ["prompt 2", "longer than"]),
    (["--prompt", "a", "--temperature", "0"], ["--temperature", "must be > 0"]),
    (["--prompt", "a", "--top-p", "1.5"], ["--top-p", "in (0, 1]"]),
    (["--prompt", "a", "--top-k", "0"], ["--top-k", ">= 1"]),
    (["--prompt", "a", "--beam", "0"], ["--beam", ">= 1"]),
    (["--prompt", "a", "--max-new", "0"], ["--max-new", ">= 1"]),
    # a beam no memory holds was an OverflowError or MemoryError inside numpy (a beam of 1e6
    # ran until the process was killed for memory)
    (["--prompt", "a", "--beam", "99999999999999999999"], ["decoding 99999999999999999999 rows",
                                                          "memory available", "smaller --beam"]),
    (["--prompt", "a", "--prompt", "b", "--beam", "4294967296"], ["decoding 8589934592 rows",
                                                                  "memory available"]),
    (["--prompt", "a", "--beam", "2", "--temperature", "0.5"], ["deterministic", "--beam 2"]),
    (["--prompt", "a", "--stop", "xyz"], ["stop token 'xyz'", "not in the tokenizer"]),
    (["--prompt", "a", "--stop-id", "500"], ["--stop-id: stop token id 500",
                                             "outside the vocabulary"]),
    (["--prompt", "a", "--stop", "500"], ["--stop: stop token '500' is not in the tokenizer",
                                          "--stop-id N"]),
    (["--prompt", "a", "--stop", "\\"], ["not a valid escape", "\\\\"]),
    (["--prompt", "a", "--stop", "a", "--stop", "b"], ["--stop is given 2 times"]),
    (["--prompt", "a", "--stop", "a", "--stop-id", "3"], ["--stop and --stop-id are given 2 "
                                                          "times"]),
    (["--prompt", "a", "--greedy", "--top-k", "3"], ["greedy decoding is deterministic",
                                                     "--top-k"]),
    (["--prompt", "a", "--greedy", "--beam", "3"], ["--greedy and --beam 3", "drop --greedy"]),
    (["--prompt", "a", "--length-penalty", "0.5"], ["--length-penalty", "without beam search"]),
    (["--prompt-file", "missing.txt"], ["--prompt-file missing.txt", "cannot read"]),
])
def test_bad_prompts_and_flags(run, args, words):
    out = generate(run, *args)
    for w in words:
        assert w in out, out


def test_stop_is_text_and_stop_id_an_id(run, monkeypatch):
    """`--stop 9` is the character '9', as stop="9" is in net.generate and the generate
    section; it was read as token id 9. An id has its own flag, --stop-id."""
    import nnlang.runtime.generate as gen
    seen, original = [], gen.prepared   # NOTE: where the CLI's settings are resolved
    monkeypatch.setattr(gen, "prepared", lambda net, prompts, options: (
        seen.append(options["stop"]), original(net, prompts, options))[1])
    greedy = json.loads(generate(run, "--prompt", "The film", "--max-new", "1", "--json",
                                 code=0))
    first, char = greedy["ids"][0], greedy["text"]
    for args in (["--stop-id", str(first)], ["--stop", char]):
        out = json.loads(generate(run, "--prompt", "The film", "--max-new", "5", "--json",
                                  *args, code=0))
        assert out["ids"] == [first] and out["stopped"] == "stop", (args, out)
    generate(run, "--prompt", "a", "--max-new", "1", "--stop", "9", code=0)
    generate(run, "--prompt", "a", "--max-new", "1", "--stop", "\\n", code=0)
    assert seen == [None, first, char, "9", "\\n"]


def test_predict_on_a_model_that_generates_points_at_generate(run):
    """`nnlang predict lm.nn -c RUN "The film"` prints the argmax at each input position (one
    teacher-forced pass), which reads like a broken continuation: it says where generation is."""
    out = cli("predict", run / "lm.nn", "-c", run / "run", "--backend", "reference",
              "The film", code=0)
    assert "nnlang generate" in out and "--prompt" in out, out
    assert "nnlang generate" not in cli("predict", run / "plain.nn", "-c", run / "run",
                                        "--backend", "reference", "The film", code=0)


def test_a_model_without_a_generate_section(run):
    out = generate(run, "--prompt", "a", file="plain.nn")
    assert "has no generate section" in out and "plain.nn" in out and "tokens =" in out
    # located at the model's definition, as the section's own errors are (it had no place)
    line = LM.splitlines().index(next(t for t in LM.splitlines() if t.startswith("model "))) + 1
    assert f"plain.nn:{line}:1: error: model 'TinyLm' has no generate section" in out, out


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


def test_an_input_generation_cannot_feed(tmp_path):
    """`style` reaches the logits but generation feeds only the token stream: recompute
    decoding fed it zeros silently and incremental decoding failed with no location."""
    conditioned = LM.replace("input next:", "input style: float32[batch, 4]\n  input next:")
    conditioned = conditioned.replace("h = positional_encoding(x,",
                                      "h = positional_encoding(x + unsqueeze(dense(style, dim), "
                                      "1),")
    for causal in ("true", "false"):   # incremental and recompute decoding
        bad = tmp_path / "style.nn"
        bad.write_text(conditioned.replace("causal = true", f"causal = {causal}") + GENERATE)
        out = cli("check", bad)
        assert "style.nn:21:12: error: logits 'logits' read input 'style', which generation " \
               "cannot feed: it feeds only the token stream 'tokens'" in out, out
        assert "compute 'style' (declared at" in out and "style.nn:4)" in out, out


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


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    """models/seq2seq.nn shrunk and trained for a few steps (reference backend: no compile)."""
    folder = tmp_path_factory.mktemp("s2s")
    cli("train", ROOT / "models/seq2seq.nn", "--backend", "reference", "--out", folder / "run",
        "--data", "dates(n_train=32, n_test=8)", "--epochs", "1", "--batch", "16",
        *[a for kv in ("dim=16", "heads=2", "ffn=32", "layers=1") for a in ("--set", kv)],
        code=0)
    return folder / "run"


def s2s(run, *args, code=1):
    return cli("generate", ROOT / "models/seq2seq.nn", "-c", run, "--backend", "reference",
               *args, code=code)


def test_held_out_exact_match_is_reported(seq2seq):
    out = s2s(seq2seq, "--prompt", "1/2/03", "--greedy", code=0)
    assert "--- greedy" in out and "1/2/03 -> " in out
    out = s2s(seq2seq, "--eval", "--limit", "5", code=0)
    assert "greedy exact match on dates test:" in out and "/5)" in out
    out = s2s(seq2seq, "--eval", "--beam", "2", "--json", code=0)
    assert '"strategy": "beam 2' in out and '"n": 8' in out


@pytest.mark.parametrize("args,words", [
    (["--prompt", "5 M\u00e4rz 2021"], ["'\u00e4' at position 4", "not in the tokenizer's "
                                         "alphabet", "known characters"]),
    # NOTE: the hint named the token input (decoder_in, 11 long) as the limit of a source
    (["--prompt", "1" * 33], ["33 tokens", "longer than the model's source allows (32)",
                              "the length of the model's input 'source'"]),
    (["--prompt", "1/2/03", "--prompt", "1/2/2003" * 5], ["prompt 2", "40 tokens"]),
    (["--prompt", "1/2/03", "--prompt", "1/2/ä"], ["prompt 2 '1/2/ä'", "position 5"]),
    (["--eval", "--prompt", "1/2/03"], ["--eval", "takes no prompts"]),
    (["--prompt", "1/2/03", "--limit", "3"], ["--limit only applies with --eval"]),
    (["--prompt", "1/2/03", "--data", "dates"], ["--data only applies with --eval"]),
    (["--eval", "--data", "nosuchdata"], ["nosuchdata"]),
])
def test_bad_seq2seq_input(seq2seq, args, words):
    out = s2s(seq2seq, *args)
    for w in words:
        assert w in out, out


def test_eval_needs_an_encoder_decoder(run):
    out = generate(run, "--eval")
    assert "not an encoder-decoder" in out and "`nnlang eval`" in out


def test_held_out_checks_its_rows(seq2seq):
    """held_out (what --eval runs) scored ids outside the vocabulary, zipped 8 sources with 4
    targets into a score of 2/8 = 0.5, and raised raw numpy errors for other shapes."""
    import numpy as np

    import nnlang
    from nnlang.data import load_dataset
    from nnlang.runtime.generate import held_out
    from nnlang.train.inference import restore
    net = restore(str(ROOT / "models/seq2seq.nn"), seq2seq, "reference")[0]
    ds = load_dataset("dates", n_train=8, n_test=8)
    src, tgt = ds.test["source"], ds.test["target"]
    bad = src.copy()
    bad[3, 0] = 500
    for args, words in [((bad, tgt), "sources, row 3: the id 500 is outside the tokenizer's"),
                        ((src, tgt[:4]), "8 sources but 4 targets"),
                        ((np.pad(src, ((0, 0), (0, 4))), tgt), "36 ids wide"),
                        ((src + 0.5, tgt), "not whole numbers"),
                        ((src[0], tgt), "rows of token ids")]:
        with pytest.raises(nnlang.NNError, match=words):
            held_out(net, *args, max_new=3)
    assert held_out(net, src, tgt, max_new=3)["n"] == 8


def test_a_prompt_file_may_start_with_a_byte_order_mark(run):
    (run / "bom.txt").write_bytes("\ufeffthe movie\n".encode())
    out = generate(run, "--prompt-file", run / "bom.txt", "--max-new", "2", code=0)
    assert "the movie" in out and "\ufeff" not in out



def test_a_prompt_file_that_is_not_utf8_is_named_at_the_byte(run):
    """A Latin-1 prompt file: 'cannot read it ('utf-8' codec can't decode byte 0xe9 in
    position 14 ...)', the decoder's offset and no line; .nn source names the line and column."""
    (run / "latin.txt").write_bytes("the movie\nun caf\u00e9\n".encode("latin-1"))
    out = generate(run, "--prompt-file", run / "latin.txt")
    assert f"{run / 'latin.txt'}:2:7: error: not UTF-8 text: byte 0xe9" in out, out
    assert "UTF-8 text" in out and ".nn source" not in out, out

@pytest.mark.parametrize("name", ["big.txt", "/dev/zero"])
def test_an_endless_prompt_file_is_cut_short(run, monkeypatch, tmp_path, name):
    """--prompt-file /dev/zero read until memory ran out (an internal MemoryError under a
    memory limit)."""
    from nnlang_cli import generate_cmds
    monkeypatch.setattr(generate_cmds, "MAX_PROMPT_FILE_BYTES", 1 << 16)
    path = tmp_path / name if name == "big.txt" else name
    if name == "big.txt":
        path.write_text("a" * (1 << 17))
    out = generate(run, "--prompt-file", path)
    assert f"--prompt-file {path} is larger than 0.0625 MiB" in out, out




@pytest.mark.parametrize("sep", ["\u2028", "\x0c", "\x85", "\x1e"])
def test_a_prompt_file_splits_at_newlines_only(run, sep):
    """One prompt per line means per "\\n" (a "\\r\\n" line too): str.splitlines also cut at a
    form feed, U+0085, U+001E and U+2028, so the line `The{sep}film` became the two prompts
    'The' and 'film'. The file must give what --prompt with each line gives (an error naming
    the character where the tokenizer lacks it, else the one prompt)."""
    (run / "seps.txt").write_bytes(f"The{sep}film\r\nA\n".encode())
    want_code = 0 if sep == "\x85" else 1   # IMDB text holds U+0085 (cp1252's ellipsis)
    given = generate(run, "--prompt", f"The{sep}film", "--prompt", "A", "--max-new", "2",
                     "--json", code=want_code)
    from_file = generate(run, "--prompt-file", run / "seps.txt", "--max-new", "2", "--json",
                         code=want_code)
    assert from_file == given, (from_file, given)
    (run / "crlf.txt").write_bytes(b"The film\r\nA\r\n\r\n")
    out = generate(run, "--prompt-file", run / "crlf.txt", "--max-new", "2", "--json", code=0)
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["The film", "A"]


@pytest.mark.parametrize("decoding", [[], ["--beam", "2"]])
def test_ctrl_c_while_decoding_prints_what_it_has(run, monkeypatch, decoding):
    """Ctrl-C during decoding printed only "interrupted" (exit 130): every token decoded so far
    was lost. It prints each prompt with the tokens it had (`stopped` "interrupted"; greedy: the
    first tokens of the uninterrupted output), the word on stderr under --json, and exits 130."""
    from nnlang.runtime.generate import Generator
    args = ["--prompt", "The film", "--prompt", "A", "--max-new", "6", "--json", *decoding]
    whole = [json.loads(line) for line in generate(run, *args, code=0).splitlines()]
    real, calls = Generator.advance, []

    def advance(self, new, pos):
        calls.append(pos)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, new, pos)
    monkeypatch.setattr(Generator, "advance", advance)
    out = generate(run, *args, code=130)
    lines = out.splitlines()
    assert lines[-1] == "interrupted: the texts above end where decoding stopped", out
    got = [json.loads(line) for line in lines[:-1]]
    assert [g["prompt"] for g in got] == ["The film", "A"]
    assert [g["stopped"] for g in got] == ["interrupted"] * 2
    assert all(len(g["ids"]) == 3 for g in got)
    if not decoding:
        assert [g["ids"] for g in got] == [w["ids"][:3] for w in whole]


def test_sigterm_while_decoding_prints_what_it_has_and_says_terminated(run, monkeypatch):
    """SIGTERM during decoding: the texts so far as for Ctrl-C, then "terminated (SIGTERM)" and
    exit 143 (it was "interrupted" and 130, or, before the CLI handled SIGTERM, silence)."""
    import signal

    from nnlang.runtime.generate import Generator
    real, calls = Generator.advance, []

    def advance(self, new, pos):
        calls.append(pos)
        if len(calls) == 3:
            # NOTE: with no handler, SIGTERM would end the test run itself
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "SIGTERM unhandled"
            signal.raise_signal(signal.SIGTERM)
        return real(self, new, pos)
    monkeypatch.setattr(Generator, "advance", advance)
    out = generate(run, "--prompt", "The film", "--max-new", "6", "--json", code=143)
    lines = out.splitlines()
    assert lines[-1] == "terminated (SIGTERM): the texts above end where decoding stopped", out
    assert json.loads(lines[0])["stopped"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
