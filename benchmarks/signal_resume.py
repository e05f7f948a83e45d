"""Exact resume after Ctrl-C or kill -9: each trial trains a small model in a subprocess, stops
it with SIGINT or SIGKILL at a random step, resumes it with --resume, and compares the final
checkpoint's arrays bit for bit with an uninterrupted run of the same settings.

    python benchmarks/signal_resume.py [--trials 24] [--seed 0] [--models mlp,cnn,gru]
                                       [--backend numba] [--work DIR]

Half the signals land through the trainer's test hook (NNLANG_TEST_SIGNAL_AT_STEP: the process
signals itself right after a chosen step is queued); the other half are sent from here at a
random time while the run trains (after its "compiled in" line), so they land anywhere: inside
a step, between a step and its counters, in validation. A kill -9 resumes from the last
checkpoint the run wrote (end of an epoch), or trains afresh when it wrote none.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# name -> (.nn file, extra train flags); small sizes so that a trial takes seconds
MODELS = {
    "mlp": ("models/mlp.nn", ["--data", "mnist-sample", "--set", "hidden1=128",
                              "--set", "hidden2=64", "--val-split", "0.1"]),
    "cnn": ("models/cnn.nn", ["--data", "{work}/mnist-small.npz"]),
    "gru": ("models/gru.nn", ["--data", "imdb-sample", "--set", "vocab=2000",
                              "--set", "maxlen=24", "--set", "embed=16", "--set", "units=16"]),
}
BATCHES = {"mlp": (8, 32), "cnn": (16, 32), "gru": (8, 16)}
KINDS = ("int-hook", "int-async", "kill-hook", "kill-async")


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def _train_cmd(model: str, batch: int, out: Path, work: Path, backend: str) -> list[str]:
    file, flags = MODELS[model]
    flags = [f.format(work=work) for f in flags]
    return [sys.executable, "-m", "nnlang_cli.main", "train", str(ROOT / file), *flags,
            "--epochs", "2", "--seed", "0", "--batch", str(batch), "--out", str(out),
            "--backend", backend]


def _resume_cmd(model: str, out: Path, backend: str) -> list[str]:
    return [sys.executable, "-m", "nnlang_cli.main", "train", str(ROOT / MODELS[model][0]),
            "--out", str(out), "--resume", "--backend", backend]


def _run(cmd, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(env), timeout=timeout,
                          cwd=ROOT)


def make_small_mnist(work: Path) -> None:
    """1024 + 128 images of the shipped MNIST sample: the CNN at full width stays quick."""
    z = np.load(ROOT / "nnlang/data/samples/mnist-sample.npz")
    np.savez(work / "mnist-small.npz", train_image=z["train_image"][:1024],
             train_label=z["train_label"][:1024], test_image=z["test_image"][:128],
             test_label=z["test_label"][:128])


def same_checkpoints(a: Path, b: Path) -> tuple[bool, str]:
    """Bit-identical state arrays and the same step counters, or what differs."""
    from nnlang.train import checkpoint
    ca, cb = checkpoint.load(a), checkpoint.load(b)
    if (ca.step, ca.epoch) != (cb.step, cb.epoch):
        return False, f"step {cb.step} vs {ca.step}, epoch {cb.epoch} vs {ca.epoch}"
    if ca.state.keys() != cb.state.keys():
        return False, "different state arrays"
    for k in ca.state:
        x, y = ca.state[k], cb.state[k]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            diff = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
            return False, f"{k} differs by up to {diff:.3g}"
    return True, ""


def reference(model: str, batch: int, work: Path, backend: str) -> tuple[Path, int, float]:
    """(checkpoint, total steps, training seconds after "compiled in") of the uninterrupted
    run: the async signals are sent within that time."""
    out = work / f"ref-{model}-{batch}"
    code, text, seconds = _async(_train_cmd(model, batch, out, work, backend), None, None)
    if code != 0:
        raise RuntimeError(f"reference run failed:\n{text}")
    from nnlang.train import checkpoint
    return out / "checkpoint.npz", checkpoint.load(out).step, seconds


def _async(cmd, delay: float | None, sig: int | None) -> tuple[int, str, float]:
    """Starts `cmd`, waits for its "compiled in" line, sends `sig` after `delay` seconds
    (none: lets it run); (exit code, output, seconds from that line to the end of training)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("compiled in"):
            break
    t0 = trained = time.perf_counter()
    if sig is None:  # NOTE: timed to the last epoch's line: tests and plots come after it
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("epoch 2/2  "):
                trained = time.perf_counter()
    else:
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=600)
    return proc.wait(), "".join(lines) + rest, trained - t0


