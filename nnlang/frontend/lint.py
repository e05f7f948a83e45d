"""Warnings on a checked program: code that runs but is very likely not what was meant (the last
step of elaboration). Each rule names a loss, the argument it reads and the activation that
should not produce that argument (as an op, or as a layer's `activation =`)."""
from __future__ import annotations

from nnlang.errors import Diagnostic
from nnlang.ir.graph import Graph

# (loss op, argument index, producing activation, why, hint)
PRODUCER_RULES = (
    ("cross_entropy", 0, "softmax",
     "cross_entropy takes logits, but its input is already a softmax: the loss applies "
     "softmax again, which flattens the gradient and trains worse",
     "pass the logits: `loss cross_entropy(logits, label)`, and keep "
     "`output probs = softmax(logits)` for predictions"),
    ("bce_with_logits", 0, "sigmoid",
     "bce_with_logits takes logits, but its input is already a sigmoid: the loss applies "
     "sigmoid again",
     "pass the logits to bce_with_logits, or use `bce(prob, target)` on the probability"),
)


# Ops that only move, select or (dropout) scale rows: a softmax's rows stay its rows through
# them as long as the last axis (the one the loss reads as classes) keeps its size, as in a
# sequence model's `reshape(probs, [batch * seq, classes])` before its loss.
ROW_PRESERVING = ("reshape", "flatten", "slice", "squeeze", "unsqueeze", "dropout")


def _producer(g: Graph, nid: int):
    """The node that made the rows `nid` holds: through row-preserving ops."""
    node = g.node(nid)
    while (node.op in ROW_PRESERVING and node.inputs and node.type.shape and
           g.node(node.inputs[0]).type.shape and
           node.type.shape[-1] == g.node(node.inputs[0]).type.shape[-1]):
        node = g.node(node.inputs[0])
    return node


def lint(g: Graph) -> list[Diagnostic]:
    """The warnings for the user-level graph `g`, each at the loss's span."""
    found = []
    for node in g:
        for loss, arg, producer, why, hint in PRODUCER_RULES:
            if node.op != loss or len(node.inputs) <= arg:
                continue
            source = _producer(g, node.inputs[arg])
            if producer in (source.op, source.attrs.get("activation")):
                found.append(Diagnostic(why, node.span, hint, severity="warning"))
    return found
