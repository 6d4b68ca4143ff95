"""The machinery of the op conformance suite: cases, input generators, the
PyTorch reference call and the comparison of results.

A :class:`Case` names an op, how to draw its inputs from a seeded numpy
``Generator`` (fresh each run), its keyword arguments and, where the op
needs it, a custom reference or check. By default the reference is the
torch function of the same name (``torch.linalg``, ``torch.fft``,
``torch.nn.functional`` or ``torch``), called on the same inputs with the
same arguments, and the results must match in keys, dtype, shape and
values (tolerance by dtype).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

Inputs = Dict[str, np.ndarray]
Gen = Callable[[np.random.Generator], np.ndarray]

# --------------------------------------------------------------------------
# Input generators: each returns a function of the Generator.


def N(*shape: int, dt: str = "float32", scale: float = 1.0) -> Gen:
    """Standard normal values."""
    return lambda r: (r.standard_normal(shape) * scale).astype(dt)


def U(lo: float, hi: float, *shape: int, dt: str = "float32") -> Gen:
    """Uniform values in [lo, hi)."""
    return lambda r: r.uniform(lo, hi, shape).astype(dt)


def I(lo: int, hi: int, *shape: int, dt: str = "int64") -> Gen:  # noqa: E743
    """Uniform integers in [lo, hi)."""
    return lambda r: r.integers(lo, hi, shape).astype(dt)


def B(*shape: int) -> Gen:
    """Random booleans."""
    return lambda r: r.random(shape) < 0.5


def C(*shape: int, dt: str = "complex64") -> Gen:
    """Complex normal values."""
    return lambda r: (r.standard_normal(shape) + 1j * r.standard_normal(shape)).astype(dt)


def AWAY(*shape: int, dt: str = "float32") -> Gen:
    """Values with |x| in [0.5, 3): safe divisors."""
    return lambda r: (r.uniform(0.5, 3.0, shape) * r.choice([-1.0, 1.0], shape)).astype(dt)


def WELL(n: int, *batch: int, dt: str = "float32") -> Gen:
    """Well-conditioned square matrices: A + n I."""
    return lambda r: (r.standard_normal((*batch, n, n)) + n * np.eye(n)).astype(dt)


def SPD(n: int, *batch: int, dt: str = "float32") -> Gen:
    """Symmetric positive-definite matrices: A Aᵀ + n I."""

    def g(r: np.random.Generator) -> np.ndarray:
        a = r.standard_normal((*batch, n, n))
        return (a @ np.swapaxes(a, -1, -2) + n * np.eye(n)).astype(dt)

    return g


def SYM(n: int, *batch: int, dt: str = "float32") -> Gen:
    """Symmetric matrices."""

    def g(r: np.random.Generator) -> np.ndarray:
        a = r.standard_normal((*batch, n, n))
        return ((a + np.swapaxes(a, -1, -2)) / 2).astype(dt)

    return g


def TRI(n: int, upper: bool, dt: str = "float32") -> Gen:
    """Well-conditioned triangular matrices."""

    def g(r: np.random.Generator) -> np.ndarray:
        a = r.standard_normal((n, n)) * 0.3 + 2 * np.eye(n)
        return (np.triu(a) if upper else np.tril(a)).astype(dt)

    return g


def PERM(n: int, *lead: int) -> Gen:
    """Rows of permutations of range(n) (unique indices), int64."""

    def g(r: np.random.Generator) -> np.ndarray:
        rows = int(np.prod(lead)) if lead else 1
        p = np.stack([r.permutation(n) for _ in range(rows)])
        return p.reshape(*lead, n) if lead else p[0]

    return g


def WITH_NAN(*shape: int, dt: str = "float32") -> Gen:
    """Normal values with some NaN, +inf and -inf."""

    def g(r: np.random.Generator) -> np.ndarray:
        x = r.standard_normal(shape).astype(dt)
        flat = x.reshape(-1)
        idx = r.permutation(flat.size)
        flat[idx[0]] = np.nan
        if flat.size > 2:
            flat[idx[1]] = np.inf
            flat[idx[2]] = -np.inf
        return x

    return g


def SORTED(*shape: int, dt: str = "float32") -> Gen:
    """Values sorted along the last dimension."""
    return lambda r: np.sort(r.standard_normal(shape), axis=-1).astype(dt)


def CONST(a: Any) -> Gen:
    """A fixed array."""
    arr = np.asarray(a)
    return lambda r: arr.copy()


# --------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    """One call of an op, checked against PyTorch."""

    op: str
    inputs: Any  # dict name -> Gen, or a function r -> dict
    kwargs: Dict[str, Any] = field(default_factory=dict)
    ref: Optional[Callable[..., Any]] = None
    check: Optional[Callable[..., None]] = None  # check(got, inputs, kwargs, ctx)
    rtol: Optional[float] = None
    atol: Optional[float] = None
    label: str = ""
    # Torch raises on these arguments: mymps must answer with an error too.
    error: bool = False

    def draw(self, rng: np.random.Generator) -> Inputs:
        if callable(self.inputs):
            return self.inputs(rng)
        return {k: g(rng) for k, g in self.inputs.items()}

    @property
    def id(self) -> str:
        kw = ",".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.op}[{self.label or kw or 'default'}]"


def pos(*gens: Gen, **named: Gen) -> Dict[str, Gen]:
    """Positional inputs "0", "1", ... and named ones."""
    d: Dict[str, Gen] = {str(i): g for i, g in enumerate(gens)}
    d.update(named)
    return d


# --------------------------------------------------------------------------
# The reference call

LINALG = {
    "svd", "svdvals", "eig", "eigvals", "eigh", "eigvalsh", "inv", "pinv", "det", "slogdet",
    "solve", "solve_triangular", "lstsq", "cholesky", "qr", "lu", "matrix_exp",
    "matrix_power", "matrix_rank", "matrix_norm", "vector_norm", "cond", "multi_dot",
    "lu_factor", "lu_solve", "householder_product", "tensorinv", "tensorsolve", "vecdot",
}
FFT = {
    "fft", "ifft", "rfft", "irfft", "hfft", "ihfft", "fft2", "ifft2", "rfft2", "irfft2",
    "fftn", "ifftn", "rfftn", "irfftn", "fftshift", "ifftshift", "hfft2", "ihfft2", "hfftn", "ihfftn",
}
# Ops whose torch function is not torch.nn.functional.NAME although F has one.
TORCH_FIRST = {"tanh", "sigmoid", "norm"}


def torch_function(op: str) -> Callable[..., Any]:
    """The torch function an op mirrors, by name."""
    if op in LINALG:
        return getattr(torch.linalg, op)
    if op in FFT:
        return getattr(torch.fft, op)
    if op not in TORCH_FIRST and hasattr(F, op):
        return getattr(F, op)
    return getattr(torch, op)


#: Where references run: the server's device when it is a CUDA device that
#: this torch can use (kernels differ between devices — TF32 convolutions,
#: float32 internals of some float64 kernels, CUDA-only lstsq drivers — so
#: mymps on CUDA is compared with torch on CUDA), else the CPU.
_DEVICE = os.environ.get("MYMPS_TEST_DEVICE", "cpu")
REF_DEVICE = _DEVICE if _DEVICE.startswith("cuda") and torch.cuda.is_available() else "cpu"


def to_torch(x: np.ndarray, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.array(x, copy=True)).to(device)


def call_reference(case: Case, inputs: Inputs, device: str = "cpu") -> Dict[str, np.ndarray]:
    """Runs the reference on copies of the inputs on `device` (custom
    references, which may make CPU tensors of their own, and ops the device
    has no kernel for, on the CPU); results by wire name."""
    if case.ref is not None or device == "cpu":
        return _reference(case, inputs, "cpu")
    try:
        return _reference(case, inputs, device)
    except (RuntimeError, NotImplementedError):
        # No kernel for it on that device: mymps falls back to the CPU,
        # and so does the reference.
        return _reference(case, inputs, "cpu")


def _reference(case: Case, inputs: Inputs, device: str) -> Dict[str, np.ndarray]:
    positional = [to_torch(inputs[str(i)], device) for i in range(len(inputs)) if str(i) in inputs]
    named = {k: to_torch(v, device) for k, v in inputs.items() if not k.isdigit()}
    fn = case.ref or torch_function(case.op)
    kwargs = dict(case.kwargs)
    if isinstance(kwargs.get("dtype"), str) and case.ref is None:
        # mymps takes a dtype name, torch a torch.dtype.
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    with warnings.catch_warnings():
        # torch's deprecation notes (scatter's reduce, kl_div's "mean", ...)
        warnings.simplefilter("ignore", UserWarning)
        out = fn(*positional, **named, **kwargs)
    return by_wire_name(out)


def by_wire_name(out: Any) -> Dict[str, np.ndarray]:
    if isinstance(out, torch.Tensor):
        return {"output": to_numpy(out)}
    if isinstance(out, (tuple, list)):
        return {str(i): to_numpy(t) for i, t in enumerate(out)}
    raise TypeError(f"unexpected reference result {type(out)}")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().resolve_conj().resolve_neg().contiguous()
    return t.numpy()


# --------------------------------------------------------------------------
# Comparison

TOL = {
    np.dtype("float16"): (1e-2, 1e-2),
    np.dtype("float32"): (2e-4, 2e-5),
    np.dtype("float64"): (1e-9, 1e-11),
    np.dtype("complex64"): (2e-4, 2e-5),
    np.dtype("complex128"): (1e-9, 1e-11),
}


def assert_same(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray], case: Case, ctx: str) -> None:
    assert sorted(got) == sorted(want), f"{ctx}: result keys {sorted(got)} != torch's {sorted(want)}"
    for k in want:
        assert_array(got[k], want[k], case, f"{ctx}, result {k!r}")


def assert_array(g: np.ndarray, w: np.ndarray, case: Case, ctx: str) -> None:
    assert g.dtype == w.dtype, f"{ctx}: dtype {g.dtype} != torch's {w.dtype}"
    assert g.shape == w.shape, f"{ctx}: shape {g.shape} != torch's {w.shape}"
    if g.dtype.kind in "biu":
        np.testing.assert_array_equal(g, w, err_msg=ctx)
        return
    rtol, atol = TOL.get(g.dtype, (1e-4, 1e-5))
    rtol = case.rtol if case.rtol is not None else rtol
    atol = case.atol if case.atol is not None else atol
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=ctx)


def close(a: np.ndarray, b: np.ndarray, ctx: str, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=ctx)


def eye_like(n: int, dt: Any) -> np.ndarray:
    return np.eye(n, dtype=dt)


__all__ = [
    "B", "C", "CONST", "Case", "I", "N", "PERM", "SORTED", "SPD", "SYM", "TRI", "U", "AWAY",
    "WELL", "WITH_NAN", "assert_array", "assert_same", "call_reference", "close", "eye_like",
    "pos", "torch_function", "to_torch", "by_wire_name", "math", "F", "torch", "np",
]
