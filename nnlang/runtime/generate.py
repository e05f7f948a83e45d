"""Text generation on a compiled model (`Net.generate`, `nnlang generate`): prompts -> token ids
-> decoding (greedy, temperature / top-k / top-p sampling, beam search) -> text.

Tokens come one at a time from the step graph of `decode_graphs.py` (a key/value cache per
attention layer, a carried state per recurrent layer, prefilled once); a model it cannot follow
is rerun on the whole prefix for every token instead (`Generation.mode` says which, `reason`
why). See docs/generation.md.
"""
from __future__ import annotations

import codecs
import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from nnlang.errors import NNError, said_as, warn, with_article
from nnlang.files import as_bool, as_path
from nnlang.frontend.generate_config import (BASE, SAMPLING, returns_problem, sampling_problem,
                                            section_warnings)
from nnlang.gc_pause import paused_gc
from nnlang.passes.pipeline import forward_graph
from nnlang.runtime.decode_graphs import POS_INPUT, PROMPT_MASK, NotIncremental, derive

FLAGS = {"max_new": "--max-new", "temperature": "--temperature", "top_k": "--top-k",
         "top_p": "--top-p", "beam": "--beam", "length_penalty": "--length-penalty",
         "seed": "--seed", "stop": "--stop", "repetition_penalty": "--repetition-penalty",
         "no_repeat_ngram_size": "--no-repeat-ngram-size", "min_new_tokens": "--min-new-tokens",
         "num_return_sequences": "--num-return-sequences", "stop_strings": "--stop-string"}


def _flag(name: str) -> str:
    """A generation setting's name as its caller knows it: the flag under the CLI
    (`--max-new`), the keyword argument from Python (`max_new`)."""
    return said_as(FLAGS[name], name)


def _named(name: str, value=None) -> str:
    """A generation setting as its caller gives it: the flag under the CLI (`--beam 4`,
    `--greedy`), the keyword argument from Python (`beam=4`, `greedy=True`)."""
    if name == "greedy":
        return said_as("--greedy", "greedy=True")
    return said_as(FLAGS[name] + ("" if value is None else f" {value}"),
                   f"{name}=" + ("" if value is None else f"{value!r}"))


@dataclass
class Sample:
    prompt: str
    text: str                   # the generated continuation (without the stop token; through
    #                             a stop string and the token that completed it, as HF's)
    ids: list                   # its token ids (with the stop token, if one ended it)
    stopped: str                # "stop" (a stop token or string), "max_new", "max_len" or
    #                             "interrupted" (Ctrl-C)
    score: float | None = None  # beam search: length-normalized log-probability

    def __repr__(self) -> str:
        # NOTE: the dataclass repr listed every token id (thousands of characters in a cell)
        score = "" if self.score is None else f", score {self.score:.4f}"
        return (f"<Sample {_short(self.text)} ({len(self.ids)} tokens, stopped: "
                f"{self.stopped}{score})>")


@dataclass
class Generation:
    samples: list
    mode: str                   # "incremental" (KV cache, RNN state) or "recompute"
    reason: str | None = None   # why recompute
    options: dict = field(default_factory=dict)
    prompt_of: list = field(default_factory=list)   # each sample's prompt (its index)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]

    def __repr__(self) -> str:
        # NOTE: a notebook shows the value of `net.generate(...)`: the dataclass repr dumped
        # every sample's token ids and the options; this is the call in one line
        n = len(self.grouped)
        stops: dict = {}
        for s in self.samples:
            stops[s.stopped] = stops.get(s.stopped, 0) + 1
        mode = self.mode + (f" ({_short(self.reason, 40, quote=False)})" if self.reason else "")
        parts = [f"{n} prompt{'s' if n != 1 else ''}, {len(self.samples)} sample"
                 f"{'s' if len(self.samples) != 1 else ''}", mode,
                 "stopped: " + ", ".join(f"{k} {v}" for k, v in stops.items())]
        if self.samples:
            parts.append(f"first: {_short(self.samples[0].text)}")
        return f"<Generation {'; '.join(parts)}>"

    @property
    def grouped(self) -> list[list]:
        """The samples per prompt, in the prompts' order: num_return_sequences each (beam
        search: its best first)."""
        groups: list = []
        for s, k in zip(self.samples, self.prompt_of or range(len(self.samples))):
            while len(groups) <= k:
                groups.append([])
            groups[k].append(s)
        return groups


def _short(text: str, limit: int = 60, quote: bool = True) -> str:
    """`text` cut to `limit` characters with an ellipsis, as a repr (escapes, quotes) or not."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return repr(cut) if quote else cut


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while decoding: still a KeyboardInterrupt, carrying what each sequence had
    (`generation`; a sequence still going has `stopped` "interrupted"), so that `nnlang
    generate` prints it instead of dropping minutes of decoding without a word."""

    def __init__(self, generation: Generation):
        super().__init__("interrupted while decoding")
        self.generation = generation

    def _render_traceback_(self) -> list[str]:
        # NOTE: IPython shows these lines in place of the traceback: a notebook cell showed
        # ~100 lines of nnlang's frames, and the texts decoded so far only in the exception
        from nnlang.errors import ipython_lines
        g = self.generation
        lines = [f"Interrupted: interrupted while decoding; what each of the {len(g.samples)} "
                 f"sequence{'s' if len(g.samples) != 1 else ''} had:"]
        shown = 5
        lines += [f"  {_short(s.prompt, 30)} -> {_short(s.text)} ({len(s.ids)} tokens, "
                  f"{s.stopped})" for s in g.samples[:shown]]
        if len(g.samples) > shown:
            lines.append(f"  and {len(g.samples) - shown} more")
        lines.append("  the partial Generation: sys.last_value.generation in the next cell (or "
                     "`except nnlang.runtime.generate.Interrupted as cut: cut.generation`)")
        return ipython_lines(self, lines)


