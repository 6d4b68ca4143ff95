//! Indexing with index tensors and masks, scatter/gather, searching and
//! counting.

use tch::Tensor;

use crate::Outputs::{One, Tuple};
use crate::util::{Out, bad, check_index, check_index_along, one, tuple};
use crate::{Args, Param, Scalar, TensorOrScalar, op, torch_scalar};

const INPUT: Param = Param::tensor("input");
const DIM: Param = Param::int("dim");
const INDEX: Param = Param::tensor("index");

op!("gather", "indexing", "values of input at int64 index along dim (torch.gather)",
[INPUT, DIM, INDEX] -> One,
|a| {
    let (x, dim, index) = (a.tensor("input")?, a.int("dim")?, a.tensor("index")?);
    check_index_along(a, x, dim, index)?;
    one(x.f_gather(dim, index, false)?)
});

op!("scatter", "indexing", "a copy of input with src (a tensor) or value (a scalar) written at index along dim; reduce None, \"add\" or \"multiply\" (torch.scatter)",
[INPUT, DIM, INDEX, Param::tensor("src").optional(), Param::scalar("value").optional(), Param::str("reduce").optional()] -> One,
|a| {
    let x = a.tensor("input")?;
    let (dim, index) = (a.int("dim")?, a.tensor("index")?);
    check_index_along(a, x, dim, index)?;
    let reduce = a.opt_str("reduce")?;
    match (a.opt_tensor("src")?, a.opt_scalar("value")?, reduce) {
        (Some(src), None, None) => one(x.f_scatter(dim, index, src)?),
        (None, Some(v), None) => one(x.f_scatter_value(dim, index, torch_scalar(v))?),
        (Some(src), None, Some(r)) => one(x.f_scatter_reduce(dim, index, src, r)?),
        (None, Some(v), Some(r)) => one(x.f_scatter_value_reduce(dim, index, torch_scalar(v), r)?),
        _ => Err(bad(a, "exactly one of src and value must be given")),
    }
});

op!("scatter_add", "indexing", "a copy of input with src added at index along dim (torch.scatter_add)",
[INPUT, DIM, INDEX, Param::tensor("src")] -> One,
|a| {
    let (x, dim, index) = (a.tensor("input")?, a.int("dim")?, a.tensor("index")?);
    check_index_along(a, x, dim, index)?;
    one(x.f_scatter_add(dim, index, a.tensor("src")?)?)
});

op!("index_select", "indexing", "the entries of input at int index along dim (torch.index_select)",
[INPUT, DIM, INDEX] -> One,
|a| {
    let (x, dim, index) = (a.tensor("input")?, a.int("dim")?, a.tensor("index")?);
    check_index_along(a, x, dim, index)?;
    one(x.f_index_select(dim, index)?)
});

op!("index_add", "indexing", "a copy of input with alpha × source added at index along dim (torch.index_add)",
[INPUT, DIM, INDEX, Param::tensor("source"), Param::scalar("alpha").or_int(1)] -> One,
|a| {
    let x = a.tensor("input")?;
    let source = a.tensor("source")?;
    let alpha = a.scalar("alpha")?;
    let source = if alpha == Scalar::Int(1) {
        source.shallow_clone()
    } else {
        source.f_mul_scalar(torch_scalar(alpha))?
    };
    let (dim, index) = (a.int("dim")?, a.tensor("index")?);
    check_index_along(a, x, dim, index)?;
    one(x.f_index_add(dim, index, &source)?)
});

op!("index_copy", "indexing", "a copy of input with source copied in at index along dim (torch.index_copy)",
[INPUT, DIM, INDEX, Param::tensor("source")] -> One,
|a| {
    let (x, dim, index) = (a.tensor("input")?, a.int("dim")?, a.tensor("index")?);
    check_index_along(a, x, dim, index)?;
    one(x.f_index_copy(dim, index, a.tensor("source")?)?)
});

op!("index_fill", "indexing", "a copy of input with value at index along dim (torch.index_fill)",
[INPUT, DIM, INDEX, Param::scalar("value")] -> One,
|a| {
    let (x, dim, index) = (a.tensor("input")?, a.int("dim")?, a.tensor("index")?);
    check_index_along(a, x, dim, index)?;
    one(x.f_index_fill(dim, index, torch_scalar(a.scalar("value")?))?)
});

