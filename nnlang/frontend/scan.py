"""`hs, h = scan Cell(h0) over x`: a block run once per step of a sequence, lowered to the `scan`
node (ops/scan.py) that rnn/lstm/gru build. The block is elaborated once on per-step
placeholders in the outer graph (so its layers get weights and paths as anywhere else), then the
nodes that depend on the placeholders move into the scan's body graph.
"""
from __future__ import annotations

import numpy as np

from nnlang.frontend import ast
from nnlang.frontend.values import POISON, Abort, Scope, T
from nnlang.ir.graph import Builder, decompose_node
from nnlang.ir.scan import Body, new_body_graph
from nnlang.ops import registry
from nnlang.ops.signature import show_value

_FORM = "hs, h = scan Cell(h0) over x"


class ScanElaboration:
    """Mixed into the Elaborator (elaborate.py) beside CallElaboration."""

    def scan(self, e: ast.Scan, scope: Scope, target):
        call = e.call
        block = self.defs.get(call.func)
        if not isinstance(block, ast.BlockDef):
            self.fail(f"scan runs a block, and '{call.func}' is not one", call.func_span,
                      f"define `block {call.func}(x, h, ...) {{ ... return h2, y }}`; {_FORM}")
        reverse = self._scan_options(e, scope)
        seqs = [self.single(x, scope) for x in e.over]
        inits = [self.single(a, scope) for a in call.args]
        if any(v is POISON for v in seqs + inits):
            raise Abort
        if not inits:
            self.fail(f"scan: {call.func} carries no state", call.span,
                      f"pass the initial states first: {_FORM}")
        dtype, batch, steps = self._scan_seqs(seqs, e)
        self._scan_by_name(block, call, len(seqs))
        self._scan_inits(inits, block, call, dtype, batch, len(seqs))
        # NOTE: each step's value at its own argument, so a shape error in the body names the
        # state or sequence it came from, not the whole scan
        places = [self._placeholder(f"x{i}", (batch, self._type(s).shape[2]), dtype, x.span)
                  for i, (s, x) in enumerate(zip(seqs, e.over))]
        places += [self._placeholder(f"carry{i}", self._type(h).shape, dtype, a.span)
                   for i, (h, a) in enumerate(zip(inits, call.args))]
        bare = ast.Call(call.span, call.func, call.func_span, (), call.kwargs)
        result = self.block_call(block, bare, scope, target, values=places)
        result = list(result) if isinstance(result, tuple) else [result]
        self._scan_results(result, inits, block, call, dtype, batch)
        prefix = self.layer_of.get(result[0].id)   # NOTE: the block call's weights' path
        body, weights, broadcast, cols = self._cut_body(
            places, result, len(seqs), dtype, batch, [self._type(h).shape[1] for h in inits],
            call, e.span)
        out = self._emit_scan(e, scope, seqs, inits, weights, broadcast, body, cols, reverse)
        if prefix is not None:  # NOTE: so a later `share = <a scan's result>` finds its weights
            for v in out if isinstance(out, tuple) else (out,):
                self.layer_of.setdefault(v.id, prefix)
        return out

    # *** checks ***
    def _scan_options(self, e: ast.Scan, scope) -> bool:
        """The loop's own options after its sequences: `reverse = true` runs the steps from
        the last to the first (JAX's lax.scan(reverse=True)); returns reverse."""
        reverse = False
        if not e.over:
            self.fail("scan: no sequence to run over", e.span,
                      f"name the sequences before the options: {_FORM}, reverse = true")
        for kw in e.options:
            if kw.name != "reverse":
                self.fail(f"scan has no option '{kw.name}'", kw.span,
                          "after the sequences, a scan takes `reverse = true` (steps from the "
                          "last to the first); the block's own options go in its call: "
                          f"scan {e.call.func}(..., {kw.name} = ...) over ...")
            value = self.const_expr(kw.value, scope)
            if not isinstance(value, bool):
                self.fail(f"scan: reverse is true or false, got {show_value(value)}",
                          kw.value.span, "reverse = true runs the steps from the last to the "
                          "first")
            reverse = value
        return reverse

    def _type(self, v: T):
        return self.g.node(v.id).type

    def _scan_seqs(self, seqs, e: ast.Scan):
        """(dtype, batch, steps) the sequences share: float [batch, time, k] each."""
        first = None
        types = [self._type(v) if isinstance(v, T) else None for v in seqs]
        # the dtype a bad sequence should take: that of the float sequences beside it
        want = next((t.dtype for t in types if t is not None and t.rank == 3 and
                     registry.is_float(t.dtype)), "float32")
        for t, v, x in zip(types, seqs, e.over):
            if t is None or t.rank != 3 or not registry.is_float(t.dtype):
                self.fail(f"scan runs over float sequences [batch, time, features], got "
                          f"{t if t is not None else show_value(v)}", x.span,
                          _sequence_hint(t, x, want))
            if first is not None and (t.shape[:2] != first.shape[:2] or t.dtype != first.dtype):
                self.fail(f"scan: the sequences differ: {first} and {t}", x.span,
                          "every sequence needs the same dtype, batch and time dims")
            first = first or t
        return first.dtype, first.shape[0], first.shape[1]

    def _scan_by_name(self, block: ast.BlockDef, call: ast.Call, n_seqs: int):
        """The steps and states fit the block's parameters, and no option names one of them."""
        n_states = len(call.args)
        if n_seqs + n_states > len(block.params):
            self.fail(f"scan: {block.name} takes {len(block.params)} parameter"
                      f"{'s' if len(block.params) != 1 else ''}, fewer than the {n_seqs} "
                      f"sequence step{'s' if n_seqs != 1 else ''} and {n_states} state"
                      f"{'s' if n_states != 1 else ''} the scan passes it", call.span,
                      f"{block.name}({', '.join(p.name for p in block.params)}) takes one "
                      "step of each sequence, then each state, by position, then its options")
        taken = [p.name for p in block.params[:n_seqs + n_states]]
        for kw in call.kwargs:
            if kw.name in taken:
                what = "a sequence's step" if taken.index(kw.name) < n_seqs else "a state"
                self.fail(f"scan: parameter '{kw.name}' of {block.name} takes {what} by "
                          "position, and is named again here", kw.span,
                          _binding(block, n_seqs, len(call.args)))

    def _scan_inits(self, inits, block: ast.BlockDef, call: ast.Call, dtype, batch,
                    n_seqs: int):
        for k, (v, a) in enumerate(zip(inits, call.args)):
            t = self._type(v) if isinstance(v, T) else None
            param = block.params[n_seqs + k].name if n_seqs + k < len(block.params) else None
            if t is not None and t.rank > 2 and t.shape[0] == batch and \
                    self.g.node(v.id).op != "param":
                # NOTE: one row per example with an axis too many: a state of the wrong shape
                # (given by name it would leave the scan with no state at all)
                given = a.span.text() or "the state"
                self.fail(f"scan: an initial state is {dtype}[{batch}, units]; got {t}",
                          a.span, f"a state is one flat row per example: "
                          f"flatten({given})?")
            if param is not None and (t is None or t.rank != 2 or
                                      self.g.node(v.id).op == "param"):
                # NOTE: not a state at all (a weight, a scalar): an option given by position
                given = a.id if isinstance(a, ast.Name) else "<its value>"
                hint = f"{_binding(block, n_seqs, len(inits))}; give it by name: " \
                    f"{param} = {given}"
                row = _row_width(t, dtype)
                if row is not None:
                    # NOTE: one row, a learned initial state (`param h0: [1, units]`); given
                    # by name it would leave a one-state scan with no state at all
                    start = f"broadcast_to({a.span.text() or given}, shape = [{batch}, {row}])"
                    hint = f"a learned initial state starts every example: {start}?" \
                        if len(inits) == 1 else f"{hint}; a learned initial state: {start}"
                self.fail(f"scan: parameter '{param}' of {block.name} takes a state by "
                          f"position: {dtype}[{batch}, units], got "
                          f"{t if t is not None else show_value(v)}", a.span, hint)
            if t is None or t.rank != 2 or t.dtype != dtype or t.shape[0] != batch:
                units = t.shape[1] if t is not None and t.rank == 2 else "units"
                # NOTE: the sequences' batch, a number where theirs is (`[batch, k]` would
                # not match a fixed one, and the hint, followed, gave the same error)
                zeros = f"broadcast_to(0.0, shape = [{batch}, {units}])"
                if dtype != "float32":   # NOTE: a literal is float32
                    zeros = f'cast({zeros}, dtype = "{dtype}")'
                hint = f"start from zeros: {zeros}?"
                if t is not None and t.rank == 2 and t.shape[0] == batch and a.span.text():
                    # NOTE: only the dtype is wrong (int counts, a float32 start beside
                    # float64 sequences): keep the values the user gave
                    hint = f'the sequences\' dtype: cast({a.span.text()}, dtype = "{dtype}")?'
                self.fail(f"scan: an initial state is {dtype}[{batch}, units]; got "
                          f"{t if t is not None else show_value(v)}", a.span, hint)

    def _scan_results(self, result, inits, block: ast.BlockDef, call: ast.Call, dtype, batch):
        """The block returns its next states (one per initial state, same types), then any
        per-step outputs [batch, k] (of the sequences' batch: the body stores each step's
        outputs beside the states, row by row)."""
        where = [("the block returns here", _return_span(block) or block.span)]
        if len(result) < len(inits):
            self.fail(f"scan: {block.name} returns {len(result)} value(s) but carries "
                      f"{len(inits)} state(s)", call.span,
                      "return the next states first, then the per-step outputs", where)
        for k, v in enumerate(result):
            t = self._type(v) if isinstance(v, T) else None
            if k < len(inits):
                want = self._type(inits[k])
                if t != want:
                    self.fail(f"scan: {block.name}'s state {k + 1} changes type from {want} to "
                              f"{t if t is not None else show_value(v)} in one step",
                              call.args[k].span, "a carried state keeps its shape every step",
                              where)
            elif t is None or t.rank != 2 or t.dtype != dtype or t.shape[0] != batch:
                self.fail(f"scan: {block.name}'s per-step output {k + 1} must be {dtype}"
                          f"[batch, k], got {t if t is not None else show_value(v)}",
                          call.span, None, where)

    # *** the body ***
    def _placeholder(self, name, shape, dtype, span) -> T:
        with self.b.at(span, ""):
            return T(self.b.emit("input", name=f"scan.{name}", dtype=dtype, shape=list(shape)))

    def _foreign_dtype(self, i, inside, dtype, call: ast.Call, span):
        """The error for a value of another dtype from outside the loop (a float64 weight of a
        float32 net) that a step reads: the loop's body is compiled in one dtype, its states'.
        It is at the read in the block; the hint casts it there, which needs no step value and
        so runs once before the loop, and the gradient still reaches the weight (which updates
        in its own dtype)."""
        g, n = self.g, self.g.node(i)
        read = next(u for u in sorted(g.users(i)) if u in inside)
        # NOTE: the block's name for it, when the scan passes it by name (`r = r`)
        named = [kw.name for kw in call.kwargs
                 if isinstance(kw.value, ast.Name) and n.name and kw.value.id == n.name]
        what = f"'{named[0]}', {n.type}," if named else n.type
        cast = f'cast({named[0] if named else "it"}, dtype = "{dtype}")'
        self.fail(f"scan: {call.func} reads {what} from outside the loop, but its steps run in "
                  f"{dtype}, the dtype of the states and sequences: a scan body holds one dtype",
                  g.node(read).span or span,
                  f"read it as {dtype} in the block, {cast}: the cast runs once, before the "
                  f"loop, and the gradient still reaches the {n.dtype} value",
                  [("in the scan here", span)])

    def _cut_body(self, places, result, n_seqs, dtype, batch, widths, call, span):
        """Moves the nodes that depend on the placeholders into a body graph. What else they
        read becomes a body input: a weight `w<j>` where it is a matmul's right operand (the
        scan's gradient makes one GEMM of those), else a per-step value broadcast over time
        (a bias: its gradient is the sum over steps)."""
        g = self.g
        inside = _descendants(g, [p.id for p in places])
        for nid in sorted(inside):
            self._refuse_in_body(g.node(nid))
        result = self._lower_layers(inside, result)
        inside = _descendants(g, [p.id for p in places])
        feeders = _inner_scan_feeders(g, inside)
        inside |= feeders
        reads = []
        for nid in sorted(inside):
            reads += [i for i in g.node(nid).inputs if i is not None and i not in inside
                      and i not in reads]
        copied = [i for i in reads if _constant(g, i)]
        outer = [i for i in reads if i not in copied]
        flags = {}
        for i in outer:
            if g.node(i).dtype == "bool" and not any(_rhs(g, u, i) for u in g.users(i)):
                # NOTE: a mask (a source's `keep`, or `keep > 0.5` in the block, which reads
                # no step value and so runs before the loop) travels as 0/1 in the body's
                # dtype and is a bool again inside; it was refused, telling a user who had
                # cast it already to cast it
                with self.b.at(span, ""):
                    flags[i] = self.b.cast(i, dtype=dtype)
                continue
            if g.node(i).dtype != dtype:
                self._foreign_dtype(i, inside, dtype, call, span)
        weights = [i for i in outer if any(_rhs(g, u, i) for u in g.users(i) if u in inside)]
        broadcast = [i for i in outer if any(not _rhs(g, u, i) for u in g.users(i)
                                             if u in inside)]
        # NOTE: an inner scan's weight (a sentence loop's word-level cell), or what its own
        # loop copies per inner step (a word loop's weight one loop further in): it travels
        # flat, one row [1, k * n] every step, and takes its shape back in the step. A value
        # of the batch ([batch, k] context, a [batch, n, k] memory) is read per step as any
        # other (_step_width)
        nested = {i for i in broadcast if all(isinstance(d, int) for d in g.node(i).shape)
                  and any(u in inside and (g.node(u).op == "scan" or u in feeders)
                          for u in g.users(i))}
        steps = [int(np.prod(g.node(i).shape)) if i in nested else self._step_width(
            i, batch, span, next(u for u in sorted(g.users(i)) if u in inside and
                                 not _rhs(g, u, i)))
            for i in broadcast]
        bg = new_body_graph(dtype, batch, sum(widths),
                            [g.node(p.id).shape[1] for p in places[:n_seqs]] + steps,
                            [g.node(i).shape for i in weights], span)
        bb = Builder(bg, span=span)
        ids = {p.id: bg.inputs[f"x{k}"] for k, p in enumerate(places[:n_seqs])}
        for k, i in enumerate(broadcast):
            x = bg.inputs[f"x{n_seqs + k}"]
            t = g.node(i).type
            # NOTE: a [batch, n, k] memory (an encoder's outputs) travels flat, [batch, n * k]
            # per step, and takes its shape back inside the step; the body runs per row
            ids[i] = x if t.rank < 3 else bb.reshape(x, shape=[-1, *t.shape[1:]])
            rowless = t.rank < 2 or t.rank == 2 and t.shape[0] == 1
            if i in nested or rowless and any(_not_per_row(g.node(u).type, batch)
                                              for u in g.users(i) if u in inside):
                # NOTE: a bias added to batch * n rows (dense over a [batch, n, k] value
                # computed from the state: Bahdanau's concat form) would meet the per-step
                # [batch, k] copy and not broadcast; one row of it, in its own shape, does
                ids[i] = bb.reshape(bb.slice(x, axis=0, start=0, stop=1, step=1),
                                    shape=list(t.shape))
            if i in flags:
                ids[i] = bb.cast(ids[i], dtype="bool")
        carry, lo = bg.inputs["carry"], 0
        for p, w in zip(places[n_seqs:], widths):
            ids[p.id] = carry if len(widths) == 1 else bb.slice(carry, axis=1, start=lo,
                                                                stop=lo + w, step=1)
            lo += w
        rhs = {i: bg.inputs[f"w{j}"] for j, i in enumerate(weights)}
        for nid in sorted(g.ancestors(copied)):
            ids[nid] = _copy(bg, g.node(nid), ids, {})
        keep = g.ancestors([v.id for v in result])
        for nid in g.topo():
            if nid in inside and nid not in ids and nid in keep:
                ids[nid] = _copy(bg, g.node(nid), ids, rhs)
        ys = [ids.get(v.id) for v in result]
        if any(y is None for y in ys):
            self.fail("scan: the block returns a value that does not change per step", span,
                      "return the states and outputs the step computes")
        pieces, cols, lo = [], [], 0
        for k, y in enumerate(ys):
            # NOTE: an output that is also a state (`return h2, c2, h2`) is read from the
            # state's columns, not stored a second time every step
            if k >= len(widths) and y in pieces:
                cols.append(cols[ys.index(y)])
                continue
            w = int(bg.node(y).shape[1])
            pieces.append(y)
            cols.append((lo, lo + w))
            lo += w
        bg.outputs["y"] = pieces[0] if len(pieces) == 1 else bb.concat(*pieces, axis=1)
        for nid in inside:
            g.remove(nid)
        body = Body(bg, sum(widths), n_seqs + len(broadcast), len(weights))
        return (body, [T(i) for i in weights],
                [(T(flags.get(i, i)), k) for i, k in zip(broadcast, steps)], cols)

    def _refuse_in_body(self, node) -> None:
        """What a step cannot do: draw random numbers (a body has no per-step key), keep
        running statistics, or run a recurrent layer's own loop over its weights."""
        if node.op in ("lstm", "gru", "rnn"):
            self.fail(f"scan: {node.op} inside a scan body is not supported (its loop over "
                      "time cannot run inside another loop's step)", node.span,
                      f"run the {node.op} over the whole sequence before or after the scan, "
                      "or write its cell in the block (dense layers work in a step)")
        rates = [node.attrs.get(k) or 0 for k in
                 (("rate",) if node.op == "dropout" else ("dropout", "recurrent_dropout"))]
        if node.op == "batch_norm" or max(rates) > 0 or \
                registry.get(node.op).has(registry.RANDOM) or \
                registry.get(node.op).family == "random":
            what = "dropout" if max(rates) > 0 else node.op
            self.fail(f"scan: {what} inside a scan body is not supported (a step draws no "
                      "random numbers and keeps no running statistics)", node.span,
                      "apply it to the sequence before the scan (`over dropout(x, rate = "
                      "0.2)`) or to its outputs after it; lstm/gru/rnn take dropout and "
                      "recurrent_dropout")

    def _lower_layers(self, inside, result):
        """Layers in the block that read weights from outside (dense, layer_norm, ...) as
        their primitives, so the cut sees how each weight is read: a dense's weight as a
        matmul's right operand, its bias and a norm's scale per step. The block's results
        follow the nodes that replace them."""
        g, ids = self.g, {}
        for nid in g.topo():
            node = g.node(nid)
            opdef = registry.get(node.op)
            if nid not in inside or not opdef.is_composite or \
                    all(i is None or i in inside for i in node.inputs):
                continue
            # NOTE: what a step would do otherwise in training was refused above
            ids[nid] = decompose_node(g, nid, training=True)
        return [T(ids.get(v.id, v.id)) for v in result]

    def _step_width(self, i, batch, span, reader) -> int:
        """k of a value read every step as [batch, k]: a scalar, [k], [1, k] or [batch, k];
        `reader`: the body's node that reads it so (an error points at its line)."""
        t = self.g.node(i).type
        if t.rank == 0 or t.rank == 1 and isinstance(t.shape[0], int) or \
                t.rank == 2 and t.shape[0] in (1, batch) and isinstance(t.shape[1], int):
            return 1 if t.rank == 0 else t.shape[-1]
        if t.rank >= 3 and t.shape[0] == batch and all(isinstance(d, int) for d in t.shape[1:]):
            # NOTE: a memory [batch, n, k] (see _cut_body), or one split into heads
            # (multi_head_attention's keys and values over it, [batch, heads, d, n])
            return int(np.prod(t.shape[1:]))
        hint = "pass it as a sequence (over ...) instead"
        if t.rank >= 3 and t.shape[0] == batch and \
                any(self.g.node(u).op == "scan" for u in self.g.users(reader)):
            # NOTE: a scan in the step runs over it (_inner_scan_feeders): its steps are copied
            # into every outer step, which needs their number before the run
            hint = (f"a scan inside a step runs over a sequence of numeric length, and this one "
                    f"is {t}: give it a fixed length, or run that scan before or after this one")
        elif t.rank >= 3 and t.shape[0] == batch:
            hint = ("a step reads a [batch, n, k] memory (attention over an encoder's outputs) "
                    f"of numeric n and k only, and this one is {t}; run the attention on the "
                    "scan's outputs instead")
        elif t.rank == 2 and t.shape[0] not in (1, batch) and \
                self.g.node(reader).op == "gather":
            # NOTE: an embedding of the step's own ids (a greedy decoder feeding back its
            # token): the lookup as a matmul reads the table on the right
            hint = (f"look the ids up as a matmul, one_hot(ids, {t.shape[0]}, dtype = "
                    f"\"{t.dtype}\") @ table, passing the table by its path (emb.weight)")
        elif t.rank == 2 and t.shape[0] not in (1, batch):
            # NOTE: a weight on a matmul's left (`w @ transpose(h)`) or elementwise: it was
            # told to become a sequence, which a weight is not
            hint = ("read a weight on a matmul's right, the step's rows on its left: "
                    "`h @ w` (`transpose(w @ transpose(h))` is `h @ transpose(w)`)")
        # NOTE: at the line of the block that reads it, not the whole scan
        self.fail(f"scan: the block reads {t} from outside the loop; a body reads outside "
                  f"values as a weight [k, n] on a matmul's right, as [batch, k] per step or as "
                  f"a memory [batch, n, k]", self.g.node(reader).span or span, hint,
                  [("the scan runs the block here", span)])

    def _emit_scan(self, e: ast.Scan, scope, seqs, inits, weights, broadcast, body: Body,
                   cols, reverse: bool):
        """The scan node, then (stacked per-step outputs..., final states...): the outputs
        at their steps' places, the final states those after the last step run (the first
        step's when reversed)."""
        span, emit = e.span, self.emit

        def op(name, ins, **attrs):
            return emit(name, ins, attrs, span, [span] * len(ins), scope, None)

        init = inits[0] if len(inits) == 1 else op("concat", inits, axis=1)
        tm = [op("transpose", [s], perm=[1, 0, 2]) for s in seqs]
        steps, batch = self._type(seqs[0]).shape[1], self._type(seqs[0]).shape[0]
        for v, k in broadcast:
            t = self._type(v)
            # NOTE: one row for a value of k numbers in all (a bias, a nested scan's weight)
            lead = 1 if t.rank < 2 or all(isinstance(d, int) for d in t.shape) and \
                int(np.prod(t.shape)) == k else t.shape[0]
            tm.append(op("broadcast_to", [op("reshape", [v], shape=[1, lead, k])],
                         shape=[steps, batch, k]))
        out = op("scan", [init, *tm, *weights], body=body, reverse=reverse)
        n, width = len(inits), body.width

        def columns(v, k):
            a, b = cols[k]
            return v if (a, b) == (0, width) else op("slice", [v], axis=2, start=a, stop=b,
                                                     step=1)

        stacked = [op("transpose", [columns(out, k)], perm=[1, 0, 2])
                   for k in range(n, len(cols))]
        # NOTE: -1 holds for any (symbolic) length
        last = op("slice", [out], axis=0, start=0 if reverse else -1,
                  stop=1 if reverse else None, step=1)
        finals = [op("reshape", [columns(last, k)], shape=[batch, cols[k][1] - cols[k][0]])
                  for k in range(n)]
        values = tuple(stacked + finals)
        return values[0] if len(values) == 1 else values


