"""Incremental decoding: from a model's user-level graph and its generate section, the prefill
graph (the whole prompt; outputs the logits, each causal self-attention's keys and values, each
recurrent layer's final state, and the token-independent values) and the one-token step graph
(key/value caches and recurrent states as state).

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
# prefill: 1 where a row's prompt has a token, so each recurrent layer stops at its prompt's end
PROMPT_MASK = "_prompt_mask"
# ops that compute each position from that position alone (on the last axis, or elementwise)
# NOTE: generation is inference: dropout is the identity and the noise ops their mean, a
# constant of x's shape (random_normal_like was said to mix positions, and a model with noise
# decoded by rerunning the whole prefix for every token). one_hot is each token's own row, as
# embedding is (Keras' lstm_seq2seq feeds one-hot characters; it decoded by recomputing).
POSITIONWISE = {"dense", "embedding", "one_hot", "dropout", "linear", "relu", "gelu", "silu", "elu",
                "leaky_relu", "softplus", "clip", "square", "reciprocal", "random_normal_like",
                "random_uniform_like"}
# NOTE: a slice of the last axis is each position's own features (a GLU's two halves, a fused
# q/k/v projection split three ways), and so is a reversal of it (flip(x, axis = -1) reverses
# each position's features; over the time axis it reads later tokens)
LAST_AXIS = {"layer_norm": "axis", "softmax": "axis", "log_softmax": "axis", "slice": "axis",
             "flip": "axis"}


class NotIncremental(Exception):
    """The model mixes positions in a way the step graph cannot follow (the message says how)."""


@dataclass
class DecodeGraphs:
    prefill: Graph      # tokens [batch, len] (, _prompt_mask) -> logits, _cache:*, _static:*
    step: Graph         # tokens [batch, 1], _pos [batch], _static:* -> logits [batch, 1, vocab]
    caches: dict        # state carried between steps (KV caches, RNN states) -> shape after batch
    statics: list       # names of the values the prefill hands to every step
    shared: set         # the statics without a batch axis (a weight's transpose): one for all rows


def derive(user: Graph, spec) -> DecodeGraphs:
    g = user.copy()
    g.outputs, g.losses, g.metrics = {"logits": g.outputs[spec.logits]}, {}, {}
    g = drop_unused_inputs(g)
    _drop_unused_states(g)
    tok = g.inputs[spec.tokens]
    dep = nx.descendants(g.nx, tok) | {tok}
    attn, rnns = [], []
    for nid in g.topo():
        node = g.node(nid)
        if nid == tok or nid not in dep:
            continue
        if problem := _problem(g, node, dep):
            where = f" ({node.span.file}:{node.span.line})" if node.span else ""
            if _in_user_scan(g, node, dep):
                raise NotIncremental(
                    f"scan{where} runs a block over the tokens: the step graph carries the "
                    "state of an rnn, lstm or gru layer only")
            raise NotIncremental(f"{node.op}{where} {problem}")
        if node.op == "multi_head_attention" and slots(g, node)[1] is None:
            attn.append(nid)
        if _is_rnn(node):
            rnns.append(nid)
    # an RNN's initial state is read by the prefill only: the step starts from the carried state
    statics = sorted({i for nid in dep for i in _step_inputs(g, g.node(nid))
                      if i not in dep and g.node(i).op not in ("param", "const")})
    names = {nid: f"_static:{k}" for k, nid in enumerate(statics)}
    batch = g.node(tok).shape[0]
    shared = {names[nid] for nid in statics if g.node(nid).shape[:1] != (batch,)}
    caches = {}
    for k, nid in enumerate(attn):
        node = g.node(nid)
        inner, heads = g.node(slots(g, node)[3]).shape[1], node.attrs["heads"]
        for layout in ("k", "v"):
            caches[f"_cache:{k}.{layout}"] = kv_cache_shape(None, spec.max_len, inner, heads,
                                                            layout)[1:]
    for k, nid in enumerate(rnns):
        units = g.node(nid).attrs["units"]
        caches.update({name: (units,) for name in _rnn_states(g.node(nid), k)})
    return DecodeGraphs(_prefill(g, tok, attn, rnns, names),
                        _step(g, tok, dep, attn, rnns, names, spec), caches,
                        list(names.values()), shared)


def _drop_unused_states(g: Graph) -> None:
    """A recurrent layer whose return_state states nothing the logits need reads (Keras'
    lstm_seq2seq decoder: `dec, _, _ = lstm(..., return_sequences = true, return_state =
    true)`) is the layer without them: the cut of its outputs from the packed value becomes
    the layer itself, which then steps with the tokens (it recomputed the prefix per token)."""
    for node in list(g):
        a = node.attrs
        if node.type is None or not (_is_rnn(node) and a.get("return_state") and
                                     a.get("return_sequences")) or node.id in g.outputs.values():
            continue
        steps = g.node(_rnn_slots(g, node)[0]).shape[1]
        cuts = g.users(node.id)
        if not cuts or any(not _leading_cut(g.node(u), steps) for u in cuts):
            continue
        batch, _, width = node.shape
        a["return_state"] = False
        node.type = TensorType((batch, steps, width), node.dtype)
        for u in cuts:
            g.replace_uses(u, node.id)
            g.remove(u)


def _leading_cut(node, steps) -> bool:
    """Whether `node` is the slice of a packed recurrent value that holds its outputs."""
    a = node.attrs
    return node.op == "slice" and a.get("axis") in (1, -2) and (a.get("start") or 0) == 0 \
        and a.get("stop") == steps and (a.get("step") or 1) == 1


def _in_user_scan(g: Graph, node, dep) -> bool:
    """Whether `node` is part of what a `scan Cell(...) over x` statement lowered to (the
    transposes and slices around its scan node share the statement's span), so a reason names
    the scan the model has as written, not an op it does not."""
    return node.span is not None and any(
        g.node(i).op == "scan" and g.node(i).span == node.span for i in dep)


def _is_rnn(node) -> bool:
    return registry.get(node.op).family == "rnn"


def _rnn_states(node, k: int) -> list[str]:
    return [f"_state:{k}.{s}" for s in ("h", "c")[:_n_states(node)]]


def _n_states(node) -> int:
    return 2 if node.op == "lstm" else 1


def _rnn_slots(g: Graph, node):
    """(x, mask, initial states, weights) of a recurrent node (its signature's order)."""
    ins, n = slots(g, node), _n_states(node)
    return ins[0], ins[1], ins[2:2 + n], ins[2 + n:]


def _step_inputs(g: Graph, node) -> list:
    if not _is_rnn(node):
        return list(node.inputs)
    x, mask, _, weights = _rnn_slots(g, node)
    return [i for i in (x, mask, *weights) if i is not None]


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
    if op == "positions":
        # NOTE: a step's rows sit at their own positions (prompts of other lengths), which a
        # positions value ([len], one for all rows) cannot say; "mixes positions" misled
        return "numbers the token positions, one count for all rows, which a one-token step " \
               "cannot (positional_encoding(x, kind = \"learned\", max_len = ...) adds " \
               "learned positions and decodes with the cache)"
    if _is_rnn(node):
        return _rnn_problem(g, node, dep)
    if op in LAST_AXIS:
        rank = len(node.shape)
        axes = node.attrs[LAST_AXIS[op]]
        axes = axes if isinstance(axes, (list, tuple)) else [axes]
        return None if all(a in (-1, rank - 1) for a in axes) else "works across positions"
    if op == "matmul" and _by_weight(g, node, dep):
        return None
    if op == "concat" and _features_of_each_position(g, node, dep):
        return None
    if registry.get(op).family == "elementwise":
        for i in ins:
            if i is not None and i not in dep and _has_time_axis(g.node(i).shape, node.shape):
                return "combines the token stream with a value that has its own time axis"
        return None
    return "mixes positions (only position-wise ops, causal self-attention and cross-" \
           "attention to a fixed memory can run one token at a time)"


def _by_weight(g: Graph, node, dep) -> bool:
    """A matmul of the token stream [batch, len, ..., d] by a value the tokens do not reach (a
    weight, or a transpose of one: a tied output projection) acts on each position's last axis
    alone, as `dense` does."""
    a, w = slots(g, node)
    return a in dep and w not in dep and len(g.node(a).shape) >= 3 and \
        not _has_time_axis(g.node(w).shape[:-2], node.shape[:-2])


def _features_of_each_position(g: Graph, node, dep) -> bool:
    """A concat past the time axis of pieces all computed from the tokens joins each position's
    own features (Luong attention's [context; h] before its output layer), as a slice of that
    axis cuts them. NOTE: a piece the tokens do not reach would bring a time axis of its own
    (concat takes no broadcasting), and one along the time axis shifts positions."""
    rank = len(node.shape)
    return rank >= 3 and node.attrs.get("axis", -1) % rank >= 2 and \
        all(i in dep for i in node.inputs)


def _rnn_problem(g: Graph, node, dep) -> str | None:
    """A recurrent layer steps with the tokens when it runs forward over them and hands on
    every step's output (its state is then carried from one token to the next)."""
    x, mask, states, _ = _rnn_slots(g, node)
    a = node.attrs
    if x not in dep:
        return "runs over a sequence that is not computed from the token stream"
    if a["bidirectional"]:
        return "runs backward over the tokens too (bidirectional = true)"
    if a.get("go_backwards"):
        return "runs backward over the tokens (go_backwards = true)"
    if not a["return_sequences"]:
        return "returns only its last step (return_sequences = false), not one output per token"
    if a["return_state"]:
        return "returns its final state from the token stream (return_state = true)"
    if mask is not None and mask not in dep:
        return "has a mask that is not computed from the token stream (its own time axis)"
    if any(s is not None and s in dep for s in states):
        return "starts from a state computed from the token stream"
    return None


def _has_time_axis(shape, out) -> bool:
    """Whether `shape`, broadcast against `out` [batch, len, ...], varies along axis 1."""
    k = 1 - (len(out) - len(shape))
    return 0 <= k < len(shape) and shape[k] != 1


def _prefill(g: Graph, tok: int, attn: list, rnns: list, statics: dict) -> Graph:
    p = g.copy()
    b = Builder(p)
    if rnns:
        batch, length = p.node(tok).shape
        dtype = p.node(_rnn_slots(p, p.node(rnns[0]))[0]).dtype
        p.inputs[PROMPT_MASK] = p.add_node(
            "input", [], {"name": PROMPT_MASK, "dtype": dtype, "shape": [batch, length]},
            TensorType((batch, length), dtype), name=PROMPT_MASK)
    for k, nid in enumerate(rnns):
        _prefill_rnn(p, b, p.node(nid), k)
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


def _run_rnn(b: Builder, node, x, mask, states, weights) -> int:
    """`node`'s layer on x from `states`: every step's output and the final states, packed
    [batch, steps + states, units] (the layout of return_state)."""
    attrs = {**op_attrs(node), "return_sequences": True, "return_state": True}
    with b.at(span=node.span, path=node.path):
        return b.emit(node.op, x, mask, *states, *weights, **attrs)


def _unpack(b: Builder, packed: int, steps: int, k: int) -> int:
    batch, _, units = b.type(packed).shape
    return b.reshape(b.slice(packed, axis=1, start=steps + k, stop=steps + k + 1, step=1),
                     shape=[batch, units])


def _prefill_rnn(p: Graph, b: Builder, node, k: int) -> None:
    """The layer as the model runs it, masked past each prompt's end (a masked step keeps the
    state), so its final states are those after each row's last prompt token."""
    x, mask, states, weights = _rnn_slots(p, node)
    prompt = p.inputs[PROMPT_MASK]
    with b.at(span=node.span, path=node.path):
        if mask is not None:
            dtype = p.node(prompt).dtype
            mask = b.mul(mask if p.node(mask).dtype == dtype else b.cast(mask, dtype=dtype),
                         prompt)
        packed = _run_rnn(b, node, x, mask if mask is not None else prompt, states, weights)
        steps = p.node(x).shape[1]
        outs = b.slice(packed, axis=1, start=0, stop=steps, step=1)
        for j, name in enumerate(_rnn_states(node, k)):
            p.outputs[name] = _unpack(b, packed, steps, j)
    p.replace_uses(node.id, outs)
    p.remove(node.id)


def _step_rnn(s: Graph, b: Builder, node, k: int) -> int:
    """One cell step from the carried state; the new state is written back (`updates`)."""
    x, mask, _, weights = _rnn_slots(s, node)
    batch, dtype, units = s.node(x).shape[0], s.node(x).dtype, node.attrs["units"]
    names = _rnn_states(node, k)
    carried = [_state_param(s, name, (batch, units), dtype) for name in names]
    packed = _run_rnn(b, node, x, mask, carried, weights)
    with b.at(span=node.span, path=node.path):
        for j, name in enumerate(names):
            new = _unpack(b, packed, 1, j)
            s.node(new).attrs["root"] = True   # no output reads it: the next step does
            s.updates[name] = new
        return b.slice(packed, axis=1, start=0, stop=1, step=1)


def _state_param(s: Graph, name: str, shape, dtype) -> int:
    """A non-trainable state buffer the step reads and updates (zeros until the prefill)."""
    nid = s.add_node("param", [], {"name": name, "dtype": dtype, "shape": list(shape),
                                   "init": ("zeros", {}), "trainable": False},
                     TensorType(tuple(shape), dtype), name=name)
    s.params[name] = nid
    return nid


def _step(g: Graph, tok: int, dep: set, attn: list, rnns: list, statics: dict, spec) -> Graph:
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
    recurrent = {nid: k for k, nid in enumerate(rnns)}
    for nid in [n for n in s.topo() if n in dep]:
        node = s.node(nid)
        ins = slots(s, node)
        if nid in order:
            out = _cached(s, b, node, ins, pos, order[nid], spec.max_len)
        elif nid in recurrent:
            out = _step_rnn(s, b, node, recurrent[nid])
        elif node.op == "positional_encoding":
            with b.at(span=node.span, path=node.path):
                # NOTE: slots (x, mask, weight): a step's row is at its own position already
                out = positional_encoding_at(b, ins[0], pos, ins[2] if len(ins) > 2 else None,
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
            shape = kv_cache_shape(batch, max_len, inner, heads, layout)
            cache = _state_param(s, name, shape, s.node(q).dtype)
            new[layout] = kv_cache_write(b, cache, q, w, bias, pos, heads, layout)
            s.updates[name] = new[layout]
        return cached_attention(b, q, new["k"], new["v"], pos, wq, bq, wo, bo, heads)