def options_from(spec, given: dict) -> dict:
    """The sampling settings: flags/arguments over the generate section over the defaults,
    each range-checked (an error names the flag, or from Python the keyword: `said_as`).
    Greedy unless some sampling is asked for."""
    # NOTE: numpy's scalars as Python's: np.int64(3) for max_new was "3 is not an int"
    given = {k: v.item() if isinstance(v, np.generic) else v for k, v in given.items()}
    for name, v in given.items():
        if v is not None and name in SAMPLING and (problem := sampling_problem(name, v)):
            raise NNError(f"{_flag(name)}: {problem}")
    explicit = {k: v for k, v in given.items() if v is not None}
    if "greedy" in explicit:   # NOTE: greedy="no" is truthy: it decoded greedily
        explicit["greedy"] = as_bool(explicit["greedy"], said_as("--greedy", "greedy"))
    if explicit.get("greedy") and explicit.get("beam", 1) > 1:
        greedy, beam = _named("greedy"), _named("beam", explicit["beam"])
        raise NNError(f"{greedy} and {beam} ask for two decodings: greedy decoding keeps one "
                      f"hypothesis", hint=f"drop {greedy} for beam search, or "
                      f"{_named('beam')} for greedy decoding")
    if explicit.get("greedy") or explicit.get("beam", 1) > 1:
        sampled = [k for k in ("temperature", "top_k", "top_p") if k in explicit]
        beam = explicit.get("beam", 1)
        if sampled:
            how, flag = (("beam search", _named("beam", beam)) if beam > 1 else
                         ("greedy decoding", _named("greedy")))
            raise NNError(f"{how} is deterministic: {_named(sampled[0])} has no effect with "
                          f"{flag}", hint=said_as("drop the sampling flags", "leave the "
                                                  "sampling settings out") + ", or " +
                          (f"use {_named('beam', 1)} to sample" if beam > 1 else
                           f"drop {_named('greedy')} to sample"))
        # NOTE: greedy is one beam: a section's `beam = 4` ran beam search under --greedy;
        # a beam sets aside the section's stop strings, which beam search cannot end at
        # (greedy gives one sequence: the section's num_return_sequences is set aside too)
        ignored = ("temperature", "top_k", "top_p") + (
            ("beam", "length_penalty", "num_return_sequences") if explicit.get("greedy")
            else ("stop_strings",))
        defaults = {k: v for k, v in spec.defaults.items() if k not in ignored}
    elif any(k in explicit for k in ("temperature", "top_k", "top_p")):
        # NOTE: a sampling flag asks for sampling: under a section's `beam = 4` it ran beam
        # search and the flag was dropped without a word
        defaults = {k: v for k, v in spec.defaults.items()
                    if k not in ("beam", "length_penalty")}
    else:
        defaults = dict(spec.defaults)
    opts = {**BASE, **defaults, **explicit}
    if "length_penalty" in explicit and opts["beam"] == 1:
        # NOTE: it only scores finished beam hypotheses; dropped silently, a sampled or greedy
        # run looked as if it had been length-normalized
        raise NNError(f"{_flag('length_penalty')} has no effect without beam search",
                      hint=f"add {said_as('--beam W', 'beam=W')} (W > 1), or drop "
                      f"{_flag('length_penalty')}")
    opts["sample"] = not opts.pop("greedy", False) and opts["beam"] == 1 and any(
        k in opts for k in ("temperature", "top_k", "top_p"))
    _check_counts(spec, explicit, opts)
    opts.setdefault("stop", spec.stop)
    # NOTE: the section's are checked already (and its string literals unescaped once)
    strings = _stop_strings(explicit["stop_strings"]) if "stop_strings" in explicit else \
        opts.pop("stop_strings", ())
    if strings:
        opts["stop_strings"] = strings
    if strings and opts["beam"] > 1:
        # NOTE: a beam's hypotheses end by their last token's score among the W best; a string
        # completed over several tokens has no such place in HF's beam bookkeeping either
        # NOTE: the beam may be the section's: "drop --beam" named a flag never typed
        given = "beam" in explicit
        raise NNError(f"{_flag('stop_strings')} works with greedy decoding and sampling, "
                      f"not with beam search ({_shown('beam', explicit, opts)})",
                      None if given else spec.spans.get("beam"),
                      (f"drop {_flag('beam')}" if given else f"pass {_named('beam', 1)} (or "
                       f"{_named('greedy')}) to set the section's beam aside") +
                      f", or end the beams at a stop token ({said_as('--stop', 'stop=...')})")
    return opts


def _shown(key: str, explicit: dict, opts: dict) -> str:
    """A setting as the user gave it: the flag, or the generate section's `key = value`."""
    return (_named(key, opts[key]) if key in explicit else
            f"the generate section's {key} = {opts[key]}")


def _check_counts(spec, explicit: dict, opts: dict) -> None:
    """num_return_sequences against the decoding, min_new_tokens against max_new; an error
    names the flags given, or points at the generate section's setting."""
    def show(key):
        return _shown(key, explicit, opts)
    if (problem := returns_problem(opts, show)) is not None:
        given = "num_return_sequences" in explicit
        raise NNError(f"{_named('num_return_sequences', opts['num_return_sequences'])}: "
                      f"{problem[0]}" if given else
                      f"generate setting 'num_return_sequences': {problem[0]}",
                      None if given else spec.spans.get("num_return_sequences"), problem[1])
    if opts["min_new_tokens"] > opts["max_new"]:
        raise NNError(f"{show('min_new_tokens')} is more than {show('max_new')}: a sequence "
                      "cannot have more new tokens than it may have",
                      # the section's setting of the two, where one is (a flag has no place)
                      next((spec.spans.get(k) for k in ("min_new_tokens", "max_new")
                            if k not in explicit), None),
                      f"lower the minimum, or raise {_flag('max_new')}")


def unescape(text: str) -> str:
    """`text` with its backslash escapes (\\n, \\t, \\u00e9) read as Python reads them, every
    other character kept. NOTE: unicode_escape decodes bytes as Latin-1, so a str handed to it
    as such turned 'é\\n' into 'Ã©\\n'; characters past Latin-1 go in as \\u escapes."""
    if "\\" not in text:
        return text
    return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")


def _stop_strings(value) -> tuple:
    """`stop_strings` as a tuple of non-empty strings, escapes like \\n read as `stop`'s are."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise NNError(f"stop_strings is {type(value).__name__}: give a string or a list of "
                      "strings (HF's stop_strings)")
    out = []
    for v in value:
        if not isinstance(v, str):
            raise NNError(f"{_flag('stop_strings')}: {v!r} is {type(v).__name__}, not text")
        try:
            text = unescape(v)
        except UnicodeDecodeError as err:
            raise NNError(f"{_flag('stop_strings')} {v!r} is not a valid escape ({err.reason})",
                          hint="write a backslash itself as \\\\") from None
        if not text:
            raise NNError(f"{_flag('stop_strings')} is empty: every text ends with it",
                          hint="give the text that ends a sequence, e.g. \"\\n\\n\"")
        out.append(text)
    return tuple(dict.fromkeys(out))


def generate(net, prompts, tokenizer=None, data_dir=None, streamer=None,
             **options) -> Generation:
    """`Net.generate`: see there."""
    prompts, opts = prepared(net, prompts, options)
    return decode(net, prompts, opts, tokenizer, data_dir, streamer)


def prepared(net, prompts, options: dict) -> tuple[list, dict]:
    """The prompts as a list and the settings resolved (`options_from`), each checked; apart
    from `decode` so that `nnlang generate` chooses its streamer from the settings it decodes
    with (it resolved them twice, and a model without a generate section failed there)."""
    spec = _spec(net)
    if isinstance(prompts, str):
        prompts = [prompts]
    elif isinstance(prompts, np.ndarray) and prompts.ndim == 1 and prompts.dtype.kind in "UO":
        prompts = prompts.tolist()   # NOTE: a column of texts (a DataFrame's .values) is a list
    elif not isinstance(prompts, (list, tuple)):
        raise NNError(f"prompts are {type(prompts).__name__}: give a string or a list of "
                      "strings")
    # NOTE: before the tokenizer is looked for: a bad option is not a tokenizer's fault
    opts = options_from(spec, options)
    _warn_unused_section_settings(net, spec, options)
    return list(prompts), opts


# NOTE: the settings by which a call picks its decoding over the section's
_DECODING = ("greedy", "beam", "temperature", "top_k", "top_p", "length_penalty")


def _warn_unused_section_settings(net, spec, options: dict) -> None:
    """`section_warnings` (a sampling setting beside the section's beam > 1, a length_penalty
    without it) when the call decodes as the section says, once per net: a call that picks its
    own decoding uses them or sets them aside itself. NOTE: `nnlang generate` and a restored
    net decoded without the word `nnlang check` gives; a net of nnlang.compile, which warned
    them already, is not told twice."""
    if any(options.get(k) is not None for k in _DECODING):
        return
    for diagnostic in section_warnings(spec):
        text = diagnostic.render()
        if text not in net.shown_warnings:
            net.shown_warnings.add(text)
            warn(diagnostic.message, diagnostic.span, diagnostic.hint)


def decode(net, prompts: list, opts: dict, tokenizer=None, data_dir=None,
           streamer=None) -> Generation:
    """Decodes `prepared` prompts with its settings."""
    _check_streamer(streamer, len(prompts), opts)
    return _generator(net, _spec(net), tokenizer, data_dir).generate(prompts, opts, streamer)


def streamable(n_prompts: int, opts: dict) -> bool:
    """Whether a streamer can follow this decoding: one sequence, not a beam search (whose
    likeliest hypothesis changes from step to step), as Hugging Face's streamers."""
    return n_prompts == 1 and opts["beam"] == 1 and opts["num_return_sequences"] == 1


