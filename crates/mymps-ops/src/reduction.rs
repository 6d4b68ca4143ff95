//! Reductions and scans: `sum`, `mean`, `prod`, `amax`, `norm`, `var`,
//! `median`, `cumsum`, `logsumexp`, ... .

use mymps_core::ParamKind;
use tch::{Kind, TchError, Tensor};

use crate::Outputs::{One, Tuple};
use crate::util::{Out, all_dims, as_tensor, dtype_arg, one, tuple};
use crate::{Args, Param, torch_scalar};

/// This module's ops are [`Cost::Reduction`](crate::Cost::Reduction)
/// unless they say otherwise.
macro_rules! op {
    ($($declaration:tt)*) => { crate::op! { @cost Reduction; $($declaration)* } };
}

type AllFn = fn(&Tensor, Option<Kind>) -> Result<Tensor, TchError>;
type DimsFn = fn(&Tensor, Option<&[i64]>, bool, Option<Kind>) -> Result<Tensor, TchError>;

/// A reduction over every element (`dim=None`) or over `dim`.
fn reduce(a: &Args<Tensor>, all: AllFn, dims: DimsFn) -> Out {
    let x = a.tensor("input")?;
    let kind = dtype_arg(a)?;
    let keepdim = a.bool("keepdim")?;
    match a.opt_int_list("dim")? {
        None if !keepdim => one(all(x, kind)?),
        None => one(dims(x, Some(&all_dims(x)), true, kind)?),
        Some(d) => one(dims(x, Some(d), keepdim, kind)?),
    }
}

const INPUT: Param = Param::tensor("input");
const DIMS: Param = Param::ints("dim").optional();
const DIM: Param = Param::int("dim").optional();
const KEEPDIM: Param = Param::bool("keepdim").or_bool(false);
const DTYPE: Param = Param::dtype("dtype").optional();

op!("sum", "reduction", "sum over all elements or over dim (torch.sum)",
    [INPUT, DIMS, KEEPDIM, DTYPE] -> One,
    |a| reduce(a, |x, k| x.f_sum(k), |x, d, kd, k| x.f_sum_dim_intlist(d, kd, k)));

op!("mean", "reduction", "mean over all elements or over dim (torch.mean)",
    [INPUT, DIMS, KEEPDIM, DTYPE] -> One,
    |a| reduce(a, |x, k| x.f_mean(k), |x, d, kd, k| x.f_mean_dim(d, kd, k)));

op!("nansum", "reduction", "sum treating NaN as 0 (torch.nansum)",
    [INPUT, DIMS, KEEPDIM, DTYPE] -> One,
    |a| reduce(a, |x, k| x.f_nansum(None::<&[i64]>, false, k), |x, d, kd, k| x.f_nansum(d, kd, k)));

op!("nanmean", "reduction", "mean ignoring NaN (torch.nanmean)",
    [INPUT, DIMS, KEEPDIM, DTYPE] -> One,
    |a| reduce(a, |x, k| x.f_nanmean(None::<&[i64]>, false, k), |x, d, kd, k| x.f_nanmean(d, kd, k)));

op!("prod", "reduction", "product over all elements or along dim (torch.prod)",
[INPUT, DIM, KEEPDIM, DTYPE] -> One,
|a| {
    let x = a.tensor("input")?;
    let kind = dtype_arg(a)?;
    match a.opt_int("dim")? {
        None => one(x.f_prod(kind)?),
        Some(d) => one(x.f_prod_dim_int(d, a.bool("keepdim")?, kind)?),
    }
});

op!("amax", "reduction", "maximum over dim (all dimensions when empty) (torch.amax)",
    [INPUT, Param::ints("dim").or_ints(&[]), KEEPDIM] -> One,
    |a| one(a.tensor("input")?.f_amax(a.int_list("dim")?, a.bool("keepdim")?)?));

op!("amin", "reduction", "minimum over dim (all dimensions when empty) (torch.amin)",
    [INPUT, Param::ints("dim").or_ints(&[]), KEEPDIM] -> One,
    |a| one(a.tensor("input")?.f_amin(a.int_list("dim")?, a.bool("keepdim")?)?));

