"""What `nnlang compile --emit` shows: the user graph, the optimized train graph, its backward
part, the fusion groups and the generated kernel source, so a user can read exactly what runs.
"""
from __future__ import annotations

import time

from nnlang.errors import NNError, with_article
from nnlang.files import as_bool
from nnlang.ir.graph import Graph

EMITS = ("user", "ir", "backward", "fused", "kernels", "summary")
MODES = ("train", "eval", "predict")


def _graph(net, mode: str) -> Graph:
    from nnlang.passes.pipeline import forward_graph, train_graph
    if mode == "train":
        return train_graph(net.user, net.config, net.batch, net.dtype, lengths=net.lengths)
    results = ("outputs",) if mode == "predict" else ("outputs", "losses", "metrics")
    return forward_graph(net.user, net.batch, net.dtype, results, net.lengths)


def _compiled(net, fn: str) -> None:
    """emit and dot read a compiled Net's graphs; a Program or a path is one step short."""
    from nnlang.runtime.net import Net
    if not isinstance(net, Net):
        raise NNError(f"nnlang.{fn} takes a compiled Net, not {with_article(type(net).__name__)}",
                      hint=f"compile it first: nnlang.{fn}(nnlang.compile(model), ...)")


def emit(net, what: str, mode: str | None = None) -> str:
    """The text of one --emit view of a compiled `Net` (see EMITS); `mode` None: train, or
    predict for a model with no loss (which has no train graph)."""
    _compiled(net, "emit")
    if mode is None:  # NOTE: not `mode or`: an empty --mode is an unknown mode, not the default
        mode = "train" if net.user.losses else "predict"
    if what not in EMITS:
        raise NNError(f"unknown --emit '{what}'", hint=f"choose one of: {', '.join(EMITS)}")
    if mode not in MODES:
        raise NNError(f"unknown mode '{mode}'", hint=f"choose one of: {', '.join(MODES)}")
    if what == "user":
        return net.user.dump()
    if what == "summary":  # NOTE: the executable's own (cached) plan: no second optimize
        return _summary(net, mode)
    return specialised(net) + _view(net, what, mode)


def specialised(net) -> str:
    """The header of a view of a model with symbolic lengths: the sizes its shapes are shown
    at, and how to choose others. NOTE: `[32, 16, 3]` for `[batch, seq, 3]` was unsaid (16 is
    DEFAULT_LENGTH, not the model's), and read as a size the model has."""
    if not net.lengths:
        return ""
    return (f"# at batch {net.batch}, {_lengths(net)} (a symbol without a size: shown at this "
            f"length; {' '.join(f'--length {k}=N' for k in net.lengths)} for another)\n")


def _lengths(net) -> str:
    return ", ".join(f"{k} = {v}" for k, v in net.lengths.items())


def _view(net, what: str, mode: str) -> str:
    from nnlang.passes.optimize import optimize
    if what == "kernels":
        return kernel_text(net, _graph(net, mode), mode)
    g = optimize(_graph(net, mode), net.disable)
    if what == "ir":
        return g.dump() + scan_bodies_text(net, g)
    if what == "backward":
        if not net.user.losses:
            from nnlang.passes.pipeline import no_loss
            raise no_loss(net.user, "so it has no backward pass")
        if mode != "train":
            raise NNError(f"--emit backward needs the train graph, not --mode {mode}",
                          hint="drop --mode")
        return ("# the generated backward pass (role bwd) and optimizer update (role optim);\n"
                "# each line ends with the block path and the .nn line it came from\n"
                + g.dump(roles=("bwd", "optim")) + scan_bodies_text(net, g, roles=("bwd",)))
    if "fuse" in net.disable:  # what == "fused"
        return ("# fusion is off (--no-fuse): each op below that computes runs as its own kernel\n"
                + g.dump())
    return fused_text(net, mode)


def _planned_groups(g: Graph, disable) -> tuple[Graph, list]:
    """The executable's own plan of `g` (cached): its graph and kernel groups in run order."""
    from nnlang.passes.plan import plan
    g, steps, _, _ = plan(g, disable)
    return g, [grp for s in steps for grp in s.kernel_groups]


def fused_text(net, mode: str) -> str:
    """The kernel groups as the step runs them (the order of --emit kernels), then each scan
    body's, which run once per time step: what the summary's `kernels` counts."""
    from nnlang.passes.fuse import format_groups
    g, groups = _planned_groups(_graph(net, mode), net.disable)
    return format_groups(g, groups) + "".join(
        head + format_groups(bg, body_groups) for head, bg, body_groups in _bodies(net, g))


