//! Binary arithmetic: `add`, `sub`, `mul`, `div`, `pow`, `remainder`,
//! `clamp`, `lerp`, ... with torch's tensor-or-scalar arguments.

use mymps_core::ops::Scalar;
use tch::{TchError, Tensor};

use crate::Outputs::One;
use crate::util::{
    Out, as_tensor, bad, is_complex, is_floating, one, opt_tensor_or_scalar, scalar_arg,
};
use crate::{Args, KernelResult, Param, TensorOrScalar, op, torch_scalar};

type TensorFn = fn(&Tensor, &Tensor) -> Result<Tensor, TchError>;
type ScalarFn = fn(&Tensor, tch::Scalar) -> Result<Tensor, TchError>;

/// `input ∘ other` where `other` is a tensor or a Python scalar.
pub(crate) fn binary(a: &Args<Tensor>, tensor: TensorFn, scalar: ScalarFn) -> Out {
    let x = a.tensor("input")?;
    match a.tensor_or_scalar("other")? {
        TensorOrScalar::Tensor(y) => one(tensor(x, y)?),
        TensorOrScalar::Scalar(s) => one(scalar(x, torch_scalar(s))?),
    }
}

/// `input ∘ other` for ops that only have a tensor overload: a scalar
/// `other` becomes a 0-d tensor with torch's scalar promotion.
pub(crate) fn binary_tensor_only(a: &Args<Tensor>, tensor: TensorFn) -> Out {
    let x = a.tensor("input")?;
    let y = as_tensor(a.tensor_or_scalar("other")?, x)?;
    one(tensor(x, &y)?)
}

/// `input ± alpha × other`, as torch.add / torch.sub.
fn add_sub(a: &Args<Tensor>, subtract: bool) -> Out {
    let x = a.tensor("input")?;
    let alpha = a.scalar("alpha")?;
    let other = a.tensor_or_scalar("other")?;
    check_alpha(a, x, &other, alpha)?;
    let op = |x: &Tensor, y: &Tensor| if subtract { x.f_sub(y) } else { x.f_add(y) };
    match other {
        TensorOrScalar::Tensor(y) if alpha == Scalar::Int(1) => one(op(x, y)?),
        TensorOrScalar::Tensor(y) => one(op(x, &y.f_mul_scalar(torch_scalar(alpha))?)?),
        TensorOrScalar::Scalar(s) => {
            let s = match (s, alpha) {
                (Scalar::Int(i), Scalar::Int(k)) => Scalar::Int(i * k),
                (s, k) => Scalar::Float(s.as_f64() * k.as_f64()),
            };
            let s = torch_scalar(s);
            one(if subtract {
                x.f_sub_scalar(s)?
            } else {
                x.f_add_scalar(s)?
            })
        }
    }
}

/// torch's checks on `alpha`: a float alpha needs a floating or complex
/// result, a bool alpha a bool result. The result dtype comes from adding
/// empty tensors of the operands' kinds (0-d kept 0-d, for promotion).
fn check_alpha(
    a: &Args<Tensor>,
    x: &Tensor,
    other: &TensorOrScalar<'_, Tensor>,
    alpha: Scalar,
) -> KernelResult<()> {
    if matches!(alpha, Scalar::Int(_)) {
        return Ok(());
    }
    let probe = |t: &Tensor| -> Result<Tensor, TchError> {
        let shape: &[i64] = if t.dim() == 0 { &[] } else { &[0] };
        Tensor::f_zeros(shape, (t.kind(), t.device()))
    };
    let px = probe(x)?;
    let kind = match other {
        TensorOrScalar::Tensor(y) => px.f_add(&probe(y)?)?.kind(),
        TensorOrScalar::Scalar(s) => px.f_add_scalar(torch_scalar(*s))?.kind(),
    };
    let inexact = is_floating(kind) || is_complex(kind);
    match alpha {
        Scalar::Float(_) if !inexact => Err(bad(
            a,
            "for integral input tensors, argument alpha must not be a floating point number",
        )),
        Scalar::Bool(_) if kind != tch::Kind::Bool => {
            Err(bad(a, "boolean alpha only supported for boolean results"))
        }
        _ => Ok(()),
    }
}

