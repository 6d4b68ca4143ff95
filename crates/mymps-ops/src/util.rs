//! Helpers shared by the op modules.

use mymps_core::Error;
use mymps_core::ops::{Arg, Scalar};
use tch::{Kind, Tensor};

use crate::{
    Args, KernelError, KernelResult, MAX_DIMS, MAX_OUTPUTS, OpOutput, TensorOrScalar, opt_kind,
    torch_scalar,
};

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
/// to a fallible tch method, with the calling module's default cost (its
/// `op!`): `name, category, doc, method;`, or with torch's in-place variant
/// `name, category, doc, method, in_place: method_;`.
macro_rules! unary {
    ($($name:literal, $category:literal, $doc:literal, $method:ident $(, in_place: $in_place:ident)?;)*) => {
        $(
            op!($name, $category, $doc,
                [$crate::Param::tensor("input")] -> $crate::Outputs::One,
                |a| $crate::util::one(a.tensor("input")?.$method()?)
                $(, in_place: |t| Ok(t.$in_place()?))?);
        )*
    };
}
pub(crate) use unary;

/// The size of `t` along `dim` (negative counts from the end); `None` when
/// `dim` is out of range (libtorch then raises its own error).
pub(crate) fn dim_size(t: &Tensor, dim: i64) -> Option<i64> {
    let n = t.dim() as i64;
    let d = if dim < 0 { dim + n } else { dim };
    (0..n).contains(&d).then(|| t.size()[d as usize])
}

/// Width in bits and signedness of an integer (or bool) kind.
pub(crate) fn int_bits(k: Kind) -> Option<(u32, bool)> {
    Some(match k {
        Kind::Bool => (1, false),
        Kind::Uint8 => (8, false),
        Kind::Int8 => (8, true),
        Kind::Int16 => (16, true),
        Kind::Int => (32, true),
        Kind::Int64 => (64, true),
        _ => return None,
    })
}

/// Whether any element of a bool tensor is true.
pub(crate) fn any(t: &Tensor) -> Result<bool, tch::TchError> {
    Ok(t.f_any()?.f_int64_value(&[])? != 0)
}

/// The smallest value of a signed integer kind (`None` for others).
pub(crate) fn int_min(k: Kind) -> Option<i64> {
    match int_bits(k)? {
        (bits, true) => Some(i64::MIN >> (64 - bits)),
        _ => None,
    }
}

pub(crate) fn is_integral(k: Kind) -> bool {
    matches!(
        k,
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    )
}

/// Checks that the integer `index` lies in `[0, size)` (or `[-size, size)`
/// when `negative_ok`) before a kernel on an accelerator uses it.
///
/// On CUDA an out-of-range index is a device-side assert, which poisons the
/// whole CUDA context: every later request of every client would fail. One
/// reduction and a synchronisation turn it into a clean error reply. On the
/// CPU libtorch already raises a clean error, so nothing is checked there.
pub(crate) fn check_index(
    a: &Args<Tensor>,
    what: &str,
    index: &Tensor,
    size: i64,
    negative_ok: bool,
) -> KernelResult<()> {
    if index.device() == tch::Device::Cpu || index.numel() == 0 || !is_integral(index.kind()) {
        return Ok(());
    }
    let lo = index.f_min()?.f_int64_value(&[])?;
    let hi = index.f_max()?.f_int64_value(&[])?;
    let min = if negative_ok { -size } else { 0 };
    if lo < min || hi >= size {
        let bad_value = if lo < min { lo } else { hi };
        return Err(bad(
            a,
            format!("{what} {bad_value} is out of range for size {size}"),
        ));
    }
    Ok(())
}

/// [`check_index`] for an index along `dim` of `input`.
pub(crate) fn check_index_along(
    a: &Args<Tensor>,
    input: &Tensor,
    dim: i64,
    index: &Tensor,
) -> KernelResult<()> {
    match dim_size(input, dim) {
        Some(size) => check_index(a, "index", index, size, false),
        None => Ok(()),
    }
}

/// Class-index targets of nll_loss / cross_entropy: in `[0, C)` or equal to
/// `ignore_index` (see [`check_index`] for why).
pub(crate) fn check_targets(
    a: &Args<Tensor>,
    input: &Tensor,
    target: &Tensor,
    ignore_index: i64,
) -> KernelResult<()> {
    if target.device() == tch::Device::Cpu || !is_integral(target.kind()) {
        return Ok(());
    }
    let classes = if input.dim() >= 2 {
        input.size()[1]
    } else {
        input.size().first().copied().unwrap_or(0)
    };
    let kept = target.f_masked_select(&target.f_ne(ignore_index)?)?;
    check_index(a, "target class", &kept, classes, false)
}

/// Runs op `name` on `inputs` and `kwargs`, bound as a request is.
#[cfg(test)]
pub(crate) fn run(
    name: &str,
    inputs: Vec<(&str, Tensor)>,
    kwargs: &[(&str, mymps_core::Value)],
) -> Out {
    let registry = crate::registry().unwrap();
    let entry = registry.lookup(name).unwrap();
    let args = mymps_core::ops::bind(
        &entry.spec,
        inputs.into_iter().map(|(k, t)| (k.to_owned(), t)).collect(),
        kwargs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )?;
    crate::run_kernel(entry, &args).unwrap()
}

/// The int list `name`, refused when it would make a tensor of more than
/// [`MAX_DIMS`] dimensions (`extra` of its dimensions come from elsewhere).
pub(crate) fn dims_arg<'a>(
    a: &'a Args<Tensor>,
    name: &str,
    extra: usize,
) -> KernelResult<&'a [i64]> {
    let l = a.int_list(name)?;
    let n = l.len().saturating_add(extra);
    if n > MAX_DIMS {
        return Err(bad(
            a,
            format!("'{name}' makes a tensor of {n} dimensions; at most {MAX_DIMS} are supported"),
        ));
    }
    Ok(l)
}

/// Refuses an op that would return more than [`MAX_OUTPUTS`] tensors,
/// before it makes them (a million views take seconds, and no reply can
/// carry them).
pub(crate) fn check_outputs(a: &Args<Tensor>, n: i64) -> KernelResult<()> {
    if n > MAX_OUTPUTS as i64 {
        return Err(bad(
            a,
            format!("this would return {n} tensors; at most {MAX_OUTPUTS} fit in a reply"),
        ));
    }
    Ok(())
}
