"""From the user-level graph to the primitive graphs that get compiled: bind the batch, pick the
dtype, decompose composites, and for training append the backward graph and the optimizer update.

`train_graph` is the joint graph of one training step: forward, loss, backward (role "bwd") and
update (role "optim"); its `updates` say which state each result overwrites.
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.dims import Sym
from nnlang.ir.graph import Builder, Graph
from nnlang.ir.scan import Body
from nnlang.ops import registry
from nnlang.ops.registry import RANDOM, TensorType
from nnlang.passes.autodiff import backward
from nnlang.passes.decompose import decompose
from nnlang.passes.scan_hoist import hoist_projections
from nnlang.passes.shapes import bind, infer
from nnlang.ops.collective import sync_gradients
from nnlang.ops.losses import divides_by_data, mean_divisor
from nnlang.ops.optim import append_update, initial_state, slot_param

LR_INPUT = "_lr"


def lr_input(dtype: str, net_dtype: str) -> str:
    """The learning rate's input for weights of `dtype`: `_lr` in the net's dtype, and one more
    per other dtype a weight is declared in (`_lr_float64` for a float64 weight of a float32
    net), so that weight's update is not rounded to float32 (lr = 0.1 moved it by
    0.10000000149 times its gradient), while float32 weights' kernels stay as they were."""
    return LR_INPUT if dtype == net_dtype else f"{LR_INPUT}_{dtype}"


def lr_feeds(lr: float, net_dtype: str) -> dict:
    """The feeds of every learning-rate input a train graph of a `net_dtype` net may have (an
    executable ignores those its graph lacks)."""
    return {lr_input(dt, net_dtype): np.asarray(lr, dt) for dt in ("float32", "float64")}


def retype(g: Graph, dtype: str) -> Graph:
    """Every float32 value becomes `dtype` (float64 for gradient checks), in scan bodies too;
    a number literal starts from its exact value, not its float32 rounding. Afterwards no
    const remembers its literal, so CSE merges equal constants whatever made them."""
    if dtype == "float32" and not _literals(g):
        return g
    g = g.copy()
    for node in g:
        if isinstance(node.attrs.get("body"), Body):
            node.attrs["body"] = node.attrs["body"].map(lambda bg: retype(bg, dtype))
        exact = node.attrs.pop("_literal", None)
        if dtype == "float32":
            continue
        if node.attrs.get("dtype") == "float32":
            node.attrs["dtype"] = dtype
        if node.op == "const" and node.attrs["value"].dtype == np.float32:
            node.attrs["value"] = np.asarray(node.attrs["value"] if exact is None else exact,
                                             dtype)
    return g if dtype == "float32" else infer(g)


def _literals(g: Graph) -> bool:
    return any("_literal" in node.attrs or isinstance(node.attrs.get("body"), Body) and
               _literals(node.attrs["body"].g) for node in g)


def specialize(user: Graph, batch: int, dtype: str = "float32",
               lengths: dict | None = None) -> Graph:
    """`lengths`: sizes of the other symbols (`symbol seq`), bound with the batch."""
    return retype(bind(user, **(lengths or {}), batch=batch), dtype)


def forward_graph(user: Graph, batch: int, dtype: str = "float32",
                  results=("outputs", "losses", "metrics"), lengths=None,
                  divided: bool = False) -> Graph:
    """The inference graph (dropout off) keeping only the requested kinds of result.
    `divided`: it also gives each mean over kept rows among the losses' and metrics' terms
    (`divided_terms`) as the metric `DIVIDED_VALUE` + id, and its divisor on the batch as
    `DIVISOR` + id (what an evaluation over several batches weighs it by)."""
    g = specialize(user, batch, dtype, lengths)
    if divided:
        _add_divisors(g)
    g = hoist_projections(decompose(g, training=False))
    for kind in ("outputs", "losses", "metrics"):
        if kind not in results:
            setattr(g, kind, {})
    return drop_unused_inputs(g)


DIVIDED_VALUE, DIVISOR = "_divided:", "_divisor:"


def divided_key(name: str) -> bool:
    """Is `name` a mean over kept rows' term or divisor (not a value a caller reads)?"""
    return name.startswith((DIVIDED_VALUE, DIVISOR))


def divided_terms(g: Graph, nid: int) -> list[tuple[float, int]]:
    """The terms of a loss or metric that are means whose divisor depends on the data
    (cross_entropy, accuracy, binary_accuracy over kept rows or class weights, ops/losses.py
    `divides_by_data`), each with its factor: the term itself, or a sum, difference, negation
    or scaling by a number of terms ("0.5 * ce + l2" gives [(0.5, ce)]). A batch's value of
    such a term is a mean over its own divisor, so a whole set's is their divisor-weighted mean,
    not the rows-weighted one a plain mean takes."""
    node = g.node(nid)
    if len(node.inputs) >= 2 and divides_by_data(node.op, node.attrs,
                                                 g.node(node.inputs[1]).type):
        return [(1.0, nid)]
    if node.op in ("add", "sub"):
        left, right = (divided_terms(g, i) for i in node.inputs)
        return left + [(-c if node.op == "sub" else c, t) for c, t in right]
    if node.op in ("neg", "cast"):
        return [(-c if node.op == "neg" else c, t) for c, t in divided_terms(g, node.inputs[0])]
    if node.op == "mul" or (node.op == "div" and len(node.inputs) == 2):
        number = [i for i in node.inputs if g.node(i).op == "const"]
        if len(number) != 1 or node.op == "div" and number[0] != node.inputs[1]:
            return []
        value = float(np.asarray(g.node(number[0]).attrs["value"]))
        scale = 1.0 / value if node.op == "div" else value
        other = next(i for i in node.inputs if i != number[0])
        return [(c * scale, t) for c, t in divided_terms(g, other)]
    return []


