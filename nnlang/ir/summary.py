"""The model summary behind `nnlang check`: one row per user-level op with its output shape,
parameter count, forward FLOPs and activation memory, plus totals. Plain data, so the CLI renders
it as a rich table and the golden tests compare its text form.

FLOPs come from each op's `OpDef.flops`; a composite without one is decomposed into primitives
on a scratch graph and their FLOPs are summed (elementwise ops count one per output element,
reductions one per input element, movement and indexing none). A multiply-add counts as 2.
A scan (rnn, lstm, gru, a user's `scan`) counts its whole body once per step (ops/scan.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from nnlang.ir.dims import DEFAULT_BATCH, Sym, bind, fmt_shape, with_dtype
from nnlang.ir.graph import Builder, Graph, Node, folded_calls, op_attrs, slots, weight_users
from nnlang.ops import registry
from nnlang.ops.registry import ELEMENTWISE, REDUCE, TensorType

SOURCE_OPS = ("input", "param", "const")
DTYPE_BYTES = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}


@dataclass
class Row:
    layer: str          # block/layer path, or the value name for ops that own no weights
    op: str
    shape: str          # symbolic output shape, e.g. [batch, 512]
    dtype: str
    params: int         # weights owned by this row (shared weights count at their first use)
    flops: int          # forward FLOPs at the summary's batch size
    memory: int         # bytes of the output activation at the summary's batch size
    line: int = 0       # source line
    shares: str = ""    # the layer whose weights this call uses (`share =`), if another's


@dataclass
class Summary:
    model: str
    file: str
    batch: int
    batch_from: str                  # "train section", "--batch" or "default"
    inputs: list[tuple[str, str]]    # (name, type)
    # NOTE: symbols other than batch (`symbol seq`) have no size here and count as 1 in the
    # FLOPs and memory (`concrete`); the header says so rather than show seq = 1's numbers bare
    unsized: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    param_memory: int = 0
    flops: int = 0
    memory: int = 0
    outputs: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params


def summarize(program, batch: int | None = None) -> Summary:
    """Summary of an elaborated `Program` (from `nnlang.frontend.elaborate.load`)."""
    g: Graph = program.graph
    if batch is not None:
        size, src = batch, "--batch"
    elif program.train is not None:
        size, src = program.train.batch, "train section"
    else:
        size, src = DEFAULT_BATCH, "default"
    env = {"batch": size}
    s = Summary(program.model, program.file, size, src,
                [(k, str(g.node(v).type)) for k, v in g.inputs.items() if not k.startswith("_")])
    s.unsized = sorted({name for v in g.inputs.values() for d in g.node(v).shape
                        if isinstance(d, Sym) for name in d.names} - set(env))
    named = {v: k for table in (g.metrics, g.losses, g.outputs) for k, v in table.items()}
    owner, shares = weight_users(g)  # param id -> first user; shared call -> that user
    order = g.topo()
    for pid in g.params.values():
        p = g.node(pid)
        n = numel_int(p.shape, env)
        s.total_params += n
        s.param_memory += n * DTYPE_BYTES.get(p.dtype, 4)
        if p.attrs.get("trainable", True):
            s.trainable_params += n
    results, folded = folded_calls(g)
    members: dict[int, set[int]] = {}
    for m, call in folded.items():
        members.setdefault(call, set()).add(m)
    labels: dict[int, str] = {}
    for nid in order:
        node = g.node(nid)
        if node.op in SOURCE_OPS or nid in folded:
            continue
        group = {nid, *members.get(nid, ())}
        params = sum(numel_int(g.node(p).shape, env) for p, user in owner.items()
                     if user in group)
        label = layer_label(node, bool(params) or _owns_weights(node), named.get(nid))
        shape, memory = fmt_shape(node.shape), activation_bytes(node.type, env)
        if nid in results:   # NOTE: one call with several results: each result's shape
            parts = [g.node(r) for r in results[nid]]
            shape = ", ".join(fmt_shape(p.shape) for p in parts)
            memory = sum(activation_bytes(p.type, env) for p in parts)
            if all(p.name for p in parts):   # NOTE: named by its results, in its block's path
                scope = node.path.rpartition(".")[0] if _owns_weights(node) else node.path
                label = ", ".join(f"{scope}.{p.name}" if scope else p.name for p in parts)
        row = Row(label, node.op, shape, node.dtype or "?", params,
                  sum(node_flops(g, g.node(m), env) for m in group), memory,
                  node.span.line if node.span else 0)
        if nid in shares:   # NOTE: by the owner's row label (a scan's is its results' names)
            row.shares = labels.get(shares[nid]) or layer_label(g.node(shares[nid]), True)
        labels[nid] = label
        s.rows.append(row)
        s.flops += row.flops
        s.memory += row.memory
    # NOTE: params no op uses (a `param` declared but never read) still count, in their own row
    for pid, p in ((pid, g.node(pid)) for pid in g.params.values() if pid not in owner):
        s.rows.append(Row(p.attrs.get("name", p.path), "param", fmt_shape(p.shape), p.dtype,
                          numel_int(p.shape, env), 0, 0, p.span.line if p.span else 0))
    s.outputs, s.losses, s.metrics = list(g.outputs), list(g.losses), list(g.metrics)
    return s


def _owns_weights(node: Node) -> bool:
    opdef = registry.get(node.op)
    return opdef is not None and opdef.params is not None


def layer_label(node: Node, owns_weights: bool, result: str | None = None) -> str:
    """A layer is named by its weights' path (`enc.0.attn`); other ops by their value name (or
    the name of the loss, metric or output they are)."""
    name = node.name or result
    if owns_weights or not name or node.path.rpartition(".")[2] == name:
        return node.path or name or ""
    return f"{node.path}.{name}" if node.path else name


def concrete(shape, env: dict) -> tuple[int, ...]:
    """Binds symbolic dims with `env`; symbols it doesn't know (e.g. `seq`) count as 1."""
    out = []
    for d in shape:
        d = bind(d, env)
        if isinstance(d, Sym):
            d = d.coeff
        out.append(int(d))
    return tuple(out)


