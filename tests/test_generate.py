"""Generation (nnlang/runtime/generate.py, decode_graphs.py): the KV-cache step graph against the
full forward pass, greedy/beam decoding with the cache against full recomputation, sampling
settings, the generate section and the character tokenizer."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from nnlang.data.chars import CharTokenizer
from nnlang.errors import NNError
from nnlang.frontend.elaborate import load
from nnlang.passes.pipeline import forward_graph
from nnlang.runtime.decode_graphs import derive
from nnlang.runtime.generate import Generator, options_from
from nnlang.runtime.net import Net, _compile

DOC = Path(__file__).resolve().parents[1] / "docs" / "generation.md"
LM, SEQ2SEQ = re.findall(r"```nn\n(.*?)```", DOC.read_text(), re.S)[:2]
CHARS = "abcdefghijklmnopqrstuvwxyz .,!?'-:;()"   # 37 characters: ids 2..38 (the model has 40)


def lm_net(backend="reference", seed=1, source=LM):
    return Net(load(source), backend=backend, batch=2, seed=seed)


def generator(net, recompute=False):
    gen = Generator(net, net.program.generate, CharTokenizer(CHARS))
    if recompute:   # the reference: every token reruns the model on the whole prefix
        gen.graphs, gen.mode = None, "recompute"
    return gen


def step_logits(net, tokens, prompt_len, statics_feeds=None, zero_cache=False):
    """Prefill on tokens[:, :prompt_len], then one step per later position: the logits of
    every position from the cache path, [batch, len, vocab]."""
    spec = net.program.generate
    graphs = derive(net.user, spec)
    batch = len(tokens)
    state = dict(net.state)
    prefill = _compile(forward_graph(graphs.prefill, batch, "float32", ("outputs",)),
                       net.backend, state)
    cut = tokens.copy()
    cut[:, prompt_len:] = 0
    out = prefill.run({spec.tokens: cut, **(statics_feeds or {})})
    for name in graphs.caches:
        state[name] = np.zeros_like(out[name]) if zero_cache else np.array(out[name])
    step = _compile(forward_graph(graphs.step, batch, "float32", ("outputs",)), net.backend,
                    state)
    got = [np.array(out["logits"])[:, :prompt_len]]
    for t in range(prompt_len, tokens.shape[1]):
        feeds = {spec.tokens: tokens[:, t:t + 1], "_pos": np.full(batch, t, np.int32),
                 **{k: out[k] for k in graphs.statics}}
        got.append(np.array(step.run(feeds)["logits"]))
    return np.concatenate(got, axis=1)


def random_tokens(shape, vocab=40, seed=0):
    return np.random.default_rng(seed).integers(1, vocab, shape).astype(np.int32)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_cached_logits_match_the_full_forward_at_every_position(backend):
    net = lm_net(backend)
    tokens = random_tokens((2, 16))
    full = net.forward({"tokens": tokens, "next": tokens})["logits"]
    got = step_logits(net, tokens, prompt_len=3)
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)
    # the step really reads the cache: without the prompt's keys the logits differ
    blind = step_logits(net, tokens, prompt_len=3, zero_cache=True)
    assert np.abs(blind[:, 3:] - full[:, 3:]).max() > 1e-3


NOISY = LM.replace("h = positional_encoding(x,",
                   "x2 = x * random_uniform_like(x, 0.5, 1.5)\n"
                   "  h = positional_encoding(x2 + random_normal_like(x),")


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_a_model_with_noise_decodes_with_the_cache(backend):
    """Generation is inference, where random_normal_like / random_uniform_like are their mean
    (a constant of x's shape, position by position). They were said to mix positions, and a
    model with noise reran the whole prefix for every new token."""
    net = lm_net(backend, source=NOISY)
    tokens = random_tokens((2, 16))
    net.train_step({"tokens": tokens, "next": tokens})
    full = net.forward({"tokens": tokens, "next": tokens})["logits"]
    np.testing.assert_allclose(step_logits(net, tokens, prompt_len=3), full, atol=1e-5, rtol=0)
    opts = options_from(net.program.generate, {"max_new": 8})
    cached = generator(net).generate(["the movie", "a"], opts)
    full = generator(net, recompute=True).generate(["the movie", "a"], opts)
    assert cached.mode == "incremental"
    assert [s.ids for s in cached.samples] == [s.ids for s in full.samples]


def test_encoder_decoder_step_matches_the_full_forward():
    net = Net(load(SEQ2SEQ), backend="reference", batch=2, seed=2)
    source = random_tokens((2, 12), 16, seed=1)
    source[0, 7:] = 0   # padding, masked by the model
    target_in = random_tokens((2, 8), 16, seed=2)
    full = net.forward({"source": source, "target_in": target_in})["logits"]
    got = step_logits(net, target_in, prompt_len=1, statics_feeds={"source": source})
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)
    assert derive(net.user, net.program.generate).statics   # the memory is computed once


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_greedy_with_the_cache_gives_the_tokens_of_full_recomputation(backend):
    net = lm_net(backend)
    prompts = ["the movie was", "a"]     # different lengths share the batch
    opts = options_from(net.program.generate, {"max_new": 12})
    cached = generator(net).generate(prompts, opts)
    full = generator(net, recompute=True).generate(prompts, opts)
    assert cached.mode == "incremental" and full.mode == "recompute"
    assert [s.ids for s in cached.samples] == [s.ids for s in full.samples]
    # 13 + 3 fill maxlen = 16, and the prediction at position 15 is a 4th token
    assert [len(s.ids) for s in cached.samples] == [4, 12]
    assert [s.stopped for s in cached.samples] == ["max_len", "max_new"]


def test_beam_search_is_exhaustive_when_as_wide_as_the_vocabulary():
    """Two tokens, width >= vocabulary: the best pair by total log-probability, which a brute
    force over every pair (one full forward pass each) finds independently."""
    net = lm_net()
    gen = generator(net)
    result = gen.generate(["ab"], options_from(net.program.generate,
                                               {"max_new": 2, "beam": 40}))
    base = [gen.tok.encode("ab")]
    vocab = gen.tok.vocab_size
    pairs = list(itertools.product(range(2, vocab), repeat=2))
    tokens = np.zeros((len(pairs), 16), np.int32)
    tokens[:, :2] = base[0]
    tokens[:, 2:4] = pairs
    big = Net(net.program, backend="reference", batch=len(pairs))
    big.load_state_dict(net.state_dict())
    logits = big.forward({"tokens": tokens, "next": tokens})["logits"].astype(np.float64)
    masked = logits.copy()
    # NOTE: generation never produces padding or <unk>, nor ids it cannot write
    masked[..., [gen.tok.pad_id, gen.tok.unk_id]] = -np.inf
    masked[..., vocab:] = -np.inf
    logp = masked - np.logaddexp.reduce(masked, axis=-1, keepdims=True)
    rows = np.arange(len(pairs))
    total = logp[rows, 1, tokens[:, 2]] + logp[rows, 2, tokens[:, 3]]
    assert result.samples[0].ids == list(pairs[int(total.argmax())])
    assert result.samples[0].score == pytest.approx(total.max() / 2, abs=1e-4)


def test_beam_search_with_the_cache_matches_recomputation():
    net = lm_net()
    opts = options_from(net.program.generate, {"max_new": 6, "beam": 3})
    a = generator(net).generate(["the", "ok"], opts)
    b = generator(net, recompute=True).generate(["the", "ok"], opts)
    assert [s.ids for s in a.samples] == [s.ids for s in b.samples]


def test_beam_search_keeps_a_static_without_a_batch_axis_whole():
    """A value the prefill computes once from the weights (gain * 2.0) is the same for every
    row: beam search took rows of it as if it had a batch axis, and the step failed."""
    source = LM.replace("  x = embedding", "  param gain: float32[dim] = ones\n  x = embedding")
    source = source.replace("dense(layer_norm(h2), vocab)",
                            "dense(layer_norm(h2) * (gain * 2.0), vocab)")
    net = lm_net(source=source)
    assert derive(net.user, net.program.generate).shared
    opts = options_from(net.program.generate, {"max_new": 6, "beam": 3})
    a = generator(net).generate(["the", "ok"], opts)
    b = generator(net, recompute=True).generate(["the", "ok"], opts)
    assert a.mode == "incremental" and [s.ids for s in a.samples] == [s.ids for s in b.samples]


def test_beam_search_goes_on_after_one_prompt_fills_the_model():
    """A long prompt fills the model (max_len 16; the last position's logits give one token
    more) while a short one is still decoding: the full one's beams stop there, the other's
    go on to max_new, each as it would alone."""
    net = lm_net()
    opts = options_from(net.program.generate, {"max_new": 8, "beam": 2})
    prompts = ["the cat sat on", "a"]               # 14 and 1 characters
    both = generator(net).generate(prompts, opts)
    assert [s.stopped for s in both.samples] == ["max_len", "max_new"]
    assert [len(s.ids) for s in both.samples] == [16 + 1 - 14, 8]
    alone = [generator(net).generate([p], opts).samples[0].ids for p in prompts]
    assert [s.ids for s in both.samples] == alone


def test_stop_token_ends_a_sequence():
    net = lm_net()
    gen = generator(net)
    first = gen.generate(["the"], options_from(net.program.generate, {"max_new": 5}))
    stop = CHARS[first.samples[0].ids[1] - 2]       # the second greedy token
    got = gen.generate(["the"], options_from(net.program.generate,
                                             {"max_new": 5, "stop": stop}))
    assert got.samples[0].ids == first.samples[0].ids[:2]
    assert got.samples[0].stopped == "stop" and len(got.samples[0].text) == 1


def _string_stop(prompt: str, pieces: list, strings) -> int | None:
    """HF's stop_strings rule written out: the count of tokens (each writing `pieces[k]`) after
    which the text from the prompt's end on first holds a stop string, or None."""
    for k in range(1, len(pieces) + 1):
        before, now = prompt + "".join(pieces[:k - 1]), prompt + "".join(pieces[:k])
        if any(s in now[max(0, len(prompt) - len(s) + 1):] and
               s not in before[max(0, len(prompt) - len(s) + 1):] for s in strings):
            return k
    return None


def test_a_stop_string_over_two_tokens_ends_each_row_on_its_own():
    """HF's generate(stop_strings=...): a sequence ends at the token that completes the string
    however many tokens it spans, `stopped` "stop", its text kept through the string; each row
    of a batch ends on its own. `stop` took one token only."""
    net = lm_net()
    gen = generator(net)
    spec = net.program.generate
    prompts = ["the", "a"]
    free = gen.generate(prompts, options_from(spec, {"max_new": 10})).samples
    string = free[0].text[3:5]                # two characters: two tokens
    got = gen.generate(prompts, options_from(spec, {"max_new": 10,
                                                    "stop_strings": [string]})).samples
    for p, f, g in zip(prompts, free, got):
        k = _string_stop(p, list(f.text), [string])
        if k is None:
            assert (g.ids, g.text, g.stopped) == (f.ids, f.text, f.stopped)
        else:
            assert (g.ids, g.text, g.stopped) == (f.ids[:k], f.text[:k], "stop")
    assert 2 <= _string_stop("the", list(free[0].text), [string]) <= 5
    # Net.generate takes it too (a single string is one stop string)
    net.tokenizer = gen.tok
    assert net.generate(prompts, max_new=10, stop_strings=string).texts == [s.text for s in got]


def test_a_stop_string_inside_one_token_ends_the_sequence_at_that_token():
    """A tokenizer whose token writes several characters ("q!q"): a stop string inside it ("!")
    ends the sequence at that token, kept whole as HF keeps it."""
    net = lm_net()
    spec = net.program.generate
    free = generator(net).generate(["the"], options_from(spec, {"max_new": 6})).samples[0]
    gen = generator(net)
    wide = free.ids[2]
    gen.tok.vocab[wide] = "q!q"   # decoding `wide` writes three characters
    pieces = [gen.tok.vocab[i] for i in free.ids]
    got = gen.generate(["the"], options_from(spec, {"max_new": 6, "stop_strings": ["!"]}))
    k = _string_stop("the", pieces, ["!"])
    assert k is not None and k <= 3
    assert got.samples[0].ids == free.ids[:k] and got.samples[0].stopped == "stop"
    assert got.samples[0].text == "".join(pieces[:k])


@pytest.mark.parametrize("strings, message", [
    ([""], "is empty"), (["a~"], "character '~' at position 2"), ([3], "is int, not text"),
    (7, "give a string or a list")])
def test_a_stop_string_no_sequence_could_end_at_is_an_error(strings, message):
    net = lm_net()
    with pytest.raises(NNError, match=message):
        generator(net).generate(["the"], options_from(net.program.generate,
                                                      {"stop_strings": strings}))
    with pytest.raises(NNError, match="not with beam search"):
        options_from(net.program.generate, {"stop_strings": ["ab"], "beam": 2})


def test_a_conflict_with_a_sections_setting_points_at_it_not_at_a_flag():
    """--stop-string under the section's `beam = 2` said "(--beam 2)" and "drop --beam": a
    flag the user never typed. The error points at the section's setting (line, caret) and
    says it is the section's; given as a flag, the flag is named as before. The same for
    --min-new-tokens over the section's max_new (it pointed nowhere)."""
    source = LM.replace("logits = logits    #", "beam = 2  max_new = 4  logits = logits    #")
    line = next(i for i, t in enumerate(source.splitlines(), 1) if "beam = 2" in t)
    spec = load(source).generate
    for given, said, at in (({"stop_strings": ["x"]}, "the generate section's beam = 2",
                             "beam = 2"),
                            ({"min_new_tokens": 9}, "the generate section's max_new = 4",
                             "max_new = 4")):
        with pytest.raises(NNError) as err:
            options_from(spec, given)
        text = err.value.render()
        assert said in text and "--beam" not in text.replace("--beam 1", "")
        span = err.value.span
        assert span is not None and span.line == line
        assert source.splitlines()[line - 1][span.col - 1:].startswith(at.split(" = ")[1])
    with pytest.raises(NNError) as err:
        options_from(spec, {"stop_strings": ["x"], "beam": 3})
    assert "(beam=3)" in err.value.message and "drop beam" in err.value.hint   # Python's words
    # min_new_tokens without a stop token: the section's was said as --min-new-tokens
    source = LM.replace("logits = logits    #", "min_new_tokens = 2  logits = logits    #")
    net = lm_net(source=source)
    with pytest.raises(NNError) as err:
        net.generate(["the"], tokenizer=CharTokenizer(CHARS), max_new=4)
    assert err.value.message.startswith("the generate section's min_new_tokens = 2 has no "
                                        "effect without a stop token")
    assert err.value.span is not None and err.value.span.line == line


def test_stop_strings_decode_each_new_token_once():
    """Stop strings decoded the whole continuation again at every token: a generation's cost
    grew with the square of its length (a third of a 500-token run of a small model). Each
    token is decoded once now, with the same rows ending at the same tokens."""
    net = lm_net()
    gen = generator(net)
    spec = net.program.generate
    free = gen.generate(["a", "the"], options_from(spec, {"max_new": 15})).samples
    counted = []
    decode = gen.tok.decode
    gen.tok.decode = lambda ids: counted.append(len(ids)) or decode(ids)
    got = gen.generate(["a", "the"], options_from(spec, {"max_new": 15,
                                                         "stop_strings": ["zzz"]}))
    written = sum(len(s.ids) for s in got.samples)
    assert [s.ids for s in got.samples] == [s.ids for s in free]
    assert sum(counted) <= 2 * written + 10, (sum(counted), written)


def test_escapes_in_a_stop_string_keep_the_characters_beside_them():
    """`--stop-string 'é\\n'` read its escapes with Python's unicode_escape codec, which takes
    its input as Latin-1 bytes: 'é\\n' became 'Ã©\\n' and '€\\n' 'â\\x82¬\\n', a string no text
    holds (refused as characters outside the alphabet, or never matched). The escape is read,
    every other character kept as written."""
    spec = lm_net().program.generate
    got = options_from(spec, {"stop_strings": ["é\\n", "€\\t", "日本\\n", "a\\u00e9"]})
    assert got["stop_strings"] == ("é\n", "€\t", "日本\n", "aé")


def test_sampling_settings():
    net = lm_net()
    gen = generator(net)
    spec = net.program.generate
    greedy = gen.generate(["the"], options_from(spec, {"max_new": 8})).texts
    assert gen.generate(["the"], options_from(spec, {"max_new": 8, "top_k": 1,
                                                    "temperature": 2.0})).texts == greedy
    assert gen.generate(["the"], options_from(spec, {"max_new": 8, "top_p": 1e-6})).texts \
        == greedy
    hot = {"max_new": 8, "temperature": 5.0, "seed": 4}
    once = gen.generate(["the", "the"], options_from(spec, hot)).texts
    assert once == gen.generate(["the", "the"], options_from(spec, hot)).texts  # seeded
    assert once[0] != once[1] or once[0] != greedy[0]   # rows draw independently
    # NOTE: the seed picks the stream (--seed S: "the sampling seed"): a stream keyed by the
    # prompt alone passed the lines above, and every seed drew the same text
    seeds = {gen.generate(["the"], options_from(spec, {**hot, "seed": s})).texts[0]
             for s in range(4)}
    assert len(seeds) > 1


def test_a_seeded_prompt_samples_the_same_text_alone_or_among_others():
    """With a seed, a prompt's sampled text is its own: the same alone, after other prompts or
    in another order (all rows drew from one stream, so adding a prompt in front changed the
    text of the others). The same prompt twice in one call still draws two samples, the first
    of them the prompt's text alone."""
    net = lm_net()
    gen = generator(net)
    hot = options_from(net.program.generate, {"max_new": 8, "temperature": 5.0, "seed": 4})
    alone = {p: gen.generate([p], hot).samples[0].ids for p in ("the", "a", "x.")}
    for batch in (["the", "a", "x."], ["x.", "a", "the"], ["a", "a", "the", "x."]):
        got = gen.generate(batch, hot).samples
        firsts = {p: got[batch.index(p)].ids for p in batch}
        assert firsts == {p: alone[p] for p in batch}, batch
    twice = gen.generate(["a", "a"], hot).samples
    assert twice[0].ids == alone["a"] and twice[1].ids != twice[0].ids


@pytest.mark.parametrize("temperature", [1e-308, 5e-324])
def test_a_vanishing_temperature_samples_the_likeliest_token(temperature):
    """softmax(z / T) tends to the argmax as T -> 0, so a tiny temperature decodes greedily
    (the issue: temperature sampling). z / 1e-308 overflowed to inf, inf - inf was NaN and
    every draw fell on id 0: padding, which is never to be produced."""
    net = lm_net(seed=3)
    spec = net.program.generate
    greedy = generator(net).generate(["the", "a"], options_from(spec, {"max_new": 6}))
    cold = generator(net).generate(["the", "a"], options_from(spec, {
        "max_new": 6, "temperature": temperature, "seed": 1}))
    assert [s.ids for s in cold.samples] == [s.ids for s in greedy.samples]


def test_a_sections_stop_strings_end_sequences_as_the_flag_does():
    """Every flag's setting can be the generate section's default, --stop-string too: the
    section's `stop_strings` ends each row where the flag's does (HF's rule written out,
    `_string_stop`); a flag's own strings replace them, a beam search sets them aside, and one
    no sequence could end at is an error at the setting."""
    plain = lm_net()
    free = generator(plain).generate(["the", "a"], options_from(
        plain.program.generate, {"max_new": 10})).samples
    string = free[0].text[2:4]
    section = LM.replace("logits = logits    #", f"stop_strings = [{json.dumps(string)}, "
                                                 "\"zzz\"]  logits = logits    #")
    net = lm_net(source=section)
    spec = net.program.generate
    got = generator(net).generate(["the", "a"], options_from(spec, {"max_new": 10})).samples
    for p, f, g in zip(["the", "a"], free, got):
        k = _string_stop(p, list(f.text), [string, "zzz"])
        assert (g.ids, g.stopped) == ((f.ids, f.stopped) if k is None else (f.ids[:k], "stop"))
    assert got[0].stopped == "stop"
    flag = generator(net).generate(["the"], options_from(spec, {"max_new": 10,
                                                                "stop_strings": ["zzz"]}))
    assert flag.samples[0].ids == free[0].ids
    beam = options_from(spec, {"beam": 2})   # no "not with beam search": the section's aside
    assert "stop_strings" not in beam and beam["beam"] == 2
    bad_source = LM.replace("logits = logits    #", 'stop_strings = "a~"  logits = logits  #')
    bad = lm_net(source=bad_source)
    with pytest.raises(NNError) as err:
        generator(bad).generate(["the"], options_from(bad.program.generate, {}))
    text = err.value.render()
    assert "stop_strings 'a~': character '~' at position 2" in text
    line = next(i for i, t in enumerate(bad_source.splitlines(), 1) if "a~" in t)
    assert f":{line}:" in text.splitlines()[0]


def test_greedy_overrides_a_sections_beam():
    """--greedy is the likeliest token every step, "ignoring the generate section's sampling
    settings" (docs/generation.md): a section's `beam = 3` still ran beam search under it."""
    net = lm_net(source=LM.replace("logits = logits    #", "beam = 3  logits = logits    #"))
    spec = net.program.generate
    assert spec.defaults["beam"] == 3
    gen = generator(net)
    by_hand = [greedy_by_hand(net, gen.tok, p, 6, "logits") for p in ("the", "a")]
    got = gen.generate(["the", "a"], options_from(spec, {"max_new": 6, "greedy": True}))
    assert got.options["beam"] == 1 and got.samples[0].score is None
    assert [s.ids for s in got.samples] == by_hand


def test_a_sampling_flag_overrides_a_sections_beam():
    """--temperature under a section with `beam = 3` ran beam search and dropped the
    temperature without a word: a sampling flag asks for sampling, as --greedy asks for one
    greedy beam."""
    plain = lm_net()
    net = lm_net(source=LM.replace("logits = logits    #", "beam = 3  logits = logits    #"))
    for k, v in plain.parameters().items():
        np.testing.assert_array_equal(net.parameters()[k], v)
    hot = {"max_new": 6, "temperature": 3.0, "seed": 2}
    got = generator(net).generate(["the", "a"], options_from(net.program.generate, hot))
    want = generator(plain).generate(["the", "a"], options_from(plain.program.generate, hot))
    assert got.options["beam"] == 1 and got.options["sample"]
    assert [s.ids for s in got.samples] == [s.ids for s in want.samples]


@pytest.mark.parametrize("settings,unused", [
    ("beam = 3  temperature = 0.7", "temperature"), ("beam = 2  top_k = 5", "top_k"),
    ("top_p = 0.9  beam = 2", "top_p"), ("length_penalty = 0.5", "length_penalty")])
def test_a_sections_setting_its_own_decoding_leaves_unused_is_a_located_warning(settings,
                                                                               unused):
    """`beam = 3  temperature = 0.7` in a generate section decoded by beam search and dropped
    the temperature without a word (--beam with --temperature is an error; Hugging Face's
    GenerationConfig warns that a sampling flag "is only used in sample-based generation
    modes"). A warning at the setting says so; it still applies to a call that samples."""
    source = LM.replace("logits = logits    #", f"{settings}  logits = logits    #")
    program = load(source)
    warned = [w for w in program.warnings if unused in w.message]
    assert len(warned) == 1 and warned[0].severity == "warning", program.warnings
    text, span = warned[0].render(), warned[0].span
    line = next(i for i, t in enumerate(source.splitlines(), 1) if settings in t)
    assert span is not None and span.line == line and "^" in text
    assert source.splitlines()[line - 1][span.col - 1:].startswith(
        settings.split(f"{unused} = ")[1].split()[0])
    assert f"generate setting '{unused}' has no effect" in text
    # what the warning says: the section's own decoding is the same without the setting
    tok = CharTokenizer(CHARS)
    alone = " ".join(p for p in re.findall(r"\w+ = [\d.]+", settings) if unused not in p)
    bare = lm_net(source=LM.replace("logits = logits    #", f"{alone}  logits = logits    #"))
    from nnlang.errors import NNWarning
    with pytest.warns(NNWarning, match=f"'{unused}' has no effect"):   # and said as it decodes
        got = lm_net(source=source).generate(["the"], max_new=4, tokenizer=tok)
    assert got.texts == bare.generate(["the"], max_new=4, tokenizer=tok).texts


@pytest.mark.parametrize("settings", ["temperature = 0.7  top_k = 5  top_p = 0.9",
                                      "beam = 4  length_penalty = 0.5", "beam = 1"])
def test_a_sections_settings_its_decoding_uses_are_no_warning(settings):
    program = load(LM.replace("logits = logits    #", f"{settings}  logits = logits    #"))
    assert not [w for w in program.warnings if "generate setting" in w.message]



def test_a_sections_unused_setting_is_said_once_by_the_generate_that_drops_it(tmp_path):
    """The warning was check time's only: a restored net's net.generate and `nnlang generate`
    decoded by the section's beam and dropped its temperature without a word. Said once per
    net (not per call or prompt), at the section's line, attributed to the caller's line; not
    by a call that picks its own decoding, nor again by a net of nnlang.compile, which warned
    at compile."""
    import warnings

    import nnlang
    from nnlang.data import load_dataset
    from nnlang.data.chars import tokenizer_from_meta
    from nnlang.errors import NNWarning
    from tests.faults.conftest import cli
    source = RUN_LM.replace("logits = logits }",
                            "logits = logits\n  beam = 2\n  temperature = 0.7\n}")
    (tmp_path / "lm.nn").write_text(source)
    line = next(i for i, t in enumerate(source.splitlines(), 1) if "temperature" in t)
    text = load_dataset("imdb-text-sample(maxlen = 16, train_chunks = 8, test_chunks = 2)")
    with pytest.warns(NNWarning, match="'temperature' has no effect"):
        net = nnlang.compile(str(tmp_path / "lm.nn"), backend="reference", batch=1)
    net.tokenizer = tokenizer_from_meta(text.meta)
    nnlang.save(net, tmp_path / "saved")

    def said(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        return [w for w in caught if issubclass(w.category, NNWarning)]
    assert said(lambda: net.generate(["The film", "A"], max_new=2)) == []
    restored = nnlang.restore(str(tmp_path / "lm.nn"), tmp_path / "saved", backend="reference")
    assert said(lambda: restored.generate(["The film"], max_new=2, beam=1)) == []
    caught = said(lambda: [restored.generate(["The film", "A"], max_new=2) for _ in range(2)])
    assert len(caught) == 1 and caught[0].filename == __file__, caught
    assert f"lm.nn:{line}:17: warning: generate setting 'temperature'" in str(caught[0].message)
    out = cli("generate", "lm.nn", "-c", "saved", "--backend", "reference", "--prompt", "The film",
              "--prompt", "A", "--max-new", "2", cwd=tmp_path, code=0)
    assert out.count(f"lm.nn:{line}:17: warning: generate setting 'temperature'") == 1, out
    out = cli("generate", "lm.nn", "-c", "saved", "--backend", "reference", "--prompt", "The film",
              "--max-new", "2", "--beam", "1", cwd=tmp_path, code=0)
    assert "warning" not in out, out

def test_contradicting_decoding_flags_are_errors():
    """--greedy with --beam 3 ran beam search, and --length-penalty without a beam was
    dropped: each silently did something else than one of the flags asked for."""
    spec = lm_net().program.generate
    # NOTE: from Python the keywords (the CLI's flags: tests/faults/test_generate.py)
    with pytest.raises(NNError, match=r"greedy=True and beam=3 ask for two decodings") as err:
        options_from(spec, {"greedy": True, "beam": 3})
    assert "--" not in err.value.hint
    with pytest.raises(NNError, match=r"error: length_penalty has no effect without beam search"):
        options_from(spec, {"length_penalty": 0.5, "temperature": 0.7})
    assert options_from(spec, {"greedy": True, "beam": 1})["beam"] == 1
    assert options_from(spec, {"beam": 2, "length_penalty": 0.5})["length_penalty"] == 0.5


def test_bad_generation_requests_are_clear_errors():
    """Sampling flags with --greedy, a stop token that is a broken escape, prompts that are not
    text, and an empty source for an encoder-decoder: each an error that says what is wrong."""
    from nnlang.runtime.generate import generate
    net = lm_net()
    spec = net.program.generate
    # NOTE: from Python the keywords: it said "--temperature has no effect with --greedy"
    with pytest.raises(NNError, match="greedy decoding is deterministic: temperature= has no "
                                      "effect with greedy=True") as err:
        options_from(spec, {"greedy": True, "temperature": 0.5})
    assert err.value.hint == "leave the sampling settings out, or drop greedy=True to sample"
    gen = generator(net)
    for stop in ("\\", "\\x"):
        with pytest.raises(NNError, match="not a valid escape") as err:
            gen.generate(["the"], options_from(spec, {"max_new": 2, "stop": stop}))
        assert "\\\\" in err.value.render()    # the hint: how to write a backslash
    with pytest.raises(NNError, match="give a token id or its text"):
        gen.generate(["the"], options_from(spec, {"max_new": 2, "stop": 2.5}))
    with pytest.raises(NNError, match="stop is True: give a token id"):   # not id 1
        gen.generate(["the"], options_from(spec, {"max_new": 2, "stop": True}))
    started = lm_net(source=LM.replace("logits = logits    #", 'start = "."  logits = logits  #'))
    with pytest.raises(NNError, match=r"17 tokens with the section's `start` token, longer "
                                      r"than the model's token stream allows \(16\)") as err:
        generator(started).generate(["x" * 16], options_from(started.program.generate, {}))
    # NOTE: the hint said "at most 16 tokens", and a prompt of 16 is the one refused here
    assert "at most 15 tokens" in err.value.hint, err.value.hint
    # a Python user's name, not the CLI's flag
    with pytest.raises(NNError, match=r"error: max_new: 2.5 is not an int"):
        options_from(spec, {"max_new": 2.5})
    with pytest.raises(NNError, match="prompts are int"):
        generate(net, 123, tokenizer=CharTokenizer(CHARS))
    # a column of texts as numpy holds it (a DataFrame's .values) is a list of prompts
    texts = np.array(["the", "a"])
    got = generate(net, texts, tokenizer=CharTokenizer(CHARS), max_new=3, greedy=True)
    want = generate(net, ["the", "a"], tokenizer=CharTokenizer(CHARS), max_new=3, greedy=True)
    assert [s.ids for s in got.samples] == [s.ids for s in want.samples]
    with pytest.raises(NNError, match="prompts are ndarray"):   # not texts: ids, a 2-D table
        generate(net, np.zeros((2, 3), np.int64), tokenizer=CharTokenizer(CHARS))
    s2s = Net(load(SEQ2SEQ), backend="reference", batch=2, seed=3)
    gen = Generator(s2s, s2s.program.generate, CharTokenizer("0123456789-"))
    with pytest.raises(NNError, match="the prompt is empty"):
        gen.generate([""], options_from(s2s.program.generate, {"max_new": 3}))


@pytest.mark.parametrize("options,python,flag", [
    ({"max_new": 2.5}, "max_new: 2.5 is not an int", "--max-new: 2.5"),
    ({"length_penalty": 0.5}, "drop length_penalty", "drop --length-penalty"),
    ({"beam": 2, "stop_strings": "x"}, "stop_strings works with", "--stop-string works with"),
    ({"num_return_sequences": 3, "beam": 2}, "num_return_sequences=3: ",
     "--num-return-sequences 3: "),
    ({"min_new_tokens": 5, "max_new": 2}, "raise max_new", "raise --max-new"),
    ({"min_new_tokens": 2}, "drop min_new_tokens", "drop --min-new-tokens"),
    ({"stop_strings": [3]}, "stop_strings: 3 is int", "--stop-string: 3 is int"),
    ({"stop_strings": ["\\"]}, "stop_strings '\\\\' is not", "--stop-string '\\\\' is not"),
    ({"stop_strings": [""]}, "stop_strings is empty", "--stop-string is empty"),
    ({"stop": 500}, "stop token id 500", "--stop-id: stop token id 500"),
    ({"stop": "xyz"}, "or a token id", "(--stop-id N)"),
    ({"stop": 0}, "stop token id 0 is padding", "--stop-id: stop token id 0"),
])
def test_generate_errors_name_the_keyword_from_python_and_the_flag_from_the_cli(
        options, python, flag):
    """net.generate serves Python and `nnlang generate`: its errors said both,
    "--max-new (max_new=): 2.5 is not an int", and hints named flags to Python callers ("drop
    --length-penalty"). Each now says its caller's words (errors.said_as)."""
    from nnlang.errors import command_line
    net, tok = lm_net(), CharTokenizer(CHARS)
    with pytest.raises(NNError) as err:
        net.generate(["the"], tokenizer=tok, **{"max_new": 3, **options})
    text = err.value.render()
    assert python in text and "--" not in text and "=)" not in text, text
    with pytest.raises(NNError) as err, command_line():
        net.generate(["the"], tokenizer=tok, **{"max_new": 3, **options})
    text = err.value.render()
    assert flag in text and "=)" not in text and "=" not in text.split("hint")[0], text


def test_no_prompt_and_no_tokenizer_hint_at_what_the_caller_can_give():
    """"no prompt given" told a Python caller to "pass --prompt TEXT", and a missing tokenizer
    told a CLI user to "pass tokenizer=... in Python", which the command cannot."""
    from nnlang.errors import command_line
    net, tok = lm_net(), CharTokenizer(CHARS)
    with pytest.raises(NNError, match="no prompt given") as err:
        net.generate([], tokenizer=tok)
    assert err.value.hint == "pass a string, or a list of strings"
    with pytest.raises(NNError) as err, command_line():
        net.generate([], tokenizer=tok)
    assert "--prompt TEXT" in err.value.hint
    with pytest.raises(NNError, match="no train data set to take a tokenizer from") as err:
        net.generate(["the"])
    assert err.value.hint.endswith("train section, or pass tokenizer=...")
    with pytest.raises(NNError) as err, command_line():
        net.generate(["the"])
    assert "tokenizer=" not in err.value.hint and "train section" in err.value.hint


def test_a_model_that_mixes_positions_falls_back_to_recomputation():
    source = LM.replace("causal = true", "causal = false")
    net = lm_net(source=source)
    got = generator(net).generate(["abc"], options_from(net.program.generate, {"max_new": 3}))
    assert got.mode == "recompute" and "non-causal" in got.reason
    assert len(got.samples[0].ids) == 3


def test_learned_positions_from_positions_recompute_with_a_reason_that_names_the_fix():
    """embedding(positions(tokens, axis = 1), ...) gives the prefix's tokens the ids of full
    recomputation (the fallback), and the reason says what decodes with the cache: it said
    positions "mixes positions", which it does not."""
    source = LM.replace('h = positional_encoding(x, kind = "learned", max_len = maxlen)',
                        "h = x + embedding(positions(tokens, axis = 1), maxlen, dim)")
    net = lm_net(source=source)
    opts = options_from(net.program.generate, {"max_new": 6})
    got = generator(net).generate(["the movie", "a"], opts)
    assert got.mode == "recompute" and "positional_encoding" in got.reason
    assert "mixes positions" not in got.reason
    tokens = np.zeros((2, 16), np.int32)
    for row, sample in enumerate(got.samples):   # each token is the argmax of the full pass
        ids = generator(net).tok.encode(["the movie", "a"][row]) + sample.ids
        tokens[row, :len(ids)] = ids
    logits = net.forward({"tokens": tokens, "next": tokens})["logits"]
    tok = generator(net).tok
    logits[..., [tok.pad_id, tok.unk_id]] = -np.inf    # never produced, as in the beam test
    logits[..., tok.vocab_size:] = -np.inf
    for row, sample in enumerate(got.samples):
        start = len(tokens[row]) - len(sample.ids) - np.sum(tokens[row] == 0)
        assert sample.ids == list(logits[row, start - 1:start - 1 + len(sample.ids)].argmax(-1))


TIED = LM.replace("logits = dense(layer_norm(h2), vocab)",
                  "logits = matmul(layer_norm(h2), transpose(x.weight, [1, 0]))")


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_a_tied_output_projection_decodes_incrementally(backend):
    """matmul by the embedding's transposed weight acts on each position alone, as dense does:
    it made the model recompute its prefix for every token."""
    net = lm_net(backend, source=TIED)
    tokens = random_tokens((2, 16))
    full = net.forward({"tokens": tokens, "next": tokens})["logits"]
    np.testing.assert_allclose(step_logits(net, tokens, prompt_len=3), full, atol=1e-5, rtol=0)
    prompts = ["the movie was", "a"]
    for opts in ({"max_new": 12}, {"max_new": 6, "beam": 3}):
        opts = options_from(net.program.generate, opts)
        cached = generator(net).generate(prompts, opts)
        again = generator(net, recompute=True).generate(prompts, opts)
        assert cached.mode == "incremental" and cached.reason is None
        assert [s.ids for s in cached.samples] == [s.ids for s in again.samples]


@pytest.mark.parametrize("mixed", [
    "matmul(dense(h2, 16), dense(h2, 32))",      # both sides from the tokens
    # a sum over the positions: [batch, len] @ [len, dim]
    "h2 + unsqueeze(matmul(cast(tokens, \"float32\"), ones_matrix), 1)",
])
def test_a_matmul_that_mixes_positions_still_recomputes(mixed):
    source = LM.replace("logits = dense(layer_norm(h2), vocab)",
                        f"mixed = {mixed}\n  logits = dense(mixed, vocab)").replace(
        "  x = embedding", "  param ones_matrix: float32[maxlen, dim] = ones\n  x = embedding")
    assert generator(lm_net(source=source)).reason.startswith("matmul")


GLU = LM.replace("logits = dense(layer_norm(h2), vocab)",
                 "u = dense(layer_norm(h2), 2 * dim)\n"
                 "  glu = u[:, :, 0:dim] * sigmoid(u[:, :, dim:2 * dim])\n"
                 "  logits = dense(h2 + glu, vocab)")


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_a_slice_of_the_features_decodes_incrementally(backend):
    """A GLU feed-forward (each position's features cut in two halves) fell back to recomputing
    the prefix for every token: 'slice mixes positions'. A slice of the time axis still does."""
    net = lm_net(backend, source=GLU)
    tokens = random_tokens((2, 16))
    full = net.forward({"tokens": tokens, "next": tokens})["logits"]
    np.testing.assert_allclose(step_logits(net, tokens, prompt_len=3), full, atol=1e-5, rtol=0)
    opts = options_from(net.program.generate, {"max_new": 12})
    cached = generator(net).generate(["the movie was", "a"], opts)
    again = generator(net, recompute=True).generate(["the movie was", "a"], opts)
    assert cached.mode == "incremental" and cached.reason is None
    assert [s.ids for s in cached.samples] == [s.ids for s in again.samples]
    shifted = LM.replace("logits = dense(layer_norm(h2), vocab)",
                         "logits = dense(concat(h2[:, 0:1], h2[:, 0:maxlen - 1], axis = 1), vocab)")
    assert generator(lm_net(source=shifted)).reason.startswith("slice")


def test_char_tokenizer_round_trips():
    tok = CharTokenizer(CHARS)
    text = "hello, world! it's (fine)"
    assert tok.decode(tok.encode(text)) == text
    from nnlang.data import DataError
    with pytest.raises(DataError, match="position 2"):
        tok.encode("h\u00e9")
    # NOTE: a decoder writes on past its <end> (a fixed-length seq2seq output): the text is what
    # comes before the first one (decode's docstring); skipping it passed every test
    from nnlang.data.chars import END, PAD, START
    dates = CharTokenizer("0123456789-", (PAD, START, END))
    assert dates.decode(dates.encode("<start>12-3<end>45<end>6")) == "12-3"


@pytest.mark.parametrize("setting,words", [
    ("tokens = next2  logits = logits", "'next2' is not an input"),
    ("tokens = tokens  logits = pooled", "must be float [batch, 16, vocab]"),
    ("tokens = tokens  logits = logits  top_p = 1.5", "top_p must be in (0, 1]"),
    ("tokens = tokens  logits = logits  beams = 2", "did you mean 'beam'"),
    ("logits = logits", "which input is the token stream"),
    # the vocabulary is known here: an id past it waited for the first prompt to be refused
    ("tokens = tokens  logits = logits  stop = 40", "stop token id 40 is outside the "
                                                      "vocabulary (0..39)"),
    ("tokens = tokens  logits = logits  start = 99", "start token id 99 is outside"),
    # the same input both ways blamed the logits for reading an input generation cannot feed
    ("source = tokens  tokens = tokens  logits = logits  start = 1",
     "'source' and 'tokens' both name input 'tokens'"),
    # --stop-string's checks, at the setting
    ('tokens = tokens  logits = logits  stop_strings = ""', "generate setting 'stop_strings' "
                                                          "must be a string or a list of "
                                                          "non-empty strings, got \"\""),
    ("tokens = tokens  logits = logits  stop_strings = [1]", "must be a string or a list"),
    ('tokens = tokens  logits = logits  stop_strings = "ab"  beam = 2',
     "'stop_strings' works with greedy decoding and sampling, not with beam search (beam = 2)"),
])
def test_generate_section_errors(setting, words):
    source = LM.replace("  tokens = tokens    # which input is the token stream\n"
                        "  logits = logits    # which output scores the next token\n",
                        f"  {setting}\n")
    source = source.replace("output logits", "output logits  output pooled = sum(h2, axis = 1)")
    with pytest.raises(NNError) as err:
        load(source)
    assert words in err.value.render()
    assert "example" not in err.value.render() and ":" in err.value.render()


@pytest.mark.parametrize("output", ["probs = softmax(logits)",
                                    "probs = reshape(softmax(logits), [-1, 16, vocab])",
                                    "probs = sigmoid(logits)",
                                    'probs = dense(layer_norm(h2), vocab, activation = "softmax")'])
def test_probabilities_named_as_logits_are_an_error(output):
    """A Keras-style softmax output named in `logits` loaded, and sampling read its
    probabilities as scores: softmax(p / T) of values in [0, 1] is near uniform, so the
    temperature, top-k/top-p and beam scores were silently wrong (greedy text stayed right)."""
    source = LM.replace("output logits", f"output logits  output {output}") \
        .replace("  logits = logits    #", "  logits = probs    #")
    with pytest.raises(NNError) as err:
        load(source)
    text = err.value.render()
    assert "logits 'probs' are probabilities" in text and "logits = probs" in text
    # log-probabilities are scores up to a constant: they stay allowed
    load(source.replace(f"output {output}", "output probs = log_softmax(logits)"))


def test_encoder_decoder_generation_with_the_cache_matches_recomputation():
    net = Net(load(SEQ2SEQ), backend="reference", batch=2, seed=3)
    tok = CharTokenizer("0123456789-")   # 13 ids, the model scores 16
    prompts = ["12-34", "7"]
    for opts in ({"max_new": 7}, {"max_new": 5, "beam": 2}):
        opts = options_from(net.program.generate, opts)
        runs = []
        for recompute in (False, True):
            gen = Generator(net, net.program.generate, tok)
            if recompute:
                gen.graphs, gen.mode = None, "recompute"
            runs.append(gen.generate(prompts, opts))
        assert runs[0].mode == "incremental"
        assert [s.ids for s in runs[0].samples] == [s.ids for s in runs[1].samples]
        assert all(s.ids for s in runs[0].samples)


def test_an_rnn_language_model_carries_its_state():
    """The step graph carries the LSTM's state (tests/test_generate_rnn.py has the rest); the
    tokens are those of greedy decoding by hand, one full forward per token."""
    source = """
model RnnLm(vocab = 40, maxlen = 10) {
  input tokens: int32[batch, maxlen]
  h = embedding(tokens, vocab, 8) |> lstm(8, return_sequences = true)
  output logits = dense(h, vocab)
}
generate RnnLm {
  tokens = tokens
  logits = logits
}
"""
    net = Net(load(source), backend="reference", batch=2, seed=0)
    gen = generator(net)
    got = gen.generate(["ab", "abcd"], options_from(net.program.generate, {"max_new": 4}))
    assert got.mode == "incremental" and got.reason is None
    # greedy continuation of "ab" by hand: one full forward per token
    ids = gen.tok.encode("ab")
    for _ in range(4):
        tokens = np.zeros((2, 10), np.int32)
        tokens[:, :len(ids)] = ids
        logits = net.forward({"tokens": tokens})["logits"][0, len(ids) - 1].astype(np.float64)
        logits[[gen.tok.pad_id, gen.tok.unk_id]] = -np.inf
        logits[gen.tok.vocab_size:] = -np.inf
        ids.append(int(logits.argmax()))
    assert got.samples[0].ids == ids[2:]


def test_imdb_text_chunks_come_from_the_archives_own_split(tmp_path, monkeypatch):
    from nnlang.data import imdb, load_dataset
    from nnlang.data.registry import IMDB_SAMPLE
    from nnlang.data.chars import tokenizer_from_meta
    from nnlang.data.text import clean
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(tmp_path))
    ds = load_dataset("imdb_text_sample(maxlen = 32, train_chunks = 20, test_chunks = 5)")
    tok = tokenizer_from_meta(ds.meta)
    assert tok.eos_id == tok.id_of("\n") and tok.unk_id == 1 and tok.bos_id is None
    assert ds.train["tokens"].shape == (20, 32) and ds.val is ds.test
    np.testing.assert_array_equal(ds.train["tokens"][:, 1:], ds.train["next"][:, :-1])
    docs = imdb.read_reviews(IMDB_SAMPLE)
    text = {s: "\n".join(clean(t) for split, _, _, t in docs if split == s)
            for s in ("train", "test")}
    for split in ("train", "test"):
        for row in getattr(ds, split)["tokens"]:
            # a chunk may span two reviews: check its longest piece within one review
            piece = max(tok.decode(row).split("\n"), key=len)
            assert piece in text[split] and piece not in text["test" if split == "train"
                                                               else "train"]


def test_prefill_and_step_lower_to_cuda_source():
    """The CuPy backend gets the same graphs: they render to CUDA kernels (no GPU needed)."""
    from nnlang.runtime.executable import compile_graph
    net = lm_net()
    graphs = derive(net.user, net.program.generate)
    for kind in ("prefill", "step"):
        g = forward_graph(getattr(graphs, kind), 4, "float32", ("outputs",))
        exe = compile_graph(g, backend="cupy", render_only=True)
        assert "__global__" in "".join(exe.kernel_sources())


TWO_HEADS = """
model TwoHeads(vocab = 40, maxlen = 16, dim = 16) {
  input tokens: int32[batch, maxlen]
  x = embedding(tokens, vocab, dim)
  h = conv1d(x, 16, 3, padding = "same") |> relu
  output lm = dense(h, vocab)
  output logits = dense(h, 4)
}
generate TwoHeads { tokens = tokens  logits = lm }
"""


def greedy_by_hand(net, tok, prompt: str, steps: int, logits: str, width: int = 16) -> list[int]:
    """Reruns the whole model on the growing row and takes the argmax at its last token, over
    the ids generation may produce (not <pad>, <unk> or past the tokenizer)."""
    ids, out = tok.encode(prompt), []
    for _ in range(steps):
        row = np.zeros((1, width), np.int32)
        row[0, :len(ids)] = ids
        z = np.array(net.forward({"tokens": row})[logits][0, len(ids) - 1], np.float64)
        z[[tok.pad_id, tok.unk_id]] = -np.inf
        z[tok.vocab_size:] = -np.inf
        ids.append(int(np.argmax(z)))
        out.append(ids[-1])
        if len(ids) > width:
            break
    return out


def test_recomputation_reads_the_sections_logits_from_the_first_token():
    """The first token came from an output named `logits`, not the one the section names."""
    net = Net(load(TWO_HEADS), backend="reference", batch=1, seed=2)
    tok = CharTokenizer(CHARS)
    gen = Generator(net, net.program.generate, tok)
    assert gen.mode == "recompute"
    for prompt in ("the movie", "a"):
        got = gen.generate([prompt], options_from(net.program.generate, {"max_new": 5}))
        assert got.samples[0].ids == greedy_by_hand(net, tok, prompt, 5, "lm")


def test_a_prompt_that_fills_the_model_gets_its_one_token():
    """prompt + generated <= len + 1: a prompt of len tokens is continued by the prediction at
    its last position (it was refused as too long)."""
    net = lm_net("reference")
    tok = CharTokenizer(CHARS)
    prompt = "the movie was ok"                      # 16 = maxlen
    for recompute in (False, True):
        got = generator(net, recompute).generate([prompt], options_from(
            net.program.generate, {"max_new": 5}))
        assert got.samples[0].ids == greedy_by_hand(net, tok, prompt, 1, "logits")
        assert got.samples[0].stopped == "max_len"
    with pytest.raises(NNError, match="17 tokens, longer than the model's token stream allows "
                                      r"\(16\)"):
        generator(net).generate([prompt + "!"], options_from(net.program.generate, {}))


def test_unknown_is_never_produced():
    """<unk> decodes to U+FFFD, which no prompt may hold: a model that favours it still writes
    text the tokenizer can read back."""
    net = lm_net("reference")
    tok = CharTokenizer(CHARS)
    bias = next(k for k, v in net.parameters().items() if v.shape == (40,))
    state = net.parameters()
    state[bias][tok.unk_id] += 1e3
    net.load_state_dict(state)
    got = generator(net).generate(["the"], options_from(net.program.generate, {"max_new": 6}))
    assert tok.unk_id not in got.samples[0].ids and len(got.samples[0].ids) == 6
    tok.encode(got.samples[0].text)    # NOTE: raises for a character it cannot write
    with pytest.raises(NNError, match="tokenizer is a str"):
        net.generate(["the"], tokenizer="chars")


RUN_LM = """
model RunLm(vocab = 108, maxlen = 16, dim = 16) {
  input tokens: int32[batch, maxlen]
  input next: int32[batch, maxlen]
  x = embedding(tokens, vocab, dim)
  h = positional_encoding(x, kind = "learned", max_len = maxlen)
  logits = dense(h + multi_head_attention(layer_norm(h), heads = 2, causal = true), vocab)
  output logits
  loss cross_entropy(logits, next)
}
train RunLm {
  data = dates()
  batch = 16
  epochs = 1
}
generate RunLm { tokens = tokens  logits = logits }
"""


def test_a_restored_run_generates_with_the_tokenizer_it_was_trained_with(tmp_path):
    """A run trained with `--data imdb-text-sample` over a .nn file whose train section names
    `dates`: net.generate after restore() encoded prompts with the dates tokenizer (other
    ids for every character), so it wrote other text than `nnlang generate` from the same
    checkpoint. Both must use the checkpoint's tokenizer."""
    from nnlang.data.chars import tokenizer_from_meta
    from nnlang.train.inference import restore
    from tests.faults.conftest import cli
    (tmp_path / "lm.nn").write_text(RUN_LM)
    cli("train", tmp_path / "lm.nn", "--data", "imdb-text-sample(maxlen = 16, train_chunks = "
        "32, test_chunks = 8)", "--backend", "reference", "--max-steps", "2", "--out",
        tmp_path / "run", code=0)
    net, ckpt, _ = restore(str(tmp_path / "lm.nn"), str(tmp_path / "run"), "reference", 1)
    tok = tokenizer_from_meta(ckpt.data_meta)
    want = greedy_by_hand(net, tok, "The film", 6, "logits")
    got = net.generate(["The film"], max_new=6, greedy=True)
    assert got.samples[0].ids == want
    out = cli("generate", tmp_path / "lm.nn", "-c", tmp_path / "run", "--backend",
              "reference", "--prompt", "The film", "--max-new", "6", "--greedy", "--json",
              code=0)
    assert json.loads(out.strip().splitlines()[-1])["ids"] == want


def test_generate_stop_string_flag_ends_each_prompt_where_the_text_completes_it(tmp_path):
    """`nnlang generate --stop-string TEXT` (repeatable): what net.generate(stop_strings=...)
    gives, by HF's rule; --eval with it is an error."""
    import nnlang
    from nnlang.data import load_dataset
    from nnlang.data.chars import tokenizer_from_meta
    from tests.faults.conftest import cli
    (tmp_path / "lm.nn").write_text(RUN_LM)
    net = nnlang.compile(str(tmp_path / "lm.nn"), backend="reference", batch=2)
    text = load_dataset("imdb-text-sample(maxlen = 16, train_chunks = 8, test_chunks = 2)")
    net.tokenizer = tokenizer_from_meta(text.meta)
    prompts = ["The film", "A"]
    free = net.generate(prompts, max_new=8, greedy=True).samples
    strings = [free[0].text[2:4], "zzz"]
    nnlang.save(net, tmp_path / "saved")
    out = cli("generate", "lm.nn", "-c", "saved", "--backend", "reference", "--max-new", "8",
              "--greedy", "--json", *(a for p in prompts for a in ("--prompt", p)),
              *(a for s in strings for a in ("--stop-string", s)), cwd=tmp_path, code=0)
    rows = [json.loads(line) for line in out.strip().splitlines()[-2:]]
    for p, f, row in zip(prompts, free, rows):
        k = _string_stop(p, list(f.text), strings)
        want = (f.ids, f.text, "max_new") if k is None else (f.ids[:k], f.text[:k], "stop")
        assert (row["ids"], row["text"], row["stopped"]) == want
    assert rows[0]["stopped"] == "stop"
    out = cli("generate", "lm.nn", "-c", "saved", "--eval", "--stop-string", "ab",
              cwd=tmp_path, code=1)
    assert "--stop-string does not apply with --eval" in out


RNN_LM = """
model RnnLm(vocab = 108, bptt = 8, dim = 16) {
  input tokens: int32[batch, bptt]
  input next: int32[batch, bptt]
  x = embedding(tokens, vocab, dim)
  logits = dense(gru(x, dim, return_sequences = true), vocab)
  output logits
  loss cross_entropy(logits, next)
}
train RnnLm {
  data = dates()
  batch = 4
}
generate RnnLm { tokens = tokens  logits = logits }
"""


def test_generate_set_lengthens_a_recurrent_lm_and_refuses_a_weight_shape(tmp_path):
    """A recurrent LM trained on bptt = 8 chunks wrote at most 9 - len(prompt) tokens, though
    its weights do not depend on bptt: `nnlang generate` had no --set (only Python's
    compile(overrides=..., init_from=RUN) got longer text). --set bptt=40 gives the greedy
    tokens of the same weights rerun by hand at length 40; a --set that gives a weight
    another shape, or a train setting, is an error at the flag."""
    import nnlang
    from nnlang.data import load_dataset
    from nnlang.data.chars import tokenizer_from_meta
    from tests.faults.conftest import cli
    (tmp_path / "lm.nn").write_text(RNN_LM)
    net = nnlang.compile(str(tmp_path / "lm.nn"), backend="reference", batch=1, seed=3)
    text = load_dataset("imdb-text-sample(maxlen = 16, train_chunks = 8, test_chunks = 2)")
    tok = net.tokenizer = tokenizer_from_meta(text.meta)
    nnlang.save(net, tmp_path / "saved")
    args = ("generate", "lm.nn", "-c", "saved", "--backend", "reference", "-p", "The",
            "--max-new", "30", "--greedy", "--json")
    short = json.loads(cli(*args, cwd=tmp_path, code=0).strip().splitlines()[-1])
    assert short["stopped"] == "max_len" and len(short["ids"]) == 9 - len(tok.encode("The"))
    long = nnlang.compile(str(tmp_path / "lm.nn"), backend="reference", batch=1,
                          overrides={"bptt": 40})
    long.load_state_dict(net.state_dict())
    want = greedy_by_hand(long, tok, "The", 30, "logits", width=40)
    got = json.loads(cli(*args, "--set", "bptt=40", cwd=tmp_path, code=0)
                     .strip().splitlines()[-1])
    assert (got["ids"], got["stopped"]) == (want, "max_new")
    for flag, words, col in (("dim=8", "--set dim=8 gives weight 'x.weight' [108, 8] (the "
                              "checkpoint's [108, 16])", 11),
                             ("lr=0.1", "--set lr: 'lr' is a train setting", 7)):
        out = cli(*args, "--set", flag, cwd=tmp_path, code=1)
        assert words in out and f"<command line>:1:{col}:" in out, out
        assert "Traceback" not in out


def test_a_tokenizer_given_once_is_not_kept_for_later_calls():
    """`tokenizer=` replaces the Net's own for that call: a later call without it went on
    encoding and writing with the one given before."""
    net = lm_net()
    net.tokenizer = CharTokenizer(CHARS)
    other = CharTokenizer(CHARS[::-1])
    want = greedy_by_hand(net, net.tokenizer, "the", 5, "logits")
    assert net.generate(["the"], max_new=5, tokenizer=other).samples[0].ids == \
        greedy_by_hand(net, other, "the", 5, "logits")
    got = net.generate(["the"], max_new=5).samples[0]
    assert got.ids == want and got.text == net.tokenizer.decode(want)


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_a_float64_net_steps_in_float64(kind):
    """The step graph's own constants (the attention's 1/sqrt(dh), the sinusoid table) were
    made in float32 and kept that rounding in a float64 net, so cached logits differed from
    the full forward pass by ~1e-8 instead of float64 rounding."""
    source = LM.replace('kind = "learned"', f'kind = "{kind}"')
    net = Net(load(source), backend="reference", batch=2, seed=1, dtype="float64")
    tokens = random_tokens((2, 16))
    full = net.forward({"tokens": tokens, "next": tokens})["logits"]
    gen = generator(net)
    lengths = np.array([3, 7])
    prompt = np.where(np.arange(16) < lengths[:, None], tokens, 0).astype(np.int32)
    got = [gen.start(prompt, lengths, None)]
    want = [full[[0, 1], lengths - 1]]
    for pos in range(7, 16):
        at = lengths - 7 + pos               # row 0 from position 3, row 1 from 7
        got.append(gen.advance(tokens[[0, 1], at], at))
        want.append(full[[0, 1], at])
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-12, rtol=0)


