//! Server-resident tensors, as the backend sees them: [`Resident`] (a
//! tensor a backend keeps in its device's memory between requests, opaque
//! to everything but that backend) and [`Operand`] (an op's argument: sent
//! data, or a resident tensor).
//!
//! The core knows nothing of the backend's tensor type: a [`Resident`]
//! carries it as `dyn Any`, with the description (dtype, shape, strides,
//! device, bytes) that the server and clients need without asking the
//! backend. A backend that keeps nothing on a device of its own (the
//! default methods of [`Backend`](crate::backend::Backend)) keeps host
//! [`Tensor`]s.

use std::any::Any;
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::Error;
use crate::tensor::{Tensor, contiguous_strides};

/// A tensor kept by a backend between requests (in device memory on an
/// accelerator). Cloning shares it.
#[derive(Clone)]
pub struct Resident {
    value: Arc<dyn Any + Send + Sync>,
    dtype: DType,
    shape: Vec<usize>,
    strides: Vec<usize>,
    device: String,
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resident")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Resident {
    /// A backend's tensor `value` described by `dtype`, `shape`, element
    /// `strides` (as the value's layout is) and the device holding it.
    pub fn new<T: Any + Send + Sync>(
        value: T,
        dtype: DType,
        shape: Vec<usize>,
        strides: Vec<usize>,
        device: impl Into<String>,
    ) -> Resident {
        Resident {
            value: Arc::new(value),
            dtype,
            shape,
            strides,
            device: device.into(),
        }
    }

    /// A host tensor kept as it is (what backends without device memory of
    /// their own keep).
    pub fn host(t: Tensor) -> Resident {
        let strides = t.strides_or_contiguous();
        let (dtype, shape) = (t.dtype(), t.shape().to_vec());
        Resident::new(t, dtype, shape, strides, "cpu")
    }

    /// The backend's value, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }

    /// The value as a host tensor, if it is one (see [`Resident::host`]).
    pub fn as_host(&self) -> Option<&Tensor> {
        self.get::<Tensor>()
    }

    /// Its dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its element strides.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// The device whose memory holds it (`cpu`, `cuda:0`, ...).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Its elements × item size: what it counts for in the server's caps
    /// and memory budget.
    pub fn nbytes(&self) -> u64 {
        self.shape
            .iter()
            .try_fold(self.dtype.itemsize() as u64, |n, &d| {
                n.checked_mul(d as u64)
            })
            .unwrap_or(u64::MAX)
    }
}

/// An op's tensor argument: data sent with the request, or a tensor the
/// server keeps.
#[derive(Debug, Clone)]
pub enum Operand {
    /// Sent with the request.
    Host(Tensor),
    /// Kept on the server.
    Resident(Resident),
}

impl Operand {
    /// Its dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Operand::Host(t) => t.dtype(),
            Operand::Resident(r) => r.dtype(),
        }
    }

    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Operand::Host(t) => t.shape(),
            Operand::Resident(r) => r.shape(),
        }
    }

    /// Its element strides (C order when a host tensor has none).
    pub fn strides(&self) -> Vec<usize> {
        match self {
            Operand::Host(t) => t.strides_or_contiguous(),
            Operand::Resident(r) => r.strides().to_vec(),
        }
    }

    /// Whether it is laid out in C order.
    pub fn is_contiguous(&self) -> bool {
        match self {
            Operand::Host(t) => t.is_contiguous(),
            Operand::Resident(r) => r.strides() == contiguous_strides(r.shape()).as_slice(),
        }
    }

    /// The host tensor, if it is one.
    pub fn as_host(&self) -> Option<&Tensor> {
        match self {
            Operand::Host(t) => Some(t),
            Operand::Resident(_) => None,
        }
    }
}

/// The results of an op on [`Operand`]s: each sent back as data
/// ([`Operand::Host`]) or kept ([`Operand::Resident`]), as the request
/// asked.
#[derive(Debug)]
pub struct OperandOutput {
    /// Results with their wire names.
    pub outputs: Vec<(String, Operand)>,
    /// The device that ran the op.
    pub device: String,
}

/// The error for a resident value of a type the backend did not make.
pub(crate) fn foreign_value() -> Error {
    Error::internal("a server-resident tensor of another backend")
}
