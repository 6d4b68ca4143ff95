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
//! No request can kill or hold the server through a kernel: inputs have at
//! most [`MAX_DIMS`] dimensions, and so do the shapes ops are asked to make
//! (`repeat`, `reshape`, `roll`, ...); an op returns at most
//! [`MAX_OUTPUTS`] tensors; an integer division by zero or of MIN by -1
//! (which libtorch's CPU kernels execute as a trapping x86 `idiv`) is an
//! error on every device; a kernel's panic is an error; libtorch's
//! messages reach clients through [`client_message`].
//!
//! Kernels never write to their inputs (on the CPU they are views of the
//! received buffers) and create new tensors on the input's device. Where
//! libtorch's C API lacks an overload (parametrized `leaky_relu`, `elu`,
//! `softplus`, ...; `addmm` with `beta`/`alpha`; `trapezoid` with `dx`)
//! the kernel composes torch's own formula, and the Python conformance suite
//! (`tests/python/ops`) checks it against PyTorch.
//!
//! Each op's declaration states what the server needs to know about it, in
//! its spec and kernel, not in tables elsewhere: its [`Cost`] class (which
//! ops may run on the server's I/O thread, and how large the outputs of
//! one the backend cannot estimate can be) and, for a unary op, its
//! in-place variant ([`InPlaceFn`], torch's `op_`), which the backend runs
//! in a received buffer that only the request holds. The category only
//! groups ops in listings. The tables' modules default the cost by what
//! they hold (`arithmetic`, `elementwise`, `activation`, `comparison`:
//! [`Cost::Elementwise`]; `reduction`: [`Cost::Reduction`]; the rest
//! [`Cost::Heavy`]), and an op whose work is not that says so (`sort`,
//! `topk`, `median`, `diff`, `norm`: `cost: Heavy`).
//!
//! Third-party op crates depend on this crate and use [`op!`] the same way
//! (their ops are [`Cost::Heavy`] unless they state otherwise); linking
//! them into the server binary is enough to register their ops.
//!
//! ```ignore
//! mymps_ops::op!("double", "custom", "2 × input",
//!     [Param::tensor("input")] -> Outputs::One,
//!     |a| Ok(OpOutput::One(a.tensor("input")?.f_mul_scalar(2)?)),
//!     cost: Elementwise,
//!     in_place: |t| Ok(t.f_mul_scalar_(2)?));
//! ```
#![warn(missing_docs)]

use mymps_core::{DType, Error};
use tch::{Kind, TchError, Tensor};

pub use inventory;
pub use mymps_core::ops::{
    Args, Cost, ForeignKernel, Kernel, OpEntry, OpOutput, OpSpec, Outputs, Param, Scalar,
    TensorOrScalar,
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

/// The in-place variant of a unary op's kernel (torch's `op_`, as in
/// `|t| Ok(t.f_neg_()?)`), as candle's in-place custom ops carry theirs.
///
/// The backend calls it only on a contiguous real floating-point tensor
/// (float16, bfloat16, float32, float64) whose memory it owns exclusively
/// (a received buffer that nothing else refers to, see
/// [`mymps_core::buffer::LargeBuf`]), and sends the result from that
/// memory. It must compute in `t` what the op's kernel gives for `t`, with
/// the same dtype and shape, and return `t` (or a tensor over the same
/// memory); anything else is run again through the kernel.
pub type InPlaceFn = fn(&mut Tensor) -> KernelResult<Tensor>;

/// A libtorch kernel, as stored (type-erased) in an [`OpEntry`]: the
/// kernel and, for a unary op that has one, its in-place variant. The tch
/// backend runs every entry whose kernel is a `TchKernel`.
#[derive(Clone, Copy)]
pub struct TchKernel {
    run: KernelFn,
    in_place: Option<InPlaceFn>,
}

impl TchKernel {
    /// A kernel and its in-place variant, if it has one ([`op!`] checks,
    /// when it compiles the op, that only unary ops have one).
    pub const fn new(run: KernelFn, in_place: Option<InPlaceFn>) -> TchKernel {
        TchKernel { run, in_place }
    }

    /// Runs the kernel. A panic becomes an error: tch panics when a call
    /// that takes a scalar fails (it frees the scalar, which checks
    /// libtorch's error flag, before it reads the error), and that panic
    /// carries libtorch's whole message, backtrace included.
    pub fn call(&self, args: &Args<Tensor>) -> KernelResult<OpOutput<Tensor>> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.run)(args)))
            .unwrap_or_else(|p| Err(KernelError(kernel_panic(args.spec().name, &*p))))
    }

    /// Whether the kernel has an in-place variant.
    pub fn has_in_place(&self) -> bool {
        self.in_place.is_some()
    }

    /// Runs the in-place variant on `t` (see [`InPlaceFn`] for what `t`
    /// must be); `None` if there is none. Panics become errors, as in
    /// [`TchKernel::call`].
    pub fn call_in_place(&self, op: &str, t: &mut Tensor) -> Option<KernelResult<Tensor>> {
        let f = self.in_place?;
        Some(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(t)))
                .unwrap_or_else(|p| Err(KernelError(kernel_panic(op, &*p)))),
        )
    }
}

