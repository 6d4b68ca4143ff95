//! The first slice of the whitelist, with torch's Python names and
//! semantics.

use mymps_core::Error;
use tch::Tensor;

use crate::{
    Args, KernelResult, OpOutput, Outputs, Param, TensorOrScalar, op, opt_kind, torch_scalar,
};

type Out = KernelResult<OpOutput<Tensor>>;

fn one(t: Tensor) -> Out {
    Ok(OpOutput::One(t))
}

/// `input ∘ other` where `other` is a tensor or a Python scalar.
fn binary(
    a: &Args<Tensor>,
    tensor: fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>,
    scalar: fn(&Tensor, tch::Scalar) -> Result<Tensor, tch::TchError>,
) -> Out {
    let x = a.tensor("input")?;
    match a.tensor_or_scalar("other")? {
        TensorOrScalar::Tensor(y) => one(tensor(x, y)?),
        TensorOrScalar::Scalar(s) => one(scalar(x, torch_scalar(s))?),
    }
}

/// `other × alpha`, as torch.add / torch.sub apply `alpha`.
fn scaled_other(a: &Args<Tensor>) -> KernelResult<Option<Tensor>> {
    let alpha = a.scalar("alpha")?;
    if alpha == mymps_core::ops::Scalar::Int(1) {
        return Ok(None);
    }
    Ok(match a.tensor_or_scalar("other")? {
        TensorOrScalar::Tensor(y) => Some(y.f_mul_scalar(torch_scalar(alpha))?),
        TensorOrScalar::Scalar(_) => None,
    })
}

fn add_sub(a: &Args<Tensor>, sign: f64) -> Out {
    let x = a.tensor("input")?;
    if let Some(y) = scaled_other(a)? {
        return one(if sign > 0.0 {
            x.f_add(&y)?
        } else {
            x.f_sub(&y)?
        });
    }
    match a.tensor_or_scalar("other")? {
        TensorOrScalar::Tensor(y) => one(if sign > 0.0 { x.f_add(y)? } else { x.f_sub(y)? }),
        TensorOrScalar::Scalar(s) => {
            let alpha = a.scalar("alpha")?;
            let s = match (s, alpha) {
                (mymps_core::ops::Scalar::Int(i), mymps_core::ops::Scalar::Int(k)) => {
                    mymps_core::ops::Scalar::Int(i * k)
                }
                (s, k) => mymps_core::ops::Scalar::Float(s.as_f64() * k.as_f64()),
            };
            let s = torch_scalar(s);
            one(if sign > 0.0 {
                x.f_add_scalar(s)?
            } else {
                x.f_sub_scalar(s)?
            })
        }
    }
}

const BINARY: [Param; 2] = [Param::tensor("input"), Param::tensor_or_scalar("other")];

op!("add", "arithmetic", "input + alpha × other (torch.add)",
    [BINARY[0], BINARY[1], Param::scalar("alpha").or_int(1)] -> Outputs::One,
    |a| add_sub(a, 1.0));

op!("sub", "arithmetic", "input − alpha × other (torch.sub)",
    [BINARY[0], BINARY[1], Param::scalar("alpha").or_int(1)] -> Outputs::One,
    |a| add_sub(a, -1.0));

op!("mul", "arithmetic", "input × other, elementwise (torch.mul)",
    [BINARY[0], BINARY[1]] -> Outputs::One,
    |a| binary(a, Tensor::f_mul, |x, s| x.f_mul_scalar(s)));

op!("div", "arithmetic", "input / other, elementwise; rounding_mode None, \"trunc\" or \"floor\" (torch.div)",
[BINARY[0], BINARY[1], Param::str("rounding_mode").optional()] -> Outputs::One,
|a| {
    let x = a.tensor("input")?;
    match (a.tensor_or_scalar("other")?, a.opt_str("rounding_mode")?) {
        (TensorOrScalar::Tensor(y), None) => one(x.f_div(y)?),
        (TensorOrScalar::Scalar(s), None) => one(x.f_div_scalar(torch_scalar(s))?),
        (TensorOrScalar::Tensor(y), Some(m)) => one(x.f_div_tensor_mode(y, m)?),
        (TensorOrScalar::Scalar(s), Some(m)) => one(x.f_div_scalar_mode(torch_scalar(s), m)?),
    }
});

op!("neg", "arithmetic", "−input (torch.neg)",
    [Param::tensor("input")] -> Outputs::One,
    |a| one(a.tensor("input")?.f_neg()?));

op!("matmul", "linalg", "matrix product with broadcasting (torch.matmul)",
    [Param::tensor("input"), Param::tensor("other")] -> Outputs::One,
    |a| one(a.tensor("input")?.f_matmul(a.tensor("other")?)?));

op!("svd", "linalg", "singular value decomposition A = U diag(S) Vh (torch.linalg.svd)",
[Param::tensor("A"), Param::bool("full_matrices").or_bool(true)] -> Outputs::Tuple(&["U", "S", "Vh"]),
|a| {
    let x = a.tensor("A")?;
    let full = a.bool("full_matrices")?;
    // torch.linalg.svd without a driver: computed through torch.svd
    // (some = !full_matrices), whose V is Vh's conjugate transpose.
    let (u, s, v) = x.f_svd(!full, true)?;
    Ok(OpOutput::Tuple(vec![u, s, v.f_mh()?]))
});

