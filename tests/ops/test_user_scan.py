"""`hs, h, c = scan Cell(h0, c0, ...) over x` (docs/language.md, "Your own recurrence"): a hand-written LSTM
cell block under scan gives the builtin lstm's values and gradients with the same weights, at
any length of a symbolic time dim; a body whose state changes shape is a located error.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from tests.regen import DOC

# the cell docs/language.md shows, as written there
CELL = re.search(r"```nn\n(block LstmCell.*?\n}\n)", DOC.read_text(), re.S).group(1)
HAND = CELL + """
model Hand {
  symbol seq
  input x: float64[batch, seq, 3]
  input h0: float64[batch, 4]
  input c0: float64[batch, 4]
  param kernel: float64[3, 16]
  param recurrent: float64[4, 16]
  param bias: float64[16] = normal(std = 0.5)
  hs, h, c = scan LstmCell(h0, c0, kernel = kernel, recurrent = recurrent, bias = bias) over x
  output out = hs
  loss mean(hs * hs) + mean(h * c)
}
"""


def builtin(n: int) -> str:
    """The same model with the builtin lstm (Keras layout: kernel, recurrent, bias)."""
    return f"""
model Builtin {{
  input x: float64[batch, {n}, 3]
  input h0: float64[batch, 4]
  input c0: float64[batch, 4]
  hs, h, c = lstm(x, 4, return_sequences = true, return_state = true, initial_h = h0,
                  initial_c = c0, unit_forget_bias = false)
  output out = hs
  loss mean(hs * hs) + mean(h * c)
}}
"""


def _check_against_builtin(backend):
    net = nnlang.compile(HAND, seed=1, backend=backend)
    rng = np.random.default_rng(0)
    for n in (5, 2):
        twin = nnlang.compile(builtin(n), seed=2, backend=backend)
        mine = net.parameters()
        twin.load_state_dict({k: mine[k.split(".")[-1]] for k in twin.parameters()})
        feeds = {"x": rng.normal(size=(2, n, 3)), "h0": rng.normal(size=(2, 4)),
                 "c0": rng.normal(size=(2, 4))}
        want = twin.forward(feeds)["out"]
        assert want.shape == (2, n, 4)
        np.testing.assert_allclose(net.forward(feeds)["out"], want, rtol=1e-12, atol=1e-13)
        got, expected = net.gradients(feeds), twin.gradients(feeds)
        assert set(expected) == {"hs.kernel", "hs.recurrent", "hs.bias"}
        for k, g in expected.items():
            assert np.abs(g).max() > 1e-3  # a gradient that is all zeros would prove nothing
            np.testing.assert_allclose(got[k.split(".")[-1]], g, rtol=1e-10, atol=1e-12,
                                       err_msg=k)


def test_hand_written_lstm_cell_matches_builtin_lstm():
    _check_against_builtin("reference")


@pytest.mark.slow
def test_hand_written_lstm_cell_matches_builtin_lstm_on_numba():
    _check_against_builtin("numba")


def test_scan_is_one_node_whatever_the_length():
    g = nnlang.load(HAND).graph
    assert [n.op for n in g].count("scan") == 1
    assert not any(n.op == "input" and n.attrs["name"].startswith("scan.") for n in g)


BAD = [
    (HAND.replace("return h2, c2, h2", "return h2[:, 0:2], c2, h2"),
     "LstmCell's state 1 changes type from float64[batch, 4] to float64[batch, 2] in one step",
     "20:28"),
    (HAND.replace("return h2, c2, h2", "return h2"),
     "LstmCell returns 1 value(s) but carries 2 state(s)", "20:14"),
    (HAND.replace("over x", "over h0"), "scan runs over float sequences", "20:94"),
    (HAND.replace("scan LstmCell", "scan lstm"), "scan runs a block, and 'lstm' is not one",
     "20:19"),
]


@pytest.mark.parametrize("source,words,where", BAD, ids=["shape", "count", "over", "op"])
def test_scan_errors_are_located(source, words, where):
    with pytest.raises(NNError) as err:
        nnlang.load(source)
    text = str(err.value)
    assert words in text and f":{where}:" in text and "Traceback" not in text, text
