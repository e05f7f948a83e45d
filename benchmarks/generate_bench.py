"""Generation speed of models/gpt.nn: nnlang's compiled prefill + KV-cache step graphs against a
PyTorch twin with its own KV cache (same weights; both must produce the same greedy tokens), at
batch 1 and 16, paired in one run; and the linearity check (256 tokens cost about twice 128).

    python benchmarks/generate_bench.py [-c RUN] [--rounds 3] [--backend numba] [--out r.json]

Without -c the weights are the model's random initialization (speed does not depend on them).
The model is built with maxlen = 288 so that a 16-character prompt plus 256 new tokens fit.
Times exclude compilation (one warm-up generation per shape first); each figure is the median
of `--rounds` runs, nnlang and PyTorch alternating. With `--backend cupy` the twin runs on
the same GPU (on the CPU, with a note, where this PyTorch has no CUDA).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "This movie was a"   # 16 characters
MAXLEN = 288


def build(ckpt, backend):
    from nnlang.data.chars import CharTokenizer
    from nnlang.frontend.elaborate import load
    from nnlang.runtime.net import Net
    from nnlang.train import checkpoint
    saved = checkpoint.load(ckpt, prefer_best=True) if ckpt else None
    # NOTE: the run's own hyper-parameters (a `--set layers=1` run): built from the file's, its
    # weights filled only the layers they share and the rest stayed random, without a word
    overrides = {**((saved.meta.get("overrides") or {}) if saved else {}), "maxlen": MAXLEN}
    program = load(str(ROOT / "models" / "gpt.nn"), overrides=overrides)
    net = Net(program, backend=backend, batch=1)
    if saved:
        state = saved.state
        missing = sorted(set(net.state) - set(state))
        if missing:
            raise SystemExit(f"error: {ckpt} has no weights {', '.join(missing[:4])}: it is not "
                             "a models/gpt.nn run")
        for k, v in state.items():
            if k in net.state:
                if k == "h.weight":   # learned positions: the trained rows, the rest as is
                    net.state[k][: len(v)] = v
                else:
                    np.copyto(net.state[k], v)
    chars = "".join(chr(c) for c in range(32, 127)) + "\n" + "".join(
        chr(c) for c in range(0xC0, 0xC0 + program.hparams["vocab"] - 98))
    return net, CharTokenizer(chars[: program.hparams["vocab"] - 2])


class TorchGpt:
    """The same pre-norm decoder, with key/value caches preallocated to MAXLEN."""

    def __init__(self, state: dict, hp: dict, device: str = "cpu"):
        import torch
        self.t, self.device = torch, device
        self.w = {k: torch.from_numpy(np.array(v, np.float32)).to(device)
                  for k, v in state.items()}
        self.hp = hp

    def _ln(self, x, name):
        return self.t.nn.functional.layer_norm(x, x.shape[-1:], self.w[f"{name}.gamma"],
                                               self.w[f"{name}.beta"], 1e-5)

    def _attn(self, x, i, cache, pos):
        w, H = self.w, self.hp["heads"]
        B, T, D = x.shape
        dh = D // H
        def proj(n):
            return (x @ w[f"h.{i}.a.w{n}"] + w[f"h.{i}.a.b{n}"]).view(B, T, H, dh).transpose(1, 2)
        q, k, v = proj("q"), proj("k"), proj("v")
        kc, vc = cache[i]
        kc[:, :, pos:pos + T] = k
        vc[:, :, pos:pos + T] = v
        keys, vals = kc[:, :, :pos + T], vc[:, :, :pos + T]
        scores = (q @ keys.transpose(-1, -2)) / math.sqrt(dh)
        mask = self.t.ones(T, pos + T, dtype=self.t.bool, device=self.device).triu(1 + pos)
        probs = scores.masked_fill(mask, -1e9).softmax(-1)
        ctx = (probs @ vals).transpose(1, 2).reshape(B, T, D)
        return ctx @ w[f"h.{i}.a.wo"] + w[f"h.{i}.a.bo"]

    def forward(self, tokens, pos, cache):
        w = self.w
        x = w["x.weight"][tokens] + w["h.weight"][pos:pos + tokens.shape[1]]
        for i in range(self.hp["layers"]):
            x = x + self._attn(self._ln(x, f"h.{i}.layer_norm"), i, cache, pos)
            f = self._ln(x, f"h.{i}.layer_norm_1") @ w[f"h.{i}.dense.weight"] + \
                w[f"h.{i}.dense.bias"]
            f = self.t.nn.functional.gelu(f) @ w[f"h.{i}.f.weight"] + w[f"h.{i}.f.bias"]
            x = x + f
        return self._ln(x, "layer_norm") @ w["logits.weight"] + w["logits.bias"]

    def greedy(self, prompt_ids, batch, new):
        t, hp = self.t, self.hp
        with t.no_grad():
            dh = hp["dim"] // hp["heads"]
            cache = [(t.zeros(batch, hp["heads"], MAXLEN, dh, device=self.device),
                      t.zeros(batch, hp["heads"], MAXLEN, dh, device=self.device))
                     for _ in range(hp["layers"])]
            tokens = t.tensor([prompt_ids] * batch, device=self.device)
            logits = self.forward(tokens, 0, cache)[:, -1]
            out, pos = [], len(prompt_ids)
            for step in range(new):
                logits[:, 0] = -float("inf")   # padding is never produced (as in nnlang)
                nxt = logits.argmax(-1)
                out.append(nxt)
                if step + 1 == new:
                    break
                logits = self.forward(nxt[:, None], pos, cache)[:, -1]
                pos += 1
            return t.stack(out, 1).tolist()


def nnlang_greedy(net, tok, batch, new):
    return [s.ids for s in net.generate([PROMPT] * batch, max_new=new, greedy=True,
                                        tokenizer=tok).samples]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--checkpoint", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: its own)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--lengths", default="128,256", help="new tokens per run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    try:
        import torch
    except ImportError as err:
        raise SystemExit(f"error: benchmarks/generate_bench.py compares with a PyTorch twin and "
                         f"needs PyTorch ({err})\n  hint: pip install torch") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    # NOTE: a cupy run is compared with PyTorch on the same GPU where this PyTorch has CUDA
    device = "cuda" if args.backend == "cupy" and torch.cuda.is_available() else "cpu"
    if args.backend == "cupy" and device == "cpu":
        print("note: this PyTorch has no CUDA: its twin runs on the CPU", flush=True)
    net, tok = build(args.checkpoint, args.backend)
    twin = TorchGpt(net.state, {**net.program.hparams, "maxlen": MAXLEN}, device)
    ids = tok.encode(PROMPT)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results = {"device": "gpu" if args.backend == "cupy" else "cpu", "torch_device": name,
               "backend": args.backend, "prompt_tokens": len(ids), "runs": []}
    for batch in batches:
        for new in lengths:
            ours = nnlang_greedy(net, tok, batch, new)          # warm-up (compiles)
            theirs = twin.greedy(ids, batch, new)
            assert ours == theirs, f"batch {batch}: nnlang and PyTorch tokens differ"
            t_ours, t_theirs = [], []
            for _ in range(args.rounds):
                t_ours.append(timed(lambda: nnlang_greedy(net, tok, batch, new))[0])
                t_theirs.append(timed(lambda: twin.greedy(ids, batch, new))[0])
            a, b = statistics.median(t_ours), statistics.median(t_theirs)
            row = {"batch": batch, "new_tokens": new, "nnlang_s": a, "torch_s": b,
                   "nnlang_tok_s": batch * new / a, "torch_tok_s": batch * new / b,
                   "speedup": b / a, "same_tokens": True}
            results["runs"].append(row)
            print(f"batch {batch:2d}  {new} tokens  nnlang {row['nnlang_tok_s']:8.0f} tok/s  "
                  f"torch {row['torch_tok_s']:8.0f} tok/s  nnlang/torch "
                  f"{row['speedup']:.2f}x  (same greedy tokens)", flush=True)
    for batch in batches if {128, 256} <= set(lengths) else ():
        t = {r["new_tokens"]: r["nnlang_s"] for r in results["runs"] if r["batch"] == batch}
        ratio = t[256] / t[128]
        results[f"linearity_batch{batch}"] = ratio
        print(f"batch {batch:2d}  time(256) / time(128) = {ratio:.2f} (linear: 2.0; the target "
              f"is < {1.3 * 2:.1f})  {'ok' if ratio < 2.6 else 'NOT LINEAR'}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
