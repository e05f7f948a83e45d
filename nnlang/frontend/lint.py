"""Warnings on a checked program: code that runs but is very likely not what was meant (the last
step of elaboration): a loss fed the activation it applies itself (as an op, or as a layer's
`activation =`), an image in Keras' channels-last layout under a convolution, a softmax
across the batch, a probability threshold on logits, a subscript that picks examples out of
the batch, Keras' batch_norm momentum, a channels-first layer after a channels-last one, a
softmax over an axis of size 1, a softmax of a softmax, a batch_norm over the time axis of
an embedding's or a dense layer's [batch, time, features], a padding mask written PyTorch's
way (true at the pads) and a max or mean over a convolution's channels where a global pooling
was meant."""
from __future__ import annotations

from nnlang.errors import Diagnostic
from nnlang.ir.dims import Sym, fmt_shape
from nnlang.ir.graph import Graph, slots
from nnlang.ops import registry
from nnlang.ops.conv import channels_last_hint, looks_channels_last

# (loss op, argument index, producing activation, why, hint)
PRODUCER_RULES = (
    ("cross_entropy", 0, "softmax",
     "cross_entropy takes logits, but its input is already a softmax: the loss applies "
     "softmax again, which flattens the gradient and trains worse",
     "pass the logits: `loss cross_entropy(logits, label)`, and keep "
     "`output probs = softmax(logits)` for predictions"),
    # NOTE: PyTorch's kl_div(input, target) wants input as log-probabilities too; a softmax
    # there gives a loss that is no divergence (and can be negative)
    ("kl_div", 0, "softmax",
     "kl_div takes log-probabilities first (PyTorch's order), but its input is a softmax",
     "pass `log_softmax(logits)` as the first argument, the target's probabilities second"),
    ("bce_with_logits", 0, "sigmoid",
     "bce_with_logits takes logits, but its input is already a sigmoid: the loss applies "
     "sigmoid again",
     "pass the logits to bce_with_logits, or use `bce(prob, target)` on the probability"),
)


# Ops that only move, select or (dropout) scale rows: a softmax's rows stay its rows through
# them as long as the last axis (the one the loss reads as classes) keeps its size, as in a
# sequence model's `reshape(probs, [batch * seq, classes])` before its loss.
ROW_PRESERVING = ("reshape", "flatten", "slice", "squeeze", "unsqueeze", "dropout")


def producer(g: Graph, nid: int):
    """The node that made the rows `nid` holds: through row-preserving ops."""
    node = g.node(nid)
    while (node.op in ROW_PRESERVING and node.inputs and node.type.shape and
           g.node(node.inputs[0]).type.shape and
           node.type.shape[-1] == g.node(node.inputs[0]).type.shape[-1]):
        node = g.node(node.inputs[0])
    return node


# Ops that slide a window over the axes after the channels: an image declared the Keras way
# ([batch, 32, 32, 3]) still checks, as 32 channels of 32x3 pixels, and trains on nonsense.
WINDOWED = {"conv1d": 1, "conv2d": 2, "max_pool1d": 1, "avg_pool1d": 1, "max_pool2d": 2,
            "avg_pool2d": 2}
GLOBAL_POOLS = ("global_avg_pool", "global_max_pool")


def _channels_last(g: Graph, node):
    nd = WINDOWED.get(node.op)
    if nd is None or node.attrs.get("channels_last") or not node.inputs:
        return None
    shape = g.node(node.inputs[0]).type.shape
    if not looks_channels_last(shape, nd):
        return None
    return Diagnostic(f"{node.op} reads axis 1 of {fmt_shape(shape)} as {shape[1]} channels and "
                      f"slides over {fmt_shape(shape[2:])}", node.span,
                      channels_last_hint(shape, nd), severity="warning")


def _axis(node, rank: int) -> int | None:
    """A softmax's `axis` as written, where it is one int within `rank` dims (else None)."""
    axis = node.attrs.get("axis", -1)
    return axis if isinstance(axis, int) and -rank <= axis < rank else None