def _check_streamer(streamer, n_prompts: int, opts: dict) -> None:
    if streamer is None:
        return
    if not callable(getattr(streamer, "put", None)) or not callable(getattr(streamer, "end",
                                                                            None)):
        raise NNError(f"streamer is {with_article(type(streamer).__name__)} without put() and "
                      "end()", hint="give an object with put(ids), called with the prompt's "
                      "ids, then with each new token's id, and end(), called once decoding "
                      "stops (HF's streamer)")
    if not streamable(n_prompts, opts):
        what = (f"beam search (beam={opts['beam']})" if opts["beam"] > 1 else
                f"{n_prompts} prompts" if n_prompts != 1 else
                f"num_return_sequences={opts['num_return_sequences']}")
        raise NNError(f"a streamer follows one sequence, not {what}",
                      hint="stream one prompt with greedy decoding or sampling, as Hugging "
                           "Face's streamers do")


def tokenizer_of(net, data_dir=None):
    """The tokenizer a Net was trained with: a restored checkpoint's own (`restore` keeps it
    as `net.tokenizer`), else that of the data set its train config names (the train
    section's `data`, or a run's `--data`)."""
    from nnlang.data import DataError, load_dataset
    from nnlang.data.chars import tokenizer_from_meta
    # NOTE: a run trained with --data on another data set than the section's encodes text
    # with that data set's ids; the section's tokenizer wrote other text from its checkpoint
    if getattr(net, "tokenizer", None) is not None:
        return net.tokenizer
    program, config = net.program, getattr(net, "config", None) or net.program.train
    data = config.data if config else None
    if data is None:
        raise NNError(f"model '{program.model}' has no train data set to take a tokenizer "
                      "from", hint="add `data = ...` (a text data set such as imdb_text) to "
                      "its train section" + said_as("", ", or pass tokenizer=..."))
    try:
        ds = load_dataset(data.name, data_dir=data_dir, **data.options)
    except DataError as err:
        raise NNError(f"loading the tokenizer's data set '{data.name}': {err.message}",
                      hint=err.hint) from None
    tok = tokenizer_from_meta(ds.meta)
    if tok is None:
        raise NNError(f"data set '{data.name}' has no text tokenizer, so prompts cannot be "
                      "encoded", hint="train the model on a text data set such as imdb_text")
    return tok


def held_out(net, sources: np.ndarray, targets: np.ndarray, tokenizer=None, data_dir=None,
             chunk: int = 250, **options) -> dict:
    """Decodes every row of `sources` (the encoder's input ids) with the generate section and
    `options` and scores it against `targets` (ids, through the first stop token): exact
    match, plus the decoded rows. Runs in batches of `chunk` rows, the last one padded so
    that one compiled batch size serves them all."""
    spec = _spec(net)
    if spec.source is None:
        raise NNError(f"model '{net.program.model}' is not an encoder-decoder (its generate "
                      "section has no `source`), so it has no held-out inputs to decode",
                      spec.spans.get("tokens"), "evaluate a language model with `nnlang "
                      "eval` (cross-entropy per token) instead")
    gen = _generator(net, spec, tokenizer, data_dir)
    sources, targets = _id_rows(sources, "sources", gen), _id_rows(targets, "targets", gen)
    if len(sources) != len(targets):
        raise NNError(f"{len(sources)} sources but {len(targets)} targets",
                      hint="give one target row per source row")
    if sources.shape[1] > gen._source_len():
        raise NNError(f"sources are {sources.shape[1]} ids wide; the model's source input "
                      f"'{spec.source}' takes at most {gen._source_len()}")
    opts = options_from(spec, options)
    _warn_unused_section_settings(net, spec, options)
    if options.get("stop_strings") is None:
        opts.pop("stop_strings", None)   # NOTE: the section's are for text generation
    if options.get("num_return_sequences") is None:
        opts["num_return_sequences"] = 1   # NOTE: the section's are for text generation
    if opts["num_return_sequences"] > 1:
        # NOTE: one decoded row per example is compared with its target
        raise NNError("held-out decoding scores one sequence per example; "
                      f"num_return_sequences={opts['num_return_sequences']} would give "
                      f"{opts['num_return_sequences']}",
                      hint=f"drop {_flag('num_return_sequences')}")
    if opts.get("stop_strings"):
        # NOTE: the targets are cut at the stop token to be compared id for id
        raise NNError("held-out decoding compares ids through the stop token; stop_strings "
                      "would end rows where the targets do not", hint="drop stop_strings")
    stop = None if opts.get("stop") is None else gen.stop_token(opts["stop"])
    start = gen.token(spec.start, "start") if spec.start is not None else None
    n, chunk = len(sources), max(1, min(chunk, len(sources)))
    samples, clock = [], time.perf_counter()
    for lo in range(0, n, chunk):
        rows = sources[lo:lo + chunk]
        fill = np.concatenate([rows, np.repeat(rows[:1], chunk - len(rows), 0)])
        prompts = [gen.tok.decode(r) for r in fill]
        dec = [[start] if start is not None else [] for _ in fill]
        samples += gen.run(prompts, dec, [r.tolist() for r in fill], opts).samples[:len(rows)]
    seconds = time.perf_counter() - clock
    want = [_through(t, stop, gen.tok.pad_id) for t in np.asarray(targets)]
    hits = [s.ids == w for s, w in zip(samples, want)]
    return {"exact_match": float(np.mean(hits)) if hits else 0.0, "hits": int(sum(hits)), "n": n,
            "seconds": seconds, "mode": gen.mode, "reason": gen.reason, "options": opts,
            "samples": samples, "targets": [gen.tok.decode(w) for w in want], "hit": hits}


def _id_rows(rows, what: str, gen) -> np.ndarray:
    """`rows` as a 2-D array of whole-number ids the tokenizer has."""
    arr = np.asarray(rows)
    if arr.ndim == 2 and not len(arr):
        # NOTE: it said "must be rows of token ids ... got [0, 32]": they are, just none
        raise NNError(f"{what} hold no examples ({list(arr.shape)}): nothing to evaluate",
                      hint="pass at least one row (a held-out set's sources and targets)")
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise NNError(f"{what} must be rows of token ids, [examples, length]; got "
                      f"{arr.dtype} {list(arr.shape)}", hint="encode text with the tokenizer")
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.trunc(arr)):
        raise NNError(f"{what} hold values that are not whole numbers")
    bad = (arr < 0) | (arr >= gen.tok.vocab_size)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise NNError(f"{what}, row {row}: the id {arr[row, col].item()} is outside the "
                      f"tokenizer's {gen.tok.vocab_size} ids (0 to {gen.tok.vocab_size - 1})")
    return arr.astype(np.int64)


def _through(ids, stop, pad: int) -> list:
    """A target row's ids up to and including its first stop token, else without the padding
    at its end."""
    ids = [int(i) for i in ids]
    if stop is not None and stop in ids:
        return ids[:ids.index(stop) + 1]
    while ids and ids[-1] == pad:
        ids.pop()
    return ids


def _spec(net):
    spec = net.program.generate
    if spec is None:
        # NOTE: at the model's definition, as the section's own errors are located
        model = getattr(net.program.defs.get(net.program.model), "span", None)
        raise NNError(f"model '{net.program.model}' has no generate section, so nnlang does "
                      "not know which input is the token stream", model, hint=f"add `generate "
                      f"{net.program.model} {{ tokens = INPUT  logits = OUTPUT }}` to "
                      f"{net.program.file} (see docs/generation.md)")
    return spec


