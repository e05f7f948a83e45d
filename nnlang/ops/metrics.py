"""Metric composites: scalar scores in the predictions' float dtype, reported next to the loss.
They are built from comparisons (NONDIFF), so autodiff never walks through them.
"""
from __future__ import annotations

from nnlang.ir.dims import Sym, fmt_shape, is_concrete
from nnlang.ops.losses import (ONE_HOT_IDS_HINT, class_ids_shape, kept_mean, kept_rows,
                               need_ignore_index, need_scores_first)
from nnlang.ops.nn import mean_over, need_float
from nnlang.ops.registry import INT_DTYPES, NONDIFF, Sample, ShapeError, TensorType, register


def _accuracy_shape(logits, labels, *, ignore_index=None):
    need_scores_first("accuracy", logits, labels)
    need_float("accuracy", logits)
    binary = ("for one sigmoid output use binary_accuracy(prob, labels) (threshold = 0 on "
              "logits)")
    if logits.rank >= 1 and logits.shape[-1] == 1:
        # NOTE: the argmax of one column is always 0: the "accuracy" would be the share of
        # label 0, whatever the model says
        raise ShapeError(f"accuracy: scores {fmt_shape(logits.shape)} have 1 class, so their "
                         "argmax is always 0", arg=0, hint=binary)
    if logits.rank >= 1 and logits.shape[-1] == Sym.of("batch"):
        # NOTE: one score per example (a squeezed sigmoid, Keras' binary "accuracy") was
        # refused with the hint that its labels looked one-hot
        raise ShapeError(f"accuracy: scores {fmt_shape(logits.shape)}: the last axis is the "
                         "batch, so the argmax would pick an example, not a class", arg=0,
                         hint=binary)
    rows = logits.shape[:-1]
    if labels.dtype not in INT_DTYPES or rows != labels.shape:
        # NOTE: the hint follows the likely cause; one score per row is the only case where
        # binary_accuracy is the fix.
        if labels.shape == logits.shape:
            hint = ONE_HOT_IDS_HINT
        elif class_ids_shape(logits, labels):
            hint = f"declare the labels as int32{fmt_shape(rows)}"
        else:
            hint = "scores are [batch, classes] or [batch, time, classes]"
        raise ShapeError(f"accuracy: scores {fmt_shape(logits.shape)} need int class ids "
                         f"{fmt_shape(rows)}, got {labels}", arg=1, hint=hint)
    need_ignore_index("accuracy", ignore_index, labels)
    return TensorType((), logits.dtype)


def _accuracy(b, logits, labels, *, ignore_index=None):
    dtype = b.type(logits).dtype
    if is_concrete(b.type(logits).shape[-1:]):
        # NOTE: a computed label past the classes is a miss no prediction can hit, counted
        # silently; torchmetrics raises, and so does this check (fed labels: before the call)
        labels = b.check_ids(labels, depth=b.type(logits).shape[-1], skip=ignore_index,
                             of="accuracy")
    hit = b.cast(b.eq(b.argmax(logits, axis=-1), labels), dtype=dtype)
    if ignore_index is None:
        return mean_over(b, hit)
    # NOTE: the rows cross_entropy(..., ignore_index = k) leaves out, left out here too (of
    # the hits and of the count), as torchmetrics' MulticlassAccuracy(ignore_index = k)
    return kept_mean(b, hit, kept_rows(b, labels, ignore_index, dtype))


register("accuracy", "logits: tensor, labels: tensor, ignore_index: int = none",
         _accuracy_shape, decompose=_accuracy,
         family="metrics", traits={NONDIFF},
         samples=(Sample(((6, 4), (6,)), domain="int:4", dtypes=(None, "int32"), grad=False),
                  Sample(((2, 3, 5), (2, 3)), domain="int:5", dtypes=(None, "int64"),
                         grad=False),
                  Sample(((2, 4, 3), (2, 4)), {"ignore_index": 0}, domain="int:3",
                         dtypes=(None, "int32"), grad=False)),
         doc="fraction of rows whose argmax (of logits or probabilities) equals the int label "
             "(a label outside [0, classes) that is not ignore_index is an error naming it, "
             "as in cross_entropy); "
             "ignore_index = k leaves out the rows labelled k (padding, PyTorch's -100), from "
             "the hits and the count, as cross_entropy's ignore_index and torchmetrics' "
             "(0 when every row is ignored)")


def _binary_accuracy_shape(prob, labels, *, threshold, ignore_index=None):
    need_float("binary_accuracy", prob)
    if prob.shape != labels.shape and prob.shape != labels.shape + (1,):
        raise ShapeError(f"binary_accuracy: predictions {fmt_shape(prob.shape)} and labels "
                         f"{fmt_shape(labels.shape)} differ", arg=1)
    need_ignore_index("binary_accuracy", ignore_index, labels)
    return TensorType((), prob.dtype)


def _binary_accuracy(b, prob, labels, *, threshold, ignore_index=None):
    if b.type(prob).shape != b.type(labels).shape:
        prob = b.reshape(prob, shape=list(b.type(labels).shape))
    dtype = b.type(prob).dtype
    pred = b.gt(prob, b.const(threshold, dtype))
    truth = b.gt(b.cast(labels, dtype=dtype), b.const(0.5, dtype))
    hit = b.cast(b.eq(pred, truth), dtype=dtype)
    if ignore_index is None:
        return mean_over(b, hit)
    # NOTE: torchmetrics' BinaryAccuracy(ignore_index = k): entries labelled k left out
    return kept_mean(b, hit, kept_rows(b, labels, ignore_index, dtype))


register("binary_accuracy", "prob: tensor, labels: tensor, threshold: float = 0.5, "
         "ignore_index: int = none",
         _binary_accuracy_shape, decompose=_binary_accuracy, family="metrics", traits={NONDIFF},
         samples=(Sample(((8,), (8,)), domain="int:2", dtypes=(None, "int32"), grad=False),
                  Sample(((8, 1), (8,)), {"threshold": 0.0}, domain="int:2",
                         dtypes=(None, "float32"), grad=False),
                  Sample(((4, 3), (4, 3)), {"ignore_index": 1}, domain="int:2",
                         dtypes=(None, "int32"), grad=False)),
         doc="fraction where (prob > threshold) agrees with the 0/1 label; use threshold = 0 "
             "on logits. A [batch, 1] prediction matches [batch] labels. ignore_index = k "
             "leaves out the entries labelled k (as torchmetrics' BinaryAccuracy; -100 for "
             "padding), from the hits and the count (0 when every entry is ignored)")
