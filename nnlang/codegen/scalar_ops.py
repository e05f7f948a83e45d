"""The one table from neutral scalar op names (as written in each `OpDef.expr`) to source text.

`ScalarLang` renders Python/numba spellings; a CUDA renderer subclasses it and overrides a few
entries (`funcs`, `templates`, `dtype_names`, `helpers`), like tinygrad's `code_for_op`.
"""
from __future__ import annotations

import math
import re

import numpy as np

_CALL = re.compile(r"\b([a-z_][a-z0-9_]*)\(")


class ScalarLang:
    # neutral function name in an expr template -> this language's function
    funcs = {"exp": "math.exp", "expm1": "math.expm1", "log": "math.log", "sqrt": "math.sqrt",
             "tanh": "math.tanh", "erf": "math.erf", "abs": "abs", "sign": "np.sign",
             "sigmoid": "sigmoid", "max": "max", "min": "min", "pow": "pow"}
    # NOTE: float32 exp/tanh/sigmoid are polynomial forms in float32 with no libm call, so LLVM
    # vectorizes the loop (numba has no vector math library here): exp is Cephes expf (<= 1.02
    # ulp with FMAs over 20M random arguments, 5x faster than libm in a softmax), tanh Eigen's
    # generic_fast_tanh_float (<= 3e-7 off, saturating to 1 - 2e-7; an exp-based tanh was 16x
    # slower in an LSTM cell kernel)
    funcs_f32 = {"exp": "exp_f32", "tanh": "tanh_f32", "sigmoid": "sigmoid_f32"}
    # whole-template overrides by op name (C-like languages spell `where` as `c ? a : b`)
    # NOTE: maximum/minimum keep a NaN on either side, as np.maximum (their impl) and torch do;
    # Python's max(a, b) returns a when b is NaN, and C's fmax drops a NaN on either side.
    # A tie gives a, the side their gradient rule picks.
    templates: dict[str, str] = {
        "maximum": "({0} if ({0} >= {1} or {0} != {0}) else {1})",
        "minimum": "({0} if ({0} <= {1} or {0} != {0}) else {1})"}
    dtype_names = {"float32": "np.float32", "float64": "np.float64", "int32": "np.int32",
                   "int64": "np.int64", "bool": "np.bool_"}
    # helpers the kernels call, imported from `helper_module`, where they are real code (see
    # its docstring); a language without one (CUDA) defines them in each source: name -> text
    helper_module: str | None = "nnlang.backends.numba_kernels"
    helpers: dict[str, str | None] = dict.fromkeys(
        ["exp_f32", "tanh_f32", "sigmoid", "sigmoid_f32", "row_sum"])
    # ops whose result already has its float operands' dtype, so no cast is needed after them
    float_preserving = {"neg", "add", "sub", "mul", "div", "exp", "expm1", "log", "sqrt", "tanh",
                        "abs", "maximum", "minimum", "where"}

    def cast(self, x: str, dtype: str) -> str:
        return f"({x} != 0)" if dtype == "bool" else f"{self.dtype_names[dtype]}({x})"

    def literal(self, value, dtype: str) -> str:
        if dtype == "bool":
            return "True" if bool(value) else "False"
        if dtype.startswith("int"):
            return f"{self.dtype_names[dtype]}({int(value)})"
        v = float(value)
        text = repr(v) if math.isfinite(v) else ("np.nan" if math.isnan(v) else
                                                   ("np.inf" if v > 0 else "-np.inf"))
        return f"{self.dtype_names[dtype]}({text})"

    def reduce_init(self, op: str, dtype: str) -> str:
        if op == "sum":
            return self.literal(0, dtype)
        if dtype == "bool":  # NOTE: -inf is True as a bool: an all-False max gave True
            return self.literal(op == "min", dtype)
        info = np.iinfo(dtype) if dtype.startswith("int") else None
        if op == "min":
            return self.literal(info.max if info else math.inf, dtype)
        return self.literal(info.min if info else -math.inf, dtype)

    def reduce_step(self, op: str, acc: str, v: str) -> str:
        return f"{acc} += {v}" if op == "sum" else f"{acc} = {self.keep_nan(op, acc, v)}"

    def keep_nan(self, op: str, a: str, b: str) -> str:
        """max or min (`op`) of a and b that keeps a NaN on either side, as np.max/np.min (the
        reductions' impl) and torch.amax/amin do: a max reduction folded with Python's
        max(acc, v) dropped a NaN v."""
        return self.templates["maximum" if op == "max" else "minimum"].format(a, b)

    def expr(self, op: str, template: str, args: list[str], dtype: str, in_dtypes) -> str:
        """One SSA right-hand side; casts to `dtype` when the language's promotion may differ."""
        if op == "cast":
            return self.cast(args[0], dtype)
        if op == "pow":
            # NOTE: numba's float ** int is Python's integer-power loop: 0.0 ** -1 raised
            # ZeroDivisionError and 2.0 ** -2**31 OverflowError from the kernel, where numpy
            # (impl: an int exponent promotes to float64) gives inf and 0
            args = [a if d.startswith("float") else self.cast(a, "float64")
                    for a, d in zip(args, in_dtypes)]
        template = self.templates.get(op, template)
        funcs = {**self.funcs, **self.funcs_f32} if dtype == "float32" else self.funcs
        text = _CALL.sub(lambda m: funcs.get(m.group(1), m.group(1)) + "(", template)
        text = text.format(*args)
        if dtype == "bool" or (dtype.startswith("float") and op in self.float_preserving
                               and all(d == dtype for d in in_dtypes)):
            return text
        return self.cast(text, dtype)

    def used_helpers(self, code: str) -> list[str]:
        """What a source must hold before `code` for the helpers it calls: their import, or
        their definitions, dependencies first (helpers may call helpers)."""
        if self.helper_module:
            names = sorted(set(_CALL.findall(code)) & self.helpers.keys())
            return [f"from {self.helper_module} import {', '.join(names)}\n"] if names else []
        out: list[str] = []

        def visit(text):
            for name in sorted(set(_CALL.findall(text))):
                if name in self.helpers and self.helpers[name] not in out:
                    visit(self.helpers[name].split("\n", 2)[2])
                    out.append(self.helpers[name])
        visit(code)
        return out


PYTHON = ScalarLang()
