"""The tiny three-class model and its data that the training-loop, CLI, fault and signal tests
train: fast on every backend, and its labels follow from the inputs (the model can learn)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_source(optimizer: str = "adam(lr = 0.05)", val_split: float | None = 0.2) -> str:
    split = "" if val_split is None else f"\n  val_split = {val_split}"
    return f"""
model Tiny(hidden = 8, classes = 3) {{
  input x: float32[batch, 4]
  input label: int32[batch]
  h = dense(x, hidden) |> relu
  logits = dense(h, classes)
  output probs = softmax(logits)
  loss cross_entropy(logits, label)
  metric acc = accuracy(logits, label)
}}
train Tiny {{
  data = "tiny.npz"
  optimizer = {optimizer}
  batch = 4
  epochs = 2{split}
}}
"""


def tiny_data(folder: Path, total: int = 61, train: int = 52) -> np.ndarray:
    """Writes folder/tiny.npz (`train` training and the rest test examples of `total`); returns
    the inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(total, 4)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)).astype(np.int32)
    np.savez(Path(folder) / "tiny.npz", train_x=x[:train], train_label=y[:train],
             test_x=x[train:], test_label=y[train:])
    return x
