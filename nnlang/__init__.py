"""nnlang: a readable compiler for neural networks.

    import nnlang
    net = nnlang.compile("models/mlp.nn", backend="numba", batch=128)
    loss = net.train_step({"image": x, "label": y})
    probs = net.forward({"image": x})["probs"]

The CLI and users import only what is listed in `__all__`.
"""
from __future__ import annotations

from nnlang.errors import NNError

__version__ = "0.1.0"
__all__ = ["NNError", "load", "compile", "__version__"]


def load(source_or_path, overrides: dict | None = None, model: str | None = None):
    """Parses, elaborates and shape-checks a .nn file or source text; returns a `Program`
    (`.graph` is the checked user-level graph, `.train` the resolved train section)."""
    from nnlang.frontend.elaborate import load as _load
    return _load(source_or_path, overrides, model)


def compile(model, backend: str = "numba", batch: int | None = None, dtype: str = "float32",
            seed: int | None = None, overrides: dict | None = None, disable=()):
    """Compiles a model (a path, source text or a `Program` from `load`) into a `Net` with
    `train_step(feeds)`, `forward(feeds)`, `evaluate(feeds)` and `parameters()`.
    `disable` switches graph passes off by name (e.g. ("fuse",)) to compare."""
    from nnlang.runtime.net import Net
    program = model if hasattr(model, "graph") else load(model, overrides)
    return Net(program, backend=backend, batch=batch, dtype=dtype, seed=seed, disable=disable)
