//! Comparisons (bool results), sorting and selection of extremes.

use tch::Tensor;

use crate::Outputs::{One, Tuple};
use crate::Param;
use crate::arithmetic::binary;
use crate::util::{one, tuple};

/// This module's ops are [`Cost::Elementwise`](crate::Cost::Elementwise)
/// unless they say otherwise.
macro_rules! op {
    ($($declaration:tt)*) => { crate::op! { @cost Elementwise; $($declaration)* } };
}

const INPUT: Param = Param::tensor("input");
const OTHER: Param = Param::tensor_or_scalar("other");

op!("eq", "comparison", "input == other, elementwise; bool (torch.eq)",
    [INPUT, OTHER] -> One, |a| binary(a, Tensor::f_eq_tensor, |x, s| x.f_eq(s)));
op!("ne", "comparison", "input != other, elementwise; bool (torch.ne)",
    [INPUT, OTHER] -> One, |a| binary(a, Tensor::f_ne_tensor, |x, s| x.f_ne(s)));
op!("gt", "comparison", "input > other, elementwise; bool (torch.gt)",
    [INPUT, OTHER] -> One, |a| binary(a, Tensor::f_gt_tensor, |x, s| x.f_gt(s)));
op!("ge", "comparison", "input >= other, elementwise; bool (torch.ge)",
    [INPUT, OTHER] -> One, |a| binary(a, Tensor::f_ge_tensor, |x, s| x.f_ge(s)));
op!("lt", "comparison", "input < other, elementwise; bool (torch.lt)",
    [INPUT, OTHER] -> One, |a| binary(a, Tensor::f_lt_tensor, |x, s| x.f_lt(s)));
op!("le", "comparison", "input <= other, elementwise; bool (torch.le)",
    [INPUT, OTHER] -> One, |a| binary(a, Tensor::f_le_tensor, |x, s| x.f_le(s)));

op!("isclose", "comparison", "|input − other| ≤ atol + rtol × |other|, elementwise; bool (torch.isclose)",
    [INPUT, Param::tensor("other"), Param::float("rtol").or_float(1e-5), Param::float("atol").or_float(1e-8), Param::bool("equal_nan").or_bool(false)] -> One,
    |a| one(a.tensor("input")?.f_isclose(a.tensor("other")?, a.float("rtol")?, a.float("atol")?, a.bool("equal_nan")?)?));

op!("isin", "comparison", "whether each element of elements is in test_elements; bool (torch.isin)",
    [Param::tensor("elements"), Param::tensor("test_elements"), Param::bool("assume_unique").or_bool(false), Param::bool("invert").or_bool(false)] -> One,
    |a| one(Tensor::f_isin(a.tensor("elements")?, a.tensor("test_elements")?, a.bool("assume_unique")?, a.bool("invert")?)?),
    cost: Heavy); // a search of test_elements for each element: superlinear

op!("sort", "comparison", "values sorted along dim and their indices (torch.sort)",
[INPUT, Param::int("dim").or_int(-1), Param::bool("descending").or_bool(false), Param::bool("stable").or_bool(false)] -> Tuple(&["values", "indices"]),
|a| {
    let (v, i) = a.tensor("input")?.f_sort_stable(a.bool("stable")?, a.int("dim")?, a.bool("descending")?)?;
    tuple(vec![v, i])
}, cost: Heavy);

op!("argsort", "comparison", "indices that sort input along dim (torch.argsort)",
    [INPUT, Param::int("dim").or_int(-1), Param::bool("descending").or_bool(false), Param::bool("stable").or_bool(false)] -> One,
    |a| one(a.tensor("input")?.f_argsort_stable(a.bool("stable")?, a.int("dim")?, a.bool("descending")?)?),
    cost: Heavy);

op!("msort", "comparison", "input sorted along the first dimension (torch.msort)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_msort()?),
    cost: Heavy);

op!("topk", "comparison", "the k largest (or smallest) values along dim and their indices (torch.topk)",
[INPUT, Param::int("k"), Param::int("dim").or_int(-1), Param::bool("largest").or_bool(true), Param::bool("sorted").or_bool(true)] -> Tuple(&["values", "indices"]),
|a| {
    let (v, i) = a.tensor("input")?.f_topk(a.int("k")?, a.int("dim")?, a.bool("largest")?, a.bool("sorted")?)?;
    tuple(vec![v, i])
}, cost: Heavy); // a partial sort along dim
