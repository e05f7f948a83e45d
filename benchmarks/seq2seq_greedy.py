"""TEMPORARY greedy decoder for models/seq2seq.nn, until `nnlang generate` lands: reruns the whole
forward pass once per output character (no cache), so it costs target_len forwards per batch.

    python benchmarks/seq2seq_greedy.py RUN_DIR [--limit N]

Prints the exact-match accuracy of greedy decoding on the `dates` test split (whose dates never
occur in training) next to the teacher-forced `exact` metric, and a few decoded examples.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from nnlang.data import chars, load_dataset
from nnlang.train.inference import restore

CHUNK = 500


def greedy(net, source: np.ndarray, tok: dict, length: int) -> np.ndarray:
    """[N, length] ids: position t is the argmax of the logits at t given the ids chosen before
    it (causal attention: what lies after t in decoder_in cannot change position t)."""
    dec = np.full((len(source), length), tok["pad_id"], np.int32)
    dec[:, 0] = tok["start_id"]
    out = np.zeros_like(dec)
    for t in range(length):
        logits = np.asarray(net.forward({"source": source, "decoder_in": dec})["logits"])
        out[:, t] = logits[:, t].argmax(-1)
        if t + 1 < length:
            dec[:, t + 1] = out[:, t]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--limit", type=int, default=None, help="decode only the first N examples")
    ap.add_argument("--backend", default="numba")
    args = ap.parse_args()
    net, ckpt, cfg = restore("models/seq2seq.nn", args.run, args.backend, CHUNK)
    ds = load_dataset("dates", **cfg.data.options)
    tok = ds.meta["tokenizer"]
    test = {k: v[: args.limit] for k, v in ds.test.arrays.items()}
    start = time.perf_counter()
    got = np.concatenate([greedy(net, test["source"][i:i + CHUNK], tok, test["target"].shape[1])
                          for i in range(0, len(test["source"]), CHUNK)])
    seconds = time.perf_counter() - start
    exact = (got == test["target"]).all(1)
    forced = np.concatenate([np.asarray(net.forward(
        {k: test[k][i:i + CHUNK] for k in ("source", "decoder_in")})["logits"]).argmax(-1)
        for i in range(0, len(test["source"]), CHUNK)])
    print(f"greedy exact match: {exact.mean():.4f} ({exact.sum()}/{len(exact)}) in {seconds:.1f}s"
          f"; teacher-forced exact: {(forced == test['target']).all(1).mean():.4f}; "
          f"token accuracy (greedy): {(got == test['target']).mean():.4f}")
    for i in dict.fromkeys([*np.flatnonzero(~exact)[:5].tolist(), 0, 1, 2]):
        src = chars.decode(test["source"][i], tok)
        print(f"  {src!r:34} -> {chars.decode(got[i], tok)}  (want "
              f"{chars.decode(test['target'][i], tok)})")


if __name__ == "__main__":
    main()