op!("masked_fill", "indexing", "a copy of input with value where mask is true (torch.masked_fill)",
[INPUT, Param::tensor("mask"), Param::tensor_or_scalar("value")] -> One,
|a| {
    let (x, mask) = (a.tensor("input")?, a.tensor("mask")?);
    match a.tensor_or_scalar("value")? {
        TensorOrScalar::Tensor(v) => one(x.f_masked_fill_tensor(mask, v)?),
        TensorOrScalar::Scalar(s) => one(x.f_masked_fill(mask, torch_scalar(s))?),
    }
});

op!("masked_select", "indexing", "the elements of input where mask is true, 1-D (torch.masked_select)",
    [INPUT, Param::tensor("mask")] -> One,
    |a| one(a.tensor("input")?.f_masked_select(a.tensor("mask")?)?));

op!("masked_scatter", "indexing", "a copy of input with source's elements, in order, where mask is true (torch.masked_scatter)",
    [INPUT, Param::tensor("mask"), Param::tensor("source")] -> One,
    |a| one(a.tensor("input")?.f_masked_scatter(a.tensor("mask")?, a.tensor("source")?)?));

op!("take", "indexing", "elements of the flattened input at index (torch.take)",
[INPUT, INDEX] -> One,
|a| {
    let (x, index) = (a.tensor("input")?, a.tensor("index")?);
    check_index(a, "index", index, x.numel() as i64, true)?;
    one(x.f_take(index)?)
});

op!("take_along_dim", "indexing", "values at indices along dim, flattened when dim is None (torch.take_along_dim)",
[INPUT, Param::tensor("indices"), Param::int("dim").optional()] -> One,
|a| {
    let (x, index, dim) = (a.tensor("input")?, a.tensor("indices")?, a.opt_int("dim")?);
    match dim {
        Some(d) => check_index_along(a, x, d, index)?,
        None => check_index(a, "index", index, x.numel() as i64, false)?,
    }
    one(x.f_take_along_dim(index, dim)?)
});

