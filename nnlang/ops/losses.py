"""Loss composites: each reduces predictions and targets to one scalar, the mean over the batch
(and any other example axes), ready for `autodiff.backward(g, loss)`.
"""
from __future__ import annotations

import numpy as np

from nnlang.ir.dims import Sym, fmt_shape, is_concrete
from nnlang.ops.nn import const_like, count, mean_over, need_float, stable_softplus
from nnlang.ops.registry import (INT_DTYPES, Sample, ShapeError, TensorType, is_float, need_range,
                                 register)


def _same_shape(op, a: TensorType, b: TensorType) -> None:
    # NOTE: no broadcasting here on purpose: pred [batch, 1] against target [batch] would
    # silently build a [batch, batch] loss.
    if a.shape != b.shape:
        classes = (b.dtype in INT_DTYPES and a.rank >= 2 and a.shape[-1] != 1
                   and a.shape[:-1] == b.shape)
        raise ShapeError(f"{op}: prediction {fmt_shape(a.shape)} and target {fmt_shape(b.shape)} "
                         "differ", arg=1,
                         hint=("int class ids against a score per class: for classes use "
                               "cross_entropy(logits, labels)" if classes else
                               "reshape or squeeze one side so they match"))


def _binary_pair(op, p: TensorType, y: TensorType) -> None:
    need_float(op, p)
    if p.shape != y.shape and p.shape != y.shape + (1,):
        _same_shape(op, p, y)


def _match(b, p, y):
    """A [batch, 1] sigmoid output against [batch] labels: drop the trailing 1, and make y float."""
    if b.type(p).shape != b.type(y).shape:
        p = b.reshape(p, shape=list(b.type(y).shape))
    if b.type(y).dtype != b.type(p).dtype:
        y = b.cast(y, dtype=b.type(p).dtype)
    return p, y


def _scalar(p: TensorType, *_, **__) -> TensorType:
    return TensorType((), p.dtype)


def _regression_shape(op):
    def rule(pred, target):
        need_float(op, pred)
        _same_shape(op, pred, target)
        return _scalar(pred)
    return rule


def _mse(b, pred, target):
    d = b.sub(pred, target)
    return mean_over(b, b.mul(d, d))


def _l1(b, pred, target):
    return mean_over(b, b.abs(b.sub(pred, target)))


_REG_SAMPLES = (Sample(((4, 3), (4, 3))), Sample(((5,), (5,))))
register("mse", "pred: tensor, target: tensor", _regression_shape("mse"), decompose=_mse,
         family="losses", samples=_REG_SAMPLES,
         doc="mean squared error: mean((pred - target)**2) over all elements")
for _name in ("l1", "mae"):
    register(_name, "pred: tensor, target: tensor", _regression_shape(_name), decompose=_l1,
             family="losses", samples=_REG_SAMPLES,
             doc="mean absolute error: mean(|pred - target|) over all elements"
                 + (" (alias of l1)" if _name == "mae" else ""))


def _huber_shape(pred, target, *, delta):
    need_float("huber", pred)
    _same_shape("huber", pred, target)
    if not delta > 0:   # NOTE: PyTorch refuses delta <= 0 too; delta = 0 would be 0 everywhere
        raise ShapeError(f"huber: delta must be positive, got {delta!r}", attr="delta")
    return _scalar(pred)


def _huber(b, pred, target, *, delta):
    d = b.sub(pred, target)
    a = b.abs(d)
    dl = const_like(b, delta, d)
    # NOTE: a where, not min(a, delta) algebra: the quadratic side is 0.5 * d * d itself, so
    # its gradient is d exactly (PyTorch's), and |d|'s kink at 0 is never differentiated. It
    # squares d only where it is chosen (0 elsewhere): its unchosen gradient, 0 * d, was nan
    # at an infinite residual, where PyTorch gives the linear side's delta * sign(d)
    inside = b.lt(a, dl)
    dq = b.where(inside, d, const_like(b, 0.0, d))
    quad = b.mul(const_like(b, 0.5, d), b.mul(dq, dq))
    lin = b.mul(dl, b.sub(a, b.mul(const_like(b, 0.5, d), dl)))
    return mean_over(b, b.where(inside, quad, lin))


