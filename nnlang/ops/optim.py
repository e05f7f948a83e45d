"""Optimizers and learning-rate schedules. Each optimizer is one entry, like an op's: its
signature (checked in the train section), its state slots and its update rule, written as graph
ops and appended to the train graph so the whole update fuses into kernels like the model does
(as in tinygrad). Update rules follow the PyTorch documentation of
torch.optim.{SGD, Adam, AdamW, RMSprop}.

NOTE: it sits on the ops floor, below the frontend (which checks a train section's optimizer
options against these signatures), the passes (which append the update) and the runtime (which
computes each step's learning rate here, in one place).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from nnlang.ir.graph import Builder
from nnlang.ops.signature import Signature

# NOTE: the optimizer's state entries, beside the parameters in a net's state and checkpoints:
# the step count, and one `optimizer.<slot>.<parameter>` per slot the rule keeps
OPTIMIZER_PREFIX = "optimizer."
STEP_SLOT = OPTIMIZER_PREFIX + "step"


def slot_name(slot: str, param: str) -> str:
    return f"{OPTIMIZER_PREFIX}{slot}.{param}"


def slot_param(name: str) -> str | None:
    """The parameter an optimizer slot entry belongs to (None: the step, or not a slot)."""
    if not name.startswith(OPTIMIZER_PREFIX) or name == STEP_SLOT:
        return None
    return name[len(OPTIMIZER_PREFIX):].partition(".")[2] or None


@dataclass(frozen=True)
class OptimDef:
    name: str
    sig: Signature
    doc: str
    slots: tuple = ()                 # per-parameter state, zero-initialized
    update: Callable | None = field(default=None, compare=False)
    # update(b, p, g, slots: {name: node}, t: step node (1-based), lr: node, **hp)
    #   -> (new_p, {slot: new value})


def _c(b: Builder, v: float, like: int) -> int:
    return b.const(v, b.type(like).dtype)


def _sgd(b, p, g, s, t, lr, *, momentum, nesterov, weight_decay, **_):
    if weight_decay:
        g = b.add(g, b.mul(_c(b, weight_decay, p), p))
    new = {}
    if momentum:
        buf = b.add(b.mul(_c(b, momentum, p), s["momentum"]), g)
        new["momentum"] = buf
        g = b.add(g, b.mul(_c(b, momentum, p), buf)) if nesterov else buf
    return b.sub(p, b.mul(lr, g)), new


def _adam(b, p, g, s, t, lr, *, beta1, beta2, eps, weight_decay, decoupled=False, **_):
    if weight_decay and decoupled:
        p = b.mul(p, b.sub(_c(b, 1.0, p), b.mul(lr, _c(b, weight_decay, p))))
    elif weight_decay:
        g = b.add(g, b.mul(_c(b, weight_decay, p), p))
    m = b.add(b.mul(_c(b, beta1, p), s["m"]), b.mul(_c(b, 1 - beta1, p), g))
    v = b.add(b.mul(_c(b, beta2, p), s["v"]), b.mul(_c(b, 1 - beta2, p), b.mul(g, g)))
    one = _c(b, 1.0, p)
    bc1 = b.sub(one, b.pow(_c(b, beta1, p), t))
    bc2 = b.sub(one, b.pow(_c(b, beta2, p), t))
    denom = b.add(b.div(b.sqrt(v), b.sqrt(bc2)), _c(b, eps, p))
    return b.sub(p, b.mul(b.div(lr, bc1), b.div(m, denom))), {"m": m, "v": v}


def _rmsprop(b, p, g, s, t, lr, *, alpha, eps, momentum, weight_decay, **_):
    if weight_decay:
        g = b.add(g, b.mul(_c(b, weight_decay, p), p))
    sq = b.add(b.mul(_c(b, alpha, p), s["square_avg"]), b.mul(_c(b, 1 - alpha, p), b.mul(g, g)))
    step = b.div(g, b.add(b.sqrt(sq), _c(b, eps, p)))
    new = {"square_avg": sq}
    if momentum:
        step = b.add(b.mul(_c(b, momentum, p), s["momentum"]), step)
        new["momentum"] = step
    return b.sub(p, b.mul(lr, step)), new


def same_slots(a: str, b: str) -> bool:
    """Do optimizers `a` and `b` keep state of the same meaning, so a run switched from one
    to the other goes on with it? Only with the same slots: adam and adamw (moments of the
    gradient), not sgd and rmsprop, whose `momentum` slots hold other things."""
    return OPTIMIZERS[a].slots == OPTIMIZERS[b].slots


OPTIMIZERS = {o.name: o for o in (
    OptimDef("sgd", Signature.parse("lr: float = 0.01, momentum: float = 0.0, "
                                    "nesterov: bool = false, weight_decay: float = 0.0"),
             "SGD with optional (Nesterov) momentum; weight decay is added to the gradient "
             "(torch.optim.SGD)", ("momentum",), _sgd),
    OptimDef("adam", Signature.parse("lr: float = 0.001, beta1: float = 0.9, "
                                     "beta2: float = 0.999, eps: float = 1e-8, "
                                     "weight_decay: float = 0.0"),
             "Adam with L2 weight decay added to the gradient (torch.optim.Adam)",
             ("m", "v"), _adam),
    OptimDef("adamw", Signature.parse("lr: float = 0.001, beta1: float = 0.9, "
                                      "beta2: float = 0.999, eps: float = 1e-8, "
                                      "weight_decay: float = 0.01"),
             "Adam with decoupled weight decay (torch.optim.AdamW)", ("m", "v"),
             lambda *a, **k: _adam(*a, decoupled=True, **k)),
    OptimDef("rmsprop", Signature.parse("lr: float = 0.01, alpha: float = 0.99, "
                                        "eps: float = 1e-8, momentum: float = 0.0, "
                                        "weight_decay: float = 0.0"),
             "RMSprop (torch.optim.RMSprop)", ("square_avg", "momentum"), _rmsprop),
)}

SCHEDULES = {o.name: o for o in (
    OptimDef("constant", Signature.parse("warmup: int = 0"), "fixed learning rate"),
    OptimDef("step", Signature.parse("step_size: int, gamma: float = 0.1, warmup: int = 0"),
             "multiply by gamma every step_size epochs"),
    OptimDef("exponential", Signature.parse("gamma: float, warmup: int = 0"),
             "multiply by gamma every epoch"),
    OptimDef("cosine", Signature.parse("warmup: int = 0, min_lr: float = 0.0"),
             "cosine decay from lr to min_lr over the whole run, after a linear warm-up of "
             "`warmup` steps"),
    OptimDef("plateau", Signature.parse("factor: float = 0.1, patience: int = 2, "
                                        "min_lr: float = 0.0, warmup: int = 0"),
             "multiply by factor after `patience` epochs without improvement of the train "
             "section's `monitor` (default val_loss), down to min_lr"),
)}

# Keras' and PyTorch's optimizers and schedules that have no counterpart here, and what to
# write instead (where the closest name by letters would mislead: nadam is not adam)
_ADAM_KIN = "not supported here: adam (or adamw for decoupled weight decay) is the nearest"
_NOT_ADAPTIVE = "not supported here: adam, adamw, rmsprop or sgd"
_WARMUP = "a linear warm-up is every schedule's option: schedule = cosine(warmup = 100) (steps)"
WRITTEN_OTHERWISE = {
    "optimizer": {
        **dict.fromkeys(("nadam", "Nadam", "NAdam", "adamax", "Adamax", "radam", "RAdam", "lamb",
                         "LAMB", "amsgrad"), _ADAM_KIN),
        **dict.fromkeys(("adagrad", "Adagrad", "adadelta", "Adadelta", "lion", "Lion", "ftrl",
                         "Ftrl", "lbfgs", "LBFGS", "sparse_adam", "SparseAdam", "asgd", "ASGD",
                         "rprop", "Rprop"), _NOT_ADAPTIVE),
    },
    "schedule": {
        **dict.fromkeys(("OneCycleLR", "one_cycle", "onecycle", "OneCycle"),
                        "no one-cycle schedule: cosine(warmup = N) warms up linearly for N "
                        "steps, then decays by a cosine over the rest of the run"),
        **dict.fromkeys(("CosineAnnealingWarmRestarts", "cosine_restarts", "CosineDecayRestarts",
                         "cosine_decay_restarts", "sgdr"),
                        "no restarts: cosine() decays once over the whole run"),
        **dict.fromkeys(("LinearLR", "linear", "warmup", "LinearWarmup", "warmup_linear",
                         "warmup_cosine", "WarmupCosine"), _WARMUP),
        **dict.fromkeys(("PolynomialDecay", "polynomial", "PolynomialLR", "linear_decay",
                         "InverseTimeDecay", "inverse_time", "CyclicLR", "cyclic", "LambdaLR",
                         "MultiplicativeLR", "lambda"),
                        "not supported here: the schedules are constant, step, exponential, "
                        "cosine and plateau (cosine(min_lr = ...) decays smoothly to a floor)"),
        **dict.fromkeys(("MultiStepLR", "multistep", "multi_step", "PiecewiseConstantDecay",
                         "piecewise"),
                        "no milestones: step(step_size = N, gamma = 0.1) multiplies by gamma "
                        "every N epochs"),
        "ConstantLR": "constant() keeps lr (a factor for the first epochs is not supported)",
    },
}


def unknown_choice_hint(name: str, what: str, table: dict) -> str:
    """The hint for an unknown optimizer or schedule `name` (`what`) of `table`."""
    from nnlang.errors import did_you_mean
    return (WRITTEN_OTHERWISE[what].get(name) or did_you_mean(name, table)
            or f"{what}s: {', '.join(sorted(table))}")


def learning_rate(base: float, schedule, step: int, epoch: int, total_steps: int,
                  scale: float = 1.0) -> float:
    """The learning rate for a (0-based) step; `schedule` is a Choice or None. `scale`: what
    plateau reductions so far multiply the base rate by (see `plateau_scale`)."""
    if schedule is None:
        return base
    o = schedule.options
    warm = o.get("warmup", 0)
    if warm and step < warm:
        return base * (step + 1) / warm
    name = schedule.name
    if name == "step":
        return base * o["gamma"] ** (epoch // o["step_size"])
    if name == "exponential":
        return base * o["gamma"] ** epoch
    if name == "plateau":
        return max(base * scale, min(o["min_lr"], base))
    if name == "cosine":
        if total_steps <= 0:  # NOTE: a bare Net.train_step loop gives no horizon to decay over
            return base
        span = max(total_steps - warm, 1)
        frac = min(max(step - warm, 0) / span, 1.0)
        return o["min_lr"] + (base - o["min_lr"]) * 0.5 * (1 + math.cos(math.pi * frac))
    return base


def plateau_scale(schedule, base: float, scale: float) -> float:
    """The next `scale` of a plateau schedule once its patience ran out: one more factor, but
    never below min_lr (a scale that reached it stays)."""
    o = schedule.options
    floor = min(o["min_lr"], base) / base if base else 0.0
    return max(scale * o["factor"], floor)


class _Probe:
    """Stands in for a Builder: every op gives the probe back, so an update rule can run
    without a graph just to show which slots it reads."""

    def __getattr__(self, name):
        return lambda *a, **k: self


def initial_state(choice, params: dict) -> dict:
    """{state name: shape} of the optimizer state a first step starts from (all zeros): the
    step count and each slot the rule reads for the parameters `params` (name -> shape).
    NOTE: asks the rule itself, as append_update does, so e.g. SGD without momentum lists no
    buffer here either."""
    opt, hp = OPTIMIZERS[choice.name], dict(choice.options)
    hp.pop("lr", None)
    probe = _Probe()
    out = {STEP_SLOT: ()}
    for name, shape in params.items():
        read = _LazySlots(lambda s: probe)
        opt.update(probe, probe, probe, read, probe, probe, **hp)
        out.update({slot_name(s, name): tuple(shape) for s in read})
    return out


class _LazySlots(dict):
    """Creates an optimizer slot on first use, so e.g. SGD without momentum keeps no buffer."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = self.make(key)
        return self[key]


