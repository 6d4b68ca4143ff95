"""Cases: shape ops, FFT, creation (random ops), indexing."""

from __future__ import annotations

from typing import List

import numpy as np
from harness import B, C, CONST, Case, I, N, PERM, SORTED, U, pos, torch

CASES: List[Case] = []
add = CASES.append


def _list(fn):
    """A reference for ops that take a list of tensors."""
    return lambda *ts, **kw: fn(ts, **kw)


# -------------------------------------------------------------------- shape
add(Case("reshape", pos(N(3, 4)), {"shape": [2, 6]}))
add(Case("reshape", pos(N(3, 4)), {"shape": [-1]}))
add(Case("reshape", pos(I(0, 9, 2, 3, 4)), {"shape": [4, -1, 2]}))
add(Case("transpose", pos(N(3, 4)), {"dim0": 0, "dim1": 1}))
add(Case("transpose", pos(N(2, 3, 4)), {"dim0": -1, "dim1": 0}))
add(Case("permute", pos(N(2, 3, 4)), {"dims": [2, 0, 1]}))
add(Case("permute", pos(N(2, 3)), {"dims": [-1, 0]}))
add(Case("movedim", pos(N(2, 3, 4)), {"source": 0, "destination": 2}))
add(Case("movedim", pos(N(2, 3, 4)), {"source": [0, 1], "destination": [2, 0]}))
add(Case("squeeze", pos(N(1, 3, 1, 4))))
add(Case("squeeze", pos(N(1, 3, 1, 4)), {"dim": 2}))
add(Case("squeeze", pos(N(1, 3, 1, 4)), {"dim": [0, 2]}))
add(Case("unsqueeze", pos(N(3, 4)), {"dim": 1}))
add(Case("unsqueeze", pos(N(3, 4)), {"dim": -1}))
add(Case("flatten", pos(N(2, 3, 4))))
add(Case("flatten", pos(N(2, 3, 4, 5)), {"start_dim": 1, "end_dim": 2}))
add(Case("unflatten", pos(N(2, 12)), {"dim": 1, "sizes": [3, 4]}))
add(Case("unflatten", pos(N(6, 2)), {"dim": 0, "sizes": [-1, 2]}))
add(Case("contiguous", pos(N(3, 4)), ref=lambda x: x.contiguous()))
add(Case("contiguous", lambda r: {"0": N(4, 3)(r).T}, ref=lambda x: x.contiguous(), label="transposed-view"))
add(Case("broadcast_to", pos(N(3, 1)), {"size": [2, 3, 4]}))
add(Case("broadcast_to", pos(N(3, 1)), {"size": [-1, 5]}))
add(Case("cat", pos(N(2, 3), N(4, 3)), ref=_list(torch.cat)))
add(Case("cat", pos(N(2, 3), N(2, 1), N(2, 2)), {"dim": 1}, ref=_list(torch.cat)))
add(Case("cat", pos(N(2, 3), N(2, 3, dt="float64")), ref=_list(torch.cat), label="promotion"))
add(Case("stack", pos(N(2, 3), N(2, 3)), ref=_list(torch.stack)))
add(Case("stack", pos(N(2, 3), N(2, 3), N(2, 3)), {"dim": -1}, ref=_list(torch.stack)))
for op, fn in [("hstack", torch.hstack), ("vstack", torch.vstack), ("dstack", torch.dstack)]:
    add(Case(op, pos(N(2, 3), N(2, 3)), ref=_list(fn)))
    add(Case(op, pos(N(3), N(3)), ref=_list(fn), label="1-D"))
