"""Bad .nn source and bad flags of the inspection and compile commands (issue 13): binary or
non-UTF-8 files, paths that are not files, very long chains, sizes no machine can hold,
overflowing numbers, truncated files and every op's arguments at their limits. Each case runs the
real `nnlang` command and expects a clear error that says where (exit 1; typer's own usage
errors exit 2), never a traceback or an internal error.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.faults.conftest import ROOT, cli

MLP = ROOT / "models" / "mlp.nn"

HEAD = """model M {
  input x: float32[batch, 3, 8, 8]
  input s: float32[batch, 6, 4]
  input v: float32[batch, 8]
  input t: int32[batch]
  input tok: int32[batch, 5]
"""


def model(*lines: str) -> str:
    """A model with inputs x (image), s (sequence), v (vector), t (labels), tok (token ids);
    the given statements start on line 7."""
    body = "".join(f"  {line}\n" for line in lines)
    return HEAD + body + "  loss mean(y)\n}\n"


def nn_file(tmp_path, content, name="m.nn"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def expect(out: str, *words: str) -> None:
    for w in words:
        assert w in out, f"{w!r} not in:\n{out}"


# *** the file itself ***

GARBAGE = bytes(range(256)) * 8  # NULs, one newline (byte 10) before the first non-UTF-8 byte


@pytest.mark.parametrize("command", [
    ["check"], ["fmt"], ["compile", "--backend", "reference"], ["graph", "-o", "{tmp}/g.dot"],
    ["train", "--max-steps", "1", "--out", "{tmp}/run"]])
def test_binary_file_is_named_not_decoded(tmp_path, command):
    path = nn_file(tmp_path, GARBAGE)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    out = cli(args[0], path, *args[1:])
    expect(out, f"{path}:2:118: error: not UTF-8 text: byte 0x80 at byte offset 128",
           "binary file")


def test_non_utf8_byte_is_located_by_line(tmp_path):
    path = nn_file(tmp_path, MLP.read_bytes().replace(b"hidden1 = 512", b"hidd\xe9n1 = 512"))
    out = cli("check", path)
    offset = MLP.read_bytes().index(b"hidden1 = 512") + 4
    expect(out, f"{path}:4:15: error: not UTF-8 text: byte 0xe9 at byte offset {offset}",
           "save the file as UTF-8")


@pytest.mark.parametrize("args, words", [
    (["train", "models/mlp"], ["file not found: models/mlp", "did you mean 'models/mlp.nn'?"]),
    (["check", "models/mpl.nn"], ["file not found: models/mpl.nn", "'models/mlp.nn'"]),
    (["compile", "models/nope.nn"], ["file not found: models/nope.nn"]),
    (["graph", "nowhere/m.nn", "-o", "x.dot"], ["file not found", "no such directory: nowhere"]),
    (["check", "models"], ["'models' is a directory", "models/mlp.nn", "models/cnn.nn"]),
    (["fmt", "models"], ["'models' is a directory"]),
    (["train", "tests"], ["'tests' is a directory", "holds no .nn file"]),
])
def test_paths_that_are_not_nn_files(args, words):
    out = cli(*args, cwd=ROOT)
    expect(out, *words)
    assert "unexpected" not in out  # NOTE: once parsed as source: `<string>:1:7: unexpected '/'`


def test_an_endless_file_is_cut_short(monkeypatch):
    from nnlang.frontend import source
    monkeypatch.setattr(source, "MAX_SOURCE_BYTES", 1 << 16)
    expect(cli("check", "/dev/zero"), "'/dev/zero' is larger than 0.0625 MiB", "the right file?")


def test_library_tells_paths_from_source_the_same_way():
    import nnlang
    from nnlang.errors import NNError

    with pytest.raises(NNError, match="file not found: models/mlp") as err:
        nnlang.load("models/mlp")
    assert "models/mlp.nn" in err.value.hint or "did you mean" in (err.value.hint or "")
    assert nnlang.load(MLP).model == "Mlp"
    assert nnlang.load("model M { input x: float32[batch, 2] }").model == "M"


@pytest.mark.parametrize("transform", [
    lambda b: b"\xef\xbb\xbf" + b,               # a byte-order mark
    lambda b: b.replace(b"\n", b"\r\n"),         # Windows line endings
    lambda b: b.replace(b"  ", b"\t"),           # tabs
])
def test_bom_crlf_and_tabs_are_fine(tmp_path, transform):
    path = nn_file(tmp_path, transform(MLP.read_bytes()))
    expect(cli("check", "-q", path, code=0))
    assert cli("fmt", path, code=0) == cli("fmt", MLP, code=0)


@pytest.mark.parametrize("comment, ending", [("\u2028", "\n"), ("\x0c", "\n"), ("\x85", "\n"),
                                             ("", "\r")])
def test_the_line_shown_is_the_line_counted(tmp_path, comment, ending):
    """Lines end at "\n" (or a lone "\r" of an old Mac file); a line separator, form feed or
    NEL in a comment is no line break, so the error line below it is shown, not the one above."""
    text = model(f"# copied{comment}text", "y = v + nope").replace("\n", ending)
    out = cli("check", nn_file(tmp_path, text))
    expect(out, ":8:11: error: unknown name 'nope'", "   8 |   y = v + nope")


@pytest.mark.parametrize("comment", ["\u2028", "\x0c", "\x0b", "\x1c"])
def test_the_end_of_a_truncated_file_is_the_line_counted(tmp_path, comment):
    """A file cut short is reported at its last line: a form feed or line separator in a
    comment split that count into more lines than the file has (no line shown, no caret)."""
    path = nn_file(tmp_path, f"model M {{  # copied{comment}text\n  input x: float32[batch, 4]\n")
    out = cli("check", path)
    expect(out, f"{path}:2:29: error: unexpected end of file",
           "   2 |   input x: float32[batch, 4]", "the '{' on line 1 is never closed")


@pytest.mark.parametrize("line, words", [
    ("y = 'unterminated", "a string that is never closed: end it with '"),
    ("y = v == v == v", "comparisons do not chain"),
    ("y = v < v < v", "comparisons do not chain"),
    ("yé = v", "names are ASCII letters"),
    ("y = v;", "';' is not needed"),
])
def test_common_slips_get_a_hint(tmp_path, line, words):
    expect(cli("check", nn_file(tmp_path, model(line))), ":7:", "hint:", words)


@pytest.mark.parametrize("line, words", [
    ("y = concat(mean(v), mean(v), axis = 0)", "concat: axis 0: a scalar has no axes"),
    ("y = squeeze(mean(v), axis = 0)", "squeeze: axis 0: a scalar has no axes"),
    ("y = slice(mean(v), axis = 0, start = 0, stop = 1)", "slice: axis 0: a scalar has no axes"),
    ("y = dense(mean(v), 3)", "dense expects [..., features] but got the scalar"),
    ("y = transpose(x, 1)", "perm 1 is not a permutation"),
    ("y = permute(x, perm = 1)", "perm must be a list"),
    ("y = broadcast_to(v, shape = [batch, [2]])", "shape must be a list of positive sizes"),
    ("y = batch_norm(mean(v))", "batch_norm expects [batch, channels, ...]"),
    ("y = unslice(v, axis = 1, start = 1, stop = 1, step = 2, size = -1)",
     "unslice: size must be a positive size, got -1"),
])
def test_shapes_an_op_cannot_take_are_located_errors(tmp_path, line, words):
    """Found by a fuzzer: these were internal errors (IndexError, TypeError) at check time."""
    expect(cli("check", nn_file(tmp_path, model(line))), ":7:", words)


def test_a_penalty_list_without_its_rate_before_other_settings(tmp_path):
    text = model("y = dense(v, 2)") + "train M {\n  l2_on = [y.weight]\n  batch = 4\n}\n"
    expect(cli("check", nn_file(tmp_path, text)), "l2_on names the weights of the l2 penalty, "
           "but l2 is 0")


BLOCKS = """block Pair(a) {
  left = a * 2
  right = a + 1
  return left, right
}
block Cell(h, x_t) {
  h2 = tanh(dense(concat(h, x_t), 4))
  return h2, h2
}
"""   # NOTE: 9 lines, so the model's statements start on line 16


@pytest.mark.parametrize("line, words", [
    ("y = lstm(s, 4, return_state = true)[0]",
     ["16:7: error: cannot index lstm(...): it returns 3 values (outputs, h, c), not one tensor",
      "hint: unpack them first: `outputs, h, c = lstm(...)`, then use `outputs`"]),
    ("y = gru(s, 4, return_state = true)[-1]", ["then use `h`"]),
    ("y = relu(rnn(s, 4, return_state = true))",
     ["16:12: error: rnn(...) returns 2 values (outputs, h), where one value is needed"]),
    ("y = lstm(s, 4, return_state = true) + 1", ["16:7: error: lstm(...) returns 3 values"]),
    ("y = -lstm(s, 4, return_state = true)", ["16:8: error: lstm(...) returns 3 values"]),
    ("y = Pair(v)[1]", ["16:7: error: cannot index Pair(...): it returns 2 values (left, right)",
                        "`left, right = Pair(...)`, then use `right`"]),
    ("y = Pair(v) |> relu", ["16:7: error: Pair(...) returns 2 values (left, right), where one"]),
    ("y = 2 * Pair(v)", ["16:11: error: Pair(...) returns 2 values"]),  # it repeated the pair
    ("y = reshape(v, Pair(v))", ["16:18: error: Pair(...) returns 2 values"]),
    ("y = mean(Pair(v)[0])", ["cannot index Pair(...)"]),
    ("y = [Pair(v)][0][0]", ["16:8: error: Pair(...) returns 2 values"]),
    ("y = lstm(s, 4, return_state = true)", ["16:3: error: the right side gives 3 values; name "
                                             "each: `outputs, h, c = lstm(...)`"]),
    ("a, y = lstm(s, 4, return_state = true)", ["2 names but the right side gives 3 values",
                                                "hint: name each: `outputs, h, c = lstm(...)`"]),
    ("y = scan Cell(v[:, 0:4]) over s", ["the right side gives 2 values; name each: "
                                         "`ys, h = scan Cell(...)`"]),
])
def test_several_results_are_unpacked_by_name(tmp_path, line, words):
    """An op or block giving several values (lstm's return_state) used as one value showed
    them as `(T(id=7), T(id=9), T(id=11))`, or Python's tuple `+` and `*` ran on them."""
    out = cli("check", nn_file(tmp_path, BLOCKS + model(line)))
    expect(out, *words)
    assert "T(id=" not in out


def test_underscore_discards_a_value_as_in_python(tmp_path):
    """`out, _, _ = lstm(...)` was "'_' is already defined", and a single `_` bound a value
    named `_`; as Python's and JAX's `_` it now binds nothing: the two lines elaborate, the
    weights take no `_` path, no value is named `_`, and reading `_` is an error at it."""
    import nnlang
    program = nnlang.load(nn_file(tmp_path, model(
        "out, _, _ = lstm(s, 4, return_state = true)",
        "_, h = gru(s, 4, return_state = true)",
        "y = out + h")))
    assert sorted(program.graph.params) == ["gru.bias", "gru.kernel", "gru.recurrent",
                                            "out.bias", "out.kernel", "out.recurrent"]
    assert all(n.name != "_" for n in program.graph)
    out = cli("check", nn_file(tmp_path, model("out, _ = rnn(s, 4, return_state = true)",
                                               "y = out + _")))
    expect(out, "8:13: error: '_' discards the value given to it and cannot be read")


@pytest.mark.parametrize("lines, words", [
    (["y = dense(v, 3, trainable = none)"],
     ["7:31: error: trainable must be true or false, got none"]),
    (["y = dense(v, 3, trainable = v)"], ["trainable must be true or false, got a tensor"]),
    (["y = v * true"], ["7:11: error: mul(): expected a tensor, got true"]),
    (["y = v + \"a\""], ["add(): expected a tensor, got \"a\""]),
    (["y = dense(v, 3, init = none)"], ["7:26: error: dense: init: expected an initializer, "
                                        "got none", "hint: e.g. init = \"he_normal\" or "
                                        "init = normal(std = 0.1)"]),
    (["y = dense(v, 3, bias_init = [v])"], ["7:31: error: dense: bias_init: expected an "
                                            "initializer, got [a tensor]"]),
    (["y = gelu(v, approximate = none)"],
     ["7:29: error: gelu: approximate must be \"none\" or \"tanh\", got none"]),
    (["y = positional_encoding(s, kind = none)"], ["7:37: error: positional_encoding: kind must "
                                                   "be \"sinusoidal\" or \"learned\", got none"]),
    (["y = reshape(v, [v, 8])"], ["shape must be a list of positive sizes (one may be -1), "
                                  "got [a tensor, 8]"]),
    (["y = v[none]"], ["7:9: error: tensor indices must be integers or slices, got none"]),
    (["y = v[:, \"a\"]"], ["tensor indices must be integers or slices, got \"a\""]),
    (["y = none[0]"], ["7:7: error: cannot index none: only tensors and lists take [...]"]),
    (["repeat true {", "  y = v", "}"],
     ["7:10: error: repeat needs a positive integer count, got true"]),
    (["y = v", "output z = [v]"], ["8:3: error: output must be a tensor, got [a tensor]"]),
    (["param w: float32[none]", "y = v"],
     ["7:20: error: a dim must be a positive integer or a symbol, got none"]),
    # NOTE: these ran on: true as the index 1, and a float or string bound reached numpy
    # ("internal error: TypeError: slice indices must be integers")
    (["y = v[:, true]"], ["7:12: error: tensor indices must be integers or slices, got true"]),
    (["y = v[:, true:3]"], ["7:12: error: slice bounds must be integers, got true"]),
    (["y = v[:, 1.5:3]"], ["7:12: error: slice bounds must be integers, got 1.5"]),
    (["y = v[:, 0:\"a\"]"], ["7:14: error: slice bounds must be integers, got \"a\""]),
    (["y = v[[1, 2][0:1]]"], ["7:9: error: lists take one integer index"]),  # "expression Slice"
    (["y = v[[1, 2][true]]"], ["7:9: error: lists take one integer index"]),
])
def test_values_are_shown_as_the_source_spells_them(tmp_path, lines, words):
    """A value in an error reads as it is written (none, true, "a", [a tensor, 8]), not as
    Python shows it (None, True, 'a', [T(id=2), 8])."""
    out = cli("check", nn_file(tmp_path, model(*lines)))
    expect(out, *words)
    assert not any(w in out for w in ("None", "True", "T(id="))


@pytest.mark.parametrize("section, words", [
    ("train M {\n  data = none\n}\n",
     ["12:10: error: data must be a dataset like imdb(...) or a file path, got none"]),
    ("train M {\n  init_from = none\n}\n", ["init_from must be a run directory or checkpoint "
                                             "path in quotes, got none"]),
    # an optimizer or schedule that is neither a name nor a call was unpacked as one (a
    # TypeError shown as an internal error)
    ("train M {\n  optimizer = 0\n}\n",
     ["12:15: error: optimizer must be a name or a call with options, got 0", "sgd"]),
    ("train M {\n  schedule = none\n}\n",
     ["12:14: error: schedule must be a name or a call with options, got none", "cosine"]),
    ("train M {\n  optimizer = [1, 2]\n}\n",
     ["12:15: error: optimizer must be a name or a call with options, got [1, 2]"]),
    ("generate M {\n  tokens = tok\n  logits = logits\n  temperature = none\n}\n",
     ["14:17: error: generate setting 'temperature': none is not a number"]),
    ("generate M {\n  tokens = tok\n  logits = logits\n  stop = true\n}\n",
     ["generate setting 'stop' must be a token (a string) or a token id (an int >= 0), got true"]),
])
def test_section_values_are_shown_as_the_source_spells_them(tmp_path, section, words):
    text = model("output logits = dense(embedding(tok, 10, 4), 10)", "y = logits") + section
    out = cli("check", nn_file(tmp_path, text))
    expect(out, *words)
    assert not any(w in out for w in ("None", "True"))


def test_an_unnamed_operand_is_shown_as_written(tmp_path):
    out = cli("check", nn_file(tmp_path, model("y = dense(v, 3) + v")))
    expect(out, "note: 'dense(v, 3)' is float32[batch, 3]")
    assert "'%" not in out


@pytest.mark.parametrize("text", ["", "# only a comment\n\n# and another\n", "\n\n   \n"])
def test_empty_files_say_what_is_missing(tmp_path, text):
    path = nn_file(tmp_path, text)
    expect(cli("check", path), f"{path}:1:1: error: this file defines no model",
           "add `model Name(...) { ... }`")


def test_a_file_that_only_imports_models_says_to_choose_one(tmp_path):
    """docs/language.md: when a file with its imports defines several models, --model picks
    one. A file with no model of its own said "add `model Name(...) { ... }`", though
    --model picks an imported one."""
    nn_file(tmp_path, model("y = v").replace("model M", "model A") +
            model("y = v").replace("model M", "model B"), "lib.nn")
    path = nn_file(tmp_path, 'import "lib.nn"\n')
    out = cli("check", path)
    expect(out, f"{path}:1:1: error: this file defines no model; its imports define A, B",
           "hint: pass --model NAME")
    assert "add `model" not in out
    expect(cli("check", "-q", path, "--model", "B", code=0))


@pytest.mark.parametrize("call, hint", [
    ("y = dense(v, 3, share = v)", "`b = dense(..., share = a)` reuses the weights of "
                                   "`a = dense(...)`"),
    ("y = Two(v, share = v)", "`b = Two(..., share = a)` reuses the weights of `a = Two(...)`"),
])
def test_share_of_a_value_no_layer_made_says_so(tmp_path, call, hint):
    """language.md: share = names a value a layer or a block call produced. Naming an input
    said "share= names a value produced by a layer with weights", as if it did, and a block
    call got a dense example."""
    block = "block Two(x) {\n  return dense(x, 3)\n}\n"
    out = cli("check", nn_file(tmp_path, block + model(call)))
    expect(out, "error: share = names 'v', which no layer with weights or block call made",
           hint)


@pytest.mark.parametrize("lines, at, words", [
    # a weight the first call never made was made under the shared layer's name
    (["a = lstm(s, 4)", "y = lstm(s, 4, bidirectional = true, share = a)"], "8:7",
     ["this call makes weight 'backward_kernel', which the layer it shares ('a') does not "
      "have", "the same sizes and options"]),
    (["a = dense(v, 3, use_bias = false)", "y = dense(v, 3, share = a)"], "8:7",
     ["this call makes weight 'bias', which the layer it shares ('a') does not have"]),
    # the shared weights are the first call's: an initializer written later was ignored
    (["a = dense(v, 3, init = normal(std = 0.5))", "y = dense(v, 3, share = a, init = \"ones\")"],
     "8:37", ['init = "ones" here differs from normal(std = 0.5, mean = 0.0), which the shared '
              "layer 'a' was initialized with", "leave init out here"]),
])
def test_a_shared_call_that_would_change_the_shared_weights(tmp_path, lines, at, words):
    """Found by a fuzzer: `share =` silently kept the first call's weights whatever the later
    call said: `bidirectional = true` (or a bias the first call had not) added weights of its
    own under the shared layer's name, and a different `init` was ignored."""
    path = nn_file(tmp_path, model(*lines))
    expect(cli("check", path), f"{path}:{at}: error: ", *words)


def test_a_shared_call_may_leave_out_or_repeat_the_first_calls_options(tmp_path):
    path = nn_file(tmp_path, model("a = dense(v, 3, init = normal(std = 0.5))",
                                   "b = dense(v, 3, share = a, init = normal(std = 0.5))",
                                   "c = dense(v, 3, share = a, use_bias = false)",
                                   "y = a + b + dense(v, 3, share = a)"))
    cli("check", "-q", path, code=0)


def test_a_long_line_is_shown_as_a_window(tmp_path):
    path = nn_file(tmp_path, model("y = v" + " + v" * 20_000 + " + $"))
    out = cli("check", path)
    expect(out, f"{path}:7:80011: error: unexpected character '$'")
    shown = next(line for line in out.splitlines() if line.startswith("   7 | "))
    assert len(shown) < 200 and shown.startswith("   7 | ...") and shown.endswith("+ $")


def test_a_control_character_is_named(tmp_path):
    path = nn_file(tmp_path, model("y = v\x00"))
    expect(cli("check", path), f"{path}:7:8: error: unexpected character U+0000")


@pytest.mark.slow
def test_ten_megabytes_of_comment(tmp_path):
    path = nn_file(tmp_path, "# " + "a" * 10_000_000 + "\n" + model("y = relu(v)"))
    expect(cli("check", "-q", path, code=0))


# *** long chains and deep nesting ***

CHAINS = [
    " + ".join(["v"] * 5000),
    "v" + " |> relu" * 2000,
    "(" * 1000 + "v" + ")" * 1000,
    "relu(" * 1000 + "v" + ")" * 1000,
    "-" * 1000 + "v",
]


@pytest.mark.parametrize("expr", CHAINS, ids=["add", "pipe", "parens", "calls", "negs"])
def test_long_chains_check_and_format(tmp_path, expr):
    path = nn_file(tmp_path, model(f"y = {expr}"))
    cli("check", "-q", path, code=0)
    formatted = nn_file(tmp_path, cli("fmt", path, code=0), "formatted.nn")
    cli("fmt", "--check", formatted, code=0)


@pytest.mark.parametrize("expr", [
    "v" + " |> relu" * 2000,
    pytest.param(CHAINS[0], marks=pytest.mark.slow),  # NOTE: ~20 s: v has 5,000 users
])
def test_long_chains_compile_with_their_backward_pass(tmp_path, expr):
    path = nn_file(tmp_path, model(f"y = {expr}"))
    expect(cli("compile", path, "--backend", "reference", "--emit", "backward", code=0), "loss")
    cli("graph", path, "-o", tmp_path / "g.dot", "--backward", code=0)


def test_nested_repeats(tmp_path):
    depth = 300
    body = ["z = v"] + ["repeat 1 {"] * depth + ["w = v"] + ["}"] * depth + ["y = z"]
    path = nn_file(tmp_path, model(*body))
    cli("check", "-q", path, code=0)


def test_nesting_beyond_the_limit_is_located(tmp_path, monkeypatch):
    from nnlang.frontend import deep
    monkeypatch.setattr(deep, "MAX_NESTING", 100)
    path = nn_file(tmp_path, model("u = v", "y = " + " + ".join(["v"] * 150)))
    expect(cli("check", path), f"{path}:8:3: error: this statement nests more than 100 levels",
           "split it into several statements")
    expect(cli("fmt", path), "nests more than 100 levels")


def test_nesting_beyond_the_limit_is_refused_while_parsing(monkeypatch):
    """A 1.2 MB line `y = x + x + ...` was refused only after the whole parse and syntax-tree
    build (22 s, 560 MB): the parser now stops at the term past the limit, before any tree is
    built. Statements near the limit, one after another, still parse."""
    from nnlang.frontend import ast, deep
    from nnlang.frontend.parser import parse
    from nnlang.errors import NNError
    monkeypatch.setattr(deep, "MAX_NESTING", 100)
    near = [" + ".join(["v"] * 90), "-v - " + " - ".join(["v"] * 90), "v" + " |> relu" * 90,
            " * ".join(["v"] * 90), "relu(" * 90 + "v" + ")" * 90, "(" * 300 + "v" + ")" * 300,
            "f(" + ", ".join(["v + v"] * 300) + ")", "[" * 60 + " + ".join(["v"] * 30) + "]" * 60]
    lines = [f"y{i} = {e}" for i, e in enumerate(near)]
    module = parse(model(*lines, "output y9 = " + near[0], "metric m = " + near[2]))
    assert len(module.items[0].body) == 5 + len(near) + 3
    monkeypatch.setattr(ast.ToAst, "transform", lambda *a: pytest.fail("a tree was built"))
    for expr in (" + ".join(["v"] * 150), "relu(" * 150 + "v" + ")" * 150,
                 "[" * 60 + " + ".join(["v"] * 60) + "]" * 60):
        with pytest.raises(NNError) as err:
            parse(model("u = v", "y = " + expr), "m.nn")
        assert "m.nn:8:3: error: this statement nests more than 100 levels" in \
            err.value.render(), err.value.render()


# NOTE: run in a child: the interpreter could abort (below), which would end pytest too
CTRL_C_WHILE_DEEP = """
import signal, os, sys, threading, time
import nnlang
from nnlang.frontend.elaborate import Elaborator
emit, calls = Elaborator.emit, [0]
def deep_emit(self, *args):
    calls[0] += 1
    if calls[0] == 100:   # Ctrl-C on the way back up, still 4,900 terms deep
        os.kill(os.getpid(), signal.SIGINT)
        # NOTE: held here, deep, until the main thread has taken the Ctrl-C and stops this
        # thread (a KeyboardInterrupt raised in it): a fixed 0.5 s let a loaded host finish the
        # chain first, and the test passed without the interrupt it is about
        for _ in range(6000):
            time.sleep(0.01)
        print("the Ctrl-C did not stop the elaborating thread", flush=True)
        os._exit(3)
    return emit(self, *args)
Elaborator.emit = deep_emit
limit = sys.getrecursionlimit()
try:
    nnlang.load(sys.argv[1])
except KeyboardInterrupt:
    print("interrupted")
print(sorted(t.name for t in threading.enumerate()))
time.sleep(1)   # the user, after the Ctrl-C
print(sys.getrecursionlimit() == limit)
Elaborator.emit = emit
print(list(nnlang.load(sys.argv[2]).graph.losses))
"""


def test_ctrl_c_while_a_deep_chain_elaborates_leaves_the_process_usable():
    """Ctrl-C while a long chain elaborated (on its big-stack thread) gave the KeyboardInterrupt
    at once and left that thread running, with the recursion limit put back under it while it
    was still thousands of calls deep: Python then aborted the whole process, a notebook's
    kernel with it ("Fatal Python error: Cannot recover from stack overflow", seen in 1 of 2
    timed Ctrl-Cs on a 20,000-term chain). The thread is stopped first now, and it puts the
    limit back itself: the program gets its KeyboardInterrupt, no thread is left running, the
    limit is as it was, and the next model loads."""
    import subprocess
    import sys
    deep = model("y = " + " + ".join(["v"] * 5000))
    p = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_DEEP, deep, model("y = v")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split("\n")[:4] == ["interrupted", "['MainThread']", "True", "['mean']"], \
        p.stdout


@pytest.mark.slow
def test_chains_near_the_nesting_limit(tmp_path):
    from nnlang.frontend.deep import MAX_NESTING
    n = MAX_NESTING - 100
    for expr in (" + ".join(["v"] * n), "relu(" * n + "v" + ")" * n, "[" * n + "1" + "]" * n):
        path = nn_file(tmp_path, model("q = " + expr if expr[0] == "[" else "q = v",
                                       "y = " + (expr if expr[0] != "[" else "v")))
        cli("check", "-q", path, code=0)
        cli("fmt", path, code=0)


# *** sizes ***

@pytest.mark.parametrize("line, where, words", [
    ("y = dense(v, 99999999999999999999999)", "7:16",
     ["dim 99,999,999,999,999,999,999,999 is too large"]),
    ("param w: float32[2**40, 2**40]", "7:27",
     ["[1099511627776, 1099511627776] has 1,208,925,819,614,629,174,706,176 elements"]),
    ("y = dense(v, 2**40) |> dense(2**40)", "7:32", ["elements; a tensor holds at most 2**60"]),
    ("y = dense(v, -3)", "7:16", ["dense: units must be a positive integer, got -3"]),
])
def test_sizes_no_machine_holds(tmp_path, line, where, words):
    path = nn_file(tmp_path, model(line))
    expect(cli("check", path), f"{path}:{where}: error:", *words)


def test_huge_input_dims(tmp_path):
    text = HEAD.replace("[batch, 8]", "[batch, 99999999999999999999]") + "}\n"
    path = nn_file(tmp_path, text)
    expect(cli("check", path), f"{path}:4:27: error: dim 99,999,999,999,999,999,999 is too large")


def test_weights_beyond_this_machine(tmp_path):
    path = nn_file(tmp_path, model("y = dense(v, 1000000000000)"))
    out = cli("check", "-q", path, code=0)
    expect(out, "warning:", "TiB", "of memory available")
    out = cli("compile", path, "--backend", "reference")
    expect(out, f"{path}:7:7: error: this model needs about 32.74 TiB (weights 32.74 TiB)",
           "the largest weight is y.weight [8, 1000000000000]")


@pytest.mark.parametrize("init", ["ones", "normal(std = 0.1)", "glorot_uniform",
                                  "truncated_normal(std = 0.1)", "he_normal"])
def test_a_weight_is_made_where_it_lives(init):
    """Found by a fuzzer: each weight was made by its initializer, then copied into an aligned
    array, so the largest one was held twice while `check_memory` counts it once: a weight that
    fit in memory got the process killed. tracemalloc sees numpy's allocations."""
    import tracemalloc

    import nnlang
    # NOTE: 128 MiB, well above the initializers' fixed-size chunks (8 MiB of float64)
    program = nnlang.load(model(f"param w: float32[8, 4194304] = {init}", "y = v @ w"))
    size = 8 * 4194304 * 4
    tracemalloc.start()
    try:
        net = nnlang.compile(program, backend="reference", batch=2)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held >= size and peak - held < size / 2, (held / size, peak / size)
    assert net.parameters()["w"].shape == (8, 4194304)


def test_weights_that_fit_but_not_their_training(monkeypatch):
    """Found by a fuzzer: the net checked its weights alone, so a model that fit for inference
    ran out of memory building its training step instead of saying so."""
    import nnlang
    from nnlang.errors import NNError
    from nnlang.ir import summary
    mib = 1 << 20
    monkeypatch.setattr(summary, "machine_memory", lambda: summary.HostMemory(16 * mib, 5 * mib))
    net = nnlang.compile(MLP, backend="reference", batch=4, total_steps=1)  # weights: 2.04 MiB
    image, label = np.zeros((4, 784), np.float32), np.zeros(4, np.int32)
    assert net.forward({"image": image})["logits"].shape == (4, 10)
    with pytest.raises(NNError) as err:
        net.train_step({"image": image, "label": label})
    expect(str(err.value), f"{MLP}:8:8: error: this model needs about 8.18 MiB (weights "
           "2.04 MiB, gradients 2.04 MiB, optimizer state 4.09 MiB), but this machine has "
           "7.04 MiB of memory available", "an optimizer with less state")


@pytest.mark.parametrize("init", ["glorot_uniform", "he_normal", "normal", "truncated_normal",
                                  "uniform", "lecun_normal"])
def test_initial_weights_drawn_in_chunks_are_the_one_shot_values(monkeypatch, init):
    """Chunked float64 draws cast into float32 give the values of one float64 draw cast at the
    end (the reference below), for chunk sizes that split the weight anywhere."""
    from nnlang.ops import init as inits
    from nnlang.ops.registry import ParamSpec

    def reference(rng, shape, std, mean, kind):
        if kind == "uniform":
            return rng.uniform(-std, std, size=shape).astype("float32")
        if kind == "normal":
            return rng.normal(mean, std, size=shape).astype("float32")
        out = rng.standard_normal(size=shape)
        bad = np.abs(out) > 2
        while bad.any():
            out[bad] = rng.standard_normal(size=int(bad.sum()))
            bad = np.abs(out) > 2
        return (mean + std * out).astype("float32")

    shape = (37, 29)
    fan_in, fan_out = shape
    std = {"glorot_uniform": (6 / (fan_in + fan_out)) ** 0.5, "he_normal":
           (2 / fan_in) ** 0.5 / 0.87962566103423978, "normal": 0.05, "truncated_normal": 0.05,
           "uniform": 0.05, "lecun_normal": (1 / fan_in) ** 0.5 / 0.87962566103423978}[init]
    kind = {"glorot_uniform": "uniform", "uniform": "uniform", "normal": "normal"}.get(
        init, "truncated")
    for chunk in (1, 7, 1000, 1 << 20):
        monkeypatch.setattr(inits, "_CHUNK", chunk)
        got = inits.initialize(ParamSpec(shape, (init, {}), dtype="float32"),
                               np.random.default_rng(3))
        want = reference(np.random.default_rng(3), shape, std, 0.0, kind)
        assert got.dtype == np.float32 and np.array_equal(got, want), (init, chunk)


# *** numbers that overflow ***

@pytest.mark.parametrize("line, where, words", [
    ("y = v * 1e400", "7:11", ["the number 1e400 is too large for a float"]),
    ("y = v * 1e-400", "7:11", ["the number 1e-400 is too small for a float"]),
    ("y = v * 1e39", "7:11", ["too large for a float32 tensor"]),
    ("y = leaky_relu(v, alpha = 1e300)", "7:29", ["too large for float32"]),
    ("k = 1e300 * 1e300", "7:7", ["cannot compute", "too large for a float"]),
    ("k = 2.0 ** 5000", "7:7", ["too large for a float"]),
    ("k = 10 ** 100000000", "7:7", ["too large"]),
    pytest.param("y = v * " + "9" * 400, "7:11", ["the number 999999999999...999999 is too "
                                                  "large for any dtype (400 digits"],
                 id="400 digits"),
    pytest.param("y = v * " + "1" * 5000, "7:11", ["too large for any dtype (5000 digits"],
                 id="5000 digits"),
    ("y = v * 10 ** 400", "7:11", ["a 401-digit number is too large for a float32 tensor"]),
    ("y = t + 3000000000", "7:11", ["3000000000 is out of range for an int32 tensor",
                                    "int32 holds -2147483648 to 2147483647"]),
    ("k = 10 ** 1200 * 10 ** 1200", "7:7", ["cannot compute a 1201-digit number * a "
                                            "1201-digit number: the result is too large"]),
    ("y = dense(v, 10 ** 400)", "7:16", ["dim about 10**400 is too large"]),
    ("y = sum(v) / 0", "7:16", ["division by zero"]),
    ("y = dropout(v, (0 - 8) ** 0.5)", "7:18", ["cannot compute (-8) ** 0.5: a negative number to "
                                              "a fractional power is not a real number"]),
])
def test_overflowing_numbers(tmp_path, line, where, words):
    path = nn_file(tmp_path, model(line, *(["y = v"] if line.startswith("k") else [])))
    expect(cli("check", path), f"{path}:{where}: error:", *words)


def test_overflowing_number_in_the_train_section(tmp_path):
    path = nn_file(tmp_path, MLP.read_text().replace("adam(lr = 1e-3)", "adam(lr = 1e999)"))
    expect(cli("check", path), f"{path}:21:25: error: the number 1e999 is too large")


@pytest.mark.parametrize("args, code, words", [
    (["check", MLP, "--set", "hidden1=1e999"], 1,
     ["<command line>:1:15: error: --set hidden1: the number 1e999 is too large"]),
    (["check", MLP, "--set", "hidden1=[1e-999]"], 1, ["is too small"]),
    pytest.param(["check", MLP, "--set", "hidden1=" + "9" * 5000], 1,
                 ["<command line>:1:15: error: --set hidden1: the number "
                  "999999999999...999999 is too large for any dtype"], id="5000 digits"),
    (["train", MLP, "--lr", "1e999"], 2, ["--lr", "inf is not a finite number"]),
    (["train", MLP, "--lr", "nan"], 2, ["--lr", "nan is not a finite number"]),
])
def test_overflowing_flags(args, code, words):
    expect(cli(*args, code=code), *words)


# *** truncated files: one error each ***

def _cut_after(marker: str) -> str:
    text = MLP.read_text()
    return text[:text.index(marker) + len(marker)]


@pytest.mark.parametrize("cut, line", [
    ("h1 = dense(image, hidden1) |> relu\n", 8),          # inside the model, after a statement
    ("h2 = dense(h1, ", 9),                                 # inside a call
    ("train Mlp {\n  data = mnist\n", 20),               # inside the train section
    ("optimizer = ", 21),
    ("model Mlp(hidden1 = 512, ", 4),
])
def test_truncated_file_reports_one_error(tmp_path, cut, line):
    path = nn_file(tmp_path, _cut_after(cut))
    for command in ("check", "fmt"):
        out = cli(command, path)
        assert out.count("error:") == 1, out
        expect(out, f"{path}:{line}:", "unexpected end of file")


def test_truncated_body_names_the_open_brace(tmp_path):
    path = nn_file(tmp_path, _cut_after("h1 = dense(image, hidden1) |> relu\n"))
    expect(cli("check", path), "the '{' on line 4 is never closed")


@pytest.mark.parametrize("lines, line, col", [
    (["a = dense(x, 3", "b = relu(a)", "c = tanh(b)", "output y = c"], 3, 12),
    (["output y = dense(x, 3)", "loss mean(y"], 4, 12),
    (["a = concat([x, x], axis = 1", "output y = a"], 3, 13),
])
def test_an_unclosed_bracket_is_one_error_at_the_bracket(tmp_path, lines, line, col):
    """A call left open swallowed the lines after it: each correct later line was reported
    ("unexpected 'b'; expected ',' or ')'") and the line missing its ')' never was."""
    text = "model M {\n  input x: float32[batch, 4]\n" + "".join(f"  {s}\n" for s in lines)
    path = nn_file(tmp_path, text + "}\n")
    out = cli("check", path)
    assert out.count("error:") == 1, out
    expect(out, f"{path}:{line}:{col}: error: '(' is never closed",
           f"add ')' at the end of line {line}")


def test_a_bad_argument_on_a_continued_line_is_reported_alone(tmp_path):
    path = nn_file(tmp_path, model("y = dense(x,", "    units: 1)"))
    out = cli("check", path)
    assert out.count("error:") == 1, out
    expect(out, "keyword arguments use '=', not ':'")


# *** flags ***

@pytest.mark.parametrize("args, code, words", [
    (["compile", MLP, "--emit", "nonsense", "--backend", "reference"], 1,
     ["unknown --emit 'nonsense'"]),
    (["compile", MLP, "--backend", "nonsense"], 1, ["unknown backend 'nonsense'"]),
    (["compile", MLP, "--mode", "nonsense", "--backend", "reference"], 1,
     ["unknown mode 'nonsense'"]),
    # an empty --mode was taken for no --mode at all (train), as an empty --emit is not
    (["compile", MLP, "--mode", "", "--backend", "reference"], 1, ["unknown mode ''"]),
    (["compile", MLP, "--batch", "0"], 2, ["--batch"]),
    (["check", MLP, "--batch", "-5"], 2, ["--batch"]),
    # check took it (a memory warning) where compile, eval and train refuse it
    (["check", MLP, "--batch", "2147483648"], 2, ["--batch", "2147483647"]),
    (["train", MLP, "--batch", "2147483648"], 2, ["--batch", "2147483647"]),
    (["graph", MLP, "-o", "x.dot", "--depth", "0"], 2, ["--depth"]),
    (["graph", MLP, "-o", "x.txt"], 2, ["unknown format '.txt'"]),
    (["check", MLP, "--model", "Nope"], 1, ["no model named 'Nope'", "models: Mlp"]),
    (["compile", MLP, "--model", "Nope"], 1, ["no model named 'Nope'"]),
    (["check", MLP, "--set", "hidden1"], 1, ["--set expects name=value, got 'hidden1'"]),
    (["check", MLP, "--set", "=3"], 1, ["--set expects name=value"]),
    (["check", MLP, "--set", "hidden1=[1,"], 1, ["'[1,' is not a literal"]),
    (["check", MLP, "--set", "nope=3"], 1, ["has no hyper-parameter 'nope'"]),
    # the last one silently won
    (["check", MLP, "--set", "hidden1=8", "--set", "hidden1=16"], 1,
     ["--set hidden1 is given twice"]),
    (["check", MLP, "--set", "hidden1=0"], 1,
     ["models/mlp.nn:8:21: error: dense: units must be a positive integer, got 0"]),
    (["ops", "nonsense"], 1, ["unknown op 'nonsense'"]),
    (["fmt", "--check", "--write", MLP], 2, ["use --check or --write, not both"]),
])
def test_bad_flags(args, code, words):
    expect(cli(*args, code=code, cwd=ROOT), *words)


@pytest.mark.parametrize("command", [["compile", "--backend", "reference"], ["graph"]])
@pytest.mark.parametrize("target, words", [
    ("{tmp}/missing/dir/out.dot", ["the folder", "missing/dir' does not exist", "mkdir -p"]),
    ("{file}/out.dot", ["plain.txt' is a file, not a folder"]),  # mkdir -p cannot help
    ("{tmp}/folder.dot", ["this is a folder, not a file"]),
])
def test_output_paths_that_cannot_be_written(tmp_path, command, target, words):
    file = nn_file(tmp_path, "x", "plain.txt")
    (tmp_path / "folder.dot").mkdir()
    out = target.replace("{tmp}", str(tmp_path)).replace("{file}", str(file))
    expect(cli(command[0], MLP, "-o", out, *command[1:]), "error: -o", *words)



def test_output_to_a_fifo_or_standard_output_is_written_in_place(tmp_path):
    """`-o` naming no regular file: a FIFO a reader holds open (or root's /dev/null) was
    replaced by a regular file (write_atomic's rename), so the reader got nothing and the FIFO
    or device was gone; `-o /dev/stdout` was 'cannot write: No such file or directory'. They
    are written in place, and the 'wrote' note goes to stderr, not into the data."""
    import os
    import stat
    import subprocess
    import sys
    cli("compile", MLP, "--emit", "user", "-o", tmp_path / "plain.txt", code=0)
    want = (tmp_path / "plain.txt").read_text()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # NOTE: a reader, so the writer's open
    try:                                              # does not wait
        cli("compile", MLP, "--emit", "user", "-o", fifo, code=0)
        got = b""
        while chunk := os.read(fd, 1 << 16):
            got += chunk
    finally:
        os.close(fd)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got.decode() == want
    if os.path.exists("/dev/stdout"):
        p = subprocess.run([sys.executable, "-m", "nnlang_cli.main", "compile", str(MLP),
                            "--emit", "user", "-o", "/dev/stdout"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0 and p.stdout == want, (p.stdout, p.stderr)
        assert "wrote /dev/stdout" in p.stderr



def test_fmt_write_to_a_fifo_is_refused(tmp_path):
    """`fmt --write` on a FIFO (or `<(...)`): there is no file to rewrite. Once such a path was
    written in place, fmt read the FIFO, then waited forever to write the text back into it
    (before, the rename put a regular file where the FIFO was)."""
    import os
    import stat
    from tests.faults.conftest import cli_process
    fifo = tmp_path / "m.nn"
    os.mkfifo(fifo)
    p = cli_process("fmt", "--write", fifo, timeout=300)
    expect(p.stdout + p.stderr, f"--write {fifo}: this is no regular file",
           "without --write, fmt prints the formatted text")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)

def test_a_working_directory_deleted_under_the_shell(tmp_path):
    """A shell left in a folder that was deleted (`rm -rf build` from another terminal): a
    relative model path was an internal error (FileNotFoundError from Path.resolve), a run
    with no --out 'cannot write runs/... (No such file or directory)' with the hint to pass a
    writable --out. Both say that the working directory is gone."""
    import os
    from tests.faults.conftest import cli_process
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "mlp.nn").write_text(MLP.read_text())
    gone = tmp_path / "gone"
    # NOTE: absolute, since the working directory is gone
    path = [str(ROOT), *(os.path.abspath(p) for p in
                         os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    # NOTE: a model named beside the gone folder's files (`mlp.nn`) was "file not found: check
    # the path", and `-o g.dot` "cannot write: No such file or directory"
    for args in (["check", "../m/mlp.nn"], ["train", tmp_path / "m" / "mlp.nn", "--max-steps",
                                            "1", "--backend", "reference"],
                 ["check", "mlp.nn"], ["graph", tmp_path / "m" / "mlp.nn", "-o", "g.dot"]):
        gone.mkdir()
        p = cli_process(*args, cwd=gone, env={"PYTHONPATH": os.pathsep.join(path)},
                        preexec_fn=lambda: os.rmdir(os.getcwd()))
        expect(p.stdout + p.stderr, "the working directory no longer exists", "cd to a folder")
        assert "check the path" not in p.stdout + p.stderr
    assert not (tmp_path / "runs").exists()


def test_a_file_name_that_is_not_utf8(tmp_path):
    """Linux file names are bytes: a Latin-1 'café.nn' reaches Python with a surrogate
    (\\udce9), which UTF-8 cannot encode. `compile` and `train` were an internal error (the
    plan cache's key), `graph` too (writing the .dot, whose title names the file). The name is
    written as the terminal shows it."""
    import os
    name = tmp_path / os.fsdecode(b"caf\xe9.nn")
    try:
        name.write_text(MLP.read_text())
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes UTF-8 file names only")
    cli("compile", name, "--backend", "reference", "--emit", "fused", code=0)
    cli("graph", name, "-o", tmp_path / "g.dot", code=0)
    assert f"Mlp ({tmp_path}/caf\\udce9.nn)" in (tmp_path / "g.dot").read_text()

def test_compile_output_over_the_model_file_is_refused(tmp_path):
    """`nnlang compile model.nn -o model.nn` wrote the summary over the model's source."""
    model = tmp_path / "m.nn"
    model.write_text(MLP.read_text())
    out = cli("compile", model, "--backend", "reference", "-o", model)
    expect(out, f"-o {model}: this is the model file the command reads")
    assert model.read_text() == MLP.read_text()


def test_output_into_a_read_only_folder(tmp_path, monkeypatch):
    import os
    real = os.access
    # NOTE: as root every folder is writable; the check is what a user without rights meets
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path)
                        else real(p, mode))
    for command in (["graph"], ["compile", "--backend", "reference"]):
        out = cli(command[0], MLP, "-o", tmp_path / "g.dot", *command[1:])
        expect(out, f"error: -o {tmp_path / 'g.dot'}: the folder '{tmp_path}' is not writable")



def test_an_import_from_the_home_folder(tmp_path, monkeypatch):
    """`import "~/lib.nn"` looked for a folder '~' beside the file ("no such file", looked for
    DIR/~/lib.nn), where `data = "~/d.npz"` in the same file is the home folder's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "lib.nn").write_text("block Lin(x, n) {\n  return dense(x, n)\n}\n")
    path = nn_file(tmp_path, 'import "~/lib.nn"\n'
                   "model M {\n  input x: float32[batch, 4]\n  output y = Lin(x, 3)\n}\n")
    assert "y" in cli("check", path, code=0)
    path = nn_file(tmp_path, 'import "./~/lib.nn"\n', "n.nn")   # a folder named '~' beside it
    expect(cli("check", path), f"looked for {tmp_path / '~' / 'lib.nn'}")

def test_an_imported_binary_file_is_named(tmp_path):
    nn_file(tmp_path, GARBAGE, "lib.nn")
    path = nn_file(tmp_path, 'import "lib.nn"\n' + model("y = v"))
    expect(cli("check", path), f"{tmp_path / 'lib.nn'}:2:118: error: not UTF-8 text")


def test_fmt_write_into_a_read_only_file_is_named(tmp_path, monkeypatch):
    path = nn_file(tmp_path, "model   M {}\n")
    from nnlang import files

    def refuse(*a, dir=None, **k):
        raise PermissionError(13, "Permission denied", str(dir))
    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    expect(cli("fmt", "--write", path), f"error: --write {path}: cannot write: Permission denied")


def test_fmt_write_that_fails_midway_keeps_the_source(tmp_path):
    """A full disk (here: a file-size limit of 64 bytes) while `fmt --write` rewrites a model:
    the source stays as it was. It was truncated, then cut at the limit."""
    import resource
    import signal
    import subprocess
    import sys
    source = "model   M {\n" + "".join(f"  # line {i}\n" for i in range(40)) + "}\n"
    path = nn_file(tmp_path, source)

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # NOTE: EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
    p = subprocess.run([sys.executable, "-m", "nnlang_cli.main", "fmt", "--write", str(path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       preexec_fn=limited)
    assert p.returncode == 1 and "cannot write" in p.stdout + p.stderr, (p.stdout, p.stderr)
    assert path.read_text() == source
    assert [f.name for f in tmp_path.iterdir()] == [path.name]



FAKE_DOT = """#!{python}
import sys
args = sys.argv[1:]
svg = "<svg>" + "new " * 100 + "</svg>\\n"
if "-o" in args:
    open(args[args.index("-o") + 1], "w").write(svg)
else:
    sys.stdout.write(svg)
"""


@pytest.mark.parametrize("name", ["g.dot", "g.svg"])
def test_graph_output_that_fails_midway_keeps_the_drawing_there(tmp_path, name):
    """A full disk (here: a file-size limit of 64 bytes) while `graph -o` replaces a drawing:
    the .dot (and the .svg Graphviz drew from it) were truncated, then cut at the limit. Both
    stay as they were, and no temporary file is left beside them."""
    import os
    import resource
    import signal
    import subprocess
    import sys
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dot").write_text(FAKE_DOT.format(python=sys.executable))
    (bin_dir / "dot").chmod(0o755)
    old = {"g.dot": "digraph old { a -> b }\n", "g.svg": "<svg>old</svg>\n"}
    for k, v in old.items():
        (tmp_path / k).write_text(v)

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # NOTE: EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
    p = subprocess.run([sys.executable, "-m", "nnlang_cli.main", "graph", str(MLP), "-o",
                        str(tmp_path / name)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, preexec_fn=limited,
                       env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert p.returncode == 1 and f"-o {tmp_path / name}: cannot write" in p.stdout + p.stderr, \
        (p.stdout, p.stderr)
    assert {k: (tmp_path / k).read_text() for k in old} == old
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bin", "g.dot", "g.svg"]


# *** repeat counts and dims in declarations ***

@pytest.mark.parametrize("lines, where, words", [
    (["repeat 0 { z = v }", "y = v"], "7:10", ["repeat needs a positive integer count, got 0"]),
    (["repeat -1 { z = v }", "y = v"], "7:10", ["positive integer count, got -1"]),
    (["repeat 2.5 { z = v }", "y = v"], "7:10", ["got 2.5"]),
    (["repeat 1000000000 { z = v }", "y = v"], "7:10", ["makes more than 10,000 copies"]),
    (["repeat 1000 { repeat 1000 { z = v } }", "y = v"], "7:24", ["(1,000,000 with the repeats"]),
    (["param w: float32[0, 3]", "y = v"], "7:20", ["a dim must be a positive integer"]),
    (["param w: float32[-2, 3]", "y = v"], "7:20", ["a dim must be a positive integer"]),
])
def test_counts_and_declared_dims(tmp_path, lines, where, words):
    path = nn_file(tmp_path, model(*lines))
    out = cli("check", path)
    expect(out, f"{path}:{where}: error:", *words)
    assert out.count("error:") == 1, out


def test_an_error_inside_a_repeat_is_reported_once(tmp_path):
    path = nn_file(tmp_path, model("h = v", "repeat 50 { h = dense(h, 0) }", "y = h"))
    out = cli("check", path)
    assert out.count("units must be a positive integer") == 1, out


# *** every op's arguments at their limits: errors at check time, at the line of the call ***

OP_LIMITS = [
    ("conv2d(x, 4, 0)", "kernel must be a positive int"),
    ("conv2d(x, 4, 9)", "does not fit spatial size 8"),
    ("conv2d(x, 4, 3, stride = 0)", "stride must be a positive int or 2 of them, got 0"),
    ("conv2d(x, 4, -3)", "kernel must be a positive int"),
    ("conv2d(x, 0, 3)", "filters must be a positive integer, got 0"),
    ("conv2d(x, 4, 3, dilation = 0)", "dilation must be a positive int"),
    ("conv2d(x, 4, 3, padding = -1)", "padding must be"),
    ("conv2d(x, 4, 3, padding = \"bogus\")", "padding must be \"same\", \"valid\", an int, 2 ints "
                                          "or 4 lo/hi ints, got \"bogus\""),
    ("conv2d(x, 4, [3, 3, 3])", "kernel must be a positive int or 2 of them"),
    ("conv2d(x, 4, 5, dilation = 3)", "does not fit"),
    ("conv2d(v, 4, 3)", "conv2d expects [batch, channels, height, width]"),
    ("conv1d(s, 4, 7)", "does not fit spatial size 4"),
    ("max_pool2d(x, 0)", "size must be a positive int"),
    ("max_pool2d(x, 9)", "does not fit"),
    ("max_pool2d(x, 2, stride = 0)", "stride must be a positive int"),
    ("max_pool2d(x, 2, padding = 5)", "more than half the window"),
    ("avg_pool2d(x, 2, padding = 5)", "more than half the window"),
    ("avg_pool1d(s, 9)", "does not fit"),
    ("global_max_pool(v)", "it is already pooled"),
    ("dense(v, 0)", "units must be a positive integer, got 0"),
    ("dense(v, 2.5)", "expected an integer, got 2.5"),
    ("embedding(tok, 0, 4)", "vocab must be a positive integer"),
    ("embedding(tok, 10, -1)", "dim must be a positive integer"),
    ("embedding(v, 10, 4)", "expects integer token ids"),
    ("lstm(s, 0)", "units must be a positive integer"),
    ("gru(v, 4)", "expects [batch, time, features]"),
    ("rnn(s, 4, activation = \"bogus\")", "unknown activation 'bogus'"),
    ("multi_head_attention(s, heads = 0)", "heads must be a positive integer, got 0"),
    ("multi_head_attention(s, heads = 3)", "dim 4 is not divisible by heads = 3"),
    # NOTE: the hint was a fixed "e.g. 4 or 8 for 128", whatever the dim
    ("multi_head_attention(s, heads = 3)", "hint: pick heads dividing 4 (e.g. 2 or 4), or a "
                                           "dim that 3 divides (e.g. 3 or 6)"),
    ("multi_head_attention(s, heads = 2, dim = 0)", "dim must be a positive integer, got 0"),
    ("multi_head_attention(s, heads = 2, dropout = 1.0)", "dropout must be in [0, 1)"),
    ("positional_encoding(s, max_len = 2)", "exceeds max_len = 2"),
    ("dropout(v, 1.0)", "rate must be in [0, 1), got 1.0"),
    ("dropout(v, -0.1)", "rate must be in [0, 1), got -0.1"),
    ("gelu(v, approximate = \"bogus\")", "approximate must be"),
    ("gelu(v, approximate = \"Tanh\")", "hint: did you mean 'tanh'?"),
    ("clip(v, lo = 2, hi = 1)", "lo = 2 is above hi = 1"),
    ("softmax(v, axis = 5)", "axis 5 is out of range"),
    ("mean(v, axis = [1, 1])", "name an axis twice"),
    ("reduce_sum(v, axes = [])", "7:28: error: reduce_sum: axes = [] names no axis to reduce"),
    ("reduce_max(v, [], true)", "reduce_max: axes = [] names no axis to reduce over"),
    ("layer_norm(v, axis = [])", "layer_norm: axis = [] names no axis to normalize over"),
    ("flatten(x, start = 3, end = 1)", "start 3 comes after end 1"),
    ("squeeze(v, axis = 1)", "has size 8, not 1"),
    ("permute(x, [0, 1, 1, 2])", "is not a permutation"),
    ("layer_norm(v, eps = -1.0)", "eps must be in [0, 1]"),
    ("batch_norm(v, momentum = 1.5)", "momentum must be in [0, 1]"),
    ("batch_norm(v, eps = -1.0)", "eps must be in [0, 1]"),
    ("reshape(v, [3, 5])", "cannot reshape"),
    ("reshape(v, [-1, -1])", "at most one -1"),
    ("reshape(v, shape = [4, none])", "shape must be a list of positive sizes (one may be -1), "
                                      "got [4, none]"),
    ("reshape(v, [batch, true, 8])", "got [batch, true, 8]"),
    ("reshape(v, [-2, -4])", "positive sizes"),
    ("broadcast_to(v, [batch, none])", "got [batch, none]"),
    ("slice(v, 1, 0, 4, 0)", "step cannot be 0"),
    ("slice(v, 1, 20, 30)", "is empty"),
    ("concat()", "concat needs at least one tensor"),
    ("concat(v, v, axis = 5)", "axis 5 is out of range"),
    ("concat(t > 0, t)", "7:21: error: concat: piece 2 is int32[batch], piece 1 is "
                         "bool[batch]; the pieces need one dtype"),
    ("concat(v, v, cast(v, \"float64\"), axis = 0)", "piece 3 is float64[batch, 8]"),
    ("concat(v, none)", "7:17: error: concat() argument 2: expected a tensor, got none"),
    ("concat(v, \"a\", axis = 0)", "concat() argument 2: expected a tensor, got \"a\""),
    ("concat(v, [v, v])", "concat() argument 2: expected a tensor, got a list"),
    ("one_hot(t, 0)", "depth must be a positive integer, got 0"),
    ("one_hot(t, 10, dtype = \"bogus\")", "expected a dtype"),
    ("cast(v, \"bogus\")", "expected a dtype"),
    ("scatter_add(v, t, 0)", "rows must be a positive integer"),
    ("bce(sigmoid(v), v, eps = -1.0)", "eps must be in [0, 0.5)"),
    ("cross_entropy(x, t)", "need labels"),
    # NOTE: lstm's unit_forget_bias (on by default) replaces bias_init: its value was not even
    # checked, and one given was dropped without a word
    ("lstm(s, 4, bias_init = \"bogus\")", "7:30: error: lstm: bias_init: unknown initializer"),
    ("lstm(s, 4, bias_init = 1)", "7:30: error: lstm: bias_init: expected an initializer, got 1"),
    ("lstm(s, 4, bias_init = \"ones\")", "7:30: error: lstm: bias_init = \"ones\" is not used: "
                                        "unit_forget_bias = true sets the bias"),
    ("v[:, 5:2]", "is empty"),
    # NOTE: the kernels take k as an int64: a larger one was an internal error (OverflowError)
    ("tril(v, k = 99999999999999999999)", "7:19: error: tril: k = 99999999999999999999 is "
                                          "outside the int64 range"),
    ("triu(v, k = -9223372036854775809)", "7:19: error: triu: k = -9223372036854775809 is "),
    # NOTE: an index past the end was reported as the slice it is lowered to ("slice 8:9 of a
    # dim of size 8 is empty"), which the source never wrote
    ("v[:, 8]", "7:12: error: index 8 is out of range for axis 1 of v, of size 8"),
    ("v[:, -9]", "7:12: error: index -9 is out of range for axis 1 of v, of size 8"),
    ("-(t > 0)", "7:9: error: neg: needs numbers, got bool[batch]"),
    ("stop_gradient(t > 0)", "stop_gradient: needs numbers, got bool[batch]"),
    ("sign(t > 0)", "sign: needs numbers, got bool[batch]"),
    ("t ** (t - 5)", "7:7: error: pow: int32[batch] ** int32[batch] needs a float on one side"),
    ("max_pool2d(cast(x, \"int32\"), 2)", "max_pool2d needs a float tensor, got int32"),
    ("global_max_pool(cast(x, \"int32\"))", "global_max_pool needs a float tensor, got int32"),
    # NOTE: ops sharing a shape rule each name themselves, not the pair ("mean and var needs")
    ("var(tok)", "7:11: error: var needs a float tensor, got int32[batch, 5]"),
    ("mean(tok)", "7:12: error: mean needs a float tensor, got int32[batch, 5]"),
    ("log_softmax(tok)", "7:19: error: log_softmax needs a float tensor, got int32[batch, 5]"),
    ("linear(tok, 4)", "7:14: error: linear needs a float tensor, got int32[batch, 5]"),
    ("linear(v, 0)", "7:17: error: linear: units must be a positive integer, got 0"),
    ("-none", "7:7: error: cannot negate none: unary minus takes a number or a tensor"),
    ("v * -true", "cannot negate true"),
    ("reshape(v, [-batch, 8])", "cannot negate batch"),
    # NOTE: Python's TypeError named its own types: 'NoneType' and 'int'
    ("dense(v, none + 1)", "7:16: error: cannot compute none + 1: + takes numbers or tensors"),
    ("dense(v, 2 < \"a\")", "7:16: error: cannot compute 2 < \"a\": < takes numbers or tensors"),
    # NOTE: Python's own meanings ran silently: text joined, a list repeated, true taken as 1
    ("dense(v, 3, activation = \"re\" + \"lu\")", "7:32: error: cannot compute \"re\" + \"lu\": "
                                                 "+ takes numbers or tensors"),
    ("reshape(v, [batch, 2] * 2)", "7:18: error: cannot compute [batch, 2] * 2"),
    ("dense(v, true + 1)", "7:16: error: cannot compute true + 1"),
    ("dense(v, 3, activation = \"bogus\")", "7:32: error: dense: unknown activation 'bogus'"),
    ("v[:, :, :]", "3 indices for a tensor of rank 2"),
    ("unfold(x, [0, 0], [1, 1], [0, 0, 0, 0], [1, 1])", "kernel must be 2 ints >= 1"),
    ("window_max(x, [0, 0], [1, 1], [0, 0, 0, 0])", "kernel must be 2 ints >= 1"),
    # NOTE: values as the source spells them, and as written: stride 0, not the [0, 0] it means
    ("unfold(x, [3, 3], 0, [0, 0, 0, 0], 1)", "7:25: error: unfold: stride must be 2 ints >= 1 "
                                              "(one per spatial dim), got 0"),
    ("window_max(x, [], 1, [0, 0, 0, 0])",
     "7:21: error: window_max: kernel must be one int >= 1 per spatial dim, got []"),
    ("window_max(x, [2, 2], [1, 1], [1, 1])", "pads must be 4 ints >= 0 (one per spatial dim, "
                                              "lo and hi), got [1, 1]"),
    ("fold(x, [8], [], [1], [0, 0], [1])", "fold: kernel must be one int >= 1 per spatial dim"),
    ("max_pool2d(x, 2, padding = none)", "7:34: error: max_pool2d: padding must be \"same\", "
                                         "\"valid\", an int, 2 ints or 4 lo/hi ints, got none"),
    # NOTE: true is no pad width; Python's bool is an int, so it padded 1
    ("conv2d(x, 4, 3, padding = true)", "7:33: error: conv2d: padding must be \"same\", "
                                        "\"valid\", an int, 2 ints or 4 lo/hi ints, got true"),
    ("max_pool2d(x, 2, padding = [true, 0])", "got [true, 0]"),
    ("fold(x, [8, 8], [3, 3], [1, 1], [0, 0, 0, 0], [1, 1])", "are not the windows of size"),
    ("window_max_grad(x, x, [2, 2], [2, 2], [0, 0, 0, 0])",
     "7:26: error: window_max_grad: g is float32[batch, 3, 8, 8], but the window max of x"),
    ("window_max_grad(x, v, 2, [2, 2], [0, 0, 0, 0])", "stride must be 1 int >= 1"),
    ("window_max(cast(x, \"int32\"), [2, 2], 2, [0, 0, 0, 0])",
     "window_max needs a float tensor, got int32[batch, 3, 8, 8]"),
]


@pytest.mark.parametrize("expr, words", OP_LIMITS, ids=[e for e, _ in OP_LIMITS])
def test_op_arguments_at_their_limits(tmp_path, expr, words):
    path = nn_file(tmp_path, model(f"y = {expr}"))
    out = cli("check", path)
    expect(out, f"{path}:7:", words)


@pytest.mark.parametrize("expr, listed", [
    ("window_max(x, [2, 2], 1, [0, 0, 0, 0])", "window_max(x, [2, 2], [1, 1], [0, 0, 0, 0])"),
    ("unfold(x, [3, 3], 2, [0, 0, 0, 0], 1)", "unfold(x, [3, 3], [2, 2], [0, 0, 0, 0], [1, 1])"),
    ("fold(unfold(x, [3, 3], 1, [1, 1, 1, 1], 1), [3, 8], [3, 3], 1, [1, 1, 1, 1], 1)",
     "fold(unfold(x, [3, 3], 1, [1, 1, 1, 1], 1), [3, 8], [3, 3], [1, 1], [1, 1, 1, 1], [1, 1])"),
    ("window_max_grad(x, window_max(x, [2, 2], 2, [0, 0, 0, 0]), [2, 2], 2, [0, 0, 0, 0])",
     "window_max_grad(x, window_max(x, [2, 2], 2, [0, 0, 0, 0]), [2, 2], [2, 2], [0, 0, 0, 0])"),
])
def test_an_int_stride_or_dilation_holds_for_every_window_dim(tmp_path, expr, listed):
    """Found by a fuzzer: the rule took the int and the shape rule indexed it (a TypeError)."""
    expect(cli("check", nn_file(tmp_path, model(f"y = {expr}")), code=0), "ok:")
    import nnlang
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype("float32")
    for backend in ("reference", "numba"):
        got = [nnlang.compile(model(f"y = {e}").replace("loss mean(y)", "output y"),
                              backend=backend, batch=2).forward({"x": x})["y"]
               for e in (expr, listed)]
        np.testing.assert_array_equal(*got)


@pytest.mark.parametrize("line", ["y = v", "y = dense(v, 4, trainable = false)"])
def test_clip_norm_needs_trainable_weights(tmp_path, line):
    """Found by a fuzzer: clip_norm summed the squares of no gradient (None) at compile time."""
    train = "train M {\n  optimizer = sgd(lr = 0.1)\n  clip_norm = 1.0\n}\n"
    path = nn_file(tmp_path, model(line) + train)
    expect(cli("check", path), f"{path}:12:15: error: clip_norm = 1: model 'M' has no "
           "trainable weights, so there is no gradient to clip", "hint: remove clip_norm")
    import nnlang
    from nnlang.frontend.train_config import TrainConfig
    from nnlang.runtime.net import Net
    # NOTE: clip_norm from the Python API has no span: clipping nothing is a no-op (--set's is
    # refused at its value: test_clip_norm_from_set_needs_trainable_weights_too)
    net = Net(nnlang.load(model(line)), backend="reference", batch=2,
              config=TrainConfig(clip_norm=1.0))
    before = net.parameters()
    feeds = {"v": np.ones((2, 8), np.float32), "x": np.zeros((2, 3, 8, 8), np.float32),
             "s": np.zeros((2, 6, 4), np.float32), "t": np.zeros(2, np.int32),
             "tok": np.zeros((2, 5), np.int32)}
    assert np.isfinite(net.train_step(feeds))
    assert all(np.array_equal(before[k], w) for k, w in net.parameters().items())


@pytest.mark.parametrize("line", ["y = v", "y = dense(v, 4, trainable = false)"])
def test_clip_norm_from_set_needs_trainable_weights_too(line):
    """--set clip_norm=1 over a model with no trainable weight was taken silently (clipping
    nothing), where the train section's `clip_norm = 1.0` is refused: now the same error, at
    the value on the command line."""
    from nnlang.errors import NNError
    from nnlang.train.overrides import resolve
    from nnlang_cli.app import parse_overrides
    src = model(line) + "train M {\n  optimizer = sgd(lr = 0.1)\n}\n"
    with pytest.raises(NNError) as err:
        resolve(src, None, parse_overrides(["clip_norm=1"]))
    assert str(err.value.span) == "<command line>:1:17"
    assert err.value.message == ("clip_norm = 1: model 'M' has no trainable weights, so there "
                                 "is no gradient to clip")
    assert err.value.diagnostics[0].hint.startswith("remove clip_norm")


def test_attribute_errors_point_at_the_argument(tmp_path):
    path = nn_file(tmp_path, model("y = dropout(v, rate = 1.5)"))
    out = cli("check", path)
    expect(out, f"{path}:7:25: error: dropout: rate must be in [0, 1), got 1.5")


def test_means_and_losses_of_a_scalar(tmp_path):
    """mean, var and the mean-reducing losses of a rank-0 value passed `check` and then failed
    to compile (an internal error: their decomposition summed over an empty axis list). They
    are the scalar's own mean, variance and loss, here against numpy."""
    text = model("z = sum(v)", "output m = mean(z)", "output va = var(z)",
                 "output e = mse(z, 2.0 * z)", "output bl = bce_with_logits(z, 1.0)",
                 "y = z * dense(v, 1)")
    out = cli("compile", nn_file(tmp_path, text), "--backend", "reference", code=0)
    assert "compile time" in out
    import nnlang
    v = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    x, s, tok, t = (np.zeros((2, 3, 8, 8), np.float32), np.zeros((2, 6, 4), np.float32),
                    np.zeros((2, 5), np.int32), np.zeros(2, np.int32))
    got = nnlang.compile(text, backend="reference", batch=2).forward(
        {"x": x, "s": s, "v": v, "t": t, "tok": tok})
    total = np.float64(v.sum(dtype=np.float64))
    np.testing.assert_allclose([got["m"], got["va"], got["e"], got["bl"]],
                               [total, 0.0, total ** 2, np.log1p(np.exp(-total))],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init, value", [("normal(std = -0.0, mean = 0.5)", 0.5),
                                         ("uniform(scale = -0.0)", 0.0)])
def test_a_spread_of_minus_zero_is_no_spread(tmp_path, init, value):
    """-0.0 passed the `std >= 0` check, then numpy refused it at compile time ("scale < 0",
    an internal error); a zero spread gives every weight the mean."""
    text = model(f"param w: float32[8, 2] = {init}", "y = v @ w")
    cli("compile", nn_file(tmp_path, text), "--backend", "reference", code=0)
    import nnlang
    w = nnlang.compile(text, backend="reference", batch=2).parameters()["w"]
    np.testing.assert_array_equal(w, np.full((8, 2), value, np.float32))


def test_a_digit_of_another_script_is_no_number(tmp_path):
    """`u = \u0663` (Arabic-Indic three) read as 3 and `float32[batch, \u0661\u0660]` as 10: the
    grammar's numbers are the ASCII forms the docs list."""
    path = nn_file(tmp_path, "model M(u = \u0663) {\n  input x: float32[batch, 2]\n"
                             "  output y = x * u\n}\n")
    expect(cli("check", path, code=1), f"{path}:1:13: error: unexpected character")


def test_gather_from_a_scalar_table_is_refused_where_it_is_written(tmp_path):
    """gather(table, idx) with a rank-0 table passed `check` and then failed in the first
    forward with an IndexError (a traceback): a scalar has no rows to pick, as numpy's
    np.float32(1)[[0]] refuses."""
    path = nn_file(tmp_path, model("z = sum(v)", "y = gather(z, tok)"))
    expect(cli("check", path), f"{path}:8:14: error: gather: the table is a scalar")


def test_an_integer_base_to_a_trained_power(tmp_path):
    """Found by a fuzzer: `tok ** w` (int32 ids, a float weight) passed check and forward, and
    then building the gradient raised a ShapeError (a traceback): d/dw a**w = a**w log a took
    the log of the int32 base. Against numpy: one sgd step of lr 1 on mean(tok ** w)."""
    import nnlang
    from nnlang.frontend.train_config import Choice, TrainConfig
    from nnlang.runtime.net import Net
    text = model("param w: float32[5] = ones", "y = tok ** w")
    cli("compile", nn_file(tmp_path, text), "--backend", "reference", code=0)
    net = Net(nnlang.load(text), backend="reference", batch=2,
              config=TrainConfig(optimizer=Choice("sgd", {"lr": 1.0, "momentum": 0.0,
                                                         "nesterov": False, "weight_decay": 0.0})))
    tok = np.array([[1, 2, 3, 4, 5], [2, 3, 4, 5, 6]], np.int32)
    feeds = {"v": np.zeros((2, 8), np.float32), "x": np.zeros((2, 3, 8, 8), np.float32),
             "s": np.zeros((2, 6, 4), np.float32), "t": np.zeros(2, np.int32), "tok": tok}
    net.train_step(feeds)
    a = tok.astype(np.float64)
    grad = (a * np.log(a)).sum(axis=0) / a.size   # d/dw of mean(a ** w) at w = 1
    np.testing.assert_allclose(net.parameters()["w"], 1.0 - grad, rtol=1e-5)


def test_activations_beyond_this_machine(tmp_path):
    """Found by a fuzzer: a value no machine holds that is no weight (check warns, compile
    counts weights only) failed allocating its buffer with "cannot allocate 36,379.8 GiB of
    memory" and no place in the file; the error points at the op whose value needs it."""
    path = nn_file(tmp_path, model("y = one_hot(tok, depth = 1000000000000)"))
    expect(cli("check", "-q", path, code=0), "warning:", "of memory available")
    out = cli("compile", path, "--batch", "2")
    expect(out, f"{path}:7:7: error: cannot allocate", "y = one_hot(tok",
           "float32[2, 5, 1000000000000]")


def test_training_that_fits_only_with_swap(monkeypatch):
    """The weights-and-optimizer check refused a training step that swap could hold: it runs
    (slowly), as PyTorch's would. Within swap it is a warning naming the largest weight."""
    import warnings

    import nnlang
    from nnlang.errors import NNWarning
    from nnlang.ir import summary
    mib = 1 << 20
    monkeypatch.setattr(summary, "machine_memory",
                        lambda: summary.HostMemory(16 * mib, 5 * mib, "", 8 * mib))
    net = nnlang.compile(MLP, backend="reference", batch=4, total_steps=1)  # weights: 2.04 MiB
    image, label = np.zeros((4, 784), np.float32), np.zeros(4, np.int32)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net.train_step({"image": image, "label": label})
    (warning,) = [str(w.message) for w in seen if issubclass(w.category, NNWarning)]
    expect(warning, f"{MLP}:8:8: warning: this model needs about 8.18 MiB", "this machine has "
           "7.04 MiB of memory available", "it runs in 8.00 MiB of swap, slowly",
           "the largest weight is")


def test_one_net_warns_once_about_running_in_swap(monkeypatch):
    """Past the memory available and within swap, every check of one net warned the same
    news: its weights, its training's state, the train step's values, the evaluation's and
    the forward's; five warnings for one build. It is said once, at the first check."""
    import warnings

    import nnlang
    from nnlang.errors import NNWarning
    from nnlang.ir import summary
    mib = 1 << 20
    monkeypatch.setattr(summary, "machine_memory",
                        lambda: summary.HostMemory(64 * mib, 1024, "", 64 * mib))
    image, label = np.zeros((4, 784), np.float32), np.zeros(4, np.int32)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net = nnlang.compile(MLP, backend="reference", batch=4, total_steps=1)
        net.train_step({"image": image, "label": label})
        net.evaluate({"image": image, "label": label})
        net.forward({"image": image})
        net.forward({"image": image[:2]})
    (warning,) = [str(w.message) for w in seen if issubclass(w.category, NNWarning)]
    expect(warning, f"{MLP}:8:8: warning: this model needs about 2.04 MiB", "this machine has "
           "1.00 KiB of memory available", "it runs in 64.00 MiB of swap, slowly")


def test_buffers_that_together_exceed_this_machine(monkeypatch):
    """Each planned buffer fitting alone, the step's buffers together could exceed the
    machine's memory: the allocations succeeded (address space only) and the step was killed
    by the out-of-memory killer as it wrote them (a GPT at vocab 50,000, block 1,024, batch 24
    planned 48 GiB on a 23 GiB machine and compiled without a word). It is an error at the op
    of the largest value, before anything runs."""
    import nnlang
    from nnlang.errors import NNError
    from nnlang.ir import summary
    mib = 1 << 20
    monkeypatch.setattr(summary, "machine_memory", lambda: summary.HostMemory(16 * mib, 4 * mib))
    text = model("y = one_hot(tok, depth = 4096) * 2.0").replace("loss mean(y)", "output y")
    net = nnlang.compile(text, batch=64)   # one_hot's value and y: float32[64, 5, 4096] each
    with pytest.raises(NNError) as err:
        net.forward({"tok": np.zeros((64, 5), np.int32)})
    expect(err.value.render(), "<string>:7:7: error: cannot allocate 10.00 MiB for this "
           "step's values (the largest, float32[64, 5, 4096], 5.00 MiB): this machine has "
           "4.00 MiB of memory available (16.00 MiB in all)", "hint: use a smaller batch")


@pytest.mark.parametrize("v1", [False, True])
def test_buffers_past_a_containers_memory_limit(monkeypatch, tmp_path, v1):
    """In a container /proc/meminfo shows the host's memory: a step planning more than the
    container's cgroup limit (docker --memory, a Kubernetes limit) passed the check against
    the host's MemAvailable and was killed by the OOM killer at the limit. The limit, less
    what the cgroup uses besides reclaimable page cache, is the memory available."""
    import nnlang
    from nnlang.errors import NNError
    from nnlang.ir import summary
    mib = 1 << 20
    (tmp_path / "meminfo").write_text(f"MemTotal: {64 << 20} kB\nMemAvailable: {60 << 20} kB\n")
    (tmp_path / "self").write_text("4:memory:/docker/abc\n" if v1 else "0::/\n")
    cg = tmp_path / "cgroup" / ("memory/docker/abc" if v1 else "")
    cg.mkdir(parents=True, exist_ok=True)
    names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file") if v1 \
        else ("memory.max", "memory.current", "inactive_file")
    (cg / names[0]).write_text(f"{8 * mib}\n")
    (cg / names[1]).write_text(f"{5 * mib}\n")
    (cg / "memory.stat").write_text(f"anon 1\n{names[2]} {mib}\nactive_file 7\n")
    monkeypatch.setattr(summary, "_MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(summary, "_SELF_CGROUP", str(tmp_path / "self"))
    monkeypatch.setattr(summary, "_CGROUP", str(tmp_path / "cgroup"))
    text = model("y = one_hot(tok, depth = 4096) * 2.0").replace("loss mean(y)", "output y")
    net = nnlang.compile(text, batch=64)   # one_hot's value and y: float32[64, 5, 4096] each
    with pytest.raises(NNError) as err:
        net.forward({"tok": np.zeros((64, 5), np.int32)})
    # NOTE: the limit is the container's, not this machine's, and the message says which
    expect(err.value.render(), "<string>:7:7: error: cannot allocate 10.00 MiB for this "
           "step's values (the largest, float32[64, 5, 4096], 5.00 MiB): this container's "
           f"memory limit ({names[0]}) leaves 4.00 MiB of memory available (8.00 MiB in all)",
           "hint: use a smaller batch")
    (cg / names[0]).write_text("max\n" if not v1 else f"{2 ** 63 - 4096}\n")   # no limit
    assert net.forward({"tok": np.zeros((64, 5), np.int32)})["y"].shape == (64, 5, 4096)


def _fake_memory(monkeypatch, tmp_path, available_mib: int, swap_mib: int = 0,
                 swap_max: str | None = None) -> None:
    """/proc/meminfo and a cgroup v2 hierarchy (no memory limit; `swap_max`: its
    memory.swap.max) as `machine_memory` reads them."""
    from nnlang.ir import summary
    (tmp_path / "meminfo").write_text(f"MemTotal: {64 << 10} kB\nMemAvailable: "
                                      f"{available_mib << 10} kB\nSwapFree: {swap_mib << 10} kB\n")
    (tmp_path / "self").write_text("0::/job\n")
    cg = tmp_path / "cgroup" / "job"
    cg.mkdir(parents=True)
    (cg / "memory.max").write_text("max\n")
    if swap_max is not None:
        (cg / "memory.swap.max").write_text(f"{swap_max}\n")
        (cg / "memory.swap.current").write_text("0\n")
    monkeypatch.setattr(summary, "_MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(summary, "_SELF_CGROUP", str(tmp_path / "self"))
    monkeypatch.setattr(summary, "_CGROUP", str(tmp_path / "cgroup"))


@pytest.mark.parametrize("swap_mib, swap_max, refused", [
    (8, None, False), (8, "max", False), (1, None, True), (8, "0", True), (8, "1048576", True)])
def test_buffers_that_fit_only_with_swap(monkeypatch, tmp_path, swap_mib, swap_max, refused):
    """The step's buffers past MemAvailable were refused even with swap enough to hold them:
    such a step runs (slowly), and PyTorch or Keras would run it; only a step past memory and
    the swap its cgroup may use is certainly killed. Within swap it is a warning, at the op."""
    import warnings

    import nnlang
    from nnlang.errors import NNError, NNWarning
    _fake_memory(monkeypatch, tmp_path, 4, swap_mib, swap_max)
    text = model("y = one_hot(tok, depth = 4096) * 2.0").replace("loss mean(y)", "output y")
    net = nnlang.compile(text, batch=64)   # 10 MiB of values: 4 MiB available
    tok = np.zeros((64, 5), np.int32)
    if refused:
        with pytest.raises(NNError) as err:
            net.forward({"tok": tok})
        expect(err.value.render(), "<string>:7:7: error: cannot allocate 10.00 MiB", "this "
               "machine has 4.00 MiB of memory available")
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert net.forward({"tok": tok})["y"].shape == (64, 5, 4096)
    (warning,) = [str(w.message) for w in seen if issubclass(w.category, NNWarning)]
    expect(warning, "<string>:7:7: warning: 10.00 MiB for this step's values", "this machine "
           "has 4.00 MiB of memory available", "8.00 MiB of swap, slowly", "^^^^")


def test_steps_that_together_exceed_this_machine(monkeypatch, tmp_path):
    """Each executable of a net was checked alone: one compiled (its buffers allocated, no
    pages yet: prepare, or a train step's optimizer slots) and a second built before the first
    ran each fit MemAvailable, and together were killed once both ran. What the net allocated
    and has not written counts; once a step ran, its pages are in MemAvailable's count and
    not counted again."""
    import nnlang
    from nnlang.errors import NNError
    _fake_memory(monkeypatch, tmp_path, 12)
    text = model("y = one_hot(tok, depth = 4096) * 2.0").replace("loss mean(y)", "output y")
    net = nnlang.compile(text, batch=64)
    net.prepare("predict")                  # 10.00 MiB planned, allocated, not written
    with pytest.raises(NNError) as err:     # 5.00 MiB more at batch 32: 15 MiB in all
        net.forward({"tok": np.zeros((32, 5), np.int32)})
    expect(err.value.render(), "<string>:7:7: error: cannot allocate 5.00 MiB for this step's "
           "values (the largest, float32[32, 5, 4096], 2.50 MiB) and the 10.00 MiB this net "
           "allocated before and has not written yet: this machine has 12.00 MiB")
    assert net.forward({"tok": np.zeros((64, 5), np.int32)})["y"].shape == (64, 5, 4096)
    # NOTE: the batch-64 step ran: its pages are what MemAvailable (faked: still 12 MiB) left
    assert net.forward({"tok": np.zeros((32, 5), np.int32)})["y"].shape == (32, 5, 4096)


def test_a_scan_body_on_top_of_its_step(monkeypatch):
    """A recurrence's body is an executable of its own, built while its step's buffers are
    allocated and not yet written: each was checked alone, so the two together could pass
    MemAvailable and be killed. The body counts the step's buffers."""
    import nnlang
    from nnlang.errors import NNError
    from nnlang.ir import summary
    text = "model R {\n  input x: float32[batch, 6, 4]\n  output y = lstm(x, 256, " \
        "return_sequences = true)\n}\n"
    net = nnlang.compile(text, batch=8)   # the weights' check passes on this machine
    # NOTE: the step plans 288 KiB, its body 96 KiB: each fits in 300 KiB, together not
    monkeypatch.setattr(summary, "machine_memory", lambda: summary.HostMemory(64 << 20, 300 << 10))
    with pytest.raises(NNError) as err:
        net.prepare("predict")
    expect(err.value.render(), "<string>:3:14: error: cannot allocate 96.00 KiB for this step's "
           "values", "and the 288.00 KiB this net allocated before and has not written yet: "
           "this machine has 300.00 KiB of memory available")


def test_a_step_whose_values_do_not_grow_with_the_batch(monkeypatch):
    """The refusal always said "use a smaller batch", also for a train step at batch 1 of a
    huge embedding, whose largest value is the weight's gradient: the batch does not change
    it. The hint names the weight, and Adam's two slots kept for it."""
    import nnlang
    from nnlang.errors import NNError
    from nnlang.ir import summary
    from nnlang.runtime import executable
    text = """model Bag(vocab = 20000, dim = 64) {
  input tokens: int32[batch, 5]
  input label: float32[batch]
  m = mean(embedding(tokens, vocab, dim), axis = 1)
  logit = dense(m, 1) |> squeeze(axis = -1)
  loss bce_with_logits(logit, label)
}
train Bag {
  optimizer = adam(lr = 1e-2)
}
"""
    net = nnlang.compile(text, batch=1)
    net.prepare("train")
    exe, g = net._exe("train", 1)
    monkeypatch.setattr(summary, "machine_memory", lambda: summary.HostMemory(64 << 20, 1 << 20))
    with pytest.raises(NNError) as err:
        executable._check_host_memory(exe.graph, exe.memory, exe.backend)
    expect(err.value.render(), "error: cannot allocate 4.88 MiB for this step's values (the "
           "largest, float32[20000, 64], 4.88 MiB)", "hint: 4.88 MiB of them do not grow with "
           "the batch: the largest is the gradient of the weight m.weight [20000, 64]; the "
           "optimizer keeps 2 more of its size (optimizer.m.m.weight, optimizer.v.m.weight); a "
           "smaller batch would not help: use fewer parameters (a smaller vocab or dim), an "
           "optimizer with less state")


def test_a_value_too_large_on_the_reference_backend():
    """The interpreter's numpy raised a bare MemoryError (a traceback) for a value this machine
    cannot hold; it is the compiled backends' error, at the op's line."""
    import nnlang
    from nnlang.errors import NNError
    text = model("y = one_hot(tok, depth = 1000000000000)").replace("loss mean(y)", "output y")
    net = nnlang.compile(text, backend="reference", batch=2)
    with pytest.raises(NNError) as err:
        net.forward({"tok": np.zeros((2, 5), np.int32)})
    expect(err.value.render(), "<string>:7:7: error: cannot allocate memory for the value "
           "float32[2, 5, 1000000000000]", "hint: use a smaller batch")


@pytest.mark.parametrize("line, where, words", [
    ("y = dense(v, 3, init = uniform(scale = 1e39))", "7:26", "uniform() needs scale within "
     "float32's range (about 3.4e38), got 1e+39"),
    ("param w: float32[8, 2] = constant(value = -1e39)", "7:28", "constant() needs value within "
     "float32's range"),
    ("param w: float32[8, 2] = normal(mean = 4e38)", "7:28", "normal() needs mean within "),
])
def test_an_initializer_option_beyond_float32(tmp_path, line, where, words):
    """Found by a fuzzer: uniform(scale = 1e39) drew infinite weights (numpy warned "overflow
    encountered in cast") and training ran on them with exit 0."""
    lines = [line] if line.startswith("y") else [line, "y = v @ w"]
    expect(cli("check", nn_file(tmp_path, model(*lines))), f":{where}: error: {words}")


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"),
                                            ("utf-32", "UTF-32")])
def test_a_utf16_file_is_named_as_such(tmp_path, encoding, name):
    """Windows Notepad's "Unicode" is UTF-16 with a byte-order mark: its NUL bytes made it
    "a binary file". The encoding is named, with how to save it as UTF-8."""
    text = MLP.read_text()
    data = (b"\xfe\xff" + text.encode(encoding)) if encoding == "utf-16-be" else \
        text.encode(encoding)
    path = nn_file(tmp_path, data)
    out = cli("check", path)
    expect(out, f"{path}:1:1: error: this file is {name} (it starts with a {name} byte-order "
           "mark); .nn source is UTF-8 text", "save it as UTF-8")
    assert "binary" not in out
