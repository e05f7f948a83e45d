"""The inspection commands (check, graph, fmt, ops) through typer's CliRunner: exit codes, output,
and never a traceback on bad input; plus one run of the real command in a subprocess."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.regen import ROOT, ensure_cli

app = ensure_cli().main.app
runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # error paths and goldens are relative to the repository root


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    return result


def test_check_prints_a_summary():
    r = run("check", "models/mlp.nn")
    assert r.exit_code == 0, r.stderr
    for text in ("model Mlp", "inputs: image: float32[batch, 784]", "Total params: 535,818",
                 "dense", "[batch, 512]", "401,920", "ok: models/mlp.nn"):
        assert text in r.stdout


def test_check_several_files_fails_if_one_fails():
    r = run("check", "models/mlp.nn", "tests/errors/unknown_name.nn", "models/cnn.nn")
    assert r.exit_code == 1
    assert "Total params: 535,818" in r.stdout and "Total params: 421,642" in r.stdout
    assert (ROOT / "tests/errors/unknown_name.expected").read_text().strip() in r.stderr


def test_check_error_is_printed_verbatim():
    r = run("check", "tests/errors/shape_mismatch.nn")
    assert r.exit_code == 1
    assert r.stderr == (ROOT / "tests/errors/shape_mismatch.expected").read_text()


def test_check_set_batch_and_model():
    r = run("check", "models/mlp.nn", "--set", "hidden1=256", "--batch", "1")
    assert r.exit_code == 0 and "Total params: 269,322" in r.stdout
    assert "batch = 1 (--batch)" in r.stdout
    assert run("check", "models/mlp.nn", "--model", "Mlp", "-q").exit_code == 0
    r = run("check", "models/mlp.nn", "--model", "Nope")
    assert r.exit_code == 1 and "no model named 'Nope'" in r.stderr


@pytest.mark.parametrize("flag", ["hidden1=1e", "hidden1", "=3", "hidden1=[1,"])
def test_check_bad_set(flag):
    r = run("check", "models/mlp.nn", "--set", flag)
    assert r.exit_code == 1 and "error:" in r.stderr and "--set" in r.stderr


def test_check_reads_standard_input_with_a_dash(tmp_path):
    """`nnlang check -` was taken as a file named '-' ("file not found"); as `nnlang fmt -`
    it reads the model from standard input, and its errors name <stdin>."""
    source = (ROOT / "models/mlp.nn").read_text()
    r = runner.invoke(app, ["check", "-"], input=source)
    assert r.exit_code == 0, r.stderr
    assert "Total params: 535,818" in r.stdout and "ok: <stdin>" in r.stdout
    bad = (ROOT / "tests/errors/shape_mismatch.nn").read_text()
    r = runner.invoke(app, ["check", "-"], input=bad)
    want = (ROOT / "tests/errors/shape_mismatch.expected").read_text()
    assert r.exit_code == 1 and r.stderr == want.replace("tests/errors/shape_mismatch.nn",
                                                         "<stdin>"), r.stderr
    r = runner.invoke(app, ["check", "-"], input="model M { input x float32 }\n")
    assert r.exit_code == 1 and "<stdin>:1:" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["check", "-", "-"], input=source)
    assert r.exit_code == 2 and "standard input" in r.output and "Total params" not in r.stdout


@pytest.mark.parametrize("args", [("compile", "-"), ("train", "-", "--backend", "reference")])
def test_a_dash_where_standard_input_is_not_read_says_so(args):
    """`nnlang train - < model.nn` answered "file not found: -" with the hint "check the
    path", as if a file named '-' were missing; the commands that read no model from
    standard input (only check, graph and fmt do) say that."""
    r = runner.invoke(app, list(args), input=(ROOT / "models/mlp.nn").read_text())
    assert r.exit_code == 1 and "file not found" not in r.stderr, r.output
    assert "'-' (standard input)" in r.stderr and "check, graph and fmt" in r.stderr


def test_check_missing_file():
    r = run("check", "models/nope.nn")
    assert r.exit_code == 1 and "file not found: models/nope.nn" in r.stderr


def user_scan(tail: str) -> str:
    """A hand-written RNN cell run by `scan` over [batch, 7, 3], `tail` ending the model."""
    return """block Cell(x, h, kernel, recurrent) {
  h2 = tanh(x @ kernel + h @ recurrent)
  return h2, h2
}

