"""Recurrent layers (rnn, lstm, gru) on [batch, time, features], with Keras' parameter layout.

Decomposition: ONE GEMM projects the whole sequence ([batch*time, features] @ kernel), then a
`scan` node (ops/scan.py) runs the cell once per step: one [batch, units] @ recurrent GEMM and
the gate math in elementwise primitives, so the graph's size does not depend on the length.
"""
from __future__ import annotations

from nnlang.errors import did_you_mean
from nnlang.ir.dims import Sym, fmt_shape
from nnlang.ir.scan import Body
from nnlang.ops.init import init_spec
from nnlang.ops.signature import show_value
from nnlang.ops.nn import (activate, check_activation, const_like, linear, need_float, param_dtype,
                           real_steps)
from nnlang.ops.registry import (ParamSpec, Sample, ShapeError, TensorType, need_positive,
                                 need_range, register)
from nnlang.ops.scan import body_builder, scan


def _slice(b, x, axis, k, width):
    return b.slice(x, axis=axis, start=k * width, stop=(k + 1) * width, step=1)


# `h` feeds the recurrent GEMM (dropped out under recurrent_dropout); GRU's update gate mixes
# the undropped state `h_mix`, as Keras does
def _simple_cell(b, xt, h, c, rec, bias, *, units, activation, h_mix):
    return activate(b, b.add(b.add(xt, bias), b.matmul(h, rec)), activation), None


def _lstm_cell(b, xt, h, c, rec, bias, *, units, activation, h_mix):
    # Keras gate order i, f, c, o; (x_t @ W + b) + h @ U, as Keras sums it
    z = b.add(b.add(xt, bias), b.matmul(h, rec))
    i, f, g, o = (_slice(b, z, 1, k, units) for k in range(4))
    c = b.add(b.mul(b.sigmoid(f), c), b.mul(b.sigmoid(i), activate(b, g, activation)))
    return b.mul(b.sigmoid(o), activate(b, c, activation)), c


def _gru_cell(b, xt, h, c, rec, rec_bias, *, units, activation, h_mix):
    # Keras reset_after=True (the cuDNN form): the reset gate scales (h @ U_h + b_rh), not h.
    inner = b.add(b.matmul(h, rec), rec_bias)   # rec_bias: [batch, 3*units], one step of it
    xz, xr, xh = (_slice(b, xt, 1, k, units) for k in range(3))
    rz, rr, rh = (_slice(b, inner, 1, k, units) for k in range(3))
    z = b.sigmoid(b.add(xz, rz))
    r = b.sigmoid(b.add(xr, rr))
    hh = activate(b, b.add(xh, b.mul(r, rh)), activation)
    one = const_like(b, 1.0, h)
    return b.add(b.mul(z, h_mix), b.mul(b.sub(one, z), hh)), None


# name -> (gate count, one step of the cell)
_CELLS = {"rnn": (1, _simple_cell), "lstm": (4, _lstm_cell), "gru": (3, _gru_cell)}

# Keras' Bidirectional(merge_mode = ...): how the two directions' outputs are combined
MERGE_MODES = ("concat", "sum", "ave", "mul")


def _merge(b, fwd, bwd, mode):
    if mode == "concat":
        return b.concat(fwd, bwd, axis=-1)
    if mode == "mul":
        return b.mul(fwd, bwd)
    both = b.add(fwd, bwd)
    return both if mode == "sum" else b.mul(both, const_like(b, 0.5, both))


def _state_rows(units, bidirectional, merge_mode, n_states):
    """return_state's states packed after the outputs along the time axis, each row as wide as
    the outputs: one row per state, or, with the two directions concatenated, one row per
    state holding the forward state then the backward one."""
    if not bidirectional:
        return n_states
    return n_states if merge_mode == "concat" else 2 * n_states


