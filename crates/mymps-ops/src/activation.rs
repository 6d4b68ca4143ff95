//! Activations and their parameters (`torch.nn.functional`), softmax.
//!
//! libtorch's C API has only the default-parameter forms of some
//! activations (`leaky_relu`, `elu`, `softplus`, ...): those are composed
//! from elementwise ops with torch's formulas.

use tch::Tensor;

use crate::Outputs::One;
use crate::util::{Out, bad, dtype_arg, one, unary};
use crate::{Args, Param};

/// This module's ops are [`Cost::Elementwise`](crate::Cost::Elementwise)
/// unless they say otherwise.
macro_rules! op {
    ($($declaration:tt)*) => { crate::op! { @cost Elementwise; $($declaration)* } };
}

unary! {
    "relu", "activation", "max(input, 0) (torch.nn.functional.relu)", f_relu, in_place: f_relu_;
    "relu6", "activation", "min(max(input, 0), 6) (torch.nn.functional.relu6)", f_relu6;
    "sigmoid", "activation", "1 / (1 + exp(−input)) (torch.sigmoid)", f_sigmoid, in_place: f_sigmoid_;
    "silu", "activation", "input × sigmoid(input) (torch.nn.functional.silu)", f_silu;
    "mish", "activation", "input × tanh(softplus(input)) (torch.nn.functional.mish)", f_mish;
    "selu", "activation", "scale × elu(input, α) with the SELU constants (torch.nn.functional.selu)", f_selu;
    "hardsigmoid", "activation", "relu6(input + 3) / 6 (torch.nn.functional.hardsigmoid)", f_hardsigmoid;
    "hardswish", "activation", "input × relu6(input + 3) / 6 (torch.nn.functional.hardswish)", f_hardswish;
    "logsigmoid", "activation", "log(sigmoid(input)) (torch.nn.functional.logsigmoid)", f_log_sigmoid;
}

const INPUT: Param = Param::tensor("input");

op!("gelu", "activation", "Gaussian error linear unit; approximate \"none\" or \"tanh\" (torch.nn.functional.gelu)",
    [INPUT, Param::str("approximate").or_str("none")] -> One,
    |a| one(a.tensor("input")?.f_gelu(a.str("approximate")?)?));

op!("softmax", "activation", "exp(x) / Σ exp(x) along dim (torch.softmax)",
    [INPUT, Param::int("dim"), Param::dtype("dtype").optional()] -> One,
    |a| one(a.tensor("input")?.f_softmax(a.int("dim")?, dtype_arg(a)?)?),
    cost: Reduction); // each output depends on its whole row along dim

op!("log_softmax", "activation", "log(softmax(x)) along dim, computed stably (torch.log_softmax)",
    [INPUT, Param::int("dim"), Param::dtype("dtype").optional()] -> One,
    |a| one(a.tensor("input")?.f_log_softmax(a.int("dim")?, dtype_arg(a)?)?),
    cost: Reduction);

op!("softmin", "activation", "softmax(−x) along dim (torch.nn.functional.softmin)",
    [INPUT, Param::int("dim"), Param::dtype("dtype").optional()] -> One,
    |a| one(a.tensor("input")?.f_neg()?.f_softmax(a.int("dim")?, dtype_arg(a)?)?),
    cost: Reduction);

op!("leaky_relu", "activation", "input if input > 0 else negative_slope × input (torch.nn.functional.leaky_relu)",
[INPUT, Param::float("negative_slope").or_float(0.01)] -> One,
|a| {
    let x = a.tensor("input")?;
    let neg = x.f_mul_scalar(a.float("negative_slope")?)?;
    one(x.f_where_self(&x.f_gt(0)?, &neg)?)
});

op!("elu", "activation", "input if input > 0 else alpha × (exp(input) − 1) (torch.nn.functional.elu)",
[INPUT, Param::float("alpha").or_float(1.0)] -> One,
|a| {
    let x = a.tensor("input")?;
    let neg = x.f_expm1()?.f_mul_scalar(a.float("alpha")?)?;
    one(x.f_where_self(&x.f_gt(0)?, &neg)?)
});

op!("celu", "activation", "max(0, x) + min(0, alpha × (exp(x / alpha) − 1)) (torch.nn.functional.celu)",
[INPUT, Param::float("alpha").or_float(1.0)] -> One,
|a| {
    let x = a.tensor("input")?;
    let alpha = a.float("alpha")?;
    let neg = x.f_div_scalar(alpha)?.f_expm1()?.f_mul_scalar(alpha)?;
    one(x.f_where_self(&x.f_gt(0)?, &neg)?)
});

