"""CUDA C run on the CPU: generated kernel source compiled as host C++ with the CUDA built-ins
emulated, and launched through ctypes. Used by the host harness (`test_host_harness.py`) and by
the host stand-in for CuPy (`fake_cupy.py`).

The emulation: the blocks of a launch run one after another, the threads of a block as real
std::threads meeting at a std::barrier for `__syncthreads` (one team per launch, walking the
blocks together: the barrier at each block's end keeps its shared memory to itself),
`extern __shared__` as one static array per translation unit, `atomicAdd` through
std::atomic_ref. Kernels that need neither barriers nor atomics run their threads as a plain
loop. What this cannot show: warp scheduling, memory coalescing and NVRTC specifics.
"""
from __future__ import annotations

import ctypes
import re
import subprocess

import numpy as np

SMEM_BYTES = 1 << 16

EMULATION = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
struct nn_dim3 { unsigned x = 0, y = 0, z = 0; };
static nn_dim3 blockDim, gridDim;
static thread_local nn_dim3 threadIdx, blockIdx;
static std::barrier<>* nn_barrier = nullptr;
static void __syncthreads() { nn_barrier->arrive_and_wait(); }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
template <class T> T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
static void nn_launch(int grid, int block, bool threaded, const std::function<void()>& f) {
  gridDim.x = grid; blockDim.x = block;
  if (!threaded) {
    for (int b = 0; b < grid; ++b)
      for (int t = 0; t < block; ++t) { blockIdx.x = b; threadIdx.x = t; f(); }
    return;
  }
  std::barrier<> bar(block);
  nn_barrier = &bar;
  std::vector<std::thread> team;
  for (int t = 0; t < block; ++t)
    team.emplace_back([&f, &bar, grid, t] {
      threadIdx.x = t;
      for (int b = 0; b < grid; ++b) { blockIdx.x = b; f(); bar.arrive_and_wait(); }
    });
  for (auto& th : team) th.join();
}
"""

SMEM = f"alignas(16) unsigned char nn_smem[{SMEM_BYTES}];\n"

_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.DOTALL)


def signatures(source: str) -> dict[str, list[str]]:
    """{kernel name: C type of each parameter} of every `extern "C" __global__` function."""
    out = {}
    for name, plist in _SIGNATURE.findall(source):
        types = []
        for p in plist.split(","):
            p = " ".join(p.split())
            if p:
                types.append(re.sub(r"\s*\b\w+$", "", p))   # drop the parameter's name
        out[name] = types
    return out


def needs_threads(source: str) -> bool:
    return "__syncthreads" in source or "atomicAdd" in source


def _trampoline(symbol: str, name: str, ptypes: list[str], threaded: bool) -> str:
    args = []
    for i, t in enumerate(ptypes):
        t = t.replace("__restrict__", "").strip()
        args.append(f"({t})a[{i}]" if t.endswith("*") else f"*({t}*)a[{i}]")
    return (f'extern "C" void run_{symbol}(int grid, int block, void** a) {{\n'
            f"  nn_launch(grid, block, {'true' if threaded else 'false'}, "
            f"[&] {{ {name}({', '.join(args)}); }});\n}}\n")


def compile_so(host_cxx: list[str], directory, stem: str, text: str):
    cpp, so = directory / f"{stem}.cpp", directory / f"{stem}.so"
    cpp.write_text(text)
    done = subprocess.run([*host_cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
                           "-w", "-o", str(so), str(cpp)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"host compile of {cpp} failed:\n{done.stderr[-4000:]}")
    return ctypes.CDLL(str(so))


def build(host_cxx, directory, stem: str, source: str, kernels: dict[str, list[str]]):
    """Compiles kernels (name -> parameter C types) into a shared library of `run_<name>`."""
    threaded = needs_threads(source)
    text = EMULATION + SMEM + source + "".join(
        _trampoline(n, n, p, threaded) for n, p in kernels.items())
    return compile_so(host_cxx, directory, stem, text)


def build_modules(host_cxx, directory, stem: str, sources: list[str]):
    """Several CUDA modules (as `cupy.RawModule` takes them) in one shared library, each in a
    namespace of its own so their names cannot clash: module i's kernel `k` is `run_m<i>_k`."""
    parts = [EMULATION]
    for i, source in enumerate(sources):
        threaded = needs_threads(source)
        body = re.sub(r'extern\s+"C"\s+(?=__global__)', "", source)
        parts.append(f"namespace m{i} {{\n{SMEM}{body}\n")
        parts += [_trampoline(f"m{i}_{n}", n, p, threaded) for n, p in signatures(source).items()]
        parts.append(f"}}  // namespace m{i}\n")
    return compile_so(host_cxx, directory, stem, "".join(parts))


def launch(lib, symbol: str, grid: int, block: int, args: list) -> None:
    """args: numpy arrays (passed as the address of their first element, so a view passes
    its own start) and numpy scalars (passed by value)."""
    keep = [a if isinstance(a, np.ndarray) else np.array(a) for a in args]
    ptrs = (ctypes.c_void_p * len(keep))(*[k.ctypes.data for k in keep])
    getattr(lib, f"run_{symbol}")(ctypes.c_int(grid), ctypes.c_int(block), ptrs)
