"""Flush-to-zero / denormals-are-zero around CPU steps (nnlang/backends/denormals.py): on for
the step's thread during the step only, and a step's arithmetic really flushes (a denormal
input reads as zero)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nnlang.backends import denormals

pytestmark = pytest.mark.skipif(not denormals.enabled(), reason="x86 only")

TINY = np.float32(1e-39)   # a float32 denormal (the smallest normal is 1.18e-38)


def test_flushed_is_scoped_to_the_block():
    assert not denormals.flushing_now()
    with denormals.flushed():
        assert denormals.flushing_now()
        assert np.all(np.array([TINY], np.float32) * np.float32(2) == 0)  # read as zero
    assert not denormals.flushing_now()
    assert float(np.array([TINY], np.float32)[0] * np.float32(2)) > 0  # IEEE again


def test_a_step_flushes_and_the_caller_keeps_ieee():
    import nnlang
    net = nnlang.compile(textwrap.dedent("""
        model Scale {
          input x: float32[batch, 4]
          output y = x * 2.0
        }
    """), backend="numba", batch=2)
    x = np.full((2, 4), TINY, np.float32)
    assert np.all(net.forward({"x": x})["y"] == 0)        # denormals are zero inside
    assert np.all(x * np.float32(2) > 0)                  # and not after the step
    assert not denormals.flushing_now()


def test_keep_turns_it_off():
    code = ("from nnlang.backends import denormals as d\n"
            "with d.flushed(): print(d.flushing_now())")
    env = {**os.environ, "NNLANG_DENORMALS": "keep"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