def _generator(net, spec, tokenizer, data_dir):
    """The Net's Generator (its compiled graphs) for the Net's own tokenizer, or for the one
    given. NOTE: one slot each: a tokenizer given once was kept by later calls without one."""
    if data_dir is not None:   # NOTE: checked when unused too (a tokenizer given, a restored one)
        as_path(data_dir, "data_dir", "the folder to look for the data set in")
    slot = "_generator" if tokenizer is None else "_generator_given"
    gen = getattr(net, slot, None)
    if gen is None or (tokenizer is not None and tokenizer is not gen.tok):
        gen = Generator(net, spec, tokenizer or tokenizer_of(net, data_dir))
        setattr(net, slot, gen)
    return gen


class Generator:
    """Decodes for one Net; compiles its prefill and step graphs once per batch size."""

    def __init__(self, net, spec, tokenizer):
        self.net, self.spec, self.tok = net, spec, tokenizer
        if not hasattr(tokenizer, "vocab_size") or not hasattr(tokenizer, "encode"):
            raise NNError(f"tokenizer is {with_article(type(tokenizer).__name__)}, not a tokenizer",
                          hint="leave it out (the train data set's is used) or pass a "
                               "nnlang.data.chars.CharTokenizer")
        if tokenizer.vocab_size > spec.vocab:
            raise NNError(f"the tokenizer has {tokenizer.vocab_size} tokens but logits "
                          f"'{spec.logits}' score {spec.vocab}", spec.spans.get("logits"),
                          "make the model's vocab at least the data set's vocab_size")
        try:
            self.graphs, self.mode, self.reason = derive(net.user, spec), "incremental", None
        except NotIncremental as why:
            self.graphs, self.mode, self.reason = None, "recompute", str(why)
        self._exes: dict = {}
        self._states: dict = {}   # batch -> the weights (the Net's own arrays) and the caches

    # *** prompts ***
    def stop_token(self, value) -> int:
        """The `stop` token's id, refused when generation never produces it (padding, <unk>,
        <start>, an id past the tokenizer's): no sequence could end there."""
        got = self.token(value, "stop")
        never = _never(self.tok).get(got) or (
            f"past the tokenizer's {self.tok.vocab_size} ids" if got >= self.tok.vocab_size
            else None)
        if never is not None:
            # NOTE: accepted silently, such a stop let every sequence run to max_new
            span = self.spec.spans.get("stop") if value == self.spec.stop else None
            flag = "" if span else said_as("--stop-id: " if isinstance(value, int) else
                                           "--stop: ", "")
            token = (f"id {got}" if isinstance(value, int) else f"{value!r} (id {got})")
            raise NNError(f"{flag}stop token {token} is {never}, which generation never "
                          "produces, so no sequence would end there", span,
                          "give a token the model writes (a character), or leave the stop out")
        return got

    def _section_span(self, key: str, value):
        """The generate section's `key` setting when `value` is the section's (an error then
        points there), else None (the value came from a flag or an argument, said as such).
        NOTE: told apart by value, as options_from hands on no origin: a flag equal to the
        section's value is said as the section's."""
        return self.spec.spans.get(key) if value == self.spec.defaults.get(key) else None

    def stop_strings(self, strings: tuple) -> tuple:
        """`strings`, refused when one holds a character the tokenizer cannot write: no
        sequence could end there (a typo would let every sequence run to max_new). An error
        points at the generate section when they came from there, else names the flag."""
        from nnlang.data import DataError
        span = self._section_span("stop_strings", strings)
        what = _flag("stop_strings") if span is None else "stop_strings"
        for text in strings:
            try:
                ids = self.tok.encode(text, what)
            except DataError as err:
                raise NNError(err.message, span, err.hint) from None
            never = [i for i in ids if i in _never(self.tok)]
            if never:
                raise NNError(f"{what} {text!r} holds {_never(self.tok)[never[0]]}, "
                              "which generation never produces, so no sequence would end "
                              "there", span, "give text the model writes")
        return strings

    def token(self, value, what: str) -> int:
        """A `start`/`stop` token given as an id or as text (errors point at the generate
        section when the value came from there, else they name the flag)."""
        span = self.spec.spans.get(what) if value == getattr(self.spec, what) else None
        if isinstance(value, np.integer):
            value = int(value)
        if isinstance(value, (bool, np.bool_)):
            # NOTE: a bool is an int in Python: stop=True ended sequences at id 1
            raise NNError(f"{what} is {value!r}: give a token id or its text")
        flag = f"--{what}-id" if isinstance(value, int) else f"--{what}"
        # NOTE: a Python caller gave `stop=`, text or id alike: no flag to name
        what = what if span else said_as(f"{flag}: {what}", what)
        if isinstance(value, int):
            if not 0 <= value < self.spec.vocab:
                raise NNError(f"{what} token id {value} is outside the vocabulary "
                              f"(0..{self.spec.vocab - 1})", span)
            return value
        if not isinstance(value, str):
            raise NNError(f"{what} is {type(value).__name__}: give a token id or its text", span)
        try:
            text = unescape(value)
        except UnicodeDecodeError as err:
            raise NNError(f"{what} {value!r} is not a valid escape ({err.reason})", span,
                          "write a backslash itself as \\\\, or give the token id") from None
        got = self.tok.id_of(text)
        if got is None:
            raise NNError(f"{what} token {value!r} is not in the tokenizer's vocabulary",
                          span, "give one token (a single character for a character "
                          f"tokenizer) or a token id"
                          f"{'' if span else said_as(f' ({flag}-id N)', '')}")
        return got

    def encode(self, prompts: list[str]):
        """(decoder token ids per prompt, source ids per prompt or None)."""
        from nnlang.data import DataError
        if not prompts:
            raise NNError("no prompt given", hint=said_as(
                "pass --prompt TEXT (repeatable) or --prompt-file FILE",
                "pass a string, or a list of strings"))
        start = None if self.spec.start is None else self.token(self.spec.start, "start")
        dec, src = [], []
        for k, text in enumerate(prompts):
            where = f"prompt {k + 1}" if len(prompts) > 1 else "the prompt"
            if not isinstance(text, str):
                raise NNError(f"{where} is {type(text).__name__}, not text")
            try:
                ids = self.tok.encode(text, where)
            except DataError as err:
                raise NNError(err.message, hint=err.hint) from None
            if self.spec.source:
                if not ids:
                    raise NNError(f"{where} is empty", hint="give the source text to decode "
                                  "from")
                src.append(self._fit(ids, self._source_len(), where, "source",
                                     self.spec.source))
                dec.append([start])
                continue
            ids = ([start] if start is not None else []) + ids
            if not ids:
                raise NNError(f"{where} is empty", hint="give at least one character to "
                              "continue (or a `start` token in the generate section)")
            # NOTE: the count names the `start` token it holds: a prompt of 16 characters was
            # "17 tokens, longer than ... (16)" with nothing saying where the 17th came from
            dec.append(self._fit(ids, self.spec.max_len, where, "token stream",
                                 self.spec.tokens,
                                 "" if start is None else " with the section's `start` token",
                                 0 if start is None else 1))
        return dec, (src if self.spec.source else None)

    def _source_len(self) -> int:
        return int(self.net.user.node(self.net.user.inputs[self.spec.source]).shape[1])

    @staticmethod
    def _fit(ids, limit: int, where: str, what: str, name: str, extra: str = "",
             taken: int = 0):
        if len(ids) > limit:
            # NOTE: the input that sets the limit: an encoder-decoder's source was said to be
            # limited by "its token input's length" (the decoder's, another length). `taken`:
            # the `start` token's place, which the hint's count leaves out of the prompt's
            after = f", less the `start` token's {taken}" if taken else ""
            raise NNError(f"{where} is {len(ids)} tokens{extra}, longer than the model's {what} "
                          f"allows ({limit})", hint=f"shorten the prompt (at most "
                          f"{limit - taken} tokens: the length of the model's input '{name}'"
                          f"{after})")
        return ids

    # *** engines ***
    def _exe(self, kind: str, batch: int):
        from nnlang.runtime.net import _compile
        from nnlang.backends.aligned import aligned_zeros
        key = (kind, batch)
        if batch not in self._states:
            self._states[batch] = {**self.net.state, **{
                name: aligned_zeros((batch, *shape), self.net.dtype)
                for name, shape in (self.graphs.caches.items() if self.graphs else ())}}
            self._forget_others(batch)
        else:
            self._states[batch] = self._states.pop(batch)  # NOTE: most recently used last
        self.state = self._states[batch]
        if key not in self._exes:
            with paused_gc():
                graph = getattr(self.graphs, kind) if self.graphs else self.net.user
                g = forward_graph(graph, batch, self.net.dtype, ("outputs",))
                self._exes[key] = _compile(g, self.net.backend, self.state, self.net.disable,
                                           self._unwritten(batch))
        return self._exes[key]

    def _unwritten(self, batch: int) -> int:
        """Bytes allocated and not yet written (`Net.unwritten`): the net's, these decoders'
        until they run, and `batch`'s caches (zeros) while none of its decoders has run."""
        from nnlang.runtime.net import _buffer_bytes
        mine = [exe for (_, b), exe in self._exes.items() if b == batch]
        caches = self.graphs.caches if self.graphs else {}
        return self.net.unwritten() + sum(_buffer_bytes(e) for e in self._exes.values()
                                          if not getattr(e, "written", True)) \
            + (0 if any(getattr(e, "written", True) for e in mine)
               else sum(self.state[name].nbytes for name in caches))

    def _forget_others(self, latest: int) -> None:
        """Drops the decoders (executables and KV caches) of the least recently used other
        prompt counts beyond the net's budget (`net.over_budget`): each count compiles its own,
        and a long-lived net asked for many counts kept them all. A decode keeps one count from
        start to end, so only finished decodes' caches go."""
        from nnlang.runtime.net import _buffer_bytes, over_budget
        caches = self.graphs.caches if self.graphs else {}

        def nbytes(batch):
            return sum(_buffer_bytes(exe) for (_, b), exe in self._exes.items() if b == batch) \
                + sum(self._states[batch][name].nbytes for name in caches)
        for old in over_budget([b for b in self._states if b != latest], nbytes):
            del self._states[old]
            for key in [k for k in self._exes if k[1] == old]:
                del self._exes[key]

    def _feeds(self, tokens, source) -> dict:
        feeds = {self.spec.tokens: tokens}
        if source is not None:
            feeds[self.spec.source] = source
        # NOTE: the full model's other inputs (labels) do not reach the logits (the generate
        # section is refused when they do), so zeros change nothing the generation reads
        if not self.graphs:
            user = self.net.user
            for name, nid in user.inputs.items():
                if name not in feeds and not name.startswith("_"):
                    node = user.node(nid)
                    feeds[name] = np.zeros((len(tokens), *node.shape[1:]), node.dtype)
        return feeds

    def start(self, tokens: np.ndarray, lengths: np.ndarray, source) -> np.ndarray:
        """Runs the prompt; the next-token logits [rows, vocab]."""
        self.tokens, self.source = tokens, source
        rows = np.arange(len(tokens))
        if not self.graphs:
            out = self._exe("predict", len(tokens)).run(self._feeds(tokens, source))
            return np.array(out[self.spec.logits])[rows, lengths - 1]
        feeds = self._feeds(tokens, source)
        if PROMPT_MASK in self.graphs.prefill.inputs:
            feeds[PROMPT_MASK] = (np.arange(tokens.shape[1]) < lengths[:, None]).astype(
                self.net.dtype)
        out = self._exe("prefill", len(tokens)).run(feeds)
        self._exe("step", len(tokens))  # NOTE: picks this batch's caches as self.state
        for name in self.graphs.caches:
            self._put(name, out[name])
        self.statics = {k: np.array(out[k]) for k in self.graphs.statics}
        return np.array(out["logits"])[rows, lengths - 1]

    def advance(self, new: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Feeds token new[r] at position pos[r] of each row; the next logits [rows, vocab]."""
        rows = np.arange(len(new))
        self.tokens[rows, pos] = new
        if not self.graphs:
            out = self._exe("predict", len(new)).run(self._feeds(self.tokens, self.source))
            return np.array(out[self.spec.logits])[rows, pos]
        feeds = {self.spec.tokens: new[:, None].astype(np.int32),
                 POS_INPUT: pos.astype(np.int32), **self.statics}
        return np.array(self._exe("step", len(new)).run(feeds)["logits"])[:, 0]

    def reorder(self, src: np.ndarray) -> None:
        """Row r continues the sequence of row src[r] (beam search)."""
        self.tokens = self.tokens[src]
        if self.source is not None:
            self.source = self.source[src]
        if self.graphs:
            for name in self.graphs.caches:
                self._put(name, _host(self.state[name])[src])
            self.statics = {k: v if k in self.graphs.shared else v[src]
                            for k, v in self.statics.items()}

    def _put(self, name: str, value) -> None:
        target = self.state[name]
        if hasattr(target, "__cuda_array_interface__"):
            target.set(np.ascontiguousarray(_host(value), target.dtype))
        else:
            np.copyto(target, _host(value))

    # *** decoding ***
    def generate(self, prompts: list[str], opts: dict, streamer=None) -> Generation:
        dec, src = self.encode(prompts)
        return self.run(prompts, dec, src, opts, streamer)

    def _check_rows(self, rows: int, width: int, many: int = 1) -> None:
        """Refuses, before anything is allocated, a decode batch (prompts x beam, or prompts x
        num_return_sequences `many` when sampling) whose
        activations do not fit in this machine's memory: a huge --beam was an int overflow or a
        MemoryError inside numpy, or the process was killed for memory."""
        from nnlang.ir.summary import memory_need, memory_problem
        need = memory_need(self.net.user, rows, self.net.dtype, training=False)
        # NOTE: the prefill and step executables each hold their buffers (measured: about twice
        # the forward graph's activations per row), and the host keeps float64 logits per row
        need.activations = 2 * need.activations + rows * self.spec.max_len * self.spec.vocab * 8
        problem = memory_problem(need, held=need.params)
        if problem is None:
            return
        key, value = ("beam", width) if width > 1 else ("num_return_sequences", many)
        if value > 1 and (span := self._section_span(key, value)) is not None:
            # NOTE: the generate section's setting: the hint named a flag never typed, and the
            # error pointed nowhere
            raise NNError(f"decoding {rows} rows at once (the generate section's {key} = "
                          f"{value}): {problem}", span,
                          f"lower the section's {key}, or pass a smaller {_flag(key)}")
        raise NNError(f"decoding {rows} rows at once: {problem}",
                      hint=(f"use a smaller {_flag('beam')} (here {width})" if width > 1 else
                            # NOTE: one prompt sampled 10**8 times was told to give
                            # fewer prompts
                            f"use a smaller {_flag('num_return_sequences')} (here {many}), "
                            "or give fewer prompts at once" if many > 1 else
                            "give fewer prompts at once"))

    def run(self, prompts: list[str], dec: list, src: list | None, opts: dict,
            streamer=None) -> Generation:
        """Decodes from token ids: `dec` the decoder's prompt per row, `src` the source's;
        `streamer` (one row) gets each new token's id as it is chosen."""
        stop = None if opts.get("stop") is None else self.stop_token(opts["stop"])
        strings = self.stop_strings(opts.get("stop_strings") or ())
        if opts["min_new_tokens"] and stop is None:
            # NOTE: it holds back the stop token only (HF's MinNewTokensLengthLogitsProcessor);
            # without one it would be dropped without a word
            span = self._section_span("min_new_tokens", opts["min_new_tokens"])
            # NOTE: the section's value was said as the flag, which the user had not typed
            said = (f"the generate section's min_new_tokens = {opts['min_new_tokens']}"
                    if span is not None else _named("min_new_tokens", opts["min_new_tokens"]))
            raise NNError(f"{said} has no effect without a stop token: it "
                          "keeps the stop token from ending a sequence too early", span,
                          f"give a stop token ({said_as('--stop, --stop-id', 'stop=...')}, or the "
                          f"section's `stop`), or drop {_flag('min_new_tokens')}")
        width, many = opts["beam"], opts["num_return_sequences"]
        # NOTE: a sampled prompt's n samples are n rows (the same prompt n times, each its own
        # stream); beam search returns its n best hypotheses from its `width` rows
        copies = width if width > 1 else many
        self._check_rows(len(dec) * copies, width, many)
        reps = np.repeat(np.arange(len(dec)), copies)
        self.row_prompt = reps   # for `_masked`'s error
        L = self.spec.max_len
        tokens = np.full((len(reps), L), self.tok.pad_id, np.int32)
        lengths = np.array([len(dec[i]) for i in reps])
        for r, i in enumerate(reps):
            tokens[r, :len(dec[i])] = dec[i]
        source = None
        if src is not None:
            source = np.full((len(reps), self._source_len()), self.tok.pad_id, np.int32)
            for r, i in enumerate(reps):
                source[r, :len(src[i])] = src[i]
        logits = self.start(tokens, lengths, source)
        streams = [list(dec[i]) for i in reps]   # each row's token stream before generation
        if width > 1:
            best = _beam(self, logits, lengths, stop, opts, streams)
            outs = [o for b in best for o in b]
            owner = [p for p, b in enumerate(best) for _ in b]
        else:
            owner = reps
            keys = [(tuple(dec[i]), tuple(src[i]) if src is not None else ()) for i in reps]
            ends = _StringStops(self.tok, strings, [dec[i] for i in reps]) if strings else None
            outs = _sample(self, logits, lengths, stop, opts,
                           _RowStreams(opts["seed"], keys) if opts["sample"] else None, ends,
                           streams, streamer)
            if streamer is not None:
                streamer.end()
        samples = []
        for prompt, (ids, why, score) in zip((prompts[i] for i in owner), outs):
            text_ids = ids[:-1] if why == "stop" and ids[-1] == stop else ids
            samples.append(Sample(prompt, self.tok.decode(text_ids), ids, why, score))
        result = Generation(samples, self.mode, self.reason, opts, [int(k) for k in owner])
        if any(s.stopped == "interrupted" for s in samples):
            raise Interrupted(result)
        if width > 1:
            _fewer_than_asked(result.grouped, many, width)
        return result


def _fewer_than_asked(groups: list, many: int, width: int) -> None:
    """A warning for the prompts whose beam search found fewer than `many` sequences: only where
    no more sequences of that length can be written (docs/generation.md)."""
    # NOTE: the short group was handed back without a word (the CLI numbered them "1 of 4",
    # "2 of 4" and stopped), and a loop over result.grouped[k] read past its end
    short = [(p, len(g)) for p, g in enumerate(groups) if len(g) < many]
    if not short:
        return
    shown = ", ".join(f"prompt {p + 1} has {n}" for p, n in short[:5]) + \
        (f", and {len(short) - 5} more prompts" if len(short) > 5 else "")
    warn(f"{shown}: fewer sequences than {_named('num_return_sequences', many)} asks for; "
         f"beam search ({_named('beam', width)}) found no other sequence it could write (the "
         "tokens the tokenizer writes, less any a repetition setting bans, allow no more at "
         "that length)", hint=f"ask for fewer with {_flag('num_return_sequences')}, or allow "
         f"longer sequences with {_flag('max_new')}")


def _host(a):
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.asarray(a)


def _never(tok) -> dict:
    """The special ids generation never produces, with their names: padding, <unk> (it would
    write U+FFFD, which no prompt may hold) and <start> (it writes nothing); ids from the
    tokenizer's vocab_size on are never produced either (it cannot write them)."""
    return {i: name for i, name in ((tok.pad_id, "padding"),
                                    (getattr(tok, "unk_id", None), "<unk>"),
                                    (getattr(tok, "bos_id", None), "<start>"))
            if i is not None}


def _masked(g: Generator, logits: np.ndarray, step: int, live) -> np.ndarray:
    """The logits with every id generation never produces (`_never`) at -inf."""
    z = np.array(logits, np.float64)
    for special in _never(g.tok):
        z[:, special] = -np.inf
    z[:, g.tok.vocab_size:] = -np.inf
    # NOTE: a NaN (or +inf) score has no softmax: greedy decoding and sampling wrote padding
    # (id 0) as text, and beam search died in max() with a traceback
    # (rows that have ended are left alone: their scores are never read)
    bad = (np.isnan(z) | (z == np.inf)).any(axis=1) & np.asarray(live, bool)
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        what = "NaN" if np.isnan(z[row]).any() else "+inf"
        raise NNError(f"the model's next-token scores ('{g.spec.logits}') for prompt "
                      f"{int(g.row_prompt[row]) + 1} hold {what} after {step} generated "
                      "token(s): no token can be chosen", hint="the weights hold NaN or inf, or "
                      "the model overflows (a diverged run?): check the checkpoint with `nnlang "
                      "eval`, or train again with a lower learning rate or clip_norm")
    return z


def _processed(g: Generator, z: np.ndarray, stream, step: int, opts: dict, stop, live,
               each_row: bool = True):
    """Hugging Face's logits processors, in its order, on each live row's scores `z`: the
    repetition penalty (CTRL's rule: a score of each id already in the row's token stream,
    prompt included, divided by the penalty when positive, multiplied when negative), no
    repeated n-gram (an id that would complete an n-gram the stream already holds is -inf), and
    min_new_tokens (the stop token is -inf while fewer than that many tokens are new).
    `stream(r)`: row r's tokens so far (prompt, `start` included, and generated; asked for only
    when a processor is on); `step`: how many are new. The temperature, top-k and top-p come
    after these (`_choose`). A live row left with no token is an error (`each_row`; beam search
    asks it of a prompt's beams together)."""
    penalty, size = opts["repetition_penalty"], opts["no_repeat_ngram_size"]
    early = stop is not None and step < opts["min_new_tokens"]
    g.held_back = None
    if penalty == 1.0 and not size and not early:
        return z
    z = np.array(z, np.float64)
    for r in range(len(z)):
        if not live[r]:
            continue
        seq = stream(r)
        if penalty != 1.0 and seq:
            ids = np.unique(seq)
            v = z[r, ids]
            # NOTE: an extreme penalty overflows: -inf is the limit of s * R (never chosen);
            # +inf (s / R for a tiny R) would be NaN in the softmax, a draw of padding, so it
            # is kept at the largest float, the likeliest
            with np.errstate(over="ignore"):
                z[r, ids] = np.minimum(np.where(v < 0, v * penalty, v / penalty),
                                       np.finfo(np.float64).max)
        if size and len(seq) + 1 >= size:
            # NOTE: the n-grams whose first n - 1 ids are the stream's last n - 1 (for n = 1,
            # every id so far), as HF's _get_generated_ngrams
            tail = seq[len(seq) - size + 1:]
            z[r, [seq[i + size - 1] for i in range(len(seq) - size + 1)
                  if seq[i:i + size - 1] == tail]] = -np.inf
    # NOTE: the rows whose stop token the minimum holds back while it still had a finite
    # score, for `_no_token_left` to tell what left a row no token (beam search asks later)
    g.held_back = np.isfinite(z[:, stop]) & np.asarray(live, bool) if early else None
    if early:
        z[np.asarray(live, bool), stop] = -np.inf
    empty = np.isneginf(z).all(axis=1) & np.asarray(live, bool)
    if each_row and empty.any():
        # NOTE: a small vocabulary and no_repeat_ngram_size 1 or 2 can ban every token; argmax
        # over all -inf wrote padding (id 0) as text
        row = int(np.nonzero(empty)[0][0])
        _no_token_left(g, row, step, opts, slice(row, row + 1))
    return z


def _no_token_left(g: Generator, row: int, step: int, opts: dict, rows: slice):
    """The error for a prompt left no token to choose; `rows`: its rows (its beams) in
    `g.held_back`."""
    size, penalty = opts["no_repeat_ngram_size"], opts["repetition_penalty"]
    if g.held_back is not None and g.held_back[rows].any() or not size and penalty == 1.0:
        # NOTE: the stop token was the one token left, and the minimum held it back (the rest
        # never produced, or banned): "repetition_penalty 1 leaves no token" named a setting
        # that was off, and with another processor on (one that may have banned nothing, as a
        # repetition penalty) the error blamed that one
        why = (f"min_new_tokens {opts['min_new_tokens']} holds back the stop token, the only "
               "token with a finite score")
        hint = f"use a smaller {_flag('min_new_tokens')}"
    elif size:
        why = f"no_repeat_ngram_size {size} bans every token the tokenizer can write"
        hint = (f"use a larger {_flag('no_repeat_ngram_size')} (or 0, off), or a smaller "
                f"{_flag('max_new')}")
    else:
        why = f"repetition_penalty {penalty:g} leaves no token a finite score"
        hint = f"use a smaller {_flag('repetition_penalty')}"
    raise NNError(f"prompt {int(g.row_prompt[row]) + 1}: after {step} generated token(s) "
                  f"{why}, so no next token can be chosen", hint=hint)


class _RowStreams:
    """One random stream per row, seeded by the seed and the row's prompt (its token ids, and
    how many earlier rows of the call hold the same prompt), so that a seeded prompt samples
    the same text alone or among other prompts. NOTE: all rows drew from one stream, so adding
    a prompt in front of another changed the other's text. `random(n)` is one draw per row."""

    def __init__(self, seed: int, keys: list):
        seen: dict = {}
        self.rngs = []
        for key in keys:
            seen[key] = seen.get(key, -1) + 1
            # NOTE: a hash of the whole key, not a list of ints given to SeedSequence: that
            # pads with zeros, so (seed, ids) and (seed, ids + [0]) could share a stream
            text = repr((int(seed), seen[key], key)).encode()
            self.rngs.append(np.random.default_rng(
                int.from_bytes(hashlib.sha256(text).digest(), "little")))

    def random(self, n: int) -> np.ndarray:
        assert n == len(self.rngs), "one draw per row"
        return np.array([rng.random() for rng in self.rngs])


class _StringStops:
    """Stop strings (HF's `stop_strings`): a row ends at the token whose text completes one,
    the string running over as many tokens as it takes, from the prompt's end on (a string
    wholly inside the prompt ends nothing)."""

    def __init__(self, tok, strings: tuple, prompts: list):
        self.tok, self.strings = tok, strings
        self.prompts = [tok.decode(p) for p in prompts]
        self.texts = list(self.prompts)
        self.done = [0] * len(prompts)   # how many of the row's ids `texts` holds

    def hit(self, row: int, ids: list) -> bool:
        """Does the row's text hold a string once `ids` (its tokens so far) are written?
        NOTE: the character tokenizer writes each token on its own (up to its <end>), so only
        the new tokens are decoded and only a match ending in their text is looked for (an
        earlier one would have ended the row): decoding every token again at each step cost
        a third of a 500-token generation of a small model."""
        prompt, before = self.prompts[row], self.texts[row]
        if self.tok.end_id in ids[self.done[row]:]:
            text = prompt + self.tok.decode(ids)   # NOTE: decoding stops at <end>
        else:
            text = before + self.tok.decode(ids[self.done[row]:])
        self.texts[row], self.done[row] = text, len(ids)
        # NOTE: a match must end after the prompt (start past len(prompt) - len(s)) and in
        # the new text (start past len(before) - len(s))
        return any(text.find(s, max(0, len(prompt) - len(s) + 1, len(before) - len(s) + 1))
                   >= 0 for s in self.strings)


def _sample(g: Generator, logits, lengths, stop, opts, rng, ends=None, streams=None,
            streamer=None):
    rows = len(lengths)
    streams = streams or [[] for _ in range(rows)]
    ids = [[] for _ in range(rows)]
    why = [None] * rows
    pos = lengths.copy()
    if streamer is not None:
        # NOTE: HF's protocol: the prompt's ids first, [1, prompt length] (TextStreamer's
        # skip_prompt drops that call), then each new token as a 1-D array, so HF's streamers
        # (they read .shape and .tolist()) and ones written for them work here
        streamer.put(np.asarray([streams[0]], np.int64).reshape(1, -1))
    try:
        for step in range(opts["max_new"]):
            live = [w is None for w in why]
            z = _processed(g, _masked(g, logits, step, live), lambda r: streams[r] + ids[r],
                           step, opts, stop, live)
            new = _choose(z, opts, rng) if opts["sample"] else z.argmax(axis=-1)
            for r in range(rows):
                if why[r] is None:
                    ids[r].append(int(new[r]))
                    if stop is not None and new[r] == stop or ends and ends.hit(r, ids[r]):
                        why[r] = "stop"
                    elif pos[r] >= g.spec.max_len and step + 1 < opts["max_new"]:
                        # NOTE: the last position's prediction is still a token (a seq2seq
                        # target's <end>); it only cannot be fed back
                        why[r] = "max_len"
            if streamer is not None and live[0]:
                streamer.put(np.asarray([ids[0][-1]], np.int64))   # NOTE: the stop too, as HF
            if all(w is not None for w in why) or step + 1 == opts["max_new"]:
                break
            live = np.array([w is None for w in why])
            at = np.where(live, pos, np.minimum(pos, g.spec.max_len - 1))
            logits = g.advance(np.where(live, new, g.tok.pad_id), at)
            pos = np.where(live, pos + 1, pos)
    except KeyboardInterrupt:
        # NOTE: Ctrl-C: each row keeps the tokens it has (a row may be one token ahead of
        # another when the signal came between two appends); `run` raises `Interrupted`
        return [(ids[r], why[r] or "interrupted", None) for r in range(rows)]
    return [(ids[r], why[r] or "max_new", None) for r in range(rows)]


def _choose(z: np.ndarray, opts: dict, rng) -> np.ndarray:
    """Temperature, then top-k, then top-p (nucleus), then one draw per row."""
    # NOTE: shifted to a max of 0 before the division: z / T for a tiny T (1e-308) overflowed to
    # inf, inf - inf was NaN and every draw fell on id 0 (padding); shifted, the likeliest
    # token stays at 0 and the rest only head for -inf (exp: 0), the limit being the argmax
    with np.errstate(over="ignore"):
        z = (z - z.max(axis=1, keepdims=True)) / opts.get("temperature", 1.0)
    if opts.get("top_k"):
        k = min(opts["top_k"], z.shape[1])
        kth = np.partition(z, -k, axis=1)[:, -k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if opts.get("top_p", 1.0) < 1.0:
        # NOTE: Hugging Face's TopPLogitsWarper line for line: the scores sorted ascending
        # (stable, as torch's CPU sort: of two equal scores the lower id first), a token dropped
        # when the mass of it and the less likely ones is <= 1 - top_p, the likeliest kept.
        # nnlang sorted descending and kept the lower ids of a tie at the nucleus' edge, HF the
        # higher ones: for four equal scores at top_p 0.5, ids 0 and 1 where HF keeps 2 and 3
        order = np.argsort(z, axis=1, kind="stable")
        drop = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1) <= 1 - opts["top_p"]
        drop[:, -1] = False
        np.put_along_axis(drop, order, drop.copy(), axis=1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=1, keepdims=True)
    # NOTE: u is scaled to the rounded total: the sum of p can fall an ulp short of 1, and a draw
    # above it was clipped to the last id, one never to be produced (-inf, probability 0); the
    # first cumulative sum above u * total is always at a token with probability > 0
    c = np.cumsum(p, axis=1)
    u = rng.random(len(p))[:, None] * c[:, -1:]
    return np.minimum((c <= u).sum(axis=1), p.shape[1] - 1)


def _beam(g: Generator, logits, lengths, stop, opts, streams=None):
    """Beam search per prompt: `beam` live hypotheses; one ending with `stop` is set aside with
    its score divided by (generated length) ** length_penalty; the best `num_return_sequences`
    of these win (a list per prompt, best first). The logits processors act on the
    log-probabilities, as in HF's beam search."""
    width, lp, many = opts["beam"], opts["length_penalty"], opts["num_return_sequences"]
    rows = len(lengths)
    streams = streams or [[] for _ in range(rows)]
    prompts = rows // width
    scores = np.where(np.arange(rows) % width == 0, 0.0, -np.inf)  # one live beam at first
    seqs = [[] for _ in range(rows)]
    done = [[] for _ in range(prompts)]
    closed = [False] * prompts
    pos = lengths.copy()
    snap = (0, seqs, scores.copy(), list(closed))   # the state after a whole step (Ctrl-C)
    try:
        for step in range(opts["max_new"]):
            live = np.isfinite(scores) & ~np.repeat(closed, width)
            z = _masked(g, logits, step, live)
            logp = _processed(g, z - np.logaddexp.reduce(z, axis=1, keepdims=True),
                              lambda r: streams[r] + seqs[r], step, opts, stop, live,
                              each_row=False)
            with np.errstate(over="ignore"):   # NOTE: a huge repetition_penalty: -inf
                cand = (scores[:, None] + logp).reshape(prompts, -1)
            vocab = logp.shape[1]
            src, new, nscore = np.arange(rows), np.full(rows, g.tok.pad_id), np.full(rows, -np.inf)
            for p in range(prompts):
                if closed[p]:
                    continue
                if live[p * width:(p + 1) * width].any() and not np.isfinite(cand[p]).any():
                    _no_token_left(g, p * width, step, opts,
                                   slice(p * width, (p + 1) * width))
                kept = 0
                for rank, c in enumerate(np.argsort(-cand[p], kind="stable")[: 2 * width]):
                    if not np.isfinite(cand[p, c]):
                        break
                    r, v = p * width + c // vocab, int(c % vocab)
                    if stop is not None and v == stop:
                        # NOTE: only a stop among the `width` best candidates ends a hypothesis
                        # (as in Hugging Face's beam search): lower ones filled `done` and closed
                        # the search before a better live beam could finish
                        if rank < width:
                            done[p].append((_normalized(cand[p, c], step + 1, lp), seqs[r] + [v],
                                            "stop"))
                        continue
                    src[p * width + kept], new[p * width + kept] = r, v
                    nscore[p * width + kept] = cand[p, c]
                    kept += 1
                    if kept == width:
                        break
                closed[p] = _finished(done[p], cand[p].max(), step, width, lp)
                if closed[p]:
                    nscore[p * width:(p + 1) * width] = -np.inf
            seqs = [seqs[s] + [int(v)] if np.isfinite(sc) else seqs[s]
                    for s, v, sc in zip(src, new, nscore)]
            scores = nscore
            last = step + 1 == opts["max_new"]
            for p in range(prompts):
                full = pos[p * width] >= g.spec.max_len   # its beams all have one length
                if closed[p] or not (full or last):
                    continue
                for r in range(p * width, (p + 1) * width):
                    if np.isfinite(scores[r]):
                        done[p].append((_normalized(scores[r], step + 1, lp), seqs[r],
                                        "max_new" if last else "max_len"))
                closed[p] = True
                scores[p * width:(p + 1) * width] = -np.inf   # NOTE: no longer live: no position
            if all(closed):
                break
            snap = (step + 1, seqs, scores.copy(), list(closed))
            g.reorder(src)
            # NOTE: a row continues its source row at that row's position: when fewer candidates
            # than beams were left (a beam as wide as the vocabulary, a stop among them) a dead row
            # kept its old position, and a live beam later moved onto it was fed one position back
            pos = pos[src]
            live = np.isfinite(scores)
            logits = g.advance(new, np.where(live, pos, np.minimum(pos, g.spec.max_len - 1)))
            pos = np.where(live, pos + 1, pos)
    except KeyboardInterrupt:
        # NOTE: Ctrl-C: a prompt still searching gives its best live hypothesis (as the last
        # whole step left it), `stopped` "interrupted"; `run` raises `Interrupted`
        step, seqs, scores, closed = snap
        return [_best(done[p], many) if closed[p] else
                _live_best(seqs, scores, p, width, step, lp, many) for p in range(prompts)]
    return [_best(done[p], many) for p in range(prompts)]


def _best(done: list, many: int = 1) -> list:
    """A closed prompt's `many` best finished hypotheses, best first, as (ids, stopped, score).
    NOTE: sorted stably: of equal scores the one finished first, as max() picked it."""
    ranked = sorted(done, key=lambda d: -d[0])[:many]
    return [(ids, why, float(score)) for score, ids, why in ranked]


def _live_best(seqs, scores, p: int, width: int, step: int, lp: float, many: int = 1) -> list:
    """An interrupted prompt's `many` best live beams as (ids, "interrupted", normalized
    score)."""
    rows = sorted(range(p * width, (p + 1) * width), key=lambda r: -scores[r])
    # NOTE: the live ones (before the first step only one beam is)
    rows = [r for r in rows if np.isfinite(scores[r])][:many] or rows[:1]
    return [(list(seqs[r]), "interrupted",
             _normalized(scores[r], step, lp) if step and np.isfinite(scores[r]) else None)
            for r in rows]


def _finished(done: list, best: float, step: int, width: int, lp: float) -> bool:
    """HF's rule (early_stopping=False): a prompt's search ends once `width` hypotheses have
    finished and the step's best candidate (`best`: its sum of log-probabilities, a stop token's
    included, as HF's `next_scores.max()`), scored at the current length, would not beat the
    worst of the `width` best of them."""
    # NOTE: the best of the live beams only closed a search whose best candidate had just
    # stopped: HF goes on there, and with length_penalty > 0 a longer beam can still win
    if len(done) < width:
        return False
    worst = sorted(d[0] for d in done)[-width]
    return not np.isfinite(best) or worst >= _normalized(best, step + 1, lp)


def _normalized(total: float, length: int, lp: float) -> float:
    """A hypothesis's score: its sum of log-probabilities / length ** length_penalty."""
    # NOTE: in numpy's floats: Python's 12 ** 1000.0 raised OverflowError, an internal error
    # for --length-penalty 1000; the power overflows to inf and the score is -0.0, its limit
    with np.errstate(over="ignore"):
        return float(total / np.float64(length) ** lp)