op!("aminmax", "reduction", "minimum and maximum, over all elements or along dim (torch.aminmax)",
[INPUT, DIM, KEEPDIM] -> Tuple(&["min", "max"]),
|a| {
    let (lo, hi) = a.tensor("input")?.f_aminmax(a.opt_int("dim")?, a.bool("keepdim")?)?;
    tuple(vec![lo, hi])
});

op!("argmax", "reduction", "index of the maximum, flattened or along dim; int64 (torch.argmax)",
    [INPUT, DIM, KEEPDIM] -> One,
    |a| one(a.tensor("input")?.f_argmax(a.opt_int("dim")?, a.bool("keepdim")?)?));

op!("argmin", "reduction", "index of the minimum, flattened or along dim; int64 (torch.argmin)",
    [INPUT, DIM, KEEPDIM] -> One,
    |a| one(a.tensor("input")?.f_argmin(a.opt_int("dim")?, a.bool("keepdim")?)?));

op!("all", "reduction", "whether every element is nonzero, overall or over dim (torch.all)",
[INPUT, DIMS, KEEPDIM] -> One,
|a| {
    let x = a.tensor("input")?;
    match a.opt_int_list("dim")? {
        None if !a.bool("keepdim")? => one(x.f_all()?),
        d => one(x.f_all_dims(Some(d.map_or_else(|| all_dims(x), <[i64]>::to_vec)), a.bool("keepdim")?)?),
    }
});

op!("any", "reduction", "whether any element is nonzero, overall or over dim (torch.any)",
[INPUT, DIMS, KEEPDIM] -> One,
|a| {
    let x = a.tensor("input")?;
    match a.opt_int_list("dim")? {
        None if !a.bool("keepdim")? => one(x.f_any()?),
        d => one(x.f_any_dims(Some(d.map_or_else(|| all_dims(x), <[i64]>::to_vec)), a.bool("keepdim")?)?),
    }
});

op!("count_nonzero", "reduction", "number of nonzero elements, overall or over dim; int64 (torch.count_nonzero)",
[INPUT, DIMS] -> One,
|a| {
    let x = a.tensor("input")?;
    match a.opt_int_list("dim")? {
        None => one(x.f_count_nonzero(None::<i64>)?),
        Some(d) => one(x.f_count_nonzero_dim_intlist(d)?),
    }
});

/// `torch.norm`: "fro" (the default) and numbers are vector norms of the
/// flattened input or over dim; "nuc" (and "fro" over more than two
/// dimensions) a matrix norm over dim (default all, so 2-D input).
fn norm(a: &Args<Tensor>) -> Out {
    let x = a.tensor("input")?;
    let keepdim = a.bool("keepdim")?;
    let kind = dtype_arg(a)?;
    let dim = a.opt_int_list("dim")?;
    let vector = |p: f64| -> Out {
        let dims = dim.map_or_else(|| all_dims(x), <[i64]>::to_vec);
        match kind {
            None => one(x.f_norm_scalaropt_dim(p, dims, keepdim)?),
            Some(k) => one(x.f_norm_scalaropt_dim_dtype(p, dims, keepdim, k)?),
        }
    };
    match a.opt_scalar_or_str("p")? {
        None => vector(2.0),
        Some(Ok(p)) => vector(p.as_f64()),
        Some(Err("fro")) if dim.is_none_or(|d| d.len() <= 2) => vector(2.0),
        Some(Err(p)) => {
            let dims = dim.map_or_else(|| all_dims(x), <[i64]>::to_vec);
            one(x.f_linalg_norm_ord_str(p, Some(dims), keepdim, kind)?)
        }
    }
}

op!("norm", "reduction", "p-norm: \"fro\" or a number (inf allowed) over the flattened input or dim, \"nuc\" over a matrix (torch.norm)",
    [INPUT, Param::new("p", ParamKind::ScalarOrStr).or_str("fro"), DIMS, KEEPDIM, DTYPE] -> One,
    norm,
    cost: Heavy); // "nuc" and matrix "fro" are matrix norms (an SVD)

