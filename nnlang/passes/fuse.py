"""Fusion: groups elementwise chains and trees, plus at most one trailing reduction, into
kernels (last pass of `optimize`). The graph is unchanged; the groups go in `g.groups`.
Sibling groups whose values meet in one concat (an RNN step's gate gradients) then merge.

Walking consumers before producers, an elementwise node joins the group of its users when it
has the group's loop shape. A value also needed outside that group is stored as an extra
output, unless that would make the groups depend on each other in a cycle. Broadcasts and
views of a group's inputs are index maps (see `codegen/kernel.py`); matmul, index ops and
unfold/fold are never fused: they are library calls or kernels of their own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from nnlang.codegen.kernel import is_fusable
from nnlang.ir.graph import Graph
from nnlang.ops import registry
from nnlang.passes.rewrite import graph_pass, result_ids


# NOTE: numba's compile time grows faster than linearly in a kernel's size: a chain of 200
# relus fused into one forward and one backward kernel took 26 s to compile, 400 took 63 s
# and 2,000 did not finish in minutes. Groups are cut into runs of at most this many ops, which
# render alike and compile once. The shipped models' largest group has 22 ops: their kernels
# do not change.
MAX_GROUP = 64


@dataclass
class Group:
    loop_shape: tuple
    members: list[int] = field(default_factory=list)   # topological order
    outputs: list[int] = field(default_factory=list)   # members whose values are stored
    reduce: int | None = None                          # the trailing reduce node, if any
    # NOTE: only a one-element flattened loop has these (`multi_tensor`): the loads its
    # launch's other members read as scalars, which its own size cannot tell from its tensors
    scalars: frozenset[int] = frozenset()


def _loop_shape(g: Graph, nid: int) -> tuple:
    n = g.node(nid)
    return tuple(g.node(n.inputs[0]).shape) if registry.get(n.op).has(registry.REDUCE) \
        else tuple(n.shape)


def _reaches(g: Graph, starts, targets: set[int], pos: dict, limit: int) -> bool:
    """Is any of `targets` reachable from `starts` through nodes no later than `limit`?"""
    stack, seen = list(starts), set()
    while stack:
        nid = stack.pop()
        if nid in targets:
            return True
        if nid in seen or pos[nid] > limit:
            continue
        seen.add(nid)
        # NOTE: the successor dict, not g.users(): order does not matter here (5x faster)
        stack.extend(g.nx.succ[nid])
    return False


def _acyclic(g: Graph, groups: list[Group]) -> bool:
    where = {m: k for k, grp in enumerate(groups) for m in grp.members}
    key = {n: ("group", where[n]) if n in where else ("node", n) for n in g.nx.nodes}
    dag = nx.DiGraph()
    dag.add_edges_from((key[a], key[b]) for a, b in g.nx.edges() if key[a] != key[b])
    return nx.is_directed_acyclic_graph(dag)


def plan_groups(g: Graph, fuse: bool = True) -> list[Group]:
    """Groups of fusable nodes; with `fuse=False` every fusable node is its own kernel."""
    groups = _plan(g, fuse, side_outputs=True)
    if fuse:
        groups = _merge_readers(g, _merge_siblings(g, groups))
    # NOTE: the local check in _plan can miss a cycle that runs through a third group; without
    # extra outputs a group has one exit and cannot be part of a cycle, so fall back to that.
    groups = groups if _acyclic(g, groups) else _plan(g, fuse, side_outputs=False)
    return [part for grp in groups for part in _cut(g, grp)]


def _cut(g: Graph, grp: Group) -> list[Group]:
    """`grp` as runs of at most MAX_GROUP members in its (topological) order. No cycle can
    form: a path from one run to another through nodes outside the group would have been one
    through the whole group. Each run stores what later runs or the rest of the graph read."""
    if len(grp.members) <= MAX_GROUP:
        return [grp]
    runs = [grp.members[k:k + MAX_GROUP] for k in range(0, len(grp.members), MAX_GROUP)]
    run_of = {m: k for k, run in enumerate(runs) for m in run}
    kept = set(grp.outputs)
    parts = []
    for k, run in enumerate(runs):
        outputs = [m for m in run if m in kept or
                   any(run_of.get(u, k) != k for u in g.users(m))]
        parts.append(Group(grp.loop_shape, run, outputs,
                           grp.reduce if grp.reduce in run else None))
    return parts


def _merge_siblings(g: Graph, groups: list[Group]) -> list[Group]:
    """Groups with one loop shape and no reduction whose values meet in the same concat become
    one kernel when that makes no cycle: the four gate gradients of each LSTM step were four
    launches, each loading the same incoming gradients."""
    merges = _Merges(g, groups)
    for n in g:
        if n.op != "concat":
            continue
        siblings: list[Group] = []
        for i in n.inputs:
            grp = merges.owner.get(i)
            if grp is not None and grp.reduce is None and id(grp) not in merges.gone and \
                    all(grp is not s for s in siblings):
                siblings.append(grp)
        by_shape: dict[tuple, list[Group]] = {}
        for grp in siblings:
            by_shape.setdefault(grp.loop_shape, []).append(grp)
        for same in by_shape.values():
            base = same[0]
            for other in same[1:]:
                if merges.mergeable(base, other):
                    merges.absorb(base, other)
    return merges.remaining(groups)


def _merge_readers(g: Graph, groups: list[Group]) -> list[Group]:
    """A group that reads what another one stores, both with one loop shape and no reduction,
    becomes one kernel with it when that makes no cycle. The walk above puts a value read by
    two groups in one of them only, and the other loads it back: an LSTM backward step's
    forget gate and cell gradient, stored by the cell kernel for a second kernel that only
    multiplies them."""
    merges = _Merges(g, groups)
    for grp in groups:
        if id(grp) in merges.gone or grp.reduce is not None:
            continue
        # NOTE: grp's members as they were: it absorbs groups only here, in its own turn
        for m in list(grp.members):
            for i in g.node(m).inputs:
                src = merges.owner.get(i)
                if src is not None and src is not grp and id(src) not in merges.gone and \
                        src.reduce is None and src.loop_shape == grp.loop_shape and \
                        merges.mergeable(src, grp):
                    merges.absorb(grp, src)
    return merges.remaining(groups)


class _Merges:
    """Groups merging into one another. Each group's member set, last position, stored values
    and readers outside it are kept as sets and updated by each merge; the groups' sorted
    lists are written once at the end. NOTE: rebuilding them at every merge (sorting the
    members, asking the graph for the readers of every stored value) made k siblings merging
    into one group O(k^2): the optimizer's concat of a 128-layer GPT took 10 s, a third of
    planning the whole step."""

    def __init__(self, g: Graph, groups: list[Group]):
        self.g = g
        self.pos = {nid: i for i, nid in enumerate(g.topo())}
        self.results = result_ids(g)
        self.owner = {o: grp for grp in groups for o in grp.outputs}
        self.gone: set[int] = set()
        self._sets: dict[int, tuple] = {}   # id(group) -> (members, outputs, readers outside)
        self._last: dict[int, int] = {}     # id(group) -> its last member's position
        self._merged: list[Group] = []

    def _of(self, grp: Group) -> tuple:
        if id(grp) not in self._sets:
            members, succ = set(grp.members), self.g.nx.succ
            # NOTE: a member read outside the group is one of its outputs (see _plan), so
            # these are the readers of its outputs that are not members
            outside = {u for m in grp.members for u in succ[m] if u not in members}
            self._sets[id(grp)] = (members, set(grp.outputs), outside)
            self._last[id(grp)] = max(self.pos[m] for m in grp.members)
        return self._sets[id(grp)]

    def mergeable(self, a: Group, b: Group) -> bool:
        """One kernel for both would not be a cycle: neither group reaches the other through
        a node outside both (a direct read becomes a value inside the merged kernel)."""
        (a_in, _, a_out), (b_in, _, b_out) = self._of(a), self._of(b)
        return not _reaches(self.g, [u for u in a_out if u not in b_in], b_in, self.pos,
                            self._last[id(b)]) and \
            not _reaches(self.g, [u for u in b_out if u not in a_in], a_in, self.pos,
                         self._last[id(a)])

    def absorb(self, base: Group, other: Group) -> None:
        """`other`'s members join `base`, which stores only what the graph still reads
        outside. NOTE: a value only the other group read is now read inside the kernel:
        stored anyway, it was 5 dead [64, 128] stores a step in the LSTM's backward cell
        kernel."""
        (inside, outputs, outside), (o_in, o_outputs, o_outside) = self._of(base), self._of(other)
        inside |= o_in
        outside |= o_outside
        outside -= inside
        # only the values the other group read, and its own, can have lost their last reader
        # outside; a value that is no longer stored never is again (the group only grows)
        read = {i for m in o_in for i in self.g.node(m).inputs if i in outputs}
        outputs |= o_outputs
        succ = self.g.nx.succ
        for o in read | o_outputs:
            if o not in self.results and all(u in inside for u in succ[o]):
                outputs.discard(o)
        self._last[id(base)] = max(self._last[id(base)], self._last[id(other)])
        for o in o_outputs:   # NOTE: what other stores now, with what it absorbed itself
            self.owner[o] = base
        self.gone.add(id(other))
        self._merged.append(base)

    def remaining(self, groups: list[Group]) -> list[Group]:
        """The groups left, each merged one with its members and outputs in graph order."""
        for grp in self._merged:
            if id(grp) not in self.gone:
                inside, outputs, _ = self._sets[id(grp)]
                grp.members = sorted(inside, key=self.pos.__getitem__)
                grp.outputs = sorted(outputs, key=self.pos.__getitem__)
        return [grp for grp in groups if id(grp) not in self.gone]


def _plan(g: Graph, fuse: bool, side_outputs: bool) -> list[Group]:
    topo = g.topo()
    pos = {nid: i for i, nid in enumerate(topo)}
    results = result_ids(g)
    group_of: dict[int, Group] = {}
    groups: list[Group] = []
    for nid in reversed(topo):
        n = g.node(nid)
        if not is_fusable(n.op):
            continue
        users = g.users(nid)
        target = None
        if fuse and registry.get(n.op).has(registry.ELEMENTWISE):
            candidates = []
            for u in users:
                grp = group_of.get(u)
                if grp is not None and grp.loop_shape == tuple(n.shape) and grp not in candidates:
                    candidates.append(grp)
            for grp in candidates:
                outside = [u for u in users if group_of.get(u) is not grp]
                limit = max(pos[m] for m in grp.members)
                if not outside or (side_outputs and
                                   not _reaches(g, outside, set(grp.members), pos, limit)):
                    target = grp
                    break
        if target is None:
            target = Group(_loop_shape(g, nid))
            groups.append(target)
            if registry.get(n.op).has(registry.REDUCE):
                target.reduce = nid
        target.members.insert(0, nid)
        group_of[nid] = target
        if nid in results or any(group_of.get(u) is not target for u in users):
            target.outputs.insert(0, nid)
    groups.sort(key=lambda grp: pos[grp.members[-1]])
    return groups


@graph_pass
def fuse(g: Graph) -> Graph:
    g.groups = plan_groups(g, fuse=True)
    return g


def format_groups(g: Graph, groups: list[Group]) -> str:
    """The groups as text for `--emit fused`: members with op, path and .nn line."""
    lines = []
    for k, grp in enumerate(groups):
        shape = "x".join(str(d) for d in grp.loop_shape) or "scalar"
        lines.append(f"kernel {k}: loop [{shape}]"
                     f"{' reduce' if grp.reduce is not None else ''} -> "
                     + ", ".join(f"%{o}" for o in grp.outputs))
        for m in grp.members:
            n = g.node(m)
            line = n.span.label() if n.span else "?"
            lines.append(f"  %{m} = {n.op}  # {n.path or '.'} @{line}")
    return "\n".join(lines) + "\n"