register("huber", "pred: tensor, target: tensor, delta: float = 1.0", _huber_shape,
         decompose=_huber, family="losses",
         samples=_REG_SAMPLES + (Sample(((4, 3), (4, 3)), {"delta": 0.5}),),
         doc="Huber loss (PyTorch's F.huber_loss, mean reduction; Keras' Huber): with "
             "d = pred - target, 0.5 * d**2 where |d| < delta, else delta * (|d| - 0.5 * "
             "delta); the mean over all elements. delta = 1 is smooth_l1.")


def _kl_div_shape(log_pred, target, *, log_target=False):
    need_float("kl_div", log_pred)
    _same_shape("kl_div", log_pred, target)
    need_float("kl_div", target, arg=1)
    if log_pred.rank < 1:
        raise ShapeError("kl_div: batchmean divides by the batch, axis 0, which a scalar lacks",
                         arg=0)
    return _scalar(log_pred)


def _kl_div(b, log_pred, target, *, log_target=False):
    t = b.type(target)
    if log_target:
        # NOTE: PyTorch's log_target = True: the target is log-probabilities too, exp(t) * (t -
        # log_pred); no xlogy case, a target probability of 0 is exp(-inf) = 0 times a finite
        # or -inf difference, which PyTorch gives as nan as this does
        terms = b.mul(b.exp(target), b.sub(target, log_pred))
        return b.div(b.reduce_sum(terms, axes=None), count(b, t.shape[:1], t.dtype))
    zero = const_like(b, 0.0, target)
    # NOTE: target * log(target) is 0 at target = 0 (PyTorch's xlogy); log of 1 there, not a
    # where around log(0), keeps -inf (and a nan gradient) out of the graph
    safe = b.where(b.gt(target, zero), target, const_like(b, 1.0, target))
    terms = b.mul(target, b.sub(b.log(safe), log_pred))
    return b.div(b.reduce_sum(terms, axes=None), count(b, t.shape[:1], t.dtype))


register("kl_div", "log_pred: tensor, target: tensor, log_target: bool = false", _kl_div_shape,
         decompose=_kl_div, family="losses",
         samples=(Sample(((4, 5), (4, 5)), domain="unit"),
                  Sample(((2, 3, 4), (2, 3, 4)), domain="unit"),
                  Sample(((3, 4), (3, 4)), {"log_target": True})),
         doc="KL divergence KL(target || pred) as PyTorch's F.kl_div(log_pred, target, "
             "reduction = \"batchmean\"): the FIRST argument is the model's LOG-probabilities "
             "(log_softmax(logits)), the second the target's probabilities; sum(target * "
             "(log(target) - log_pred)) over all elements, divided by the batch (axis 0) only. "
             "log_target = true (PyTorch's): the target is log-probabilities too, sum(exp(target) "
             "* (target - log_pred)) / batch. "
             "Keras' KLDivergence(y_true, y_pred) takes both as probabilities, truth first.")


def _bce_shape(prob, target, *, eps=None):
    _binary_pair("bce", prob, target)
    if eps is not None:
        need_range("bce", "eps", eps, 0.0, 0.5, hi_open=True)
    return _scalar(prob)


def _bce(b, prob, target, *, eps):
    p, y = _match(b, prob, target)
    # NOTE: clipping keeps log finite for saturated sigmoids (Keras' epsilon); the gradient is
    # zero outside [eps, 1 - eps], which is why bce_with_logits is the better choice.
    p = b.minimum(b.maximum(p, const_like(b, eps, p)), const_like(b, 1.0 - eps, p))
    one = const_like(b, 1.0, p)
    ll = b.add(b.mul(y, b.log(p)), b.mul(b.sub(one, y), b.log(b.sub(one, p))))
    return b.neg(mean_over(b, ll))


register("bce", "prob: tensor, target: tensor, eps: float = 1e-7", _bce_shape, decompose=_bce,
         family="losses",
         samples=(Sample(((4,), (4,)), domain="unit"), Sample(((4, 1), (4,)), domain="unit"),
                  Sample(((3, 2), (3, 2)), domain="unit")),
         doc="binary cross-entropy of probabilities: -mean(y log p + (1-y) log(1-p)), p clipped "
             "to [eps, 1-eps]. A [batch, 1] prob matches [batch] targets; int targets are cast.")


