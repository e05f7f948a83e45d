"""The generate section: which input is the token stream, which output the next-token logits
(and an encoder-decoder's source), checked against the elaborated graph into a `GenerateSpec`.
See docs/generation.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from nnlang.errors import Diagnostic, ErrorSink, Span, did_you_mean
from nnlang.frontend import ast
from nnlang.frontend.lint import producer
from nnlang.ir.dims import Sym
from nnlang.ops.registry import INT_DTYPES
from nnlang.ops.signature import show_value

ROLES = ("tokens", "logits", "source")   # settings naming an input or an output
TOKENS = ("start", "stop")               # settings naming a token (string or id)
# sampling defaults: name -> (kind, test, wording); the CLI flags of the same names override
SAMPLING = {
    "max_new": (int, lambda v: v >= 1, ">= 1"),
    "temperature": (float, lambda v: v > 0, "> 0 (use greedy decoding for 0)"),
    "top_k": (int, lambda v: v >= 1, ">= 1"),
    "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "beam": (int, lambda v: v >= 1, ">= 1"),
    # NOTE: any sign, as HF's: a negative one favours shorter hypotheses (">= 0" refused it)
    "length_penalty": (float, lambda v: True, "a number"),
    "seed": (int, lambda v: v >= 0, ">= 0"),
    # Hugging Face's logits processors, applied before the temperature (its order)
    "repetition_penalty": (float, lambda v: v > 0, "> 0 (1 is off)"),
    "no_repeat_ngram_size": (int, lambda v: v >= 0, ">= 0 (0 is off)"),
    "min_new_tokens": (int, lambda v: v >= 0, ">= 0"),
    "num_return_sequences": (int, lambda v: v >= 1, ">= 1"),
}
# text that ends a sequence over several tokens (`--stop-string`, HF's stop_strings); a default
# the flag overrides, as the sampling settings are
STRINGS = ("stop_strings",)
SETTINGS = (*ROLES, *TOKENS, *SAMPLING, *STRINGS)
# what generation uses when neither a flag nor the section gives a value (no temperature, top_k
# or top_p: greedy)
BASE = {"max_new": 100, "beam": 1, "length_penalty": 1.0, "seed": 0, "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0, "min_new_tokens": 0, "num_return_sequences": 1}


@dataclass(frozen=True)
class GenerateSpec:
    tokens: str                   # input name: int [batch, max_len]
    logits: str                   # output name: float [batch, max_len, vocab]
    max_len: int
    vocab: int
    source: str | None = None     # input name: int [batch, src_len] (encoder-decoder)
    start: int | str | None = None
    stop: int | str | None = None
    defaults: dict = field(default_factory=dict)
    spans: dict = field(default_factory=dict)   # setting -> Span, for later located errors


def sampling_problem(name: str, value) -> str | None:
    """Why `value` is not a valid sampling setting `name` (None if it is)."""
    kind, test, text = SAMPLING[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and not isinstance(value, int)):
        return f"{show_value(value)} is not {'an int' if kind is int else 'a number'}"
    if not math.isfinite(value):
        return f"{value!r} is not a finite number"
    return None if test(value) else f"{value!r} is out of range: {name} must be {text}"


def returns_problem(o: dict, show) -> tuple[str, str] | None:
    """Why decoding settings `o` cannot give `num_return_sequences` per prompt, as (message,
    hint), or None. Greedy decoding has one sequence (Hugging Face refuses it too), and beam
    search returns at most its `beam` finished hypotheses; `show(key)` writes a setting as the
    caller names it (a flag or the section's `name = value`)."""
    n, beam = o.get("num_return_sequences", 1), o.get("beam", 1)
    if n == 1:
        return None
    if beam > 1 and n > beam:
        return (f"{n} sequences per prompt, but beam search keeps {beam} hypotheses "
                f"({show('beam')})", f"use a beam of at least {n}, or ask for at most {beam}")
    if beam == 1 and not any(k in o for k in ("temperature", "top_k", "top_p")):
        return (f"{n} sequences per prompt, but greedy decoding gives one (the likeliest "
                "token every step, the same each time)", "sample (temperature, top_k or "
                f"top_p) for {n} independent samples, or use beam search with beam >= {n}")
    return None


def section_warnings(spec: GenerateSpec) -> list[Diagnostic]:
    """Settings of the generate section that its own decoding leaves unused, each a warning at
    the setting: a sampling setting beside `beam` > 1 (beam search is deterministic; Hugging
    Face's GenerationConfig warns that such a flag "is only used in sample-based generation
    modes"), a `length_penalty` without it (only beam hypotheses are scored by length). Not
    errors: each still applies to a call that picks the other decoding (`--beam 1`, `--beam W`)."""
    # NOTE: `beam = 4  temperature = 0.7` decoded by beam search and dropped the temperature
    # without a word; HF's beam-sample (do_sample with num_beams) is another search, not this one
    values, found = spec.defaults, []
    beam = values.get("beam", 1)
    if beam > 1:
        for k in (k for k in ("temperature", "top_k", "top_p") if k in values):
            found.append(Diagnostic(
                f"generate setting '{k}' has no effect with the section's beam = {beam}: beam "
                "search is deterministic, so the section decodes without it", spec.spans.get(k),
                f"drop {k}, or set beam = 1 to sample by default (a call that samples, with "
                "beam 1 or a sampling setting of its own, still uses it)", severity="warning"))
    elif "length_penalty" in values:
        found.append(Diagnostic(
            "generate setting 'length_penalty' has no effect without beam search: it scores "
            "finished beam hypotheses by their length, and the section decodes with beam = 1",
            spec.spans.get("length_penalty"), "drop length_penalty, or set beam = W (W > 1) "
            "(a call with a beam of its own still uses it)", severity="warning"))
    return found


def elaborate_generate(d: ast.GenerateDef, g, evaluate, errors: ErrorSink, abort):
    """The checked spec, or None after adding errors; `evaluate` computes a constant."""
    values, spans = {}, {}
    for s in d.settings:
        if s.name not in SETTINGS:
            errors.add(f"unknown generate setting '{s.name}'", s.span,
                       did_you_mean(s.name, SETTINGS) or f"settings: {', '.join(SETTINGS)}")
            continue
        if s.name in values:
            errors.add(f"generate setting '{s.name}' is given twice", s.span)
            continue
        spans[s.name] = s.value.span
        if s.name in ROLES:
            if not isinstance(s.value, ast.Name):
                kind = "an output" if s.name == "logits" else "an input"
                errors.add(f"generate setting '{s.name}' names {kind} of the model",
                           s.value.span, f"write e.g. `{s.name} = {s.name}`")
                continue
            values[s.name] = s.value.id
            continue
        try:
            v = evaluate(s.value)
        except abort:
            continue
        if s.name in TOKENS:
            ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or \
                (isinstance(v, str) and v != "")
            if not ok:
                errors.add(f"generate setting '{s.name}' must be a token (a string) or a token "
                           f"id (an int >= 0), got {show_value(v)}", s.value.span)
                continue
        elif s.name in STRINGS:
            texts = [v] if isinstance(v, str) else v
            if not isinstance(texts, (list, tuple)) or not texts or \
                    not all(isinstance(t, str) and t for t in texts):
                errors.add(f"generate setting '{s.name}' must be a string or a list of "
                           f"non-empty strings, got {show_value(v)}", s.value.span,
                           f"e.g. `{s.name} = [\"\\n\\n\", \"The End\"]`")
                continue
            v = tuple(dict.fromkeys(texts))
        elif problem := sampling_problem(s.name, v):
            errors.add(f"generate setting '{s.name}': {problem}", s.value.span)
            continue
        elif SAMPLING[s.name][0] is float:
            v = float(v)
        values[s.name] = v
    for need, what in (("tokens", "input is the token stream"),
                       ("logits", "output holds the next-token logits")):
        if need not in values and not any(x.name == need for x in d.settings):
            errors.add(f"the generate section of '{d.name}' does not say which {what}", d.span,
                       f"add `{need} = NAME` naming the model's {what.split()[0]}")
    if "source" in values and "start" not in values:
        errors.add("an encoder-decoder (`source = ...`) needs `start`: the token its decoder "
                   "starts from", spans["source"], "add e.g. `start = 1`")
    if "stop_strings" in values and values.get("beam", 1) > 1:
        # NOTE: as for --stop-string with --beam (runtime/generate.options_from)
        errors.add("generate setting 'stop_strings' works with greedy decoding and sampling, "
                   f"not with beam search (beam = {values['beam']})", spans["stop_strings"],
                   "drop one of them, or end the beams at a stop token (`stop = ...`)")
        return None
    if (problem := returns_problem(values, lambda k: f"{k} = {values[k]}")) is not None:
        errors.add(f"generate setting 'num_return_sequences': {problem[0]}",
                   spans["num_return_sequences"], problem[1])
        return None
    if any(k not in values for k in ("tokens", "logits")):
        return None
    return _check_roles(g, values, spans, errors)


def _check_roles(g, values: dict, spans: dict, errors: ErrorSink):
    span = spans.get
    tok = _input(g, values["tokens"], span("tokens"), errors)
    src = _input(g, values["source"], span("source"), errors) if "source" in values else None
    if src is not None and values["source"] == values["tokens"]:
        # NOTE: else the logits were blamed for reading an input generation cannot feed
        errors.add(f"'source' and 'tokens' both name input '{values['tokens']}': an "
                   "encoder-decoder's source and its decoder's token stream are two inputs",
                   span("source"), "name the encoder's input in `source`, the decoder's in "
                   "`tokens`")
        return None
    out = g.outputs.get(values["logits"])
    if out is None:
        errors.add(f"'{values['logits']}' is not an output of model '{g.model}'",
                   span("logits"), did_you_mean(values["logits"], list(g.outputs)) or
                   f"outputs: {', '.join(g.outputs) or 'none'} (declare it with `output NAME`)")
    if tok is None or out is None or (src is None and "source" in values):
        return None
    max_len = tok.shape[1]
    logits = g.node(out)
    if logits.type is None:
        return None
    ls = logits.shape
    if len(ls) != 3 or logits.dtype in INT_DTYPES or ls[1] != max_len or isinstance(ls[2], Sym):
        errors.add(f"logits '{values['logits']}' must be float [batch, {max_len}, vocab] (one "
                   f"row of next-token scores per position of '{values['tokens']}'), but it is "
                   f"{logits.type}", span("logits"),
                   "a [batch, vocab] output scores one position only; keep the time axis")
        return None
    if (made := _probabilities(g, out)) is not None:
        # NOTE: sampling and beam search read the scores as log-probabilities up to a constant;
        # a softmax's output in [0, 1] read so is squashed toward uniform: greedy text stayed
        # right while the temperature, top-k/top-p and the beams' scores silently were not
        errors.add(f"logits '{values['logits']}' are probabilities (a {made}), but generation "
                   "needs the scores before it: sampling and beam search would read the "
                   "probabilities as scores", span("logits"),
                   f"output the scores the {made} reads (e.g. `output logits = dense(h, "
                   f"vocab)`) and name them in `logits`")
        return None
    needed = g.ancestors([out])
    if g.inputs[values["tokens"]] not in needed:
        errors.add(f"logits '{values['logits']}' do not depend on the token stream "
                   f"'{values['tokens']}'", span("logits"))
        return None
    if _unfed_inputs(g, values, needed, span("logits"), errors):
        return None
    # NOTE: the vocabulary is known here; an id past it waited for the first prompt
    past = [n for n in TOKENS if isinstance(values.get(n), int) and values[n] >= ls[2]]
    for name in past:
        errors.add(f"{name} token id {values[name]} is outside the vocabulary "
                   f"(0..{ls[2] - 1}) of logits '{values['logits']}'", span(name))
    if past:
        return None
    rest = {k: v for k, v in values.items() if k in SAMPLING or k in STRINGS}
    return GenerateSpec(values["tokens"], values["logits"], int(max_len), int(ls[2]),
                        values.get("source"), values.get("start"), values.get("stop"),
                        rest, dict(spans))


def _probabilities(g, out: int) -> str | None:
    """'softmax' or 'sigmoid' when output `out` is one over its last axis (as an op or a layer's
    `activation =`), through ops that keep its rows; else None."""
    node = producer(g, out)
    if node.op in ("softmax", "sigmoid"):
        axis, rank = node.attrs.get("axis", -1), len(node.type.shape)
        return node.op if not isinstance(axis, int) or axis % rank == rank - 1 else None
    act = node.attrs.get("activation")
    return act if act in ("softmax", "sigmoid") else None


def _unfed_inputs(g, values: dict, needed: set, span: Span | None, errors: ErrorSink) -> bool:
    """Errors for each input the logits read besides the token stream and the source: generation
    has nothing to feed it (zeros would be a silent wrong answer). True when there was one."""
    fed = {values["tokens"], values.get("source")}
    unfed = [(name, nid) for name, nid in g.inputs.items() if nid in needed and name not in fed]
    feeds = f"the token stream '{values['tokens']}'" + (
        f" and the source '{values['source']}'" if values.get("source") else "")
    for name, nid in unfed:
        decl = g.node(nid).span
        at = f" (declared at {decl.file}:{decl.line})" if decl else ""
        errors.add(f"logits '{values['logits']}' read input '{name}', which generation cannot "
                   f"feed: it feeds only {feeds}", span,
                   f"compute '{name}'{at} inside the model from the tokens, or make it a "
                   "`param`")
    return bool(unfed)


def _input(g, name: str, span: Span | None, errors: ErrorSink):
    nid = g.inputs.get(name)
    if nid is None:
        errors.add(f"'{name}' is not an input of model '{g.model}'", span,
                   did_you_mean(name, list(g.inputs)) or
                   f"inputs: {', '.join(g.inputs) or 'none'}")
        return None
    node = g.node(nid)
    shape = node.shape
    if node.dtype not in INT_DTYPES or len(shape) != 2 or isinstance(shape[1], Sym):
        errors.add(f"'{name}' must be int token ids [batch, len] with a concrete len, but it is "
                   f"{node.type}", span, f"declare it e.g. `input {name}: int32[batch, maxlen]`")
        return None
    return node
