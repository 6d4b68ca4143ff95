//! # mymps-python
//!
//! The Python client of mymps, as the extension module `mymps._native` of
//! the `mymps` package (built with maturin, one abi3 wheel for CPython 3.9
//! and later). It wraps [`mymps::client::blocking::Client`] (and the
//! cluster's blocking client) and needs
//! numpy only: no libtorch, no torch.
//!
//! - [`client`]: the `MympsClient` class (the API of `client-api.md`).
//! - [`cluster`]: the `MympsCluster` class (one client over several servers).
//! - [`remote`]: what both share, over any
//!   [`Service`](mymps::client::Service): the blocking wait (GIL released,
//!   Ctrl-C), the fork check, typed requests and replies ⇄ Python objects.
//! - [`generate`]: text generation (`generate`, streamed as the
//!   `GenerateStream` iterator; `encode`, `decode`), Python ⇄ requests.
//! - [`tensor`]: the `RemoteTensor` class (a tensor kept on the server).
//! - [`convert`]: numpy arrays ⇄ tensors without copies, kwargs → values.
//! - [`errors`]: error codes → the exception classes of `mymps.errors`.
//!
//! The Python side (`python/mymps/`) re-exports the class and defines the
//! exceptions, type stubs and `py.typed`.
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod convert;
pub mod errors;
pub mod generate;
pub mod remote;
pub mod tensor;

use pyo3::prelude::*;

/// `(input_copies, result_copies)`: how many input arrays had to be copied
/// before sending, and how many results were copied after receiving, since
/// the module was loaded (for tests of the zero-copy paths).
#[pyfunction]
fn _copy_counters() -> (u64, u64) {
    convert::copy_counters()
}

/// The transports compiled into this build (`["quic", "tcp", "zmq"]`).
#[pyfunction]
fn transports() -> Vec<&'static str> {
    mymps::transport::available_schemes()
}

/// The native part of the `mymps` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Naming the TCP transport's static makes the linker keep the object
    // that registers it (a `pub use` alone references nothing).
    std::hint::black_box(&mymps::tcp::TRANSPORT);
    std::hint::black_box(&mymps::quic::TRANSPORT);
    std::hint::black_box(&mymps::zmq::TRANSPORT);
    m.add_class::<client::MympsClient>()?;
    m.add_class::<cluster::MympsCluster>()?;
    m.add_class::<convert::ResultBuffer>()?;
    m.add_class::<tensor::RemoteTensor>()?;
    m.add_class::<generate::GenerateStream>()?;
    m.add_function(wrap_pyfunction!(_copy_counters, m)?)?;
    m.add_function(wrap_pyfunction!(transports, m)?)?;
    m.add("__version__", mymps::VERSION)?;
    m.add("DEFAULT_HOST", mymps::client::DEFAULT_HOST)?;
    m.add("DEFAULT_PORT", mymps::client::DEFAULT_PORT)?;
    Ok(())
}