def last_step_hint(op: str, producer) -> str | None:
    """The fix when a recurrent layer reads another's output that has no time axis: the first
    layer returns only its last step (the Keras habit of stacking LSTMs without
    return_sequences). `producer` is the node that made the input."""
    if op in _CELLS and producer.op in _CELLS and not producer.attrs.get("return_sequences"):
        line = f" on line {producer.span.line}" if producer.span is not None else ""
        return (f"the {producer.op}{line} returns only its last step; give it "
                f"return_sequences = true to feed every step to this {op}")
    return None


def every_step_hint(producer) -> str | None:
    """The fix when a loss or metric gets one value per time step against one target per
    example: the recurrent layer `producer` (upstream of the prediction) returns every step."""
    if producer is not None and producer.op in _CELLS and producer.attrs.get("return_sequences"):
        line = f" on line {producer.span.line}" if producer.span is not None else ""
        return (f"the {producer.op}{line} returns every step (return_sequences = true): drop "
                f"it to keep the last step, or pool over time, e.g. mean(h, axis = 1)")
    return None


def _check(op, x):
    need_float(op, x)
    if x.rank != 3:
        raise ShapeError(f"{op} expects [batch, time, features] but got {fmt_shape(x.shape)}",
                         arg=0, hint="add a time axis with unsqueeze, or reshape first?")
    if isinstance(x.shape[2], Sym):
        raise ShapeError(f"{op}: the feature dim of {fmt_shape(x.shape)} must be a number", arg=0)


def _check_extras(op, x, mask, states, units, bidirectional, merge_mode, rates):
    """The optional mask and initial states fit x; merge_mode is known and has two
    directions to merge."""
    batch, steps = x.shape[0], x.shape[1]
    if mask is not None and (mask.rank != 2 or tuple(mask.shape) != (batch, steps)):
        raise ShapeError(f"{op}: mask {fmt_shape(mask.shape)} does not fit x "
                         f"{fmt_shape(x.shape)}: one flag per example and step, [{batch}, "
                         f"{steps}]", arg=1, hint="true (or 1) marks a real step, false a pad")
    # NOTE: a bidirectional layer's state is [forward | backward], as its concatenated
    # outputs are (Keras' Bidirectional(initial_state = [fh, fc, bh, bc]) is
    # initial_h = concat(fh, bh, axis = -1), initial_c = concat(fc, bc, axis = -1))
    want = units * (2 if bidirectional else 1)
    for k, (name, t) in enumerate(states):
        if t is None:
            continue
        if tuple(t.shape) != (batch, want) or t.dtype != x.dtype:
            width = t.shape[-1] if len(t.shape) == 2 and t.shape[0] == batch else None
            hint = (f"a bidirectional layer starts each direction from its half: "
                    f"{name} = concat(forward, backward, axis = -1), [batch, 2 * units]"
                    if bidirectional and width == units else
                    f"the state is [batch, units]: give this layer {width} units, or project "
                    f"the state to {units} with a dense layer first"
                    if width is not None and width != units and not bidirectional else
                    f"a state is {x.dtype}[batch, {'2 * ' if bidirectional else ''}units], "
                    "one row per example")
            raise ShapeError(f"{op}: {name} is {t} but the state is {x.dtype}"
                             f"{fmt_shape((batch, want))}", arg=2 + k, hint=hint)
    if merge_mode not in MERGE_MODES:
        raise ShapeError(f"{op}: unknown merge_mode {show_value(merge_mode)}", attr="merge_mode",
                         hint=(did_you_mean(str(merge_mode), list(MERGE_MODES)) or "one of: "
                               + ", ".join(f'"{m}"' for m in MERGE_MODES)) +
                         (" (Keras' merge_mode = None, the two directions apart: slice the "
                          "concat's halves, hs[:, :, 0:units] and hs[:, :, units:])"
                          if merge_mode in (None, "none") else ""))
    if merge_mode != "concat" and not bidirectional:
        raise ShapeError(f"{op}: merge_mode = {show_value(merge_mode)} merges the two "
                         "directions of bidirectional = true, and this layer has one",
                         attr="merge_mode", hint="add bidirectional = true, or leave "
                         "merge_mode out")
    for name, rate in rates.items():
        need_range(op, name, rate, 0.0, 1.0, hi_open=True)