const INPUT: Param = Param::tensor("input");
const OTHER: Param = Param::tensor_or_scalar("other");
const OTHER_T: Param = Param::tensor("other");

op!("add", "arithmetic", "input + alpha × other (torch.add)",
    [INPUT, OTHER, Param::scalar("alpha").or_int(1)] -> One,
    |a| add_sub(a, false));

op!("sub", "arithmetic", "input − alpha × other (torch.sub)",
    [INPUT, OTHER, Param::scalar("alpha").or_int(1)] -> One,
    |a| add_sub(a, true));

op!("mul", "arithmetic", "input × other, elementwise (torch.mul)",
    [INPUT, OTHER] -> One,
    |a| binary(a, Tensor::f_mul, Tensor::f_mul_scalar));

op!("div", "arithmetic", "input / other, elementwise; rounding_mode None, \"trunc\" or \"floor\" (torch.div)",
[INPUT, OTHER, Param::str("rounding_mode").optional()] -> One,
|a| {
    let x = a.tensor("input")?;
    match (a.tensor_or_scalar("other")?, a.opt_str("rounding_mode")?) {
        (TensorOrScalar::Tensor(y), None) => one(x.f_div(y)?),
        (TensorOrScalar::Scalar(s), None) => one(x.f_div_scalar(torch_scalar(s))?),
        (TensorOrScalar::Tensor(y), Some(m)) => one(x.f_div_tensor_mode(y, m)?),
        (TensorOrScalar::Scalar(s), Some(m)) => one(x.f_div_scalar_mode(torch_scalar(s), m)?),
    }
});

op!("remainder", "arithmetic", "Python-style modulus, the sign of other (torch.remainder)",
    [INPUT, OTHER] -> One,
    |a| binary(a, Tensor::f_remainder_tensor, |x, s| x.f_remainder(s)));

op!("fmod", "arithmetic", "C-style modulus, the sign of input (torch.fmod)",
    [INPUT, OTHER] -> One,
    |a| binary(a, Tensor::f_fmod_tensor, |x, s| x.f_fmod(s)));

op!("floor_divide", "arithmetic", "floor(input / other) (torch.floor_divide)",
    [INPUT, OTHER] -> One,
    |a| binary(a, Tensor::f_floor_divide, |x, s| x.f_floor_divide_scalar(s)));

op!("pow", "arithmetic", "input ** exponent, exponent a tensor or a scalar (torch.pow)",
[INPUT, Param::tensor_or_scalar("exponent")] -> One,
|a| {
    let x = a.tensor("input")?;
    match a.tensor_or_scalar("exponent")? {
        TensorOrScalar::Tensor(e) => one(x.f_pow(e)?),
        TensorOrScalar::Scalar(s) => one(x.f_pow_tensor_scalar(torch_scalar(s))?),
    }
});

op!("float_power", "arithmetic", "input ** exponent in double precision (torch.float_power)",
[INPUT, Param::tensor_or_scalar("exponent")] -> One,
|a| {
    let x = a.tensor("input")?;
    match a.tensor_or_scalar("exponent")? {
        TensorOrScalar::Tensor(e) => one(x.f_float_power(e)?),
        TensorOrScalar::Scalar(s) => one(x.f_float_power_tensor_scalar(torch_scalar(s))?),
    }
});

op!("maximum", "arithmetic", "elementwise maximum, NaN propagating (torch.maximum)",
    [INPUT, OTHER_T] -> One,
    |a| one(a.tensor("input")?.f_maximum(a.tensor("other")?)?));

op!("minimum", "arithmetic", "elementwise minimum, NaN propagating (torch.minimum)",
    [INPUT, OTHER_T] -> One,
    |a| one(a.tensor("input")?.f_minimum(a.tensor("other")?)?));

op!("fmax", "arithmetic", "elementwise maximum, ignoring NaN (torch.fmax)",
    [INPUT, OTHER_T] -> One,
    |a| one(a.tensor("input")?.f_fmax(a.tensor("other")?)?));

op!("fmin", "arithmetic", "elementwise minimum, ignoring NaN (torch.fmin)",
    [INPUT, OTHER_T] -> One,
    |a| one(a.tensor("input")?.f_fmin(a.tensor("other")?)?));

