"""The `Backend` protocol the executable runs on (after codegen): memory, compiling generated
kernel source, and the library ops that are not generated (matmul, gather, unfold, ...).
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from nnlang.ir.graph import Node

Call = tuple[Callable, tuple]  # a function and its prebound arguments, run as fn(*args)


class Backend(Protocol):
    name: str

    def alloc(self, nbytes: int) -> np.ndarray: ...

    def upload(self, dst, src: np.ndarray) -> None: ...

    def download(self, src) -> np.ndarray: ...

    def compile(self, source: str, name: str) -> Callable:
        """Function `name` from generated source; cached on disk by a hash of the source."""

    def specialize(self, fn: Callable, args: tuple) -> Call:
        """A call of a compiled kernel with fixed arguments, cheapest to launch repeatedly."""

    def library_call(self, node: Node, inputs: list, out) -> Call:
        """A call that computes a non-fused op (matmul, gather, unfold, ...) into `out`."""

    def sync(self) -> None: ...


_BACKENDS = {}


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        if name == "numba":
            from nnlang.backends.numba_backend import NumbaBackend
            _BACKENDS[name] = NumbaBackend()
        elif name == "cupy":
            from nnlang.backends.cupy_backend import get_backend as _cupy
            _BACKENDS[name] = _cupy()
        else:
            from nnlang.errors import NNError
            raise NNError(f"unknown backend {name!r} (available: numba, cupy)")
    return _BACKENDS[name]
