//! # mymps-ops
//!
//! The op whitelist: each op is an [`OpSpec`] (torch's name and argument
//! names, kinds and defaults, outputs, a one-line doc) and a libtorch
//! kernel, registered with `inventory` by the [`op!`] macro. The whitelist is
//! the only way in: a request names an op, its arguments are checked against
//! the signature, and only then does the kernel run.
//!
//! The built-in ops, by module (each op's category):
//!
//! | module | ops |
//! |---|---|
//! | `arithmetic` | add, sub, mul, div, pow, remainder, clamp, lerp, addcmul, ... (tensor-or-scalar `other`) |
//! | `elementwise` | one-tensor math (exp, log, sin, erf, ...), predicates, logic, bitwise, `where` |
//! | `activation` | relu, gelu, softmax, leaky_relu, elu, softplus, dropout, ... |
//! | `reduction` | sum, mean, prod, max/min, norm, var/std, median, quantile, cumulative ops |
//! | `comparison` | eq/ne/lt/..., isclose, isin, sort, argsort, topk |
//! | `linalg` | products, einsum, `torch.linalg` decompositions, solvers, inverses, norms |
//! | `nn` | convolutions, pooling, normalization, linear, embedding, attention, interpolate, pad |
//! | `loss` | cross_entropy, nll_loss, mse_loss, ... with `reduction` |
//! | `shape` | reshape, permute, cat/stack, split/chunk, flip, roll, repeat, ... |
//! | `fft` | `torch.fft` transforms and shifts |
//! | `creation` | `*_like` constants and random draws on the input's device |
//! | `indexing` | gather/scatter, index_*, masked_*, searchsorted, histograms, unique |
//!
//! Kernels never write to their inputs (on the CPU they are views of the
//! received buffers) and create new tensors on the input's device. Where
//! libtorch's C API lacks an overload (parametrized `leaky_relu`, `elu`,
//! `softplus`, ...; `addmm` with `beta`/`alpha`; `trapezoid` with `dx`)
//! the kernel composes torch's own formula, and the Python conformance suite
//! (`tests/python/ops`) checks it against PyTorch.
//!
//! Third-party op crates depend on this crate and use [`op!`] the same way;
//! linking them into the server binary is enough to register their ops.
//!
//! ```ignore
//! mymps_ops::op!("double", "custom", "2 × input",
//!     [Param::tensor("input")] -> Outputs::One,
//!     |a| Ok(OpOutput::One(a.tensor("input")?.f_mul_scalar(2)?)));
//! ```
#![warn(missing_docs)]

use mymps_core::{DType, Error};
use tch::{Kind, TchError, Tensor};

pub use inventory;
pub use mymps_core::ops::{
    Args, ForeignKernel, Kernel, OpEntry, OpOutput, OpSpec, Outputs, Param, Scalar, TensorOrScalar,
};

mod util;

mod activation;
mod arithmetic;
mod comparison;
mod creation;
mod elementwise;
mod fft;
mod indexing;
mod linalg;
mod loss;
mod nn;
mod reduction;
mod shape;

/// A kernel's error: converts from libtorch errors and mymps errors, so
/// kernels can use `?` on both.
#[derive(Debug)]
pub struct KernelError(pub Error);

impl From<TchError> for KernelError {
    fn from(e: TchError) -> KernelError {
        KernelError(torch_error(e))
    }
}

impl From<Error> for KernelError {
    fn from(e: Error) -> KernelError {
        KernelError(e)
    }
}

/// The result of a kernel.
pub type KernelResult<T> = std::result::Result<T, KernelError>;

/// The signature of a libtorch kernel.
pub type KernelFn = fn(&Args<Tensor>) -> KernelResult<OpOutput<Tensor>>;

/// A libtorch kernel, as stored (type-erased) in an [`OpEntry`]. The tch
/// backend runs every entry whose kernel is a `TchKernel`.
#[derive(Clone, Copy)]
pub struct TchKernel(pub KernelFn);

impl TchKernel {
    /// Runs the kernel.
    pub fn call(&self, args: &Args<Tensor>) -> KernelResult<OpOutput<Tensor>> {
        (self.0)(args)
    }
}

/// What a foreign (plugin) kernel writes into its result slot.
type ForeignOut = Option<KernelResult<OpOutput<Tensor>>>;

/// Runs whichever libtorch kernel `entry` holds; `None` if it holds none.
pub fn run_kernel(entry: &OpEntry, args: &Args<Tensor>) -> Option<KernelResult<OpOutput<Tensor>>> {
    match entry.kernel {
        Kernel::Native(k) => k.downcast_ref::<TchKernel>().map(|k| k.call(args)),
        Kernel::Foreign(k) if k.backend() == BACKEND => {
            let mut out: ForeignOut = None;
            // SAFETY: the tch plugin interface: `Args<Tensor>` in,
            // `ForeignOut` out; the plugin header check guarantees both
            // sides were built from the same versions.
            unsafe {
                k.call(
                    args as *const Args<Tensor> as *const (),
                    &mut out as *mut ForeignOut as *mut (),
                )
            };
            Some(out.unwrap_or_else(|| {
                Err(KernelError(Error::internal(format!(
                    "op '{}' returned nothing",
                    entry.spec.name
                ))))
            }))
        }
        Kernel::Foreign(_) => None,
    }
}

