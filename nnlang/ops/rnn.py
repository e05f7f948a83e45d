"""Recurrent layers (rnn, lstm, gru) on [batch, time, features], with Keras' parameter layout.

Decomposition: ONE GEMM projects the whole sequence ([batch*time, features] @ kernel), then a
`scan` node (ops/scan.py) runs the cell once per step: one [batch, units] @ recurrent GEMM and
the gate math in elementwise primitives, so the graph's size does not depend on the length.
"""
from __future__ import annotations

from nnlang.ir.dims import Sym, fmt_shape
from nnlang.ir.scan import Body
from nnlang.ops.init import init_spec
from nnlang.ops.nn import activate, check_activation, const_like, linear, need_float, param_dtype
from nnlang.ops.registry import ParamSpec, Sample, ShapeError, TensorType, need_positive, register
from nnlang.ops.scan import body_builder, scan


def _slice(b, x, axis, k, width):
    return b.slice(x, axis=axis, start=k * width, stop=(k + 1) * width, step=1)


def _simple_cell(b, xt, h, c, rec, bias, *, units, activation):
    return activate(b, b.add(xt, b.matmul(h, rec)), activation), None


def _lstm_cell(b, xt, h, c, rec, bias, *, units, activation):
    # Keras gate order i, f, c, o; the bias was already added to the input projection
    z = b.add(xt, b.matmul(h, rec))
    i, f, g, o = (_slice(b, z, 1, k, units) for k in range(4))
    c = b.add(b.mul(b.sigmoid(f), c), b.mul(b.sigmoid(i), activate(b, g, activation)))
    return b.mul(b.sigmoid(o), activate(b, c, activation)), c


def _gru_cell(b, xt, h, c, rec, rec_bias, *, units, activation):
    # Keras reset_after=True (the cuDNN form): the reset gate scales (h @ U_h + b_rh), not h.
    inner = b.add(b.matmul(h, rec), rec_bias)   # rec_bias: [batch, 3*units], one step of it
    xz, xr, xh = (_slice(b, xt, 1, k, units) for k in range(3))
    rz, rr, rh = (_slice(b, inner, 1, k, units) for k in range(3))
    z = b.sigmoid(b.add(xz, rz))
    r = b.sigmoid(b.add(xr, rr))
    hh = activate(b, b.add(xh, b.mul(r, rh)), activation)
    one = const_like(b, 1.0, h)
    return b.add(b.mul(z, h), b.mul(b.sub(one, z), hh)), None


# name -> (gate count, one step of the cell)
_CELLS = {"rnn": (1, _simple_cell), "lstm": (4, _lstm_cell), "gru": (3, _gru_cell)}


def _check(op, x):
    need_float(op, x)
    if x.rank != 3:
        raise ShapeError(f"{op} expects [batch, time, features] but got {fmt_shape(x.shape)}",
                         arg=0, hint="add a time axis with unsqueeze, or reshape first?")
    if isinstance(x.shape[1], Sym):
        raise ShapeError(f"{op}: the time dim of {fmt_shape(x.shape)} must be a number (the "
                         "recurrence is unrolled)", arg=0, hint="pad sequences to a fixed length")
    if isinstance(x.shape[2], Sym):
        raise ShapeError(f"{op}: the feature dim of {fmt_shape(x.shape)} must be a number", arg=0)


