"""Cases: dtypes beyond float32/float64, 0-d and empty tensors, strided
(non-contiguous) inputs, complex linear algebra."""

from __future__ import annotations

from typing import List

import numpy as np
from harness import C, Case, I, N, U, WELL, pos

CASES: List[Case] = []
add = CASES.append

# float16
for op in ["add", "mul", "sub", "maximum"]:
    add(Case(op, pos(N(3, 4, dt="float16"), N(3, 4, dt="float16")), label="float16"))
add(Case("add", pos(N(3, 4, dt="float16"), N(3, 4)), label="float16+float32"))
add(Case("add", pos(N(3, 4, dt="float16")), {"other": 1.5}, label="float16-scalar"))
for op in ["relu", "gelu", "sigmoid", "tanh", "abs", "neg", "floor"]:
    add(Case(op, pos(N(3, 4, dt="float16")), label="float16"))
add(Case("softmax", pos(N(3, 4, dt="float16")), {"dim": -1}, label="float16"))
add(Case("sum", pos(N(3, 4, dt="float16")), {"dim": 1}, label="float16"))
add(Case("mean", pos(N(3, 4, dt="float16")), label="float16"))
add(Case("matmul", pos(N(3, 4, dt="float16"), N(4, 2, dt="float16")), label="float16", rtol=2e-2, atol=2e-2))
add(Case("layer_norm", pos(N(2, 8, dt="float16")), {"normalized_shape": [8]}, label="float16", rtol=2e-2, atol=2e-2))
add(Case("clamp", pos(N(6, dt="float16")), {"min": -0.5, "max": 0.5}, label="float16"))
add(Case("where", pos(lambda r: r.random(6) < 0.5, N(6, dt="float16")), {"other": 0.0},
         ref=lambda c, x, other: __import__("torch").where(c, x, other), label="float16-scalar"))

# small integer types and bool
for dt in ["int8", "int16", "int32", "uint8"]:
    lo = 0 if dt == "uint8" else -9
    add(Case("add", pos(I(lo, 9, 3, 4, dt=dt), I(lo, 9, 3, 4, dt=dt)), label=dt))
    add(Case("mul", pos(I(lo, 9, 3, 4, dt=dt)), {"other": 3}, label=dt + "-scalar"))
    add(Case("add", pos(I(lo, 9, 3, 4, dt=dt)), {"other": 0.5}, label=dt + "-float-scalar"))
    add(Case("sum", pos(I(lo, 9, 3, 4, dt=dt)), label=dt))
    add(Case("cumsum", pos(I(lo, 9, 3, 4, dt=dt)), {"dim": 1}, label=dt))
    add(Case("eq", pos(I(lo, 3, 3, 4, dt=dt), I(lo, 3, 3, 4, dt=dt)), label=dt))
    add(Case("abs", pos(I(lo, 9, 6, dt=dt)), label=dt))
    add(Case("argmax", pos(I(lo, 99, 3, 4, dt=dt)), {"dim": 1}, label=dt))
    add(Case("div", pos(I(lo, 9, 6, dt=dt), I(1, 5, 6, dt=dt)), label=dt))
    add(Case("maximum", pos(I(lo, 9, 6, dt=dt), I(lo, 9, 6, dt=dt)), label=dt))
add(Case("add", pos(I(0, 9, 4, dt="uint8"), I(-9, 9, 4, dt="int8")), label="uint8+int8"))
add(Case("add", pos(I(0, 9, 4, dt="int32"), N(4, dt="float64")), label="int32+float64"))
add(Case("sum", pos(lambda r: r.random((3, 4)) < 0.5), label="bool"))
add(Case("mul", pos(lambda r: r.random(5) < 0.5, lambda r: r.random(5) < 0.5), label="bool"))
add(Case("clamp", pos(I(-9, 9, 6, dt="int32")), {"min": 0.5}, label="int32-float-bound"))

# 0-d and empty tensors
for op in ["exp", "neg", "abs"]:
    add(Case(op, pos(lambda r: np.float32(r.standard_normal())), label="0-d"))
add(Case("add", pos(lambda r: np.float32(r.standard_normal()), N(3)), label="0-d+1-d"))
add(Case("add", pos(N(3, dt="float16"), lambda r: np.float32(r.standard_normal())), label="0-d-does-not-promote"))
add(Case("sum", pos(N(0, 3)), label="empty"))
add(Case("sum", pos(N(0, 3)), {"dim": 0}, label="empty-dim"))
add(Case("mean", pos(N(2, 0)), {"dim": 1}, label="empty"))
add(Case("matmul", pos(N(0, 3), N(3, 4)), label="empty"))
add(Case("cat", pos(N(0, 3), N(2, 3)), ref=lambda *t: __import__("torch").cat(t), label="empty"))
add(Case("relu", pos(N(0,)), label="empty"))
add(Case("reshape", pos(N(0, 4)), {"shape": [2, 0, 2]}, label="empty"))
add(Case("histogram", pos(N(0)), {"bins": 3}, label="empty"))

# strided inputs: views the client sends without a copy
add(Case("matmul", lambda r: {"0": N(4, 3)(r).T, "1": N(8, 5)(r)[::2, 1:]}, label="strided"))
add(Case("sum", lambda r: {"0": N(4, 6)(r)[:, ::2]}, {"dim": 1}, label="strided"))
add(Case("add", lambda r: {"0": N(3, 4)(r).T, "1": N(4, 3)(r)}, label="strided"))
add(Case("conv2d", lambda r: {"0": np.transpose(N(1, 5, 5, 2)(r), (0, 3, 1, 2)), "weight": N(3, 2, 3, 3)(r)}, label="strided-nhwc"))
add(Case("exp", lambda r: {"0": N(6, 6)(r)[::-1]}, label="negative-stride"))

# complex linear algebra
add(Case("matmul", pos(C(3, 4), C(4, 2)), label="complex64"))
add(Case("inv", pos(lambda r: (WELL(3)(r) + 1j * N(3, 3)(r)).astype(np.complex128)), label="complex128"))
add(Case("det", pos(C(3, 3, dt="complex128")), label="complex128"))
add(Case("solve", pos(lambda r: (WELL(3)(r) + 1j * N(3, 3)(r)).astype(np.complex64), C(3, 2)), label="complex64"))
add(Case("eigvals", pos(C(3, 3, dt="complex128")), label="complex128",
         check=lambda got, want, inputs, case, ctx: np.testing.assert_allclose(
             np.sort_complex(got["output"]), np.sort_complex(want["output"]), rtol=1e-6, err_msg=ctx)))
add(Case("sum", pos(C(3, 4)), {"dim": 0}, label="complex64"))
add(Case("mul", pos(C(3), U(0, 1, 3, dt="float64")), label="complex64*float64"))
