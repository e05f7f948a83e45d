"""Regenerates rnn_goldens.npz: values and gradients of rnn/lstm/gru (one and both directions,
last state and whole sequence) from the compiler's own graphs, interpreted in float64.

The file was written by the unrolled implementation (before recurrences became `scan` nodes),
so tests/ops/test_scan.py checks the scan against what the unroll computed. Run it only to
record a deliberate change: `python -m tests.golden.rnn.generate`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnlang.ir.graph import Builder
from nnlang.ops.registry import Sample
from nnlang.passes.autodiff import backward
from nnlang.passes.decompose import decompose
from nnlang.runtime.interpret import interpret
from tests.op_graphs import op_graph

FILE = Path(__file__).with_name("rnn_goldens.npz")
CASES = {
    f"{op}-{tag}": (op, Sample(((2, 4, 3),), {"units": 3, **attrs}))
    for op in ("rnn", "lstm", "gru")
    for tag, attrs in (("last", {}), ("seq", {"return_sequences": True}),
                       ("bi", {"return_sequences": True, "bidirectional": True}),
                       ("bilast", {"bidirectional": True}))
}


def evaluate(op: str, sample: Sample) -> dict:
    """{"out": value, "in:<name>": input, "grad:<name>": d sum(out * cot) / d name}."""
    g, feeds, params, _ = op_graph(op, sample, seed=3)
    g = decompose(g)
    out = g.outputs["out"]
    b = Builder(g)
    shape = [int(d) for d in g.node(out).shape]
    cot = b.const(np.random.default_rng(4).normal(size=shape), "float64")
    loss = b.reduce_sum(b.mul(out, cot), axes=None)
    wrt = {**g.inputs, **g.params}
    grads = backward(g, loss, list(wrt.values()))
    env = interpret(g, feeds, params)
    result = {"out": env[out]}
    for k, v in {**feeds, **params}.items():
        result[f"in:{k}"] = v
        result[f"grad:{k}"] = env[grads[wrt[k]]]
    return result


def main() -> None:
    arrays = {f"{case}/{k}": v for case, (op, sample) in CASES.items()
              for k, v in evaluate(op, sample).items()}
    np.savez(FILE, **arrays)
    print(f"wrote {len(arrays)} arrays to {FILE}")


if __name__ == "__main__":
    main()
