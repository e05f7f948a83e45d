"""Smoke runs of the scripts in benchmarks/: every script imports and parses its flags, every
`python benchmarks/...` command quoted in the docs parses with the script's own flags, the
torch twins agree with nnlang, and step_time/parity run end to end with one tiny step on the
reference backend. The PyTorch comparisons are skipped without PyTorch; without it they must
say that PyTorch is needed, not print a traceback."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))
# the scripts that compare with PyTorch (they import torch_models, or torch in main)
NEEDS_TORCH = {"torch_models", "step_time", "parity", "gpu_step_time", "generate_bench"}
DOCS = ["README.md", "docs/performance.md", "docs/results.md", "docs/export.md",
        "docs/distributed.md", "docs/language.md"]


def _bench(name: str):
    if name in NEEDS_TORCH:
        pytest.importorskip("torch")
    return importlib.import_module(name)


# *** flags: every script, and every command the docs quote ***

class _Parsed(Exception):
    pass


def _parse_only(monkeypatch, module, argv: list[str]) -> argparse.Namespace:
    """Runs `module.main(argv)` up to its argparse call and stops there: the flags are checked
    exactly as the script checks them (names, types, choices), and nothing is measured."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed) as got:
        module.main(argv)
    return got.value.args[0]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports_and_has_help(name, capsys):
    module = _bench(name)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _inline_and_blocks(text: str):
    """Command texts of a markdown file: fenced and indented code lines (with backslash
    continuations joined) and inline code spans (which may wrap over lines)."""
    fences = re.split(r"^```.*$", text, flags=re.M)
    for i, part in enumerate(fences):
        if i % 2:  # inside a fence
            yield from part.replace("\\\n", " ").splitlines()
            continue
        for line in part.splitlines():
            if line.startswith("    "):
                yield line
        yield from (m.group(1).replace("\n", " ") for m in re.finditer(r"`([^`]+)`", part))


def documented_commands() -> list[tuple[str, str, list[str]]]:
    out = []
    for doc in DOCS:
        for text in _inline_and_blocks((ROOT / doc).read_text()):
            for m in re.finditer(r"python (benchmarks/(\w+)\.py)([^`#;|]*)", text):
                # NOTE: optional flags are quoted in brackets, e.g. [--threads 1], and
                # "..." stands for the flags of a command quoted before
                args = [a for a in shlex.split(m.group(3).replace("[", " ").replace("]", " "))
                        if a != "..."]
                out.append((doc, m.group(2), args))
    return out


COMMANDS = documented_commands()


def test_docs_quote_the_benchmarks():
    # the extraction itself: a change of quoting style must not leave the next test empty
    quoted = {name for _, name, _ in COMMANDS}
    assert {"step_time", "parity", "torch_models", "compile_time", "sequence_length",
            "process_spread", "distributed_scaling", "export_bench", "generate_bench",
            "gpu_launch_count", "profile_step", "symbolic_lengths", "signal_resume"} <= quoted


@pytest.mark.parametrize("doc,name,args", COMMANDS,
                         ids=[f"{d}:{n} {' '.join(a)}"[:90] for d, n, a in COMMANDS])
def test_documented_command_parses(doc, name, args, monkeypatch):
    assert (BENCH / f"{name}.py").exists(), f"{doc} quotes benchmarks/{name}.py, which is gone"
    _parse_only(monkeypatch, _bench(name), args)