def _over_batch(g: Graph, node):
    """softmax(x, axis = 0) on [batch, classes]: PyTorch's `dim=0` habit normalizes each class
    over the examples of a batch, so a prediction depends on the rest of its batch."""
    if node.op not in ("softmax", "log_softmax") or not node.inputs:
        return None
    shape = g.node(node.inputs[0]).type.shape
    axis = _axis(node, len(shape))
    if axis is None or shape[axis] != Sym.of("batch"):
        return None
    return Diagnostic(f"{node.op} over axis {axis} of {fmt_shape(shape)} runs across the "
                      "examples of a batch: each one's result depends on the others", node.span,
                      "normalize over the classes, the last axis: `axis = -1` (the default)",
                      severity="warning")


def _softmax_twice(g: Graph, node):
    """softmax(softmax(x)) (a layer's `activation = "softmax"` then a softmax, or a
    log_softmax after one, PyTorch's CrossEntropyLoss habit written out): the second reads
    probabilities in [0, 1] as scores, so its output is squashed toward uniform (3 classes:
    never above 0.58) and its gradient shrinks."""
    if node.op not in ("softmax", "log_softmax") or not node.inputs:
        return None
    rank = len(node.type.shape)
    axis = _axis(node, rank)
    if axis is None:
        return None
    last = axis % rank == rank - 1
    # NOTE: through row-preserving ops only for the last axis, whose size they keep
    source = producer(g, node.inputs[0]) if last else g.node(node.inputs[0])
    if source.op == "softmax" and source.inputs:
        inner = len(source.type.shape)
        before = _axis(source, inner)
        if before is None or not (last and before % inner == inner - 1 or
                                  before % inner == axis % rank):
            return None
    elif not (last and source.op in ("dense", "linear")
              and source.attrs.get("activation") == "softmax"):
        return None
    what = "log-probabilities" if node.op == "log_softmax" else "probabilities"
    return Diagnostic(f"{node.op} of a softmax: its input is already probabilities, which it "
                      "reads as scores, so its result is squashed toward uniform and passes "
                      "back a flattened gradient", node.span,
                      f"apply {node.op} once, to the logits; for {what} of the first softmax's "
                      f"output p write {'log(p)' if node.op == 'log_softmax' else 'p itself'}",
                      severity="warning")


def _softmax_of_one(g: Graph, node):
    """A softmax over an axis of size 1 is 1 everywhere (log_softmax 0) and passes no gradient:
    Keras' attention pooling as Dense(1, activation="softmax") over [batch, time, 1]
    normalizes each time step alone, so the pooling weights never train."""
    if node.op in ("softmax", "log_softmax") and node.inputs:
        shape = g.node(node.inputs[0]).type.shape
        axis = _axis(node, len(shape))
    elif node.op in ("dense", "linear") and node.attrs.get("activation") == "softmax" \
            and node.attrs.get("units") == 1:
        shape, axis = node.type.shape, -1
    else:
        return None
    if axis is None or shape[axis] != 1:
        return None
    here = axis % len(shape)
    wide = [k for k in range(1, len(shape)) if k != here and shape[k] != 1]
    hint = (f"normalize over the axis that holds the choices, e.g. `softmax(..., axis = "
            f"{wide[-1]})` over its {shape[wide[-1]]} entries" if wide else
            "a single score per example: use sigmoid for a probability")
    op, value = ("log_softmax", 0) if node.op == "log_softmax" else ("softmax", 1)
    return Diagnostic(f"{op} over axis {axis} of {fmt_shape(shape)}, an axis of size 1, is "
                      f"{value} everywhere: it passes no gradient, so what feeds it never trains",
                      node.span, hint, severity="warning")


def _rows_of_batch(g: Graph, node):
    """`x[0]` on [batch, ...]: NumPy's habit for "the first feature" picks the batch's first
    example, so every example's result is that one's (a loss on it trains on one row a batch).
    `x[::-1]`, the habit for "reverse the sequence" on [time, ...], reverses the examples:
    row i is then example batch - 1 - i, against the labels of row i."""
    if node.op == "flip" and node.inputs and \
            g.node(node.inputs[0]).type.shape[:1] == (Sym.of("batch"),):
        axis = node.attrs.get("axis")
        if 0 in [a % len(node.type.shape) for a in ([axis] if isinstance(axis, int) else axis)]:
            return Diagnostic("this reverses the order of the examples in the batch (axis 0): "
                              "row i is example batch - 1 - i, no longer beside row i of the "
                              "other inputs (its labels)", node.span,
                              "axis 0 is the batch; reverse the time axis after it: "
                              "`x[:, ::-1]` (flip(x, axis = 1))", severity="warning")
    if node.op != "slice" or not node.inputs or node.attrs.get("axis") != 0:
        return None
    shape = g.node(node.inputs[0]).type.shape
    if not shape or shape[0] != Sym.of("batch") or node.type.shape[0] == Sym.of("batch"):
        return None
    rows = node.type.shape[0]
    picked = "one example" if rows == 1 else f"{rows} examples"
    return Diagnostic(f"this subscript picks {picked} of the batch from {fmt_shape(shape)}: "
                      "the result no longer has one row per example",
                      node.span, "axis 0 is the batch; index the axes after it, e.g. `x[:, 0]` "
                      "for the first feature of every example", severity="warning")


