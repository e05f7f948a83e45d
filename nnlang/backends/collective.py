"""The process group of a data-parallel run, on the backends floor because both the compiled
step (its `allreduce_sum` call) and the training loop reach it: MPI through mpi4py between CPU
processes, NCCL through CuPy between GPUs. MPI is imported only in a process an MPI launcher
started, so a single-process run never loads it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np

from nnlang.errors import NNError

# what mpirun/mpiexec set in every process they start: Open MPI, MPICH/Hydra and Intel MPI,
# MVAPICH, Slurm's PMI2/PMIx (srun --mpi=pmix)
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")
TIMEOUT_VAR = "NNLANG_DIST_TIMEOUT"
# NOTE: a step's allreduce waits at most for the slowest rank's step; more than this means a
# rank died or hangs (rank 0's checkpoint writes and plots are far shorter)
DEFAULT_TIMEOUT_S = 60.0
MPI_HINT = "install the MPI extra: pip install 'nnlang[mpi]' (mpi4py and Open MPI)"

_current: "World | None" = None


def launched_size() -> int:
    """How many processes the MPI launcher started (1 when none did)."""
    for var in SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank among those the MPI launcher started (0 when none did), read
    without joining them: for commands that run in one process."""
    for var in RANK_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 0


def current() -> "World | None":
    """The active process group of more than one rank, if `init` made one."""
    return _current if _current is not None and _current.size > 1 else None


def init(timeout: float | None = None) -> "World":
    """Joins the processes the MPI launcher started (once per process; a lone process gets a
    group of one without importing MPI)."""
    global _current
    if _current is None:
        _current = World(_mpi_comm() if launched_size() > 1 else None, timeout)
    elif timeout is not None:
        # NOTE: dist.rank() or a fit before dist.init(timeout=...) already joined: the wait
        # asked for here still holds (the watchdog reads it at each tick)
        _current.timeout = timeout
    return _current


