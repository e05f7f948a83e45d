"""What training and evaluation print as they go: plain lines (`say`) and progress over batches
(a bar on a terminal, a line every LINE_EVERY_S elsewhere, so logs and pipes see progress too)."""
from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# without a progress bar (stdout not a terminal), a line at least this often
LINE_EVERY_S = 30.0


def default_console() -> Console:
    """`fit`'s console when the caller gives none. NOTE: in a notebook rich sends each print as
    HTML (styled) and text/plain, and wrote the text/plain with ANSI escape codes (the summary
    table's bold and italic), raw escapes wherever the text is read (nbconvert to text or
    markdown, a notebook viewer without HTML). No colour system there: the text is plain and
    the HTML keeps its styles."""
    console = Console()
    return Console(color_system=None) if console.is_jupyter else console


def say(console: Console, text: str) -> None:
    # NOTE: paths and hints hold brackets (nnlang[plot]) that rich would take as markup
    console.print(text, markup=False, highlight=False)


class _Dropping:
    """A console's file whose failed writes are dropped (`outlive_terminal`)."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def write(self, text):
        try:
            return self.stream.write(text)
        except OSError:
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except OSError:
            pass


def outlive_terminal(console: Console):
    """After SIGHUP the terminal may be gone, and every write to it fails (EIO): a failed
    progress line or bar refresh then ended training before its checkpoint was saved. From
    here on the console's failed writes are dropped; where its output still goes (a log file:
    `nnlang train > log.txt`) the word on why training stopped is kept. Returns what undoes
    it, so the caller's own console is not changed for good."""
    old = console._file
    if not isinstance(old, _Dropping):
        console.file = _Dropping(console.file)   # NOTE: `file` is the stream rich writes to
    return lambda: setattr(console, "file", old)


def live(console: Console) -> bool:
    """A bar that redraws in place, else lines. A dumb terminal (TERM=dumb: Emacs shells, some
    CI runners) cannot move the cursor: rich draws its bar there only when it ends, so it gets
    the lines of a pipe. NOTE: FORCE_COLOR (set in CI configurations for coloured logs) makes
    rich take a file or pipe for a terminal: colour, as asked, but a bar redrawn there is a
    carriage return per refresh in the log; only a real terminal, or TTY_INTERACTIVE=1
    (rich's switch for animations), gets the bar."""
    if os.environ.get("TTY_INTERACTIVE") in ("0", "1"):
        return console.is_interactive
    try:
        tty = console.file.isatty()
    except (AttributeError, ValueError, OSError):
        tty = False
    return tty and console.is_interactive


def progress(items, total: int, what: str, console: Console | None, header: bool = True):
    """`items`, shown as they go: a bar on a terminal, a line every LINE_EVERY_S elsewhere,
    after a first line that says the total (with `header`; without, a fast pass adds no line:
    a training run's validation and test set, between lines of its own)."""
    if console is None:
        yield from items
        return
    if not live(console):
        if header:
            say(console, f"{what}: {total} batch{'es' if total != 1 else ''}")
        t0 = last = time.perf_counter()
        for i, item in enumerate(items):
            yield item
            now = time.perf_counter()
            if now - last >= LINE_EVERY_S:
                say(console, f"{what}: {i + 1}/{total} batches, {now - t0:.0f}s")
                last = now
        return
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=total)
        for item in items:
            yield item
            bar.advance(task)


def fmt(values: dict | None) -> str:
    """`loss 0.1234  accuracy 0.9876`."""
    return "  ".join(f"{k} {v:.4f}" for k, v in (values or {}).items())