def _sequence_hint(t, x, dtype: str) -> str:
    """The fix for a value that is not a float [batch, time, features] sequence, written out
    so it checks as given: a mask or token ids [batch, time] (the way a block gets its
    masking) needs the features axis and a float dtype both."""
    if t is None or t.rank not in (2, 3):
        return "a sequence is a float tensor [batch, time, features], one step per time index"
    fix = x.span.text() or "it"
    if not isinstance(x, ast.Name) and fix != "it":
        fix = f"({fix})"
    if t.rank == 2:
        fix = f"unsqueeze({fix}, axis = -1)"
    if not registry.is_float(t.dtype):
        fix = f'cast({fix}, dtype = "{dtype}")'
    return f"{fix}?"


def _binding(block: ast.BlockDef, n_seqs: int, n_states: int) -> str:
    """How a scan passes values to its block: the steps, then the states, by position."""
    names = [p.name for p in block.params]
    seqs, states = names[:n_seqs], names[n_seqs:n_seqs + n_states]
    return (f"a scan passes {block.name} the steps of {n_seqs} sequence"
            f"{'s' if n_seqs != 1 else ''} ({', '.join(seqs)}), then {n_states} state"
            f"{'s' if n_states != 1 else ''} ({', '.join(states)}) by position, then its "
            "options by name")


