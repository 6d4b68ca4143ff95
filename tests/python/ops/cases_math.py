"""Cases: elementwise math, arithmetic, activations, comparisons."""

from __future__ import annotations

from typing import List

from harness import AWAY, B, C, CONST, Case, I, N, U, WITH_NAN, F, np, pos, torch

CASES: List[Case] = []
add = CASES.append

# ---------------------------------------------------------------- unary math
ANY_REAL = [
    "abs", "ceil", "floor", "trunc", "frac", "exp", "exp2", "expm1", "sin", "cos", "tan",
    "atan", "sinh", "cosh", "tanh", "asinh", "erf", "erfc", "sign", "sgn", "signbit",
    "sigmoid", "square", "neg", "relu", "relu6", "silu", "mish", "selu", "hardsigmoid",
    "hardswish", "logsigmoid", "softsign", "tanhshrink", "sinc", "angle", "real",
    "conj_physical", "logical_not", "isnan", "isinf", "isfinite",
]
POSITIVE = ["log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal", "lgamma", "digamma"]
UNIT = ["asin", "acos", "atanh", "erfinv"]

for op in ANY_REAL:
    add(Case(op, pos(N(3, 4)), label="float32"))
    add(Case(op, pos(N(5, dt="float64")), label="float64"))
for op in POSITIVE:
    add(Case(op, pos(U(0.1, 4.0, 3, 4)), label="float32"))
    add(Case(op, pos(U(0.1, 4.0, 6, dt="float64")), label="float64"))
for op in UNIT:
    add(Case(op, pos(U(-0.9, 0.9, 3, 4)), label="float32"))
    add(Case(op, pos(U(-0.9, 0.9, 6, dt="float64")), label="float64"))
add(Case("acosh", pos(U(1.1, 5.0, 3, 4)), label="float32"))
add(Case("acosh", pos(U(1.1, 5.0, 6, dt="float64")), label="float64"))
for op in ["isnan", "isinf", "isfinite", "abs", "sign", "relu"]:
    add(Case(op, pos(WITH_NAN(4, 4)), label="nan-inf"))
for op in ["abs", "sgn", "angle", "real", "imag", "conj_physical", "exp", "sqrt", "isfinite"]:
    add(Case(op, pos(C(3, 3)), label="complex64"))
add(Case("imag", pos(C(4, dt="complex128")), label="complex128"))
for op in ["abs", "neg", "sign", "square", "logical_not"]:
    add(Case(op, pos(I(-5, 5, 3, 4)), label="int64"))
add(Case("logical_not", pos(B(6)), label="bool"))
add(Case("sqrt", pos(U(0.1, 4.0, 8, dt="float16")), label="float16"))
add(Case("exp", pos(N(8, dt="float16")), label="float16"))

add(Case("round", pos(N(4, 4, scale=10))))
add(Case("round", pos(N(4, 4, scale=10)), {"decimals": 2}))
add(Case("round", pos(N(6, dt="float64", scale=100)), {"decimals": -1}))
add(Case("nan_to_num", pos(WITH_NAN(4, 4))))
add(Case("nan_to_num", pos(WITH_NAN(4, 4)), {"nan": 1.5, "posinf": 9.0, "neginf": -9.0}))
add(Case("nan_to_num", pos(WITH_NAN(6, dt="float64")), {"posinf": 100.0}))

# ---------------------------------------------------------------- arithmetic
for op in ["add", "sub"]:
    add(Case(op, pos(N(3, 4), N(3, 4))))
    add(Case(op, pos(N(3, 4), N(4)), label="broadcast"))
    add(Case(op, pos(N(3, 4), N(3, 4)), {"alpha": 2}))
    add(Case(op, pos(N(3, 4), N(3, 4)), {"alpha": 0.5}))
    add(Case(op, pos(N(3, 4)), {"other": 2.5}))
    add(Case(op, pos(N(3, 4)), {"other": 3, "alpha": 2}))
    add(Case(op, pos(I(-9, 9, 5), I(-9, 9, 5)), label="int64"))
    add(Case(op, pos(I(-9, 9, 5)), {"other": 1.5}, label="int-plus-float"))
    add(Case(op, pos(N(3, dt="float64"), N(3)), label="promotion"))
