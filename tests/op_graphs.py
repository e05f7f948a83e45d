"""Builds a one-op graph from an op's registry `Sample`, with random inputs drawn from the
sample's domain; shared by the gradient matrix and the backend parity tests."""
from __future__ import annotations

import numpy as np

from nnlang.ir.graph import Builder, Graph
from nnlang.ops import registry
from nnlang.ops.init import initialize
from nnlang.ops.registry import ParamSpec, TensorType


def draw(rng, shape, domain: str, dtype: str):
    if dtype == "bool" or domain == "bool":
        return rng.random(shape) < 0.5
    if domain.startswith("int:"):
        return rng.integers(0, int(domain[4:]), size=shape).astype(dtype)
    if dtype.startswith("int"):
        return rng.integers(0, 5, size=shape).astype(dtype)
    if domain == "positive":
        return rng.uniform(0.5, 2.0, size=shape).astype(dtype)
    if domain == "unit":
        return rng.uniform(0.05, 0.95, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def op_graph(name: str, sample, dtype: str = "float64", seed: int = 0):
    """(graph, feeds, params, out node) for `name(*inputs, **sample.attrs)`."""
    opdef = registry.get(name)
    rng = np.random.default_rng(seed)
    g = Graph()
    b = Builder(g)
    feeds, params, ins = {}, {}, []
    dtypes = sample.dtypes or (None,) * len(sample.shapes)
    for i, (shape, dt) in enumerate(zip(sample.shapes, dtypes)):
        dt = dt or dtype
        if shape is None:
            ins.append(None)
            continue
        key = f"x{i}"
        nid = g.add_node("input", [], {"name": key, "dtype": dt, "shape": list(shape)},
                         TensorType(tuple(shape), dt), name=key)
        g.inputs[key] = nid
        feeds[key] = draw(rng, shape, sample.domain if dt == dtype or "int" in sample.domain
                          else "real", dt)
        ins.append(nid)
    slots = [p for p in opdef.sig.params if p.kind in ("tensor", "tensor?") and not p.variadic]
    ins += [None] * (len(slots) - len(ins))
    attrs = {p.name: sample.attrs.get(p.name, p.default) for p in opdef.sig.params
             if p.kind not in ("tensor", "tensor?")}
    if opdef.params is not None:
        types = [None if i is None else g.node(i).type for i in ins]
        for pname, spec in opdef.params(*types, **attrs).items():
            spec = ParamSpec(spec.shape, spec.init, spec.trainable, dtype)
            nid = g.add_node("param", [], {"name": pname, "dtype": dtype,
                                           "shape": list(spec.shape), "init": spec.init,
                                           "trainable": spec.trainable},
                             TensorType(tuple(spec.shape), dtype), name=pname)
            g.params[pname] = nid
            value = initialize(spec, rng).astype(dtype)
            # NOTE: perturb so zero-initialized biases still exercise their gradient
            params[pname] = value + 0.1 * rng.normal(size=value.shape)
            ins.append(nid)
    out = b.emit(name, *ins, **attrs)
    g.outputs["out"] = out
    return g, feeds, params, out
