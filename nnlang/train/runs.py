"""A training run's directory: `config.json`, per-epoch `metrics.jsonl` + `metrics.csv`,
`checkpoint.npz` (the last state), `best.npz` (the best epoch by the monitored value),
`summary.json` and plots (`loss.png`, one `<metric>.png` per metric).
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from nnlang.errors import NNError, said_as
from nnlang.files import CWD_GONE, CWD_HINT, lost_with_cwd, user_path, write_atomic
from nnlang.train import checkpoint

PLOT_HINT = "plots skipped: matplotlib is not installed (pip install 'nnlang[plot]')"


@contextmanager
def writing(path):
    """An OSError writing `path` (read-only file system, disk full) as a clear error."""
    try:
        yield
    except OSError as err:
        # NOTE: the default folder's name holds the model's, which can pass the file system's
        # limit on one name (255 bytes) however much space is free
        out = said_as("pass --out with", "pass out=")
        hint = f"{out} a shorter folder name" if err.errno == errno.ENAMETOOLONG \
            else f"{out} a writable folder that has free space"
        if err.errno == errno.ENOENT and lost_with_cwd(path):
            raise NNError(f"cannot write {path}: {CWD_GONE}", hint=CWD_HINT) from None
        if err.errno == errno.EEXIST and (link := _dangling(Path(path))):
            # NOTE: mkdir says "File exists" for a link to nothing (a moved or unmounted disk)
            raise NNError(f"cannot write {path}: {link} is a symbolic link to "
                          f"{os.readlink(link)}, which does not exist",
                          hint="make what it points to (or mount that disk), or pass another "
                               + said_as("--out", "out=")) from None
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and \
                (Path(path) / checkpoint.FILENAME).is_file():
            # NOTE: a run there (a --resume): another --out alone starts no resume
            hint = (f"the run there is unchanged; to go on from it, copy it where you can "
                    f"write: cp -r {path} NEW, then " + said_as("--out NEW --resume",
                                                                "fit(..., resume='NEW')"))
        run = Path(path).parent
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and \
                (run / checkpoint.FILENAME).is_file():
            # NOTE: a run's log, summary or plot: another --out started the training over
            hint = (f"free space there, then {said_as('--resume', 'resume=True')} goes on from "
                    f"{run / checkpoint.FILENAME} (the last checkpoint saved, unchanged)")
        raise NNError(f"cannot write {path} ({err.strerror or err})", hint=hint) from None


def _dangling(path: Path) -> Path | None:
    """The first folder on `path` (itself included) that is a symbolic link to nothing."""
    return next((p for p in (*reversed(path.parents), path) if p.is_symlink() and not p.exists()),
                None)


RUN_FILES = {"config.json", "metrics.jsonl", "metrics.csv", "summary.json", checkpoint.FILENAME,
             checkpoint.BEST}


def is_run(path) -> bool:
    """Is `path` a folder an nnlang training run wrote (its config.json is a run's)?"""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"model", "train"} <= config.keys()


def foreign_files(path) -> list[str]:
    """The entries of an existing folder that a training run there would put at risk: all of
    them unless its config.json is an nnlang run's, else those that are not a run's files.
    A run rewrites config.json and the metrics whole, so a user's files of those names are lost
    the moment the run starts."""
    path = Path(path)
    if not path.is_dir():
        return []
    names = sorted(p.name for p in path.iterdir())
    if not is_run(path):
        return names
    return [n for n in names if n not in RUN_FILES and not n.endswith(".png")
            and not (n.startswith(".") and n.endswith(".tmp"))]


def _hold(path: Path) -> int | None:
    """An exclusive flock on the folder itself (no lock file to leave behind; the kernel drops
    it when the process ends, a kill -9 included). None where the file system has no locks:
    the run goes on unguarded, as before."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise NNError(f"{path} is in use by another training run",
                          hint=said_as("wait for it to end (then --resume continues it), or "
                                       "pass another --out", "wait for it to end (then "
                                       "resume=True continues it), or pass another out=")
                          ) from None
        return None
    return fd


def already_a_run() -> str:
    """The hint for a new run into a folder that holds one."""
    return said_as("pass --resume to continue it, or another --out for a new run",
                   "pass resume=True to continue it, or another out= for a new run")


def ensure_free(path) -> None:
    """An error when a training run holds the folder `path` now (as `RunDir` would refuse it)."""
    fd = _hold(Path(path))
    if fd is not None:
        os.close(fd)


class RunDir:
    def __init__(self, path, fresh: bool = False):
        """Creates the folder, checks that files can be written in it (a run learns that
        before it compiles and trains, not when it saves) and holds it for this process until
        `release`: a second run into the same folder is refused. `fresh`: a new run, so a
        checkpoint that appeared since the caller looked (a run that just ended) is refused."""
        self.path = user_path(path)
        self._noted_cut = False
        if self.path.exists() and not self.path.is_dir():
            raise NNError(f"{said_as('--out', 'out=')} {self.path}: this is a file, and a run "
                          "writes a folder", hint=said_as("pass --out", "pass out=") +
                          " a folder's path (new or a run's)")
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        self._lock = _hold(self.path)
        if fresh and self.checkpoint.is_file():
            self.release()
            raise NNError(f"{self.path} already holds a training run", hint=already_a_run())

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @classmethod
    def create(cls, model: str, out=None, root="runs") -> "RunDir":
        """`out`, or a fresh `runs/<model>-<YYYYmmdd-HHMMSS>/` (suffixed if that exists)."""
        if out is not None:
            return cls(out, fresh=True)
        base = Path(root) / f"{model.lower()}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 2
        with writing(base):
            base.parent.mkdir(parents=True, exist_ok=True)
            # NOTE: mkdir, not exists(), claims the name: two runs started in the same second
            # must not both find it free
            while True:
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    path, n = base.with_name(f"{base.name}-{n}"), n + 1
        return cls(path, fresh=True)

    @staticmethod
    def latest(model: str, root="runs", checkpointed: bool = True) -> Path | None:
        """The newest run directory of `model` under `root` that holds a checkpoint (with not
        `checkpointed`: any run folder of it, one stopped before its first save included)."""
        def started(p: Path) -> tuple:
            # NOTE: by the time in the name, then its same-second suffix as a number (-10 after
            # -9, which sorting names put before -2); a folder named otherwise counts as oldest
            m = re.fullmatch(r"(\d{8}-\d{6})(?:-(\d+))?", p.name[len(model) + 1:])
            return (m[1], int(m[2] or 1), p.name) if m else ("", 0, p.name)
        found = [p for p in Path(root).glob(f"{model.lower()}-*")
                 if (p / checkpoint.FILENAME).is_file() or not checkpointed and is_run(p)]
        return max(found, key=started) if found else None

    @property
    def checkpoint(self) -> Path:
        return self.path / checkpoint.FILENAME

    @property
    def best(self) -> Path:
        return self.path / checkpoint.BEST

    def drop_stale_temps(self) -> None:
        """Removes the temp files of saves a kill -9 cut short (a checkpoint's: one per kill, as
        big as a checkpoint; the run records' too); `write_atomic` never leaves one otherwise."""
        for name in (*RUN_FILES, "*.png"):
            for tmp in self.path.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def write_json(self, name: str, data: dict) -> Path:
        target = self.path / name
        with writing(target):
            write_atomic(target, json.dumps(data, indent=2, default=checkpoint.json_default)
                         + "\n")
        return target

    # *** metrics ***
    def rows(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        with writing(path):
            text = path.read_text(errors="replace")
        lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        rows = []
        for k, (i, line) in enumerate(lines):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                    raise ValueError("not a row of epoch metrics")
            except ValueError as err:
                if k == len(lines) - 1:
                    # NOTE: the last write was cut off (power loss, a full disk); the
                    # checkpoint, not this log, says what ran, so the row is only dropped
                    if not self._noted_cut:
                        self._noted_cut = True
                        print(f"note: {path}:{i} is cut off; dropping that line (the "
                              "checkpoint says where the run stopped)", file=sys.stderr)
                    break
                raise NNError(f"{path}:{i} is damaged ({err})",
                              hint="fix or delete that line (the checkpoint, not this log, "
                                   "says where the run stopped), or train with a new "
                                   + said_as("--out", "out=")
                              ) from None
            rows.append(row)
        return rows

    def keep_rows(self, upto_epoch: int) -> None:
        """Drops rows past `upto_epoch` (a resumed run rewrites a partly trained epoch)."""
        rows = [r for r in self.rows() if r["epoch"] <= upto_epoch]
        if not rows:
            for name in ("metrics.jsonl", "metrics.csv"):
                with writing(self.path / name):
                    (self.path / name).unlink(missing_ok=True)
            return
        # NOTE: replaced whole, not rewritten in place: a full disk or a kill -9 midway cut
        # the log, and the rows of the epochs before the checkpoint were lost for good
        with writing(self.path / "metrics.jsonl"):
            write_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv(rows)

    def log(self, row: dict) -> None:
        with writing(self.path / "metrics.jsonl"):
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        # NOTE: rewritten whole each epoch so the header always covers every column
        self._write_csv(self.rows())

    def _write_csv(self, rows: list[dict]) -> None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, columns)
        w.writeheader()
        w.writerows(rows)
        with writing(self.path / "metrics.csv"):
            write_atomic(self.path / "metrics.csv", text.getvalue())

    # *** plots ***
    def plot(self) -> list[Path] | None:
        """loss.png and one png per metric (train and val curves); None without matplotlib."""
        try:
            # NOTE: a Figure of its own, not pyplot: matplotlib.use("Agg") switched the whole
            # process's backend, so a notebook's `%matplotlib inline` showed no plot after a
            # fit that saved its run; a bare Figure draws a png with Agg and touches nothing
            from matplotlib.figure import Figure
        except ImportError:
            return None
        rows = self.rows()
        if not rows:
            return []
        paths = []
        for name in curve_names(rows):
            fig = Figure(figsize=(6, 4))
            draw_curves(fig.subplots(), rows, name)
            fig.tight_layout()
            paths.append(self.path / f"{name}.png")
            # NOTE: drawn into memory, then replaced whole: savefig into the file cut a
            # plot already there (a resume's) at a full disk, a broken png left for good
            png = io.BytesIO()
            fig.savefig(png, dpi=100, format="png")
            with writing(paths[-1]):
                write_atomic(paths[-1], png.getvalue())
        return paths


def curve_names(rows: list[dict]) -> list[str]:
    """The values with a curve (loss first, then the metrics and named losses), from every
    row's names, not the first's: a run resumed from an older nnlang's (its rows had val_kl but
    no train_kl) or a model that gained a metric drew no kl.png."""
    return list(dict.fromkeys(k.split("_", 1)[1] for r in rows for k in r
                              if k.startswith(("train_", "val_"))))


def draw_curves(ax, rows: list[dict], name: str) -> None:
    """One value's train and val curves per epoch on `ax`: the run's pngs and `History.plot`
    draw with this (the caller imported matplotlib, and says what its absence means)."""
    from matplotlib.ticker import MaxNLocator
    for split in ("train", "val"):
        pts = [(r["epoch"], r[f"{split}_{name}"]) for r in rows
               if r.get(f"{split}_{name}") is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=split)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
