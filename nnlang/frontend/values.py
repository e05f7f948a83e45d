"""Values elaboration works with: tensors (graph nodes), the error poison, initializer calls,
scopes, and the small helpers shared by statement and call elaboration."""
from __future__ import annotations

from dataclasses import dataclass, field

from nnlang.ir.dims import Sym
from nnlang.ops.signature import show_value


@dataclass(frozen=True)
class T:
    """A tensor value: a node in the graph being built."""
    id: int

    def __str__(self) -> str:   # NOTE: as errors show a value (`got [a tensor, 8]`)
        return "a tensor"


class _Poison:
    def __repr__(self):
        return "<error>"


POISON = _Poison()


class Abort(Exception):
    """Stops evaluating one statement after its error was recorded."""


@dataclass
class Initializer:
    name: str
    options: dict

    def spec(self) -> tuple[str, dict]:
        return self.name, dict(self.options)

    def __str__(self) -> str:
        opts = ", ".join(f"{k} = {show_value(v)}" for k, v in self.options.items())
        return f"{self.name}({opts})" if opts else self.name


@dataclass
class Scope:
    prefix: str                      # block path of this scope, e.g. "enc.0"
    vars: dict = field(default_factory=dict)       # name -> value
    spans: dict = field(default_factory=dict)      # name -> Span of its definition
    in_loop: int = 0
    kind: str = "model"              # model | block
    repeat: tuple = ()               # iteration indices of enclosing `repeat`s
    later: dict = field(default_factory=dict)      # names defined further down -> Span
    frozen: bool = False             # inside a block called with `trainable = false`
    # NOTE: the call's own path where it is not `prefix`: a block call with `share = a` makes
    # its weights under a's path (`prefix`), but its nodes are drawn and listed under its own
    shown: str | None = None


_MAX_INT_BITS = 4096  # constant arithmetic beyond this is a typo, not a model size


def eval_binop(op, a, b):
    """Constant arithmetic; ArithmeticError when the result overflows (an inf from finite
    numbers, or an integer power with thousands of digits)."""
    import math
    if (op == "**" and isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0
            and b * math.log2(abs(a)) > _MAX_INT_BITS):
        raise OverflowError("the result is too large")
    try:
        result = _eval_binop(op, a, b)
    except OverflowError:  # NOTE: float ** says "(34, 'Numerical result out of range')"
        raise OverflowError("the result is too large for a float") from None
    if isinstance(result, complex):   # NOTE: Python's (-8) ** 0.5 is 1.7e-16+2.8j
        raise ValueError("a negative number to a fractional power is not a real number")
    if isinstance(result, int) and result.bit_length() > _MAX_INT_BITS:
        raise OverflowError("the result is too large")   # NOTE: k * k * k... gets there too
    if (isinstance(result, float) and not math.isfinite(result)
            and all(math.isfinite(v) for v in (a, b) if isinstance(v, (int, float)))):
        raise OverflowError("the result is too large for a float")
    return result


def _number(v) -> bool:
    return isinstance(v, (int, float, Sym)) and not isinstance(v, bool)


def _eval_binop(op, a, b):
    import operator
    if op not in ("==", "!=") and not (_number(a) and _number(b)):
        # NOTE: Python's own meanings would run silently: "re" + "lu", true + 1, [batch, 2] * 2
        raise TypeError(op)
    table = {"+": operator.add, "-": operator.sub, "*": operator.mul, "**": operator.pow,
             "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
             ">": operator.gt, ">=": operator.ge}
    if op == "/":
        if isinstance(a, int) and isinstance(b, int) and b and a % b == 0:
            return a // b
        return a / b
    return table[op](a, b)


TENSOR_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul", "**": "pow",
                  "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}

KEYWORD_ONLY_OPS = {"input", "param", "const"}


def join_path(a: str, b: str) -> str:
    return f"{a}.{b}" if a and b else a or b


def shown_path(scope: Scope, path: str) -> str:
    """Where a node made at weight path `path` in `scope` is shown (`nnlang check`, `graph`):
    under the call's own path in a block call that shares another's weights (b.h for a.h)."""
    if scope.shown is None or scope.shown == scope.prefix:
        return path
    if path == scope.prefix:
        return scope.shown
    if path.startswith(scope.prefix + "."):
        return scope.shown + path[len(scope.prefix):]
    return path