model UserScan {
  input x: float32[batch, 7, 3]
  input h0: float32[batch, 4]
  param kernel: float32[3, 4]
  param recurrent: float32[4, 4]
  hs, h = scan Cell(h0, kernel = kernel, recurrent = recurrent) over x
  """ + tail + "\n}\n"


def test_check_counts_a_user_scans_flops(tmp_path):
    """A hand-written RNN cell under `scan` showed no FLOPs in `nnlang check` (its rule read
    the body's symbolic batch). Its body counts once per step, GEMMs and elementwise ops alike,
    so the same cell as the builtin rnn's costs what the builtin does (the scan's rule counted
    only GEMMs, so neither counted the bias add or the tanh that a dense counts)."""
    src = tmp_path / "scan.nn"
    src.write_text("""block Cell(x, h, kernel, recurrent, bias) {
  h2 = tanh(x @ kernel + bias + h @ recurrent)
  return h2, h2
}

model UserScan {
  input x: float32[batch, 7, 3]
  input h0: float32[batch, 4]
  param kernel: float32[3, 4]
  param recurrent: float32[4, 4]
  param bias: float32[4]
  hs, h = scan Cell(h0, kernel = kernel, recurrent = recurrent, bias = bias) over x
  output out = hs
}

model Builtin {
  input x: float32[batch, 7, 3]
  output out = rnn(x, 4, return_sequences = true)
}
""")
    batch, steps, feats, units = 5, 7, 3, 4
    # x @ kernel, h @ recurrent, then the bias add, the add and the tanh
    want = steps * (2 * batch * (feats * units + units * units) + 3 * batch * units)
    for model in ("UserScan", "Builtin"):
        r = run("check", src, "--batch", batch, "--model", model)
        assert r.exit_code == 0, r.stderr
        assert f"Forward FLOPs: {want:,}" in r.stdout, r.stdout


def test_check_counts_docs_hand_lstm_as_the_builtin_lstm(tmp_path):
    """docs/language.md's hand-written Keras LSTM cell under `scan` and `lstm` itself run the
    same ops, so `check` gives both the GEMMs and the gate math (both counted the GEMMs only)."""
    doc = (ROOT / "docs" / "language.md").read_text()
    cell = doc[doc.index("block LstmCell("):]
    cell = cell[:cell.index("}\n") + 2]
    src = cell + """
model Hand {
  input x: float32[batch, 7, 3]
  input h0: float32[batch, 4]
  input c0: float32[batch, 4]
  param kernel: float32[3, 16]
  param recurrent: float32[4, 16]
  param bias: float32[16] = zeros
  hs, h, c = scan LstmCell(h0, c0, kernel = kernel, recurrent = recurrent, bias = bias,
                           units = 4) over x
  output out = hs
}

model Builtin {
  input x: float32[batch, 7, 3]
  input h0: float32[batch, 4]
  input c0: float32[batch, 4]
  output out = lstm(x, 4, return_sequences = true, initial_h = h0, initial_c = c0)
}
"""
    batch, steps, feats, units = 5, 7, 3, 4
    gemms = steps * 2 * batch * (feats + units) * 4 * units
    # per step and row: 2 adds of 4 units (h @ U, bias), 3 sigmoids, 2 tanh, 3 products, 1 add
    want = gemms + steps * batch * 17 * units
    path = tmp_path / "hand.nn"
    path.write_text(src)
    for model in ("Hand", "Builtin"):
        r = run("check", path, "--batch", batch, "--model", model)
        assert r.exit_code == 0, r.stderr
        assert f"Forward FLOPs: {want:,}" in r.stdout, r.stdout


def test_check_says_a_sizeless_symbol_counts_as_one(tmp_path):
    """`check` of a model with `symbol seq` printed "sizes at batch = 64" and then FLOPs and
    memory for seq = 1 without a word (models/lstm_full.nn: 32 KiB for its [batch, seq, 128]
    embedding of whole reviews). The header now says so; the numbers are as before."""
    src = tmp_path / "sym.nn"
    src.write_text("""model S {
  symbol seq
  input tokens: int32[batch, seq]
  x = embedding(tokens, 100, 8)
  output x
}
""")
    r = run("check", src, "--batch", 5)
    assert r.exit_code == 0, r.stderr
    assert "sizes at batch = 5 (--batch), seq = 1 (a symbol without a size)" in r.stdout
    assert f"{5 * 1 * 8 * 4} B" in r.stdout   # float32 [5, 1, 8]
    assert "seq = 1" not in run("check", "models/mlp.nn").stdout


def test_check_counts_cumsums_adds(tmp_path):
    """cumsum showed no FLOPs in `nnlang check`: it is in the reduce family but no REDUCE
    op, so no rule counted it. A running sum is one add per element, as a reduction's count."""
    src = tmp_path / "cs.nn"
    src.write_text("model C {\n  input x: float32[batch, 6, 7]\n"
                   "  output y = cumsum(x, axis = 1)\n}\n")
    r = run("check", src, "--batch", 3)
    assert r.exit_code == 0, r.stderr
    assert f"Forward FLOPs: {3 * 6 * 7:,}" in r.stdout, r.stdout


def test_check_counts_a_layers_bias_and_activation_as_separate_statements(tmp_path):
    """A dense or conv's FLOPs left out the bias add and the activation given in the call,
    while the same written as separate statements counted them: a layer now counts both."""
    src = tmp_path / "f.nn"
    src.write_text("""model InCall {
  input x: float32[batch, 4]
  input s: float32[batch, 2, 10]
  output y = dense(x, 5, activation = "relu")
  output c = conv1d(s, 6, 3)
}

model Separate {
  input x: float32[batch, 4]
  input s: float32[batch, 2, 10]
  param b: float32[5]
  param cb: float32[6, 1]
  output y = relu(dense(x, 5, use_bias = false) + b)
  output c = conv1d(s, 6, 3, use_bias = false) + cb
}
""")
    batch = 3
    dense = 2 * batch * 5 * 4 + batch * 5 + batch * 5   # GEMM, bias add, one relu per element
    conv = 2 * (batch * 6 * 8) * 2 * 3 + batch * 6 * 8   # per output: 2 * channels * kernel
    for model in ("InCall", "Separate"):
        r = run("check", src, "--batch", batch, "--model", model)
        assert r.exit_code == 0, r.stderr
        assert f"Forward FLOPs: {dense + conv:,}" in r.stdout, (model, r.stdout)


def test_check_shows_each_result_of_a_return_state_call(tmp_path):
    """`o, h, c = lstm(x, 3, return_state = true)` showed the packed value the compiler
    passes around, [batch, 3, 3] (outputs, h and c along axis 1), then six slice and reshape
    rows that cut it apart. Keras' summary shows such a layer's three [None, 3] outputs; the
    row now does, and the cutting is not shown as layers."""
    src = tmp_path / "rs.nn"
    src.write_text("""model R {
  input x: float32[batch, 5, 4]
  o, h, c = lstm(x, 3, return_state = true)
  s, hs = gru(x, 2, return_state = true, return_sequences = true)
  output y = o + h + c
  output s
  output hs
}
""")
    r = run("check", src, "--batch", 2)
    assert r.exit_code == 0, r.stderr
    assert not re.search(r"\b(slice|reshape)\b", r.stdout), r.stdout
    assert re.search(r"^o, h, c +lstm +\[batch, 3\], \[batch, 3\], \[batch, 3\] +96 ",
                     r.stdout, re.M), r.stdout
    assert re.search(r"^s, hs +gru +\[batch, 5, 2\], \[batch, 2\] +48 ", r.stdout, re.M)
    lstm = 4 * (3 * (4 + 3) + 3)   # Keras: 4 * (units * (in + units) + units)
    assert f"Total params: {lstm + 3 * (2 * (4 + 2) + 2 * 2):,}" in r.stdout
    # NOTE: the memory of each row's results, float32 at batch 2
    assert "Activation memory: " + str(4 * 2 * (3 * 3 + 5 * 2 + 2 + 3 + 3)) + " B" in r.stdout


def test_check_shows_each_result_of_a_bidirectional_return_state_call(tmp_path):
    """A bidirectional layer's states: each packed row holds [forward | backward], cut in
    two, and check showed the row's three [batch, 6] pieces, then four slice rows."""
    src = tmp_path / "bi.nn"
    src.write_text("""model R {
  input x: float32[batch, 5, 4]
  o, hf, cf, hb, cb = lstm(x, 3, return_state = true, bidirectional = true)
  output y = o + concat(hf + cf, hb + cb, axis = -1)
}
""")
    r = run("check", src, "--batch", 2)
    assert r.exit_code == 0, r.stderr
    assert not re.search(r"\b(slice|reshape)\b", r.stdout), r.stdout
    assert re.search(r"^o, hf, cf, hb, cb +lstm +\[batch, 6\], \[batch, 3\], \[batch, 3\], "
                     r"\[batch, 3\], \[batch, 3\] +192 ", r.stdout, re.M), r.stdout


def test_graph_draws_a_return_state_call_as_one_node(tmp_path):
    """`nnlang graph` drew `o, h, c = lstm(x, 3, return_state = true)` as the lstm with a
    [batch, 3, 3] edge into three slices and three reshapes; each result now leaves the lstm
    node itself, its edge labelled with that result's shape (the text is checked: Graphviz's
    dot need not be installed)."""
    src = tmp_path / "rs.nn"
    src.write_text("""model R {
  input x: float32[batch, 5, 4]
  o, h, c = lstm(x, 3, return_state = true)
  output y = dense(o, 2) + dense(h, 2) + dense(c, 2)
}
""")
    out = tmp_path / "rs.dot"
    r = run("graph", src, "-o", out)
    assert r.exit_code == 0, r.stderr
    text = out.read_text()
    labels = dict(re.findall(r"^\s*(n\d+) \[label=\"([^\"]*)\"", text, re.M))
    assert not any(v.startswith(("slice", "reshape")) for v in labels.values()), labels
    lstm = next(k for k, v in labels.items() if v.startswith("lstm"))
    assert labels[lstm] == "lstm\\no, h, c"
    edges = re.findall(rf"^\s*{lstm} -> (n\d+) \[label=\"([^\"]*)\"\]", text, re.M)
    assert len(edges) == 3 and {shape for _, shape in edges} == {"[batch, 3]"}, edges


HAND_LSTM = """block LstmCell(x, h, c, kernel, recurrent, bias, units = 4) {
  z = x @ kernel + h @ recurrent + bias
  i = sigmoid(z[:, 0:units])
  f = sigmoid(z[:, units:2 * units])
  g = tanh(z[:, 2 * units:3 * units])
  o = sigmoid(z[:, 3 * units:4 * units])
  c2 = f * c + i * g
  h2 = o * tanh(c2)
  return h2, c2, h2
}

model HandLstm(units = 4) {
  input x: float32[batch, 7, 3]
  input h0: float32[batch, units]
  input c0: float32[batch, units]
  param kernel: float32[3, 4 * units]
  param recurrent: float32[units, 4 * units]
  param bias: float32[4 * units] = zeros
  hs, h, c = scan LstmCell(h0, c0, kernel = kernel, recurrent = recurrent, bias = bias,
                           units = units) over x
  output out = hs
  loss mean(hs * hs) + mean(h * c)
}
"""


def test_check_and_graph_show_a_user_scan_as_one_call(tmp_path):
    """docs/language.md's hand-written LSTM: `hs, h, c = scan LstmCell(...) over x` was 12
    rows in `nnlang check` (a concat of the states, transposes to time-major and back, the
    bias broadcast over time, slices and reshapes cutting the results apart; 16 of the 128
    weights on a reshape) and as many nodes in `nnlang graph`. It is one call: one row with
    its three results' shapes and all its weights, one node whose edges carry its inputs'
    and results' shapes."""
    src = tmp_path / "hand.nn"
    src.write_text(HAND_LSTM)
    r = run("check", src, "--batch", 2)
    assert r.exit_code == 0, r.stderr
    table = r.stdout.split("─\n")[1].split("Total params")[0]
    ops = re.findall(r"^.*?\s(scan|mul|mean|add|\w+)\s+\[", table, re.M)
    assert ops == ["scan", "mul", "mean", "mul", "mean", "add"], table
    units, feats = 4, 3
    weights = feats * 4 * units + units * 4 * units + 4 * units   # Keras' LSTM count
    assert re.search(rf"^hs, h, c +scan +\[batch, 7, 4\], \[batch, 4\], \[batch, 4\] +"
                     rf"{weights} ", table, re.M), table
    out = tmp_path / "hand.dot"
    assert run("graph", src, "-o", out).exit_code == 0
    text = out.read_text()
    ops = re.findall(r"^\s*n\d+ \[label=\"(\w+)", text, re.M)
    assert sorted(ops) == ["add", "input", "input", "input", "mean", "mean", "mul", "mul",
                           "scan"], ops
    scan = re.search(r"^\s*(n\d+) \[label=\"scan\\nhs, h, c", text, re.M).group(1)
    into = re.findall(rf"^\s*n\d+ -> {scan} \[label=\"([^\"]*)\"", text, re.M)
    assert sorted(into) == ["[batch, 4]", "[batch, 4]", "[batch, 7, 3]"], into


def test_check_folds_each_call_of_a_repeated_scan_on_its_own(tmp_path):
    """A scan in a block that `repeat` runs twice: both calls' nodes have the statement's
    span, and the second reads the first's result; each call is still its own row, named
    in its block's path, with its own weights."""
    src = tmp_path / "rep.nn"
    src.write_text("""block RnnCell(x, h, kernel, recurrent) {
  h2 = tanh(x @ kernel + h @ recurrent)
  return h2, h2
}
block Layer(x, h0, units = 4) {
  param k: float32[4, units]
  param r: float32[units, units]
  hs, hl = scan RnnCell(h0, kernel = k, recurrent = r) over x
  return hs
}
model Rep {
  input x: float32[batch, 5, 4]
  input h0: float32[batch, 4]
  y = x
  repeat 2 {
    y = Layer(y, h0)
  }
  output y
}
""")
    r = run("check", src, "--batch", 2)
    assert r.exit_code == 0, r.stderr
    table = r.stdout.split("─\n")[1].split("Total params")[0].splitlines()
    weights = 4 * 4 + 4 * 4
    assert [re.split(r"\s{2,}", row)[:4] for row in table] == [
        [f"y.{k}.hs, y.{k}.hl", "scan", "[batch, 5, 4], [batch, 4]", str(weights)]
        for k in (0, 1)], table


SHARED = """block Tower(x) {
  h = dense(x, 8) |> relu
  return dense(h, 8)
}

model S {
  input x: float32[batch, 8]
  d1 = dense(x, 8)
  f = relu(d1)
  d2 = dense(f, 8, share = d1)
  a = Tower(d2)
  b = Tower(x, share = a)
  output y = a - b
}
"""


def test_check_and_graph_show_a_shared_call_under_its_own_name(tmp_path):
    """`d2 = dense(f, 8, share = d1)` was a second `d1` row in `nnlang check`, drawn inside
    d1's cluster by `nnlang graph`, and a shared block call `b` read `a.h`, `a.dense`. Keras
    lists each call under its own name with 0 params; the weights still count once, at d1."""
    src = tmp_path / "s.nn"
    src.write_text(SHARED)
    r = run("check", src, "--batch", 2)
    assert r.exit_code == 0, r.stderr
    rows = [line.split()[:2] for line in r.stdout.splitlines()
            if re.match(r"^\S+ +(dense|relu|sub) ", line)]
    assert [layer for layer, _ in rows] == ["d1", "f", "d2", "a.h", "a.h", "a.dense", "b.h",
                                            "b.h", "b.dense", "y"], r.stdout
    for call, owner in (("d2", "d1"), ("b.h", "a.h"), ("b.dense", "a.dense")):
        assert re.search(rf"^{re.escape(call)} +dense .* 0 \(shares {re.escape(owner)}\) ",
                         r.stdout, re.M), r.stdout
    assert f"Total params: {3 * (8 * 8 + 8):,}" in r.stdout   # d1, a.h, a.dense
    out = tmp_path / "s.dot"
    assert run("graph", src, "-o", out).exit_code == 0
    dot = out.read_text()
    assert 'subgraph "cluster_b.h"' in dot and 'subgraph "cluster_d1"' not in dot, dot
    assert re.search(r'label="dense\\nd2\\n\(shares d1\)', dot), dot
    assert re.search(r'label="dense\\nh\\n\(shares a.h\)', dot), dot
    import nnlang   # NOTE: the weights' paths (checkpoints, share =, init_from) are as before
    assert sorted(nnlang.load(src).graph.params) == sorted(
        f"{p}.{k}" for p in ("d1", "a.h", "a.dense") for k in ("weight", "bias"))


SHARED_SCAN = """
block Cell(x, h, w) {
  h2 = tanh(dense(x, 4) + h @ w)
  return h2, h2
}
model S {
  symbol seq
  input x: float32[batch, seq, 3]
  input h0: float32[batch, 4]
  param w: float32[4, 4]
  ys, h = scan Cell(h0, w = w) over x
  zs, g = scan Cell(h, w = w, share = ys) over x
  vs, k = scan Cell(h, w = w) over x
  output y = zs + ys + vs
}
"""


def test_check_and_graph_show_a_shared_scan(tmp_path):
    """`scan Cell(..., share = ys)` reuses ys's block weights but its row in `nnlang check` (and
    its node in `nnlang graph`) said nothing of it, where a shared layer or block call reads
    "0 (shares d1)". The model's own `w` passed to every scan is not a share (vs)."""
    src = tmp_path / "s.nn"
    src.write_text(SHARED_SCAN)
    r = run("check", src, "--batch", 2)
    assert r.exit_code == 0, r.stderr
    assert re.search(r"^zs, g +scan .* 0 \(shares ys, h\) ", r.stdout, re.M), r.stdout
    assert re.search(r"^vs, k +scan .* 16 ", r.stdout, re.M), r.stdout
    assert r.stdout.count("(shares") == 1, r.stdout
    assert f"Total params: {2 * (3 * 4 + 4) + 16:,}" in r.stdout
    out = tmp_path / "s.dot"
    assert run("graph", src, "-o", out).exit_code == 0
    dot = out.read_text()
    assert dot.count("(shares ys, h)") == 1, dot


def test_compile_says_at_which_length_a_symbol_is_shown_and_takes_another(tmp_path):
    """`nnlang compile --emit ir` of a model with `symbol seq` showed [2, 16, 3] for
    [batch, seq, 3] without a word (16 is the default length, not the model's), and there was
    no way to see another length. The views say the size and take --length seq=N."""
    src = tmp_path / "sym.nn"
    src.write_text("""model S {
  symbol seq
  input x: float32[batch, seq, 3]
  output y = dense(x, 4)
}
""")
    r = run("compile", src, "--batch", 2, "--backend", "reference", "--emit", "ir")
    assert r.exit_code == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("# at batch 2, seq = 16 (a symbol without a size") and \
        "--length seq=N" in first, r.stdout
    assert "float32[2, 16, 3]" in r.stdout
    r = run("compile", src, "--batch", 2, "--backend", "reference", "--emit", "ir",
            "--length", "seq=40")
    assert r.exit_code == 0, r.stderr
    assert "seq = 40" in r.stdout and "float32[2, 40, 3]" in r.stdout and \
        "[2, 16, 3]" not in r.stdout, r.stdout
    r = run("compile", src, "--batch", 2, "--backend", "reference", "--length", "len=4")
    assert r.exit_code == 1 and "no symbolic length 'len'" in r.stderr, r.stderr
    assert "its symbolic lengths: seq" in r.stderr
    plain = run("compile", "models/mlp.nn", "--backend", "reference", "--emit", "ir")
    assert plain.exit_code == 0 and not plain.stdout.startswith("#"), plain.stdout[:200]


def test_compile_length_given_twice_or_for_a_model_without_symbols_is_refused(tmp_path):
    """`--length seq=40 --length seq=50` compiled at 50 without a word, where `--set` of one
    name twice is refused (which one was meant is not ours to guess); `--length seq=4` on a
    model with no `symbol` said "its symbolic lengths: none" as if listing some."""
    src = tmp_path / "sym.nn"
    src.write_text("model S {\n  symbol seq\n  input x: float32[batch, seq, 3]\n"
                   "  output y = dense(x, 4)\n}\n")
    r = run("compile", src, "--batch", 2, "--backend", "reference", "--emit", "ir",
            "--length", "seq=40", "--length", "seq=50")
    assert r.exit_code == 1 and "--length seq is given twice" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "--length seq=50" in r.stderr
    r = run("compile", "models/mlp.nn", "--backend", "reference", "--length", "seq=4")
    assert r.exit_code == 1 and "has no symbolic lengths" in r.stderr, r.stderr
    assert "symbol seq" in r.stderr and ": none" not in r.stderr, r.stderr


def test_check_draws_a_long_table_cut_in_the_middle(tmp_path):
    """A file of 66,000 statements spent 27 of its 39 s drawing every row: the table keeps its
    first and last rows, says how many it left out and how to see them; --rows 0 draws all."""
    n = 500
    src = tmp_path / "long.nn"
    src.write_text("model Long {\n  input x: float32[batch, 4]\n  h0 = relu(x)\n"
                   + "".join(f"  h{i} = relu(h{i - 1})\n" for i in range(1, n))
                   + f"  output y = h{n - 1}\n}}\n")
    r = run("check", src)
    assert r.exit_code == 0, r.stderr
    layers = re.findall(r"^\s*(h\d+)\s+relu", r.stdout, re.M)
    assert layers == [f"h{i}" for i in (*range(100), *range(n - 100, n))], layers[95:105]
    assert f"{n - 200} rows left out (--rows 0 draws every row)" in r.stdout, r.stdout
    assert "Total params: 0" in r.stdout and "ok: " in r.stdout
    every = run("check", src, "--rows", 0).stdout
    assert re.findall(r"^\s*(h\d+)\s+relu", every, re.M) == [f"h{i}" for i in range(n)]
    assert "left out" not in every
    few = run("check", src, "--rows", 4).stdout
    assert re.findall(r"^\s*(h\d+)\s+relu", few, re.M) == ["h0", "h1", f"h{n - 2}", f"h{n - 1}"]


def test_check_writes_tera_flops_with_their_prefix():
    """FLOPs past 10**12 printed as '11814.79G': the prefixes stopped at G."""
    r = run("check", "models/transformer.nn", "--batch", 100000)
    flops = int(re.search(r"Forward FLOPs: ([\d,]+)", r.stdout).group(1).replace(",", ""))
    assert flops > 10**13
    assert f"Forward FLOPs: {flops:,} ({flops / 1e12:.2f}T)" in r.stdout, r.stdout[-400:]


def test_graph_dot(tmp_path):
    out = tmp_path / "mlp.dot"
    r = run("graph", "models/transformer.nn", "-o", out)
    assert r.exit_code == 0, r.stderr
    text = out.read_text()
    assert text.startswith("digraph") and 'label="[batch, 128, 128]"' in text
    assert 'subgraph "cluster_h.0"' in text and "multi_head_attention" in text
    r = run("graph", "models/transformer.nn", "-o", out, "--depth", "1")
    assert r.exit_code == 0 and "box3d" in out.read_text()
    assert "multi_head_attention" not in out.read_text()


def test_graph_edges_say_a_dtype_other_than_float32_as_check_does(tmp_path):
    """A token input's edge read `[batch, 20]` where `nnlang check` shows int32[batch, 20]:
    an edge of another dtype than float32 now says it, as check's shapes do."""
    src = tmp_path / "t.nn"
    src.write_text("""model T {
  input tokens: int32[batch, 20]
  e = embedding(tokens, 50, 8)
  m = tokens > 0
  output y = e * unsqueeze(cast(m, dtype = "float32"), axis = -1)
}
""")
    out = tmp_path / "t.dot"
    assert run("graph", src, "-o", out).exit_code == 0
    labels = re.findall(r'-> n\d+ \[label="([^"]*)"\]', out.read_text())
    assert labels.count("int32[batch, 20]") == 2 and "bool[batch, 20]" in labels, labels
    assert "[batch, 20, 8]" in labels and "float32[batch, 20, 8]" not in labels, labels
    check = run("check", src).stdout
    assert re.search(r"^m +gt +bool\[batch, 20\]", check, re.M), check


def test_graph_output_suffix_in_capitals_is_its_format(tmp_path):
    # `-o MLP.DOT` was refused as an unknown format '.DOT'
    out = tmp_path / "MLP.DOT"
    r = run("graph", "models/mlp.nn", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert out.read_text().startswith("digraph")


def test_graph_fused_draws_the_backward_pass_only_when_asked(tmp_path):
    """`--fused` drew the backward pass and optimizer update too, so `--backward` changed
    nothing; `--depth` with it was silently ignored; `--backward` on a model with no loss said
    it 'cannot be trained'."""
    bwd_fill, optim_fill = 'fillcolor="#f8e0e0"', 'fillcolor="#f8f0d0"'
    fwd, both = tmp_path / "fwd.dot", tmp_path / "both.dot"
    assert run("graph", "models/mlp.nn", "-o", fwd, "--fused").exit_code == 0
    assert run("graph", "models/mlp.nn", "-o", both, "--fused", "--backward").exit_code == 0
    fwd, both = fwd.read_text(), both.read_text()
    assert 'subgraph "cluster_kernel' in fwd and "dense" not in fwd  # dense: a matmul and add
    assert bwd_fill not in fwd and optim_fill not in fwd
    assert bwd_fill in both and optim_fill in both
    # the forward kernels are the same clusters in both drawings
    kernels = [set(re.findall(r'"cluster_kernel \d+"', t)) for t in (fwd, both)]
    assert kernels[0] < kernels[1]
    r = run("graph", "models/mlp.nn", "-o", tmp_path / "d.dot", "--fused", "--depth", "1")
    assert r.exit_code == 1 and "--depth" in r.stderr and "--fused" in r.stderr
    assert not (tmp_path / "d.dot").exists()
    src = tmp_path / "noloss.nn"
    src.write_text("model NoLoss {\n  input x: float32[batch, 4]\n  output y = dense(x, 3)\n}\n")
    r = run("graph", src, "-o", tmp_path / "n.dot", "--backward")
    assert r.exit_code == 1 and "no backward pass" in r.stderr and "noloss.nn:3:" in r.stderr


def test_graph_clusters_of_different_blocks_have_different_ids(tmp_path):
    """Cluster ids joined the path with '_', so block call `a_t` and block `t` inside call `a`
    were both "cluster_a_t": Graphviz reads one id as one subgraph and draws a.t's layers
    inside a_t's box."""
    src = tmp_path / "collide.nn"
    src.write_text("""block Tower(x) {
  h = dense(x, 4) |> relu
  return dense(h, 4)
}

block Outer(x) {
  t = Tower(x)
  return t + x
}

model Collide {
  input x: float32[batch, 4]
  a_t = Tower(x)
  a = Outer(a_t)
  output y = a
}
""")
    out = tmp_path / "c.dot"
    assert run("graph", src, "-o", out).exit_code == 0
    ids = re.findall(r'subgraph ("[^"]*")', out.read_text())
    labels = re.findall(r'subgraph "[^"]*" \{\n\s*label=("[^"]*")', out.read_text())
    assert len(labels) == len(ids) == 5  # a_t, a_t.h, a, a.t, a.t.h
    assert len(set(ids)) == len(ids), ids


def test_graph_draws_a_layer_with_its_activation_and_no_one_op_boxes(tmp_path):
    """`h1 = dense(image, 512) |> relu` drew a box 'h1' around the relu alone, with the dense
    outside it, and a box around each lone op (`acc`); a box now holds a layer's or block's
    ops together, and a path with one op draws none."""
    out = tmp_path / "mlp.dot"
    assert run("graph", "models/mlp.nn", "-o", out).exit_code == 0
    text = out.read_text()
    boxes = dict(re.findall(
        r'subgraph "([^"]*)" \{\n\s*label="[^"]*";[^\n]*\n((?:\s+n\d+ [^\n]*\n)*)', text))
    assert set(boxes) == {"cluster_h1", "cluster_h2"}, text
    for name in ("h1", "h2"):
        ops = re.findall(r'label="(\w+)', boxes[f"cluster_{name}"])
        assert sorted(ops) == ["dense", "relu"], (name, ops)


def test_graph_depth_box_counts_ops_not_weights(tmp_path):
    """A collapsed block's box said 'h.0 8 ops', and '24 ops' with --params: its 16 weights
    counted as ops."""
    out = tmp_path / "t.dot"
    labels = []
    for extra in ([], ["--params"]):
        assert run("graph", "models/transformer.nn", "-o", out, "--depth", "2", *extra
                   ).exit_code == 0
        labels.append(re.findall(r'label="(h\.0\\n[^"]*)"', out.read_text()))
    assert labels[0] == ["h.0\\n8 ops"], labels
    assert labels[1] == ["h.0\\n8 ops, 16 weights"], labels


@pytest.mark.parametrize("flags", [[], ["--depth", "1"], ["--params"], ["--backward"],
                                   ["--fused"]])
def test_library_dot_is_the_text_nnlang_graph_writes(tmp_path, flags):
    """README: `nnlang.dot(net, ...)` is the DOT text `nnlang graph` draws. Without --backward
    or --fused the library drew the decomposed train graph (matmul, add), the command the
    model as written (dense)."""
    import nnlang
    out = tmp_path / "g.dot"
    assert run("graph", "models/transformer.nn", "-o", out, *flags).exit_code == 0
    net = nnlang.compile("models/transformer.nn", backend="reference", init_from=False)
    kw = {"--depth": {"depth": 1}, "--params": {"show_params": True},
          "--backward": {"backward": True}, "--fused": {"fused": True}}.get(
        flags[0] if flags else None, {})
    text = nnlang.dot(net, title="Transformer (models/transformer.nn)", **kw)
    assert text == out.read_text()


def test_graph_svg_needs_graphviz(tmp_path):
    r = run("graph", "models/mlp.nn", "-o", tmp_path / "mlp.svg")
    assert (tmp_path / "mlp.dot").exists()
    if shutil.which("dot"):
        assert r.exit_code == 0 and (tmp_path / "mlp.svg").read_text().lstrip().startswith("<")
    else:
        assert r.exit_code == 1 and "apt-get install graphviz" in r.stderr


def test_graph_bad_input(tmp_path):
    assert run("graph", "tests/errors/unknown_op.nn", "-o", tmp_path / "x.dot").exit_code == 1
    assert run("graph", "models/mlp.nn", "-o", tmp_path / "x.txt").exit_code == 2


def test_fmt(tmp_path):
    messy = tmp_path / "m.nn"
    messy.write_text("model M{input x:float32[batch,4]   # in\n output y=dense(x,2)}\n")
    r = run("fmt", messy)
    assert r.exit_code == 0
    assert r.stdout == ("model M {\n  input x: float32[batch, 4]  # in\n"
                        "  output y = dense(x, 2)\n}\n")
    assert run("fmt", "--check", messy).exit_code == 1
    assert run("fmt", "--write", messy).exit_code == 0
    assert run("fmt", "--check", messy).exit_code == 0
    assert run("fmt", "--check", *sorted((ROOT / "models").glob("*.nn"))).exit_code == 0
    r = run("fmt", "tests/errors/syntax_error.nn")
    assert r.exit_code == 1 and "error: unexpected 'float32'" in r.stderr


def test_fmt_reads_standard_input_with_a_dash():
    # as black and ruff: `-` reads the source from stdin and writes the canonical text to stdout
    # (it was taken as a file named '-': "file not found")
    messy = "model M{input x:float32[batch,4]\n output y=x}\n"
    canonical = "model M {\n  input x: float32[batch, 4]\n  output y = x\n}\n"
    r = runner.invoke(app, ["fmt", "-"], input=messy)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == canonical
    r = runner.invoke(app, ["fmt", "--write", "-"], input=messy)
    assert r.exit_code == 0 and r.stdout == canonical
    r = runner.invoke(app, ["fmt", "--check", "-"], input=messy)
    assert r.exit_code == 1 and "would reformat <stdin>" in r.stderr and r.stdout == ""
    assert runner.invoke(app, ["fmt", "--check", "-"], input=canonical).exit_code == 0
    r = runner.invoke(app, ["fmt", "-"], input="model M { input x float32 }\n")
    assert r.exit_code == 1 and "<stdin>:1:" in r.stderr and "Traceback" not in r.output


def test_fmt_takes_standard_input_once():
    # standard input can be read once: a second `-` printed nothing and passed --check
    canonical = "model M {\n  input x: float32[batch, 4]\n  output y = x\n}\n"
    for args in (["fmt", "-", "-"], ["fmt", "--check", "-", "-"]):
        r = runner.invoke(app, args, input=canonical)
        assert r.exit_code == 2 and "standard input" in r.output and r.stdout == ""


def test_fmt_check_exit_codes_tell_unformatted_from_unreadable(tmp_path):
    # --check: 0 formatted, 1 would reformat, 2 cannot be read or parsed (as black's 123 and
    # ruff's 2): a hook must not take a syntax error or a missing file for "needs formatting"
    good = tmp_path / "good.nn"
    good.write_text("model M {\n  input x: float32[batch, 4]\n  output y = x\n}\n")
    messy = tmp_path / "messy.nn"
    messy.write_text("model M{input x:float32[batch,4]\n output y=x}\n")
    assert run("fmt", "--check", good).exit_code == 0
    assert run("fmt", "--check", messy).exit_code == 1
    r = run("fmt", "--check", good, "tests/errors/syntax_error.nn")
    assert r.exit_code == 2 and "error: unexpected 'float32'" in r.stderr
    r = run("fmt", "--check", messy, tmp_path / "missing.nn")
    assert r.exit_code == 2 and "would reformat" in r.stderr and "file not found" in r.stderr
    assert "--check" in run("fmt", "--help").stdout and "2" in run("fmt", "--help").stdout


def test_fmt_write_keeps_the_file_as_the_user_set_it(tmp_path):
    # --write changes the text only: the mode stays (a private 0600 file was made 0644), a
    # symlink stays a link to the file it rewrites, and a read-only file is refused untouched
    messy = "model M{input x:float32[batch,4]\n output y=x}\n"
    private = tmp_path / "private.nn"
    private.write_text(messy)
    private.chmod(0o600)
    assert run("fmt", "--write", private).exit_code == 0
    assert private.stat().st_mode & 0o777 == 0o600 and private.read_text() != messy

    target = tmp_path / "real.nn"
    target.write_text(messy)
    link = tmp_path / "link.nn"
    link.symlink_to(target)
    assert run("fmt", "--write", link).exit_code == 0
    assert link.is_symlink() and target.read_text() != messy

    frozen = tmp_path / "frozen.nn"
    frozen.write_text(messy)
    frozen.chmod(0o444)
    r = run("fmt", "--write", frozen)
    assert r.exit_code == 1 and f"--write {frozen}: cannot write" in r.stderr
    assert "read-only" in r.stderr
    assert frozen.read_text() == messy and frozen.stat().st_mode & 0o777 == 0o444


def test_fmt_check_sees_a_byte_order_mark(tmp_path):
    # the canonical text (what `fmt` prints) has no BOM: --check said a file that differed only
    # by one was formatted, and --write dropped it only when something else changed too
    path = tmp_path / "bom.nn"
    canonical = "model M {\n  input x: float32[batch, 4]\n  output y = x\n}\n"
    path.write_bytes(b"\xef\xbb\xbf" + canonical.encode())
    assert run("fmt", path).stdout == canonical
    r = run("fmt", "--check", path)
    assert r.exit_code == 1 and f"would reformat {path}" in r.stderr
    assert run("fmt", "--write", path).exit_code == 0
    assert path.read_bytes() == canonical.encode()
    assert run("fmt", "--check", path).exit_code == 0
    # and from standard input: `fmt -` prints the text without the BOM, so `--check -` of the
    # same bytes would reformat too (it said 0, while `--check FILE` said 1)
    with_bom = b"\xef\xbb\xbf" + canonical.encode()
    assert runner.invoke(app, ["fmt", "-"], input=with_bom).stdout == canonical
    r = runner.invoke(app, ["fmt", "--check", "-"], input=with_bom)
    assert r.exit_code == 1 and "would reformat <stdin>" in r.stderr


def test_ops():
    r = run("ops")
    assert r.exit_code == 0
    for text in ("elementwise", "dense", "lstm", "cross_entropy", "x: tensor, units: int"):
        assert text in r.stdout
    r = run("ops", "dense")
    assert r.exit_code == 0 and "units: int" in r.stdout and "glorot_uniform" in r.stdout
    r = run("ops", "dens")
    assert r.exit_code == 1 and "did you mean 'dense'?" in r.stderr


@pytest.mark.parametrize("op,call", [("dense", "dense(x, 3"), ("conv1d", "conv1d(x, 2, 3"),
                                     ("lstm", "lstm(x, 3"), ("layer_norm", "layer_norm(x")])
def test_ops_of_a_layer_names_share_and_trainable(tmp_path, op, call):
    """`nnlang ops dense` listed dense's own arguments only: nothing said that every layer
    with weights also takes `share =` and `trainable = false` (docs/language.md), so a
    student reading it could not find them. It says so now, and each call works."""
    r = run("ops", op)
    assert r.exit_code == 0
    assert "share = <layer>" in r.stdout and "trainable = false" in r.stdout, r.stdout
    src = tmp_path / "m.nn"
    src.write_text(f"model M {{\n  input x: float32[batch, 4, 5]\n  a = {call})\n"
                   f"  b = {call}, share = a)\n  c = {call}, trainable = false)\n"
                   "  output a\n  output b\n  output c\n}\n")
    r = run("check", src)
    assert r.exit_code == 0, r.stderr
    assert run("ops", "relu").stdout.count("share =") == 0


@pytest.mark.parametrize("keras,ours", [
    ("GlobalAveragePooling1D", "global_avg_pool"), ("MaxPooling1D", "max_pool1d"),
    ("AveragePooling1D", "avg_pool1d"), ("SimpleRNN", "rnn")])
def test_ops_keras_layer_names_suggest_ours(keras, ours):
    """`nnlang ops MaxPooling1D` (Keras' 1-D max pooling) found nothing to suggest, though
    MaxPooling2D and GlobalAveragePooling2D did: only the 2-D names were in the table."""
    r = run("ops", keras)
    assert r.exit_code == 1 and f"did you mean '{ours}'?" in r.stderr, r.stderr


def test_help():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("check", "graph", "fmt", "ops"):
        assert cmd in r.stdout


@pytest.mark.parametrize("columns", ["40", "60"])
def test_help_on_a_narrow_terminal_shows_every_flag_in_full(columns, monkeypatch):
    """At COLUMNS=40 (a split pane, a CI runner's log width) rich's option panels cut
    flag names to fit ("--data-d…", "--init-skip-mis…": flags no one can type) and help
    text mid-word; below 80 columns the help is click's plain layout, which wraps words."""
    import typer.main
    monkeypatch.setenv("COLUMNS", columns)   # NOTE: as the shell sets it before nnlang starts
    for name, cmd in typer.main.get_command(app).commands.items():
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0, r.output
        assert "…" not in r.stdout, (name, r.stdout)
        for param in cmd.params:
            for opt in param.opts if param.param_type_name == "option" else ():
                assert opt in r.stdout, (name, opt)


def test_help_at_the_narrowest_rich_width_shows_every_flag_in_full(monkeypatch):
    """RICH_HELP_COLUMNS is the narrowest width at which every command's option panels fit:
    generate's Hugging Face flags, in its main panel, were cut to "--no-repeat-ngram-si…" and
    "--num-return-sequenc…" at 80 columns."""
    import typer.main

    from nnlang_cli.app import RICH_HELP_COLUMNS
    monkeypatch.setenv("COLUMNS", str(RICH_HELP_COLUMNS))
    for name, cmd in typer.main.get_command(app).commands.items():
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0, r.output
        assert "╭" in r.stdout and "…" not in r.stdout, (name, r.stdout)
        for param in cmd.params:
            for opt in param.opts if param.param_type_name == "option" else ():
                assert opt in r.stdout, (name, opt)


def test_help_command_list_has_no_mid_sentence_breaks(monkeypatch):
    """Each command's row in `nnlang --help` is its docstring's first paragraph, rewrapped to
    the panel: a line break in the docstring's source (`fused\n or kernels.`) is no break on
    screen. Checked against the docstrings themselves, and each wrapped line is full (the
    next word would not have fitted on it)."""
    import inspect as _inspect

    import typer.main
    # NOTE: not invoke's env=: typer's runner builds the command (and picks the layout by the
    # width, `_Typer.rich_markup_mode`) before that env applies, so the test took the shell's
    # COLUMNS: below 80 (a narrow pane) the plain layout had no panel rows and it failed
    monkeypatch.setenv("COLUMNS", "100")
    r = runner.invoke(app, ["--help"], terminal_width=100)
    assert r.exit_code == 0
    rows: dict[str, list[str]] = {}   # command -> the text of each of its lines
    name, width = None, 0
    for line in r.stdout.splitlines():
        m = re.match(r"│ (\S+)?(\s+)(.*?)\s*│$", line)
        if not m:
            continue
        if m.group(1):
            name = m.group(1)
            rows[name] = []
            width = len(line) - m.start(3) - 2   # NOTE: the text column, up to " │"
        if name:
            rows[name].append(m.group(3))
    commands = typer.main.get_command(app).commands
    assert set(commands) <= set(rows)
    for cmd_name, cmd in commands.items():
        first = _inspect.cleandoc(cmd.help).split("\n\n")[0]
        assert " ".join(rows[cmd_name]) == " ".join(first.split()), cmd_name
        for line, after in zip(rows[cmd_name], rows[cmd_name][1:]):
            assert len(line) + 1 + len(after.split()[0]) > width, (cmd_name, line)


def test_subprocess_check():
    """The real entry point: the installed `nnlang` script, else `python -m nnlang_cli.main`
    (with cli/ mapped to nnlang_cli when the package is not installed)."""
    exe = shutil.which("nnlang", path=str(Path(sys.executable).parent))
    if exe:
        cmd = [exe, "check", "models/mlp.nn"]
    else:
        shim = ("import sys; sys.path.insert(0, '.'); from tests.regen import ensure_cli; "
                "ensure_cli().main.app(prog_name='nnlang')")
        cmd = [sys.executable, "-c", shim, "check", "models/mlp.nn"]
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Total params: 535,818" in proc.stdout


# NOTE: the installed script's entry point (pyproject's [project.scripts]: `nnlang_cli:run`)
_SCRIPT = ("import sys; sys.path.insert(0, '.'); sys.argv[0] = 'nnlang'; "
           "from tests.regen import ensure_cli; ensure_cli().run()")


def _script(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SCRIPT, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200", **env})


def test_the_script_exits_with_the_commands_code_and_all_its_output(tmp_path):
    """The script ends without the interpreter's teardown (`nnlang_cli._leave`): every line
    the command wrote still arrives through the pipe, and the exit code is the command's: 0,
    a user error's 1, a usage error's 2."""
    import nnlang
    small = ["--set", "hidden1=16", "--set", "hidden2=8"]
    done = _script("compile", "models/mlp.nn", "--emit", "kernels", *small)
    assert done.returncode == 0, done.stderr
    net = nnlang.compile("models/mlp.nn", overrides={"hidden1": 16, "hidden2": 8},
                         init_from=False)
    assert done.stdout == nnlang.emit(net, "kernels")
    missing = _script("check", tmp_path / "none.nn")
    assert missing.returncode == 1 and "file not found" in missing.stderr
    assert _script("compile", "models/mlp.nn", "--emit").returncode == 2


def test_the_scripts_exit_handlers_still_run(tmp_path):
    """Skipping the teardown skips no exit handler: with a cache that cannot be written, the
    kernels go to a private temp folder that one removes, and it is gone once the command has
    ended."""
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would go")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = _script("compile", "models/mlp.nn", "--set", "hidden1=16", "--set", "hidden2=8",
                   NNLANG_CACHE_DIR=str(blocked), TMPDIR=str(tmp))
    assert done.returncode == 0, done.stderr
    assert "cache" in done.stderr                    # the one warning: no cache this run
    assert [p.name for p in tmp.iterdir() if p.name.startswith("nnlang-")] == []


@pytest.mark.parametrize("args,compiles", [
    (["train", "models/lstm.nn"], True), (["compile", "m.nn", "--emit", "kernels"], True),
    (["eval", "run1", "--backend", "numba"], True), (["predict", "--backend=numba", "r"], True),
    (["compile", "m.nn", "--backend", "cupy"], False), (["train", "--backend=reference"], False),
    (["train", "m.nn", "--help"], False), (["check", "m.nn"], False), (["export", "r"], False),
    ([], False), (["--help"], False)])
def test_the_script_starts_a_compile_worker_early_only_for_a_compile(args, compiles):
    """`nnlang_cli.run` starts the compile worker before loading the commands (on a cold cache,
    `worker_start.start_early`) for a command that compiles with numba, not for the others."""
    assert ensure_cli().compiles(args) is compiles


# *** compile (the generated backward pass and kernels) ***

@pytest.mark.parametrize("emit,expect", [("ir", "matmul("), ("backward", "[bwd]"),
                                         ("fused", "kernel 0: loop"),
                                         ("kernels", "@numba.njit"), ("summary", "kernels:")])
def test_compile_emits(emit, expect):
    result = CliRunner().invoke(app, ["compile", "models/mlp.nn", "--emit", emit,
                                      "--set", "hidden1=16", "--set", "hidden2=8"])
    assert result.exit_code == 0, result.output
    assert expect in result.output


def test_compile_backward_names_each_trainable_weights_gradient(tmp_path):
    """--emit backward (and ir) printed the gradient and update nodes but not which weight
    each belongs to: the graph's grads and updates were left out of the text, so a user could
    not see that every trainable weight gets a gradient and a frozen one none."""
    src = tmp_path / "m.nn"
    src.write_text("""block Tower(x) {
  h = dense(x, 8) |> relu
  return dense(h, 8)
}

model M {
  input left: float32[batch, 16]
  input right: float32[batch, 16]
  input label: int32[batch]
  a = Tower(left)
  b = Tower(right, share = a)
  frz = Tower(b, trainable = false)
  logits = dense(a + frz, 3)
  output logits
  loss cross_entropy(logits, label)
  loss 0.1 * mean(logits * logits)
}
""")
    trainable = {f"{p}.{k}" for p in ("a.h", "a.dense", "logits") for k in ("weight", "bias")}
    r = run("compile", src, "--emit", "backward", "--batch", 4)
    assert r.exit_code == 0, r.stderr
    defined = set(re.findall(r"^%(\d+)", r.stdout, re.M))
    grads = dict(re.findall(r"^grad ([\w.]+) = %(\d+)$", r.stdout, re.M))
    assert set(grads) == trainable, r.stdout[-2000:]
    assert set(grads.values()) <= defined
    updates = set(re.findall(r"^update ([\w.]+) = %\d+$", r.stdout, re.M))
    assert trainable <= updates and not any(u.startswith("frz") for u in updates)


@pytest.mark.parametrize("model", sorted(p.name for p in (ROOT / "models").glob("*.nn")))
def test_compile_backward_lists_a_gradient_for_every_trainable_weight_of_each_model(model):
    """models/gru.nn's --emit backward had no `grad h.bias` line: constant folding replaced
    the bias gradient's node but left the graph's grads table pointing at the old one, which
    the text then skipped. The weights to expect are read from `nnlang.load`'s user graph."""
    import nnlang
    g = nnlang.load(ROOT / "models" / model).graph
    trainable = {k for k, v in g.params.items() if g.node(v).attrs.get("trainable", True)}
    r = run("compile", f"models/{model}", "--emit", "backward", "--backend", "reference",
            "--batch", 2)
    assert r.exit_code == 0, r.stderr
    grads = dict(re.findall(r"^grad ([\w.]+) = %(\d+)$", r.stdout, re.M))
    assert set(grads) == trainable
    assert set(grads.values()) <= set(re.findall(r"^%(\d+)", r.stdout, re.M))


@pytest.mark.parametrize("name", ["cuda", "CUDA", "gpu"])
def test_compile_backend_cuda_names_the_gpu_backend(name):
    """`--backend cuda` (PyTorch's device name) said only "unknown backend 'cuda'" and listed
    the backends, without saying which of them is the CUDA one."""
    r = run("compile", "models/mlp.nn", "--backend", name)
    assert r.exit_code == 1
    assert f"unknown backend '{name}'" in r.stderr and "--backend cupy" in r.stderr, r.stderr


def test_compile_ir_and_backward_show_the_scan_bodies(tmp_path):
    """An LSTM's --emit backward showed its backward cell as one line, `scan(...,
    body=body(54 nodes, ...))`, and none of those nodes; and the summary's `nodes` (which
    counts the bodies' planned graphs) matched no text. --emit ir now prints each scan's body
    after the graph, as --emit fused prints its kernels, and backward the backward scans'."""
    src = tmp_path / "l.nn"
    src.write_text("""model L {
  input x: float32[batch, 6, 2]
  input y: float32[batch]
  h = lstm(x, 3)
  loss mse(dense(h, 1) |> squeeze(axis = -1), y)
}
""")
    ir = run("compile", src, "--emit", "ir", "--batch", 2).stdout
    summary = run("compile", src, "--batch", 2).stdout
    nodes = int(re.search(r"^nodes: (\d+)$", summary, re.M).group(1))
    assert len(re.findall(r"^%\d+", ir, re.M)) == nodes, ir
    scans = re.findall(r"^%(\d+): [^=]+ = (\[bwd\] )?scan\(", ir, re.M)
    assert len(scans) == 2 and ir.count("one step of its body:") == 2
    bw = run("compile", src, "--emit", "backward", "--batch", 2).stdout
    back = next(nid for nid, role in scans if role)
    body = bw.split(f"# scan %{back}, one step of its body:\n")[1]
    assert re.search(r"^%\d+.* = \[bwd\] (mul|add|sub)\(", body, re.M), bw
    assert bw.count("one step of its body:") == 1


def test_compile_fused_lists_the_kernels_that_run_in_run_order(tmp_path):
    """--emit fused numbered the groups in fusion order, not the order the step runs them
    (`--emit kernels`' order), and left out a scan body's kernels, which the summary counts."""
    src = tmp_path / "scan.nn"
    src.write_text(user_scan("input label: int32[batch]\n  logits = dense(h, 3)\n  output logits\n"
                             "  loss cross_entropy(logits, label)"))
    for model, mode in ((src, "train"), ("models/mlp.nn", "eval")):
        fused = run("compile", model, "--emit", "fused", "--mode", mode, "--batch", 2).stdout
        summary = run("compile", model, "--emit", "summary", "--mode", mode, "--batch", 2).stdout
        count = int(re.search(r"kernels: (\d+)", summary).group(1))
        assert len(re.findall(r"^kernel \d+:", fused, re.M)) == count, fused
        # each kernel's first op, in order, is the first op each --emit kernels header names
        kernels = run("compile", model, "--emit", "kernels", "--mode", mode, "--batch", 2).stdout
        ran = re.findall(r"^# computes(?:, for each of \d+ tensors in one launch)?:\n#\s+(\w+)",
                         kernels, re.M)
        listed = re.findall(r"^kernel \d+: [^\n]*\n  %\d+ = (\w+)", fused, re.M)
        if mode == "eval":  # NOTE: no multi-tensor launch, so one header per kernel
            assert ran == listed, (ran, listed)
    assert "one step of its body" in run("compile", src, "--emit", "fused", "--batch", 2).stdout


def test_compile_fused_names_the_line_of_a_state_read_twice_in_a_scan_body(tmp_path):
    """A state read twice by the step (`... h @ u) + h`) sums two gradients in the backward
    body; that add belonged to the body's input `carry`, which had no span, and --emit fused
    showed it as `%26 = add  # . @?`. It is at the scan's line now."""
    src = tmp_path / "fan.nn"
    src.write_text("""block Cell(x, h, w, u) {
  h2 = tanh(x @ w + h @ u) + h
  return h2, h2
}
model Fan {
  input x: float32[batch, 5, 3]
  input h0: float32[batch, 4]
  param w: float32[3, 4]
  param u: float32[4, 4]
  hs, h = scan Cell(h0, w = w, u = u) over x
  loss mean(hs * hs)
}
""")
    fused = run("compile", src, "--emit", "fused", "--batch", 2).stdout
    bodies = fused.split("one step of its body:\n")[1:]
    assert len(bodies) == 2, fused
    back = re.findall(r"^  %\d+ = (\w+)  # \S+ @(\S+)$", bodies[1], re.M)
    assert ("add", "10") in back and all(line != "?" for _, line in back), fused



def test_compile_fused_ir_and_backward_show_the_bodies_of_nested_scans(tmp_path):
    """Scans three deep: --emit fused and ir showed the outer loop's body only (21 of the
    summary's 34 kernels, 226 of its 350 nodes), not the word and character loops inside it,
    which --emit kernels shows; each nested body now follows its outer one, headed as there."""
    from tests.ops.test_user_scan import THREE_DEEP
    src = tmp_path / "deep.nn"
    src.write_text(THREE_DEEP)
    summary = run("compile", src, "--batch", 2).stdout
    fused = run("compile", src, "--emit", "fused", "--batch", 2).stdout
    count = int(re.search(r"kernels: (\d+)", summary).group(1))
    assert len(re.findall(r"^kernel \d+:", fused, re.M)) == count, fused
    ir = run("compile", src, "--emit", "ir", "--batch", 2).stdout
    nodes = int(re.search(r"^nodes: (\d+)$", summary, re.M).group(1))
    assert len(re.findall(r"^%\d+", ir, re.M)) == nodes, ir
    for text in (fused, ir, run("compile", src, "--emit", "backward", "--batch", 2).stdout):
        # a character loop's body, inside a word loop's, inside a sentence loop's
        assert re.search(r"^(# scan %\d+, one step of its body:\n){3}", text, re.M), text

def test_compile_kernels_name_their_source_lines():
    result = CliRunner().invoke(app, ["compile", "models/mlp.nn", "--emit", "kernels",
                                      "--set", "hidden1=16", "--set", "hidden2=8"])
    assert "# computes:" in result.output and "h1 @8" in result.output


def test_compile_without_fusion_has_more_kernels():
    def kernels(*flags):
        r = CliRunner().invoke(app, ["compile", "models/mlp.nn", "--set", "hidden1=16",
                                     "--set", "hidden2=8", *flags])
        return int(re.search(r"kernels: (\d+)", r.output).group(1))
    assert kernels("--no-fuse") > kernels()


def test_compile_switches_concat_in_place_off():
    def pieces(*flags):
        r = CliRunner().invoke(app, ["compile", "models/lstm.nn", "--batch", "2",
                                     "--set", "maxlen=4", "--set", "units=8", "--set", "embed=8",
                                     "--set", "vocab=50", *flags])
        assert r.exit_code == 0, r.output
        return int(re.search(r"concat_pieces_in_place: (\d+)", r.output).group(1))
    assert pieces() > 0 and pieces("--no-concat-in-place") == 0


def test_compile_bad_emit_is_an_error_not_a_traceback():
    result = CliRunner().invoke(app, ["compile", "models/mlp.nn", "--emit", "asm"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unknown --emit 'asm'" in result.output


def test_graph_backward_and_fused(tmp_path):
    for flag in ("--backward", "--fused"):
        out = tmp_path / f"g{flag}.dot"
        r = CliRunner().invoke(app, ["graph", "models/mlp.nn", flag, "-o", str(out)])
        assert r.exit_code == 0, r.output
        text = out.read_text()
        assert text.startswith("digraph")
        assert ("kernel 0" in text) if flag == "--fused" else ("#f8e0e0" in text)


def test_compile_emits_cuda_without_a_gpu():
    result = CliRunner().invoke(app, ["compile", "models/mlp.nn", "--backend", "cupy",
                                      "--emit", "kernels", "--set", "hidden1=16"])
    assert result.exit_code == 0, result.output
    assert '__global__ void' in result.output and "h1 @8" in result.output
    assert "_multi(" in result.output  # NOTE: the Adam update of every parameter, one launch


def test_compile_summary_for_cuda_without_a_gpu():
    """`nnlang compile --backend cupy` (its default --emit summary) said the backend needs CuPy,
    while --emit kernels of the same model rendered without it: the summary counts the same
    render-only executable, whose plan is the numba one's (the same passes and schedule)."""
    args = ["compile", "models/mlp.nn", "--set", "hidden1=16", "--batch", "4"]
    cuda = CliRunner().invoke(app, args + ["--backend", "cupy"])
    assert cuda.exit_code == 0, cuda.output
    numba = CliRunner().invoke(app, args + ["--backend", "numba"])
    rows = [r for r in numba.output.splitlines() if r.startswith(("kernels:", "calls:",
                                                                  "buffer_bytes:"))]
    assert len(rows) == 3 and all(r in cuda.output.splitlines() for r in rows), cuda.output
    assert "backend cupy" in cuda.output


def test_internal_errors_print_no_traceback(monkeypatch):
    """An internal error (a bug in nnlang) exits 70 (sysexits' EX_SOFTWARE): it was 2, the
    code typer gives a usage error (a bad flag), so a script could not tell the two apart."""
    import nnlang.runtime.emit as emit

    def broken(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(emit, "emit", broken)
    result = CliRunner().invoke(app, ["compile", "models/mlp.nn", "--emit", "ir"])
    assert result.exit_code == 70 and "Traceback" not in result.output
    usage = CliRunner().invoke(app, ["compile", "models/mlp.nn", "--no-such-flag"])
    assert usage.exit_code == 2
    assert "internal error: RuntimeError: boom" in result.output


def test_compile_shows_a_model_without_a_loss(tmp_path):
    """A forward-only model compiles for prediction unless --mode train is asked for."""
    from tests.faults.conftest import cli
    path = tmp_path / "f.nn"
    path.write_text("model F {\n  input x: float32[batch, 4]\n  output y = dense(x, 3)\n}\n")
    assert "mode predict" in cli("compile", path, "--backend", "reference", code=0)
    assert "declares no loss" in cli("compile", path, "--mode", "train", "--backend",
                                     "reference")
    assert "no backward pass" in cli("compile", path, "--emit", "backward", "--backend",
                                     "reference")
    # NOTE: check and compile size a model without a train section at the same batch
    assert "sizes at batch = 32 (default)" in cli("check", path, code=0)
    assert "batch 32" in cli("compile", path, "--backend", "reference", code=0)


def test_compile_without_fusion_lists_the_ops_as_kernels():
    r = run("compile", "models/mlp.nn", "--no-fuse", "--emit", "fused")
    assert r.exit_code == 0 and "fusion is off (--no-fuse)" in r.stdout
    assert "matmul" in r.stdout


@pytest.mark.parametrize("batch, code, words", [
    ("1000000000", 1, "cannot allocate"),
    ("9223372036854775807", 2, "less than or equal to 2147483647")])   # the flag's own bound
def test_compile_a_batch_too_large_for_memory(batch, code, words):
    from tests.faults.conftest import cli
    out = cli("compile", "models/mlp.nn", "--batch", batch, "--emit", "summary", code=code)
    assert words in " ".join(out.replace("│", " ").split()), out


def test_vae_trains_on_the_bundled_mnist_sample(tmp_path):
    """models/vae.nn (noise from random_normal_like in its sampling step) trains from the CLI
    on the bundled MNIST sample: the epoch loss falls, from below the 784 ln 2 of a decoder
    that says 0.5 for every pixel, and the test loss (z = mu there) is well under it."""
    import json
    import math
    out = tmp_path / "run"
    r = run("train", "models/vae.nn", "--data", "mnist-sample", "--epochs", "2",
            "--set", "hidden=32", "--out", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train_loss"] for row in rows if "train_loss" in row]
    assert len(losses) == 2 and losses[1] < 0.8 * losses[0] < 0.8 * 784 * math.log(2)
    test = json.loads((out / "summary.json").read_text())["test"]
    assert test["loss"] < 0.6 * 784 * math.log(2)
    assert test["loss"] == pytest.approx(test["reconstruction"] + test["kl"], rel=1e-6)
    assert test["kl"] > 0   # the encoder's posterior moved away from the N(0, 1) prior


@pytest.mark.parametrize("spec", ["r.npz(targets=[aux])", "sub/r.csv(target=price)",
                                  "./r.csv(target=price, val=v.csv)", "imdb(maxlen=none)"])
def test_set_data_takes_the_spellings_of_data(spec):
    # `--set data=r.npz(targets=[aux])` was "'r.npz(targets=[aux])' is not a literal" while
    # `--data r.npz(targets=[aux])` and `--set data=imdb(maxlen=none)` worked: a file name has
    # a dot (and maybe a slash) where a data set or schedule name has none
    from nnlang.train.feeds import replace_data
    from nnlang_cli.app import parse_value
    assert replace_data(None, parse_value(spec)) == replace_data(None, spec)


def _on_a_terminal(*args, columns: int) -> str:
    """`nnlang ARGS` on a terminal (a pty) `columns` wide, as a user's window: what it shows."""
    master, slave = os.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "nnlang_cli.main", *map(str, args)],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:   # NOTE: EIO once the child has closed its side
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.wait(timeout=600) == 0, shown.decode()
    return re.sub(r"\x1b\[[0-9;]*m", "", shown.decode()).replace("\r\n", "\n")


def test_check_on_a_narrow_terminal_loses_no_cell():
    """At 40 columns the table's cells were cut to "…" ("[batc…", "25…"): the shapes, counts
    and sizes were lost. There each row is a list of its values instead, every one whole."""
    import nnlang
    from nnlang.ir.summary import HEADERS, summarize, table_cells
    shown = _on_a_terminal("check", "models/mlp.nn", "--rows", 4, columns=40)
    assert "…" not in shown, shown
    rows = table_cells(summarize(nnlang.load(ROOT / "models" / "mlp.nn"), None))
    for cells in rows[:2] + rows[-2:]:
        block = f"{cells[0]} {cells[1]}\n" + "".join(
            f"  {h}: {c}\n" for h, c in zip(HEADERS[2:], cells[2:]) if c)
        assert block in shown, (block, shown)
    assert "⋮" in shown and f"{len(rows) - 4} rows left out" in shown
    # wide enough, it is the table
    wide = _on_a_terminal("check", "models/mlp.nn", columns=120)
    assert re.search(r"Layer\s+Op\s+Output shape\s+Params\s+FLOPs\s+Memory", wide), wide


def test_a_step_that_fits_only_with_swap_warns_like_an_error(monkeypatch):
    """A step past the memory available but within swap runs (slowly) with a warning; the
    command prints it rendered as its errors are (file:line:col, caret, hint), not in Python's
    warning form naming nnlang's own source line."""
    from nnlang.ir import summary
    mib = 1 << 20
    monkeypatch.setattr(summary, "machine_memory",
                        lambda: summary.HostMemory(64 * mib, 1024, "", 64 * mib))
    r = run("compile", "models/mlp.nn", "--emit", "ir", "--batch", "4")
    assert r.exit_code == 0, r.stderr
    assert "models/mlp.nn:8:8: warning: " in r.stderr and "of swap, slowly" in r.stderr
    assert "hint: " in r.stderr and "Warning" not in r.stderr and ".py:" not in r.stderr


def test_the_cli_sources_keep_the_configured_line_length():
    """STYLE.md's ~100 columns, as pyproject's [tool.ruff] line-length says: four
    `typer.Option(...)` lines of generate_cmds.py ran to 114-123 columns (pyflakes does not
    look at line length, so nothing caught them)."""
    import tomllib
    limit = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["line-length"]
    long = [f"{path.name}:{k}" for path in sorted((ROOT / "cli").glob("*.py"))
            for k, line in enumerate(path.read_text().splitlines(), 1) if len(line) > limit]
    assert long == []
