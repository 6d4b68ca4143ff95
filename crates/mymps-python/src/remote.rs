//! [`Remote`]: what `MympsClient` and `MympsCluster` share, written once
//! over any [`Service`] (one server's client, or a cluster).
//!
//! It owns the blocking caller, releases the GIL while a call waits (and
//! wakes every [`SIGNAL_CHECK`] for Ctrl-C), refuses use in a forked
//! child, and turns Python arguments into typed requests
//! ([`mymps::protocol::rpc`]) and their replies into Python objects. The two
//! classes' `#[pymethods]` are their Python signatures and docs over it.
//!
//! The caller lives in a [`Link`], shared (`Arc`) by the Python object and
//! by every [`RemoteTensor`] it made: a tensor can be fetched as long as it
//! lives, and one that Python drops queues its handle on the link, to be
//! freed with many others in one request (see [`Link::release`]).

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mymps::client::{Blocking, Call, Caller, Generation, Service};
use mymps::model::{LoadRequest, ModelInfo, Step};
use mymps::protocol::rpc::{self, Infer, Rpc, RunGraph};
use mymps::protocol::{Graph, HandleInfo, Keep, TensorRef};
use mymps::{Tensor, Value};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::convert;
use crate::errors::{bad_argument, to_py};
use crate::generate::StreamLink;
use crate::tensor::{Owner, RemoteTensor};

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

/// Handles dropped by Python are sent to be freed, without waiting for the
/// next call, once this many are queued.
pub const FREE_AT: usize = 1024;

/// Most handles one `free` request carries.
pub const FREE_BATCH: usize = 8192;

/// What a service tells of the handles it hands out.
pub trait Handles: Service {
    /// The host holding a handle's tensor (`None`: the service is one
    /// server).
    fn host_of(&self, handle: u64) -> Option<String>;
}

impl Handles for mymps::client::Client {
    fn host_of(&self, _: u64) -> Option<String> {
        None
    }
}

impl Handles for mymps::cluster::Cluster {
    fn host_of(&self, handle: u64) -> Option<String> {
        self.handle_host(handle)
    }
}

/// A blocking caller and the handles Python dropped, shared by a Python
/// object and the [`RemoteTensor`]s it made.
pub struct Link<S: Service> {
    /// Dropped by hand (see `Drop`): never in a forked child.
    inner: ManuallyDrop<Blocking<S>>,
    /// The process that made it: after a `fork`, the child has its memory
    /// but not its runtime's threads, so it must not use it.
    pid: u32,
    /// The Python class, for messages (`MympsClient`).
    class: &'static str,
    /// Handles whose `RemoteTensor` Python dropped, to be freed.
    dropped: Mutex<Vec<TensorRef>>,
    /// A thread is sending dropped handles now.
    flushing: AtomicBool,
    /// `close()` was called: dropped handles just go (the server frees a
    /// closed connection's tensors itself).
    closed: AtomicBool,
}

impl<S: Service> Drop for Link<S> {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
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

impl<S: Handles> Link<S> {
    /// Whether this process is a fork of the one that made it.
    pub fn forked(&self) -> bool {
        std::process::id() != self.pid
    }

    /// The async service underneath (not to be used in a forked child).
    pub fn as_async(&self) -> &S {
        self.inner.as_async()
    }

    /// Takes at most [`FREE_BATCH`] dropped handles.
    fn take_dropped(&self) -> Vec<TensorRef> {
        let mut q = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() <= FREE_BATCH {
            std::mem::take(&mut *q)
        } else {
            q.drain(..FREE_BATCH).collect()
        }
    }