/// Whether `entry` has a libtorch kernel.
pub fn has_kernel(entry: &OpEntry) -> bool {
    match entry.kernel {
        Kernel::Native(k) => k.is::<TchKernel>(),
        Kernel::Foreign(k) => k.backend() == BACKEND,
    }
}

/// The backend name foreign kernels give.
const BACKEND: &str = "tch";

/// A native kernel wrapped for the plugin boundary: called through a vtable,
/// catching panics on the plugin's side.
struct PluginKernel {
    kernel: TchKernel,
    name: &'static str,
}

impl ForeignKernel for PluginKernel {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    unsafe fn call(&self, args: *const (), out: *mut ()) {
        // SAFETY: per `ForeignKernel::call`'s contract.
        let (args, out) = unsafe {
            (
                &*(args as *const Args<Tensor>),
                &mut *(out as *mut ForeignOut),
            )
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.kernel.call(args)))
            .unwrap_or_else(|p| {
                Err(KernelError(Error::internal(format!(
                    "op '{}' panicked: {}",
                    self.name,
                    mymps_core::plugin::panic_message(&*p)
                ))))
            });
        *out = Some(r);
    }
}

/// The ops called `names` linked into *this* binary, wrapped for the plugin
/// boundary (called through a vtable, panics caught here). A plugin calls
/// it in its registration function and hands the result to the host
/// (`registrar.add_op`): the host cannot catch a plugin's panics, and the
/// plugin's binary also holds every built-in op, which the host already has.
pub fn plugin_ops(names: &[&str]) -> Result<Vec<&'static OpEntry>, Error> {
    names
        .iter()
        .map(|&name| {
            let e = inventory::iter::<OpEntry>
                .into_iter()
                .find(|e| e.spec.name == name)
                .ok_or_else(|| {
                    Error::internal(format!("plugin_ops: no op '{name}' in this plugin"))
                })?;
            let kernel = match e.kernel {
                Kernel::Native(k) => k.downcast_ref::<TchKernel>().copied(),
                Kernel::Foreign(_) => None,
            }
            .ok_or_else(|| {
                Error::internal(format!("plugin_ops: op '{name}' has no libtorch kernel"))
            })?;
            let wrapped: &'static PluginKernel = Box::leak(Box::new(PluginKernel {
                kernel,
                name: e.spec.name,
            }));
            let entry: &'static OpEntry = Box::leak(Box::new(OpEntry::foreign(e.spec, wrapped)));
            Ok(entry)
        })
        .collect()
}

/// A libtorch error as a mymps error: the message without libtorch's C++
/// backtrace.
pub fn torch_error(e: TchError) -> Error {
    let msg = match &e {
        TchError::Torch(m) => m.clone(),
        other => other.to_string(),
    };
    let msg = msg
        .split("\nException raised from")
        .next()
        .unwrap_or(&msg)
        .trim()
        .to_owned();
    Error::backend(msg)
}

/// The libtorch kind of a dtype.
pub fn kind_of(d: DType) -> Kind {
    match d {
        DType::Bool => Kind::Bool,
        DType::UInt8 => Kind::Uint8,
        DType::Int8 => Kind::Int8,
        DType::Int16 => Kind::Int16,
        DType::Int32 => Kind::Int,
        DType::Int64 => Kind::Int64,
        DType::Float16 => Kind::Half,
        DType::BFloat16 => Kind::BFloat16,
        DType::Float32 => Kind::Float,
        DType::Float64 => Kind::Double,
        DType::Complex64 => Kind::ComplexFloat,
        DType::Complex128 => Kind::ComplexDouble,
    }
}

/// The dtype of a libtorch kind; kinds mymps does not carry (quantized,
/// float8, complex half) are an error.
pub fn dtype_of(k: Kind) -> Result<DType, Error> {
    Ok(match k {
        Kind::Bool => DType::Bool,
        Kind::Uint8 => DType::UInt8,
        Kind::Int8 => DType::Int8,
        Kind::Int16 => DType::Int16,
        Kind::Int => DType::Int32,
        Kind::Int64 => DType::Int64,
        Kind::Half => DType::Float16,
        Kind::BFloat16 => DType::BFloat16,
        Kind::Float => DType::Float32,
        Kind::Double => DType::Float64,
        Kind::ComplexFloat => DType::Complex64,
        Kind::ComplexDouble => DType::Complex128,
        other => {
            return Err(Error::invalid_tensor(format!(
                "result dtype {other:?} cannot be sent (not one of {})",
                DType::ALL.map(DType::name).join(", ")
            )));
        }
    })
}

