"""The grammar is conflict-free under lark's strict mode, and every model file parses."""
from __future__ import annotations

from pathlib import Path

import pytest

from nnlang.errors import NNError
from nnlang.frontend import ast
from nnlang.frontend.parser import parse, parse_file, parser

ROOT = Path(__file__).resolve().parents[1]


def test_grammar_is_strict():
    pytest.importorskip("interegular")
    parser(strict=True)  # raises on LALR conflicts and terminal collisions


@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*.nn")), ids=lambda p: p.name)
def test_models_parse(path):
    assert isinstance(parse_file(path), ast.Module)


def test_precedence_and_pipes():
    m = parse("model M { y = -a ** 2 + b * c @ d |> f(k = 1) }")
    pipe = m.items[0].body[0].value
    assert isinstance(pipe, ast.Pipe) and pipe.target.func == "f"
    add = pipe.value
    assert add.op == "+" and isinstance(add.left, ast.Neg) and add.left.operand.op == "**"
    assert add.right.op == "@" and add.right.left.op == "*"


def test_numbers_strings_lists_and_comments():
    m = parse('model M(a = 1e-3, b = "same", c = [1, 2,], d = .5) { } # trailing comment')
    values = [p.default for p in m.items[0].params]
    assert values[0].value == 1e-3 and values[1].value == "same"
    assert [x.value for x in values[2].items] == [1, 2] and values[3].value == 0.5


def test_spans_point_at_tokens():
    m = parse("model M {\n  y = dense(x, 4)\n}", "f.nn")
    call = m.items[0].body[0].value
    assert (call.span.line, call.span.col, call.func_span.end_col) == (2, 7, 12)


def test_syntax_errors_are_collected_with_hints():
    with pytest.raises(NNError) as info:
        parse("model M {\n  y = f(a b)\n  z = g(c, k: 1)\n}", "bad.nn")
    text = str(info.value)
    assert "bad.nn:2:11: error: unexpected 'b'" in text
    assert "missing ',' between arguments" in text
    assert "bad.nn:3:13" in text and "2 errors" in text
