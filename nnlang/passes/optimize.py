"""The optimizing passes in order (after decompose and autodiff, before schedule/memory).

Each entry can be switched off by name (`--no-fuse` etc.) to compare results or debug.
"""
from __future__ import annotations

from nnlang.errors import NNError
from nnlang.ir.graph import Graph
from nnlang.passes.cse import eliminate_common
from nnlang.passes.dce import eliminate_dead
from nnlang.passes.fold import fold_constants
from nnlang.passes.fuse import fuse
from nnlang.passes.matmul_sum import merge_matmul_sums
from nnlang.passes.shared_pieces import split_shared_pieces

# NOTE: (switch, pass); `split_shared_pieces` only serves concats in place, so it shares
# that switch (whose main part runs after these passes) and runs before fuse (its copies fuse)
PASSES = [("fold", fold_constants), ("cse", eliminate_common),
          ("matmul_sum", merge_matmul_sums), ("dce", eliminate_dead),
          ("concat_in_place", split_shared_pieces), ("fuse", fuse)]
# switches of the steps after these passes (`passes/plan.py`)
LATER = ("multi_tensor", "concat_in_place")
SWITCHES = tuple(dict.fromkeys([name for name, _ in PASSES] + list(LATER)))
# what switching each off does: the help of `nnlang compile --no-<switch>`
SWITCH_HELP = {
    "fold": "Skip constant folding.",
    "cse": "Skip common-subexpression elimination.",
    "matmul_sum": "Keep sums of matmuls (e.g. per-step RNN weight gradients) as they are.",
    "dce": "Skip dead-code elimination.",
    "fuse": "One kernel per op.",
    "multi_tensor": "One launch per tensor for the optimizer update (and other runs of one "
                    "elementwise kernel).",
    "concat_in_place": "Concats copy their inputs instead of each input being stored in its "
                       "slice.",
}
assert set(SWITCH_HELP) == set(SWITCHES), "every switch needs its help text"


def switched_off(disable) -> tuple:
    """The passes `disable` names (one name, or several), each checked against SWITCHES."""
    if disable is None:
        return ()
    if not isinstance(disable, str) and not hasattr(disable, "__iter__"):
        raise NNError(f"disable={disable!r}: the names of passes to switch off",
                      hint=f"e.g. disable=(\"fuse\",); passes: {', '.join(SWITCHES)}")
    names = (disable,) if isinstance(disable, str) else tuple(disable)
    unknown = sorted(set(names) - set(SWITCHES))
    if unknown:
        raise NNError(f"disable: unknown pass(es) {', '.join(map(repr, unknown))}",
                      hint=f"passes that can be switched off: {', '.join(SWITCHES)}")
    return names


def optimize(g: Graph, disable=()) -> Graph:
    disable = switched_off(disable)
    g = g.copy()
    for name, fn in PASSES:
        if name not in disable:
            g = fn(g, inplace=True)
    return g