op!("vector_norm", "reduction", "ord-norm of the flattened input or over dim (torch.linalg.vector_norm)",
[Param::tensor("x"), Param::float("ord").or_float(2.0), DIMS, KEEPDIM, DTYPE] -> One,
|a| {
    let x = a.tensor("x")?;
    let ord = a.float("ord")?;
    let keepdim = a.bool("keepdim")?;
    let dims = a.opt_int_list("dim")?.map_or_else(|| all_dims(x), <[i64]>::to_vec);
    let x = match dtype_arg(a)? {
        Some(k) => x.f_to_kind(k)?,
        None => x.shallow_clone(),
    };
    one(x.f_norm_scalaropt_dim(ord, dims, keepdim)?)
});

op!("logsumexp", "reduction", "log Σ exp(input) over dim, computed stably (torch.logsumexp)",
    [INPUT, Param::ints("dim"), KEEPDIM] -> One,
    |a| one(a.tensor("input")?.f_logsumexp(a.int_list("dim")?, a.bool("keepdim")?)?));

fn var_std(a: &Args<Tensor>, std: bool, with_mean: bool) -> Out {
    let x = a.tensor("input")?;
    let dim = a.opt_int_list("dim")?;
    let c = torch_scalar(a.scalar("correction")?);
    let keepdim = a.bool("keepdim")?;
    match (std, with_mean) {
        (false, false) => one(x.f_var_correction(dim, c, keepdim)?),
        (true, false) => one(x.f_std_correction(dim, c, keepdim)?),
        (false, true) => {
            let (v, m) = x.f_var_mean_correction(dim, c, keepdim)?;
            tuple(vec![v, m])
        }
        (true, true) => {
            let (s, m) = x.f_std_mean_correction(dim, c, keepdim)?;
            tuple(vec![s, m])
        }
    }
}

const CORRECTION: Param = Param::scalar("correction").or_int(1);

op!("var", "reduction", "variance with Bessel's correction (correction=1), overall or over dim (torch.var)",
    [INPUT, DIMS, CORRECTION, KEEPDIM] -> One, |a| var_std(a, false, false));
op!("std", "reduction", "standard deviation with correction, overall or over dim (torch.std)",
    [INPUT, DIMS, CORRECTION, KEEPDIM] -> One, |a| var_std(a, true, false));
op!("var_mean", "reduction", "variance and mean, overall or over dim (torch.var_mean)",
    [INPUT, DIMS, CORRECTION, KEEPDIM] -> Tuple(&["var", "mean"]), |a| var_std(a, false, true));
op!("std_mean", "reduction", "standard deviation and mean, overall or over dim (torch.std_mean)",
    [INPUT, DIMS, CORRECTION, KEEPDIM] -> Tuple(&["std", "mean"]), |a| var_std(a, true, true));

op!("median", "reduction", "lower median; without dim one tensor, with dim (values, indices) (torch.median)",
[INPUT, DIM, KEEPDIM] -> Tuple(&["values", "indices"]),
|a| {
    let x = a.tensor("input")?;
    match a.opt_int("dim")? {
        None => one(x.f_median()?),
        Some(d) => {
            let (v, i) = x.f_median_dim(d, a.bool("keepdim")?)?;
            tuple(vec![v, i])
        }
    }
}, cost: Heavy); // a selection, superlinear at worst

op!("nanmedian", "reduction", "median ignoring NaN; without dim one tensor, with dim (values, indices) (torch.nanmedian)",
[INPUT, DIM, KEEPDIM] -> Tuple(&["values", "indices"]),
|a| {
    let x = a.tensor("input")?;
    match a.opt_int("dim")? {
        None => one(x.f_nanmedian()?),
        Some(d) => {
            let (v, i) = x.f_nanmedian_dim(d, a.bool("keepdim")?)?;
            tuple(vec![v, i])
        }
    }
}, cost: Heavy);

op!("mode", "reduction", "most frequent value along dim and its index (torch.mode)",
[INPUT, Param::int("dim").or_int(-1), KEEPDIM] -> Tuple(&["values", "indices"]),
|a| {
    let (v, i) = a.tensor("input")?.f_mode(a.int("dim")?, a.bool("keepdim")?)?;
    tuple(vec![v, i])
}, cost: Heavy); // sorts along dim