def _rate_mask(b, shape, rate, dtype):
    """Keras' dropout masks of a recurrent layer: one draw per sequence, the same every step
    (scaled 1/(1-rate)); None when off (rate 0 or not training)."""
    if rate == 0.0 or not b.training:
        return None
    return b.dropout(b.broadcast_to(b.const(1.0, dtype), shape=shape), rate=rate)


def _make(op):
    gates, cell = _CELLS[op]
    n_states = 2 if op == "lstm" else 1
    state_names = ("initial_h", "initial_c")[:n_states]

    def split(ins):
        """(x, mask, initial states, weights) from a node's tensor inputs (a shape rule may be
        asked about x alone)."""
        ins = tuple(ins) + (None,) * max(0, 2 + n_states - len(ins))
        return ins[0], ins[1], list(ins[2:2 + n_states]), ins[2 + n_states:]

    def params(*ins, units, bidirectional, init, recurrent_init, bias_init, **attrs):
        x = ins[0]
        _check(op, x)
        dt, gu = param_dtype(x), gates * units
        bias = init_spec(bias_init, "bias_init")
        if op == "lstm" and attrs.get("unit_forget_bias"):
            # NOTE: it sets the whole bias, so another bias_init would be dropped without a word
            if bias != ("zeros", {}):
                raise ShapeError(f"bias_init = {show_value(bias_init)} is not used: "
                                 "unit_forget_bias = true sets the bias (zeros, the forget "
                                 "gate's slice at 1)", attr="bias_init",
                                 hint="add unit_forget_bias = false to use bias_init")
            bias = ("unit_forget_bias", {"units": units})
        one = {"kernel": ParamSpec((x.shape[2], gu), init_spec(init, "init"), dtype=dt),
               "recurrent": ParamSpec((units, gu), init_spec(recurrent_init, "recurrent_init"),
                                      dtype=dt),
               "bias": ParamSpec((2, gu) if op == "gru" else (gu,), bias, dtype=dt)}
        if not bidirectional:
            return one
        return {**one, **{f"backward_{k}": v for k, v in one.items()}}

    def shape_rule(*ins, units, activation, return_sequences, return_state, bidirectional,
                   dropout, recurrent_dropout, merge_mode="concat", go_backwards=False, **_):
        x, mask, states, weights = split(ins)
        _check(op, x)
        if go_backwards and bidirectional:
            # NOTE: Keras' Bidirectional(LSTM(go_backwards = True)) runs that layer backward
            # and its twin forward, then flips the twin's outputs: the two halves swapped
            raise ShapeError(f"{op}: go_backwards = true with bidirectional = true: the "
                             "bidirectional layer already runs one direction backward",
                             attr="go_backwards",
                             hint="leave go_backwards out: the backward half is its backward_* "
                                  "weights, its outputs time-aligned")
        check_activation(op, activation)
        need_positive(op, "units", units)
        _check_extras(op, x, mask, list(zip(state_names, states)), units, bidirectional,
                      merge_mode, {"dropout": dropout, "recurrent_dropout": recurrent_dropout})
        want = (x.shape[2], gates * units)
        if weights and weights[0] is not None and weights[0].shape != want:
            raise ShapeError(f"{op}: kernel {fmt_shape(weights[0].shape)} does not fit "
                             f"{x.shape[2]} features and {units} units", arg=2 + n_states)
        width = units * (2 if bidirectional and merge_mode == "concat" else 1)
        if return_state:  # packed: the outputs, then each state, along the time axis
            if return_sequences and isinstance(x.shape[1], Sym):
                # NOTE: the packed value would be [batch, seq + states, units], which a
                # monomial dim cannot hold
                # NOTE: h is the outputs' last step, masked or not (a pad repeats the last
                # output); lstm's c is no output at all
                c = (" (c needs a numeric time dim, or return_sequences = false)"
                     if op == "lstm" else "")
                # NOTE: a bidirectional layer's backward h is at step 0, and a masked one
                # shows zeros at pads: the same weights run again give its states
                hint = (f"the final h is the outputs' last step: `hs = {op}(..., "
                        f"return_sequences = true)` then `h = hs[:, -1]`{c}"
                        if not bidirectional else
                        f"`hs = {op}(..., return_sequences = true)`, then the states from the "
                        f"same weights: `_, {'hf, cf, hb, cb' if op == 'lstm' else 'hf, hb'} "
                        f"= {op}(..., return_state = true, share = hs)`")
                raise ShapeError(f"{op}: return_state with return_sequences = true needs a "
                                 f"numeric time dim, not {x.shape[1]}", attr="return_state",
                                 hint=hint)
            lead = x.shape[1] if return_sequences else 1
            rows = _state_rows(units, bidirectional, merge_mode, n_states)
            return TensorType((x.shape[0], lead + rows, width), x.dtype)
        out = (x.shape[0], x.shape[1], width) if return_sequences else (x.shape[0], width)
        return TensorType(out, x.dtype)

    def results(b, out, *, units, return_sequences, return_state, bidirectional,
                merge_mode="concat", **_):
        """return_state: (outputs, h[, c]) cut from the packed value (see `shape_rule`); with
        bidirectional = true, Keras' Bidirectional order: (outputs, forward h[, c], backward
        h[, c])."""
        if not return_state:
            return None
        batch, total, width = b.type(out).shape
        rows = _state_rows(units, bidirectional, merge_mode, n_states)
        lead = total - rows
        pieces = [b.slice(out, axis=1, start=0, stop=lead, step=1)]
        if not return_sequences:
            pieces[0] = b.reshape(pieces[0], shape=[batch, width])
        states = [b.reshape(b.slice(out, axis=1, start=lead + k, stop=lead + k + 1, step=1),
                            shape=[batch, width]) for k in range(rows)]
        if width != units:   # each row is [forward | backward]
            states = [_slice(b, row, 1, side, units) for side in range(2) for row in states]
        return tuple(pieces + states)

    def run(b, x, mask, states, weights, reverse, units, activation, rates):
        kernel, rec, bias = weights
        batch, steps, feats = b.type(x).shape
        dtype = b.type(x).dtype
        width = units * n_states   # the carry: h (and c for lstm)
        drop = _rate_mask(b, [batch, 1, feats], rates[0], dtype)
        if drop is not None:
            x = b.mul(x, drop)
        # NOTE: x goes time-major before the projection (a copy of F features per token rather
        # than gates*units), so every step's slice of proj is one contiguous block
        xt = b.transpose(x, perm=[1, 0, 2])
        if op == "gru":
            in_bias = b.reshape(_slice(b, bias, 0, 0, 1), shape=[gates * units])
            seqs = [linear(b, xt, kernel, in_bias)]  # one GEMM
        else:
            seqs = [linear(b, xt, kernel)]
        # NOTE: the bias (GRU's recurrent bias) is read every step beside h @ U: a broadcast
        # "sequence", whose gradient is the sum over steps that autodiff of broadcast_to
        # makes; the fold pass then hands it to the body as a weight (no copy per step, and
        # no bias add over the whole projection before the loop)
        step_bias = _slice(b, bias, 0, 1, 1) if op == "gru" else bias
        extra = {"bias": b.broadcast_to(step_bias, shape=[steps, batch, gates * units])}
        if mask is not None:
            # NOTE: the step mixes new and old state by the flag, so it must be 0 or 1
            m = b.cast(real_steps(b, mask), dtype=dtype)
            extra["mask"] = b.reshape(b.transpose(m, perm=[1, 0]), shape=[steps, batch, 1])
        rdrop = _rate_mask(b, [batch, units], rates[1], dtype)
        if rdrop is not None:
            extra["rdrop"] = b.broadcast_to(b.reshape(rdrop, shape=[1, batch, units]),
                                            shape=[steps, batch, units])
        seqs += list(extra.values())
        given = [s if s is not None else b.broadcast_to(b.const([[0.0]], dtype),
                                                        shape=[batch, units]) for s in states]
        init = given[0] if n_states == 1 else b.concat(*given, axis=1)
        bg, bb = body_builder(b, init, seqs, [rec])
        seq_in = {k: bg.inputs[f"x{1 + i}"] for i, k in enumerate(extra)}
        carry = bg.inputs["carry"]
        h = carry if op != "lstm" else _slice(bb, carry, 1, 0, units)
        c = _slice(bb, carry, 1, 1, units) if op == "lstm" else None
        h_in = bb.mul(h, seq_in["rdrop"]) if "rdrop" in seq_in else h
        new_h, new_c = cell(bb, bg.inputs["x0"], h_in, c, bg.inputs["w0"],
                            seq_in["bias"], units=units, activation=activation, h_mix=h)
        new = [new_h] if new_c is None else [new_h, new_c]
        if "mask" in seq_in:  # a padded step keeps the state (Keras masking)
            keep = seq_in["mask"]
            one = const_like(bb, 1.0, keep)
            new = [bb.add(bb.mul(keep, v), bb.mul(bb.sub(one, keep), old))
                   for v, old in zip(new, [h, c][:n_states])]
        bg.outputs["y"] = new[0] if n_states == 1 else bb.concat(*new, axis=1)
        out = scan(b, init, seqs, [rec], Body(bg, width, len(seqs), 1), reverse)  # [T, B, width]
        hs = out if op != "lstm" else _slice(b, out, 2, 0, units)
        # the last step run: index 0 when running backward; -1 holds for any (symbolic) length
        start, stop = (0, 1) if reverse else (-1, None)
        final = b.reshape(b.slice(out, axis=0, start=start, stop=stop, step=1),
                          shape=[batch, width])
        finals = [final] if n_states == 1 else [_slice(b, final, 1, k, units) for k in range(2)]
        return hs, finals

    def decompose(b, *ins, units, activation, return_sequences, return_state, bidirectional,
                  dropout, recurrent_dropout, merge_mode="concat", go_backwards=False, **_):
        x, mask, states, weights = split(ins)
        if go_backwards:
            # NOTE: Keras' go_backwards: the layer reads x (and its mask) from the last step to
            # the first and returns its outputs in that order, last step first; so it is the
            # forward layer on the flipped sequence (ops/movement.py `flip`)
            x, mask = (v if v is None else b.slice(v, axis=1, start=-1, stop=None, step=-1)
                       for v in (x, mask))
        rates = (dropout, recurrent_dropout)
        halves = [states]
        if bidirectional:   # each direction starts from its half of a given state
            halves = [[s if s is None else _slice(b, s, 1, side, units) for s in states]
                      for side in range(2)]
        runs = [run(b, x, mask, halves[0], weights[:3], False, units, activation, rates)]
        if bidirectional:
            runs.append(run(b, x, mask, halves[1], weights[3:6], True, units, activation,
                            rates))
        batch = b.type(x).shape[0]
        outs = []
        for hs, finals in runs:
            outs.append(b.transpose(hs, perm=[1, 0, 2]) if return_sequences else finals[0])
        y = outs[0] if len(outs) == 1 else _merge(b, *outs, merge_mode)
        if mask is not None and return_sequences and \
                (bidirectional or any(s is not None for s in states)):
            # NOTE: zeros where Keras (Bidirectional; its last output starts at zeros, not at
            # initial_h) and PyTorch's packed sequences show no output: at every pad of a
            # bidirectional layer, whose directions would show a state from the other side of
            # the row there, and before a row's first real step of one started from initial_h
            # (without it the state there is zeros anyway)
            shown = real_steps(b, mask)
            if not bidirectional:
                seen = b.cumsum(b.cast(shown, dtype="int32"), axis=1)
                shown = b.gt(seen, b.const(0, "int32"))
            y = b.mul(y, b.reshape(b.cast(shown, dtype=b.type(x).dtype),
                                   shape=[*b.type(shown).shape, 1]))
        if not return_state:
            return y
        width = b.type(y).shape[-1]
        lead = y if return_sequences else b.reshape(y, shape=[batch, 1, width])
        if width == units:   # one direction, or two merged: a row per state, forward first
            rows = [f for _, finals in runs for f in finals]
        else:                # concatenated directions: a row per state, [forward | backward]
            rows = [b.concat(f, bk, axis=1) for f, bk in zip(runs[0][1], runs[1][1])]
        return b.concat(lead, *[b.reshape(r, shape=[batch, 1, width]) for r in rows], axis=1)

    lstm_only = ", initial_c: tensor? = none, unit_forget_bias: bool = true" \
        if op == "lstm" else ""
    register(op, "x: tensor, units: int, activation: str = \"tanh\", return_sequences: bool = "
             "false, return_state: bool = false, bidirectional: bool = false, mask: tensor? = "
             "none, initial_h: tensor? = none" + lstm_only + ", dropout: float = 0.0, "
             "recurrent_dropout: float = 0.0, init: init = \"glorot_uniform\", "
             "recurrent_init: init = \"orthogonal\", bias_init: init = \"zeros\", "
             "merge_mode: str = \"concat\", go_backwards: bool = false",
             shape_rule, decompose=decompose, params=params, family="rnn",
             doc=_DOCS[op], samples=_SAMPLES[op], results=results,
             result_names=("outputs", "h", "c")[:1 + n_states], habits=_habits(op))


