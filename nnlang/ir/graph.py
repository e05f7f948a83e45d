"""The computation graph every stage after elaboration works on.

`Graph` wraps a `networkx.MultiDiGraph` (one value may feed two inputs of one node) whose nodes
are plain `Node` records: op, attrs, type, source span, block path and role (fwd, bwd, optim).
`Builder` is the one way to add ops: it binds attributes, runs the op's shape rule and stamps
the current span, path and role on the new node, so decompositions and gradients keep them.
"""
from __future__ import annotations

import copy
import heapq
from contextlib import contextmanager
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from nnlang.errors import NNError, Span
from nnlang.ir.dims import fmt_shape
from nnlang.ops import registry
from nnlang.ops.registry import ShapeError, TensorType

SLOT_ABSENT = "_absent"  # attr: indices of optional tensor arguments that were not given
COUNT = "_count"  # hidden attr: a const that counts elements of sized dims (`Builder.count`)


@dataclass
class Node:
    id: int
    op: str
    inputs: tuple[int, ...]
    attrs: dict
    type: TensorType | None      # None after a shape error upstream
    span: Span | None = None
    path: str = ""
    role: str = "fwd"
    name: str | None = None      # the .nn value name, when it has one

    def clone(self) -> "Node":
        """A copy whose attrs can change without touching this node (dataclasses.replace is
        ~10x slower, and a graph copy clones every node)."""
        new = object.__new__(Node)
        new.__dict__.update(self.__dict__)
        new.attrs = dict(self.attrs)
        return new

    @property
    def shape(self):
        return self.type.shape if self.type else None

    @property
    def dtype(self):
        return self.type.dtype if self.type else None


