"""Cases where torch raises: mymps must answer with an error, not a result."""

from __future__ import annotations

from typing import List

import numpy as np
from harness import B, Case, I, N, SORTED, U, pos

CASES: List[Case] = []


def err(op, inputs, kwargs=None, label="", **kw):
    CASES.append(Case(op, inputs, kwargs or {}, label="error-" + label, error=True, **kw))


err("add", pos(I(0, 9, 4), I(0, 9, 4)), {"alpha": 0.5}, "float-alpha-int")
err("sub", pos(I(0, 9, 4)), {"other": 2, "alpha": 1.5}, "float-alpha-int-scalar")
err("add", pos(N(4), N(4)), {"alpha": True}, "bool-alpha")
err("clamp", pos(N(4)), {}, "no-bounds")
err("hardtanh", pos(N(4)), {"min_val": 1.0, "max_val": -1.0}, "min-above-max")
err("dropout", pos(N(4)), {"p": 1.5}, "p-out-of-range")
err("gaussian_nll_loss", pos(N(4, 3), N(4, 3), lambda r: -U(0.1, 1, 4, 3)(r)), {}, "negative-var")
err("gaussian_nll_loss", pos(N(4, 3), N(4, 3), U(0.1, 1, 2, 3)), {}, "var-shape")
err("interpolate", pos(N(1, 1, 4, 4)), {"size": 8, "scale_factor": 2.0}, "size-and-scale")
err("interpolate", pos(N(1, 1, 4, 4)), {"size": 8, "align_corners": True}, "align-corners-nearest")
err("interpolate", pos(N(1, 1, 4, 4)), {"size": 8, "mode": "bogus"}, "mode")
err("interpolate", pos(N(1, 1, 4, 4)), {"size": 8, "recompute_scale_factor": True}, "recompute-with-size")
err("interpolate", pos(N(1, 1, 4, 4)), {"size": 8, "antialias": True}, "antialias-nearest")
err("cdist", pos(N(3, 2), N(3, 2)), {"compute_mode": "bogus"}, "compute-mode")
err("embedding", pos(I(0, 5, 3), N(5, 2)), {"padding_idx": 5}, "padding-idx")
err("mse_loss", pos(N(3), N(3)), {"reduction": "bogus"}, "reduction")
err("kl_div", pos(N(3), N(3)), {"reduction": "bogus"}, "reduction")
err("matrix_norm", pos(N(2, 3, 4)), {"dim": [0, 1, 2]}, "dim")
err("matrix_norm", pos(N(3, 4)), {"ord": "bogus"}, "ord")
err("norm", pos(N(3, 4)), {"p": "bogus"}, "p")
err("histc", pos(N(10)), {"bins": 4, "min": 1.0, "max": -1.0}, "min-above-max")
err("tensordot", pos(N(3, 4), N(4, 2)), {"dims": -1}, "negative-dims")
err("solve", pos(lambda r: np.zeros((3, 3), np.float32), N(3, 1)), {}, "singular")
err("cholesky", pos(lambda r: -np.eye(3, dtype=np.float32)), {}, "not-positive-definite")
err("inv", pos(lambda r: np.ones((3, 3), np.float32)), {}, "singular")
err("conv2d", pos(N(1, 2, 6, 6), N(3, 2, 3, 3)), {"padding": "same", "stride": 2}, "same-with-stride")
err("conv2d", pos(N(1, 2, 6, 6), N(3, 2, 3, 3)), {"padding": "full"}, "padding-mode")
err("split", pos(N(6)), {"split_size_or_sections": [2, 3]}, "sizes-do-not-sum")
err("split", pos(N(6)), {"split_size_or_sections": [3]}, "one-size-not-the-whole")
err("mm", pos(N(2, 3), N(2, 3)), {}, "shapes")
err("cat", pos(N(2, 3), N(2, 4)), {}, "shapes", ref=lambda *t: __import__("torch").cat(t))
err("gather", {"0": N(3, 4), "index": I(4, 8, 3, 2)}, {"dim": 1}, "index-out-of-range")
err("one_hot", pos(lambda r: np.array([0, 4, 1])), {"num_classes": 3}, "class-too-large")
err("searchsorted", {"sorted_sequence": SORTED(3, 5), "input": N(2, 4)}, {"side": "left", "right": True}, "side-vs-right")
err("where", pos(N(3), N(3), N(3)), {}, "float-condition")
err("masked_fill", {"0": N(3), "mask": N(3)}, {"value": 1.0}, "float-mask")
err("rand_like", pos(I(0, 9, 4)), {}, "int-dtype")
err("sort", pos(N(3, 4)), {"dim": 2}, "dim-out-of-range")
err("logical_and", pos(B(3), B(4)), {}, "broadcast")
err("trapezoid", pos(lambda r: np.float32(1.0)), {"dim": 0}, "0-d")
err("cumulative_trapezoid", pos(N(3)), {"dim": 1}, "dim-out-of-range")