def _bce_logits_shape(logits, target, *, pos_weight=None):
    _binary_pair("bce_with_logits", logits, target)
    if isinstance(pos_weight, list):
        # NOTE: PyTorch broadcasts it against the targets' last axis: one weight per output
        # column (a multi-label model's label), not per example
        need_weights("bce_with_logits", "pos_weight", pos_weight,
                     target.shape[-1:] if target.rank >= 2 else (1,),
                     ("output column", "output columns"),
                     "one number for every column alike")
    elif pos_weight is not None and pos_weight < 0:
        raise ShapeError(f"bce_with_logits: pos_weight {pos_weight} is negative",
                         attr="pos_weight", hint="p > 1 weighs the positive examples up, "
                                                 "p < 1 down (num_negative / num_positive)")
    return _scalar(logits)


def need_weights(op, attr, weights, axis, what, alt) -> None:
    """A per-class (or per-column) weight list: numbers, none negative, one per entry of
    `axis` (a 1-tuple of the class dim) when that is known; `what` is (singular, plural)."""
    if not weights or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                              for w in weights):
        raise ShapeError(f"{op}: {attr} must be a list of numbers, one per {what[0]}",
                         attr=attr)
    if any(w < 0 for w in weights):
        raise ShapeError(f"{op}: {attr} {weights} has a negative weight", attr=attr,
                         hint="weights scale each row's loss: 0 leaves a class out")
    n = axis[0] if axis else 1
    if not is_concrete(axis):
        # NOTE: a fixed list cannot follow a size that changes (a pointer's `seq` places); the
        # mul with it failed only when decomposed, as a bare broadcast error
        raise ShapeError(f"{op}: {attr} has a fixed {len(weights)} weights, but the last axis "
                         f"is {fmt_shape(axis)}, a size that varies", attr=attr,
                         hint=f"give the {what[1]} a fixed size, or {alt}")
    if int(n) != len(weights):
        raise ShapeError(f"{op}: {attr} has {len(weights)} weights for a last axis of {n} "
                         f"({what[1]})", attr=attr,
                         hint=f"give one weight per entry of the last axis ({n}), or {alt}")


def _bce_logits(b, logits, target, *, pos_weight=None):
    z, y = _match(b, logits, target)
    if pos_weight is None:
        # softplus(z) - z*y: equal to bce(sigmoid(z), y) but never overflows
        return mean_over(b, b.sub(stable_softplus(b, z), b.mul(z, y)))
    # NOTE: PyTorch's -(p y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))), with -log sigmoid(z)
    # = softplus(-z) and -log(1 - sigmoid(z)) = softplus(z) = z + softplus(-z):
    # (1 - y) z + (1 + (p - 1) y) softplus(-z), stable for either sign of z
    one = const_like(b, 1.0, z)
    p = const_like(b, pos_weight, z)
    scale = b.add(one, b.mul(b.sub(p, one), y))
    return mean_over(b, b.add(b.mul(b.sub(one, y), z),
                              b.mul(scale, stable_softplus(b, b.neg(z)))))


register("bce_with_logits", "logits: tensor, target: tensor, pos_weight: floats = none",
         _bce_logits_shape, decompose=_bce_logits, family="losses",
         samples=(Sample(((4,), (4,)), domain="unit"), Sample(((4, 1), (4,)), domain="unit"),
                  Sample(((4,), (4,)), {"pos_weight": 3.0}, domain="unit"),
                  Sample(((3, 2), (3, 2)), {"pos_weight": [0.5, 4.0]}, domain="unit")),
         doc="binary cross-entropy on raw scores, in the stable form "
             "max(z, 0) - z*y + log(1 + e**-|z|), averaged. Prefer it to sigmoid + bce. As "
             "PyTorch's BCEWithLogitsLoss: pos_weight = p (a number, or a list of one per "
             "column of the last axis) weighs the positive term, -(p y log sigmoid(z) + "
             "(1 - y) log(1 - sigmoid(z))).")


