//! mymps errors as Python exceptions.
//!
//! The exception classes live in the pure-Python module `mymps.errors`
//! (they inherit builtin classes such as `TimeoutError` as well, which
//! PyO3's `create_exception!` cannot express); this module builds them
//! through `mymps.errors._from_code`.

use mymps::{Error, ErrorCode};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static FROM_CODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The Python exception for a mymps error.
pub fn to_py(err: Error) -> PyErr {
    Python::attach(|py| {
        let build = || -> PyResult<Bound<'_, PyAny>> {
            let from_code = FROM_CODE.get_or_try_init(py, || {
                py.import("mymps.errors")?
                    .getattr("_from_code")
                    .map(Bound::unbind)
            })?;
            from_code
                .bind(py)
                .call1((err.code.name(), err.code.as_u16(), err.message.as_str()))
        };
        match build() {
            Ok(exc) => PyErr::from_value(exc),
            // Only when the package is broken (mymps.errors missing).
            Err(e) => e,
        }
    })
}

/// A `BadArgumentError` raised by the client itself.
pub fn bad_argument(message: impl Into<String>) -> PyErr {
    to_py(Error::new(ErrorCode::BadArgument, message))
}

/// An `InvalidTensorError` raised by the client itself.
pub fn invalid_tensor(message: impl Into<String>) -> PyErr {
    to_py(Error::new(ErrorCode::InvalidTensor, message))
}

/// An `UnknownTensorError` raised by the client itself (a tensor freed, or
/// another client's).
pub fn unknown_tensor(message: impl Into<String>) -> PyErr {
    to_py(Error::new(ErrorCode::UnknownTensor, message))
}

/// An `InternalError`: a reply that breaks the client's expectations.
pub fn internal(message: impl Into<String>) -> PyErr {
    to_py(Error::new(ErrorCode::Internal, message))
}