# ops whose output is a raw score when they carry no activation
RAW_SCORES = ("dense", "matmul")
SHAPE_ONLY = ("reshape", "flatten", "squeeze", "unsqueeze", "dropout")


def _threshold_on_logits(g: Graph, node):
    """binary_accuracy at its default threshold 0.5 on a dense layer's raw score: a logit of
    0.3 is a probability of 0.57, counted as class 0; the metric then disagrees with the loss."""
    if node.op != "binary_accuracy" or not node.inputs or node.attrs.get("threshold") != 0.5:
        return None
    source = g.node(node.inputs[0])
    while source.op in SHAPE_ONLY and source.inputs:
        source = g.node(source.inputs[0])
    if source.op not in RAW_SCORES or source.attrs.get("activation") not in (None, "linear"):
        return None
    return Diagnostic("binary_accuracy thresholds its input at 0.5, but the input is a raw "
                      f"score (a logit, from {source.op}), whose threshold is 0", node.span,
                      "pass `threshold = 0`, or the probability: binary_accuracy(sigmoid(logit), "
                      "label)", severity="warning")


def _keras_momentum(g: Graph, node):
    """batch_norm's momentum is PyTorch's (new = (1 - m) old + m batch); Keras' is the share
    kept (its default 0.99), so a Keras value makes the running statistics nearly the last
    batch's and evaluation normalizes by one batch's noise."""
    momentum = node.attrs.get("momentum") if node.op == "batch_norm" else None
    if momentum is None or momentum <= 0.5:
        return None
    keep = round(1 - momentum, 10)
    return Diagnostic(f"batch_norm's momentum {momentum:g} moves the running statistics "
                      f"{momentum:.0%} of the way to each batch's: momentum is PyTorch's, the "
                      "share of the new batch (new = (1 - m) old + m batch), not Keras' share "
                      "kept", node.span,
                      f"Keras' momentum = {momentum:g} is `momentum = {keep:g}` here (PyTorch's "
                      "default is 0.1)", severity="warning")


# the padding masks of attention, positional_encoding and rnn/lstm/gru: all read by
# ops.nn.real_steps, where nonzero (true) KEEPS a step
PADDING_MASKS = ("key_padding_mask", "mask")


def _scalar(g: Graph, nid: int):
    """The number a one-element const holds, else None."""
    node = g.node(nid)
    value = node.attrs.get("value") if node.op == "const" else None
    return value.item() if value is not None and value.size == 1 else None


def _unwrapped(g: Graph, source):
    """`source` under the reshapes and casts that keep which steps a mask marks."""
    while source.op in SHAPE_ONLY + ("cast",) and source.inputs:
        source = g.node(source.inputs[0])
    return source


def _pads(g: Graph, source) -> tuple | None:
    """(ids node, pad) when `source` is true at the pads: `tok == 0` (or with an id an
    embedding reads), ids below 1 (`tok < 1`, `tok <= 0`), else None."""
    # NOTE: ids below 1 (`tok < 1`, `tok <= 0`) are the pads, 0, as `tok == 0` is
    below = source.op in ("lt", "le") and len(source.inputs) == 2 and \
        _scalar(g, source.inputs[1]) == (1 if source.op == "lt" else 0) and \
        g.node(source.inputs[0]).dtype in registry.INT_DTYPES
    if source.op != "eq" and not below or len(source.inputs) != 2:
        return None
    consts = [i for i in source.inputs if g.node(i).op == "const"]
    value = g.node(consts[0]).attrs["value"] if len(consts) == 1 else None
    if value is None or value.size != 1:
        return None
    pad = 0 if below else value.item()
    pad = int(pad) if float(pad).is_integer() else pad
    ids_nid = next(i for i in source.inputs if i != consts[0])
    # NOTE: `flags == 1` on a 0/1 mask of real steps (Hugging Face's attention_mask) is right;
    # an equality picks the pads when it is with 0, or with any id of tokens an embedding reads
    if pad != 0 and not any(g.node(u).op == "embedding" for u in g.users(ids_nid)):
        return None
    return g.node(ids_nid), pad


