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


def sample_attrs(name: str, sample) -> dict:
    """The op's non-tensor arguments for `sample`: its defaults, overridden by the sample's."""
    return {p.name: sample.attrs.get(p.name, p.default) for p in registry.get(name).sig.params
            if p.kind not in ("tensor", "tensor?")}


def op_graph(name: str, sample, dtype: str = "float64", seed: int = 0, batch=None):
    """(graph, feeds, params, out node) for `name(*inputs, **sample.attrs)`; with `batch` (a
    symbolic dim), dim 0 of every input is declared as that symbol (the feeds stay concrete)."""
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
        declared = (batch, *shape[1:]) if batch is not None and shape else tuple(shape)
        nid = g.add_node("input", [], {"name": key, "dtype": dt, "shape": list(declared)},
                         TensorType(declared, dt), name=key)
        g.inputs[key] = nid
        feeds[key] = draw(rng, shape, sample.domain if dt == dtype or "int" in sample.domain
                          else "real", dt)
        ins.append(nid)
    slots = [p for p in opdef.sig.params if p.kind in ("tensor", "tensor?") and not p.variadic]
    ins += [None] * (len(slots) - len(ins))
    attrs = sample_attrs(name, sample)
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


def sample_cases():
    """(id, name, sample) for every sample of every op in the registry: what the CUDA checks
    (tests/gpu) loop over, so a new op is checked there by existing."""
    for name, op in registry.all_ops().items():
        for k, sample in enumerate(op.samples):
            yield f"{name}-{k}", name, sample


def op_graph_with_grads(name: str, sample, dtype: str = "float32", seed: int = 0):
    """`op_graph` decomposed, plus the gradient of sum(out * c) with respect to every float
    input and parameter (when the op and sample have one) as outputs `d<name>`: the forward
    and backward kernels a model using the op would run. (graph, feeds, params)."""
    from nnlang.ops.registry import NONDIFF, RANDOM, is_float
    from nnlang.passes.autodiff import backward
    from nnlang.passes.decompose import decompose
    g, feeds, params, _ = op_graph(name, sample, dtype, seed)
    g = decompose(g)
    if "_rng" in g.inputs:
        feeds["_rng"] = np.int64(7)
    op = registry.get(name)
    out = g.outputs["out"]
    wrt = {k: v for k, v in {**g.inputs, **g.params}.items()
           if is_float(g.node(v).dtype) and not k.startswith("_")}
    if not (sample.grad and wrt and is_float(g.node(out).dtype)) or op.has(NONDIFF) \
            or op.has(RANDOM):
        return g, feeds, params
    b = Builder(g)
    rng = np.random.default_rng(seed + 1)
    cot = b.const(rng.normal(size=[int(d) for d in g.node(out).shape]), g.node(out).dtype)
    grads = backward(g, b.reduce_sum(b.mul(out, cot), axes=None), list(wrt.values()))
    for k, nid in wrt.items():
        if nid in grads:
            g.outputs[f"d{k}"] = grads[nid]
    return g, feeds, params
