"""The emitter an op's `onnx=` entry writes its ONNX form through (`OpDef.onnx`): one method per
kind of thing an op needs (a node, a constant, a shape that may hold the batch), so the op
modules build ONNX without importing the `onnx` package.
"""
from __future__ import annotations

import itertools

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from nnlang.errors import NNError
from nnlang.ir.dims import Sym
from nnlang.ir.graph import Graph, Node, slots
from nnlang.ops import registry
from nnlang.ops.registry import TensorType, Unexportable, promote

ELEM = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
        "int32": TensorProto.INT32, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}


class Emitter:
    """Collects the nodes, initializers and graph inputs of one ONNX graph. Value names are the
    strings every method returns; `type_of` knows the nnlang type behind each. A loop body
    (`subgraph`) gets an emitter of its own that shares the names and initializers of the
    graph it sits in, so its values never shadow an outer one and its constants are outer."""

    def __init__(self, g: Graph, weights: dict, parent: Emitter | None = None):
        self.g, self.weights = g, weights
        self.nodes: list = []
        self.initializers: list = parent.initializers if parent else []
        self.inputs: list = []
        self.types: dict[str, TensorType] = {}
        self._counter = parent._counter if parent else itertools.count(1)
        # NOTE: the names the file shows (inputs, weights, outputs) are the model's own, so a
        # made-up name must never be one of them (`output mul_2 = x * 2.0` took the Mul's)
        self._taken = parent._taken if parent else {*g.inputs, *g.params, *g.outputs}
        self._dims: dict = {}     # symbolic dim -> its int64[1] value name
        self._input_names: dict[str, str] = {}   # nnlang input name -> its value name

    # *** names and types ***
    def fresh(self, hint: str) -> str:
        while (name := f"{hint}_{next(self._counter)}") in self._taken:
            pass
        return name

    def type_of(self, name: str) -> TensorType:
        return self.types[name]

    def in_types(self, n: Node) -> list[TensorType]:
        return [self.g.node(i).type for i in n.inputs]

    # *** nodes ***
    def op(self, op_type: str, *inputs, outputs: int = 1, **attrs):
        """One ONNX node; its output name (or names). None inputs are ONNX's absent inputs."""
        outs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, ["" if i is None else i for i in inputs],
                                           outs, **attrs))
        return outs[0] if outputs == 1 else outs

    def cast(self, x: str, have: str, want: str) -> str:
        return x if have == want else self.op("Cast", x, to=ELEM[want])

    def elementwise(self, op_type: str, n: Node, *xs, **attrs) -> str:
        """An op of one ONNX node whose inputs share a dtype: nnlang promotes mixed inputs
        (int and float), ONNX does not, so they are cast to the promoted dtype first."""
        ins = self.in_types(n)
        if op_type == "Where":   # the condition stays bool
            want = promote(*(t.dtype for t in ins[1:]))
            xs = (xs[0], *(self.cast(x, t.dtype, want) for x, t in zip(xs[1:], ins[1:])))
        else:
            want = promote(*(t.dtype for t in ins))
            xs = tuple(self.cast(x, t.dtype, want) for x, t in zip(xs, ins))
        return self.op(op_type, *xs, **attrs)

    # *** constants ***
    def const(self, value, dtype: str | None = None, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64), hint="ints")

    def shape(self, dims) -> str:
        """An int64[rank] value of a shape; a symbolic dim (batch) is read from the input that
        declares it, so the graph runs at any batch size."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(list(dims))
        parts = [self.dim(d) if isinstance(d, Sym) else self.ints([d]) for d in dims]
        return self.op("Concat", *parts, axis=0)

    def dim(self, d: Sym) -> str:
        if d not in self._dims:
            value = None
            for name in d.names:
                one = self._symbol(name)
                value = one if value is None else self.op("Mul", value, one)
            if d.coeff != 1:
                value = self.op("Mul", value, self.ints([d.coeff]))
            self._dims[d] = value
        return self._dims[d]

    def _symbol(self, name: str) -> str:
        sym = Sym.of(name)
        if sym not in self._dims:
            for inp, nid in self.g.inputs.items():
                shape = self.g.node(nid).shape
                if sym in shape:
                    axis = shape.index(sym)
                    self._dims[sym] = self.op("Shape", self._input_names.get(inp, inp),
                                              start=axis, end=axis + 1)
                    break
            else:
                raise Unexportable(f"no input declares the dim '{name}' on its own, so its "
                                   "size cannot be read at run time")
        return self._dims[sym]

    # *** graphs ***
    def emit(self, outputs: list[int], named: dict[int, str] | None = None) -> dict[int, str]:
        """Writes every node of `g` that `outputs` need through its op's `onnx=` entry; the
        value names by node id (`named`: nodes whose value already has a name)."""
        names = dict(named or {})
        needed = self.g.ancestors(outputs)
        for nid in self.g.topo():
            if nid not in needed or nid in names:
                continue
            n = self.g.node(nid)
            emit = registry.get(n.op).onnx
            if emit is None:
                raise unexportable(n, "nnlang has no ONNX form for it")
            try:
                names[nid] = emit(self, n, *(None if i is None else names[i]
                                             for i in slots(self.g, n)))
            except Unexportable as err:
                raise unexportable(n, str(err)) from None
            self.types[names[nid]] = n.type
        return names

    def subgraph(self, g: Graph, inputs: list[str], outer: dict[str, str], results):
        """The ONNX graph of a loop body `g`: its `inputs` (by nnlang name, in order) become the
        body's inputs, the others read the `outer` values named for them (the loop's weights,
        from the enclosing scope); `results(body, names)` gives the body's outputs as (value,
        type) pairs, from the emitter of the body and its value names by node id."""
        body = Emitter(g, self.weights, parent=self)
        named = {g.inputs[k]: v for k, v in outer.items()}
        for name in inputs:
            nid = g.inputs[name]
            named[nid] = body._input_names[name] = body.fresh(name)
            body.inputs.append(value_info(named[nid], g.node(nid).type))
        names = body.emit(list(g.outputs.values()), named)
        outs = []
        for value, t in results(body, names):
            outs.append(value_info(body.op("Identity", value), t))
        return helper.make_graph(body.nodes, self.fresh("body"), body.inputs, outs)

    # *** graph leaves ***
    def graph_input(self, n: Node) -> str:
        name = n.attrs["name"]
        self.inputs.append(value_info(name, n.type))
        return name

    def param(self, n: Node) -> str:
        """A weight, by its block path (h.weight), with its trained value inside the model."""
        name = n.attrs["name"]
        value = np.asarray(self.weights[name], dtype=n.dtype)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name


def value_info(name: str, t: TensorType):
    """A graph input's or output's declared type: a symbolic dim keeps its name (batch), and
    one computed from symbols its formula as `nnlang check` prints it (2*seq, batch*seq)."""
    dims = [d if isinstance(d, int) else str(d) for d in t.shape]
    return helper.make_tensor_value_info(name, ELEM[t.dtype], dims)


def unexportable(n: Node, why: str) -> NNError:
    where = f" (in {n.path})" if n.path else ""
    return NNError(f"cannot export op '{n.op}'{where} to ONNX: {why}", n.span,
                   hint="docs/export.md lists the ops that export; leave this one out of the "
                        "model's outputs, or compute it outside the exported model")


__all__ = ["Emitter", "unexportable", "value_info"]