def _add_divisors(g: Graph) -> None:
    """Each divided term of a loss or metric, and its divisor on the batch, as metrics."""
    b = Builder(g)
    terms = {t for nid in (*g.losses.values(), *g.metrics.values())
             for _, t in divided_terms(g, nid)}
    for t in sorted(terms):
        node = g.node(t)
        with b.at(node.span, path=node.path):
            divisor = mean_divisor(b, node.op, node.inputs[0], node.inputs[1], node.attrs)
        g.metrics[f"{DIVIDED_VALUE}{t}"], g.metrics[f"{DIVISOR}{t}"] = t, divisor


def drop_unused_inputs(g: Graph, keep=()) -> Graph:
    """Drops what no result needs, inputs included (a prediction graph takes no labels), but
    the inputs named in `keep`."""
    needed = g.ancestors(g.roots()) | {g.inputs[k] for k in keep}
    for node in list(g):
        if node.id not in needed and node.op != "param":
            g.remove(node.id)
    g.inputs = {k: v for k, v in g.inputs.items() if v in needed}
    return g


def total_loss(b: Builder, g: Graph, cfg, at=lambda setting: None) -> int:
    """The sum of the losses and the penalties the train config `cfg` puts on the trainable
    weights (`TrainConfig.penalties`); `at(setting)` is where the train section sets it."""
    total = None
    for nid in g.losses.values():
        with b.at(g.node(nid).span):  # NOTE: the sum points at the loss it adds
            total = nid if total is None else b.add(total, nid)
    dtype = g.node(total).dtype
    for name, nid in trainable(g).items():
        on = cfg.penalties(name, len(g.node(nid).shape))
        if "l2" in on:
            with b.at(at("l2")):
                sq = b.reduce_sum(b.mul(nid, nid), axes=None)
                total = b.add(total, b.mul(b.const(on["l2"], dtype), sq))
        if "l1" in on:
            with b.at(at("l1")):
                ab = b.reduce_sum(b.abs(nid), axes=None)
                total = b.add(total, b.mul(b.const(on["l1"], dtype), ab))
    return total


def trainable(g: Graph) -> dict[str, int]:
    return {k: v for k, v in g.params.items() if g.node(v).attrs.get("trainable", True)}


def _random_draws(g: Graph) -> list:
    return [n for n in g if registry.get(n.op) is not None and registry.get(n.op).has(RANDOM)]


def _rank_draws(g: Graph, user: Graph, rank: int) -> None:
    """Random draws (dropout's masks, random_normal_like's noise) hash (step key, site,
    element index): each rank of a data-parallel run numbering its shard's elements from 0
    gave every rank the same masks, copies instead of independent draws (one mask for the
    whole global batch with one row per rank). Numbered from the rank's first element (rank x
    its shard's size), each rank draws its own numbers, and a tensor whose first axis is the
    batch gets the masks a 1-process run gives its rows. A draw with no batch axis (noise on a
    weight, random_normal_like(w)) is one draw for the whole global batch in 1 process: every
    rank keeps offset 0 and draws it too (offset by rank, each rank's weights saw other noise
    and 2 ranks trained another model than 1 process). The batch axes are read from the user
    graph decomposed with its batch symbolic (the bound graph's sizes cannot tell a batch of 8
    from 8 units); its sites have the bound graph's salts, both decomposed in one order."""
    draws = _random_draws(g)
    if not draws:
        return
    batch_axes = {n.attrs["salt"]: [i for i, d in enumerate(n.attrs["shape"])
                                    if isinstance(d, Sym) and "batch" in d.names]
                  for n in _random_draws(decompose(user, training=True))}
    for n in draws:
        if batch_axes.get(n.attrs["salt"], [0]):
            # NOTE: the batch past the first axis: independent draws, not 1 process's
            n.attrs["offset"] = rank * int(np.prod([int(d) for d in n.attrs["shape"]]))


def no_loss(user: Graph, consequence: str):
    """The error for a model without a `loss` line, at the value of its first output (what a
    loss would read), or without a place when it has none."""
    from nnlang.errors import NNError
    from nnlang.frontend.lint import loss_hint
    out = next(iter(user.outputs.values()), None)
    return NNError(f"model '{user.model}' declares no loss, {consequence}",
                   None if out is None else user.node(out).span, loss_hint(user))


