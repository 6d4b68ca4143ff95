//! Elementwise math of one tensor, predicates, logic and `where`.

use tch::Tensor;

use crate::Outputs::One;
use crate::arithmetic::binary;
use crate::util::{Out, as_tensor, one, unary};
use crate::{Args, Param, TensorOrScalar};

/// This module's ops are [`Cost::Elementwise`](crate::Cost::Elementwise)
/// unless they say otherwise.
macro_rules! op {
    ($($declaration:tt)*) => { crate::op! { @cost Elementwise; $($declaration)* } };
}

unary! {
    "abs", "elementwise", "|input| (torch.abs)", f_abs, in_place: f_abs_;
    "ceil", "elementwise", "smallest integer ≥ input (torch.ceil)", f_ceil, in_place: f_ceil_;
    "floor", "elementwise", "largest integer ≤ input (torch.floor)", f_floor, in_place: f_floor_;
    "trunc", "elementwise", "input rounded toward zero (torch.trunc)", f_trunc, in_place: f_trunc_;
    "frac", "elementwise", "fractional part, input − trunc(input) (torch.frac)", f_frac, in_place: f_frac_;
    "exp", "elementwise", "e ** input (torch.exp)", f_exp, in_place: f_exp_;
    "exp2", "elementwise", "2 ** input (torch.exp2)", f_exp2, in_place: f_exp2_;
    "expm1", "elementwise", "exp(input) − 1, accurate near 0 (torch.expm1)", f_expm1, in_place: f_expm1_;
    "log", "elementwise", "natural logarithm (torch.log)", f_log, in_place: f_log_;
    "log2", "elementwise", "base-2 logarithm (torch.log2)", f_log2, in_place: f_log2_;
    "log10", "elementwise", "base-10 logarithm (torch.log10)", f_log10, in_place: f_log10_;
    "log1p", "elementwise", "log(1 + input), accurate near 0 (torch.log1p)", f_log1p, in_place: f_log1p_;
    "sqrt", "elementwise", "square root (torch.sqrt)", f_sqrt, in_place: f_sqrt_;
    "rsqrt", "elementwise", "1 / sqrt(input) (torch.rsqrt)", f_rsqrt, in_place: f_rsqrt_;
    "square", "elementwise", "input² (torch.square)", f_square, in_place: f_square_;
    "reciprocal", "elementwise", "1 / input (torch.reciprocal)", f_reciprocal, in_place: f_reciprocal_;
    "sign", "elementwise", "−1, 0 or 1 by the sign of input (torch.sign)", f_sign, in_place: f_sign_;
    "sgn", "elementwise", "sign, input / |input| for complex input (torch.sgn)", f_sgn;
    "signbit", "elementwise", "whether the sign bit is set; bool (torch.signbit)", f_signbit;
    "sin", "elementwise", "sine (torch.sin)", f_sin, in_place: f_sin_;
    "cos", "elementwise", "cosine (torch.cos)", f_cos, in_place: f_cos_;
    "tan", "elementwise", "tangent (torch.tan)", f_tan, in_place: f_tan_;
    "asin", "elementwise", "arcsine (torch.asin)", f_asin, in_place: f_asin_;
    "acos", "elementwise", "arccosine (torch.acos)", f_acos, in_place: f_acos_;
    "atan", "elementwise", "arctangent (torch.atan)", f_atan, in_place: f_atan_;
    "sinh", "elementwise", "hyperbolic sine (torch.sinh)", f_sinh, in_place: f_sinh_;
    "cosh", "elementwise", "hyperbolic cosine (torch.cosh)", f_cosh, in_place: f_cosh_;
    "tanh", "elementwise", "hyperbolic tangent (torch.tanh)", f_tanh, in_place: f_tanh_;
    "asinh", "elementwise", "inverse hyperbolic sine (torch.asinh)", f_asinh;
    "acosh", "elementwise", "inverse hyperbolic cosine (torch.acosh)", f_acosh;
    "atanh", "elementwise", "inverse hyperbolic tangent (torch.atanh)", f_atanh;
    "sinc", "elementwise", "normalized sinc, sin(πx) / (πx) (torch.sinc)", f_sinc;
    "erf", "elementwise", "error function (torch.erf)", f_erf, in_place: f_erf_;
    "erfc", "elementwise", "complementary error function, 1 − erf(input) (torch.erfc)", f_erfc, in_place: f_erfc_;
    "erfinv", "elementwise", "inverse error function (torch.erfinv)", f_erfinv;
    "lgamma", "elementwise", "log |Γ(input)| (torch.lgamma)", f_lgamma;
    "digamma", "elementwise", "ψ(input), the derivative of lgamma (torch.digamma)", f_digamma;
    "angle", "elementwise", "argument of complex input, 0 or π for real input (torch.angle)", f_angle;
    "real", "elementwise", "real part of complex input (torch.real)", f_real;
    "imag", "elementwise", "imaginary part of complex input (torch.imag)", f_imag;
    "conj_physical", "elementwise", "complex conjugate (torch.conj_physical)", f_conj_physical;
    "isnan", "elementwise", "whether input is NaN; bool (torch.isnan)", f_isnan;
    "isinf", "elementwise", "whether input is ±inf; bool (torch.isinf)", f_isinf;
    "isfinite", "elementwise", "whether input is finite; bool (torch.isfinite)", f_isfinite;
    "logical_not", "elementwise", "not input; bool (torch.logical_not)", f_logical_not;
}

op!("round", "elementwise", "round half to even, to `decimals` decimal places (torch.round)",
[Param::tensor("input"), Param::int("decimals").or_int(0)] -> One,
|a| {
    let x = a.tensor("input")?;
    match a.int("decimals")? {
        0 => one(x.f_round()?),
        d => one(x.f_round_decimals(d)?),
    }
});