    fn dropped_len(&self) -> usize {
        self.dropped.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sends the dropped handles, in batches, from a thread of its own
    /// (started by [`Link::release`] when [`FREE_AT`] are queued): Python
    /// may drop a tensor anywhere, where waiting on the network is not
    /// allowed.
    fn flush_in_background(self: Arc<Self>) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.clone();
        let started = std::thread::Builder::new()
            .name("mymps-free".into())
            .spawn(move || {
                loop {
                    while link.dropped_len() >= FREE_AT && !link.closed.load(Ordering::Acquire) {
                        let refs = link.take_dropped();
                        // A failure (the connection is gone) frees them too.
                        let _ = link.inner.call(rpc::Free { refs });
                    }
                    link.flushing.store(false, Ordering::Release);
                    // Handles queued while the flag was still set.
                    if link.dropped_len() < FREE_AT || link.flushing.swap(true, Ordering::AcqRel) {
                        break;
                    }
                }
            });
        if started.is_err() {
            // Sent with the next call instead.
            self.flushing.store(false, Ordering::Release);
        }
    }

    /// Runs `request` to completion on the runtime, with the GIL released
    /// while it waits; handles Python dropped since the last call are freed
    /// in the same round trip (their `free` is sent alongside).
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
        let dropped = self.take_dropped();
        // Put back if the call is abandoned (Ctrl-C) before the free is
        // known to have gone: freeing a handle twice is harmless (handles
        // are never reused; the second time it is reported unknown).
        let unsent = dropped.clone();
        let free = (!dropped.is_empty()).then(|| self.as_async().rpc(rpc::Free { refs: dropped }));
        let request = async move {
            match free {
                // A failed free changes nothing for the request.
                Some(free) => tokio::join!(free, request).1,
                None => request.await,
            }
        };
        let mut request = std::pin::pin!(request);
        loop {
            // The timer must be made inside the runtime, hence the async block.
            let step = py.detach(|| {
                self.inner
                    .block_on(async { tokio::time::timeout(SIGNAL_CHECK, request.as_mut()).await })
            });
            match step {
                Ok(done) => return done.map_err(to_py),
                Err(_elapsed) => {
                    if let Err(interrupted) = py.check_signals() {
                        if !unsent.is_empty() {
                            self.dropped
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .extend(unsent);
                        }
                        return Err(interrupted);
                    }
                }
            }
        }
    }

    /// Sends a typed request and waits for its reply (see [`Link::wait`]).
    pub fn call<R: Rpc>(&self, py: Python<'_>, rpc: R) -> PyResult<R::Reply> {
        self.wait(py, self.as_async().rpc(rpc))
    }
}

impl<S: Handles> StreamLink for Link<S> {
    fn next_step(
        &self,
        py: Python<'_>,
        generation: &mut Generation,
    ) -> PyResult<Option<mymps::Result<Step>>> {
        self.wait(py, async { Ok(generation.next().await) })
    }

    fn cancel(&self, py: Python<'_>, generation: &mut Generation) -> PyResult<()> {
        self.wait(py, async {
            generation.cancel().await;
            Ok(())
        })
    }

    fn discard(&self, mut generation: Generation) {
        if self.forked() {
            // Its runtime's threads are the parent's (see `Drop for Link`).
            std::mem::forget(generation);
            return;
        }
        if generation.is_ended() || tokio::runtime::Handle::try_current().is_ok() {
            // Nothing to cancel, or a runtime at hand for the cancel that
            // dropping it spawns.
            return;
        }
        // Sent now, not spawned: the TCP client's runtime runs on the
        // callers' threads, so a spawned cancel would wait for the next
        // call while the server went on generating. One small frame,
        // written at once (an unlikely wait for the socket finishes with
        // the next call).
        self.inner.block_on(generation.cancel());
    }
}

impl<S: Handles> Owner for Link<S> {
    fn release(self: Arc<Self>, r: TensorRef) {
        if self.forked() || self.closed.load(Ordering::Acquire) {
            return;
        }
        let n = {
            let mut q = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
            q.push(r);
            q.len()
        };
        if n >= FREE_AT {
            self.flush_in_background();
        }
    }

    fn fetch(&self, py: Python<'_>, refs: Vec<TensorRef>) -> PyResult<Vec<Tensor>> {
        self.call(py, rpc::Fetch { refs })
    }

