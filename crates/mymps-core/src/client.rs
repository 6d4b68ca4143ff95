//! The generic client: async [`Client`], and [`blocking::Client`] for
//! programs without an async runtime.
//!
//! Two traits carry every call:
//! - [`Service`]: sends one request and returns its reply, at the wire's
//!   level ([`Request`] → [`Response`]). The client implements it over one
//!   connection, the cluster (`mymps-cluster`) over several servers.
//! - [`Caller`]: typed calls ([`Caller::call`] with any [`Rpc`]: [`Call`],
//!   `Health`, ...) and their short forms ([`Caller::exec`],
//!   [`Caller::health`], ...), written once for every caller: each
//!   [`Service`] is an async `Caller` (a call is a future), and
//!   [`Blocking`] makes any [`Service`] a blocking one (a call is its
//!   reply).
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
//! use mymps_core::{Tensor, client::{Call, Caller, Client}};
//! let client = Client::connect("tcp://127.0.0.1:5555").await?;
//! let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3])?;
//! let out = client.call(Call::new("softmax").arg(x).kwarg("dim", -1)).await?;
//! let probs: Vec<f32> = out.output()?.to_vec()?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, ErrorCode, Result};
use crate::metrics::MetricsSnapshot;
use crate::model::{GenerateRequest, GenerateSummary, LoadRequest, ModelInfo, Step};
use crate::ops::OpInfo;
use crate::protocol::rpc::{self, Infer, Rpc};
use crate::protocol::{
    self, Frame, FrameKind, HealthInfo, Limits, OpSummary, Request, Response, StatsInfo, Welcome,
};
use crate::tensor::Tensor;
use crate::transport::{
    BoxFuture, Endpoint, FrameWriter, ReadError, TransportOptions, transport_for,
};
use crate::value::Value;

pub use crate::protocol::rpc::{Call, Outputs};
pub use crate::protocol::{HandleInfo, Keep, TensorRef};

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
    /// A request waited for whole (not a streamed one, whose timeout is
    /// per frame) also tells the server this timeout as its deadline
    /// (`timeout_ms`), so that the server does not start, or stops
    /// answering, work nobody waits for any more.
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

/// Who waits for the replies of a request in flight.
enum Waiter {
    /// One reply.
    Once(oneshot::Sender<Result<Frame>>),
    /// A streamed reply: frames with [`protocol::FLAG_MORE`], then the last.
    Stream(mpsc::UnboundedSender<Result<Frame>>),
}

impl Waiter {
    fn fail(self, e: Error) {
        match self {
            Waiter::Once(w) => {
                let _ = w.send(Err(e));
            }
            Waiter::Stream(w) => {
                let _ = w.send(Err(e));
            }
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, Waiter>>>>;

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
                    w.fail(e.clone());
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
                        let id = inc.frame.id;
                        let waiter = {
                            let mut pending =
                                reader_pending.lock().unwrap_or_else(|p| p.into_inner());
                            let map = pending.as_mut();
                            match map {
                                // A streamed reply's frames but the last
                                // leave its waiter in place.
                                Some(m) if inc.frame.more() => match m.get(&id) {
                                    Some(Waiter::Stream(w)) => {
                                        if w.send(Ok(inc.frame)).is_err() {
                                            m.remove(&id);
                                        }
                                        continue;
                                    }
                                    _ => m.remove(&id),
                                },
                                Some(m) => m.remove(&id),
                                None => None,
                            }
                        };
                        match waiter {
                            Some(Waiter::Once(w)) => {
                                let _ = w.send(Ok(inc.frame));
                            }
                            Some(Waiter::Stream(w)) => {
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

    /// Whether the server listed `feature` in the handshake.
    fn has_feature(&self, feature: &str) -> bool {
        self.inner.welcome.features.iter().any(|f| f == feature)
    }

    /// Checks a request against what the server said in the handshake,
    /// gives it an id and registers who waits for its replies; the frame
    /// to write.
    fn start(
        &self,
        request: Request,
        tensors: Vec<Bytes>,
        waiter: Waiter,
        options: protocol::RequestOptions,
    ) -> Result<(u64, Frame)> {
        let w = &self.inner.welcome;
        if request.uses_resident_tensors()
            && !self.has_feature(protocol::features::RESIDENT_TENSORS)
        {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!(
                    "{} with server-resident tensors: this server ({}) does not support them",
                    request.kind_name(),
                    w.agent
                ),
            ));
        }
        if request.streams() && !self.has_feature(protocol::features::STREAMED_REPLIES) {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!(
                    "a streamed {}: this server ({}) does not stream replies; ask without stream",
                    request.kind_name(),
                    w.agent
                ),
            ));
        }
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
        let frame = protocol::encode_request(id, &request, options, tensors)?;
        let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.as_mut() {
            Some(m) => m.insert(id, waiter),
            None => return Err(Error::connection("the connection is closed")),
        };
        Ok((id, frame))
    }