add(Case("split", pos(N(7, 3)), {"split_size_or_sections": 3}))
add(Case("split", pos(N(7, 3)), {"split_size_or_sections": [2, 5]}))
add(Case("split", pos(N(3, 6)), {"split_size_or_sections": [1, 2, 3], "dim": 1}))
add(Case("split", pos(N(3, 6)), {"split_size_or_sections": 6, "dim": 1}, label="one-chunk"))
add(Case("split", pos(N(3, 6)), {"split_size_or_sections": [6], "dim": 1}, label="one-size-list"))
add(Case("chunk", pos(N(7, 3)), {"chunks": 3}))
add(Case("chunk", pos(N(3, 6)), {"chunks": 2, "dim": 1}))
# torch documents indices_or_sections but accepts it only positionally.
_tensor_split = lambda x, indices_or_sections, **kw: torch.tensor_split(x, indices_or_sections, **kw)  # noqa: E731
add(Case("tensor_split", pos(N(7, 3)), {"indices_or_sections": 3}, ref=_tensor_split))
add(Case("tensor_split", pos(N(3, 7)), {"indices_or_sections": [1, 4], "dim": 1}, ref=_tensor_split))
add(Case("tensor_split", pos(N(7, 3)), {"indices_or_sections": [2]}, ref=_tensor_split, label="one-index"))
add(Case("unbind", pos(N(3, 4))))
add(Case("unbind", pos(N(3, 4)), {"dim": 1}))
add(Case("meshgrid", pos(N(3), N(4)), {"indexing": "ij"}))
add(Case("meshgrid", pos(N(3), N(4), N(2)), {"indexing": "xy"}))
add(Case("flip", pos(N(3, 4)), {"dims": [0]}))
add(Case("flip", pos(N(2, 3, 4)), {"dims": [0, 2]}))
add(Case("fliplr", pos(N(3, 4))))
add(Case("flipud", pos(N(3, 4))))
add(Case("roll", pos(N(3, 4)), {"shifts": 2}))
add(Case("roll", pos(N(3, 4)), {"shifts": [1, -1], "dims": [0, 1]}))
add(Case("roll", pos(N(3, 4)), {"shifts": 1, "dims": 1}))
add(Case("rot90", pos(N(3, 4))))
add(Case("rot90", pos(N(2, 3, 4)), {"k": 2, "dims": [1, 2]}))
add(Case("rot90", pos(N(3, 4)), {"k": -1}))
add(Case("repeat", pos(N(2, 3)), {"repeats": [2, 1]}, ref=lambda x, repeats: x.repeat(repeats)))
add(Case("repeat", pos(N(3)), {"repeats": [2, 2]}, ref=lambda x, repeats: x.repeat(repeats), label="new-dims"))
add(Case("tile", pos(N(2, 3)), {"dims": [2]}))
add(Case("tile", pos(N(2, 3)), {"dims": [2, 1, 2]}))
add(Case("repeat_interleave", pos(N(2, 3)), {"repeats": 2}))
add(Case("repeat_interleave", pos(N(2, 3)), {"repeats": 3, "dim": 1}))
add(Case("repeat_interleave", {"0": N(3, 2), "repeats": I(0, 4, 3)}, {"dim": 0}, label="tensor-repeats"))
add(Case("narrow", pos(N(5, 4)), {"dim": 0, "start": 1, "length": 3}))
add(Case("narrow", pos(N(5, 4)), {"dim": 1, "start": -2, "length": 2}))
add(Case("select", pos(N(5, 4)), {"dim": 0, "index": 2}))
add(Case("select", pos(N(5, 4)), {"dim": 1, "index": -1}))
add(Case("view_as_real", pos(C(3, 2))))
add(Case("view_as_real", pos(C(4, dt="complex128"))))
add(Case("view_as_complex", pos(N(3, 2))))
add(Case("view_as_complex", pos(N(2, 4, 2, dt="float64"))))
add(Case("complex", pos(N(3, 4), N(3, 4))))
add(Case("complex", pos(N(3, dt="float64"), N(3, dt="float64"))))
add(Case("polar", pos(U(0, 2, 3, 4), N(3, 4))))
add(Case("polar", pos(U(0, 2, 3, dt="float64"), N(3, dt="float64"))))
add(Case("block_diag", pos(N(2, 2), N(1, 3))))
add(Case("block_diag", pos(N(2, 2), N(3), N(1, 1))))
add(Case("cartesian_prod", pos(N(3), N(2))))
add(Case("cartesian_prod", pos(I(0, 9, 2), I(0, 9, 2), I(0, 9, 3))))

