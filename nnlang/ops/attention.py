"""Attention composites: multi-head scaled dot-product attention and positional encodings,
decomposed into GEMMs, the softmax composite and elementwise masking.
"""
from __future__ import annotations

import math

import numpy as np

from nnlang.ir.dims import Sym, fmt_shape
from nnlang.ops.nn import const_like, linear, need_float, param_dtype, real_steps
from nnlang.ops.registry import (ParamSpec, Sample, ShapeError, Unexportable, need_positive,
                                 need_range, register)
from nnlang.ops.signature import show_value

NEG_INF = -1e9  # added to masked scores: exp underflows to exactly 0 without inf - inf = nan
# NOTE: a future key is masked twice as hard as a padded one: with the same -1e9 a query whose
# visible keys were all padding (a front-padded row's first positions) found its future keys,
# at score - 1e9, as high as its padded ones and attended to them: its output read later
# tokens, so a causal model could see its own next token there. At -2e9 such a query attends
# evenly to its padded past, and a future key weighs exactly 0 in float32 and float64 alike.
FUTURE = 2 * NEG_INF


def _mha_dims(q, kv, heads, dim):
    for i, t in ((0, q), (1, kv)):
        if t is None:
            continue
        need_float("multi_head_attention", t, i)
        if t.rank != 3 or isinstance(t.shape[2], Sym):
            raise ShapeError(f"multi_head_attention expects [batch, len, dim] but got "
                             f"{fmt_shape(t.shape)}", arg=i)
    need_positive("multi_head_attention", "heads", heads)
    if dim is not None:
        need_positive("multi_head_attention", "dim", dim)
    dim = q.shape[2] if dim is None else dim
    if dim % heads:
        raise ShapeError(f"multi_head_attention: dim {dim} is not divisible by heads = {heads}",
                         hint=_heads_hint(dim, heads))
    return dim


def _heads_hint(dim: int, heads: int) -> str:
    """The head counts nearest `heads` that divide `dim`, and the dims nearest `dim` that
    `heads` divides. NOTE: a fixed example ("4 or 8 for 128") told a model of dim 100 to try
    8 heads."""
    below = max(d for d in range(1, heads) if dim % d == 0)
    above = next((d for d in range(heads + 1, dim + 1) if dim % d == 0), None)
    counts = " or ".join(str(d) for d in (below, above) if d is not None)
    low = dim - dim % heads
    dims = " or ".join(str(d) for d in (low, low + heads) if d > 0)
    return f"pick heads dividing {dim} (e.g. {counts}), or a dim that {heads} divides (e.g. {dims})"


def _mha_params(q, kv=None, mask=None, *, heads, dim, causal, dropout):
    kv = q if kv is None else kv
    inner, dt = _mha_dims(q, kv, heads, dim), param_dtype(q)
    specs = {}
    for name, fan_in, fan_out in (("q", q.shape[2], inner), ("k", kv.shape[2], inner),
                                  ("v", kv.shape[2], inner), ("o", inner, q.shape[2])):
        specs["w" + name] = ParamSpec((fan_in, fan_out), ("glorot_uniform", {}), dtype=dt)
        specs["b" + name] = ParamSpec((fan_out,), ("zeros", {}), dtype=dt)
    return specs