def _padding_mask_inverted(g: Graph, node):
    """`key_padding_mask = tokens == 0` (or `tokens < 1`, or `1 - attention_mask`): PyTorch's
    key_padding_mask is true at the keys to ignore, nnlang's at the keys to keep, so the habit
    silently attends to the padding only (and an rnn's mask = tokens == 0 runs over the
    padding alone)."""
    opdef = registry.get(node.op)
    if opdef is None:
        return None
    tensors = [p.name for p in opdef.sig.params if p.kind in ("tensor", "tensor?")]
    name = next((n for n in PADDING_MASKS if n in tensors), None)
    ins = slots(g, node) if name else []
    if not name or len(ins) <= tensors.index(name) or ins[tensors.index(name)] is None:
        return None
    source = _unwrapped(g, g.node(ins[tensors.index(name)]))
    if source.op == "sub" and len(source.inputs) == 2 and _scalar(g, source.inputs[0]) == 1:
        # NOTE: PyTorch's `(1 - attention_mask).bool()`, the pads of a 0/1 mask of real steps;
        # but 1 minus the pads (`1 - (tok == 0)`) is the real steps, right as written
        kept = g.node(source.inputs[1])
        if _pads(g, _unwrapped(g, kept)) is not None:
            return None
        shown = kept.name or kept.attrs.get("name") or \
            (kept.span.text() if kept.span else None) or "the mask"
        return Diagnostic(f"{node.op}'s {name} is true where {shown} is 0 (it is 1 minus that "
                          "mask): here a mask is true (nonzero) at the steps to KEEP"
                          + (", the opposite of PyTorch's key_padding_mask, so this attends to "
                             "the padding alone" if node.op == "multi_head_attention" else
                             ", so this reads the padding alone"),
                          source.span, f"write `{name} = {shown}`, without `1 -` (true at the "
                          "real tokens)", severity="warning")
    found = _pads(g, source)
    if found is None:
        return None
    tokens, pad = found
    ids = tokens.name or tokens.attrs.get("name") or "tokens"
    return Diagnostic(f"{node.op}'s {name} is true where the ids equal {pad}: here a mask is "
                      "true (nonzero) at the steps to KEEP, the opposite of PyTorch's "
                      "key_padding_mask, so this attends to the padding alone" if
                      node.op == "multi_head_attention" else
                      f"{node.op}'s {name} is true where the ids equal {pad}: here a mask is "
                      "true (nonzero) at the steps to KEEP, so this reads the padding alone",
                      source.span, f"write `{name} = {ids} != {pad}` (true at the real tokens)",
                      severity="warning")


def _channels_first_after_last(g: Graph, node):
    """batch_norm, the convolutions and the pools read axis 1 as the channels unless told
    `channels_last = true`; after one that was told so, axis 1 is a spatial one (a TCN's
    time): a batch_norm normalized each time step with weights of its own, a second conv mixed
    time steps as channels, a global pool averaged the channels away, silently."""
    reads = node.op == "batch_norm" or node.op in WINDOWED or node.op in GLOBAL_POOLS
    if not reads or node.attrs.get("channels_last") or not node.inputs:
        return None
    source = g.node(node.inputs[0])
    shape = source.type.shape
    # NOTE: through what keeps the layout (an activation, a residual add, dropout), not
    # through a permute (of a square shape too), which is the way to put channels first
    while source.op not in WINDOWED and source.op not in ("permute", "transpose") and \
            source.inputs and g.node(source.inputs[0]).type.shape == shape:
        source = g.node(source.inputs[0])
    if source.op not in WINDOWED or not source.attrs.get("channels_last"):
        return None
    last = len(shape) - 1
    hint = (f"normalize the channels: permute(h, [0, {last}, "
            f"{', '.join(map(str, range(1, last)))}]) |> batch_norm, then permute back; or drop "
            "channels_last and declare the input channels first" if node.op == "batch_norm"
            else f"pass channels_last = true to this {node.op} too")
    verb = "normalizes" if node.op == "batch_norm" else "reads"
    return Diagnostic(f"{node.op} {verb} axis 1 of {fmt_shape(shape)} as {shape[1]} channels, "
                      f"but the {source.op} before it puts its {shape[-1]} channels last "
                      "(channels_last = true)", node.span, hint, severity="warning")


