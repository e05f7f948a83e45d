"""The compiled plan of a primitive graph, the end of the backend-neutral pipeline: optimize ->
schedule -> multi-tensor launches -> memory plan (with concats in place), or the same plan
from the on-disk cache (`plan_cache.py`). Both executables (numba, CuPy) and the CUDA source
listing start here.
"""
from __future__ import annotations

from nnlang.ir.graph import Graph
from nnlang.passes import plan_cache
from nnlang.passes.fuse import plan_groups
from nnlang.passes.memory import plan_memory
from nnlang.passes.multi_tensor import merge_multi_tensor
from nnlang.passes.optimize import optimize
from nnlang.passes.schedule import schedule


def plan(g: Graph, disable=()):
    """optimize -> schedule -> multi-tensor launches -> memory plan, or the same plan from the
    on-disk cache: (optimized graph, steps, views, memory plan)."""
    key = plan_cache.graph_key(g, disable) if plan_cache.enabled() else None
    cached = plan_cache.load(key) if key else None
    if cached is None:
        g = optimize(g, disable)
        groups = g.groups if "fuse" not in disable else None
        if groups is None:
            groups = plan_groups(g, fuse=False)
        steps, views = schedule(g, groups)
        if "multi_tensor" not in disable:
            steps = merge_multi_tensor(g, steps, views)
        memory = plan_memory(g, steps, views, "concat_in_place" not in disable)
        cached = (g, steps, views, memory)
        if key:
            plan_cache.store(key, cached)
    return cached
