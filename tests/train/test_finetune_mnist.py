"""The fine-tune target on real data (slow): models/cnn.nn trained on MNIST, then started from
that run on Fashion-MNIST with both convolutions frozen. The frozen weights come out bit for
bit as loaded, the head learns, and the generated backward pass has no convolution gradients
(`nnlang compile --emit backward`)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from nnlang.train import checkpoint
from tests.faults.conftest import ROOT, cli

STEPS = "150"   # a few minutes on two cores; enough for the head to beat chance by far
CONVS = ("c1.weight", "c1.bias", "c2.weight", "c2.bias")


def _frozen_cnn() -> str:
    src = (ROOT / "models" / "cnn.nn").read_text()
    out = re.sub(r"conv2d\((\w+), (\d+), 3, padding = 1\)",
                 r"conv2d(\1, \2, 3, padding = 1, trainable = false)", src)
    assert out.count("trainable = false") == 2
    return out


def _conv_backward_lines(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if "[bwd]" in line and re.search(r"# c[12]( |$)", line)]


@pytest.mark.slow
def test_cnn_mnist_then_frozen_fashion_mnist(tmp_path):
    if not os.environ.get("NNLANG_DATA_DIR"):
        pytest.skip("NNLANG_DATA_DIR is not set: real data sets unavailable")
    cnn = ROOT / "models" / "cnn.nn"
    cli("train", cnn, "--data", "mnist", "--max-steps", STEPS, "--out", tmp_path / "pre",
        code=0)
    pre = checkpoint.load(tmp_path / "pre").state
    ft = tmp_path / "ft.nn"
    ft.write_text(_frozen_cnn())
    out = cli("train", ft, "--data", "fashion-mnist", "--init-from", tmp_path / "pre",
              "--max-steps", STEPS, "--out", tmp_path / "ft", code=0)
    assert "c1.weight" in out   # the init-from table names what was loaded
    after = checkpoint.load(tmp_path / "ft").state
    for name in CONVS:
        assert np.array_equal(after[name], pre[name]), name
    assert not np.array_equal(after["h.weight"], pre["h.weight"])
    acc = cli("eval", ft, "-c", tmp_path / "ft", code=0)
    value = float(re.search(r"test\s+[\d.]+\s+([\d.]+)", acc).group(1))
    assert value > 0.5, acc   # 10 classes: chance is 0.1
    frozen = cli("compile", ft, "--emit", "backward", "--backend", "reference", code=0)
    plain = cli("compile", cnn, "--emit", "backward", "--backend", "reference", code=0)
    assert _conv_backward_lines(plain)   # the check would see them if they were there
    assert not _conv_backward_lines(frozen)
    assert not any(f"optimizer.m.{c}" in frozen for c in CONVS)
