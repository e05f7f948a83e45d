"""Syntax tree back to canonical .nn text (`nnlang fmt`): 2-space indent, one statement per line,
spaces around binary operators and `=`, and the fewest parentheses that keep the tree the same.

Comments are kept. They are collected by lexing the source once more with a callback on the
ignored COMMENT terminal (lark's `lexer_callbacks`), then placed by line: a comment alone on its
line is printed before the statement that follows it, at that statement's indent; a comment after
code on a statement's last line stays at the end of that line (one after a block's `}` stays after
the `}`, also when the block was on one line); comments inside a statement that
spans several lines move above it (the statement is joined onto one line). Runs of blank lines
between statements become one blank line. `format_source(format_source(x)) == format_source(x)`.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass
from functools import lru_cache

from lark import Lark

from nnlang.frontend import ast
from nnlang.frontend.deep import deep_stack
from nnlang.frontend.parser import grammar_path, parse

INDENT = "  "

# NOTE: the recursive helpers join lists, not generators: a generator that join() consumes
# recurses on the C stack, and a chain thousands of terms deep would overflow it.

# Binding strength of each expression form, loosest first (see grammars/nnlang.lark).
PIPE, COMPARE, ARITH, TERM, UNARY, POWER, POSTFIX, ATOM = range(1, 9)
_BINOP_LEVEL = {"+": ARITH, "-": ARITH, "*": TERM, "/": TERM, "@": TERM, "**": POWER,
                "==": COMPARE, "!=": COMPARE, "<": COMPARE, "<=": COMPARE, ">": COMPARE,
                ">=": COMPARE}


@deep_stack
def format_source(source: str, file: str = "<string>") -> str:
    """Canonical text of .nn source; raises NNError when it does not parse."""
    module = parse(source, file)
    return Formatter(_comments(source), source).module(module)


@deep_stack
def format_module(module: ast.Module) -> str:
    return Formatter(_comments(module.source), module.source).module(module)


# *** expressions ***

def level(e) -> int:
    if isinstance(e, ast.Pipe):
        return PIPE
    if isinstance(e, ast.BinOp):
        return _BINOP_LEVEL[e.op]
    if isinstance(e, ast.Neg):
        return UNARY
    if isinstance(e, (ast.Call, ast.Subscript)):
        return POSTFIX
    return ATOM


def expr(e, min_level: int = PIPE) -> str:
    text = _expr(e)
    return f"({text})" if level(e) < min_level else text


def _expr(e) -> str:
    if isinstance(e, ast.Number):
        return e.text
    if isinstance(e, ast.String):
        return string(e.value)
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ast.NoneLit):
        return "none"
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.WeightRef):
        return e.path
    if isinstance(e, ast.ListLit):
        return "[" + ", ".join([expr(x) for x in e.items]) + "]"
    if isinstance(e, ast.Neg):
        return "-" + expr(e.operand, UNARY)
    if isinstance(e, ast.BinOp):
        lv = _BINOP_LEVEL[e.op]
        if lv == COMPARE:  # non-associative: both sides are arithmetic
            left, right = expr(e.left, ARITH), expr(e.right, ARITH)
        elif lv == POWER:  # postfix ** unary (right-associative)
            left, right = expr(e.left, POSTFIX), expr(e.right, UNARY)
        else:  # left-associative: the right side binds one level tighter
            left, right = expr(e.left, lv), expr(e.right, lv + 1)
        return f"{left} {e.op} {right}"
    if isinstance(e, ast.Pipe):
        return f"{expr(e.value, PIPE)} |> {expr(e.target, POSTFIX)}"
    if isinstance(e, ast.Call):
        args = [expr(a) for a in e.args] + [f"{k.name} = {expr(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(args)})"
    if isinstance(e, ast.Subscript):
        return f"{expr(e.value, POSTFIX)}[{', '.join([_index(i) for i in e.indices])}]"
    if isinstance(e, ast.Kwarg):
        return f"{e.name} = {expr(e.value)}"
    raise TypeError(f"cannot format {type(e).__name__}")


def string(value: str) -> str:
    """A string literal: in '...' when the text holds a `"` (there are no escapes)."""
    return f"'{value}'" if '"' in value else f'"{value}"'


def _index(i) -> str:
    if isinstance(i, ast.Slice):
        return (expr(i.start) if i.start else "") + ":" + (expr(i.stop) if i.stop else "") + \
            (":" + expr(i.step) if i.step else "")
    return expr(i)


def tensor_type(t: ast.TensorType) -> str:
    return f"{t.dtype}[{', '.join(expr(d) for d in t.dims)}]"


def _params(ps) -> str:
    return ", ".join([p.name if p.default is None else f"{p.name} = {expr(p.default)}"
                      for p in ps])


def statement_head(s) -> str:
    """One statement on one line (a repeat gives only its `repeat N {` line)."""
    if isinstance(s, ast.Input):
        return f"input {s.name}: {tensor_type(s.type)}"
    if isinstance(s, ast.ParamDecl):
        init = f" = {expr(s.init)}" if s.init is not None else ""
        frozen = f" trainable = {expr(s.trainable)}" if s.trainable is not None else ""
        return f"param {s.name}: {tensor_type(s.type)}{init}{frozen}"
    if isinstance(s, ast.Symbol):
        return "symbol " + ", ".join(s.names)
    if isinstance(s, ast.Assign):
        if isinstance(s.value, ast.Scan):
            over = ", ".join(expr(v) for v in (*s.value.over, *s.value.options))
            return f"{', '.join(s.targets)} = scan {expr(s.value.call)} over {over}"
        return f"{', '.join(s.targets)} = {expr(s.value)}"
    if isinstance(s, ast.Output):
        return f"output {s.name}" + (f" = {expr(s.value)}" if s.value is not None else "")
    if isinstance(s, ast.Loss):
        return "loss " + (f"{s.name} = " if s.name else "") + expr(s.value)
    if isinstance(s, ast.Metric):
        return f"metric {s.name} = {expr(s.value)}"
    if isinstance(s, ast.Return):
        return "return " + ", ".join([expr(v) for v in s.values])
    if isinstance(s, ast.Setting):
        return f"{s.name} = {expr(s.value)}"
    if isinstance(s, ast.Import):
        return f"import {string(s.path)}"
    if isinstance(s, ast.Repeat):
        return f"repeat {expr(s.count)} {{"
    if isinstance(s, ast.ModelDef):
        return f"model {s.name}" + (f"({_params(s.params)})" if s.params else "") + " {"
    if isinstance(s, ast.BlockDef):
        return f"block {s.name}({_params(s.params)}) {{"
    if isinstance(s, ast.TrainDef):
        return f"train {s.name} {{"
    if isinstance(s, ast.GenerateDef):
        return f"generate {s.name} {{"
    raise TypeError(f"cannot format {type(s).__name__}")


# *** comments and layout ***

@lru_cache(maxsize=1)
def _comment_lexer():
    # NOTE: a basic (context-free) lexer is enough here: only COMMENT tokens are kept, and a '#'
    # inside a string is consumed by the STRING token, so it is never taken for a comment.
    return Lark(grammar_path().read_text(), parser="lalr", lexer="basic",
                lexer_callbacks={"COMMENT": lambda tok: _sink.append(tok)})


_sink: list = []


def _comments(source: str) -> list[tuple[int, int, str]]:
    """(line, column, text) of every comment in the source."""
    _sink.clear()
    for _ in _comment_lexer().lex(source):
        pass
    out = [(t.line, t.column, str(t).rstrip()) for t in _sink]
    _sink.clear()
    return out


class Formatter:
    def __init__(self, comments: list, source: str):
        # NOTE: "\n" only, as the parser counts lines: splitlines() also breaks at a form feed or
        # U+2028 inside a comment or string, and every later line would be looked up one off
        lines = source.split("\n")
        self.pending = sorted(comments)
        # a comment is "trailing" when code precedes it on its line
        self.trailing = {c for c in comments if lines[c[0] - 1][:c[1] - 1].strip()}
        self.blank = {i + 1 for i, text in enumerate(lines) if not text.strip()}
        self.out: list[str] = []

    def module(self, m: ast.Module) -> str:
        for k, item in enumerate(m.items):
            if k:
                self.out.append("")
            self.item(item, 0)
        self.flush_before(10**9, 0)
        while self.out and not self.out[-1]:
            self.out.pop()
        return "\n".join(self.out) + "\n" if self.out else ""

    def flush_before(self, line: int, depth: int):
        """Prints the comments that come before `line` as lines of their own."""
        while self.pending and self.pending[0][0] < line:
            self.out.append(INDENT * depth + self.pending.pop(0)[2])

    def take_trailing(self, first: int, last: int, depth: int) -> str:
        """Comments inside lines first..last: the one ending the last line is returned; others
        move above the statement."""
        tail = ""
        for c in [c for c in self.pending if first <= c[0] <= last]:
            self.pending.remove(c)
            if c[0] == last and c in self.trailing and not tail:
                tail = "  " + c[2]
            else:
                self.out.append(INDENT * depth + c[2])
        return tail

    def item(self, s, depth: int):
        start, end = s.span.line, s.span.end_line or s.span.line
        self.flush_before(start, depth)
        head = INDENT * depth + statement_head(s)
        body = None
        if isinstance(s, (ast.ModelDef, ast.BlockDef, ast.Repeat)):
            body = s.body
        elif isinstance(s, (ast.TrainDef, ast.GenerateDef)):
            body = s.settings
        if body is None:
            self.out.append(head + self.take_trailing(start, end, depth))
            return
        # a header spread over lines (`block B(x,  # c` / `n) {`) is joined: comments inside it
        # move above the block, as in any statement that spans lines
        parts = s.params if isinstance(s, (ast.ModelDef, ast.BlockDef)) else \
            (s.count,) if isinstance(s, ast.Repeat) else ()
        last = max([start] + [p.span.end_line or p.span.line for p in parts])
        for c in [c for c in self.pending if start <= c[0] < last]:
            self.pending.remove(c)
            self.out.append(INDENT * depth + c[2])
        # a comment after the closing brace is about the whole block, also when the last
        # statement shares the brace's line (`repeat 2 { x = f(x) }  # c`)
        after = [c for c in self.pending if c[0] == end and c[1] >= s.span.end_col]
        for c in after:
            self.pending.remove(c)
        brace = "  " + after[0][2] if after else ""
        # an empty body is `{}` unless comments sit between its braces (`model M {\n}` too)
        if not body and not any(start <= c[0] <= end for c in self.pending):
            self.out.append(head + "}" + brace)
            return
        # NOTE: a comment ending the header line stays there; comments below it open the body
        shares_line = body and body[0].span.line == last  # `model M { input x: ... # c`
        self.out.append(head + ("" if shares_line else self.take_trailing(last, last, depth)))
        prev_end = None
        for stmt in body:
            if prev_end is not None and self._gap(prev_end, stmt.span.line):
                self.out.append("")
            self.item(stmt, depth + 1)
            prev_end = stmt.span.end_line or stmt.span.line
        self.flush_before(end, depth + 1)
        self.out.append(INDENT * depth + "}" + (brace or self.take_trailing(end, end, depth)))

    def _gap(self, prev_end: int, start: int) -> bool:
        """Whether a blank line separates two statements (comments between them count as
        belonging to the second one)."""
        first = min([c[0] for c in self.pending if prev_end < c[0] < start] + [start])
        return any(prev_end < n < first for n in self.blank)


# *** comparing trees ***

_SPAN_FIELDS = {"span", "func_span", "dtype_span", "file", "source"}


@deep_stack
def strip_spans(node):
    """A nested tuple form of an AST without spans (and without the file name and source), so
    two parses can be compared: `strip_spans(parse(fmt(x))) == strip_spans(parse(x))`."""
    if is_dataclass(node):
        return (type(node).__name__,) + tuple([
            (f.name, strip_spans(getattr(node, f.name))) for f in fields(node)
            if f.name not in _SPAN_FIELDS])
    if isinstance(node, (tuple, list)):
        return tuple([strip_spans(x) for x in node])
    return node
