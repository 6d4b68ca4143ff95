//! # mymps-backend-tch
//!
//! The [`Backend`] over libtorch (the `tch` crate): device choice, host ⇄
//! device transfer, per-op CPU fallback.
//!
//! - Devices: `auto` (MPS, then CUDA, then CPU), `cpu`, `cuda`, `cuda:N`,
//!   `mps`.
//! - Inputs become libtorch tensors without per-element work: on the CPU a
//!   tensor is a view of the received buffer; for CUDA one of 64 KiB or
//!   more is staged through pinned memory, a smaller one copied as it is
//!   (see `pinned_min`). Results go back as views of libtorch's own memory
//!   (copied device → host first on CUDA, through pinned memory from
//!   64 KiB), so the transport sends them without another copy.
//! - An op the device has no kernel for runs again on the CPU; the reply
//!   names the device that ran it.
//! - On the CPU, a unary op that declares an in-place variant
//!   ([`mymps_ops::InPlaceFn`], torch's `op_`) runs it on a large float
//!   input whose memory the call holds alone
//!   ([`LargeBuf::reclaim`](mymps_core::buffer::LargeBuf::reclaim): the
//!   `Bytes`' reference count, not a convention, says so): the reply is sent
//!   from the request's memory and the call allocates nothing.
//! - Received buffers that nothing refers to any more go back to the pool
//!   of large buffers ([`mymps_core::buffer`]) when the last result that may
//!   view them is dropped.
//! - Server-resident tensors ([`Resident`]) are libtorch tensors on the
//!   server's device: an op on them runs there and a kept result stays
//!   there, so a chain of ops copies nothing between host and device
//!   between its steps. On the CPU a kept tensor owns its memory (a small
//!   received tensor is copied out of the read buffer it was sliced from,
//!   a result that views a request's buffer is copied), so that what it
//!   counts for in the server's budget is what it holds.
//! - Every libtorch call is fallible (`f_*`); errors become error replies.
#![warn(missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use mymps_core::backend::{AcceleratorMemory, Backend, BackendInfo, ExecOutput};
use mymps_core::buffer::{LARGE, LargeBuf};
use mymps_core::ops::{Args, OpEntry, OpRegistry};
use mymps_core::resident::OperandOutput;
use mymps_core::{DType, Error, ErrorCode, Operand, Resident, Result};
use mymps_ops::{KernelError, dtype_of, kind_of, torch_error};
use tch::{Device, Tensor};

mod estimate;

/// The libtorch version this crate is built against (tch 0.24 requires
/// exactly this version).
pub const TORCH_VERSION: &str = "2.11.0";

/// The tch / libtorch build, as plugins must match it.
pub const TCH_VERSION: &str = "tch 0.24.0, libtorch 2.11.0";
/// [`TCH_VERSION`] as a C string, for `mymps_core::declare_plugin!`.
pub const TCH_VERSION_C: &std::ffi::CStr = c"tch 0.24.0, libtorch 2.11.0";

/// Asks libtorch to back CPU tensors of 2 MiB or more with transparent
/// huge pages (its `THP_MEM_ALLOC_ENABLE` setting), unless the environment
/// already sets it. Fresh memory costs a page fault per page on first
/// touch; with huge pages a 64 MiB tensor takes 32 faults instead of
/// 16,384, which is most of the time of a large element-wise op on a fresh
/// output. libtorch reads the setting once, at its first CPU allocation,
/// so call this first thing in `main`. `mymps serve` does.
///
/// # Safety
///
/// It sets an environment variable: no other thread may be running (see
/// [`std::env::set_var`]).
pub unsafe fn prefer_huge_pages() {
    const VAR: &str = "THP_MEM_ALLOC_ENABLE";
    if std::env::var_os(VAR).is_none() {
        // SAFETY: the caller guarantees that no other thread runs.
        unsafe { std::env::set_var(VAR, "1") };
    }
}

/// Parses a device name: `auto`, `cpu`, `cuda`, `cuda:N`, `mps`.
pub fn parse_device(name: &str) -> Result<Device> {
    let unavailable = |what: &str| {
        Error::new(
            ErrorCode::Unsupported,
            format!("device '{name}' is not available: {what}"),
        )
    };
    match name {
        "auto" => Ok(if tch::utils::has_mps() {
            Device::Mps
        } else if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        "mps" if tch::utils::has_mps() => Ok(Device::Mps),
        "mps" => Err(unavailable(
            "this libtorch has no MPS support or this is not an Apple Silicon Mac",
        )),
        _ => {
            let index = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| bad_device(name))?,
                None => return Err(bad_device(name)),
            };
            if !tch::Cuda::is_available() {
                return Err(unavailable(
                    "CUDA is not available (no NVIDIA GPU, driver or CUDA build of libtorch)",
                ));
            }
            let count = tch::Cuda::device_count();
            if index as i64 >= count {
                return Err(unavailable(&format!(
                    "this machine has {count} CUDA device(s)"
                )));
            }
            Ok(Device::Cuda(index))
        }
    }
}

