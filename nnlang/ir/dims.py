"""Dimensions: plain ints, or symbolic monomials such as `batch` or `4*batch*seq`.

Symbolic dims stay symbolic through shape inference (`check` works without a batch size) and are
bound to ints when a graph is compiled for a concrete batch.
"""
from __future__ import annotations

# the batch a model is compiled, trained and summarized at when nothing sets one
DEFAULT_BATCH = 32
# NOTE: the size a symbolic length (`symbol seq`) is shown and prepared at before a feed binds
# it (`nnlang compile --length seq=N` picks another); generated kernels take their sizes as
# arguments, so any length runs the same kernels
DEFAULT_LENGTH = 16
MAX_BATCH = 2**31 - 1   # NOTE: rows are counted in int32 (index math, the data loaders)

from dataclasses import dataclass
from math import log10, prod


@dataclass(frozen=True)
class Sym:
    names: tuple[str, ...]  # sorted, with repeats for powers
    coeff: int = 1

    @staticmethod
    def of(name: str) -> "Sym":
        return Sym((name,))

    def __str__(self) -> str:
        body = "*".join(self.names)
        return body if self.coeff == 1 else f"{self.coeff}*{body}"

    __repr__ = __str__

    def __mul__(self, other: "Dim") -> "Dim":
        if isinstance(other, Sym):
            return Sym(tuple(sorted(self.names + other.names)), self.coeff * other.coeff)
        return 0 if other == 0 else Sym(self.names, self.coeff * other)

    __rmul__ = __mul__

    def __add__(self, other: "Dim") -> "Dim":
        if isinstance(other, Sym) and other.names == self.names:
            return Sym(self.names, self.coeff + other.coeff)
        if other == 0:
            return self
        raise DimError(f"cannot add {self} and {other}")

    __radd__ = __add__


Dim = int | Sym


class DimError(ValueError):
    pass


def dim_div(a: Dim, b: Dim) -> Dim:
    """Exact division (reshape's -1, splitting heads); raises DimError when not exact."""
    if isinstance(a, int) and isinstance(b, int):
        if b == 0 or a % b:
            raise DimError(f"{a} is not divisible by {b}")
        return a // b
    if isinstance(a, Sym) and isinstance(b, int):
        if a.coeff % b:
            raise DimError(f"{a} is not divisible by {b}")
        return Sym(a.names, a.coeff // b)
    if isinstance(a, Sym) and isinstance(b, Sym):
        rest = list(a.names)
        for n in b.names:
            if n not in rest:
                raise DimError(f"{a} is not divisible by {b}")
            rest.remove(n)
        if a.coeff % b.coeff:
            raise DimError(f"{a} is not divisible by {b}")
        coeff = a.coeff // b.coeff
        return Sym(tuple(rest), coeff) if rest else coeff
    raise DimError(f"{a} is not divisible by {b}")


def dim_prod(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = d * out if isinstance(d, Sym) else out * d
    return out


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape is not None else "[?]"


def with_dtype(shape_text: str, dtype: str | None) -> str:
    """A formatted shape as `nnlang check` and `nnlang graph` show a value: with its dtype unless
    it is float32, the dtype of nearly every value (int32[batch, 200] for tokens, [batch, 512])."""
    return shape_text if dtype in ("float32", None) else f"{dtype}{shape_text}"


def is_concrete(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def bind(d: Dim, env: dict[str, int]) -> Dim:
    """Substitutes known symbols (e.g. batch=128); unknown ones stay symbolic."""
    if isinstance(d, int):
        return d
    known = [env[n] for n in d.names if n in env]
    rest = tuple(n for n in d.names if n not in env)
    value = d.coeff * prod(known)
    return Sym(rest, value) if rest else value


def numel(shape) -> Dim:
    return dim_prod(shape)


# NOTE: numpy's limit: an array's size in bytes must fit int64, so with 8-byte elements a
# tensor holds at most 2**60 of them. Anything larger cannot be allocated on any machine.
MAX_ELEMENTS = 2**60


def _count(n: int) -> str:
    """n with thousands separators, or its order of magnitude once it has more than 40 digits."""
    return f"{n:,}" if n < 10 ** 40 else f"about 10**{int(log10(n))}"


def size_problem(shape) -> tuple[int | None, str] | None:
    """(index of the dim at fault, or None for the whole shape; why) when no machine could hold
    a tensor of this shape (symbolic dims count by their coefficient)."""
    total = 1
    for i, d in enumerate(shape):
        n = d.coeff if isinstance(d, Sym) else d
        if not isinstance(n, int):
            continue
        if n > MAX_ELEMENTS:
            return i, f"dim {_count(n)} is too large (a tensor holds at most 2**60 elements)"
        total *= n
    if total > MAX_ELEMENTS:
        return None, (f"{fmt_shape(shape)} has {_count(total)} elements; a tensor holds at "
                      "most 2**60")
    return None
