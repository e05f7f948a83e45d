"""A compiled model: the library API (`nnlang.compile`) on top of the compiled executables.

`Net` owns the persistent state (parameters and optimizer slots, by name) and lazily compiles
one executable per graph kind: a training step, an evaluation pass, and a prediction pass.
"""
from __future__ import annotations

import copy
import signal
import threading
import warnings
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np

from nnlang.backends.aligned import aligned_copy, aligned_empty, aligned_zeros
from nnlang.backends.blas import blas_threads
from nnlang.backends.ctrl_c import ctrl_c_held
from nnlang.errors import NNError, closest, did_you_mean, with_article
from nnlang.files import as_bool
from nnlang.gc_pause import paused_gc
from nnlang.ir.dims import DEFAULT_LENGTH, MAX_BATCH, Sym
from nnlang.ir.graph import no_output_error
from nnlang.ir.summary import check_memory, one_swap_warning
from nnlang.ops.init import initialize
from nnlang.ops.optim import (OPTIMIZER_PREFIX, OPTIMIZERS, STEP_SLOT, initial_state,
                              learning_rate, slot_param)
from nnlang.ops.registry import ParamSpec
from nnlang.passes.optimize import switched_off
from nnlang.passes.pipeline import (DIVIDED_VALUE, DIVISOR, divided_key, lr_feeds,
                                    forward_graph, named_losses, train_graph)
from nnlang.runtime.indices import check_indices, index_inputs
from nnlang.runtime.interpret import interpret

BACKENDS = ("numba", "cupy", "reference")
# executables kept per kind for other lengths than the one in use, least recently used dropped
# first: each holds buffers sized for its length, and rebuilding one (plan, no kernel compile)
# costs ~0.25 s of CPU; bucketed data pads to ~22 lengths up to 2,500 tokens (`data/ragged.py`).
# The same budget bounds generation's decoders per prompt count (`generate.Generator`)
KEEP_LENGTHS = 24
# ... and at most this many bytes of their planned buffers: attention on whole reviews plans
# gigabytes per length, and 24 of those would exhaust the machine
KEEP_BYTES = 2 << 30


def check_backend(backend: str, device: bool = True) -> None:
    """An unknown backend is an error; so is the GPU one without CuPy or a device, unless
    `device` is False (a Net that only renders its CUDA source needs neither)."""
    if backend not in BACKENDS:
        # NOTE: PyTorch's device names: the GPU backend is named after CuPy, which runs it.
        # Not a str (None: a caller's unset option) is unknown too, not an AttributeError here
        gpu = isinstance(backend, str) and backend.lower() in ("cuda", "gpu")
        shown = f"'{backend}'" if isinstance(backend, str) else \
            f"{backend!r} ({type(backend).__name__}; a backend is named by a str)"
        raise NNError(f"unknown backend {shown}",
                      hint="the CUDA backend is --backend cupy" if gpu else
                      f"backends: {', '.join(BACKENDS)}")
    if backend == "cupy" and device:
        from nnlang.backends.cupy_backend import require_cupy
        require_cupy()


class _Interpreted:
    """The reference executable: runs a graph through the numpy interpreter (slow, exact)."""

    def __init__(self, g, state: dict):
        self.g, self.state = g, state

    def run(self, feeds: dict, fetch: bool = True) -> dict:
        results = {**self.g.outputs, **self.g.losses, **self.g.metrics}
        updates = {("update", name): nid for name, nid in self.g.updates.items()}
        got = interpret(self.g, feeds, self.state, want={**results, **updates})
        # NOTE: copies, as the compiled backends return: the values may be the feeds or state
        out = {k: np.array(got[k]) for k in results}
        for (_, name) in updates:
            np.copyto(self.state[name], got[("update", name)])
        return out

    @staticmethod
    def read_all(results: list[dict]) -> list[dict]:
        return results


def _compile(g, backend: str, state: dict, disable=(), pending: int = 0):
    """An executable whose parameters are the arrays in `state` (shared, updated in place);
    `pending`: bytes allocated and not yet written besides (`Net.unwritten`)."""
    if backend == "reference":
        return _Interpreted(g, state)
    check_backend(backend)
    from nnlang.runtime.executable import compile_graph
    return compile_graph(g, backend=backend, disable=disable, state=state, pending=pending)