/// An optional dtype as an optional kind.
pub fn opt_kind(d: Option<DType>) -> Option<Kind> {
    d.map(kind_of)
}

/// A mymps scalar as a libtorch scalar.
pub fn torch_scalar(s: Scalar) -> tch::Scalar {
    match s {
        Scalar::Int(i) => tch::Scalar::int(i),
        Scalar::Float(x) => tch::Scalar::float(x),
        Scalar::Bool(b) => tch::Scalar::int(b as i64),
    }
}

/// A scalar as a 0-d tensor on `like`'s device, with the dtype torch's type
/// promotion gives a Python scalar (bool, int64 or float64 "weak" scalars
/// are handled by libtorch's wrapped-number rule).
pub fn scalar_tensor(s: Scalar, like: &Tensor) -> KernelResult<Tensor> {
    let t = match s {
        Scalar::Int(i) => Tensor::f_scalar_tensor(i as f64, (Kind::Int64, like.device()))?,
        Scalar::Float(x) => Tensor::f_scalar_tensor(x, (Kind::Double, like.device()))?,
        Scalar::Bool(b) => Tensor::f_scalar_tensor(b as i64 as f64, (Kind::Bool, like.device()))?,
    };
    Ok(t)
}

/// Registers an op: name, category, one-line doc, parameters, outputs and
/// kernel (a `fn` or a closure without captures).
///
/// ```ignore
/// op!("relu", "activation", "max(input, 0)",
///     [Param::tensor("input")] -> Outputs::One,
///     |a| Ok(OpOutput::One(a.tensor("input")?.f_relu()?)));
/// ```
#[macro_export]
macro_rules! op {
    ($name:literal, $category:literal, $doc:literal, [$($param:expr),* $(,)?] -> $outputs:expr, $kernel:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::OpEntry::new(
                $crate::OpSpec {
                    name: $name,
                    category: $category,
                    doc: $doc,
                    params: &[$($param),*],
                    outputs: $outputs,
                },
                &$crate::TchKernel($kernel),
            )
        }
    };
}

/// Every op linked into this binary with a libtorch kernel.
pub fn registry() -> Result<mymps_core::OpRegistry, Error> {
    mymps_core::OpRegistry::from_inventory(has_kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ops of the first, Python-only mymps, by the same names.
    const LEGACY: [&str; 85] = [
        "abs",
        "adaptive_avg_pool2d",
        "add",
        "amax",
        "amin",
        "argmax",
        "argmin",
        "avg_pool2d",
        "bmm",
        "cat",
        "ceil",
        "cholesky",
        "chunk",
        "clamp",
        "contiguous",
        "conv1d",
        "conv2d",
        "conv3d",
        "cos",
        "cumprod",
        "cumsum",
        "det",
        "div",
        "dot",
        "eig",
        "einsum",
        "eq",
        "exp",
        "fft",
        "flatten",
        "floor",
        "ge",
        "gelu",
        "gt",
        "ifft",
        "inv",
        "irfft",
        "layer_norm",
        "le",
        "log",
        "log_softmax",
        "lt",
        "matmul",
        "max_pool2d",
        "maximum",
        "mean",
        "minimum",
        "mm",
        "mul",
        "mv",
        "ne",
        "neg",
        "norm",
        "ones_like",
        "permute",
        "pow",
        "prod",
        "qr",
        "rand_like",
        "relu",
        "remainder",
        "reshape",
        "rfft",
        "round",
        "rsqrt",
        "sigmoid",
        "sign",
        "silu",
        "sin",
        "softmax",
        "solve",
        "sort",
        "split",
        "sqrt",
        "squeeze",
        "stack",
        "sub",
        "sum",
        "svd",
        "tanh",
        "topk",
        "transpose",
        "unsqueeze",
        "where",
        "zeros_like",
    ];

    #[test]
    fn every_spec_is_valid_and_names_are_unique() {
        let r = registry().unwrap();
        assert!(r.len() >= 160, "only {} ops", r.len());
        for e in r.iter() {
            e.spec.validate().unwrap();
            assert!(
                e.spec.doc.ends_with(')') && e.spec.doc.contains("(torch."),
                "{}: the doc must end with the torch function it mirrors",
                e.spec.name
            );
        }
        let names: Vec<&str> = r.iter().map(|e| e.spec.name).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "list_ops is sorted");
    }

    #[test]
    fn every_legacy_op_is_registered() {
        let r = registry().unwrap();
        let missing: Vec<&str> = LEGACY
            .iter()
            .copied()
            .filter(|n| r.get(n).is_none())
            .collect();
        assert!(missing.is_empty(), "missing legacy ops: {missing:?}");
    }

    #[test]
    fn kinds_round_trip() {
        for d in DType::ALL {
            assert_eq!(dtype_of(kind_of(d)).unwrap(), d);
        }
    }
}
