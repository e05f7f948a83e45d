"""Syntax tree to graph: resolves imports, hyper-parameters and `--set` overrides, scopes, blocks,
`repeat` and weight sharing, binds call arguments against op signatures and runs shape rules.

Errors are collected, not raised one at a time: a failed value becomes `POISON`, later uses of
it stay quiet, and all independent errors are reported together at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nnlang.errors import ErrorSink, NNError, Span, did_you_mean
from nnlang.frontend import ast
from nnlang.frontend.parser import parse, parse_file
from nnlang.frontend.train_config import TrainConfig, elaborate_train
from nnlang.ir.dims import Sym, fmt_shape
from nnlang.ir.graph import Builder, Graph
from nnlang.ops import registry
from nnlang.ops.init import INITIALIZERS
from nnlang.ops.registry import DTYPES, ParamSpec, ShapeError, TensorType
from nnlang.ops.signature import BindError, check_kind


@dataclass(frozen=True)
class T:
    """A tensor value: a node in the graph being built."""
    id: int


class _Poison:
    def __repr__(self):
        return "<error>"


POISON = _Poison()


class _Abort(Exception):
    """Stops evaluating one statement after its error was recorded."""


@dataclass
class Initializer:
    name: str
    options: dict

    def spec(self) -> tuple[str, dict]:
        return self.name, dict(self.options)


@dataclass
class Program:
    """What elaboration produces: the user-level graph and the resolved train section."""
    graph: Graph
    model: str
    hparams: dict
    train: TrainConfig | None
    file: str
    defs: dict = field(default_factory=dict)


@dataclass
class Scope:
    prefix: str                      # block path of this scope, e.g. "enc.0"
    vars: dict = field(default_factory=dict)       # name -> value
    spans: dict = field(default_factory=dict)      # name -> Span of its definition
    in_loop: int = 0
    kind: str = "model"              # model | block
    repeat: tuple = ()               # iteration indices of enclosing `repeat`s
    later: dict = field(default_factory=dict)      # names defined further down -> Span


def _eval_binop(op, a, b):
    import operator
    table = {"+": operator.add, "-": operator.sub, "*": operator.mul, "**": operator.pow,
             "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
             ">": operator.gt, ">=": operator.ge}
    if op == "/":
        if isinstance(a, int) and isinstance(b, int) and b and a % b == 0:
            return a // b
        return a / b
    return table[op](a, b)


_TENSOR_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul", "**": "pow",
                  "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}

_KEYWORD_ONLY_OPS = {"input", "param", "const"}


class Elaborator:
    def __init__(self, defs: dict, errors: ErrorSink):
        self.defs = defs                  # name -> ModelDef/BlockDef/TrainDef (with "train:")
        self.errors = errors
        self.g = Graph()
        self.b = Builder(self.g)
        self.layer_of: dict[int, str] = {}  # tensor id -> layer path that produced it
        self.origin: dict[int, tuple[str, Span]] = {}  # tensor id -> (value name, span)
        self.stack: list[str] = []          # block call chain, for recursion errors
        self.used_paths: set[str] = set()

    # *** errors ***
    def fail(self, message: str, span: Span | None, hint: str | None = None, notes=None):
        self.errors.add(message, span, hint, notes)
        raise _Abort

    # *** models ***
    def model(self, m: ast.ModelDef, overrides: dict) -> dict:
        scope = Scope("")
        hparams = self.bind_hparams(m, overrides, scope)
        self.g.meta.update(model=m.name, hparams=hparams)
        self.run_body(m.body, scope)
        if not self.g.losses and not self.errors.diagnostics:
            pass  # NOTE: a model without a loss can still be checked and run for inference
        return hparams

    def bind_hparams(self, m: ast.ModelDef, overrides: dict, scope: Scope) -> dict:
        names = [p.name for p in m.params]
        for key in overrides:
            if key not in names:
                self.errors.add(f"--set {key}: model '{m.name}' has no hyper-parameter '{key}'",
                                m.span, did_you_mean(key, names) or
                                f"hyper-parameters: {', '.join(names) or 'none'}")
        for p in m.params:
            if p.name in overrides:
                value = overrides[p.name]
            elif p.default is None:
                self.errors.add(f"hyper-parameter '{p.name}' has no default and no value",
                                p.span, f"give it one: `{p.name} = ...`, or --set {p.name}=...")
                value = POISON
            else:
                try:
                    value = self.const_expr(p.default, scope)
                except _Abort:
                    value = POISON
            scope.vars[p.name], scope.spans[p.name] = value, p.span
        return {k: v for k, v in scope.vars.items()}

    def const_expr(self, e, scope: Scope):
        v = self.expr(e, scope, None)
        if isinstance(v, T):
            self.fail("expected a constant here, got a tensor", e.span)
        return v

    # *** statements ***
    def run_body(self, body, scope: Scope):
        for stmt in body:  # remembered so a use before the definition can say so
            for name in getattr(stmt, "targets", ()) or [getattr(stmt, "name", None)]:
                if isinstance(name, str):
                    scope.later.setdefault(name, stmt.span)
        result = None
        for stmt in body:
            try:
                r = self.stmt(stmt, scope)
                if isinstance(stmt, ast.Return):
                    result = r
            except _Abort:
                for name in getattr(stmt, "targets", ()) or ([stmt.name] if hasattr(
                        stmt, "name") and isinstance(stmt.name, str) else []):
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
            init = self.init_value(s.init, scope) if s.init else None
            if init is None:
                init = ("glorot_uniform", {}) if len(t.shape) >= 2 else ("zeros", {})
            path = _join(scope.prefix, s.name)
            nid = self.param(path, ParamSpec(t.shape, init, dtype=t.dtype), s.span, share=False)
            self.define(scope, s.name, T(nid), s.span)
        elif isinstance(s, ast.Symbol):
            for n in s.names:
                self.define(scope, n, Sym.of(n), s.span)
                if n not in self.g.symbols:
                    self.g.symbols = self.g.symbols + (n,)
        elif isinstance(s, ast.Assign):
            value = self.expr(s.value, scope, s.targets[0])
            if len(s.targets) > 1:
                if not isinstance(value, tuple) or len(value) != len(s.targets):
                    got = len(value) if isinstance(value, tuple) else 1
                    self.fail(f"{len(s.targets)} names but the right side gives {got} value"
                              f"{'s' if got != 1 else ''}", s.span)
                for name, v in zip(s.targets, value):
                    self.define(scope, name, v, s.span)
            else:
                if isinstance(value, tuple):
                    self.fail(f"the right side gives {len(value)} values; name each: "
                              f"`a, b = ...`", s.span)
                self.define(scope, s.targets[0], value, s.span)
        elif isinstance(s, (ast.Output, ast.Loss, ast.Metric)):
            self.result_stmt(s, scope)
        elif isinstance(s, ast.Return):
            if scope.kind != "block":
                self.fail("`return` is only allowed in a block", s.span,
                          "a model names its results with `output`, `loss` and `metric`")
            vals = tuple(self.expr(v, scope, None) for v in s.values)
            return vals[0] if len(vals) == 1 else vals
        elif isinstance(s, ast.Repeat):
            count = self.const_expr(s.count, scope)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                self.fail(f"repeat needs a positive integer count, got {count!r}", s.count.span)
            outer = scope.prefix
            scope.in_loop += 1
            try:
                for k in range(count):
                    scope.repeat = scope.repeat + (k,)
                    self.run_body(s.body, scope)
                    scope.repeat = scope.repeat[:-1]
            finally:
                scope.in_loop -= 1
                scope.prefix = outer
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
            value = self.expr(s.value, scope, s.name)
        if value is POISON:
            raise _Abort
        if not isinstance(value, T):
            self.fail(f"{what} must be a tensor, got {value!r}", s.span)
        node = self.g.node(value.id)
        name = s.name or (s.value.func if isinstance(s.value, ast.Call) else "loss")
        table = {"output": self.g.outputs, "loss": self.g.losses, "metric": self.g.metrics}[what]
        if name in table:
            self.fail(f"{what} '{name}' is declared twice", s.span,
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
            if isinstance(d, ast.Name) and d.id == "batch" and "batch" not in scope.vars:
                dims.append(Sym.of("batch"))
                continue
            v = self.const_expr(d, scope)
            if not (isinstance(v, Sym) or isinstance(v, int) and not isinstance(v, bool)
                    and v > 0):
                self.fail(f"a dim must be a positive integer or a symbol, got {v!r}", d.span)
            dims.append(v)
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
            return [self.expr(x, scope, None) for x in e.items]
        if isinstance(e, ast.Name):
            return self.name(e, scope)
        if isinstance(e, ast.Neg):
            v = self.expr(e.operand, scope, target)
            if v is POISON:
                raise _Abort
            if isinstance(v, T):
                return self.emit("neg", [v], {}, e.span, [e.operand.span], scope, None)
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
        if isinstance(e, ast.Subscript):
            return self.subscript(e, scope)
        self.fail(f"unsupported expression {type(e).__name__}", e.span)

    def name(self, e: ast.Name, scope: Scope):
        if e.id in scope.vars:
            v = scope.vars[e.id]
            if v is POISON:
                raise _Abort
            return v
        if e.id in INITIALIZERS:
            return Initializer(e.id, {})
        if e.id in scope.later:
            where = scope.later[e.id]
            self.fail(f"'{e.id}' is used before it is defined (line {where.line})", e.span,
                      "statements run in order; move the definition up",
                      [("defined here", where)])
        if e.id in self.defs or registry.get(e.id) is not None:
            self.fail(f"'{e.id}' is an op or block; call it: {e.id}(...)", e.span)
        self.fail(f"unknown name '{e.id}'", e.span,
                  did_you_mean(e.id, scope.vars) or
                  ("names must be defined before they are used" if scope.vars else None))

    def binop(self, e: ast.BinOp, scope: Scope, target):
        a = self.expr(e.left, scope, target)
        c = self.expr(e.right, scope, target)
        if a is POISON or c is POISON:
            raise _Abort
        if not isinstance(a, T) and not isinstance(c, T):
            if e.op == "@":
                self.fail("@ needs tensors", e.span)
            try:
                return _eval_binop(e.op, a, c)
            except Exception as err:  # NOTE: constant arithmetic on user values
                self.fail(f"cannot compute {a!r} {e.op} {c!r}: {err}", e.span)
        return self.emit(_TENSOR_BINOPS[e.op], [a, c], {}, e.span,
                         [e.left.span, e.right.span], scope, None)

    def subscript(self, e: ast.Subscript, scope: Scope):
        v = self.expr(e.value, scope, None)
        if isinstance(v, list):
            idx = self.const_expr(e.indices[0], scope)
            if len(e.indices) != 1 or not isinstance(idx, int):
                self.fail("lists take one integer index", e.span)
            if not -len(v) <= idx < len(v):
                self.fail(f"index {idx} is out of range for a list of {len(v)}", e.span)
            return v[idx]
        if not isinstance(v, T):
            self.fail(f"cannot index {v!r}", e.span)
        rank = len(self.g.node(v.id).shape)
        if len(e.indices) > rank:
            self.fail(f"{len(e.indices)} indices for a tensor of rank {rank}", e.span)
        axis, drop = 0, []
        for ix in e.indices:
            if isinstance(ix, ast.Slice):
                start = 0 if ix.start is None else self.const_expr(ix.start, scope)
                stop = None if ix.stop is None else self.const_expr(ix.stop, scope)
                if (start, stop) != (0, None):
                    v = self.emit("slice", [v], dict(axis=axis, start=start, stop=stop, step=1),
                                  ix.span, [e.value.span], scope, None)
            else:
                i = self.const_expr(ix, scope)
                if not isinstance(i, int):
                    self.fail(f"tensor indices must be integers or slices, got {i!r}", ix.span)
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
        if opdef is None or e.func in _KEYWORD_ONLY_OPS:
            names = [n for n, d in self.defs.items() if isinstance(d, ast.BlockDef)]
            names += [n for n in registry.all_ops() if n not in _KEYWORD_ONLY_OPS]
            self.fail(f"unknown op or block '{e.func}'", e.func_span,
                      did_you_mean(e.func, names) or "see `nnlang ops` for the list of ops")
        # NOTE: an op without weights (relu in `h = dense(x, 8) |> relu`) passes the target
        # name to its first argument, so the layer it wraps is named `h`, not `dense`
        inner = target if opdef.params is None else None
        args = [self.expr(a, scope, inner if i == 0 else None) for i, a in enumerate(e.args)]
        kwargs = {k.name: self.expr(k.value, scope, None) for k in e.kwargs}
        if any(v is POISON for v in args + list(kwargs.values())):
            raise _Abort
        share = kwargs.pop("share", None)
        spans = {i: a.span for i, a in enumerate(e.args)}
        spans.update({k.name: k.value.span for k in e.kwargs})
        try:
            bound = opdef.sig.bind(args, kwargs)
        except BindError as err:
            span = spans.get(err.arg, e.span) if err.arg is not None else e.span
            self.fail(f"{e.func}() {err.message}", span, err.hint)
        tensors, attrs, tspans = [], {}, []
        names = list(opdef.sig.names())
        for p in opdef.sig.params:
            value = bound[p.name]
            pos = names.index(p.name)
            span = spans.get(p.name, spans.get(pos, e.span))
            if p.variadic:
                for i, v in enumerate(value):
                    tensors.append(self.as_tensor(v, spans.get(i, e.span), e.func))
                    tspans.append(spans.get(i, e.span))
                continue
            optional_none = value is None and not p.required and p.default is None
            problem = None if optional_none else check_kind(p.kind, value, isinstance(value, T))
            if problem:
                self.fail(f"{e.func}() argument '{p.name}': {problem}", span,
                          f"signature: {e.func}({opdef.sig})")
            if p.kind in ("tensor", "tensor?"):
                tensors.append(None if value is None else self.as_tensor(value, span, e.func))
                tspans.append(span)
            else:
                attrs[p.name] = value.spec() if isinstance(value, Initializer) else value
        path = None
        if opdef.params is not None:
            path = self.layer_path(scope, target, e.func, share, spans.get("share"))
        where = path or _join(scope.prefix, target or "")
        return self.emit(e.func, tensors, attrs, e.span, tspans, scope, path, where)

    def as_tensor(self, v, span: Span, func: str) -> T:
        if isinstance(v, T):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            with self.b.at(span):
                return T(self.b.const(v, "float32"))
        self.fail(f"{func}(): expected a tensor, got {v!r}", span)

    def layer_path(self, scope, target, func, share, share_span) -> str:
        if share is not None:
            if not isinstance(share, T) or share.id not in self.layer_of:
                self.fail("share= names a value produced by a layer with weights", share_span,
                          "e.g. `b = dense(x2, 64, share = a)` reuses the weights of `a`")
            return self.layer_of[share.id]
        base = target or func
        rep = scope.repeat
        path = _join(scope.prefix, base + "".join(f".{k}" for k in rep))
        if path in self.used_paths:  # e.g. a second anonymous dense: dense_1, dense_2, ...
            k = 1
            while f"{path}_{k}" in self.used_paths:
                k += 1
            path = f"{path}_{k}"
        self.used_paths.add(path)
        return path

    def param(self, name: str, spec: ParamSpec, span: Span, share: bool) -> int:
        if name in self.g.params:
            existing = self.g.node(self.g.params[name])
            if share and existing.shape == tuple(spec.shape):
                return existing.id
            self.fail(f"weight '{name}' {fmt_shape(spec.shape)} conflicts with its earlier "
                      f"definition {fmt_shape(existing.shape)}", span,
                      "shared layers must see inputs of the same shape" if share else None)
        with self.b.at(span, name.rpartition(".")[0]):
            nid = self.b.emit("param", name=name, dtype=spec.dtype, shape=list(spec.shape),
                              init=spec.init, trainable=spec.trainable)
        self.g.params[name] = nid
        return nid

    def emit(self, op: str, ins: list, attrs: dict, span: Span, in_spans: list, scope: Scope,
             path: str | None, where: str | None = None):
        """Adds one op node; `path` names a layer that owns weights, `where` the node's path."""
        ins = [self.as_tensor(v, s, op) if v is not None else None
               for v, s in zip(ins, in_spans)]
        opdef = registry.get(op)
        in_types = [None if t is None else self.g.node(t.id).type for t in ins]
        if any(t is None for t, x in zip(in_types, ins) if x is not None):
            raise _Abort
        full = {p.name: attrs.get(p.name, p.default) for p in opdef.sig.params
                if p.kind not in ("tensor", "tensor?")}
        params = []
        if opdef.params is not None:
            try:
                specs = opdef.params(*in_types, **full)
            except ShapeError as err:
                self.shape_fail(op, err, span, in_spans, ins)
            shared = path in self.layer_of.values()
            params = [T(self.param(f"{path}.{k}", spec, span, shared))
                      for k, spec in specs.items()]
        layer = path or where or scope.prefix
        try:
            with self.b.at(span, layer):
                nid = self.b.emit(op, *[None if t is None else t.id for t in ins],
                                  *[p.id for p in params], **full)
        except ShapeError as err:
            self.shape_fail(op, err, span, in_spans, ins)
        if path is not None:
            self.layer_of[nid] = path
        return T(nid)

    def shape_fail(self, op, err: ShapeError, span, in_spans, ins):
        at = in_spans[err.arg] if err.arg is not None and err.arg < len(in_spans) else span
        notes = []
        for t in dict.fromkeys(ins):
            if t is None:
                continue
            node = self.g.node(t.id)
            name, where = self.origin.get(t.id, (node.name or f"%{t.id}", node.span))
            notes.append((f"'{name}' is {node.type}, from {self.describe(t.id)}", where))
        msg = err.message if err.message.startswith(op) else f"{op}: {err.message}"
        self.fail(msg, at, err.hint, notes)

    def describe(self, nid: int, depth: int = 3) -> str:
        """The chain of ops that produced a value, e.g. `flatten <- max_pool2d <- conv2d`."""
        chain, cur = [], nid
        while cur is not None and len(chain) < depth:
            node = self.g.node(cur)
            chain.append(f"{node.op}{fmt_shape(node.shape)}")
            tensor_ins = [i for i in node.inputs if self.g.node(i).op not in ("param", "const")]
            cur = tensor_ins[0] if tensor_ins else None
        return " <- ".join(chain)

    def initializer_call(self, e: ast.Call, scope: Scope) -> Initializer:
        sig, _ = INITIALIZERS[e.func]
        args = [self.const_expr(a, scope) for a in e.args]
        kwargs = {k.name: self.const_expr(k.value, scope) for k in e.kwargs}
        try:
            return Initializer(e.func, sig.bind(args, kwargs))
        except BindError as err:
            self.fail(f"{e.func}() {err.message}", e.span, err.hint)

    def init_value(self, e, scope) -> tuple[str, dict]:
        v = self.expr(e, scope, None)
        if isinstance(v, Initializer):
            return v.spec()
        if isinstance(v, str) and v in INITIALIZERS:
            return v, {}
        self.fail(f"expected an initializer, got {v!r}", e.span,
                  did_you_mean(str(v), INITIALIZERS) or
                  f"initializers: {', '.join(sorted(INITIALIZERS))}")

    def block_call(self, block: ast.BlockDef, e: ast.Call, scope: Scope, target):
        if block.name in self.stack:
            chain = " -> ".join(self.stack[self.stack.index(block.name):] + [block.name])
            self.fail(f"block '{block.name}' calls itself ({chain})", e.span,
                      "blocks cannot be recursive; use `repeat N { ... }` to stack layers")
        names = [p.name for p in block.params]
        args = [self.expr(a, scope, None) for a in e.args]
        kwargs = {k.name: self.expr(k.value, scope, None) for k in e.kwargs}
        if any(v is POISON for v in args + list(kwargs.values())):
            raise _Abort
        share = kwargs.pop("share", None)
        if len(args) > len(names):
            self.fail(f"{block.name}() takes {len(names)} arguments but {len(args)} were given",
                      e.span, f"signature: {block.name}({', '.join(names)})")
        inner = Scope("", kind="block")
        inner.prefix = self.layer_path(scope, target, block.name, share,
                                       next((k.span for k in e.kwargs if k.name == "share"),
                                            e.span))
        given = dict(zip(names, args))
        for k in e.kwargs:
            if k.name == "share":
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
                inner.vars[p.name] = self.expr(p.default, inner, None)
            else:
                self.fail(f"{block.name}() missing required argument '{p.name}'", e.span,
                          f"signature: {block.name}({', '.join(names)})")
            inner.spans[p.name] = p.span
        self.stack.append(block.name)
        errors_before = len(self.errors.diagnostics)
        try:
            result = self.run_body(block.body, inner)
        finally:
            self.stack.pop()
        if len(self.errors.diagnostics) > errors_before:
            raise _Abort
        if result is None:
            self.fail(f"block '{block.name}' returns nothing", block.span,
                      "end the block with `return value`")
        for v in result if isinstance(result, tuple) else (result,):
            if isinstance(v, T):
                self.layer_of.setdefault(v.id, inner.prefix)
        return result


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a and b else a or b


