"""Golden values for every model in models/: forward outputs, the loss, every gradient, and the
parameters after 3 optimizer steps, at a fixed seed on small deterministic inputs.

Regenerate (and review the printed differences) with:

    python -m tests.golden_values            # writes tests/golden/values/<model>.npz

The values come from the reference interpreter (`backend="reference"`); tests check both it and
the compiled backends against them, so a kernel change that alters any number fails loudly.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import nnlang

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "values"
BATCH, STEPS, LENGTH = 2, 3, 6

# NOTE: shrunk hyper-parameters keep the unrolled recurrences and the interpreter fast; the
# architecture (and every op on its path) is the same as the full model's.
OVERRIDES = {
    "mlp": {"hidden1": 32, "hidden2": 16},
    "cnn": {},
    "lstm": {"vocab": 50, "maxlen": 12, "embed": 8, "units": 8},
    "gru": {"vocab": 50, "maxlen": 12, "embed": 8, "units": 8},
    # NOTE: no dropout: the gradients are checked against finite differences of the
    # evaluation loss (dropout's own gradient is checked on its op's samples)
    "lstm_full": {"vocab": 50, "embed": 8, "units": 8, "dropout": 0.0},
    "conv1d": {"vocab": 50, "maxlen": 12, "embed": 8, "filters": 8, "width": 3},
    "transformer": {"vocab": 50, "maxlen": 10, "embed": 16, "heads": 2, "ffn": 32},
    "gpt": {"vocab": 50, "maxlen": 10, "dim": 16, "heads": 2, "ffn": 32},
    "seq2seq": {"vocab": 8, "src_len": 6, "tgt_len": 4, "dim": 16, "heads": 2, "ffn": 32},
    "seq2seq_lstm": {"vocab": 8, "src_len": 6, "tgt_len": 4, "embed": 8, "units": 8},
    "vae": {"hidden": 16},
}
# models whose training loss draws fresh noise (a VAE's eps), so finite differences of the
# evaluation loss are not its gradient; the reparameterization's gradient is checked with a
# fixed key in tests/test_autodiff.py
NOISY = {"vae"}


def models() -> list[str]:
    return sorted(p.stem for p in (ROOT / "models").glob("*.nn"))


def feeds_for(program, seed: int = 0) -> dict:
    """Deterministic inputs: ids and labels in [0, 2) fit any vocabulary or class count."""
    rng = np.random.default_rng(seed)
    g = program.graph
    out = {}
    for name, nid in g.inputs.items():
        node = g.node(nid)
        # NOTE: a symbolic length other than batch gets LENGTH, so the padded rows still hold
        # real tokens
        shape = [d if isinstance(d, int) else BATCH if str(d) == "batch" else LENGTH
                 for d in node.shape]
        if node.dtype.startswith("int"):
            out[name] = rng.integers(0, 2, size=shape).astype(node.dtype)
            if name == "tokens":  # real ids, with padding at the front as the loader makes
                out[name] = rng.integers(2, 50, size=shape).astype(node.dtype)
                out[name][:, :2] = 0
        elif name == "label":
            out[name] = rng.integers(0, 2, size=shape).astype(node.dtype)
        else:
            out[name] = rng.normal(size=shape).astype(node.dtype)
    return out


def compute(model: str, backend: str = "reference", dtype: str = "float32") -> dict:
    program = nnlang.load(ROOT / "models" / f"{model}.nn", OVERRIDES.get(model, {}))
    feeds = feeds_for(program)
    net = nnlang.compile(program, backend=backend, batch=BATCH, seed=0, dtype=dtype)
    values = {f"feed:{k}": v for k, v in feeds.items()}
    values.update({f"out:{k}": v for k, v in net.forward(feeds).items()})
    values.update({f"grad:{k}": v for k, v in net.gradients(feeds).items()})
    losses = [net.train_step(feeds) for _ in range(STEPS)]
    values["loss"] = np.asarray(losses, dtype)
    values.update({f"param:{k}": v for k, v in net.parameters().items()})
    return values


def main(argv: list[str]) -> int:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for model in argv or models():
        path = GOLDEN / f"{model}.npz"
        new = compute(model)
        if path.exists():
            old = dict(np.load(path))
            for k in sorted(set(old) | set(new)):
                if k not in old or k not in new:
                    print(f"{model}: {k} {'added' if k in new else 'removed'}")
                elif old[k].shape != new[k].shape or not np.allclose(old[k], new[k], 1e-6, 1e-7):
                    print(f"{model}: {k} changed (max diff "
                          f"{np.max(np.abs(old[k] - new[k])) if old[k].shape == new[k].shape else 'shape'})")
        np.savez_compressed(path, **new)
        print(f"wrote {path.relative_to(ROOT)} ({len(new)} arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
