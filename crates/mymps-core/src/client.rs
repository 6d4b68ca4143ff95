//! The generic client: async [`Client`], and [`blocking::Client`] for
//! programs without an async runtime.
//!
//! One connection carries any number of requests at once: a `Client` is
//! cheap to clone and every clone shares the connection, so tasks (or, with
//! the blocking client, threads) may use it concurrently; replies are
//! matched to requests by id.
//!
//! Tensors go in as `(name, Tensor)` pairs (`"0"`, `"1"`, ... positional,
//! other names keyword) and come back as [`Outputs`]:
//!
//! ```no_run
//! # async fn demo() -> mymps_core::Result<()> {
//! use mymps_core::{Tensor, client::{Client, Call}};
//! let client = Client::connect("tcp://127.0.0.1:5555").await?;
//! let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3])?;
//! let out = client.call(Call::new("softmax").arg(x).kwarg("dim", -1)).await?;
//! let probs: Vec<f32> = out.output()?.to_vec()?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::{Error, ErrorCode, Result};
use crate::model::{LoadRequest, ModelInfo};
use crate::ops::OpInfo;
use crate::protocol::{
    self, ExecRequest, ExecResponse, Frame, FrameKind, HealthInfo, InferRequest, Limits, OpSummary,
    Request, Response, StatsInfo, Welcome,
};
use crate::tensor::Tensor;
use crate::transport::{Endpoint, FrameWriter, ReadError, TransportOptions, transport_for};
use crate::value::Value;

/// The default port, as in the first mymps.
pub const DEFAULT_PORT: u16 = 5555;
/// The default host.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// The default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Per-request timeout (connect and handshake included). Default 300 s.
    pub timeout: Duration,
    /// Authentication token, for servers that require one.
    pub token: Option<String>,
    /// Client software name sent in the handshake.
    pub agent: String,
    /// Transport settings (how to verify a TLS server).
    pub transport: TransportOptions,
    /// The largest reply this client accepts: its header, tensor count and
    /// total tensor bytes. A reply over these (a broken or hostile server)
    /// fails the connection before anything is allocated for it. Default:
    /// [`ClientOptions::REPLY_LIMITS`].
    pub reply_limits: Limits,
}

impl ClientOptions {
    /// Default reply limits: a 64 MiB header (an op list, a model's
    /// metadata), 65,535 tensors, 1 TiB of tensor bytes (received into
    /// memory mapped as it arrives; a failed mapping is an error), and no
    /// stall timeout (a request's own timeout bounds the wait).
    pub const REPLY_LIMITS: Limits = Limits {
        max_header_len: 64 << 20,
        max_tensors: u16::MAX,
        max_payload: 1 << 40,
        stall_timeout: Duration::MAX,
    };
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            timeout: DEFAULT_TIMEOUT,
            token: None,
            agent: format!("mymps-rust/{}", crate::VERSION),
            transport: TransportOptions::default(),
            reply_limits: ClientOptions::REPLY_LIMITS,
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Frame>>>>>>;

struct Inner {
    endpoint: Endpoint,
    welcome: Welcome,
    options: ClientOptions,
    next_id: AtomicU64,
    pending: Pending,
    writer: SharedWriter,
    fail_all: Arc<dyn Fn(Error) + Send + Sync>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The sending half, written to by the callers themselves (no hand-off to
/// a writer task); `None` once closed or failed.
type SharedWriter = Arc<tokio::sync::Mutex<Option<Box<dyn FrameWriter>>>>;

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// A connection to a mymps server. Clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint.to_string())
            .field("device", &self.inner.welcome.device)
            .finish()
    }
}

/// The results of `exec`.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// Results by name, in the server's order: `"output"` for one tensor,
    /// `"0"`, `"1"`, ... for a tuple.
    pub tensors: Vec<(String, Tensor)>,
    /// The device that ran the op.
    pub device: String,
    /// Seconds the op took on the server.
    pub elapsed_s: f64,
}