# reductions a global pooling is written with, and the op that writes it in one call
POOLED_BY = {"max": "global_max_pool", "mean": "global_avg_pool"}


def _channels_pooled(g: Graph, node):
    """max(c, axis = 1) or mean(c, axis = 1) on a convolution's [batch, channels, *spatial]
    reduces the channels away and keeps a map per position: Keras' GlobalMaxPooling1D written
    by hand on its channels-last [batch, steps, channels] is a max over axis 1, which here
    ends a text CNN with one number per word position instead of one per filter. A map kept
    with keepdims = true, or one that goes back into a [batch, channels, ...] tensor (CBAM's
    spatial attention, a conv on it) is meant, and not warned about."""
    pool = POOLED_BY.get(node.op)
    if pool is None or node.attrs.get("keepdims") or not node.inputs:
        return None
    source = g.node(node.inputs[0])
    shape = source.type.shape
    axis = node.attrs.get("axis")
    axes = [axis] if isinstance(axis, int) else axis if isinstance(axis, (list, tuple)) else []
    if len(shape) < 3 or len(axes) != 1 or not isinstance(axes[0], int) or \
            not -len(shape) <= axes[0] < len(shape) or axes[0] % len(shape) != 1:
        return None
    # NOTE: through what keeps the layout (an activation, dropout, batch_norm, a residual add)
    while source.op not in WINDOWED and source.op not in ("permute", "transpose") and \
            source.inputs and g.node(source.inputs[0]).type.shape == shape:
        source = g.node(source.inputs[0])
    if source.op not in WINDOWED or source.attrs.get("channels_last"):
        return None
    seen, todo = set(), list(g.users(node.id))
    while todo and len(seen) < 64:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        if len(g.node(nid).type.shape) >= len(shape):
            return None
        todo += g.users(nid)
    spatial = list(range(2, len(shape)))
    named = g.node(node.inputs[0])
    x = named.name or named.attrs.get("name") or "x"
    return Diagnostic(f"{node.op} over axis 1 of {fmt_shape(shape)} reduces the {shape[1]} "
                      f"channels of the {source.op} before it and keeps {fmt_shape(shape[2:])}: "
                      "one value per position, not one per channel", node.span,
                      f"to pool each channel over the positions (PyTorch's Adaptive"
                      f"{'Max' if node.op == 'max' else 'Avg'}Pool{len(spatial)}d(1), Keras' "
                      f"Global{'Max' if node.op == 'max' else 'Average'}Pooling{len(spatial)}D) "
                      f"write `{pool}({x})` or `{node.op}({x}, axis = "
                      f"{spatial[0] if len(spatial) == 1 else spatial})` ([batch, {shape[1]}]); "
                      "a map over the channels per position is kept with keepdims = true",
                      severity="warning")


# layers whose output holds each position's features on the last axis ([batch, time, features])
FEATURES_LAST = ("embedding", "dense", "linear", "lstm", "gru", "rnn", "multi_head_attention",
                 "positional_encoding")


def _features_last_source(g: Graph, node):
    """(the layer, its [batch, time, features] shape) when `node`'s first input is a
    FEATURES_LAST layer's output, reached through what keeps the layout (an activation,
    dropout, layer_norm, a residual add); else None."""
    if not node.inputs:
        return None
    source = g.node(node.inputs[0])
    shape = source.type.shape
    if len(shape) != 3:
        return None
    while source.op not in FEATURES_LAST and source.op not in ("permute", "transpose") and \
            source.inputs and g.node(source.inputs[0]).type.shape == shape:
        source = g.node(source.inputs[0])
    return (source, shape) if source.op in FEATURES_LAST else None


