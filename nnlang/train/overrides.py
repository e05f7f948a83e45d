"""Resolving what a run trains with: the train section of the file, then `--set` values (model
hyper-parameters or train settings, told apart by the model's own parameter names), then flags.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

from nnlang.errors import Given, NNError, Span, did_you_mean
from nnlang.frontend.elaborate import Program, layer_weights_hint, load_text
from nnlang.frontend.lint import retrained
from nnlang.frontend.source import load_source, read_source
from nnlang.frontend.train_config import (FLAGS, PENALTY_LISTS, Choice, TrainConfig,
                                         frozen_penalized, nothing_to_clip, option_problem,
                                         options_problem, range_problem, rateless_penalty,
                                         rising_schedule, setting_habit)
from nnlang.train import feeds
from nnlang.ops.optim import OPTIMIZERS, SCHEDULES, unknown_choice_hint
from nnlang.ops.signature import show_value

_SCALARS = {f.name: f.type for f in fields(TrainConfig)
            if f.name not in ("data", "optimizer", "schedule")}


def source_of(program_or_path) -> tuple[str | None, str]:
    """(source text, file name) of a path, source text or `Program`."""
    if isinstance(program_or_path, Program):  # NOTE: a Net has a graph() method too
        f = program_or_path.file
        return (read_source(f) if f and Path(f).is_file() else None), f
    return load_source(program_or_path)


def _hparam_names(source: str | None, file: str) -> set[str]:
    from nnlang.frontend import ast
    from nnlang.frontend.parser import parse
    if source is None:
        return set()
    module = parse(source, file)
    return {p.name for m in module.items if isinstance(m, ast.ModelDef) for p in m.params}


def split_overrides(sets: dict, source: str | None, file: str) -> tuple[dict, dict]:
    """`--set` values -> (model hyper-parameters, train settings). A model hyper-parameter of
    that name wins; else lr, optimizer/schedule options and train settings go to training."""
    hp_names = _hparam_names(source, file) if sets else set()
    train_keys = {"lr", "optimizer", "schedule", "data", *_SCALARS}
    train_keys |= {p.name for o in (*OPTIMIZERS.values(), *SCHEDULES.values())
                   for p in o.sig.params}
    hp = {k: v for k, v in sets.items() if k in hp_names or k not in train_keys}
    spans = getattr(sets, "spans", {})   # NOTE: so an unknown name is located on the command line
    return (Given(hp, {k: spans[k] for k in hp if k in spans}),
            {k: v for k, v in sets.items() if k not in hp})


def apply_overrides(cfg: TrainConfig, kw: dict, spans: dict | None = None) -> TrainConfig:
    """Flag values onto a config: lr and other optimizer/schedule options go into those choices;
    `data` (a name/spec) keeps the options the new dataset accepts. `spans`: where each --set
    value was given (`Given.spans`), which an error about it points at."""
    kw, spans = dict(kw), spans or {}   # NOTE: a None here is --set X=none: it switches X off
    named = set(kw)
    opt, sched = cfg.optimizer, cfg.schedule
    for k in ("optimizer", "data"):
        if k in kw and kw[k] is None:
            raise NNError(f"train setting '{k}' cannot be none", given_span(spans, k))
    if "optimizer" in kw:
        with given_at(spans, "optimizer"):
            name, given = _spelled(kw.pop("optimizer"))
        opt = _choice(name, OPTIMIZERS, "optimizer", {"lr": opt.options.get("lr"),
                                                      **_options_of(name, OPTIMIZERS, kw),
                                                      **given}, spans)
    if "schedule" in kw:
        name = kw.pop("schedule")
        if name is not None:
            with given_at(spans, "schedule"):
                name, given = _spelled(name)
            sched = _choice(name, SCHEDULES, "schedule",
                            {**_options_of(name, SCHEDULES, kw), **given}, spans)
        else:
            sched = None
    scalars = {}
    for k, v in kw.items():
        if k == "data":
            continue
        with given_at(spans, k):
            if k in _SCALARS:
                scalars[k] = _coerce(k, v)
            elif k in opt.options:
                opt = Choice(opt.name, {**opt.options, k: _like(k, opt.options[k], v)})
            elif sched is not None and k in sched.options:
                sched = Choice(sched.name, {**sched.options, k: _like(k, sched.options[k], v)})
            else:
                raise NNError(f"unknown train setting '{k}'", given_span(spans, k, name=True),
                              hint=_unknown_hint(k, opt, sched))
    for k in kw.keys() & spans.keys():
        # NOTE: TrainConfig checks the ranges again, but cannot tell where a value came from
        given = {**scalars, **opt.options, **(sched.options if sched else {})}
        if k in given and (problem := range_problem(k, given[k])):
            raise NNError(f"train setting '{k}': {problem}", given_span(spans, k))
    # NOTE: only where --set changed the optimizer's options, as for the rate below
    if named & {"optimizer", *opt.options} and (clash := options_problem(opt.name, opt.options)):
        where = next((given_span(spans, k) for k in (clash[0], "optimizer") if k in spans), None)
        raise NNError(clash[1], where, clash[2])
    # NOTE: only where a flag or --set changed the rate or the schedule: a checkpoint written
    # before this check (a resumed run, eval) keeps loading; the train section's is checked there
    rate = named & {"min_lr", "lr", "schedule", "optimizer"}
    if rate and (problem := rising_schedule(opt, sched)):
        where = next((given_span(spans, k) for k in ("min_lr", "lr", "schedule", "optimizer")
                      if k in rate & spans.keys()), None)
        # NOTE: a flag (--lr) has no place on the command line to point at: say it instead
        flags = sorted(FLAGS[k] for k in rate if k in FLAGS)
        origin = f" (given by {' and '.join(flags)})" if where is None and flags else ""
        raise NNError(problem[0] + origin, where, problem[1])
    data = cfg.data
    if kw.get("data") is not None:
        # NOTE: as `_spelled`: --set data=true is named 'true' (.nn's spelling), not 'True'
        spec = kw["data"]
        with given_at(spans, "data"):
            data = feeds.replace_data(cfg.data, spec if isinstance(spec, str)
                                      else show_value(spec))
    return replace(cfg, data=data, optimizer=opt, schedule=sched, **scalars)


def given_span(spans: dict, key: str, name: bool = False):
    """Where the --set value `key` (its `name`) was given, or None."""
    return spans[key][0 if name else 1] if key in spans else None


@contextmanager
def given_at(spans: dict, key: str):
    """An error without a place about the --set value `key` points at that value."""
    try:
        yield
    except NNError as err:
        if err.span is not None or key not in spans:
            raise
        raise NNError(err.message, given_span(spans, key), err.hint) from None


def _unknown_hint(k: str, opt: Choice, sched: Choice | None) -> str:
    """Where a --set name goes that is no setting of this run: an option of another optimizer
    or schedule needs that one named too; else the settings there are."""
    if habit := setting_habit(k):
        return habit
    for what, table, now in (("optimizer", OPTIMIZERS, opt), ("schedule", SCHEDULES, sched)):
        owners = [n for n, d in table.items() if any(p.name == k for p in d.sig.params)]
        if owners:
            which = f", not of {now.name}" if now else " (this run has none)"
            return (f"'{k}' is an option of {what} {', '.join(owners)}{which}: "
                    f"add --set {what}={owners[0]}")
    known = [*_SCALARS, "optimizer", "schedule", *opt.options, *(sched.options if sched else ())]
    return f"settings: {', '.join(known)} (optimizer {opt.name})"


def _spelled(value) -> tuple[str, dict]:
    """An optimizer or schedule as --set gives it: a name, or a call `step(step_size=1)`
    (read as --data reads one)."""
    from nnlang.data.registry import _parse_spec
    # NOTE: a value that is no name (--set optimizer=true) is named as .nn spells it, not 'True'
    return _parse_spec(value if isinstance(value, str) else show_value(value), {})


def _options_of(name: str, registry: dict, kw: dict) -> dict:
    """The --set values that are options of the optimizer or schedule `name`, taken out of kw:
    `--set schedule=step --set step_size=1` gives the new schedule its step_size."""
    names = {p.name for p in registry[name].sig.params} if name in registry else set()
    return {k: kw.pop(k) for k in list(kw) if k in names}


def _choice(name: str, registry: dict, what: str, keep: dict, spans: dict) -> Choice:
    from nnlang.ops.signature import BindError
    if name not in registry:
        raise NNError(f"unknown {what} '{name}'", given_span(spans, what),
                      hint=unknown_choice_hint(name, what, registry))
    sig = registry[name].sig
    names = {p.name for p in sig.params}
    try:
        bound = sig.bind([], {k: v for k, v in keep.items() if k in names and v is not None})
    except BindError as err:
        raise NNError(f"{what} {name}: {err}", given_span(spans, what),
                      hint=f"give its options with --set, e.g. "
                      f"--set {what}={name} --set NAME=VALUE ({sig})") from None
    # NOTE: as the train section checks them: bind alone let `cosine(warmup=2.5)` through
    for p in sig.params:
        if problem := option_problem(p, bound[p.name]):
            raise NNError(f"{what} {name}: argument '{p.name}': {problem}",
                          given_span(spans, p.name) or given_span(spans, what),
                          hint=f"its options: {sig}")
    return Choice(name, bound)


def _like(k: str, old, v):
    """A `--set` value for an optimizer or schedule option of the type the option holds
    (`--lr 1` is the float 1.0); another type is an error, not a silent change."""
    if isinstance(old, bool):
        if not isinstance(v, bool):
            raise NNError(f"train setting '{k}' is true or false, got {show_value(v)}")
        return v
    if isinstance(old, (int, float)):
        return _number(k, v, whole=isinstance(old, int))
    return v


def _number(k: str, v, whole: bool):
    """`v` as the int or float a train setting holds; anything else is an error."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise NNError(f"train setting '{k}' must be a number, got {show_value(v)}")
    if not math.isfinite(v):
        raise NNError(f"train setting '{k}' must be finite, got {v!r}")
    if whole and v != int(v):
        raise NNError(f"train setting '{k}' must be a whole number, got {v!r}")
    return int(v) if whole else float(v)