add(Case("mul", pos(N(3, 4), N(3, 4))))
add(Case("mul", pos(N(3, 4)), {"other": -1.5}))
add(Case("mul", pos(I(-9, 9, 5), I(-9, 9, 5))))
add(Case("mul", pos(C(3), N(3)), label="complex"))
add(Case("div", pos(N(3, 4), AWAY(3, 4))))
add(Case("div", pos(N(3, 4)), {"other": 4}))
add(Case("div", pos(N(3, 4, scale=5), AWAY(3, 4)), {"rounding_mode": "trunc"}))
add(Case("div", pos(N(3, 4, scale=5), AWAY(3, 4)), {"rounding_mode": "floor"}))
add(Case("div", pos(I(-20, 20, 6)), {"other": 3, "rounding_mode": "floor"}))
add(Case("div", pos(I(-20, 20, 6), I(1, 5, 6)), label="int-true-division"))
for op in ["remainder", "fmod"]:
    add(Case(op, pos(N(3, 4, scale=5), AWAY(3, 4))))
    add(Case(op, pos(N(3, 4, scale=5)), {"other": 1.5}))
    add(Case(op, pos(I(-20, 20, 6), I(1, 6, 6)), label="int64"))
    add(Case(op, pos(I(-20, 20, 6)), {"other": -3}, label="int-scalar"))
add(Case("floor_divide", pos(N(3, 4, scale=5), AWAY(3, 4))))
add(Case("floor_divide", pos(I(-20, 20, 6)), {"other": 3}))
add(Case("pow", pos(U(0.5, 2, 3, 4), N(3, 4))))
add(Case("pow", pos(N(3, 4)), {"exponent": 2}))
add(Case("pow", pos(U(0.1, 3, 3, 4)), {"exponent": 0.5}))
add(Case("pow", pos(I(0, 5, 6)), {"exponent": 3}, label="int"))
add(Case("float_power", pos(U(0.5, 2, 3, 4), N(3, 4))))
add(Case("float_power", pos(N(3, 4)), {"exponent": 2}))
for op in ["maximum", "minimum", "fmax", "fmin", "atan2", "hypot", "logaddexp"]:
    add(Case(op, pos(N(3, 4), N(3, 4))))
    add(Case(op, pos(N(3, 4, dt="float64"), N(4, dt="float64")), label="broadcast-float64"))
for op in ["maximum", "minimum", "fmax", "fmin"]:
    add(Case(op, pos(WITH_NAN(8), N(8)), label="nan"))
add(Case("maximum", pos(I(-9, 9, 5), I(-9, 9, 5)), label="int64"))
add(Case("xlogy", pos(N(3, 4), U(0.1, 3, 3, 4))))
add(Case("xlogy", pos(CONST(np.array([0.0, 1.0, 2.0], np.float32))), {"other": 3.0}))
add(Case("copysign", pos(N(3, 4), N(3, 4))))
add(Case("copysign", pos(N(3, 4)), {"other": -1.0}))
add(Case("lerp", {"0": N(3, 4), "end": N(3, 4)}, {"weight": 0.3}))
add(Case("lerp", pos(N(3, 4), N(3, 4), U(0, 1, 3, 4)), label="tensor-weight"))
for op in ["addcmul", "addcdiv"]:
    add(Case(op, pos(N(3, 4), N(3, 4), AWAY(3, 4))))
    add(Case(op, pos(N(3, 4), N(3, 4), AWAY(3, 4)), {"value": 0.5}))
    add(Case(op, pos(N(3, 4, dt="float64"), N(4, dt="float64"), AWAY(3, 1, dt="float64")), {"value": -2}))
add(Case("clamp", pos(N(3, 4)), {"min": -0.5, "max": 0.5}))
add(Case("clamp", pos(N(3, 4)), {"min": 0.0}))
add(Case("clamp", pos(N(3, 4)), {"max": 0.2}))
add(Case("clamp", {"0": N(3, 4), "min": N(3, 4)}, label="tensor-min"))
add(Case("clamp", {"0": N(3, 4), "min": U(-1, 0, 3, 4), "max": U(0, 1, 3, 4)}, label="tensor-min-max"))
add(Case("clamp", {"0": N(3, 4), "max": U(0, 1, 4)}, {"min": -0.5}, label="scalar-min-tensor-max",
         # torch has no mixed overload: the scalar as a 0-d tensor of input's dtype.
         ref=lambda x, max, min: torch.clamp(x, min=torch.tensor(min, dtype=x.dtype), max=max)))