/// A kernel's panic as an error: libtorch's error that tch panicked with
/// (see [`TchKernel::call`]) as a backend error, anything else as an
/// internal one; either way without backtraces, the full text logged.
fn kernel_panic(op: &str, p: &(dyn std::any::Any + Send)) -> Error {
    let msg = mymps_core::plugin::panic_message(p);
    // `called `Result::unwrap()` on an `Err` value: Torch("…")`, the
    // message in Rust's debug quoting.
    if let Some((_, quoted)) = msg.split_once("Torch(\"") {
        let torch = unquote(quoted.strip_suffix("\")").unwrap_or(quoted));
        tracing::debug!(op, error = %torch, "libtorch error (through a tch panic)");
        return Error::backend(client_message(&torch));
    }
    tracing::warn!(op, panic = %msg, "kernel panicked");
    Error::internal(format!("op '{op}' panicked: {}", client_message(&msg)))
}

/// Undoes Rust's `{:?}` quoting of a string (`\n`, `\"`, `\u{..}`, ...).
fn unquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let hex: String = chars
                    .by_ref()
                    .skip_while(|&c| c == '{')
                    .take_while(|&c| c != '}')
                    .collect();
                if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(c);
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The most dimensions a tensor may have, in and out of an op. libtorch's
/// reductions, permutations and CUDA kernels stop at 64 (its dimension
/// bitset), and its time per op grows with the square of the number of
/// dimensions: `repeat` to 20,000 dimensions took 6.5 s, an `add` on a
/// 20,000-dimensional tensor 0.6 s.
pub const MAX_DIMS: usize = 64;

/// The most tensors an op may return: what one frame carries (its tensor
/// count is a `u16`).
pub const MAX_OUTPUTS: usize = u16::MAX as usize;

/// Refuses inputs of more than [`MAX_DIMS`] dimensions, before any kernel.
fn check_inputs(args: &Args<Tensor>) -> KernelResult<()> {
    match args.all_tensors().map(Tensor::dim).max() {
        Some(n) if n > MAX_DIMS => Err(KernelError(Error::invalid_tensor(format!(
            "{}(): an input has {n} dimensions; at most {MAX_DIMS} are supported",
            args.spec().name
        )))),
        _ => Ok(()),
    }
}

/// What a foreign (plugin) kernel writes into its result slot.
type ForeignOut = Option<KernelResult<OpOutput<Tensor>>>;
/// What a foreign kernel's in-place variant writes into its result slot.
type ForeignInPlaceOut = Option<KernelResult<Tensor>>;

