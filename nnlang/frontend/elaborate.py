"""Syntax tree to graph: resolves imports, hyper-parameters and `--set` overrides, scopes, blocks,
`repeat` and weight sharing, binds call arguments against op signatures and runs shape rules.

Errors are collected, not raised one at a time: a failed value becomes `POISON`, later uses of
it stay quiet, and all independent errors are reported together at the end. Calls are
elaborated in `calls.py`, imports gathered in `imports.py`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np

from nnlang.errors import (OUTSIDE, Diagnostic, ErrorSink, Given, NNError, Span, closest,
                           did_you_mean, foreign_name, said_as, with_article)
from nnlang.frontend import ast
from nnlang.frontend.calls import CallElaboration, number_text
from nnlang.frontend.deep import deep_stack
from nnlang.frontend.generate_config import elaborate_generate, section_warnings
from nnlang.frontend.imports import collect_defs
from nnlang.frontend.lint import lint
from nnlang.frontend.parser import parse
from nnlang.frontend.scan import ScanElaboration
from nnlang.frontend.source import load_source
from nnlang.frontend.train_config import (SAID_ELSEWHERE, TRAIN_SET_KEYS, TrainConfig,
                                         elaborate_train, frozen_penalized, nothing_to_clip)
from nnlang.frontend.values import (POISON, TENSOR_BINOPS, Abort, Initializer, Scope, T,
                                    eval_binop, join_path)
from nnlang.gc_pause import paused_gc
from nnlang.ir.dims import DimError, Sym, fmt_shape, size_problem
from nnlang.ir.graph import Builder, Graph
from nnlang.ops import registry
from nnlang.ops.init import INITIALIZERS
from nnlang.ops.registry import DTYPES, ParamSpec, TensorType
from nnlang.ops.signature import show_value


MAX_REPEAT = 10_000  # NOTE: each copy is elaborated; 10**9 would run for days, silently

# NOTE: Python's spellings of constants, which a name lookup cannot place
PYTHON_NAMES = {"None": "nnlang writes it in lower case: none",
                "True": "nnlang writes it in lower case: true",
                "False": "nnlang writes it in lower case: false",
                "inf": "there is no infinity: mask scores with a large negative number, -1e9",
                "nan": "there is no nan literal"}


ANY_SIZE_HINT = ("write `batch` for the batch dim (it needs no declaration), or declare "
                 "`symbol seq` for another size that comes with the data")


@dataclass
class Program:
    """What elaboration produces: the user-level graph and the resolved train section."""
    graph: Graph
    model: str
    hparams: dict
    train: TrainConfig | None
    file: str
    defs: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)   # Diagnostics from `lint`
    generate: object = None   # a GenerateSpec (generate_config.py) from a `generate` section
    # NOTE: the text and --set values it was built from, as `load` read them: what a saved net
    # records so the CLI rebuilds the same program (the file may change after the compile)
    source: str | None = None
    overrides: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        # NOTE: a notebook shows the value of `nnlang.load(...)`: the dataclass repr was the
        # whole graph, source and definitions on one line (18,000 characters for gpt.nn)
        return f"<Program {self.model} ({self.file}): {self.interface()}>"

    def interface(self) -> str:
        """`inputs x float32[batch, 4]; outputs y; ...; 14 parameters`, for reprs."""
        g = self.graph
        inputs = ", ".join(f"{k} {g.node(i).type}" for k, i in g.inputs.items())
        parts = [f"inputs {inputs}" if inputs else "no inputs"]
        parts += [f"{what} {', '.join(table)}" for what, table in
                  (("outputs", g.outputs), ("losses", g.losses), ("metrics", g.metrics)) if table]
        count = sum(math.prod(g.node(i).shape) for i in g.params.values())
        return "; ".join(parts + [f"{count:,} parameters"])


DISCARD = "_"   # a name that binds nothing: `out, _, _ = lstm(x, 8, return_state = true)`


class Elaborator(CallElaboration, ScanElaboration):
    def __init__(self, defs: dict, errors: ErrorSink):
        self.defs = defs                  # name -> ModelDef/BlockDef/TrainDef (with "train:")
        self.errors = errors
        self.g = Graph()
        self.b = Builder(self.g)
        self.layer_of: dict[int, str] = {}  # tensor id -> layer path that produced it
        self.layer_op: dict[str, str] = {}  # layer path -> its op, once it made a value
        self.layer_inits: dict[str, dict] = {}  # layer path -> its first call's init options
        self.block_of: dict[str, str] = {}  # a block call's path -> the block's name
        self.origin: dict[int, tuple[str, Span]] = {}  # tensor id -> (value name, span)
        self.part_of: dict[int, tuple[int, int]] = {}  # result k of a packed call: id -> (call, k)
        self.stack: list[str] = []          # block call chain, for recursion errors
        self.used_paths: set[str] = set()
        self.shown_paths: set[str] = set()  # own paths of calls that share weights (own_path)
        self.copies = 1                     # product of the enclosing repeat counts
        self.loss_named_loss: Span | None = None   # a `loss loss = ...`, while it is the only one

    # *** errors ***
    def fail(self, message: str, span: Span | None, hint: str | None = None, notes=None):
        self.errors.add(message, span, hint, notes)
        raise Abort

    # *** models ***
    def model(self, m: ast.ModelDef, overrides: dict) -> dict:
        scope = Scope("")
        hparams = self.bind_hparams(m, overrides, scope)
        self.g.model = m.name
        self.run_body(m.body, scope)
        if not self.g.losses and not self.errors.diagnostics:
            pass  # NOTE: a model without a loss can still be checked and run for inference
        return hparams

    @staticmethod
    def set_hint(key: str, names: list) -> str:
        """A --set name that is no hyper-parameter: a train setting (which `nnlang train`
        takes, `nnlang check` not) or one misspelt (`epoch`, Keras' `learning_rate`)."""
        if key in TRAIN_SET_KEYS:
            return f"'{key}' is a train setting: `nnlang train` takes it with --set"
        if key in SAID_ELSEWHERE and not foreign_name(key, [*names, *TRAIN_SET_KEYS]):
            return SAID_ELSEWHERE[key]   # NOTE: Keras' shuffle is no misspelt schedule
        guess = closest(key, names) or closest(key, TRAIN_SET_KEYS)
        if guess in TRAIN_SET_KEYS and guess not in names:
            return f"did you mean the train setting '{guess}'?"
        if guess:
            return f"did you mean '{guess}'?"
        return f"hyper-parameters: {', '.join(names) or 'none'}"

    def bind_hparams(self, m: ast.ModelDef, overrides: dict, scope: Scope) -> dict:
        names = [p.name for p in m.params]
        symbols = {n: st.span for st in m.body if isinstance(st, ast.Symbol) for n in st.names}
        for key in overrides:
            if key in symbols and key not in names:
                # NOTE: a user fixing a length the way `maxlen` is fixed: say why it cannot be
                self.errors.add(f"--set {key}: '{key}' is a symbol of model '{m.name}', not a "
                                "hyper-parameter: its size comes with each batch's data",
                                symbols[key], "one compiled model runs every length: feed "
                                "sequences of the length you want")
            elif key not in names:
                # NOTE: at the name on the command line where --set gave it (`Given.spans`);
                # the Python API's plain dict has no place there, so the model's header
                given = getattr(overrides, "spans", {}).get(key)
                self.errors.add(f"--set {key}: model '{m.name}' has no hyper-parameter '{key}'",
                                given[0] if given else m.span, self.set_hint(key, names))
        for p in m.params:
            if p.name == "batch":
                # NOTE: it would fix every [batch, ...] to one number, while the train section,
                # --batch and eval's last partial batch feed other sizes
                self.errors.add("a hyper-parameter cannot be named 'batch': that is the batch "
                                "dim of every input", p.span,
                                "set the batch size in the train section (`batch = 32`) or "
                                "with --batch; rename this one (e.g. batch_size) if it means "
                                "something else")
                continue
            if p.name in overrides:
                value = overrides[p.name]
            elif p.default is None:
                self.errors.add(f"hyper-parameter '{p.name}' has no default and no value",
                                p.span, f"give it one: `{p.name} = ...`, or --set {p.name}=...")
                value = POISON
            else:
                try:
                    value = self.const_expr(p.default, scope)
                except Abort:
                    value = POISON
            scope.vars[p.name], scope.spans[p.name] = value, p.span
        return {k: v for k, v in scope.vars.items()}

    def const_expr(self, e, scope: Scope):
        v = self.single(e, scope)
        if isinstance(v, T):
            self.fail("expected a constant here, got a tensor", e.span)
        return v

    # *** statements ***
    def run_body(self, body, scope: Scope):
        for stmt in body:  # remembered so a use before the definition can say so
            for name in getattr(stmt, "targets", ()) or [getattr(stmt, "name", None)]:
                if isinstance(name, str) and name != DISCARD:
                    scope.later.setdefault(name, stmt.span)
        result = None
        for before, stmt in zip((None, *body), body):
            try:
                self.option_after_param(before, stmt)
                r = self.stmt(stmt, scope)
                if isinstance(stmt, ast.Return):
                    result = r
            except Abort:
                for name in getattr(stmt, "targets", ()) or ([stmt.name] if hasattr(
                        stmt, "name") and isinstance(stmt.name, str) else []):
                    if name != DISCARD:
                        scope.vars.setdefault(name, POISON)
        return result

    def define(self, scope: Scope, name: str, value, span: Span):
        if name in scope.vars and not scope.in_loop:
            prev = scope.spans.get(name)
            self.fail(f"'{name}' is already defined" + (f" at line {prev.line}" if prev else ""),
                      span, "values are immutable; give the new value another name",
                      [("first defined here", prev)] if prev else None)
        scope.vars[name], scope.spans[name] = value, span
        if isinstance(value, T):
            self.origin.setdefault(value.id, (name, span))
            node = self.g.node(value.id)
            if node.name is None:
                node.name = name

    def option_after_param(self, before, s) -> None:
        """`param w: T = ones requires_grad = false` (or `frozen = true`) is a param and then
        an assignment of its own, which left w trainable without a word: the issue-17 slip that
        `trainable = false` there now fixes, with another option's name."""
        if isinstance(before, ast.ParamDecl) and isinstance(s, ast.Assign) and \
                isinstance(s.value, ast.Bool) and s.span.line == before.span.end_line:
            self.fail(f"'{' = '.join(s.targets)} = {str(s.value.value).lower()}' after param "
                      f"'{before.name}' on its line "
                      "is a statement of its own, not an option of the param", s.span,
                      f"a param's one option is `trainable = false` (`param {before.name}: ... "
                      "= init trainable = false`); put other statements on their own line")

    def stmt(self, s, scope: Scope):
        if isinstance(s, ast.Input):
            if scope.kind != "model":
                self.fail("inputs are declared in a model, not in a block", s.span,
                          "pass the tensor to the block as an argument")
            t = self.tensor_type(s.type, scope)
            with self.b.at(s.span, ""):
                nid = self.b.emit("input", name=s.name, dtype=t.dtype, shape=list(t.shape))
            self.define(scope, s.name, T(nid), s.span)
            self.g.inputs[s.name] = nid
        elif isinstance(s, ast.ParamDecl):
            t = self.tensor_type(s.type, scope)
            if any(not isinstance(d, int) for d in t.shape):
                self.fail(f"param '{s.name}': a weight's size cannot depend on a symbol, got "
                          f"{t}", s.type.span if hasattr(s.type, "span") else s.span,
                          "give every dim as a number or a hyper-parameter")
            init = self.init_value(s.init, scope) if s.init else None
            if init is None:
                init = ("glorot_uniform", {}) if len(t.shape) >= 2 else ("zeros", {})
            frozen = scope.frozen
            if s.trainable is not None:
                frozen = not self.trainable_flag(self.const_expr(s.trainable, scope),
                                                 s.trainable.span) or frozen
            path = join_path(scope.prefix, s.name)
            # NOTE: in a block call with `share = a` (or a block inside one) the weights live
            # under a's path, shown under the call's own: its `param w` is a's, as its layers'
            # weights are ("reuses every weight"); share=False made it a conflict with itself
            shared = scope.shown is not None and scope.shown != scope.prefix
            nid = self.param(path, ParamSpec(t.shape, init, dtype=t.dtype), s.span,
                             share=shared, frozen=frozen)
            self.define(scope, s.name, T(nid), s.span)
        elif isinstance(s, ast.Symbol):
            for n in s.names:
                self.define(scope, n, Sym.of(n), s.span)
                if n not in self.g.symbols:
                    self.g.symbols = self.g.symbols + (n,)
        elif isinstance(s, ast.Assign):
            # NOTE: a discarded first name does not name the layer's weights (`_.kernel`)
            target = s.targets[0] if s.targets[0] != DISCARD else None
            value = self.expr(s.value, scope, target)
            if len(s.targets) > 1:
                if not isinstance(value, tuple) or len(value) != len(s.targets):
                    got = len(value) if isinstance(value, tuple) else 1
                    self.fail(f"{len(s.targets)} names but the right side gives {got} value"
                              f"{'s' if got != 1 else ''}", s.span, None if got == 1 else
                              self.name_each(s.value, got))
                for name, v in zip(s.targets, value):
                    if name != DISCARD:   # NOTE: dropped, as Python's and JAX's `_`
                        self.define(scope, name, v, s.span)
            else:
                if isinstance(value, tuple):
                    self.fail(f"the right side gives {len(value)} values; "
                              f"{self.name_each(s.value, len(value))}", s.span)
                if target is not None:
                    self.define(scope, target, value, s.span)
        elif isinstance(s, (ast.Output, ast.Loss, ast.Metric)):
            self.result_stmt(s, scope)
        elif isinstance(s, ast.Return):
            if scope.kind != "block":
                self.fail("`return` is only allowed in a block", s.span,
                          "a model names its results with `output`, `loss` and `metric`")
            # NOTE: `return f(x)` hands on all that f gives; in a list each is one value
            vals = (self.expr(s.values[0], scope, None),) if len(s.values) == 1 else \
                tuple(self.single(v, scope) for v in s.values)
            return vals[0] if len(vals) == 1 else vals
        elif isinstance(s, ast.Repeat):
            count = self.const_expr(s.count, scope)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                self.fail(f"repeat needs a positive integer count, got {show_value(count)}",
                          s.count.span)
            if count * self.copies > MAX_REPEAT:
                total = "" if self.copies == 1 else f" ({count * self.copies:,} with the " \
                                                     "repeats around it)"
                self.fail(f"repeat {count:,} makes more than {MAX_REPEAT:,} copies of its "
                          f"body{total}", s.count.span,
                          "a deeper stack than this is almost surely a typo")
            outer, copies = scope.prefix, self.copies
            scope.in_loop += 1
            self.copies *= count
            errors_before = len(self.errors.diagnostics)
            try:
                for k in range(count):
                    scope.repeat = scope.repeat + (k,)
                    self.run_body(s.body, scope)
                    scope.repeat = scope.repeat[:-1]
                    if len(self.errors.diagnostics) > errors_before:
                        break  # NOTE: the next copies would report the same errors again
            finally:
                scope.in_loop -= 1
                scope.prefix, self.copies = outer, copies
        return None

    def result_stmt(self, s, scope: Scope):
        what = {ast.Output: "output", ast.Loss: "loss", ast.Metric: "metric"}[type(s)]
        if scope.kind != "model":
            self.fail(f"`{what}` is only allowed in a model", s.span,
                      "return the value from the block and declare it in the model")
        if isinstance(s, ast.Output) and s.value is None:
            if s.name not in scope.vars:
                self.fail(f"unknown name '{s.name}'", s.span,
                          did_you_mean(s.name, scope.vars))
            value = scope.vars[s.name]
        else:
            value = self.single(s.value, scope, s.name)
        if value is POISON:
            raise Abort
        if not isinstance(value, T):
            self.fail(f"{what} must be a tensor, got {show_value(value)}", s.span)
        node = self.g.node(value.id)
        name = s.name or (s.value.func if isinstance(s.value, ast.Call) else "loss")
        table = {"output": self.g.outputs, "loss": self.g.losses, "metric": self.g.metrics}[what]
        if name in table and scope.in_loop:
            # NOTE: written once, but each copy of the repeat declares it again (deep
            # supervision's loss per layer): carry a sum through the loop instead
            self.fail(f"{what} '{name}' inside `repeat` is declared again by each copy", s.span,
                      f"carry a sum through the loop and declare it once after it: `total = "
                      f"0.0` before, `total = total + ...` inside, `{what} {name} = total` "
                      "after" if what != "output" else "declare the output after the loop")
        if name in table:
            # NOTE: the user may never have written the name: say where it came from
            given = "" if s.name else f": an unnamed {what} takes its call's name" \
                if isinstance(s.value, ast.Call) else \
                ": an unnamed loss that is not a call is named 'loss'"
            self.fail(f"{what} '{name}' is declared twice{given}", s.span,
                      f"name it: `{what} other_name = ...`")
        if what == "loss":
            # NOTE: with several losses `loss` is their total's name (the epoch line, metrics.csv,
            # summary.json), so a loss the user named `loss` would be reported only in the sum
            culprit = s.span if s.name == "loss" and self.g.losses else self.loss_named_loss
            if culprit is not None:
                self.loss_named_loss = None
                self.fail("loss 'loss': with several losses 'loss' is the name of their total, "
                          "so this loss would be reported only inside it", culprit,
                          "name it: `loss other_name = ...`")
            if s.name == "loss":
                self.loss_named_loss = s.span
        # NOTE: losses and metrics are reported side by side, and `loss` is the total's column
        other = {"loss": self.g.metrics, "metric": self.g.losses}.get(what, {})
        if name in other or (what == "metric" and name == "loss"):
            why = "is the training loss's name" if name == "loss" and what == "metric" else \
                f"is a {'metric' if what == 'loss' else 'loss'} already"
            self.fail(f"{what} '{name}': '{name}' {why}, and losses and metrics are reported "
                      "under their names side by side", s.span,
                      f"name it: `{what} other_name = ...`")
        if what in ("loss", "metric") and node.type is not None:
            if node.shape != ():
                self.fail(f"a {what} must be a scalar, but this is {fmt_shape(node.shape)}",
                          s.value.span, "reduce it, e.g. mean(...)")
            if what == "loss" and not registry.is_float(node.dtype):
                self.fail(f"a loss must be a float scalar, got {node.type}", s.value.span)
        table[name] = value.id
        if what == "output" and isinstance(s, ast.Output) and s.value is not None:
            self.define(scope, s.name, value, s.span)

    # *** types ***
    def tensor_type(self, t: ast.TensorType, scope: Scope) -> TensorType:
        if t.dtype not in DTYPES:
            self.fail(f"unknown dtype '{t.dtype}'", t.dtype_span,
                      did_you_mean(t.dtype, DTYPES) or f"dtypes: {', '.join(DTYPES)}")
        dims = []
        for d in t.dims:
            if isinstance(d, ast.Name) and d.id == "None":
                # NOTE: Keras' shape=(None, 784): the size that comes with the data
                self.fail("a dim of any size is a symbol, not None", d.span, ANY_SIZE_HINT)
            v = self.const_expr(d, scope)
            if not (isinstance(v, Sym) or isinstance(v, int) and not isinstance(v, bool)
                    and v > 0):
                self.fail(f"a dim must be a positive integer or a symbol, got {show_value(v)}",
                          d.span, ANY_SIZE_HINT if v is None or v == -1 else None)
            dims.append(v)
            problem = size_problem(dims)
            if problem:
                self.fail(problem[1], d.span, "is this number a typo?")
        return TensorType(tuple(dims), t.dtype)

    # *** expressions ***
    def expr(self, e, scope: Scope, target: str | None):
        if isinstance(e, ast.Number):
            return e.value
        if isinstance(e, (ast.String, ast.Bool)):
            return e.value
        if isinstance(e, ast.NoneLit):
            return None
        if isinstance(e, ast.ListLit):
            return [self.single(x, scope) for x in e.items]
        if isinstance(e, ast.Name):
            return self.name(e, scope)
        if isinstance(e, ast.WeightRef):
            return self.weight_ref(e, scope)
        if isinstance(e, ast.Neg):
            v = self.single(e.operand, scope, target)
            if v is POISON:
                raise Abort
            if isinstance(v, T):
                return self.emit("neg", [v], {}, e.span, [e.operand.span], scope, None)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                self.fail(f"cannot negate {show_value(v)}: unary minus takes a number or a "
                          "tensor", e.span)
            return -v
        if isinstance(e, ast.BinOp):
            return self.binop(e, scope, target)
        if isinstance(e, ast.Pipe):
            call = e.target
            if isinstance(call, ast.Name):
                call = ast.Call(call.span, call.id, call.span, (), ())
            if not isinstance(call, ast.Call):
                self.fail("the right side of |> must be a call like f(...) or a name",
                          e.target.span)
            call = ast.Call(e.span, call.func, call.func_span, (e.value,) + call.args,
                            call.kwargs)
            return self.call(call, scope, target)
        if isinstance(e, ast.Call):
            return self.call(e, scope, target)
        if isinstance(e, ast.Scan):
            return self.scan(e, scope, target)
        if isinstance(e, ast.Subscript):
            return self.subscript(e, scope)
        self.fail(f"unsupported expression {type(e).__name__}", e.span)

    def name(self, e: ast.Name, scope: Scope):
        if e.id in scope.vars:
            v = scope.vars[e.id]
            if v is POISON:
                raise Abort
            return v
        if e.id in INITIALIZERS:
            return Initializer(e.id, {})
        if e.id == "batch":  # NOTE: the implicit symbol, as in `input x: float32[batch, 4]`
            return Sym.of("batch")
        if e.id in scope.later:
            where = scope.later[e.id]
            self.fail(f"'{e.id}' is used before it is defined (line {where.line})", e.span,
                      "statements run in order; move the definition up",
                      [("defined here", where)])
        if e.id in self.defs or registry.get(e.id) is not None:
            self.fail(f"'{e.id}' is an op or block; call it: {e.id}(...)", e.span)
        if e.id == DISCARD:
            self.fail("'_' discards the value given to it and cannot be read", e.span,
                      "give the value a name to use it (`out, h, c = lstm(...)`)")
        if e.id in self.g.symbols:  # NOTE: out of the model's body (a train setting, a block)
            self.fail(f"'{e.id}' is a symbol of model '{self.g.model}': its size comes with each "
                      "batch's data, so it has no value here", e.span,
                      "a symbol is known only in its model's body: give a number or a "
                      "hyper-parameter (whole reviews: imdb(maxlen = none))")
        outside = (f"a block sees only its parameters and its own names: if '{e.id}' is the "
                   "model's, add it to the block's parameters and pass it in the call")
        # NOTE: `cast(x, dtype = float64)`, as numpy and torch spell it, was told that names
        # must be defined before they are used
        quoted = f'a dtype is given as a string: dtype = "{e.id}"' if e.id in DTYPES else None
        self.fail(f"unknown name '{e.id}'", e.span,
                  PYTHON_NAMES.get(e.id) or quoted or did_you_mean(e.id, scope.vars) or
                  (outside if scope.kind == "block" else
                   "names must be defined before they are used" if scope.vars else None))

    def weight_ref(self, e: ast.WeightRef, scope: Scope) -> T:
        """A layer's weight as a value (penalties, tying), by the path `nnlang check` prints;
        inside a block, relative to the block's own path first."""
        for path in dict.fromkeys((join_path(scope.prefix, e.path), e.path)):
            if path in self.g.params:
                return T(self.g.params[path])
        head = e.path.split(".")[0]
        later = f"; '{head}' is defined later (line {scope.later[head].line})" \
            if head in scope.later and head not in scope.vars else ""
        attr = e.path.rpartition(".")[2]
        if attr in ("T", "shape", "mT") and e.path.rpartition(".")[0] in scope.vars:
            self.fail(f"no weight '{e.path}' here: values have no attributes", e.span,
                      "sizes are written in the types (reshape takes -1 for one of them)"
                      if attr == "shape" else "transpose(x, perm = [1, 0]) swaps two axes")
        self.fail(f"no weight '{e.path}' here{later}", e.span,
                  layer_weights_hint(e.path, self.g.params, scope.prefix) or
                  did_you_mean(e.path, list(self.g.params)) or
                  ("weights so far: " + ", ".join(self.g.params) if self.g.params else
                   "no layer with weights is defined before this line"))

    def penalized_weight(self, e, setting: str) -> str:
        """The path of a weight that `l1_on`/`l2_on` name; a frozen one is an error, as no
        penalty can move it."""
        if isinstance(e, ast.Name):   # a top-level `param w` has the one-word path `w`
            e = ast.WeightRef(e.span, e.id)
        if not isinstance(e, ast.WeightRef):
            self.fail(f"{setting} lists weights by path, like [h.weight, c1.weight]", e.span)
        node = self.g.node(self.weight_ref(e, Scope("")).id)
        if not node.attrs.get("trainable", True):
            why, hint = frozen_penalized(e.path)
            self.fail(f"{setting} {why}", e.span, hint)
        return node.attrs["name"]

    def binop(self, e: ast.BinOp, scope: Scope, target):
        a = self.single(e.left, scope, target)
        c = self.single(e.right, scope, target)
        if a is POISON or c is POISON:
            raise Abort
        if not isinstance(a, T) and not isinstance(c, T):
            if e.op == "@":
                self.fail("@ needs tensors", e.span)
            if isinstance(a, Sym) or isinstance(c, Sym):
                return self.size_arith(e, a, c)
            try:
                return eval_binop(e.op, a, c)
            except (ArithmeticError, ValueError) as err:  # NOTE: arithmetic on user values
                self.fail(f"cannot compute {self.shown(e, a, c)}: {err}", e.span)
            except Exception:   # NOTE: Python's text names its own types ('NoneType')
                self.fail(f"cannot compute {self.shown(e, a, c)}: {e.op} takes numbers or "
                          "tensors", e.span)
        if e.op == "/" and c == 0 and not isinstance(c, (T, bool)):
            self.fail("division by zero", e.right.span, "every element would be inf or nan")
        return self.emit(TENSOR_BINOPS[e.op], [a, c], {}, e.span,
                         [e.left.span, e.right.span], scope, None)

    @staticmethod
    def shown(e: ast.BinOp, a, c) -> str:
        text = [number_text(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                else show_value(v) for v in (a, c)]
        if e.op == "**" and text[0].startswith("-"):   # NOTE: -8 ** 0.5 reads as -(8 ** 0.5)
            text[0] = f"({text[0]})"
        return f" {e.op} ".join(text)

    def size_arith(self, e: ast.BinOp, a, c):
        """Constant arithmetic on a symbolic size: products with whole numbers and symbols
        (`2 * steps`, `batch * steps`) and sums of like terms (`steps + steps`) are sizes again;
        anything else (`steps - 1`, `steps / 2`) would need the size itself."""
        if e.op in ("*", "+", "==", "!=") and all(
                isinstance(v, (int, Sym)) and not isinstance(v, bool) for v in (a, c)):
            try:
                return eval_binop(e.op, a, c)
            except DimError:
                pass
        sym = a if isinstance(a, Sym) else c
        name = sym.names[0]
        k = c if e.op == "-" and isinstance(a, Sym) and isinstance(c, int) and \
            not isinstance(c, bool) and c > 0 else None
        self.fail(f"cannot compute {self.shown(e, a, c)}: {sym} is a symbolic size, known only "
                  "when data arrives, so it can only be multiplied by whole numbers or symbols "
                  f"(2 * {name}, batch * {name}) or added to like terms ({name} + {name})",
                  e.span, "index from the end instead: " + (
                      f"x[:, -{k}] is x[:, {sym} - {k}]" if k else "x[:, -1] is the last entry") +
                  "; in reshape, write -1 for the one size to infer")

    def subscript(self, e: ast.Subscript, scope: Scope):
        v = self.expr(e.value, scope, None)
        if isinstance(v, tuple):
            first, sign = e.indices[0], 1
            if isinstance(first, ast.Neg):
                first, sign = first.operand, -1
            use = sign * first.value if len(e.indices) == 1 and isinstance(first, ast.Number) \
                and isinstance(first.value, int) else None
            self.several(e.value, len(v), use, indexed=True)
        if isinstance(v, list):
            if len(e.indices) != 1 or isinstance(e.indices[0], ast.Slice):
                self.fail("lists take one integer index", e.span)
            idx = self.const_expr(e.indices[0], scope)
            if not isinstance(idx, int) or isinstance(idx, bool):
                self.fail("lists take one integer index", e.span)
            if not -len(v) <= idx < len(v):
                self.fail(f"index {idx} is out of range for a list of {len(v)}", e.span)
            return v[idx]
        if not isinstance(v, T):
            self.fail(f"cannot index {show_value(v)}: only tensors and lists take [...]", e.span)
        rank = len(self.g.node(v.id).shape)
        if len(e.indices) > rank:
            self.fail(f"{len(e.indices)} indices for a tensor of rank {rank}", e.span)
        axis, drop = 0, []
        for ix in e.indices:
            if isinstance(ix, ast.Slice):
                step = 1 if ix.step is None else self.const_expr(ix.step, scope)
                if isinstance(step, bool) or not isinstance(step, int) or step == 0:
                    self.fail(f"a slice step must be a nonzero integer, got {show_value(step)}",
                              ix.step.span, "x[:, ::2] takes every other entry, x[:, ::-1] "
                              "reverses the axis")
                # NOTE: Python's defaults: a negative step starts at the last entry (-1 is it
                # for every length, a symbolic one too) and runs past the first (stop none)
                start = (0 if step > 0 else -1) if ix.start is None else \
                    self.const_expr(ix.start, scope)
                stop = None if ix.stop is None else self.const_expr(ix.stop, scope)
                for end, bound in ((ix.start, start), (ix.stop, stop)):
                    # NOTE: Python takes true for 1; a float or a string reached numpy
                    if bound is not None and (isinstance(bound, bool) or
                                              not isinstance(bound, (int, Sym))):
                        self.fail(f"slice bounds must be integers, got {show_value(bound)}",
                                  end.span)
                if (start, stop, step) == (-1, None, -1):
                    v = self.emit("flip", [v], dict(axis=axis), ix.span, [e.value.span], scope,
                                  None)
                elif (start, stop, step) != (0, None, 1):
                    v = self.emit("slice", [v], dict(axis=axis, start=start, stop=stop,
                                                     step=step),
                                  ix.span, [e.value.span], scope, None)
            else:
                i = self.const_expr(ix, scope)
                if not isinstance(i, int) or isinstance(i, bool):
                    self.fail(f"tensor indices must be integers or slices, got {show_value(i)}",
                              ix.span)
                n = self.g.node(v.id).shape[axis]
                if isinstance(n, int) and not -n <= i < n:
                    # NOTE: said here, as written: the slice i:i+1 below said "slice 8:9 ... is
                    # empty" (a symbolic size is checked when the data binds it)
                    self.fail(f"index {i} is out of range for axis {axis} of "
                              f"{e.value.span.text() or 'the tensor'}, of size {n}", ix.span)
                stop = None if i == -1 else i + 1
                v = self.emit("slice", [v], dict(axis=axis, start=i, stop=stop, step=1),
                              ix.span, [e.value.span], scope, None)
                drop.append(axis)
            axis += 1
        if drop:
            shape = [d for k, d in enumerate(self.g.node(v.id).shape) if k not in drop]
            v = self.emit("reshape", [v], dict(shape=shape), e.span, [e.span], scope, None)
        return v

    # *** calls ***


_CHOOSE_MODEL_HINT = ("pass --model NAME (in Python: nnlang.compile(..., model_name=NAME) or "
                      "nnlang.load(..., model=NAME))")


def _python_value(key: str, v):
    """A hyper-parameter value given from Python as the .nn literal it stands for: numpy's
    scalars as Python's (np.int64(5) was "expected an integer, got 5"), a tuple as a list."""
    if isinstance(v, (np.generic, np.ndarray)) and v.ndim == 0 and v.dtype.kind in "biuf":
        v = v.item()
    if isinstance(v, (list, tuple)):
        return [_python_value(key, x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        raise NNError(f"overrides['{key}'] = {v!r}: a hyper-parameter is a finite number")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise NNError(f"overrides['{key}'] is {with_article(type(v).__name__)}; a hyper-parameter "
                  "is a number, a bool, a string, None or a list of those",
                  hint="pass the value the .nn source would write (an int for a size, a float "
                  "for a rate)")


def checked_overrides(overrides) -> dict:
    """`overrides` from a Python caller: a dict of hyper-parameter names to .nn values."""
    if overrides is None:
        return {}
    if not hasattr(overrides, "items"):
        raise NNError(f"overrides are {with_article(type(overrides).__name__)}: give a dict of "
                      "hyper-parameter name -> value", hint="e.g. overrides={\"hidden\": 64}")
    for key in overrides:
        if not isinstance(key, str):
            raise NNError(f"overrides: the key {key!r} ({type(key).__name__}) is not a name",
                          hint="the keys are the model's hyper-parameter names")
    return {k: _python_value(k, v) for k, v in overrides.items()}


@deep_stack
def elaborate(module: ast.Module, overrides: dict | None = None,
              model: str | None = None) -> Program:
    overrides = Given(checked_overrides(overrides), getattr(overrides, "spans", None))
    try:
        program = _elaborate(module, overrides, model)
    except NNError as err:
        raise NNError([_given_note(d, overrides) for d in err.diagnostics]) from None
    program.warnings = [_given_note(w, overrides) for w in program.warnings]
    return program


# the grammar's STRING, and a keyword argument's name (`units =`, not `==`); a comment is never
# inside a span, which `Span.text` takes on one line
_NOT_READ = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|\b\w+\s*=(?!=)")


def _given_note(d: Diagnostic, overrides: Given) -> Diagnostic:
    """`d` (an error or a warning) with a note at each --set value (or the Python API's
    override) its source text reads: `dense(x, hidden)` refused for `--set hidden=0` showed
    the file's line only, whose header says `hidden = 32`.
    NOTE: matched by name in the span's text, which an error at a use of the value covers."""
    # NOTE: a block's body sees only its parameters: the model's values reach an error there
    # through the model's call of the block (the outermost), not by a name in the body (a
    # block's own `units` is not the model's --set one)
    span = d.calls[-1][1] if d.calls else d.span
    text = span.text() if span is not None and span.file not in OUTSIDE else None
    # NOTE: a string or an argument's keyword holds the name without reading it
    # (`dense(x, units = 4)` noted --set units=5 beside a shape error that was not its)
    text = _NOT_READ.sub(" ", text) if text else None
    notes = []
    for name, value in overrides.items():
        if text and re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text):
            where = overrides.spans.get(name, (None, None))[1]   # NOTE: a plain dict: no place
            by = "--set" if where else said_as("--set", "overrides")
            notes.append((f"{name} = {show_value(value)} is given by {by}", where))
    return replace(d, notes=[*d.notes, *notes]) if notes else d


def _elaborate(module: ast.Module, overrides: Given, model: str | None) -> Program:
    if model is not None and not isinstance(model, str):
        raise NNError(f"model={model!r}: a model is chosen by its name (a str), not by "
                      f"{type(model).__name__}", hint="e.g. model=\"MLP\"")
    errors = ErrorSink()
    defs = collect_defs(module, errors)
    models = [d for d in defs.values() if isinstance(d, ast.ModelDef)]
    local = [i for i in module.items if isinstance(i, ast.ModelDef)]
    if model is not None:
        chosen = defs.get(model)
        if not isinstance(chosen, ast.ModelDef):
            errors.add(f"no model named '{model}'", None,
                       did_you_mean(model, [m.name for m in models]) or
                       f"models: {', '.join(m.name for m in models) or 'none'}")
            errors.raise_if_any()
    elif len(local) == 1:
        chosen = local[0]
    elif not local:
        # NOTE: an imported model is not taken by default (a file may import another for
        # its blocks alone), but --model picks one: name them rather than ask for a model
        there = Span(module.file, 1, 1, source=module.source)
        if models:
            errors.add(f"this file defines no model; its imports define "
                       f"{', '.join(m.name for m in models)}", there, _CHOOSE_MODEL_HINT)
        else:
            errors.add("this file defines no model", there, "add `model Name(...) { ... }`")
        errors.raise_if_any()
    else:
        errors.add(f"this file defines {len(local)} models "
                   f"({', '.join(m.name for m in local)}); choose one",
                   local[1].span, _CHOOSE_MODEL_HINT)
        errors.raise_if_any()
    for key, d in defs.items():
        if isinstance(d, (ast.TrainDef, ast.GenerateDef)) and d.name not in defs:
            kind = "train" if isinstance(d, ast.TrainDef) else "generate"
            names = [m.name for m in models]
            errors.add(f"{kind} section for unknown model '{d.name}'", d.span,
                       did_you_mean(d.name, names) or
                       f"name a model of this file: {', '.join(names)}" if names else None)
    el = Elaborator(defs, errors)
    hparams = el.model(chosen, overrides)
    train = None
    tdef = defs.get(f"train:{chosen.name}")
    if tdef is not None:
        scope = Scope("", vars=dict(hparams))
        # NOTE: monitor is checked against the losses only when they all elaborated
        train = elaborate_train(tdef, lambda e: el.const_expr(e, scope), errors, Abort,
                                el.penalized_weight, None if errors.diagnostics else el.g)
        trained = [n for n in el.g.params.values() if el.g.node(n).attrs.get("trainable", True)]
        if train.clip_norm and not trained and not errors.diagnostics:
            message, hint = nothing_to_clip(train.clip_norm, chosen.name, bool(el.g.params))
            errors.add(message, next(s.value.span for s in tdef.settings
                                     if s.name == "clip_norm"), hint)
    el.g.train_spans = {"": chosen.span} if tdef is None else \
        {"": tdef.span, **{s.name: s.span for s in tdef.settings}}
    gen = None
    gdef = defs.get(f"generate:{chosen.name}")
    if gdef is not None and not errors.diagnostics:  # NOTE: checks need a sound graph
        scope = Scope("", vars=dict(hparams))
        gen = elaborate_generate(gdef, el.g, lambda e: el.const_expr(e, scope), errors, Abort)
    errors.raise_if_any()
    warnings = lint(el.g, None if tdef is None else tdef.span, train) + (
        [] if gen is None else section_warnings(gen))
    return Program(el.g, chosen.name, hparams, train, module.file, defs, warnings, gen)


def load(source_or_path, overrides: dict | None = None, model: str | None = None) -> Program:
    """Parses and elaborates a .nn file (a path) or .nn source text."""
    text, file = load_source(source_or_path)
    return load_text(text, file, overrides, model)


def layer_weights_hint(path: str, params, prefix: str = "") -> str | None:
    """For a path under a layer that has weights (relative to a block's `prefix` first), those
    weights: `h.0.attn.q.weight` (a PyTorch-style name) was offered the nearest spelling
    anywhere, `h.0.out.weight`, where the attention's own are `h.0.attn.wq`..."""
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):
        for layer in dict.fromkeys((join_path(prefix, ".".join(parts[:k])),
                                    ".".join(parts[:k]))):
            own = {p.rpartition(".")[2]: p for p in params if p.rpartition(".")[0] == layer}
            if own:   # NOTE: the name within the layer is compared: over whole paths
                # q.weight was nearest to wv, as h.0.attn is their common part
                guess = closest(".".join(parts[k:]), own)
                return f"did you mean '{own[guess]}'?" if guess else \
                    f"the weights of layer '{layer}': {', '.join(own.values())}"
    return None


def load_text(text: str, file: str, overrides: dict | None = None,
              model: str | None = None) -> Program:
    """`load` of the text already read from `file`. NOTE: a command that read its file once
    (train keeps the source in each checkpoint) elaborates that text, not the file read again:
    a pipe (`nnlang train <(...)`) was empty the second time ("defines no model"), and a file
    saved meanwhile trained one model under another's source."""
    with paused_gc():
        program = elaborate(parse(text, file), overrides, model)
    program.source, program.overrides = text, dict(overrides or {})
    return program
