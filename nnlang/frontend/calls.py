"""Elaborating calls: ops (argument binding, kind checks, parameters, shape rules, errors that
name both shapes and where they came from), user blocks, and initializer calls."""
from __future__ import annotations

import math
import sys

from nnlang.errors import FOREIGN_NAMES, Span, did_you_mean, with_article
from nnlang.frontend import ast
from nnlang.frontend.fmt import expr as fmt_expr
from nnlang.frontend.values import (POISON, Abort, Initializer, KEYWORD_ONLY_OPS, Scope, T,
                                    join_path, shown_path)
from nnlang.ir.dims import Sym, fmt_shape, is_concrete, size_problem
from nnlang.ops import registry
from nnlang.ops.conv import depthwise_hint
from nnlang.ops.losses import WRITTEN_WITH_OPS as LOSSES_WITH_OPS
from nnlang.ops.nn import WRITTEN_WITH_OPS as ACTIVATIONS_WITH_OPS
from nnlang.ops.init import INITIALIZERS, init_problem
from nnlang.ops.registry import ParamSpec, ShapeError, sym_dims
from nnlang.ops.rnn import every_step_hint, last_step_hint
from nnlang.ops.signature import BindError, check_kind, show_value

FLOAT32_MAX = 3.4028234663852886e38
_DEPTHWISE = f"no depthwise layer: {depthwise_hint()}"
# Keras' and PyTorch's ops that nnlang has no op for, and what to write instead (where the
# closest name by letters would mislead: `pad` is not `add`)
WRITTEN_OTHERWISE = {
    "pad": "zero padding is an option of the convolution or pooling that needs it: "
           "padding = [lo, hi] per spatial axis; causal padding of a sequence (a TCN, "
           "WaveNet) is conv1d(x, filters, kernel, dilation = d, padding = \"causal\"), "
           "(kernel - 1) * d zeros before it",
    "depthwise_conv2d": _DEPTHWISE, "DepthwiseConv2D": _DEPTHWISE,
    "separable_conv2d": _DEPTHWISE + ", then a 1x1 conv2d(h, filters, 1)",
    "SeparableConv2D": _DEPTHWISE + ", then a 1x1 conv2d(h, filters, 1)",
    **{name: f"no {name} op: {name}(x) is {ops}" for name, ops in ACTIVATIONS_WITH_OPS.items()},
    **{name: f"no {name} op: with predictions p and targets y, write {ops}"
       for name, ops in LOSSES_WITH_OPS.items()},
    **dict.fromkeys(("Bidirectional", "bidirectional"),
                    "an option of the recurrent layer: lstm(x, 64, bidirectional = true) (also "
                    "gru and rnn; Keras' merge_mode is its option of that name, and "
                    "return_state gives outputs, forward h, c, backward h, c)"),
    "stack": "concat the tensors with a new axis each: concat(unsqueeze(a, axis = 1), "
             "unsqueeze(b, axis = 1), axis = 1)",
    **dict.fromkeys(("identity", "Identity"), "write the value itself: y = x"),
    # NOTE: by letters `detach` is closest to `tanh`, a wrong op that runs
    "detach": "stop_gradient(x) is x with no gradient flowing back through it (PyTorch's "
              "x.detach(), TensorFlow's tf.stop_gradient); to freeze a layer's weights pass "
              "it trainable = false",
    "zeros_like": "x * 0", "ones_like": "x * 0 + 1",
    **dict.fromkeys(("adaptive_avg_pool2d", "AdaptiveAvgPool2d", "adaptive_avg_pool1d"),
                    "to size 1 it is global_avg_pool(x) ([batch, channels]); to another size, "
                    "avg_pool2d(x, size = in_size / out_size)"),
    **dict.fromkeys(("adaptive_max_pool2d", "AdaptiveMaxPool2d"),
                    "to size 1 it is global_max_pool(x) ([batch, channels]); to another size, "
                    "max_pool2d(x, size = in_size / out_size)"),
    **dict.fromkeys(("split", "chunk", "unbind"),
                    "slice each part: a = x[:, 0:4], b = x[:, 4:8]"),
    **dict.fromkeys(("spatial_dropout1d", "spatial_dropout2d", "SpatialDropout1D",
                     "SpatialDropout2D", "dropout1d", "dropout2d", "Dropout1d", "Dropout2d"),
                    "dropout of ones of [batch, channels, 1, 1], broadcast: x * dropout("
                    "x[:, :, 0:1, 0:1] * 0 + 1, rate) (channels first)"),
    **dict.fromkeys(("normalize", "l2_normalize"),
                    "x / sqrt(sum(x * x, axis = -1, keepdims = true) + 1e-12)"),
    "norm": "sqrt(sum(x * x, axis = -1)) (the L2 norm over the last axis)",
    **dict.fromkeys(("instance_norm", "InstanceNorm2d", "InstanceNormalization"),
                    "(x - mean(x, axis = [2, 3], keepdims = true)) / sqrt(var(x, axis = [2, 3], "
                    "keepdims = true) + 1e-5) (PyTorch's InstanceNorm2d, affine = false)"),
    **dict.fromkeys(("rms_norm", "RMSNorm"),
                    "x / sqrt(mean(x * x, axis = -1, keepdims = true) + 1e-6) (without the "
                    "learned scale)"),
    **dict.fromkeys(("auc", "AUC", "precision", "Precision", "recall", "Recall", "f1_score",
                     "F1Score"),
                    "no such metric: a metric here is a mean over batches, which AUC, precision "
                    "and recall are not; compute them from `nnlang predict`'s outputs"),
    **dict.fromkeys(("group_norm", "GroupNorm", "GroupNormalization"),
                    "with G groups of x [batch, C, H, W] and its per-channel weights `param "
                    "scale: float32[C, 1, 1] = ones` and `param shift: float32[C, 1, 1] = zeros`"
                    ": h = reshape(x, [batch, G, -1]), then reshape((h - mean(h, axis = -1, "
                    "keepdims = true)) / sqrt(var(h, axis = -1, keepdims = true) + 1e-5), "
                    "[batch, C, H, W]) * scale + shift (PyTorch's GroupNorm: scale and shift "
                    "are its weight and bias; leave them out for affine = False)"),
    "repeat_interleave": "each element r times along axis 1 of x [batch, C]: reshape(concat("
                         "unsqueeze(x, axis = 2), unsqueeze(x, axis = 2), ..., axis = 2), "
                         "[batch, -1]) with r copies",
    **dict.fromkeys(("RepeatVector", "repeat_vector"),
                    "x [batch, units] n times along a new axis 1: broadcast_to(unsqueeze(x, "
                    "axis = 1), shape = [batch, n, units]) (Keras' RepeatVector(n))"),
    **dict.fromkeys(("TimeDistributed", "time_distributed"),
                    "no wrapper: dense, layer_norm, softmax and the elementwise ops act on the "
                    "last axis of [batch, time, features] already, so TimeDistributed(Dense(k)) "
                    "is dense(x, k) on the sequence"),
    # NOTE: by letters `lstm_cell` is `lstm`, which runs a whole sequence: right for a cell in
    # a loop over the inputs, not for one whose output is fed back
    **{cell: f"a cell run over a sequence is the layer: {layer}(x, units, return_sequences = "
             f"true) (return_state = true also gives its final state); a cell whose output "
             f"is fed back as its next input is a block run by `scan Cell(...) over ...` "
             f"(docs/language.md, 'Your own recurrence: scan')"
       for layer, names in (("lstm", ("LSTMCell", "lstm_cell")), ("gru", ("GRUCell", "gru_cell")),
                            ("rnn", ("RNNCell", "rnn_cell", "SimpleRNNCell")))
       for cell in names},
    **dict.fromkeys(("ctc_loss", "CTCLoss", "ctc_batch_cost"),
                    "not supported: CTC's alignment sum has no op here"),
    **dict.fromkeys(("margin_ranking_loss", "MarginRankingLoss"),
                    "with scores a, b and y in {-1, 1}: mean(relu(margin - y * (a - b))) "
                    "(margin 0.0 is PyTorch's default)"),
    **dict.fromkeys(("triplet_margin_loss", "TripletMarginLoss"),
                    "with anchor a, positive p and negative n: mean(relu(sqrt(sum((a - p + 1e-6) "
                    "** 2, axis = -1)) - sqrt(sum((a - n + 1e-6) ** 2, axis = -1)) + 1.0)) "
                    "(PyTorch's margin 1.0, p = 2)"),
}
_RANGE = {"float32": (-FLOAT32_MAX, FLOAT32_MAX, "about 3.4e38"),
          "float64": (-sys.float_info.max, sys.float_info.max, "about 1.8e308"),
          "int32": (-2**31, 2**31 - 1, "-2147483648 to 2147483647"),
          "int64": (-2**63, 2**63 - 1, "-9223372036854775808 to 9223372036854775807")}