# ---------------------------------------------------------------------- fft
for op in ["fft", "ifft"]:
    add(Case(op, pos(N(4, 8))))
    add(Case(op, pos(C(4, 8)), {"n": 6, "dim": 0, "norm": "ortho"}))
    add(Case(op, pos(N(4, 8, dt="float64")), {"norm": "forward"}))
add(Case("rfft", pos(N(4, 8))))
add(Case("rfft", pos(N(4, 8)), {"n": 10, "dim": 0, "norm": "ortho"}))
add(Case("irfft", pos(C(4, 5))))
add(Case("irfft", pos(C(4, 5, dt="complex128")), {"n": 8, "dim": 1, "norm": "forward"}))
add(Case("hfft", pos(C(4, 5))))
add(Case("hfft", pos(C(4, 5)), {"n": 6, "norm": "ortho"}))
add(Case("ihfft", pos(N(4, 8))))
add(Case("ihfft", pos(N(4, 8, dt="float64")), {"n": 5, "dim": 0}))
for op, inp in [("fft2", N(3, 4, 6)), ("ifft2", C(3, 4, 6)), ("rfft2", N(3, 4, 6)), ("irfft2", C(3, 4, 4))]:
    add(Case(op, pos(inp)))
    add(Case(op, pos(inp), {"s": [4, 6], "dim": [0, 2], "norm": "ortho"}))
    add(Case(op, pos(inp), {"norm": "forward"}))
for op, inp in [("fftn", N(3, 4, 6)), ("ifftn", C(3, 4, 6)), ("rfftn", N(3, 4, 6)), ("irfftn", C(3, 4, 4))]:
    add(Case(op, pos(inp)))
    add(Case(op, pos(inp), {"dim": [1, 2]}))
    add(Case(op, pos(inp), {"s": [5, 4], "dim": [0, 1], "norm": "ortho"}))
for op in ["fftshift", "ifftshift"]:
    add(Case(op, pos(N(5, 6))))
    add(Case(op, pos(N(5, 6)), {"dim": [1]}))
    add(Case(op, pos(C(3, 4)), {"dim": 0}))

# ----------------------------------------------------------------- creation
for op in ["zeros_like", "ones_like"]:
    add(Case(op, pos(N(3, 4))))
    add(Case(op, pos(N(3, 4)), {"dtype": "int32"}, ref=lambda x, dtype, _op=op: getattr(torch, _op)(x, dtype=getattr(torch, dtype))))
    add(Case(op, pos(I(0, 9, 5)), label="int64"))
add(Case("full_like", pos(N(3, 4)), {"fill_value": 3.5}))
add(Case("full_like", pos(I(0, 9, 5)), {"fill_value": 7}))
add(Case("full_like", pos(N(3, 4)), {"fill_value": 2, "dtype": "float64"},
         ref=lambda x, fill_value, dtype: torch.full_like(x, fill_value, dtype=getattr(torch, dtype))))

# Random ops: shape, dtype and range against torch's output, and two calls
# must differ (see test_ops.check_random).
add(Case("rand_like", pos(N(40, 5)), label="random"))
add(Case("rand_like", pos(N(40, 5)), {"dtype": "float64"}, label="random-float64"))
add(Case("randn_like", pos(N(40, 5)), label="random"))
add(Case("randn_like", pos(N(40, 5)), {"dtype": "float64"}, label="random-float64"))
add(Case("randint_like", pos(N(40, 5)), {"high": 10}, label="random"))
add(Case("randint_like", pos(I(0, 3, 40, 5)), {"low": 5, "high": 9}, label="random-int64"))
add(Case("bernoulli", pos(U(0.2, 0.8, 40, 5)), label="random"))
add(Case("multinomial", pos(U(0.1, 1, 3, 20)), {"num_samples": 10}, label="random"))
add(Case("multinomial", pos(U(0.1, 1, 20)), {"num_samples": 30, "replacement": True}, label="random-replacement"))
add(Case("normal", pos(N(40, 5), U(0.5, 2, 40, 5)), label="random"))
add(Case("dropout", pos(U(1, 2, 40, 5)), {"p": 0.3}, label="random"))
add(Case("dropout", pos(U(1, 2, 40, 5)), {"p": 0.5, "training": True}, label="random-training"))

