"""Smoke runs of the comparison scripts in benchmarks/ (skipped without PyTorch): the torch twins
agree with nnlang, and step_time/parity run end to end with one tiny step on the reference
backend."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import parity  # noqa: E402
import step_time  # noqa: E402
import torch_models  # noqa: E402


@pytest.mark.parametrize("name", ["mlp", "gru", "transformer"])
def test_twin_matches_nnlang(name):
    # float64: any layout slip (a transposed kernel, a swapped GRU gate) shows up far above 1e-9
    r = torch_models.check(name, dtype="float64", batch=2, backend="reference")
    assert r["loss_rel_err"] < 1e-9 and r["grad_rel_err"] < 1e-9, r


def test_flops_formula_counts_the_mlp_gemms():
    assert torch_models.forward_gemm_flops("mlp", 1, {}) == 2 * (784 * 512 + 512 * 256 + 256 * 10)


def test_step_time_smoke(tmp_path, capsys):
    out = tmp_path / "st.json"
    step_time.main(["--models", "mlp", "--rounds", "1", "--warmup", "0", "--batch", "4",
                    "--backend", "reference", "--no-compile-times", "--out", str(out)])
    r = json.loads(out.read_text())["results"][0]
    assert r["nnlang_ms"] > 0 and r["torch_ms"] > 0 and "nnlang_error" not in r
    assert "| mlp | 4 |" in capsys.readouterr().out


def test_parity_smoke(tmp_path):
    # mnist-sample ships inside the package, so this needs no NNLANG_DATA_DIR
    out = tmp_path / "p.json"
    parity.main(["--model", "mlp", "--epochs", "1", "--limit-train", "256", "--limit-test", "200",
                 "--backend", "reference", "--data", "mnist-sample", "--out", str(out)])
    row = json.loads(out.read_text())["runs"][0]["rows"][0]
    # same weights, same batches, same update rule: the accuracies agree to float32 noise
    assert abs(row["nnlang_acc"] - row["torch_acc"]) <= 0.01