fn bad_device(name: &str) -> Error {
    Error::bad_argument(format!(
        "unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps"
    ))
}

/// A device's name as mymps writes it (`cpu`, `cuda:0`, `mps`).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// Received buffers that libtorch views of them need alive. When the last
/// holder drops, those that nothing else refers to go back to the pool
/// (through [`LargeBuf::reclaim`], which only succeeds for memory whose
/// every other handle is gone).
#[derive(Default)]
struct Kept(Vec<Bytes>);

impl Drop for Kept {
    fn drop(&mut self) {
        for b in self.0.drain(..) {
            // A reclaimed buffer goes to the pool as it drops; one still
            // shared just loses this handle.
            let _ = LargeBuf::reclaim(b);
        }
    }
}

/// Owns the memory a result's bytes live in: the libtorch tensor, and the
/// received buffers it may be a view of (dropped after the tensor: fields
/// drop in order).
struct TensorBytes {
    tensor: Tensor,
    len: usize,
    _inputs: Arc<Kept>,
}

impl AsRef<[u8]> for TensorBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `tensor` is a contiguous CPU tensor of `len` bytes that this
        // struct keeps alive, and nothing writes to it after it was built.
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.len) }
    }
}

/// Bytes in 8-byte-aligned memory (the first `.1` bytes of the words).
struct AlignedBytes(Vec<u64>, usize);

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..self.1]
    }
}

/// A CPU libtorch tensor over `ptr` with `dtype`, `shape` and element
/// `strides`.
///
/// # Safety
///
/// `ptr` must point to memory that holds every element the layout reaches
/// (as a host tensor's layout is validated against its buffer when it is
/// built), alive for as long as the tensor made here or any view of it is
/// used, and written, if at all, only through them, by the holder of the
/// memory's only handle.
unsafe fn host_view(
    dtype: DType,
    shape: &[usize],
    strides: &[usize],
    ptr: *const u8,
) -> Result<Tensor> {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let strides: Vec<i64> = strides.iter().map(|&s| s as i64).collect();
    // SAFETY: see the function's contract.
    unsafe { Tensor::f_from_blob(ptr, &shape, &strides, kind_of(dtype), Device::Cpu) }
        .map_err(torch_error)
}

/// An input held by the converter alone, viewed by a libtorch tensor that
/// may write to it (the in-place path).
struct Exclusive {
    buf: LargeBuf,
    dtype: DType,
    shape: Vec<usize>,
}

/// Converts host tensors to libtorch tensors on one device, and back.
pub struct Converter {
    device: Device,
    /// Received buffers that CPU tensors are views of.
    inputs: Kept,
    /// The input taken over by [`Converter::upload_exclusive`].
    exclusive: Option<Exclusive>,
}

impl Converter {
    /// A converter for `device`.
    pub fn new(device: Device) -> Converter {
        Converter {
            device,
            inputs: Kept::default(),
            exclusive: None,
        }
    }

    /// [`Converter::upload`] on the CPU, except that an input whose memory
    /// nothing else refers to ([`LargeBuf::reclaim`]) is taken over: the
    /// converter then holds it alone, and the view it returns may be
    /// written (see [`Converter::take_in_place`]). At most one input is
    /// taken over; a contiguous one, aligned for its dtype.
    fn upload_exclusive(&mut self, t: mymps_core::Tensor) -> Result<Tensor> {
        let aligned = (t.data().as_ptr() as usize) % t.dtype().itemsize() == 0;
        if self.device != Device::Cpu
            || self.exclusive.is_some()
            || !t.is_contiguous()
            || t.numel() == 0
            || !aligned
        {
            return self.upload(t);
        }
        let (dtype, shape) = (t.dtype(), t.shape().to_vec());
        match LargeBuf::reclaim(t.into_data()) {
            Ok(mut buf) => {
                let ptr = buf.as_mut_slice().as_mut_ptr();
                let strides = mymps_core::tensor::contiguous_strides(&shape);
                // SAFETY: `buf` holds the tensor's bytes (its length was
                // checked against the shape when the tensor was built) and
                // is the only handle to them (`LargeBuf`); it is kept in
                // `self.exclusive` for as long as the view is used (the
                // result is built from it after every view is dropped), and
                // nothing else writes to it. Moving the `LargeBuf` does not
                // move its memory.
                let view = unsafe { host_view(dtype, &shape, &strides, ptr)? };
                self.exclusive = Some(Exclusive { buf, dtype, shape });
                Ok(view)
            }
            Err(bytes) => self.upload(mymps_core::Tensor::new(dtype, &shape, bytes)?),
        }
    }

