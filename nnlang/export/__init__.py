"""Exporting a model for other runtimes: `export_onnx` writes the inference graph, after
nnlang's own decomposition, as an ONNX model (needs the `onnx` extra)."""
from __future__ import annotations

import os
from pathlib import Path

from nnlang.errors import NNError
from nnlang.files import as_path


def export_onnx(model, checkpoint=None, path=None, overrides: dict | None = None,
                model_name: str | None = None, console=None):
    """The ONNX `ModelProto` of `model` (a .nn path, source text, a `Program`, or a compiled
    `Net` with its current weights), written to `path` when given. `checkpoint` (a run
    directory or .npz, resolved as `nnlang eval` does) gives the weights; without one a `Net`'s
    own, or a fresh initialization. `overrides` and `model_name` choose what a path or source
    text loads; a checkpoint, a Program or a Net has its own, and others are an error. With a
    rich `console`, a run directory's choice of checkpoint is said there, as `nnlang eval` says
    it. `path` may not be the model file or the checkpoint it reads."""
    try:
        from nnlang.export.onnx_model import build_model
    except ModuleNotFoundError as err:
        if err.name not in ("onnx", "google", "google.protobuf"):
            raise
        raise NNError("ONNX export needs the onnx package",
                      hint="pip install 'nnlang[onnx]'") from None
    if path is not None:   # NOTE: before the slow work, as the CLI's `-o` checks it
        path = as_path(path, "export_onnx(path=...)", "the .onnx file to write")
        _refuse_overwrite(model, checkpoint, path)
    net = _weights_of(model, checkpoint, overrides, model_name, console)
    from nnlang.passes.pipeline import retype
    # NOTE: in the net's own dtype: a float64 net exported float32 weights and outputs
    proto = build_model(retype(net.user, net.dtype), net.parameters())
    if path is not None:
        _write(proto, path)
    return proto


def describe(proto) -> str:
    """One line about an exported model: its inputs, outputs, opset and size in nodes."""
    def io(values):
        return ", ".join(f"{v.name} {_type_text(v.type.tensor_type)}" for v in values)
    g = proto.graph
    opset = max(o.version for o in proto.opset_import)
    return (f"inputs {io(g.input)}; outputs {io(g.output)}; opset {opset}, {len(g.node)} nodes, "
            f"{len(g.initializer)} initializers")


def _type_text(t) -> str:
    from onnx import helper
    # NOTE: a dim with neither a name nor a size is unknown, not 0
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
            for d in t.shape.dim]
    return f"{helper.tensor_dtype_to_np_dtype(t.elem_type)}[{', '.join(dims)}]"


def _weights_of(model, checkpoint, overrides, model_name, console=None):
    from nnlang.runtime.net import Net
    if isinstance(model, Net):
        if checkpoint is not None:
            raise NNError("pass a checkpoint or a compiled net, not both")
        _same_as_trained(model, overrides, model_name, "this compiled net")
        return model
    if checkpoint is not None:
        from nnlang.train.inference import restore
        net = restore(model, checkpoint, backend="reference", console=console,
                      optimizer=False)[0]
        _same_as_trained(net, overrides, model_name, "its checkpoint")
        return net
    from nnlang.frontend.elaborate import Program, load
    if isinstance(model, Program):
        # NOTE: a Program is built already: overrides that would change it were dropped
        net = Net(model, backend="reference", batch=1)
        _same_as_trained(net, overrides, model_name, "this Program")
        return net
    return Net(load(model, overrides, model_name), backend="reference", batch=1)


def _same_as_trained(net, overrides, model_name, holder: str) -> None:
    """A checkpoint, a compiled net or a Program (`holder`) fixes the model and its
    hyper-parameters: asking for others is an error, not a file of that model under another
    name."""
    from nnlang.frontend.elaborate import checked_overrides
    if model_name is not None and model_name != net.program.model:
        raise NNError(f"{holder} holds model '{net.program.model}', not '{model_name}'",
                      hint="leave model_name out, or pass " + (
                          "a checkpoint of that model" if "checkpoint" in holder else
                          "the .nn path or source to build that model from"))
    hp = net.program.hparams
    other = [k for k, v in checked_overrides(overrides).items()
             if hp.get(k, v) != v or k not in hp]
    if other:
        trained = ", ".join(f"{k} = {hp[k]!r}" if k in hp else f"no {k}" for k in other)
        raise NNError(f"overrides cannot change a model that is built already: {holder} has "
                      f"{trained}", hint="leave overrides out: its own values are used" + (
                          "" if "checkpoint" in holder else
                          "; or pass them to nnlang.load or nnlang.compile"))


def _refuse_overwrite(model, checkpoint, path) -> None:
    from nnlang.frontend.source import is_source_text
    from nnlang.train.checkpoint import refuse_overwrite
    reads = {} if checkpoint is None else {"the checkpoint": checkpoint}
    if isinstance(model, (str, os.PathLike)) and not is_source_text(model):
        reads["the model file"] = model
    refuse_overwrite(path, reads, flag="path", reader="export_onnx")


def _write(proto, path: Path) -> None:
    from nnlang.files import write_atomic
    try:
        write_atomic(path, proto.SerializeToString())
    except OSError as err:
        raise NNError(f"cannot write {path}: {err.strerror or err}",
                      hint="check the folder exists and is writable") from None


__all__ = ["describe", "export_onnx"]