impl Outputs {
    /// The result called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The single result `"output"`.
    pub fn output(&self) -> Result<&Tensor> {
        self.get("output").ok_or_else(|| {
            let names: Vec<&str> = self.tensors.iter().map(|(n, _)| n.as_str()).collect();
            Error::bad_argument(format!(
                "no result named 'output' (results: {})",
                names.join(", ")
            ))
        })
    }

    /// The results as a map.
    pub fn into_map(self) -> BTreeMap<String, Tensor> {
        self.tensors.into_iter().collect()
    }
}

/// An op call under construction: positional tensors with [`Call::arg`],
/// keyword tensors with [`Call::input`], scalars with [`Call::kwarg`].
#[derive(Debug, Clone)]
pub struct Call {
    op: String,
    inputs: Vec<(String, Tensor)>,
    positional: usize,
    kwargs: BTreeMap<String, Value>,
}

impl Call {
    /// A call of `op` without arguments yet.
    pub fn new(op: impl Into<String>) -> Call {
        Call {
            op: op.into(),
            inputs: Vec::new(),
            positional: 0,
            kwargs: BTreeMap::new(),
        }
    }

    /// Adds the next positional tensor (`"0"`, then `"1"`, ...).
    pub fn arg(mut self, t: Tensor) -> Call {
        self.inputs.push((self.positional.to_string(), t));
        self.positional += 1;
        self
    }

    /// Adds a named tensor (`"weight"`, ...).
    pub fn input(mut self, name: impl Into<String>, t: Tensor) -> Call {
        self.inputs.push((name.into(), t));
        self
    }

    /// Adds a scalar keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, v: impl Into<Value>) -> Call {
        self.kwargs.insert(name.into(), v.into());
        self
    }
}

impl Client {
    /// Connects to `url` (`tcp://host:port`; `host:port` means TCP) with
    /// default options.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to `host:port` over TCP, as the Python client's
    /// `MympsClient(host, port, timeout)` does.
    pub async fn connect_host(host: &str, port: u16, timeout: Duration) -> Result<Client> {
        let options = ClientOptions {
            timeout,
            ..ClientOptions::default()
        };
        Client::connect_endpoint(Endpoint::new("tcp", host, port), options).await
    }

