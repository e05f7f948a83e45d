"""The typer app every command module registers on, and the helpers they share: printing an
`NNError` (exit 1, no traceback), Ctrl-C (exit 130) and parsing `--set name=value` overrides.
The exit codes are listed in README.md ("Exit codes").
"""
from __future__ import annotations

import errno
import inspect
import os
import re
import shutil
import signal
import stat
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from nnlang.backends.ctrl_c import asks_to_stop
from nnlang.errors import Given, NNError, NNWarning, Span, command_line

RICH_HELP_COLUMNS = 80   # NOTE: the narrowest width the panels of every command's help fit


class _Typer(typer.Typer):
    """A typer app whose command list shows each command's docstring's first paragraph as one
    line, wrapped to the terminal. NOTE: in rich markup mode typer keeps the paragraph's source
    line breaks there (`rich_utils._make_command_help`), so a docstring wrapped at 100 columns
    came out as "... fused" / "or kernels." on separate lines; the command's own --help
    already joins them (`_get_help_text`)."""

    def command(self, name: str | None = None, **kwargs):
        register = super().command

        def decorator(fn):
            short = kwargs.pop("short_help", None)
            if short is None and fn.__doc__:
                short = " ".join(inspect.cleandoc(fn.__doc__).split("\n\n")[0].split())
            return register(name, short_help=short, **kwargs)(fn)
        return decorator

    @property
    def rich_markup_mode(self):
        """NOTE: narrower than RICH_HELP_COLUMNS, rich's option panels cut flag names to fit
        ("--data-d…": a flag no one can type) and help text mid-word; click's plain layout
        (no panels) wraps words there instead. Asked when the commands are built, as
        COLUMNS or the terminal's width is then."""
        if shutil.get_terminal_size().columns < RICH_HELP_COLUMNS:
            return None
        return self._markup_mode

    @rich_markup_mode.setter
    def rich_markup_mode(self, mode):
        self._markup_mode = mode

    def __call__(self, *args, **kwargs):
        for name in ("stdout", "stderr"):
            if getattr(sys, name) is None:   # NOTE: started with it closed (`>&-`): Python
                setattr(sys, name, open(os.devnull, "w"))   # has no stream, a print crashed
        null_before = _stdout_is_null()
        try:
            return super().__call__(*args, **kwargs)
        except OSError as err:   # NOTE: typer's own help text on a full disk (> /dev/full);
            if err.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG):
                raise            # a command's output goes through `_Written`
            _quiet_stdout()
            print_error(_stdout_error(err))
            raise SystemExit(1) from None
        except SystemExit as end:
            # NOTE: typer's answer to EPIPE outside `reporting` (its help text, a line written
            # after a command's work) is exit 1, a user error's code: click's wrapper around
            # stdout, or rich's `on_broken_pipe` (typer's own console), which points it to
            # /dev/null; either way the reader was gone, as for any command (`_Console`)
            if end.code == 1 and (type(sys.stdout).__name__ == "PacifyFlushWrapper"
                                  or not null_before and _stdout_is_null()
                                  and not _UNWRITABLE):
                raise SystemExit(OUTPUT_CLOSED) from None
            raise


def _stdout_is_null() -> bool:
    try:
        return os.path.samestat(os.fstat(sys.__stdout__.fileno()), os.stat(os.devnull))
    except (OSError, AttributeError, ValueError):
        return False


app = _Typer(name="nnlang", rich_markup_mode="rich", no_args_is_help=True,
             add_completion=False, pretty_exceptions_enable=False,
             help="nnlang: a readable compiler for neural networks.")


class _Console(Console):
    """NOTE: on EPIPE rich itself points stdout to /dev/null and exits 1, wherever it was: a
    training run ended at the next line it printed after `| head` exited, its steps unsaved,
    with a user error's exit code. Here training takes it as a SIGTERM (`Interrupts.request`):
    it stops at the next whole step, saving first; any other command ends with exit 141 (the
    shell's code for a writer SIGPIPE ended) and no word (the reader asked for no more)."""

    def on_broken_pipe(self) -> None:
        from nnlang.train.interrupts import Interrupts
        self.quiet = True
        _quiet_stdout()
        if not Interrupts.request(signal.SIGPIPE):
            raise SystemExit(OUTPUT_CLOSED)


def _stdout_error(err: OSError) -> NNError:
    return NNError(f"cannot write standard output: {err.strerror or err}",
                   hint="check the file or device it goes to (a full disk: df -h)")


_UNWRITABLE: list = []   # the error of a write to stdout that failed, not on EPIPE


