"""docs/language.md stays true: every ```nn block parses and checks, every ```nn-error block fails
with exactly the error in the ```text block after it (the file is called example.nn), and the
op table matches the registry (regenerate with `python -m tests.regen`)."""
from __future__ import annotations

import re

import pytest

from nnlang.errors import NNError
from nnlang.frontend.elaborate import elaborate
from nnlang.frontend.parser import parse
from tests.regen import DOC, doc_text

TEXT = DOC.read_text()
BLOCKS = re.findall(r"```(nn|nn-error)\n(.*?)```(?:\s*```text\n(.*?)```)?", TEXT, re.S)
GOOD = [src for kind, src, _ in BLOCKS if kind == "nn"]
BAD = [(src, want) for kind, src, want in BLOCKS if kind == "nn-error"]


def test_doc_has_examples():
    assert len(GOOD) >= 8 and len(BAD) >= 3


@pytest.mark.parametrize("src", GOOD, ids=[f"nn{k}" for k in range(len(GOOD))])
def test_example_checks(src):
    elaborate(parse(src, "example.nn"))


@pytest.mark.parametrize("src,want", BAD, ids=[f"error{k}" for k in range(len(BAD))])
def test_error_example(src, want):
    assert want, "an nn-error block must be followed by a ```text block with the error"
    with pytest.raises(NNError) as info:
        elaborate(parse(src, "example.nn"))
    assert info.value.render() + "\n" == want


def test_op_table_is_current():
    assert doc_text(DOC) == TEXT, "the op table is stale: run python -m tests.regen"


def test_every_op_is_documented():
    from nnlang.ops import registry

    for name, op in registry.all_ops().items():
        assert op.family == "source" or f"| `{name}` |" in TEXT, name
