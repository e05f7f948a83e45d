"""Every generated CUDA kernel of every model's train graph (forward, backward and update)
compiles with nvcc for sm_80, warnings as errors: one translation unit per model, each distinct
kernel once. Runs without a GPU.
"""
from __future__ import annotations

import subprocess
import time

import pytest

import nnlang
from nnlang.backends import cuda_kernels as ck
from nnlang.codegen.render_cuda import cuda_sources, module_source
from nnlang.passes.pipeline import train_graph
from nnlang.runtime.net import _default_config
from tests.golden_values import OVERRIDES, ROOT, models

NVCC_FLAGS = ["-cubin", "-arch=sm_80", "-std=c++17", "-Werror", "all-warnings"]


def model_sources(model: str, batch: int = 2):
    """The CUDA kernels of a model's train graph (shrunk as the golden values are)."""
    program = nnlang.load(ROOT / "models" / f"{model}.nn", OVERRIDES.get(model, {}))
    return cuda_sources(train_graph(program.graph, program.train or _default_config(), batch))


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


def test_library_kernels_compile_with_nvcc(nvcc, tmp_path):
    parts = [ck.random_uniform()]
    for t in ("float32", "float64"):
        for i in ("int32", "int64"):
            parts += [ck.gather(t, i), ck.scatter_add(t, i), ck.one_hot(t, i)]
        parts += [ck.unfold(t), ck.fold(t), ck.concat(t), ck.window_max(t),
                  ck.window_max_grad(t)]
    nvcc_compile(nvcc, "".join(src for _, src in parts), tmp_path, "library")