def need_scores_first(op: str, scores: TensorType, labels: TensorType) -> None:
    """int ids first and float scores second: the arguments are swapped (Keras' losses take
    (y_true, y_pred), nnlang's and PyTorch's (prediction, target))."""
    if labels.dtype in INT_DTYPES or not is_float(labels.dtype) or is_float(scores.dtype):
        return
    if labels.rank > 0 and labels.shape[:-1] == scores.shape:
        raise ShapeError(f"{op}: the scores come first, then the labels; got {scores} first "
                         f"and {labels} second", arg=0,
                         hint=f"swap them: {op}(logits, labels)")


def _ce_shape(logits, labels, *, label_smoothing=0.0, ignore_index=None, weight=None):
    need_range("cross_entropy", "label_smoothing", label_smoothing, 0.0, 1.0)
    if weight is not None:
        if not isinstance(weight, list):
            raise ShapeError(f"cross_entropy: weight is one number per class, got {weight}",
                             attr="weight", hint="weight = [w0, w1, ...], as PyTorch's tensor "
                                                 "of class weights; a loss scaled as a whole is "
                                                 f"`loss {weight} * cross_entropy(...)`")
        if logits.rank >= 1:
            need_weights("cross_entropy", "weight", weight, logits.shape[-1:], ("class", "classes"),
                         "leave weight out for equal classes")
    need_scores_first("cross_entropy", logits, labels)
    need_float("cross_entropy", logits)
    _need_class_axis("cross_entropy", logits)
    if ignore_index is not None and labels.dtype not in INT_DTYPES:
        # NOTE: PyTorch refuses it too ("not supported for floating point target")
        raise ShapeError(f"cross_entropy: ignore_index skips rows by their class id, but the "
                         f"labels {labels} are probabilities", attr="ignore_index",
                         hint="give int class ids, or weigh the per-row losses yourself")
    need_ignore_index("cross_entropy", ignore_index, labels)
    rows = fmt_shape(logits.shape[:-1])
    if labels.dtype in INT_DTYPES:
        if logits.shape[:-1] != labels.shape:
            raise ShapeError(f"cross_entropy: logits {fmt_shape(logits.shape)} need labels "
                             f"{rows} (one class id per row), got {fmt_shape(labels.shape)}",
                             arg=1, hint=_ids_hint(logits, labels))
    elif is_float(labels.dtype):
        if labels.shape != logits.shape and class_ids_shape(logits, labels):
            # NOTE: a float label [batch] is a class id declared float (Keras reads it as one);
            # reshaping it, as the generic hint says, would not fix it.
            raise ShapeError(f"cross_entropy: float labels {fmt_shape(labels.shape)} are read "
                             f"as probabilities shaped like the logits "
                             f"{fmt_shape(logits.shape)}; class ids {rows} must be ints", arg=1,
                             hint=f"declare the labels int32 (`input label: int32{rows}`) or "
                                  "cast them: cast(label, dtype = \"int32\")")
        _same_shape("cross_entropy", logits, labels)
    else:
        raise ShapeError(f"cross_entropy: labels must be int class ids or float probabilities, "
                         f"got {labels}", arg=1)
    return _scalar(logits)


def _fits(value: int, dtype: str) -> bool:
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


# *** ignore_index: rows left out of a mean by their label (cross_entropy, accuracy) ***

def need_ignore_index(op: str, ignore_index: int | None, labels: TensorType) -> None:
    if ignore_index is not None and labels.dtype in INT_DTYPES and not _fits(ignore_index,
                                                                            labels.dtype):
        # NOTE: it becomes a constant of the labels' dtype, which must hold it
        raise ShapeError(f"{op}: ignore_index {ignore_index} does not fit the labels' "
                         f"{labels.dtype}", attr="ignore_index",
                         hint="PyTorch's default is -100; any id outside [0, classes) that "
                              "the labels can hold marks a row to skip")


def kept_rows(b, labels: int, ignore_index: int, dtype: str) -> int:
    """1 for a row whose label is not ignore_index, else 0, in `dtype`."""
    return b.cast(b.ne(labels, b.const(ignore_index, b.type(labels).dtype)), dtype=dtype)


def divides_by_data(op: str, attrs: dict, labels: TensorType) -> bool:
    """Whether `op` (cross_entropy, accuracy, binary_accuracy) with `attrs` is a mean whose
    divisor depends on the data: over the kept rows (ignore_index), or by the kept rows' class
    weights (cross_entropy's weight with int ids; probabilities keep the plain mean)."""
    if op not in ("cross_entropy", "accuracy", "binary_accuracy"):
        return False
    return attrs.get("ignore_index") is not None or (
        attrs.get("weight") is not None and labels.dtype in INT_DTYPES)


