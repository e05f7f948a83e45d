"""What a nested scan's outer step costs beyond its inner steps. The outer loop of a scan whose
body runs a scan is a Python loop (runtime/scan.py: the numba driver generates a loop only
over calls it can generate, and the inner scan's is a Python closure); a flat scan's loop is
generated code.

    python benchmarks/nested_scan.py [--lengths 8,264] [--rounds 30]

A sentence loop over 3-word sentences (a word-level Elman cell inside), against the same cell
as a flat scan over the words: each time per step is the slope between the two lengths (the
best of --rounds calls each), so fixed costs cancel; the difference is the outer step's own.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

WORD = """
block Word(x, h, w, u) {
  h2 = tanh(x @ w + h @ u)
  return h2, h2
}
"""
NESTED = WORD + """
block Sentence(words, h, w, u) {
  hs, hw = scan Word(h, w = w, u = u) over reshape(words, shape = [-1, 3, 2])
  h2 = tanh(hw + h)
  return h2, h2
}
model Nested {
  symbol sents
  input x: float64[batch, sents, 6]
  input h0: float64[batch, 4]
  param w: float64[2, 4]
  param u: float64[4, 4]
  ys, h = scan Sentence(h0, w = w, u = u) over x
  output ys
  loss mean(ys * ys)
}
"""
FLAT = WORD + """
model Flat {
  symbol words
  input x: float64[batch, words, 2]
  input h0: float64[batch, 4]
  param w: float64[2, 4]
  param u: float64[4, 4]
  hs, h = scan Word(h0, w = w, u = u) over x
  output hs
  loss mean(hs * hs)
}
"""


def _slopes(net, features: int, lengths, rounds: int) -> dict:
    """Microseconds per step of `net`'s forward and train step: the slope between lengths."""
    rng = np.random.default_rng(0)
    out = {}
    for kind in ("forward", "train_step"):
        best = []
        for n in lengths:
            feeds = {"x": rng.normal(size=(2, n, features)), "h0": rng.normal(size=(2, 4))}
            call = getattr(net, kind)
            call(feeds)
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                call(feeds)
                times.append(time.perf_counter() - start)
            best.append(min(times))
        out[kind] = (best[1] - best[0]) / (lengths[1] - lengths[0]) * 1e6
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="8,264", help="two outer lengths, short,long")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    import nnlang
    lengths = [int(n) for n in args.lengths.split(",")]
    kw = dict(dtype="float64", batch=2, seed=1, backend="numba")
    nested = _slopes(nnlang.compile(NESTED, **kw), 6, lengths, args.rounds)
    flat = _slopes(nnlang.compile(FLAT, **kw), 2, [3 * n for n in lengths], args.rounds)
    for kind in nested:
        print(f"{kind}: {nested[kind]:.1f} us a sentence (3 words), {flat[kind]:.2f} us a "
              f"word of a flat scan: {nested[kind] - 3 * flat[kind]:.1f} us an outer step "
              "beyond its inner steps")


if __name__ == "__main__":
    main()