def numel_int(shape, env: dict) -> int:
    n = 1
    for d in concrete(shape, env):
        n *= d
    return n


def activation_bytes(t: TensorType | None, env: dict) -> int:
    return 0 if t is None else numel_int(t.shape, env) * DTYPE_BYTES.get(t.dtype, 4)


def _concrete_type(t: TensorType, env: dict) -> TensorType:
    return TensorType(concrete(t.shape, env), t.dtype)


def node_flops(g: Graph, node: Node, env: dict) -> int:
    """Forward FLOPs of one node at concrete sizes (see the module docstring for the rules)."""
    if node.type is None:
        return 0
    ins = tuple(None if i is None else _concrete_type(g.node(i).type, env)
                for i in slots(g, node))
    attrs = op_attrs(node)
    try:
        return _flops(node.op, ins, _concrete_type(node.type, env), _freeze(attrs))
    except Exception:  # NOTE: a summary must not fail on an op's FLOP rule; report 0 instead
        return 0


def op_flops(op: str, ins, out: TensorType, **attrs) -> int:
    """Forward FLOPs of one call of `op` at concrete types: its `flops` rule, or what its
    decomposition runs."""
    return _flops(op, tuple(ins), out, _freeze(attrs))


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return ("__list__",) + tuple(_freeze(x) for x in v)
    if isinstance(v, tuple):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v):
    if isinstance(v, tuple) and v[:1] == ("__list__",):
        return [_thaw(x) for x in v[1:]]
    if isinstance(v, tuple):
        return tuple(_thaw(x) for x in v)
    return v


@lru_cache(maxsize=4096)
def _flops(op: str, ins: tuple, out: TensorType, frozen_attrs: tuple) -> int:
    opdef = registry.get(op)
    attrs = {k: _thaw(v) for k, v in frozen_attrs}
    present = [t for t in ins if t is not None]
    if opdef is None or opdef.has(registry.SOURCE):
        return 0
    if opdef.flops is not None:
        try:
            return int(opdef.flops(present, out, **attrs))
        except TypeError:
            return int(opdef.flops(present, out))
    if opdef.is_composite:
        return _composite_flops(opdef, ins, attrs)
    if opdef.has(ELEMENTWISE):
        return numel_int(out.shape, {})
    if opdef.has(REDUCE):
        return numel_int(present[0].shape, {})
    return 0


def _composite_flops(opdef, ins: tuple, attrs: dict) -> int:
    # NOTE: one level of decomposition; a composite inside it counts through `_flops` again,
    # so the summary needs no pass (it sits below them)
    scratch = Graph()
    b = Builder(scratch)
    ids = [None if t is None else
           scratch.add_node("input", [], {"name": f"x{i}", "dtype": t.dtype,
                                          "shape": list(t.shape)}, t)
           for i, t in enumerate(ins)]
    b.training = False
    out = opdef.decompose(b, *ids, **attrs)
    scratch.outputs["y"] = out
    total = 0
    for n in scratch:
        if n.op in SOURCE_OPS or n.type is None:
            continue
        sub = tuple(None if i is None else scratch.node(i).type for i in slots(scratch, n))
        total += _flops(n.op, sub, n.type, _freeze(op_attrs(n)))
    return total