op!("softplus", "activation", "log(1 + exp(beta × x)) / beta, linear above threshold (torch.nn.functional.softplus)",
[INPUT, Param::float("beta").or_float(1.0), Param::float("threshold").or_float(20.0)] -> One,
|a| {
    let x = a.tensor("input")?;
    let (beta, threshold) = (a.float("beta")?, a.float("threshold")?);
    let bx = x.f_mul_scalar(beta)?;
    let soft = bx.f_exp()?.f_log1p()?.f_div_scalar(beta)?;
    one(x.f_where_self(&bx.f_gt(threshold)?, &soft)?)
});

op!("hardtanh", "activation", "clamp(input, min_val, max_val) (torch.nn.functional.hardtanh)",
[INPUT, Param::float("min_val").or_float(-1.0), Param::float("max_val").or_float(1.0)] -> One,
|a| {
    let (lo, hi) = (a.float("min_val")?, a.float("max_val")?);
    if lo > hi {
        return Err(bad(a, "min_val cannot be greater than max_val"));
    }
    one(a.tensor("input")?.f_clamp(lo, hi)?)
});

op!("hardshrink", "activation", "input where |input| > lambd, else 0 (torch.nn.functional.hardshrink)",
[INPUT, Param::float("lambd").or_float(0.5)] -> One,
|a| {
    let x = a.tensor("input")?;
    // torch zeroes -lambd <= x <= lambd, so NaN stays NaN.
    let zero = x.f_abs()?.f_le(a.float("lambd")?)?;
    one(x.f_masked_fill(&zero, 0)?)
});

op!("softshrink", "activation", "input ∓ lambd where |input| > lambd, else 0 (torch.nn.functional.softshrink)",
[INPUT, Param::float("lambd").or_float(0.5)] -> One,
|a| {
    let x = a.tensor("input")?;
    let l = a.float("lambd")?;
    let shrunk = x.f_sub(&x.f_sign()?.f_mul_scalar(l)?)?;
    // torch gives x × 0 inside the band, so NaN stays NaN.
    one(shrunk.f_where_self(&x.f_abs()?.f_gt(l)?, &x.f_mul_scalar(0)?)?)
});

op!("tanhshrink", "activation", "input − tanh(input) (torch.nn.functional.tanhshrink)",
[INPUT] -> One,
|a| {
    let x = a.tensor("input")?;
    one(x.f_sub(&x.f_tanh()?)?)
});

op!("softsign", "activation", "input / (1 + |input|) (torch.nn.functional.softsign)",
[INPUT] -> One,
|a| {
    let x = a.tensor("input")?;
    one(x.f_div(&x.f_abs()?.f_add_scalar(1)?)?)
});

op!("threshold", "activation", "input if input > threshold else value (torch.nn.functional.threshold)",
    [INPUT, Param::float("threshold"), Param::float("value")] -> One,
    |a| one(a.tensor("input")?.f_threshold(a.float("threshold")?, a.float("value")?)?));

op!("glu", "activation", "gated linear unit: a × sigmoid(b), input halved along dim (torch.nn.functional.glu)",
    [INPUT, Param::int("dim").or_int(-1)] -> One,
    |a| one(a.tensor("input")?.f_glu(a.int("dim")?)?),
    cost: Reduction); // halves along dim: not positionwise

op!("prelu", "activation", "input if input > 0 else weight × input, weight per channel (torch.nn.functional.prelu)",
    [INPUT, Param::tensor("weight")] -> One,
    |a| one(a.tensor("input")?.f_prelu(a.tensor("weight")?)?),
    cost: Reduction); // weight per channel (dim 1), not broadcast by numpy's rules

op!("dropout", "activation", "zeroes elements with probability p and scales the rest by 1/(1−p) when training (torch.nn.functional.dropout)",
    [INPUT, Param::float("p").or_float(0.5), Param::bool("training").or_bool(true)] -> One,
    dropout);

fn dropout(a: &Args<Tensor>) -> Out {
    let p = a.float("p")?;
    if !(0.0..=1.0).contains(&p) {
        return Err(bad(
            a,
            format!("dropout probability has to be between 0 and 1, but got {p}"),
        ));
    }
    one(a.tensor("input")?.f_dropout(p, a.bool("training")?)?)
}
