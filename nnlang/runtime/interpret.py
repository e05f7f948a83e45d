"""A reference interpreter: runs a primitive graph node by node with each op's numpy `impl`.

It defines what a graph means; constant folding and the tests use it, and compiled executables
must agree with it.
"""
from __future__ import annotations

import numpy as np

from nnlang.backends.aligned import ALLOC_HINT
from nnlang.errors import NNError
from nnlang.ir.graph import Graph, op_attrs, slots
from nnlang.ops import registry
from nnlang.ops.index import index_error


def interpret(g: Graph, feeds: dict, params: dict | None = None, want=None) -> dict:
    """Values of `want` node ids ({key: node id}; default: every node) given input feeds and
    parameter arrays by name. With `want`, only the nodes it depends on run, as in compiled
    code: a gradient nothing uses (pow's with respect to a constant exponent, log of a negative
    base) warned from numpy, and cost its time."""
    params = params or {}
    env: dict[int, np.ndarray] = {}
    needed = None if want is None else g.ancestors(want.values())
    for nid in g.topo():
        if needed is not None and nid not in needed:
            continue
        node = g.node(nid)
        if node.op == "input":
            if node.attrs["name"] not in feeds:
                raise NNError(f"no value fed for input '{node.attrs['name']}'")
            env[nid] = np.asarray(feeds[node.attrs["name"]], dtype=node.dtype)
        elif node.op == "param":
            env[nid] = np.asarray(params[node.attrs["name"]], dtype=node.dtype)
        else:
            opdef = registry.get(node.op)
            if opdef.impl is None:
                raise NotImplementedError(f"op {node.op} has no numpy semantics; decompose first")
            args = [None if i is None else env[i] for i in slots(g, node)]
            try:
                # NOTE: a NaN or inf fed in made numpy warn ("invalid value encountered in
                # matmul"); the value is the result, as the compiled backends give it
                with np.errstate(all="ignore"):
                    out = opdef.impl(*args, **op_attrs(node))
            except IndexError as err:
                if not opdef.has(registry.INDEX):
                    raise
                raise index_error(node, err) from None
            except MemoryError:
                # NOTE: as the compiled backends' buffers say it (executable._allocate)
                raise NNError(f"cannot allocate memory for the value {node.type}", node.span,
                              ALLOC_HINT) from None
            env[nid] = np.asarray(out, dtype=node.dtype)
    return env if want is None else {k: env[v] for k, v in want.items()}
