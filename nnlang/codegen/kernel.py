"""Backend-neutral description of one fused kernel, built from a fusion group (after `fuse`).

A kernel is a loop nest over `loop_rank` axes (sizes are runtime arguments), loads whose index
maps pin broadcast axes to 0, an SSA list of scalar ops, element stores, and an optional
trailing reduction over some loop axes. Renderers (numba, later CUDA) turn it into source.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nnlang.ir.graph import COUNT, Graph
from nnlang.ops import registry
from nnlang.ops.registry import norm_axes


@dataclass(frozen=True)
class Load:
    arg: str                    # the array argument
    dtype: str
    broadcast: tuple[bool, ...]  # per loop axis: index 0 instead of the loop index


@dataclass(frozen=True)
class ScalarOp:
    out: str                    # SSA name
    op: str                     # nnlang op name; its OpDef.expr is the template
    args: tuple[str, ...]
    dtype: str
    in_dtypes: tuple[str, ...]


@dataclass(frozen=True)
class Reduce:
    op: str                     # sum | max
    axes: tuple[int, ...]       # loop axes reduced; the others index the output
    value: str                  # SSA name reduced
    arg: str                    # output array, indexed by the kept axes (or [0] when none)
    dtype: str


@dataclass
class Kernel:
    name: str
    loop_rank: int
    loads: dict[str, Load]                   # SSA name -> load
    consts: list[tuple[str, object, str]]    # (SSA name, value, dtype), hoisted
    body: list[ScalarOp]
    stores: list[tuple[str, str]]            # (SSA name, output array) at full loop index
    reduce: Reduce | None = None
    header: list[str] = field(default_factory=list)  # one line per graph node computed

    @property
    def args(self) -> list[str]:
        """Argument order: loop sizes, then loads, then outputs (a store into a loaded array,
        an in-place update, takes no argument of its own)."""
        sizes = [f"n{i}" for i in range(self.loop_rank)]
        loads = [ld.arg for ld in self.loads.values()]
        outs = [a for _, a in self.stores if a not in loads] + \
            ([self.reduce.arg] if self.reduce else [])
        return sizes + loads + outs


@dataclass
class Binding:
    """What the runtime passes: loop sizes, node ids per load and per output argument."""
    loop_shape: tuple[int, ...]
    loads: list[int]
    outputs: list[int]
    reduce_out: int | None


def strip_broadcast(g: Graph, nid: int) -> int:
    # NOTE: a broadcast feeding an elementwise op is just an index map, since elementwise ops
    # broadcast their inputs anyway; the load pins the broadcast axes to 0.
    while g.node(nid).op == "broadcast_to":
        nid = g.node(nid).inputs[0]
    return nid


def _scalar_const(g: Graph, nid: int):
    node = g.node(nid)
    # NOTE: a count is loaded, not written into the source: its value changes with the length
    # and the batch, and a literal made every new length compile the kernels of its means
    if node.op == "const" and node.attrs["value"].size == 1 and not node.attrs.get(COUNT):
        return node.attrs["value"].reshape(()).item()
    return None


def build_kernel(g: Graph, members: list[int], outputs: list[int], reduce: int | None,
                 loop_shape: tuple[int, ...], in_place: dict[int, int] | None = None,
                 scalars: frozenset[int] = frozenset()) -> tuple[Kernel, Binding]:
    """`in_place` maps outputs to the loaded node whose array they overwrite: the store goes
    to that load's argument. `scalars` are loads read at index 0 whatever their size (a
    one-element member of a multi-tensor launch, `Group.scalars`).

    NOTE: passing the state array twice (as a load and as a separate output) would be as
    right, but LLVM's runtime overlap check then fails and it runs the scalar loop: an Adam
    update over 268k floats took 616 us instead of 66."""
    in_place = in_place or {}
    given_rank = len(loop_shape)
    loop_shape = tuple(int(d) for d in loop_shape) or (1,)  # a scalar loops once
    rank = len(loop_shape)
    names: dict[int, str] = {}
    loads: dict[str, Load] = {}
    load_ids: list[int] = []
    load_keys: dict[tuple, str] = {}
    consts: list[tuple[str, object, str]] = []
    const_keys: dict[tuple, str] = {}
    body: list[ScalarOp] = []

    def operand(nid: int) -> str:
        if nid in names:
            return names[nid]
        src = strip_broadcast(g, nid)
        if src in names:  # an identity broadcast of a value computed here
            return names[src]
        value = _scalar_const(g, src)
        dtype = g.node(src).dtype
        if value is not None:
            key = (value, dtype)
            if key not in const_keys:
                const_keys[key] = f"c{len(consts)}"
                consts.append((const_keys[key], value, dtype))
            return const_keys[key]
        shape = tuple(int(d) for d in g.node(src).shape)
        if len(shape) > rank:  # a flattened loop (multi_tensor): full-size or a scalar
            shape = (int(np.prod(shape)),)
        # NOTE: an axis the operand lacks is broadcast even where the loop's is 1 long (the
        # same index either way): else the Adam update of a 1-element parameter (a dense
        # layer's one bias) read its scalars as full-size, became a kernel of its own and
        # left the multi-tensor launch, one more cold compile (~0.2-0.3 s)
        added = max(given_rank - len(shape), 0)
        shape = (1,) * (rank - len(shape)) + shape
        bcast = tuple((s == 1 and n != 1) or a < added or src in scalars
                      for a, (s, n) in enumerate(zip(shape, loop_shape)))
        key = (src, bcast)
        if key not in load_keys:
            k = len(loads)
            load_keys[key] = f"a{k}"
            loads[f"a{k}"] = Load(f"in{k}", dtype, bcast)
            load_ids.append(src)
        return load_keys[key]

    header = []
    for nid in members:
        n = g.node(nid)
        line = n.span.label() if n.span else "?"
        header.append(f"{n.op:<12} {n.path or '.'} @{line}")
        if nid == reduce:
            continue
        args = tuple(operand(i) for i in n.inputs)
        in_dtypes = tuple(g.node(i).dtype for i in n.inputs)
        if n.op == "where":
            in_dtypes = in_dtypes[1:]
        names[nid] = f"v{len(body)}"
        body.append(ScalarOp(names[nid], n.op, args, n.dtype, in_dtypes))

    stores, out_ids = [], []
    full = (False,) * rank
    for nid in outputs:
        target = load_keys.get((in_place.get(nid), full))
        if target is not None:
            stores.append((names[nid], loads[target].arg))
        elif nid != reduce:
            stores.append((names[nid], f"out{len(out_ids)}"))
            out_ids.append(nid)
    red = None
    if reduce is not None:
        r = g.node(reduce)
        axes = norm_axes(r.attrs["axes"], len(g.node(r.inputs[0]).shape))
        op = {"reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min"}[r.op]
        red = Reduce(op, axes if g.node(r.inputs[0]).shape else (0,), operand(r.inputs[0]),
                     f"out{len(out_ids)}", r.dtype)
    ops = "_".join(dict.fromkeys(g.node(m).op.replace("reduce_", "") for m in members))
    kernel = Kernel(f"k_{ops[:40]}", rank, loads, consts, body, stores, red, header)
    return kernel, Binding(loop_shape, load_ids, out_ids, reduce)


def is_fusable(op: str) -> bool:
    opdef = registry.get(op)
    return opdef is not None and (opdef.has(registry.ELEMENTWISE) or opdef.has(registry.REDUCE))