op!("nan_to_num", "elementwise", "replaces NaN, +inf and −inf; None: 0, the dtype's max and min (torch.nan_to_num)",
    [
        Param::tensor("input"),
        Param::float("nan").or_float(0.0),
        Param::float("posinf").optional(),
        Param::float("neginf").optional(),
    ] -> One,
    |a| one(a.tensor("input")?.f_nan_to_num(a.float("nan")?, a.opt_float("posinf")?, a.opt_float("neginf")?)?));

/// `f(input, other)` for ops of two tensors.
fn pair_op(a: &Args<Tensor>, f: fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>) -> Out {
    one(f(a.tensor("input")?, a.tensor("other")?)?)
}

const PAIR: [Param; 2] = [Param::tensor("input"), Param::tensor("other")];

op!("logical_and", "elementwise", "input and other, nonzero is true; bool (torch.logical_and)",
    [PAIR[0], PAIR[1]] -> One, |a| pair_op(a, Tensor::f_logical_and));
op!("logical_or", "elementwise", "input or other, nonzero is true; bool (torch.logical_or)",
    [PAIR[0], PAIR[1]] -> One, |a| pair_op(a, Tensor::f_logical_or));
op!("logical_xor", "elementwise", "input xor other, nonzero is true; bool (torch.logical_xor)",
    [PAIR[0], PAIR[1]] -> One, |a| pair_op(a, Tensor::f_logical_xor));

op!("bitwise_and", "elementwise", "bitwise and of integer or bool tensors (torch.bitwise_and)",
    [Param::tensor("input"), Param::tensor_or_scalar("other")] -> One,
    |a| binary(a, Tensor::f_bitwise_and_tensor, |x, s| x.f_bitwise_and(s)));
op!("bitwise_or", "elementwise", "bitwise or of integer or bool tensors (torch.bitwise_or)",
    [Param::tensor("input"), Param::tensor_or_scalar("other")] -> One,
    |a| binary(a, Tensor::f_bitwise_or_tensor, |x, s| x.f_bitwise_or(s)));
op!("bitwise_xor", "elementwise", "bitwise xor of integer or bool tensors (torch.bitwise_xor)",
    [Param::tensor("input"), Param::tensor_or_scalar("other")] -> One,
    |a| binary(a, Tensor::f_bitwise_xor_tensor, |x, s| x.f_bitwise_xor(s)));

op!("where", "elementwise", "input where condition is true, else other; input and other are tensors or scalars (torch.where)",
[Param::tensor("condition"), Param::tensor_or_scalar("input"), Param::tensor_or_scalar("other")] -> One,
|a| {
    let c = a.tensor("condition")?;
    use TensorOrScalar::{Scalar as S, Tensor as T};
    match (a.tensor_or_scalar("input")?, a.tensor_or_scalar("other")?) {
        (T(x), T(y)) => one(x.f_where_self(c, y)?),
        (T(x), S(s)) => one(x.f_where_scalarother(c, crate::torch_scalar(s))?),
        (S(s), T(y)) => one(Tensor::f_where_scalarself(c, crate::torch_scalar(s), y)?),
        (S(s), S(t)) => {
            // Both scalars: torch promotes them like two Python scalars.
            let x = as_tensor(S(s), &Tensor::f_zeros([], (promote_scalars(s, t), c.device()))?)?;
            one(x.f_where_scalarother(c, crate::torch_scalar(t))?)
        }
    }
});

/// The dtype torch gives `where(cond, s, t)` for two Python scalars.
fn promote_scalars(s: crate::Scalar, t: crate::Scalar) -> tch::Kind {
    use crate::Scalar::{Bool, Float, Int};
    match (s, t) {
        (Float(_), _) | (_, Float(_)) => tch::Kind::Float,
        (Int(_), _) | (_, Int(_)) => tch::Kind::Int64,
        (Bool(_), Bool(_)) => tch::Kind::Bool,
    }
}

unary! {
    "deg2rad", "elementwise", "degrees to radians (torch.deg2rad)", f_deg2rad;
    "rad2deg", "elementwise", "radians to degrees (torch.rad2deg)", f_rad2deg;
    "i0", "elementwise", "modified Bessel function of the first kind, order 0 (torch.i0)", f_i0;
}

op!("logit", "elementwise", "log(p / (1 − p)), p clamped to [eps, 1 − eps] when eps is given (torch.logit)",
    [Param::tensor("input"), Param::float("eps").optional()] -> One,
    |a| one(a.tensor("input")?.f_logit(a.opt_float("eps")?)?));

op!("heaviside", "elementwise", "step function: 0 below zero, 1 above, values at zero (torch.heaviside)",
    [Param::tensor("input"), Param::tensor("values")] -> One,
    |a| one(a.tensor("input")?.f_heaviside(a.tensor("values")?)?));

op!("gcd", "elementwise", "greatest common divisor of integer tensors (torch.gcd)",
    [PAIR[0], PAIR[1]] -> One, |a| pair_op(a, Tensor::f_gcd));
op!("lcm", "elementwise", "least common multiple of integer tensors (torch.lcm)",
    [PAIR[0], PAIR[1]] -> One, |a| pair_op(a, Tensor::f_lcm));
op!("nextafter", "elementwise", "the next floating-point value after input toward other (torch.nextafter)",
    [PAIR[0], PAIR[1]] -> One, |a| pair_op(a, Tensor::f_nextafter));
op!("logaddexp2", "elementwise", "log2(2^input + 2^other) (torch.logaddexp2)",
    [PAIR[0], PAIR[1]] -> One, |a| pair_op(a, Tensor::f_logaddexp2));
