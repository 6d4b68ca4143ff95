//! `RemoteTensor`: a tensor that stays on the server, as Python holds it.
//!
//! It knows its handle, shape, dtype and device (the server said them when
//! it kept the tensor), and the [`Owner`] (the client's [`Link`]) that made
//! it: only that owner may send its handle, since handles are valid on
//! their connection alone. When Python drops one that owns its handle,
//! the handle is queued on the owner and freed with others in one request
//! ([`Owner::release`]); a tensor shared under a name, or named by
//! `remote(name)`, is never freed by being dropped.
//!
//! [`Link`]: crate::remote::Link

use std::sync::{Arc, Mutex, MutexGuard};

use mymps::protocol::rpc::Freed;
use mymps::protocol::{HandleInfo, TensorRef};
use mymps::{DType, Tensor};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::convert;
use crate::errors::{internal, unknown_tensor};

/// What made a [`RemoteTensor`]: the client (or cluster) it belongs to.
pub trait Owner: Send + Sync {
    /// Queues the handle of a tensor Python dropped, to be freed with
    /// others in one request (the next call sends it, or a thread of the
    /// owner's when many are queued).
    fn release(self: Arc<Self>, r: TensorRef);
    /// Tensors' data, in the order given.
    fn fetch(&self, py: Python<'_>, refs: Vec<TensorRef>) -> PyResult<Vec<Tensor>>;
    /// Frees tensors now, in one request.
    fn free(&self, py: Python<'_>, refs: Vec<TensorRef>) -> PyResult<Freed>;
    /// The host that holds a handle's tensor (a cluster's), by name.
    fn host_of(&self, handle: u64) -> Option<String>;
    /// The owner's Python class, for messages.
    fn class(&self) -> &'static str;
}

/// Whether a tensor frees its handle when dropped, and whether it was
/// freed.
struct State {
    /// The name it is shared under (every connection may use it so).
    shared: Option<String>,
    /// Dropping it frees its handle (it was made by `put` or kept, and not
    /// shared since).
    owned: bool,
    /// `free` was called on it.
    freed: bool,
}

/// A tensor kept on a mymps server (in device memory on an accelerator),
/// from `client.put(array)` or a result kept with `keep=`.
///
/// Use it wherever a call takes an array (`exec`, `infer`, graphs): the
/// server uses its data where it is, with no upload. `.numpy()` (or
/// `numpy.asarray(t)`, or `client.get(t)`) brings the data back.
/// `.shape`, `.dtype` and `.device` are known without asking the server.
///
/// Lifetime: the tensor lives as long as this object (and the connection
/// that made it). When Python drops it, its handle is queued and freed with
/// others in one request (sent with the client's next call, or at once when
/// many are queued); `client.free(t)` frees it now. A tensor shared under a
/// name (`client.share(t, "name")`) or named by `client.remote("name")` is
/// not freed when dropped: `client.free(t)` frees it, for every connection.
///
/// A RemoteTensor belongs to the client that made it: another client (even
/// to the same server) refuses it with UnknownTensorError, unless it is
/// shared (then it goes by name).
#[pyclass(module = "mymps", name = "RemoteTensor", frozen)]
pub struct RemoteTensor {
    owner: Arc<dyn Owner>,
    /// `None`: named only (`remote(name)`).
    handle: Option<u64>,
    dtype: Option<DType>,
    shape: Option<Vec<u64>>,
    device: Option<String>,
    /// The cluster host of a tensor named only (its handle is not kept:
    /// it goes by name), as the cluster said when it described it.
    host: Option<String>,
    state: Mutex<State>,
}

impl Drop for RemoteTensor {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if st.owned && !st.freed {
            if let Some(h) = self.handle {
                self.owner.clone().release(TensorRef::Handle(h));
            }
        }
    }
}

impl RemoteTensor {
    /// A tensor the server kept for `owner`'s connection (its handle is
    /// freed when it is dropped).
    pub fn owned(
        py: Python<'_>,
        owner: Arc<dyn Owner>,
        info: HandleInfo,
    ) -> PyResult<Py<RemoteTensor>> {
        let dtype = DType::from_name(&info.dtype);
        Py::new(
            py,
            RemoteTensor {
                owner,
                handle: Some(info.handle),
                dtype,
                shape: Some(info.shape),
                device: Some(info.device),
                host: None,
                state: Mutex::new(State {
                    shared: None,
                    owned: true,
                    freed: false,
                }),
            },
        )
    }

    /// A tensor shared under `name`, as `owner` refers to it (never freed
    /// by being dropped), described by `info` (the server's `describe`).
    pub fn named(
        py: Python<'_>,
        owner: Arc<dyn Owner>,
        name: String,
        info: HandleInfo,
    ) -> PyResult<Py<RemoteTensor>> {
        let host = owner.host_of(info.handle);
        Py::new(
            py,
            RemoteTensor {
                owner,
                handle: None,
                dtype: DType::from_name(&info.dtype),
                shape: Some(info.shape),
                device: Some(info.device),
                host,
                state: Mutex::new(State {
                    shared: Some(name),
                    owned: false,
                    freed: false,
                }),
            },
        )
    }