def named_losses(losses) -> list[str]:
    """The losses reported by name beside `loss`, their total: each of several, but one named
    `loss` (an unnamed expression is), whose name is the total's: the one place that says so
    for training and evaluation alike."""
    return [k for k in losses if k != "loss"] if len(losses) > 1 else []


def _zeros_like(b: Builder, g: Graph, nid: int, dtype: str) -> int:
    """The gradient of a tensor no differentiable path reaches: zeros of its shape, not
    nid * 0, which is nan where the tensor holds inf or nan (torch gives zeros there)."""
    return b.broadcast_to(b.const(0.0, dtype), shape=list(g.node(nid).shape))


def train_graph(user: Graph, cfg, batch: int, dtype: str = "float32",
                wrt_inputs: tuple = (), lengths=None, ranks: int = 1, rank: int = 0) -> Graph:
    """Forward + loss + generated backward + optimizer update, as one primitive graph.
    ranks > 1: the step of process `rank` of that many data-parallel ones, whose update sees
    the gradients averaged over all of them (`ops/collective.py`). Like an evaluation graph
    (`forward_graph(divided=True)`), it gives each mean over kept rows among the losses' and
    metrics' terms and its divisor on the batch, so an epoch's train columns are the mean over
    the rows it trained on."""
    g = specialize(user, batch, dtype, lengths)
    _add_divisors(g)
    g = hoist_projections(decompose(g, training=True, ranks=ranks))
    if ranks > 1:
        _rank_draws(g, user, rank)
    if not g.losses:
        raise no_loss(user, "so it cannot be trained")
    # NOTE: each loss is a result of the step besides their total, so training reports them
    # as evaluation does (Keras' progress line and history)
    named = {k: g.losses[k] for k in named_losses(g.losses)}
    spans = user.train_spans

    def at(setting):
        """Where the train section sets `setting`; the section (or the model) when implicit,
        so --emit shows each generated training op's source line as it shows the model's."""
        return spans.get(setting, spans.get(""))

    b = Builder(g, role="bwd")
    total = total_loss(b, g, cfg, at)
    params = trainable(g)
    wrt = list(params.values()) + [g.inputs[n] for n in wrt_inputs]
    grads = backward(g, total, wrt)
    b.role, b.span = "optim", at("")   # NOTE: the gradients' sync, no setting of its own

    def lr_of(dt):
        name = lr_input(dt, dtype)
        if name not in g.inputs:
            g.inputs[name] = g.add_node("input", [], {"name": name, "dtype": dt, "shape": []},
                                        TensorType((), dt), role="optim", name=name,
                                        span=at("optimizer"))
        return g.inputs[name]

    lr_of(dtype)   # NOTE: always there: net.py feeds it, a model with no weight to train too

    def add_state(name, like):
        # NOTE: a slot takes its weight's dtype: a float64 weight's Adam moments in float32
        # rounded its update as its learning rate did
        shape, dt = (list(g.node(like).shape), g.node(like).dtype) if like is not None \
            else ([], dtype)
        nid = g.add_node("param", [], {"name": name, "dtype": dt, "shape": shape,
                                       "init": ("zeros", {}), "trainable": False},
                         TensorType(tuple(shape), dt), role="optim", name=name,
                         span=at("optimizer"))
        g.params[name] = nid
        return nid

    # NOTE: a weight no loss reaches (its layer's value unused, or behind stop_gradient) is
    # left out of the update, as PyTorch's optimizers skip a parameter whose .grad is None and
    # Keras' skip a None gradient: a zero gradient still let weight decay shrink it. Its
    # optimizer slots are kept, at zero, so the state's layout is the model's either way.
    reached = {name: grads[nid] for name, nid in params.items() if grads.get(nid) is not None}
    if ranks > 1 and reached:  # NOTE: a model with all weights frozen has nothing to sync
        reached = sync_gradients(b, reached, ranks)
    updates = append_update(b, {k: params[k] for k in reached}, reached, cfg.optimizer,
                            cfg.clip_norm, lr_of, add_state, at)
    for name, shape in initial_state(cfg.optimizer, {k: g.node(params[k]).shape for k in params
                                                     if k not in reached}).items():
        if name not in g.params:
            add_state(name, params[slot_param(name)])
    g.updates = {**g.updates, **updates}
    g.grads = {name: reached[name] if name in reached else _zeros_like(b, g, nid, dtype)
               for name, nid in params.items()}
    for name in wrt_inputs:  # NOTE: under the input's name: weights are block paths, and a
        nid = g.inputs[name]  # model-level weight shares the inputs' namespace, so none clash
        reached = grads.get(nid)
        if reached is not None and ranks > 1:
            # NOTE: the weights' gradients are the global batch's (the ranks' mean), so the
            # inputs' are too: d(mean of N ranks' losses) / d(this rank's rows) is 1/N of
            # this rank's own loss's
            reached = b.mul(reached, b.const(1.0 / ranks, dtype))
        g.grads[name] = _zeros_like(b, g, nid, dtype) if reached is None else reached
    g.losses = {"loss": total, **named}
    g.outputs = {}
    return g
