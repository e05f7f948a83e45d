"""Graph leaves: model inputs, trained parameters and constants."""
from __future__ import annotations

from nnlang.ops.registry import NONDIFF, SOURCE, TensorType, register

register("input", "name: str, dtype: dtype, shape: shape",
         lambda *, name, dtype, shape: TensorType(tuple(shape), dtype),
         doc="A value fed from outside (declared with `input x: float32[batch, 10]`).",
         family="source", traits={SOURCE, NONDIFF}, onnx=lambda e, n: e.graph_input(n))

register("param", "name: str, dtype: dtype = 'float32', shape: shape = [], init: init = none,"
         " trainable: bool = true",
         lambda *, name, dtype, shape, init, trainable: TensorType(tuple(shape), dtype),
         doc="A trained weight; its name is its block path, e.g. `encoder.0.attn.wq`.",
         family="source", traits={SOURCE}, onnx=lambda e, n: e.param(n))

register("const", "value: any",
         lambda *, value: TensorType(tuple(value.shape), str(value.dtype)),
         doc="A constant array folded into the graph.", family="source",
         traits={SOURCE, NONDIFF}, impl=lambda *, value: value,
         onnx=lambda e, n: e.const(n.attrs["value"]))