class _Written:
    """A console's file whose write errors other than EPIPE (a log on a full disk: `> log.txt`,
    /dev/full) are an NNError naming standard output; they were an internal error."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text):
        return self._checked(self._stream.write, text)

    def flush(self):
        return self._checked(self._stream.flush)

    def _checked(self, fn, *args):
        try:
            return fn(*args)
        except BrokenPipeError:
            raise   # NOTE: `_Console.on_broken_pipe`
        except OSError as err:
            if _terminal_gone(self._stream, err):
                if self._stream is sys.__stdout__:
                    _quiet_stdout()
                _hang_up()
                return len(args[0]) if args else None
            if self._stream is sys.__stdout__:
                _quiet_stdout()   # NOTE: or Python's own flush at exit fails again, with a trace
                _UNWRITABLE.append(err)   # ... and no closed pipe (`_Typer.__call__`)
            raise _stdout_error(err) from None


def _terminal_gone(stream, err: OSError) -> bool:
    """NOTE: a write to a terminal that hung up (its window closed, the ssh session dropped)
    fails with EIO, as it may before the SIGHUP arrives; isatty() fails there too, but the
    descriptor is still a character device (a file on a failing disk is not)."""
    if err.errno != errno.EIO:
        return False
    try:
        return stat.S_ISCHR(os.fstat(stream.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):
        return False


def _hang_up() -> None:
    """Standard output's terminal is gone: what a SIGHUP does where Python handles it (training
    saves and stops, `reporting` says so and exits 129). NOTE: with no Python handler (SIG_DFL
    outside a command, SIG_IGN under nohup) the output is only dropped: the real SIGHUP, if
    any, does the rest."""
    if hasattr(signal, "SIGHUP") and callable(signal.getsignal(signal.SIGHUP)):
        _HUNG_UP.append(True)
        signal.raise_signal(signal.SIGHUP)


def _quiet_stdout() -> None:
    """Points standard output's descriptor to /dev/null, where nothing meets EPIPE."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, sys.__stdout__.fileno())
    finally:
        os.close(null)


def console() -> Console:
    # NOTE: made per call, so it writes to whatever sys.stdout is now (CliRunner swaps it)
    # NOTE: a pipe or file gets wide lines rather than rich's 80-column default, so tables
    # are not cut into "…" cells
    wide = None if sys.stdout.isatty() else 160
    return _Console(file=_Written(sys.stdout), soft_wrap=True, highlight=False, width=wide)


def one_process(command: str) -> Console | None:
    """The console of a command that does not split over ranks (eval, predict, export,
    generate). Under mpirun, rank 0 runs it once, in plain lines: Open MPI gives each rank a
    terminal even when the job's output goes to a file, where a bar is escape codes. The other
    ranks have nothing to do: None, and they end at once (each had printed the results
    again)."""
    from nnlang.backends.collective import launched_rank, launched_size
    if launched_size() == 1:
        return console()
    if launched_rank() > 0:
        return None
    from nnlang.train.progress import say
    say(err_console(), f"note: nnlang {command} runs in one process; under mpirun rank 0 "
                       f"alone runs it (the other {launched_size() - 1} have nothing to do)")
    return _Console(file=sys.stdout, soft_wrap=True, highlight=False, force_terminal=False,
                    color_system=None, width=160)


def err_console() -> Console:
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def notes_for(output: Path, con: Console) -> Console:
    """Where a command writing `output` says what it did: stderr when `output` is no regular
    file (`-o /dev/stdout`, a pipe), where "wrote ..." joined the data written."""
    return err_console() if output.exists() and not output.is_file() else con


def print_error(err: NNError | str) -> None:
    """The rendered error (or a rendered warning's text), exactly as `NNError.render()` gives
    it (carets stay aligned); only colour is added, and no markup in the message is
    interpreted."""
    text = Text(err if isinstance(err, str) else err.render())
    text.highlight_regex(r"error:", "bold red")
    text.highlight_regex(r"warning:", "bold yellow")
    text.highlight_regex(r"(?m)^ +\^+$", "bold red")
    text.highlight_regex(r"hint:", "bold cyan")
    text.highlight_regex(r"note:", "bold")
    err_console().print(text, soft_wrap=True, markup=False, highlight=False)


def print_warnings(program) -> None:
    """The program's lint warnings (`frontend/lint.py`) on stderr, rendered like errors."""
    if program.warnings:
        print_error(NNError(program.warnings))


def _path_text(text: str) -> Path:
    from nnlang.files import user_path
    return user_path(text)