def _mha_shape(q, kv=None, mask=None, *weights, heads, dim, causal, dropout):
    kvt = q if kv is None else kv
    _mha_dims(q, kvt, heads, dim)
    if kv is not None and kv.shape[0] != q.shape[0]:
        raise ShapeError(f"multi_head_attention: query batch {fmt_shape(q.shape)} and key/value "
                         f"batch {fmt_shape(kv.shape)} differ", arg=1)
    if mask is not None and mask.shape != (kvt.shape[0], kvt.shape[1]):
        raise ShapeError(f"multi_head_attention: key_padding_mask {fmt_shape(mask.shape)} must "
                         f"be [batch, kv_len] = {fmt_shape(kvt.shape[:2])}", arg=2,
                         hint="1 keeps a key, 0 masks it (padding)")
    if causal and (isinstance(q.shape[1], Sym) or isinstance(kvt.shape[1], Sym)) and \
            q.shape[1] != kvt.shape[1]:
        raise ShapeError(f"multi_head_attention: causal masking of {fmt_shape(q.shape[:2])} "
                         f"queries over {fmt_shape(kvt.shape[:2])} keys: a symbolic length "
                         "needs the keys' length to be the queries'", arg=0,
                         hint="causal self-attention, or concrete lengths")
    lq, lk = q.shape[1], kvt.shape[1]
    if causal and isinstance(lq, int) and isinstance(lk, int) and lq > lk:
        # NOTE: the last query sees the last key, so queries 0 .. lq - lk - 1 would see none:
        # every key was as far in their future, and they attended to all of them (in float64
        # as if unmasked), where PyTorch's causal_lower_right gives nan
        raise ShapeError(f"multi_head_attention: causal masking of {lq} queries over {lk} keys "
                         f"aligns the last query with the last key, so the first {lq - lk} "
                         "queries would see no key", arg=0,
                         hint="causal self-attention (kv = none), or at least as many keys as "
                              "queries")
    need_range("multi_head_attention", "dropout", dropout, 0.0, 1.0, hi_open=True)
    return q