    /// The result of an op run in place in the input taken over by
    /// [`Converter::upload_exclusive`]: sent from that memory when `y` is
    /// the input itself (every view of it dropped first), else downloaded
    /// as any result.
    fn take_in_place(&mut self, y: Tensor) -> Result<mymps_core::Tensor> {
        let Some(ex) = self.exclusive.take() else {
            return self.download(y);
        };
        let same = y.device() == Device::Cpu
            && y.data_ptr() as *const u8 == ex.buf.as_ref().as_ptr()
            && dtype_of(y.kind()).ok() == Some(ex.dtype)
            && y.size()
                .iter()
                .map(|&d| d as usize)
                .eq(ex.shape.iter().copied())
            && y.is_contiguous();
        if same {
            drop(y);
            // Shared from here on (never written again); back to the pool
            // when the reply is sent.
            return mymps_core::Tensor::new(ex.dtype, &ex.shape, ex.buf.share());
        }
        // Another tensor (perhaps a view of the input): a result like any.
        self.inputs.0.push(ex.buf.share());
        self.download(y)
    }

    /// A host tensor as a libtorch tensor on the device. On the CPU the
    /// result is a view of the host buffer (kept alive by the converter);
    /// kernels must not write to their inputs.
    pub fn upload(&mut self, t: mymps_core::Tensor) -> Result<Tensor> {
        let kind = kind_of(t.dtype());
        let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        if t.numel() == 0 {
            return Tensor::f_empty(&shape, (kind, self.device)).map_err(torch_error);
        }
        // The received buffer, as it is: never more than was received,
        // whatever the strides make of it (a stride-0 view of a few bytes
        // may describe terabytes), so a view is never densified on the host.
        let base = if (t.data().as_ptr() as usize) % t.dtype().itemsize() != 0 {
            // Misaligned (a small tensor sliced out of a read buffer): copy
            // the buffer into aligned memory.
            let words = t.data().len().div_ceil(8);
            let mut aligned: Vec<u64> = Vec::new();
            aligned.try_reserve_exact(words).map_err(|_| {
                Error::new(
                    ErrorCode::Backend,
                    format!("cannot allocate {} bytes", t.data().len()),
                )
            })?;
            aligned.resize(words, 0);
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..t.data().len()]
                .copy_from_slice(t.data());
            Bytes::from_owner(AlignedBytes(aligned, t.data().len()))
        } else {
            t.data().clone()
        };
        let strides = t.strides_or_contiguous();
        // SAFETY (both views): `base` holds every element of `t`'s layout
        // (validated when `t` was built; the copy holds the same bytes), is
        // kept alive in `self.inputs` for as long as any tensor made here is
        // used, and kernels only read it.
        let view = |dtype, shape: &[usize], strides: &[usize]| unsafe {
            host_view(dtype, shape, strides, base.as_ptr())
        };
        let on_device = match self.device {
            Device::Cpu => None,
            _ if !t.is_contiguous() => {
                // A view (transposed, broadcast): its bytes go to the device
                // as they are and the view is rebuilt there (`to` would give
                // a stride-0 view a destination of the same layout, which
                // libtorch refuses to write).
                let raw = view(mymps_core::DType::UInt8, &[base.len()], &[1])?;
                let on = match self.device {
                    Device::Cuda(_) if base.len() >= pinned_min() => raw
                        .f_pin_memory(self.device)
                        .and_then(|p| p.f_to_device_(self.device, tch::Kind::Uint8, true, false)),
                    d => raw.f_to_device(d),
                };
                let st: Vec<i64> = strides.iter().map(|&s| s as i64).collect();
                Some(
                    on.and_then(|d| d.f_view_dtype(kind))
                        .and_then(|d| d.f_as_strided(&shape, &st, 0))
                        .map_err(torch_error)?,
                )
            }
            _ => None,
        };
        let out = match on_device {
            Some(d) => d,
            None => {
                let cpu = view(t.dtype(), t.shape(), &strides)?;
                match self.device {
                    Device::Cpu => cpu,
                    Device::Cuda(_) if base.len() >= pinned_min() => {
                        // Pinned staging: host → pinned is a memcpy, pinned →
                        // device runs at full PCIe speed and asynchronously.
                        let pinned = cpu.f_pin_memory(self.device).map_err(torch_error)?;
                        pinned
                            .f_to_device_(self.device, kind, true, false)
                            .map_err(torch_error)?
                    }
                    d => cpu.f_to_device(d).map_err(torch_error)?,
                }
            }
        };
        self.inputs.0.push(base);
        drop(t);
        Ok(out)
    }

    /// A libtorch result as a host tensor, without copying on the CPU.
    pub fn download(&self, t: Tensor) -> Result<mymps_core::Tensor> {
        let dtype = dtype_of(t.kind())?;
        let t = t
            .f_resolve_conj()
            .and_then(|t| t.f_resolve_neg())
            .map_err(torch_error)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let nbytes = t.numel() * dtype.itemsize();
        let t = match t.device() {
            Device::Cpu => t.f_contiguous().map_err(torch_error)?,
            Device::Cuda(_) if nbytes >= pinned_min() => {
                // Device → pinned host memory: a pageable copy runs at a
                // fraction of the speed. libtorch's caching host allocator
                // recycles the pinned blocks.
                let mut host = empty_pinned(&t.size(), t.kind(), t.numel() * dtype.itemsize())?;
                host.f_copy_(&t).map_err(torch_error)?;
                host
            }
            _ => t
                .f_to_device(Device::Cpu)
                .and_then(|t| t.f_contiguous())
                .map_err(torch_error)?,
        };
        let len = t.numel() * dtype.itemsize();
        let data = if len == 0 {
            Bytes::new()
        } else {
            Bytes::from_owner(TensorBytes {
                tensor: t,
                len,
                _inputs: Arc::new(Kept(self.inputs.0.clone())),
            })
        };
        mymps_core::Tensor::new(dtype, &shape, data)
    }
}

