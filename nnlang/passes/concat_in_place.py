"""Concatenation in place (part of memory planning): a piece of a concat is stored straight
into its slice of the concat's buffer by the step that computes it, so the concat copies
nothing, or only its other inputs.

The unrolled RNNs are what it is for: the LSTM's backward concatenates its four gate
gradients at every one of 200 time steps, then all 200 of those again (and the 200 hidden
states) for the weight-gradient GEMMs (`matmul_sum`), 3.2 ms of a 50 ms step.

A piece qualifies when:
- a kernel step stores it as an element output, or it is itself a concat in place (the
  pieces nest: a gate gradient lives in its step's slice of the whole sequence's);
- it occurs once in the concat and belongs to no other concat;
- it is not a result, a state update written in place, or read by a multi-tensor launch
  (those loop over contiguous vectors);
- every view taken of it is still a view of its slice (a reshape may not be).

Both backends' kernels take their outputs' strides, so a piece is just a strided output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnlang.ir.graph import Graph
from nnlang.passes.rewrite import result_ids
from nnlang.passes.schedule import Step, apply_view, base_of, fake_layout


@dataclass(frozen=True)
class Piece:
    concat: int     # the concat node whose buffer holds this value
    axis: int
    start: int
    stop: int

    def index(self, ndim: int) -> tuple:
        idx = [slice(None)] * ndim
        idx[self.axis] = slice(self.start, self.stop)
        return tuple(idx)


def piece_view(piece: Piece, whole):
    """The piece's array: its slice of the concat's array `whole` (numpy or CuPy)."""
    return whole[piece.index(whole.ndim)]


def _views_hold(g: Graph, views: dict[int, int], nid: int, layout) -> bool:
    """Do all views taken of `nid` (and of those, and so on) still exist over `layout`?"""
    for u in g.users(nid):
        if views.get(u) != nid:
            continue
        try:
            sub = apply_view(g.node(u), layout)
        except ValueError:
            return False
        if not _views_hold(g, views, u, sub):
            return False
    return True


def concat_pieces(g: Graph, steps: list[Step], views: dict[int, int],
                  in_place=()) -> dict[int, Piece]:
    """{value: where it lives in a concat's buffer} for every piece that qualifies."""
    owner = {out: s for s in steps for out in s.outputs}
    multi_reads = {base_of(views, i) for s in steps if s.kind == "multi"
                   for m in s.nodes for i in g.node(m).inputs}
    excluded = {base_of(views, r) for r in result_ids(g)} | set(in_place) | multi_reads
    pieces: dict[int, Piece] = {}
    layouts: dict[int, np.ndarray] = {}

    def layout(nid: int):
        if nid not in layouts:
            p = pieces.get(nid)
            layouts[nid] = piece_view(p, layout(p.concat)) if p else \
                fake_layout(g.node(nid).shape)
        return layouts[nid]

    # NOTE: outermost concats first, so an inner concat knows whether it is a piece itself
    # (and so the true layout its own pieces' views are checked against)
    for step in reversed(steps):
        n = g.node(step.nodes[0])
        if step.kind != "call" or n.op != "concat":
            continue
        axis = n.attrs["axis"] % len(n.shape)
        start = 0
        for i in n.inputs:
            stop = start + int(g.node(i).shape[axis])
            piece = Piece(n.id, axis, start, stop)
            start = stop
            src = owner.get(i)
            if i in views or i in pieces or i in excluded or n.inputs.count(i) > 1 or \
                    src is None or not _writes_slices(g, src, i):
                continue
            if _views_hold(g, views, i, piece_view(piece, layout(n.id))):
                pieces[i] = piece
    return pieces


def _writes_slices(g: Graph, step: Step, nid: int) -> bool:
    """Can `step` store `nid` into a strided slice? Kernels' element outputs can (their stores
    take strides); so can a concat (it copies into slices), and a 2-D GEMM (BLAS takes the
    output's row stride: an LSTM step's z = h @ U lands in its columns of the stacked output,
    where the backward reads it)."""
    if step.kind == "kernel":
        return nid != step.group.reduce
    op = g.node(step.nodes[0]).op
    return step.kind == "call" and (op == "concat" or (op == "matmul" and
                                                       len(g.node(nid).shape) == 2))


def root_of(pieces: dict[int, Piece], nid: int) -> int:
    """The outermost concat whose buffer holds `nid` (itself when it is no piece)."""
    while nid in pieces:
        nid = pieces[nid].concat
    return nid
