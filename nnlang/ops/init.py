"""Weight initializers: what a layer's `ParamSpec.init = (name, options)` means as numbers.

Layers name their default here (Keras defaults); the trainer calls `initialize` once per param
node when it allocates weights. `init_spec` normalises what users write (`"he_normal"` or
`("normal", {"std": 0.1})`) and is what layers' `params` rules call.
"""
from __future__ import annotations

import math

import numpy as np

from nnlang.errors import did_you_mean
from nnlang.ops.registry import ParamSpec, ShapeError
from nnlang.ops.signature import BindError, Signature, show_value

# name -> (options signature, fn(rng, out, fan_in, fan_out, **opts)): fills `out` in place
INITIALIZERS: dict[str, tuple[Signature, callable]] = {}


def _initializer(*names: str, sig: str = ""):
    def deco(fn):
        for n in names:
            INITIALIZERS[n] = (Signature.parse(sig), fn)
        return fn
    return deco


def fans(shape, kind: str | None = None) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight, with the layout decided by `kind` or, when None, by rank.

    dense / recurrent [in, out]; conv [out, in, *kernel] (fans scale by the receptive field);
    embedding [vocab, dim] (Keras treats it like dense); vectors use their length for both.
    """
    shape = tuple(int(d) for d in shape)
    if kind is None:
        kind = {0: "scalar", 1: "vector", 2: "dense"}.get(len(shape), "conv")
    if kind == "scalar":
        return 1, 1
    if kind == "vector":
        return shape[0], shape[0]
    if kind in ("dense", "recurrent", "embedding"):
        return shape[0], shape[1]
    if kind == "conv":
        field = math.prod(shape[2:])
        return shape[1] * field, shape[0] * field
    raise ValueError(f"unknown weight kind {kind!r}")


# NOTE: like Keras, the variance-scaling "normal" inits (glorot_normal, he_normal, lecun_normal)
# draw a normal truncated at 2 std devs and divide std by that truncation's std, so the weights
# keep the intended variance; truncated_normal(std) takes std as given.
_TRUNC_STD = 0.87962566103423978


# NOTE: draws are float64 (the stream every seed has always given), but made a chunk at a time
# and cast into the result, so a float32 model never holds a float64 copy of a weight: the peak
# is the result plus one chunk, and the values are those of one draw cast at the end.
_CHUNK = 1 << 20


def _drawn(out, sample) -> None:
    """`out` filled in order with `sample(n)` (n float64 values per call)."""
    flat = out.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        flat[start:start + _CHUNK] = sample(min(_CHUNK, flat.size - start))


def _uniform(rng, out, bound):
    _drawn(out, lambda n: rng.uniform(-bound, bound, size=n))


@_initializer("glorot_uniform", "xavier_uniform")
def _glorot_uniform(rng, out, fan_in, fan_out):
    _uniform(rng, out, math.sqrt(6.0 / (fan_in + fan_out)))


@_initializer("glorot_normal", "xavier_normal")
def _glorot_normal(rng, out, fan_in, fan_out):
    _truncated(rng, out, math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNC_STD, 0.0)


@_initializer("he_uniform", "kaiming_uniform")
def _he_uniform(rng, out, fan_in, fan_out):
    _uniform(rng, out, math.sqrt(6.0 / fan_in))


@_initializer("he_normal", "kaiming_normal")
def _he_normal(rng, out, fan_in, fan_out):
    _truncated(rng, out, math.sqrt(2.0 / fan_in) / _TRUNC_STD, 0.0)


@_initializer("lecun_uniform")
def _lecun_uniform(rng, out, fan_in, fan_out):
    _uniform(rng, out, math.sqrt(3.0 / fan_in))


@_initializer("lecun_normal")
def _lecun_normal(rng, out, fan_in, fan_out):
    _truncated(rng, out, math.sqrt(1.0 / fan_in) / _TRUNC_STD, 0.0)


@_initializer("zeros")
def _zeros(rng, out, fan_in, fan_out):
    out[...] = 0


@_initializer("ones")
def _ones(rng, out, fan_in, fan_out):
    out[...] = 1


@_initializer("constant", sig="value: float = 0.0")
def _constant(rng, out, fan_in, fan_out, value):
    out[...] = value


@_initializer("normal", sig="std: float = 0.05, mean: float = 0.0")
def _normal(rng, out, fan_in, fan_out, std, mean):
    _drawn(out, lambda n: rng.normal(mean, std, size=n))


@_initializer("uniform", sig="scale: float = 0.05")
def _uniform_init(rng, out, fan_in, fan_out, scale):
    _uniform(rng, out, scale)


@_initializer("truncated_normal", sig="std: float = 0.05, mean: float = 0.0")
def _truncated_normal(rng, out, fan_in, fan_out, std, mean):
    _truncated(rng, out, std, mean)


def _truncated(rng, out, std, mean) -> None:
    """Normal with values beyond two std devs redrawn: each round redraws the positions still
    out of range, in order (a chunk at a time, as `_drawn`). The first round goes by ranges
    and every round draws into one chunk: an index of all positions (int64) would take twice
    a float32 weight's memory, and the model's memory check counts the weight once."""
    flat = out.reshape(-1)
    chunk = np.empty(min(_CHUNK, flat.size))
    todo = None   # NOTE: None stands for every position, in order
    while todo is None or todo.size:
        redo, n = [], flat.size if todo is None else todo.size
        for start in range(0, n, _CHUNK):
            x = rng.standard_normal(out=chunk[:min(_CHUNK, n - start)])
            bad = np.flatnonzero((x > 2) | (x < -2))
            redo.append(start + bad if todo is None else todo[start + bad])
            x *= std   # NOTE: in place, the values of mean + std * x
            x += mean
            # the out-of-range ones are written too, and redrawn in the next round
            if todo is None:
                flat[start:start + x.size] = x
            else:
                flat[todo[start:start + x.size]] = x
        todo = np.concatenate(redo) if redo else np.empty(0, np.int64)


@_initializer("orthogonal", sig="gain: float = 1.0")
def _orthogonal(rng, out, fan_in, fan_out, gain):
    # As Keras/PyTorch: QR of a gaussian [rows, cols] matrix (rows = first dim, cols = the
    # rest), sign-corrected so the result is uniformly distributed; rows or cols orthonormal.
    rows, cols = out.shape[0], math.prod(out.shape[1:])
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    out[...] = (gain * q).reshape(out.shape)


@_initializer("unit_forget_bias", sig="units: int")
def _unit_forget_bias(rng, out, fan_in, fan_out, units):
    # Keras LSTM(unit_forget_bias=True): zeros, with the forget gate's slice (gate order
    # i, f, c, o) set to 1 so early training does not forget the cell state.
    out[...] = 0
    out[..., units:2 * units] = 1.0


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def init_problem(opts: dict) -> str | None:
    """What is wrong with an initializer's options, if anything: each is a finite number, and
    a spread (std, scale) is not negative."""
    for key, v in opts.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"needs a finite number for {key}, got {v!r}"
        if key in ("std", "scale") and v < 0:
            return f"needs {key} >= 0, got {v}"
        if abs(v) > _FLOAT32_MAX:
            # NOTE: uniform(scale = 1e39) drew infinite weights (numpy only warned) and
            # training ran on them; the weights are float32, as training runs
            return f"needs {key} within float32's range (about 3.4e38), got {v!r}"
    return None


def init_spec(value, what: str = "init") -> tuple[str, dict]:
    """Checks an `init` argument (name or (name, options)) and returns (name, options)."""
    if isinstance(value, str):
        name, opts = value, {}
    elif isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], dict):
        name, opts = value
    else:
        raise ShapeError(f"{what}: expected an initializer, got {show_value(value)}", attr=what,
                         hint=f"e.g. {what} = \"he_normal\" or {what} = normal(std = 0.1)")
    if name not in INITIALIZERS:
        raise ShapeError(f"{what}: unknown initializer {name!r}", attr=what,
                         hint=did_you_mean(name, list(INITIALIZERS))
                         or "known: " + ", ".join(sorted(INITIALIZERS)))
    try:
        INITIALIZERS[name][0].bind([], dict(opts))
    except BindError as err:
        raise ShapeError(f"{what}: initializer {name} {err.message}", hint=err.hint) from None
    problem = init_problem(opts)
    if problem:
        raise ShapeError(f"{what}: initializer {name} {problem}")
    # NOTE: a spread of -0.0 passes `>= 0` but numpy refuses it (normal: "scale < 0", uniform:
    # "high - low < 0"); it is a zero spread, and abs() changes nothing else (negatives are out)
    return name, {k: abs(v) if k in ("std", "scale") else v for k, v in opts.items()}


def initialize(spec: ParamSpec, rng: np.random.Generator, kind: str | None = None,
               empty=np.empty) -> np.ndarray:
    """The starting value of one parameter (shape dims must be concrete by now), in an array
    from `empty(shape, dtype)`: the runtime passes its aligned allocator, so the weight is
    made where it lives (a copy into it held the largest weight twice, past what
    `check_memory` allows for)."""
    name, opts = init_spec(spec.init)
    sig, fn = INITIALIZERS[name]
    shape = tuple(int(d) for d in spec.shape)
    fan_in, fan_out = fans(shape, kind)
    out = empty(shape, spec.dtype)
    fn(rng, out, fan_in, fan_out, **sig.bind([], opts))
    return out
