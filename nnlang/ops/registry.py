"""The op registry: one `OpDef` per op holds everything about it, looked up by its .nn name.

An entry carries its signature, shape/dtype rule, parameters (for layers that own weights), and
then either a decomposition into other ops (a composite) or, for a primitive, its gradient rule,
numpy semantics and kernel lowering. Passes ask about traits (`ELEMENTWISE`, `REDUCE`, ...),
never about single op names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral
from typing import Callable

from nnlang.ir.dims import Dim, Sym, fmt_shape
from nnlang.ops.signature import Signature, show_value

FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")
DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{fmt_shape(self.shape)}"


class ShapeError(Exception):
    """A shape or dtype rule failed; `arg` is the index of the input at fault, `attr` the name
    of the attribute at fault, if one is."""

    def __init__(self, message: str, hint: str | None = None, arg: int | None = None,
                 attr: str | None = None):
        super().__init__(message)
        self.message, self.hint, self.arg, self.attr = message, hint, arg, attr


@dataclass(frozen=True)
class ParamSpec:
    """A weight a layer owns: shape, initializer (name, options) and whether it is trained."""
    shape: tuple[Dim, ...]
    init: tuple[str, dict] = ("zeros", {})
    trainable: bool = True
    dtype: str = "float32"


@dataclass(frozen=True)
class Sample:
    """A test case for the op matrix: input shapes, attrs, and the domain inputs are drawn from."""
    shapes: tuple
    attrs: dict = field(default_factory=dict)
    domain: str = "real"        # real | positive | unit (0..1) | int:<high> | bool
    dtypes: tuple | None = None  # per input; default float
    grad: bool = True            # check gradients for this sample


# Traits, in the style of tinygrad's GroupOp: passes test membership, not op names.
ELEMENTWISE, UNARY, BINARY, TERNARY = "elementwise", "unary", "binary", "ternary"
REDUCE, MOVEMENT, LINALG, INDEX = "reduce", "movement", "linalg", "index"
COMPOSITE, RANDOM, NONDIFF, SOURCE = "composite", "random", "nondiff", "source"


@dataclass
class OpDef:
    name: str
    sig: Signature
    shape: Callable[..., TensorType]          # (in_types, **attrs) -> TensorType
    doc: str = ""
    family: str = ""
    params: Callable | None = None            # (in_types, **attrs) -> {name: ParamSpec}
    decompose: Callable | None = None         # (b, *inputs, **attrs) -> value      (composite)
    grad: Callable | None = None              # (b, node, gout) -> tuple of grads   (primitive)
    impl: Callable | None = None              # (*arrays, **attrs) -> array; numpy semantics
    expr: str | None = None                   # scalar C/Python expression, elementwise only
    lower: dict = field(default_factory=dict)  # backend name -> lowering function
    traits: frozenset = frozenset()
    samples: tuple = ()
    flops: Callable | None = None             # (in_types, out_type, **attrs) -> int
    # (e, node, *inputs) -> value name: the op in ONNX, through the emitter `e` of
    # nnlang/export/emitter.py (so ops/ never imports onnx); None for an op ONNX cannot express
    onnx: Callable | None = None
    # (b, out, **attrs) -> tuple of values, or None: an op giving several results (lstm's
    # return_state) packs them in one value and the frontend cuts it here
    results: Callable | None = None
    result_names: tuple = ()   # what `results` gives, so an error can show how to unpack them
    # (in_types, **attrs) -> attrs: fills in attributes the checked (symbolic) types decide,
    # so that binding a symbol later, to 1 say, cannot change them (squeeze's axes)
    bind_attrs: Callable | None = None
    # {keyword another framework's layer takes: how it is written here}: the hint when a call
    # names one the signature lacks, where the nearest spelling would mislead; a key
    # "name = value" is the hint for a value of the wrong type (Keras' approximate = true). A
    # hint that depends on the call is a function (the call as written without the options
    # the op lacks, {param: source text}, {param: value}) -> hint (padding_idx = 1)
    habits: dict = field(default_factory=dict)
    # (source texts of the call's positional arguments, their values, the first one's rank or
    # None) -> hint or None: what to write for more positional arguments than the signature
    # takes, PyTorch's dims as loose arguments (`transpose(x, 1, 2)`, `reshape(x, -1, 192)`)
    positional: Callable | None = None

    @property
    def is_composite(self) -> bool:
        return self.decompose is not None

    def has(self, trait: str) -> bool:
        return trait in self.traits


OPS: dict[str, OpDef] = {}


def register(name: str, sig: str, shape: Callable, **kw) -> OpDef:
    """Adds an op; `sig` lists tensor inputs first, then attributes (see `Signature.parse`)."""
    assert name not in OPS, f"op {name!r} registered twice"
    traits = set(kw.pop("traits", ()))
    if kw.get("decompose") is not None:
        traits.add(COMPOSITE)
    op = OpDef(name, Signature.parse(sig), shape, traits=frozenset(traits), **kw)
    OPS[name] = op
    return op


class Unexportable(Exception):
    """Raised by an op's `onnx` emitter for attribute values its ONNX form cannot express, or
    by a decomposition that only export runs unbound (with its builder's span, to locate it)."""

    def __init__(self, message: str, span=None, hint: str | None = None):
        super().__init__(message)
        self.span, self.hint = span, hint


def onnx_op(op_type: str, **attrs) -> Callable:
    """The ONNX emitter of an op that is one ONNX node of the same inputs (cast to the op's
    dtype first, as ONNX does not promote)."""
    return lambda e, n, *xs: e.elementwise(op_type, n, *xs, **attrs)


def get(name: str) -> OpDef | None:
    _load_all()
    return OPS.get(name)


def all_ops() -> dict[str, OpDef]:
    """Every op, ordered by family (pipeline order), then by defining module (a family may span
    several: rnn.py and scan.py), then by registration: whatever order the modules happened to
    be imported in."""
    _load_all()
    order = {name: i for i, name in enumerate(OPS)}
    rank = {f: i for i, f in enumerate(_FAMILIES)}
    return dict(sorted(OPS.items(), key=lambda kv: (rank.get(kv[1].family, len(rank)),
                                                    kv[1].shape.__module__, order[kv[0]])))


# the order `nnlang ops` and docs list families in; a family not named here comes last
_FAMILIES = ("source", "elementwise", "reduce", "movement", "linalg", "index", "random",
             "nn", "norm", "conv", "rnn", "attention", "losses", "metrics")


_loaded = False


def _load_all() -> None:
    # NOTE: `get` runs for every node in every pass (60k calls on an LSTM step); the imports
    # alone cost ~2 s of compile time there, so they run once
    global _loaded
    if _loaded:
        return
    import importlib
    import pkgutil

    import nnlang.ops
    # NOTE: every module of the package, so a new family file registers by existing
    for module in pkgutil.iter_modules(nnlang.ops.__path__):
        importlib.import_module(f"nnlang.ops.{module.name}")
    _loaded = True


# *** helpers shared by shape rules ***

def norm_axis(axis: int, rank: int, arg: int = 0) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise ShapeError(f"axis must be an integer, got {axis!r}", arg=arg)
    if rank == 0:  # NOTE: as numpy: a scalar has no axis 0 to slice, squeeze or join along
        raise ShapeError(f"axis {axis}: a scalar has no axes", arg=arg,
                         hint="give a tensor of rank 1 or more (unsqueeze(x, axis = 0))")
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a tensor of rank {rank}", arg=arg)
    return axis % rank


def norm_axes(axes, rank: int, arg: int = 0) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    axes = [axes] if isinstance(axes, int) else axes
    out = tuple(sorted(norm_axis(a, rank, arg) for a in axes))
    if len(set(out)) != len(out):
        raise ShapeError(f"axes {list(axes)} name an axis twice", arg=arg)
    return out


def need_some_axes(name: str, axes, doing: str = "reduce over",
                   hint: str | None = None) -> None:
    """An axes attribute given as a list names at least one axis (none means every axis)."""
    if isinstance(axes, (list, tuple)) and not axes:
        raise ShapeError(f"{name} = [] names no axis to {doing}", attr=name,
                         hint=hint or f"leave {name} out to {doing} every axis")


def need_positive(op: str, name: str, value) -> None:
    """A count or size attribute (units, filters, heads, depth...) must be at least 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ShapeError(f"{op}: {name} must be a positive integer, got {value!r}", attr=name)


def need_sizes(op: str, shape, attr: str = "shape", infer: bool = False) -> None:
    """A shape attribute: a list of positive sizes or symbols (with `infer`, a -1 may stand
    for the one size the others leave)."""
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, Sym) or isinstance(d, Integral) and not isinstance(d, bool)
            and (d >= 1 or infer and d == -1) for d in shape):
        raise ShapeError(f"{op}: {attr} must be a list of positive sizes"
                         f"{' (one may be -1)' if infer else ''}, got {show_value(shape)}",
                         attr=attr)


def need_range(op: str, name: str, value, lo: float, hi: float, hi_open: bool = False) -> None:
    """A number attribute in [lo, hi] (or [lo, hi) with `hi_open`)."""
    if not (lo <= value < hi if hi_open else lo <= value <= hi):
        raise ShapeError(f"{op}: {name} must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}, "
                         f"got {value!r}", attr=name)


def _same_dims(shapes) -> bool:
    """Whether the shapes hold the same sizes, in another order or with axes of 1 besides: a
    transpose or reshape can then line them up."""
    def sizes(s):
        return sorted((d for d in s if d != 1), key=str)
    return all(sizes(s) == sizes(shapes[0]) for s in shapes)


def broadcast_shapes(*shapes) -> tuple:
    """numpy broadcasting over ints and symbolic dims; raises ShapeError naming both shapes."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        real = {d for d in dims if d != 1}
        if len(real) > 1:
            bad = next(k for k, s in enumerate(shapes) if len(s) - rank + i >= 0
                       and s[len(s) - rank + i] != 1 and k > 0)
            raise ShapeError(
                "shapes " + " and ".join(fmt_shape(s) for s in shapes) + " do not broadcast "
                f"(dim {i - rank}: " + " vs ".join(str(d) for d in dims) + ")", arg=bad,
                hint="dims must be equal or 1; " + (
                    "reshape or transpose one side" if _same_dims(shapes)
                    else "make the sizes agree (a layer's units, a declared shape)"))
        out.append(real.pop() if real else 1)
    return tuple(out)


def same_dim(a: Dim, b: Dim) -> bool:
    return a == b


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def promote(*dtypes: str) -> str:
    """Result dtype of mixing inputs: floats win over ints, wider wins over narrower."""
    order = ["bool", "int32", "int64", "float32", "float64"]
    return max(dtypes, key=order.index)


def sym_dims(shape) -> set[str]:
    return {n for d in shape if isinstance(d, Sym) for n in d.names}