def hf_beam(logp_next, prompt: list, width: int, max_new: int, stop: int, lp: float,
            many: int | None = None):
    """Beam search as HF's BeamSearchScorer runs it (early_stopping=False), written over a
    function that gives the next token's log-probabilities of a whole sequence: a stop
    among the `width` best candidates finishes a hypothesis scored sum / length ** lp; the
    search ends when `width` have finished and the step's best candidate would not beat the
    worst of them. The best (score, ids); with `many`, the `many` best, best first (HF's
    num_return_sequences)."""
    def best(final):
        ranked = sorted(final, key=lambda d: -d[0])
        return ranked[0] if many is None else ranked[:many]
    beams, done = [(0.0, [])], []
    for step in range(max_new):
        cands = sorted(((s + lq, seq + [v]) for s, seq in beams
                        for v, lq in enumerate(logp_next(prompt + seq)) if np.isfinite(lq)),
                       key=lambda c: -c[0])
        beams = []
        for rank, (s, seq) in enumerate(cands[:2 * width]):
            if seq[-1] == stop:
                if rank < width:
                    done.append((s / (step + 1) ** lp, seq))
            elif len(beams) < width:
                beams.append((s, seq))
        # HF's is_done reads next_scores.max(): the best candidate, a stop token's included
        if len(done) >= width and sorted(done)[-width][0] >= cands[0][0] / (step + 1) ** lp:
            return best(done)
    return best(done + [(s / max_new ** lp, seq) for s, seq in beams])