    /// Forgets the waiter of request `id` (it timed out, or its stream was
    /// dropped).
    fn forget(&self, id: u64) {
        if let Some(m) = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            m.remove(&id);
        }
    }

    /// Sends one request and waits for its reply, within the timeout.
    async fn request(
        &self,
        request: Request,
        tensors: Vec<Bytes>,
    ) -> Result<(Response, Vec<Bytes>)> {
        let (tx, rx) = oneshot::channel();
        let timeout = self.inner.options.timeout;
        // The server's deadline: past it, nobody waits for the answer.
        let options = protocol::RequestOptions {
            timeout_ms: u64::try_from(timeout.as_millis()).ok(),
        };
        let (id, frame) = self.start(request, tensors, Waiter::Once(tx), options)?;
        self.write(frame).await;
        let wait = async {
            rx.await
                .map_err(|_| Error::connection("the connection is closed"))?
        };
        let frame = match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => {
                self.forget(id);
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

    /// Sends one request whose reply may be streamed (several frames) and
    /// returns the stream of its replies at once: see [`ReplyStream`].
    pub async fn request_streamed(
        &self,
        request: Request,
        tensors: Vec<Bytes>,
    ) -> Result<ReplyStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (id, frame) = self.start(request, tensors, Waiter::Stream(tx), Default::default())?;
        self.write(frame).await;
        Ok(ReplyStream {
            client: self.clone(),
            id,
            rx,
            ended: false,
            cancelled: false,
        })
    }

    /// Asks the server to cancel request `id` (a `Cancel` frame; never
    /// answered itself).
    async fn cancel(&self, id: u64) {
        #[derive(serde::Serialize)]
        struct Empty {}
        if let Ok(frame) = protocol::encode(FrameKind::Cancel, id, &Empty {}, vec![]) {
            self.write(frame).await;
        }
    }

    /// Writes a frame. The write is started here, on the caller's task: a
    /// small frame usually goes out in this first poll, with no thread
    /// hand-off. A write that has to wait (a full socket buffer, another
    /// frame being written) finishes in a task of its own, so that a caller
    /// that gives up (a timeout, Ctrl-C) never leaves half a frame on the
    /// connection. A failed write fails every pending request.
    async fn write(&self, frame: Frame) {
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
            w.fail(Error::connection("the client was closed"));
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

impl Service for Client {
    fn send(
        &self,
        request: Request,
        tensors: Vec<Bytes>,
    ) -> impl Future<Output = Result<(Response, Vec<Bytes>)>> + Send {
        self.request(request, tensors)
    }

    fn send_streamed(
        &self,
        request: Request,
        tensors: Vec<Bytes>,
    ) -> impl Future<Output = Result<ReplyStream>> + Send {
        self.request_streamed(request, tensors)
    }

    fn close(&self) {
        Client::close(self)
    }
}

/// The replies of a streamed request ([`Service::send_streamed`]): every
/// frame the server sends for it, in order, up to and including the last
/// (the one without [`protocol::FLAG_MORE`]).
///
/// Each reply is waited for within the client's timeout, counted from the
/// one before. Dropping the stream before its last reply cancels the
/// request on the server (a `Cancel` frame, sent when a runtime is at
/// hand; use [`ReplyStream::cancel`] to be sure).
pub struct ReplyStream {
    client: Client,
    id: u64,
    rx: mpsc::UnboundedReceiver<Result<Frame>>,
    ended: bool,
    cancelled: bool,
}

impl std::fmt::Debug for ReplyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyStream")
            .field("id", &self.id)
            .field("ended", &self.ended)
            .finish()
    }
}

