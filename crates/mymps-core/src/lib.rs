//! # mymps-core
//!
//! The heart of mymps, a remote tensor coprocessor: the wire protocol, the
//! traits every other crate plugs into, the op registry, and the generic
//! server and client.
//!
//! - [`protocol`]: frames, headers, tensor encoding and the handshake, with
//!   no I/O.
//! - [`Backend`], [`Transport`](transport::Transport),
//!   [`ModelLoader`](model::ModelLoader): the plug-in points.
//! - [`ops`]: op signatures, argument binding and the `inventory` registry.
//! - [`metrics`]: request counters and latency histograms the server
//!   records for every transport, and their Prometheus rendering.
//! - [`plugin`]: dynamically loadable plugins (model loaders and ops).
//! - [`server`] (feature `server`) and [`client`] (feature `client`).
//!
//! Invariant: this crate knows nothing of tch (or any tensor library) and of
//! any concrete transport. A client build needs no libtorch.
//!
//! ## Features
//! - `server` (default): the generic server loop and host statistics.
//! - `client` (default): the async client and its blocking wrapper.
#![warn(missing_docs)]

pub mod auth;
pub mod backend;
pub mod buffer;
#[cfg(feature = "client")]
pub mod client;
pub mod dtype;
pub mod error;
pub mod history;
pub mod metrics;
pub mod model;
pub mod nvml;
pub mod ops;
pub mod plugin;
pub mod protocol;
pub mod resident;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod stats;
#[cfg(feature = "server")]
mod store;
pub mod stream;
pub mod tensor;
pub mod transport;
pub mod value;

pub use backend::{AcceleratorMemory, Backend, BackendInfo, ExecOutput};
pub use dtype::{DType, Element};
pub use error::{Error, ErrorCode, Result};
pub use ops::{
    Args, OpEntry, OpOutput, OpRegistry, OpSpec, Outputs as OpOutputs, Param, ParamKind,
};
pub use resident::{Operand, Resident};
pub use tensor::Tensor;
pub use value::Value;

pub use half;
pub use inventory;
pub use num_complex;

/// This crate's version, reported in handshakes and `health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
