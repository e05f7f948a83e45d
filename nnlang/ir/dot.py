"""Graph to Graphviz DOT text (`nnlang graph`): nodes show op and value name, edges show shapes,
block/layer paths become nested clusters, and `depth` collapses everything below a path prefix
into one box.

Two hooks serve later stages: `roles` keeps only nodes of those roles (`{"fwd", "bwd"}` for
`--backward`), and `cluster_of` maps a node to a group name (a fused kernel for `--fused`), which
then replaces the path clusters.
"""
from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from numbers import Integral
from pathlib import Path
from typing import Callable

from nnlang.errors import NNError
from nnlang.files import write_atomic
from nnlang.ir.dims import fmt_shape, with_dtype
from nnlang.ir.graph import Graph, Node, folded_calls, weight_users

HIDDEN_BY_DEFAULT = ("param", "const")

_STYLE = {
    "input": 'shape=ellipse, style=filled, fillcolor="#d8f0d8"',
    "layer": 'shape=box, style="rounded,filled", fillcolor="#dce8f8"',
    "op": 'shape=box, style=rounded',
    "param": 'shape=note, fontsize=9, color=gray40',
    "const": 'shape=plain, fontsize=9',
    "box": 'shape=box3d, style=filled, fillcolor="#eeeeee"',
    "bwd": 'shape=box, style="rounded,filled", fillcolor="#f8e0e0"',
    "optim": 'shape=box, style="rounded,filled", fillcolor="#f8f0d0"',
}


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split(".") if p) if path else ()


