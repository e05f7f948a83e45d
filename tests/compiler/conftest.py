"""Compiler tests compile kernels into a private cache dir, so they never reuse (or pollute)
the user's ~/.cache/nnlang and a cold cache is exercised once per test session."""
import pytest


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NNLANG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernels"))
    yield
    mp.undo()
