"""`nnlang cache` / `cache info` / `cache clear`: what the user cache holds per kind, and its
removal, which never reaches outside the cache's own entries (a linked folder is unlinked,
never emptied; files of the root that nnlang did not make stay)."""
from __future__ import annotations

import os

import pytest

from tests.test_cli import run


def _file(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache laid out as runs leave it, plus what is not nnlang's: a file in the root and a
    data set folder linked to the user's own copy elsewhere."""
    root = tmp_path / "cache"
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(root))
    _file(root / "kernels" / "k_a.py", 100)
    _file(root / "kernels" / "__pycache__" / "k_a.k-1.py311.nbi", 200)
    _file(root / "kernels" / "__pycache__" / "k_a.k-1.py311.1.nbc", 300)
    _file(root / "kernels" / "compiled" / "nnlang_kernels.k_a.k.0123", 0)
    _file(root / "plans" / "p1.pkl", 1000)
    _file(root / "plans" / "p2.pkl", 1000)
    _file(root / "mnist" / "train-images-idx3-ubyte.gz", 5000)
    _file(root / "processed" / "imdb-1.npz", 700)
    _file(root / "verified.json", 10)
    _file(root / "notes.txt", 50)                      # not nnlang's
    own = tmp_path / "my-imdb"
    _file(own / "aclImdb_v1.tar.gz", 4000)
    os.symlink(own, root / "imdb")
    return root, own


def _row(out, kind):
    line = next(line for line in out.splitlines() if line.split()[:1] == [kind])
    return line.split()[1:4]


def test_cache_info_shows_the_folder_and_each_kind(cache):
    root, _ = cache
    for args in (("cache",), ("cache", "info")):
        r = run(*args)
        assert r.exit_code == 0, r.stderr
        assert f"cache: {root} ($NNLANG_CACHE_DIR)" in r.stdout
        assert _row(r.stdout, "kernels") == ["4", "600", "B"]
        assert _row(r.stdout, "plans") == ["2", "1.95", "KiB"]    # 2,000 bytes
        # the linked folder counts as its link, not as the 4,000 bytes it points to
        files, size, unit = _row(r.stdout, "data")
        assert files == "4" and unit in ("B", "KiB")
        assert _row(r.stdout, "total")[0] == "10"


def test_cache_clear_one_kind_then_all_leaves_what_is_not_the_caches(cache):
    root, own = cache
    r = run("cache", "clear", "--plans")
    assert r.exit_code == 0, r.stderr
    assert "removed plans: 2 files, 1.95 KiB" in r.stdout and "kernels" not in r.stdout
    assert not list((root / "plans").iterdir()) and (root / "kernels" / "k_a.py").exists()
    r = run("cache", "clear")
    assert r.exit_code == 0, r.stderr
    assert "removed kernels: 4 files, 600 B" in r.stdout
    assert "removed data: 4 files" in r.stdout
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    assert left == ["notes.txt"]
    assert (own / "aclImdb_v1.tar.gz").read_bytes() == b"x" * 4000   # the link only
    # the folders stay, for a run compiling meanwhile to write into
    assert (root / "kernels" / "__pycache__").is_dir()
    assert _row(run("cache").stdout, "total")[0] == "0"


def test_cache_clear_of_a_file_it_cannot_remove_is_an_error_naming_it(cache, monkeypatch):
    from nnlang import user_cache
    root, _ = cache
    unlink = os.unlink

    def refused(path, *a, **kw):   # NOTE: a read-only folder, which root (CI) writes anyway
        if "plans" in str(path):
            raise PermissionError(13, "Permission denied")
        return unlink(path, *a, **kw)
    monkeypatch.setattr(user_cache.os, "unlink", refused)
    r = run("cache", "clear")
    assert r.exit_code == 1
    assert "removed kernels: 4 files" in r.stdout
    assert f"error: cannot remove {root / 'plans'}" in r.stderr
    assert "(Permission denied) (and 1 more)" in r.stderr and "hint:" in r.stderr


def test_a_killed_writes_leftovers_are_counted_cleared_and_dropped_by_the_next_write(cache):
    """A process killed (kill -9) while it wrote a file leaves its temporary file: here a real
    kill of a child inside `write_atomic` of the cache's verified.json, whose temporary files
    lie in the cache's root: no kind counted them and `nnlang cache clear` left them, so they
    piled up. The data kind counts and clears them; and the next successful write of a file
    removes its stale ones (untouched for an hour: a killed writer's), not a live writer's."""
    import signal
    import subprocess
    import sys
    import time

    from nnlang.files import STALE_TEMP_S, write_atomic
    root, _ = cache
    target = root / "verified.json"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from nnlang.files import write_atomic\n"
        "def slow(f):\n"
        "    f.write(b'{\"half'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        f"write_atomic({str(target)!r}, slow)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    [left] = root.glob(".verified.json.*.tmp")
    assert target.read_bytes() == b"x" * 10        # readers still see the whole old file
    assert _row(run("cache").stdout, "data")[0] == "5"
    r = run("cache", "clear", "--data")
    assert r.exit_code == 0 and "removed data: 5 files" in r.stdout, r.stdout
    assert not left.exists()
    # the next write ends an old leftover, and leaves one a live writer may still be writing
    old, live = root / ".verified.json.old1.tmp", root / ".verified.json.live.tmp"
    old.write_bytes(b"{"), live.write_bytes(b"{")
    back = time.time() - STALE_TEMP_S - 60
    os.utime(old, (back, back))
    write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}" and not old.exists() and live.exists()