def mean_divisor(b, op: str, logits: int, labels: int, attrs: dict) -> int:
    """The divisor of such a mean (`divides_by_data`) on this batch's rows: the count of kept
    rows, or the sum of their class weights, before the clamp to 1 and the sum over ranks.
    Evaluation weighs each batch's value by it, so a whole set's value is the mean over all
    its kept rows (torchmetrics', and a sum with reduction = "sum" over the count)."""
    dtype = b.type(logits).dtype
    ignore, weight = attrs.get("ignore_index"), attrs.get("weight")
    if op == "cross_entropy" and weight is not None:
        ids = b.one_hot(labels, depth=b.type(logits).shape[-1], dtype=dtype, skip=ignore)
        return b.reduce_sum(class_weight_rows(b, ids, weight, None), axes=None)
    return b.reduce_sum(kept_rows(b, labels, ignore, dtype), axes=None)


def class_weight_rows(b, ids: int, weight: list, keep: int | None) -> int:
    """w[y_i] of each row (one-hot `ids`), 0 for a row `keep` leaves out."""
    per_row = b.reduce_sum(b.mul(ids, const_like(b, weight, ids)), axes=[-1])
    return per_row if keep is None else b.mul(per_row, keep)


def kept_mean(b, rows: int, keep: int) -> int:
    """The mean of `rows` over the kept ones (PyTorch's ignore_index, torchmetrics' too).
    NOTE: with every row ignored PyTorch gives 0 / 0 = nan; here the count is at least 1, so
    such a batch scores 0 (a loss with no gradient) rather than stopping a run at the NaN
    guard. Under N ranks the count is the global batch's (`_global_sum`, below)."""
    kept = b.maximum(_global_sum(b, b.reduce_sum(keep, axes=None)), const_like(b, 1.0, keep))
    return b.div(b.reduce_sum(kept_only(b, rows, keep), axes=None), _rank_share(b, kept))


def kept_only(b, rows: int, keep: int) -> int:
    """`rows` where `keep` is not 0, else 0 (a kept row's loss; a one-hot label's term).
    NOTE: selected, not multiplied: an ignored row's loss
    is inf when its label's logit is -inf (the padding id masked out of the vocabulary), and
    0 * inf was a nan loss where PyTorch leaves the row out."""
    zero = const_like(b, 0.0, rows)
    return b.where(b.ne(keep, const_like(b, 0.0, keep)), rows, zero)


def _ids_hint(logits: TensorType, labels: TensorType) -> str:
    if labels.shape == logits.shape:
        return LABELS_ONE_HOT_HINT
    if logits.rank > 2 and labels.shape == logits.shape[:1]:
        # NOTE: dense on [batch, 28, 28] maps the last axis only, as Keras' Dense does
        return ("the logits kept the input's middle axes (dense works on the last axis): "
                "flatten first, `flatten(x) |> dense(classes)`")
    batch = Sym.of("batch")
    if labels.rank and labels.shape[0] == batch and batch not in logits.shape:
        # NOTE: a char-CNN's max over time on axis 0 ([batch, filters, time]) gave
        # [filters, time]: the dense after it checked, and the mismatch showed only here
        return ("the logits have no batch axis: an op on the way reduced or indexed axis 0, the "
                "batch (the note shows the chain); reduce an axis after it, e.g. "
                "max(h, axis = -1) for the time axis of [batch, channels, time]")
    return "logits are [batch, classes] or [batch, time, classes]"


ONE_HOT_IDS_HINT = "these labels look one-hot: give one int class id per row (the argmax)"
LABELS_ONE_HOT_HINT = ONE_HOT_IDS_HINT + ", or declare them float32 as probabilities"


def class_ids_shape(logits: TensorType, labels: TensorType) -> bool:
    """Labels of one id per row ([batch], or [batch, 1] as Keras' sparse labels often are)."""
    rows = logits.shape[:-1]
    return labels.shape in (rows, rows + (1,))


