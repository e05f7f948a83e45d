"""The train section: settings checked against the optimizer, schedule and dataset registries
and gathered into a `TrainConfig` that the CLI's flags can override.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from nnlang.errors import ErrorSink, NNError, did_you_mean, foreign_name
from nnlang.frontend import ast
from nnlang.ir.dims import DEFAULT_BATCH, MAX_BATCH
from nnlang.ops.signature import OPTION_HABITS, BindError, check_kind, show_value
from nnlang.ops.optim import OPTIMIZERS, SCHEDULES, unknown_choice_hint


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
    batch: int = DEFAULT_BATCH
    epochs: int = 1
    val_split: float = 0.0
    seed: int = 0
    clip_norm: float | None = None
    l2: float = 0.0
    l1: float = 0.0
    early_stop: int | None = None     # patience in epochs without improvement of `monitor`
    monitor: str | None = None        # "val_<name>", "train_<name>" or "loss"; default val_loss
    mode: str | None = None           # "min" | "max"; default from what the monitor names
    init_from: str | None = None      # a run directory or checkpoint to start the weights from
    # the weights `l1` / `l2` apply to (block paths); None: every trainable matrix and kernel
    l1_on: tuple | None = None
    l2_on: tuple | None = None

    def watched(self, graph) -> tuple[str, str]:
        """(monitored value, mode) that early stopping and the plateau schedule follow in the
        model `graph`."""
        monitor = self.monitor or "val_loss"
        # NOTE: a monitor whose way is unknown was refused (mode_problem) before a run watches it
        return monitor, self.mode or watchable(graph).get(monitor) or "max"

    def __post_init__(self):
        # The train section's values were checked where they are written (with a span), so a
        # value out of range here came from a flag, --set or the Python API.
        for name, value in self.numbers():
            if problem := range_problem(name, value):
                flag = FLAGS.get(name)
                given = f"{flag} or --set {name}=..." if flag else f"--set {name}=..."
                raise NNError(f"train setting '{name}' (given by {given}): {problem}")

    def numbers(self):
        """(name, value) of every train setting, optimizer and schedule option."""
        yield from ((k, getattr(self, k)) for k in _SCALARS)
        yield from self.optimizer.options.items()
        yield from (self.schedule.options.items() if self.schedule else ())

    def penalties(self, name: str, rank: int) -> dict:
        """{"l2": factor, "l1": factor} of the penalties on the trainable weight `name` of that
        rank, those with a factor only: on the weights l2_on / l1_on name, else Keras-style on
        every weight matrix and kernel (rank >= 2), not biases. The one rule for the loss
        (`passes/pipeline.total_loss`) and the unreached-weight warning (`frontend/lint`)."""
        found = {}
        for key, factor, on in (("l2", self.l2, self.l2_on), ("l1", self.l1, self.l1_on)):
            if factor and (name in on if on is not None else rank >= 2):
                found[key] = factor
        return found

    def with_overrides(self, **kw) -> "TrainConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


_SCALARS = {"batch": "int", "epochs": "int", "val_split": "float", "seed": "int",
            "clip_norm": "float", "l2": "float", "l1": "float", "early_stop": "int",
            "monitor": "str", "mode": "str"}
PENALTY_LISTS = ("l1_on", "l2_on")
SETTINGS = ("data", "optimizer", "schedule", *_SCALARS, "init_from", *PENALTY_LISTS)
# what `nnlang train --set NAME=...` takes besides hyper-parameters
TRAIN_SET_KEYS = ("lr", *SETTINGS, *dict.fromkeys(
    p.name for o in (*OPTIMIZERS.values(), *SCHEDULES.values()) for p in o.sig.params))
FLAGS = {"lr": "--lr", "epochs": "--epochs", "batch": "--batch", "seed": "--seed",
         "val_split": "--val-split"}


def _unit(v) -> bool:
    return 0 <= v < 1


# The valid range of every optimizer and schedule option and numeric train setting, by name:
# a name means the same thing in every optimizer (see nnlang/ops/optim.py).
RANGES = {
    "lr": (lambda v: v > 0, "> 0"),
    "beta1": (_unit, "in [0, 1)"),
    "beta2": (_unit, "in [0, 1)"),
    "alpha": (_unit, "in [0, 1)"),
    "momentum": (_unit, "in [0, 1)"),
    "eps": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: v > 0, "> 0"),
    "step_size": (lambda v: v >= 1, ">= 1"),
    "warmup": (lambda v: v >= 0, ">= 0 (steps)"),
    "min_lr": (lambda v: v >= 0, ">= 0"),
    "batch": (lambda v: 1 <= v <= MAX_BATCH, "from 1 to 2**31 - 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "val_split": (_unit, "in [0, 1)"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "clip_norm": (lambda v: v >= 0, ">= 0 (0, or leaving it out, means no clipping)"),
    "l2": (lambda v: v >= 0, ">= 0"),
    "l1": (lambda v: v >= 0, ">= 0"),
    "early_stop": (lambda v: v >= 1, ">= 1 (epochs without improvement before stopping)"),
    # NOTE: PyTorch's count is one less: its patience = 0 (word_language_model's lr /= 4 after
    # any epoch without improvement) is refused here, so the text says what it is
    "patience": (lambda v: v >= 1, ">= 1 (epochs without improvement before a reduction; "
                 "PyTorch's ReduceLROnPlateau(patience = 0), which reduces after the first, is "
                 "patience = 1 here)"),
    "factor": (lambda v: 0 < v < 1, "in (0, 1)"),
}
# the ranges whose ends float32 rounding can reach (a tiny positive value, or one just below 1)
FLOAT32_CHECKED = {"lr", "beta1", "beta2", "alpha", "momentum", "eps", "gamma", "factor"}
# the settings whose 0 means "off": a positive value that float32 rounds to 0 is neither
ZERO_IS_OFF = {"clip_norm"}
# string settings with a fixed set of values
CHOICES = {"mode": ("min", "max")}


def range_problem(name: str, value) -> str | None:
    """Why `value` is not a valid `name` (None when it is, or when `name` has no range)."""
    if name in CHOICES and value is not None:
        ok = value in CHOICES[name]
        # NOTE: Keras' EarlyStopping and ReduceLROnPlateau default to mode = "auto"
        auto = "; leave mode out for Keras' \"auto\": the monitored value decides it" \
            if name == "mode" and value == "auto" else ""
        return None if ok else \
            f"{value!r} is not one of {', '.join(map(repr, CHOICES[name]))}{auto}"
    if name not in RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"{value!r} is not a finite number"
    test, text = RANGES[name]
    if not test(value):
        return f"{value!r} is out of range: {name} must be {text}"
    if name in FLOAT32_CHECKED and not test(float(np.float32(value))):
        # NOTE: the update runs in float32 (training's precision): lr = 1e-320 is 0 there and
        # trained nothing with exit 0; beta2 = 0.9999999999 is 1 and eps = 1e-50 is 0, and
        # both gave NaN, reported as divergence with the hint to lower the learning rate
        return (f"{value!r} is {float(np.float32(value))!r} in float32, the precision training "
                f"runs in: {name} must be {text} there")
    if name in ZERO_IS_OFF and value > 0 and np.float32(value) == 0:
        # NOTE: clip_norm = 1e-50 clipped every step to nothing (training stood still, exit 0)
        return (f"{value!r} is 0.0 in float32, the precision training runs in, so every step "
                f"would be clipped to nothing; {name} = 0 means no clipping")
    return None


def rising_schedule(optimizer: Choice, schedule: Choice | None) -> tuple[str, str] | None:
    """(message, hint) when a cosine schedule's floor min_lr is above the learning rate, or
    None. NOTE: its curve runs from lr to min_lr, so the "decay" would raise the rate over the
    run, which no one means (Keras' and PyTorch's cosine take it silently); plateau only ever
    lowers the rate (its floor is min(min_lr, lr)), so it needs no check."""
    lr = optimizer.options.get("lr")
    if schedule is None or schedule.name != "cosine" or not isinstance(lr, (int, float)) or \
            not lr > 0:   # NOTE: a rate out of its own range is that rate's error (range_problem)
        return None
    floor = schedule.options.get("min_lr", 0.0)
    if not isinstance(floor, (int, float)) or floor <= lr:
        return None
    return (f"schedule cosine: min_lr {floor:g} is above the learning rate {lr:g}, so the rate "
            f"would rise from {lr:g} to {floor:g} over the run",
            "min_lr is the floor the rate decays to: give it below lr (e.g. lr / 100), or "
            "leave it out (0); a rising start is `warmup = N` steps")


def watchable(graph) -> dict[str, str | None]:
    """The values `monitor` may name in the model `graph`, each with its default mode: min
    for the total loss, each named loss and a metric that is a loss op (`mae`,
    `cross_entropy`...), max for a metric op (`accuracy`: a score); None for a metric of the
    model's own making (`mean(abs(p - y))`), whose way the train section says (`mode`).
    Each is the epoch row's validation value (`val_<name>`) or training value (`train_<name>`;
    `loss` is `train_loss`, as Keras' monitor="loss"), so a run without validation data can
    stop early and keep best.npz too."""
    from nnlang.ops.registry import OPS
    # NOTE: by what the value is, not how it is spelled: a loss named `pen` is still minimised,
    # and a metric was always maximised, so best.npz kept an mae metric's worst epoch
    ways = {"metrics": "max", "losses": "min"}
    metrics = {m: ways.get(getattr(OPS.get(graph.node(nid).op), "family", ""))
               for m, nid in graph.metrics.items()}
    losses = {n: "min" for n in graph.losses} if len(graph.losses) > 1 else {}
    values = {"loss": "min", **losses, **metrics}
    return {**{f"val_{k}": v for k, v in values.items()},
            **{f"train_{k}": v for k, v in values.items()}, "loss": "min"}


def watched_value(monitor: str, val: dict | None, train: dict) -> float | None:
    """The epoch's value of `monitor` (a name `watchable` gives) from its validation results
    `val` or its training means `train`; None when the epoch has none (no validation data)."""
    if monitor.startswith("val_"):
        return (val or {}).get(monitor[len("val_"):])
    return train.get(monitor[len("train_"):] if monitor.startswith("train_") else monitor)


def monitor_problem(monitor: str, graph, given: str = "") -> tuple[str, str] | None:
    """(message, hint) when `monitor` names no value an epoch of the model `graph` reports;
    `given`: where the value came from when not the file (" (given by --set monitor=...)")."""
    names = watchable(graph)
    if monitor in names:
        return None
    return (f"monitor = {monitor!r}{given} names no validation or training value of model "
            f"'{graph.model}'", f"monitor one of: {', '.join(names)}")


def mode_problem(monitor: str, mode: str | None, graph,
                 given: str = "") -> tuple[str, str] | None:
    """(message, hint) when `monitor` is a metric of the model's own making and no `mode`
    says whether a higher or a lower value is better."""
    if mode is not None or monitor not in (names := watchable(graph)) or names[monitor]:
        return None
    return (f"monitor = {monitor!r}{given} is a metric of this model's own making: is a higher "
            "or a lower value better?", 'say which: mode = "min" (an error, lower is better) or '
            'mode = "max" (a score)')


def setting_span(program, name: str):
    """Where the train section of `program` sets `name` (None: not in the source)."""
    tdef = (getattr(program, "defs", None) or {}).get(f"train:{program.model}")
    for s in (tdef.settings if tdef else ()):
        if s.name == name:
            return s.value.span
    return None


def _choice(value, registry: dict, what: str, span, errors: ErrorSink, spans: dict):
    # NOTE: a name gives a str, a call `adam(lr = 1e-3)` a (name, options) tuple; anything else
    # (a number, none, a list, a quoted string from `--set`) is no choice at all
    if not isinstance(value, (str, tuple)):
        errors.add(f"{what} must be a name or a call with options, got {show_value(value)}", span,
                   f"{what}s: {', '.join(sorted(registry))}")
        return None
    name, options = (value, {}) if isinstance(value, str) else value
    if name not in registry:
        errors.add(f"unknown {what} '{name}'", span, unknown_choice_hint(name, what, registry))
        return None
    sig = registry[name].sig
    try:
        bound = sig.bind([], options)
    except BindError as err:
        errors.add(f"{name}() {err.message}", span, err.hint)
        return None
    ok = True
    for p in sig.params:
        if problem := option_problem(p, bound[p.name]):
            errors.add(f"{name}() argument '{p.name}': {problem}", spans.get(p.name, span))
            ok = False
    if ok and (clash := options_problem(name, bound)):
        errors.add(clash[1], spans.get(clash[0], span), clash[2])
        ok = False
    return Choice(name, bound) if ok else None


# NOTE: Keras' clipping options, written as train settings: `clipnorm` was taken for a
# misspelt clip_norm (it clips each weight's gradient on its own; clip_norm the global norm)
# and `clipvalue` got the list of settings, with no word that clipping by value is not here
CLIP_HABITS = ("clipnorm", "global_clipnorm", "clipvalue", "clip_value")


def setting_habit(name: str) -> str | None:
    """The hint for an unknown train setting that is Keras' gradient clipping, or None."""
    return OPTION_HABITS.get("clipvalue" if name == "clip_value" else name) \
        if name in CLIP_HABITS else None


