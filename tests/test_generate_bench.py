"""Smoke run of benchmarks/generate_bench.py (skipped without PyTorch): its PyTorch KV-cache
twin of models/gpt.nn produces nnlang's greedy tokens (the benchmark asserts it)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import generate_bench  # noqa: E402


def test_generate_bench_smoke(tmp_path):
    out = tmp_path / "g.json"
    generate_bench.main(["--rounds", "1", "--backend", "reference", "--batches", "2",
                         "--lengths", "5", "--out", str(out)])
    run = json.loads(out.read_text())["runs"][0]
    assert run["same_tokens"] and run["nnlang_tok_s"] > 0 and run["torch_tok_s"] > 0
