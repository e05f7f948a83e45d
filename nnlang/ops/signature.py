"""Op and block signatures: typed parameters with defaults, written as one readable string.

`Signature.parse("x: tensor, units: int, use_bias: bool = true")` gives the parameter list that
elaboration binds call arguments against, that error messages quote, and that docs print.
"""
from __future__ import annotations

import ast as pyast
from dataclasses import dataclass, field

from nnlang.errors import did_you_mean, foreign_name
from nnlang.ir.dims import Sym

KINDS = {"tensor", "tensor?", "int", "float", "bool", "str", "ints", "floats", "init", "any",
         "dtype", "shape", "dim"}


@dataclass(frozen=True)
class SigParam:
    name: str
    kind: str
    default: object = None
    required: bool = True
    variadic: bool = False  # `*xs: tensor` takes the remaining positional arguments

    def __str__(self) -> str:
        text = f"{'*' if self.variadic else ''}{self.name}: {self.kind}"
        if not self.required:
            text += f" = {show_value(self.default)}"
        return text


def show_value(v) -> str:
    """A value as the .nn source spells it (none, true, "text", [1, none])."""
    if isinstance(v, list):
        return "[" + ", ".join(map(show_value, v)) + "]"
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (int, float)):
        return repr(v)
    return str(v)   # NOTE: the frontend's values (a tensor, a symbol) say what they are


class BindError(Exception):
    """A call's arguments don't fit the signature; `arg` names the argument at fault."""

    def __init__(self, message: str, hint: str | None = None, arg: str | int | None = None):
        super().__init__(message)
        self.message, self.hint, self.arg = message, hint, arg


_LITERALS = {"none": None, "true": True, "false": False}


@dataclass(frozen=True)
class Signature:
    params: tuple[SigParam, ...] = field(default_factory=tuple)

    @staticmethod
    def parse(text: str) -> "Signature":
        params = []
        for part in _split_top(text):
            part = part.strip()
            if not part:
                continue
            head, _, default = part.partition("=")
            name, _, kind = head.partition(":")
            name, kind = name.strip(), kind.strip() or "any"
            variadic = name.startswith("*")
            name = name.lstrip("*")
            assert kind in KINDS, f"unknown kind {kind!r} in signature {text!r}"
            if default.strip():
                d = default.strip()
                value = _LITERALS[d] if d in _LITERALS else pyast.literal_eval(d)
                params.append(SigParam(name, kind, value, required=False))
            else:
                params.append(SigParam(name, kind, variadic=variadic))
        return Signature(tuple(params))

    def __str__(self) -> str:
        return ", ".join(str(p) for p in self.params)

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def bind(self, args: list, kwargs: dict) -> dict:
        """Maps positional and keyword arguments to parameter names (values are not checked)."""
        out: dict = {}
        positional = list(args)
        for p in self.params:
            if p.variadic:
                out[p.name] = positional
                positional = []
                continue
            if positional:
                out[p.name] = positional.pop(0)
        if positional:
            raise BindError(f"takes at most {len(out)} positional arguments but "
                            f"{len(args)} were given", f"signature: ({self})",
                            arg=len(args) - len(positional))
        for name, value in kwargs.items():
            if name not in self.names():
                ours = TORCH_NAMES.get(name)
                hint = (f"did you mean '{ours}'? (PyTorch's '{name}' is '{ours}' here)"
                        if ours in self.names() else did_you_mean(name, self.names())
                        if foreign_name(name, self.names()) else
                        OPTION_HABITS.get(name) or did_you_mean(name, self.names()))
                raise BindError(f"has no parameter '{name}'", hint or f"parameters: {self}",
                                name)
            if name in out:
                raise BindError(f"got '{name}' twice (positionally and by keyword)", arg=name)
            out[name] = value
        for p in self.params:
            if p.name not in out:
                if p.required and not p.variadic:
                    raise BindError(f"missing required argument '{p.name}'",
                                    f"signature: ({self})")
                out[p.name] = [] if p.variadic else p.default
        return out