@pytest.mark.parametrize("seed,prompt,width", [(10, "ab", 3), (7, "c", 2)])
def test_beam_search_follows_hf_when_stops_fill_the_beam(seed, prompt, width):
    """Stop candidates ranked below the beam width counted as finished hypotheses, and the
    search ended as soon as `width` had finished: a prompt closed with a worse hypothesis
    (sum/length -2.11 where a better beam, -0.14, was still live)."""
    tok, net, logp_next = _tiny_gpt_for_beams("abc", seed)
    want = hf_beam(logp_next, tok.encode(prompt), width, 5, 4, 1.0)
    got = net.generate([prompt], max_new=5, beam=width, stop=4, length_penalty=1.0,
                       tokenizer=tok).samples[0]
    assert got.ids == want[1] and got.score == pytest.approx(want[0], abs=1e-9)


def test_numpy_numbers_are_numbers_to_generate():
    """A loop computing its settings with numpy passed max_new=np.int64(3) and got
    "--max-new (max_new=): 3 is not an int" (temperature=np.float32(0.5): "0.5 is not a
    number"); they decode as the Python numbers do."""
    net = lm_net("reference")
    tok = CharTokenizer(CHARS)
    for python, numpy in (({"max_new": 3}, {"max_new": np.int64(3)}),
                          ({"max_new": 3, "beam": 2},
                           {"max_new": np.int32(3), "beam": np.int64(2)}),
                          ({"max_new": 4, "temperature": 0.5, "top_k": 5, "seed": 1},
                           {"max_new": np.uint8(4), "temperature": np.float32(0.5),
                            "top_k": np.int16(5), "seed": np.int64(1)})):
        want = net.generate(["the"], tokenizer=tok, **python)
        got = net.generate(["the"], tokenizer=tok, **numpy)
        assert got.texts == want.texts and got.mode == want.mode
    with pytest.raises(NNError, match=r"error: max_new: 2.5 is not an int"):
        net.generate(["the"], tokenizer=tok, max_new=np.float64(2.5))