add(Case("clamp", pos(I(-9, 9, 6)), {"min": -2, "max": 3}, label="int64"))
add(Case("neg", pos(N(3, 4))))

# ------------------------------------------------------------ logic, where
for op in ["logical_and", "logical_or", "logical_xor"]:
    add(Case(op, pos(B(3, 4), B(3, 4))))
    add(Case(op, pos(N(3, 4), I(0, 2, 3, 4)), label="numeric"))
for op in ["bitwise_and", "bitwise_or", "bitwise_xor"]:
    add(Case(op, pos(I(0, 64, 3, 4), I(0, 64, 3, 4))))
    add(Case(op, pos(I(0, 64, 6, dt="int32")), {"other": 5}, label="int32-scalar"))
    add(Case(op, pos(B(6), B(6)), label="bool"))


def _where(condition, input=None, other=None):
    return torch.where(condition, input, other)


add(Case("where", pos(B(3, 4), N(3, 4), N(3, 4)), ref=_where))
add(Case("where", pos(B(3, 4), N(3, 4), N(4)), ref=_where, label="broadcast"))
add(Case("where", pos(B(3, 4), N(3, 4)), {"other": 0.0}, ref=_where, label="scalar-other"))
add(Case("where", {"0": B(3, 4), "other": N(3, 4)}, {"input": -1.0}, ref=_where, label="scalar-input"))
add(Case("where", pos(B(3, 4)), {"input": 1.0, "other": 2.0}, ref=_where, label="two-scalars"))
add(Case("where", pos(B(5), I(0, 9, 5), I(0, 9, 5)), ref=_where, label="int64"))

# --------------------------------------------------------------- activation
add(Case("gelu", pos(N(3, 4))))
add(Case("gelu", pos(N(3, 4)), {"approximate": "tanh"}))
add(Case("gelu", pos(N(6, dt="float64")), {"approximate": "none"}))
for op in ["softmax", "log_softmax", "softmin"]:
    add(Case(op, pos(N(3, 4)), {"dim": -1}))
    add(Case(op, pos(N(3, 4, 5)), {"dim": 0}))
    add(Case(op, pos(N(3, 4)), {"dim": 1, "dtype": "float64"}))
add(Case("leaky_relu", pos(N(3, 4))))
add(Case("leaky_relu", pos(N(3, 4)), {"negative_slope": 0.2}))
add(Case("elu", pos(N(3, 4))))
add(Case("elu", pos(N(3, 4, dt="float64")), {"alpha": 0.5}))
add(Case("celu", pos(N(3, 4))))
add(Case("celu", pos(N(3, 4)), {"alpha": 2.0}))
add(Case("softplus", pos(N(3, 4, scale=10))))
add(Case("softplus", pos(N(3, 4, scale=5)), {"beta": 2.0, "threshold": 1.0}))
add(Case("hardtanh", pos(N(3, 4))))
add(Case("hardtanh", pos(N(3, 4)), {"min_val": -0.5, "max_val": 0.7}))
for op in ["hardshrink", "softshrink"]:
    add(Case(op, pos(N(3, 4))))
    add(Case(op, pos(N(3, 4, dt="float64")), {"lambd": 0.3}))
add(Case("threshold", pos(N(3, 4)), {"threshold": 0.1, "value": -1.0}))
add(Case("threshold", pos(N(6, dt="float64")), {"threshold": -0.5, "value": 2.0}))
add(Case("glu", pos(N(3, 4))))
add(Case("glu", pos(N(4, 3)), {"dim": 0}))
add(Case("prelu", pos(N(2, 3, 4), CONST(np.array([0.25], np.float32))), label="one-weight"))
add(Case("prelu", pos(N(2, 3, 4), U(0, 1, 3)), label="per-channel"))
add(Case("dropout", pos(N(3, 4)), {"training": False}))
add(Case("dropout", pos(N(3, 4)), {"p": 0.0}))
add(Case("dropout", pos(N(3, 4)), {"p": 1.0}))