_INFERRED = "the input's size is read from its shape: leave it out"
_PENALTY = ("penalties are train settings: l2 = 1e-4 (or l1) in the train section, on every "
            "weight matrix, or on this layer's alone with l2_on = [name.weight]")
_IGNORE = "cross_entropy, accuracy and binary_accuracy take ignore_index = <the pads' label>"
# Keras' and PyTorch's options that no op, optimizer or schedule here has under any name, and
# what to write instead (an op's own `habits` come first; a rename is in FOREIGN_NAMES)
OPTION_HABITS = {
    **dict.fromkeys(("in_features", "in_channels", "input_size", "num_features",
                     "normalized_shape", "input_dim", "input_shape", "input_length", "kdim",
                     "vdim"), _INFERRED),
    **dict.fromkeys(("kernel_regularizer", "bias_regularizer", "recurrent_regularizer"),
                    _PENALTY),
    "activity_regularizer": "add the penalty as a second loss, summed with the first: "
                            "`loss 1e-4 * mean(h ** 2)`",
    **dict.fromkeys(("kernel_constraint", "bias_constraint", "max_norm"),
                    "no weight constraints (clip_norm, a train setting, clips the gradient)"),
    "activation": "this op has no activation option: pipe one after it, `... |> relu`",
    "data_format": "channels_last = true for [batch, ..., channels] (Keras' data_format = "
                   "\"channels_last\"); the default is channels first, as PyTorch's",
    "inplace": "ops never write in place: leave it out",
    "training": "dropout and batch_norm switch to evaluation by themselves (nnlang eval and "
                "predict): leave it out",
    "keepdim": "this op drops the axis: unsqueeze(..., axis = a) puts it back",
    "keepdims": "this op drops the axis: unsqueeze(..., axis = a) puts it back",
    "from_logits": "cross_entropy and bce_with_logits take logits (Keras' from_logits = True); "
                   "bce takes probabilities",
    "reduction": "a loss here is the mean (reduction = \"mean\"); for \"sum\" multiply it by "
                 "the count it averages over; for \"none\" write the per-element loss "
                 "yourself, e.g. (p - y) ** 2",
    # NOTE: padding masks on losses, metrics and reductions: `sample_weight` was "did you mean
    # 'weight'?" (cross_entropy's per-class weights, another thing), the others the signature
    "sample_weight": "per-example weights w (a padding mask among them) weigh the per-row "
                     "losses: sum(per_row * w) / maximum(sum(w), 1e-12); over padded labels "
                     f"{_IGNORE}",
    "mask": "this op takes no mask (lstm, gru, rnn and positional_encoding take `mask`, "
            "multi_head_attention `key_padding_mask`): over padded labels "
            f"{_IGNORE}; with keep = cast(mask, dtype = \"float32\") (unsqueeze(..., axis = "
            "-1) for x with features on a last axis), a masked mean over axis a is "
            "sum(x * keep, axis = a) / maximum(sum(keep, axis = a), 1.0), and a masked "
            "softmax softmax(where(mask, x, -1e9))",
    "ignore_index": "only cross_entropy, accuracy and binary_accuracy take ignore_index; mask "
                    "the per-element loss: keep = cast(target != <the pads' label>, dtype = "
                    "\"float32\"), then sum(per_element * keep) / maximum(sum(keep), 1.0)",
    # optimizers
    "amsgrad": "no AMSGrad variant: adam or adamw",
    "betas": "name each: beta1 = 0.9, beta2 = 0.999 (PyTorch's betas = (0.9, 0.999))",
    "clipnorm": "gradient clipping is a train setting: clip_norm = 1.0 clips the global norm "
                "(Keras' global_clipnorm; Keras' clipnorm clips each weight's gradient on "
                "its own)",
    "global_clipnorm": "gradient clipping is a train setting: clip_norm = 1.0",
    "clipvalue": "no clipping by value: clip_norm = 1.0 (a train setting) clips the global "
                 "norm",
    "decay": "a decaying learning rate is a schedule: schedule = exponential(gamma = 0.9) "
             "(per epoch) or cosine()",
    "dampening": "no dampening: sgd(momentum = ...) is PyTorch's with dampening = 0",
    "centered": "no centered RMSprop: rmsprop(alpha = ..., momentum = ...)",
    **dict.fromkeys(("fused", "foreach", "capturable", "differentiable", "jit_compile"),
                    "nnlang fuses the update itself: leave it out"),
    "maximize": "the optimizer minimizes the loss: negate it, `loss -score`",
    # schedules
    "T_max": "cosine decays over the whole run (epochs x steps per epoch): leave it out",
    "decay_steps": "cosine decays over the whole run (epochs x steps per epoch); step() "
                   "decays every step_size epochs",
    "last_epoch": "a resumed run (nnlang train --resume) restores the schedule itself",
    "verbose": "the learning rate is shown in each epoch's line: leave it out",
    "cooldown": "no cooldown: the plateau count restarts after each reduction",
    "min_delta": "any improvement beyond float32 rounding counts (Keras' min_delta = 0)",
    "threshold": "any improvement beyond float32 rounding counts (PyTorch's threshold = 0)",
    "mode": "which way is better is the train setting mode = \"min\" or \"max\" (for "
            "monitor), not a schedule option",
}