def _end_the_job_on_an_uncaught_exception(world: "World") -> None:
    """A user's script that raises on one rank (`mpirun -n 2 python train.py`) printed its
    traceback and exited, while the other ranks waited in their next collective until the
    watchdog's timeout (60 s) said a rank died. As torchrun ends a job one of whose workers
    failed, the traceback is printed and then the whole job ends at once."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        world.abort(130 if issubclass(kind, KeyboardInterrupt) else 1)
    sys.excepthook = hook


def interpreter_refused(size: int, hint: str) -> NNError:
    """The reference backend under N processes: its interpreter has no collectives (its
    allreduce is the identity), so each rank would train its own model on its own rows."""
    return NNError(f"the reference backend runs in one process; it cannot train over {size} "
                   "processes", hint=hint)


def _env_timeout() -> float:
    raw = os.environ.get(TIMEOUT_VAR)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        if float(raw) > 0:
            return float(raw)
    except ValueError:
        pass
    raise NNError(f"{TIMEOUT_VAR}={raw!r} is not a positive number of seconds",
                  hint=f"e.g. {TIMEOUT_VAR}=120 (how long a rank waits for the others)")


def _mpi_comm():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise NNError(f"this process was started by an MPI launcher ({launched_size()} ranks) "
                      f"but mpi4py cannot be imported: {e}", hint=MPI_HINT) from None
    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_RETURN)  # NOTE: a failed call raises here, not aborts silently
    return comm


class World:
    """rank, size and the collectives nnlang needs. Every blocking collective runs under a
    watchdog: past `timeout` seconds this process says why and exits, so a dead or hung rank
    never leaves the others waiting forever (mpirun then ends the rest of the job)."""

    def __init__(self, comm=None, timeout: float | None = None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.timeout = timeout if timeout is not None else \
            _env_timeout() if comm is not None else DEFAULT_TIMEOUT_S
        self._waiting_since: float | None = None
        self._what = ""
        self.nccl = None              # the GPU communicator, made on first use by the CuPy backend
        self.seconds = 0.0            # time spent inside step allreduces (benchmarks)
        if comm is not None:
            threading.Thread(target=self._watch, daemon=True, name="nnlang-watchdog").start()
            _end_the_job_on_an_uncaught_exception(self)

    # *** the compiled step's collective ***
    def allreduce_sum(self, src: np.ndarray, out: np.ndarray) -> None:
        """out = the sum over ranks of src (host arrays); the gradient buffer's one reduction."""
        if self.comm is None:
            if out is not src:
                np.copyto(out, src)
            return
        from mpi4py import MPI
        t0 = time.perf_counter()
        with self._waiting("the gradient allreduce"):
            self.comm.Allreduce(MPI.IN_PLACE if out is src else src, out, op=MPI.SUM)
        self.seconds += time.perf_counter() - t0

    def gpu_allreduce_call(self, cp, src, out):
        """The call summing a device buffer over the ranks' GPUs: one NCCL allReduce, queued on
        the stream current when the step runs (a CUDA graph capture records it there)."""
        if self.comm is None:
            return cp.copyto, (out, src)
        nccl = cp.cuda.nccl
        kinds = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        if str(out.dtype) not in kinds:
            raise NNError(f"NCCL cannot sum {out.dtype} gradients", hint="use float32")
        args = (self.nccl_comm(cp), cp, src.data.ptr, out.data.ptr, out.size,
                kinds[str(out.dtype)], nccl.NCCL_SUM)
        return _nccl_allreduce, args

    def nccl_comm(self, cp):
        """This process's NCCL communicator: rank 0 makes the id, MPI hands it to the others."""
        if self.nccl is None:
            nccl = cp.cuda.nccl
            uid = nccl.get_unique_id() if self.rank == 0 else None
            with self._waiting("sharing the NCCL id"):
                uid = self.comm.bcast(uid, root=0)
            self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self.nccl

    def use_gpu(self, cp) -> int:
        """One GPU per process: the rank's index among those on its machine, modulo the GPUs
        there. Call before anything is allocated on a device."""
        local = self.rank
        if self.comm is not None:
            from mpi4py import MPI
            local = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        device = local % max(cp.cuda.runtime.getDeviceCount(), 1)
        cp.cuda.Device(device).use()
        return device

    # *** what the training loop agrees on ***
    def sum(self, values, what: str = "a sum over ranks") -> np.ndarray:
        """The sum over ranks of a small float64 vector (losses, metrics, counts, flags)."""
        a = np.ascontiguousarray(values, dtype=np.float64)
        if self.comm is None:
            return a.copy()
        out = np.empty_like(a)
        with self._waiting(what):
            self.comm.Allreduce(a, out)
        return out

    def broadcast(self, arrays: dict) -> None:
        """Rank 0's values of `arrays` (host or device arrays, in place) on every rank."""
        if self.comm is None:
            return
        for name in sorted(arrays):
            a = arrays[name]
            host = a.get() if hasattr(a, "__cuda_array_interface__") else a
            with self._waiting(f"the broadcast of '{name}'"):
                self.comm.Bcast(host, root=0)
            if host is not a:
                a.set(host)

    def barrier(self, what: str, timed: bool = True) -> None:
        """Waits for every rank; `timed=False` for phases of unbounded length (compiling)."""
        if self.comm is None:
            return
        with self._waiting(what, timed):
            self.comm.Barrier()

    def abort(self, code: int) -> None:
        """Ends every rank of the job (this one failed after it said why)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None:
            self.comm.Abort(code or 1)

    def per_rank(self, batch: int, span=None, hint: str = "") -> int:
        """This rank's rows of a global training batch. The step averages the ranks' gradients
        with equal weights, which is the batch's mean only when every rank has as many rows:
        a batch the ranks do not divide is an error, not a silently other gradient."""
        if batch % self.size:
            raise NNError(f"the batch of {batch} does not split over {self.size} processes",
                          span, hint=hint or f"use a batch that {self.size} divides (e.g. "
                                             f"{max(batch // self.size, 1) * self.size} rows)")
        return batch // self.size

    def shard(self, n: int) -> slice:
        """This rank's rows of `n` (as even as `np.array_split`, rank order)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    # *** the watchdog ***
    @contextmanager
    def _waiting(self, what: str, timed: bool = True):
        """Marks a collective for the watchdog; an MPI failure inside becomes an NNError."""
        self._what = what
        self._waiting_since = time.monotonic() if timed else None
        try:
            yield
        except Exception as exc:
            if type(exc).__module__.startswith("mpi4py"):
                raise NNError(f"rank {self.rank} of {self.size}: {what} failed: {exc}",
                              hint="another rank died or raised; its message says why"
                              ) from None
            raise
        finally:
            self._waiting_since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.timeout:
                sys.stderr.write(
                    f"error: rank {self.rank} of {self.size} waited {self.timeout:.0f} s in "
                    f"{self._what} without an answer: another rank died or hangs; stopping "
                    f"(the last checkpoint is intact; --resume continues from it; "
                    f"{TIMEOUT_VAR} sets the wait)\n")
                sys.stderr.flush()
                os._exit(1)


def _nccl_allreduce(comm, cp, src: int, out: int, count: int, dtype: int, op: int) -> None:
    comm.allReduce(src, out, count, dtype, op, cp.cuda.get_current_stream().ptr)