def _features_last_into_batch_norm(g: Graph, node):
    """batch_norm after an embedding or a dense layer on [batch, time, features]: Keras'
    BatchNormalization normalizes the last axis, nnlang's (as PyTorch's BatchNorm1d) axis 1,
    so each time step was normalized as a channel of its own, with weights per position."""
    if node.op != "batch_norm" or (found := _features_last_source(g, node)) is None:
        return None
    source, shape = found
    return Diagnostic(f"batch_norm normalizes axis 1 of {fmt_shape(shape)} as {shape[1]} "
                      f"channels, but the {source.op} before it puts each step's {shape[-1]} "
                      "features last: every time step is normalized on its own, with weights "
                      "per position (Keras' BatchNormalization normalizes the last axis)",
                      node.span, "normalize the features: permute(h, [0, 2, 1]) |> batch_norm "
                      "|> permute([0, 2, 1]); or layer_norm(h), per example", severity="warning")


def _features_last_pooled(g: Graph, node):
    """global_avg_pool / global_max_pool on [batch, time, features] from an embedding, an
    attention or a recurrent layer: Keras' GlobalAveragePooling1D pools over the time steps of
    its channels-last input, while these (as PyTorch's adaptive pools) read axis 1 as the
    channels, so a ported text classifier pooled each position's features into one number
    and went on with [batch, time], without a word."""
    if node.op not in GLOBAL_POOLS or node.attrs.get("channels_last") or \
            (found := _features_last_source(g, node)) is None:
        return None
    source, shape = found
    verb, keras = ("averages", "Average") if node.op == "global_avg_pool" else ("takes the max of",
                                                                              "Max")
    named = g.node(node.inputs[0])
    h = named.name or named.attrs.get("name") or "h"
    return Diagnostic(f"{node.op} {verb} the {shape[-1]} features of each of the {shape[1]} "
                      f"steps of {fmt_shape(shape)} (it reads axis 1 as the channels), but the "
                      f"{source.op} before it puts each step's features last: the result is "
                      f"{fmt_shape([shape[0], shape[1]])}, one value per position",
                      node.span, f"pool over the steps: {node.op}({h}, channels_last = true) "
                      f"([batch, {shape[-1]}], Keras' Global{keras}Pooling1D), or "
                      f"{'mean' if node.op == 'global_avg_pool' else 'max'}({h}, axis = 1)",
                      severity="warning")


def _kl_target_form(g: Graph, node):
    """kl_div's target in the other form than log_target says: a log_softmax read as
    probabilities (negative ones, so no divergence), or a softmax read as log-probabilities."""
    if node.op != "kl_div" or len(node.inputs) < 2:
        return None
    source = producer(g, node.inputs[1])
    made = {source.op, source.attrs.get("activation")}
    if node.attrs.get("log_target") and "softmax" in made:
        return Diagnostic("kl_div(log_target = true) takes the target as log-probabilities, "
                          "but it is a softmax", node.span,
                          "pass log_softmax(...) as the target, or leave log_target out for "
                          "probabilities", severity="warning")
    if not node.attrs.get("log_target") and "log_softmax" in made:
        return Diagnostic("kl_div takes the target as probabilities, but it is a log_softmax",
                          node.span, "pass log_target = true (PyTorch's) for a target of "
                          "log-probabilities", severity="warning")
    return None


def loss_hint(g: Graph) -> str:
    """How to give a model the loss it lacks, written with its first output's name."""
    out = next(iter(g.outputs), "logits")
    return (f"add a line like `loss cross_entropy({out}, label)` (or `loss mse({out}, target)` "
            "for numbers)")


