"""Source spans and the one exception type every stage raises.

An `NNError` renders as `file:line:col: error: message`, the source line, a caret under the span
and an optional hint; several errors found in one run travel together in one `NNError`.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0
    source: str | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def source_line(self) -> str | None:
        if self.source is None:
            return None
        # NOTE: "\n" only, as the parser counts lines: splitlines() also breaks at U+2028,
        # form feeds and the like, and every later line would be shown one off
        lines = self.source.split("\n")
        return lines[self.line - 1].rstrip("\r") if 0 < self.line <= len(lines) else None

    def text(self) -> str | None:
        """The source text the span covers, when it lies on one line."""
        line = self.source_line()
        if line is None or self.end_line != self.line or self.end_col <= self.col:
            return None
        return line[self.col - 1:self.end_col - 1]

    def label(self) -> str:
        """What `--emit` writes after an op's `@`: the line of the .nn file, or for a setting
        given outside it (`--set optimizer=sgd`, fit's config) that setting's words, so the
        op is not taken for one of the file's line 1. NOTE: on one line, as a kernel's header
        comment holds it: a shell gives --set a value with newlines in it."""
        if self.file in OUTSIDE and self.source:
            return f"({' '.join(self.source.split())})"
        return str(self.line)


# the files of a span that lies in no .nn file: a --set value's, a Python config's setting's
OUTSIDE = ("<command line>", "<config>")


@dataclass
class Diagnostic:
    message: str
    span: Span | None = None
    hint: str | None = None
    notes: list[tuple[str, Span | None]] = field(default_factory=list)
    severity: str = "error"   # or "warning": reported, but nothing stops
    # NOTE: the block calls that led to a span inside a block's body, innermost first (a
    # traceback's "called from"); not compared, so one mistake a block makes at each of its
    # calls is still reported once, at the first call
    calls: list[tuple[str, Span]] = field(default_factory=list, compare=False)

    def render(self) -> str:
        where = f"{self.span}: " if self.span else ""
        out = [f"{where}{self.severity}: {self.message}"]
        if self.span is not None:
            out += _caret(self.span)
        for text, span in [*self.notes, *self.calls]:
            out.append(f"  note: {text}" + (f" ({span})" if span else ""))
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


_SHOWN = 120  # columns of a long source line shown around the caret


def _caret(span: Span) -> list[str]:
    line = span.source_line()
    if line is None:
        return []
    start = max(span.col - 1, 0)
    end = span.end_col - 1 if span.end_line == span.line and span.end_col > span.col else len(line)
    end = min(end, len(line))
    if len(line) > _SHOWN:  # NOTE: a generated or minified line: a window, marked with "..."
        first = max(0, min(start - 20, len(line) - _SHOWN))
        shown = line[first:first + _SHOWN]
        prefix = "..." if first else ""
        line = prefix + shown + ("..." if first + _SHOWN < len(line) else "")
        start, end = start - first + len(prefix), min(end - first, _SHOWN) + len(prefix)
    # NOTE: one column per character, so the caret stays under it: a tab shows as a space
    line = "".join(ch if ch.isprintable() else " " if ch == "\t" else "?" for ch in line)
    width = max(1, end - start)
    gutter = f"{span.line:>4} | "
    return [gutter + line, " " * (len(gutter) + start) + "^" * width]


class Given(dict):
    """Values by name (`--set NAME=VALUE`) with where each was given: `spans[name]` is the
    (name's span, value's span), so an error about one, found far from where it was read (a
    train setting checked when the config is built), points at it as a parse error does. A
    plain dict (the Python API's) has no spans and gets errors without a place."""

    def __init__(self, values=(), spans: dict | None = None):
        super().__init__(values)
        self.spans = dict(spans or {})


# NOTE: a hint names what its reader sets: a flag (--lr) under the CLI, which enters
# `command_line`; a fit/evaluate setting or argument from Python, where a flag is no help
_COMMAND_LINE: ContextVar[bool] = ContextVar("command_line", default=False)


@contextmanager
def command_line():
    """Within it, `said_as` gives the CLI's words: the nnlang command runs."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def said_as(flag: str, python: str) -> str:
    """`flag` (a CLI flag, `--lr`) under the nnlang command, else `python` (what a Python
    caller passes: fit's `{"lr": ...}`)."""
    return flag if _COMMAND_LINE.get() else python


class NNWarning(UserWarning):
    """A located warning at run time (a step that fits only with swap), its text a rendered
    `Diagnostic` of severity "warning"; the CLI prints it as it prints errors."""


# nnlang's own files: a warning or an error is attributed to the first line outside them.
# NOTE: with the separator: a file beside the folder whose name begins the same (installed,
# site-packages' nnlang_cli; a checkout's nnlang_scratch.py) is not nnlang's
_OURS = os.path.join(os.path.dirname(__file__), "")


def warn(message: str, span: Span | None = None, hint: str | None = None) -> None:
    """Issues an NNWarning rendered like an error (file:line:col, caret, hint), attributed to
    the innermost line outside nnlang, the caller's."""
    # NOTE: a fixed stacklevel named a line of nnlang's own when the warning was raised a few
    # calls deep (net.generate's "fewer sequences" came from runtime/generate.py)
    import sys
    import warnings
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_OURS):
        frame, level = frame.f_back, level + 1
    warnings.warn(Diagnostic(message, span, hint, severity="warning").render(), NNWarning,
                  stacklevel=level)


class NNError(Exception):
    """The error nnlang reports for bad input: one or more diagnostics, each with a span."""

    def __init__(self, message: str | list[Diagnostic], span: Span | None = None,
                 hint: str | None = None):
        if isinstance(message, list):
            self.diagnostics = message
        else:
            self.diagnostics = [Diagnostic(message, span, hint)]
        super().__init__(self.render())

    def __reduce__(self):
        # NOTE: pickle (a multiprocessing worker's error reaching the parent, copy.deepcopy)
        # rebuilt the error by calling the class with its rendering as a new message, which
        # rendered it again ("error: error: ..."); and a subclass's __init__ takes other
        # arguments (DataError's). Restored as it is: its text, then its diagnostics.
        return _restored, (type(self), self.args), self.__dict__

    @property
    def message(self) -> str:
        return self.diagnostics[0].message

    @property
    def span(self) -> Span | None:
        return self.diagnostics[0].span

    @property
    def hint(self) -> str | None:
        return self.diagnostics[0].hint

    def _render_traceback_(self) -> list[str]:
        # NOTE: IPython (a notebook cell, the ipython shell) shows the lines this returns in
        # place of the traceback: 60 lines of nnlang's own frames buried the located message,
        # which is all a model's author needs (as the CLI prints it), and the one line of the
        # caller's code that raised it. NNLANG_DEBUG=1 shows the whole traceback, as in the
        # CLI (raising here instead gave IPython's "Unexpected exception formatting exception").
        return ipython_lines(self, f"{type(self).__name__}: {self}".split("\n"))

    def render(self) -> str:
        body = "\n\n".join(d.render() for d in self.diagnostics)
        errors = sum(d.severity == "error" for d in self.diagnostics)
        if errors > 1:
            body += f"\n\n{errors} errors"
        return body


def ipython_lines(exc: BaseException, lines: list[str]) -> list[str]:
    """What IPython shows for `exc` (its `_render_traceback_`): `lines`, then the caller's line
    that raised it; the whole traceback under NNLANG_DEBUG=1, as in the CLI."""
    import os
    if os.environ.get("NNLANG_DEBUG"):
        import traceback
        return "".join(traceback.format_exception(exc)).rstrip("\n").split("\n")
    caller = _caller(exc.__traceback__)
    return lines + ([f"  raised by: {caller}"] if caller else [])


def _caller(tb) -> str | None:
    """The innermost frame of `tb` in the user's code, as `Cell In[3], line 2: net.fit(...)`
    (an IPython cell; else `file:line: code`): outside nnlang and, where there is such a frame,
    outside Python's library and installed packages. NOTE: an error passed on by
    concurrent.futures (`pool.submit(nnlang.load, ...).result()`) was said to be raised by
    `concurrent/futures/_base.py:401: raise self._exception`, not by the cell's line."""
    import linecache
    import sys
    import sysconfig
    libraries = tuple({p for k in ("stdlib", "platstdlib", "purelib", "platlib")
                       if (p := sysconfig.get_paths().get(k))})
    found = mine = None
    while tb is not None:
        file = tb.tb_frame.f_code.co_filename
        if not file.startswith(_OURS):
            found = (file, tb.tb_lineno)
            if not file.startswith(libraries):
                mine = found
        tb = tb.tb_next
    if (found := mine or found) is None:
        return None
    file, line = found
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    count = getattr(getattr(shell, "compile", None), "_filename_map", {}).get(file)
    where = f"Cell In[{count}], line {line}" if count is not None else f"{file}:{line}"
    text = linecache.getline(file, line).strip()
    return f"{where}: {text}" if text else where


def _restored(cls: type, args: tuple) -> NNError:
    """An unpickled NNError (of any subclass): its text as raised, without calling __init__."""
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    return err


class ErrorSink:
    """Collects independent errors so one run reports them all."""

    def __init__(self):
        self.diagnostics: list[Diagnostic] = []

    def add(self, message: str, span: Span | None = None, hint: str | None = None,
            notes: list[tuple[str, Span | None]] | None = None) -> None:
        d = Diagnostic(message, span, hint, notes or [])
        if d not in self.diagnostics:  # NOTE: e.g. one mistake in a block called twice
            self.diagnostics.append(d)

    def extend(self, err: NNError) -> None:
        self.diagnostics.extend(err.diagnostics)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise NNError(self.diagnostics)


# Names from Keras and PyTorch that nnlang spells otherwise, far from its spelling by letters:
# a student's first guess. Suggested only where the nnlang name is a candidate.
FOREIGN_NAMES = {
    "learning_rate": "lr", "dim": "axis", "keepdim": "keepdims", "strides": "stride",
    "out_features": "units", "hidden_size": "units",
    "num_embeddings": "vocab", "embedding_dim": "dim", "input_dim": "vocab",
    "output_dim": "dim", "num_heads": "heads", "p": "rate",
    "linear": "dense", "Linear": "dense", "Dense": "dense", "cat": "concat",
    "concatenate": "concat", "view": "reshape", "swapaxes": "transpose",
    "sparse_categorical_crossentropy": "cross_entropy",
    "categorical_crossentropy": "cross_entropy", "nll_loss": "cross_entropy",
    "binary_crossentropy": "bce", "binary_cross_entropy": "bce",
    "binary_cross_entropy_with_logits": "bce_with_logits",
    "mean_squared_error": "mse", "mse_loss": "mse", "mean_absolute_error": "mae",
    "Embedding": "embedding", "LSTM": "lstm", "GRU": "gru", "Conv2D": "conv2d",
    "Conv2d": "conv2d", "Conv1D": "conv1d", "Conv1d": "conv1d", "MaxPool2d": "max_pool2d",
    "MaxPooling2D": "max_pool2d", "AveragePooling2D": "avg_pool2d", "AvgPool2d": "avg_pool2d",
    "BatchNormalization": "batch_norm", "BatchNorm2d": "batch_norm", "BatchNorm1d": "batch_norm",
    "LayerNormalization": "layer_norm", "LayerNorm": "layer_norm",
    "GlobalAveragePooling2D": "global_avg_pool", "GlobalAveragePooling1D": "global_avg_pool",
    "GlobalMaxPooling2D": "global_max_pool", "GlobalMaxPooling1D": "global_max_pool",
    "MaxPooling1D": "max_pool1d", "MaxPool1d": "max_pool1d", "AveragePooling1D": "avg_pool1d",
    "AvgPool1d": "avg_pool1d", "SimpleRNN": "rnn", "MultiheadAttention": "multi_head_attention",
    "MultiHeadAttention": "multi_head_attention", "StepLR": "step",
    "ExponentialLR": "exponential", "CosineAnnealingLR": "cosine",
    "ReduceLROnPlateau": "plateau", "SGD": "sgd", "Adam": "adam", "AdamW": "adamw",
    "RMSprop": "rmsprop", "batch_size": "batch", "num_words": "vocab",
    # torch.float is float32, as Keras' "float32" default: not the closest spelling, float64
    "float": "float32", "int": "int32", "long": "int64", "double": "float64",
    "swish": "silu", "lrelu": "leaky_relu", "LeakyReLU": "leaky_relu", "ReLU": "relu",
    # TensorFlow's reductions and other ops whose names are not the closest by letters
    # (`reduce_mean` came out as reduce_min)
    "reduce_mean": "mean", "reduce_variance": "var", "clip_by_value": "clip", "clamp": "clip",
    "expand_dims": "unsqueeze", "bmm": "matmul", "mm": "matmul", "l1_loss": "mae",
    "softmax_cross_entropy_with_logits": "cross_entropy",
    "sigmoid_cross_entropy_with_logits": "bce_with_logits",
    # layer options by their Keras/PyTorch names (a tuple: the first one the op has)
    "kernel_initializer": "init", "embeddings_initializer": "init",
    "depthwise_initializer": "init", "nonlinearity": "activation",
    "out_channels": "filters", "dims": "perm", "axes": ("perm", "axis"),
    "pool_size": "size", "kernel_size": ("kernel", "size"), "num_classes": "depth",
    "min": "lo", "max": "hi", "clip_value_min": "lo", "clip_value_max": "hi",
    "use_causal_mask": "causal", "is_causal": "causal", "embed_dim": "dim",
    "epsilon": "eps", "query": "q", "value": "kv",
    # optimizer and schedule options (Keras' RMSprop rho is PyTorch's alpha)
    "rho": "alpha", "beta_1": "beta1", "beta_2": "beta2", "eta_min": "min_lr",
    "decay_rate": "gamma", "warmup_steps": "warmup", "num_warmup_steps": "warmup",
    "step_size_epochs": "step_size",
    # train settings
    "random_seed": "seed", "gradient_clip_val": "clip_norm", "grad_clip": "clip_norm",
    "max_grad_norm": "clip_norm", "gradient_clipping": "clip_norm",
    "validation_split": "val_split", "max_epochs": "epochs", "num_epochs": "epochs",
    "nb_epoch": "epochs",
    # losses, metrics, optimizers and schedules by their class names
    "CrossEntropyLoss": "cross_entropy", "NLLLoss": "cross_entropy", "MSELoss": "mse",
    "L1Loss": "mae", "BCELoss": "bce", "BCEWithLogitsLoss": "bce_with_logits",
    "SparseCategoricalCrossentropy": "cross_entropy",
    "CategoricalCrossentropy": "cross_entropy", "BinaryCrossentropy": "bce",
    "MeanSquaredError": "mse", "MeanAbsoluteError": "mae",
    "sparse_categorical_accuracy": "accuracy", "SparseCategoricalAccuracy": "accuracy",
    "BinaryAccuracy": "binary_accuracy", "amax": "max", "amin": "min",
    "CosineDecay": "cosine", "cosine_decay": "cosine", "CosineAnnealing": "cosine",
    "ExponentialDecay": "exponential", "exponential_decay": "exponential",
    "huber_loss": "huber", "HuberLoss": "huber", "Huber": "huber", "smooth_l1_loss": "huber",
    "SmoothL1Loss": "huber", "kl_divergence": "kl_div", "kld": "kl_div",
    "KLDivergence": "kl_div", "KLDivLoss": "kl_div",
}


def foreign_name(name: str, candidates) -> str | None:
    """nnlang's spelling of the Keras/PyTorch `name` among `candidates`, or None."""
    foreign = FOREIGN_NAMES.get(name, ())
    return next((f for f in ((foreign,) if isinstance(foreign, str) else foreign)
                 if f in candidates and f != name), None)


def closest(name: str, candidates, cutoff: float = 0.6) -> str | None:
    """The candidate a misspelt `name` most likely meant: a known Keras/PyTorch spelling, the
    same name in other case (`"Relu"`, `"SAME"`), or the closest by letters."""
    import difflib

    names = sorted(set(candidates))
    foreign = foreign_name(name, names)
    if foreign:
        return foreign
    folded = [c for c in names if c.lower() == name.lower() and c != name]
    if folded:
        return folded[0]
    close = difflib.get_close_matches(name, names, n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, candidates) -> str | None:
    guess = closest(name, candidates)
    return f"did you mean '{guess}'?" if guess else None


def with_article(word) -> str:
    """`word` after "a" or "an" as it is spoken: an int, an ndarray, an 8-digit number, an
    11-digit one, but a uint8, a UTF-16 file, a 1-digit one. Messages that name a type
    (`type(v).__name__`) said "a int"."""
    text = str(word)
    digits = re.match(r"\d+", text)
    if digits:   # NOTE: eight..., eleven, eighteen, eleven/eighteen thousand ...
        n = digits.group()
        vowel = n[0] == "8" or (len(n) % 3 == 2 and n[:2] in ("11", "18"))
    else:
        vowel = text[:1].lower() in "aeiou" and text[:1] != "" and \
            not re.match(r"(?i)u(int|tf|ni|se|su)", text) or text.startswith("nd")   # "en-dee"
    return ("an " if vowel else "a ") + text

