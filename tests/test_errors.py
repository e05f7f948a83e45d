"""Error messages are part of the interface: every tests/errors/<case>.nn must fail with exactly
the text in <case>.expected (file:line:col, the source line, a caret, notes and a hint).

A case whose first line is `# set: name=value ...` is elaborated with those --set overrides.
Regenerate the expected files (prints the diff) with:

    python -m tests.regen
"""
from __future__ import annotations

import difflib

import pytest

from tests.regen import ERRORS_DIR, error_text

CASES = sorted(p.stem for p in ERRORS_DIR.glob("*.nn"))

# One case per error kind the front end reports; a new kind needs a new case here.
KINDS = {
    "syntax_error", "syntax_missing_comma", "syntax_several", "unknown_name", "unknown_op",
    "wrong_argument", "missing_argument", "unknown_argument", "shape_mismatch", "shape_hint",
    "matmul_mismatch", "dtype_mismatch", "use_before_definition", "duplicate_definition",
    "recursive_block", "bad_train_section", "unknown_dataset", "unknown_optimizer",
    "several_errors", "bad_set_value", "bad_set_name", "loss_not_scalar",
    "number_overflow", "size_too_large", "unclosed_brace", "argument_out_of_range",
    "block_error_call_site",
}


def test_every_kind_has_a_case():
    assert KINDS <= set(CASES), f"missing cases: {sorted(KINDS - set(CASES))}"


@pytest.mark.parametrize("case", CASES)
def test_error_golden(case):
    got = error_text(ERRORS_DIR / f"{case}.nn")
    want = (ERRORS_DIR / f"{case}.expected").read_text()
    assert got != "(no error)\n", f"{case}.nn elaborates without an error"
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            f"{case}.expected", "now"))
        pytest.fail(f"error text of {case} changed (regenerate: python -m tests.regen)\n{diff}")


@pytest.mark.parametrize("case", CASES)
def test_error_points_into_the_file(case):
    first = (ERRORS_DIR / f"{case}.expected").read_text().splitlines()[0]
    assert first.startswith((f"tests/errors/{case}.nn:", "<command line>:")), first
    assert "Traceback" not in (ERRORS_DIR / f"{case}.expected").read_text()


def test_an_error_at_a_use_of_an_override_notes_it():
    """As set_value_bad_at_its_use's --set: from Python, `overrides=` gave the value the file's
    line refuses, whose header holds another; the note says so (a plain dict has no place)."""
    import nnlang
    src = (ERRORS_DIR / "set_value_bad_at_its_use.nn").read_text()
    with pytest.raises(nnlang.NNError) as err:
        nnlang.load(src, {"hidden": 0})
    assert err.value.span.line == 4
    assert ("hidden = 0 is given by overrides", None) in err.value.diagnostics[0].notes
    with pytest.raises(nnlang.NNError) as err:   # a name the line does not read: no note
        nnlang.load(src.replace("dense(x, hidden)", "dense(x, 0)"), {"hidden": 3})
    assert not [n for n in err.value.diagnostics[0].notes if "given by" in n[0]]


@pytest.mark.parametrize("line", [
    'h = dense(x, 8) + dense(x, units = 4)',              # a keyword argument's name
    'h = dense(x, 8, activation = "units")',              # a string
])
def test_a_name_the_refused_text_holds_but_does_not_read_gets_no_note(line):
    """The add's shape error, or the unknown activation, spans text that holds the name
    `units` without reading the hyper-parameter: the note said `units = 5 is given by --set`
    all the same, pointing at a value that had no part in the error."""
    from nnlang.errors import Given, NNError, Span
    from nnlang.frontend.elaborate import load
    src = f"""model M(units = 32) {{
  input x: float32[batch, 10]
  {line}
  output y = dense(h, units)
}}
"""
    at = Span("<command line>", 1, 13, 1, 14, "--set units=5")
    with pytest.raises(NNError) as err:
        load(src, Given({"units": 5}, {"units": (at, at)}))
    assert err.value.span.line == 3
    assert not [n for n in err.value.diagnostics[0].notes if "given by" in n[0]]


@pytest.mark.parametrize("call,noted", [("Enc(x, 0) + dense(x, units)", False),
                                        ("Enc(x, units)", True)])
def test_an_error_in_a_block_notes_a_set_value_only_through_the_models_call(call, noted):
    """A block's body sees only its parameters: its own `units` refused (called with 0) got
    the note `units = 5 is given by --set`, the model's hyper-parameter of that name, which
    had no part in it. The model's value reaches the body only through its call, so the note
    stays where the call passes it."""
    from nnlang.errors import Given, NNError, Span
    from nnlang.frontend.elaborate import load
    src = f"""block Enc(x, units) {{
  return dense(x, units)
}}
model M(units = 4) {{
  input x: float32[batch, 10]
  output y = {call}
}}
"""
    value = 0 if noted else 5
    at = Span("<command line>", 1, 13, 1, 14, f"--set units={value}")
    with pytest.raises(NNError) as err:
        load(src, Given({"units": value}, {"units": (at, at)}))
    d = err.value.diagnostics[0]
    assert d.span.line == 2 and "positive integer, got 0" in d.message
    assert [n for n in d.notes if "given by" in n[0]] == \
        ([("units = 0 is given by --set", at)] if noted else [])


def test_a_warning_at_a_use_of_a_set_value_notes_it():
    """A warning's line reading a --set value notes it as an error's does (batch_norm's
    Keras-style momentum from --set m=0.99, the file's header saying m = 0.1); a warning
    resolve() says again for other penalties (an unreached weight) is not doubled by it."""
    from nnlang.errors import Given, Span
    from nnlang.frontend.elaborate import load
    from nnlang.train.overrides import resolve
    src = """model M(m = 0.1, n = 2) {
  input x: float32[batch, 3]
  y = batch_norm(x, momentum = m)
  z = dense(x, n)
  loss l = mean(y * y)
}
"""
    at = Span("<command line>", 1, 9, 1, 13, "--set m=0.99")
    warned = load(src, Given({"m": 0.99}, {"m": (at, at)})).warnings
    assert [("m = 0.99 is given by --set", at)] == \
        [n for w in warned for n in w.notes if "momentum" in w.message]
    nat = Span("<command line>", 1, 9, 1, 10, "--set n=3")
    program = resolve(src, {"l2": 0.1}, Given({"n": 3}, {"n": (nat, nat)}))[0]
    unreached = [w for w in program.warnings if "no loss reads" in w.message]
    assert len(unreached) == 1 and "by the penalty" in unreached[0].message
