"""Optimizers and learning-rate schedules: each one entry with its signature and doc, so the
train section is checked against it; the update rules are appended to the train graph as ops.
"""
from __future__ import annotations

from dataclasses import dataclass

from nnlang.ops.signature import Signature


@dataclass(frozen=True)
class OptimDef:
    name: str
    sig: Signature
    doc: str


OPTIMIZERS = {o.name: o for o in (
    OptimDef("sgd", Signature.parse("lr: float = 0.01, momentum: float = 0.0, "
                                    "nesterov: bool = false, weight_decay: float = 0.0"),
             "SGD with optional (Nesterov) momentum; weight decay is added to the gradient "
             "(torch.optim.SGD)"),
    OptimDef("adam", Signature.parse("lr: float = 0.001, beta1: float = 0.9, "
                                     "beta2: float = 0.999, eps: float = 1e-8, "
                                     "weight_decay: float = 0.0"),
             "Adam with L2 weight decay added to the gradient (torch.optim.Adam)"),
    OptimDef("adamw", Signature.parse("lr: float = 0.001, beta1: float = 0.9, "
                                      "beta2: float = 0.999, eps: float = 1e-8, "
                                      "weight_decay: float = 0.01"),
             "Adam with decoupled weight decay (torch.optim.AdamW)"),
    OptimDef("rmsprop", Signature.parse("lr: float = 0.01, alpha: float = 0.99, "
                                        "eps: float = 1e-8, momentum: float = 0.0, "
                                        "weight_decay: float = 0.0"),
             "RMSprop (torch.optim.RMSprop)"),
)}

SCHEDULES = {o.name: o for o in (
    OptimDef("constant", Signature.parse("warmup: int = 0"), "fixed learning rate"),
    OptimDef("step", Signature.parse("step_size: int, gamma: float = 0.1, warmup: int = 0"),
             "multiply by gamma every step_size epochs"),
    OptimDef("exponential", Signature.parse("gamma: float, warmup: int = 0"),
             "multiply by gamma every epoch"),
    OptimDef("cosine", Signature.parse("warmup: int = 0, min_lr: float = 0.0"),
             "cosine decay from lr to min_lr over the whole run, after a linear warm-up of "
             "`warmup` steps"),
)}
