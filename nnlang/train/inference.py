"""Using a trained model: restore a checkpoint into a compiled `Net`, evaluate it on a test
split, and predict from raw inputs (review text, images) with the vocabulary it was saved with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from nnlang.errors import NNError
from nnlang.runtime.net import check_backend
from nnlang.train import checkpoint, feeds
from nnlang.train.overrides import resolve, source_of
from nnlang.train.progress import say
from nnlang.train.trainer import evaluate


def restore(program_or_path, ckpt_path, backend: str = "numba", batch: int | None = None,
            console: Console | None = None):
    """(net, checkpoint, config) with the checkpoint's parameters and hyper-parameters. A run
    directory gives its best.npz when it has one (the best epoch), else its checkpoint.npz."""
    from nnlang.runtime.net import Net
    check_backend(backend)
    ckpt = checkpoint.load(ckpt_path, prefer_best=True)
    if console and Path(ckpt_path).is_dir():
        best = ckpt.meta.get("best") if ckpt.path.name == checkpoint.BEST else None
        why = f" (best {best['monitor']} {best['value']:.4f}, epoch {best['epoch']})" \
            if best else ""
        say(console, f"using {ckpt.path}{why}")
    try:
        program, cfg, source, file, _ = resolve(program_or_path, ckpt.config, None,
                                                ckpt.meta.get("model"),
                                                base_overrides=ckpt.meta.get("overrides"))
    except NNError as err:
        if len(err.diagnostics) > 1 or err.span is not None:
            raise  # NOTE: an error in the .nn file itself: its own words say where
        raise NNError(f"{ckpt.path} holds model '{ckpt.meta.get('model')}' (trained from "
                      f"{ckpt.meta.get('file')}), which {source_of(program_or_path)[1]} cannot "
                      f"give: {err.message}", hint="pass the .nn file the checkpoint was "
                      "trained from") from None
    if console and source is not None and ckpt.meta.get("source") not in (None, source):
        say(console, f"note: {file} differs from the source this checkpoint was trained with")
    net = Net(program, backend=backend, batch=batch or cfg.batch, seed=cfg.seed)
    net.config = cfg
    missing = [k for k in net.state if k not in ckpt.state]
    # NOTE: every mismatch at once, so a checkpoint of another model is plain from one error
    wrong = [f"{k} {list(ckpt.state[k].shape)} (the model's: {list(v.shape)})"
             for k, v in net.state.items() if k in ckpt.state and ckpt.state[k].shape != v.shape]
    if missing or wrong:
        why = ([f"no value for parameter(s) {', '.join(missing)}"] if missing else []) + \
              ([f"other shapes for {', '.join(wrong)}"] if wrong else [])
        raise NNError(f"{ckpt.path} does not fit model '{net.program.model}': "
                      + "; ".join(why), hint="was it saved from another model or with other "
                                              "--set values?")
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
        arrays = feeds.train_and_val(net.user, ds, mapping, cfg.val_split, cfg.seed)[1]
        split = "val"
        if not arrays:
            raise NNError(f"dataset '{ds.name}' has no test split and the run used no "
                          "validation split", hint="pass --data with a test split (for .npz: "
                          "train_*/test_* arrays)")
    return split, evaluate(net, arrays, net.batch, console)


def predict(program_or_path, ckpt_path, inputs: list, backend: str = "numba",
            console: Console | None = None) -> list[dict]:
    """One dict per raw input and model output: {input, output, kind, ...}. Text models take
    review text (or a .txt path), encoded with the checkpoint's vocabulary; image models a
    .png/.npy path; array models a .npy path. The kind comes from the graph (`output_kind`):
    "class" and "binary" add label, probability and class; "value" and "tensor" add value
    (the numbers, as lists) and shape."""
    if not inputs:
        raise NNError("predict needs at least one input")
    net, ckpt, cfg = restore(program_or_path, ckpt_path, backend, None, console)
    if not net.user.outputs:
        raise NNError(f"model '{net.program.model}' declares no output to predict",
                      hint="add e.g. `output probs = softmax(logits)`")
    meta = ckpt.data_meta
    if meta.get("kind") == "text":
        _no_files_for_text(inputs)
    batch = feeds.encode_raw(list(inputs), meta, net.user)
    outs = net.forward(batch)
    names = meta.get("class_names")
    results = []
    for oname, value in outs.items():
        value = np.asarray(value)
        kind, logits = output_kind(net.user, net.user.outputs[oname], value)
        for raw, r in zip(inputs, interpret_output(value, kind, logits, names)):
            results.append({"input": str(raw), "output": oname, "kind": kind, **r})
    return results


# files a text model would otherwise read as the words of their name
_NOT_TEXT = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".npy", ".npz", ".csv", ".nn")


def _no_files_for_text(inputs) -> None:
    for raw in inputs:
        if Path(str(raw)).suffix.lower() in _NOT_TEXT and "\n" not in str(raw):
            raise NNError(f"'{raw}' looks like a file, but this model reads text",
                          hint="pass the review text itself, or a .txt file that holds it")


# an output whose value per example has at most this many numbers is printed whole
VALUE_NUMBERS = 16
# ops that change a tensor's shape, not its meaning: looked through when matching a loss's input
_SAME = ("squeeze", "reshape", "flatten", "expand_dims", "identity")


def output_kind(graph, nid: int, value: np.ndarray) -> tuple[str, bool]:
    """(kind, logits): what an output is, from the losses it was trained with (never from its
    numbers): "class" (cross_entropy's logits, or their softmax: one class per example),
    "binary" (bce_with_logits' logit or its sigmoid, bce's probability), else "value"
    (regression) or, past VALUE_NUMBERS numbers per example, "tensor". `logits`: the output
    is the loss's raw input (softmax / sigmoid still to apply)."""
    def through(n):
        while graph.node(n).op in _SAME:
            n = graph.node(n).inputs[0]
        return n
    trained = {}
    for loss_nid in graph.losses.values():
        node = graph.node(loss_nid)
        if node.op in ("cross_entropy", "bce_with_logits", "bce"):
            trained[through(node.inputs[0])] = node.op
    node = graph.node(through(nid))
    per = value.reshape(len(value), -1).shape[1] if value.ndim else 1
    op = trained.get(through(nid))
    if op is None and node.op in ("softmax", "sigmoid"):
        inner = trained.get(through(node.inputs[0]))
        op = {("softmax", "cross_entropy"): "softmax",
              ("sigmoid", "bce_with_logits"): "sigmoid"}.get((node.op, inner))
    logits = op in ("cross_entropy", "bce_with_logits")
    if op in ("cross_entropy", "softmax") and value.ndim == 2:
        return "class", logits
    if op in ("bce_with_logits", "bce", "sigmoid") and per == 1:
        return "binary", logits
    return ("value" if per <= VALUE_NUMBERS else "tensor"), False


def interpret_output(value: np.ndarray, kind: str, logits: bool = False,
                     class_names=None) -> list[dict]:
    """Per example: for "class" and "binary" the label, its probability and class id
    (softmax / sigmoid applied to logits: the graph says which the output is); otherwise the
    numbers and their shape."""
    if kind not in ("class", "binary"):
        return [{"value": np.asarray(v).tolist(), "shape": list(np.shape(v))} for v in value]
    per = value.reshape(len(value), -1).astype(np.float64)
    probs = per
    if kind == "binary":
        p = 1 / (1 + np.exp(-per[:, 0])) if logits else per[:, 0]
        out = [(int(pi >= 0.5), float(pi if pi >= 0.5 else 1 - pi)) for pi in p]
    else:
        if logits:
            e = np.exp(per - per.max(1, keepdims=True))
            probs = e / e.sum(1, keepdims=True)
        out = [(int(np.argmax(q)), float(np.max(q))) for q in probs]
    return [{"label": class_names[c] if class_names and c < len(class_names) else str(c),
             "probability": p, "class": c} for c, p in out]