# *** files and imports ***

def collect_defs(module: ast.Module, errors: ErrorSink, seen: set | None = None,
                 defs: dict | None = None) -> dict:
    """All models, blocks and train sections of a file and the files it imports."""
    seen = seen if seen is not None else set()
    defs = defs if defs is not None else {}
    seen.add(str(Path(module.file).resolve()) if module.file != "<string>" else module.file)
    for item in module.items:
        if isinstance(item, ast.Import):
            base = Path(module.file).parent if module.file != "<string>" else Path.cwd()
            path = (base / item.path).resolve()
            if str(path) in seen:
                continue  # NOTE: a diamond or a cycle of imports loads each file once
            if not path.is_file():
                errors.add(f"cannot import '{item.path}': no such file", item.span,
                           f"looked for {path}")
                continue
            try:
                collect_defs(parse_file(path), errors, seen, defs)
            except NNError as err:
                errors.extend(err)
            continue
        key = f"train:{item.name}" if isinstance(item, ast.TrainDef) else item.name
        if key in defs:
            prev = defs[key]
            errors.add(f"'{item.name}' is defined twice", item.span,
                       "rename one of them", [("first defined here", prev.span)])
            continue
        if not isinstance(item, ast.TrainDef) and registry.get(item.name) is not None:
            errors.add(f"block '{item.name}' has the name of a built-in op", item.span,
                       "choose another name")
            continue
        defs[key] = item
    return defs


