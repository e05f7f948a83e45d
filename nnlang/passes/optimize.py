"""The optimizing passes in order (after decompose and autodiff, before schedule/memory).

Each entry can be switched off by name (`--no-fuse` etc.) to compare results or debug.
"""
from __future__ import annotations

from nnlang.ir.graph import Graph
from nnlang.passes.cse import eliminate_common
from nnlang.passes.dce import eliminate_dead
from nnlang.passes.fold import fold_constants
from nnlang.passes.fuse import fuse
from nnlang.passes.matmul_sum import merge_matmul_sums
from nnlang.passes.shared_pieces import split_shared_pieces

PASSES = [("fold", fold_constants), ("cse", eliminate_common),
          ("matmul_sum", merge_matmul_sums), ("dce", eliminate_dead), ("fuse", fuse)]
# switches of the steps after these passes (`passes/plan.py`)
LATER = ("multi_tensor", "concat_in_place")
SWITCHES = tuple(name for name, _ in PASSES) + LATER


def optimize(g: Graph, disable=()) -> Graph:
    unknown = set(disable) - set(SWITCHES)
    if unknown:
        raise ValueError(f"unknown passes {sorted(unknown)}; known: {', '.join(SWITCHES)}")
    g = g.copy()
    for name, fn in PASSES:
        if name == "fuse" and "concat_in_place" not in disable:
            g = split_shared_pieces(g, inplace=True)   # NOTE: its copies fuse, so before fuse
        if name not in disable:
            g = fn(g, inplace=True)
    return g