    /// Whether `free` was called on it.
    pub fn freed_now(&self) -> bool {
        self.state().freed
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_owner(&self, owner: &dyn Owner) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.owner), owner as *const dyn Owner)
    }

    /// How `owner` names this tensor in a request: by handle if it is its
    /// own, by name if shared; refused if freed, or another client's and
    /// not shared (its handle would mean nothing there, or another tensor).
    pub fn reference(&self, owner: &dyn Owner) -> PyResult<TensorRef> {
        let st = self.state();
        if st.freed {
            return Err(unknown_tensor(format!("{} was freed", self.describe(&st))));
        }
        match (self.handle, &st.shared) {
            (Some(h), _) if self.is_owner(owner) => Ok(TensorRef::Handle(h)),
            (_, Some(name)) => Ok(TensorRef::Shared(name.clone())),
            _ => Err(unknown_tensor(format!(
                "{} belongs to another {}: a handle is valid only on the connection that made \
                 it; share it under a name (c.share(t, \"name\")) to use it from another client",
                self.describe(&st),
                self.owner.class()
            ))),
        }
    }

    /// Marks it freed and returns its reference, for `owner`'s `free`
    /// (`None`: freed already).
    pub fn take_for_free(&self, owner: &dyn Owner) -> PyResult<Option<TensorRef>> {
        let r = match self.reference(owner) {
            Ok(r) => r,
            Err(_) if self.state().freed => return Ok(None),
            Err(e) => return Err(e),
        };
        self.state().freed = true;
        Ok(Some(r))
    }

    /// Marks it shared under `name` (it no longer frees its handle when
    /// dropped).
    pub fn set_shared(&self, name: String) {
        let mut st = self.state();
        st.shared = Some(name);
        st.owned = false;
    }

    /// Its handle, for `share` (refused when freed, another client's, or
    /// named only).
    pub fn own_handle(&self, owner: &dyn Owner) -> PyResult<u64> {
        if let Some(n) = &self.state().shared {
            return Err(crate::errors::bad_argument(format!(
                "this tensor is already shared as '{n}'"
            )));
        }
        match self.reference(owner)? {
            TensorRef::Handle(h) => Ok(h),
            TensorRef::Shared(n) => Err(crate::errors::bad_argument(format!(
                "this tensor is already shared as '{n}'"
            ))),
        }
    }

    fn describe(&self, st: &State) -> String {
        match (self.handle, &st.shared) {
            (_, Some(n)) => format!("RemoteTensor('{n}')"),
            (Some(h), None) => format!("RemoteTensor(handle {h})"),
            (None, None) => "RemoteTensor".to_owned(),
        }
    }
}

/// `s` quoted as Python's `repr` quotes a plain string.
fn py_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[pymethods]
impl RemoteTensor {
    /// The server's handle (an int), or None for a tensor named only
    /// (`client.remote(name)`).
    #[getter]
    fn handle(&self) -> Option<u64> {
        self.handle
    }

    /// The name it is shared under, or None.
    #[getter]
    fn name(&self) -> Option<String> {
        self.state().shared.clone()
    }

    /// The shape, a tuple of ints.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.shape.as_ref().map(|s| PyTuple::new(py, s)).transpose()
    }

    /// The dtype, a numpy dtype (bfloat16 through ml_dtypes).
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.dtype.map(|d| convert::numpy_dtype(py, d)).transpose()
    }

    /// The device whose memory holds it ("cpu", "cuda:0", "mps").
    #[getter]
    fn device(&self) -> Option<String> {
        self.device.clone()
    }

    /// The cluster host that holds it (MympsCluster's tensors), else None.
    #[getter]
    fn host(&self) -> Option<String> {
        self.handle
            .and_then(|h| self.owner.host_of(h))
            .or_else(|| self.host.clone())
    }

    /// Number of dimensions.
    #[getter]
    fn ndim(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// Size of its data in bytes.
    #[getter]
    fn nbytes(&self) -> Option<u64> {
        let (shape, dtype) = (self.shape.as_ref()?, self.dtype?);
        shape
            .iter()
            .try_fold(dtype.itemsize() as u64, |n, &d| n.checked_mul(d))
    }

    /// Whether it was freed (by `free`).
    #[getter]
    fn freed(&self) -> bool {
        self.state().freed
    }

    /// Its data, fetched from the server: a numpy array of its own.
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let r = self.reference(&*self.owner)?;
        let t = self
            .owner
            .fetch(py, vec![r])?
            .pop()
            .ok_or_else(|| internal("fetch returned no tensor"))?;
        convert::tensor_to_array(py, t)
    }

    /// numpy's conversion protocol: `numpy.asarray(t)` fetches the data.
    #[pyo3(signature = (dtype = None, copy = None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = copy; // a fetched array is always a new one
        let a = self.numpy(py)?;
        match dtype.filter(|d| !d.is_none()) {
            Some(d) => a.call_method1("astype", (d,)),
            None => Ok(a),
        }
    }

    /// Frees it on the server now (one request); later uses raise
    /// UnknownTensorError. A shared tensor is freed for every connection.
    /// Returns whether the server freed it (False: already gone).
    fn free(&self, py: Python<'_>) -> PyResult<bool> {
        match self.take_for_free(&*self.owner)? {
            None => Ok(false),
            Some(r) => Ok(self.owner.free(py, vec![r])?.freed > 0),
        }
    }

    fn __repr__(&self) -> String {
        let st = self.state();
        let mut parts = Vec::new();
        if let Some(h) = self.handle {
            parts.push(format!("handle={h}"));
        }
        if let Some(n) = &st.shared {
            parts.push(format!("name={}", py_str(n)));
        }
        if let Some(s) = &self.shape {
            let dims: Vec<String> = s.iter().map(u64::to_string).collect();
            let comma = if dims.len() == 1 { "," } else { "" };
            parts.push(format!("shape=({}{comma})", dims.join(", ")));
        }
        if let Some(d) = self.dtype {
            parts.push(format!("dtype={}", d.name()));
        }
        if let Some(d) = &self.device {
            parts.push(format!("device={}", py_str(d)));
        }
        if let Some(h) = self.host() {
            parts.push(format!("host={}", py_str(&h)));
        }
        if st.freed {
            parts.push("freed".to_owned());
        }
        format!("RemoteTensor({})", parts.join(", "))
    }
}
