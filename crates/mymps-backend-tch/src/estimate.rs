//! The size of an op's outputs before it runs: the op's own kernel on meta
//! tensors (shape, strides and dtype without storage), which is libtorch's
//! shape inference and allocates nothing. The server takes the estimate
//! from its memory budget before it lets the op run, so an op whose output
//! would not fit (a `repeat` to 10^10 elements, an `outer` of two long
//! vectors, a broadcast of a stride-0 view) is refused with the size it
//! would have had, instead of taking the host or the device down.

use mymps_core::ops::{Args, Kernel, OpEntry};
use mymps_core::{DType, Operand};
use tch::Tensor;

/// `c10::ScalarType`'s number for a dtype.
fn scalar_type(d: DType) -> i32 {
    match d {
        DType::UInt8 => 0,
        DType::Int8 => 1,
        DType::Int16 => 2,
        DType::Int32 => 3,
        DType::Int64 => 4,
        DType::Float16 => 5,
        DType::Float32 => 6,
        DType::Float64 => 7,
        DType::Complex64 => 9,
        DType::Complex128 => 10,
        DType::Bool => 11,
        DType::BFloat16 => 15,
    }
}

/// A meta tensor with `t`'s dtype, shape and strides; `None` if libtorch
/// refuses it.
fn meta_like(t: &Operand) -> Option<Tensor> {
    unsafe extern "C" {
        fn mymps_empty_meta(
            sizes: *const i64,
            strides: *const i64,
            ndim: i64,
            scalar_type: i32,
            err: *mut *mut std::ffi::c_char,
        ) -> *mut torch_sys::C_tensor;
    }
    let shape: Vec<i64> = t
        .shape()
        .iter()
        .map(|&d| i64::try_from(d).ok())
        .collect::<Option<_>>()?;
    let strides: Vec<i64> = t
        .strides()
        .iter()
        .map(|&s| i64::try_from(s).ok())
        .collect::<Option<_>>()?;
    let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: the shim reads `ndim` values from each array (both have
    // `shape.len()`), catches C++ exceptions, and returns a new at::Tensor*
    // that `Tensor::from_ptr` owns, or null and a malloc'd message.
    unsafe {
        let p = mymps_empty_meta(
            shape.as_ptr(),
            strides.as_ptr(),
            shape.len() as i64,
            scalar_type(t.dtype()),
            &mut err,
        );
        if p.is_null() {
            if !err.is_null() {
                libc::free(err.cast());
            }
            return None;
        }
        Some(Tensor::from_ptr(p))
    }
}

/// The bytes `op`'s outputs will take on `args` (their elements × item
/// size, as they are sent back), from its kernel on meta tensors. `None`
/// when that cannot tell: a plugin's op (its kernel is not ours to call on
/// tensors without data), or an op whose output size depends on the
/// values of its inputs (`nonzero`, `unique`, a kernel that reads an
/// index), which fails on meta tensors.
pub fn output_bytes(op: &'static OpEntry, args: &Args<Operand>) -> Option<u64> {
    if !matches!(op.kernel, Kernel::Native(_)) {
        return None;
    }
    let meta = args
        .clone()
        .try_map_tensors(|t| meta_like(&t).ok_or_else(|| mymps_core::Error::internal("meta")))
        .ok()?;
    let out = mymps_ops::run_kernel(op, &meta)?.ok()?;
    out.into_named()
        .iter()
        .try_fold(0u64, |acc, (_, t)| {
            let numel = t
                .size()
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))?;
            acc.checked_add(numel.checked_mul(t.kind().elt_size_in_bytes() as u64)?)
        })
        .or(Some(u64::MAX))
}
