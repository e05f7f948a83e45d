"""Using a trained model: restore a checkpoint into a compiled `Net`, evaluate it on a test
split, and predict from raw inputs (review text, images) with the vocabulary it was saved with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from nnlang.errors import NNError
from nnlang.train import checkpoint, feeds
from nnlang.train.overrides import resolve, source_of
from nnlang.runtime.net import check_backend
from nnlang.train.trainer import evaluate, say


def restore(program_or_path, ckpt_path, backend: str = "numba", batch: int | None = None,
            console: Console | None = None):
    """(net, checkpoint, config) with the checkpoint's parameters and hyper-parameters."""
    from nnlang.runtime.net import Net
    check_backend(backend)
    ckpt = checkpoint.load(ckpt_path)
    program, cfg, source, file, _ = resolve(program_or_path, ckpt.config, None,
                                            ckpt.meta.get("model"),
                                            base_overrides=ckpt.meta.get("overrides"))
    if console and source is not None and ckpt.meta.get("source") not in (None, source):
        say(console, f"note: {file} differs from the source this checkpoint was trained with")
    net = Net(program, backend=backend, batch=batch or cfg.batch, seed=cfg.seed)
    net.config = cfg
    missing = [k for k in net.state if k not in ckpt.state]
    if missing:
        raise NNError(f"{ckpt.path} has no value for parameter(s) {', '.join(missing)}",
                      hint="was it saved from another model?")
    net.load_state_dict({k: v for k, v in ckpt.state.items() if k in net.state})
    return net, ckpt, cfg


def evaluate_checkpoint(program_or_path, ckpt_path, data=None, data_dir=None,
                        backend: str = "numba", batch: int | None = None,
                        console: Console | None = None) -> tuple[str, dict]:
    """(split evaluated, {loss, metrics...}) on the test split of the checkpoint's dataset (or
    `data`); a dataset without a test split falls back to the seeded validation carve."""
    net, ckpt, cfg = restore(program_or_path, ckpt_path, backend, batch, console)
    choice = feeds.replace_data(cfg.data, str(data)) if data is not None else cfg.data
    file = source_of(program_or_path)[1]
    ds = feeds.load_data(choice, data_dir, Path(file).parent if file != "<string>" else None)
    mapping = feeds.match_inputs(net.user, ds.inputs, ds.targets, f"dataset '{ds.name}'")
    if len(ds.test):
        arrays, split = feeds.model_arrays(net.user, ds.test.arrays, mapping), "test"
    else:
        all_train = feeds.model_arrays(net.user, ds.train.arrays, mapping)
        arrays, split = feeds.carve(all_train, cfg.val_split, cfg.seed)[1], "val"
        if not arrays:
            raise NNError(f"dataset '{ds.name}' has no test split and the run used no "
                          "validation split", hint="pass --data with a test split (for .npz: "
                          "train_*/test_* arrays)")
    return split, evaluate(net, arrays, net.batch)


def predict(program_or_path, ckpt_path, inputs: list, backend: str = "numba",
            console: Console | None = None) -> list[dict]:
    """One dict per raw input and model output: {input, output, label, probability, class}.
    Text models take review text (or a .txt path), encoded with the checkpoint's vocabulary;
    image models a .png/.npy path; array models a .npy path."""
    if not inputs:
        raise NNError("predict needs at least one input")
    net, ckpt, cfg = restore(program_or_path, ckpt_path, backend, None, console)
    if not net.user.outputs:
        raise NNError(f"model '{net.program.model}' declares no output to predict",
                      hint="add e.g. `output probs = softmax(logits)`")
    meta = ckpt.data_meta
    batch = feeds.encode_raw(list(inputs), meta, net.user)
    outs = net.forward(batch)
    names = meta.get("class_names")
    results = []
    for oname, value in outs.items():
        for i, (raw, r) in enumerate(zip(inputs, interpret_output(np.asarray(value), names))):
            results.append({"input": str(raw), "output": oname, **r})
    return results


def interpret_output(value: np.ndarray, class_names=None) -> list[dict]:
    """Per example: the class and its probability. One value per example is a binary
    probability (sigmoid applied if it is a logit); a vector is a distribution (softmax applied
    unless it already is one)."""
    per = value.reshape(len(value), -1).astype(np.float64)
    if value.ndim > 2:
        return [{"label": None, "probability": None, "class": None, "value": v.tolist()}
                for v in value]
    out = []
    if per.shape[1] == 1:
        p = per[:, 0]
        if np.any((p < 0) | (p > 1)):
            p = 1 / (1 + np.exp(-p))
        for pi in p:
            c = int(pi >= 0.5)
            out.append((c, float(pi if c else 1 - pi)))
    else:
        probs = per
        if np.any(per < 0) or not np.allclose(per.sum(1), 1, atol=1e-3):
            e = np.exp(per - per.max(1, keepdims=True))
            probs = e / e.sum(1, keepdims=True)
        out = [(int(np.argmax(q)), float(np.max(q))) for q in probs]
    return [{"label": class_names[c] if class_names and c < len(class_names) else str(c),
             "probability": p, "class": c} for c, p in out]
