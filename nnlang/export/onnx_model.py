"""The inference graph of a model in ONNX: nnlang's own decomposition into primitives, each
written by its registry entry's `onnx=` emitter, with the weights as initializers."""
from __future__ import annotations

import onnx
from onnx import helper

from nnlang.errors import NNError
from nnlang.export.emitter import Emitter, value_info
from nnlang.ir.dims import Sym
from nnlang.ir.graph import Graph, no_output_error
from nnlang.ops.registry import Unexportable
from nnlang.passes.decompose import decompose
from nnlang.passes.pipeline import drop_unused_inputs

OPSET = 17
# NOTE: the IR version that came with opset 17, so runtimes of that age still load the file
IR_VERSION = 8


def inference_graph(user: Graph) -> Graph:
    """The primitive graph of the model's outputs, batch still symbolic, dropout off; inputs
    that only feed losses and metrics (labels) are gone."""
    try:
        g = decompose(user, training=False)
    except Unexportable as err:
        raise NNError(f"cannot export to ONNX: {err}", err.span, err.hint) from None
    g.losses, g.metrics = {}, {}
    return drop_unused_inputs(g, keep=_sizing_inputs(g))


def _sizing_inputs(g: Graph) -> list[str]:
    """Inputs whose values no output reads but whose symbolic dim an output's shape needs and
    no read input declares (`broadcast_to(w, [batch, 4])`): the file reads the size from them
    at run time, as nnlang binds it from their feeds (it was dropped, and the op refused)."""
    needed = g.ancestors(list(g.outputs.values()))
    used = {Sym.of(name) for nid in needed for d in g.node(nid).shape if isinstance(d, Sym)
            for name in d.names}
    have = {d for k, nid in g.inputs.items() if nid in needed for d in g.node(nid).shape}
    keep = []
    for k, nid in g.inputs.items():
        sizes = (used - have) & set(g.node(nid).shape)
        if nid not in needed and sizes:
            keep.append(k)
            have |= sizes
    return keep


def build_model(user: Graph, weights: dict) -> onnx.ModelProto:
    """The ONNX model of `user`'s outputs with `weights` (parameter name -> array) inside;
    checked with onnx.checker."""
    if not user.outputs:
        raise no_output_error(user, "to export",
                              " (its losses and metrics are not part of an exported model)")
    g = inference_graph(user)
    e = Emitter(g, weights)
    # NOTE: with the inputs, so one kept only for its size (_sizing_inputs) is a graph input
    names = e.emit([*g.outputs.values(), *g.inputs.values()])
    outputs = []
    for name, nid in g.outputs.items():
        # NOTE: `output x` of an input or a weight is that value, already named x: the graph
        # output reads it (an Identity writing x again would assign x twice, which ONNX refuses)
        if names[nid] != name:
            e.nodes.append(helper.make_node("Identity", [names[nid]], [name]))
        outputs.append(value_info(name, g.node(nid).type))
    graph = helper.make_graph(e.nodes, user.model or "model", e.inputs, outputs,
                              e.initializers)
    model = helper.make_model(graph, producer_name="nnlang", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


