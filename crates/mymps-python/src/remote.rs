//! [`Remote`]: what `MympsClient` and `MympsCluster` share, written once
//! over any [`Service`] (one server's client, or a cluster).
//!
//! It owns the blocking caller, releases the GIL while a call waits (and
//! wakes every [`SIGNAL_CHECK`] for Ctrl-C), refuses use in a forked
//! child, and turns Python arguments into typed requests
//! ([`mymps::protocol::rpc`]) and their replies into Python objects. The two
//! classes' `#[pymethods]` are their Python signatures and docs over it.

use std::mem::ManuallyDrop;
use std::time::Duration;

use mymps::Value;
use mymps::client::{Blocking, Call, Service};
use mymps::model::{LoadRequest, ModelInfo};
use mymps::protocol::rpc::{self, Infer, Rpc};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::convert;
use crate::errors::to_py;

/// A dict of `value`'s fields named here, by their names:
/// `fields!(py, info; name, device)` is `{"name": info.name, "device":
/// info.device}`; `fields!(in d, info; ...)` adds them to the dict `d`.
macro_rules! fields {
    (in $dict:expr, $value:expr; $($field:ident),* $(,)?) => {{
        let v = &$value;
        $($dict.set_item(stringify!($field), &v.$field)?;)*
    }};
    ($py:expr, $value:expr; $($field:ident),* $(,)?) => {{
        let d = PyDict::new($py);
        fields!(in d, $value; $($field),*);
        d
    }};
}
pub(crate) use fields;

/// How often a waiting call wakes up to let Python handle signals (Ctrl-C).
pub const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// A blocking caller owned by a Python object.
pub struct Remote<S: Service> {
    /// Dropped by hand (see `Drop`): never in a forked child.
    inner: ManuallyDrop<Blocking<S>>,
    /// The process that made it: after a `fork`, the child has its memory
    /// but not its runtime's threads, so it must not use it.
    pid: u32,
    /// The Python class, for messages (`MympsClient`).
    class: &'static str,
}

impl<S: Service> Drop for Remote<S> {
    fn drop(&mut self) {
        if self.forked() {
            // A forked child has the runtime's memory but not its threads:
            // shutting it down would wait for threads that do not exist (and
            // its locks may have been held at the fork). The memory is the
            // parent's copy; leaving it is harmless.
            return;
        }
        // SAFETY: `inner` is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.inner) };
    }
}

/// A model's description as Python sees it.
pub fn model_dict<'py>(py: Python<'py>, m: &ModelInfo) -> PyResult<Bound<'py, PyDict>> {
    Ok(fields!(py, m; name, model_type, device, loaded_at, metadata))
}

/// A loaded model's description with `"status": "ok"` (`load_model`'s
/// answer).
pub fn loaded_dict<'py>(py: Python<'py>, m: &ModelInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = model_dict(py, m)?;
    d.set_item("status", "ok")?;
    Ok(d)
}

/// `load_model`'s arguments as a request.
#[allow(clippy::too_many_arguments)]
pub fn load_request(
    name: String,
    model_type: String,
    model_path: Option<String>,
    model_class: Option<String>,
    dtype: Option<String>,
    trust_remote_code: bool,
    config: Option<&Bound<'_, PyAny>>,
    engine: Option<String>,
) -> PyResult<LoadRequest> {
    Ok(LoadRequest {
        name,
        model_type,
        model_path,
        model_class,
        dtype,
        trust_remote_code,
        config: convert::model_config(config)?,
        engine,
    })
}

fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::None => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(x) => x.into_pyobject(py)?.into_any(),
        Value::Str(s) => s.into_pyobject(py)?.into_any(),
        Value::List(items) => {
            let l = PyList::empty(py);
            for x in items {
                l.append(value_to_py(py, x)?)?;
            }
            l.into_any()
        }
    })
}

impl<S: Service> Remote<S> {
    /// Keeps `inner` for the Python object of class `class`.
    pub fn new(inner: Blocking<S>, class: &'static str) -> Remote<S> {
        Remote {
            inner: ManuallyDrop::new(inner),
            pid: std::process::id(),
            class,
        }
    }

    /// Whether this process is a fork of the one that made it.
    pub fn forked(&self) -> bool {
        std::process::id() != self.pid
    }

    /// The async service underneath (not to be used in a forked child).
    pub fn as_async(&self) -> &S {
        self.inner.as_async()
    }