impl ReplyStream {
    /// The request's id on its connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the last reply has been read (or the stream failed).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The next reply; `None` after the last. An error reply, a lost
    /// connection or a timeout is `Err`, and ends the stream (after a
    /// timeout the request is cancelled on the server too).
    pub async fn next(&mut self) -> Option<Result<(Response, Vec<Bytes>)>> {
        if self.ended {
            return None;
        }
        let timeout = self.client.inner.options.timeout;
        let frame = match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => Err(Error::connection("the connection is closed")),
            Err(_) => {
                // Given up on: the server need not go on computing it.
                self.cancel().await;
                Err(Error::new(
                    ErrorCode::Timeout,
                    format!("no reply within {timeout:?}"),
                ))
            }
        };
        let reply = frame.and_then(|frame| {
            let more = frame.more();
            match protocol::decode_header::<Response>(&frame)? {
                Response::Error(e) => Err(e),
                r => {
                    self.ended = !more;
                    Ok((r, frame.tensors))
                }
            }
        });
        if reply.is_err() {
            self.end();
        }
        Some(reply)
    }

    /// Asks the server to stop the request. Replies may still come: read
    /// on for the last (a cancelled `generate` ends with its summary).
    pub async fn cancel(&mut self) {
        if !self.ended && !self.cancelled {
            self.cancelled = true;
            self.client.cancel(self.id).await;
        }
    }

    /// Ends the stream early: its replies are no longer awaited.
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.client.forget(self.id);
        }
    }
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.client.forget(self.id);
        if !self.cancelled {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (client, id) = (self.client.clone(), self.id);
                rt.spawn(async move { client.cancel(id).await });
            }
        }
    }
}

/// A streamed `generate` ([`Service::generate_stream`]): its [`Step`]s as
/// the server computes them ([`Generation::next`]), then its summary.
/// Dropping it before the end cancels the generation on the server.
#[derive(Debug)]
pub struct Generation {
    stream: Option<ReplyStream>,
    summary: Option<GenerateSummary>,
}

impl Generation {
    fn new(stream: ReplyStream) -> Generation {
        Generation {
            stream: Some(stream),
            summary: None,
        }
    }

    /// A generation with nothing left to read.
    fn ended() -> Generation {
        Generation {
            stream: None,
            summary: None,
        }
    }