    fn free(&self, py: Python<'_>, refs: Vec<TensorRef>) -> PyResult<rpc::Freed> {
        self.call(py, rpc::Free { refs })
    }

    fn host_of(&self, handle: u64) -> Option<String> {
        if self.forked() {
            return None;
        }
        self.as_async().host_of(handle)
    }

    fn class(&self) -> &'static str {
        self.class
    }
}

/// A blocking caller owned by a Python object.
pub struct Remote<S: Handles> {
    link: Arc<Link<S>>,
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

/// `keep=` of exec, infer and graphs: None or False (nothing), True
/// (every result), a result's name, or a list of names.
pub fn keep_of(keep: Option<&Bound<'_, PyAny>>) -> PyResult<Keep> {
    let Some(k) = keep.filter(|k| !k.is_none()) else {
        return Ok(Keep::None);
    };
    if let Ok(b) = k.cast::<pyo3::types::PyBool>() {
        return Ok(if b.is_true() { Keep::All } else { Keep::None });
    }
    if let Ok(name) = k.extract::<String>() {
        return Ok(Keep::Some(vec![name]));
    }
    match k.extract::<Vec<String>>() {
        Ok(names) if names.is_empty() => Ok(Keep::None),
        Ok(names) => Ok(Keep::Some(names)),
        Err(_) => Err(bad_argument(format!(
            "keep is True (every result), a result's name, or a list of names, not {}",
            k.repr()?
        ))),
    }
}

/// `keep` taken out of an `exec`'s `**kwargs` (no op has a parameter of
/// that name).
fn take_keep(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Keep> {
    let Some(kw) = kwargs else {
        return Ok(Keep::None);
    };
    match kw.get_item("keep")? {
        None => Ok(Keep::None),
        Some(k) => {
            kw.del_item("keep")?;
            keep_of(Some(&k))
        }
    }
}

/// A graph from the builder (`mymps.graph`): steps `(op, {arg: source},
/// {kwarg: value})` and outputs `(name, source)`, a source being
/// `("input", name)` or `("step", index, result)`.
fn graph_of(steps: &Bound<'_, PyAny>, outputs: &Bound<'_, PyAny>) -> PyResult<Graph> {
    use mymps::protocol::{GraphStep, Source};
    fn source(s: &Bound<'_, PyAny>) -> PyResult<Source> {
        let kind: String = s.get_item(0)?.extract()?;
        match kind.as_str() {
            "input" => Ok(Source::Input(s.get_item(1)?.extract()?)),
            "step" => Ok(Source::Step(
                s.get_item(1)?.extract()?,
                s.get_item(2)?.extract()?,
            )),
            other => Err(bad_argument(format!(
                "a graph source is 'input' or 'step', not {other:?}"
            ))),
        }
    }
    let mut out = Graph {
        steps: Vec::new(),
        outputs: Vec::new(),
    };
    for step in steps.try_iter()? {
        let step = step?;
        let op: String = step.get_item(0)?.extract()?;
        let mut inputs = std::collections::BTreeMap::new();
        for item in step.get_item(1)?.call_method0("items")?.try_iter()? {
            let item = item?;
            inputs.insert(
                item.get_item(0)?.extract::<String>()?,
                source(&item.get_item(1)?)?,
            );
        }
        let kw = step.get_item(2)?;
        let kwargs = convert::kwargs(Some(kw.cast::<PyDict>()?))?
            .into_iter()
            .collect();
        out.steps.push(GraphStep { op, inputs, kwargs });
    }
    for o in outputs.try_iter()? {
        let o = o?;
        out.outputs
            .push((o.get_item(0)?.extract()?, source(&o.get_item(1)?)?));
    }
    Ok(out)
}

impl<S: Handles> Remote<S> {
    /// Keeps `inner` for the Python object of class `class`.
    pub fn new(inner: Blocking<S>, class: &'static str) -> Remote<S> {
        Remote {
            link: Arc::new(Link {
                inner: ManuallyDrop::new(inner),
                pid: std::process::id(),
                class,
                dropped: Mutex::new(Vec::new()),
                flushing: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Whether this process is a fork of the one that made it.
    pub fn forked(&self) -> bool {
        self.link.forked()
    }

    /// The link shared with the objects this one made.
    pub fn link(&self) -> &Arc<Link<S>> {
        &self.link
    }

    /// The async service underneath (not to be used in a forked child).
    pub fn as_async(&self) -> &S {
        self.link.as_async()
    }

    /// See [`Link::wait`].
    pub fn wait<F, T>(&self, py: Python<'_>, request: F) -> PyResult<T>
    where
        F: std::future::Future<Output = mymps::Result<T>> + Send,
        T: Send,
    {
        self.link.wait(py, request)
    }

    /// Sends a typed request and waits for its reply (see [`Link::wait`]).
    pub fn call<R: Rpc>(&self, py: Python<'_>, rpc: R) -> PyResult<R::Reply> {
        self.link.call(py, rpc)
    }

    /// Closes the connections (not in a forked child). Handles queued to be
    /// freed are dropped: the server frees a closed connection's tensors.
    pub fn close(&self) {
        if !self.forked() {
            self.link.closed.store(true, Ordering::Release);
            self.link
                .dropped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            self.link.inner.close();
        }
    }

    fn owner(&self) -> Arc<dyn Owner> {
        self.link.clone()
    }

    /// A kept result as a `RemoteTensor`.
    fn tensor(&self, py: Python<'_>, info: HandleInfo) -> PyResult<Py<RemoteTensor>> {
        RemoteTensor::owned(py, self.owner(), info)
    }

    /// The results of `exec`, `infer` and graphs: arrays, and
    /// `RemoteTensor`s for those kept, in the results' order.
    fn results<'py>(&self, py: Python<'py>, out: rpc::Outputs) -> PyResult<Bound<'py, PyDict>> {
        if out.kept.is_empty() {
            return convert::outputs(py, out.tensors);
        }
        let mut items: Vec<(String, Bound<'py, PyAny>)> = Vec::new();
        for (name, t) in out.tensors {
            items.push((name, convert::tensor_to_array(py, t)?));
        }
        for h in out.kept {
            let name = h.name.clone();
            items.push((name, self.tensor(py, h)?.into_bound(py).into_any()));
        }
        if items.iter().all(|(n, _)| n.parse::<u64>().is_ok()) {
            items.sort_by_key(|(n, _)| n.parse::<u64>().unwrap_or(u64::MAX));
        }
        let d = PyDict::new(py);
        for (name, v) in items {
            d.set_item(name, v)?;
        }
        Ok(d)
    }

    /// `exec(op, inputs, keep=..., **kwargs)`.
    pub fn exec<'py>(
        &self,
        py: Python<'py>,
        op: &str,
        inputs: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let keep = take_keep(kwargs)?;
        let args = convert::exec_args(inputs, kwargs, &*self.link)?;
        let mut call = Call::with(op, args.tensors, args.kwargs);
        for (name, r) in args.refs {
            call = call.input_ref(name, r);
        }
        let out = self.call(py, call.keep(keep))?;
        self.results(py, out)
    }

    /// `infer(name, inputs, keep=...)`.
    pub fn infer<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        inputs: Option<&Bound<'py, PyAny>>,
        keep: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let keep = keep_of(keep)?;
        let (inputs, refs) = convert::infer_inputs(inputs, &*self.link)?;
        let mut request = Infer::new(name, inputs);
        request.refs = refs.into_iter().collect();
        request.keep = keep;
        let out = self.call(py, request)?;
        self.results(py, out)
    }

    /// `put(array)`: one tensor kept on the server.
    pub fn put(&self, py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<Py<RemoteTensor>> {
        if array.cast::<RemoteTensor>().is_ok() {
            return Err(bad_argument(
                "put takes an array; this is a RemoteTensor already",
            ));
        }
        let t = convert::array_to_tensor("0", array)?;
        let info = self
            .call(py, rpc::Put::one(t))?
            .pop()
            .ok_or_else(|| crate::errors::internal("put returned no handle"))?;
        self.tensor(py, info)
    }

    /// `put_many(arrays)`: a dict of arrays → a dict of `RemoteTensor`s, a
    /// list (or tuple) → a list, in one request.
    pub fn put_many<'py>(
        &self,
        py: Python<'py>,
        arrays: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dict = arrays.cast::<PyDict>().ok();
        let named: Vec<(String, Bound<'py, PyAny>)> = match &dict {
            Some(d) => d
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.extract::<String>()
                            .map_err(|_| bad_argument("put_many: a dict's keys are strings"))?,
                        v,
                    ))
                })
                .collect::<PyResult<_>>()?,
            None => arrays
                .try_iter()
                .map_err(|_| bad_argument("put_many takes a dict or a list of arrays"))?
                .enumerate()
                .map(|(i, v)| Ok((i.to_string(), v?)))
                .collect::<PyResult<_>>()?,
        };
        let mut tensors = Vec::with_capacity(named.len());
        for (name, v) in &named {
            tensors.push((name.clone(), convert::array_to_tensor(name, v)?));
        }
        let infos = if tensors.is_empty() {
            Vec::new()
        } else {
            self.call(py, rpc::Put { tensors })?
        };
        if infos.len() != named.len() {
            return Err(crate::errors::internal(format!(
                "put: {} handles for {} tensors",
                infos.len(),
                named.len()
            )));
        }
        if dict.is_some() {
            let d = PyDict::new(py);
            for ((name, _), info) in named.into_iter().zip(infos) {
                d.set_item(name, self.tensor(py, info)?)?;
            }
            Ok(d.into_any())
        } else {
            let l = PyList::empty(py);
            for info in infos {
                l.append(self.tensor(py, info)?)?;
            }
            Ok(l.into_any())
        }
    }