op!("nonzero", "indexing", "indices of the nonzero elements, (n, ndim) int64 (torch.nonzero)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_nonzero()?));

op!("argwhere", "indexing", "indices of the nonzero elements, (n, ndim) int64 (torch.argwhere)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_argwhere()?));

op!("searchsorted", "indexing", "insertion indices of input into sorted_sequence (torch.searchsorted)",
[
    Param::tensor("sorted_sequence"),
    Param::tensor_or_scalar("input"),
    Param::bool("out_int32").or_bool(false),
    Param::bool("right").or_bool(false),
    Param::str("side").optional(),
    Param::tensor("sorter").optional(),
] -> One,
|a| {
    let seq = a.tensor("sorted_sequence")?;
    let right = a.bool("right")?;
    let side = a.opt_str("side")?.unwrap_or(if right { "right" } else { "left" });
    let (i32_, sorter) = (a.bool("out_int32")?, a.opt_tensor("sorter")?);
    match a.tensor_or_scalar("input")? {
        TensorOrScalar::Tensor(x) => one(x.f_searchsorted(seq, i32_, right, side, sorter)?),
        TensorOrScalar::Scalar(s) => one(Tensor::f_searchsorted_scalar(seq, torch_scalar(s), i32_, right, side, sorter)?),
    }
});

op!("bucketize", "indexing", "bucket index of each element by boundaries (torch.bucketize)",
    [INPUT, Param::tensor("boundaries"), Param::bool("out_int32").or_bool(false), Param::bool("right").or_bool(false)] -> One,
    |a| one(a.tensor("input")?.f_bucketize(a.tensor("boundaries")?, a.bool("out_int32")?, a.bool("right")?)?));

op!("bincount", "indexing", "occurrences of each non-negative int, optionally weighted (torch.bincount)",
    [INPUT, Param::tensor("weights").optional(), Param::int("minlength").or_int(0)] -> One,
    |a| one(a.tensor("input")?.f_bincount(a.opt_tensor("weights")?, a.int("minlength")?)?));

op!("histc", "indexing", "histogram of bins equal bins over [min, max]; min = max = 0: the data's range (torch.histc)",
[INPUT, Param::int("bins").or_int(100), Param::float("min").or_float(0.0), Param::float("max").or_float(0.0)] -> One,
|a| {
    let x = a.tensor("input")?;
    let (bins, lo, hi) = (a.int("bins")?, a.float("min")?, a.float("max")?);
    if lo == 0.0 && hi == 0.0 {
        return one(x.f_histc(bins)?);
    }
    if lo > hi {
        return Err(bad(a, "max must be larger than min"));
    }
    let (h, _) = x.f_histogram_bin_ct(bins, [lo, hi], None::<Tensor>, false)?;
    one(h)
});

op!("histogram", "indexing", "histogram of bins equal bins over range (default the data's) and the bin edges (torch.histogram)",
[INPUT, Param::int("bins").or_int(100), Param::floats("range").optional(), Param::tensor("weight").optional(), Param::bool("density").or_bool(false)] -> Tuple(&["hist", "bin_edges"]),
|a| {
    let x = a.tensor("input")?;
    let range: Vec<f64> = match a.opt_float_list("range")? {
        Some(r) => r.to_vec(),
        None => data_range(x)?,
    };
    let (h, e) = x.f_histogram_bin_ct(a.int("bins")?, range.as_slice(), a.opt_tensor("weight")?, a.bool("density")?)?;
    tuple(vec![h, e])
});

/// torch.histogram's default range: the data's minimum and maximum, widened
/// by 0.5 on both sides when they are equal; [0, 1] when empty.
fn data_range(x: &Tensor) -> crate::KernelResult<Vec<f64>> {
    let (lo, hi) = if x.numel() == 0 {
        (0.0, 1.0)
    } else {
        let (lo, hi) = x.f_aminmax(None::<i64>, false)?;
        (lo.f_double_value(&[])?, hi.f_double_value(&[])?)
    };
    Ok(if lo == hi {
        vec![lo - 0.5, hi + 0.5]
    } else {
        vec![lo, hi]
    })
}

fn unique(a: &Args<Tensor>) -> Out {
    let x = a.tensor("input")?;
    let (inv, counts) = (a.bool("return_inverse")?, a.bool("return_counts")?);
    let (u, i, c) = match a.opt_int("dim")? {
        None => x.f_internal_unique2(a.bool("sorted")?, inv, counts)?,
        Some(d) => x.f_unique_dim(d, a.bool("sorted")?, inv, counts)?,
    };
    unique_result(u, i, c, inv, counts)
}

/// torch's unique results: the values alone, or a tuple with the
/// requested extras.
fn unique_result(u: Tensor, i: Tensor, c: Tensor, inv: bool, counts: bool) -> Out {
    match (inv, counts) {
        (false, false) => one(u),
        (true, false) => tuple(vec![u, i]),
        (false, true) => tuple(vec![u, c]),
        (true, true) => tuple(vec![u, i, c]),
    }
}

op!("unique", "indexing", "unique values (sorted), plus inverse indices and counts when asked: one tensor or a tuple like torch (torch.unique)",
    [INPUT, Param::bool("sorted").or_bool(true), Param::bool("return_inverse").or_bool(false), Param::bool("return_counts").or_bool(false), Param::int("dim").optional()] -> Tuple(&["output", "inverse_indices", "counts"]),
    unique);

op!("unique_consecutive", "indexing", "collapses runs of equal values, plus inverse indices and counts when asked (torch.unique_consecutive)",
[INPUT, Param::bool("return_inverse").or_bool(false), Param::bool("return_counts").or_bool(false), Param::int("dim").optional()] -> Tuple(&["output", "inverse_indices", "counts"]),
|a| {
    let (inv, counts) = (a.bool("return_inverse")?, a.bool("return_counts")?);
    let (u, i, c) = a.tensor("input")?.f_unique_consecutive(inv, counts, a.opt_int("dim")?)?;
    unique_result(u, i, c, inv, counts)
});