def _tiny_gpt_for_beams(chars: str = "abcd", seed: int = 3):
    """A float64 GPT over `chars` (and padding, <unk>) whose next-token log-probabilities
    (`logp_next`, from a full forward of the prefix) are far enough apart for beam search to
    choose."""
    tok = CharTokenizer(chars)
    program = load(Path(__file__).resolve().parents[1] / "models" / "gpt.nn",
                   {"vocab": len(chars) + 2, "maxlen": 10, "dim": 16, "heads": 2, "ffn": 32,
                    "layers": 1})
    net = Net(program, backend="reference", batch=1, seed=seed, dtype="float64")
    net.load_state_dict({k: v * 1.5 for k, v in net.parameters().items()})

    def logp_next(ids):
        row = np.zeros((1, 10), np.int32)
        row[0, :len(ids)] = ids
        z = np.array(net.forward({"tokens": row})["logits"][0, len(ids) - 1], np.float64)
        z[[tok.pad_id, tok.unk_id]] = -np.inf
        return z - np.logaddexp.reduce(z)
    return tok, net, logp_next


def test_a_beam_wider_than_the_live_candidates_feeds_each_row_at_its_own_position():
    """Four beams over four writable tokens, one of them the stop: the first step leaves three
    live beams, and the fourth row, dead there, kept its old position; the live beam moved onto
    it at the next step was fed one position back (its cache overwritten), and the search
    returned a hypothesis scored -0.507 that no sequence has (the best, by HF's rule, -0.601)."""
    tok, net, logp_next = _tiny_gpt_for_beams()
    want = hf_beam(logp_next, tok.encode("ab"), 4, 6, 5, 1.0)
    got = net.generate(["ab"], max_new=6, beam=4, stop=5, length_penalty=1.0,
                       tokenizer=tok).samples[0]
    assert got.ids == want[1] and got.score == pytest.approx(want[0], abs=1e-9)


