"""Cases: reductions, scans, linear algebra."""

from __future__ import annotations

from typing import List

from harness import (
    AWAY, B, C, CONST, Case, I, N, SORTED, SPD, SYM, TRI, U, WELL, WITH_NAN, assert_array, close, np,
    pos,
    torch,
)

CASES: List[Case] = []
add = CASES.append

# ---------------------------------------------------------------- reductions
for op in ["sum", "mean", "nansum", "nanmean"]:
    add(Case(op, pos(N(3, 4, 5))))
    add(Case(op, pos(N(3, 4, 5)), {"dim": 1}))
    add(Case(op, pos(N(3, 4, 5)), {"dim": [0, 2], "keepdim": True}))
    add(Case(op, pos(N(3, 4)), {"keepdim": True},
             # torch takes keepdim only with dim (None included).
             ref=lambda x, keepdim, _op=op: getattr(torch, _op)(x, dim=None, keepdim=keepdim)))
    add(Case(op, pos(N(3, 4)), {"dim": -1, "dtype": "float64"}))
for op in ["nansum", "nanmean"]:
    add(Case(op, pos(CONST(np.array([[1.0, np.nan, 2.0], [np.nan, 4.0, 5.0]], np.float32))), {"dim": 1}, label="nan"))
add(Case("sum", pos(I(-5, 5, 3, 4)), label="int64"))
add(Case("sum", pos(B(3, 4)), {"dim": 0}, label="bool"))
add(Case("prod", pos(U(0.5, 1.5, 3, 4))))
add(Case("prod", pos(U(0.5, 1.5, 3, 4)), {"dim": 1, "keepdim": True}))
add(Case("prod", pos(I(1, 4, 3, 4)), {"dim": 0, "dtype": "float64"}))
for op in ["amax", "amin"]:
    add(Case(op, pos(N(3, 4, 5))))
    add(Case(op, pos(N(3, 4, 5)), {"dim": 1}))
    add(Case(op, pos(N(3, 4, 5)), {"dim": [0, 2], "keepdim": True}))
    add(Case(op, pos(I(-9, 9, 6)), label="int64"))
add(Case("aminmax", pos(N(3, 4))))
add(Case("aminmax", pos(N(3, 4)), {"dim": 0, "keepdim": True}))
for op in ["argmax", "argmin"]:
    add(Case(op, pos(N(3, 4))))
    add(Case(op, pos(N(3, 4)), {"dim": 1}))
    add(Case(op, pos(N(3, 4)), {"dim": 0, "keepdim": True}))
for op in ["all", "any"]:
    add(Case(op, pos(B(3, 4))))
    add(Case(op, pos(B(3, 4)), {"dim": 1}))
    add(Case(op, pos(B(3, 4, 2)), {"dim": [0, 2], "keepdim": True}))
    add(Case(op, pos(I(0, 2, 5)), label="int64"))
add(Case("count_nonzero", pos(I(0, 2, 3, 4))))
add(Case("count_nonzero", pos(I(0, 2, 3, 4)), {"dim": 1}))
add(Case("count_nonzero", pos(I(0, 2, 3, 4, 2)), {"dim": [0, 2]}))
add(Case("norm", pos(N(3, 4))))
add(Case("norm", pos(N(3, 4)), {"p": 1}))
add(Case("norm", pos(N(3, 4)), {"p": "fro", "dim": [0, 1], "keepdim": True}))
add(Case("norm", pos(N(3, 4)), {"p": "nuc"}))
add(Case("norm", pos(N(2, 3, 4)), {"p": "nuc", "dim": [1, 2]}))
add(Case("norm", pos(N(3, 4)), {"p": 0.5, "keepdim": True}))
add(Case("norm", pos(N(3, 4)), {"p": float("inf"), "dim": 1}))
add(Case("norm", pos(N(3, 4, 2)), {"p": 3.0, "dim": [0, 2], "keepdim": True}))
add(Case("norm", pos(N(3, 4)), {"dim": 0, "dtype": "float64"}))
add(Case("vector_norm", pos(N(3, 4))))
add(Case("vector_norm", pos(N(3, 4)), {"ord": 1, "dim": 1}))
add(Case("vector_norm", pos(N(3, 4)), {"ord": float("-inf"), "dim": [0, 1], "keepdim": True}))
add(Case("vector_norm", pos(N(3, 4)), {"ord": 0.5, "dtype": "float64"}))
add(Case("logsumexp", pos(N(3, 4)), {"dim": 1}))
add(Case("logsumexp", pos(N(3, 4, 2)), {"dim": [0, 2], "keepdim": True}))
for op in ["var", "std", "var_mean", "std_mean"]:
    add(Case(op, pos(N(4, 5))))
    add(Case(op, pos(N(4, 5)), {"dim": 1}))
    add(Case(op, pos(N(4, 5)), {"dim": [0], "correction": 0, "keepdim": True}))
    add(Case(op, pos(N(4, 5, dt="float64")), {"correction": 2}))