@dataclass
class Graph:
    nx: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)
    inputs: dict[str, int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    losses: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    symbols: tuple[str, ...] = ("batch",)
    model: str = ""               # the model's name, for messages
    # state name -> the value it takes after a step (train graphs, batch-norm statistics)
    updates: dict[str, int] = field(default_factory=dict)
    grads: dict[str, int] = field(default_factory=dict)   # parameter name -> its gradient
    groups: list | None = None    # the kernel groups `fuse` chose (its last pass)
    salt: int = 0                 # the last salt handed to a random op
    # where the train section sets each setting ("": the section itself, or the model when it
    # has none): the optimizer's, clipping's and penalties' nodes point there
    train_spans: dict = field(default_factory=dict)
    _next: int = 0
    _order: tuple | None = field(default=None, repr=False, compare=False)  # topo() until a change

    # *** structure ***
    def add_node(self, op: str, inputs, attrs: dict, type: TensorType | None, **kw) -> int:
        nid = self._next
        self._next += 1
        node = Node(nid, op, tuple(inputs), dict(attrs), type, **kw)
        self._order = None
        self.nx.add_node(nid, node=node)
        for i, src in enumerate(node.inputs):
            self.nx.add_edge(src, nid, key=i)
        return nid

    def node(self, nid: int) -> Node:
        return self.nx.nodes[nid]["node"]

    def __iter__(self):
        return (self.node(n) for n in self.nx.nodes)

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def users(self, nid: int) -> list[int]:
        return sorted({dst for _, dst in self.nx.out_edges(nid)})

    def topo(self) -> list[int]:
        """Kahn's order with ties broken by the smallest id, so dumps, kernels and goldens are
        deterministic (networkx's lexicographical_topological_sort, ~10x faster on the
        8k-node unrolled LSTM); kept until the graph changes."""
        if self._order is None:
            self._order = tuple(self._kahn())
        return list(self._order)

    def _kahn(self) -> list[int]:
        succ = self.nx.succ
        waiting = {n: d for n, d in self.nx.in_degree()}
        ready = [n for n, d in waiting.items() if d == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            n = heapq.heappop(ready)
            order.append(n)
            for v, edges in succ[n].items():
                waiting[v] -= len(edges)
                if not waiting[v]:
                    heapq.heappush(ready, v)
        if len(order) != len(waiting):
            raise nx.NetworkXUnfeasible("graph contains a cycle")
        return order

    def ancestors(self, roots) -> set[int]:
        """Every node some of `roots` depends on, the roots included."""
        pred = self.nx.pred
        seen, stack = set(roots), list(roots)
        while stack:
            for p in pred[stack.pop()]:
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def set_inputs(self, nid: int, inputs) -> None:
        node = self.node(nid)
        self._order = None
        for src in set(node.inputs):
            for key in [k for _, _, k in self.nx.in_edges(nid, keys=True)]:
                if self.nx.has_edge(src, nid, key):
                    self.nx.remove_edge(src, nid, key)
        node.inputs = tuple(inputs)
        for i, src in enumerate(node.inputs):
            self.nx.add_edge(src, nid, key=i)

    def replace_uses(self, old: int, new: int) -> None:
        """Points every user of `old` (and the graph's named results) at `new`."""
        for user in self.users(old):
            u = self.node(user)
            self.set_inputs(user, [new if i == old else i for i in u.inputs])
        for table in (self.outputs, self.losses, self.metrics):
            for k, v in table.items():
                if v == old:
                    table[k] = new

    def remove(self, nid: int) -> None:
        self._order = None
        self.nx.remove_node(nid)

    def roots(self) -> list[int]:
        """Nodes whose values leave the graph: outputs, losses, metrics and `root` nodes."""
        named = [*self.outputs.values(), *self.losses.values(), *self.metrics.values()]
        return sorted(set(named) | {n.id for n in self if n.attrs.get("root")})

    def copy(self) -> "Graph":
        g = copy.copy(self)
        g.nx = self.nx.copy()
        for _, data in g.nx.nodes(data=True):
            data["node"] = data["node"].clone()
        g.inputs, g.params = dict(self.inputs), dict(self.params)
        g.outputs, g.losses, g.metrics = dict(self.outputs), dict(self.losses), dict(self.metrics)
        g.updates, g.grads = dict(self.updates), dict(self.grads)
        g.groups = None if self.groups is None else list(self.groups)
        return g

    # *** printing ***
    def dump(self, roles=None) -> str:
        """Text form in the style of a jaxpr: one line per node, in topological order."""
        lines = []
        for nid in self.topo():
            n = self.node(nid)
            if roles and n.role not in roles:
                continue
            lines.append(format_node(self, n))
        for title, table in (("output", self.outputs), ("loss", self.losses),
                             ("metric", self.metrics)):
            for k, v in table.items():
                lines.append(f"{title} {k} = %{v}")
        # NOTE: a train graph's gradients and state writes, by weight name: without them the
        # text showed the backward pass without saying which weight each result is for
        for title, table in (("grad", self.grads), ("update", self.updates)):
            for k, v in table.items():
                if v in self.nx:
                    lines.append(f"{title} {k} = %{v}")
        return "\n".join(lines) + "\n"


def no_output_error(g: Graph, what: str, why: str = "") -> NNError:
    """`g` declares no output, so `what` ("to export", "to predict", ...) has nothing to give:
    the error points at the first loss and names the value it scores, the natural output (one
    message for export, predict and Net.forward)."""
    loss = next(iter(g.losses.values()), None)
    if loss is None:
        return NNError(f"model '{g.model}' declares no output {what}",
                       hint="add the value to serve, e.g. `output probs = softmax(logits)`")
    node = g.node(loss)
    scored = g.node(node.inputs[0]).name if node.inputs else None
    hint = (f"add `output {scored}`, the value this loss scores" if scored else
            "name the value this loss scores (`logits = ...`) and add `output logits`")
    return NNError(f"model '{g.model}' declares no output {what}{why}", node.span, hint)


def format_attr(v) -> str:
    if isinstance(v, np.ndarray):
        return f"array{fmt_shape(v.shape)}" if v.size > 4 else np.array2string(v.ravel(),
                                                                               separator=",")
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], dict):  # initializer
        args = ",".join(f"{k}={format_attr(x)}" for k, x in v[1].items())
        return f"{v[0]}({args})"
    return repr(v) if isinstance(v, str) else str(v)


def format_node(g: Graph, n: Node) -> str:
    attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in sorted(n.attrs.items())
                      if not k.startswith("_"))
    args = ", ".join(f"%{i}" for i in n.inputs)
    call = f"{n.op}({args}{', ' if args and attrs else ''}{attrs})"
    label = f" {n.name}" if n.name else ""
    where = f"  # {n.path or '.'}" + (f" @{n.span.label()}" if n.span and n.span.line
                                      else "")
    role = "" if n.role == "fwd" else f"[{n.role}] "
    return f"%{n.id}{label}: {n.type or '?'} = {role}{call}{where}"