def scan_bodies_text(net, g: Graph, roles=None) -> str:
    """Each scan's body (of these roles) as the executable plans it: the loop's one step,
    which the scan's own line only sums up (`body(54 nodes, ...)`); the summary's `nodes`
    counts these. An LSTM's backward cell is here."""
    return "".join(head + bg.dump() for head, bg, _ in _bodies(net, g, roles))


def _bodies(net, g: Graph, roles=None, outer: str = ""):
    """(header, planned body graph, its kernel groups) of each scan of `g` (of these roles), and
    of each scan inside a body after it, headed by the scans it runs in as --emit kernels
    heads them. NOTE: a nested scan's body (a word loop's character loop) was left out."""
    from nnlang.runtime.scan import _body_graph
    for n in g:
        if n.op == "scan" and (roles is None or n.role in roles):
            bg, body_groups = _planned_groups(_body_graph(n), net.disable)
            head = f"{outer}# scan %{n.id}, one step of its body:\n"
            yield head, bg, body_groups
            yield from _bodies(net, bg, None, head)


def _summary(net, mode: str) -> str:
    start = time.perf_counter()
    exe = _cuda_render(net, mode) if net.backend == "cupy" else net._exe(mode, net.batch)[0]
    took = time.perf_counter() - start
    info = exe.summary() if hasattr(exe, "summary") else {}
    rows = [f"model {net.program.model}, mode {mode}, backend {net.backend}, batch {net.batch}"
            + (f", {_lengths(net)} (a symbol without a size: compiled at this length; "
               f"{' '.join(f'--length {k}=N' for k in net.lengths)} for another)"
               if net.lengths else ""),
            f"compile time {took:.2f} s" if net.backend != "cupy" else
            f"render time {took:.2f} s (CUDA sources rendered; NVRTC compiles them on the GPU)"]
    rows += [f"{k}: {v}" for k, v in info.items()]
    return "\n".join(rows) + "\n"


def _cuda_render(net, mode: str, g: Graph | None = None):
    """The CuPy executable of `mode`, built render-only: the same passes, schedule, memory plan
    and kernel sources as the one that runs, and it needs neither CuPy nor a GPU."""
    from nnlang.runtime.executable import compile_graph
    return compile_graph(_graph(net, mode) if g is None else g, "cupy", net.disable,
                         render_only=True)


def kernel_text(net, g: Graph, mode: str) -> str:
    """Generated kernel source, each kernel headed by the nodes and .nn lines it computes."""
    if net.backend == "cupy":
        sources = _cuda_render(net, mode, g).kernel_sources()
    elif net.backend == "numba":
        sources = net._exe(mode, net.batch)[0].kernel_sources()
    else:
        raise NNError(f"the {net.backend} backend generates no kernels",
                      hint="use --backend numba or --backend cupy")
    seen, out = set(), []
    for src in sources:
        out.append(src if src not in seen else src.split("\n", 1)[0] + "  (same as above)\n")
        seen.add(src)
    return "\n".join(out)


def dot(net, backward: bool = False, fused: bool = False, depth: int | None = None,
        show_params: bool = False, title: str | None = None) -> str:
    """DOT text `nnlang graph` writes: the model as written; with `backward` the train graph's
    forward and generated backward side by side; with `fused` the optimized graph with each
    fused kernel drawn as a cluster (a model with no loss: its prediction graph)."""
    from nnlang.ir.dot import to_dot
    _compiled(net, "dot")
    backward, fused, show_params = (as_bool(v, f"dot({k}=...)") for k, v in (
        ("backward", backward), ("fused", fused), ("show_params", show_params)))
    if backward and not net.user.losses:
        from nnlang.passes.pipeline import no_loss
        raise no_loss(net.user, "so it has no backward pass")
    if fused and depth is not None:
        # NOTE: kernels replace the block clusters that --depth collapses, and a kernel may
        # span blocks: refused rather than drawn uncollapsed without a word
        raise NNError("--depth collapses blocks, but --fused draws kernels in their place",
                      hint="drop --depth, or drop --fused to collapse the blocks")
    if not (backward or fused):  # NOTE: the model as written, as `nnlang graph` draws it
        return to_dot(net.user, depth=depth, show_params=show_params, title=title)
    g = _graph(net, "train" if net.user.losses else "predict")
    if not fused:
        return to_dot(g, depth=depth, roles=("fwd", "bwd"), show_params=show_params,
                      title=title)
    # NOTE: numbered as --emit fused numbers them (run order)
    g, groups = _planned_groups(g, net.disable)
    cluster = {m: f"kernel {k}" for k, grp in enumerate(groups) for m in grp.members}
    # NOTE: the train graph's kernels, but without --backward only their forward ops are
    # drawn (a kernel numbers the same in both drawings)
    roles = ("fwd", "bwd", "optim") if backward else ("fwd",)
    return to_dot(g, depth=depth, roles=roles, show_params=show_params, cluster_of=cluster,
                  title=title)