def _coerce(k: str, v):
    kind = str(_SCALARS[k])
    if v is None and "None" in kind:
        return None
    if "tuple" in kind:   # l1_on, l2_on: block paths
        items = (v,) if isinstance(v, str) else tuple(v) if isinstance(v, (list, tuple)) else ()
        if not items or not all(isinstance(x, str) for x in items):
            raise NNError(f"train setting '{k}' is a list of block paths, got {show_value(v)}")
        return items
    if "str" in kind:  # monitor, mode, init_from: checked where the config is built
        v = str(v) if isinstance(v, os.PathLike) else v
        if not isinstance(v, str):
            raise NNError(f"train setting '{k}' is a name, got {show_value(v)}")
        return v
    # NOTE: the range is checked by TrainConfig itself (train_config.RANGES), which names the
    # flag or --set that gave the value
    return _number(k, v, whole="int" in kind)


def resolve(program_or_path, config=None, sets: dict | None = None, model: str | None = None,
            base: TrainConfig | None = None, base_overrides: dict | None = None):
    """(program, config, source, file, model overrides) from a path/source/Program, `--set`
    values and flag overrides (`config` is a TrainConfig, or a dict of overrides)."""
    source, file = source_of(program_or_path)
    spans = getattr(sets, "spans", {})
    hp, train_sets = split_overrides(Given(sets or {}, spans), source, file)
    hp = Given({**(base_overrides or {}), **hp}, hp.spans)
    if isinstance(program_or_path, Program):
        program = program_or_path
        if any(program.hparams.get(k) != v for k, v in hp.items()):
            raise NNError(f"cannot apply hyper-parameters {', '.join(hp)} to an elaborated "
                          "Program", hint="pass the .nn path or source text instead")
    else:
        program = _load_for(source, file, hp, model, resuming=base is not None)
        if base is not None and program.train is not None and hp != (base_overrides or {}):
            # NOTE: a resumed run keeps its checkpoint's settings, but a hyper-parameter the
            # train section reads (`optimizer = sgd(lr = lr)`) changes the setting it feeds
            before = load_text(source, file, base_overrides or {}, model).train
            base = replace(base, **{f.name: getattr(program.train, f.name)
                                    for f in fields(TrainConfig)
                                    if getattr(program.train, f.name) != getattr(before, f.name)})
    if isinstance(config, TrainConfig):
        cfg = config
        if problem := rising_schedule(cfg.optimizer, cfg.schedule):   # the Python API's
            raise NNError(*problem)
    else:
        cfg = base or program.train or TrainConfig()
        # NOTE: an unset flag (None) must not hide the same setting given with --set
        flags = {k: v for k, v in (config or {}).items() if v is not None}
        for k in flags.keys() & train_sets.keys():
            # NOTE: as --set X twice: which one was meant is not ours to guess (the flag won)
            flag = FLAGS.get(k, k)
            raise NNError(f"train setting '{k}' is given twice: {flag} {show_value(flags[k])} "
                          f"and --set {k}={show_value(train_sets[k])}", given_span(spans, k),
                          hint=f"give it once: {flag} VALUE, or --set {k}=VALUE")
        cfg = apply_overrides(cfg, {**train_sets, **flags}, spans)
    _check_penalty_lists(cfg, program, spans)
    _check_clip(cfg, program, spans)
    program = _placed(program, cfg, spans)
    if program.train is None or any(getattr(cfg, k) != getattr(program.train, k)
                                    for k in ("l2", "l1", "l2_on", "l1_on")):
        # NOTE: the warnings were linted with the file's penalties; with --set l2=... an
        # unreached weight is shrunk, not left as it is
        program = replace(program, warnings=retrained(program.warnings, program.graph,
                                                      program.train, cfg))
    return program, cfg, source, file, hp


