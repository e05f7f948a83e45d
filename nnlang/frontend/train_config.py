"""The train section: settings checked against the optimizer, schedule and dataset registries
and gathered into a `TrainConfig` that the CLI's flags can override.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from nnlang.errors import ErrorSink, did_you_mean
from nnlang.frontend import ast
from nnlang.ops.signature import BindError, check_kind
from nnlang.ops.optim import OPTIMIZERS, SCHEDULES


@dataclass(frozen=True)
class Choice:
    """A named choice with options, e.g. adam(lr = 1e-3) or imdb(vocab = 20000)."""
    name: str
    options: dict = field(default_factory=dict)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({args})"


@dataclass(frozen=True)
class TrainConfig:
    data: Choice | None = None
    optimizer: Choice = Choice("adam", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999,
                                        "eps": 1e-8, "weight_decay": 0.0})
    schedule: Choice | None = None
    batch: int = 32
    epochs: int = 1
    val_split: float = 0.0
    seed: int = 0
    clip_norm: float | None = None
    l2: float = 0.0

    def with_overrides(self, **kw) -> "TrainConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


_SCALARS = {"batch": "int", "epochs": "int", "val_split": "float", "seed": "int",
            "clip_norm": "float", "l2": "float"}
SETTINGS = ("data", "optimizer", "schedule", *_SCALARS)


def _choice(value, registry: dict, what: str, span, errors: ErrorSink, calls: dict):
    name, options = (value, {}) if isinstance(value, str) else value
    if name not in registry:
        errors.add(f"unknown {what} '{name}'", span,
                   did_you_mean(name, registry) or f"{what}s: {', '.join(sorted(registry))}")
        return None
    sig = registry[name].sig
    try:
        bound = sig.bind([], options)
    except BindError as err:
        errors.add(f"{name}() {err.message}", span, err.hint)
        return None
    for p in sig.params:
        none_ok = bound[p.name] is None and not p.required and p.default is None
        problem = None if none_ok else check_kind(p.kind, bound[p.name], False)
        if problem:
            errors.add(f"{name}() argument '{p.name}': {problem}", span)
            return None
    return Choice(name, bound)


def _data_choice(value, span, errors: ErrorSink):
    name, options = (value, {}) if isinstance(value, str) else value
    if any(name.endswith(ext) for ext in (".npz", ".csv")) or "/" in name:
        return Choice(name, options)
    from nnlang.data.registry import canonical_name, list_datasets
    names = list_datasets()
    if canonical_name(name) is None:
        errors.add(f"unknown dataset '{name}'", span,
                   did_you_mean(name, names) or f"datasets: {', '.join(names)}, or a .npz/.csv")
        return None
    return Choice(name, options)


def elaborate_train(t: ast.TrainDef, evaluate, errors: ErrorSink, abort) -> TrainConfig:
    """Evaluates each setting with `evaluate` (the model's hyper-parameters are in scope)."""
    values: dict = {}
    for s in t.settings:
        if s.name not in SETTINGS:
            errors.add(f"unknown train setting '{s.name}'", s.span,
                       did_you_mean(s.name, SETTINGS) or f"settings: {', '.join(SETTINGS)}")
            continue
        if s.name in values:
            errors.add(f"train setting '{s.name}' is given twice", s.span)
            continue
        if s.name in ("data", "optimizer", "schedule") and isinstance(s.value, ast.Call):
            try:
                opts = {k.name: evaluate(k.value) for k in s.value.kwargs}
            except abort:
                continue
            if s.value.args:
                errors.add(f"{s.value.func}() takes keyword arguments only", s.value.span,
                           f"e.g. {s.value.func}(lr = 1e-3)")
                continue
            raw = (s.value.func, opts)
        elif s.name in ("data", "optimizer", "schedule") and isinstance(s.value, ast.Name):
            raw = s.value.id
        else:
            try:
                raw = evaluate(s.value)
            except abort:
                continue
        span = s.value.span
        if s.name == "optimizer":
            value = _choice(raw, OPTIMIZERS, "optimizer", span, errors, {})
        elif s.name == "schedule":
            value = _choice(raw, SCHEDULES, "schedule", span, errors, {})
        elif s.name == "data":
            value = _data_choice(raw, span, errors) if isinstance(raw, (str, tuple)) else None
            if value is None and not isinstance(raw, (str, tuple)):
                errors.add(f"data must be a dataset like imdb(...) or a file path, got {raw!r}",
                           span)
        else:
            problem = check_kind(_SCALARS[s.name], raw, False)
            if problem or (s.name in ("batch", "epochs") and raw < 1) or (
                    s.name == "val_split" and not 0 <= raw < 1):
                errors.add(f"train setting '{s.name}': {problem or f'{raw!r} is out of range'}",
                           span)
                continue
            value = float(raw) if _SCALARS[s.name] == "float" else raw
        if value is not None:
            values[s.name] = value
    return TrainConfig(**values)
