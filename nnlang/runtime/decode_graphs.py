"""Incremental decoding: from a model's user-level graph and its generate section, the prefill
graph (the whole prompt; outputs the logits, each causal self-attention's keys and values, and
the token-independent values) and the one-token step graph (key/value caches as state).

Both are ordinary user-level graphs: `forward_graph` specializes, decomposes and the normal
compile path compiles them for any backend. A model this cannot follow position by position
raises `NotIncremental` with the reason; the generator then recomputes the prefix instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from nnlang.ir.graph import Builder, Graph, op_attrs, slots
from nnlang.ops import registry
from nnlang.ops.attention import (cached_attention, kv_cache_shape, kv_cache_write, kv_project,
                                  positional_encoding_at)
from nnlang.ops.registry import TensorType
from nnlang.passes.pipeline import drop_unused_inputs

POS_INPUT = "_pos"
# ops that compute each position from that position alone (on the last axis, or elementwise)
POSITIONWISE = {"dense", "embedding", "dropout", "linear", "relu", "gelu", "silu", "elu",
                "leaky_relu", "softplus", "clip", "square", "reciprocal"}
LAST_AXIS = {"layer_norm": "axis", "softmax": "axis", "log_softmax": "axis"}


class NotIncremental(Exception):
    """The model mixes positions in a way the step graph cannot follow (the message says how)."""


@dataclass
class DecodeGraphs:
    prefill: Graph      # tokens [batch, len] -> logits, _cache:*, _static:*
    step: Graph         # tokens [batch, 1], _pos [batch], _static:* -> logits [batch, 1, vocab]
    caches: dict        # state name -> its shape after the batch dim
    statics: list       # names of the values the prefill hands to every step


def derive(user: Graph, spec) -> DecodeGraphs:
    g = user.copy()
    g.outputs, g.losses, g.metrics = {"logits": g.outputs[spec.logits]}, {}, {}
    g = drop_unused_inputs(g)
    tok = g.inputs[spec.tokens]
    dep = nx.descendants(g.nx, tok) | {tok}
    attn = []
    for nid in g.topo():
        node = g.node(nid)
        if nid == tok or nid not in dep:
            continue
        if problem := _problem(g, node, dep):
            where = f" ({node.span.file}:{node.span.line})" if node.span else ""
            raise NotIncremental(f"{node.op}{where} {problem}")
        if node.op == "multi_head_attention" and slots(g, node)[1] is None:
            attn.append(nid)
    statics = sorted({i for nid in dep for i in g.node(nid).inputs
                      if i not in dep and g.node(i).op not in ("param", "const")})
    names = {nid: f"_static:{k}" for k, nid in enumerate(statics)}
    caches = {}
    for k, nid in enumerate(attn):
        node = g.node(nid)
        inner, heads = g.node(slots(g, node)[3]).shape[1], node.attrs["heads"]
        for layout in ("k", "v"):
            caches[f"_cache:{k}.{layout}"] = kv_cache_shape(None, spec.max_len, inner, heads,
                                                            layout)[1:]
    return DecodeGraphs(_prefill(g, attn, names), _step(g, tok, dep, attn, names, spec),
                        caches, list(names.values()))


def _problem(g: Graph, node, dep) -> str | None:
    """Why `node` (on the token stream) cannot run one position at a time; None if it can."""
    op, ins = node.op, slots(g, node)
    if op == "multi_head_attention":
        q, kv, mask = ins[:3]
        if kv is None:
            if not node.attrs["causal"]:
                return "is a non-causal self-attention: each position sees later tokens"
            return ("has a key_padding_mask on the token stream" if mask is not None else None)
        if kv in dep or (mask is not None and mask in dep):
            return "attends to keys computed from the token stream (not a causal self-attention)"
        return "is a causal cross-attention" if node.attrs["causal"] else None
    if op == "positional_encoding" or op in POSITIONWISE:
        return None
    if op in LAST_AXIS:
        rank = len(node.shape)
        axes = node.attrs[LAST_AXIS[op]]
        axes = axes if isinstance(axes, (list, tuple)) else [axes]
        return None if all(a in (-1, rank - 1) for a in axes) else "works across positions"
    if registry.get(op).family == "elementwise":
        for i in ins:
            if i is not None and i not in dep and _has_time_axis(g.node(i).shape, node.shape):
                return "combines the token stream with a value that has its own time axis"
        return None
    return "mixes positions (only position-wise ops, causal self-attention and cross-" \
           "attention to a fixed memory can run one token at a time)"


def _has_time_axis(shape, out) -> bool:
    """Whether `shape`, broadcast against `out` [batch, len, ...], varies along axis 1."""
    k = 1 - (len(out) - len(shape))
    return 0 <= k < len(shape) and shape[k] != 1


def _prefill(g: Graph, attn: list, statics: dict) -> Graph:
    p = g.copy()
    b = Builder(p)
    for k, nid in enumerate(attn):
        node = p.node(nid)
        q, _, _, wq, bq, wk, bk, wv, bv, *_ = slots(p, node)
        with b.at(span=node.span, path=node.path):
            for layout, w, bias in (("k", wk, bk), ("v", wv, bv)):
                p.outputs[f"_cache:{k}.{layout}"] = kv_project(b, q, w, bias,
                                                               node.attrs["heads"], layout)
    for nid, name in statics.items():
        p.outputs[name] = nid
    return p


def _step(g: Graph, tok: int, dep: set, attn: list, statics: dict, spec) -> Graph:
    s = g.copy()
    batch = s.node(tok).shape[0]
    s.node(tok).attrs["shape"] = [batch, 1]
    pos = s.add_node("input", [], {"name": POS_INPUT, "dtype": "int32", "shape": [batch]},
                     TensorType((batch,), "int32"), name=POS_INPUT)
    s.inputs[POS_INPUT] = pos
    for nid, name in statics.items():
        node = s.node(nid)
        new = s.add_node("input", [], {"name": name, "dtype": node.dtype,
                                       "shape": list(node.shape)}, node.type, name=name)
        s.inputs[name] = new
        for user in [u for u in s.users(nid) if u in dep]:
            s.set_inputs(user, [new if i == nid else i for i in s.node(user).inputs])
    b = Builder(s)
    order = {nid: k for k, nid in enumerate(attn)}
    for nid in [n for n in s.topo() if n in dep]:
        node = s.node(nid)
        ins = slots(s, node)
        if nid in order:
            out = _cached(s, b, node, ins, pos, order[nid], spec.max_len)
        elif node.op == "positional_encoding":
            with b.at(span=node.span, path=node.path):
                out = positional_encoding_at(b, ins[0], pos, ins[1] if len(ins) > 1 else None,
                                             node.attrs["kind"], spec.max_len)
        else:
            types = [None if i is None else s.node(i).type for i in ins]
            node.type = registry.get(node.op).shape(*types, **op_attrs(node))
            continue
        s.replace_uses(nid, out)
        s.remove(nid)
    return drop_unused_inputs(s)


def _cached(s: Graph, b: Builder, node, ins, pos: int, k: int, max_len: int) -> int:
    q, _, _, wq, bq, wk, bk, wv, bv, wo, bo = ins
    heads, batch = node.attrs["heads"], s.node(q).shape[0]
    inner = s.node(wq).shape[1]
    new = {}
    with b.at(span=node.span, path=node.path):
        for layout, w, bias in (("k", wk, bk), ("v", wv, bv)):
            name = f"_cache:{k}.{layout}"
            shape = list(kv_cache_shape(batch, max_len, inner, heads, layout))
            cache = s.add_node("param", [], {"name": name, "dtype": s.node(q).dtype,
                                             "shape": shape, "init": ("zeros", {}),
                                             "trainable": False},
                               TensorType(tuple(shape), s.node(q).dtype), name=name)
            s.params[name] = cache
            new[layout] = kv_cache_write(b, cache, q, w, bias, pos, heads, layout)
            s.updates[name] = new[layout]
        return cached_attention(b, q, new["k"], new["v"], pos, wq, bq, wo, bo, heads)
