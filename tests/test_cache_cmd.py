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
    # and one dated a day ahead (a clock set back): it said "live" for good, and stayed
    ahead = root / ".verified.json.ahead.tmp"
    ahead.write_bytes(b"{")
    later = time.time() + 86400
    os.utime(ahead, (later, later))
    write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}" and not old.exists() and live.exists()
    assert not ahead.exists()


# *** the bound: least recently used kernels and plans go first (`user_cache.prune`) ***
def _kernel(root, key, size, age):
    """One kernel's files as a run leaves them (module, numba's index and data, marks), all
    last used `age` seconds ago."""
    k = f"k_{key:024x}"
    files = [root / "kernels" / f"{k}.py",
             root / "kernels" / "__pycache__" / f"{k}.k_add-7.py311.nbi",
             root / "kernels" / "__pycache__" / f"{k}.k_add-7.py311.1.nbc",
             root / "kernels" / "compiled" / f"nnlang_kernels.{k}.k_add.crc32"]
    for f in files:
        _file(f, size // len(files))
    _age(files, age)
    return files


def _age(files, age):
    import time
    back = time.time() - age
    for f in files:
        os.utime(f, (back, back))


def test_prune_removes_least_recently_used_whole_kernels_until_under_the_bound(tmp_path,
                                                                                monkeypatch):
    """The kernel cache grew forever (every model, batch, length and dtype adds files): prune
    removes the least recently used entries, a kernel's files together, down to 90% of the
    bound; an entry used in the last 10 minutes, one another process holds (flock, as
    `compile_worker.held` while compiling or loading it) and downloaded data all stay."""
    import fcntl

    from nnlang.user_cache import prune, usage
    root = tmp_path / "cache"
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(root))
    oldest = _kernel(root, 1, 4000, age=5 * 3600)
    held = _kernel(root, 2, 4000, age=4 * 3600)
    older = _kernel(root, 3, 4000, age=3 * 3600)
    plan = root / "plans" / "p.pkl"
    _file(plan, 4000)
    _age([plan], 2 * 3600)
    newer = _kernel(root, 4, 4000, age=3600)
    recent = _kernel(root, 5, 4000, age=60)       # in use: never removed
    _file(root / "mnist" / "train-images-idx3-ubyte.gz", 50_000)
    assert prune(30_000) == (0, 0)                # 24,000 bytes fit
    fd = os.open(held[0], os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(os.devnull):
            pass
        # a bound of 15,000 prunes to 13,500: the oldest and older kernels, then the plan
        # (4,000 each), skipping the held one
        assert prune(15_000) == (9, 12_000)
    finally:
        os.close(fd)
    gone = [f for f in oldest + older + [plan] if f.exists()]
    assert gone == []
    assert all(f.exists() for f in held + newer + recent)
    assert (root / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert usage("kernels") == (12, 12_000)
    # with nothing held and a tight bound, only the entry in use is left
    assert prune(1)[0] == 8 and all(f.exists() for f in recent)


def test_an_entry_dated_in_the_future_is_pruned_as_long_unused(tmp_path, monkeypatch):
    """A cache copied from a machine whose clock runs ahead (or a clock set back) has file
    times in the future: each such entry counted as used in the last 10 minutes for good, so
    the bound never held, and a prune stamp in the future stopped every run's prune. A time in
    the future is now long ago; up to a minute ahead is a file server's clock (in use)."""
    from nnlang.passes import plan_cache
    from nnlang.user_cache import maybe_prune, prune
    root = tmp_path / "cache"
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(root))
    ahead = _kernel(root, 1, 4000, age=-30 * 24 * 3600)   # a month ahead
    old = _kernel(root, 2, 4000, age=3600)
    skewed = _kernel(root, 3, 4000, age=-30)               # half a minute ahead: just written
    plan = root / "plans" / "p.pkl"
    _file(plan, 4000)
    _age([plan], -3600)
    # 16,000 bytes over a bound of 9,000, pruned to 8,100: the future-dated entries go first
    assert prune(9000) == (5, 8000)
    assert not any(f.exists() for f in ahead + [plan])
    assert all(f.exists() for f in old + skewed)
    assert prune(1) == (4, 4000) and all(f.exists() for f in skewed)
    # a run's prune, at most once an hour by the stamp's time: a stamp in the future is no
    # prune at all
    monkeypatch.setenv("NNLANG_CACHE_MAX_SIZE", "1")
    older = _kernel(root, 4, 4000, age=7200)
    stamp = root / ".prune-lock"
    _age([stamp], 600)
    maybe_prune()
    assert all(f.exists() for f in older)                  # pruned 10 minutes ago
    _age([stamp], -24 * 3600)
    maybe_prune()
    assert not any(f.exists() for f in older)
    # the plans folder keeps its KEEP most recently used: a future one is the least
    monkeypatch.setattr(plan_cache, "KEEP", 2)
    plans = [root / "plans" / f"p{i}.pkl" for i in range(3)]
    for p, age in zip(plans, (-24 * 3600, 3600, 7200)):
        _file(p, 10)
        _age([p], age)
    plan_cache._prune(root / "plans")
    assert [p.exists() for p in plans] == [False, True, True]


def test_cache_prune_command_and_the_bound_in_cache_info(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(root))
    _kernel(root, 1, 4000, age=7200)
    _kernel(root, 2, 4000, age=3600)
    r = run("cache")
    assert "bound: 2.00 GiB for kernels and plans" in r.stdout
    monkeypatch.setenv("NNLANG_CACHE_MAX_SIZE", "0")
    assert "bound: none" in run("cache").stdout
    monkeypatch.setenv("NNLANG_CACHE_MAX_SIZE", "9" * 400)   # was an OverflowError printing it
    assert "bound: 8192.00 PiB" in run("cache").stdout
    r = run("cache", "prune", "--max-size", "5K")     # 5,120: pruned to 4,608
    assert r.exit_code == 0, r.stderr
    assert "pruned to 5.00 KiB: removed 4 files, 3.91 KiB" in r.stdout
    assert not (root / "kernels" / f"k_{1:024x}.py").exists()
    assert (root / "kernels" / f"k_{2:024x}.py").exists()
    assert "still over" not in r.stdout
    # what is in use stays, and is said: 'removed 0 files' read as a cache within its bound
    _kernel(root, 3, 8000, age=60)
    r = run("cache", "prune", "--max-size", "5K")
    assert "pruned to 5.00 KiB: removed 4 files, 3.91 KiB" in r.stdout
    assert "still over the bound: 7.81 KiB in use (used in the last 10 minutes, or by " \
        "another run or prune now)" in r.stdout
    # 0 is no bound: said so ('pruned to none' read as everything removed)
    r = run("cache", "prune", "--max-size", "0")
    assert r.exit_code == 0 and "no bound (--max-size '0'): nothing removed" in r.stdout
    assert "pruned" not in r.stdout
    r = run("cache", "prune", "--max-size", "lots")
    assert r.exit_code == 1
    assert "error: --max-size 'lots' is not a size" in r.stderr and "hint:" in r.stderr
    # the variable that is no size: a run warns and keeps the default, but this command would
    # prune to the default 2G what a bound of (say) 20GG meant to keep, so it refuses
    monkeypatch.setenv("NNLANG_CACHE_MAX_SIZE", "20GG")
    r = run("cache", "prune")
    assert r.exit_code == 1 and "pruned" not in r.stdout
    assert "error: NNLANG_CACHE_MAX_SIZE='20GG' is not a size" in r.stderr
    assert "hint: e.g. NNLANG_CACHE_MAX_SIZE=500M" in r.stderr


def test_parse_size():
    from nnlang.user_cache import parse_size
    assert parse_size("2G") == parse_size("2GiB") == parse_size("2 gb") == 2 * 2**30
    assert parse_size("500M") == 500 * 2**20 and parse_size("1.5k") == 1536
    assert parse_size("123") == 123 and parse_size("0") is None
    for bad in ("", "-1G", "2X", "G", "1e3", "12ib", "\u0661\u0662"):   # the last: Arabic 12
        with pytest.raises(ValueError):
            parse_size(bad)
    # only 0 is no bound: a fraction of a byte was rounded down to it
    assert parse_size("0.1") == parse_size("0.0001K") == 1 and parse_size("0.0") is None
    # kubernetes' spelling: it was no size, so the default 2G bound pruned what 20Gi kept
    assert parse_size("20Gi") == parse_size("20 gi") == 20 * 2**30
    with pytest.raises(ValueError):
        parse_size("20i")
    # a number too long for a float is a bound too big to reach, not an OverflowError (which
    # ended the run that wrote a kernel, NNLANG_CACHE_MAX_SIZE being read there)
    assert parse_size("9" * 400 + "T") == parse_size("10000000T") == 2**63


def test_a_linked_kernels_folder_is_pruned_and_cleared_inside_its_link_kept(tmp_path,
                                                                            monkeypatch):
    """A kernels folder linked to another disk: its files were not counted (the link was, as
    one file of a few bytes) and pruning unlinked it, leaving every kernel behind it uncounted
    and unbounded while the next run began a new folder in the root."""
    from nnlang.user_cache import clear, prune, usage
    root, disk = tmp_path / "cache", tmp_path / "disk" / "kernels"
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(root))
    disk.mkdir(parents=True)
    root.mkdir()
    os.symlink(disk, root / "kernels")
    old = _kernel(root, 1, 4000, age=7200)
    new = _kernel(root, 2, 4000, age=3600)
    assert usage("kernels") == (8, 8000)
    assert prune(5000) == (4, 4000)
    assert (root / "kernels").is_symlink() and not any(f.exists() for f in old)
    assert all(f.exists() for f in new) and usage("kernels") == (4, 4000)
    assert clear("kernels") == (4, 4000)
    assert (root / "kernels").is_symlink() and not any(f.is_file() for f in disk.rglob("*"))
    # a link to nothing is itself what clear removes, so the next run can make the folder
    disk.parent.rename(tmp_path / "gone")
    assert clear("kernels") == (1, len(str(disk)))
    assert not os.path.lexists(root / "kernels")