# the train settings that make ops of the step, which `Graph.train_spans` places
_PLACED = ("optimizer", "clip_norm", "l1", "l2")


def _placed(program: Program, cfg: TrainConfig, spans: dict) -> Program:
    """The program whose training ops point where their setting came from: the file's line
    for a value the file gives, the --set value for one given there, else (fit's config, a
    flag, a resumed run's) the setting itself, outside any file: `--emit` had placed the ops
    of `--set optimizer=sgd` at the file's `optimizer = adam(...)` line."""
    file_says = program.train or TrainConfig()   # NOTE: a model without a section: its defaults
    moved = {}
    for key in _PLACED:
        value = getattr(cfg, key)
        if value == getattr(file_says, key):
            continue
        # NOTE: an optimizer changed by an option alone (--set momentum=0.9) is at that option
        given = [key, *(value.options if key == "optimizer" else ())]
        moved[key] = next((given_span(spans, k) for k in given if k in spans), None) or \
            _config_span(key, value)
    if not moved:
        return program
    graph = program.graph.copy()
    graph.train_spans = {**graph.train_spans, **moved}
    return replace(program, graph=graph)


def _config_span(key: str, value) -> Span:
    text = f"{key} = {value if isinstance(value, Choice) else show_value(value)}"
    return Span("<config>", 1, 1, 1, len(text) + 1, text)