/// A libtorch tensor kept between requests (the value of a [`Resident`]).
struct Stored(Tensor);

// SAFETY: `tch::Tensor` is `Send` but not `Sync`. A `Stored` tensor is only
// ever used through `&self` to make a new handle of it (`shallow_clone`:
// an atomic reference count increment in libtorch) that kernels then read;
// nothing writes to a stored tensor (kernels never write to their inputs,
// and the in-place path only takes received host buffers held alone).
// Concurrent reads of one tensor from several threads are what libtorch
// supports.
unsafe impl Sync for Stored {}

/// A copy of `t` in memory of its own.
fn deep_copy(t: &Tensor) -> Result<Tensor> {
    let mut y = t.f_empty_like().map_err(torch_error)?;
    y.f_copy_(t).map_err(torch_error)?;
    Ok(y)
}

/// `t` (on the device that holds it) as a [`Resident`].
fn stored(t: Tensor) -> Result<Resident> {
    let dtype = dtype_of(t.kind())?;
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let strides: Vec<usize> = t.stride().iter().map(|&d| d.max(0) as usize).collect();
    let device = device_name(t.device());
    Ok(Resident::new(Stored(t), dtype, shape, strides, device))
}

/// The libtorch tensor of a [`Resident`] this backend made (a new handle to
/// it), or, for one of another backend's host tensors, its upload.
fn stored_tensor(r: &Resident, conv: &mut Converter) -> Result<Tensor> {
    let held = r
        .get::<Stored>()
        .or_else(|| r.get::<StoredView>().map(|v| &v.tensor));
    match held {
        Some(Stored(t)) => Ok(t.shallow_clone()),
        None => match r.as_host() {
            Some(h) => conv.upload(h.clone()),
            None => Err(Error::internal(
                "a server-resident tensor this backend did not make",
            )),
        },
    }
}

/// Whether `t`'s memory lies in one of the received buffers `conv` holds
/// (a view of a request's data, which a kept result must not pin).
fn views_inputs(t: &Tensor, conv: &Converter) -> bool {
    if t.device() != Device::Cpu || t.numel() == 0 {
        return false;
    }
    let p = t.data_ptr() as usize;
    conv.inputs
        .0
        .iter()
        .any(|b| p >= b.as_ptr() as usize && p < b.as_ptr() as usize + b.len().max(1))
}

/// Whether a libtorch error means "this device has no kernel for that".
fn is_unsupported_on_device(e: &Error) -> bool {
    let m = &e.message;
    m.contains("not implemented for")
        || m.contains("NotImplementedError")
        || m.contains("not currently implemented for the MPS device")
        || m.contains("not supported on MPS")
        || m.contains("not supported on CUDA")
        || m.contains("only supported on CPU")
        || m.contains("only supported for CPU")
        || m.contains("Could not run")
}

/// The libtorch backend.
pub struct TchBackend {
    device: Device,
    ops: OpRegistry,
}

impl TchBackend {
    /// A backend on `device` (`auto`, `cpu`, `cuda:N`, `mps`) with every op
    /// linked into this binary.
    pub fn new(device: &str) -> Result<TchBackend> {
        TchBackend::with_ops(device, &[])
    }