def test_without_torch_the_comparisons_say_torch_is_needed(tmp_path):
    (tmp_path / "torch.py").write_text("raise ImportError('No module named torch')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, str(BENCH / "step_time.py"), "--models", "mlp"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr
    assert "need PyTorch" in p.stderr and "pip install torch" in p.stderr, p.stderr


def test_compile_time_reports_a_failed_compile(tmp_path):
    # models/mlp.nn has no maxlen: the CLI refuses `--set maxlen=50` with a located error,
    # which must stop the benchmark instead of being timed as a fast compile
    compile_time = _bench("compile_time")
    with pytest.raises(SystemExit) as err:
        compile_time.run_once("models/mlp.nn", 50, tmp_path)
    assert "no hyper-parameter 'maxlen'" in str(err.value.code)


def test_compile_time_sets_the_named_parameter(tmp_path):
    # --param layers: the runs set `layers`, not maxlen (models/mlp.nn has neither: refused)
    compile_time = _bench("compile_time")
    with pytest.raises(SystemExit) as err:
        compile_time.run_once("models/mlp.nn", 4, tmp_path, param="layers")
    assert "compile failed at layers=4" in str(err.value.code)
    assert "no hyper-parameter 'layers'" in str(err.value.code)


def test_gpu_step_time_keeps_the_models_done_when_a_later_one_is_cut_off(tmp_path, monkeypatch):
    # scripts/gpu_run.sh runs it under a time limit on a borrowed GPU: --out was written only
    # after the last model, so a run killed at the LSTM returned no number at all
    gpu_step_time = _bench("gpu_step_time")

    def time_model(name, *args):
        if name == "lstm":
            raise KeyboardInterrupt  # stands for the time limit's signal
        return {"model": name, "batch": 4, "torch_ms": 1.0}

    monkeypatch.setattr(gpu_step_time, "time_model", time_model)
    out = tmp_path / "gpu.json"
    with pytest.raises(KeyboardInterrupt):
        gpu_step_time.main(["--models", "mlp,cnn,lstm", "--torch-device", "cpu",
                            "--out", str(out)])
    assert [r["model"] for r in json.loads(out.read_text())["models"]] == ["mlp", "cnn"]


@pytest.mark.slow  # NOTE: ~11 s: the stand-in builds the MLP's kernels as host C++
def test_gpu_step_time_stand_in_runs_the_cupy_path_without_a_gpu(tmp_path):
    # `--stand-in`: the dry run of scripts/gpu_run.sh times nnlang's cupy backend on the tests'
    # CPU stand-in (the numbers mean nothing); afterwards `import cupy` is not the stand-in
    gpu_step_time = _bench("gpu_step_time")
    before = sys.modules.get("cupy")
    out = tmp_path / "gpu.json"
    gpu_step_time.main(["--stand-in", "--models", "mlp", "--rounds", "1", "--warmup", "0",
                        "--batch", "4", "--pipeline", "2", "--out", str(out)])
    got = json.loads(out.read_text())
    assert got["device"] == "cpu", got
    [r] = got["models"]
    assert "nnlang_error" not in r, r
    assert r["nnlang_ms"] > 0 and r["kernels"]["kernels"] > 0 and r["pipelined_steps"] == 2, r
    assert sys.modules.get("cupy") is before


@pytest.mark.slow
def test_compile_time_tiny(capsys):
    # a cold and a warm compile of a small model: the table's counts come from the summary
    compile_time = _bench("compile_time")
    compile_time.main(["--model", "models/conv1d.nn", "--lengths", "20", "--runs", "1"])
    row = capsys.readouterr().out.splitlines()[-1].split(" | ")
    assert row[0] == "| 20" and "?" not in row and row[6] == "0", row  # warm: nothing compiled


def test_profile_step_tiny(capsys):
    # the per-call breakdown wraps the executable's launcher: it must still find every call
    _bench("profile_step").main(["mlp", "--steps", "1", "--breakdown", "--top", "3"])
    out = capsys.readouterr().out
    assert "steady median" in out and "sum of calls" in out and "call matmul" in out, out


def test_machine_report(capsys):
    assert _bench("machine").main([]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cores"] >= 1 and report["sgemm"]["median_gflops"] > 0


# *** the PyTorch comparisons ***

@pytest.mark.parametrize("name", ["mlp", "gru", "transformer"])
def test_twin_matches_nnlang(name):
    torch_models = _bench("torch_models")
    # float64: any layout slip (a transposed kernel, a swapped GRU gate) shows up far above 1e-9
    r = torch_models.check(name, dtype="float64", batch=2, backend="reference")
    assert r["loss_rel_err"] < 1e-9 and r["grad_rel_err"] < 1e-9, r


def test_flops_formula_counts_the_mlp_gemms():
    torch_models = _bench("torch_models")
    assert torch_models.forward_gemm_flops("mlp", 1, {}) == 2 * (784 * 512 + 512 * 256 + 256 * 10)


def test_step_time_smoke(tmp_path, capsys):
    step_time = _bench("step_time")
    out = tmp_path / "st.json"
    step_time.main(["--models", "mlp", "--rounds", "1", "--warmup", "0", "--batch", "4",
                    "--backend", "reference", "--no-compile-times", "--out", str(out)])
    r = json.loads(out.read_text())["results"][0]
    assert r["nnlang_ms"] > 0 and r["torch_ms"] > 0 and "nnlang_error" not in r
    assert "| mlp | 4 |" in capsys.readouterr().out


def test_parity_smoke(tmp_path):
    parity = _bench("parity")
    # mnist-sample ships inside the package, so this needs no NNLANG_DATA_DIR
    out = tmp_path / "p.json"
    parity.main(["--model", "mlp", "--epochs", "1", "--limit-train", "256", "--limit-test", "200",
                 "--backend", "reference", "--data", "mnist-sample", "--out", str(out)])
    row = json.loads(out.read_text())["runs"][0]["rows"][0]
    # same weights, same batches, same update rule: the accuracies agree to float32 noise
    assert abs(row["nnlang_acc"] - row["torch_acc"]) <= 0.01