# --------------------------------------------------------------- comparison
for op in ["eq", "ne", "gt", "ge", "lt", "le"]:
    add(Case(op, pos(I(0, 3, 3, 4), I(0, 3, 3, 4))))
    add(Case(op, pos(N(3, 4), N(4)), label="broadcast"))
    add(Case(op, pos(I(0, 3, 6)), {"other": 1}))
    add(Case(op, pos(N(6)), {"other": 0.25}))
add(Case("isclose", pos(N(3, 4), N(3, 4))))
add(Case("isclose", {"0": CONST(np.array([1.0, np.nan, 2.0, 3.0])), "other": CONST(np.array([1.0 + 1e-7, np.nan, 2.1, 3.0]))}, {"equal_nan": True}))
add(Case("isclose", {"0": CONST(np.array([1.0, 1.05, 2.0], np.float32)), "other": CONST(np.array([1.0, 1.0, 2.5], np.float32))}, {"rtol": 0.1, "atol": 0.0}))
add(Case("isin", pos(I(0, 10, 3, 4), I(0, 10, 5))))
add(Case("isin", pos(I(0, 10, 3, 4), I(0, 10, 5)), {"invert": True}))
add(Case("isin", pos(N(6), N(3)), {"assume_unique": True}))
add(Case("sort", pos(N(3, 5))))
add(Case("sort", pos(N(3, 5)), {"dim": 0, "descending": True}))
add(Case("sort", pos(I(0, 3, 12)), {"stable": True}, label="stable-ties"))
add(Case("sort", pos(I(0, 3, 12)), {"stable": True, "descending": True}, label="stable-desc"))
add(Case("argsort", pos(N(3, 5))))
add(Case("argsort", pos(N(3, 5)), {"dim": 0, "descending": True}))
add(Case("argsort", pos(I(0, 3, 12)), {"stable": True}, label="stable"))
add(Case("msort", pos(N(4, 3))))
add(Case("topk", pos(N(3, 6)), {"k": 2}))
add(Case("topk", pos(N(5, 3)), {"k": 3, "dim": 0, "largest": False}))
add(Case("topk", pos(N(7)), {"k": 4, "sorted": True}))

_ = F  # the F namespace is used through torch_function

# NaN and ±inf through the activations mymps composes from elementwise ops.
for op in ["leaky_relu", "elu", "celu", "softplus", "hardtanh", "hardshrink", "softshrink",
           "softsign", "tanhshrink", "threshold"]:
    kw = {"threshold": 0.0, "value": 0.5} if op == "threshold" else {}
    add(Case(op, pos(WITH_NAN(4, 5)), kw, label="nan-inf"))

add(Case("deg2rad", pos(N(3, 4, scale=90))))
add(Case("deg2rad", pos(N(5, dt="float64", scale=90))))
add(Case("rad2deg", pos(N(3, 4))))
add(Case("rad2deg", pos(N(5, dt="float64"))))
add(Case("i0", pos(N(3, 4))))
add(Case("i0", pos(N(5, dt="float64"))))
add(Case("logit", pos(U(0.05, 0.95, 3, 4))))
add(Case("logit", pos(U(0, 1, 3, 4)), {"eps": 1e-3}))
add(Case("heaviside", pos(CONST(np.array([-1.5, 0.0, 2.0, 0.0], np.float32)), CONST(np.array([0.5], np.float32)))))
add(Case("heaviside", pos(N(3, 4), N(3, 4)), label="values-tensor"))
for op in ["gcd", "lcm"]:
    add(Case(op, pos(I(-20, 20, 3, 4), I(1, 20, 3, 4))))
    add(Case(op, pos(I(0, 30, 5, dt="int32"), I(0, 30, 5, dt="int32")), label="int32"))
add(Case("nextafter", pos(N(3, 4), N(3, 4))))
add(Case("nextafter", pos(N(5, dt="float64"), N(5, dt="float64"))))
add(Case("logaddexp2", pos(N(3, 4), N(3, 4))))
add(Case("logaddexp2", pos(N(3, 4, dt="float64"), N(4, dt="float64")), label="broadcast"))