def elaborate(module: ast.Module, overrides: dict | None = None,
              model: str | None = None) -> Program:
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
        errors.add("this file defines no model", Span(module.file, 1, 1, source=module.source),
                   "add `model Name(...) { ... }`")
        errors.raise_if_any()
    else:
        errors.add(f"this file defines {len(local)} models "
                   f"({', '.join(m.name for m in local)}); choose one",
                   local[1].span, "pass --model NAME")
        errors.raise_if_any()
    for key, d in defs.items():
        if isinstance(d, ast.TrainDef) and d.name not in defs:
            errors.add(f"train section for unknown model '{d.name}'", d.span,
                       did_you_mean(d.name, [m.name for m in models]))
    el = Elaborator(defs, errors)
    hparams = el.model(chosen, overrides or {})
    train = None
    tdef = defs.get(f"train:{chosen.name}")
    if tdef is not None:
        scope = Scope("", vars=dict(hparams))
        train = elaborate_train(tdef, lambda e: el.const_expr(e, scope), errors, _Abort)
    errors.raise_if_any()
    el.g.meta["train"] = train
    return Program(el.g, chosen.name, hparams, train, module.file, defs)


def load(source_or_path, overrides: dict | None = None, model: str | None = None) -> Program:
    """Parses and elaborates a .nn file (a path) or .nn source text."""
    text = str(source_or_path)
    if "\n" not in text and (text.endswith(".nn") or Path(text).is_file()):
        module = parse_file(text)
    else:
        module = parse(text, "<string>")
    return elaborate(module, overrides, model)