def options_problem(name: str, options: dict) -> tuple[str, str, str] | None:
    """(the option to point at, message, hint) when options that each fit their range do not
    fit together, or None. NOTE: sgd(nesterov = true) without momentum ran plain SGD without a
    word; torch.optim.SGD refuses it ("Nesterov momentum requires a momentum")."""
    if name == "sgd" and options.get("nesterov") and not options.get("momentum"):
        return ("nesterov", "sgd(): nesterov = true needs a momentum: without one the update is "
                "plain SGD", "give a momentum, e.g. sgd(momentum = 0.9, nesterov = true) (as "
                "torch.optim.SGD requires), or leave nesterov out")
    return None


def option_problem(p, value) -> str | None:
    """Why `value` does not fit option `p` of an optimizer or schedule (its kind, then its
    range), or None: the one check for the train section and for --set."""
    if value is None and not p.required and p.default is None:
        return None
    return check_kind(p.kind, value, False) or range_problem(p.name, value)


def _hyphenated(e) -> str | None:
    """`fashion-mnist` written bare parses as fashion minus mnist: the name it meant, else
    None."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Call) and isinstance(e.func, str):  # imdb-sample(maxlen = 10)
        return e.func
    if isinstance(e, ast.BinOp) and e.op == "-":
        left, right = _hyphenated(e.left), _hyphenated(e.right)
        return f"{left}-{right}" if left and right else None
    return None


def _data_choice(name: str, args: list, options: dict, span, errors: ErrorSink, spans: dict):
    """`imdb`, `imdb(vocab = 10000)`, `"reg.csv"` or `csv("reg.csv", target = "y")`."""
    from nnlang.data import DataError
    from nnlang.data.registry import FILE_FORMS, canonical_name, check_options, list_datasets
    if args:
        forms = ", ".join(f'{f}("file{ext}", ...)' for f, ext in FILE_FORMS.items())
        if name not in FILE_FORMS or len(args) != 1:
            errors.add(f"{name}() takes keyword arguments only", span,
                       f"e.g. imdb(vocab = 20000); a file is read with {forms}")
            return None
        if not isinstance(args[0], str) or not args[0].lower().endswith(FILE_FORMS[name]):
            errors.add(f"{name}() reads a {FILE_FORMS[name]} file, got {show_value(args[0])}",
                       span,
                       f"a file is read with {forms}")
            return None
        name = args[0]
    elif not (name.lower().endswith((".npz", ".csv")) or "/" in name
              or canonical_name(name) is not None):
        names = list_datasets()
        errors.add(f"unknown dataset '{name}'", span,
                   did_you_mean(name, names) or f"datasets: {', '.join(names)}, or a .npz/.csv")
        return None
    ok = True
    for key in options or [None]:  # one at a time, so each error points at its own option
        try:
            check_options(name, {key: options[key]} if key else {})
        except DataError as err:
            errors.add(err.message, spans.get(key, span), err.hint)
            ok = False
    return Choice(name, options) if ok else None


def _int_hint(name: str, raw) -> str | None:
    """`epochs = 10.0` or `batch = "64"`: the integer it spells."""
    if _SCALARS.get(name) != "int" or isinstance(raw, bool):
        return None
    if isinstance(raw, float) and raw.is_integer():
        return f"write it without a decimal point: {name} = {int(raw)}"
    if isinstance(raw, str) and raw.strip().isdigit():
        return f"write the number without quotes: {name} = {raw.strip()}"
    return None


def _keyword_example(d, args: list) -> str | None:
    """`exponential(0.9)` -> `exponential(gamma = 0.9)`: the positional values under the names
    of the options they most likely meant (required ones first, as the signature lists them)."""
    if d is None:
        return None
    names = [p.name for p in d.sig.params if p.required] + \
            [p.name for p in d.sig.params if not p.required]
    shown = ", ".join(f"{n} = {show_value(v)}" for n, v in zip(names, args))
    return f"name each option: {d.name}({shown})"


_EARLY = ("early stopping is early_stop = 3 (Keras' EarlyStopping(patience = 3)), following "
          "monitor (default \"val_loss\") and mode")
_BEST = ("the best epoch's weights are kept as best.npz in the run directory (with validation "
         "data), and nnlang eval, predict and export use them")
_PER_ROW = ("give the weights as an input of the model (an array of the data) and write the "
            "loss with them: loss mean(per_row_loss * w)")
_ONE_PROCESS = "the data is read in the training process: leave it out"
# settings of Keras' compile()/fit() and PyTorch loops that nnlang says elsewhere (a rename,
# as batch_size, is in FOREIGN_NAMES)
SAID_ELSEWHERE = {
    "loss": "the loss is part of the model: `loss cross_entropy(logits, label)` in its body",
    "metrics": "metrics are part of the model: `metric acc = accuracy(logits, label)` in its body",
    "metric": "metrics are part of the model: `metric acc = accuracy(logits, label)` in its body",
    "device": "the device is a flag: `nnlang train --backend cupy` for an NVIDIA GPU (numba, "
              "the default, runs on the CPU)",
    "shuffle": "the training data is shuffled every epoch (seeded by seed): leave it out",
    "callbacks": f"callbacks are settings: {_EARLY}; {_BEST} (ModelCheckpoint("
                 "save_best_only = True)); schedule = plateau(...) is ReduceLROnPlateau",
    "patience": f"{_EARLY}; the plateau schedule's is schedule = plateau(patience = ...)",
    **dict.fromkeys(("early_stopping", "EarlyStopping"), _EARLY),
    "min_delta": "any improvement of monitor beyond float32 rounding counts (Keras' min_delta "
                 "= 0): leave it out",
    "restore_best_weights": _BEST,
    **dict.fromkeys(("save_best_only", "checkpoint", "ModelCheckpoint"),
                    f"{_BEST}; checkpoint.npz holds the last epoch"),
    **dict.fromkeys(("steps_per_epoch", "max_steps", "limit_train_batches"),
                    "an epoch is one pass over the data; `nnlang train --max-steps N` stops "
                    "after N steps"),
    **dict.fromkeys(("validation_data", "validation_steps", "validation_freq",
                     "validation_batch_size"),
                    "validation runs after every epoch on val_split of the training data, or "
                    "on the val_* arrays of a .npz (docs/data.md)"),
    **dict.fromkeys(("verbose", "log_every_n_steps"),
                    "each epoch prints one line with its losses and metrics: leave it out"),
    "initial_epoch": "continue a run with `nnlang train --resume` (it keeps the epoch, "
                     "optimizer and schedule state)",
    "sample_weight": _PER_ROW,
    "class_weight": "no class weights: " + _PER_ROW,
    **dict.fromkeys(("workers", "num_workers", "use_multiprocessing", "max_queue_size",
                     "pin_memory"), _ONE_PROCESS),
    **dict.fromkeys(("accumulate_grad_batches", "gradient_accumulation_steps"),
                    "no gradient accumulation: the same update is one larger batch (batch = "
                    "...; without batch_norm)"),
    **dict.fromkeys(("precision", "mixed_precision", "dtype", "amp"),
                    "no mixed precision: training runs in float32"),
    **dict.fromkeys(("kernel_regularizer", "weight_decay_l2", "regularization"),
                    "the penalties are l2 = 1e-4 and l1 (with l2_on / l1_on for some weights), "
                    "or the optimizer's weight_decay"),
}


def _option_hint(s: ast.Setting, t: ast.TrainDef) -> str | None:
    """An optimizer's or schedule's option written as a setting of its own (`lr = 0.1`, as
    Keras' compile(learning_rate=...) reads): where it goes instead. `--set lr=0.1` takes it
    bare, the file does not."""
    if s.name in SAID_ELSEWHERE:
        return SAID_ELSEWHERE[s.name]
    for setting, table in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        options = {p.name for d in table.values() for p in d.sig.params}
        name = s.name if s.name in options else foreign_name(s.name, options)
        owners = [n for n, d in table.items() if any(p.name == name for p in d.sig.params)]
        if owners:
            given = next((getattr(o.value, "func", getattr(o.value, "id", None))
                          for o in t.settings if o.name == setting), None)
            example = given if given in owners else "adam" if "adam" in owners else owners[0]
            said = f"'{s.name}' is '{name}' here, " if name != s.name else f"'{s.name}' is "
            return f"{said}an option of the {setting}: `{setting} = {example}({name} = ...)`"
    return None


def elaborate_train(t: ast.TrainDef, evaluate, errors: ErrorSink, abort,
                    weight=None, graph=None) -> TrainConfig:
    """Evaluates each setting with `evaluate` (the model's hyper-parameters are in scope);
    `weight(expr, setting)` resolves an item of `l1_on`/`l2_on` to a trainable weight's path;
    `monitor` is checked against the model `graph`'s losses and metrics."""
    values: dict = {}
    list_spans: dict = {}   # NOTE: where l1_on / l2_on are written, for the check after the loop
    spans: dict = {}
    choice_spans: dict = {}   # optimizer / schedule -> its options' spans ("": the whole call)
    for s in t.settings:
        if s.name not in SETTINGS:
            errors.add(f"unknown train setting '{s.name}'", s.span,
                       _option_hint(s, t) or setting_habit(s.name)
                       or did_you_mean(s.name, SETTINGS)
                       or f"settings: {', '.join(SETTINGS)}")
            continue
        if s.name in values:
            errors.add(f"train setting '{s.name}' is given twice", s.span)
            continue
        args, spans = [], {}
        if s.name in PENALTY_LISTS:
            value = _penalty_list(s, weight, errors, abort)
            if value is not None:
                values[s.name], list_spans[s.name] = value, s.value.span
            continue
        if s.name in ("data", "optimizer", "schedule") and isinstance(s.value, ast.Call):
            try:
                opts = {k.name: evaluate(k.value) for k in s.value.kwargs}
                args = [evaluate(a) for a in s.value.args]
            except abort:
                continue
            spans = {k.name: k.value.span for k in s.value.kwargs}
            table = OPTIMIZERS if s.name == "optimizer" else SCHEDULES
            if args and s.name != "data" and s.value.func in table:
                errors.add(f"{s.value.func}() takes keyword arguments only", s.value.span,
                           _keyword_example(table.get(s.value.func), args))
                continue
            raw = (s.value.func, opts)
        elif s.name in ("data", "optimizer", "schedule") and isinstance(s.value, ast.Name):
            raw = s.value.id
        elif s.name == "data" and isinstance(s.value, ast.BinOp) and \
                (name := _hyphenated(s.value)):
            errors.add(f"'{name}' is read as a subtraction here", s.value.span,
                       f'write data = "{name}", or {name.replace("-", "_")} (with options: '
                       f'{name.replace("-", "_")}(...))')
            continue
        else:
            try:
                raw = evaluate(s.value)
            except abort:
                continue
        span = s.value.span
        if s.name == "optimizer":
            value = _choice(raw, OPTIMIZERS, "optimizer", span, errors, spans)
            choice_spans["optimizer"] = {**spans, "": span}
        elif s.name == "schedule":
            value = _choice(raw, SCHEDULES, "schedule", span, errors, spans)
            choice_spans["schedule"] = {**spans, "": span}
        elif s.name == "data":
            if isinstance(raw, (str, tuple)):
                name, opts = (raw, {}) if isinstance(raw, str) else raw
                value = _data_choice(name, args, opts, span, errors, spans)
            else:
                value = None
                errors.add("data must be a dataset like imdb(...) or a file path, got "
                           f"{show_value(raw)}", span)
        elif s.name == "init_from":
            value = raw if isinstance(raw, str) and raw else None
            if value is None:
                errors.add(f"init_from must be a run directory or checkpoint path in quotes, "
                           f"got {show_value(raw)}", span,
                           'e.g. init_from = "runs/cnn-20260101-120000"')
        else:
            problem = check_kind(_SCALARS[s.name], raw, False) or range_problem(s.name, raw)
            if problem:
                errors.add(f"train setting '{s.name}': {problem}", span,
                           _int_hint(s.name, raw))
                continue
            value = float(raw) if _SCALARS[s.name] == "float" else raw
            if s.name == "monitor" and graph is not None and \
                    (unknown := monitor_problem(value, graph)):
                errors.add(unknown[0], span, unknown[1])
                continue
        if value is not None:
            values[s.name] = value
    for name in PENALTY_LISTS:
        rate = name[:2]
        if name in values and not values.get(rate):
            errors.add(f"{name} {rateless_penalty(name)}", list_spans[name],
                       f"set its strength too, e.g. {rate} = 1e-4")
    if "schedule" in values and (problem := rising_schedule(
            values.get("optimizer", TrainConfig.optimizer), values["schedule"])):
        sched = choice_spans["schedule"]
        errors.add(problem[0], sched.get("min_lr", sched[""]), problem[1])
        del values["schedule"]   # NOTE: reported here, with its place; TrainConfig would again
    return TrainConfig(**values)


def frozen_penalized(path: str) -> tuple[str, str]:
    """(what follows the setting, hint) for a penalty list naming a frozen weight, in the train
    section (`Elaborator.penalized_weight`) and from --set or fit (`overrides`) alike."""
    return (f"names '{path}', a frozen weight (trainable = false): a penalty cannot change it",
            "drop it from the list, or make its layer trainable")


def nothing_to_clip(clip_norm: float, model: str, has_weights: bool) -> tuple[str, str]:
    """(message, hint) for clip_norm over a model with no trainable weight, in the train
    section (elaborate) and from --set (`overrides`) alike."""
    return (f"clip_norm = {clip_norm:g}: model '{model}' has no trainable weights, so there is "
            "no gradient to clip",
            "remove clip_norm, or unfreeze a layer: every weight is frozen (trainable = false)"
            if has_weights else "remove clip_norm, or give the model a layer with weights")


def rateless_penalty(setting: str) -> str:
    """What follows a penalty list's name when its penalty's strength (l1, l2) is 0."""
    rate = setting[:2]
    return f"names the weights of the {rate} penalty, but {rate} is 0"


def _penalty_list(s, weight, errors: ErrorSink, abort) -> tuple | None:
    """`l1_on = [h.weight, c1.weight]`: the block paths of the weights a penalty applies to."""
    items = s.value.items if isinstance(s.value, ast.ListLit) else (s.value,)
    if not items:   # NOTE: as --set l1_on=[] is refused: it made the penalty a silent no-op
        rate = s.name[:2]
        errors.add(f"{s.name} = [] names no weight, so the {rate} penalty applies to none",
                   s.value.span, f"leave {s.name} out to put {rate} on every weight matrix and "
                                 f"kernel, or list the weights: {s.name} = [h.weight]")
        return None
    paths = []
    for item in items:
        try:
            paths.append(weight(item, s.name))
        except abort:
            pass
    return tuple(paths) if len(paths) == len(items) else None
