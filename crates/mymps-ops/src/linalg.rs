//! Products and `torch.linalg`: decompositions, solvers, inverses,
//! determinants, norms.

use mymps_core::ParamKind;
use tch::{Device, Tensor};

use crate::Outputs::{One, Tuple};
use crate::util::{bad, one, tuple};
use crate::{Args, KernelResult, Param, Scalar, op, torch_scalar};

const A: Param = Param::tensor("A");
const INPUT: Param = Param::tensor("input");

op!("matmul", "linalg", "matrix product with broadcasting (torch.matmul)",
    [INPUT, Param::tensor("other")] -> One,
    |a| one(a.tensor("input")?.f_matmul(a.tensor("other")?)?));

op!("mm", "linalg", "matrix product of two 2-D tensors (torch.mm)",
    [INPUT, Param::tensor("mat2")] -> One,
    |a| one(a.tensor("input")?.f_mm(a.tensor("mat2")?)?));

op!("bmm", "linalg", "batched matrix product of (b, n, m) and (b, m, p) (torch.bmm)",
    [INPUT, Param::tensor("mat2")] -> One,
    |a| one(a.tensor("input")?.f_bmm(a.tensor("mat2")?)?));

op!("mv", "linalg", "matrix × vector (torch.mv)",
    [INPUT, Param::tensor("vec")] -> One,
    |a| one(a.tensor("input")?.f_mv(a.tensor("vec")?)?));

op!("dot", "linalg", "inner product of two 1-D tensors (torch.dot)",
    [INPUT, Param::tensor("tensor")] -> One,
    |a| one(a.tensor("input")?.f_dot(a.tensor("tensor")?)?));

op!("vdot", "linalg", "inner product of two 1-D tensors, the first conjugated (torch.vdot)",
    [INPUT, Param::tensor("other")] -> One,
    |a| one(a.tensor("input")?.f_vdot(a.tensor("other")?)?));

op!("inner", "linalg", "inner product over the last dimensions (torch.inner)",
    [INPUT, Param::tensor("other")] -> One,
    |a| one(a.tensor("input")?.f_inner(a.tensor("other")?)?));

op!("outer", "linalg", "outer product of two vectors (torch.outer)",
    [INPUT, Param::tensor("vec2")] -> One,
    |a| one(a.tensor("input")?.f_outer(a.tensor("vec2")?)?));

op!("kron", "linalg", "Kronecker product (torch.kron)",
    [INPUT, Param::tensor("other")] -> One,
    |a| one(a.tensor("input")?.f_kron(a.tensor("other")?)?));

op!("cross", "linalg", "cross product of 3-vectors along dim; None: the first dimension of size 3 (torch.cross)",
    [INPUT, Param::tensor("other"), Param::int("dim").optional()] -> One,
    |a| one(a.tensor("input")?.f_cross(a.tensor("other")?, a.opt_int("dim")?)?));

op!("tensordot", "linalg", "contracts the last `dims` dimensions of a with the first of b (torch.tensordot)",
[Param::tensor("a"), Param::tensor("b"), Param::int("dims").or_int(2)] -> One,
|a| {
    let (x, y) = (a.tensor("a")?, a.tensor("b")?);
    let d = a.int("dims")?;
    if d < 0 || d as usize > x.dim() || d as usize > y.dim() {
        return Err(bad(a, format!("dims must be between 0 and the operands' ranks, got {d}")));
    }
    let xd: Vec<i64> = (x.dim() as i64 - d..x.dim() as i64).collect();
    let yd: Vec<i64> = (0..d).collect();
    one(x.f_tensordot(y, xd, yd)?)
});

op!("einsum", "linalg", "Einstein summation over the operands, e.g. equation=\"ij,jk->ik\" (torch.einsum)",
    [Param::str("equation"), Param::tensors("operands")] -> One,
    |a| one(Tensor::f_einsum(a.str("equation")?, a.tensors("operands")?, None::<&[i64]>)?));

