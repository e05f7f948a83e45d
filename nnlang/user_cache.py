"""The user's cache folder, shared by downloaded data sets (`data/cache.py`) and compiled plans
(`passes/plan_cache.py`): `$NNLANG_CACHE_DIR`, or `~/.cache/nnlang`."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    return Path(os.environ.get("NNLANG_CACHE_DIR") or Path.home() / ".cache" / "nnlang")
