"""Multi-tensor launches (after `schedule`, before memory planning): consecutive kernel steps
that run the same 1-d elementwise kernel on independent tensors become one step, launched
once over all of them (PyTorch's `foreach` optimizers, apex's multi_tensor_apply).

The optimizer update is the case it is for: every parameter's Adam update is the same kernel
on other arrays, and they are scheduled back to back after the backward pass. Merging before
memory planning makes the planner see all members' reads and writes at one step, so no member
writes a buffer another one reads, and the backend may run the members in any order or split
the combined element range over threads.

A launch's compile time does not grow with its member count: the numba kernel takes a table
of addresses per argument (as the CUDA one takes pointer tables), not a tuple of arrays. Cold
`nnlang compile` of `repeat N { h = dense(h, 8) |> tanh }` + Adam (2N members; 2 shared cores),
N = 10/50/100/250/1000: with tuples 4.0/21/99/>300 s/numba error; now 3.0/3.8/3.9/7.0/17.7 s
(`--no-multi-tensor`: 2.8/4.6/5.1/6.4/17.0 s). Cases: tests/faults/test_scale.py.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from nnlang.codegen.kernel import build_kernel
from nnlang.ir.graph import Graph
from nnlang.passes.fuse import Group
from nnlang.passes.schedule import Step, base_of


def flat_group(g: Graph, step: Step, views: dict[int, int]) -> Group | None:
    """The step's group as a 1-d loop over all its elements, when that computes the same: no
    reduction, and every operand either full-size and contiguous or a single element; None for
    steps that cannot take part."""
    if step.kind != "kernel" or step.group.reduce is not None:
        return None
    grp = step.group
    shape = tuple(int(d) for d in grp.loop_shape)
    _, bind = build_kernel(g, grp.members, grp.outputs, grp.reduce, shape)
    for nid in bind.loads:
        n = g.node(nid)
        if int(np.prod(n.shape, dtype=np.int64)) == 1:
            continue
        if tuple(int(d) for d in n.shape) != shape or not _contiguous(g, nid, views):
            return None
    return replace(grp, loop_shape=(int(np.prod(shape, dtype=np.int64)),))


def _contiguous(g: Graph, nid: int, views: dict[int, int]) -> bool:
    while nid in views:  # NOTE: reshapes, and a step-1 slice of the outermost axis (a
        n = g.node(nid)    # gradient's part of the synced buffer), keep a value contiguous
        outer = n.op == "slice" and n.attrs["axis"] % len(g.node(views[nid]).shape) == 0 \
            and n.attrs.get("step", 1) == 1
        if n.op != "reshape" and not outer:
            return False
        nid = views[nid]
    return True


def kernel_key(g: Graph, grp: Group) -> str:
    """What two groups must share to run as one launch: the kernel up to its loop size (the
    rendered source depends on nothing else)."""
    k, _ = build_kernel(g, grp.members, grp.outputs, grp.reduce, grp.loop_shape,
                        scalars=grp.scalars)
    return repr((k.name, list(k.loads.values()), k.consts, k.body, k.stores))


def as_member(g: Graph, one: Group, like: Group) -> Group | None:
    """`one`, a one-element flat group, as a member of `like`'s launch: its loads at the places
    where `like`'s kernel reads a scalar are marked as scalars; None if it is then another
    kernel. NOTE: its size alone cannot tell its tensors from the scalars broadcast to its
    shape (a `[1]` learning-rate factor beside a `[1]` bias), which read as full-size made
    it a kernel of its own. At one element both read index 0: the values cannot change."""
    if one.loop_shape != (1,) or like.loop_shape == (1,):
        return None
    mine = build_kernel(g, one.members, one.outputs, one.reduce, one.loop_shape)[1].loads
    theirs = build_kernel(g, like.members, like.outputs, like.reduce, like.loop_shape,
                          scalars=like.scalars)[0].loads.values()
    if len(mine) != len(theirs):
        return None
    joined = replace(one, scalars=frozenset(
        nid for nid, ld in zip(mine, theirs) if ld.broadcast[0]))
    return joined if kernel_key(g, joined) == kernel_key(g, like) else None


def merge_multi_tensor(g: Graph, steps: list[Step], views: dict[int, int]) -> list[Step]:
    out: list[Step] = []
    run: list[tuple[Step, Group | None]] = []
    run_key, written = None, set()

    def close():
        if len(run) > 1:
            out.append(Step("multi", [n for s, _ in run for n in s.nodes],
                            [o for s, _ in run for o in s.outputs], None,
                            [flat for _, flat in run]))
        else:
            out.extend(s for s, _ in run)

    for step in steps:
        flat = flat_group(g, step, views)
        key = kernel_key(g, flat) if flat is not None else None
        if key is not None and run_key is not None and key != run_key:
            # NOTE: a member as its own loop, not one that joined: with two one-element
            # members after the rest, the second matched neither and ran on its own
            like = next((f for _, f in run if f.loop_shape != (1,)), run[0][1])
            joined = as_member(g, flat, like)
            if joined is not None:   # a one-element member joins the launch
                flat, key = joined, run_key
            else:                    # or the launch began with such members
                rejoined = [(s, as_member(g, f, flat)) for s, f in run]
                if all(f is not None for _, f in rejoined):
                    run, run_key = rejoined, key
        reads = {base_of(views, i) for m in step.nodes for i in g.node(m).inputs}
        if key is not None and key == run_key and not reads & written:
            run.append((step, flat))
            written.update(step.outputs)
            continue
        close()
        run, run_key, written = [(step, flat)], key, set(step.outputs)
    close()
    return out
