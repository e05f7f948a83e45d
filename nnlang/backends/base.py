"""The `Backend` protocol the executable (`runtime/executable.py`) runs on, after codegen: where
arrays live, rendering and compiling generated kernels, running a step, and the services the
library primitives' lowerings (`OpDef.lower[backend.name]` in `ops/`) call.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol

import numpy as np

from nnlang.errors import NNError
from nnlang.ir.graph import Node, op_attrs

Call = tuple[Callable, tuple]  # a function and its prebound arguments, run as fn(*args)
Rendered = tuple[str, str]     # (header comment, source) of one generated kernel


def run_in_order(calls):
    """Each (fn, args) call in turn, on this thread."""
    for fn, args in calls:
        fn(*args)


class State(MutableMapping):
    """Persistent arrays by name (params and optimizer slots). Setting copies into the existing
    buffer, because compiled calls hold references to it."""

    def __init__(self, arrays: dict):
        self._arrays = arrays

    def __getitem__(self, name):
        return self._arrays[name]

    def __setitem__(self, name, value):
        if name not in self._arrays:
            raise KeyError(f"no state named {name!r}")
        np.copyto(self._arrays[name], np.asarray(value), casting="same_kind")

    def __delitem__(self, name):
        raise TypeError("state entries cannot be removed")

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)


class Backend(Protocol):
    name: str          # as --backend spells it
    target: str        # the key of its lowerings in `OpDef.lower`: "numba" or "cuda"
    xp: Any            # the array module of its arrays: numpy, or cupy
    render_only: bool  # renders kernels and compiles nothing (`--emit kernels` without a GPU)

    # *** where arrays live ***
    def alloc(self, nbytes: int):
        """A planned buffer of raw bytes."""

    def upload(self, dst, src: np.ndarray) -> None:
        """A host array (a fed batch) copied into `dst`, cast to its dtype."""

    def download(self, src) -> np.ndarray: ...

    def state_array(self, shared: dict, name: str, shape: tuple, dtype: str):
        """The array of a parameter or slot: the caller's own `shared[name]` when it fits, so
        the executables of one model share their state."""

    def state(self, arrays: dict) -> MutableMapping:
        """The mapping `Executable.state` shows the persistent arrays through."""

    def const_array(self, value, dtype: str): ...

    def view(self, node: Node, base):
        """A view op (`schedule.find_views` chose it) applied to `base` without a copy."""

    def reshape(self, a, shape): ...

    def sync(self) -> None: ...

    # *** generated kernels ***
    def kernel_call(self, kernel, loop_shape: tuple, arrays: list) -> tuple[Rendered, Call]:
        """A fused kernel (`codegen/kernel.py`) rendered, compiled and bound to its arrays
        (`Executable._kernel_arrays`)."""

    def multi_call(self, kernels: list, sizes: list[int], arrays: list[list]) \
            -> tuple[Rendered, Call, Any] | None:
        """One launch over several 1-d kernels (`passes/multi_tensor.py`) and what the caller
        keeps alive for it (the arrays its address tables point into), or None when they
        render differently (the executable then runs them one by one)."""

    def together(self) -> AbstractContextManager:
        """Around the building of all calls of an executable: compiles may go together."""

    def resolved(self, call: Call) -> Call:
        """A call built inside `together`, made runnable once it has ended."""

    # *** library primitives (what their lowerings call) ***
    def library_call(self, node: Node, inputs: list, out) -> Call:
        """A call computing a non-fused op into `out`: its registry entry's lowering."""

    def located(self, node: Node, call: Call) -> Call:
        """The call of an INDEX op (`node`), whose ids computed in the model may fall past its
        table: the error it then gives is `ops.index.index_error` at `node`, raised by the
        call itself (numba) or when the results are read (CUDA: `fault_flag`)."""

    def gemm(self, a, b, out) -> Call:
        """out = a @ b through the backend's BLAS."""

    def allreduce(self, src, out) -> Call:
        """out = src summed over the processes of a data-parallel run (MPI, NCCL)."""

    def specialize(self, fn, args: tuple) -> Call:
        """A call of a compiled kernel (a generated one, or a lowering's) with fixed arguments,
        cheapest to launch repeatedly."""

    # numba target: `jit(pyfunc, parallel)` compiles a lowering's kernel body.
    # cuda target: `library_kernel(name, source)` compiles a lowering's CUDA source;
    # `launch(kernel, total, args, keep)` one thread per element; `ctype(dtype)`, `prelude`,
    # `to_device(host)` and `pointer_table(arrays)` help build them.

    # *** running ***
    def threaded_blas(self, products: list) -> bool:
        """Should a step with these (a shape, b shape) products hand them to BLAS threads?"""

    def launcher(self, calls: list[Call], updates: list, threaded: bool) -> Callable[[], None]:
        """The function running one step: every call, then each (state, update) copy."""

    def splits(self, calls: list[Call]) -> bool:
        """Does some call share its work out over threads (`Executable.summary`)?"""

    def results(self, named: list, fetch: bool) -> dict:
        """A step's (name, array) results as the caller gets them: host copies, or with
        fetch=False, device copies that `read_all` downloads later."""

    def read_all(self, results: list[dict]) -> list[dict]: ...


def library_call(backend: Backend, node: Node, inputs: list, out) -> Call:
    """The lowering of `node`'s op for `backend` from the op's registry entry."""
    from nnlang.ops import registry
    opdef = registry.get(node.op)
    if opdef.is_composite:
        # NOTE: composites are decomposed before autodiff, so only a rule that runs later (an
        # op's gradient, an optimizer update) can leave one here; a lowering is not the fix
        raise NNError(f"op '{node.op}' is a composite, and one reached the {backend.name} "
                      "backend undecomposed", span=node.span,
                      hint="a gradient or update rule emits primitives only: write "
                           f"'{node.op}' with the ops it decomposes to (`nnlang ops "
                           f"{node.op}`), e.g. b.mul(d, d) for b.square(d)")
    lower = opdef.lower.get(backend.target)
    if lower is None:
        raise NNError(f"op '{node.op}' has no lowering for the {backend.name} backend",
                      span=node.span, hint="add one to the op's registry entry (`lower`; see "
                      "docs/contributing.md), or use another --backend")
    fn, args = lower(backend, op_attrs(node), inputs, out)
    return backend.located(node, (fn, args)) if opdef.has(registry.INDEX) else (fn, args)


def raising_located(node: Node, call: Call) -> Call:
    """`call` raising its IndexError (ids computed in the model, past the table) as the
    located error of `node`: `Backend.located` of a backend whose calls raise on the host."""
    from nnlang.ops.index import index_error
    fn, args = call

    def located(*a):
        try:
            fn(*a)
        except IndexError as err:
            raise index_error(node, err) from None
    return located, args


_BACKENDS = {}


def get_backend(name: str, render_only: bool = False) -> Backend:
    """The backend named `name` (one per process); `render_only`: one that renders the kernels
    it is given and compiles nothing, which needs no device (CUDA's `--emit kernels`)."""
    if render_only:
        if name != "cupy":
            raise NNError(f"the {name} backend has no render-only mode")
        from nnlang.backends.cupy_backend import CupyBackend
        return CupyBackend(render_only=True)
    if name not in _BACKENDS:
        if name == "numba":
            from nnlang.backends.numba_backend import NumbaBackend
            _BACKENDS[name] = NumbaBackend()
        elif name == "cupy":
            from nnlang.backends.cupy_backend import get_backend as _cupy
            _BACKENDS[name] = _cupy()
        else:
            raise NNError(f"unknown backend {name!r} (available: numba, cupy)")
    return _BACKENDS[name]
