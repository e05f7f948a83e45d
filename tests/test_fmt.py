"""`nnlang fmt`: canonical text is a fixed point (fmt(fmt(x)) == fmt(x)), parses to the same
syntax tree as the original (spans aside), and keeps every comment. Runs on every model, every
error case that parses, and every ```nn block of docs/language.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnlang.errors import NNError
from nnlang.frontend.fmt import format_source, strip_spans
from nnlang.frontend.parser import parse

ROOT = Path(__file__).resolve().parents[1]


def sources() -> dict[str, str]:
    out = {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted(
        [*(ROOT / "models").glob("*.nn"), *(ROOT / "tests" / "errors").glob("*.nn")])}
    doc = ROOT / "docs" / "language.md"
    if doc.exists():
        for k, block in enumerate(re.findall(r"```nn\n(.*?)```", doc.read_text(), re.S)):
            out[f"docs/language.md#{k}"] = block
    return out


SOURCES = sources()


def _parses(text: str) -> bool:
    try:
        parse(text)
        return True
    except NNError:
        return False


@pytest.mark.parametrize("name", [n for n, s in SOURCES.items() if _parses(s)])
def test_idempotent_and_same_tree(name):
    src = SOURCES[name]
    once = format_source(src)
    assert format_source(once) == once
    assert strip_spans(parse(once)) == strip_spans(parse(src))
    comments = [c.strip() for c in re.findall(r"#[^\n]*", src)]
    assert [c.strip() for c in re.findall(r"#[^\n]*", once)] == comments


def test_models_are_canonical():
    """The checked-in models are already formatted (`nnlang fmt --check models/*.nn`)."""
    for p in sorted((ROOT / "models").glob("*.nn")):
        assert format_source(p.read_text()) == p.read_text(), p.name


CASES = {
    # input -> canonical output
    "model M(a=1,b = -2){input x:float32[batch,10]\n y=x+1*2}":
        "model M(a = 1, b = -2) {\n  input x: float32[batch, 10]\n  y = x + 1 * 2\n}\n",
    "model M { y = (a + b) * c - (d - e) }": "model M {\n  y = (a + b) * c - (d - e)\n}\n",
    "model M { y = a - (b - c) ** -2 }": "model M {\n  y = a - (b - c) ** -2\n}\n",
    "model M { y = -(a ** 2) + (-a) ** 2 }": "model M {\n  y = -a ** 2 + (-a) ** 2\n}\n",
    "model M { y = (a |> f) |> g(k=1) }": "model M {\n  y = a |> f |> g(k = 1)\n}\n",
    "model M { y = x |> (f(a)) }": "model M {\n  y = x |> f(a)\n}\n",
    "model M { y = f(a + b |> g) }": "model M {\n  y = f(a + b |> g)\n}\n",
    "model M { m = (a == b) == c }": "model M {\n  m = (a == b) == c\n}\n",
    "model M { y = x[:, 1:3, :2, 4:][0] }": "model M {\n  y = x[:, 1:3, :2, 4:][0]\n}\n",
    "model M { s = f('a\"b', \"c\", [1, 2.5e-3, true, none]) }":
        "model M {\n  s = f('a\"b', \"c\", [1, 2.5e-3, true, none])\n}\n",
    "block B(x, n=2) { repeat n { x = f(x) } return x }":
        "block B(x, n = 2) {\n  repeat n {\n    x = f(x)\n  }\n  return x\n}\n",
    "train M { batch=3 optimizer=adam(lr=1e-3) }":
        "train M {\n  batch = 3\n  optimizer = adam(lr = 1e-3)\n}\n",
    "import 'a.nn'\nmodel M {}": 'import "a.nn"\n\nmodel M {}\n',
}


@pytest.mark.parametrize("src", list(CASES))
def test_canonical_form(src):
    assert format_source(src) == CASES[src]
    assert strip_spans(parse(CASES[src])) == strip_spans(parse(src))


def test_comments_and_blank_lines():
    src = ("# top\nmodel M { # header\n  # lead\n  a = f(x)   # tail\n\n\n\n  b = g(a,\n"
           "    # inside\n    k = 1)  # end\n  # last\n}\n# bottom\n")
    want = ("# top\nmodel M {  # header\n  # lead\n  a = f(x)  # tail\n\n  # inside\n"
            "  b = g(a, k = 1)  # end\n  # last\n}\n# bottom\n")
    assert format_source(src) == want
    assert format_source(want) == want


def test_comment_after_a_one_line_block_stays_after_its_brace():
    # a comment after `}` of a block written on one line is about the block, not its last
    # statement: it stays on the closing brace's line
    src = "model M {\n  repeat 2 { x = f(x) }  # after repeat\n}\ntrain M { batch = 2 }  # after\n"
    want = ("model M {\n  repeat 2 {\n    x = f(x)\n  }  # after repeat\n}\n\n"
            "train M {\n  batch = 2\n}  # after\n")
    assert format_source(src) == want
    assert format_source(want) == want


def test_empty_body_has_one_canonical_form():
    # the same tree gives the same text, however the empty braces were spread over lines
    for src in ("model M {}", "model M {\n}", "model M {\n\n}\n"):
        assert format_source(src) == "model M {}\n"
    assert format_source("train M {\n}") == "train M {}\n"
    assert format_source("model M {\n}  # after") == "model M {}  # after\n"
    # a comment inside keeps the braces apart
    assert format_source("model M {\n  # soon\n}") == "model M {\n  # soon\n}\n"


def test_import_path_with_a_double_quote():
    # an import path is a string like any other: one with `"` in it is written in '...'
    src = "import 'odd\"name.nn'\nmodel M {}\n"
    once = format_source(src)
    assert once == "import 'odd\"name.nn'\n\nmodel M {}\n"
    assert strip_spans(parse(once)) == strip_spans(parse(src))


def test_lines_counted_at_newlines_only():
    # a form feed or U+2028 in a comment or string is not a line break for the parser, so the
    # formatter must not count it as one either (a trailing comment moved, a blank line was lost)
    for odd in ("\x0c", "\u2028", "\x1c"):
        src = f"model M {{\n  # note{odd}more\n  a = f(x)\n\n  b = g(a)  # tail\n}}\n"
        assert format_source(src) == src


def test_comments_inside_a_header_spread_over_lines_move_above_it():
    # as in any statement joined onto one line; a comment in a block's parameter list was put
    # into the block's body, or at the end of the joined header line
    src = ("block B(x,  # the input\n  # steps\n  n = 2) {\n  return x\n}\n"
           "model M(a = 1,  # first\n  b = 2) {  # header\n  repeat a +\n    # why\n    b {\n"
           "    y = f(y)\n  }\n}\n")
    want = ("# the input\n# steps\nblock B(x, n = 2) {\n  return x\n}\n\n"
            "# first\nmodel M(a = 1, b = 2) {  # header\n  # why\n  repeat a + b {\n"
            "    y = f(y)\n  }\n}\n")
    assert format_source(src) == want
    assert format_source(want) == want
    assert format_source("model M(a = 1,  # first\n  b = 2) {\n}") == \
        "# first\nmodel M(a = 1, b = 2) {}\n"