    /// The next step: a new token for every sequence still running;
    /// `None` once the generation has ended ([`Generation::summary`]).
    pub async fn next(&mut self) -> Option<Result<Step>> {
        let stream = self.stream.as_mut()?;
        match stream.next().await? {
            Ok((Response::GenerateStep(step), _)) => Some(Ok(step)),
            Ok((Response::Generated(summary), _)) => {
                self.summary = Some(summary);
                None
            }
            Ok((other, _)) => {
                stream.end();
                Some(Err(Error::protocol(format!(
                    "unexpected reply in a generate stream: {other:?}"
                ))))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// The summary, once [`Generation::next`] has returned `None`.
    pub fn summary(&self) -> Option<&GenerateSummary> {
        self.summary.as_ref()
    }

    /// Whether nothing is left to read.
    pub fn is_ended(&self) -> bool {
        self.stream.as_ref().is_none_or(ReplyStream::is_ended)
    }

    /// Asks the server to stop after its current step; read on (or
    /// [`Generation::finish`]) for the summary, whose unfinished sequences
    /// end [`FinishReason::Cancelled`](crate::model::FinishReason::Cancelled).
    pub async fn cancel(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            s.cancel().await;
        }
    }

    /// Reads the steps left and returns the summary.
    pub async fn finish(mut self) -> Result<GenerateSummary> {
        while let Some(step) = self.next().await {
            step?;
        }
        self.summary
            .take()
            .ok_or_else(|| Error::protocol("the generate stream ended without its summary"))
    }
}

/// Something that answers requests: one server's connection ([`Client`]),
/// or several servers behind one front (`mymps_cluster::Cluster`), in the
/// spirit of `tower::Service`.
///
/// It works at the wire's level, so that an implementation can route by
/// the request's kind without knowing the typed requests; callers use
/// [`Service::rpc`] or, with the short forms, [`Caller`].
pub trait Service: Clone + Send + Sync + 'static {
    /// Sends one request (its header and tensor buffers) and waits for its
    /// reply: the response header and its tensor buffers. An error response
    /// is `Err`.
    fn send(
        &self,
        request: Request,
        tensors: Vec<Bytes>,
    ) -> impl Future<Output = Result<(Response, Vec<Bytes>)>> + Send;

    /// Sends one request whose reply may come as several frames (a
    /// streamed `generate`) and returns their stream at once.
    fn send_streamed(
        &self,
        request: Request,
        tensors: Vec<Bytes>,
    ) -> impl Future<Output = Result<ReplyStream>> + Send;

    /// Closes the connections; requests still waiting fail.
    fn close(&self);

    /// Starts a streamed `generate` with the model called `name`: its
    /// [`Step`]s as the server computes them, then the summary (see
    /// [`Generation`]). For the whole result in one reply, use
    /// [`Caller::generate`].
    fn generate_stream(
        &self,
        name: &str,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<Generation>> + Send {
        let request = rpc::Generate {
            name: name.to_owned(),
            request,
        }
        .to_request(true);
        let stream = self.send_streamed(request, Vec::new());
        async move { Ok(Generation::new(stream.await?)) }
    }

    /// Sends a typed request and reads its typed reply.
    fn rpc<R: Rpc>(&self, rpc: R) -> impl Future<Output = Result<R::Reply>> + Send {
        let (request, tensors) = rpc.into_request();
        let reply = self.send(request, tensors);
        async move {
            let (response, tensors) = reply.await?;
            R::from_response(response, tensors)
        }
    }
}

/// Typed calls and their short forms, for async and blocking callers alike.
///
/// [`Caller::call`] sends any typed request ([`Call`] for `exec`, or one of
/// [`protocol::rpc`]); the other methods are written once over it. What a call returns is [`Caller::Out`]: for every
/// [`Service`] (the async [`Client`], the cluster) a future of the reply,
/// to `.await`; for a [`Blocking`] caller the reply itself.
///
/// ```no_run
/// # async fn demo() -> mymps_core::Result<()> {
/// use mymps_core::client::{Caller, Client, blocking};
/// // async: a call is a future
/// let health = Client::connect("tcp://127.0.0.1:5555").await?.health().await?;
/// // blocking: a call is the reply
/// let health = blocking::Client::connect("tcp://127.0.0.1:5555")?.health()?;
/// # Ok(()) }
/// ```
pub trait Caller {
    /// What a call returns: a future of `T` (async callers) or `T` itself
    /// (blocking callers).
    type Out<T: 'static>;

    /// Sends a typed request; its reply is `R::Reply`.
    fn call<R: Rpc>(&self, rpc: R) -> Self::Out<Result<R::Reply>>;

    /// Runs a whitelisted op. `inputs`: `"0"`, `"1"`, ... positional, other
    /// names keyword; `kwargs`: scalar arguments.
    fn exec<K: Into<String>, V: Into<String>>(
        &self,
        op: &str,
        inputs: impl IntoIterator<Item = (K, Tensor)>,
        kwargs: impl IntoIterator<Item = (V, Value)>,
    ) -> Self::Out<Result<Outputs>> {
        self.call(Call::with(op, inputs, kwargs))
    }

    /// A forward pass of a loaded model. `inputs`: `"0"`, `"1"`, ...
    /// positional, other names keyword (`input_ids`, ...).
    fn infer<K: Into<String>>(
        &self,
        name: &str,
        inputs: impl IntoIterator<Item = (K, Tensor)>,
    ) -> Self::Out<Result<Outputs>> {
        self.call(Infer::new(name, inputs))
    }

    /// Loads a model on the server (see [`LoadRequest`]); replaces a model
    /// of the same name.
    fn load_model(&self, request: LoadRequest) -> Self::Out<Result<ModelInfo>> {
        self.call(rpc::LoadModel(request))
    }

    /// The loaded models, sorted by name.
    fn list_models(&self) -> Self::Out<Result<Vec<ModelInfo>>> {
        self.call(rpc::ListModels)
    }

    /// One loaded model's description.
    fn model_info(&self, name: &str) -> Self::Out<Result<ModelInfo>> {
        self.call(rpc::ModelInfo { name: name.into() })
    }

    /// Unloads a model.
    fn unload_model(&self, name: &str) -> Self::Out<Result<()>> {
        self.call(rpc::UnloadModel { name: name.into() })
    }

    /// The whitelist, sorted by name.
    fn list_ops(&self) -> Self::Out<Result<Vec<String>>> {
        self.call(rpc::OpNames)
    }

    /// The whitelist with categories and docs, sorted by name.
    fn list_ops_detailed(&self) -> Self::Out<Result<Vec<OpSummary>>> {
        self.call(rpc::ListOps)
    }

    /// One op's signature and doc.
    fn describe_op(&self, op: &str) -> Self::Out<Result<OpInfo>> {
        self.call(rpc::DescribeOp { op: op.into() })
    }

    /// Server status.
    fn health(&self) -> Self::Out<Result<HealthInfo>> {
        self.call(rpc::Health)
    }

    /// Host and accelerator statistics of the server.
    fn stats(&self) -> Self::Out<Result<StatsInfo>> {
        self.call(rpc::Stats)
    }

    /// The server's metrics: request counts, latency histograms, errors and
    /// gauges ([`crate::metrics::render_prometheus`] renders them).
    fn metrics(&self) -> Self::Out<Result<MetricsSnapshot>> {
        self.call(rpc::Metrics)
    }

    /// Keeps a tensor on the server (in device memory on an accelerator);
    /// its handle names it in later calls ([`Call::arg_ref`]).
    fn put(&self, t: Tensor) -> Self::Out<Result<Vec<HandleInfo>>> {
        self.call(rpc::Put::one(t))
    }

    /// Server-resident tensors' data, in the order given.
    fn fetch(&self, refs: Vec<TensorRef>) -> Self::Out<Result<Vec<Tensor>>> {
        self.call(rpc::Fetch { refs })
    }

    /// What server-resident tensors are (by handle, or shared name):
    /// dtype, shape, device, in the order asked.
    fn describe(&self, refs: Vec<TensorRef>) -> Self::Out<Result<Vec<HandleInfo>>> {
        self.call(rpc::Describe { refs })
    }

    /// Frees server-resident tensors (any number, one round trip).
    fn free(&self, refs: Vec<TensorRef>) -> Self::Out<Result<rpc::Freed>> {
        self.call(rpc::Free { refs })
    }

    /// Generates text with the model called `name`, answered once every
    /// sequence has ended (for the steps as they come:
    /// [`Service::generate_stream`], [`Blocking::generate_stream`]).
    fn generate(&self, name: &str, request: GenerateRequest) -> Self::Out<Result<GenerateSummary>> {
        self.call(rpc::Generate {
            name: name.to_owned(),
            request,
        })
    }

    /// `text` as token ids, by the tokenizer of the model called `name`
    /// (with its special tokens when `add_special_tokens`).
    fn encode(
        &self,
        name: &str,
        text: &str,
        add_special_tokens: bool,
    ) -> Self::Out<Result<Vec<i64>>> {
        self.call(rpc::Encode {
            name: name.to_owned(),
            text: text.to_owned(),
            add_special_tokens,
        })
    }

    /// Token ids as text, by the tokenizer of the model called `name`
    /// (without special tokens when `skip_special_tokens`).
    fn decode(
        &self,
        name: &str,
        ids: &[i64],
        skip_special_tokens: bool,
    ) -> Self::Out<Result<String>> {
        self.call(rpc::Decode {
            name: name.to_owned(),
            ids: ids.to_vec(),
            skip_special_tokens,
        })
    }
}

/// Every service is an async caller: a call is a future that owns what it
/// needs (`'static`; spawn it, or `.await` it).
impl<S: Service> Caller for S {
    type Out<T: 'static> = BoxFuture<'static, T>;

    fn call<R: Rpc>(&self, rpc: R) -> BoxFuture<'static, Result<R::Reply>> {
        let service = self.clone();
        Box::pin(async move { service.rpc(rpc).await })
    }
}

/// A [`Service`] with a runtime of its own: a blocking [`Caller`], for
/// programs without an async runtime ([`blocking::Client`], the cluster's
/// `blocking::Cluster`, the Python classes).
///
/// It is `Send + Sync`: share it between threads (e.g. behind an `Arc`);
/// calls from several threads run concurrently over the service's
/// connections.
#[derive(Debug)]
pub struct Blocking<S> {
    // Dropped first: the runtime's tasks end before the service does.
    runtime: tokio::runtime::Runtime,
    inner: S,
}

impl<S: Service> Blocking<S> {
    /// Runs `connect` (which makes the service) on `runtime`, and keeps
    /// both.
    pub fn start(
        runtime: tokio::runtime::Runtime,
        connect: impl Future<Output = Result<S>>,
    ) -> Result<Blocking<S>> {
        let inner = runtime.block_on(connect)?;
        Ok(Blocking { runtime, inner })
    }

