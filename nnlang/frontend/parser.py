"""Text to syntax tree: loads `grammars/nnlang.lark` once and turns lark's errors into `NNError`s.

Syntax errors get a caret at the offending token, the tokens that would have fit, and a hint
chosen by matching the failure against small examples of common mistakes (lark's
`match_examples`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput

from nnlang.errors import Diagnostic, NNError, Span, closest, did_you_mean
from nnlang.frontend import ast
from nnlang.frontend.deep import NestingGuard, TooDeep, check_nesting, too_deep
from nnlang.frontend.source import read_source


def grammar_path() -> Path:
    """The grammar file: inside the installed wheel, or grammars/ in a source checkout."""
    try:
        packaged = resources.files("nnlang.grammars") / "nnlang.lark"
        if packaged.is_file():
            return Path(str(packaged))
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "grammars" / "nnlang.lark"


@lru_cache(maxsize=None)
def parser(strict: bool = False) -> Lark:
    return Lark(grammar_path().read_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True, cache=not strict, strict=strict,
                postlex=NestingGuard())


# Common mistakes, each a label and inputs that fail in the same parser state.
_MISTAKES = {
    # NOTE: a number after a name reaches the state of `f(k: 1)` (the scan's `over` takes
    # keyword arguments too); the ':' example still wins there by its exact token
    "missing ',' between arguments": ["model M { y = f(a b) }", "model M { y = f(a, b c) }",
                                      "model M { y = f(a, k = 1 b) }", "model M { y = f(a 1) }",
                                      "model M { y = f(a, b 2) }"],
    "keyword arguments use '=', not ':'": ["model M { y = f(a, k: 1) }", "model M { y = f(k: 1) }"],
    "a statement is `name = expression`; is the '=' missing?": [
        "model M { y f(a) }", "model M { y 1 }"],
    "an input needs a type, e.g. `input x: float32[batch, 10]`": [
        "model M { input x }", "model M { input x: float32 }", "model M { input x = 1 }"],
    # NOTE: no "'{' is never closed" examples: matched by parser state alone they named a
    # brace that was closed (`model M(a = 1 2, ...) {` fails in the state of `train M {
    # batch = 1` at the end); `_unclosed_brace` and `_section_in_open_block` read the braces
    "'(' is never closed": ["model M { y = f(a }", "model M { y = f(a, b }"],
    "use '==' to compare; '=' only binds names": ["model M { y = a = b }"],
    # NOTE: Keras' and PyTorch's tuples: kernel_size = (3, 3), dim = (2, 3)
    "parentheses group one expression; a tuple is a list in brackets: `axis = [0, 1]`, "
    "`kernel = [3, 3]`": [
        "model M { y = f(a, (3, 3)) }", "model M { y = f((3, 3)) }",
        "model M { y = f(a, k = (3, 3)) }", "model M { y = f(a, (1, 2, 3)) }",
        "model M { y = f(x, axis = (0, 1)) }", "model M { y = f(x, (0, 1)) }",
        "model M { output y = f(x, axis = (0, 1)) }"],
    "a loss is `loss expression` or, named, `loss name = expression`": [
        "model M { loss = f(a) }"],
    "a metric is `metric name = expression`": ["model M { metric = f(a) }"],
    "one output per statement: `output a` and `output b` on their own lines": [
        "model M { output a, b }", "model M { output a, b = f(x) }"],
    "a param's `trainable = false` follows its type or initializer without a ',': "
    "`param w: float32[4] = ones trainable = false`": [
        "model M { param w: float32[4] = ones, trainable = false }",
        "model M { param w: float32[4], trainable = false }",
        "model M { param w: float32[4] = normal(std = 1), trainable = false }"],
    "a train section holds settings like `batch = 64`": ["train M { batch 64 }"],
    "settings are separated by spaces or new lines, not ','": [
        "train M { batch = 64, seed = 1 }", "train M { data = mnist, seed = 1 }",
        "train M { optimizer = adam(lr = 1), seed = 1 }", "train M { batch = 64, }"],
    "comparisons do not chain: compare two values at a time": [
        "model M { y = a == b == c }", "model M { y = a < b < c }",
        "model M { output y = a == b == c }", "model M { output y = a < b < c }",
        "model M { y = f(a == b == c) }"],
    # NOTE: right after '=', `scan` is the loop keyword (grammars/nnlang.lark), not a call
    "after '=', scan runs a block once per step: `hs, h = scan Cell(h0) over x` (the op "
    "table's scan is what rnn, lstm and gru build; it is not called by hand)": [
        "model M { y = scan(x) }", "model M { y = scan(x, body = 1) }",
        "model M { y = scan Cell over x }", "model M { y, h = scan(x) }",
        "model M { y, h = scan Cell over x }"],
    "after the block's call, a scan names the sequences it runs over: `hs, h = scan Cell(h0) "
    "over x` (then `, reverse = true` for the steps from last to first)": [
        "model M { y, h = scan Cell(h0) }", "model M { y, h = scan Cell(h0) loss f(y) }",
        "model M { y, h = scan Cell(h0, w = 1) output y }", "model M { y = scan Cell() }",
        # NOTE: the cell's block comes before the model: one item deeper on the parser stack
        "block B(x) { return x } model M { y, h = scan B(h0) }",
        "block B(x) { return x } model M { y, h = scan B(h0) loss f(y) }",
        "block B(x) { return x } model M { y, h = scan B(h0, w = 1) }",
        "block B(x) { return x } model M { y, h = scan B(h0, w = 1) output y }"],
}



def _with_earlier_statements(examples: dict) -> dict:
    """Each example again after one earlier statement: lark compares parser states by stack
    depth, and the first statement of a body sits one level shallower than later ones."""
    out = {}
    for label, texts in examples.items():
        extra = [t.replace("model M { ", "model M { input q: float32[1] ", 1)
                  .replace("train M { ", "train M { seed = 1 ", 1)
                  .replace("block B(x) { ", "block B(x) { q = x ", 1) for t in texts]
        out[label] = texts + [t for t in extra if t not in texts]
    return out


_MISTAKES = _with_earlier_statements(_MISTAKES)
_MAX_SYNTAX_ERRORS = 10

_TOKEN_TEXT = {"$END": "end of file", "NAME": "a name", "NUMBER": "a number",
               "STRING": "a string", "COMPARE": "a comparison"}


def _describe_expected(p: Lark, expected) -> str:
    names = []
    for term in sorted(expected):
        if term in _TOKEN_TEXT:
            names.append(_TOKEN_TEXT[term])
            continue
        pattern = next((t.pattern for t in p.terminals if t.name == term), None)
        if pattern is not None and pattern.type == "str":
            names.append(f"'{pattern.value}'")
    return " or ".join(names) if len(names) <= 3 else ", ".join(names[:6]) + ", ..."


def _diagnostic(err: UnexpectedInput, file: str, source: str) -> Diagnostic:
    p = parser()
    line, col = err.line, err.column
    at_end = _at_end(err)
    if isinstance(err, UnexpectedCharacters):
        char = source[err.pos_in_stream] if err.pos_in_stream < len(source) else "?"
        shown = f"'{char}'" if char.isprintable() else f"U+{ord(char):04X}"
        msg = f"unexpected character {shown}"
        span = Span(file, line, col, line, col + 1, source)
        hint = _character_hint(char)
        if source.startswith("...", err.pos_in_stream):
            hint = "no '...' (ellipsis) in a subscript: write every leading axis, `x[:, 0]`"
        if char == "." and re.search(r"\bmodel\s*$", source[:err.pos_in_stream]):
            hint = ("nnlang has no model.add(): write each layer as a statement, "
                    "`h = dense(x, 64)`, inside `model Name { ... }`")
        if hint:
            return Diagnostic(msg, span, hint)
    else:
        tok = getattr(err, "token", None)
        if at_end:
            msg = "unexpected end of file"
            # NOTE: "\n" only, as Span counts lines (splitlines() also breaks at a form feed
            # or U+2028 in a comment, and the line named was past the end of the file)
            lines = source.removesuffix("\n").split("\n")
            line, col = len(lines), len(lines[-1]) + 1
            span = Span(file, line, col, line, col + 1, source)
        else:
            msg = f"unexpected '{tok}'"
            span = Span(file, tok.line, tok.column, tok.end_line, tok.end_column, source)
        expected = getattr(err, "expected", None) or getattr(err, "accepts", None)
    hint = None if isinstance(err, UnexpectedCharacters) else \
        _section_in_open_block(err, source) or _habit_hint(err, source)
    try:
        # NOTE: use_accepts=True trips a formatting bug in lark 1.3's debug logging
        hint = hint or err.match_examples(p.parse, _MISTAKES, use_accepts=False)
    except Exception:  # NOTE: matching is best effort; a failed match must not hide the error
        hint = None
    unclosed = _unclosed_brace(source) if at_end else None
    if unclosed:
        hint = f"the '{{' on line {unclosed} is never closed; add '}}' at the end of its block"
    if not hint and not isinstance(err, UnexpectedCharacters) and expected:
        msg += f"; expected {_describe_expected(p, expected)}"
    return Diagnostic(msg, span, hint)


KEYWORDS = ("model", "block", "train", "generate", "import", "input", "param", "symbol",
            "output", "loss", "metric", "return", "repeat")
# what a PyTorch or Keras call's module prefix is; `F.relu(x)` is `relu(x)`
_MODULES = {"nn", "F", "torch", "tf", "keras", "layers", "functional", "K", "np"}
# a keyword used as a value's name (`input = ...`, `output = dense(x, 4)`): how it is written
_KEYWORD_FORMS = {
    "input": "`input` declares an input, `input x: float32[batch, 8]`; name a value otherwise",
    "output": "an output is `output y = expression` (or `output y` for a value defined before)",
    "param": "`param` declares a weight, `param w: float32[8, 4]`; name a value otherwise",
    "symbol": "`symbol seq` declares a size that comes with the data; name a value otherwise",
    "return": "a block ends with `return value`",
    "repeat": "`repeat N { ... }` stacks a body N times; name a value otherwise",
    "model": "`model Name { ... }` starts a model; name a value otherwise",
    "block": "`block Name(x) { ... }` starts a block; name a value otherwise",
}
_PYTHON_STATEMENTS = {
    "for": "no loops: `repeat N { ... }` stacks a body N times (`h = dense(h, 64)` inside "
           "carries h from one copy to the next)",
    "while": "no loops: `repeat N { ... }` stacks a body N times",
    "if": "no conditionals: a graph is fixed when checked; compute both and select with "
          "`where(cond, a, b)`",
    "def": "a function is a block: `block Name(x, units) { ... return y }`",
    "class": "a model is `model Name(hyper = 1) { input ... }`; a reusable part is a `block`",
}
_DOTTED_CALL = re.compile(r"([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)\s*$")


def _habit_hint(err: UnexpectedInput, source: str) -> str | None:
    """Hints for what Keras and PyTorch code brings along, read from the failing line: a
    misspelt keyword, a method or module call (`x.view(...)`, `F.relu(x)`) and a layer object
    called on its input (`Dense(64)(x)`)."""
    tok = getattr(err, "token", None)
    lines = source.split("\n")
    if not isinstance(tok, Token) or _at_end(err) or not 0 < tok.line <= len(lines):
        return None
    line = lines[tok.line - 1]
    before = line[:tok.column - 1]
    if "//" in line[max(tok.column - 2, 0):tok.column + 1]:
        return "comments start with '#'"
    first = re.fullmatch(r"\s*([A-Za-z_]\w*)\s+", before)
    # a statement starts with a keyword or `name =`, an item with a keyword: a word then a
    # name, or an unknown word opening an item, is a misspelt keyword (`inptu x`, `Model M`)
    word = first.group(1) if first else tok if not before.strip() and tok.type == "NAME" else None
    if word in _PYTHON_STATEMENTS:
        return _PYTHON_STATEMENTS[word]
    if word and word not in KEYWORDS:
        guess = did_you_mean(word, KEYWORDS)
        if guess:
            return f"did you mean the keyword {guess.removeprefix('did you mean ')}"
    if tok == "=" and before.strip() in _KEYWORD_FORMS:
        return _KEYWORD_FORMS[before.strip()]
    if tok != "(":
        return None
    if before.rstrip().endswith(")"):
        return ("a call gives a tensor, not a layer to call again: pass the input first, "
                "`dense(x, 64, activation = \"relu\")`")
    dotted = _DOTTED_CALL.search(before)
    if dotted:
        from nnlang.ops import registry

        head, name = dotted.group(1), dotted.group(2).rsplit(".", 1)[-1]
        ops = [n for n in registry.all_ops() if n != "scan"]
        # NOTE: a stricter cutoff than a typo's: a method name is often no op at all
        op = name if name in ops else closest(name, ops, cutoff=0.8) or "op"
        call = f"`{op}(...)`" if head in _MODULES else f"`{op}({head}, ...)`"
        return (f"nnlang has no methods or modules: call an op by name, its tensor first: "
                f"{call}" + (" (`nnlang ops` lists them)" if op == "op" else ""))
    return None


def _character_hint(char: str) -> str | None:
    if char in "\"'":
        return f"a string that is never closed: end it with {char} on the same line"
    if char == "\\":
        return "a statement may go on to the next line as it is; '\\' is not needed"
    if char == ";":
        return "statements end at the end of a line; ';' is not needed"
    if not char.isascii() and (char.isalpha() or char.isdigit()):
        return "names are ASCII letters, digits and '_' (text in quotes may be any UTF-8)"
    return None


class BadLiteral(NNError):
    """Source that parses but holds a number no float can hold (1e999)."""


def _at_end(err: UnexpectedInput) -> bool:
    tok = getattr(err, "token", None)
    return isinstance(err, UnexpectedEOF) or (isinstance(tok, Token) and tok.type == "$END")


def _still_open(lines: list[str], opens: str, closes: str) -> list[tuple[int, int, str]]:
    """(line, column, char) of each of `opens` that none of `closes` closes in `lines`, in order
    (strings and comments skipped)."""
    opened: list[tuple[int, int, str]] = []
    for number, line in enumerate(lines, 1):
        quote = None
        for col, ch in enumerate(line, 1):
            if quote:
                quote = None if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                break
            elif ch in opens:
                opened.append((number, col, ch))
            elif ch in closes and opened:
                opened.pop()
    return opened


def _unclosed_brace(source: str) -> int | None:
    """The line of the last '{' that no '}' closes."""
    opened = _still_open(source.split("\n"), "{", "}")
    return opened[-1][0] if opened else None


_SECTION = re.compile(r"(?:model|block|train|generate|import)\b")


def _section_in_open_block(err: UnexpectedInput, source: str) -> str | None:
    """A section keyword opening a line inside a '{' still open there: the block before it
    lacks its '}' (else `train M {` read as a statement said "is the '=' missing?")."""
    tok = getattr(err, "token", None)
    if not isinstance(tok, Token) or _at_end(err):
        return None
    lines = source.split("\n")
    if not 0 < tok.line <= len(lines) or not _SECTION.match(lines[tok.line - 1]):
        return None
    opened = _still_open(lines[:tok.line - 1], "{", "}")
    if not opened:
        return None
    return (f"the '{{' on line {opened[-1][0]} is never closed; add '}}' before line "
            f"{tok.line}, where the next section starts")


_STATEMENT = re.compile(r"\s*(?:(?:output|loss|input|metric|return)\b|\w+\s*=(?!=)|})")


def _open_bracket(text: str, err: UnexpectedInput) -> tuple[int, int, str] | None:
    """(line, column, char) of a '(' or '[' opened on a line before `err` and still open there,
    when the failing line reads as a new statement: the bracket then swallowed the lines after
    it, and each of them would be reported instead of the one line missing its ')'."""
    tok = getattr(err, "token", None)
    if isinstance(err, UnexpectedCharacters) or not isinstance(tok, Token) or _at_end(err):
        return None
    lines = text.split("\n")
    if not 0 < tok.line <= len(lines) or not _STATEMENT.match(lines[tok.line - 1]):
        return None
    opened = _still_open(lines[:tok.line - 1], "([", ")]")
    return opened[-1] if opened else None


def parse(source: str, file: str = "<string>") -> ast.Module:
    """Parses .nn source into an `ast.Module`; syntax errors raise one `NNError` listing them.
    Lines end at "\n", "\r\n" or a lone "\r" (old Mac files), as the error printer counts
    them."""
    errors: list[Diagnostic] = []
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    text = source
    for _ in range(_MAX_SYNTAX_ERRORS):
        try:
            tree = parser().parse(text)
            break
        except TooDeep as err:
            raise too_deep(Span(file, err.start.line, err.start.column, err.at.end_line,
                                err.at.end_column, source)) from None
        except UnexpectedInput as err:
            lines = text.split("\n")
            bracket = _open_bracket(text, err)
            if bracket:
                line, col, char = bracket
                close = ")" if char == "(" else "]"
                errors.append(Diagnostic(
                    f"'{char}' is never closed", Span(file, line, col, line, col + 1, source),
                    f"add '{close}' at the end of line {line}; a call or list that goes on to "
                    f"the next line separates its items with ','"))
                bad_line = line
            else:
                errors.append(_diagnostic(err, file, source))
                bad_line = err.line
            # NOTE: to find independent mistakes, blank the failing line and parse again; a
            # line that opens or closes a brace, or closes a bracket an earlier line opened,
            # would leave only echoes behind, so stop there.
            bad = lines[bad_line - 1] if 0 < bad_line <= len(lines) else "{"
            closes = bad.count(")") > bad.count("(") or bad.count("]") > bad.count("[")
            if _at_end(err) or "{" in bad or "}" in bad or closes:
                break
            lines[bad_line - 1] = " " * len(bad)
            text = "\n".join(lines)
    if errors:
        raise NNError(errors)
    to_ast = ast.ToAst(file, source)
    module = to_ast.transform(tree)
    if to_ast.errors:
        raise BadLiteral(to_ast.errors)
    check_nesting(module)
    _check_scan_options(module)
    return module


def _check_scan_options(module: ast.Module) -> None:
    """`over x reverse = true`: statements need no separator, so a name = value right after a
    scan's sequences, without a comma, parses as a statement of its own; on the scan's own
    line that is an option meant for the scan (the loop ran forward). Checked at the parse, so
    `nnlang fmt` refuses it too: it moved the value to a line of its own, hiding the mistake."""
    found = []

    def walk(body):
        for prev, stmt in zip((None, *body), body):
            if isinstance(stmt, ast.Repeat):
                walk(stmt.body)
            if not (isinstance(prev, ast.Assign) and isinstance(prev.value, ast.Scan) and
                    isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and
                    stmt.span.line == prev.value.span.end_line):
                continue
            name, scan = stmt.targets[0], prev.value
            written = scan.over[-1].span.text() or "x"
            value = stmt.value.span.text() or "..."
            if name == "reverse":
                hint = (f"the loop's options follow its sequences after a comma: over "
                        f"{written}, reverse = {value}")
            else:
                hint = (f"the block's own options go in its call: scan {scan.call.func}(..., "
                        f"{name} = {value}) over ...; a value of its own goes on a line of "
                        "its own")
            found.append(Diagnostic(f"scan: `{name} = {value}` right after the scan starts a "
                                    f"new statement (a value named '{name}'), not an option "
                                    "of the scan", stmt.span, hint))
    for item in module.items:
        if isinstance(item, (ast.ModelDef, ast.BlockDef)):
            walk(item.body)
    if found:
        raise NNError(found)


def parse_file(path: str | Path) -> ast.Module:
    return parse(read_source(path), str(path))