    /// A backend with the linked ops plus `extra` ones (from plugins); a
    /// name registered twice is refused.
    pub fn with_ops(device: &str, extra: &[&'static OpEntry]) -> Result<TchBackend> {
        let device = parse_device(device)?;
        let mut ops = mymps_ops::registry()?;
        for e in extra {
            if !mymps_ops::has_kernel(e) {
                return Err(Error::internal(format!(
                    "op '{}' from a plugin has no libtorch kernel this build recognises",
                    e.spec.name
                )));
            }
            ops.register(e)?;
        }
        Ok(TchBackend { device, ops })
    }

    /// The device ops run on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// `run` on the server's device, and once more on the CPU when the
    /// device has no kernel for the op. Arguments are cheap to clone
    /// (shared buffers, tensor handles): a copy is kept for the retry.
    fn with_cpu_fallback<A: Clone, T>(
        &self,
        op: &'static OpEntry,
        args: A,
        run: impl Fn(A, Device) -> Result<T>,
    ) -> Result<T> {
        if self.device == Device::Cpu {
            return run(args, Device::Cpu);
        }
        let retry = args.clone();
        match run(args, self.device) {
            Err(e) if is_unsupported_on_device(&e) => {
                tracing::info!(op = op.spec.name, device = %device_name(self.device), "no kernel on the device; running on the CPU");
                run(retry, Device::Cpu)
            }
            r => r,
        }
    }

    /// [`Backend::exec_operands`] on `device`: host operands uploaded,
    /// resident ones used where they are (moved, when `device` is the CPU
    /// of a fallback), kept results left on the server's device.
    fn run_operands(
        &self,
        op: &'static OpEntry,
        args: Args<Operand>,
        device: Device,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<OperandOutput> {
        let mut conv = Converter::new(device);
        let args = args.try_map_tensors(|o| {
            let t = match o {
                Operand::Host(t) => conv.upload(t)?,
                Operand::Resident(r) => stored_tensor(&r, &mut conv)?,
            };
            if t.device() == device {
                Ok(t)
            } else {
                t.f_to_device(device).map_err(torch_error)
            }
        })?;
        let out = mymps_ops::run_kernel(op, &args)
            .ok_or_else(|| {
                Error::internal(format!("op '{}' has no libtorch kernel", op.spec.name))
            })?
            .map_err(|KernelError(e)| e)?;
        drop(args);
        let outputs = out
            .into_named()
            .into_iter()
            .map(|(name, y)| {
                let o = if keep(&name) {
                    let mut y = y;
                    if y.device() != self.device {
                        y = y.f_to_device(self.device).map_err(torch_error)?;
                    } else if views_inputs(&y, &conv) {
                        y = deep_copy(&y)?;
                    }
                    Operand::Resident(stored(y)?)
                } else {
                    Operand::Host(conv.download(y)?)
                };
                Ok((name, o))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OperandOutput {
            outputs,
            device: device_name(device),
        })
    }

    fn run(
        &self,
        op: &'static OpEntry,
        args: Args<mymps_core::Tensor>,
        device: Device,
    ) -> Result<ExecOutput> {
        let mut conv = Converter::new(device);
        let in_place = device == Device::Cpu && in_place_input(op, &args).is_some();
        let args = args.try_map_tensors(|t| {
            if in_place {
                conv.upload_exclusive(t)
            } else {
                conv.upload(t)
            }
        })?;
        let outputs = if conv.exclusive.is_some() {
            // The op's one input is the call's alone: its in-place variant
            // runs in it.
            let mut x = args.tensor(op.spec.params[0].name)?.shallow_clone();
            drop(args);
            let y = mymps_ops::run_in_place(op, &mut x)
                .ok_or_else(|| {
                    Error::internal(format!("op '{}' has no in-place variant", op.spec.name))
                })?
                .map_err(|KernelError(e)| e)?;
            drop(x);
            vec![("output".to_owned(), conv.take_in_place(y)?)]
        } else {
            let out = mymps_ops::run_kernel(op, &args)
                .ok_or_else(|| {
                    Error::internal(format!("op '{}' has no libtorch kernel", op.spec.name))
                })?
                .map_err(|KernelError(e)| e)?;
            drop(args);
            out.into_named()
                .into_iter()
                .map(|(name, t)| Ok((name, conv.download(t)?)))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(ExecOutput {
            outputs,
            device: device_name(device),
        })
    }
}

/// A CPU tensor that views received buffers, kept with them.
struct StoredView {
    tensor: Stored,
    _buffers: Kept,
}

/// [`stored`] for a CPU view of `buffers`.
fn stored_with(t: Tensor, buffers: Kept) -> Result<Resident> {
    let r = stored(t.shallow_clone())?;
    let (dtype, shape, strides) = (r.dtype(), r.shape().to_vec(), r.strides().to_vec());
    drop(r);
    Ok(Resident::new(
        StoredView {
            tensor: Stored(t),
            _buffers: buffers,
        },
        dtype,
        shape,
        strides,
        "cpu",
    ))
}

/// The input of `op` that may be computed in, when `op` has an in-place
/// variant ([`mymps_ops::has_in_place`]: a unary op) and its input is a
/// contiguous real floating-point tensor of [`LARGE`] bytes or more,
/// aligned for its dtype (whether its memory is the call's alone is known
/// only when it is taken: [`Converter::upload_exclusive`]).
fn in_place_input<'a>(
    op: &'static OpEntry,
    args: &'a Args<mymps_core::Tensor>,
) -> Option<&'a mymps_core::Tensor> {
    if !mymps_ops::has_in_place(op) {
        return None;
    }
    let t = args.tensor(op.spec.params[0].name).ok()?;
    let float = matches!(
        t.dtype(),
        DType::Float16 | DType::BFloat16 | DType::Float32 | DType::Float64
    );
    let aligned = (t.data().as_ptr() as usize) % t.dtype().itemsize() == 0;
    (float && aligned && t.is_contiguous() && t.data().len() >= LARGE).then_some(t)
}

impl Backend for TchBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "tch".into(),
            version: TORCH_VERSION.into(),
            device: device_name(self.device),
        }
    }

    fn ops(&self) -> &OpRegistry {
        &self.ops
    }

    fn exec(&self, op: &'static OpEntry, args: Args<mymps_core::Tensor>) -> Result<ExecOutput> {
        self.with_cpu_fallback(op, args, |args, device| self.run(op, args, device))
    }

    /// Shape inference on meta tensors (see `estimate.rs`); 0 for an op
    /// that will run in place, in an input that nothing else refers to.
    fn output_bytes(&self, op: &'static OpEntry, args: &Args<mymps_core::Tensor>) -> Option<u64> {
        if self.device == Device::Cpu
            && in_place_input(op, args).is_some_and(|t| t.data().is_unique())
        {
            return Some(0);
        }
        let operands = args
            .clone()
            .try_map_tensors(|t| Ok(Operand::Host(t)))
            .ok()?;
        estimate::output_bytes(op, &operands)
    }

    fn operand_output_bytes(&self, op: &'static OpEntry, args: &Args<Operand>) -> Option<u64> {
        estimate::output_bytes(op, args)
    }

    /// Uploads `t` to the device and waits for the copy (so the host
    /// buffer may go); on the CPU a large tensor stays in the buffer it
    /// was received into, a small one is copied out of the read buffer it
    /// is a slice of.
    fn put(&self, t: mymps_core::Tensor) -> Result<Resident> {
        let small = t.data().len() < LARGE;
        let mut conv = Converter::new(self.device);
        let x = conv.upload(t)?;
        let x = match self.device {
            Device::Cpu if small => deep_copy(&x)?,
            Device::Cpu => {
                // The view's memory is the received buffer: the resident
                // tensor keeps it (and nothing else does).
                let kept = std::mem::take(&mut conv.inputs);
                return stored_with(x, kept);
            }
            Device::Cuda(i) => {
                tch::Cuda::synchronize(i as i64);
                x
            }
            _ => x,
        };
        drop(conv);
        stored(x)
    }

    fn fetch(&self, r: &Resident) -> Result<mymps_core::Tensor> {
        let mut conv = Converter::new(self.device);
        let t = stored_tensor(r, &mut conv)?;
        conv.download(t)
    }

    fn exec_operands(
        &self,
        op: &'static OpEntry,
        args: Args<Operand>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<OperandOutput> {
        self.with_cpu_fallback(op, args, |args, device| {
            self.run_operands(op, args, device, keep)
        })
    }

    fn accelerator_memory(&self) -> Option<AcceleratorMemory> {
        match self.device {
            Device::Cuda(i) => cuda_memory(i),
            _ => None,
        }
    }

    fn release_memory(&self) {
        empty_device_cache(self.device);
    }

    /// On CUDA, pinned host memory from libtorch's caching host allocator:
    /// a received tensor then goes to the device by DMA straight from the
    /// buffer the socket filled, with no staging copy. (The allocator keeps
    /// freed blocks for reuse, as PyTorch's `pin_memory` does.)
    fn host_alloc(&self) -> Option<Arc<dyn mymps_core::buffer::HostAlloc>> {
        match self.device {
            Device::Cuda(_) => Some(Arc::new(PinnedAlloc)),
            _ => None,
        }
    }

    /// 64 KiB on the CPU (an element-wise op on 8K elements takes a few
    /// microseconds); 0 on accelerators, where a call may wait behind
    /// other requests' kernels.
    fn inline_limit(&self) -> u64 {
        if self.device == Device::Cpu {
            64 * 1024
        } else {
            0
        }
    }
}