for op in ["median", "nanmedian"]:
    add(Case(op, pos(N(3, 5))))
    add(Case(op, pos(N(3, 5)), {"dim": 1}))
    add(Case(op, pos(N(3, 5)), {"dim": 0, "keepdim": True}))
add(Case("nanmedian", pos(CONST(np.array([[1.0, np.nan, 3.0], [2.0, 5.0, np.nan]], np.float32))), {"dim": 1}, label="nan"))
add(Case("mode", pos(I(0, 3, 3, 7))))
add(Case("mode", pos(I(0, 3, 6, 3)), {"dim": 0, "keepdim": True}))
add(Case("kthvalue", pos(N(3, 5)), {"k": 2}))
add(Case("kthvalue", pos(N(5, 3)), {"k": 4, "dim": 0, "keepdim": True}))
for op in ["quantile", "nanquantile"]:
    add(Case(op, pos(N(3, 6)), {"q": 0.3}))
    add(Case(op, {"0": N(3, 6), "q": CONST(np.array([0.1, 0.5, 0.9], np.float32))}, {"dim": 1, "keepdim": True}))
    add(Case(op, pos(N(3, 6, dt="float64")), {"q": 0.75, "dim": 0, "interpolation": "nearest"}))
    add(Case(op, pos(N(9)), {"q": 0.4, "interpolation": "midpoint"}))
add(Case("nanquantile", pos(WITH_NAN(3, 6)), {"q": 0.5, "dim": 1}, label="nan"))
for op in ["cumsum", "cumprod"]:
    add(Case(op, pos(U(0.5, 1.5, 3, 4)), {"dim": 1}))
    add(Case(op, pos(U(0.5, 1.5, 3, 4)), {"dim": 0, "dtype": "float64"}))
    add(Case(op, pos(I(1, 3, 5)), {"dim": 0}, label="int64"))
for op in ["cummax", "cummin"]:
    add(Case(op, pos(N(3, 5)), {"dim": 1}))
    add(Case(op, pos(N(4, 3, dt="float64")), {"dim": 0}))
add(Case("logcumsumexp", pos(N(3, 5)), {"dim": 1}))
add(Case("logcumsumexp", pos(N(3, 5, dt="float64")), {"dim": 0}))
add(Case("diff", pos(N(3, 6))))
add(Case("diff", pos(N(3, 6)), {"n": 2, "dim": 0}))
add(Case("diff", {"0": N(3, 6), "prepend": N(3, 1), "append": N(3, 2)}, label="prepend-append"))