def test_a_beam_that_finds_fewer_sequences_than_asked_for_says_so():
    """Two writable tokens and one new token: two sequences exist, and num_return_sequences=4
    gave each prompt two without a word (the CLI numbered them "1 of 4", "2 of 4"). A warning
    names the prompts and the settings, the keyword from Python and the flag from the CLI."""
    import warnings
    from nnlang.errors import NNWarning, command_line
    tok, net, _ = _tiny_gpt_for_beams("ab")
    ask = dict(beam=4, num_return_sequences=4, tokenizer=tok)
    with pytest.warns(NNWarning) as caught:
        got = net.generate(["a", "ab"], max_new=1, **ask)
    assert [sorted(s.text for s in g) for g in got.grouped] == [["a", "b"], ["a", "b"]]
    text = str(caught[0].message)
    assert "prompt 1 has 2, prompt 2 has 2: fewer sequences than num_return_sequences=4" in text
    assert "--" not in text
    # the caller's line, not runtime/generate.py's (a warning a few calls deep in nnlang)
    assert caught[0].filename == __file__
    with pytest.warns(NNWarning) as caught, command_line():
        net.generate(["a"], max_new=1, **ask)
    text = str(caught[0].message)
    assert "prompt 1 has 2: fewer sequences than --num-return-sequences 4" in text
    assert "--max-new" in text
    # two new tokens: four sequences exist, the four asked for, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", NNWarning)
        got = net.generate(["a"], max_new=2, **ask)
    assert sorted(s.text for s in got.samples) == ["aa", "ab", "ba", "bb"]