/// Pinned host memory for large received tensors (see
/// [`Backend::host_alloc`]).
struct PinnedAlloc;

/// A tch tensor as the owner of a host block. The tensor is only kept
/// alive (dropped on another thread at most), never used.
struct PinnedOwner(#[allow(dead_code)] Tensor);

impl mymps_core::buffer::HostAlloc for PinnedAlloc {
    fn alloc(&self, len: usize) -> Option<mymps_core::buffer::HostBlock> {
        match empty_pinned_bytes(len) {
            Ok(t) => {
                let ptr = t.data_ptr() as *mut u8;
                // SAFETY: `t` is a contiguous uint8 tensor of `len` bytes that
                // nothing else refers to; the block keeps it alive.
                Some(unsafe {
                    mymps_core::buffer::HostBlock::new(ptr, len, Box::new(PinnedOwner(t)))
                })
            }
            Err(e) => {
                tracing::warn!(len, error = %e, "no pinned host memory; reading into ordinary memory");
                None
            }
        }
    }
}

/// Tensors of at least this many bytes cross between the host and a CUDA
/// device through pinned memory (a full-speed, asynchronous DMA); smaller
/// ones by a plain pageable copy, which for them costs less than the
/// caching host allocator's bookkeeping (a block lookup and an event per
/// copy). 64 KiB, the size up to which CUDA stages a pageable copy itself;
/// `MYMPS_PINNED_MIN` (bytes) overrides it (0: always pinned), for
/// measuring.
fn pinned_min() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| {
        std::env::var("MYMPS_PINNED_MIN")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(64 * 1024)
    })
}