    /// Runs `request` to completion on the runtime, with the GIL released
    /// while it waits.
    ///
    /// The wait wakes every [`SIGNAL_CHECK`] to run Python's signal
    /// handlers (with the GIL), so Ctrl-C interrupts a long call at once
    /// (`KeyboardInterrupt`) instead of after the reply or the timeout. The
    /// request is then abandoned: its late reply is dropped when it comes.
    pub fn wait<F, T>(&self, py: Python<'_>, request: F) -> PyResult<T>
    where
        F: std::future::Future<Output = mymps::Result<T>> + Send,
        T: Send,
    {
        if self.forked() {
            return Err(to_py(mymps::Error::connection(format!(
                "this {} was created in another process (before a fork) and cannot be \
                 used in this one; create a new {} here",
                self.class, self.class
            ))));
        }
        let mut request = std::pin::pin!(request);
        loop {
            // The timer must be made inside the runtime, hence the async block.
            let step = py.detach(|| {
                self.inner
                    .block_on(async { tokio::time::timeout(SIGNAL_CHECK, request.as_mut()).await })
            });
            match step {
                Ok(done) => return done.map_err(to_py),
                Err(_elapsed) => py.check_signals()?,
            }
        }
    }

    /// Sends a typed request and waits for its reply (see [`Remote::wait`]).
    pub fn call<R: Rpc>(&self, py: Python<'_>, rpc: R) -> PyResult<R::Reply> {
        self.wait(py, self.as_async().rpc(rpc))
    }

    /// Closes the connections (not in a forked child).
    pub fn close(&self) {
        if !self.forked() {
            self.inner.close();
        }
    }

    /// `exec(op, inputs, **kwargs)`.
    pub fn exec<'py>(
        &self,
        py: Python<'py>,
        op: &str,
        inputs: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (tensors, kwargs) = convert::exec_args(inputs, kwargs)?;
        let out = self.call(py, Call::with(op, tensors, kwargs))?;
        convert::outputs(py, out.tensors)
    }

    /// `infer(name, inputs)`.
    pub fn infer<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        inputs: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let inputs = convert::infer_inputs(inputs)?;
        let out = self.call(py, Infer::new(name, inputs))?;
        convert::outputs(py, out.tensors)
    }

    /// `list_ops()`, sorted.
    pub fn list_ops(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let mut ops = self.call(py, rpc::OpNames)?;
        ops.sort_unstable();
        Ok(ops)
    }

    /// `describe_op(op)`.
    pub fn describe_op<'py>(&self, py: Python<'py>, op: &str) -> PyResult<Bound<'py, PyDict>> {
        let info = self.call(py, rpc::DescribeOp { op: op.into() })?;
        let d = fields!(py, info; name, category, doc, signature);
        let params = PyList::empty(py);
        for p in &info.params {
            let pd = fields!(py, p; name, kind, required);
            match &p.default {
                Some(v) => pd.set_item("default", value_to_py(py, v)?)?,
                None => pd.set_item("default", py.None())?,
            }
            params.append(pd)?;
        }
        d.set_item("params", params)?;
        d.set_item("outputs", &info.outputs)?;
        Ok(d)
    }

    /// `health()`.
    pub fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.call(py, rpc::Health)?;
        Ok(
            fields!(py, h; status, version, protocol, backend, device, torch_version,
                   models_loaded, ops, uptime_s),
        )
    }

    /// `stats()`.
    pub fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.call(py, rpc::Stats)?;
        Ok(
            fields!(py, s; cpu_percent, cpu_count, load_avg, memory_total_gb, memory_used_gb,
                   memory_percent, process_rss_mb, process_cpu_percent, device,
                   accelerator_memory_total_mb, accelerator_memory_used_mb,
                   accelerator_memory_free_mb),
        )
    }

    /// `load_model(...)` on one server.
    pub fn load_model<'py>(
        &self,
        py: Python<'py>,
        request: LoadRequest,
    ) -> PyResult<Bound<'py, PyDict>> {
        let info = self.call(py, rpc::LoadModel(request))?;
        loaded_dict(py, &info)
    }

    /// `list_models()` of one server.
    pub fn list_models<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let models = self.call(py, rpc::ListModels)?;
        let l = PyList::empty(py);
        for m in &models {
            l.append(model_dict(py, m)?)?;
        }
        Ok(l)
    }

    /// `model_info(name)`.
    pub fn model_info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let info = self.call(py, rpc::ModelInfo { name: name.into() })?;
        model_dict(py, &info)
    }

    /// `unload_model(name)` on one server.
    pub fn unload_model<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        self.call(py, rpc::UnloadModel { name: name.into() })?;
        let d = PyDict::new(py);
        d.set_item("status", "ok")?;
        d.set_item("name", name)?;
        Ok(d)
    }
}