@pytest.mark.parametrize("width", [2, 3])
def test_beam_search_goes_on_while_the_best_candidate_is_a_stop(width):
    """HF's is_done compares the worst finished hypothesis with the step's best candidate
    (next_scores.max(), a stop token's included); nnlang compared it with the best live beam,
    so a step whose best candidate stopped closed the search, and with length_penalty 2 it
    returned 'bcd' (-0.236) where HF goes on to a better hypothesis ('bcdd', -0.208)."""
    tok, net, logp_next = _tiny_gpt_for_beams()
    want = hf_beam(logp_next, tok.encode("ab"), width, 6, 5, 2.0)
    got = net.generate(["ab"], max_new=6, beam=width, stop=5, length_penalty=2.0,
                       tokenizer=tok).samples[0]
    assert got.ids == want[1] and got.score == pytest.approx(want[0], abs=1e-9)


@pytest.mark.parametrize("seed,chars,prompt,lp", [(1, "abc", "a", 2.0), (0, "abcd", "bc", 1.0),
                                                 (1, "abc", "a", -1.0), (0, "abcd", "bc", -2.0)])
def test_beam_search_closes_where_hf_does_once_more_than_width_have_finished(seed, chars,
                                                                              prompt, lp):
    """HF keeps the `width` best finished hypotheses and closes a prompt when the worst of those
    is >= the step's best candidate at the current length (is_done: a tie closes). The tests
    above never had a tie, nor more finished hypotheses than beams, so comparing with the worst
    of all finished ones, or closing only on a strict win, passed them; both searched on here
    and returned another sequence than HF's. A negative length_penalty (HF's way to favour
    shorter hypotheses) was refused as out of range."""
    tok, net, logp_next = _tiny_gpt_for_beams(chars, seed)
    stop = len(chars) + 1
    want = hf_beam(logp_next, tok.encode(prompt), 2, 6, stop, lp)
    got = net.generate([prompt], max_new=6, beam=2, stop=stop, length_penalty=lp,
                       tokenizer=tok).samples[0]
    assert got.ids == want[1] and got.score == pytest.approx(want[0], abs=1e-9)