def _row_width(t, dtype):
    """k of one row, [k] or [1, k] of the sequences' dtype (a learned initial state), else None."""
    if t is None or t.dtype != dtype or t.rank not in (1, 2) or t.rank == 2 and t.shape[0] != 1:
        return None
    return t.shape[-1] if isinstance(t.shape[-1], int) else None


def _return_span(block: ast.BlockDef):
    return next((s.span for s in reversed(block.body) if isinstance(s, ast.Return)), None)


def _descendants(g, roots) -> set[int]:
    seen, stack = set(roots), list(roots)
    while stack:
        for u in g.users(stack.pop()):
            if u not in seen:
                seen.add(u)
                stack.append(u)
    return seen


def _inner_scan_feeders(g, inside) -> set[int]:
    """The nodes an inner scan's own emit made of outside values, to hand its loop one copy per
    inner step: `transpose` of a sequence, `broadcast_to(reshape(v))` of a value read every
    step (_emit_scan). They move into the body with the scan, so the outer loop reads `v`
    itself (a [batch, k] context or a weight) rather than [steps, batch, k] copies of it,
    which a symbolic batch could not carry (scans three deep, a context read two loops in)."""
    pulled = set()
    for nid in inside:
        node = g.node(nid)
        if node.op != "scan":
            continue
        for i in node.inputs[1:1 + node.attrs["body"].n_seqs]:
            chain = [i]
            if g.node(i).op == "broadcast_to" and g.node(g.node(i).inputs[0]).op == "reshape":
                chain.append(g.node(i).inputs[0])
            elif g.node(i).op != "transpose":
                continue
            if i not in inside and all(u in chain or u == nid for c in chain
                                       for u in g.users(c)):
                pulled.update(chain)
    return pulled


