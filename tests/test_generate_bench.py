"""benchmarks/generate_bench.py: its smoke run (skipped without PyTorch: its PyTorch KV-cache twin
of models/gpt.nn produces nnlang's greedy tokens, the benchmark asserts it), and the model it
builds from a run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import generate_bench  # noqa: E402


def test_generate_bench_smoke(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "g.json"
    generate_bench.main(["--rounds", "1", "--backend", "reference", "--batches", "2",
                         "--lengths", "5", "--out", str(out)])
    run = json.loads(out.read_text())["runs"][0]
    assert run["same_tokens"] and run["nnlang_tok_s"] > 0 and run["torch_tok_s"] > 0


def test_a_run_with_other_hyper_parameters_is_benchmarked_with_its_own_weights(tmp_path):
    """`-c RUN` of a `--set layers=1` run built the file's 2-layer model and copied the one
    layer it had: the second stayed random, so the timing and the tokens were another model's."""
    import nnlang
    net = nnlang.compile(str(generate_bench.ROOT / "models" / "gpt.nn"), backend="reference",
                         overrides={"layers": 1, "dim": 32, "ffn": 64, "maxlen": 32})
    nnlang.save(net, tmp_path / "run")
    bench, _ = generate_bench.build(str(tmp_path / "run"), "reference")
    assert bench.program.hparams["layers"] == 1 and bench.program.hparams["dim"] == 32
    assert set(bench.state) == set(net.state)
    for k, v in net.state.items():
        got = bench.state[k][: len(v)] if k == "h.weight" else bench.state[k]
        np.testing.assert_array_equal(got, v)
