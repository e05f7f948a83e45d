"""Starting a model from another run's weights (`nnlang train --init-from`, `init_from` in the
train section, `nnlang.compile(..., init_from=)`): every parameter whose name and shape match
is copied into a freshly built `Net`; its optimizer state stays fresh."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich import box
from rich.table import Table

from nnlang.data.registry import trained_words
from nnlang.errors import NNError, said_as
from nnlang.files import as_path
from nnlang.frontend.train_config import setting_span
from nnlang.ir.dims import fmt_shape
from nnlang.ops.optim import OPTIMIZER_PREFIX
from nnlang.train import checkpoint
from nnlang.train.progress import say


@dataclass
class InitReport:
    """What `init_from` did: `loaded` and `fresh` (kept their initializer) are this model's
    parameters, `skipped` the checkpoint's unused ones with why."""
    source: Path
    loaded: list = field(default_factory=list)    # (name, shape)
    skipped: list = field(default_factory=list)   # (name, shape, why)
    fresh: list = field(default_factory=list)     # (name, shape)
    # NOTE: of `fresh`, those frozen (trainable = false): they keep their random initial values
    # for the whole run, most likely a layer renamed since the checkpoint was trained
    frozen_fresh: list = field(default_factory=list)

    def table(self) -> Table:
        t = Table(title=f"weights from {self.source}: {len(self.loaded)} loaded, "
                        f"{len(self.skipped)} skipped, {len(self.fresh)} fresh (kept their "
                        "initializer)", box=box.SIMPLE_HEAD, title_justify="left")
        for col in ("parameter", "shape", "status"):
            t.add_column(col)
        # NOTE: a parameter of another shape is both: the checkpoint's skipped, ours fresh
        theirs = {n: s for n, s, _ in self.skipped}
        ours = {n for n, _ in self.fresh}
        rows = [(n, s, "loaded") for n, s in self.loaded]
        rows += [(n, s, f"skipped: {why}") for n, s, why in self.skipped if n not in ours]
        rows += [(n, s, (f"fresh; the checkpoint's {fmt_shape(theirs[n])} skipped (another "
                         "shape)" if n in theirs else "fresh (not in the checkpoint)")
                  + (", frozen: never trained" if n in self.frozen_fresh else ""))
                 for n, s in self.fresh]
        for name, shape, status in rows:
            t.add_row(name, fmt_shape(shape), status)
        return t


def resolve_source(source, what: str, base_dir: Path | None = None) -> Path:
    """The checkpoint file `source` names (a .npz, or a run directory: its best.npz when it
    kept one, as eval, predict and export take, else its checkpoint.npz); a relative path from
    the train section is looked up beside the .nn file first."""
    path = as_path(source, what,
                   "a run directory (runs/<model>-<time>/) or a checkpoint .npz")
    if base_dir is not None and not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    if path.is_dir():
        best = path / checkpoint.BEST
        path = best if best.is_file() else path / checkpoint.FILENAME
    if not path.is_file():
        raise NNError(f"{what}: no checkpoint at {path}",
                      hint="pass a run directory (runs/<model>-<time>/) or a checkpoint .npz")
    return path


def _load(source, what: str, base_dir: Path | None):
    path = resolve_source(source, what, base_dir)
    try:
        return path, checkpoint.load(path)
    except NNError as err:
        raise NNError(f"{what}: {err.message}", hint=err.hint) from None


def init_from(net, source, skip_mismatch: bool = False, what: str = "--init-from",
              base_dir: Path | None = None) -> InitReport:
    """Copies the parameters of checkpoint `source` that `net` has by name and shape into it.
    A shape mismatch is an error unless `skip_mismatch`; no parameter in common always is."""
    path, ckpt = _load(source, what, base_dir)
    ours = net.parameters()
    # NOTE: the optimizer's own state (moments, step count) never carries over to a new run
    theirs = {k: v for k, v in ckpt.state.items() if not k.startswith(OPTIMIZER_PREFIX)}
    report = InitReport(path)
    # NOTE: every parameter of another shape in one error, so a user meets them all at once
    other = [f"parameter '{n}' is {fmt_shape(v.shape)} there but {fmt_shape(ours[n].shape)} "
             "in this model" for n, v in theirs.items() if n in ours and v.shape != ours[n].shape]
    if other and not skip_mismatch:
        raise NNError(f"{what}: in {path}, " + "; ".join(other),
                      hint="pass " + said_as("--init-skip-mismatch", "init_skip_mismatch=True")
                           + " to keep this model's own initial values for "
                           + ("it" if len(other) == 1 else "them"))
    matched = {}
    for name, value in theirs.items():
        if name not in ours:
            report.skipped.append((name, value.shape, "not in this model"))
        elif value.shape != ours[name].shape:
            report.skipped.append((name, value.shape,
                                   f"shape differs from this model's "
                                   f"{fmt_shape(ours[name].shape)}"))
        else:
            matched[name] = value
            report.loaded.append((name, value.shape))
    report.fresh = [(n, v.shape) for n, v in ours.items() if n not in matched]
    untrained = [n for n, _ in report.fresh
                 if not net.user.node(net.user.params[n]).attrs.get("trainable", True)]
    report.frozen_fresh = [n for n in untrained if n not in _overwritten(net)] \
        if untrained else []
    if not matched:
        raise NNError(f"{what}: no parameter of {path} matches this model by name and shape "
                      f"(the checkpoint has {', '.join(list(theirs)[:4]) or 'none'}"
                      f"{', ...' if len(theirs) > 4 else ''}; this model has "
                      f"{', '.join(list(ours)[:4])}{', ...' if len(ours) > 4 else ''})",
                      hint="was it trained from another model? layers match by their block "
                           "path, as `nnlang check` prints it")
    net.load_state_dict(matched, strict=False)
    return report