# ------------------------------------------------------------------- linalg
add(Case("matmul", pos(N(3, 4), N(4, 5))))
add(Case("matmul", pos(N(2, 3, 4), N(4, 5)), label="batched-broadcast"))
add(Case("matmul", pos(N(4), N(4, 3)), label="vector"))
add(Case("matmul", pos(N(3, 4, dt="float64"), N(4, dt="float64")), label="matrix-vector"))
add(Case("mm", pos(N(3, 4), N(4, 5))))
add(Case("mm", {"0": N(2, 3, dt="float64"), "mat2": N(3, 2, dt="float64")}, label="named"))
add(Case("bmm", pos(N(2, 3, 4), N(2, 4, 5))))
add(Case("mv", pos(N(3, 4), N(4))))
add(Case("dot", pos(N(5), N(5))))
add(Case("dot", pos(I(-3, 3, 5), I(-3, 3, 5)), label="int64"))
add(Case("vdot", pos(C(4), C(4))))
add(Case("vdot", pos(N(4), N(4)), label="real"))
add(Case("inner", pos(N(3, 4), N(2, 4))))
add(Case("inner", pos(N(4), N(4)), label="vectors"))
add(Case("outer", pos(N(3), N(4))))
add(Case("kron", pos(N(2, 3), N(3, 2))))
add(Case("cross", pos(N(4, 3), N(4, 3))))
add(Case("cross", pos(N(3, 5), N(3, 5)), {"dim": 0}))
add(Case("tensordot", pos(N(3, 4, 5), N(4, 5, 2))))
add(Case("tensordot", pos(N(3, 4), N(4, 2)), {"dims": 1}))
add(Case("tensordot", pos(N(3), N(4)), {"dims": 0}))


def _einsum(*operands, equation):
    return torch.einsum(equation, *operands)


add(Case("einsum", pos(N(3, 4), N(4, 5)), {"equation": "ij,jk->ik"}, ref=_einsum))
add(Case("einsum", pos(N(2, 3, 4)), {"equation": "bij->bji"}, ref=_einsum))
add(Case("einsum", pos(N(4, 4)), {"equation": "ii->"}, ref=_einsum))
add(Case("einsum", pos(N(3), N(3), N(3)), {"equation": "i,i,i->"}, ref=_einsum))
add(Case("multi_dot", pos(N(3, 4), N(4, 5), N(5, 2)), ref=lambda *t: torch.linalg.multi_dot(t)))
add(Case("multi_dot", pos(N(4), N(4, 5), N(5)), ref=lambda *t: torch.linalg.multi_dot(t), label="vector-ends"))
add(Case("addmm", pos(N(3, 5), N(3, 4), N(4, 5))))
add(Case("addmm", pos(N(5), N(3, 4), N(4, 5)), {"beta": 0.5, "alpha": 2}))
add(Case("addmm", pos(N(3, 5), N(3, 4), N(4, 5)), {"beta": 0}))
add(Case("baddbmm", pos(N(2, 3, 5), N(2, 3, 4), N(2, 4, 5))))
add(Case("baddbmm", pos(N(3, 5), N(2, 3, 4), N(2, 4, 5)), {"beta": 2, "alpha": 0.5}))
add(Case("trace", pos(N(4, 4))))
add(Case("trace", pos(I(-5, 5, 3, 4)), label="int64"))


def check_svd(got, want, inputs, case, ctx):
    a = inputs["0"]
    u, s, vh = got["0"], got["1"], got["2"]
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, ctx
    close(s, want["1"], ctx + ": singular values")
    k = s.shape[-1]
    rec = (u[..., :, :k] * s[..., None, :]) @ vh[..., :k, :]
    close(rec, a, ctx + ": U diag(S) Vh != A")
    n = u.shape[-1]
    close(np.swapaxes(u, -1, -2).conj() @ u, np.broadcast_to(np.eye(n), u.shape[:-2] + (n, n)), ctx + ": U not orthonormal")


add(Case("svd", pos(N(4, 3)), check=check_svd))
add(Case("svd", pos(N(3, 5)), {"full_matrices": False}, check=check_svd))
add(Case("svd", pos(N(2, 4, 4, dt="float64")), {"full_matrices": True}, check=check_svd, label="batched"))
add(Case("svdvals", pos(N(4, 3))))
add(Case("svdvals", pos(N(2, 3, 5, dt="float64")), label="batched"))


def check_eig(got, want, inputs, case, ctx):
    a = inputs["0"].astype(np.complex128)
    w, v = got["0"], got["1"]
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, ctx
    close(a @ v, v * w[..., None, :], ctx + ": A V != V diag(w)", atol=1e-3)
    close(np.sort_complex(w.reshape(-1)), np.sort_complex(want["0"].reshape(-1)), ctx + ": eigenvalues")