# *** text form (golden files, plain terminals) ***

def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes with unit='B' -> '4.71 MiB'."""
    if unit == "B":
        for suffix, k in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20),
                          ("KiB", 2**10)):
            if n >= k:
                return f"{n / k:.2f} {suffix}"
        return f"{int(n)} B"
    for suffix, k in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= k:
            return f"{n / k:.2f}{suffix}"
    return str(int(n))


HEADERS = ("Layer", "Op", "Output shape", "Params", "FLOPs", "Memory")


def table_cells(s: Summary) -> list[tuple[str, ...]]:
    return [(r.layer or "·", r.op, with_dtype(r.shape, r.dtype),
             f"{r.params:,}" if r.params else f"0 (shares {r.shares})" if r.shares else "",
             human(r.flops) if r.flops else "",
             human(r.memory, "B") if r.memory else "") for r in s.rows]


def cut_rows(cells: list, most: int) -> tuple[list, int, list]:
    """(first rows, how many are left out, last rows) of a table drawn with at most `most` rows
    (0: all). NOTE: a 66,000-statement file spent 27 of its 39 s in `nnlang check` drawing its
    table; no one reads that many rows, and the ends show where a model starts and finishes."""
    if not most or len(cells) <= most:
        return cells, 0, []
    head = (most + 1) // 2
    tail = most - head
    return cells[:head], len(cells) - most, cells[len(cells) - tail:] if tail else []


def header_lines(s: Summary) -> list[str]:
    ins = ", ".join(f"{n}: {t}" for n, t in s.inputs) or "none"
    return [f"model {s.model} ({s.file})", f"inputs: {ins}",
            f"sizes at batch = {s.batch} ({s.batch_from})"
            + "".join(f", {name} = 1 (a symbol without a size)" for name in s.unsized)]


def total_lines(s: Summary) -> list[str]:
    out = [f"Total params: {s.total_params:,} ({human(s.param_memory, 'B')})",
           f"Trainable params: {s.trainable_params:,}",
           f"Non-trainable params: {s.non_trainable_params:,}",
           f"Forward FLOPs: {s.flops:,} ({human(s.flops)})",
           f"Activation memory: {human(s.memory, 'B')}"]
    for title, names in (("outputs", s.outputs), ("losses", s.losses), ("metrics", s.metrics)):
        if names:
            out.append(f"{title}: {', '.join(names)}")
    return out


def render_text(s: Summary) -> str:
    """The summary as plain fixed-width text (what the golden files hold)."""
    cells = table_cells(s)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(HEADERS)]
    right = {3, 4, 5}

    def line(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(line(HEADERS))
    body = [line(HEADERS), rule, *(line(c) for c in cells), rule]
    return "\n".join(header_lines(s) + [""] + body + total_lines(s)) + "\n"


# *** memory ***

@dataclass
class MemoryNeed:
    """Bytes a model needs at one batch size. Weights, gradients and optimizer state are exact;
    activations count every user-level op's output (twice in training, for backward), which
    overstates what fused executables keep."""
    params: int
    gradients: int
    optimizer: int
    activations: int
    batch: int
    largest: tuple[str, tuple, object] | None = None  # (weight name, shape, span)

    @property
    def total(self) -> int:
        return self.params + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = [f"weights {human(self.params, 'B')}"]
        if self.gradients:
            parts.append(f"gradients {human(self.gradients, 'B')}")
        if self.optimizer:
            parts.append(f"optimizer state {human(self.optimizer, 'B')}")
        if self.activations:
            parts.append(f"activations {human(self.activations, 'B')} at batch {self.batch}")
        return f"about {human(self.total, 'B')} ({', '.join(parts)})"


def memory_need(graph: Graph, batch: int, dtype: str | None = None, optimizer_slots: int = 0,
                training: bool = True) -> MemoryNeed:
    """What `graph` needs: float weights in `dtype` (default: as declared); in training also
    their gradients, `optimizer_slots` state tensors each, and activations kept for backward."""
    env = {"batch": batch}
    params, trained, largest, biggest = 0, 0, None, -1
    for name, pid in graph.params.items():
        p = graph.node(pid)
        size = numel_int(p.shape, env)
        own = p.dtype if dtype is None or not registry.is_float(p.dtype) else dtype
        params += size * DTYPE_BYTES.get(own, 4)
        if p.attrs.get("trainable", True) and registry.is_float(p.dtype):
            trained += size * DTYPE_BYTES.get(own, 4)   # NOTE: a frozen weight has no gradient
        if size > biggest:
            biggest, largest = size, (name, tuple(p.shape), p.span)
    activations = sum(activation_bytes(n.type, env) for n in graph
                      if n.op not in SOURCE_OPS and n.type is not None)
    if not training:
        return MemoryNeed(params, 0, 0, activations, batch, largest)
    return MemoryNeed(params, trained, trained * optimizer_slots, 2 * activations, batch,
                      largest)


_MEMINFO = "/proc/meminfo"
_CGROUP = "/sys/fs/cgroup"
_SELF_CGROUP = "/proc/self/cgroup"
# (limit, usage, the memory.stat key of reclaimable page cache, swap limit, swap usage) in
# cgroup v2 and v1; v1's swap files count memory and swap together
_CGROUP_FILES = (("memory.max", "memory.current", "inactive_file", "memory.swap.max",
                  "memory.swap.current"),
                 ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file",
                  "memory.memsw.limit_in_bytes", "memory.memsw.usage_in_bytes"))


class HostMemory(NamedTuple):
    """What `machine_memory` found: bytes of RAM in all and available; `limit_file`: the cgroup
    file whose limit bounds them ("" where the machine's own memory does); `swap`: bytes of
    swap this process may still use besides."""
    total: int
    available: int
    limit_file: str = ""
    swap: int = 0

    def describe(self, held: int = 0) -> str:
        """"this machine has X of memory available (Y in all)", or the container's limit's
        words where that is what bounds it; `held`: bytes counted as available besides."""
        where = f"this container's memory limit ({self.limit_file}) leaves" if self.limit_file \
            else "this machine has"
        return (f"{where} {human(self.available + held, 'B')} of memory available "
                f"({human(self.total, 'B')} in all)")


def machine_memory() -> HostMemory | None:
    """RAM on this machine, or None where the system cannot say; within a cgroup's memory limit
    (a container's, a systemd slice's) where that is lower.
    NOTE: /proc/meminfo shows the host's memory inside a container: a container limited to
    4 GiB on a 64 GiB host is killed by the out-of-memory killer at its limit, long before
    MemAvailable says the memory is gone."""
    have = _meminfo()
    limit = _cgroup_memory()
    if have is None or limit is None:
        return have
    total, swap = min(have.total, limit.total), min(have.swap, limit.swap)
    if limit.available < have.available:
        return HostMemory(total, limit.available, limit.limit_file, swap)
    return HostMemory(total, have.available, "", swap)


def _meminfo() -> HostMemory | None:
    try:
        with open(_MEMINFO) as f:
            info = {k: int(v.split()[0]) * 1024 for k, v in
                    (line.split(":", 1) for line in f if ":" in line)}
        return HostMemory(info["MemTotal"], info.get("MemAvailable", info["MemTotal"]), "",
                          info.get("SwapFree", 0))
    except (OSError, KeyError, ValueError):
        pass
    try:
        import os
        page = os.sysconf("SC_PAGE_SIZE")
        return HostMemory(os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page)
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_memory() -> HostMemory | None:
    """The tightest memory limit on this process's cgroup and its parents: (limit, limit -
    usage, its file, the swap it still allows), usage without the reclaimable page cache
    (inactive files, as `docker stats` counts it); None where no limit is set or cgroups
    cannot be read. A cgroup without swap accounting (no swap file) may swap freely."""
    from pathlib import Path

    dirs = []
    try:
        for line in Path(_SELF_CGROUP).read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers in ("", "memory") or "memory" in controllers.split(","):
                # v2 (controllers "") lives at the mount's root, v1 under memory/
                root = Path(_CGROUP) / ("memory" if controllers else "")
                parts = [p for p in path.split("/") if p]
                dirs += [root.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]
    except (OSError, ValueError):
        pass
    dirs += [Path(_CGROUP), Path(_CGROUP) / "memory"]   # a container's own cgroup namespace
    best, swap = None, 1 << 62
    for d in dict.fromkeys(dirs):
        for v1, (limit_file, usage_file, cache_key, swap_file, swapped_file) in \
                enumerate(_CGROUP_FILES):
            try:
                text = (d / limit_file).read_text().strip()
                if text == "max" or int(text) >= 1 << 60:   # v1 writes "no limit" as ~2**63
                    limit = None
                else:
                    limit, used = int(text), int((d / usage_file).read_text())
                    for line in (d / "memory.stat").read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == cache_key:
                            used -= int(value)
            except (OSError, ValueError):
                continue
            try:
                text = (d / swap_file).read_text().strip()
                if text != "max" and int(text) < 1 << 60:
                    left = int(text) - int((d / swapped_file).read_text())
                    if v1 and limit is not None:   # memsw: memory and swap together
                        left -= max(limit - max(used, 0), 0)
                    swap = min(swap, max(left, 0))
            except (OSError, ValueError):
                pass
            if limit is None:
                continue
            free = max(limit - max(used, 0), 0)
            if best is None or free < best[1]:
                best = (limit, free, limit_file)
    if best is None and swap < 1 << 62:   # a swap limit alone (memory.swap.max = 0)
        best = (1 << 62, 1 << 62, "")
    return None if best is None else HostMemory(*best, swap)


# what would make a model's optimizer state smaller (check_memory's and the step's hints)
LESS_STATE = "an optimizer with less state (sgd without momentum keeps none)"


def memory_problem(need: MemoryNeed, held: int = 0, have: HostMemory | None = None) -> str | None:
    """Why `need` cannot fit in this machine's available memory (None when it can, or when the
    machine's memory is unknown); `held`: bytes of it already allocated, no longer available;
    `have`: `machine_memory()`, where the caller read it already."""
    have = have or machine_memory()
    if have is None or need.total - held <= have.available:
        return None
    return f"this model needs {need.describe()}, but {have.describe(held)}"


def training_memory_problem(program, batch: int) -> str | None:
    """Why training `program` at `batch` (its optimizer's slots included) would not fit in this
    machine's memory, if it would not: what `nnlang check` warns about."""
    from nnlang.ops.optim import OPTIMIZERS

    opt = OPTIMIZERS.get(program.train.optimizer.name) if program.train is not None else None
    slots = len(opt.slots) if opt is not None else 0
    return memory_problem(memory_need(program.graph, batch, "float32", slots))


def check_memory(graph: Graph, batch: int, dtype: str = "float32",
                 optimizer_slots: int | None = None, weights_held: bool = False) -> None:
    """Raises NNError, before anything is allocated, when the weights of `graph` (with
    `optimizer_slots`: also their gradients and optimizer state) do not fit in this machine's
    available memory; the error names the largest weight. `weights_held`: the weights are
    allocated already (a net about to build its training step). Activations are left out: how
    many the executables keep depends on fusion."""
    need = memory_need(graph, batch, dtype, optimizer_slots or 0,
                       training=optimizer_slots is not None)
    need.activations = 0
    held = need.params if weights_held else 0
    have = machine_memory()
    problem = memory_problem(need, held, have)
    if problem is None:
        return
    name, shape, span = need.largest
    hint = (f"the largest weight is {name} {fmt_shape(shape)}; use smaller layers"
            + (f", {LESS_STATE}" if optimizer_slots else "") + ", or a machine with more memory")
    fit_or_swap(need.total - held, have, problem, problem, span, hint)


# NOTE: a net warned about swap once per check (its weights, its training's state, each
# step's values): five warnings of the same news for one build. Within `one_swap_warning`
# the first is said and the rest are not; a refusal is always said.
_SWAP_WARNED: ContextVar[list | None] = ContextVar("swap_warned", default=None)


@contextmanager
def one_swap_warning(said: list):
    """Within it, `fit_or_swap` warns once into `said` (a net's, kept across its builds)."""
    token = _SWAP_WARNED.set(said)
    try:
        yield
    finally:
        _SWAP_WARNED.reset(token)


def fit_or_swap(need: int, have: HostMemory | None, over: str, refused: str, span, hint) -> None:
    """The one swap-or-refuse decision for `need` bytes on `have`: nothing when they fit in
    the memory available, a warning (`over`, at `span`) when swap holds the rest, else an
    NNError (`refused`). NOTE: swap counts, as a warning: PyTorch and Keras refuse nothing,
    and what fits in memory and swap together runs (slowly), so refusing it would stop a run
    that works; only what is past both is certainly killed."""
    from nnlang.errors import NNError, warn

    if have is None or need <= have.available:
        return
    if need <= have.available + have.swap:
        said = _SWAP_WARNED.get()
        if not said:
            warn(f"{over}; it runs in {human(have.swap, 'B')} of swap, slowly", span, hint)
        if said is not None:
            said.append(over)
        return
    raise NNError(refused + (f" and {human(have.swap, 'B')} of swap" if have.swap else ""),
                  span, hint)
