"""Independent numpy references for the composite ops, written from the math (JAX's
lax_reference.py): no nnlang code, loops and einsum instead of unfold, so a bug in a
decomposition cannot hide behind the same bug here.

Each function takes the op's tensor arguments (None when an optional one is absent), then its
parameters in `params` order, then the op's attributes as keywords.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

# *** activations and elementwise ***

_erf = np.vectorize(math.erf, otypes=[np.float64])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def leaky_relu(x, *, alpha=0.01):
    return np.where(x > 0, x, alpha * x)


def elu(x, *, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(x))


# NOTE: the one table of activations: dense's activation= and the standalone ops both read it
ACTIVATIONS = {
    None: lambda x: x, "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0), "leaky_relu": leaky_relu,
    "gelu": gelu, "sigmoid": sigmoid, "tanh": np.tanh, "softmax": softmax,
    "log_softmax": log_softmax, "silu": lambda x: x * sigmoid(x),
    "softplus": lambda x: np.logaddexp(0, x), "elu": elu,
}


def _axes(axis):
    return None if axis is None else (axis if isinstance(axis, int) else tuple(axis))


# *** nn ***

def dense(x, w, b=None, *, activation=None, **_):
    y = np.einsum("...i,io->...o", x, w)
    return ACTIVATIONS[activation](y if b is None else y + b)


def layer_norm(x, gamma, beta, *, axis, eps):
    ax = _axes(axis)
    ax = tuple(a % x.ndim for a in ((ax,) if isinstance(ax, int) else ax))
    mu = x.mean(axis=ax, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=ax, keepdims=True)
    shape = [x.shape[i] if i in ax else 1 for i in range(x.ndim)]
    return (x - mu) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


def batch_norm(x, gamma, beta, mean, var, *, eps, training=False, **_):
    shape = [1, -1] + [1] * (x.ndim - 2)
    if training:
        ax = (0,) + tuple(range(2, x.ndim))
        mean, var = x.mean(axis=ax), x.var(axis=ax)
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape)
            + beta.reshape(shape))


def flatten(x, *, start, end):
    s, e = start % x.ndim, end % x.ndim
    return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])


def squeeze(x, *, axis):
    return np.squeeze(x, axis=_axes(axis))


def var(x, *, axis, keepdims):
    return np.var(x, axis=_axes(axis), keepdims=keepdims)


NN = {
    "dense": dense, "linear": dense,
    "embedding": lambda tokens, w, **_: w[tokens],
    **{name: ACTIVATIONS[name] for name in ("relu", "leaky_relu", "gelu", "silu", "softplus",
                                            "elu")},
    "square": lambda x: x ** 2,
    "reciprocal": lambda x: 1.0 / x,
    "clip": lambda x, *, lo, hi: np.clip(x, -np.inf if lo is None else lo,
                                         np.inf if hi is None else hi),
    "softmax": softmax, "log_softmax": log_softmax,
    "sum": lambda x, *, axis, keepdims: np.sum(x, axis=_axes(axis), keepdims=keepdims),
    "max": lambda x, *, axis, keepdims: np.max(x, axis=_axes(axis), keepdims=keepdims),
    "min": lambda x, *, axis, keepdims: np.min(x, axis=_axes(axis), keepdims=keepdims),
    "mean": lambda x, *, axis, keepdims: np.mean(x, axis=_axes(axis), keepdims=keepdims),
    "var": var,
    "flatten": flatten, "squeeze": squeeze,
    "flip": lambda x, *, axis: np.flip(x, axis=axis if isinstance(axis, int) else tuple(axis)),
    "positions": lambda x, *, axis, dtype: np.arange(np.shape(x)[axis]).astype(dtype),
    "unsqueeze": lambda x, *, axis: np.expand_dims(x, axis),
    "permute": lambda x, *, perm: np.transpose(x, perm),
    "dropout": lambda x, **_: x,  # evaluation mode; training is checked statistically
    # evaluation mode: the expected value (training is checked statistically)
    "random_normal_like": lambda x, *, mean, stddev: np.full_like(x, mean),
    "random_uniform_like": lambda x, *, low, high: np.full_like(x, (low + high) / 2),
    "layer_norm": layer_norm, "batch_norm": batch_norm,
}


# *** convolution and pooling ***

def same_pads(n, k, s, d):
    """TensorFlow "SAME": output ceil(n / s), padding split with the extra cell at the end."""
    out = -(-n // s)
    total = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
    return total // 2, total - total // 2


def _norm(v, nd):
    return [v] * nd if isinstance(v, int) else list(v)


def _padding(padding, spatial, k, s, d):
    nd = len(spatial)
    if padding == "same":
        return [same_pads(n, kk, ss, dd) for n, kk, ss, dd in zip(spatial, k, s, d)]
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "causal":   # Keras' Conv1D: everything before the sequence
        return [(d[0] * (k[0] - 1), 0)]
    p = _norm(padding, nd)
    return [(p[i], p[i]) for i in range(nd)] if len(p) == nd else \
        [(p[2 * i], p[2 * i + 1]) for i in range(nd)]


def _channels_first(x, channels_last):
    return np.moveaxis(x, -1, 1) if channels_last else x


def _channels_back(y, channels_last):
    return np.moveaxis(y, 1, -1) if channels_last else y


def conv(x, w, b=None, *, kernel, stride, padding, dilation, channels_last=False, groups=1,
         **_):
    """Direct convolution: for every output position, sum over channels and kernel offsets.
    groups > 1 (PyTorch's): group g's filters convolve its own slice of the channels."""
    x = _channels_first(x, channels_last)
    if groups > 1:
        cg, fg = x.shape[1] // groups, w.shape[0] // groups
        y = np.concatenate([conv(x[:, g * cg:(g + 1) * cg], w[g * fg:(g + 1) * fg],
                                 kernel=kernel, stride=stride, padding=padding,
                                 dilation=dilation) for g in range(groups)], axis=1)
        if b is not None:
            y += b.reshape([1, -1] + [1] * (x.ndim - 2))
        return _channels_back(y, channels_last)
    nd = x.ndim - 2
    k, s, d = list(w.shape[2:]), _norm(stride, nd), _norm(dilation, nd)
    pads = _padding(padding, x.shape[2:], k, s, d)
    xp = np.pad(x, [(0, 0), (0, 0)] + pads)
    out = [(xp.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd)]
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for pos in itertools.product(*(range(o) for o in out)):
        idx = tuple(slice(p * s[i], p * s[i] + d[i] * (k[i] - 1) + 1, d[i])
                    for i, p in enumerate(pos))
        patch = xp[(slice(None), slice(None)) + idx]          # [B, C, *k]
        inner = list(range(1, nd + 2))                         # channels and kernel offsets
        y[(slice(None), slice(None)) + pos] = np.tensordot(patch, w, axes=(inner, inner))
    if b is not None:
        y += b.reshape([1, -1] + [1] * nd)
    return _channels_back(y, channels_last)


def pool(kind):
    def ref(x, *, size, stride, padding, channels_last):
        x = _channels_first(x, channels_last)
        nd = x.ndim - 2
        k = _norm(size, nd)
        s = k if stride is None else _norm(stride, nd)
        pads = _padding(padding, x.shape[2:], k, s, [1] * nd)
        fill = -np.inf if kind == "max" else 0.0
        xp = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=fill)
        # Keras' padding = "same" averages the real cells only; explicit pads count (PyTorch)
        real = np.pad(np.ones_like(x), [(0, 0), (0, 0)] + pads,
                      constant_values=0.0 if padding == "same" else 1.0)
        out = [(xp.shape[2 + i] - k[i]) // s[i] + 1 for i in range(nd)]
        y = np.zeros(x.shape[:2] + tuple(out))
        for pos in itertools.product(*(range(o) for o in out)):
            at = (slice(None), slice(None)) + tuple(slice(p * s[i], p * s[i] + k[i])
                                                    for i, p in enumerate(pos))
            win = xp[at].reshape(x.shape[:2] + (-1,))
            cells = real[at].reshape(x.shape[:2] + (-1,)).sum(-1)
            y[(slice(None), slice(None)) + pos] = win.max(-1) if kind == "max" else \
                win.sum(-1) / cells
        return _channels_back(y, channels_last)
    return ref


def global_pool(fn):
    def ref(x, *, channels_last):
        x = _channels_first(x, channels_last)
        return fn(x.reshape(x.shape[:2] + (-1,)), axis=-1)
    return ref


CONV = {"conv1d": conv, "conv2d": conv,
        "max_pool1d": pool("max"), "max_pool2d": pool("max"),
        "avg_pool1d": pool("avg"), "avg_pool2d": pool("avg"),
        "global_max_pool": global_pool(np.max), "global_avg_pool": global_pool(np.mean)}


# *** recurrent ***

def _act(name):
    return ACTIVATIONS[name]


def _scan(x, step, state, reverse, return_sequences, mask):
    """Runs `step(x_t, state) -> state` (state[0] is h); a masked-out step keeps the state."""
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    outs = {}
    out = np.zeros_like(state[0])   # Keras: the last output starts at zeros, not at the state
    for t in steps:
        new = step(x[:, t], state)
        if mask is not None:
            keep = mask[:, t, None].astype(bool)
            new = tuple(np.where(keep, n, o) for n, o in zip(new, state))
            out = np.where(keep, new[0], out)
        else:
            out = new[0]
        state = new
        outs[t] = out
    seq = np.stack([outs[t] for t in range(x.shape[1])], axis=1)
    return (seq if return_sequences else state[0]), state


def _simple(x, W, U, b, units, act, state):
    return lambda xt, s: (act(xt @ W + s[0] @ U + b),)


def _lstm(x, W, U, b, units, act, state):
    def step(xt, s):
        h, c = s
        z = xt @ W + h @ U + b
        i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * act(g)
        return sigmoid(o) * act(c), c
    return step


def _gru(x, W, U, b, units, act, state):
    """Keras GRU(reset_after=True): bias[0] on the input side, bias[1] on the recurrent side."""
    def step(xt, s):
        h = s[0]
        xz, xr, xh = np.split(xt @ W + b[0], 3, axis=1)
        hz, hr, hh = np.split(h @ U + b[1], 3, axis=1)
        z, r = sigmoid(xz + hz), sigmoid(xr + hr)
        return (z * h + (1 - z) * act(xh + r * hh),)
    return step


def _directions(cell, n_states):
    """A reference over (x, mask, initial states..., weights...): Keras' layer with masking,
    initial_state and return_state (the results packed along the time axis, as the op's
    shape rule says)."""
    def ref(x, mask, *rest, units, activation, return_sequences, bidirectional,
            return_state=False, merge_mode="concat", go_backwards=False, **_):
        given, weights = rest[:n_states], rest[n_states:]
        if go_backwards:   # Keras: x and its mask read last step first, outputs in that order
            x, mask = x[:, ::-1], None if mask is None else mask[:, ::-1]
        zero = np.zeros((x.shape[0], units * (2 if bidirectional else 1)))
        both = tuple(zero if s is None else s for s in given)
        ys, finals = [], []
        for k, reverse in enumerate([False, True] if bidirectional else [False]):
            W, U, b = weights[3 * k:3 * k + 3]
            # a bidirectional layer's given state is [forward | backward]
            state = tuple(s[:, k * units:(k + 1) * units] for s in both)
            y, final = _scan(x, cell(x, W, U, b, units, _act(activation), state), state,
                             reverse, return_sequences, mask)
            ys.append(y)
            finals.append(final)
        merge = {"concat": lambda f, b: np.concatenate([f, b], axis=-1), "sum": np.add,
                 "ave": lambda f, b: (f + b) / 2, "mul": np.multiply}[merge_mode]
        y = merge(*ys) if bidirectional else ys[0]
        if bidirectional and mask is not None and return_sequences:
            y = y * (mask != 0)[..., None]   # Keras' Bidirectional: zeros at the pads
        if not return_state:
            return y
        # the op's packing: after the outputs, a row per state (Keras' order, forward h, c,
        # then backward h, c), or with concatenated directions a row [forward | backward]
        if bidirectional and merge_mode == "concat":
            rows = [np.concatenate([f, b], axis=-1) for f, b in zip(*finals)]
        else:
            rows = [s for final in finals for s in final]
        lead = y if return_sequences else y[:, None]
        return np.concatenate([lead] + [r[:, None] for r in rows], axis=1)
    return ref


RNN = {"rnn": _directions(_simple, 1), "lstm": _directions(_lstm, 2),
       "gru": _directions(_gru, 1)}


# *** attention ***

def multi_head_attention(q, kv, mask, wq, bq, wk, bk, wv, bv, wo, bo, *, heads, causal,
                         **_):
    kv = q if kv is None else kv
    Q, K, V = q @ wq + bq, kv @ wk + bk, kv @ wv + bv
    B, Lq, D = Q.shape
    Lk, dh = K.shape[1], D // heads
    Q, K, V = (t.reshape(B, -1, heads, dh) for t in (Q, K, V))
    s = np.einsum("bqhd,bkhd->bhqk", Q, K) / math.sqrt(dh)
    if mask is not None:
        s = np.where(mask.astype(bool)[:, None, None, :], s, -1e9)   # set, not shifted
    if causal:
        allowed = np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + (Lk - Lq)
        s = s + np.where(allowed, 0.0, -2e9)   # below padding: never a future key
    p = softmax(s, axis=-1)
    ctx = np.einsum("bhqk,bkhd->bqhd", p, V).reshape(B, Lq, D)
    return ctx @ wo + bo


def positional_encoding(x, mask=None, w=None, *, kind, **_):
    batch, length, dim = x.shape
    if kind == "learned":
        table = w[:length]
    else:
        table = np.zeros((length, dim))
        for pos in range(length):
            for i in range(dim):
                angle = pos / 10000 ** (2 * (i // 2) / dim)
                table[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    if mask is None:
        return x + table
    out = x.copy()
    for r in range(batch):  # a row's positions count its real tokens; padding is position 0
        seen = 0
        for t in range(length):
            out[r, t] += table[max(seen + (mask[r, t] != 0) - 1, 0)]
            seen += mask[r, t] != 0
    return out


ATTENTION = {"multi_head_attention": multi_head_attention,
             "positional_encoding": positional_encoding}


# *** losses and metrics ***

def _binary(p, y):
    return p.reshape(y.shape), y.astype(np.float64)


def bce(p, y, *, eps):
    p, y = _binary(p, y)
    p = np.clip(p, eps, 1 - eps)
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


def bce_with_logits(z, y, *, pos_weight=None):
    """PyTorch's BCEWithLogitsLoss: pos_weight scales the positive term, per last-axis column."""
    z, y = _binary(z, y)
    p = sigmoid(z)
    w = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    return -np.mean(w * y * np.log(p) + (1 - y) * np.log(1 - p))


def cross_entropy(logits, labels, *, label_smoothing=0.0, ignore_index=None, weight=None):
    """PyTorch's F.cross_entropy, mean reduction: int ids (rows labelled ignore_index left out
    of sum and count; all of them left out gives 0, nnlang's choice) or probabilities. Class
    weights w: ids divide by sum(w[y]) over the kept rows, probabilities by the row count."""
    logp, e, classes = log_softmax(logits), label_smoothing, logits.shape[-1]
    w = np.ones(classes) if weight is None else np.asarray(weight, np.float64)
    if np.issubdtype(labels.dtype, np.integer):
        keep = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
        safe = np.where(keep, labels, 0)
        picked = np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
        rows = -(1 - e) * w[safe] * picked - e * (w * logp).sum(axis=-1) / classes
        total = w[safe][keep].sum() if weight is not None else keep.sum()
        return rows[keep].sum() / (total if total else 1.0)
    target = labels * (1 - e) + e / classes
    return -np.mean(np.sum(w * target * logp, axis=-1))


def accuracy(s, y, *, ignore_index=None):
    """torchmetrics' MulticlassAccuracy(average="micro", ignore_index=k): rows labelled k left
    out of hits and count; all of them left out gives 0 (nnlang's choice, as cross_entropy)."""
    keep = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    return np.sum((np.argmax(s, axis=-1) == y)[keep]) / max(np.sum(keep), 1)


def binary_accuracy(p, y, *, threshold, ignore_index=None):
    """torchmetrics' BinaryAccuracy(threshold, ignore_index): entries labelled ignore_index
    left out; all of them left out gives 0 (nnlang's choice)."""
    p, y = _binary(p, y)
    keep = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    return np.sum(((p > threshold) == (y > 0.5))[keep]) / max(np.sum(keep), 1)


def huber(p, t, *, delta):
    d = np.abs(p - t)
    return np.mean(np.where(d < delta, 0.5 * d ** 2, delta * (d - 0.5 * delta)))


def kl_div(log_pred, target, log_target=False):
    """PyTorch's kl_div(input, target, reduction="batchmean"): xlogy, then / batch; with
    log_target the target is log-probabilities: p = exp(target), log p = target."""
    if log_target:
        return np.sum(np.exp(target) * (target - log_pred)) / log_pred.shape[0]
    plogp = np.where(target > 0, target * np.log(np.where(target > 0, target, 1.0)), 0.0)
    return np.sum(plogp - target * log_pred) / log_pred.shape[0]


LOSSES = {
    "mse": lambda p, t: np.mean((p - t) ** 2),
    "l1": lambda p, t: np.mean(np.abs(p - t)), "mae": lambda p, t: np.mean(np.abs(p - t)),
    "bce": bce, "bce_with_logits": bce_with_logits, "cross_entropy": cross_entropy,
    "huber": huber, "kl_div": kl_div,
    "accuracy": accuracy,
    "binary_accuracy": binary_accuracy,
}

REFERENCES = {**NN, **CONV, **RNN, **ATTENTION, **LOSSES}

# ops whose training-mode decomposition differs and is deterministic
TRAINING_REFERENCES = {"batch_norm": lambda *a, **k: batch_norm(*a, training=True, **k)}


# *** library primitives (their registry `impl` is checked against these) ***

def cumsum(x, *, axis=-1, reverse=False):
    y = np.moveaxis(np.asarray(x), axis, -1)
    out, acc = np.empty_like(y), np.zeros(y.shape[:-1], y.dtype)
    for i in (reversed(range(y.shape[-1])) if reverse else range(y.shape[-1])):
        acc = acc + y[..., i]
        out[..., i] = acc
    return np.moveaxis(out, -1, axis)


def triangle(upper):
    """Row i keeps columns j with j - i <= k (lower) or >= k (upper), written with loops."""
    def ref(x, *, k=0):
        out = np.zeros_like(x)
        for i, j in itertools.product(range(x.shape[-2]), range(x.shape[-1])):
            if (j - i >= k) if upper else (j - i <= k):
                out[..., i, j] = x[..., i, j]
        return out
    return ref


PRIMITIVES = {"cumsum": cumsum, "tril": triangle(False), "triu": triangle(True)}
