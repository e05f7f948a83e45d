"""ONNX export of each reference model: the .onnx file's size, ONNX Runtime's largest difference
from nnlang's `forward`, and the inference time of both at batch 1 and 64.

    NNLANG_DATA_DIR=... python benchmarks/export_bench.py [--models mlp,cnn,...] [--rounds 20]
                                                         [--threads 2] [--out export.json]

Inputs are the first examples of each model's own test set (drawn in range when NNLANG_DATA_DIR
is not set). Weights are a fresh initialization (the timings and the size do not depend on
them). The two runtimes alternate call by call for `--rounds` rounds after a warm-up, so a
shared machine's drift hits both; each cell is the median, and the ratio the median of the
paired ratios. `--threads N` gives both N threads (ONNX Runtime's intra-op pool and numba's,
through NUMBA_NUM_THREADS); by default each uses every core, as it does out of the box. On a
busy machine pin the run to one core (`taskset -c 1 ... --threads 1`): spinning thread pools
(OpenBLAS's, ONNX Runtime's) competing with other processes for two cores made single calls
100x slower at random, in both runtimes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 64)
MODELS = sorted(p.stem for p in (ROOT / "models").glob("*.nn"))


def inputs_for(program, net, n: int) -> dict:
    """n examples of the model's test set, or drawn inputs of its types without the data."""
    from nnlang.runtime.indices import index_inputs
    from nnlang.train import feeds
    if os.environ.get("NNLANG_DATA_DIR"):
        ds = feeds.load_data(program.train.data)
        mapping = feeds.match_inputs(program.graph, ds.inputs, ds.targets, need_targets=False)
        split = ds.test if len(ds.test) else ds.train
        # NOTE: through `batches`, so whole reviews (ragged rows, lstm_full) come padded as the
        # trainer pads them
        arrays = next(feeds.batches({a: split.arrays[a] for a in mapping.values()}, n,
                                    np.arange(n)))
        return feeds.model_arrays(program.graph, arrays, mapping)
    rng = np.random.default_rng(0)
    g = net.graph("predict")
    rows = {c.name: c.rows for c in index_inputs(g)}
    out = {}
    for name, nid in g.inputs.items():
        node = g.node(nid)
        shape = (n, *(int(d) for d in node.shape[1:]))
        out[name] = (rng.integers(0, rows.get(name, 2), shape).astype(node.dtype)
                     if node.dtype.startswith("int") else
                     rng.normal(size=shape).astype(node.dtype))
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench_model(name: str, rounds: int, threads: int) -> dict:
    import onnxruntime as ort

    import nnlang
    program = nnlang.load(ROOT / "models" / f"{name}.nn")
    nets = {b: nnlang.compile(program, batch=b, seed=0) for b in BATCHES}
    proto = nnlang.export_onnx(nets[BATCHES[0]])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    row = {"model": name, "onnx_bytes": len(proto.SerializeToString()),
           "onnx_nodes": len(proto.graph.node)}
    diff = 0.0
    for b in BATCHES:
        net, feeds = nets[b], inputs_for(program, nets[b], b)
        want = net.forward(feeds)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        diff = max(diff, *(float(np.abs(got[k] - want[k]).max()) for k in want))
        for _ in range(3):   # warm-up: thread pools, first-call allocations
            net.forward(feeds)
            sess.run(None, feeds)
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(timed(lambda: net.forward(feeds)))
            theirs.append(timed(lambda: sess.run(None, feeds)))
        row[f"nnlang_ms_b{b}"] = statistics.median(ours)
        row[f"ort_ms_b{b}"] = statistics.median(theirs)
        row[f"ort_over_nnlang_b{b}"] = statistics.median(t / o for t, o in zip(theirs, ours))
    row["max_abs_diff"] = diff
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | .onnx size | nodes | ORT max abs diff | nnlang b1 (ms) | ORT b1 (ms) "
            "| ORT/nnlang b1 | nnlang b64 (ms) | ORT b64 (ms) | ORT/nnlang b64 |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['onnx_bytes'] / 1e6:.2f} MB | {r['onnx_nodes']} "
            f"| {r['max_abs_diff']:.1e} "
            + "".join(f"| {r[f'nnlang_ms_b{b}']:.2f} | {r[f'ort_ms_b{b}']:.2f} "
                      f"| {r[f'ort_over_nnlang_b{b}']:.2f} " for b in BATCHES) + "|")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated names in models/ (default: every one)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.threads is not None:   # NOTE: numba reads it once, when nnlang first imports it
        os.environ["NUMBA_NUM_THREADS"] = str(a.threads)
    rows = [bench_model(m, a.rounds, a.threads or os.cpu_count() or 1)
            for m in a.models.split(",")]
    print(describe(machine_info()))
    print(table(rows))
    if a.out:
        a.out.write_text(json.dumps({"machine": machine_info(), "threads": a.threads,
                                     "rounds": a.rounds, "results": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