# NOTE: a path option is parsed from its text: typer's own Path("./~/r") is Path("~/r"), and a
# folder named '~' (`./~/r`) became the home folder (`nnlang.files.user_path`)
PATH = {"parser": _path_text, "metavar": "<path>"}

SET_HELP = "Override a hyper-parameter: --set name=value (an nnlang literal); repeatable."
MODEL_HELP = "The model to use when the file defines several, or one the file imports."

INTERRUPTED = 130  # NOTE: the shell convention for "stopped by Ctrl-C"
TERMINATED = 143   # ... and for "stopped by SIGTERM" (128 + 15)
HUNG_UP = 129      # ... and for "stopped by SIGHUP: the terminal is gone" (128 + 1)
OUTPUT_CLOSED = 141  # ... and for "SIGPIPE: stdout's reader is gone" (128 + 13)
INTERNAL = 70      # NOTE: sysexits' EX_SOFTWARE; 2 is typer's (click's) usage error


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler) or SIGHUP (the terminal is gone) outside training,
    which handles them itself (`fit` saves first): raised where Python runs, as Ctrl-C's
    KeyboardInterrupt is, so a command loading data or compiling ends with a word and exit 143
    (129), not silently."""


_TERMINATED: list[int] = []
_SWALLOWED: list = []   # Terminated raised where Python could not pass it on
_HUNG_UP: list = []     # a write found the terminal gone (`_hang_up`)
_IGNORED: list = []     # SIGHUP ignored by us after a hang-up, for the process's exit only
# NOTE: SIGHUP is missing on Windows
_ENDINGS = {signal.SIGTERM: ("terminated (SIGTERM)", TERMINATED)}
if hasattr(signal, "SIGHUP"):
    _ENDINGS[signal.SIGHUP] = ("hung up (SIGHUP)", HUNG_UP)


@asks_to_stop
def _terminate(signum, frame):
    _TERMINATED.append(signum)
    raise Terminated


def terminated() -> tuple[str, int] | None:
    """Was this process sent SIGTERM or SIGHUP during a command (a KeyboardInterrupt caught on
    its way, as generation's, then came from it)? The first one's word and exit code."""
    return _ENDINGS[_TERMINATED[0]] if _TERMINATED else None


@contextmanager
def _sigterm_raises():
    """SIGTERM and SIGHUP raise `Terminated` during a command, where no one else handles them:
    NOTE: another handler (an outer `reporting`, the embedding program's) stays, and so does
    an ignored SIGHUP (`nohup`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _IGNORED and signal.getsignal(_IGNORED[0]) is signal.SIG_IGN:
        # NOTE: the process did not exit after the hang-up (a program calling `run` or a
        # CliRunner again): SIGHUP was ignored for its exit only, not as nohup for what follows
        signal.signal(_IGNORED[0], signal.SIG_DFL)
    _IGNORED.clear()
    ours = [sig for sig in _ENDINGS if signal.getsignal(sig) is signal.SIG_DFL]
    if not ours:
        yield
        return
    _TERMINATED.clear()
    _SWALLOWED.clear()
    _HUNG_UP.clear()
    for sig in ours:
        signal.signal(sig, _terminate)
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet_termination(hook)
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Exception:
        if _SWALLOWED:
            # NOTE: what a SIGTERM left behind where it could not raise (inside a C callback,
            # `_quiet_termination`): the compile it cut failed; the command was terminated
            raise Terminated from None
        raise
    else:
        if _SWALLOWED:   # NOTE: ... or the compile went on, and the command ended after it
            raise Terminated
    finally:
        for sig in ours:
            # NOTE: after a write found the terminal gone (EIO, which raised our own SIGHUP),
            # the shell's SIGHUP may still come while the process exits: at the default
            # action it ended it after the save, before its exit 129
            gone = _HUNG_UP and sig == getattr(signal, "SIGHUP", None)
            signal.signal(sig, signal.SIG_IGN if gone else signal.SIG_DFL)
            if gone:
                _IGNORED.append(sig)
        sys.unraisablehook = hook


def _quiet_termination(hook):
    """NOTE: SIGTERM that lands inside a C callback (llvmlite's, while numba compiles: a rank
    that mpirun ends because another rank failed) cannot raise there: Python printed the
    Terminated with a traceback as "ignored", and the compile then failed on its own, or went
    on and the command with it. The command ends as terminated once it is back in Python
    (`_sigterm_raises`); the traceback said nothing more."""
    def unraisable(info):
        if isinstance(info.exc_value, Terminated):
            _SWALLOWED.append(info)
        else:
            hook(info)
    return unraisable


@contextmanager
def reporting():
    """Turns an NNError into its rendering on stderr and exit code 1, and Ctrl-C (loading,
    compiling, eval, predict...) into a word and exit code 130 (typer alone exits 130 without
    a word), SIGTERM into a word and 143 (SIGHUP: 129); nothing there is half-written (files
    are replaced atomically). `fit` handles a Ctrl-C, SIGTERM or SIGHUP while training itself:
    it saves a checkpoint and says so. Hints inside name the command's flags (`said_as`)."""
    try:
        with _sigterm_raises(), warnings.catch_warnings(), command_line():
            shown = warnings.showwarning

            def show(message, category, *args, **kw):
                # NOTE: an NNWarning is already rendered (file:line:col, caret, hint); Python's
                # own form would prefix nnlang's source file and line
                if issubclass(category, NNWarning):
                    print_error(str(message))
                else:
                    shown(message, category, *args, **kw)
            warnings.showwarning = show
            yield
    except NNError as err:
        _after_rank_zero()
        print_error(err)
        raise typer.Exit(1) from None
    except BrokenPipeError:   # NOTE: a write to stdout but through a console (`_Console`)
        _quiet_stdout()
        raise typer.Exit(OUTPUT_CLOSED) from None
    except Terminated:
        word, code = terminated() or _ENDINGS[signal.SIGTERM]
        console().print(word, markup=False, highlight=False)
        raise typer.Exit(code) from None
    except KeyboardInterrupt:
        console().print("interrupted", markup=False, highlight=False)
        raise typer.Exit(INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as err:  # NOTE: a bug in nnlang, not bad input; still no traceback
        from nnlang.files import CWD_GONE, CWD_HINT, cwd_gone
        if isinstance(err, FileNotFoundError) and cwd_gone():
            # NOTE: Path.resolve and Path.cwd raise it wherever a relative path is made whole
            print_error(NNError(CWD_GONE, hint=CWD_HINT))
            raise typer.Exit(1) from None
        if os.environ.get("NNLANG_DEBUG"):
            raise
        err_console().print(Text(
            f"internal error: {type(err).__name__}: {err}\n  hint: this is a bug in nnlang, "
            "not in your model; run again with NNLANG_DEBUG=1 to see the traceback, and "
            "report it"), soft_wrap=True)
        raise typer.Exit(INTERNAL) from None


# NOTE: under mpirun, how long a rank other than 0 waits before it prints an error: rank 0's
# word and exit, then mpirun's end of the job, took over 2 s on a loaded 2-core host
RANK_ERROR_DELAY_S = 5.0


def _after_rank_zero() -> None:
    """Under mpirun every rank usually meets the same error (a bad .nn file, a batch that does
    not split). Rank 0 says it and ends the job at once; the others wait a moment first, so
    they are ended before they print it again, and still say an error that is theirs alone.
    Read from the launcher's variables, not the joined group: an error before the ranks join
    (an unknown --backend) was said by every rank."""
    from nnlang.backends.collective import launched_rank
    if launched_rank() > 0:
        import time
        time.sleep(RANK_ERROR_DELAY_S)


def check_output(path: Path, flag: str = "-o", reads: dict | None = None) -> Path:
    """Fails early, before any slow work, when `path` cannot be written: its folder is missing
    or read-only, or it is a folder itself; or when it is one of the files the command
    `reads` ({what: path}; `checkpoint.refuse_overwrite`), which the write would destroy.
    Returns the path to write (a leading ~ expanded: `nnlang.files.user_path`)."""
    from nnlang.files import user_path
    from nnlang.train.checkpoint import refuse_overwrite
    path = user_path(path)
    refuse_overwrite(path, reads or {}, flag)
    if path.is_dir():
        raise NNError(f"{flag} {path}: this is a folder, not a file",
                      hint=f"name a file inside it, e.g. {path / ('out' + path.suffix)}")
    if path.exists() and not path.is_file():
        return path   # NOTE: a device or FIFO (/dev/stdout, >(gzip > x)): written in place
    parent = path.parent
    file = next((p for p in (parent, *parent.parents) if p.is_file()), None)
    if file is not None:   # NOTE: the hint below, mkdir -p, fails there
        raise NNError(f"{flag} {path}: '{file}' is a file, not a folder",
                      hint="choose a path inside a folder")
    if not parent.is_dir():
        raise NNError(f"{flag} {path}: the folder '{parent}' does not exist",
                      hint=f"create it first: mkdir -p {parent}")
    if not os.access(parent, os.W_OK):
        raise NNError(f"{flag} {path}: the folder '{parent}' is not writable",
                      hint="choose a folder you can write to")
    return path


@contextmanager
def writing(path: Path, flag: str = "-o"):
    """An OSError while writing `path` (disk full, permissions) as an NNError naming it."""
    try:
        yield
    except OSError as err:
        from nnlang.files import CWD_GONE, CWD_HINT, lost_with_cwd
        if err.errno == errno.ENOENT and lost_with_cwd(path):
            raise NNError(f"{flag} {path}: cannot write: {CWD_GONE}", hint=CWD_HINT) from None
        raise NNError(f"{flag} {path}: cannot write: {err.strerror or err}",
                      hint="check the path, its permissions and the free disk space") from None


def parse_value(text: str, where: Span | None = None):
    """An nnlang literal: 128, 1e-3, -2, true, false, none, "str", [1, 2]. A bare word, weight
    path or file path that is not a literal (`--set act=gelu`, `l1_on=[h.weight]`,
    `init_from=runs/tiny-1`) is taken as a string."""
    from nnlang.frontend import ast
    from nnlang.frontend.parser import BadLiteral, parse

    stripped = text.strip()
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", stripped) and stripped not in (
            "true", "false", "none"):
        return stripped
    # NOTE: a path, as for --init-from (`init_from=runs/tiny-1`, `./a`, `/abs/b.npz`): a word
    # with a slash and a letter, dot or ~ in it (`1/2` stays an error: not a literal)
    if "/" in stripped and re.fullmatch(r"[\w.~\-/]+", stripped) and re.search(r"[^\d/]",
                                                                               stripped):
        return stripped
    if re.fullmatch(r"[\w.~\-/]*[A-Za-z_][\w.~\-/]*\(.*\)", stripped, re.S):
        # NOTE: a choice with options, `schedule=step(step_size=1)`, or a file's, as --data
        # spells it (`data=sub/r.npz(targets=[aux])`)
        return stripped
    try:
        module = parse(f"model M(v = {text}) {{}}", "<--set>")
    except BadLiteral as err:
        raise NNError(err.message, where, err.hint) from None
    except NNError:
        module = None
    default = module.items[0].params[0].default if module else None

    def lit(e):
        if isinstance(e, (ast.Number, ast.String, ast.Bool)):
            return e.value
        if isinstance(e, ast.NoneLit):
            return None
        if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Number):
            return -e.operand.value
        if isinstance(e, ast.ListLit):
            return [lit(x) for x in e.items]
        # NOTE: a bare word or weight path inside a list is a string as it is alone, so
        # `--set l1_on=[h.weight, c1.weight]` is written as the train section writes it
        if isinstance(e, ast.WeightRef):
            return e.path
        if isinstance(e, ast.Name) and e.id not in ("true", "false", "none"):
            return e.id
        raise ValueError
    try:
        return lit(default)
    except ValueError:
        raise NNError(f"'{text}' is not a literal", where,
                      "use a number (128, 1e-3), true/false, a string or a list") from None


def finite_float(value: float | None) -> float | None:
    """A typer callback: float flags take finite numbers (typer accepts inf, nan and 1e999)."""
    import math
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def parse_overrides(items: list[str] | None) -> Given:
    """`["lr=1e-3", "units=64"]` -> {"lr": 0.001, "units": 64}; errors point into the flag,
    and so do later ones about a value (the spans of each name and value go with it)."""
    out = Given()
    errors = []
    for item in items or []:
        source = f"--set {item}"
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            errors.append(NNError(f"--set expects name=value, got '{item}'",
                                  Span("<command line>", 1, 7, 1, 7 + len(item), source),
                                  "e.g. --set hidden=256 --set lr=1e-3"))
            continue
        col = 7 + len(item) - len(value)
        span = Span("<command line>", 1, col, 1, col + max(len(value), 1), source)
        if name in out:   # NOTE: which one was meant is not ours to guess (as --stop twice)
            errors.append(NNError(f"--set {name} is given twice", span,
                                  f"give each name once: --set {name}=..."))
            continue
        try:
            out[name] = parse_value(value, span)
            start = 7 + len(item) - len(item.lstrip())
            out.spans[name] = (Span("<command line>", 1, start, 1, start + len(name), source),
                               span)
        except NNError as err:
            errors.append(NNError(f"--set {name}: {err.message}", span, err.hint))
    if errors:
        raise NNError([d for e in errors for d in e.diagnostics])
    return out
