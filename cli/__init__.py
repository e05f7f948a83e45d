"""The `nnlang` command line (installed as the package `nnlang_cli`; see pyproject.toml)."""