def check_sorted_values(got, want, inputs, case, ctx):
    assert got["output"].dtype == want["output"].dtype and got["output"].shape == want["output"].shape, ctx
    close(np.sort_complex(got["output"].reshape(-1)), np.sort_complex(want["output"].reshape(-1)), ctx)


add(Case("eig", pos(N(4, 4)), check=check_eig))
add(Case("eig", pos(N(2, 3, 3, dt="float64")), check=check_eig, label="batched"))
add(Case("eigvals", pos(N(4, 4)), check=check_sorted_values))
add(Case("eigvals", pos(N(3, 3, dt="float64")), check=check_sorted_values, label="float64"))


def check_eigh(got, want, inputs, case, ctx):
    a = inputs["0"]
    uplo = case.kwargs.get("UPLO", "L")
    sym = np.tril(a) + np.swapaxes(np.tril(a, -1), -1, -2) if uplo == "L" else np.triu(a) + np.swapaxes(np.triu(a, 1), -1, -2)
    w, v = got["0"], got["1"]
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, ctx
    close(w, want["0"], ctx + ": eigenvalues")
    close(sym @ v, v * w[..., None, :], ctx + ": A V != V diag(w)", atol=1e-3)


add(Case("eigh", pos(SYM(4)), check=check_eigh))
add(Case("eigh", pos(N(4, 4)), {"UPLO": "U"}, check=check_eigh, label="upper-of-nonsymmetric"))
add(Case("eigh", pos(SYM(3, 2, dt="float64")), check=check_eigh, label="batched"))
add(Case("eigvalsh", pos(SYM(4))))
add(Case("eigvalsh", pos(N(4, 4)), {"UPLO": "U"}))
add(Case("inv", pos(WELL(4))))
add(Case("inv", pos(WELL(3, 2, dt="float64")), label="batched"))
add(Case("pinv", pos(N(4, 3))))
add(Case("pinv", pos(SPD(4)), {"hermitian": True}))
add(Case("pinv", pos(N(3, 5, dt="float64")), {"rtol": 0.1}))
add(Case("pinv", pos(N(3, 5, dt="float64")), {"atol": 0.5}))
add(Case("det", pos(N(4, 4))))
add(Case("det", pos(N(2, 3, 3, dt="float64")), label="batched"))
add(Case("slogdet", pos(N(4, 4))))
add(Case("slogdet", pos(N(2, 3, 3, dt="float64")), label="batched"))
add(Case("solve", pos(WELL(4), N(4, 2))))
add(Case("solve", pos(WELL(4), N(4)), label="vector"))
add(Case("solve", pos(WELL(4), N(2, 4)), {"left": False}))
add(Case("solve", pos(WELL(3, 2, dt="float64"), N(2, 3, 1, dt="float64")), label="batched"))
add(Case("solve_triangular", pos(TRI(4, True), N(4, 2)), {"upper": True}))
add(Case("solve_triangular", pos(TRI(4, False), N(2, 4)), {"upper": False, "left": False}))
add(Case("solve_triangular", pos(TRI(4, True), N(4, 3)), {"upper": True, "unitriangular": True}))
add(Case("lstsq", pos(N(6, 3), N(6, 2))))
add(Case("lstsq", pos(N(6, 3, dt="float64"), N(6, 2, dt="float64")), {"driver": "gelsd"}))
add(Case("lstsq", pos(N(5, 3, dt="float64"), N(5, 1, dt="float64")), {"rcond": 1e-3, "driver": "gelss"}))
add(Case("cholesky", pos(SPD(4))))
add(Case("cholesky", pos(SPD(3, 2, dt="float64")), {"upper": True}))


def check_qr(got, want, inputs, case, ctx):
    a = inputs["0"]
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, ctx
    q, r = got["0"], got["1"]
    close(np.abs(r), np.abs(want["1"]), ctx + ": |R|")
    assert np.allclose(np.tril(r, -1), 0), ctx + ": R not upper triangular"
    if case.kwargs.get("mode") != "r":
        k = min(q.shape[-1], r.shape[-2])
        close(q[..., :, :k] @ r[..., :k, :], a, ctx + ": Q R != A")


