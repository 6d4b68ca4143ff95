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

/// Ops without a meta kernel in this libtorch, by name.
static NO_META: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

fn no_meta_kernel(op: &OpEntry) -> bool {
    NO_META
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&op.spec.name)
}

fn remember_no_meta_kernel(op: &'static OpEntry) {
    let mut v = NO_META.lock().unwrap_or_else(|e| e.into_inner());
    if !v.contains(&op.spec.name) {
        tracing::debug!(
            op = op.spec.name,
            "no meta kernel; estimated by its cost class"
        );
        v.push(op.spec.name);
    }
}

/// The bytes `op`'s outputs will take on `args` (their elements × item
/// size, as they are sent back), from its kernel on meta tensors. `None`
/// when that cannot tell: a plugin's op (its kernel is not ours to call on
/// tensors without data), or an op whose output size depends on the
/// values of its inputs (`nonzero`, `unique`, a kernel that reads an
/// index), which fails on meta tensors.
///
/// An op that libtorch has no meta kernel for at all (`relu`: its kernels
/// are per device) is remembered and not tried again: libtorch's "could
/// not run with arguments from the 'Meta' backend" error lists every
/// kernel it has ("no fake impl or Meta kernel registered", in 2.11) and
/// costs milliseconds to build, on every call. That is
/// a property of the op, not of the arguments, so no request can switch
/// another's estimate off.
pub fn output_bytes(op: &'static OpEntry, args: &Args<Operand>) -> Option<u64> {
    if !matches!(op.kernel, Kernel::Native(_)) || no_meta_kernel(op) {
        return None;
    }
    let meta = args
        .clone()
        .try_map_tensors(|t| meta_like(&t).ok_or_else(|| mymps_core::Error::internal("meta")))
        .ok()?;
    let out = match mymps_ops::run_kernel(op, &meta)? {
        Ok(out) => out,
        Err(mymps_ops::KernelError(e)) => {
            let m = &e.message;
            if m.contains("no fake impl or Meta kernel registered")
                || (m.contains("Could not run") && m.contains("'Meta' backend"))
            {
                remember_no_meta_kernel(op);
            }
            return None;
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(op: &'static OpEntry) -> Args<Operand> {
        let t = mymps_core::Tensor::from_vec(vec![0f32; 16], &[4, 4]).unwrap();
        mymps_core::ops::bind(
            &op.spec,
            vec![("0".to_owned(), Operand::Host(t))],
            Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn an_op_without_a_meta_kernel_is_remembered_and_one_with_is_estimated() {
        let ops = mymps_ops::registry().unwrap();
        let sigmoid = ops.lookup("sigmoid").unwrap();
        assert_eq!(output_bytes(sigmoid, &args(sigmoid)), Some(64));
        assert!(!no_meta_kernel(sigmoid));
        // relu's kernels are per device: libtorch has none for meta.
        let relu = ops.lookup("relu").unwrap();
        assert_eq!(output_bytes(relu, &args(relu)), None);
        assert!(no_meta_kernel(relu), "relu remembered");
        assert_eq!(output_bytes(relu, &args(relu)), None);
    }
}