def _make(op):
    gates, cell = _CELLS[op]

    def params(x, *, units, bidirectional, init, recurrent_init, bias_init, **attrs):
        _check(op, x)
        dt, gu = param_dtype(x), gates * units
        if op == "lstm" and attrs.get("unit_forget_bias"):
            bias = ("unit_forget_bias", {"units": units})
        else:
            bias = init_spec(bias_init, "bias_init")
        one = {"kernel": ParamSpec((x.shape[2], gu), init_spec(init, "init"), dtype=dt),
               "recurrent": ParamSpec((units, gu), init_spec(recurrent_init, "recurrent_init"),
                                      dtype=dt),
               "bias": ParamSpec((2, gu) if op == "gru" else (gu,), bias, dtype=dt)}
        if not bidirectional:
            return one
        return {**one, **{f"backward_{k}": v for k, v in one.items()}}

    def shape_rule(x, *weights, units, activation, return_sequences, bidirectional, **_):
        _check(op, x)
        check_activation(op, activation)
        need_positive(op, "units", units)
        want = (x.shape[2], gates * units)
        if weights and weights[0] is not None and weights[0].shape != want:
            raise ShapeError(f"{op}: kernel {fmt_shape(weights[0].shape)} does not fit "
                             f"{x.shape[2]} features and {units} units", arg=1)
        width = units * (2 if bidirectional else 1)
        out = (x.shape[0], x.shape[1], width) if return_sequences else (x.shape[0], width)
        return TensorType(out, x.dtype)

    def run(b, x, kernel, rec, bias, reverse, units, activation, return_sequences):
        batch, steps, _ = b.type(x).shape
        width = units * (2 if op == "lstm" else 1)   # the carry: h (and c for lstm)
        # NOTE: x goes time-major before the projection (a copy of F features per token rather
        # than gates*units), so every step's slice of proj is one contiguous block
        if op == "gru":
            in_bias = b.reshape(_slice(b, bias, 0, 0, 1), shape=[gates * units])
            proj = linear(b, b.transpose(x, perm=[1, 0, 2]), kernel, in_bias)  # one GEMM
            # the recurrent bias is read every step beside h @ U: a broadcast "sequence", so its
            # gradient is the sum over steps that autodiff of broadcast_to already makes
            rec_bias = b.broadcast_to(_slice(b, bias, 0, 1, 1), shape=[steps, batch, gates * units])
            seqs = [proj, rec_bias]
        else:
            seqs = [linear(b, b.transpose(x, perm=[1, 0, 2]), kernel, bias)]  # one GEMM
        init = b.broadcast_to(b.const([[0.0]], b.type(x).dtype), shape=[batch, width])
        bg, bb = body_builder(b, init, seqs, [rec])
        carry = bg.inputs["carry"]
        h = carry if op != "lstm" else _slice(bb, carry, 1, 0, units)
        c = _slice(bb, carry, 1, 1, units) if op == "lstm" else None
        h, c = cell(bb, bg.inputs["x0"], h, c, bg.inputs["w0"], bg.inputs.get("x1"),
                    units=units, activation=activation)
        bg.outputs["y"] = h if c is None else bb.concat(h, c, axis=1)
        out = scan(b, init, seqs, [rec], Body(bg, width, len(seqs), 1), reverse)  # [T, B, width]
        hs = out if op != "lstm" else _slice(b, out, 2, 0, units)
        if not return_sequences:  # the last step run: index 0 when running backward
            last = 0 if reverse else steps - 1
            return b.reshape(b.slice(hs, axis=0, start=last, stop=last + 1, step=1),
                             shape=[batch, units])
        return b.transpose(hs, perm=[1, 0, 2])

    def decompose(b, x, *weights, units, activation, return_sequences, bidirectional, **_):
        ys = [run(b, x, *weights[:3], False, units, activation, return_sequences)]
        if bidirectional:
            ys.append(run(b, x, *weights[3:6], True, units, activation, return_sequences))
        return ys[0] if len(ys) == 1 else b.concat(*ys, axis=-1)

    def flops(ins, out, *, units, bidirectional, **_):
        batch, steps, feats = ins[0].shape
        return 2 * batch * steps * (feats + units) * gates * units * (2 if bidirectional else 1)

    extra = ", unit_forget_bias: bool = true" if op == "lstm" else ""
    register(op, "x: tensor, units: int, activation: str = \"tanh\", return_sequences: bool = "
             "false, bidirectional: bool = false, init: init = \"glorot_uniform\", "
             "recurrent_init: init = \"orthogonal\", bias_init: init = \"zeros\"" + extra,
             shape_rule, decompose=decompose, params=params, flops=flops, family="rnn",
             doc=_DOCS[op], samples=_SAMPLES[op])


_COMMON = ("x [batch, time, features] (time must be a number: the loop is unrolled), zero "
           "initial state. Returns the last h [batch, units], or every h [batch, time, units] "
           "with return_sequences = true. bidirectional = true adds a reversed pass with "
           "params backward_*, its outputs concatenated on the last axis (time-aligned). "
           "Params (Keras layout): kernel [features, G*units], recurrent [units, G*units], ")
_DOCS = {
    "rnn": "Simple (Elman) RNN: h = activation(x_t @ kernel + h @ recurrent + bias). " + _COMMON
           + "bias [units]. Init (Keras): kernel glorot_uniform, recurrent orthogonal, bias "
           "zeros.",
    "lstm": "LSTM with Keras gates i, f, c, o (sigmoid gates, activation for the candidate and "
            "output). " + _COMMON + "bias [4*units]; LSTM(128) on 128 features has 131,584 "
            "weights. Init (Keras): kernel glorot_uniform, recurrent orthogonal, bias zeros with "
            "the forget gate's slice at 1 (unit_forget_bias = true, which overrides bias_init).",
    "gru": "GRU with Keras gates z, r, h and reset_after = true (reset applied after the "
           "recurrent GEMM, as cuDNN). " + _COMMON + "bias [2, 3*units] (row 0 input bias, row "
           "1 recurrent bias); GRU(128) on 128 features has 99,072 weights. Init (Keras): kernel "
           "glorot_uniform, recurrent orthogonal, bias zeros.",
}
_SAMPLES = {
    op: (Sample(((2, 3, 4),), {"units": 5}),
         Sample(((2, 3, 4),), {"units": 3, "return_sequences": True, "bidirectional": True}))
    for op in _CELLS
}
_SAMPLES["rnn"] += (Sample(((3, 2, 4),), {"units": 2, "activation": "relu",
                                          "return_sequences": True}),)
for _op in _CELLS:
    _make(_op)