class CallElaboration:
    """The call half of `Elaborator` (a mixin: it uses the elaborator's graph, builder and
    error sink)."""

    def call(self, e: ast.Call, scope: Scope, target: str | None):
        if e.func in INITIALIZERS and registry.get(e.func) is None:
            return self.initializer_call(e, scope)
        block = self.defs.get(e.func)
        opdef = registry.get(e.func)
        if isinstance(block, ast.BlockDef):
            return self.block_call(block, e, scope, target)
        if isinstance(block, ast.ModelDef):
            self.fail(f"'{e.func}' is a model; models cannot be called", e.func_span,
                      f"turn it into a block: `block {e.func}(...) {{ ... return ... }}`")
        if opdef is None or e.func in KEYWORD_ONLY_OPS:
            names = [n for n, d in self.defs.items() if isinstance(d, ast.BlockDef)]
            names += [n for n in registry.all_ops() if n not in KEYWORD_ONLY_OPS]
            self.fail(f"unknown op or block '{e.func}'", e.func_span,
                      WRITTEN_OTHERWISE.get(e.func) or self.foreign_positional(e, scope)
                      or did_you_mean(e.func, names) or "see `nnlang ops` for the list of ops")
        if opdef.has(registry.RANDOM):
            # NOTE: the step key these hash is the runtime's; a key a model passed would be
            # the same every step (or a float tensor, refused with a word about keys)
            like = f"{e.func}_like"
            self.fail(f"'{e.func}' draws from the runtime's per-step key, which a model "
                      "cannot pass", e.func_span,
                      f"write `{like}(x)`: noise of x's shape, drawn fresh every training step"
                      if registry.get(like) is not None else None)
        # NOTE: an op without weights (relu in `h = dense(x, 8) |> relu`) passes the target
        # name to its first argument, so the layer it wraps is named `h`, not `dense`
        inner = target if opdef.params is None else None
        self.unquoted_names(e, opdef, scope)
        args = [self.single(a, scope, inner if i == 0 else None) for i, a in enumerate(e.args)]
        kwargs = {k.name: self.single(k.value, scope) for k in e.kwargs}
        if any(v is POISON for v in args + list(kwargs.values())):
            raise Abort
        share = kwargs.pop("share", None)
        spans = {i: a.span for i, a in enumerate(e.args)}
        spans.update({k.name: k.value.span for k in e.kwargs})
        frozen = scope.frozen
        if opdef.params is not None and "trainable" in kwargs:
            frozen = not self.trainable_flag(kwargs.pop("trainable"), spans["trainable"]) or frozen
        try:
            bound = opdef.sig.bind(args, kwargs)
        except BindError as err:
            span = spans.get(err.arg, e.span) if err.arg is not None else e.span
            unknown = err.message.startswith("has no parameter")
            if unknown:   # NOTE: the name is the culprit, not its value (as for a block's call)
                span = next((k.span for k in e.kwargs if k.name == err.arg), span)
            hint = opdef.habits.get(err.arg) if unknown else None
            if callable(hint):
                hint = self.habit_hint(hint, opdef, e, args, kwargs)
            if err.message.startswith("takes at most") and opdef.positional is not None:
                hint = self.positional_hint(opdef, e, args)
            self.fail(f"{e.func}() {err.message}", span, hint or err.hint)
        tensors, attrs, tspans, attr_spans = [], {}, [], {}
        names = list(opdef.sig.names())
        for p in opdef.sig.params:
            value = bound[p.name]
            pos = names.index(p.name)
            span = spans.get(p.name, spans.get(pos, e.span))
            if p.variadic:
                for i, v in enumerate(value, start=pos):
                    problem = check_kind(p.kind, v, isinstance(v, T))
                    if problem:
                        got = "a list" if isinstance(v, list) else show_value(v)
                        # NOTE: torch.cat([a, b]) and Keras' Concatenate()([a, b]) take a list
                        hint = (f"pass the tensors themselves, not a list: "
                                f"`{e.func}(a, b, ...)`" if isinstance(v, list)
                                else f"signature: {e.func}({opdef.sig})")
                        self.fail(f"{e.func}() argument {i + 1}: {problem}, got {got}",
                                  spans.get(i, e.span), hint)
                    tensors.append(v)
                    tspans.append(spans.get(i, e.span))
                continue
            optional_none = value is None and not p.required and p.default is None
            problem = None if optional_none else check_kind(p.kind, value, isinstance(value, T))
            if not problem and p.kind == "float" and value is not None and abs(value) > FLOAT32_MAX:
                problem = f"{value!r} is too large for float32 (it would be infinity)"
            if problem:
                # NOTE: a value of another framework's type (Keras' gelu(approximate=True))
                hint = opdef.habits.get(f"{p.name} = {show_value(value)}",
                                        f"signature: {e.func}({opdef.sig})")
                if e.func in ("max", "min") and isinstance(value, T):  # numpy/torch's max(a, b)
                    which = "larger" if e.func == "max" else "smaller"
                    hint = f"{e.func} reduces one tensor over axis; the elementwise {which} of " \
                           f"two tensors is {e.func}imum(a, b)"
                self.fail(f"{e.func}() argument '{p.name}': {problem}", span, hint)
            if p.kind in ("tensor", "tensor?"):
                tensors.append(value)
                tspans.append(span)
            else:
                attrs[p.name] = value.spec() if isinstance(value, Initializer) else value
                if p.name in spans or pos in spans:   # NOTE: written, not a default
                    attr_spans[p.name] = span
        path = None
        if opdef.params is not None:
            path = self.layer_path(scope, target, e.func, share, spans.get("share"))
        # NOTE: a layer called with `share = d1` takes d1's weights (`path`) but is its own call,
        # shown under its own name (d2), as Keras lists each call of a shared layer
        where = self.own_path(scope, target, e.func) if path and share is not None else \
            shown_path(scope, path or join_path(scope.prefix, target or ""))
        return self.emit(e.func, tensors, attrs, e.span, tspans, scope, path, where, attr_spans,
                         frozen)

    def habit_hint(self, habit, opdef, e: ast.Call, args: list, kwargs: dict) -> str:
        """A habit's hint that reads the call: the call as written without the options the
        op lacks, each argument's source text and value by name (the pad id PyTorch's
        padding_idx = 1 names)."""
        names = list(opdef.sig.names())
        texts = dict(zip(names, map(fmt_expr, e.args))) | \
            {k.name: fmt_expr(k.value) for k in e.kwargs}
        kept = [fmt_expr(a) for a in e.args] + \
            [f"{k.name} = {fmt_expr(k.value)}" for k in e.kwargs if k.name in names]
        return habit(f"{e.func}({', '.join(kept)})", texts, dict(zip(names, args)) | kwargs)

    def positional_hint(self, opdef, e: ast.Call, args: list) -> str | None:
        """The op's own call for PyTorch's loose positional dims (`transpose(x, 1, 2)`)."""
        first = args[0] if args else None
        rank = len(self.g.node(first.id).type.shape) if isinstance(first, T) else None
        return opdef.positional([fmt_expr(a) for a in e.args], args, rank)

    def foreign_positional(self, e: ast.Call, scope: Scope) -> str | None:
        """PyTorch's `view(x, -1, 192)`, numpy's `swapaxes(x, 1, 2)`: our op's name and its
        call for the loose dims, where our op has one and the call has more positional
        arguments than it takes."""
        ours = registry.get(FOREIGN_NAMES.get(e.func) or "")
        if ours is None or ours.positional is None or len(e.args) <= len(ours.sig.params):
            return None
        args = [self.single(a, scope) for a in e.args]
        if any(v is POISON for v in args):
            raise Abort
        hint = self.positional_hint(ours, e, args)
        return hint and f"'{e.func}' is {ours.name} here; {hint}"

    # *** calls that give several values ***
    def single(self, e, scope: Scope, target: str | None = None):
        """An operand: one value, never the several a call may give (lstm's return_state, a
        block's `return a, b`), which only an assignment unpacks."""
        v = self.expr(e, scope, target)
        if isinstance(v, tuple):
            self.several(e, len(v))
        return v

    def several(self, e, n: int, index: int | None = None, indexed: bool = False):
        """The error for the n values of `e` where one is needed, with the assignment that
        unpacks them (naming the one `index` asked for, when an index did)."""
        what, names = self.unpacking(e, n)
        values = f"{n} values ({', '.join(names)})"
        then = f", then use `{names[index]}`" if index is not None and -n <= index < n else ""
        self.fail(f"cannot index {what}: it returns {values}, not one tensor" if indexed else
                  f"{what} returns {values}, where one value is needed", e.span,
                  f"unpack them first: `{', '.join(names)} = {what}`{then}")

    def name_each(self, e, n: int) -> str:
        what, names = self.unpacking(e, n)
        return f"name each: `{', '.join(names)} = {what}`"

    def unpacking(self, e, n: int) -> tuple[str, list[str]]:
        """How the source spells the call giving n values, and names to unpack them into: the
        op's own (lstm: outputs, h, c), or those a block returns."""
        call = e.target if isinstance(e, ast.Pipe) else e.call if isinstance(e, ast.Scan) else e
        func = call.func if isinstance(call, ast.Call) else getattr(call, "id", None)
        if func is None:
            return "this", [f"v{i + 1}" for i in range(n)]
        if isinstance(e, ast.Scan):   # the stacked per-step outputs, then the final states
            states = len(call.args)
            outs = ["ys"] if n - states == 1 else [f"ys{i + 1}" for i in range(n - states)]
            return f"scan {func}(...)", outs + (["h"] if states == 1 else
                                                [f"h{i + 1}" for i in range(states)])
        names = []
        opdef, block = registry.get(func), self.defs.get(func)
        if opdef is not None:
            names = list(opdef.result_names)
        elif isinstance(block, ast.BlockDef):
            ret = next((st for st in block.body if isinstance(st, ast.Return)), None)
            names = [v.id for v in ret.values if isinstance(v, ast.Name)] if ret else []
        if len(names) != n or len(set(names)) != n:
            names = [f"v{i + 1}" for i in range(n)]
        return f"{func}(...)", names

    def unquoted_names(self, e: ast.Call, opdef, scope: Scope) -> None:
        """`dense(x, 3, activation = softmax)`, as Keras and PyTorch users write it: a string
        parameter given an op's bare name is meant as that name, quoted (else the name would
        read as an op to call, and the error would say to call it)."""
        params = [p for p in opdef.sig.params if not p.variadic]
        given = [(p, a) for p, a in zip(params, e.args)]
        given += [(next((p for p in params if p.name == k.name), None), k.value)
                  for k in e.kwargs]
        for p, a in given:
            if p is not None and p.kind == "str" and isinstance(a, ast.Name) and \
                    a.id not in scope.vars and registry.get(a.id) is not None:
                self.fail(f"{e.func}() argument '{p.name}' takes the activation's name as a "
                          f"string, not the op {a.id}" if p.name == "activation" else
                          f"{e.func}() argument '{p.name}' takes a string, not the op {a.id}",
                          a.span, f'quote it: {p.name} = "{a.id}"')

    def trainable_flag(self, value, span: Span) -> bool:
        """The value of a `trainable = ...` option, which must be a boolean."""
        if not isinstance(value, bool):
            self.fail(f"trainable must be true or false, got {show_value(value)}", span,
                      "write `trainable = false` to freeze the weights")
        return value

    def as_tensor(self, v, span: Span, func: str, dtype: str = "float32") -> T:
        """A tensor argument; a number literal becomes a constant of `dtype` (the dtype of the
        tensors it meets) that remembers its exact value, so a later retype to float64
        starts from the literal, not from its float32 rounding (`x * 0.1`)."""
        if isinstance(v, T):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            problem = literal_problem(v, dtype)
            if problem:
                self.fail(problem[0], span, problem[1])
            with self.b.at(span):
                return T(self.b.literal(v, dtype))
        self.fail(f"{func}(): expected a tensor, got {show_value(v)}", span)

    def layer_path(self, scope, target, func, share, share_span, block: bool = False) -> str:
        if share is not None:
            if not isinstance(share, T) or share.id not in self.layer_of:
                shown = share_span.text() if share_span is not None else None
                self.fail(f"share = names {repr(shown) if shown else 'a value'}, which no layer "
                          "with weights or block call made", share_span,
                          f"e.g. `b = {func}(..., share = a)` reuses the weights of "
                          f"`a = {func}(...)`")
            path = self.layer_of[share.id]
            # NOTE: a layer shares a layer's weights and a block call a call of the same block:
            # anything else would look its weights up under paths that hold none and make new
            made_by = self.block_of.get(path)
            op = self.layer_op.get(path)
            if made_by != (func if block else None) or op is not None and not block and \
                    LAYER_ALIASES.get(op, op) != LAYER_ALIASES.get(func, func):
                what = f"a call of block {made_by}" if made_by else f"the {op} layer"
                hint = (f"share a call of {made_by} with another call of {made_by}" if made_by
                        else f"share {with_article(op)} layer with another {op}")
                if op == "embedding" and not block:
                    hint = f"to tie an embedding to an output layer, multiply by its weight " \
                           f"transposed: `h @ transpose({path}.weight, perm = [1, 0])`"
                self.fail(f"share = names a value made by {what} ('{path}'), whose weights "
                          f"{func} cannot take", share_span, hint)
            return path
        base = target or func
        rep = scope.repeat
        path = join_path(scope.prefix, base + "".join(f".{k}" for k in rep))
        if path in self.used_paths:  # e.g. a second anonymous dense: dense_1, dense_2, ...
            k = 1
            while f"{path}_{k}" in self.used_paths:
                k += 1
            path = f"{path}_{k}"
        self.used_paths.add(path)
        return path

    def own_path(self, scope, target, func) -> str:
        """The path a call with `share =` is shown under: what its weights' path would be without
        it (`b`, `h.0`, `dense_1`), kept apart from the weight paths so none of those moves."""
        rep = "".join(f".{k}" for k in scope.repeat)
        base = join_path(shown_path(scope, scope.prefix), (target or func) + rep)
        path, k = base, 1
        while path in self.used_paths or path in self.shown_paths:
            path, k = f"{base}_{k}", k + 1
        self.shown_paths.add(path)
        return path

    def param(self, name: str, spec: ParamSpec, span: Span, share: bool,
              frozen: bool = False) -> int:
        """The param node of weight `name`; a frozen one is not trainable whatever its spec."""
        trainable = spec.trainable and not frozen
        init = spec.init if isinstance(spec.init, str) else spec.init[0]
        if init == "orthogonal" and len(spec.shape) < 2:
            self.fail(f"weight '{name}' {fmt_shape(spec.shape)}: the orthogonal initializer "
                      "needs a matrix (2 or more dims)", span,
                      "use it for kernels, and zeros or a normal init for vectors")
        if name in self.g.params:
            existing = self.g.node(self.g.params[name])
            if share and existing.shape == tuple(spec.shape):
                if spec.trainable and existing.attrs.get("trainable", True) != trainable:
                    self.fail(f"weight '{name}' is shared with a layer that is "
                              f"{'not ' if existing.attrs.get('trainable', True) else ''}frozen",
                              span, "give both uses of a shared layer the same `trainable`")
                return existing.id
            self.fail(f"weight '{name}' {fmt_shape(spec.shape)} conflicts with its earlier "
                      f"definition {fmt_shape(existing.shape)}", span,
                      # NOTE: the inputs may match where an option differs (groups = 4
                      # against groups = 2 on the same image): name both causes
                      "a shared layer must see inputs of the same shape and be called with "
                      "the same sizes and options (filters, kernel, groups, ...)"
                      if share else None)
        if share:
            # NOTE: a weight the first call did not make (`bidirectional = true` on a layer
            # that was one-directional) was made here under the shared layer's name, so the
            # "shared" layer had weights of its own that nothing said
            layer, _, weight = name.rpartition(".")
            self.fail(f"this call makes weight '{weight}', which the layer it shares "
                      f"('{layer}') does not have", span,
                      "a shared layer must be called with the same sizes and options (filters, "
                      "bidirectional, use_bias, ...) as its first call")
        with self.b.at(span, name.rpartition(".")[0]):
            nid = self.b.emit("param", name=name, dtype=spec.dtype, shape=list(spec.shape),
                              init=spec.init, trainable=trainable)
        self.g.params[name] = nid
        return nid

    def same_inits(self, path: str, attrs: dict, attr_spans: dict | None, span: Span) -> None:
        """A shared layer's weights are made, and initialized, by its first call: an
        initializer written at a later call that differs from the first's would be ignored."""
        first = self.layer_inits.get(path, {})
        for k, at in (attr_spans or {}).items():   # NOTE: the options this call wrote
            if k in first and attrs.get(k) != first[k]:
                self.fail(f"{k} = {_show_init(attrs.get(k))} here differs from "
                          f"{_show_init(first[k])}, which the shared layer '{path}' was "
                          "initialized with at its first call", at,
                          f"a shared layer's weights are its first call's: leave {k} out here, "
                          "or write it at the first call")

    def emit(self, op: str, ins: list, attrs: dict, span: Span, in_spans: list, scope: Scope,
             path: str | None, where: str | None = None, attr_spans: dict | None = None,
             frozen: bool = False):
        """Adds one op node; `path` names a layer that owns weights, `where` the node's path,
        `attr_spans` where each attribute was written (a size error points there), `frozen`
        whether its weights are kept out of training."""
        dtypes = [self.g.node(v.id).dtype for v in ins if isinstance(v, T)]
        dtype, whole = literal_dtype(dtypes), int_literal_dtype(op, dtypes)
        ins = [None if v is None else
               self.as_tensor(v, s, op, whole if whole and type(v) is int else dtype)
               for v, s in zip(ins, in_spans)]
        opdef = registry.get(op)
        tensor_params = [p for p in opdef.sig.params if p.kind in ("tensor", "tensor?")]
        for p, v, s in zip(tensor_params, ins, in_spans):
            if v is None and p.kind == "tensor":
                self.fail(f"{op}: {p.name} is none, not a tensor", s,
                          "give a tensor or a number here")
        in_types = [None if t is None else self.g.node(t.id).type for t in ins]
        if any(t is None for t, x in zip(in_types, ins) if x is not None):
            raise Abort
        full = {p.name: attrs.get(p.name, p.default) for p in opdef.sig.params
                if p.kind not in ("tensor", "tensor?")}
        if opdef.bind_attrs is not None:
            try:
                full = opdef.bind_attrs(*in_types, **full)
            except ShapeError as err:
                self.shape_fail(op, err, span, in_spans, ins, attr_spans)
        params = []
        if opdef.params is not None:
            try:
                specs = opdef.params(*in_types, **full)
            except ShapeError as err:
                self.shape_fail(op, err, span, in_spans, ins, attr_spans)
            shared = path in self.layer_op
            if shared:
                self.same_inits(path, attrs, attr_spans, span)
            else:
                self.layer_inits.setdefault(path, {k: v for k, v in full.items()
                                                   if k.endswith("init")})
            for k, spec in specs.items():
                self.check_size(spec.shape, attrs, attr_spans, span)
                if not is_concrete(spec.shape):
                    self.symbolic_weight(op, k, spec.shape, span, in_spans, ins, in_types)
            params = [T(self.param(f"{path}.{k}", spec, span, shared, frozen))
                      for k, spec in specs.items()]
        layer = where or path or shown_path(scope, scope.prefix)
        try:
            with self.b.at(span, layer):
                nid = self.b.emit(op, *[None if t is None else t.id for t in ins],
                                  *[p.id for p in params], **full)
        except ShapeError as err:
            self.shape_fail(op, err, span, in_spans, ins, attr_spans)
        self.check_size(self.g.node(nid).shape or (), attrs, attr_spans, span)
        if path is not None:
            self.layer_of[nid] = path
            self.layer_op.setdefault(path, op)
        if opdef.results is not None:  # several results packed in one value: a tuple
            with self.b.at(span, layer):
                parts = opdef.results(self.b, nid, **full)
            if parts is not None:
                self.part_of.update({p: (nid, k) for k, p in enumerate(parts)})
                if path is not None:   # NOTE: each result names the layer: `share = h` works
                    self.layer_of.update((p, path) for p in parts)
                return tuple(T(p) for p in parts)
        return T(nid)

    def check_size(self, shape, attrs: dict, attr_spans: dict | None, span: Span):
        """An error at the argument that made a tensor too large for any machine."""
        problem = size_problem(shape)
        if problem is None:
            return
        index, why = problem
        dims = [shape[index]] if index is not None else list(shape)
        at = next((attr_spans[k] for k, v in attrs.items() if attr_spans and k in attr_spans
                   and any(v == d or isinstance(v, list) and d in v for d in dims)), span)
        self.fail(why, at, "is this number a typo?")

    def symbolic_weight(self, op, name, shape, span, in_spans, ins, in_types):
        """A weight's size may not depend on a symbol: it is allocated once, for every length."""
        syms = sym_dims(shape)
        arg = next((i for i, t in enumerate(in_types) if t is not None
                    and sym_dims(t.shape) & syms), None)
        hint = ("a weight has one size for every length: make that dim a number or a "
                "hyper-parameter")
        if arg is not None and in_types[arg].shape[-1:] == (Sym.of("batch"),):
            # NOTE: a [batch] value (a label, x[:, 0]) into dense: its last axis, the one the
            # layer maps, is the batch
            hint = (f"{op} maps the last axis, and the last axis of {in_types[arg]} is the "
                    "batch: give it features, e.g. unsqueeze(x, axis = -1) for one per example")
        self.shape_fail(op, ShapeError(
            f"{op}: its weight '{name}' would be {fmt_shape(shape)}, which depends on the "
            f"symbol {', '.join(sorted(syms))}", arg=arg, hint=hint), span, in_spans, ins)

    def shape_fail(self, op, err: ShapeError, span, in_spans, ins, attr_spans=None):
        at = in_spans[err.arg] if err.arg is not None and err.arg < len(in_spans) else span
        if err.attr is not None and attr_spans and err.attr in attr_spans:
            at = attr_spans[err.attr]
        notes = []
        for t in dict.fromkeys(ins):
            if t is None:
                continue
            node = self.g.node(t.id)
            written = node.span.text() if node.span is not None else None
            name, where = self.origin.get(t.id, (node.name or written or f"%{t.id}", node.span))
            notes.append((f"'{name}' is {node.type}, from {self.describe(t.id)}", where))
        msg = err.message if err.message.startswith(op) else f"{op}: {err.message}"
        hint = err.hint
        if err.arg is not None and err.arg < len(ins) and ins[err.arg] is not None:
            hint = last_step_hint(op, self.maker(ins[err.arg].id)) or hint
        if registry.get(op) is not None and registry.get(op).family in ("losses", "metrics") \
                and len(ins) >= 2 and None not in ins[:2]:
            pred, target = (self.g.node(t.id) for t in ins[:2])
            if pred.type.rank > target.type.rank and pred.shape[:1] == target.shape[:1]:
                hint = every_step_hint(self.sequence_source(ins[0].id)) or hint
        self.fail(msg, at, hint, notes)

    def value_inputs(self, node) -> list[int]:
        """A node's inputs that are values flowing through the model, not its weights or
        constants: what the walks back to a value's maker follow."""
        return [i for i in node.inputs if self.g.node(i).op not in ("param", "const")]

    def sequence_source(self, nid: int, depth: int = 6):
        """The recurrent layer a value comes from, through the first tensor input of up to
        `depth` ops (dense, squeeze, activations), or None."""
        for _ in range(depth):
            node = self.g.node(nid)
            if node.op in ("lstm", "gru", "rnn"):
                return node
            tensor_ins = self.value_inputs(node)
            if not tensor_ins:
                return None
            nid = tensor_ins[0]
        return None

    def maker(self, nid: int):
        """The node that made a value, through ops that keep its shape (dropout, activations):
        in `lstm(x, 64) |> dropout(0.2) |> lstm(32)` the second lstm reads the first's."""
        node = self.g.node(nid)
        while nid not in self.part_of:
            tensor_ins = self.value_inputs(node)
            if len(tensor_ins) != 1 or self.g.node(tensor_ins[0]).shape != node.shape:
                break
            nid = tensor_ins[0]
            node = self.g.node(nid)
        return node

    def describe(self, nid: int, depth: int = 3) -> str:
        """The chain of ops that produced a value, e.g. `flatten <- max_pool2d <- conv2d`."""
        chain, cur = [], nid
        while cur is not None and len(chain) < depth:
            if cur in self.part_of:
                # NOTE: a call giving several values packs them in one (lstm's return_state
                # is [batch, steps + 2, units]); the user sees its k-th value, not the packing
                call, k = self.part_of[cur]
                node = self.g.node(call)
                chain.append(f"{node.op} (value {k + 1}){fmt_shape(self.g.node(cur).shape)}")
            else:
                node = self.g.node(cur)
                chain.append(f"{node.op}{fmt_shape(node.shape)}")
            tensor_ins = self.value_inputs(node)
            cur = tensor_ins[0] if tensor_ins else None
        return " <- ".join(chain)

    def initializer_call(self, e: ast.Call, scope: Scope) -> Initializer:
        sig, _ = INITIALIZERS[e.func]
        args = [self.const_expr(a, scope) for a in e.args]
        kwargs = {k.name: self.const_expr(k.value, scope) for k in e.kwargs}
        try:
            opts = sig.bind(args, kwargs)
        except BindError as err:
            self.fail(f"{e.func}() {err.message}", e.span, err.hint)
        problem = init_problem(opts)
        if problem:
            self.fail(f"{e.func}() {problem}", e.span)
        return Initializer(e.func, opts)

    def init_value(self, e, scope) -> tuple[str, dict]:
        v = self.single(e, scope)
        if isinstance(v, Initializer):
            return v.spec()
        if isinstance(v, str) and v in INITIALIZERS:
            return v, {}
        self.fail(f"expected an initializer, got {show_value(v)}", e.span,
                  did_you_mean(str(v), INITIALIZERS) or
                  f"initializers: {', '.join(sorted(INITIALIZERS))}")

    def block_call(self, block: ast.BlockDef, e: ast.Call, scope: Scope, target,
                   values: list | None = None):
        """`values`: positional arguments already evaluated (a scan's per-step values) before
        those of `e`."""
        if block.name in self.stack:
            chain = " -> ".join(self.stack[self.stack.index(block.name):] + [block.name])
            self.fail(f"block '{block.name}' calls itself ({chain})", e.span,
                      "blocks cannot be recursive; use `repeat N { ... }` to stack layers")
        names = [p.name for p in block.params]
        if len(set(names)) != len(names):
            raise Abort   # NOTE: reported where the block is defined (imports.collect_defs)
        args = list(values or []) + [self.single(a, scope) for a in e.args]
        kwargs = {k.name: self.single(k.value, scope) for k in e.kwargs}
        if any(v is POISON for v in args + list(kwargs.values())):
            raise Abort
        share = kwargs.pop("share", None)
        frozen = scope.frozen
        if "trainable" in kwargs and "trainable" not in names:
            span = next(k.value.span for k in e.kwargs if k.name == "trainable")
            frozen = not self.trainable_flag(kwargs.pop("trainable"), span) or frozen
        if len(args) > len(names):
            self.fail(f"{block.name}() takes {len(names)} arguments but {len(args)} were given",
                      e.span, f"signature: {block.name}({', '.join(names)})")
        inner = Scope("", kind="block", frozen=frozen)
        inner.prefix = self.layer_path(scope, target, block.name, share,
                                       next((k.value.span for k in e.kwargs
                                             if k.name == "share"), e.span), block=True)
        self.block_of.setdefault(inner.prefix, block.name)
        inner.shown = self.own_path(scope, target, block.name) if share is not None else \
            shown_path(scope, inner.prefix)
        given = dict(zip(names, args))
        for k in e.kwargs:
            if k.name == "share" or k.name == "trainable" and k.name not in names:
                continue
            if k.name not in names:
                self.fail(f"{block.name}() has no parameter '{k.name}'", k.span,
                          did_you_mean(k.name, names) or f"parameters: {', '.join(names)}")
            if k.name in given:
                self.fail(f"{block.name}() got '{k.name}' twice", k.span)
            given[k.name] = kwargs[k.name]
        for p in block.params:
            if p.name in given:
                inner.vars[p.name] = given[p.name]
            elif p.default is not None:
                inner.vars[p.name] = self.single(p.default, inner)
            else:
                self.fail(f"{block.name}() missing required argument '{p.name}'", e.span,
                          f"signature: {block.name}({', '.join(names)})")
            inner.spans[p.name] = p.span
        self.stack.append(block.name)
        errors_before = len(self.errors.diagnostics)
        used = self.used_paths
        if share is not None:
            # NOTE: the shared call names its layers as the first call did (h2, h2_1, ...), so
            # each finds the weights it shares instead of new ones under the same prefix
            under = inner.prefix + "."
            self.used_paths = {p for p in used if not p.startswith(under)}
        try:
            result = self.run_body(block.body, inner)
        finally:
            self.stack.pop()
            if share is not None:
                self.used_paths = used | self.used_paths
            # NOTE: an error in the body is located there; which call led to it (the second,
            # with the wrong shape) is said here, as a traceback's "called from" line
            call = e.span.text() if e.span is not None else None
            for d in self.errors.diagnostics[errors_before:]:
                d.calls.append((f"in block '{block.name}', called here" +
                                (f": {call}" if call else ""), e.span))
        if len(self.errors.diagnostics) > errors_before:
            raise Abort
        if result is None:
            self.fail(f"block '{block.name}' returns nothing", block.span,
                      "end the block with `return value`")
        # NOTE: a result made inside the call (even by its last layer, `|> dense(2)`) belongs to
        # the call, so `share = result` reuses the whole block; one made outside (an argument
        # returned as it is) keeps the layer that made it
        for v in result if isinstance(result, tuple) else (result,):
            if isinstance(v, T):
                owner = self.layer_of.get(v.id)
                if owner is None or owner.startswith(inner.prefix + "."):
                    self.layer_of[v.id] = inner.prefix
        return result