op!("kthvalue", "reduction", "k-th smallest value along dim and its index (torch.kthvalue)",
[INPUT, Param::int("k"), Param::int("dim").or_int(-1), KEEPDIM] -> Tuple(&["values", "indices"]),
|a| {
    let (v, i) = a.tensor("input")?.f_kthvalue(a.int("k")?, a.int("dim")?, a.bool("keepdim")?)?;
    tuple(vec![v, i])
}, cost: Heavy); // a selection, superlinear at worst

fn quantile(a: &Args<Tensor>, nan: bool) -> Out {
    let x = a.tensor("input")?;
    let q = as_tensor(a.tensor_or_scalar("q")?, x)?;
    let (dim, keepdim, interp) = (
        a.opt_int("dim")?,
        a.bool("keepdim")?,
        a.str("interpolation")?,
    );
    if nan {
        one(x.f_nanquantile(&q, dim, keepdim, interp)?)
    } else {
        one(x.f_quantile(&q, dim, keepdim, interp)?)
    }
}

const QUANTILE: [Param; 5] = [
    INPUT,
    Param::tensor_or_scalar("q"),
    DIM,
    KEEPDIM,
    Param::str("interpolation").or_str("linear"),
];

op!("quantile", "reduction", "q-th quantiles, flattened or along dim (torch.quantile)",
    [QUANTILE[0], QUANTILE[1], QUANTILE[2], QUANTILE[3], QUANTILE[4]] -> One, |a| quantile(a, false),
    cost: Heavy); // sorts
op!("nanquantile", "reduction", "q-th quantiles ignoring NaN (torch.nanquantile)",
    [QUANTILE[0], QUANTILE[1], QUANTILE[2], QUANTILE[3], QUANTILE[4]] -> One, |a| quantile(a, true),
    cost: Heavy);

op!("cumsum", "reduction", "cumulative sum along dim (torch.cumsum)",
    [INPUT, Param::int("dim"), DTYPE] -> One,
    |a| one(a.tensor("input")?.f_cumsum(a.int("dim")?, dtype_arg(a)?)?));

op!("cumprod", "reduction", "cumulative product along dim (torch.cumprod)",
    [INPUT, Param::int("dim"), DTYPE] -> One,
    |a| one(a.tensor("input")?.f_cumprod(a.int("dim")?, dtype_arg(a)?)?));

op!("cummax", "reduction", "cumulative maximum along dim and its indices (torch.cummax)",
[INPUT, Param::int("dim")] -> Tuple(&["values", "indices"]),
|a| {
    let (v, i) = a.tensor("input")?.f_cummax(a.int("dim")?)?;
    tuple(vec![v, i])
});

op!("cummin", "reduction", "cumulative minimum along dim and its indices (torch.cummin)",
[INPUT, Param::int("dim")] -> Tuple(&["values", "indices"]),
|a| {
    let (v, i) = a.tensor("input")?.f_cummin(a.int("dim")?)?;
    tuple(vec![v, i])
});

op!("logcumsumexp", "reduction", "log of the cumulative sum of exp along dim (torch.logcumsumexp)",
    [INPUT, Param::int("dim")] -> One,
    |a| one(a.tensor("input")?.f_logcumsumexp(a.int("dim")?)?));

op!("diff", "reduction", "n-th forward difference along dim, with optional prepend/append (torch.diff)",
    [INPUT, Param::int("n").or_int(1), Param::int("dim").or_int(-1), Param::tensor("prepend").optional(), Param::tensor("append").optional()] -> One,
    |a| one(a.tensor("input")?.f_diff(a.int("n")?, a.int("dim")?, a.opt_tensor("prepend")?, a.opt_tensor("append")?)?),
    cost: Heavy); // n passes (n up to the length of dim), and prepend/append make it longer than input

/// `max` / `min`: of all elements (one tensor), elementwise against
/// `other` (one tensor), or along `dim` (values and indices), as torch.
fn max_min(a: &Args<Tensor>, max: bool) -> Out {
    let x = a.tensor("input")?;
    match (a.opt_tensor("other")?, a.opt_int("dim")?) {
        (Some(_), Some(_)) => Err(crate::util::bad(a, "give either other or dim, not both")),
        (Some(y), None) => one(if max {
            x.f_max_other(y)?
        } else {
            x.f_min_other(y)?
        }),
        (None, None) => one(if max { x.f_max()? } else { x.f_min()? }),
        (None, Some(d)) => {
            let keepdim = a.bool("keepdim")?;
            let (v, i) = if max {
                x.f_max_dim(d, keepdim)?
            } else {
                x.f_min_dim(d, keepdim)?
            };
            tuple(vec![v, i])
        }
    }
}

