"""Gathering definitions: a file's models, blocks and train sections plus those of the files it
imports (each file once, so diamonds and cycles are harmless), with duplicate-name errors."""
from __future__ import annotations

from pathlib import Path

from nnlang.errors import ErrorSink, NNError
from nnlang.files import user_path
from nnlang.frontend import ast
from nnlang.frontend.parser import parse_file
from nnlang.frontend.source import STDIN_FILE, STRING_FILE
from nnlang.ops import registry


def collect_defs(module: ast.Module, errors: ErrorSink, seen: set | None = None,
                 defs: dict | None = None) -> dict:
    """All models, blocks and train sections of a file and the files it imports."""
    seen = seen if seen is not None else set()
    defs = defs if defs is not None else {}
    # NOTE: source with no file (a string, `nnlang check -`) imports from the working folder
    unnamed = module.file in (STRING_FILE, STDIN_FILE)
    seen.add(module.file if unnamed else str(Path(module.file).resolve()))
    for item in module.items:
        if isinstance(item, ast.Import):
            base = Path.cwd() if unnamed else Path(module.file).parent
            # NOTE: a leading ~ is the home folder, as in `data = "~/d.npz"` (`user_path`); it
            # was a folder '~' beside the file. Any other relative path is the file's folder's
            written = user_path(item.path) if item.path.startswith("~") else Path(item.path)
            path = (base / written).resolve()
            if str(path) in seen:
                continue  # NOTE: a diamond or a cycle of imports loads each file once
            if not path.is_file():
                errors.add(f"cannot import '{item.path}': no such file", item.span,
                           f"looked for {path}")
                continue
            try:
                collect_defs(parse_file(path), errors, seen, defs)
            except NNError as err:
                errors.extend(err)
            continue
        key = section_key(item)
        if key in defs:
            prev = defs[key]
            section = key != item.name  # NOTE: a train or generate section, keyed by kind
            errors.add(f"'{item.name}' is defined twice" if not section else
                       f"model '{item.name}' has two {key.split(':')[0]} sections", item.span,
                       "merge their settings into one" if section else "rename one of them",
                       [("first defined here", prev.span)])
            continue
        params = getattr(item, "params", ())   # a model's hyper-parameters, a block's arguments
        twice = next((prm for k, prm in enumerate(params)
                      if prm.name in {q.name for q in params[:k]}), None)
        if twice is not None:   # NOTE: still defined, so its calls are not unknown names
            errors.add(f"'{item.name}' has two parameters named '{twice.name}'", twice.span,
                       "rename one of them")
        if key == item.name and registry.get(item.name) is not None:
            errors.add(f"block '{item.name}' has the name of a built-in op", item.span,
                       "choose another name")
            continue
        defs[key] = item
    return defs


def section_key(item) -> str:
    """A model's or block's name; "train:M" / "generate:M" for the sections of model M."""
    if isinstance(item, ast.TrainDef):
        return f"train:{item.name}"
    if isinstance(item, ast.GenerateDef):
        return f"generate:{item.name}"
    return item.name
