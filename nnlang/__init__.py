"""nnlang: a readable compiler for neural networks.

    import nnlang
    net = nnlang.compile("models/mlp.nn", backend="numba", batch=128)
    loss = net.train_step({"image": x, "label": y})
    logits = net.forward({"image": x})["logits"]

The CLI and users import only what is listed in `__all__`.
"""
from __future__ import annotations

from nnlang.errors import NNError

__version__ = "0.1.0"
__all__ = ["NNError", "load", "compile", "save", "restore", "emit", "dot", "pass_switches",
           "export_onnx", "__version__"]


def load(source_or_path, overrides: dict | None = None, model: str | None = None):
    """Parses, elaborates and shape-checks a .nn file or source text; returns a `Program`
    (`.graph` is the checked user-level graph, `.train` the resolved train section)."""
    from nnlang.frontend.elaborate import Program
    from nnlang.frontend.elaborate import load as _load
    if isinstance(source_or_path, Program):
        # NOTE: as compile takes one; its error's hint said to pass a Program, which it was
        _built_already(overrides, model)
        return source_or_path
    return _load(source_or_path, overrides, model)


def _built_already(overrides, model_name) -> None:
    if overrides or model_name:
        raise NNError("overrides and model_name apply when a model is built from its source"
                      "; this Program is built already",
                      hint="pass them to nnlang.load(source, overrides, model), or pass "
                           "the path or source text to nnlang.compile")


def compile(model, backend: str = "numba", batch: int | None = None, dtype: str | None = None,
            seed: int | None = None, overrides: dict | None = None, disable=(),
            init_from=None, init_skip_mismatch: bool = False, total_steps: int = 0,
            model_name: str | None = None, steps_per_epoch: int | None = None):
    """Compiles a model (a path, source text or a `Program` from `load`) into a `Net` with
    `train_step(feeds)`, `forward(feeds)`, `evaluate(feeds)` and `parameters()`.
    `disable` switches graph passes off by name (e.g. ("fuse",)) to compare. `init_from` (a run
    directory or checkpoint; default the train section's `init_from`, False for none) loads
    the parameters that match by name and shape; what was loaded, skipped and left fresh is in
    `net.init_report`. `total_steps`: the length of the training run, over which a cosine
    schedule decays. `steps_per_epoch` (the data's size over the batch): `train_step` advances
    `net.epoch` itself, for the schedules that move per epoch, and `total_steps` defaults to
    the train section's epochs times it. `model_name` picks one model of a file that defines
    several; `overrides` set its hyper-parameters (for a `Program`, pass them to `load`, which
    builds it). `dtype`: "float32" or "float64" for every float32 value of the model;
    default float64 for a model that declares all its float inputs and weights float64, else
    float32."""
    from nnlang.backends.worker_start import early
    # NOTE: on a cold cache the compile worker starts now, its warm-up beside the imports
    # and the parse below
    with early(backend == "numba"):
        import warnings

        from nnlang.errors import NNWarning
        from nnlang.files import as_bool
        from nnlang.frontend.elaborate import Program
        from nnlang.runtime.net import Net
        # NOTE: before the compile, which a truthy "no" would otherwise wait for
        init_skip_mismatch = as_bool(init_skip_mismatch, "compile(init_skip_mismatch=...)")
        if isinstance(model, Program):  # NOTE: not hasattr "graph": a Net has a graph() too
            _built_already(overrides, model_name)
            program = model
        else:
            program = load(model, overrides, model_name)
            # NOTE: what `nnlang check` and `train` print (a softmax fed to cross_entropy): a
            # Python loop was told nothing; a `Program` from `load` holds them in `.warnings`
            for diagnostic in program.warnings:
                warnings.warn(diagnostic.render(), NNWarning, stacklevel=2)
        net = Net(program, backend=backend, batch=batch, dtype=dtype, seed=seed, disable=disable,
                  total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        if not isinstance(model, Program):   # NOTE: net.generate does not say them again
            net.shown_warnings = {diagnostic.render() for diagnostic in program.warnings}
        net.init_report = None
        if init_from is not False:
            from nnlang.train.init_from import from_program
            net.init_report = from_program(net, init_from, init_skip_mismatch)
    return net


def save(net, path, data=None):
    """Writes a compiled `Net` as a checkpoint the CLI reads (`nnlang eval`, `predict`,
    `generate`, `export`, `train --resume` and `--init-from`, and `nnlang.restore`): its
    weights, optimizer state, step, epoch and lr_scale, and the model's source, name, overrides,
    train settings and dtype. `path`: a folder (it then holds `checkpoint.npz` and `config.json`,
    as a run directory does; saving again there replaces the save) or a `.npz` file. Returns
    the checkpoint file. A text model's vocabulary is not the net's to know: pass `data`, the
    `Dataset` (or its name) the loop was fed from; without it the commands that would encode
    text say what is missing."""
    from nnlang.train.saved import save as _save
    return _save(net, path, data)


def restore(model, checkpoint, backend: str = "numba", batch: int | None = None):
    """The `Net` of a trained run: `model` (the .nn path or source it was trained from) built
    with the run's overrides and train settings, and `checkpoint`'s parameters and optimizer
    state loaded. A run directory gives its best.npz when it has one, else its checkpoint.npz
    (as `nnlang eval`, `predict` and `generate` do)."""
    from nnlang.train.inference import restore as _restore
    return _restore(model, checkpoint, backend, batch)[0]


def emit(net, what: str, mode: str | None = None) -> str:
    """Text views of a compiled model: "user" (the checked graph), "ir" (the optimized graph),
    "backward" (the generated backward pass and update), "fused" (kernel groups), "kernels"
    (generated source) or "summary" (compile time and kernel counts). `mode`: "train",
    "eval" or "predict" (default: train, or predict for a model with no loss)."""
    from nnlang.runtime.emit import emit as _emit
    return _emit(net, what, mode)


def dot(net, backward: bool = False, fused: bool = False, depth: int | None = None,
        show_params: bool = False, title: str | None = None) -> str:
    """Graphviz DOT text of a compiled model's train graph: with `backward` the generated
    backward pass beside the forward one; with `fused` each kernel drawn as a cluster."""
    from nnlang.runtime.emit import dot as _dot
    return _dot(net, backward, fused, depth, show_params, title)


def export_onnx(model, checkpoint=None, path=None, overrides: dict | None = None,
                model_name: str | None = None):
    """The model's inference graph as an ONNX `ModelProto` (opset 17, symbolic batch, the
    weights inside), written to `path` when given. `model`: a .nn path, source text, a
    `Program` or a compiled `Net` (its current weights); `checkpoint`: a run directory or .npz
    whose weights to use (default: the Net's own, or a fresh initialization). Needs the `onnx`
    extra (pip install 'nnlang[onnx]')."""
    from nnlang.export import export_onnx as _export
    return _export(model, checkpoint, path, overrides, model_name)


def pass_switches() -> dict[str, str]:
    """The optimizer passes that `compile(..., disable=)` switches off, each with what switching
    it off does (the `nnlang compile --no-<pass>` flags)."""
    from nnlang.passes.optimize import SWITCH_HELP
    return dict(SWITCH_HELP)
