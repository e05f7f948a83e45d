"""The pipeline's floors, checked over the import graph: a module imports only modules of its
own floor or the floors below it, at module level or inside functions (issue: "each floor of
the pipeline imports only floors below it"). Read from the source with `ast`, so a lazy import
inside a function counts the same as one at the top."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module's floor is that of the longest matching prefix
FLOORS = [
    ("nnlang.errors", "nnlang.files", "nnlang.gc_pause", "nnlang.user_cache", "nnlang.data"),
    ("nnlang.ir", "nnlang.ops"),
    ("nnlang.frontend", "nnlang.codegen"),
    ("nnlang.passes",),
    ("nnlang.backends",),
    ("nnlang.runtime",),
    ("nnlang.train", "nnlang.export"),
    ("nnlang", "nnlang_cli"),       # the public API module and the CLI on top
]


def floor_of(module: str) -> int:
    best, level = -1, None
    for k, prefixes in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), k
    assert level is not None, f"{module} is on no floor: add it to FLOORS"
    return level


def modules():
    for path in sorted((ROOT / "nnlang").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path
    for path in sorted((ROOT / "cli").glob("*.py")):
        yield "nnlang_cli" + ("" if path.stem == "__init__" else f".{path.stem}"), path


def imports(path: Path, module: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base


# NOTE: upward edges tolerated for now; the test fails when one of them disappears too, so
# this list only shrinks (empty since the backend-neutral executable)
KNOWN: set = set()


def test_no_module_imports_a_higher_floor():
    bad, known = [], set()
    for module, path in modules():
        own = floor_of(module)
        for line, target in imports(path, module):
            if not target.startswith(("nnlang", "nnlang_cli")) or target == "nnlang":
                continue   # the package root's __init__ holds only the public API
            if floor_of(target) > own and (module, target) in KNOWN:
                known.add((module, target))
            elif floor_of(target) > own:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} (floor {own}) imports "
                           f"{target} (floor {floor_of(target)})")
    assert not bad, "\n".join(bad)
    assert known == KNOWN, f"fixed, drop from KNOWN: {KNOWN - known}"


def test_the_floor_check_catches_an_upward_import(tmp_path):
    # NOTE: the check itself must be able to fail: a passes module importing the runtime
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from nnlang.runtime.net import Net\n")
    (line, target), = imports(fake, "nnlang.passes.x")
    assert floor_of(target) > floor_of("nnlang.passes.x") and line == 2