@pytest.mark.parametrize("stop,words", [(0, "id 0 is padding"), (1, "id 1 is <unk>"),
                                        (39, "id 39 is past the tokenizer's 39 ids")])
def test_a_stop_token_generation_never_produces_is_an_error(stop, words):
    """Padding, <unk> and ids the tokenizer cannot write are never produced (docs/generation.md),
    so a stop among them can never end a sequence: it was accepted and every sequence ran on
    to max_new."""
    net = lm_net()
    with pytest.raises(NNError, match="never produces") as err:
        net.generate(["the"], max_new=3, stop=stop, tokenizer=CharTokenizer(CHARS))
    assert words in str(err.value)


def test_a_huge_length_penalty_scores_its_limit():
    """length ** length_penalty overflows a float for --length-penalty 700 at length 3: Python's
    3 ** 700.0 raised OverflowError, an internal error. In floats the power is inf and a longer
    hypothesis scores -0.0 (the limit of sum / length ** lp), which beats any shorter one."""
    net = lm_net("reference")
    tok = CharTokenizer(CHARS)

    def logp_next(ids):
        row = np.zeros((1, 16), np.int32)
        row[0, :len(ids)] = ids
        big = Net(net.program, backend="reference", batch=1)
        big.load_state_dict(net.state_dict())
        z = np.array(big.forward({"tokens": row, "next": row})["logits"][0, len(ids) - 1],
                     np.float64)
        z[[tok.pad_id, tok.unk_id]] = -np.inf
        z[tok.vocab_size:] = -np.inf
        return z - np.logaddexp.reduce(z)
    got = net.generate(["the"], max_new=4, beam=2, length_penalty=700.0,
                       tokenizer=tok).samples[0]
    prompt = tok.encode("the")
    total = sum(logp_next(prompt + got.ids[:k])[v] for k, v in enumerate(got.ids))
    with np.errstate(over="ignore"):
        want = total / np.float64(len(got.ids)) ** 700.0
    assert len(got.ids) == 4 and got.score == want == 0.0


def test_a_draw_at_the_top_of_the_unit_interval_is_a_token_that_may_be_produced():
    """Sampling inverts the cumulative distribution at u in [0, 1): the probabilities sum to an
    ulp under 1 here, and u = 1 - 2**-53 fell past the sum and was clipped to the last id, whose
    logit is -inf (padding, or an id past the tokenizer's). The inverse CDF at u -> 1 is the last id with a
    probability above 0."""
    from nnlang.runtime.generate import _choose

    class Top:   # the largest draw default_rng's random() can give
        def random(self, n):
            return np.full(n, np.nextafter(1.0, 0.0))
    z = np.array([[-np.inf, 0.0, 0.6, 0.1, -np.inf]])
    assert _choose(z, {"temperature": 1.0}, Top()).tolist() == [3]


