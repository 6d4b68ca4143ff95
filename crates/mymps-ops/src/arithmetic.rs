//! Binary arithmetic: `add`, `sub`, `mul`, `div`, `pow`, `remainder`,
//! `clamp`, `lerp`, ... with torch's tensor-or-scalar arguments.

use mymps_core::ops::Scalar;
use tch::{Kind, TchError, Tensor};

use crate::Outputs::One;
use crate::util::{
    Out, any, as_tensor, bad, int_bits, is_complex, is_floating, one, opt_tensor_or_scalar,
    scalar_arg,
};

use crate::{Args, KernelResult, Param, TensorOrScalar, torch_scalar};

/// This module's ops are [`Cost::Elementwise`](crate::Cost::Elementwise)
/// unless they say otherwise.
macro_rules! op {
    ($($declaration:tt)*) => { crate::op! { @cost Elementwise; $($declaration)* } };
}

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

/// torch's promotion of two integer (or bool) kinds.
fn promote_int(a: Kind, b: Kind) -> Kind {
    let (Some((wa, sa)), Some((wb, sb))) = (int_bits(a), int_bits(b)) else {
        return a;
    };
    match () {
        _ if a == Kind::Bool => b,
        _ if b == Kind::Bool => a,
        _ if sa == sb => {
            if wa >= wb {
                a
            } else {
                b
            }
        }
        // uint8 with a signed kind: that kind if it is wider, else int16.
        _ if sa && wa > 8 => a,
        _ if sb && wb > 8 => b,
        _ => Kind::Int16,
    }
}

/// The kind of `x ∘ other` when both are integers or bools, by torch's
/// rules (tensors with dimensions first, then 0-d tensors, then Python
/// scalars; a lower group only matters above bool); `None` when a float or
/// complex takes part, so that the result is not an integer.
fn int_result_kind(x: &Tensor, other: &TensorOrScalar<'_, Tensor>) -> Option<Kind> {
    let (mut dims, mut zero, mut wrapped) = (None, None, None);
    let add = |slot: &mut Option<Kind>, k: Kind| {
        *slot = Some(slot.map_or(k, |s| promote_int(s, k)));
    };
    let mut tensor = |t: &Tensor| {
        let k = t.kind();
        int_bits(k)?;
        add(if t.dim() == 0 { &mut zero } else { &mut dims }, k);
        Some(())
    };
    tensor(x)?;
    match other {
        TensorOrScalar::Tensor(y) => tensor(y)?,
        // A bool scalar reaches libtorch as an int (`torch_scalar`).
        TensorOrScalar::Scalar(Scalar::Int(_) | Scalar::Bool(_)) => add(&mut wrapped, Kind::Int64),
        TensorOrScalar::Scalar(Scalar::Float(_)) => return None,
    }
    let combine = |higher: Option<Kind>, lower: Option<Kind>| match (higher, lower) {
        (None, l) => l,
        (Some(h), Some(l)) if h == Kind::Bool => Some(promote_int(h, l)),
        (h, _) => h,
    };
    combine(dims, combine(zero, wrapped))
}

/// `t`'s values as they take part in an op of result kind `k`: a 0-d
/// tensor is converted (wrapping, as torch does; it may be wider than
/// `k`), a tensor with dimensions never is wider than `k` and keeps its
/// values.
fn in_kind(t: &Tensor, k: Kind) -> Result<Tensor, TchError> {
    if t.kind() == k || t.dim() > 0 {
        Ok(t.shallow_clone())
    } else {
        t.f_to_kind(k)
    }
}