def _not_per_row(t, batch) -> bool:
    """Is a value of type t inside a step other than [batch, k] rows (batch * n rows, or a
    [batch, n, k] memory's shape)?"""
    return not (t.rank == 2 and t.shape[0] == batch)


def _constant(g, nid) -> bool:
    """A value computed from literals alone (a `1.0 - z`'s one), copied into the body rather
    than read from outside."""
    return all(g.node(a).op == "const" or g.node(a).inputs for a in g.ancestors([nid])) and \
        all(g.node(a).op not in ("input", "param") for a in g.ancestors([nid]))


def _rhs(g, user, i) -> bool:
    """Is outside value i a weight [k, n] that `user` multiplies from the right? (The scan's
    gradient stacks the left operands of every step into one GEMM for it.)"""
    n = g.node(user)
    return n.op == "matmul" and n.inputs[1] == i and n.inputs[0] != i and \
        g.node(i).type.rank == 2 and g.node(n.inputs[0]).type.rank in (2, 3)


def _copy(bg, node, ids, rhs) -> int:
    """`node` in the body graph; a weight read as a matmul's right operand maps by `rhs`."""
    ins = [rhs[i] if k == 1 and node.op == "matmul" and i in rhs else ids[i]
           for k, i in enumerate(node.inputs)]
    if node.op == "matmul" and node.inputs[1] in rhs and bg.node(ins[0]).type.rank == 3:
        # NOTE: a memory [batch, n, k] (or unsqueeze(h, axis = 1)) times a weight, as dense
        # writes it: [batch * n, k] @ w, so the scan's gradient sees a weight GEMM (its rows
        # are batch * n: passes/autodiff.py scan_grad)
        b = Builder(bg, span=node.span, path=node.path, role=node.role)
        n, k = bg.node(ins[0]).type.shape[1:]
        flat = b.matmul(b.reshape(ins[0], shape=[-1, k]), ins[1])
        return b.reshape(flat, shape=[-1, n, node.type.shape[-1]])
    return bg.add_node(node.op, ins,
                       node.attrs, node.type, span=node.span, path=node.path, role=node.role,
                       name=node.name)