def _habits(op: str) -> dict:
    """Keras' and PyTorch's recurrent-layer options that have no counterpart here, and what
    to write instead (their nearest spellings, return_state, recurrent_init, mislead)."""
    cell = "write the cell as a block and run it under scan (docs/language.md, loops)"
    return {
        "reset_after": f"gru is Keras' GRU(reset_after = true), the cuDNN and PyTorch form, "
                       f"its only form; for the other, {cell}",
        "recurrent_activation": f"the gates are sigmoid (Keras' default); `activation` sets "
                                f"the candidate's; for other gates, {cell}",
        **dict.fromkeys(("lengths", "seq_lengths"),
                        "PyTorch's pack_padded_sequence lengths are a mask here: mask = "
                        "positions(x, axis = 1) < unsqueeze(lengths, axis = 1)"),
        "stateful": "no state carries over from one batch to the next: start a layer from a "
                    "given state with initial_h" + (" and initial_c" if op == "lstm" else ""),
        # Keras' decoder habit, `initial_state = [h, c]`: the nearest spelling, initial_h,
        # left lstm's c out
        "initial_state": "Keras' initial_state = [h" + (", c" if op == "lstm" else "") +
                         "] is initial_h = h" + (", initial_c = c" if op == "lstm" else "") +
                         " (a bidirectional layer's state is [batch, 2 * units], the forward "
                         "one then the backward one)",
        "unroll": "the cell always runs as one loop node (a scan), whatever the length",
        "time_major": "x is [batch, time, features]",
        "batch_first": "x is [batch, time, features] (PyTorch's batch_first = true)",
        "num_layers": f"stack layers with pipes: {op}(x, 64, return_sequences = true) |> "
                      f"{op}(64)",
        **dict.fromkeys(("bias", "use_bias"), "the gates always have biases (bias_init sets "
                                              "their start; they train)"),
        "proj_size": f"no projection inside the cell: {cell}",
        **({} if op == "lstm" else {"unit_forget_bias": "lstm's option: only lstm has a "
                                                        "forget gate"}),
    }


