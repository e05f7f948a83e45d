"""The syntax tree: one frozen dataclass per grammar rule, each with the span it came from.

`ToAst` turns lark's parse tree into these nodes; `elaborate` consumes them and nothing after it
sees the syntax tree.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from lark import Token, v_args
from lark.visitors import Transformer_NonRecursive

from nnlang.errors import Diagnostic, Span


@dataclass(frozen=True)
class Node:
    span: Span


# *** expressions ***

@dataclass(frozen=True)
class Number(Node):
    value: int | float
    text: str


@dataclass(frozen=True)
class String(Node):
    value: str


@dataclass(frozen=True)
class Bool(Node):
    value: bool


@dataclass(frozen=True)
class NoneLit(Node):
    pass


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class WeightRef(Node):
    path: str    # a parameter's block path, e.g. "h.weight"


@dataclass(frozen=True)
class ListLit(Node):
    items: tuple


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # one of + - * / @ ** == != < <= > >=
    left: Node
    right: Node


@dataclass(frozen=True)
class Neg(Node):
    operand: Node


@dataclass(frozen=True)
class Kwarg(Node):
    name: str
    value: Node


@dataclass(frozen=True)
class Call(Node):
    func: str
    func_span: Span
    args: tuple          # positional expressions
    kwargs: tuple        # Kwarg nodes


@dataclass(frozen=True)
class Pipe(Node):
    value: Node
    target: Node         # a Call or a Name; `x |> f(a)` means `f(x, a)`


@dataclass(frozen=True)
class Slice(Node):
    start: Node | None
    stop: Node | None
    step: Node | None = None


@dataclass(frozen=True)
class Subscript(Node):
    value: Node
    indices: tuple       # expressions or Slice nodes


# *** statements ***

@dataclass(frozen=True)
class TensorType(Node):
    dtype: str
    dtype_span: Span
    dims: tuple


@dataclass(frozen=True)
class Input(Node):
    name: str
    type: TensorType


@dataclass(frozen=True)
class ParamDecl(Node):
    name: str
    type: TensorType
    init: Node | None
    trainable: Node | None = None


@dataclass(frozen=True)
class Symbol(Node):
    names: tuple


@dataclass(frozen=True)
class Assign(Node):
    targets: tuple       # names; several for a block that returns several values
    value: Node


@dataclass(frozen=True)
class Scan(Node):
    call: Call           # the block and its initial states (and options)
    over: tuple          # the sequences, [batch, time, k] each
    options: tuple = ()  # the loop's own options after them (Kwarg: `reverse = true`)


@dataclass(frozen=True)
class Output(Node):
    name: str
    value: Node | None   # `output h` re-exports an existing value


@dataclass(frozen=True)
class Loss(Node):
    name: str | None
    value: Node


@dataclass(frozen=True)
class Metric(Node):
    name: str
    value: Node


@dataclass(frozen=True)
class Return(Node):
    values: tuple


@dataclass(frozen=True)
class Repeat(Node):
    count: Node
    body: tuple


# *** top level ***

@dataclass(frozen=True)
class Param(Node):
    name: str
    default: Node | None


@dataclass(frozen=True)
class Setting(Node):
    name: str
    value: Node


@dataclass(frozen=True)
class Import(Node):
    path: str


@dataclass(frozen=True)
class ModelDef(Node):
    name: str
    params: tuple
    body: tuple


@dataclass(frozen=True)
class BlockDef(Node):
    name: str
    params: tuple
    body: tuple


@dataclass(frozen=True)
class TrainDef(Node):
    name: str
    settings: tuple


@dataclass(frozen=True)
class GenerateDef(Node):
    name: str
    settings: tuple


@dataclass(frozen=True)
class Module(Node):
    items: tuple
    file: str
    source: str


def _unquote(tok: str) -> str:
    return tok[1:-1]


_MAX_WHOLE_DIGITS = len(str(int(sys.float_info.max)))  # 309


def _number(text: str) -> int | float:
    if text.isdigit() and len(text.lstrip("0")) > _MAX_WHOLE_DIGITS:
        # NOTE: beyond any dtype, and int() refuses more than 4300 digits (Python's limit)
        return math.inf
    return int(text) if text.isdigit() else float(text)


def _float_problem(text: str, value) -> str | None:
    """Why a literal does not mean what it says: too large for any dtype (inf, or a whole
    number past float64's range) or too small (0.0)."""
    if text.isdigit() and value > sys.float_info.max:
        return f"is too large for any dtype ({len(text.lstrip('0'))} digits; float64 " \
               "holds up to about 1.8e308)"
    if not isinstance(value, float):
        return None
    if math.isinf(value):
        return "is too large for a float (it would be infinity)"
    if value == 0.0 and any(ch in "123456789" for ch in text.lower().partition("e")[0]):
        return "is too small for a float (it would be 0)"
    return None


@v_args(meta=True)
class ToAst(Transformer_NonRecursive):
    """Builds AST nodes from lark's tree; every node gets a span. Non-recursive: a chain of
    thousands of terms is a tree that deep."""

    def __init__(self, file: str, source: str):
        super().__init__()
        self.file, self.source = file, source
        self.errors: list[Diagnostic] = []  # raised by the parser after the whole tree

    def _span(self, meta) -> Span:
        if isinstance(meta, Token):
            return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column,
                        self.source)
        if getattr(meta, "empty", True):
            return Span(self.file, 0, 0, source=self.source)
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column,
                    self.source)

    # *** expressions ***
    def number(self, meta, c):
        text, span = str(c[0]), self._span(meta)
        value = _number(text)
        problem = _float_problem(text, value)
        if problem:
            shown = text if len(text) <= 24 else f"{text[:12]}...{text[-6:]}"
            self.errors.append(Diagnostic(f"the number {shown} {problem}", span,
                                          "floats are 64-bit: about 1e-308 to 1.8e308"))
        return Number(span, value, text)

    def string(self, meta, c):
        return String(self._span(meta), _unquote(str(c[0])))

    def name(self, meta, c):
        return Name(self._span(meta), str(c[0]))

    def weight_ref(self, meta, c):
        return WeightRef(self._span(meta), str(c[0]))

    def true(self, meta, c):
        return Bool(self._span(meta), True)

    def false(self, meta, c):
        return Bool(self._span(meta), False)

    def none(self, meta, c):
        return NoneLit(self._span(meta))

    def list(self, meta, c):
        return ListLit(self._span(meta), tuple(x for x in c if x is not None))

    def _binop(op):  # noqa: N805 - a rule factory used only in this class body
        def rule(self, meta, c):
            return BinOp(self._span(meta), op, c[0], c[1])
        return rule

    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")
    matmul, pow = _binop("@"), _binop("**")

    def compare(self, meta, c):
        return BinOp(self._span(meta), str(c[1]), c[0], c[2])

    def neg(self, meta, c):
        return Neg(self._span(meta), c[0])

    def kwarg(self, meta, c):
        return Kwarg(self._span(meta), str(c[0]), c[1])

    def call(self, meta, c):
        func, rest = c[0], [x for x in c[1:] if x is not None]
        args = tuple(x for x in rest if not isinstance(x, Kwarg))
        kwargs = tuple(x for x in rest if isinstance(x, Kwarg))
        self._once(f"{func}()", kwargs)
        return Call(self._span(meta), str(func), self._span(func), args, kwargs)

    def _once(self, what: str, kwargs) -> None:
        """Each keyword given once: a second one would silently replace the first."""
        for k, kw in enumerate(kwargs):
            first = next((x for x in kwargs[:k] if x.name == kw.name), None)
            if first is not None:
                self.errors.append(Diagnostic(f"{what} got '{kw.name}' twice", kw.span,
                                              "give each argument once",
                                              [("first given here", first.span)]))

    def pipe(self, meta, c):
        return Pipe(self._span(meta), c[0], c[1])

    def slice(self, meta, c):
        return Slice(self._span(meta), *c)

    def subscript(self, meta, c):
        return Subscript(self._span(meta), c[0], tuple(c[1:]))

    # *** statements ***
    def tensor_type(self, meta, c):
        dims = tuple(x for x in c[1:] if x is not None)
        return TensorType(self._span(meta), str(c[0]), self._span(c[0]), dims)

    def input_stmt(self, meta, c):
        return Input(self._span(meta), str(c[0]), c[1])

    def param_stmt(self, meta, c):
        return ParamDecl(self._span(meta), str(c[0]), c[1], c[2], c[3])

    def symbol_stmt(self, meta, c):
        return Symbol(self._span(meta), tuple(str(t) for t in c))

    def assign(self, meta, c):
        return Assign(self._span(meta), tuple(str(t) for t in c[:-1]), c[-1])

    def scan_args(self, meta, c):
        return tuple(x for x in c if x is not None)

    def scan_over(self, meta, c):
        return tuple(c)

    def scan_expr(self, meta, c):
        over = tuple(x for x in c[2] if not isinstance(x, Kwarg))
        options = tuple(x for x in c[2] if isinstance(x, Kwarg))
        self._once("scan", options)
        return Scan(self._span(meta), self.call(meta, [c[0], *c[1]]), over, options)

    def output_stmt(self, meta, c):
        return Output(self._span(meta), str(c[0]), c[1])

    def loss_stmt(self, meta, c):
        return Loss(self._span(meta), None if c[0] is None else str(c[0]), c[1])

    def metric_stmt(self, meta, c):
        return Metric(self._span(meta), str(c[0]), c[1])

    def return_stmt(self, meta, c):
        return Return(self._span(meta), tuple(c))

    def repeat_stmt(self, meta, c):
        return Repeat(self._span(meta), c[0], tuple(c[1:]))

    # *** top level ***
    def param(self, meta, c):
        return Param(self._span(meta), str(c[0]), c[1])

    def params(self, meta, c):
        return tuple(x for x in c if x is not None)

    def setting(self, meta, c):
        return Setting(self._span(meta), str(c[0]), c[1])

    def import_stmt(self, meta, c):
        return Import(self._span(meta), _unquote(str(c[0])))

    def model_def(self, meta, c):
        has_params = len(c) > 1 and isinstance(c[1], tuple)
        params = c[1] if has_params else ()
        body = c[2:] if has_params else c[1:]
        return ModelDef(self._span(meta), str(c[0]), params, tuple(body))

    def block_def(self, meta, c):
        return BlockDef(self._span(meta), str(c[0]), c[1], tuple(c[2:]))

    def train_def(self, meta, c):
        return TrainDef(self._span(meta), str(c[0]), tuple(c[1:]))

    def generate_def(self, meta, c):
        return GenerateDef(self._span(meta), str(c[0]), tuple(c[1:]))

    def start(self, meta, c):
        return Module(self._span(meta), tuple(c), self.file, self.source)