def _need_class_axis(op: str, logits: TensorType) -> None:
    """A softmax over classes needs a class axis of 2 or more that is not the batch: over one
    class it is always 1 (a loss of 0 that never trains), over the batch it mixes examples.
    Both are what a binary model with one score per row gives, the sigmoid habit of Keras."""
    if logits.rank < 1:
        raise ShapeError(f"{op}: logits need a class axis", arg=0)
    last = logits.shape[-1]
    if last == 1 or last == Sym.of("batch"):
        what = ("its class axis has 1 class, so the softmax is always 1 and the loss 0"
                if last == 1 else "its last axis is the batch, so the softmax would run across "
                                  "the examples")
        raise ShapeError(f"{op}: logits {fmt_shape(logits.shape)}: {what}", arg=0,
                         hint="for one score per example (a binary task) use "
                              "bce_with_logits(logit, label) and binary_accuracy; for classes, "
                              "end with dense(h, classes)")


def _cross_entropy(b, logits, labels, *, label_smoothing=0.0, ignore_index=None, weight=None):
    t = b.type(logits)
    logp = b.log_softmax(logits, axis=-1)
    ids = b.type(labels).dtype
    if ignore_index is not None:
        keep = kept_rows(b, labels, ignore_index, t.dtype)
    if ids in INT_DTYPES and not is_concrete(t.shape[-1:]):
        # NOTE: classes counted by a symbol (a pointer over a sequence's places) reach here
        # unbound only in an export: a one-hot needs its depth, a comparison with the places
        # takes it from the logits at run time
        places = b.positions(logits, axis=-1, dtype=ids)
        labels = b.cast(b.eq(b.unsqueeze(labels, axis=-1), places), dtype=t.dtype)
    elif ids in INT_DTYPES:
        # NOTE: ids the model computes are checked here (fed ones are before the call): one
        # past the classes was a row of zeros, a sample that silently added nothing
        labels = b.check_ids(labels, depth=t.shape[-1], skip=ignore_index, of="cross_entropy")
        labels = b.one_hot(labels, depth=t.shape[-1], dtype=t.dtype, skip=ignore_index)
    if weight is not None:
        # NOTE: PyTorch's class weights scale every class's log-probability, in the label's
        # term and in label smoothing's mean over classes alike: w_c logp_c
        logp = b.mul(logp, const_like(b, weight, logp))
    picked = b.mul(labels, logp)
    if ids in INT_DTYPES:
        # NOTE: the label's log-probability is selected, not multiplied out: a -inf logit at
        # another class (a vocabulary mask, or float32's overflow of z - max) has logp -inf,
        # and one_hot's 0 * -inf was nan, a nan loss where PyTorch's nll_loss picks a finite
        # one. Probabilities keep the product, as PyTorch's sum(target * logp) does
        picked = kept_only(b, picked, labels)
    if not label_smoothing and ignore_index is None and weight is None:
        return b.neg(mean_over(b, b.reduce_sum(picked, axes=[-1])))
    rows = b.neg(b.reduce_sum(picked, axes=[-1]))
    if label_smoothing:
        # NOTE: PyTorch's targets (1 - e) * labels + e / classes, split as (1 - e) * nll plus e
        # times the mean over classes of -logp, which needs no count of classes (a symbol in
        # an export) and holds for int ids and probabilities alike
        e = label_smoothing
        rows = b.sub(b.mul(const_like(b, 1.0 - e, rows), rows),
                     b.mul(const_like(b, e, rows), mean_over(b, logp, axes=[-1])))
    if weight is not None and ids in INT_DTYPES:
        # NOTE: PyTorch divides the weighted sum by the sum of the (kept) rows' label
        # weights w[y_i], not by their count; probabilities keep the plain mean over rows
        per_row = class_weight_rows(b, labels, weight,
                                    keep if ignore_index is not None else None)
        if ignore_index is not None:
            rows = kept_only(b, rows, keep)
        total = _global_sum(b, b.reduce_sum(per_row, axes=None))
        # NOTE: a batch whose rows weigh 0 in all (every row ignored, or of zero-weight
        # classes) is 0 / 0 = nan in PyTorch; here 0, as for ignore_index alone below
        zero = const_like(b, 0.0, total)
        total = b.add(total, b.cast(b.eq(total, zero), dtype=t.dtype))
        return b.div(b.reduce_sum(rows, axes=None), _rank_share(b, total))
    if ignore_index is None:
        return mean_over(b, rows)
    return kept_mean(b, rows, keep)


