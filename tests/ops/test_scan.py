"""The `scan` recurrences (ops/scan.py, ops/rnn.py) against the goldens the unrolled rnn, lstm
and gru wrote before they became scans (tests/golden/rnn/generate.py): values and gradients of
every input and weight, one direction and both, last state and whole sequence."""
from __future__ import annotations

import numpy as np
import pytest

from tests.golden.rnn.generate import CASES, FILE, evaluate

GOLDEN = np.load(FILE)


@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_matches_unrolled_golden(case):
    op, sample = CASES[case]
    got = evaluate(op, sample)
    for key, value in got.items():
        np.testing.assert_allclose(value, GOLDEN[f"{case}/{key}"], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{case}: {key}")