def _unreached_weights(g: Graph, train=None) -> list[Diagnostic]:
    """A warning at each layer whose trainable weights no loss reads (its value unused, or
    read only by an output or a metric): training leaves them as they are
    (`passes/pipeline.train_graph`), as PyTorch does a parameter whose .grad is None; Keras
    warns that "gradients do not exist" for them. NOTE: weights behind stop_gradient are left
    too, but that is said in the model (a frozen backbone), so they are not warned about.
    The train config `train`'s l2 / l1 penalty is a loss term that does read the weights it
    covers (as a manual penalty over all of a PyTorch model's parameters), so those are said
    to be only shrunk by it: "training leaves it as it is" was false for them."""
    reached, todo = set(), list(g.losses.values())
    while todo:
        nid = todo.pop()
        if nid not in reached:
            reached.add(nid)
            todo += g.node(nid).inputs
    by_span: dict = {}
    for name, nid in g.params.items():
        node = g.node(nid)
        if node.attrs.get("trainable", True) and nid not in reached:
            on = train.penalties(name, len(node.shape)) if train is not None else {}
            by_span.setdefault(node.span, []).append((name, " and ".join(on)))
    found = []
    for span, named in by_span.items():
        names = [n for n, _ in named]
        some = len(names) > 1
        shown = ", ".join(names)
        shrunk = [f"{n} ({by})" for n, by in named if by]
        if not shrunk:
            fate = (f"training leaves {'them' if some else 'it'} as "
                    f"{'they are' if some else 'it is'} (no gradient, no weight decay)")
        else:
            fate = (f"training moves only {', '.join(shrunk)}, by the penalty, toward 0: no "
                    f"data trains {'them' if some else 'it'}")
        found.append(Diagnostic(
            f"no loss reads the weight{'s' if some else ''} {shown}: {fate}", span,
            "use its value on the way to a loss (an output or a metric alone trains nothing), "
            "delete it, or say it is fixed with `trainable = false`", severity="warning"))
    return found


def _nothing_trainable(g: Graph, train_span) -> list[Diagnostic]:
    """Every weight frozen: a run trains nothing and said nothing of it (PyTorch's optimizer
    refuses "an empty parameter list", Keras warns "the model does not have any trainable
    weights"). Said at the train section, else at the first weight."""
    frozen = [g.node(nid) for nid in g.params.values()]
    if not frozen or any(n.attrs.get("trainable", True) for n in frozen):
        return []
    return [Diagnostic(f"every weight of model '{g.model}' is frozen (trainable = false): "
                       "training would change nothing", train_span or frozen[0].span,
                       "drop trainable = false from the layers to train (a head on a frozen "
                       "backbone)", severity="warning")]


def retrained(warnings: list, g: Graph, before, after) -> list:
    """`warnings` (lint's, for the train config `before`) with the unreached-weight ones said
    for the config `after` (--set l2=... or a flag changes which weights a penalty shrinks)."""
    if not g.losses:
        return warnings
    # NOTE: by message and place: elaborate notes the --set values a warning's line reads
    old = {(w.message, w.span) for w in _unreached_weights(g, before)}
    return [w for w in warnings if (w.message, w.span) not in old] + \
        _unreached_weights(g, after)


def lint(g: Graph, train_span=None, train=None) -> list[Diagnostic]:
    """The warnings for the user-level graph `g`, each at the span of the op at fault; with the
    span of the model's train section, that it declares no loss to train; with its config
    `train`, which unreached weights its penalties still shrink."""
    found = []
    if train_span is not None and not g.losses:
        # NOTE: found at check, not when `nnlang train` has loaded the data and compiled
        found.append(Diagnostic(f"a train section for model '{g.model}', which declares no "
                                "loss: `nnlang train` cannot train it", train_span,
                                loss_hint(g), severity="warning"))
    if g.losses:
        found += _unreached_weights(g, train) + _nothing_trainable(g, train_span)
    for node in g:
        # NOTE: one layout warning per node: after a channels-last layer the first rule says
        # more than the shape guess of _channels_last would. The other rules are mistakes of
        # their own (a Keras port's batch_norm(momentum = 0.99) after a channels-last conv
        # is two), so each still warns.
        for rules in ((_channels_first_after_last, _features_last_into_batch_norm,
                       _features_last_pooled, _channels_last), (_over_batch,),
                      (_threshold_on_logits,), (_rows_of_batch,), (_keras_momentum,),
                      (_softmax_of_one,), (_softmax_twice,), (_padding_mask_inverted,),
                      (_kl_target_form,), (_channels_pooled,)):
            problem = next((p for p in (rule(g, node) for rule in rules) if p), None)
            if problem is not None:
                found.append(problem)
        for loss, arg, activation, why, hint in PRODUCER_RULES:
            if node.op != loss or len(node.inputs) <= arg:
                continue
            source = producer(g, node.inputs[arg])
            if activation in (source.op, source.attrs.get("activation")):
                if source.op != activation and source.span is not None:
                    # NOTE: Keras' Dense(activation="softmax"): the fix is at the layer
                    hint = (f"drop `activation = \"{activation}\"` from the {source.op} at "
                            f"{source.span}, then {hint}")
                found.append(Diagnostic(why, node.span, hint, severity="warning"))
    return found