def to_dot(g: Graph, depth: int | None = None, roles=None, show_params: bool = False,
           cluster_of: Callable[[Node], str | None] | dict | None = None,
           title: str | None = None) -> str:
    """DOT text of `g`.

    depth: a path prefix of `depth` components that has anything below it is drawn as one box.
    roles: only nodes with these roles (None: all). show_params: draw param and const leaves.
    cluster_of: node -> group name (or a dict node id -> name); groups replace path clusters.
    """
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, Integral)
                              or depth < 1):
        raise NNError(f"depth {depth!r}: it must be a whole number of at least 1",
                      hint="depth 1 draws only the top-level blocks and layers as boxes")
    group = cluster_of.get if isinstance(cluster_of, dict) else cluster_of
    nodes = [g.node(n) for n in g.topo()]
    # NOTE: a call the graph holds as several nodes (`folded_calls`: several results, a user
    # scan) is drawn as one: its inputs' edges enter it and each result's edge leaves it
    packed, folded = folded_calls(g)
    nodes = [n for n in nodes if n.id not in folded]
    nodes = [n for n in nodes if (roles is None or n.role in roles)
             and (show_params or n.op not in HIDDEN_BY_DEFAULT)]
    kept = {n.id for n in nodes}
    # NOTE: a shared scan's owner has no path: it is named by its results, as in `nnlang check`
    shares = {n: g.node(o).path or ", ".join(g.node(p).name or "" for p in packed.get(o, ()))
              for n, o in weight_users(g)[1].items()}
    results: dict[int, str] = {}
    for kind, table in (("output", g.outputs), ("loss", g.losses), ("metric", g.metrics)):
        for k, v in table.items():
            v = folded.get(v, v)   # NOTE: a result of a folded call marks the call
            results[v] = f"{results[v]}, {kind} {k}" if v in results else f"{kind} {k}"

    # which drawn item stands for each node: itself, or the box of its collapsed prefix
    boxed: set[tuple] = set()
    if depth is not None and group is None:
        boxed = {_parts(n.path)[:depth] for n in nodes if len(_parts(n.path)) > depth}
    rep: dict[int, str] = {}
    box_count: dict[str, tuple[tuple, int, int]] = {}  # box id -> (prefix, ops, weights)
    for n in nodes:
        key = _parts(n.path)[:depth] if depth is not None else None
        if key is not None and key in boxed:
            rep[n.id] = f"box{sorted(boxed).index(key)}"
            _, ops, weights = box_count.get(rep[n.id], (key, 0, 0))
            # NOTE: --params draws weights and constants into the box: they are not its ops
            box_count[rep[n.id]] = (key, ops + (n.op not in HIDDEN_BY_DEFAULT),
                                    weights + (n.op == "param"))
        else:
            rep[n.id] = f"n{n.id}"

    # each drawn item's cluster: a group name, or its path, so a layer's ops (a dense and
    # the relu piped after it) share one box
    def cluster(n: Node) -> tuple:
        if group is not None:
            name = group(n) if not isinstance(cluster_of, dict) else group(n.id)
            return (name,) if name else ()
        parts = _parts(n.path)
        return parts[:depth - 1] if rep[n.id] in box_count else parts

    placed: list[tuple[tuple, Node]] = []
    drawn: set[str] = set()
    for n in nodes:
        if rep[n.id] not in drawn:
            drawn.add(rep[n.id])
            placed.append((cluster(n), n))
    if group is None:
        # NOTE: a path that holds one item (a lone op, a layer of one node, a collapsed box)
        # draws no box around it: the item moves up to the nearest path holding more
        held: dict[tuple, int] = defaultdict(int)
        for where, _ in placed:
            for k in range(1, len(where) + 1):
                held[where[:k]] += 1
        placed = [(next((where[:k] for k in range(len(where), 0, -1) if held[where[:k]] > 1),
                        ()), n) for where, n in placed]
    tree: dict = {}
    items: dict[tuple, list[str]] = defaultdict(list)
    for where, n in placed:
        t = tree
        for part in where:
            t = t.setdefault(part, {})
        items[where].append(_node_line(g, n, rep[n.id], results, box_count,
                                       [g.node(p).name or "" for p in packed.get(n.id, ())],
                                       shares.get(n.id)))

    lines = ["digraph nnlang {", '  rankdir=TB;', '  node [fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9, color=gray30];']
    if title:
        lines.append(f"  label={_q(title)}; labelloc=t;")
    _emit_clusters(lines, tree, (), items, 1)

    seen_edges: set[tuple] = set()
    for n in (g.node(m) for m in g.topo() if m in kept or folded.get(m) in kept):
        for i in n.inputs:
            src = g.node(i)
            i = folded.get(i, i)
            if i not in kept:
                continue
            a, b = rep[i], rep[folded.get(n.id, n.id)]
            # NOTE: two results of one call read by one op (`o + h`) are two edges
            edge = (a, b, src.id if src.id in folded else None)
            if a == b or edge in seen_edges:
                continue
            seen_edges.add(edge)
            lines.append(f"  {a} -> {b} [label={_q(with_dtype(fmt_shape(src.shape), src.dtype))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _is_layer(g: Graph, n: Node) -> bool:
    return any(g.node(i).op == "param" for i in n.inputs)


def _node_line(g: Graph, n: Node, rid: str, results: dict, box_count: dict,
               names: list[str] = (), shares: str | None = None) -> str:
    if rid in box_count:
        key, count, weights = box_count[rid]
        label = f"{'.'.join(key)}\n{count} ops" + (f", {weights} weights" if weights else "")
        return f"{rid} [label={_q(label)}, {_STYLE['box']}];"
    if n.op == "input":
        label = f"input {n.name or n.attrs.get('name')}\n{n.type}"
        style = _STYLE["input"]
    elif n.op in ("param", "const"):
        label = n.attrs.get("name", n.op) if n.op == "param" else "const"
        style = _STYLE[n.op]
    else:
        name = ", ".join(names) if any(names) else \
            n.name or (n.path.rpartition(".")[2] if _is_layer(g, n) else "")
        label = n.op + (f"\n{name}" if name else "") + (f"\n(shares {shares})" if shares else "")
        style = _STYLE.get(n.role) if n.role != "fwd" else None
        style = style or (_STYLE["layer"] if _is_layer(g, n) else _STYLE["op"])
    if n.id in results:
        label += f"\n({results[n.id]})"
        style += ", penwidth=2"
    return f"{rid} [label={_q(label)}, {style}];"


def _emit_clusters(lines: list, tree: dict, prefix: tuple, items: dict, indent: int):
    pad = "  " * indent
    for line in items.get(prefix, []):
        lines.append(pad + line)
    for part, sub in tree.items():
        path = prefix + (part,)
        # NOTE: joined by '.', which no name holds: with '_' the call `a_t` and the block `t`
        # in the call `a` shared one id, and Graphviz draws one id as one subgraph
        cid = "cluster_" + ".".join(map(str, path))
        lines.append(f"{pad}subgraph {_q(cid)} {{")
        lines.append(f"{pad}  label={_q('.'.join(map(str, path)))}; style=rounded; color=gray60;")
        _emit_clusters(lines, sub, path, items, indent + 1)
        lines.append(f"{pad}}}")


class GraphvizMissing(RuntimeError):
    pass


def render(dot_text: str, out: Path) -> Path:
    """Writes `out`: .dot as is; .svg/.png/.pdf through Graphviz's `dot` program. The .dot text
    is always written next to it; raises GraphvizMissing when `dot` is not installed. Both are
    replaced whole (`write_atomic`): a full disk truncated a drawing already there to nothing."""
    out = Path(out)
    kind = out.suffix[1:].lower()   # NOTE: out.SVG is an svg, as a file manager reads it
    dot_path = out if kind == "dot" else out.with_suffix(".dot")
    write_atomic(dot_path, dot_text)
    if kind == "dot":
        return out
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(dot_path)
    proc = subprocess.run([exe, f"-T{kind}", str(dot_path)], capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    write_atomic(out, proc.stdout)
    return out