op!("atan2", "arithmetic", "arctangent of input / other with the quadrant (torch.atan2)",
    [INPUT, OTHER_T] -> One,
    |a| one(a.tensor("input")?.f_atan2(a.tensor("other")?)?));

op!("hypot", "arithmetic", "sqrt(input² + other²) (torch.hypot)",
    [INPUT, OTHER_T] -> One,
    |a| one(a.tensor("input")?.f_hypot(a.tensor("other")?)?));

op!("logaddexp", "arithmetic", "log(exp(input) + exp(other)) (torch.logaddexp)",
    [INPUT, OTHER_T] -> One,
    |a| one(a.tensor("input")?.f_logaddexp(a.tensor("other")?)?));

op!("xlogy", "arithmetic", "input × log(other), 0 where input is 0 (torch.xlogy)",
    [INPUT, OTHER] -> One,
    |a| binary_tensor_only(a, Tensor::f_xlogy));

op!("copysign", "arithmetic", "|input| with the sign of other (torch.copysign)",
    [INPUT, OTHER] -> One,
    |a| binary(a, Tensor::f_copysign, |x, s| x.f_copysign_scalar(s)));

op!("lerp", "arithmetic", "input + weight × (end − input) (torch.lerp)",
[INPUT, Param::tensor("end"), Param::tensor_or_scalar("weight")] -> One,
|a| {
    let x = a.tensor("input")?;
    let end = a.tensor("end")?;
    match a.tensor_or_scalar("weight")? {
        TensorOrScalar::Tensor(w) => one(x.f_lerp_tensor(end, w)?),
        TensorOrScalar::Scalar(s) => one(x.f_lerp(end, torch_scalar(s))?),
    }
});

op!("addcmul", "arithmetic", "input + value × tensor1 × tensor2 (torch.addcmul)",
[INPUT, Param::tensor("tensor1"), Param::tensor("tensor2"), Param::scalar("value").or_int(1)] -> One,
|a| {
    let (x, t1, t2) = (a.tensor("input")?, a.tensor("tensor1")?, a.tensor("tensor2")?);
    let prod = t1.f_mul(t2)?.f_mul_scalar(scalar_arg(a, "value")?)?;
    one(x.f_add(&prod)?)
});

op!("addcdiv", "arithmetic", "input + value × tensor1 / tensor2 (torch.addcdiv)",
[INPUT, Param::tensor("tensor1"), Param::tensor("tensor2"), Param::scalar("value").or_int(1)] -> One,
|a| {
    let (x, t1, t2) = (a.tensor("input")?, a.tensor("tensor1")?, a.tensor("tensor2")?);
    let q = t1.f_div(t2)?.f_mul_scalar(scalar_arg(a, "value")?)?;
    one(x.f_add(&q)?)
});

op!("clamp", "arithmetic", "limits input to [min, max]; min and max are tensors or scalars, at least one given (torch.clamp)",
[INPUT, Param::tensor_or_scalar("min").optional(), Param::tensor_or_scalar("max").optional()] -> One,
|a| {
    let x = a.tensor("input")?;
    let (lo, hi) = (opt_tensor_or_scalar(a, "min")?, opt_tensor_or_scalar(a, "max")?);
    use TensorOrScalar::Scalar as S;
    match (lo, hi) {
        (None, None) => Err(bad(a, "at least one of 'min' and 'max' must not be None")),
        (Some(S(l)), Some(S(h))) => one(x.f_clamp(torch_scalar(l), torch_scalar(h))?),
        (Some(S(l)), None) => one(x.f_clamp_min(torch_scalar(l))?),
        (None, Some(S(h))) => one(x.f_clamp_max(torch_scalar(h))?),
        (lo, hi) => {
            let lo = lo.map(|v| as_tensor(v, x)).transpose()?;
            let hi = hi.map(|v| as_tensor(v, x)).transpose()?;
            one(x.f_clamp_tensor(lo.as_ref(), hi.as_ref())?)
        }
    }
});

op!("neg", "arithmetic", "−input (torch.neg)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_neg()?));