_COMMON = ("x [batch, time, features]; the cell runs as one loop node (a scan) whatever the "
           "length. Returns the last h [batch, units], or every h [batch, time, units] with "
           "return_sequences = true; return_state = true returns a tuple (outputs, h) (lstm: "
           "(outputs, h, c)). initial_h (and lstm's initial_c) [batch, units] start the "
           "state (default zeros): a decoder starts from an encoder's state. mask [batch, time] "
           "(bool, or numbers where nonzero is a real step, as token ids): a step whose flag is "
           "false (0) keeps the state and repeats the last output, zeros before a row's first "
           "real step (Keras masking). dropout / "
           "recurrent_dropout: Keras' per-sequence masks on the inputs and on h before the "
           "recurrent GEMM, training only. bidirectional = true adds a reversed pass with "
           "params backward_*, its outputs concatenated on the last axis (time-aligned; with a "
           "mask, zeros at the pads, as Keras' Bidirectional and PyTorch's packed sequences "
           "give), or merged as merge_mode says (Keras': \"concat\", \"sum\", \"ave\", "
           "\"mul\"); its return_state gives Keras' (outputs, forward h, [c,] backward h[, c]), "
           "the backward states those after step 0 (PyTorch's h_n[1]), and its initial_h "
           "(initial_c) is [batch, 2*units], the forward state then the backward one. "
           "go_backwards = true (Keras'): one direction, reading x and its mask from the last "
           "step to the first, its outputs in that order (output t after x[T-1] .. x[T-1-t]; "
           "the layer on flip(x, axis = 1)). Params "
           "(Keras layout): "
           "kernel [features, G*units], recurrent [units, G*units], ")