class Net:
    """A model compiled for one batch size (and any size of its other symbols, bound from the
    feeds: one executable per bound size); see `nnlang.compile`."""

    def __init__(self, program, backend: str = "numba", batch: int | None = None,
                 dtype: str | None = None, seed: int | None = None, disable=(), config=None,
                 total_steps: int = 0, steps_per_epoch: int | None = None):
        """config: a TrainConfig replacing the program's train section; total_steps: the
        run's length, which schedules that decay over the whole run (cosine) need;
        steps_per_epoch: the data's size in steps, from which `train_step` advances `epoch`
        itself (and total_steps defaults to the train section's epochs times it)."""
        check_backend(backend, device=False)
        dtype = declared_dtype(program.graph) if dtype is None else _dtype_name(dtype)
        self.disable = _check_options(batch, dtype, seed, disable, total_steps, steps_per_epoch)
        self.program, self.backend, self.dtype = program, backend, dtype
        self.config = config or program.train or _default_config()
        self.tokenizer = None   # text <-> ids for generate; restore() sets the checkpoint's
        self.batch = batch or self.config.batch
        self.seed = self.config.seed if seed is None else seed
        self.user = program.graph
        self.lengths = {s: DEFAULT_LENGTH for s in self.user.symbols if s != "batch"}
        self._exes: dict = {}
        self._fresh: set = set()  # optimizer slots made (zeros, no pages) before a step ran
        self._checks: dict = {}   # executable key -> the inputs holding ids, checked per call
        self._train_ranks = 1     # the process count the training executables average over
        self._swap_said: list = []   # the swap warnings of this net's builds (one is shown)
        self.shown_warnings: set = set()   # the rendered warnings said of this net (once)
        self.step = 0
        self.epoch = 0
        self.lr_scale = 1.0       # a plateau schedule's reductions so far (the trainer sets it)
        # where `fit`'s loop stopped (a checkpoint's meta: data order, partial epoch, watch),
        # so `fit(net)` goes on as `--resume` would; the trainer and `nnlang.restore` set it
        self.loop_state: dict | None = None
        self.last_metrics: dict = {}   # the metrics of the last train_step read
        self._unread: list = []   # (executable, device results) of unfetched train steps
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps or (steps_per_epoch or 0) * self.config.epochs
        # NOTE: one call at a time: every call of an executable writes its planned buffers
        self._lock = threading.RLock()
        with one_swap_warning(self._swap_said):
            self.state = self._init_state()

    def __repr__(self) -> str:
        # NOTE: what a notebook shows for `net`: the model, not `<Net object at 0x7f...>`
        return (f"<Net {self.program.model}: {self.program.interface()}; backend "
                f"{self.backend}, batch {self.batch}, {self.dtype}; step {self.step}, "
                f"epoch {self.epoch}>")

    def __deepcopy__(self, memo) -> "Net":
        """An independent net in the same place of training (weights, optimizer state, step,
        epoch, schedule): what `copy.deepcopy(model)` gives a PyTorch loop keeping its best
        model. It compiles its own executables (from the caches: no kernel compile)."""
        with self._lock:
            twin = Net(self.program, backend=self.backend, batch=self.batch, dtype=self.dtype,
                       seed=self.seed, disable=self.disable, config=self.config,
                       total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
            twin.load_state_dict(self.state_dict())
            twin.step, twin.epoch, twin.lr_scale = self.step, self.epoch, self.lr_scale
            twin.tokenizer, twin.lengths = self.tokenizer, dict(self.lengths)
            twin.init_report = getattr(self, "init_report", None)
            # NOTE: a restored run's data record, which nnlang.save of the copy keeps too
            twin.trained_data = copy.deepcopy(getattr(self, "trained_data", None))
            twin.loop_state = copy.deepcopy(self.loop_state)
            return twin

    def __copy__(self):
        # NOTE: a shallow copy would share the weights and executables but count its own
        # steps: two nets training one set of weights on different schedules
        raise NNError("copy.copy(net) would share the net's weights; use copy.deepcopy(net) "
                      "for an independent net in the same place of training")

    def __reduce_ex__(self, protocol):
        # NOTE: its executables hold compiled kernels and its parse holds grammar objects:
        # pickle failed deep inside with "cannot pickle 'module' object"
        raise NNError("a Net cannot be pickled (it holds compiled kernels)",
                      hint="nnlang.save(net, path) writes it and nnlang.restore reads it back "
                           "(net.state_dict() is its arrays alone); copy.deepcopy(net) copies "
                           "one in the same process")

    def save(self, path):
        # NOTE: what a Keras user tries first; writing a checkpoint is the train floor's, above
        # this one (tests/test_layering.py), so the public API does it
        raise NNError("a Net saves through the public API: nnlang.save(net, path)",
                      hint="nnlang.save writes a checkpoint that nnlang eval, predict, export "
                           "and train --resume read; nnlang.restore(model, path) reads it back")

    # *** state ***
    def _init_state(self) -> dict:
        check_memory(self.user, self.batch, self.dtype)  # NOTE: before a weight is allocated
        rng = np.random.default_rng(self.seed)
        state = {}
        # NOTE: one BLAS thread: the orthogonal init's QR (512 x 128) took 0.3-3 s on a loaded
        # 2-core machine with OpenBLAS's threads spinning against each other, 20 ms on one
        with blas_threads(1):
            for name, nid in self.user.params.items():
                a = self.user.node(nid).attrs
                spec = ParamSpec(tuple(a["shape"]), a["init"] or ("zeros", {}), a["trainable"],
                                 self._dtype_of(name))
                # NOTE: C order: compiled executables share these arrays only when contiguous
                state[name] = initialize(spec, rng, empty=aligned_empty)
        return state

    def _dtype_of(self, name: str) -> str:
        """A state entry's dtype: the net's, but a weight declared float64 stays float64 (as
        its graph keeps it: `retype`). NOTE: made in the net's dtype, the executables took
        copies of it in the declared one and trained those, unseen by parameters()."""
        nid = self.user.params.get(slot_param(name) or name)   # NOTE: a slot's is its weight's
        declared = None if nid is None else self.user.node(nid).attrs.get("dtype")
        return declared if declared not in (None, "float32") else self.dtype

    def parameters(self) -> dict:
        """Trained weights by block path (numpy copies, wherever the state lives)."""
        # NOTE: under the lock, as every call: read during another thread's train_step, the
        # copies mixed the weights before and after it
        with self._lock:
            return {k: _host(self.state[k]) for k in self.user.params}

    def state_dict(self) -> dict:
        """The weights and the optimizer's state, by name."""
        with self._lock:   # NOTE: as parameters(): a whole step's state, not a mix
            out = {k: _host(v) for k, v in self.state.items()}
        if STEP_SLOT not in self.state:
            # NOTE: before the first step the slots do not exist yet; without their zeros a
            # dict taken now would, loaded later, leave the optimizer's state as it is then
            out.update({k: np.zeros(shape, self._dtype_of(k))
                        for k, shape in self._optimizer_state().items()})
        return out

    def _optimizer_state(self) -> dict:
        """{name: shape} of the state this net's optimizer keeps (none without a loss)."""
        if not self.user.losses:
            return {}
        trained = {k: tuple(int(d) for d in self.user.node(v).attrs["shape"])
                   for k, v in self.user.params.items()
                   if self.user.node(v).attrs.get("trainable", True)}
        return initial_state(self.config.optimizer, trained)

    def load_state_dict(self, state: dict, strict: bool = True) -> "Loaded":
        """Copies `state` (name -> array, as `state_dict()` gives it) into the net, all or
        nothing: a name the net does not know, a parameter `state` lacks, an optimizer entry it
        lacks when it holds any (all allowed when `strict` is False; weights alone keep the
        optimizer's state) or another shape is an error before anything is copied. Optimizer
        state (`optimizer.*`) belongs to a parameter of this model; its step count becomes the
        net's `step`, so schedules go on where they were. Returns the names `missing` and
        `unexpected` (non-empty only when not strict)."""
        strict = as_bool(strict, "load_state_dict(strict=...)")
        if not hasattr(state, "items"):
            raise NNError(f"a state dict maps names to arrays; got {type(state).__name__}",
                          hint="pass what net.state_dict() or net.parameters() returns")
        _check_names(state, "state dict", "state names", self.user.params)
        slots = self._optimizer_state()
        shapes = {k: self._state_shape(k, slots) for k in state}
        unexpected = [k for k in state if shapes[k] is None]
        missing = [k for k in self.user.params if k not in state]
        if any(k.startswith(OPTIMIZER_PREFIX) for k in state):
            # NOTE: weights alone leave the optimizer's state as it is; part of it would mix
            # the dict's moments with the net's own (or its step count)
            missing += [k for k in slots if k not in state]
        if strict and (unexpected or missing):
            raise NNError("; ".join(_state_problems(unexpected, missing, self.user.params,
                                                   self.config.optimizer.name)),
                          hint="pass strict=False to load only the names the net knows")
        arrays = {}
        for k, v in state.items():
            if k in unexpected:
                continue
            arr = _numbers(v, f"state value '{k}'")
            if arr.shape != shapes[k]:
                raise NNError(f"state value '{k}' has shape {arr.shape}, the model expects "
                              f"{shapes[k]}", hint="was it saved from another "
                              "model or with other --set values?")
            _check_fits(arr, self._dtype_of(k), f"state value '{k}'")
            arrays[k] = arr
        if STEP_SLOT in arrays:
            step = arrays[STEP_SLOT]  # NOTE: int() would cut 3.7 and fail on NaN
            if step.dtype.kind == "b" or not (np.isfinite(step) and step >= 0
                                               and step == np.trunc(step)):
                raise NNError(f"state value '{STEP_SLOT}' is {step.item()!r}: the optimizer's "
                              "step count is a whole number of at least 0",
                              hint="pass the value state_dict() gave, or leave it out to keep "
                                   "this net's")
        with self._lock:
            for k, arr in arrays.items():
                dt = self._dtype_of(k)
                if k in self.state and _on_device(self.state[k]):
                    self.state[k].set(np.array(arr, dt, order="C"))
                elif k in self.state:  # NOTE: in place: compiled executables hold these arrays
                    np.copyto(self.state[k], arr.astype(dt, copy=False))
                    self._fresh.discard(k)
                else:
                    self.state[k] = aligned_copy(arr, dt)
            if STEP_SLOT in arrays:
                self.step = int(arrays[STEP_SLOT])
                if self.steps_per_epoch:   # NOTE: as train_step counts it from the steps
                    self.epoch = self.step // self.steps_per_epoch
        return Loaded(missing, unexpected)

    def _state_shape(self, name: str, slots: dict) -> tuple | None:
        """The shape state entry `name` has in this net, None for a name it cannot have;
        `slots`: the net's _optimizer_state()."""
        if name in self.state:
            return tuple(self.state[name].shape)
        if name == STEP_SLOT:
            return ()
        if slot_param(name) is not None:
            # NOTE: only the slots this optimizer keeps: Adam's moments loaded into an SGD net
            # were kept, unread, and written to its checkpoints from then on
            return slots.get(name)
        nid = self.user.params.get(name)
        return None if nid is None else tuple(int(d) for d in self.user.node(nid).attrs["shape"])

    # *** executables ***
    def _exe(self, kind: str, batch: int, lengths: dict | None = None):
        """The executable of `kind` for `batch` and `lengths` (default self.lengths); keyed
        (kind, batch) when the model has no other symbol, else (kind, batch, lengths)."""
        key = _key(kind, batch, lengths or self.lengths)
        if _trains(kind) and _ranks() != self._train_ranks:
            # NOTE: nnlang.distributed.init() came after this net's first step: the steps built
            # before it have no allreduce, and would train each rank's own model silently
            for old in [k for k in self._exes if _trains(k[0])]:
                del self._exes[old]
                self._checks.pop(old, None)
            self._train_ranks = _ranks()
        if key not in self._exes:
            with paused_gc(), one_swap_warning(self._swap_said):
                self._exes[key] = self._build_exe(kind, batch, dict(key[2]) if key[2:] else {})
            self._forget_others(key)
        else:
            self._exes[key] = self._exes.pop(key)  # NOTE: most recently used last
        return self._exes[key]

    def _forget_others(self, latest) -> None:
        """Drops the least recently used executables of other lengths or batch sizes beyond
        KEEP_LENGTHS or KEEP_BYTES of buffers (the net's own batch at the default lengths
        stays)."""
        home = _key(latest[0], self.batch, self.lengths)
        others = [k for k in self._exes if k[0] == latest[0] and k not in (latest, home)]
        for old in over_budget(others, lambda k: _buffer_bytes(self._exes[k][0])):
            del self._exes[old]
            self._checks.pop(old, None)

    def _build_exe(self, kind: str, batch: int, lengths: dict):
        if _trains(kind) and _ranks() > 1 and self.backend == "reference":
            # NOTE: a library loop under nnlang.distributed (the CLI refuses it at its start):
            # each rank trained its own model on its rows, 1/N of their gradient, silently
            from nnlang.backends.collective import interpreter_refused
            raise interpreter_refused(_ranks(), 'compile with backend="numba" (or "cupy") '
                                                "under nnlang.distributed")
        if _trains(kind):
            # NOTE: the weights fit (checked at init); training adds their gradients and, the
            # first time, the optimizer's slots
            slots = 0 if STEP_SLOT in self.state else \
                len(OPTIMIZERS[self.config.optimizer.name].slots)
            check_memory(self.user, batch, self.dtype, slots, weights_held=True)
            wrt = tuple(kind.partition(":")[2].split(",")) if ":" in kind else ()
            g = train_graph(self.user, self.config, batch, self.dtype, wrt_inputs=wrt,
                            lengths=lengths, ranks=_ranks(), rank=_rank())
            if kind != "train":
                g = _gradient_graph(g)
            for name, nid in g.params.items():  # optimizer slots start at zero
                if name not in self.state:
                    shape = tuple(int(d) for d in g.node(nid).shape)
                    self.state[name] = aligned_zeros(shape, g.node(nid).dtype)
                    self._fresh.add(name)
        else:
            results = ("outputs",) if kind == "predict" else ("outputs", "losses", "metrics")
            g = forward_graph(self.user, batch, self.dtype, results, lengths,
                              divided=kind == "eval")
        return _compile(g, self.backend, self.state, self.disable, self.unwritten()), g

    def unwritten(self) -> int:
        """Bytes this net allocated that nothing has written yet: its executables' buffers
        until they first run, and the optimizer's slots (zeros) until a train step runs.
        NOTE: Linux gives such memory no pages until it is written, so MemAvailable does not
        count it yet; each new executable's memory check must, or the train and eval steps,
        buckets of lengths or decoders that each fit alone are killed together."""
        if any(getattr(e, "written", True) for k, (e, _) in self._exes.items() if _trains(k[0])):
            self._fresh.clear()
        return sum(_buffer_bytes(e) for e, _ in self._exes.values()
                   if not getattr(e, "written", True)) \
            + sum(self.state[k].nbytes for k in self._fresh if k in self.state)

    def prepare(self, kind: str = "train", batch: int | None = None) -> None:
        """Compiles the `kind` executable (train | eval | predict) for `batch` now rather than
        on its first call."""
        _check_kind(kind, "prepare")
        _check_batch(batch, "prepare", "leave it out to prepare the net's own batch")
        with self._lock:
            self._exe(kind, batch or self.batch)

    def graph(self, kind: str = "train"):
        """The optimized-input primitive graph of `kind` (train | eval | predict)."""
        _check_kind(kind, "graph")
        with self._lock:
            return self._exe(kind, self.batch)[1]

    def _arrays(self, feeds) -> dict:
        """`feeds` with each of the model's inputs as a numpy array of numbers, as given (the
        dtype and shape are the executable's to check)."""
        if not isinstance(feeds, dict):
            raise NNError(f"feeds are {type(feeds).__name__}: give a dict of input name -> "
                          "array", hint=f"the model's inputs: {_names(self.user)}")
        _check_names(feeds, "feeds", "input names",
                     [n for n in self.user.inputs if not n.startswith("_")])
        out = dict(feeds)
        for name, nid in self.user.inputs.items():
            if name in feeds:
                declared = self.user.node(nid).type
                out[name] = _numbers(feeds[name], f"input '{name}'", declared)
                if out[name].ndim == 0 and self.user.node(nid).shape:
                    raise NNError(f"input '{name}' is a single value; the model declares "
                                  f"{declared}",
                                  hint="give a batch: an array whose first dim is the batch")
        return out

    def _run(self, kind: str, feeds: dict, extra: dict, fetch: bool = True) -> tuple:
        """(results, executable, graph) of one call of the `kind` executable for the batch
        and lengths of `feeds`."""
        with self._lock:
            exe, g, feeds = self._prepared(kind, feeds, extra)
            return exe.run(feeds, fetch), exe, g

    def _prepared(self, kind: str, feeds: dict, extra: dict) -> tuple:
        """(executable, graph, checked feeds) of a call of `kind` (compiled now if new)."""
        feeds = self._arrays(feeds)
        batch, lengths = _sizes_of(self.user, feeds, self.lengths, self.batch)
        key = _key(kind, batch, lengths)
        exe, g = self._exe(kind, batch, lengths)
        feeds = {**self._cast(feeds, g), **extra}
        if key not in self._checks:
            self._checks[key] = index_inputs(g)
        check_indices(self._checks[key], feeds)
        if "_rng" in g.inputs:
            # NOTE: wrapped into int64 in Python: a seed of 2**62 or more overflowed the cast
            # (OverflowError at the first step; a numpy uint64 seed wrapped with a warning).
            # Seeds below 9.2e12 keep the stream they always had.
            feeds["_rng"] = np.int64((int(self.seed) * 1_000_003 + self.step) % 2**63)
        return exe, g, feeds

    def _cast(self, feeds: dict, g) -> dict:
        out = {}
        for name, nid in g.inputs.items():
            if name.startswith("_"):
                continue
            if name not in feeds:
                given = [k for k in feeds if k not in g.inputs and not k.startswith("_")]
                guess = closest(name, given)
                raise NNError(f"missing input '{name}'",
                              hint=f"the feeds have '{guess}', which is not an input: did you "
                              f"mean '{name}'?" if guess else
                              f"the model's inputs: {_names(g)}")
            node, arr = g.node(nid), feeds[name]
            user = self.user.node(self.user.inputs[name])
            if node.dtype.startswith("int"):
                _check_ids(arr, name, node.dtype, user.type)
            else:   # NOTE: a pass over the data only when it is wider than the input's dtype
                _check_fits(arr, node.dtype, f"input '{name}'")
            want = tuple(int(d) for d in node.shape)
            if arr.shape != want:
                batched = bool(user.shape) and isinstance(user.shape[0], Sym)
                arr = _reshaped(arr, want, name, user.type, batched)
            out[name] = np.array(arr, dtype=node.dtype, order="C", copy=None)
        return out

    def train_step(self, feeds: dict, fetch: bool = True) -> float | None:
        """One fused step (forward, backward, update); returns the loss. Metrics: last_metrics
        (with each loss by its name too, when the model has several: the loss is their total).

        fetch=False returns None and leaves the loss and metrics where the step computed them,
        so on a GPU the step ends without waiting for the device; `fetch()` then reads those
        of every such step at once."""
        fetch = as_bool(fetch, "train_step(fetch=...)")
        if self.step == 0 and not self.total_steps and self.config.schedule is not None \
                and self.config.schedule.name == "cosine":
            warnings.warn("the cosine schedule decays over the whole run, and this net does "
                          "not know its length: after the warm-up the rate stays at the base "
                          "rate. Pass total_steps = epochs * steps per epoch to "
                          "nnlang.compile (nnlang train does)", stacklevel=2)
        with self._lock:
            lr = self.learning_rate()
            exe, _, feeds = self._prepared("train", feeds, lr_feeds(lr, self.dtype))
            # NOTE: a KeyboardInterrupt between the step's kernels, or between the step and its
            # counters, left the weights half updated and net.step behind the optimizer's own
            # count (which a state dict then carried): a library loop's Ctrl-C waits for the
            # whole step, as `fit`'s Interrupts make it wait (there SIGINT is theirs already).
            # The compile above stays interruptible.
            held = ctrl_c_held() if signal.getsignal(signal.SIGINT) is \
                signal.default_int_handler else nullcontext()
            with held:
                out = exe.run(feeds, fetch)
                self.step += 1
                if self.steps_per_epoch:
                    self.epoch = self.step // self.steps_per_epoch
                if not fetch:
                    self._unread.append((exe, out))
            if not fetch:
                return None
            loss, self.last_metrics = _loss_and_metrics(out)
            return loss

    def learning_rate(self, step: int | None = None) -> float:
        """The schedule's learning rate at (0-based) `step`, default the next step to run, in
        the current epoch (a net given steps_per_epoch knows each step's epoch, and uses that):
        the one place it is computed."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))
                                 or step < 0):
            raise NNError(f"learning_rate(step={step!r}): a step is a whole number of at least 0",
                          hint="leave it out for the next step's rate")
        # NOTE: with steps_per_epoch, train_step sets epoch = step // steps_per_epoch: the net's
        # current epoch, used for another step, gave a rate that step never runs at
        epoch = (self.step if step is None else int(step)) // self.steps_per_epoch \
            if self.steps_per_epoch else self.epoch
        return learning_rate(self.config.optimizer.options["lr"], self.config.schedule,
                             self.step if step is None else step, epoch, self.total_steps,
                             self.lr_scale)

    def end_epoch(self) -> int:
        """Marks a pass over the data done: epoch-based schedules (step, exponential) move on.
        `train_step` counts steps itself; a library loop calls this after each epoch (or
        compiles the net with `steps_per_epoch`, and `train_step` counts epochs too)."""
        if self.steps_per_epoch:
            raise NNError(f"this net counts its epochs itself, every {self.steps_per_epoch} "
                          "steps (steps_per_epoch): end_epoch() would count one twice",
                          hint="drop the end_epoch() call, or compile without steps_per_epoch")
        self.epoch += 1
        return self.epoch

    def fetch(self, divided: bool = False) -> list[tuple[float, dict]]:
        """(loss, metrics) of each `train_step(..., fetch=False)` since the last call, in
        order; one device transfer for all of them. `divided`: the metrics also hold each mean
        over kept rows among the terms and its divisor (`DIVIDED_VALUE` + id, `DIVISOR` + id),
        what an epoch's exact means need (`trainer._Sums`)."""
        with self._lock:
            unread, self._unread = self._unread, []
            if not unread:
                return []
            results = unread[-1][0].read_all([out for _, out in unread])
        taken = [_loss_and_metrics(out, divided) for out in results]
        self.last_metrics = _plain(taken[-1][1])
        return taken

    def evaluate(self, feeds: dict) -> dict:
        """Losses and metrics on one batch, without updating anything: a loss by its name, and
        with several, `loss` their total besides each by name (as train_step reports them).
        A mean over kept rows (ignore_index, class weights) is this batch's: over several
        batches weigh it by its divisor (`evaluate_divided`), not by the rows."""
        return self.evaluate_divided(feeds)[0]

    def evaluate_divided(self, feeds: dict) -> tuple[dict, dict]:
        """`evaluate`'s values, and {id: (value, divisor)} of each mean over kept rows among
        their terms (passes/pipeline.py `divided_terms`): what a whole set's exact mean needs."""
        out, _, g = self._run("eval", feeds, {})
        losses = {k: float(out[k]) for k in g.losses}
        if len(losses) > 1:
            losses = {"loss": sum(losses.values()),
                      **{k: losses[k] for k in named_losses(losses)}}
        metrics = {k: float(out[k]) for k in g.metrics
                   if not divided_key(k)}
        divided = {int(k[len(DIVIDED_VALUE):]): (float(out[k]),
                                                 float(out[DIVISOR + k[len(DIVIDED_VALUE):]]))
                   for k in g.metrics if k.startswith(DIVIDED_VALUE)}
        return {**losses, **metrics}, divided

    def gradients(self, feeds: dict, inputs=()) -> dict:
        """d(loss)/d(parameter) by name, for one batch, without updating anything; `inputs`
        (names of float inputs) adds d(loss)/d(input) under each input's name. Under
        `nnlang.distributed` (each rank given its shard) both are of the global batch's loss:
        the weights' averaged over the ranks, the inputs' those of this rank's rows."""
        try:   # NOTE: None, as for no inputs
            inputs = (inputs,) if isinstance(inputs, str) else \
                tuple(dict.fromkeys(() if inputs is None else inputs))
        except TypeError:   # NOTE: an int, or a list holding lists: a bare TypeError before
            raise NNError(f"gradients(inputs={inputs!r}): give an input's name or a list of "
                          "names", hint=f"the model's inputs: {_names(self.user)}") from None
        for name in inputs:
            nid = self.user.inputs.get(name) if isinstance(name, str) else None
            if nid is None or name.startswith("_"):
                raise NNError(f"gradients(inputs=...): {name!r} is not an input of this model",
                              hint=f"the model's inputs: {_names(self.user)}")
            dtype = self.user.node(nid).dtype
            if not dtype.startswith("float"):
                raise NNError(f"gradients(inputs=...): input '{name}' is {dtype}; only a float "
                              "input has a gradient", hint="integer inputs (labels, token ids) "
                              "are not differentiable; leave them out")
        kind = f"grad:{','.join(inputs)}" if inputs else "grad"
        out = self._run(kind, feeds, lr_feeds(0.0, self.dtype))[0]
        return {k[len("grad:"):]: v for k, v in out.items() if k.startswith("grad:")}

    def forward(self, feeds: dict) -> dict:
        """The model's outputs (dropout off)."""
        if not self.user.outputs:
            # NOTE: the prediction graph of a model with only losses is empty: it returned {}
            # for any feeds, a wrong-shaped or missing input included
            raise no_output_error(self.user, "for forward to compute",
                                  " (its losses and metrics are the train and eval steps')")
        return self._run("predict", feeds, {})[0]

    def generate(self, prompts, *, max_new=None, temperature=None, top_k=None, top_p=None,
                 beam=None, length_penalty=None, seed=None, stop=None, stop_strings=None,
                 greedy=None, repetition_penalty=None, no_repeat_ngram_size=None,
                 min_new_tokens=None, num_return_sequences=None, streamer=None,
                 tokenizer=None, data_dir=None):
        """Continues text prompts (one string or a list, decoded in one batch) with the model's
        generate section (docs/generation.md): greedy unless temperature/top_k/top_p ask for
        sampling, or beam search with beam > 1. Returns a `Generation` (.texts, .samples,
        .mode). `stop` ends a sequence at a token; `stop_strings` (a string or a list, HF's)
        at the token that completes one of them, over several tokens if need be, the text kept
        through it. `repetition_penalty`, `no_repeat_ngram_size` and `min_new_tokens` act on
        the scores as Hugging Face's logits processors do, before the temperature;
        `num_return_sequences` samples (or keeps the best beams) n per prompt, `.samples`
        grouped by prompt. `streamer` (HF's: `put(ids)` with the prompt's ids, then with each
        new token's id as it is chosen, `end()` when decoding stops) follows one prompt's
        sampling or greedy decoding.
        The tokenizer defaults to the checkpoint's (a Net from `restore`),
        else the train data set's."""
        from nnlang.runtime.generate import generate
        with self._lock:
            return generate(self, prompts, tokenizer, data_dir, streamer, max_new=max_new,
                            temperature=temperature, top_k=top_k, top_p=top_p, beam=beam,
                            length_penalty=length_penalty, seed=seed, stop=stop,
                            stop_strings=stop_strings, greedy=greedy,
                            repetition_penalty=repetition_penalty,
                            no_repeat_ngram_size=no_repeat_ngram_size,
                            min_new_tokens=min_new_tokens,
                            num_return_sequences=num_return_sequences)


def _loss_and_metrics(out: dict, divided: bool = False) -> tuple[float, dict]:
    out = dict(out)
    loss = float(out.pop("loss"))
    metrics = {k: float(v) for k, v in out.items()}
    return loss, metrics if divided else _plain(metrics)


def _plain(metrics: dict) -> dict:
    """The metrics a caller reads: without the kept rows' terms and divisors (`fetch`)."""
    return {k: v for k, v in metrics.items() if not divided_key(k)}


def _on_device(a) -> bool:
    return hasattr(a, "__cuda_array_interface__")


def _host(a) -> np.ndarray:
    return a.get() if _on_device(a) else a.copy()


def _gradient_graph(g):
    """The train graph with its gradients as outputs and no state updates."""
    from nnlang.passes.pipeline import drop_unused_inputs
    g.outputs = {f"grad:{k}": v for k, v in g.grads.items()}
    g.grads, g.updates = {}, {}
    g.metrics = {}
    return drop_unused_inputs(g)


def over_budget(others: list, nbytes) -> list:
    """Of `others` (kept entries, least recently used first; `nbytes(key)` the bytes each
    holds), those to drop so that at most KEEP_LENGTHS stay, holding at most KEEP_BYTES: the
    one budget of the net's executables for other sizes and the generator's decoders."""
    sizes = [nbytes(k) for k in others]
    held, drop = sum(sizes), []
    for k, size in zip(others, sizes):
        if len(others) - len(drop) <= KEEP_LENGTHS and held <= KEEP_BYTES:
            break
        held -= size
        drop.append(k)
    return drop


def _buffer_bytes(exe) -> int:
    memory = getattr(exe, "memory", None)  # NOTE: the reference interpreter plans no buffers
    return memory.total_bytes if memory is not None else 0


def _key(kind: str, batch: int, lengths: dict) -> tuple:
    return (kind, batch, tuple(sorted(lengths.items()))) if lengths else (kind, batch)


def _names(g) -> str:
    return ", ".join(n for n in g.inputs if not n.startswith("_"))


def _sizes_of(user, feeds: dict, default: dict, batch: int) -> tuple[int, dict]:
    """(batch, {symbol: size}) read off the feeds' shapes where the inputs declare a plain
    symbol (`[batch, seq]`); a symbol no fed input carries keeps its `default` size."""
    bound: dict = {}
    for name, nid in user.inputs.items():
        if name.startswith("_") or name not in feeds:
            continue
        declared, got = user.node(nid).shape, np.shape(feeds[name])
        if len(declared) != len(got):
            continue  # NOTE: a flattened feed; `_cast` reshapes it or says what is wrong
        for axis, (d, n) in enumerate(zip(declared, got)):
            if not (isinstance(d, Sym) and len(d.names) == 1 and d.coeff == 1):
                continue
            sym = d.names[0]
            if n < 1:
                raise NNError(f"input '{name}' has {sym} = {n} (dim {axis} of shape "
                              f"{list(got)})", hint=f"every {sym} must be at least 1")
            first = bound.setdefault(sym, (n, name))
            if first[0] != n:
                raise NNError(f"input '{name}' has {sym} = {n} (dim {axis} of shape "
                              f"{list(got)}), but input '{first[1]}' has {sym} = {first[0]}",
                              hint=f"inputs that share the symbol {sym} must agree on its size "
                                   "in one call: " + ("give each as many rows" if sym == "batch"
                                                      else "pad them to the same length"))
    batch = bound.pop("batch", (None,))[0] or _batch_of(user, feeds, batch)
    return batch, {s: bound[s][0] if s in bound else n for s, n in default.items()}


def _trains(kind: str) -> bool:
    """An executable with gradients (train, grad:...): the ones that average over the ranks."""
    return kind == "train" or kind.startswith("grad")


def _ranks() -> int:
    """The processes of the data-parallel run this one belongs to (`nnlang.distributed`)."""
    from nnlang.backends.collective import current
    world = current()
    return world.size if world else 1


def _rank() -> int:
    """This process's index among them."""
    from nnlang.backends.collective import current
    world = current()
    return world.rank if world else 0


def _batch_of(user, feeds: dict, default: int) -> int:
    """The first dim of the first fed array whose input declares `batch` first (a flattened
    feed, as [N, 1, 28, 28] for [batch, 784]); else the net's batch."""
    for k, v in feeds.items():
        nid = None if k.startswith("_") else user.inputs.get(k)
        if nid is not None and np.ndim(v) and _leads_with_batch(user, nid):
            return int(np.shape(v)[0])
    # NOTE: an input without a batch axis says nothing of the batch (a [4] vector fed to a model
    # that broadcasts it to [batch, 4] runs at the net's batch, not at 4); no feeds: the call
    # names the first missing input, and a model without inputs runs at the net's batch
    return default


def _leads_with_batch(user, nid) -> bool:
    shape = user.node(nid).shape
    return bool(shape) and shape[0] == Sym.of("batch")


class Loaded(NamedTuple):
    """What `load_state_dict` left out: parameters it had no value for, names it skipped."""
    missing: list
    unexpected: list


def _state_problems(unexpected: list, missing: list, known, optimizer: str) -> list[str]:
    out = []
    for name in unexpected[:3]:
        if slot_param(name) in known:
            out.append(f"'{name}' is optimizer state that this net's {optimizer} does not "
                       "keep (saved with another optimizer?)")
            continue
        hint = did_you_mean(name, known)
        out.append(f"'{name}' is not in this model's state" + (f" ({hint})" if hint else ""))
    if len(unexpected) > 3:
        out.append(f"{len(unexpected) - 3} more unknown names")
    for what, names in (("parameter(s)", [k for k in missing if k in known]),
                        ("optimizer state", [k for k in missing if k not in known])):
        if names:
            out.append(f"no value for {what} {', '.join(names[:6])}"
                       + (", ..." if len(names) > 6 else ""))
    return out


def declared_dtype(user) -> str:
    """The dtype a net of the model computes in when none is asked for: float64 when every
    float input and weight it declares is float64, else float32. NOTE: a float32 net of a
    float64 model rounded its learning rate and Adam's moments to float32 (lr = 0.1 moved a
    weight by 0.10000000149 times its gradient), as PyTorch's float64 model keeps neither."""
    floats = {user.node(nid).attrs.get("dtype") for names in (user.inputs, user.params)
              for k, nid in names.items() if not k.startswith("_")} & {"float32", "float64"}
    return "float64" if floats == {"float64"} else "float32"


def _dtype_name(dtype):
    """numpy's spelling of a dtype (np.float32, np.dtype("float64")) as its name, the one a
    Net keeps; anything else is left for _check_options to refuse."""
    if dtype is None or isinstance(dtype, str):   # NOTE: np.dtype(None) is float64
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return dtype


def _check_options(batch, dtype, seed, disable, total_steps=0, steps_per_epoch=None) -> tuple:
    """The compile options a Net is built from, checked before anything is allocated; returns
    the passes to switch off as a tuple of names."""
    for what, v, low in (("total_steps", total_steps, 0),
                         ("steps_per_epoch", 1 if steps_per_epoch is None else steps_per_epoch,
                          1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise NNError(f"{what}={v!r}: a whole number of at least {low}")
    _check_batch(batch, "", "leave it out to use the train section's batch")
    if dtype not in ("float32", "float64"):
        raise NNError(f"dtype={dtype!r}: nets compute in float32 or float64",
                      hint="int inputs keep the dtype the model declares for them")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise NNError(f"seed={seed!r}: a seed is a whole number of at least 0")
    return switched_off(disable)


def _check_names(mapping: dict, what: str, names: str, known) -> None:
    """The keys of a dict of arrays are names (strings), or the lookups below would fail on
    one; an int key is what a user indexing feeds by position writes."""
    for key in mapping:
        if not isinstance(key, str):
            raise NNError(f"{what}: the key {key!r} ({type(key).__name__}) is not a name; the "
                          f"keys are {names}", hint=f"the model's: {', '.join(list(known)[:8])}"
                          + (", ..." if len(known) > 8 else ""))


def _check_batch(batch, where: str, hint: str) -> None:
    """`batch` (None: the default) is a whole number of rows an executable can count."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer))
                              or not 1 <= batch <= MAX_BATCH):
        raise NNError(f"{where + '(' if where else ''}batch={batch!r}{')' if where else ''}: a "
                      "batch size is a whole number from 1 to 2**31 - 1", hint=hint)


# NOTE: the executables a caller may ask for by name; `grad:...` ones are gradients()' own
KINDS = ("train", "eval", "predict")


def _check_kind(kind, where: str) -> None:
    if kind not in KINDS:
        raise NNError(f"{where}(kind={kind!r}): the kinds of executable are "
                      f"{', '.join(KINDS)}", hint=did_you_mean(kind, KINDS)
                      if isinstance(kind, str) else None)


def _numbers(value, what: str, declared: str = "") -> np.ndarray:
    """`value` as a numpy array of bools, integers or floats; what else it holds (text,
    complex numbers, None, rows of different lengths) is an error naming `what`."""
    try:
        arr = np.asarray(value)
    except Exception as err:  # NOTE: a foreign array's __array__ may raise anything
        if isinstance(value, (list, tuple)) and isinstance(err, ValueError):
            raise NNError(f"{what} is not an array: its rows have different lengths",
                          hint="pad the rows to one length") from None
        # NOTE: e.g. a torch tensor that requires grad, or in bfloat16, which numpy lacks
        raise NNError(f"{what} ({with_article(type(value).__name__)}) cannot be read as a "
                      f"numpy array: {err}", hint="pass a numpy array of numbers (for a torch "
                      "tensor: t.detach().cpu().float().numpy())") from None
    if arr.dtype == object and arr.size and all(
            isinstance(v, (int, float, np.integer, np.floating)) for v in arr.flat):
        # NOTE: numbers numpy keeps as objects: a Python int past int64/uint64 (a hash id,
        # 10**400) or a list given dtype=object. They were "values that are not numbers";
        # as float64 the dtype checks after this say which value the input cannot hold
        try:
            return arr.astype(np.float64)
        except OverflowError:
            digits = max(len(str(abs(v))) for v in arr.flat if isinstance(v, int))
            raise NNError(f"{what} holds a whole number of {digits} digits, too large for any "
                          "numpy number type"
                          + (f"; the model declares {declared}" if declared else ""),
                          hint="give numbers a numpy array can hold") from None
    if arr.dtype.kind not in "biuf":
        got = with_article(type(value).__name__) if arr.ndim == 0 and arr.dtype == object else \
            {"U": "text", "S": "bytes", "c": "complex numbers", "M": "dates",
             "m": "time spans"}.get(arr.dtype.kind, "values that are not numbers")
        raise NNError(f"{what} holds {got}" + (f"; the model declares {declared}"
                                               if declared else ""),
                      hint="give a numpy array (or nested lists) of numbers")
    return arr


def _check_fits(arr: np.ndarray, dtype: str, what: str) -> None:
    """A finite float too large for `dtype` (1e300 into float32) would be cast to infinity
    with only numpy's RuntimeWarning."""
    if arr.dtype.kind != "f" or arr.dtype.itemsize <= np.dtype(dtype).itemsize or not arr.size:
        return
    finite = arr[np.isfinite(arr)]
    bad = finite[np.argmax(np.abs(finite))].item() if finite.size else 0.0
    largest = float(np.finfo(dtype).max)   # NOTE: a Python float: no cast to warn in
    if abs(bad) > largest:
        raise NNError(f"{what} holds {bad:g}, which {dtype} cannot hold (its "
                      f"largest is {largest:g})", hint="was it saved from another "
                      "program? scale it, or compile the net with dtype=\"float64\"")


def _check_ids(arr: np.ndarray, name: str, dtype: str, declared: str) -> None:
    """An int input takes whole numbers its dtype can hold, so none is silently cut or
    wrapped around."""
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.trunc(arr)):
        # NOTE: said apart: a NaN label (a missing value) is no fraction to round
        nan = np.isnan(arr)
        at = tuple(int(i) for i in np.argwhere(nan if nan.any() else arr != np.trunc(arr))[0])
        raise NNError(f"input '{name}' holds " + ("NaN" if nan.any() else "values that are not "
                      "whole numbers") + f" (float {arr.dtype}, the first at index "
                      f"{list(at)}); the model declares {declared}",
                      hint="drop or fill the rows without a label" if nan.any() else
                      "pass integer ids (an int array)")
    info = np.iinfo(dtype)
    if arr.size and arr.dtype != np.dtype(dtype) and arr.dtype.kind != "b":
        # NOTE: compared as Python numbers: float16 ids against int32's bounds made numpy
        # cast the bounds to float16, warning "overflow encountered in cast" on every call
        lo, hi = arr.min().item(), arr.max().item()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise NNError(f"input '{name}' holds the value {bad}, which {dtype} cannot hold; "
                          f"the model declares {declared}", hint="ids are at least 0 and "
                          "below the vocabulary or class count")


def _reshaped(arr: np.ndarray, want: tuple, name: str, declared: str,
              batched: bool) -> np.ndarray:
    """`arr` in the executable's shape `want`: a scalar input takes any one value, and a
    batch of flattened or unflattened rows (an image as [N, 1, 28, 28] for [batch, 784])
    takes the same batch of rows."""
    if not want:
        if arr.size == 1:
            return arr.reshape(())
        raise NNError(f"input '{name}' has shape {list(arr.shape)}; the model declares "
                      f"{declared}, one value", hint="give a scalar")
    rows = int(np.prod(want[1:]))
    if arr.ndim and int(np.prod(arr.shape[1:])) == rows:
        if arr.shape[0] == want[0]:
            return arr.reshape(want)
        if batched:
            raise NNError(f"input '{name}' has {arr.shape[0]} rows (shape {list(arr.shape)}), "
                          f"where this call's other inputs give {want[0]}; the model declares "
                          f"{declared}", hint="every input of one call holds the same "
                                              "examples")
    # NOTE: one example without its batch axis is the common case: say how to make a batch
    one = batched and int(np.prod(arr.shape)) == rows and arr.ndim < len(want)
    raise NNError(f"input '{name}' has shape {list(arr.shape)}, the model declares "
                  f"{declared}", hint=f"one example is a batch of one: {name}[None] (shape "
                  f"{[1, *arr.shape]})" if one else None)


def _default_config():
    from nnlang.frontend.train_config import TrainConfig
    return TrainConfig()