/// An uninitialised host tensor of `shape` and `kind` in pinned memory
/// (`nbytes` = its size), from libtorch's caching host allocator, without
/// the copy that pinning an ordinary empty tensor makes.
fn empty_pinned(shape: &[i64], kind: tch::Kind, nbytes: usize) -> Result<Tensor> {
    if nbytes == 0 {
        return Tensor::f_empty(shape, (kind, Device::Cpu)).map_err(torch_error);
    }
    empty_pinned_bytes(nbytes)?
        .f_view_dtype(kind)
        .and_then(|t| t.f_reshape(shape))
        .map_err(torch_error)
}

/// `nbytes` (> 0) uninitialised bytes of pinned host memory, as a uint8
/// tensor.
fn empty_pinned_bytes(nbytes: usize) -> Result<Tensor> {
    unsafe extern "C" {
        fn mymps_empty_pinned_bytes(
            nbytes: i64,
            err: *mut *mut std::ffi::c_char,
        ) -> *mut torch_sys::C_tensor;
    }
    let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: the shim catches C++ exceptions; on success it returns a new
    // at::Tensor*, which `Tensor::from_ptr` owns and frees (tch's at_free
    // deletes it); on failure a malloc'd message.
    unsafe {
        let p = mymps_empty_pinned_bytes(nbytes as i64, &mut err);
        if p.is_null() {
            let msg = if err.is_null() {
                "unknown error".to_owned()
            } else {
                let m = std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned();
                libc::free(err.cast());
                tracing::debug!(error = %m, "pinned allocation failed (full text)");
                mymps_ops::client_message(&m)
            };
            return Err(Error::new(
                ErrorCode::Backend,
                format!("cannot allocate {nbytes} bytes of pinned host memory: {msg}"),
            ));
        }
        Ok(Tensor::from_ptr(p))
    }
}

/// Returns the device allocator's unused cached blocks to the device.
fn empty_device_cache(device: Device) {
    unsafe extern "C" {
        fn mymps_empty_device_cache(device_type: i32) -> i32;
    }
    // c10::DeviceType values.
    let device_type = match device {
        Device::Cuda(_) => 1,
        Device::Mps => 13,
        _ => return,
    };
    // SAFETY: the shim takes a device type and catches C++ exceptions.
    if unsafe { mymps_empty_device_cache(device_type) } != 0 {
        tracing::warn!(device = %device_name(device), "emptying the device memory cache failed");
    }
}