def _hf_warped(z, temperature=1.0, top_k=None, top_p=1.0):
    """The next-token distribution of Hugging Face's warpers, in their order (temperature,
    then TopK, then TopP), written from their source: TopK drops scores below the k-th
    largest (ties kept); TopP sorts the scores ascending (stable: of two equal scores the
    lower id first), drops those whose cumulative probability is <= 1 - top_p and always
    keeps the likeliest."""
    z = np.asarray(z, np.float64) / temperature
    if top_k:
        z = np.where(z < np.sort(z)[-min(top_k, len(z))], -np.inf, z)
    if top_p < 1.0:
        order = np.argsort(z, kind="stable")
        e = np.exp(z[order] - z.max())
        drop = np.cumsum(e / e.sum()) <= 1 - top_p
        drop[-1] = False
        z = z.copy()
        z[order[drop]] = -np.inf
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("z,opts", [
    ([0.0, 0.0, 0.0, 0.0], {"top_p": 0.5}),                       # a tie across the nucleus' edge
    ([2.0, 1.0, 1.0, 0.5, -1.0], {"top_p": 0.6}),
    ([2.0, 1.0, 1.0, 0.5, -1.0], {"top_p": 0.9, "top_k": 4, "temperature": 0.5}),
    ([2.0, 1.0, 1.0, 0.5, -1.0], {"top_k": 2, "temperature": 3.0}),   # a tie at the k-th
    ([-np.inf, 3.0, 1.0, 1.0, 1.0], {"top_p": 0.95, "temperature": 2.0}),
    ([1.0, 2.0, 0.5], {"top_p": 1e-9}),
    # 1 - top_p rounds to 1.0, which the mass of every token reaches: only HF's "the likeliest
    # is always kept" leaves a token to draw (without it, every draw fell on id 0)
    ([1.0, 2.0, 0.5], {"top_p": 1e-300}),
])
def test_sampling_draws_from_hugging_faces_warped_distribution(z, opts):
    """The share of draws of each token, with the draws u spread evenly over [0, 1) (the
    inverse CDF then gives each token exactly its probability, to 1/n), against HF's
    temperature/top-k/top-p. Where tokens tie at the nucleus' edge, HF keeps the higher ids;
    nnlang kept the lower ones (for [0, 0, 0, 0] at top_p 0.5: ids 0 and 1, HF's 2 and 3)."""
    from nnlang.runtime.generate import _choose
    n = 100_000

    class Even:
        def random(self, rows):
            return (np.arange(rows) + 0.5) / rows
    got = np.bincount(_choose(np.tile(np.array(z), (n, 1)), opts, Even()), minlength=len(z)) / n
    want = _hf_warped(z, opts.get("temperature", 1.0), opts.get("top_k"), opts.get("top_p", 1.0))
    np.testing.assert_allclose(got, want, atol=2 / n)
    torch = pytest.importorskip("torch")
    # NOTE: the warpers' own lines (transformers' logits_process.py), on torch's sort and topk
    scores = torch.tensor([z], dtype=torch.float64) / opts.get("temperature", 1.0)
    if "top_k" in opts:
        kth = torch.topk(scores, min(opts["top_k"], len(z)))[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if "top_p" in opts:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_indices_to_remove = cumulative_probs <= (1 - opts["top_p"])
        sorted_indices_to_remove[..., -1:] = 0
        remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
        scores = scores.masked_fill(remove, -float("inf"))
    np.testing.assert_allclose(want, torch.softmax(scores, -1)[0].numpy(), atol=1e-12)


@pytest.mark.parametrize("options", [{}, {"temperature": 1.0}, {"beam": 2}])
def test_logits_that_are_not_numbers_are_an_error_naming_the_prompt(options):
    """A net whose weights hold NaN (a diverged run) scores every token NaN: greedy decoding and
    sampling wrote padding (id 0, "never produced") as if it were text, and beam search died on
    a ValueError from max() with a traceback."""
    tok, net, _ = _tiny_gpt_for_beams()
    params = net.parameters()
    emb = next(k for k, v in params.items() if v.shape == (len(tok.vocab), 16))
    bad = params[emb].copy()
    bad[tok.encode("c")[0]] = np.nan    # the character "c"'s embedding
    net.load_state_dict({**params, emb: bad})
    with pytest.raises(NNError, match=r"prompt 2 .*NaN") as err:
        net.generate(["ab", "ac"], max_new=3, tokenizer=tok, **options)
    assert "weights" in err.value.hint


def _interrupt_at(monkeypatch, calls: int):
    """Ctrl-C arriving during the `calls`-th step of decoding (Generator.advance)."""
    real, seen = Generator.advance, []

    def advance(self, new, pos):
        seen.append(pos)
        if len(seen) == calls:
            raise KeyboardInterrupt
        return real(self, new, pos)
    monkeypatch.setattr(Generator, "advance", advance)


def test_ctrl_c_while_decoding_keeps_what_each_prompt_had(monkeypatch):
    """Ctrl-C during greedy decoding raised a bare KeyboardInterrupt and every token decoded so
    far was lost; it is now `Interrupted` (a KeyboardInterrupt) holding each prompt's tokens
    up to the interrupted step: 3 tokens after the 3rd step's Ctrl-C, the first 3 of the full
    greedy decoding of the whole prefix (recomputed)."""
    from nnlang.runtime.generate import Interrupted
    net = lm_net()
    opts = options_from(net.program.generate, {"max_new": 10})
    full = generator(net, recompute=True).generate(["the movie", "a"], opts)
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(Interrupted) as cut:
        generator(net).generate(["the movie", "a"], opts)
    assert isinstance(cut.value, KeyboardInterrupt)
    got = cut.value.generation.samples
    assert [s.ids for s in got] == [s.ids[:3] for s in full.samples]
    assert [s.stopped for s in got] == ["interrupted"] * 2
    assert [s.text for s in got] == [s.text[:3] for s in full.samples]


def test_ctrl_c_during_beam_search_gives_the_best_live_beam(monkeypatch):
    """Interrupted beam search: each prompt's likeliest live beam after the steps that
    finished, scored (sum of log-probabilities / length ** length_penalty) as a brute force
    over its tokens with the full forward pass scores it."""
    from nnlang.runtime.generate import Interrupted
    net = lm_net()
    gen = generator(net)
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(Interrupted) as cut:
        gen.generate(["ab"], options_from(net.program.generate, {"max_new": 8, "beam": 3}))
    s = cut.value.generation.samples[0]
    assert s.stopped == "interrupted" and len(s.ids) == 3
    tokens = np.zeros((2, 16), np.int32)
    tokens[0, :5] = gen.tok.encode("ab") + s.ids
    logits = net.forward({"tokens": tokens, "next": tokens})["logits"][0].astype(np.float64)
    logits[:, [gen.tok.pad_id, gen.tok.unk_id]] = -np.inf
    logits[:, gen.tok.vocab_size:] = -np.inf
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    total = sum(logp[1 + i, t] for i, t in enumerate(s.ids))
    assert s.score == pytest.approx(total / 3, abs=1e-4)


def test_decoders_for_other_prompt_counts_are_bounded(monkeypatch):
    """Each prompt count (rows = prompts x beam) compiles its own prefill and step with their
    own KV caches; a long-lived net asked for many counts kept every one of them, so memory grew
    with the number of distinct counts (40 counts: 80 executables, ~190 MiB). The least
    recently used go, as the net's own executables for other batch sizes do; one that comes back
    is rebuilt and decodes the same tokens as at first."""
    from nnlang.runtime import net as net_module
    monkeypatch.setattr(net_module, "KEEP_LENGTHS", 1)  # one count besides the one in use
    net = lm_net()
    gen = generator(net)
    opts = options_from(net.program.generate, {"max_new": 3})
    first = [gen.generate(["ab"] * n, opts).texts for n in (1, 2, 3)]
    assert sorted(gen._states) == [2, 3]
    assert sorted({batch for _, batch in gen._exes}) == [2, 3]
    again = [gen.generate(["ab"] * n, opts).texts for n in (1, 2, 3)]
    assert again == first
    assert len(gen._states) <= 2


def test_greedy_takes_a_bool_and_data_dir_a_path():
    """greedy="no" is truthy and decoded greedily; data_dir=3 was accepted and never read
    (the tokenizer given): each an error naming the argument. numpy's bool is a bool."""
    net = lm_net()
    tok = CharTokenizer(CHARS)
    with pytest.raises(NNError, match=r"error: greedy is True or False, not 'no'"):
        net.generate(["the"], greedy="no", max_new=2, tokenizer=tok)
    with pytest.raises(NNError, match=r"data_dir is a path \(a str or a pathlib.Path\), not 3"):
        net.generate(["the"], max_new=2, tokenizer=tok, data_dir=3)
    assert net.generate(["the"], greedy=np.True_, max_new=2, tokenizer=tok).mode


def test_a_generation_and_its_samples_show_as_one_short_line():
    """A notebook shows `net.generate(...)` by its repr: the dataclass repr listed every
    sample's token ids and the options (thousands of characters for a long decoding). Now:
    the prompts, samples, mode, why each stopped and the first text cut to 60 characters."""
    from nnlang.runtime.generate import Generation, Sample
    long = "once upon a time " * 20
    samples = [Sample("a", long, list(range(400)), "max_new"),
               Sample("a", "x\ny", [5, 6, 1], "stop", score=-1.25),
               Sample("b", "zz", [7, 8], "max_new")]
    g = Generation(samples, "recompute", "the model's lstm is bidirectional",
                   {"max_new": 400}, [0, 0, 1])
    assert repr(g) == ("<Generation 2 prompts, 3 samples; recompute (the model's lstm is "
                       f"bidirectional); stopped: max_new 2, stop 1; first: {long[:60] + '…'!r}>")
    assert repr(samples[1]) == "<Sample 'x\\ny' (3 tokens, stopped: stop, score -1.2500)>"
    net = lm_net()
    real = net.generate(["the movie"], max_new=5, tokenizer=CharTokenizer(CHARS))
    text = repr(real)
    assert text.startswith("<Generation 1 prompt, 1 sample; incremental; stopped: ") and \
        text.endswith(f"first: {real.texts[0]!r}>") and "\n" not in text, text