# *** a divisor that depends on the data, under data parallelism ***
# The train step of N data-parallel processes averages their gradients, so each rank dividing
# its sum by its own rows' divisor (kept rows, their class weights) gave the mean of N means
# (PyTorch DDP's), not one process's mean over the global batch, when the ranks' shards keep
# different counts. Each rank divides by the global divisor's share, global / N, instead: the
# ranks' mean of sum_r / (D / N) is sum / D. In one process, evaluation and an export (where
# b.ranks is 1) the divisor is the rows' own.

def _global_sum(b, x: int) -> int:
    return b.allreduce_sum(x) if b.ranks > 1 else x


def _rank_share(b, divisor: int) -> int:
    return b.mul(divisor, const_like(b, 1.0 / b.ranks, divisor)) if b.ranks > 1 else divisor


_PER_ROW = "nll = -sum(log_softmax(logits) * one_hot(labels, classes), axis = -1)"
# PyTorch's cross_entropy options that have no counterpart here: what to write instead
_CE_HABITS = {
    "reduction": f"cross_entropy is the mean over rows; the per-row losses are {_PER_ROW}",
}


register("cross_entropy", "logits: tensor, labels: tensor, label_smoothing: float = 0.0, "
         "ignore_index: int = none, weight: floats = none", _ce_shape, decompose=_cross_entropy,
         family="losses",
         habits=_CE_HABITS,
         samples=(Sample(((4, 5), (4,)), domain="int:5", dtypes=(None, "int32")),
                  Sample(((2, 3, 4), (2, 3)), domain="int:4", dtypes=(None, "int64")),
                  Sample(((3, 4), (3, 4)), domain="unit"),
                  Sample(((4, 5), (4,)), {"label_smoothing": 0.1}, domain="int:5",
                         dtypes=(None, "int32")),
                  Sample(((3, 4), (3, 4)), {"label_smoothing": 0.3}, domain="unit"),
                  Sample(((3, 4, 5), (3, 4)), {"ignore_index": 1}, domain="int:5",
                         dtypes=(None, "int32")),
                  Sample(((6, 4), (6,)), {"ignore_index": 0, "label_smoothing": 0.2},
                         domain="int:4", dtypes=(None, "int64")),
                  Sample(((5, 3), (5,)), {"weight": [0.5, 2.0, 1.0]}, domain="int:3",
                         dtypes=(None, "int32")),
                  Sample(((2, 4, 3), (2, 4)), {"weight": [1.5, 0.0, 3.0], "ignore_index": 2,
                                               "label_smoothing": 0.2},
                         domain="int:3", dtypes=(None, "int32")),
                  Sample(((3, 4), (3, 4)), {"weight": [1.0, 2.0, 0.5, 3.0],
                                            "label_smoothing": 0.1}, domain="unit")),
         doc="softmax cross-entropy from raw logits [..., classes]: labels are int class ids "
             "[...] (or float probabilities shaped like logits); mean over all rows (batch, "
             "and time for [batch, time, classes]). Two classes at least: for one score per "
             "example use bce_with_logits. An int id outside [0, classes) that is not "
             "ignore_index is an error naming it (as PyTorch's 'Target 7 is out of bounds'): "
             "ids fed as an input before the step, ids the model computes when it runs. "
             "A -inf logit (a masked class) is a probability of "
             "0: with int ids the loss stays finite unless a kept row's label is masked, or "
             "label_smoothing gives a masked class a share of the target (inf, as PyTorch); "
             "an ignored row is left out whatever its logits. As PyTorch's F.cross_entropy: "
             "label_smoothing = e "
             "takes the targets as (1 - e) * labels + e / classes (ids or probabilities); "
             "ignore_index = k (int ids only; k may lie outside the classes, as PyTorch's -100) "
             "leaves out the rows labelled k, from the sum and "
             "from the mean's count (with every row ignored the loss is 0, where PyTorch gives "
             "nan); weight = [w0, w1, ...] (one per class) scales class c's log-probability "
             "by w_c, and the mean over int ids becomes sum(w[y_i] * loss_i) / sum(w[y_i]) "
             "over the kept rows (probabilities keep the plain mean over rows).")