# NOTE: keywords a PyTorch user writes by habit, and ours for them: too far apart for
# did_you_mean's spelling match (dim vs axis)
TORCH_NAMES = {"dim": "axis", "keepdim": "keepdims", "num_heads": "heads", "p": "rate",
               "out_features": "units", "kernel_size": "kernel", "diagonal": "k"}


def _split_top(text: str) -> list[str]:
    """Splits on commas that are not inside brackets (defaults may be lists)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([" and 1 or (ch in ")]" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def check_kind(kind: str, value, is_tensor: bool) -> str | None:
    """Returns an error message when `value` does not fit `kind` (None when it fits)."""
    if kind == "any":
        return None
    if kind in ("tensor", "tensor?"):
        if is_tensor or isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if kind == "tensor?" and value is None:
            return None
        return "expected a tensor"
    if is_tensor:
        return f"expected {_KIND_TEXT.get(kind, kind)}, got a tensor"
    if kind == "dtype":
        from nnlang.ops.registry import DTYPES  # NOTE: registry imports this module
        if value not in DTYPES:
            from nnlang.errors import closest
            guess = closest(str(value), DTYPES)
            return (f"expected a dtype ({', '.join(DTYPES)}), got {show_value(value)}"
                    + (f" (did you mean \"{guess}\"?)" if guess else ""))
        return None
    ok = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str) or v is None,
        "ints": lambda v: _is_int(v) or isinstance(v, list) and all(map(_is_int, v)),
        "shape": lambda v: isinstance(v, list),
        # NOTE: a size as in a shape list: an integer or a symbol (`batch`, a `symbol seq`)
        "dim": lambda v: _is_int(v) or isinstance(v, Sym),
        # NOTE: as ints: one number, or a list of them (bce_with_logits' pos_weight is either)
        "floats": lambda v: _is_num(v) or isinstance(v, list) and all(map(_is_num, v)),
        "init": lambda v: True,
    }[kind]
    if ok(value):
        return None
    return f"expected {_KIND_TEXT.get(kind, kind)}, got {show_value(value)}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KIND_TEXT = {"int": "an integer", "float": "a number", "bool": "true or false",
              "str": "a string", "ints": "an integer or a list of integers",
              "floats": "a number or a list of numbers", "shape": "a list of dims",
              "dtype": "a dtype name",
              "dim": "an integer or a size symbol such as batch"}