def _load_for(source: str, file: str, hp: dict, model, resuming: bool):
    """The program; when resuming, a model the file no longer defines is named as the
    checkpoint's."""
    try:
        return load_text(source, file, hp, model)
    except NNError as err:
        if not resuming or model is None or "no model named" not in err.message:
            raise
        raise NNError(f"the run being resumed trained model '{model}', which this file does "
                      f"not define ({err.message})", hint=err.hint or "pass the .nn file the "
                      "run was trained from") from None


def _check_penalty_lists(cfg: TrainConfig, program, spans: dict) -> None:
    """l1_on / l2_on from --set (or fit's settings) name trainable weights of the model, and
    their penalty has a strength: the train section's own are checked where they are written
    (elaborate.penalized_weight), with the same words (train_config's frozen_penalized and
    rateless_penalty). Either slip left the penalty a no-op."""
    graph = program.graph
    for key in PENALTY_LISTS:
        names, rate = getattr(cfg, key), key[:2]
        for name in names or ():
            if name not in graph.params:
                raise NNError(f"train setting '{key}': the model has no weight '{name}'",
                              given_span(spans, key),
                              hint=layer_weights_hint(name, graph.params) or
                              did_you_mean(name, list(graph.params)) or
                              f"its weights: {', '.join(list(graph.params)[:8])}")
            if not graph.node(graph.params[name]).attrs.get("trainable", True):
                why, hint = frozen_penalized(name)
                raise NNError(f"train setting '{key}' {why}", given_span(spans, key), hint=hint)
        # NOTE: --set l2=0 turns off a penalty whose l2_on the file gives; that is no slip
        given = names != (program.train and getattr(program.train, key))
        if names and given and not getattr(cfg, rate):
            raise NNError(f"train setting '{key}' {rateless_penalty(key)}", given_span(spans, key),
                          hint=f"set its strength too, e.g. --set {rate}=1e-4")


def _check_clip(cfg: TrainConfig, program, spans: dict) -> None:
    """--set clip_norm=... over a model with no trainable weight is refused at its value, as
    the train section's own is (elaborate): it was taken silently, clipping nothing.
    NOTE: a Python config's stays a no-op, as before: it has no place to be refused at."""
    graph = program.graph
    if "clip_norm" in spans and cfg.clip_norm and not any(
            graph.node(nid).attrs.get("trainable", True) for nid in graph.params.values()):
        message, hint = nothing_to_clip(cfg.clip_norm, program.model, bool(graph.params))
        raise NNError(message, given_span(spans, "clip_norm"), hint)


# *** evaluation ***