op!("softmax", "activation", "exp(x) / Σ exp(x) along dim (torch.softmax)",
    [Param::tensor("input"), Param::int("dim"), Param::dtype("dtype").optional()] -> Outputs::One,
    |a| one(a.tensor("input")?.f_softmax(a.int("dim")?, opt_kind(a.opt_dtype("dtype")?))?));

op!("relu", "activation", "max(input, 0) (torch.relu)",
    [Param::tensor("input")] -> Outputs::One,
    |a| one(a.tensor("input")?.f_relu()?));

op!("conv2d", "nn", "2-D convolution over (N, C, H, W) (torch.nn.functional.conv2d)",
[
    Param::tensor("input"),
    Param::tensor("weight"),
    Param::tensor("bias").optional(),
    Param::ints("stride").or_ints(&[1]),
    Param::new("padding", mymps_core::ParamKind::IntListOrStr).or_ints(&[0]),
    Param::ints("dilation").or_ints(&[1]),
    Param::int("groups").or_int(1),
] -> Outputs::One,
|a| {
    let x = a.tensor("input")?;
    let w = a.tensor("weight")?;
    let b = a.opt_tensor("bias")?;
    let stride = a.int_list_n("stride", 2)?;
    let dilation = a.int_list_n("dilation", 2)?;
    let groups = a.int("groups")?;
    match a.int_list_or_str("padding")? {
        Ok(_) => one(x.f_conv2d(w, b, stride, a.int_list_n("padding", 2)?, dilation, groups)?),
        Err(mode @ ("same" | "valid")) => one(x.f_conv2d_padding(w, b, stride, mode, dilation, groups)?),
        Err(other) => Err(Error::bad_argument(format!(
            "conv2d(): padding must be an int, a list of ints, \"same\" or \"valid\", not {other:?}"
        ))
        .into()),
    }
});

/// A reduction over some dimensions: (input, dim, keepdim, dtype).
type ReduceDims =
    fn(&Tensor, Option<&[i64]>, bool, Option<tch::Kind>) -> Result<Tensor, tch::TchError>;

fn reduce(
    a: &Args<Tensor>,
    all: fn(&Tensor, Option<tch::Kind>) -> Result<Tensor, tch::TchError>,
    dims: ReduceDims,
) -> Out {
    let x = a.tensor("input")?;
    let kind = opt_kind(a.opt_dtype("dtype")?);
    let keepdim = a.bool("keepdim")?;
    match a.opt_int_list("dim")? {
        None if !keepdim => one(all(x, kind)?),
        None => {
            let every: Vec<i64> = (0..x.dim() as i64).collect();
            one(dims(x, Some(&every), true, kind)?)
        }
        Some(d) => one(dims(x, Some(d), keepdim, kind)?),
    }
}

const REDUCE: [Param; 4] = [
    Param::tensor("input"),
    Param::ints("dim").optional(),
    Param::bool("keepdim").or_bool(false),
    Param::dtype("dtype").optional(),
];

op!("sum", "reduction", "sum over all elements or over dim (torch.sum)",
    [REDUCE[0], REDUCE[1], REDUCE[2], REDUCE[3]] -> Outputs::One,
    |a| reduce(a, |x, k| x.f_sum(k), |x, d, kd, k| x.f_sum_dim_intlist(d, kd, k)));

op!("mean", "reduction", "mean over all elements or over dim (torch.mean)",
    [REDUCE[0], REDUCE[1], REDUCE[2], REDUCE[3]] -> Outputs::One,
    |a| reduce(a, |x, k| x.f_mean(k), |x, d, kd, k| x.f_mean_dim(d, kd, k)));

op!("argmax", "reduction", "index of the maximum, flattened or along dim; int64 (torch.argmax)",
    [Param::tensor("input"), Param::int("dim").optional(), Param::bool("keepdim").or_bool(false)] -> Outputs::One,
    |a| one(a.tensor("input")?.f_argmax(a.opt_int("dim")?, a.bool("keepdim")?)?));

op!("eq", "comparison", "input == other, elementwise; bool (torch.eq)",
    [BINARY[0], BINARY[1]] -> Outputs::One,
    |a| binary(a, Tensor::f_eq_tensor, |x, s| x.f_eq(s)));

op!("fft", "fft", "1-D discrete Fourier transform; complex (torch.fft.fft)",
[
    Param::tensor("input"),
    Param::int("n").optional(),
    Param::int("dim").or_int(-1),
    Param::str("norm").optional(),
] -> Outputs::One,
|a| {
    let norm = a.opt_str("norm")?.unwrap_or("backward");
    one(a.tensor("input")?.f_fft_fft(a.opt_int("n")?, a.int("dim")?, norm)?)
});

op!("reshape", "shape", "the same elements in a new shape; -1 infers one dimension (torch.reshape)",
    [Param::tensor("input"), Param::ints("shape")] -> Outputs::One,
    |a| one(a.tensor("input")?.f_reshape(a.int_list("shape")?)?));

op!("transpose", "shape", "swap dimensions dim0 and dim1 (torch.transpose)",
    [Param::tensor("input"), Param::int("dim0"), Param::int("dim1")] -> Outputs::One,
    |a| one(a.tensor("input")?.f_transpose(a.int("dim0")?, a.int("dim1")?)?));
