"""Every generated CUDA kernel compiles with nvcc for sm_80, warnings as errors: those of every
model's train graph (forward, backward and update; one translation unit per model) and those
of every op's registry samples, forward and backward, with every library primitive's CUDA
lowering (one translation unit in all), each distinct kernel once. The kernels come from the
executable's own building path on a render-only CuPy backend. Runs without a GPU.
"""
from __future__ import annotations

import subprocess
import time

import pytest

import nnlang
from nnlang.backends.cupy_backend import CupyBackend
from nnlang.codegen.render_cuda import CudaSource, module_source
from nnlang.passes.pipeline import train_graph
from nnlang.runtime.executable import compile_graph
from nnlang.runtime.net import _default_config
from tests.golden_values import LENGTH, OVERRIDES, ROOT, models
from tests.op_graphs import op_graph_with_grads, sample_cases

NVCC_FLAGS = ["-cubin", "-arch=sm_80", "-std=c++17", "-Werror", "all-warnings"]


def rendered(g) -> CupyBackend:
    """A render-only backend that was given every kernel of graph `g`'s executable."""
    be = CupyBackend(render_only=True)
    compile_graph(g, be)
    return be


def model_sources(model: str, batch: int = 2) -> list[CudaSource]:
    """The CUDA kernels of a model's train graph (shrunk as the golden values are)."""
    program = nnlang.load(ROOT / "models" / f"{model}.nn", OVERRIDES.get(model, {}))
    lengths = {s: LENGTH for s in program.graph.symbols if s != "batch"}
    return rendered(train_graph(program.graph, program.train or _default_config(),
                                batch, lengths=lengths)).rendered


_OPS: dict | None = None


def op_sources() -> tuple[list[tuple[str, CudaSource]], dict[str, str]]:
    """([(case id, kernel)], {library kernel name: source}) over every op's samples in
    float32 and float64 (built once per session: the nvcc and host checks share them)."""
    global _OPS
    if _OPS is None:
        kernels, library = [], {}
        for case, name, sample in sample_cases():
            for dtype in ("float32", "float64"):
                be = rendered(op_graph_with_grads(name, sample, dtype)[0])
                kernels += [(f"{case} {dtype}", s) for s in be.rendered]
                library.update(be.library)
        _OPS = kernels, library
    return _OPS


def nvcc_compile(nvcc: str, source: str, tmp_path, stem: str) -> None:
    cu = tmp_path / f"{stem}.cu"
    cu.write_text(source)
    done = subprocess.run([nvcc, *NVCC_FLAGS, "-o", str(tmp_path / f"{stem}.cubin"), str(cu)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"nvcc failed on {cu}:\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("model", models())
def test_model_kernels_compile_with_nvcc(model, nvcc, tmp_path):
    kernels = [s.kernel for s in model_sources(model)]
    source, names = module_source(kernels)
    t = time.perf_counter()
    nvcc_compile(nvcc, source, tmp_path, model)
    print(f"{model}: {len(kernels)} kernels, {len(set(names))} distinct, "
          f"{sum(k.reduce is not None for k in kernels)} with a reduction, "
          f"nvcc {time.perf_counter() - t:.1f}s")


def test_every_op_sample_compiles_with_nvcc(nvcc, tmp_path):
    """Generated and library kernels of every op: a new op is checked here by existing."""
    kernels, library = op_sources()
    source, names = module_source([s.kernel for _, s in kernels])
    # NOTE: library sources may repeat the prelude; it is guarded against that
    nvcc_compile(nvcc, source + "".join("\n" + src for src in library.values()), tmp_path,
                 "ops")
    print(f"{len(kernels)} kernels ({len(set(names))} distinct), {len(library)} library "
          "kernels")


def test_every_library_primitive_has_a_cuda_lowering():
    """The samples reach each library primitive's CUDA lowering, which compiles something
    (matmul is cuBLAS's, argmax and unslice CuPy's own, so those render no kernel)."""
    _, library = op_sources()
    for op in ("gather", "scatter_add", "one_hot", "concat", "unfold", "fold", "window_max",
               "window_max_grad", "triangle"):
        assert any(name.startswith(f"nn_{op}_") for name in library), (op, sorted(library))