_DOCS = {
    "rnn": "Simple (Elman) RNN: h = activation(x_t @ kernel + h @ recurrent + bias). " + _COMMON
           + "bias [units]. Init (Keras): kernel glorot_uniform, recurrent orthogonal, bias "
           "zeros.",
    "lstm": "LSTM with Keras gates i, f, c, o (sigmoid gates, activation for the candidate and "
            "output). " + _COMMON + "bias [4*units]; LSTM(128) on 128 features has 131,584 "
            "weights. Init (Keras): kernel glorot_uniform, recurrent orthogonal, bias zeros with "
            "the forget gate's slice at 1 (unit_forget_bias = true, which sets the whole bias: "
            "another bias_init needs unit_forget_bias = false).",
    "gru": "GRU with Keras gates z, r, h and reset_after = true (reset applied after the "
           "recurrent GEMM, as cuDNN and PyTorch's nn.GRU, whose gate order is r, z, n). " +
           _COMMON + "bias [2, 3*units] (row 0 input bias, row 1 recurrent bias); GRU(128) on "
           "128 features has 99,072 weights. Init (Keras): kernel glorot_uniform, recurrent "
           "orthogonal, bias zeros.",
}
_SAMPLES = {
    op: (Sample(((2, 3, 4),), {"units": 5}),
         Sample(((2, 3, 4),), {"units": 3, "return_sequences": True, "bidirectional": True}),
         # a padded batch, both directions
         Sample(((2, 4, 3), (2, 4)), {"units": 2, "bidirectional": True,
                                      "return_sequences": True}, dtypes=(None, "bool")),
         # an encoder's state in, the states out
         Sample(((2, 3, 4), (2, 3)) + ((2, 3),) * (2 if op == "lstm" else 1),
                {"units": 3, "return_sequences": True, "return_state": True},
                dtypes=(None, "bool") + (None,) * (2 if op == "lstm" else 1)),
         Sample(((2, 3, 4), None, (2, 3)), {"units": 3, "return_state": True}),
         # Keras' Bidirectional(return_state = True): the states of both directions
         Sample(((2, 4, 3), (2, 4)), {"units": 2, "bidirectional": True, "return_state": True,
                                      "return_sequences": True}, dtypes=(None, "bool")),
         Sample(((2, 4, 3), (2, 4)), {"units": 2, "bidirectional": True, "return_state": True,
                                      "merge_mode": "ave"}, dtypes=(None, "bool")),
         Sample(((2, 4, 3), (2, 4)), {"units": 2, "bidirectional": True, "merge_mode": "mul",
                                      "return_sequences": True}, dtypes=(None, "bool")),
         # Keras' Bidirectional(initial_state = ...): [forward | backward] halves
         Sample(((2, 4, 3), None) + ((2, 4),) * (2 if op == "lstm" else 1),
                {"units": 2, "bidirectional": True, "return_state": True}),
         # Keras' go_backwards: a padded batch read last step first, its states out
         Sample(((2, 4, 3), (2, 4)), {"units": 3, "go_backwards": True, "return_state": True,
                                      "return_sequences": True}, dtypes=(None, "bool")))
    for op in _CELLS
}
for _op in _CELLS:
    _make(_op)