    /// The async service underneath.
    pub fn as_async(&self) -> &S {
        &self.inner
    }

    /// Runs a future on this caller's runtime (for the async API).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// See [`Service::close`].
    pub fn close(&self) {
        self.inner.close()
    }

    /// Starts a streamed `generate` (see [`Service::generate_stream`]):
    /// an iterator of its [`Step`]s, blocking for each.
    pub fn generate_stream(
        &self,
        name: &str,
        request: GenerateRequest,
    ) -> Result<BlockingGeneration<'_>> {
        let generation = self
            .runtime
            .block_on(self.inner.generate_stream(name, request))?;
        Ok(BlockingGeneration {
            runtime: &self.runtime,
            generation,
        })
    }
}

/// A streamed `generate` on a [`Blocking`] caller: an iterator of its
/// [`Step`]s (each waited for), then [`BlockingGeneration::summary`].
/// Dropping it before the end cancels the generation on the server.
pub struct BlockingGeneration<'a> {
    runtime: &'a tokio::runtime::Runtime,
    generation: Generation,
}

impl BlockingGeneration<'_> {
    /// The summary, once the iterator has ended.
    pub fn summary(&self) -> Option<&GenerateSummary> {
        self.generation.summary()
    }

    /// Reads the steps left and returns the summary.
    pub fn finish(mut self) -> Result<GenerateSummary> {
        let generation = std::mem::replace(&mut self.generation, Generation::ended());
        self.runtime.block_on(generation.finish())
    }

    /// Asks the server to stop; the iterator then ends soon, and the
    /// summary says which sequences were cancelled.
    pub fn cancel(&mut self) {
        self.runtime.block_on(self.generation.cancel())
    }
}

impl Iterator for BlockingGeneration<'_> {
    type Item = Result<Step>;

    fn next(&mut self) -> Option<Result<Step>> {
        self.runtime.block_on(self.generation.next())
    }
}

impl Drop for BlockingGeneration<'_> {
    fn drop(&mut self) {
        if !self.generation.is_ended() {
            self.runtime.block_on(self.generation.cancel());
        }
    }
}

impl<S: Service> Caller for Blocking<S> {
    type Out<T: 'static> = T;

    fn call<R: Rpc>(&self, rpc: R) -> Result<R::Reply> {
        self.runtime.block_on(self.inner.rpc(rpc))
    }
}

/// A client for programs without an async runtime: the same calls
/// ([`Caller`]), blocking.
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

    /// A blocking client: [`Blocking`] over one connection. See the
    /// [module docs](self).
    pub type Client = Blocking<super::Client>;

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
            let mut builder = if matches!(endpoint.scheme.as_str(), "tcp" | "tcp+tls" | "zmq") {
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
            Blocking::start(runtime, super::Client::connect_endpoint(endpoint, options))
        }
    }
}
