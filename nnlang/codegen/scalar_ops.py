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
    funcs = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "tanh": "math.tanh",
             "erf": "math.erf", "abs": "abs", "sign": "np.sign", "sigmoid": "sigmoid",
             "max": "max", "min": "min", "pow": "pow"}
    # NOTE: float32 exp/tanh/sigmoid are polynomial forms in float32 with no libm call, so LLVM
    # vectorizes the loop (numba has no vector math library here): exp is Cephes expf (<= 1.02
    # ulp with FMAs over 20M random arguments, 5x faster than libm in a softmax), tanh Eigen's
    # generic_fast_tanh_float (<= 3e-7 off, saturating to 1 - 2e-7; an exp-based tanh was 16x
    # slower in an LSTM cell kernel)
    funcs_f32 = {"exp": "exp_f32", "tanh": "tanh_f32", "sigmoid": "sigmoid_f32"}
    # whole-template overrides by op name (C-like languages spell `where` as `c ? a : b`)
    templates: dict[str, str] = {}
    dtype_names = {"float32": "np.float32", "float64": "np.float64", "int32": "np.int32",
                   "int64": "np.int64", "bool": "np.bool_"}
    # helper functions a kernel module defines when it uses them
    # NOTE: not inlined in numba's IR but by LLVM, so the helper keeps its own flags:
    # 'contract' lets LLVM fuse its multiply-adds into FMAs, while the kernels that call it
    # keep strict float math (the exp over 2M floats: 1.27 ms without FMAs, 0.75 with; an
    # LSTM step's cell kernel on 32 rows: 16.4-17.7 us forward and 17.2 backward, 11.4-13.1
    # and 12.0 with)
    _njit = "@numba.njit(cache=True, error_model='numpy', fastmath={'contract'})\n"
    helpers = {
        # x = n ln2 + r with n rounded by the 1.5 * 2^23 trick (math.floor is a libm call), then
        # 2^(n-1) from the exponent bits. NOTE: branch-free so LLVM vectorizes it: the clamps
        # are selects (they keep NaN), x > 88.73 overflows to inf by itself, and x < -86.99
        # gives exponent bits 0, so 0 (results below 2^-125 flush to zero)
        "exp_f32": _njit + "def exp_f32(x):\n"
                           "    t = np.float32(-87.6) if x < np.float32(-87.6) else x\n"
                           "    t = np.float32(89.0) if t > np.float32(89.0) else t\n"
                           "    n = (t * np.float32(1.44269504088896341) + "
                           "np.float32(12582912.0)) - np.float32(12582912.0)\n"
                           "    r = t - n * np.float32(0.693359375) + "
                           "n * np.float32(2.12194440e-4)\n"
                           "    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)\n"
                           "    p = p * r + np.float32(8.3334519073e-3)\n"
                           "    p = p * r + np.float32(4.1665795894e-2)\n"
                           "    p = p * r + np.float32(1.6666665459e-1)\n"
                           "    p = p * r + np.float32(5.0000001201e-1)\n"
                           "    y = p * r * r + r + np.float32(1.0)\n"
                           "    return (y + y) * np.int32((np.int32(n) + np.int32(126)) << 23)"
                           ".view(np.float32)\n",
        "tanh_f32": _njit + "def tanh_f32(x):\n"
                            "    x = min(max(x, np.float32(-7.99881172180175781)), "
                            "np.float32(7.99881172180175781))\n"
                            "    x2 = x * x\n"
                            "    p = x2 * np.float32(-2.76076847742355e-16) + "
                            "np.float32(2.00018790482477e-13)\n"
                            "    p = p * x2 + np.float32(-8.60467152213735e-11)\n"
                            "    p = p * x2 + np.float32(5.12229709037114e-08)\n"
                            "    p = p * x2 + np.float32(1.48572235717979e-05)\n"
                            "    p = p * x2 + np.float32(6.37261928875436e-04)\n"
                            "    p = p * x2 + np.float32(4.89352455891786e-03)\n"
                            "    q = x2 * np.float32(1.19825839466702e-06) + "
                            "np.float32(1.18534705686654e-04)\n"
                            "    q = q * x2 + np.float32(2.26843463243900e-03)\n"
                            "    q = q * x2 + np.float32(4.89352518554385e-03)\n"
                            "    return x * p / q\n",
        # a reduction's row summed into `acc` (render_numba._row_out). NOTE: not inlined in
        # numba's IR, so the loop keeps its own flags: 'reassoc' lets LLVM sum in vector
        # lanes; the kernel around it keeps strict float math
        "row_sum": "@numba.njit(cache=True, error_model='numpy', fastmath={'reassoc'})\n"
                   "def row_sum(row, n, acc):\n"
                   "    for j in range(n):\n"
                   "        acc += row[j]\n"
                   "    return acc\n",
        # NOTE: the tanh form cannot overflow, unlike 1 / (1 + exp(-x))
        "sigmoid": _njit + "def sigmoid(x):\n"
                           "    return 0.5 * (math.tanh(0.5 * x) + 1.0)\n",
        "sigmoid_f32": _njit + "def sigmoid_f32(x):\n"
                               "    return np.float32(0.5) * tanh_f32(np.float32(0.5) * x) + "
                               "np.float32(0.5)\n",
    }
    # ops whose result already has its float operands' dtype, so no cast is needed after them
    float_preserving = {"neg", "add", "sub", "mul", "div", "exp", "log", "sqrt", "tanh", "abs",
                        "maximum", "minimum", "where"}

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
        if dtype.startswith("int"):
            return self.literal(np.iinfo(dtype).min, dtype)
        return self.literal(-math.inf, dtype)

    def reduce_step(self, op: str, acc: str, v: str) -> str:
        return f"{acc} += {v}" if op == "sum" else f"{acc} = max({acc}, {v})"

    def expr(self, op: str, template: str, args: list[str], dtype: str, in_dtypes) -> str:
        """One SSA right-hand side; casts to `dtype` when the language's promotion may differ."""
        if op == "cast":
            return self.cast(args[0], dtype)
        template = self.templates.get(op, template)
        funcs = {**self.funcs, **self.funcs_f32} if dtype == "float32" else self.funcs
        text = _CALL.sub(lambda m: funcs.get(m.group(1), m.group(1)) + "(", template)
        text = text.format(*args)
        if dtype == "bool" or (dtype.startswith("float") and op in self.float_preserving
                               and all(d == dtype for d in in_dtypes)):
            return text
        return self.cast(text, dtype)

    def used_helpers(self, code: str) -> list[str]:
        """Helper definitions `code` calls, dependencies first (helpers may call helpers)."""
        out: list[str] = []

        def visit(text):
            for name in sorted(set(_CALL.findall(text))):
                if name in self.helpers and self.helpers[name] not in out:
                    visit(self.helpers[name].split("\n", 2)[2])
                    out.append(self.helpers[name])
        visit(code)
        return out


PYTHON = ScalarLang()