# ----------------------------------------------------------------- indexing
add(Case("gather", {"0": N(3, 4), "index": I(0, 4, 3, 6)}, {"dim": 1}))
add(Case("gather", {"0": N(3, 4), "index": I(0, 3, 2, 4)}, {"dim": 0}))
add(Case("scatter", {"0": N(3, 5), "index": PERM(5, 3), "src": N(3, 5)}, {"dim": 1}))
add(Case("scatter", {"0": N(3, 5), "index": lambda r: PERM(5, 3)(r)[:, :2]}, {"dim": 1, "value": 9.0}))
add(Case("scatter", {"0": N(4, 3), "index": I(0, 4, 6, 3), "src": N(6, 3)}, {"dim": 0, "reduce": "add"}))
add(Case("scatter", {"0": N(4, 3), "index": I(0, 4, 6, 3), "src": U(0.5, 1.5, 6, 3)}, {"dim": 0, "reduce": "multiply"}))
add(Case("scatter", {"0": N(3, 5), "index": I(0, 5, 3, 2)}, {"dim": 1, "value": 2.0, "reduce": "add"}))
add(Case("scatter_add", {"0": N(4, 3), "index": I(0, 4, 6, 3), "src": N(6, 3)}, {"dim": 0}))
add(Case("scatter_add", {"0": N(3, 5), "index": I(0, 5, 3, 4), "src": N(3, 4)}, {"dim": 1}))
add(Case("index_select", {"0": N(5, 3), "index": I(0, 5, 7)}, {"dim": 0}))
add(Case("index_select", {"0": N(5, 3), "index": I(0, 3, 2)}, {"dim": 1}))
add(Case("index_add", {"0": N(5, 3), "index": I(0, 5, 4), "source": N(4, 3)}, {"dim": 0}))
add(Case("index_add", {"0": N(5, 3), "index": I(0, 3, 2), "source": N(5, 2)}, {"dim": 1, "alpha": 2.5}))
add(Case("index_copy", {"0": N(5, 3), "index": lambda r: r.permutation(5)[:3], "source": N(3, 3)}, {"dim": 0}))
add(Case("index_copy", {"0": N(3, 5), "index": lambda r: r.permutation(5)[:2], "source": N(3, 2)}, {"dim": 1}))
add(Case("index_fill", {"0": N(5, 3), "index": I(0, 5, 2)}, {"dim": 0, "value": -1.0}))
add(Case("index_fill", {"0": I(0, 9, 5, 3), "index": I(0, 3, 2)}, {"dim": 1, "value": 7}))
add(Case("masked_fill", {"0": N(3, 4), "mask": B(3, 4)}, {"value": 0.5}))
add(Case("masked_fill", {"0": N(3, 4), "mask": B(4)}, {"value": -2}, label="broadcast-mask"))
add(Case("masked_fill", {"0": N(3, 4), "mask": B(3, 4), "value": CONST(np.float32(3.0))}, label="tensor-value"))
add(Case("masked_select", {"0": N(3, 4), "mask": B(3, 4)}))
add(Case("masked_select", {"0": N(3, 4), "mask": B(4)}, label="broadcast"))
add(Case("masked_scatter", {"0": N(3, 4), "mask": B(3, 4), "source": N(12)}))
add(Case("take", {"0": N(3, 4), "index": I(0, 12, 5)}))
add(Case("take", {"0": N(3, 4), "index": I(-12, 12, 2, 3)}, label="negative"))
add(Case("take_along_dim", {"0": N(3, 4), "indices": I(0, 4, 3, 2)}, {"dim": 1}))
add(Case("take_along_dim", {"0": N(3, 4), "indices": I(0, 12, 5)}))
add(Case("nonzero", pos(I(0, 2, 3, 4))))
add(Case("nonzero", pos(B(2, 3, 2))))
add(Case("argwhere", pos(I(0, 2, 3, 4))))
add(Case("argwhere", pos(N(5))))
add(Case("searchsorted", {"sorted_sequence": SORTED(3, 6), "input": N(3, 4)}))
add(Case("searchsorted", {"sorted_sequence": SORTED(6), "input": N(2, 3)}, {"right": True}))
add(Case("searchsorted", {"sorted_sequence": SORTED(6), "input": N(5)}, {"side": "right", "out_int32": True}))


