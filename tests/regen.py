"""Regenerates the golden files of the inspection tests and shows what changed.

    python -m tests.regen            # rewrite tests/golden/summary/*.txt, tests/errors/*.expected
                                     # and the op table in docs/language.md
    python -m tests.regen --check    # only show the diff; exit 1 if anything is out of date
    python -m tests.regen mlp bad_set_value   # only the goldens with these names

Review the printed unified diff before committing the new goldens.
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SUMMARY_DIR = ROOT / "tests" / "golden" / "summary"
ERRORS_DIR = ROOT / "tests" / "errors"
DOC = ROOT / "docs" / "language.md"
OPS_BEGIN, OPS_END = "<!-- ops:begin -->", "<!-- ops:end -->"


def rel(path: Path) -> str:
    return path.resolve().relative_to(ROOT).as_posix()


def summary_text(model: Path) -> str:
    from nnlang.frontend.elaborate import elaborate
    from nnlang.frontend.parser import parse_file
    from nnlang.ir.summary import render_text, summarize

    return render_text(summarize(elaborate(parse_file(rel(model)))))


def error_text(case: Path) -> str:
    """The rendered error of tests/errors/<case>.nn. A first line `# set: a=1 b=x` passes
    --set overrides (parsed as the CLI does) so bad --set values have goldens too."""
    from nnlang.errors import NNError
    from nnlang.frontend.elaborate import elaborate
    from nnlang.frontend.parser import parse_file

    first = case.read_text().splitlines()[0] if case.read_text() else ""
    sets = first[len("# set:"):].split() if first.startswith("# set:") else []
    parse_overrides = ensure_cli().app.parse_overrides
    try:
        elaborate(parse_file(rel(case)), parse_overrides(sets))
    except NNError as err:
        return err.render() + "\n"
    return "(no error)\n"


def ensure_cli():
    """The `nnlang_cli` package: installed, or cli/ of this checkout mapped to that name (as
    pyproject.toml does) when nnlang is not pip-installed."""
    import importlib.util

    try:
        import nnlang_cli
    except ModuleNotFoundError:
        spec = importlib.util.spec_from_file_location(
            "nnlang_cli", ROOT / "cli" / "__init__.py",
            submodule_search_locations=[str(ROOT / "cli")])
        nnlang_cli = importlib.util.module_from_spec(spec)
        sys.modules["nnlang_cli"] = nnlang_cli
        spec.loader.exec_module(nnlang_cli)
    import nnlang_cli.app
    import nnlang_cli.main  # noqa: F401
    return nnlang_cli


def doc_text(doc: Path) -> str:
    """docs/language.md with the op table between the ops markers regenerated."""
    text = doc.read_text()
    head, _, rest = text.partition(OPS_BEGIN)
    _, _, tail = rest.partition(OPS_END)
    return f"{head}{OPS_BEGIN}\n{ensure_cli().inspect_cmds.ops_markdown()}{OPS_END}{tail}"


def goldens(names=()) -> dict[Path, tuple]:
    """golden path -> (function, source) for every model and error case (or those in names)."""
    jobs = {SUMMARY_DIR / f"{m.stem}.txt": (summary_text, m) for m in sorted(MODELS.glob("*.nn"))}
    jobs.update({c.with_suffix(".expected"): (error_text, c)
                 for c in sorted(ERRORS_DIR.glob("*.nn"))})
    jobs[DOC] = (doc_text, DOC)
    return {p: job for p, job in jobs.items() if not names or p.stem in names}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = failed = 0
    for path, (fn, source) in goldens([a for a in argv if not a.startswith("-")]).items():
        try:
            text = fn(source)
        except Exception as err:  # NOTE: one broken model must not stop the others
            print(f"{rel(source)}: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
            continue
        old = path.read_text() if path.exists() else ""
        if old == text:
            continue
        stale += 1
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                   f"a/{rel(path)}", f"b/{rel(path)}"))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    print(f"{stale} golden file(s) {'out of date' if check else 'rewritten'}", file=sys.stderr)
    return 1 if failed or (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