class Builder:
    """Adds ops to a graph with the current span, block path and role stamped on each node."""

    def __init__(self, graph: Graph, span: Span | None = None, path: str = "", role: str = "fwd"):
        self.g, self.span, self.path, self.role = graph, span, path, role

    @contextmanager
    def at(self, span: Span | None = None, path: str | None = None, role: str | None = None):
        saved = self.span, self.path, self.role
        self.span = span if span is not None else self.span
        self.path = path if path is not None else self.path
        self.role = role if role is not None else self.role
        try:
            yield self
        finally:
            self.span, self.path, self.role = saved

    def type(self, nid: int) -> TensorType | None:
        return self.g.node(nid).type

    def emit(self, op: str, *inputs, value_name: str | None = None, **attrs) -> int:
        """Adds `op(*inputs, **attrs)`; None inputs mark optional tensors that were not given."""
        opdef = registry.get(op)
        if opdef is None:
            raise KeyError(f"unknown op {op!r}")
        for p in opdef.sig.params:
            if p.kind not in ("tensor", "tensor?") and p.name not in attrs:
                attrs[p.name] = p.default
        absent = tuple(i for i, x in enumerate(inputs) if x is None)
        present = [x for x in inputs if x is not None]
        in_types = [None if x is None else self.g.node(x).type for x in inputs]
        if any(t is None for i, t in enumerate(in_types) if i not in absent):
            out = None  # an upstream error was already reported
        else:
            out = opdef.shape(*in_types, **attrs)
        if absent:
            attrs[SLOT_ABSENT] = absent
        return self.g.add_node(op, present, attrs, out, span=self.span, path=self.path,
                               role=self.role, name=value_name)

    def const(self, value, dtype: str = "float32") -> int:
        arr = np.asarray(value, dtype=dtype)
        return self.g.add_node("const", [], {"value": arr}, TensorType(arr.shape, dtype),
                               span=self.span, path=self.path, role=self.role)

    def count(self, value: float, dtype: str = "float32") -> int:
        """A const that counts elements (a mean's divisor): a kernel reads it as an argument
        (`codegen/kernel.py`), not as a literal, so a new sequence length or batch size, whose
        counts differ, reuses the compiled kernels; folding keeps the mark on what it makes
        from it."""
        nid = self.const(value, dtype)
        self.g.node(nid).attrs[COUNT] = True
        return nid

    def literal(self, value: float, dtype: str = "float32") -> int:
        """A number written in the source: a const that keeps the exact value (hidden attr
        `_literal`) so a retype to a wider dtype does not inherit the narrower rounding."""
        nid = self.const(value, dtype)
        self.g.node(nid).attrs["_literal"] = value
        return nid

    training = True  # decompositions of dropout and batch_norm read this
    # NOTE: the data-parallel processes the graph is one of (the train step's); a loss whose
    # divisor depends on the data (cross_entropy's kept rows, its class weights) reads it to
    # divide by the global batch's divisor, so the ranks' averaged gradient is one process's
    ranks = 1

    def rng_key(self) -> int:
        """The int64 scalar input the runtime advances every step; random ops hash it."""
        if "_rng" not in self.g.inputs:
            self.g.inputs["_rng"] = self.g.add_node(
                "input", [], {"name": "_rng", "dtype": "int64", "shape": []},
                TensorType((), "int64"), span=self.span, path="", role=self.role, name="_rng")
        return self.g.inputs["_rng"]

    def update_state(self, param: int, value: int) -> None:
        """After the step, the persistent `param` takes `value` (batch-norm running stats)."""
        name = self.g.node(param).attrs["name"]
        self.g.updates[name] = value

    def state_now(self, param: int) -> int:
        """The value of the persistent `param` after the updates emitted so far: a layer
        called twice (`share =`) updates from its first call's result, in call order, as a
        PyTorch module called twice does (from `param` each, the last call's update alone
        was kept)."""
        return self.g.updates.get(self.g.node(param).attrs["name"], param)

    def salt(self) -> int:
        """A number unique to each random site, so two dropouts draw different masks."""
        self.g.salt += 1
        return self.g.salt

    def __getattr__(self, op: str):
        if op.startswith("_") or registry.get(op) is None:
            raise AttributeError(op)
        return lambda *inputs, **attrs: self.emit(op, *inputs, **attrs)


def weight_users(g: Graph) -> tuple[dict[int, int], dict[int, int]]:
    """{each weight used: its first user in topological order, which owns it} and {each layer
    call whose weights another owns (`d2 = dense(f, 16, share = d1)`): that owner}; `nnlang
    check` counts a weight once, at its owner, and both it and `nnlang graph` say who a shared
    call's weights are."""
    owner: dict[int, int] = {}
    for nid in g.topo():
        for i in g.node(nid).inputs:
            if g.node(i).op == "param":
                owner.setdefault(i, nid)
    shares: dict[int, int] = {}
    for pid, first in owner.items():
        for u in g.users(pid):
            opdef = registry.get(g.node(u).op)
            # NOTE: a scan takes its block's weights as inputs: one made under a block call's
            # path and first used by another scan is `scan Cell(..., share = ys)`'s; a model's
            # own `param` passed to both as an argument is the user's wiring, as `x @ w` twice
            scanned = g.node(u).op == "scan" and g.node(pid).path != ""
            if u != first and (scanned or opdef is not None and opdef.params is not None):
                shares.setdefault(u, first)
    return owner, shares


