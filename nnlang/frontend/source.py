"""Where .nn text comes from: the one place that tells a path from source text and reads a .nn
file, so every command and the library give the same clear error for a missing file, a
directory, or bytes that are not UTF-8 text.
"""
from __future__ import annotations

import codecs
import difflib
import os
import re
from pathlib import Path

from nnlang.errors import NNError, Span
from nnlang.files import CWD_GONE, CWD_HINT, lost_with_cwd

STRING_FILE = "<string>"
STDIN_FILE = "<stdin>"
BOM = "\ufeff"   # NOTE: a UTF-8 byte-order mark, decoded
MAX_SOURCE_BYTES = 64 << 20  # NOTE: bounds what /dev/zero or a mistaken data file can cost


# NOTE: a string literal (as grammars/nnlang.lark's STRING: kept whole, a `#` in one is text)
# or a comment (dropped)
_STRING_OR_COMMENT = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|#[^\n]*")


def same_program(a: str, b: str) -> bool:
    """Do two .nn texts differ only in comments and spacing? (A checkpoint's note that its
    file changed should not fire for an edited comment.)"""
    def words(text: str) -> list[str]:
        return _STRING_OR_COMMENT.sub(lambda m: " " if m.group()[0] == "#" else m.group(),
                                      text).split()
    return a == b or words(a) == words(b)


def is_source_text(source_or_path) -> bool:
    """Source text has a line break or a brace (every model has `{`); anything else is a path,
    so `models/mlp` is reported as a missing file, not parsed as a model."""
    if isinstance(source_or_path, os.PathLike):
        return False
    text = str(source_or_path)
    if "\n" in text or not text.strip():
        return True
    return "{" in text and not Path(text).is_file()


def load_source(source_or_path) -> tuple[str, str]:
    """(text, file name) of a path or of source text (named "<string>")."""
    if not isinstance(source_or_path, (str, os.PathLike)):
        raise NNError(f"a model is a .nn path or source text, not "
                      f"{type(source_or_path).__name__}",
                      hint="pass a path such as models/mlp.nn, a string of .nn source, or a "
                           "Program from nnlang.load")
    if is_source_text(source_or_path):
        return str(source_or_path), STRING_FILE
    return read_source(source_or_path), str(source_or_path)


def read_source(path, keep_bom: bool = False) -> str:
    """The text of a .nn file; NNError for a missing or unreadable file, a directory, or
    contents that are not UTF-8. `keep_bom`: a leading byte-order mark stays, as "\ufeff"."""
    path = Path(path)
    if path.is_dir():
        raise NNError(f"'{path}' is a directory, not a .nn file", hint=_dir_hint(path))
    try:
        with path.open("rb") as f:  # NOTE: not only regular files: /dev/stdin works too
            return _read_stream(f, str(path), keep_bom)
    except FileNotFoundError:
        if str(path) == "-":   # NOTE: not a missing file named '-' (`./-` names one)
            raise NNError("'-' (standard input) is not read as a model here: only nnlang "
                          "check, graph and fmt read one from standard input",
                          hint="pass the model's .nn file (save piped source first: "
                               "cat > model.nn)") from None
        if lost_with_cwd(path):   # NOTE: "check the path" sent the user to a right one
            raise NNError(f"cannot read {path}: {CWD_GONE}", hint=CWD_HINT) from None
        raise NNError(f"file not found: {path}", hint=_missing_hint(path)) from None
    except OSError as err:
        raise NNError(f"cannot read '{path}': {err.strerror}",
                      hint="check the path and its permissions") from None


def read_stdin(stream, keep_bom: bool = False) -> str:
    """The text of .nn source piped in (`nnlang fmt -`): the checks of `read_source`, named
    STDIN_FILE in errors."""
    try:
        return _read_stream(stream, STDIN_FILE, keep_bom)
    except OSError as err:
        raise NNError(f"cannot read {STDIN_FILE}: {err.strerror or err}") from None


def _read_stream(f, name: str, keep_bom: bool) -> str:
    data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise NNError(f"'{name}' is larger than {MAX_SOURCE_BYTES / 2**20:g} MiB; a .nn file "
                      "describes a model, it holds no data", hint="is this the right file?")
    text = decode(data, name)
    return BOM + text if keep_bom and data.startswith(codecs.BOM_UTF8) else text


# NOTE: UTF-32's marks first: UTF-32-LE's starts with UTF-16-LE's
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def decode(data: bytes, file: str, kind: str = ".nn source") -> str:
    """UTF-8 text (a leading byte-order mark is dropped); NNError at the first byte that is not
    UTF-8, by line, column and byte offset. `kind`: what the file holds, for the messages (a
    --jsonl file or a --prompt-file is decoded here too)."""
    wide = next((name for bom, name in _WIDE_BOMS if data.startswith(bom)), None)
    if wide:
        # NOTE: what Windows Notepad saves as "Unicode": its NUL bytes read as a binary file
        raise NNError(f"this file is {wide} (it starts with a {wide} byte-order mark); "
                      f"{kind} is UTF-8 text", Span(file, 1, 1),
                      "save it as UTF-8 (Notepad: Save As, Encoding: UTF-8), or convert it: "
                      f"iconv -f {wide} -t UTF-8")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = skip + err.start
        line_start = data.rfind(b"\n", 0, at) + 1
        line = data.count(b"\n", 0, at) + 1
        col = len(data[max(line_start, skip):at].decode("utf-8")) + 1
        binary = b"\0" in data[:4096]
        raise NNError(f"not UTF-8 text: byte 0x{data[at]:02x} at byte offset {at}",
                      Span(file, line, col),
                      f"this looks like a binary file, not {kind}" if binary else
                      "save the file as UTF-8 text") from None


def _missing_hint(path: Path) -> str:
    if path.suffix != ".nn" and path.with_name(path.name + ".nn").is_file():
        return f"did you mean '{path.with_name(path.name + '.nn')}'?"
    parent = path.parent
    if not parent.is_dir():
        return f"no such directory: {parent}"
    stem = path.stem if path.suffix == ".nn" else path.name
    close = difflib.get_close_matches(stem, [p.stem for p in _nn_files(parent)], n=1)
    if close:
        return f"did you mean '{parent / close[0]}.nn'?"
    return "check the path; a model is a .nn file"


def _dir_hint(path: Path) -> str:
    files = [str(p) for p in _nn_files(path)]
    if not files:
        return "it holds no .nn file; pass the path of a .nn file"
    shown = ", ".join(files[:8]) + (", ..." if len(files) > 8 else "")
    return f"pass one of its .nn files: {shown}"


def _nn_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".nn" and p.is_file())
    except OSError:
        return []
