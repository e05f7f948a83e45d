"""Op and block signatures: typed parameters with defaults, written as one readable string.

`Signature.parse("x: tensor, units: int, use_bias: bool = true")` gives the parameter list that
elaboration binds call arguments against, that error messages quote, and that docs print.
"""
from __future__ import annotations

import ast as pyast
from dataclasses import dataclass, field

from nnlang.errors import did_you_mean
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
                        if ours in self.names() else did_you_mean(name, self.names()))
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
        "floats": lambda v: isinstance(v, list),
        "init": lambda v: True,
    }[kind]
    if ok(value):
        return None
    return f"expected {_KIND_TEXT.get(kind, kind)}, got {show_value(value)}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KIND_TEXT = {"int": "an integer", "float": "a number", "bool": "true or false",
              "str": "a string", "ints": "an integer or a list of integers",
              "floats": "a list of numbers", "shape": "a list of dims", "dtype": "a dtype name",
              "dim": "an integer or a size symbol such as batch"}