# Keras' and PyTorch's losses and metrics that have no op here, written with ops of the
# predictions `p` and targets `y`: each is checked against PyTorch or numpy in
# tests/test_habits.py (huber and kl_div are ops)
WRITTEN_WITH_OPS = {
    "hinge": "mean(relu(1 - y * p)); y in {-1, 1}",
    "squared_hinge": "mean(relu(1 - y * p) ** 2); y in {-1, 1}",
    "categorical_hinge": "mean(relu(1 + max((1 - y) * p, axis = -1) - sum(y * p, axis = -1))); "
                         "y one-hot",
    "cosine_similarity": "-mean(sum(p * y, axis = -1) / sqrt(sum(p * p, axis = -1) * "
                         "sum(y * y, axis = -1))); Keras' loss, PyTorch's function is the "
                         "per-row value without the minus",
    "poisson": "mean(p - y * log(p + 1e-7))",
    "log_cosh": "mean((p - y) + softplus(-2 * (p - y)) - 0.6931471805599453)",
    "mean_squared_logarithmic_error": "mean((log(p + 1) - log(y + 1)) ** 2)",
    "mean_absolute_percentage_error": "100 * mean(abs((y - p) / clip(abs(y), lo = 1e-7)))",
    "categorical_accuracy": "accuracy(p, argmax(y, axis = -1)); y one-hot",
    "top_k_accuracy": "mean(cast(sum(cast(p > sum(p * one_hot(y, classes), axis = -1, keepdims "
                      "= true), dtype = \"float32\"), axis = -1) < k, dtype = \"float32\")); "
                      "y int labels",
    # PyTorch's default log_input = true: p is the log-rate (log_input = false is poisson)
    "poisson_nll_loss": "mean(exp(p) - y * p); p the log-rate (PyTorch's log_input = true)",
    # torchvision's sigmoid_focal_loss (alpha 0.25, gamma 2, reduction "mean"), p logits
    "focal_loss": "mean((0.25 * y + 0.75 * (1 - y)) * (softplus(p) - y * p) * (1 - (sigmoid(p) "
                  "* y + (1 - sigmoid(p)) * (1 - y))) ** 2); p logits, y in {0, 1}; Keras' "
                  "BinaryFocalCrossentropy leaves out the alpha factor (0.25 * y + 0.75 * (1 - y)) "
                  "unless apply_class_balancing = true",
    "dice": "1 - 2 * sum(p * y) / (sum(p) + sum(y) + 1e-7); p probabilities, over the whole "
            "batch (Keras' Dice)",
    "rmse": "sqrt(mse(p, y)); as a metric that is the mean of each batch's root, not the mean of "
            "the whole set's root (Keras' RootMeanSquaredError): watch mse and take its root",
    "r2": "1 - sum((y - p) ** 2) / sum((y - mean(y)) ** 2); of one batch only: a metric here is "
          "a mean over batches, which R2 is not, so compute it from `nnlang predict`'s outputs",
}
for _other, _ours in (("logcosh", "log_cosh"), ("msle", "mean_squared_logarithmic_error"),
                      ("mape", "mean_absolute_percentage_error"),
                      ("CategoricalHinge", "categorical_hinge"), ("Hinge", "hinge"),
                      ("CosineSimilarity", "cosine_similarity"), ("Poisson", "poisson"),
                      ("LogCosh", "log_cosh"),
                      ("top_k_categorical_accuracy", "top_k_accuracy"),
                      ("sparse_top_k_categorical_accuracy", "top_k_accuracy"),
                      ("SparseTopKCategoricalAccuracy", "top_k_accuracy"),
                      ("CategoricalAccuracy", "categorical_accuracy"),
                      ("PoissonNLLLoss", "poisson_nll_loss"), ("sigmoid_focal_loss", "focal_loss"),
                      ("binary_focal_crossentropy", "focal_loss"),
                      ("BinaryFocalCrossentropy", "focal_loss"), ("dice_loss", "dice"),
                      ("Dice", "dice"), ("RootMeanSquaredError", "rmse"),
                      ("root_mean_squared_error", "rmse"), ("R2Score", "r2"),
                      ("r2_score", "r2")):
    WRITTEN_WITH_OPS[_other] = WRITTEN_WITH_OPS[_ours]
