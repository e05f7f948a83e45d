"""Compile time of a model (default models/lstm.nn) at several sequence lengths, as a user sees it:
`nnlang compile FILE --set maxlen=N --emit summary`, each run in its own fresh process.
`--param layers` sets another hyper-parameter instead (a model's depth: models/gpt.nn's layers).

    python benchmarks/compile_time.py [--model models/lstm.nn] [--lengths 50,200,1000,5000]
                                      [--param maxlen] [--runs 1] [--out results.json]

Cold: a fresh NNLANG_CACHE_DIR and NUMBA_CACHE_DIR (nothing compiled yet, not even the library
primitives numba caches beside the package). Warm: a second process on the same cache dirs.
Wall time is from process start to exit; CPU time is user + sys of the process and of its
children (the compile worker), which is what counts on a shared machine where wall time mostly
measures the other jobs. Python's bytecode is written (as an installed package has it)
whatever PYTHONDONTWRITEBYTECODE says. Each run also reports the summary's node and kernel
counts, how many kernel signatures numba compiled in the process (a warm one must be 0), and
its peak resident memory (the process's or its compile worker's, whichever is larger).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# NOTE: the child runs the installed script's entry (`nnlang_cli.run`, as `nnlang` does: the
# compile worker started early on a cold cache, the exit without Python's teardown) and
# prints the backend's compile counters from an exit handler, which that exit still runs; its
# exit code is the command's, so a failed compile (say `--set maxlen` on a model without that
# hyper-parameter) is not timed as a fast one.
_CHILD = """
import atexit
import sys


def counters():
    from nnlang.backends.base import _BACKENDS
    b = _BACKENDS.get("numba")
    if b is not None:
        print(f"numba_compiled: {b.compiled}")
        print(f"numba_cache_hits: {b.cache_hits}")
    import resource
    peak = max(resource.getrusage(r).ru_maxrss
               for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"peak_kib: {peak}", flush=True)


atexit.register(counters)
sys.argv[0] = "nnlang"
from nnlang_cli import run
run()
"""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(model: str, length: int, cache: Path, param: str = "maxlen") -> dict:
    """One `nnlang compile` process on `cache` with `--set param=length`: wall, CPU, peak
    memory and the summary's counts."""
    env = {**os.environ, "NNLANG_CACHE_DIR": str(cache), "NUMBA_CACHE_DIR": str(cache / "numba")}
    # NOTE: an installed package has its bytecode; without it every process compiles ~90
    # modules from source (~0.5 s CPU)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = [sys.executable, "-c", _CHILD, "compile", model, "--set", f"{param}={length}",
           "--emit", "summary"]
    cpu0, wall0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall0, _children_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"compile failed at {param}={length}:\n{done.stdout}\n{done.stderr}")
    info = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(": ")
        if line.startswith("compile time"):
            info["compile_s"] = float(line.split()[2])
        elif key in ("nodes", "kernels", "distinct_kernels", "scan_loops", "numba_compiled",
                   "numba_cache_hits"):
            info[key] = int(value)
        elif key == "peak_kib":
            info["peak_mb"] = round(int(value) / 1024)
    missing = {"compile_s", "nodes", "kernels", "numba_compiled"} - set(info)
    if missing:  # NOTE: else the table shows "?" where the summary's format moved
        raise SystemExit(f"{param}={length}: the compile printed no {', '.join(sorted(missing))} "
                         f"(did `nnlang compile --emit summary` change?):\n{done.stdout}")
    return info


def measure(model: str, lengths: list[int], runs: int, param: str = "maxlen") -> list[dict]:
    rows = []
    for length in lengths:
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="nncompile-") as tmp:
                cold = run_once(model, length, Path(tmp), param)
                warm = run_once(model, length, Path(tmp), param)
            rows.append({"param": param, param: length, "cold": cold, "warm": warm,
                         "loadavg": [round(x, 2) for x in os.getloadavg()]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    param = rows[0]["param"] if rows else "maxlen"
    head = (f"| {param} | cold wall s | cold CPU s | warm wall s | warm CPU s | warm compile s "
            "| warm numba compiles | nodes | kernels | peak MB cold / warm | load avg (1 min) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        c, w = r["cold"], r["warm"]
        lines.append(f"| {r[param]} | {c['wall_s']} | {c['cpu_s']} | {w['wall_s']} | "
                     f"{w['cpu_s']} | {w.get('compile_s', '?')} | {w.get('numba_compiled', '?')} "
                     f"| {w.get('nodes', '?')} | {w.get('kernels', '?')} | "
                     f"{c.get('peak_mb', '?')} / {w.get('peak_mb', '?')} | {r['loadavg'][0]} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/lstm.nn")
    ap.add_argument("--lengths", default="50,200,1000,5000")
    ap.add_argument("--param", default="maxlen",
                    help="the hyper-parameter --lengths sets (e.g. layers)")
    ap.add_argument("--runs", type=int, default=1, help="cold/warm pairs per length")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = measure(args.model, [int(x) for x in args.lengths.split(",")], args.runs, args.param)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