def _split_heads(b, x, heads, perm):
    batch, length, dim = b.type(x).shape
    return b.transpose(b.reshape(x, shape=[batch, length, heads, dim // heads]), perm=perm)


def _mha(b, q, kv, mask, wq, bq, wk, bk, wv, bv, wo, bo, *, heads, dim, causal, dropout):
    kv = q if kv is None else kv
    batch, lq, _ = b.type(q).shape
    lk = b.type(kv).shape[1]
    inner = b.type(wq).shape[1]
    qh = _split_heads(b, linear(b, q, wq, bq), heads, [0, 2, 1, 3])    # [B, H, Lq, dh]
    kh = _split_heads(b, linear(b, kv, wk, bk), heads, [0, 2, 3, 1])   # [B, H, dh, Lk]
    vh = _split_heads(b, linear(b, kv, wv, bv), heads, [0, 2, 1, 3])   # [B, H, Lk, dh]
    scores = b.mul(b.matmul(qh, kh), const_like(b, 1.0 / math.sqrt(inner // heads), q))
    if mask is not None:
        # NOTE: masked scores are set to -1e9, not shifted by it: shifted, a row whose keys are
        # all masked kept its scores' differences in float64 (attending as if unmasked) and
        # lost them in float32 (attending evenly); set, it attends evenly in both dtypes
        keep = b.reshape(real_steps(b, mask), shape=[batch, 1, 1, lk])
        scores = b.where(keep, scores, const_like(b, NEG_INF, q))
    if causal and (isinstance(lq, Sym) or isinstance(lk, Sym)):
        # NOTE: a symbolic length (equal for queries and keys: the shape rule): the mask is
        # made at the bound length, by the triu primitive over ones
        ones = b.broadcast_to(const_like(b, 1.0, q), shape=[lq, lk])
        scores = b.add(scores, b.mul(b.triu(ones, k=1), const_like(b, FUTURE, q)))
    elif causal:
        # query i sees keys j <= i + (lk - lq), so a longer key prefix (a cache) stays visible
        future = np.triu(np.ones((lq, lk)), k=1 + lk - lq) * FUTURE
        scores = b.add(scores, b.const(future, b.type(q).dtype))
    probs = b.softmax(scores, axis=-1)
    if dropout:
        probs = b.dropout(probs, rate=dropout)
    ctx = b.transpose(b.matmul(probs, vh), perm=[0, 2, 1, 3])          # [B, Lq, H, dh]
    return linear(b, b.reshape(ctx, shape=[batch, lq, inner]), wo, bo)


_MASKS = ("the masks are key_padding_mask [batch, kv_len] (nonzero keeps a key: the opposite "
          "of PyTorch's True) and causal = true; write other masks out with softmax and matmul")
_MHA_HABITS = {
    "key_dim": "dim is the whole width, split over heads: Keras' key_dim (per head) is "
               "dim = heads * key_dim",
    "value_dim": "the values have the keys' width: dim (split over heads)",
    "batch_first": "q and kv are [batch, len, dim] (PyTorch's batch_first = true)",
    "attn_mask": _MASKS, "attention_mask": _MASKS,
    "need_weights": "it returns the output alone (PyTorch's need_weights = false)",
    "return_attention_scores": "it returns the output alone: for the weights write "
                               "softmax(q @ transpose(k, [0, 2, 1]) / sqrt(d)) yourself",
    "key": "kv gives both the keys and the values: multi_head_attention(q, kv, heads = ...)",
    **dict.fromkeys(("bias", "use_bias", "add_bias_kv"),
                    "the projections always have biases (PyTorch's bias = True)"),
}


# NOTE: no `flops` rule: `nnlang check` counts what the decomposition runs, the six GEMMs (2 *
# M * N * K each) and the bias adds, the scaling, the masks and the softmax, as it counts the
# same ops written out; a rule of its own counted the GEMMs only (6,720 of 7,640 for q [2, 5, 8])
register("multi_head_attention",
         "q: tensor, kv: tensor? = none, key_padding_mask: tensor? = none, heads: int, "
         "dim: int = none, causal: bool = false, dropout: float = 0.0",
         _mha_shape, decompose=_mha, params=_mha_params, family="attention",
         habits=_MHA_HABITS,
         doc="Multi-head scaled dot-product attention on [batch, len, dim]: self-attention when "
             "kv is none. dim is the attention width (default: q's last dim), split over heads "
             "(Keras' key_dim is one head's: MultiHeadAttention(num_heads = h, key_dim = k) is "
             "heads = h, dim = h * k); "
             "the output has q's shape. key_padding_mask [batch, kv_len] (float, int or bool; "
             "nonzero keeps a key, 0 masks it) sets masked scores to -1e9 and causal = true adds "
             "-2e9 to future ones before the softmax (query i sees keys j <= i + kv_len - "
             "len, the last query the last key: torch's causal_lower_right; "
             "scaled_dot_product_attention(is_causal = True) aligns the first query with the "
             "first key instead, the same when the lengths agree; more queries than keys is an "
             "error, as the first would see no key), so a query whose keys are "
             "all masked attends evenly to them, and with causal = true to those it may see, "
             "never to a future key (PyTorch gives nan, or 0 without need_weights); dropout "
             "applies to the attention "
             "weights in training. Params wq/wk/wv [in, dim], wo [dim, q_dim] and biases "
             "(d = 128: 66,048, like PyTorch). "
             "Init: weights glorot_uniform (PyTorch's xavier_uniform), biases zeros.",
         samples=(Sample(((2, 4, 8),), {"heads": 2, "dropout": 0.1}),
                  Sample(((2, 3, 8), (2, 5, 6)), {"heads": 4, "dim": 12}),
                  Sample(((2, 4, 8), None, (2, 4)), {"heads": 2, "causal": True},
                         domain="int:2", dtypes=(None, None, "int32")),
                  # more keys than queries (a cache's prefix): causal's lower-right alignment
                  Sample(((2, 3, 8), (2, 5, 8)), {"heads": 2, "causal": True})))


def sinusoid_table(length: int, dim: int) -> np.ndarray:
    """Vaswani et al.: sin on even columns, cos on odd, wavelengths 2*pi .. 10000*2*pi."""
    pos = np.arange(length)[:, None]
    freq = np.exp(-math.log(10000.0) * (np.arange(0, dim, 2) / dim))
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return table


def _pe_check(x, kind, max_len, mask=None):
    need_float("positional_encoding", x)
    if x.rank != 3 or isinstance(x.shape[2], Sym):
        raise ShapeError(f"positional_encoding expects [batch, len, dim] with concrete dim but "
                         f"got {fmt_shape(x.shape)}", arg=0)
    if mask is not None and mask.shape != x.shape[:2]:
        raise ShapeError(f"positional_encoding: mask {fmt_shape(mask.shape)} must be [batch, "
                         f"len] = {fmt_shape(x.shape[:2])}", arg=1,
                         hint="nonzero at real tokens, 0 at padding")
    if kind not in ("sinusoidal", "learned"):
        raise ShapeError(f"positional_encoding: kind must be \"sinusoidal\" or \"learned\", got "
                         f"{show_value(kind)}", attr="kind")
    if max_len is not None:   # NOTE: on a symbolic length nothing else would catch -1 here
        need_positive("positional_encoding", "max_len", max_len)
    if isinstance(x.shape[1], Sym):
        # NOTE: the table (or the weight's first rows) is taken once the length is bound
        if kind == "learned" and max_len is None:
            raise ShapeError(f"positional_encoding: learned positions on the symbolic length "
                             f"{x.shape[1]} need max_len (the weight's rows)", attr="max_len",
                             hint="add max_len = <the longest padded batch length>")
        return
    if max_len is not None and max_len < x.shape[1]:
        raise ShapeError(f"positional_encoding: sequence length {x.shape[1]} exceeds max_len = "
                         f"{max_len}", arg=0,
                         hint="the length is the batch's, padding included: batches of whole "
                              "reviews pad to a rounded length (2,739 tokens to 3,072; "
                              "docs/data.md), so leave max_len room above the longest")


def _pe_params(x, mask=None, *, kind, max_len):
    _pe_check(x, kind, max_len, mask)
    if kind != "learned":
        return {}
    return {"weight": ParamSpec((max_len or x.shape[1], x.shape[2]), ("normal", {"std": 0.02}),
                                dtype=param_dtype(x))}


def _pe_shape(x, mask=None, weight=None, *, kind, max_len):
    _pe_check(x, kind, max_len, mask)
    return x


def _pe(b, x, mask=None, weight=None, *, kind, max_len):
    table = _pe_table(b, x, weight, kind, max_len)
    if mask is None:
        return b.add(x, table)
    # NOTE: with a mask, a row's positions count from its first real token (as Hugging Face
    # derives position ids from the attention mask), so a front-padded row reads the same
    # whatever its batch's width; front padding takes position 0
    keep = b.cast(real_steps(b, mask), dtype="int32")
    pos = b.maximum(b.sub(b.cumsum(keep, axis=1), b.const(1, "int32")), b.const(0, "int32"))
    return b.add(x, b.gather(table, pos))


def _pe_table(b, x, weight, kind, max_len):
    """The rows added at positions 0 .. len - 1: [len, dim]."""
    _, length, dim = b.type(x).shape
    if kind == "sinusoidal":
        if not isinstance(length, Sym):
            return b.const(sinusoid_table(length, dim), b.type(x).dtype)
        # NOTE: only export decomposes a length still symbolic: the file holds max_len rows
        # and takes the first `length` at run time
        if max_len is None:
            raise Unexportable(f"positional_encoding: sinusoidal positions on the symbolic "
                               f"length {length} export only with max_len (the rows the file "
                               "holds)", b.span, hint="add max_len = <the longest sequence>")
        weight = b.const(sinusoid_table(max_len, dim), b.type(x).dtype)
    if b.type(weight).shape[0] != length:
        weight = b.slice(weight, axis=0, start=0, stop=length, step=1)
    return weight


register("positional_encoding",
         "x: tensor, kind: str = \"sinusoidal\", max_len: int = none, mask: tensor? = none",
         _pe_shape, decompose=_pe, params=_pe_params, family="attention",
         doc="adds position information to x [batch, len, dim]. sinusoidal: the fixed "
             "Transformer table (no params). learned: a weight [max_len (default len), dim], "
             "init normal(std = 0.02) as in BERT/GPT-2; the first len rows are added. "
             "mask [batch, len] (nonzero at real tokens): each row's positions count from its "
             "first real token, so front padding does not shift them.",
         samples=(Sample(((2, 5, 6),)), Sample(((2, 4, 6),), {"kind": "learned", "max_len": 7}),
                  Sample(((2, 5, 6), (2, 5)), {"kind": "learned"}, domain="int:2",
                         dtypes=(None, "int32"))))


# *** incremental decoding: builder helpers that nnlang/runtime/decode_graphs.py emits in place
# of multi_head_attention and positional_encoding when it derives the prefill and step graphs.
# A causal self-attention's key/value cache holds `max_len` positions per sequence, in the
# layouts its matmuls read: keys [batch, heads, dh, max_len], values [batch, heads, max_len, dh].
KV_LAYOUTS = {"k": [0, 2, 3, 1], "v": [0, 2, 1, 3]}


def kv_cache_shape(batch, length, inner, heads, layout):
    dh = inner // heads
    return (batch, heads, dh, length) if layout == "k" else (batch, heads, length, dh)


def kv_project(b, x, w, bias, heads, layout):
    """x's keys or values in the cache layout. NOTE: the same ops as _mha's projections, so
    CSE shares them with the attention in a prefill graph."""
    return _split_heads(b, linear(b, x, w, bias), heads, KV_LAYOUTS[layout])


def _at_position(b, pos, length, axis):
    """(0..length-1 along `axis` of a rank-4 grid, pos [batch] as [batch, 1, 1, 1])."""
    shape = [1, 1, 1, 1]
    shape[axis] = length
    grid = b.const(np.arange(length).reshape(shape), b.type(pos).dtype)
    return grid, b.reshape(pos, shape=[b.type(pos).shape[0], 1, 1, 1])


def kv_cache_write(b, cache, x, w, bias, pos, heads, layout):
    """The cache with position pos[r] of row r replaced by the projection of x [batch, 1, dim]."""
    new = kv_project(b, x, w, bias, heads, layout)       # length 1 on the cache axis
    axis = 3 if layout == "k" else 2
    grid, at = _at_position(b, pos, b.type(cache).shape[axis], axis)
    return b.where(b.eq(grid, at), new, cache)


def cached_attention(b, x, k, v, pos, wq, bq, wo, bo, heads):
    """One position of causal self-attention: x [batch, 1, dim] attends to the cache positions
    <= pos[r] (the cache already holds x's own key and value)."""
    batch = b.type(x).shape[0]
    inner = b.type(wq).shape[1]
    qh = _split_heads(b, linear(b, x, wq, bq), heads, [0, 2, 1, 3])    # [B, H, 1, dh]
    # NOTE: a literal, not const_like: this graph is built in float32 before a float64 net
    # retypes it, and _mha's scale (made after the retype) is exact in float64
    scale = b.literal(1.0 / math.sqrt(inner // heads), b.type(x).dtype)
    scores = b.mul(b.matmul(qh, k), scale)
    grid, at = _at_position(b, pos, b.type(k).shape[3], 3)
    # the full model's causal mask, so a later key weighs exactly 0 in both
    bias = b.where(b.le(grid, at), const_like(b, 0.0, x), const_like(b, FUTURE, x))
    probs = b.softmax(b.add(scores, bias), axis=-1)
    ctx = b.transpose(b.matmul(probs, v), perm=[0, 2, 1, 3])             # [B, 1, H, dh]
    return linear(b, b.reshape(ctx, shape=[batch, 1, inner]), wo, bo)


def positional_encoding_at(b, x, pos, weight, kind, max_len):
    """positional_encoding for x [batch, 1, dim]: adds row pos[r] of the table (the learned
    weight, or the sinusoid table of max_len rows)."""
    batch, _, dim = b.type(x).shape
    if kind == "sinusoidal":   # NOTE: a literal, as in cached_attention
        weight = b.literal(sinusoid_table(max_len, dim), b.type(x).dtype)
    rows = b.gather(weight, pos)                                          # [B, dim]
    return b.add(x, b.reshape(rows, shape=[batch, 1, dim]))