def _sorter_case(r):
    """An unsorted sequence with the permutation that sorts it."""
    seq = r.standard_normal(6).astype(np.float32)
    return {"sorted_sequence": seq, "input": r.standard_normal(4).astype(np.float32), "sorter": np.argsort(seq)}


add(Case("searchsorted", _sorter_case, label="sorter"))
add(Case("searchsorted", {"sorted_sequence": SORTED(6)}, {"input": 0.0, "side": "left"}, label="scalar",
         ref=lambda sorted_sequence, input, **kw: torch.searchsorted(sorted_sequence, input, **kw)))

add(Case("bucketize", {"0": N(3, 4), "boundaries": SORTED(5)}))
add(Case("bucketize", {"0": I(0, 10, 6), "boundaries": CONST(np.array([1, 3, 5, 7]))}, {"right": True, "out_int32": True}))
add(Case("bincount", pos(I(0, 6, 20))))
add(Case("bincount", {"0": I(0, 6, 20), "weights": U(0, 1, 20)}, {"minlength": 10}))
add(Case("bincount", {"0": I(0, 6, 20), "weights": U(0, 1, 20, dt="float64")}))
add(Case("histc", pos(N(50))))
add(Case("histc", pos(N(50)), {"bins": 7, "min": -1.0, "max": 1.0}))
add(Case("histc", pos(N(50, dt="float64")), {"bins": 5}))
add(Case("histogram", pos(N(50)), {"bins": 6}))
add(Case("histogram", pos(CONST(np.ones(5, np.float32))), {"bins": 3}, label="constant-input"))
add(Case("histogram", pos(N(50)), {"bins": 4, "range": [-1.0, 2.0], "density": True}))
add(Case("histogram", {"0": N(50), "weight": U(0, 1, 50)}, {"bins": 5}))
add(Case("unique", pos(I(0, 5, 20))))
add(Case("unique", pos(I(0, 5, 20)), {"return_inverse": True}))
add(Case("unique", pos(I(0, 5, 20)), {"return_counts": True}))
add(Case("unique", pos(I(0, 3, 6, 2)), {"return_inverse": True, "return_counts": True, "dim": 0}))
add(Case("unique", pos(N(10)), {"sorted": True, "return_counts": True}, label="float"))
add(Case("unique_consecutive", pos(I(0, 3, 20))))
add(Case("unique_consecutive", pos(I(0, 3, 20)), {"return_inverse": True, "return_counts": True}))
add(Case("unique_consecutive", pos(I(0, 2, 6, 2)), {"return_counts": True, "dim": 0}))

for op, inp in [("hfft2", C(3, 4, 4)), ("ihfft2", N(3, 4, 6))]:
    add(Case(op, pos(inp)))
    add(Case(op, pos(inp), {"s": [4, 6], "dim": [0, 2], "norm": "ortho"}))
for op, inp in [("hfftn", C(3, 4, 4)), ("ihfftn", N(3, 4, 6))]:
    add(Case(op, pos(inp)))
    add(Case(op, pos(inp), {"s": [5, 4], "dim": [0, 1], "norm": "forward"}))