# NOTE: layer ops that are one layer under two names (nnlang/ops/nn.py registers linear with
# dense's weights), so `linear(x, 3, share = a)` after `a = dense(x, 3)` shares
LAYER_ALIASES = {"linear": "dense"}


def int_literal_dtype(op: str, dtypes: list) -> str | None:
    """The dtype a whole-number literal takes in integer arithmetic (`label - 1`, `ids + 1`:
    int, as in numpy), or None where it takes `literal_dtype` (a division, a float tensor)."""
    if op in ("add", "sub", "mul", "maximum", "minimum") and dtypes and \
            all(d in ("int32", "int64") for d in dtypes):
        return "int64" if "int64" in dtypes else "int32"
    return None


def literal_dtype(dtypes) -> str:
    """The dtype a number literal takes in an op: that of the float tensors it meets (float64
    when any is float64), else float32."""
    floats = [d for d in dtypes if d in ("float32", "float64")]
    return "float64" if "float64" in floats else "float32"


def literal_problem(v: int | float, dtype: str) -> tuple[str, str] | None:
    """(message, hint) when the number `v` does not fit a `dtype` tensor, else None."""
    if dtype not in _RANGE or _RANGE[dtype][0] <= v <= _RANGE[dtype][1]:
        return None
    held = _RANGE[dtype][2]
    if dtype.startswith("float"):
        return (f"{number_text(v)} is too large for a {dtype} tensor (it would be infinity)",
                f"{dtype} holds up to {held}")
    return (f"{number_text(v)} is out of range for an {dtype} tensor",
            f"{dtype} holds {held}; cast the tensor to int64 or a float first")


def number_text(v: int | float) -> str:
    """A number short enough for a message: 1e+39, not the 400 digits of 10 ** 400."""
    if isinstance(v, int) and abs(v) > 10 ** 15:
        if abs(v) > sys.float_info.max:
            return with_article(f"{int(math.log10(abs(v))) + 1}-digit number")
        return f"{float(v):g}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _show_init(v) -> str:
    """An initializer as the .nn source spells it: "zeros", normal(std = 0.5)."""
    if isinstance(v, (tuple, list)) and len(v) == 2 and isinstance(v[1], dict):
        opts = ", ".join(f"{k} = {show_value(x)}" for k, x in v[1].items())
        return f"{v[0]}({opts})"
    return show_value(v)
