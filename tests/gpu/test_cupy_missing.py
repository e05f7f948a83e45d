"""`--backend cupy` without CuPy, or with CuPy but no GPU: a clear error (for the commands,
before any data is loaded), never a traceback; `--emit kernels` needs neither."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

import nnlang
from nnlang.errors import NNError
from nnlang_cli.main import app
from tests.golden_values import ROOT


def _no_device():
    def count():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count))
    return module


@pytest.fixture(params=["not installed", "no device"])
def broken_cupy(request, monkeypatch):
    from nnlang.backends import base, cupy_backend
    # NOTE: None in sys.modules makes `import cupy` raise ImportError
    monkeypatch.setitem(sys.modules, "cupy", None if request.param == "not installed"
                        else _no_device())
    monkeypatch.setattr(cupy_backend, "_BACKEND", None)
    monkeypatch.delitem(base._BACKENDS, "cupy", raising=False)
    return {"not installed": ("needs CuPy, which is not installed", "pip install 'nnlang[gpu]'"),
            "no device": ("found no usable NVIDIA GPU", "nvidia-smi")}[request.param]


def test_library_error(broken_cupy):
    """`nnlang.compile` builds nothing yet (a Net may only render its CUDA); the first step
    says what is missing."""
    message, hint = broken_cupy
    net = nnlang.compile(ROOT / "models" / "mlp.nn", backend="cupy", batch=2)
    with pytest.raises(NNError) as err:
        net.forward({"image": np.zeros((2, 784), np.float32)})
    assert message in err.value.message and hint in err.value.hint


@pytest.mark.parametrize("command", [
    ["train", "models/mlp.nn", "--data", "no-such-data-set"],   # NOTE: fails before the data
    ["eval", "models/mlp.nn", "--checkpoint", "no-such-run"],
])
def test_command_error(broken_cupy, command, monkeypatch):
    message, hint = broken_cupy
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(app, [*command, "--backend", "cupy"])
    assert r.exit_code != 0
    assert message in r.output and hint in r.output, r.output
    assert "Traceback" not in r.output and "no-such" not in r.output


def test_emitting_cuda_needs_no_gpu(broken_cupy, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(app, ["compile", "models/lstm.nn", "--backend", "cupy", "--emit",
                                 "kernels", "--set", "maxlen=4"])
    assert r.exit_code == 0, r.output
    assert '__global__ void' in r.output