def append_update(b: Builder, params: dict, grads: dict, choice, clip_norm: float | None,
                  lr, add_state, at=lambda setting: None) -> dict:
    """Appends clipping and the optimizer update for every trained parameter.

    `params` and `grads` map parameter names to nodes; `lr(dtype)` is the learning-rate node in
    a dtype; `add_state(name, like)` creates a persistent zero-initialized state node (in the
    dtype of `like`, the net's for None); `at(setting)` is the span of the train setting
    (`clip_norm`, `optimizer`) whose ops these are. Returns {state name: new value node}. NOTE:
    each weight updates in its own dtype (its rate, step count and slots), so a float64 weight
    of a float32 net moves by exactly lr * grad in float64, as PyTorch's optimizer moves it.
    """
    opt = OPTIMIZERS[choice.name]
    hp = dict(choice.options)
    hp.pop("lr", None)
    with b.at(at("clip_norm")):
        grads = _clipped(b, grads, clip_norm)
    with b.at(at("optimizer")):
        return _updates(b, params, grads, opt, hp, lr, add_state)


def _clipped(b: Builder, grads: dict, clip_norm: float | None) -> dict:
    if clip_norm and grads:   # NOTE: no gradient has norm 0, which clipping leaves alone
        # NOTE: like torch.nn.utils.clip_grad_norm_: scale = min(1, max_norm / (norm + 1e-6))
        sq = None
        for g in grads.values():
            part = b.reduce_sum(b.mul(g, g), axes=None)
            sq = part if sq is None else b.add(sq, part)
        norm = b.sqrt(sq)
        ndt = b.type(norm).dtype
        scale = b.minimum(b.const(1.0, ndt),
                          b.div(b.const(clip_norm, ndt), b.add(norm, b.const(1e-6, ndt))))
        grads = {k: b.mul(g, _as(b, scale, b.type(g).dtype)) for k, g in grads.items()}
    return grads


def _updates(b: Builder, params: dict, grads: dict, opt, hp: dict, lr, add_state) -> dict:
    step = add_state(STEP_SLOT, None)
    t = b.add(step, b.const(1.0, b.type(step).dtype))
    updates = {STEP_SLOT: t}
    for name, p in params.items():
        pdt = b.type(p).dtype
        slots = _LazySlots(lambda s, name=name, p=p: add_state(slot_name(s, name), p))
        new_p, new_slots = opt.update(b, p, grads[name], slots, _as(b, t, pdt), lr(pdt), **hp)
        updates[name] = new_p
        for s, v in new_slots.items():
            updates[slot_name(s, name)] = v
    return updates


def _as(b: Builder, nid: int, dtype: str) -> int:
    """nid in dtype, cast only where it differs (a float32 model's graph gains nothing)."""
    return nid if b.type(nid).dtype == dtype else b.cast(nid, dtype=dtype)