def _overwritten(net) -> set:
    """The weights no gradient trains that the training step still overwrites (batch norm's
    running statistics): not frozen, though `trainable` is false on them as on a frozen one.
    NOTE: a new batch_norm layer in a fine-tuned model was reported "frozen: never trained",
    with a warning that its statistics would keep their initial values all run."""
    from nnlang.passes.decompose import decompose
    from nnlang.passes.pipeline import specialize
    return set(decompose(specialize(net.user, net.batch, net.dtype, net.lengths),
                         training=True).updates)


def _source(program, cfg, flag, resumed: bool, file):
    """(checkpoint to start from or None, how the user named it, the folder a relative
    train-section path is read from)."""
    source = flag if flag is not None else (None if resumed else cfg.init_from)
    if flag is not None:
        what = said_as("--init-from", "init_from")
    elif _from_file(program, cfg):
        what = "init_from (train section)"
    else:  # NOTE: as other train settings from flags are named (TrainConfig.__post_init__)
        what = "init_from (given by --set init_from=...)"
    # NOTE: only the file's own value is read beside the file; --set's is typed in the shell,
    # so it is read from the current folder as --init-from's is
    base = Path(file).parent if what == "init_from (train section)" and \
        file not in (None, "<string>") else None
    return source, what, base


def _from_file(program, cfg) -> bool:
    """Whether `cfg.init_from` is the train section's own value (not one from --set)."""
    train = getattr(program, "train", None)
    return train is not None and train.init_from == cfg.init_from


@contextmanager
def _at_setting(program, cfg, flag):
    """An error about the checkpoint the train section's own `init_from` names points at that
    setting's line, as the section's other settings' errors do (not one from --init-from or
    --set init_from=..., which the source does not hold)."""
    try:
        yield
    except NNError as err:
        span = setting_span(program, "init_from") if flag is None and _from_file(program, cfg) \
            else None
        if span is None or err.span is not None or len(err.diagnostics) > 1:
            raise
        raise NNError(err.message, span, hint=err.hint) from None


def from_program(net, source, skip_mismatch: bool = False) -> InitReport | None:
    """`nnlang.compile`'s: the weights of `source` (its `init_from=`), else of the train
    section's own `init_from` (a path beside the .nn file; its errors located at the
    setting), loaded into `net`; None when neither names one."""
    base_source, what, base = _source(net.program, net.config, source, False, net.program.file)
    if base_source is None:
        return None
    with _at_setting(net.program, net.config, source):
        return init_from(net, base_source, skip_mismatch,
                         "init_from" if source is not None else what, base)


def words_to_start_from(program, cfg, flag, resumed: bool, file):
    """(The vocabulary of the checkpoint a new run starts from (None when it starts from none,
    or that run's data had none), that checkpoint (None: none)): text data must be encoded
    with the words its embedding rows stand for, not with a vocabulary built from the new
    data."""
    source, what, base = _source(program, cfg, flag, resumed, file)
    if source is None or (flag is not None and resumed):
        return None, None
    with _at_setting(program, cfg, flag):
        ckpt = _load(source, what, base)[1]
    return trained_words(ckpt.data_meta), ckpt


def start_run(net, cfg, flag, skip_mismatch: bool, resumed: bool, file, console):
    """The trainer's hook on a freshly built `Net`: loads `--init-from` (`flag`) or the train
    section's `init_from` and shows the table; returns the config recording the checkpoint
    used, and the report (None when there was nothing to load)."""
    source, what, base = _source(net.program, cfg, flag, resumed, file)
    if skip_mismatch and source is None:
        skip, flag = said_as("--init-skip-mismatch", "init_skip_mismatch"), \
            said_as("--init-from", "init_from")
        raise NNError(f"{skip} applies to the weights of {flag} (or the train section's "
                      "init_from), and this run loads none",
                      hint=f"pass {flag} RUN too, or leave {skip} out")
    if source is None:
        return cfg, None
    with _at_setting(net.program, cfg, flag):
        report = init_from(net, source, skip_mismatch, what, base)
    console.print(report.table())
    if report.frozen_fresh:
        say(console, f"warning: {', '.join(report.frozen_fresh)} "
                     f"{'is' if len(report.frozen_fresh) == 1 else 'are'} frozen (trainable = "
                     "false) and not loaded, so training keeps their random initial values; "
                     "was the layer renamed since the checkpoint was trained?")
    return replace(cfg, init_from=str(report.source)), report