    /// Connects to `url` with `options`.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client> {
        Client::connect_endpoint(url.parse()?, options).await
    }

    /// Connects to an endpoint.
    pub async fn connect_endpoint(endpoint: Endpoint, options: ClientOptions) -> Result<Client> {
        let transport = transport_for(&endpoint.scheme)?;
        let timeout = options.timeout;
        let handshake = async {
            let conn = transport
                .connect(&endpoint, &options.transport)
                .await
                .map_err(|e| Error::connection(format!("cannot connect to {endpoint}: {e}")))?;
            let mut reader = conn.reader;
            let mut writer = conn.writer;
            let hello = protocol::hello(&options.agent, options.token.clone());
            writer
                .write_frame(protocol::encode(FrameKind::Hello, 0, &hello, vec![])?)
                .await
                .map_err(|e| Error::connection(format!("handshake with {endpoint} failed: {e}")))?;
            let reply = reader
                .read_frame(&Limits::HANDSHAKE, None)
                .await
                .map_err(|e| Error::connection(format!("handshake with {endpoint} failed: {e}")))?
                .ok_or_else(|| {
                    Error::connection(format!(
                        "{endpoint} closed the connection during the handshake"
                    ))
                })?;
            let welcome: Welcome = match reply.frame.kind {
                FrameKind::Welcome => protocol::decode_header(&reply.frame)?,
                _ => match protocol::decode_header::<Response>(&reply.frame)? {
                    Response::Error(e) => return Err(e),
                    other => {
                        return Err(Error::protocol(format!(
                            "unexpected handshake reply {other:?}"
                        )));
                    }
                },
            };
            Ok((reader, writer, welcome))
        };
        let (mut reader, writer, welcome) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorCode::Timeout,
                    format!("connecting to {endpoint} timed out after {timeout:?}"),
                )
            })??;

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let fail_all = {
            let pending = pending.clone();
            move |e: Error| {
                let waiting = pending.lock().unwrap_or_else(|p| p.into_inner()).take();
                for (_, w) in waiting.into_iter().flatten() {
                    let _ = w.send(Err(e.clone()));
                }
            }
        };
        let fail_on_write: Arc<dyn Fn(Error) + Send + Sync> = Arc::new(fail_all.clone());
        let reader_pending = pending.clone();
        let limits = options.reply_limits;
        let reader_task = tokio::spawn(async move {
            let err = loop {
                match reader.read_frame(&limits, None).await {
                    Ok(Some(inc)) => {
                        let waiter = reader_pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .as_mut()
                            .and_then(|m| m.remove(&inc.frame.id));
                        match waiter {
                            Some(w) => {
                                let _ = w.send(Ok(inc.frame));
                            }
                            // An id nobody waits for: an error about a frame
                            // the server could not parse, or a late reply
                            // after a timeout.
                            None => match protocol::decode_header::<Response>(&inc.frame) {
                                Ok(Response::Error(e)) if inc.frame.id == 0 => {
                                    break Error::new(
                                        e.code,
                                        format!("server closed the connection: {}", e.message),
                                    );
                                }
                                _ => tracing::debug!(
                                    id = inc.frame.id,
                                    "reply for no pending request"
                                ),
                            },
                        }
                    }
                    Ok(None) => break Error::connection("server closed the connection"),
                    Err(ReadError::Io(e)) => {
                        break Error::connection(format!("connection lost: {e}"));
                    }
                    Err(ReadError::Frame(e)) => {
                        break Error::protocol(format!("bad frame from server: {e}"));
                    }
                    Err(ReadError::Refused { error, .. }) => {
                        break Error::protocol(format!("bad frame from server: {error}"));
                    }
                }
            };
            fail_all(err);
        });
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                welcome,
                options,
                next_id: AtomicU64::new(1),
                pending,
                writer: Arc::new(tokio::sync::Mutex::new(Some(writer))),
                fail_all: fail_on_write,
                tasks: Mutex::new(vec![reader_task]),
            }),
        })
    }

    /// What the server said in the handshake (device, limits, features).
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    /// The server's address.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.options.timeout
    }

    /// Sends one request and waits for its reply, within the timeout.
    async fn request<T: Serialize>(
        &self,
        header: &T,
        tensors: Vec<bytes::Bytes>,
    ) -> Result<(Response, Vec<bytes::Bytes>)> {
        let w = &self.inner.welcome;
        let payload: u64 = tensors.iter().map(|t| t.len() as u64).sum();
        if payload > w.max_payload || tensors.len() > w.max_tensors as usize {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request carries {} tensors, {payload} bytes; the server accepts at most {} tensors, {} bytes",
                    tensors.len(),
                    w.max_tensors,
                    w.max_payload
                ),
            ));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = protocol::encode(FrameKind::Request, id, header, tensors)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.as_mut() {
                Some(m) => m.insert(id, tx),
                None => return Err(Error::connection("the connection is closed")),
            };
        }
        let timeout = self.inner.options.timeout;
        self.send(frame).await;
        let wait = async {
            rx.await
                .map_err(|_| Error::connection("the connection is closed"))?
        };
        let frame = match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(m) = self
                    .inner
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    m.remove(&id);
                }
                Err(Error::new(
                    ErrorCode::Timeout,
                    format!("no reply within {timeout:?}"),
                ))
            }
        };
        let frame = frame?;
        match protocol::decode_header::<Response>(&frame)? {
            Response::Error(e) => Err(e),
            r => Ok((r, frame.tensors)),
        }
    }

    /// Writes a frame. The write is started here, on the caller's task: a
    /// small frame usually goes out in this first poll, with no thread
    /// hand-off. A write that has to wait (a full socket buffer, another
    /// frame being written) finishes in a task of its own, so that a caller
    /// that gives up (a timeout, Ctrl-C) never leaves half a frame on the
    /// connection. A failed write fails every pending request.
    async fn send(&self, frame: Frame) {
        let writer = self.inner.writer.clone();
        let fail_all = self.inner.fail_all.clone();
        let mut job: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let mut w = writer.lock_owned().await;
            let Some(out) = w.as_mut() else {
                return; // Closed: the pending request has been failed.
            };
            if let Err(e) = out.write_frame(frame).await {
                *w = None;
                drop(w);
                fail_all(Error::connection(format!(
                    "connection lost while sending: {e}"
                )));
            }
        });
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(job.as_mut().poll(cx))).await;
        if first.is_pending() {
            tokio::spawn(job);
        }
    }

    /// Runs a whitelisted op. `inputs`: `"0"`, `"1"`, ... positional, other
    /// names keyword; `kwargs`: scalar arguments.
    pub async fn exec<K, V>(
        &self,
        op: &str,
        inputs: impl IntoIterator<Item = (K, Tensor)>,
        kwargs: impl IntoIterator<Item = (V, Value)>,
    ) -> Result<Outputs>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let inputs: Vec<(String, Tensor)> =
            inputs.into_iter().map(|(k, t)| (k.into(), t)).collect();
        let kwargs: BTreeMap<String, Value> =
            kwargs.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let (metas, bufs) = protocol::tensors_to_wire(inputs);
        let req = Request::Exec(ExecRequest {
            op: op.to_owned(),
            inputs: metas,
            kwargs,
        });
        match self.request(&req, bufs).await? {
            (Response::Exec(r), bufs) => outputs(r, bufs),
            (other, _) => Err(unexpected("exec", &other)),
        }
    }

    /// Loads a model on the server (see [`LoadRequest`]); replaces a model
    /// of the same name.
    pub async fn load_model(&self, request: LoadRequest) -> Result<ModelInfo> {
        match self.request(&Request::LoadModel(request), vec![]).await? {
            (Response::Model(info), _) => Ok(info),
            (other, _) => Err(unexpected("load_model", &other)),
        }
    }

    /// A forward pass of a loaded model. `inputs`: `"0"`, `"1"`, ...
    /// positional, other names keyword (`input_ids`, ...).
    pub async fn infer<K: Into<String>>(
        &self,
        name: &str,
        inputs: impl IntoIterator<Item = (K, Tensor)>,
    ) -> Result<Outputs> {
        let inputs: Vec<(String, Tensor)> =
            inputs.into_iter().map(|(k, t)| (k.into(), t)).collect();
        let (metas, bufs) = protocol::tensors_to_wire(inputs);
        let req = Request::Infer(InferRequest {
            name: name.to_owned(),
            inputs: metas,
        });
        match self.request(&req, bufs).await? {
            (Response::Exec(r), bufs) => outputs(r, bufs),
            (other, _) => Err(unexpected("infer", &other)),
        }
    }

    /// The loaded models, sorted by name.
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>> {
        match self.request(&Request::ListModels, vec![]).await? {
            (Response::Models { models }, _) => Ok(models),
            (other, _) => Err(unexpected("list_models", &other)),
        }
    }

    /// One loaded model's description.
    pub async fn model_info(&self, name: &str) -> Result<ModelInfo> {
        match self
            .request(
                &Request::ModelInfo {
                    name: name.to_owned(),
                },
                vec![],
            )
            .await?
        {
            (Response::Model(info), _) => Ok(info),
            (other, _) => Err(unexpected("model_info", &other)),
        }
    }

    /// Unloads a model.
    pub async fn unload_model(&self, name: &str) -> Result<()> {
        match self
            .request(
                &Request::UnloadModel {
                    name: name.to_owned(),
                },
                vec![],
            )
            .await?
        {
            (Response::Unloaded { .. }, _) => Ok(()),
            (other, _) => Err(unexpected("unload_model", &other)),
        }
    }

    /// Runs a [`Call`].
    pub async fn call(&self, call: Call) -> Result<Outputs> {
        self.exec(&call.op, call.inputs, call.kwargs).await
    }

    /// The whitelist, sorted by name.
    pub async fn list_ops(&self) -> Result<Vec<String>> {
        Ok(self
            .list_ops_detailed()
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect())
    }

    /// The whitelist with categories and docs, sorted by name.
    pub async fn list_ops_detailed(&self) -> Result<Vec<OpSummary>> {
        match self.request(&Request::ListOps, vec![]).await? {
            (Response::Ops { ops }, _) => Ok(ops),
            (other, _) => Err(unexpected("list_ops", &other)),
        }
    }

    /// One op's signature and doc.
    pub async fn describe_op(&self, op: &str) -> Result<OpInfo> {
        match self
            .request(&Request::DescribeOp { op: op.to_owned() }, vec![])
            .await?
        {
            (Response::Op(info), _) => Ok(info),
            (other, _) => Err(unexpected("describe_op", &other)),
        }
    }

    /// Server status.
    pub async fn health(&self) -> Result<HealthInfo> {
        match self.request(&Request::Health, vec![]).await? {
            (Response::Health(h), _) => Ok(h),
            (other, _) => Err(unexpected("health", &other)),
        }
    }

    /// Host and accelerator statistics of the server.
    pub async fn stats(&self) -> Result<StatsInfo> {
        match self.request(&Request::Stats, vec![]).await? {
            (Response::Stats(s), _) => Ok(s),
            (other, _) => Err(unexpected("stats", &other)),
        }
    }

    /// The server's metrics: request counts, latency histograms, errors and
    /// gauges ([`crate::metrics::render_prometheus`] renders them).
    pub async fn metrics(&self) -> Result<crate::metrics::MetricsSnapshot> {
        match self.request(&Request::Metrics, vec![]).await? {
            (Response::Metrics(m), _) => Ok(m),
            (other, _) => Err(unexpected("metrics", &other)),
        }
    }

    /// Closes the connection: requests still waiting fail with a connection
    /// error, and every clone of this client is closed too.
    pub fn close(&self) {
        let waiting = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for (_, w) in waiting.into_iter().flatten() {
            let _ = w.send(Err(Error::connection("the client was closed")));
        }
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        // Close the sending side now, unless a write is under way (it ends
        // soon; the half closes when the last clone is dropped).
        if let Ok(mut w) = self.inner.writer.try_lock() {
            w.take();
        }
    }

    /// Whether the connection is closed (by [`Client::close`], the server
    /// or a failure).
    pub fn is_closed(&self) -> bool {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

fn outputs(r: ExecResponse, bufs: Vec<bytes::Bytes>) -> Result<Outputs> {
    Ok(Outputs {
        tensors: protocol::tensors_from_wire(r.outputs, bufs)?,
        device: r.device,
        elapsed_s: r.elapsed_s,
    })
}

fn unexpected(what: &str, r: &Response) -> Error {
    Error::protocol(format!("unexpected reply to {what}: {r:?}"))
}

/// A client for programs without an async runtime: the same calls, blocking.
///
/// It owns a small runtime. It is `Send + Sync`: share it between threads
/// (e.g. behind an `Arc`); calls from several threads run concurrently over
/// the one connection.
///
/// Over TCP and ZeroMQ the runtime has no thread of its own: a call runs the
/// connection on the caller's thread (one of the waiting callers reads the
/// socket and hands the others their replies), so a reply wakes the caller
/// directly, with no second thread to wake. Over QUIC, whose connection
/// needs timers (keep-alives, acknowledgements) served between calls, and
/// over any other transport, it has one worker thread.
pub mod blocking {
    use super::*;

    /// A blocking client. See the [module docs](self).
    #[derive(Debug)]
    pub struct Client {
        runtime: tokio::runtime::Runtime,
        inner: super::Client,
    }

    impl Client {
        /// Connects to `url` with default options.
        pub fn connect(url: &str) -> Result<Client> {
            Client::connect_with(url, ClientOptions::default())
        }

        /// Connects to `host:port` over TCP with a per-request timeout.
        pub fn connect_host(host: &str, port: u16, timeout: Duration) -> Result<Client> {
            let options = ClientOptions {
                timeout,
                ..ClientOptions::default()
            };
            Client::connect_endpoint(Endpoint::new("tcp", host, port), options)
        }

        /// Connects to `url` with `options`.
        pub fn connect_with(url: &str, options: ClientOptions) -> Result<Client> {
            Client::connect_endpoint(url.parse()?, options)
        }

        /// Connects to an endpoint.
        pub fn connect_endpoint(endpoint: Endpoint, options: ClientOptions) -> Result<Client> {
            // Transports known to need nothing between calls run on the
            // caller's thread; any other (QUIC, a third party's) keeps a
            // worker for its background work.
            let mut builder = if matches!(endpoint.scheme.as_str(), "tcp" | "zmq") {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(1).thread_name("mymps-client");
                b
            };
            let runtime = builder
                .enable_all()
                .build()
                .map_err(|e| Error::internal(format!("cannot start the client runtime: {e}")))?;
            let inner = runtime.block_on(super::Client::connect_endpoint(endpoint, options))?;
            Ok(Client { runtime, inner })
        }

        /// The async client underneath.
        pub fn as_async(&self) -> &super::Client {
            &self.inner
        }

        /// Runs a future on this client's runtime (for the async API).
        pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
            self.runtime.block_on(f)
        }

        /// See [`super::Client::exec`].
        pub fn exec<K: Into<String>, V: Into<String>>(
            &self,
            op: &str,
            inputs: impl IntoIterator<Item = (K, Tensor)>,
            kwargs: impl IntoIterator<Item = (V, Value)>,
        ) -> Result<Outputs> {
            self.runtime.block_on(self.inner.exec(op, inputs, kwargs))
        }

        /// See [`super::Client::call`].
        pub fn call(&self, call: Call) -> Result<Outputs> {
            self.runtime.block_on(self.inner.call(call))
        }

        /// See [`super::Client::load_model`].
        pub fn load_model(&self, request: LoadRequest) -> Result<ModelInfo> {
            self.runtime.block_on(self.inner.load_model(request))
        }

        /// See [`super::Client::infer`].
        pub fn infer<K: Into<String>>(
            &self,
            name: &str,
            inputs: impl IntoIterator<Item = (K, Tensor)>,
        ) -> Result<Outputs> {
            self.runtime.block_on(self.inner.infer(name, inputs))
        }

        /// See [`super::Client::list_models`].
        pub fn list_models(&self) -> Result<Vec<ModelInfo>> {
            self.runtime.block_on(self.inner.list_models())
        }

        /// See [`super::Client::model_info`].
        pub fn model_info(&self, name: &str) -> Result<ModelInfo> {
            self.runtime.block_on(self.inner.model_info(name))
        }

        /// See [`super::Client::unload_model`].
        pub fn unload_model(&self, name: &str) -> Result<()> {
            self.runtime.block_on(self.inner.unload_model(name))
        }

        /// See [`super::Client::list_ops`].
        pub fn list_ops(&self) -> Result<Vec<String>> {
            self.runtime.block_on(self.inner.list_ops())
        }

        /// See [`super::Client::list_ops_detailed`].
        pub fn list_ops_detailed(&self) -> Result<Vec<OpSummary>> {
            self.runtime.block_on(self.inner.list_ops_detailed())
        }

        /// See [`super::Client::describe_op`].
        pub fn describe_op(&self, op: &str) -> Result<OpInfo> {
            self.runtime.block_on(self.inner.describe_op(op))
        }

        /// See [`super::Client::health`].
        pub fn health(&self) -> Result<HealthInfo> {
            self.runtime.block_on(self.inner.health())
        }

        /// See [`super::Client::stats`].
        pub fn stats(&self) -> Result<StatsInfo> {
            self.runtime.block_on(self.inner.stats())
        }

        /// See [`super::Client::metrics`].
        pub fn metrics(&self) -> Result<crate::metrics::MetricsSnapshot> {
            self.runtime.block_on(self.inner.metrics())
        }

        /// See [`super::Client::close`].
        pub fn close(&self) {
            self.inner.close()
        }
    }
}