op!("multi_dot", "linalg", "product of a chain of matrices in the cheapest order (torch.linalg.multi_dot)",
    [Param::tensors("tensors")] -> One,
    |a| one(Tensor::f_linalg_multi_dot(a.tensors("tensors")?)?));

op!("addmm", "linalg", "beta × input + alpha × (mat1 @ mat2) (torch.addmm)",
[INPUT, Param::tensor("mat1"), Param::tensor("mat2"), Param::scalar("beta").or_int(1), Param::scalar("alpha").or_int(1)] -> One,
|a| {
    let (x, m1, m2) = (a.tensor("input")?, a.tensor("mat1")?, a.tensor("mat2")?);
    let (beta, alpha) = (a.scalar("beta")?, a.scalar("alpha")?);
    if beta.as_f64() == 1.0 && alpha.as_f64() == 1.0 {
        return one(x.f_addmm(m1, m2)?);
    }
    let prod = m1.f_mm(m2)?.f_mul_scalar(torch_scalar(alpha))?;
    if beta.as_f64() == 0.0 {
        // torch ignores input (NaN included) when beta is 0.
        return one(prod);
    }
    one(x.f_mul_scalar(torch_scalar(beta))?.f_add(&prod)?)
});

op!("baddbmm", "linalg", "beta × input + alpha × (batch1 @ batch2), batched (torch.baddbmm)",
    [INPUT, Param::tensor("batch1"), Param::tensor("batch2"), Param::scalar("beta").or_int(1), Param::scalar("alpha").or_int(1)] -> One,
    |a| one(a.tensor("input")?.f_baddbmm(a.tensor("batch1")?, a.tensor("batch2")?, torch_scalar(a.scalar("beta")?), torch_scalar(a.scalar("alpha")?))?));