add(Case("qr", pos(N(5, 3)), check=check_qr))
add(Case("qr", pos(N(5, 3)), {"mode": "complete"}, check=check_qr))
add(Case("qr", pos(N(3, 4, dt="float64")), {"mode": "r"}, check=check_qr))


def check_lu(got, want, inputs, case, ctx):
    a = inputs["0"]
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, ctx
    p, l, u = got["0"], got["1"], got["2"]
    close(p @ l @ u, a, ctx + ": P L U != A")
    for k in want:
        assert_array(got[k], want[k], case, ctx)


add(Case("lu", pos(N(4, 4)), check=check_lu))
add(Case("lu", pos(N(4, 3, dt="float64")), {"pivot": True}, check=check_lu, label="rectangular"))
add(Case("matrix_exp", pos(N(4, 4, scale=0.5)), rtol=1e-3, atol=1e-4))
add(Case("matrix_exp", pos(N(2, 3, 3, dt="float64")), label="batched"))
add(Case("matrix_power", pos(N(3, 3, scale=0.5)), {"n": 3}))
add(Case("matrix_power", pos(WELL(3, dt="float64")), {"n": -2}))
add(Case("matrix_power", pos(N(3, 3)), {"n": 0}))
add(Case("matrix_rank", pos(N(4, 3))))
add(Case("matrix_rank", pos(CONST(np.array([[1.0, 2.0], [2.0, 4.0]], np.float32))), label="rank-deficient"))
add(Case("matrix_rank", pos(SYM(4, dt="float64")), {"hermitian": True}))
add(Case("matrix_rank", pos(N(4, 4, dt="float64")), {"atol": 1.0, "rtol": 0.0}))


add(Case("matrix_norm", pos(N(3, 4))))
add(Case("matrix_norm", pos(N(3, 4)), {"ord": "nuc"}))
add(Case("matrix_norm", pos(N(2, 3, 4)), {"ord": float("inf"), "keepdim": True}))
add(Case("matrix_norm", pos(N(3, 4, 2)), {"ord": 2, "dim": [0, 1]}))
add(Case("matrix_norm", pos(N(3, 3)), {"ord": -1, "dtype": "float64"}))
add(Case("matrix_norm", pos(N(3, 3)), {"ord": "-inf"}, label="inf-as-string",
         ref=lambda A, ord: torch.linalg.matrix_norm(A, float(ord))))
add(Case("cond", pos(WELL(4))))
add(Case("cond", pos(N(2, 3, 3, dt="float64")), label="batched"))


for p in [2, -2, "fro", "nuc", float("inf"), float("-inf"), 1, -1]:
    add(Case("cond", pos(WELL(4, dt="float64")), {"p": p}))

add(Case("cdist", pos(N(4, 3), N(5, 3))))
add(Case("cdist", pos(N(30, 3), N(28, 3)), {"compute_mode": "use_mm_for_euclid_dist"}, rtol=1e-3, atol=1e-4))
add(Case("cdist", pos(N(30, 3), N(28, 3)), {"compute_mode": "donot_use_mm_for_euclid_dist"}))
add(Case("cdist", pos(N(2, 4, 3), N(2, 5, 3)), {"p": 1.0}))
add(Case("cdist", pos(N(4, 3, dt="float64"), N(5, 3, dt="float64")), {"p": float("inf")}))
add(Case("diag", pos(N(4))))
add(Case("diag", pos(N(4, 5)), {"diagonal": 1}))
add(Case("diag", pos(N(3)), {"diagonal": -2}))
add(Case("diagonal", pos(N(4, 5))))
add(Case("diagonal", pos(N(3, 4, 5)), {"offset": -1, "dim1": 1, "dim2": 2}))
add(Case("diag_embed", pos(N(2, 3))))
add(Case("diag_embed", pos(N(2, 3)), {"offset": 1, "dim1": 0, "dim2": 2}))
for op in ["tril", "triu"]:
    add(Case(op, pos(N(4, 5))))
    add(Case(op, pos(N(2, 4, 4)), {"diagonal": -1}))
    add(Case(op, pos(I(0, 9, 4, 4)), {"diagonal": 1}))

_ = (AWAY, B, U)