/// Free and total memory of CUDA device `index`, from the CUDA runtime that
/// libtorch loaded.
fn cuda_memory(index: usize) -> Option<AcceleratorMemory> {
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: looks up symbols of the process; their C signatures are the
    // CUDA runtime's documented ones.
    unsafe {
        let this = libloading::os::unix::Library::this();
        let set: libloading::os::unix::Symbol<SetDevice> = this.get(b"cudaSetDevice\0").ok()?;
        let info: libloading::os::unix::Symbol<MemGetInfo> = this.get(b"cudaMemGetInfo\0").ok()?;
        if set(index as i32) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        if info(&mut free, &mut total) != 0 {
            return None;
        }
        Some(AcceleratorMemory {
            total: total as u64,
            free: free as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use mymps_core::DType;
    use mymps_core::buffer::{Filler, LARGE};

    /// `n` float32 values in (0.05, 0.95), a valid input for every op with
    /// an in-place variant (log, sqrt, asin, acos, erf, ...).
    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.05 + 0.9 * ((i * 7919) % 1000) as f32 / 1000.0)
            .collect()
    }

    fn le_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// `data` as a whole received buffer, as the server's reader makes it.
    fn received(data: &[u8]) -> Bytes {
        let mut f = Filler::new(data.len(), None).unwrap();
        f.put_slice(data);
        f.freeze().unwrap()
    }

    fn exec(b: &TchBackend, op: &str, data: Bytes, n: usize) -> mymps_core::Tensor {
        let entry = b.ops().lookup(op).unwrap();
        let t = mymps_core::Tensor::new(DType::Float32, &[n], data).unwrap();
        let args =
            mymps_core::ops::bind(&entry.spec, vec![("0".to_owned(), t)], Default::default())
                .unwrap();
        let mut out = b.exec(entry, args).unwrap().outputs;
        assert_eq!(out.len(), 1);
        out.remove(0).1
    }

    #[test]
    fn in_place_variants_give_what_their_kernels_give_in_the_inputs_memory() {
        let b = TchBackend::new("cpu").unwrap();
        let n = LARGE / 4 + 3;
        let input = le_bytes(&values(n));
        let ops: Vec<&OpEntry> = b
            .ops()
            .iter()
            .filter(|e| mymps_ops::has_in_place(e))
            .collect();
        assert!(
            ops.len() >= 31,
            "{} ops with an in-place variant",
            ops.len()
        );
        for entry in ops {
            let name = entry.spec.name;
            // A buffer the caller keeps a handle to: the kernel runs, and
            // the caller's bytes stay as they were.
            let kept = received(&input);
            let expected = exec(&b, name, kept.clone(), n);
            assert_eq!(&kept[..], &input[..], "{name}: input untouched");
            assert_ne!(expected.data().as_ptr(), kept.as_ptr());
            drop(kept);
            // The call's alone: in place, the same values.
            let buf = received(&input);
            let ptr = buf.as_ptr();
            let got = exec(&b, name, buf, n);
            assert_eq!(got.data().as_ptr(), ptr, "{name} ran in place");
            assert_eq!((got.dtype(), got.shape()), (DType::Float32, &[n][..]));
            assert!(
                got.data()[..] == expected.data()[..],
                "{name}: same bytes as the kernel"
            );
            // Ordinary memory qualifies too, when the call holds it alone.
            let plain = Bytes::from(input.clone());
            let ptr = plain.as_ptr();
            let got = exec(&b, name, plain, n);
            assert_eq!(got.data().as_ptr(), ptr, "{name} in place in a Vec");
            assert!(got.data()[..] == expected.data()[..]);
        }
    }

    #[test]
    fn only_large_float_contiguous_inputs_the_call_holds_alone_run_in_place() {
        let b = TchBackend::new("cpu").unwrap();
        // Under LARGE: never in place.
        let n = 1000;
        let got = exec(&b, "neg", Bytes::from(le_bytes(&values(n))), n);
        let small = Bytes::from(le_bytes(&values(n)));
        assert_ne!(got.data().as_ptr(), small.as_ptr());
        // A slice while its whole is alive is shared memory.
        let n = LARGE / 4;
        let whole = received(&le_bytes(&values(n + 1)));
        let part = whole.slice(4..);
        let got = exec(&b, "neg", part.clone(), n);
        assert_ne!(got.data().as_ptr(), part.as_ptr());
        assert_eq!(&part[..], &whole[4..], "input untouched");
        // Once the rest is gone (the whole, and the earlier result, which
        // keeps its inputs: it could be a view of them), the slice is the
        // call's alone.
        drop((whole, got));
        let ptr = part.as_ptr();
        let expected = le_bytes(&values(n + 1)[1..].iter().map(|x| -x).collect::<Vec<_>>());
        let got = exec(&b, "neg", part, n);
        assert_eq!(got.data().as_ptr(), ptr);
        assert_eq!(&got.data()[..], &expected[..]);
        // A clone held anywhere, even by the result of an earlier call,
        // keeps the memory shared.
        let buf = received(&le_bytes(&values(n)));
        let other = buf.clone();
        let got = exec(&b, "exp", buf, n);
        assert_ne!(got.data().as_ptr(), other.as_ptr());
        assert_eq!(&other[..], &le_bytes(&values(n))[..]);
        // An integer input is never changed in place (abs keeps the dtype,
        // but only floats qualify).
        let ints: Vec<u8> = (0..LARGE as i32 / 4)
            .flat_map(|i| (-i).to_le_bytes())
            .collect();
        let buf = received(&ints);
        let ptr = buf.as_ptr();
        let entry = b.ops().lookup("abs").unwrap();
        let t = mymps_core::Tensor::new(DType::Int32, &[LARGE / 4], buf).unwrap();
        let args =
            mymps_core::ops::bind(&entry.spec, vec![("0".to_owned(), t)], Default::default())
                .unwrap();
        let out = b.exec(entry, args).unwrap().outputs.remove(0).1;
        assert_ne!(out.data().as_ptr(), ptr);
        // An op without an in-place variant runs its kernel.
        let buf = received(&le_bytes(&values(n)));
        let ptr = buf.as_ptr();
        let got = exec(&b, "sinc", buf, n);
        assert_ne!(got.data().as_ptr(), ptr);
    }

    #[test]
    fn inputs_go_back_to_the_pool_once_no_result_needs_them() {
        // A size no other test here asks for (the pool is the process's).
        let b = TchBackend::new("cpu").unwrap();
        let n = 5 * LARGE / 4 + 7;
        for op in ["sinc", "neg"] {
            let buf = received(&le_bytes(&values(n)));
            let ptr = buf.as_ptr();
            let got = exec(&b, op, buf, n);
            drop(got);
            // The next large buffer of that size is the same memory.
            let again = LargeBuf::with_capacity(n * 4).unwrap();
            assert_eq!(again.as_ref().as_ptr(), ptr, "{op}: pooled");
        }
    }

    #[test]
    fn the_budget_estimate_of_an_in_place_run_is_zero_only_for_memory_held_alone() {
        let b = TchBackend::new("cpu").unwrap();
        let entry = b.ops().lookup("sqrt").unwrap();
        let n = LARGE / 4;
        let buf = received(&le_bytes(&values(n)));
        let estimate = |data: Bytes| {
            let t = mymps_core::Tensor::new(DType::Float32, &[n], data).unwrap();
            let args =
                mymps_core::ops::bind(&entry.spec, vec![("0".to_owned(), t)], Default::default())
                    .unwrap();
            b.output_bytes(entry, &args)
        };
        assert_eq!(estimate(buf.clone()), Some(LARGE as u64), "a clone is kept");
        assert_eq!(estimate(buf), Some(0));
    }
}