def folded_calls(g: Graph) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Calls that `nnlang check` and `nnlang graph` show as one row and one node, as Keras
    shows a layer, though the graph holds them as several nodes:
    - a call with several results (`o, h, c = lstm(x, 3, return_state = true)`): one node
      whose value packs them ([batch, 3, 3]: outputs, h and c along axis 1), cut apart by the
      slices and reshapes its OpDef's `results` added;
    - a user `scan` (`hs, h, c = scan Cell(h0, c0, ...) over x`): the frontend also concats
      the states, moves time first and back, broadcasts per-step weights and cuts the results.
    Returns {call: its results in order} and {each node folded into a call: the call}."""
    results: dict[int, list[int]] = {}
    folded: dict[int, int] = {}
    scans = [n for n in g if n.op == "scan"]
    by_span: dict = {}
    for m in g if scans else ():
        if m.op not in ("input", "param", "const", "scan") and m.span is not None:
            by_span.setdefault(m.span, []).append(m.id)
    named = {*g.outputs.values(), *g.losses.values(), *g.metrics.values()}
    for n in g:
        opdef = registry.get(n.op)
        users = sorted(g.users(n.id))
        if n.op == "scan":
            # NOTE: the frontend's nodes carry the call's span; an argument's expression has
            # its own (a sub-span), and so does anything the model does with the results
            group = sorted(_scan_plumbing(g, n, set(by_span.get(n.span, ()))))
            parts = [m for m in group if g.node(m).name or m in named]
            if parts:
                results[n.id] = parts
                folded.update((m, n.id) for m in group)
            continue
        # NOTE: the cuts carry the call's span; a slice the model writes of a plain result
        # (return_state = false) has its own
        if opdef is None or opdef.results is None or not users or any(
                g.node(u).op != "slice" or g.node(u).span != n.span for u in users):
            continue
        parts = []
        for u in users:
            after = g.users(u)
            folded[u] = n.id
            # NOTE: a one-step result is reshaped to drop the step axis; a sequence is the slice
            if len(after) == 1 and g.node(after[0]).op == "reshape" and \
                    g.node(after[0]).span == n.span:
                folded[after[0]] = n.id
                halves = sorted(g.users(after[0]))
                # NOTE: a row of a bidirectional layer's states holds [forward | backward],
                # cut in two (ops/rnn.py `results`)
                if halves and all(g.node(h).op == "slice" and g.node(h).span == n.span
                                  for h in halves):
                    folded.update((h, n.id) for h in halves)
                    parts += halves
                else:
                    parts.append(after[0])
            else:
                parts.append(u)
        results[n.id] = sorted(parts)   # made in the results' order
    return results, folded


def _scan_plumbing(g: Graph, scan: Node, same_span: set[int]) -> set[int]:
    """The nodes the frontend built around one user scan: up from its inputs and down from
    its value, among the nodes of the call's span, stopping at named values (a result; in a
    block run by `repeat`, the previous call's result, which has the same span)."""
    found: set[int] = set()
    stack = [(i, "up") for i in scan.inputs] + [(u, "down") for u in g.users(scan.id)]
    while stack:
        nid, way = stack.pop()
        if nid in found or nid not in same_span:
            continue
        named = bool(g.node(nid).name)
        if way == "up" and named:
            continue
        found.add(nid)
        if not named:
            stack += ([(i, "up") for i in g.node(nid).inputs] if way == "up" else
                      [(u, "down") for u in g.users(nid)])
    return found


def slots(g: Graph, node: Node) -> list:
    """A node's inputs with None restored where optional tensor arguments were absent."""
    absent = node.attrs.get(SLOT_ABSENT, ())
    it = iter(node.inputs)
    total = len(node.inputs) + len(absent)
    return [None if i in absent else next(it) for i in range(total)]


def op_attrs(node: Node) -> dict:
    return {k: v for k, v in node.attrs.items() if not k.startswith("_") and k != "root"}


def decompose_node(g: Graph, nid: int, training: bool, ranks: int = 1) -> int:
    """Replaces composite node `nid` by what its op's `decompose` rule writes, in place; returns
    the node that stands for it. Every node the rule emits keeps the composite's span, block
    path and role, so errors, the backward graph and kernel headers still point at the .nn
    line that asked for them."""
    node = g.node(nid)
    b = Builder(g, span=node.span, path=node.path, role=node.role)
    b.training, b.ranks = training, ranks
    out = registry.get(node.op).decompose(b, *slots(g, node), **op_attrs(node))
    if node.name and g.node(out).name is None:
        g.node(out).name = node.name
    g.replace_uses(nid, out)
    g.remove(nid)
    return out


__all__ = ["Graph", "Node", "Builder", "ShapeError", "TensorType", "slots", "op_attrs",
           "decompose_node"]