for op in ["max", "min"]:
    add(Case(op, pos(N(3, 4))))
    add(Case(op, pos(N(3, 4)), {"dim": 1}))
    add(Case(op, pos(N(3, 4)), {"dim": 0, "keepdim": True}))
    add(Case(op, pos(N(3, 4), N(4)), label="other"))
    add(Case(op, pos(I(-9, 9, 6)), label="int64"))
add(Case("trapezoid", pos(N(3, 5))))
add(Case("trapezoid", pos(N(3, 5)), {"dx": 0.5, "dim": 0}))
add(Case("trapezoid", {"y": N(3, 5), "x": SORTED(5)}, label="points"))
add(Case("cumulative_trapezoid", pos(N(3, 5))))
add(Case("cumulative_trapezoid", pos(N(3, 5, dt="float64")), {"dx": 2.0, "dim": 0}))
add(Case("cumulative_trapezoid", {"y": N(3, 5), "x": SORTED(5)}, label="points"))
add(Case("logdet", pos(SPD(4))))
add(Case("logdet", pos(SPD(3, 2, dt="float64")), label="batched"))
add(Case("vecdot", pos(N(3, 4), N(3, 4))))
add(Case("vecdot", pos(C(4, 3), C(4, 3)), {"dim": 0}))
add(Case("vander", pos(N(4))))
add(Case("vander", pos(N(4, dt="float64")), {"N": 3, "increasing": True}))
add(Case("vander", pos(I(0, 4, 3)), {"N": 5}))
add(Case("addmv", pos(N(3), N(3, 4), N(4))))
add(Case("addmv", pos(N(3), N(3, 4), N(4)), {"beta": 0.5, "alpha": 2}))
add(Case("addmv", pos(N(1), N(3, 4), N(4)), {"beta": 0}, label="beta0-broadcast"))
add(Case("addr", pos(N(3, 4), N(3), N(4))))
add(Case("addr", pos(N(4), N(3), N(4)), {"beta": 2, "alpha": -1}))


def _lu_inputs(r):
    a = WELL(4)(r)
    lu, piv = torch.linalg.lu_factor(torch.from_numpy(a))
    return {"LU": lu.numpy(), "pivots": piv.numpy(), "B": N(4, 2)(r)}


add(Case("lu_factor", pos(N(4, 4))))
add(Case("lu_factor", pos(N(2, 3, 3, dt="float64")), {"pivot": True}, label="batched"))
add(Case("lu_solve", _lu_inputs))
add(Case("lu_solve", _lu_inputs, {"adjoint": True}))
add(Case("lu_solve", lambda r: {**_lu_inputs(r), "B": N(2, 4)(r)}, {"left": False}, label="right"))


def _chol_inputs(upper):
    def g(r):
        a = SPD(4)(r)
        factor = np.linalg.cholesky(a.astype(np.float64)).astype(np.float32)
        return {"0": N(4, 2)(r), "input2": factor.T.copy() if upper else factor}

    return g


add(Case("cholesky_solve", _chol_inputs(False)))
add(Case("cholesky_solve", _chol_inputs(True), {"upper": True}))
add(Case("cholesky_inverse", lambda r: {"0": _chol_inputs(False)(r)["input2"]}))
add(Case("cholesky_inverse", lambda r: {"0": _chol_inputs(True)(r)["input2"]}, {"upper": True}))


def _householder(r):
    a = N(5, 3)(r)
    h, tau = torch.geqrf(torch.from_numpy(a))
    return {"0": h.numpy(), "tau": tau.numpy()}


add(Case("householder_product", _householder))
add(Case("householder_product", lambda r: {**_householder(r), "tau": _householder(r)["tau"][:2]}, label="fewer-reflectors"))
add(Case("tensorinv", pos(lambda r: WELL(6)(r).reshape(6, 2, 3)), {"ind": 1}))
add(Case("tensorinv", pos(lambda r: WELL(4)(r).reshape(2, 2, 2, 2))))
add(Case("tensorsolve", pos(lambda r: WELL(6)(r).reshape(2, 3, 6), N(2, 3))))
add(Case("tensorsolve", pos(lambda r: WELL(6)(r).reshape(6, 2, 3), N(2, 3)), {"dims": [0]}))