def trial(model: str, batch: int, kind: str, ref: tuple, work: Path, rng, backend: str,
          index: int) -> dict:
    ref_ckpt, total, seconds = ref
    out = work / f"t{index}-{model}-{batch}-{kind}"
    cmd = _train_cmd(model, batch, out, work, backend)
    sig = signal.SIGINT if kind.startswith("int") else signal.SIGKILL
    row = {"model": model, "batch": batch, "kind": kind, "at": ""}
    if kind.endswith("hook"):
        at = int(rng.integers(1, total))
        row["at"] = f"step {at}"
        spec = f"{at}:KILL" if sig == signal.SIGKILL else str(at)
        p = _run(cmd, env={"NNLANG_TEST_SIGNAL_AT_STEP": spec})
        code, text = p.returncode, p.stdout + p.stderr
    else:
        delay = float(rng.uniform(0, seconds * 0.9))
        row["at"] = f"{delay:.2f}s"
        code, text, _ = _async(cmd, delay, sig)
    want = (130,) if sig == signal.SIGINT else (-signal.SIGKILL,)
    # NOTE: a signal after the command's own work (interpreter exit) kills a finished run
    if code == 0 or (code == -signal.SIGINT and "run directory:" in text):
        row["result"] = "finished before the signal"
        row["ok"] = same_checkpoints(ref_ckpt, out / "checkpoint.npz")[0]
        return row
    if code not in want or "Traceback" in text or "internal error" in text:
        row.update(ok=False, result=f"exit {code}: {text[-300:]}")
        return row
    if sig == signal.SIGINT:
        from nnlang.train import checkpoint
        row["at"] += f" -> saved at step {checkpoint.load(out).step}"
    resume = _resume_cmd(model, out, backend) if (out / "checkpoint.npz").is_file() else cmd
    p = _run(resume)
    if p.returncode != 0:
        row.update(ok=False, result=f"resume exit {p.returncode}: {p.stdout[-300:]}"
                                    f"{p.stderr[-300:]}")
        return row
    ok, why = same_checkpoints(ref_ckpt, out / "checkpoint.npz")
    row.update(ok=ok, result="bit-identical" if ok else why)
    return row


def run_trials(n: int, models: list[str], seed: int = 0, backend: str = "numba",
               work: Path | None = None) -> list[dict]:
    """`n` trials cycling over models, batch sizes and the four kinds of stop."""
    work = Path(work or tempfile.mkdtemp(prefix="signal-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    make_small_mnist(work)
    rng = np.random.default_rng(seed)
    combos = [(m, b) for m in models for b in BATCHES[m]]
    refs, rows = {}, []
    for i in range(n):
        model, batch = combos[i % len(combos)]
        kind = KINDS[(i // len(combos) + i) % len(KINDS)]
        if (model, batch) not in refs:
            refs[(model, batch)] = reference(model, batch, work, backend)
        rows.append(trial(model, batch, kind, refs[(model, batch)], work, rng, backend, i))
        print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    return (f"| {r['model']} | {r['batch']} | {r['kind']} | {r['at']} | "
            f"{'yes' if r['ok'] else 'NO'} | {r['result']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="mlp,cnn,gru")
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    print("| model | batch | stop | signal at | exact | result |")
    print("|---|---|---|---|---|---|")
    rows = run_trials(args.trials, args.models.split(","), args.seed, args.backend, args.work)
    bad = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} resumes bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