/// Runs whichever libtorch kernel `entry` holds; `None` if it holds none.
pub fn run_kernel(entry: &OpEntry, args: &Args<Tensor>) -> Option<KernelResult<OpOutput<Tensor>>> {
    if has_kernel(entry)
        && let Err(e) = check_inputs(args)
    {
        return Some(Err(e));
    }
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

/// Whether `entry` has a libtorch kernel with an in-place variant, for a
/// unary op (see [`InPlaceFn`]).
pub fn has_in_place(entry: &OpEntry) -> bool {
    entry.spec.is_unary()
        && match entry.kernel {
            Kernel::Native(k) => k
                .downcast_ref::<TchKernel>()
                .is_some_and(|k| k.has_in_place()),
            Kernel::Foreign(k) => k.backend() == BACKEND && k.has_in_place(),
        }
}

/// Runs the in-place variant of `entry`'s kernel on `t`, which must be
/// what [`InPlaceFn`] says; `None` when it has none (see [`has_in_place`]).
pub fn run_in_place(entry: &OpEntry, t: &mut Tensor) -> Option<KernelResult<Tensor>> {
    if !has_in_place(entry) {
        return None;
    }
    match entry.kernel {
        Kernel::Native(k) => k
            .downcast_ref::<TchKernel>()?
            .call_in_place(entry.spec.name, t),
        Kernel::Foreign(k) => {
            let mut out: ForeignInPlaceOut = None;
            // SAFETY: the tch plugin interface: `tch::Tensor` in,
            // `ForeignInPlaceOut` out; the plugin header check guarantees
            // both sides were built from the same versions.
            unsafe {
                k.call_in_place(
                    t as *mut Tensor as *mut (),
                    &mut out as *mut ForeignInPlaceOut as *mut (),
                )
            };
            Some(out.unwrap_or_else(|| {
                Err(KernelError(Error::internal(format!(
                    "op '{}' returned nothing in place",
                    entry.spec.name
                ))))
            }))
        }
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

    fn has_in_place(&self) -> bool {
        self.kernel.has_in_place()
    }

    unsafe fn call_in_place(&self, tensor: *mut (), out: *mut ()) {
        // SAFETY: per `ForeignKernel::call_in_place`'s contract.
        let (t, out) = unsafe {
            (
                &mut *(tensor as *mut Tensor),
                &mut *(out as *mut ForeignInPlaceOut),
            )
        };
        *out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.kernel.call_in_place(self.name, t)
        }))
        .unwrap_or_else(|p| {
            Some(Err(KernelError(Error::internal(format!(
                "op '{}' panicked: {}",
                self.name,
                mymps_core::plugin::panic_message(&*p)
            )))))
        });
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

/// A libtorch error as a mymps error ([`ErrorCode::Backend`](mymps_core::ErrorCode::Backend)):
/// the message as [`client_message`] keeps it; the full text, backtrace
/// included, is logged at debug level. Every libtorch error on its way to
/// a client goes through here (kernels' `?` does).
pub fn torch_error(e: TchError) -> Error {
    let raw = match &e {
        TchError::Torch(m) => m.clone(),
        other => other.to_string(),
    };
    let msg = client_message(&raw);
    if msg.len() < raw.trim_end().len() {
        tracing::debug!(error = %raw, "libtorch error (full text)");
    }
    Error::backend(msg)
}

/// The most bytes of a libtorch message that reach a client.
pub const MAX_CLIENT_MESSAGE: usize = 300;

/// What a client is shown of a libtorch (C++) error message: the message
/// itself, on one line, at most [`MAX_CLIENT_MESSAGE`] bytes. Dropped: the
/// backtrace c10 appends (`Exception raised from … (most recent call
/// first):` and `frame #N: … (0x7f… in /path/to/libtorch_cpu.so)` lines,
/// with or without `TORCH_SHOW_CPP_STACKTRACES`), whatever follows a blank
/// line (the dispatcher's list of kernel registrations, with source
/// paths), a leading source location (`/pytorch/…/File.cpp:123: `) and
/// anything that looks like an address. Of a TorchScript interpreter
/// error, the error line that ends its script traceback.
pub fn client_message(raw: &str) -> String {
    let is_backtrace = |l: &str| {
        l.starts_with("Exception raised from")
            || l.starts_with("frame #")
            || l.contains("(most recent call first)")
    };
    let lines: Vec<&str> = raw
        .lines()
        .map(str::trim)
        .take_while(|l| !is_backtrace(l))
        .collect();
    let script_error = raw
        .contains("Traceback of TorchScript")
        .then(|| {
            lines.iter().rev().find(|l| {
                l.split_once(": ")
                    .is_some_and(|(k, _)| k.ends_with("Error"))
            })
        })
        .flatten();
    let kept: Vec<&str> = match script_error {
        Some(l) => vec![l],
        None => lines
            .iter()
            .copied()
            .skip_while(|l| l.is_empty())
            .take_while(|l| !l.is_empty())
            .collect(),
    };
    let mut msg = scrub_addresses(strip_location(&kept.join(" ")));
    if msg.is_empty() {
        msg = "libtorch error".to_owned();
    }
    if msg.len() > MAX_CLIENT_MESSAGE {
        let mut end = MAX_CLIENT_MESSAGE - '…'.len_utf8();
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push('…');
    }
    msg
}

/// `msg` without a leading `/source/path.cpp:123: ` (some libtorch checks
/// start their message with where they are).
fn strip_location(msg: &str) -> &str {
    if !msg.starts_with('/') {
        return msg;
    }
    let Some((head, rest)) = msg.split_once(": ") else {
        return msg;
    };
    match head.rsplit_once(':') {
        Some((path, line))
            if !path.contains(' ')
                && !line.is_empty()
                && line.bytes().all(|b| b.is_ascii_digit()) =>
        {
            rest
        }
        _ => msg,
    }
}

/// `msg` with hexadecimal numbers of 6 digits or more (addresses) as `<address>`.
fn scrub_addresses(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("0x") {
        let digits = rest[i + 2..]
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .count();
        let (end, keep) = if digits >= 6 {
            (i + 2 + digits, false)
        } else {
            (i + 2, true)
        };
        out.push_str(&rest[..i]);
        out.push_str(if keep { &rest[i..end] } else { "<address>" });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
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
/// kernel (a `fn` or a closure without captures), then, optionally and in
/// this order, its cost class (`cost: Elementwise`, a [`Cost`] variant;
/// [`Cost::Heavy`] when not given) and its in-place variant
/// (`in_place: f`, an [`InPlaceFn`]; only for an op of one tensor in and
/// one out, which is checked when the op compiles).
///
/// ```ignore
/// op!("relu", "activation", "max(input, 0)",
///     [Param::tensor("input")] -> Outputs::One,
///     |a| Ok(OpOutput::One(a.tensor("input")?.f_relu()?)),
///     cost: Elementwise,
///     in_place: |t| Ok(t.f_relu_()?));
/// ```
///
/// The category only groups ops in listings; what the server decides from
/// (running on its I/O thread, bounding unestimated outputs) is the cost.
/// State a linear class only when it holds for every argument: see
/// [`Cost`].
#[macro_export]
macro_rules! op {
    (@pick $default:ident) => { $crate::Cost::$default };
    (@pick $default:ident $cost:ident) => { $crate::Cost::$cost };
    (@in_place) => { ::core::option::Option::None };
    (@in_place $f:expr) => { ::core::option::Option::Some($f) };
    // `$default` is the cost when the declaration states none: Heavy, or a
    // module's own default for the built-in tables.
    (@cost $default:ident; $name:literal, $category:literal, $doc:literal,
        [$($param:expr),* $(,)?] -> $outputs:expr, $kernel:expr
        $(, cost: $cost:ident)? $(, in_place: $in_place:expr)? $(,)?) => {
        $crate::inventory::submit! {
            {
                const SPEC: $crate::OpSpec =
                    $crate::OpSpec::new($name, $category, $doc, &[$($param),*], $outputs)
                        .with_cost($crate::op!(@pick $default $($cost)?));
                const IN_PLACE: ::core::option::Option<$crate::InPlaceFn> =
                    $crate::op!(@in_place $($in_place)?);
                const _: () = ::core::assert!(
                    IN_PLACE.is_none() || SPEC.is_unary(),
                    ::core::concat!("op '", $name, "': only an op of one tensor in and one out may have an in-place variant")
                );
                $crate::OpEntry::new(SPEC, &$crate::TchKernel::new($kernel, IN_PLACE))
            }
        }
    };
    ($name:literal, $($declaration:tt)*) => { $crate::op! { @cost Heavy; $name, $($declaration)* } };
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
    fn cost_classes_are_declared_where_the_work_is() {
        let r = registry().unwrap();
        let cost = |name: &str| r.get(name).unwrap_or_else(|| panic!("{name}")).spec.cost;
        // Element-wise by their tables' default, unary! ops included.
        for name in [
            "add",
            "div",
            "float_power",
            "clamp",
            "where",
            "abs",
            "exp",
            "eq",
            "isclose",
            "relu",
            "gelu",
            "dropout",
        ] {
            assert_eq!(cost(name), Cost::Elementwise, "{name}");
        }
        for name in [
            "sum", "argmax", "cumsum", "var_mean", "max", "softmax", "glu", "prelu",
        ] {
            assert_eq!(cost(name), Cost::Reduction, "{name}");
        }
        // Elementwise-like categories, work that is not: they say so.
        for name in [
            "sort",
            "argsort",
            "msort",
            "topk",
            "isin",
            "median",
            "nanmedian",
            "mode",
            "kthvalue",
            "quantile",
            "nanquantile",
            "norm",
            "diff",
        ] {
            assert_eq!(cost(name), Cost::Heavy, "{name}");
        }
        // Every other table is heavy (the op! default), whatever it holds.
        let linear_tables = [
            "arithmetic",
            "elementwise",
            "activation",
            "comparison",
            "reduction",
        ];
        for e in r.iter() {
            if !linear_tables.contains(&e.spec.category) {
                assert_eq!(e.spec.cost, Cost::Heavy, "{}", e.spec.name);
            }
        }
    }

    #[test]
    fn in_place_variants_belong_to_unary_ops() {
        let r = registry().unwrap();
        let with: Vec<&str> = r
            .iter()
            .filter(|e| has_in_place(e))
            .map(|e| e.spec.name)
            .collect();
        assert_eq!(
            with,
            [
                "abs",
                "acos",
                "asin",
                "atan",
                "ceil",
                "cos",
                "cosh",
                "erf",
                "erfc",
                "exp",
                "exp2",
                "expm1",
                "floor",
                "frac",
                "log",
                "log10",
                "log1p",
                "log2",
                "neg",
                "reciprocal",
                "relu",
                "rsqrt",
                "sigmoid",
                "sign",
                "sin",
                "sinh",
                "sqrt",
                "square",
                "tan",
                "tanh",
                "trunc",
            ]
        );
        for e in r.iter().filter(|e| has_in_place(e)) {
            assert!(
                e.spec.is_unary() && e.spec.cost == Cost::Elementwise,
                "{}",
                e.spec.name
            );
        }
        // The variant computes in its tensor what the kernel returns.
        let x = Tensor::from_slice(&[0.25f32, 0.5, 2.0]);
        let entry = r.get("sqrt").unwrap();
        let mut y = x.copy();
        let z = run_in_place(entry, &mut y).unwrap().unwrap();
        assert_eq!(z.data_ptr(), y.data_ptr(), "in place");
        let OpOutput::One(want) = util::run("sqrt", vec![("0", x)], &[]).unwrap() else {
            panic!()
        };
        assert!(z.equal(&want));
        assert!(run_in_place(r.get("sum").unwrap(), &mut y).is_none());
    }

    #[test]
    fn plugin_ops_keep_their_cost_and_in_place_variant_across_the_vtable() {
        let ops = plugin_ops(&["neg", "sort"]).unwrap();
        let (neg, sort) = (ops[0], ops[1]);
        assert!(matches!(neg.kernel, Kernel::Foreign(_)));
        assert_eq!(
            (neg.spec.cost, sort.spec.cost),
            (Cost::Elementwise, Cost::Heavy)
        );
        assert!(has_in_place(neg) && !has_in_place(sort));
        let mut x = Tensor::from_slice(&[1.0f64, -2.0]);
        let y = run_in_place(neg, &mut x).unwrap().unwrap();
        assert_eq!(
            y.data_ptr(),
            x.data_ptr(),
            "in place, through the plugin boundary"
        );
        assert_eq!(Vec::<f64>::try_from(&x).unwrap(), [-1.0, 2.0]);
        // An error comes back as one (neg of bool is refused by libtorch).
        let mut b = Tensor::from_slice(&[true]);
        let e = run_in_place(neg, &mut b).unwrap().unwrap_err();
        assert_eq!(e.0.code, mymps_core::ErrorCode::Backend, "{}", e.0);
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

    /// A libtorch error as tch hands it over, backtrace and all.
    fn raw_error() -> String {
        let a = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([3, 1], (Kind::Float, tch::Device::Cpu));
        match a.f_matmul(&b) {
            Err(TchError::Torch(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn assert_clean(m: &str) {
        for leak in ["frame #", "0x", "Exception raised from", ".so", "\n"] {
            assert!(!m.contains(leak), "{leak:?} in {m:?}");
        }
        assert!(m.len() <= MAX_CLIENT_MESSAGE, "{} bytes: {m:?}", m.len());
    }

    #[test]
    fn client_messages_keep_the_message_and_drop_the_backtrace() {
        let raw = raw_error();
        assert!(raw.contains("frame #") && raw.len() > 1000, "{raw}");
        let m = client_message(&raw);
        assert_eq!(m, "mat1 and mat2 shapes cannot be multiplied (2x2 and 3x1)");
        assert_eq!(torch_error(TchError::Torch(raw)).message, m);
        // Frames without the "Exception raised from" line, a caffe2-style
        // enforce, a dispatcher error with its registrations after a blank
        // line, a leading source location, a message of two lines.
        let frames = "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory\nframe #0: c10::ThrowEnforceNotMet(char const*, int) + 0x4f (0x7f5e02f0505d in /opt/x/libc10.so)\n";
        let dispatch = "Could not run 'aten::foo' with arguments from the 'CUDA' backend.\n\nCPU: registered at /pytorch/build/aten/src/ATen/RegisterCPU_0.cpp:12 [kernel]\nMeta: registered at /pytorch/build/aten/src/ATen/RegisterMeta.cpp:9 [kernel]\n";
        let located = "/pytorch/build/aten/src/ATen/RegisterCPU_3.cpp:5275: SymIntArrayRef expected to contain only concrete integers";
        let two = "unflatten got an unexpected error:\nsizes don't multiply up\nException raised from unflatten at /pytorch/x.cpp:1 (most recent call first):\nframe #0: f + 0x1 (0x7f00 in /a/libtorch_cpu.so)";
        let script = "The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript (most recent call last):\n  File \"code/__torch__.py\", line 8, in forward\n    return torch.mm(x, w)\nRuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)\n";
        let address = "bad pointer 0x7f5e02f0505d here, 0x1 is fine";
        for (raw, want) in [
            (
                frames,
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory",
            ),
            (
                dispatch,
                "Could not run 'aten::foo' with arguments from the 'CUDA' backend.",
            ),
            (
                located,
                "SymIntArrayRef expected to contain only concrete integers",
            ),
            (
                two,
                "unflatten got an unexpected error: sizes don't multiply up",
            ),
            (
                script,
                "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)",
            ),
            (address, "bad pointer <address> here, 0x1 is fine"),
            ("frame #0: only a backtrace", "libtorch error"),
        ] {
            assert_eq!(client_message(raw), want);
        }
        // Long messages are cut at a character boundary.
        let long = "é".repeat(400);
        let m = client_message(&long);
        assert!(m.len() <= MAX_CLIENT_MESSAGE && m.ends_with('…'), "{m}");
        for raw in [frames, dispatch, located, two, script] {
            assert_clean(&client_message(raw));
        }
    }

    #[test]
    fn a_failing_call_with_a_scalar_is_a_clean_backend_error() {
        // tch panics here (it frees the scalar before it reads the error);
        // the kernel's caller gets the error, without the backtrace.
        let x = Tensor::zeros([2], (Kind::ComplexFloat, tch::Device::Cpu));
        let e = util::run("remainder", vec![("0", x)], &[("other", 2.into())]).unwrap_err();
        assert_eq!(e.0.code, mymps_core::ErrorCode::Backend, "{}", e.0);
        assert!(
            e.0.message.contains("not implemented for 'ComplexFloat'"),
            "{}",
            e.0
        );
        assert_clean(&e.0.message);
        assert_eq!(unquote(r#"a\"b\\c\nd\u{e9}"#), "a\"b\\c\nd\u{e9}");
    }

    #[test]
    fn kinds_round_trip() {
        for d in DType::ALL {
            assert_eq!(dtype_of(kind_of(d)).unwrap(), d);
        }
    }
}
