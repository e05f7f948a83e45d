"""A second process that compiles generated kernels into numba's disk cache, so a cold compile
uses both cores (numba compiles one function at a time per process, ~0.2 s each).

Run by `NumbaBackend` as `python -m nnlang.backends.compile_worker`, with a pickled list of
(kernel file, module name, function name, [numba signature, ...]) on stdin. It only fills the
cache; the parent loads every kernel from it afterwards, and compiles itself whatever the
worker did not manage (a failed worker costs time, never correctness).
"""
from __future__ import annotations

import importlib.util
import pickle
import sys

from nnlang.backends import numba_config  # noqa: F401  (the parent's settings)


def compile_all(jobs) -> None:
    for path, module_name, name, sigs in jobs:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        fn = getattr(module, name)
        for sig in sigs:
            fn.compile(sig)


if __name__ == "__main__":
    compile_all(pickle.load(sys.stdin.buffer))