    /// `get(x)`: a RemoteTensor's data; a list/tuple or dict of them (and
    /// of arrays, passed through) in one request.
    pub fn get<'py>(
        &self,
        py: Python<'py>,
        what: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(t) = what.cast::<RemoteTensor>() {
            let r = t.get().reference(&*self.link)?;
            let t = self
                .call(py, rpc::Fetch { refs: vec![r] })?
                .pop()
                .ok_or_else(|| crate::errors::internal("fetch returned no tensor"))?;
            return convert::tensor_to_array(py, t);
        }
        let dict = what.cast::<PyDict>().ok();
        let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = match &dict {
            Some(d) => d.iter().collect(),
            None if what.is_instance_of::<PyList>()
                || what.is_instance_of::<pyo3::types::PyTuple>() =>
            {
                what.try_iter()?
                    .enumerate()
                    .map(|(i, v)| Ok((i.into_pyobject(py)?.into_any(), v?)))
                    .collect::<PyResult<_>>()?
            }
            // An array (or anything else that is not remote) as it is.
            None => return Ok(what.clone()),
        };
        let mut refs = Vec::new();
        for (_, v) in &items {
            if let Ok(t) = v.cast::<RemoteTensor>() {
                refs.push(t.get().reference(&*self.link)?);
            }
        }
        let mut fetched = if refs.is_empty() {
            Vec::new()
        } else {
            self.call(py, rpc::Fetch { refs })?
        }
        .into_iter();
        let mut values = Vec::with_capacity(items.len());
        for (k, v) in items {
            let v = if v.cast::<RemoteTensor>().is_ok() {
                let t = fetched
                    .next()
                    .ok_or_else(|| crate::errors::internal("fetch returned too few tensors"))?;
                convert::tensor_to_array(py, t)?
            } else {
                v
            };
            values.push((k, v));
        }
        if dict.is_some() {
            let d = PyDict::new(py);
            for (k, v) in values {
                d.set_item(k, v)?;
            }
            Ok(d.into_any())
        } else {
            Ok(PyList::new(py, values.into_iter().map(|(_, v)| v))?.into_any())
        }
    }

    /// `free(x)`: a RemoteTensor, or a list/tuple/dict of them, in one
    /// request; the number the server freed.
    pub fn free(&self, py: Python<'_>, what: &Bound<'_, PyAny>) -> PyResult<u64> {
        let items: Vec<Bound<'_, PyAny>> = if what.cast::<RemoteTensor>().is_ok() {
            vec![what.clone()]
        } else if let Ok(d) = what.cast::<PyDict>() {
            d.values().iter().collect()
        } else {
            what.try_iter()
                .map_err(|_| bad_argument("free takes a RemoteTensor, or a list or dict of them"))?
                .collect::<PyResult<_>>()?
        };
        let mut tensors = Vec::with_capacity(items.len());
        for v in &items {
            let t = v.cast::<RemoteTensor>().map_err(|_| {
                bad_argument(format!(
                    "free takes RemoteTensors, not {}",
                    v.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            tensors.push(t.get());
        }
        // Every one is checked before any is marked freed.
        for t in &tensors {
            if !t.freed_now() {
                t.reference(&*self.link)?;
            }
        }
        let mut refs = Vec::new();
        for t in tensors {
            refs.extend(t.take_for_free(&*self.link)?);
        }
        if refs.is_empty() {
            return Ok(0);
        }
        Ok(self.call(py, rpc::Free { refs })?.freed)
    }

    /// `share(t, name)`: `t` under a server-wide name; `t` itself then
    /// refers by that name too and is no longer freed when dropped.
    pub fn share<'py>(
        &self,
        py: Python<'py>,
        t: &Bound<'py, RemoteTensor>,
        name: String,
    ) -> PyResult<Bound<'py, RemoteTensor>> {
        let handle = t.get().own_handle(&*self.link)?;
        self.call(
            py,
            rpc::Share {
                handle,
                name: name.clone(),
            },
        )?;
        t.get().set_shared(name);
        Ok(t.clone())
    }

    /// `remote(name)`: the tensor shared as `name`, as this client refers
    /// to it; its dtype, shape and device from one `describe` (no data
    /// travels). An unknown name is the server's `unknown_tensor`.
    pub fn remote(&self, py: Python<'_>, name: String) -> PyResult<Py<RemoteTensor>> {
        if name.is_empty() {
            return Err(bad_argument("a shared tensor's name is not empty"));
        }
        let info = self
            .call(
                py,
                rpc::Describe {
                    refs: vec![TensorRef::Shared(name.clone())],
                },
            )?
            .pop()
            .ok_or_else(|| crate::errors::internal("describe returned nothing"))?;
        RemoteTensor::named(py, self.owner(), name, info)
    }

    /// `_register_graph(steps, outputs)`: the graph's id.
    pub fn register_graph(
        &self,
        py: Python<'_>,
        steps: &Bound<'_, PyAny>,
        outputs: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let graph = graph_of(steps, outputs)?;
        self.call(py, rpc::RegisterGraph(graph))
    }

    /// `_run_graph(graph, inputs, keep)`: `graph` is a registered id or
    /// `(steps, outputs)`.
    pub fn run_graph<'py>(
        &self,
        py: Python<'py>,
        graph: &Bound<'py, PyAny>,
        inputs: Option<&Bound<'py, PyAny>>,
        keep: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut run = match graph.extract::<u64>() {
            Ok(id) => RunGraph::registered(id),
            Err(_) => RunGraph::inline(graph_of(&graph.get_item(0)?, &graph.get_item(1)?)?),
        };
        let args = convert::inputs(inputs, &*self.link)?;
        if let Some(n) = args.none.first() {
            return Err(bad_argument(format!(
                "graph input '{n}' is None; give it an array"
            )));
        }
        for (name, t) in args.tensors {
            run = run.input(name, t);
        }
        for (name, r) in args.refs {
            run = run.input_ref(name, r);
        }
        let out = self.call(py, run.keep(keep_of(keep)?))?;
        self.results(py, out)
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
                   models_loaded, ops, uptime_s, resident_tensors, resident_bytes),
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