def test_cache_prune_of_a_read_only_cache_is_an_error_naming_it(cache, monkeypatch):
    """A cache on a read-only mount (a shared pre-built one): `nnlang cache prune` was an
    internal error (its lock file cannot be created)."""
    import errno

    from nnlang import user_cache
    root, _ = cache
    real = os.open

    def read_only(path, flags, *a, **kw):   # NOTE: root (CI) writes a read-only folder anyway
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *a, **kw)
    monkeypatch.setattr(user_cache.os, "open", read_only)
    r = run("cache", "prune", "--max-size", "1")
    assert r.exit_code == 1
    assert f"error: cannot prune the cache at {root} (Read-only file system)" in r.stderr
    assert "hint: check that folder's permissions" in r.stderr
    assert (root / "kernels" / "k_a.py").exists()


def test_a_compile_prunes_old_kernels_and_a_used_kernel_is_kept_as_recent(tmp_path,
                                                                          monkeypatch):
    """With real compiled kernels: a run that writes new kernels prunes the cache to
    $NNLANG_CACHE_MAX_SIZE (at most once an hour), removing old entries; loading a cached
    kernel marks it used (its module's time is numba's cache stamp, so not that), so the next
    prune keeps it; a pruned kernel compiles again, with the same result."""
    import subprocess
    import sys
    import time

    import numpy as np

    import nnlang
    from nnlang.user_cache import clear, prune, usage
    root = tmp_path / "cache"
    monkeypatch.setenv("NNLANG_CACHE_DIR", str(root))
    src = "model M {\n  input x: float32[batch, 3]\n  output y = tanh(x) * 2.0 + 1.0\n}\n"
    x = {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
    want = nnlang.compile(src, batch=2).forward(x)["y"]
    np.testing.assert_allclose(want, np.tanh(x["x"]) * 2 + 1, rtol=1e-6)
    real = [f for f in (root / "kernels").rglob("*") if f.is_file()]
    assert any(f.suffix == ".nbc" for f in real)
    _age(real, 3 * 3600)
    planted = _kernel(root, 7, 4000, age=2 * 3600)
    monkeypatch.setenv("NNLANG_CACHE_MAX_SIZE", "1")
    (root / ".prune-lock").unlink()
    # another model: its new kernel's write prunes everything older than 10 minutes
    nnlang.compile(src.replace("2.0", "3.0"), batch=2).forward(x)
    assert not any(f.exists() for f in planted + real)
    assert usage("kernels")[0] > 0
    # the first model compiles again, from nothing, to the same values
    np.testing.assert_array_equal(nnlang.compile(src, batch=2).forward(x)["y"], want)
    # a process that loads a model's kernels and plan from the cache marks them used (not by
    # the module's time: numba's cache stamp), so the next prune keeps them
    clear("kernels"), clear("plans")
    first = [sys.executable, "-c", f"import nnlang, numpy as np\nnnlang.compile({src!r}, "
             "batch=2).forward({'x': np.ones((2, 3), np.float32)})"]
    subprocess.run(first, check=True, env={**os.environ, "NNLANG_CACHE_MAX_SIZE": "0"})
    mine = {f for f in root.rglob("*") if f.is_file() and f.name != ".prune-lock"}
    stamps = {f: f.stat().st_mtime for f in mine if f.suffix in (".py", ".nbi", ".nbc")}
    _age([f for f in mine if f not in stamps], 3 * 3600)   # numba's files keep their times
    planted = _kernel(root, 8, 4000, age=2 * 3600)
    subprocess.run(first, check=True, env={**os.environ, "NNLANG_CACHE_MAX_SIZE": "0"})
    assert {f: f.stat().st_mtime for f in stamps} == stamps     # loaded, not compiled again
    marked = [f for f in mine if f.suffix in (".crc32", ".pkl")]
    assert len(marked) == 2 and all(time.time() - f.stat().st_mtime < 600 for f in marked)
    prune(1)
    assert all(f.exists() for f in mine) and not any(f.exists() for f in planted)