/// Refuses an integer division that would trap or has no answer: by zero,
/// and, when `quotient` (a division, not a remainder, whose MIN % -1 is
/// 0), MIN / -1 of a signed kind. libtorch's CPU kernels raise on a zero
/// divisor but execute x86 `idiv` on MIN / -1, which kills the process
/// (SIGFPE); CUDA kernels trap on neither and answer garbage. Both are
/// refused here on every device, before the kernel runs. Float and
/// complex divisions are not looked at (only the kinds are read).
fn check_int_division(
    a: &Args<Tensor>,
    x: &Tensor,
    other: &TensorOrScalar<'_, Tensor>,
    quotient: bool,
) -> KernelResult<()> {
    let Some(k) = int_result_kind(x, other) else {
        return Ok(());
    };
    let Some((bits, signed)) = int_bits(k).filter(|_| k != Kind::Bool) else {
        // Bool divisions: libtorch has no kernel, and says so.
        return Ok(());
    };
    let min = if signed { i64::MIN >> (64 - bits) } else { 0 };
    let zero = || bad(a, "ZeroDivisionError: integer division by zero");
    let overflow = || {
        let name = crate::dtype_of(k).map_or("?", mymps_core::DType::name);
        bad(
            a,
            format!(
                "integer overflow: {min} / -1 = {} does not fit {name} (MIN / -1 is refused on every device)",
                -(min as i128)
            ),
        )
    };
    let xk = in_kind(x, k)?;
    // MIN can only be in `x` if it has the result's kind.
    let has_min = || -> KernelResult<bool> { Ok(xk.kind() == k && any(&xk.f_eq(min)?)?) };
    match other {
        TensorOrScalar::Scalar(s) => {
            // The scalar, converted to the result kind as torch converts it.
            let v = match *s {
                Scalar::Int(i) => (i << (64 - bits)) >> (64 - bits),
                Scalar::Bool(b) => b as i64,
                Scalar::Float(_) => return Ok(()),
            };
            let v = if signed { v } else { v & ((1i64 << bits) - 1) };
            if v == 0 {
                return Err(zero());
            }
            if quotient && signed && v == -1 && has_min()? {
                return Err(overflow());
            }
        }
        TensorOrScalar::Tensor(y) => {
            let yk = in_kind(y, k)?;
            if any(&yk.f_eq(0)?)? {
                return Err(zero());
            }
            let y_signed = int_bits(yk.kind()).is_some_and(|(_, s)| s);
            if quotient && signed && y_signed {
                let minus_one = yk.f_eq(-1)?;
                if any(&minus_one)?
                    && has_min()?
                    && any(&xk.f_eq(min)?.f_logical_and(&minus_one)?)?
                {
                    return Err(overflow());
                }
            }
        }
    }
    Ok(())
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

op!("div", "arithmetic", "input / other, elementwise; rounding_mode None, \"trunc\" or \"floor\"; an integer division by zero or of MIN by -1 is an error, on every device (torch.div)",
[INPUT, OTHER, Param::str("rounding_mode").optional()] -> One,
|a| {
    let x = a.tensor("input")?;
    let other = a.tensor_or_scalar("other")?;
    let mode = a.opt_str("rounding_mode")?;
    if matches!(mode, Some("trunc" | "floor")) {
        check_int_division(a, x, &other, true)?;
    }
    match (other, mode) {
        (TensorOrScalar::Tensor(y), None) => one(x.f_div(y)?),
        (TensorOrScalar::Scalar(s), None) => one(x.f_div_scalar(torch_scalar(s))?),
        (TensorOrScalar::Tensor(y), Some(m)) => one(x.f_div_tensor_mode(y, m)?),
        (TensorOrScalar::Scalar(s), Some(m)) => one(x.f_div_scalar_mode(torch_scalar(s), m)?),
    }
});

/// [`binary`] after [`check_int_division`].
fn int_checked(a: &Args<Tensor>, quotient: bool, tensor: TensorFn, scalar: ScalarFn) -> Out {
    check_int_division(
        a,
        a.tensor("input")?,
        &a.tensor_or_scalar("other")?,
        quotient,
    )?;
    binary(a, tensor, scalar)
}

op!("remainder", "arithmetic", "Python-style modulus, the sign of other; an integer one by zero is an error, on every device (torch.remainder)",
    [INPUT, OTHER] -> One,
    |a| int_checked(a, false, Tensor::f_remainder_tensor, |x, s| x.f_remainder(s)));

op!("fmod", "arithmetic", "C-style modulus, the sign of input; an integer one by zero is an error, on every device (torch.fmod)",
    [INPUT, OTHER] -> One,
    |a| int_checked(a, false, Tensor::f_fmod_tensor, |x, s| x.f_fmod(s)));

op!("floor_divide", "arithmetic", "floor(input / other); an integer division by zero or of MIN by -1 is an error, on every device (torch.floor_divide)",
    [INPUT, OTHER] -> One,
    |a| int_checked(a, true, Tensor::f_floor_divide, |x, s| x.f_floor_divide_scalar(s)));

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
    |a| one(a.tensor("input")?.f_neg()?),
    in_place: |t| Ok(t.f_neg_()?));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::run;
    use mymps_core::Value;
    use tch::Device;

    const KINDS: [Kind; 6] = [
        Kind::Bool,
        Kind::Uint8,
        Kind::Int8,
        Kind::Int16,
        Kind::Int,
        Kind::Int64,
    ];

    fn t(k: Kind, shape: &[i64]) -> Tensor {
        Tensor::zeros(shape, (k, Device::Cpu))
    }

    #[test]
    fn integer_result_kinds_are_torchs() {
        for kx in KINDS {
            for ky in KINDS {
                for (sx, sy) in [(&[2][..], &[2][..]), (&[2], &[]), (&[], &[2]), (&[], &[])] {
                    let (x, y) = (t(kx, sx), t(ky, sy));
                    let torch = x.f_add(&y).unwrap().kind();
                    let ours = int_result_kind(&x, &TensorOrScalar::Tensor(&y));
                    assert_eq!(ours, Some(torch), "{kx:?}{sx:?} + {ky:?}{sy:?}");
                }
            }
            for sx in [&[2][..], &[]] {
                let x = t(kx, sx);
                for s in [Scalar::Int(3), Scalar::Bool(true)] {
                    let torch = x.f_add_scalar(torch_scalar(s)).unwrap().kind();
                    let ours = int_result_kind(&x, &TensorOrScalar::Scalar(s));
                    assert_eq!(ours, Some(torch), "{kx:?}{sx:?} + {s:?}");
                }
                let f = t(Kind::Float, &[]);
                assert_eq!(int_result_kind(&x, &TensorOrScalar::Tensor(&f)), None);
                let s = TensorOrScalar::Scalar(Scalar::Float(1.0));
                assert_eq!(int_result_kind(&x, &s), None);
            }
        }
    }

    fn int64s(v: &[i64]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn integer_divisions_that_would_trap_are_refused() {
        let modes: [(&str, &[(&str, Value)]); 3] = [
            ("div", &[("rounding_mode", Value::Str("trunc".into()))]),
            ("div", &[("rounding_mode", Value::Str("floor".into()))]),
            ("floor_divide", &[]),
        ];
        for (op, kwargs) in modes {
            for (x, y) in [
                (int64s(&[i64::MIN, 4]), int64s(&[-1])),
                (
                    Tensor::from_slice(&[i32::MIN]),
                    int64s(&[]).f_reshape([0]).unwrap(),
                ),
                (
                    Tensor::from_slice(&[i32::MIN]),
                    Tensor::from(u32::MAX as i64),
                ),
                (Tensor::from_slice(&[i8::MIN]), Tensor::from_slice(&[-1i8])),
            ] {
                let empty = y.numel() == 0;
                let r = run(op, vec![("0", x), ("1", y)], kwargs);
                if empty {
                    // Broadcasting against an empty divisor: nothing to divide.
                    assert!(r.is_ok(), "{op}");
                    continue;
                }
                let e = r.unwrap_err().0;
                assert_eq!(e.code, mymps_core::ErrorCode::BadArgument, "{op}: {e}");
                assert!(e.message.contains("integer overflow"), "{op}: {e}");
            }
        }
        // A float division is not checked: 1 / 0 is inf.
        let x = Tensor::from_slice(&[1f32]);
        let out = run("floor_divide", vec![("0", x)], &[("other", 0.into())]).unwrap();
        let crate::OpOutput::One(out) = out else {
            panic!()
        };
        assert_eq!(out.double_value(&[0]), f64::INFINITY);
    }
}