op!("max", "reduction", "maximum of all elements, elementwise with other, or along dim as (values, indices) (torch.max)",
    [INPUT, Param::tensor("other").optional(), DIM, KEEPDIM] -> Tuple(&["values", "indices"]),
    |a| max_min(a, true));

op!("min", "reduction", "minimum of all elements, elementwise with other, or along dim as (values, indices) (torch.min)",
    [INPUT, Param::tensor("other").optional(), DIM, KEEPDIM] -> Tuple(&["values", "indices"]),
    |a| max_min(a, false));

/// `trapezoid` / `cumulative_trapezoid`: sample points x, or spacing dx.
///
/// The C API's spacing overloads bind their `dim` argument to torch's `dx`
/// (`torch::trapezoid(y, dim)` picks `trapezoid(y, Scalar dx)`), so the
/// spacing forms are computed here with ATen's own formulas.
fn trapezoid(a: &Args<Tensor>, cumulative: bool) -> Out {
    let y = a.tensor("y")?;
    let dim = a.int("dim")?;
    match (a.opt_tensor("x")?, a.opt_float("dx")?) {
        (Some(_), Some(_)) => Err(crate::util::bad(a, "give either x or dx, not both")),
        (Some(x), None) if cumulative => one(Tensor::f_cumulative_trapezoid_x(y, x, dim)?),
        (Some(x), None) => one(Tensor::f_trapezoid_x(y, x, dim)?),
        (None, dx) => {
            let dx = dx.unwrap_or(1.0);
            let n = y.size()[normalize_dim(y, dim)?];
            if cumulative {
                // (dx / 2 × (y[1:] + y[:-1])).cumsum(dim)
                let pairs = y
                    .f_slice(dim, 1, None::<i64>, 1)?
                    .f_add(&y.f_slice(dim, 0, -1, 1)?)?;
                one(pairs.f_mul_scalar(dx / 2.0)?.f_cumsum(dim, None::<Kind>)?)
            } else if n == 0 {
                one(y
                    .f_sum_dim_intlist(Some(&[dim][..]), false, None::<Kind>)?
                    .f_zeros_like()?)
            } else {
                // (y.sum(dim) − (y[0] + y[−1]) × 0.5) × dx
                let ends = y
                    .f_select(dim, 0)?
                    .f_add(&y.f_select(dim, -1)?)?
                    .f_mul_scalar(0.5)?;
                let s = y.f_sum_dim_intlist(Some(&[dim][..]), false, None::<Kind>)?;
                one(s.f_sub(&ends)?.f_mul_scalar(dx)?)
            }
        }
    }
}

/// `dim` in `0..ndim`, or a bad-argument error (a 0-d tensor has no
/// dimension to integrate along).
fn normalize_dim(t: &Tensor, dim: i64) -> crate::KernelResult<usize> {
    let n = t.dim() as i64;
    let d = if dim < 0 { dim + n } else { dim };
    if d < 0 || d >= n {
        return Err(crate::KernelError(mymps_core::Error::bad_argument(
            format!("dimension {dim} is out of range for a {n}-D tensor"),
        )));
    }
    Ok(d as usize)
}

op!("trapezoid", "reduction", "trapezoidal rule along dim, at points x or with spacing dx (default 1) (torch.trapezoid)",
    [Param::tensor("y"), Param::tensor("x").optional(), Param::float("dx").optional(), Param::int("dim").or_int(-1)] -> One,
    |a| trapezoid(a, false));

op!("cumulative_trapezoid", "reduction", "cumulative trapezoidal rule along dim (torch.cumulative_trapezoid)",
    [Param::tensor("y"), Param::tensor("x").optional(), Param::float("dx").optional(), Param::int("dim").or_int(-1)] -> One,
    |a| trapezoid(a, true));