op!("trace", "linalg", "sum of the main diagonal of a 2-D tensor (torch.trace)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_trace()?));

op!("svd", "linalg", "singular value decomposition A = U diag(S) Vh (torch.linalg.svd)",
[A, Param::bool("full_matrices").or_bool(true)] -> Tuple(&["U", "S", "Vh"]),
|a| {
    let full = a.bool("full_matrices")?;
    // torch.linalg.svd without a driver, through torch.svd (some =
    // !full_matrices), whose V is Vh's conjugate transpose.
    let (u, s, v) = a.tensor("A")?.f_svd(!full, true)?;
    tuple(vec![u, s, v.f_mh()?])
});

op!("svdvals", "linalg", "singular values, descending (torch.linalg.svdvals)",
[A] -> One,
|a| {
    let (_, s, _) = a.tensor("A")?.f_svd(true, false)?;
    one(s)
});

op!("eig", "linalg", "eigenvalues and eigenvectors of a square matrix; complex (torch.linalg.eig)",
[A] -> Tuple(&["eigenvalues", "eigenvectors"]),
|a| {
    let (w, v) = a.tensor("A")?.f_linalg_eig()?;
    tuple(vec![w, v])
});

op!("eigvals", "linalg", "eigenvalues of a square matrix; complex (torch.linalg.eigvals)",
    [A] -> One,
    |a| one(a.tensor("A")?.f_linalg_eigvals()?));

op!("eigh", "linalg", "eigenvalues (ascending) and eigenvectors of a symmetric/Hermitian matrix (torch.linalg.eigh)",
[A, Param::str("UPLO").or_str("L")] -> Tuple(&["eigenvalues", "eigenvectors"]),
|a| {
    let (w, v) = a.tensor("A")?.f_linalg_eigh(a.str("UPLO")?)?;
    tuple(vec![w, v])
});

op!("eigvalsh", "linalg", "eigenvalues (ascending) of a symmetric/Hermitian matrix (torch.linalg.eigvalsh)",
    [A, Param::str("UPLO").or_str("L")] -> One,
    |a| one(a.tensor("A")?.f_linalg_eigvalsh(a.str("UPLO")?)?));

op!("inv", "linalg", "inverse of a square matrix (torch.linalg.inv)",
    [A] -> One,
    |a| one(Tensor::f_linalg_inv(a.tensor("A")?)?));

op!("pinv", "linalg", "Moore–Penrose pseudo-inverse (torch.linalg.pinv)",
    [A, Param::float("atol").optional(), Param::float("rtol").optional(), Param::bool("hermitian").or_bool(false)] -> One,
    |a| one(a.tensor("A")?.f_linalg_pinv_atol_rtol_float(a.opt_float("atol")?, a.opt_float("rtol")?, a.bool("hermitian")?)?));

op!("det", "linalg", "determinant of a square matrix (torch.linalg.det)",
    [A] -> One,
    |a| one(Tensor::f_linalg_det(a.tensor("A")?)?));

op!("slogdet", "linalg", "sign and log |det| of a square matrix (torch.linalg.slogdet)",
[A] -> Tuple(&["sign", "logabsdet"]),
|a| {
    let (s, l) = Tensor::f_linalg_slogdet(a.tensor("A")?)?;
    tuple(vec![s, l])
});

op!("solve", "linalg", "X with A X = B (left) or X A = B (torch.linalg.solve)",
    [A, Param::tensor("B"), Param::bool("left").or_bool(true)] -> One,
    |a| one(Tensor::f_linalg_solve(a.tensor("A")?, a.tensor("B")?, a.bool("left")?)?));

op!("solve_triangular", "linalg", "X with A X = B for triangular A (torch.linalg.solve_triangular)",
    [A, Param::tensor("B"), Param::bool("upper"), Param::bool("left").or_bool(true), Param::bool("unitriangular").or_bool(false)] -> One,
    |a| one(a.tensor("A")?.f_linalg_solve_triangular(a.tensor("B")?, a.bool("upper")?, a.bool("left")?, a.bool("unitriangular")?)?));

op!("lstsq", "linalg", "least-squares solution of A X = B; driver None: gelsy on the CPU, gels on CUDA (torch.linalg.lstsq)",
[A, Param::tensor("B"), Param::float("rcond").optional(), Param::str("driver").optional()] -> Tuple(&["solution", "residuals", "rank", "singular_values"]),
|a| {
    let x = a.tensor("A")?;
    let driver = match a.opt_str("driver")? {
        Some(d) => d,
        None if x.device() == Device::Cpu => "gelsy",
        None => "gels",
    };
    let (s, r, k, sv) = x.f_linalg_lstsq(a.tensor("B")?, a.opt_float("rcond")?, driver)?;
    tuple(vec![s, r, k, sv])
});

op!("cholesky", "linalg", "Cholesky factor of a symmetric positive-definite matrix (torch.linalg.cholesky)",
    [A, Param::bool("upper").or_bool(false)] -> One,
    |a| one(a.tensor("A")?.f_linalg_cholesky(a.bool("upper")?)?));

op!("qr", "linalg", "QR decomposition; mode \"reduced\", \"complete\" or \"r\" (torch.linalg.qr)",
[A, Param::str("mode").or_str("reduced")] -> Tuple(&["Q", "R"]),
|a| {
    let (q, r) = Tensor::f_linalg_qr(a.tensor("A")?, a.str("mode")?)?;
    tuple(vec![q, r])
});

op!("lu", "linalg", "LU decomposition with partial pivoting, A = P L U (torch.linalg.lu)",
[A, Param::bool("pivot").or_bool(true)] -> Tuple(&["P", "L", "U"]),
|a| {
    let (p, l, u) = Tensor::f_linalg_lu(a.tensor("A")?, a.bool("pivot")?)?;
    tuple(vec![p, l, u])
});

op!("matrix_exp", "linalg", "matrix exponential (torch.linalg.matrix_exp)",
    [A] -> One,
    |a| one(a.tensor("A")?.f_linalg_matrix_exp()?));

op!("matrix_power", "linalg", "A to the integer power n; negative n inverts (torch.linalg.matrix_power)",
    [A, Param::int("n")] -> One,
|a| {
    let (x, n) = (a.tensor("A")?, a.int("n")?);
    if n == i64::MIN {
        // libtorch negates n after inverting, which leaves i64::MIN
        // negative, and its square-and-multiply loop then shifts -1 right
        // for ever. A^(2n') with n' = n / 2 is the same power.
        let half = x.f_linalg_matrix_power(n / 2)?;
        return one(half.f_matmul(&half)?);
    }
    one(x.f_linalg_matrix_power(n)?)
});

op!("matrix_rank", "linalg", "numerical rank from the singular values (torch.linalg.matrix_rank)",
    [A, Param::float("atol").optional(), Param::float("rtol").optional(), Param::bool("hermitian").or_bool(false)] -> One,
    |a| one(a.tensor("A")?.f_linalg_matrix_rank_atol_rtol_float(a.opt_float("atol")?, a.opt_float("rtol")?, a.bool("hermitian")?)?));

/// A matrix norm over `dims` with torch's `ord`: "fro", "nuc", or a
/// number (±inf, ±1, ±2); "inf" and "-inf" are also accepted as strings
/// (JSON has no infinity).
fn matrix_norm_of(
    a: &Args<Tensor>,
    x: &Tensor,
    ord: Result<Scalar, &str>,
    dims: &[i64],
    keepdim: bool,
    kind: Option<tch::Kind>,
) -> KernelResult<Tensor> {
    let ord = match ord {
        Err(s @ ("fro" | "nuc")) => {
            return Ok(x.f_linalg_norm_ord_str(s, Some(dims), keepdim, kind)?);
        }
        Err("inf") => f64::INFINITY,
        Err("-inf") => f64::NEG_INFINITY,
        Err(s) => {
            return Err(bad(
                a,
                format!("ord must be \"fro\", \"nuc\" or a number, not {s:?}"),
            ));
        }
        Ok(n) => n.as_f64(),
    };
    Ok(x.f_linalg_norm(ord, Some(dims), keepdim, kind)?)
}

op!("matrix_norm", "linalg", "matrix norm over dim; ord \"fro\", \"nuc\", inf, -inf, 1, -1, 2 or -2 (torch.linalg.matrix_norm)",
[A, Param::new("ord", ParamKind::ScalarOrStr).or_str("fro"), Param::ints("dim").or_ints(&[-2, -1]), Param::bool("keepdim").or_bool(false), Param::dtype("dtype").optional()] -> One,
|a| {
    let dim = a.int_list("dim")?;
    if dim.len() != 2 {
        return Err(bad(a, "dim must be a 2-tuple"));
    }
    let ord = a.opt_scalar_or_str("ord")?.unwrap_or(Err("fro"));
    let kind = crate::util::dtype_arg(a)?;
    one(matrix_norm_of(a, a.tensor("A")?, ord, dim, a.bool("keepdim")?, kind)?)
});

op!("cond", "linalg", "condition number; p None or 2: σ_max / σ_min, -2: σ_min / σ_max, else ‖A‖_p ‖A⁻¹‖_p for p \"fro\", \"nuc\", inf, -inf, 1, -1 (torch.linalg.cond)",
[A, Param::new("p", ParamKind::ScalarOrStr).optional()] -> One,
|a| {
    let x = a.tensor("A")?;
    let p = a.opt_scalar_or_str("p")?;
    // Some(inverse) for the 2-norm ratios of singular values.
    let svd_ratio = match p {
        None => Some(false),
        Some(Ok(n)) if n.as_f64() == 2.0 => Some(false),
        Some(Ok(n)) if n.as_f64() == -2.0 => Some(true),
        _ => None,
    };
    if let Some(inverse) = svd_ratio {
        let (_, s, _) = x.f_svd(true, false)?;
        let n = *s.size().last().unwrap_or(&1);
        let hi = s.f_narrow(-1, 0, 1)?.f_squeeze_dim(-1)?;
        let lo = s.f_narrow(-1, n - 1, 1)?.f_squeeze_dim(-1)?;
        return one(if inverse { lo.f_div(&hi)? } else { hi.f_div(&lo)? });
    }
    let p = p.expect("None handled above");
    let dims = [-2i64, -1];
    let n = matrix_norm_of(a, x, p, &dims, false, None)?;
    let n_inv = matrix_norm_of(a, &Tensor::f_linalg_inv(x)?, p, &dims, false, None)?;
    one(n.f_mul(&n_inv)?)
});

op!("cdist", "linalg", "p-norm distance between each pair of rows of x1 and x2 (torch.cdist)",
[Param::tensor("x1"), Param::tensor("x2"), Param::float("p").or_float(2.0), Param::str("compute_mode").or_str("use_mm_for_euclid_dist_if_necessary")] -> One,
|a| {
    let mode = match a.str("compute_mode")? {
        "use_mm_for_euclid_dist_if_necessary" => 0,
        "use_mm_for_euclid_dist" => 1,
        "donot_use_mm_for_euclid_dist" => 2,
        other => return Err(bad(a, format!("{other} is not a valid value for compute_mode"))),
    };
    one(Tensor::f_cdist(a.tensor("x1")?, a.tensor("x2")?, a.float("p")?, mode)?)
});

op!("diag", "linalg", "a vector's diagonal matrix, or a matrix's diagonal; offset `diagonal` (torch.diag)",
    [INPUT, Param::int("diagonal").or_int(0)] -> One,
    |a| one(a.tensor("input")?.f_diag(a.int("diagonal")?)?));

op!("diagonal", "linalg", "the diagonal of dims dim1 and dim2 at offset (torch.diagonal)",
    [INPUT, Param::int("offset").or_int(0), Param::int("dim1").or_int(0), Param::int("dim2").or_int(1)] -> One,
    |a| one(a.tensor("input")?.f_diagonal(a.int("offset")?, a.int("dim1")?, a.int("dim2")?)?));

op!("diag_embed", "linalg", "matrices with the last dimension of input on their diagonal (torch.diag_embed)",
    [INPUT, Param::int("offset").or_int(0), Param::int("dim1").or_int(-2), Param::int("dim2").or_int(-1)] -> One,
    |a| one(a.tensor("input")?.f_diag_embed(a.int("offset")?, a.int("dim1")?, a.int("dim2")?)?));

op!("tril", "linalg", "lower triangle, zero above the `diagonal`-th diagonal (torch.tril)",
    [INPUT, Param::int("diagonal").or_int(0)] -> One,
    |a| one(a.tensor("input")?.f_tril(a.int("diagonal")?)?));

op!("triu", "linalg", "upper triangle, zero below the `diagonal`-th diagonal (torch.triu)",
    [INPUT, Param::int("diagonal").or_int(0)] -> One,
    |a| one(a.tensor("input")?.f_triu(a.int("diagonal")?)?));

op!("logdet", "linalg", "log of the determinant; NaN for a negative determinant (torch.logdet)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_logdet()?));

op!("vecdot", "linalg", "dot product of vectors along dim, the first conjugated (torch.linalg.vecdot)",
    [Param::tensor("x"), Param::tensor("y"), Param::int("dim").or_int(-1)] -> One,
    |a| one(Tensor::f_linalg_vecdot(a.tensor("x")?, a.tensor("y")?, a.int("dim")?)?));

op!("vander", "linalg", "Vandermonde matrix of x with N columns, decreasing powers unless increasing (torch.vander)",
    [Param::tensor("x"), Param::int("N").optional(), Param::bool("increasing").or_bool(false)] -> One,
    |a| one(Tensor::f_vander(a.tensor("x")?, a.opt_int("N")?, a.bool("increasing")?)?));

op!("addmv", "linalg", "beta × input + alpha × (mat @ vec) (torch.addmv)",
[INPUT, Param::tensor("mat"), Param::tensor("vec"), Param::scalar("beta").or_int(1), Param::scalar("alpha").or_int(1)] -> One,
|a| {
    let prod = a.tensor("mat")?.f_mv(a.tensor("vec")?)?;
    scaled_sum(a, prod)
});

op!("addr", "linalg", "beta × input + alpha × outer(vec1, vec2) (torch.addr)",
[INPUT, Param::tensor("vec1"), Param::tensor("vec2"), Param::scalar("beta").or_int(1), Param::scalar("alpha").or_int(1)] -> One,
|a| {
    let prod = a.tensor("vec1")?.f_outer(a.tensor("vec2")?)?;
    scaled_sum(a, prod)
});

/// `beta × input + alpha × prod`; input is ignored (NaN included) when beta
/// is 0, as torch does.
fn scaled_sum(a: &crate::Args<Tensor>, prod: Tensor) -> crate::util::Out {
    let x = a.tensor("input")?;
    let (beta, alpha) = (a.scalar("beta")?, a.scalar("alpha")?);
    let prod = if alpha.as_f64() == 1.0 {
        prod
    } else {
        prod.f_mul_scalar(torch_scalar(alpha))?
    };
    if beta.as_f64() == 0.0 {
        return one(prod.f_add(&x.f_zeros_like()?)?);
    }
    let x = if beta.as_f64() == 1.0 {
        x.shallow_clone()
    } else {
        x.f_mul_scalar(torch_scalar(beta))?
    };
    one(x.f_add(&prod)?)
}

op!("lu_factor", "linalg", "compact LU factorization and pivots (torch.linalg.lu_factor)",
[A, Param::bool("pivot").or_bool(true)] -> Tuple(&["LU", "pivots"]),
|a| {
    let (lu, piv) = Tensor::f_linalg_lu_factor(a.tensor("A")?, a.bool("pivot")?)?;
    tuple(vec![lu, piv])
});

op!("lu_solve", "linalg", "X with A X = B from lu_factor's LU and pivots (torch.linalg.lu_solve)",
    [Param::tensor("LU"), Param::tensor("pivots"), Param::tensor("B"), Param::bool("left").or_bool(true), Param::bool("adjoint").or_bool(false)] -> One,
    |a| one(Tensor::f_linalg_lu_solve(a.tensor("LU")?, a.tensor("pivots")?, a.tensor("B")?, a.bool("left")?, a.bool("adjoint")?)?));

op!("cholesky_solve", "linalg", "X with A X = B from A's Cholesky factor input2 (torch.cholesky_solve)",
    [INPUT, Param::tensor("input2"), Param::bool("upper").or_bool(false)] -> One,
    |a| one(a.tensor("input")?.f_cholesky_solve(a.tensor("input2")?, a.bool("upper")?)?));

op!("cholesky_inverse", "linalg", "inverse of A from its Cholesky factor (torch.cholesky_inverse)",
    [INPUT, Param::bool("upper").or_bool(false)] -> One,
    |a| one(a.tensor("input")?.f_cholesky_inverse(a.bool("upper")?)?));

op!("householder_product", "linalg", "the first n columns of a product of Householder reflectors (torch.linalg.householder_product)",
    [A, Param::tensor("tau")] -> One,
    |a| one(a.tensor("A")?.f_linalg_householder_product(a.tensor("tau")?)?));

op!("tensorinv", "linalg", "inverse of A for tensordot over its first ind dimensions (torch.linalg.tensorinv)",
    [A, Param::int("ind").or_int(2)] -> One,
    |a| one(a.tensor("A")?.f_linalg_tensorinv(a.int("ind")?)?));

op!("tensorsolve", "linalg", "X with tensordot(A, X, X.ndim) = B (torch.linalg.tensorsolve)",
    [A, Param::tensor("B"), Param::ints("dims").optional()] -> One,
    |a| one(a.tensor("A")?.f_linalg_tensorsolve(a.tensor("B")?, a.opt_int_list("dims")?)?));
