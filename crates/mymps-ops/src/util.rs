//! Helpers shared by the op modules.

use mymps_core::Error;
use mymps_core::ops::{Arg, Scalar};
use tch::{Kind, Tensor};

use crate::{Args, KernelError, KernelResult, OpOutput, TensorOrScalar, opt_kind, torch_scalar};

/// What a kernel returns.
pub(crate) type Out = KernelResult<OpOutput<Tensor>>;

/// One tensor: `"output"`.
pub(crate) fn one(t: Tensor) -> Out {
    Ok(OpOutput::One(t))
}

/// A tuple or list: `"0"`, `"1"`, ... .
pub(crate) fn tuple(ts: Vec<Tensor>) -> Out {
    Ok(OpOutput::Tuple(ts))
}

/// A bad-argument error that names the op and shows its signature.
pub(crate) fn bad(a: &Args<Tensor>, msg: impl std::fmt::Display) -> KernelError {
    let spec = a.spec();
    KernelError(Error::bad_argument(format!(
        "{}(): {msg}; signature: {}",
        spec.name,
        spec.signature()
    )))
}

/// An optional tensor-or-scalar parameter (`clamp(min=None)`).
pub(crate) fn opt_tensor_or_scalar<'a>(
    a: &'a Args<Tensor>,
    name: &str,
) -> KernelResult<Option<TensorOrScalar<'a, Tensor>>> {
    match a.get(name)? {
        Arg::None => Ok(None),
        _ => Ok(Some(a.tensor_or_scalar(name)?)),
    }
}

/// A scalar as a 0-d tensor on `like`'s device, for overloads that only take
/// tensors. Its dtype follows torch's rule for a Python scalar next to
/// `like` (same category: `like`'s dtype; float into an integer tensor: the
/// default float dtype).
pub(crate) fn scalar_like(s: Scalar, like: &Tensor) -> KernelResult<Tensor> {
    let k = like.kind();
    let kind = match s {
        Scalar::Float(_) if !is_floating(k) && !is_complex(k) => Kind::Float,
        Scalar::Int(_) if k == Kind::Bool => Kind::Int64,
        _ => k,
    };
    Ok(Tensor::f_scalar_tensor(s.as_f64(), (kind, like.device()))?)
}

/// A tensor-or-scalar as a tensor (a scalar becomes a 0-d tensor of
/// `like`'s kind, see [`scalar_like`]).
pub(crate) fn as_tensor(v: TensorOrScalar<'_, Tensor>, like: &Tensor) -> KernelResult<Tensor> {
    match v {
        TensorOrScalar::Tensor(t) => Ok(t.shallow_clone()),
        TensorOrScalar::Scalar(s) => scalar_like(s, like),
    }
}

/// Whether `k` is a floating-point kind.
pub(crate) fn is_floating(k: Kind) -> bool {
    matches!(k, Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double)
}

/// Whether `k` is a complex kind.
pub(crate) fn is_complex(k: Kind) -> bool {
    matches!(
        k,
        Kind::ComplexHalf | Kind::ComplexFloat | Kind::ComplexDouble
    )
}

/// The `reduction` argument of a loss (`"none"`, `"mean"`, `"sum"`).
pub(crate) fn reduction(a: &Args<Tensor>) -> KernelResult<tch::Reduction> {
    match a.str("reduction")? {
        "none" => Ok(tch::Reduction::None),
        "mean" => Ok(tch::Reduction::Mean),
        "sum" => Ok(tch::Reduction::Sum),
        other => Err(bad(
            a,
            format!("reduction must be \"none\", \"mean\" or \"sum\", not {other:?}"),
        )),
    }
}

/// Applies a `reduction` to elementwise losses.
pub(crate) fn reduce_loss(a: &Args<Tensor>, l: Tensor) -> Out {
    match reduction(a)? {
        tch::Reduction::None => one(l),
        tch::Reduction::Sum => one(l.f_sum(None::<Kind>)?),
        _ => one(l.f_mean(None::<Kind>)?),
    }
}

/// The optional `dtype` argument as a kind.
pub(crate) fn dtype_arg(a: &Args<Tensor>) -> KernelResult<Option<Kind>> {
    Ok(opt_kind(a.opt_dtype("dtype")?))
}

/// A torch scalar from a required scalar parameter.
pub(crate) fn scalar_arg(a: &Args<Tensor>, name: &str) -> KernelResult<tch::Scalar> {
    Ok(torch_scalar(a.scalar(name)?))
}

/// `dims` normalised to `0..ndim` (for torch's "all dimensions" defaults).
pub(crate) fn all_dims(t: &Tensor) -> Vec<i64> {
    (0..t.dim() as i64).collect()
}

/// Registers ops of one tensor `input` and no other argument, each mapped
/// to a fallible tch method: `name, category, doc, method;`.
macro_rules! unary {
    ($($name:literal, $category:literal, $doc:literal, $method:ident;)*) => {
        $(
            $crate::op!($name, $category, $doc,
                [$crate::Param::tensor("input")] -> $crate::Outputs::One,
                |a| $crate::util::one(a.tensor("input")?.$method()?));
        )*
    };
}
pub(crate) use unary;
