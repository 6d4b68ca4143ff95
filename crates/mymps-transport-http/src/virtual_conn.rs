//! In-memory connections between the HTTP front and the generic server.
//!
//! Each HTTP connection gets a [`VirtualConn`]: a [`Connection`] handed to
//! the server through the listener's `accept`, whose reader yields the
//! frames the HTTP side asks for and whose writer routes the replies back
//! by id. The server handles them as it handles any transport's frames:
//! handshake (the token comes from `Authorization: Bearer`), limits, memory
//! budget, metrics.
//!
//! Request bodies are read by the reader, inside the server's read loop,
//! after the server's limits and memory budget have been checked against
//! their declared length: nothing is buffered before it is allowed. A body
//! that pauses longer than the body read timeout is refused (and the
//! budget it took given back), so a client that stops sending cannot hold
//! its share of the budget.
//!
//! A streamed reply (`generate` with `stream`: frames with `FLAG_MORE`,
//! then the last) goes to its HTTP request through a short queue, which
//! the writer waits on when it is full (the HTTP client's pace); when the
//! HTTP side stops listening before the last frame (the client went away),
//! a `Cancel` frame for the request goes to the server, which stops the
//! work.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming as Body;
use mymps_core::protocol::{self, Frame, FrameKind, Limits, Request, Response, Welcome};
use mymps_core::transport::{
    BoxFuture, Connection, FrameReader, FrameWriter, Incoming, MemoryBudget, ReadError,
};
use mymps_core::{Error, ErrorCode};
use tokio::sync::{mpsc, oneshot};

/// How long opening a virtual connection may take (the server accepting
/// it and answering the handshake).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Room for the msgpack descriptions of a tensor body's tensors (names,
/// shapes, dtypes), beyond the server's largest tensor payload.
const MAX_DESCRIPTIONS: u64 = 1 << 20;

/// Largest JSON body (`/models/load`, `/generate`, ...).
pub const MAX_JSON_BODY: u64 = 64 * 1024;

/// Frames of a streamed reply waiting for the HTTP side; a full queue holds
/// the server's writer (and so the generation) back.
const STREAM_QUEUE: usize = 8;

/// A request body, as the reader must read it.
pub enum BodySpec {
    /// No body is used.
    None,
    /// A small JSON body, read up to [`MAX_JSON_BODY`] bytes.
    Json(Body),
    /// A tensor body: its declared length is checked against the server's
    /// limits and taken from its memory budget before it is read.
    Tensors(Body, Option<u64>),
}

/// Builds the request (header and tensor buffers) once the body is read.
pub type Build = Box<dyn FnOnce(Bytes) -> Result<(Request, Vec<Bytes>), Error> + Send>;

/// Why a call failed: an error the server answered (or the HTTP side
/// found), and whether the body was left unread (the HTTP connection must
/// then close).
#[derive(Debug)]
pub struct CallError {
    /// The error.
    pub error: Error,
    /// The body was not read.
    pub body_unread: bool,
}

impl From<Error> for CallError {
    fn from(error: Error) -> CallError {
        CallError {
            error,
            body_unread: false,
        }
    }
}

/// A reply frame, and whether the request's body was left unread.
type ReplyFrame = Result<(Frame, bool), Error>;

/// Who waits for a request's reply.
enum Sink {
    /// One frame.
    Once(oneshot::Sender<ReplyFrame>),
    /// Every frame of a streamed reply, up to the one without `FLAG_MORE`.
    Stream(mpsc::Sender<ReplyFrame>),
}

impl Sink {
    fn fail(self, e: Error) {
        match self {
            Sink::Once(tx) => {
                let _ = tx.send(Err(e));
            }
            // A full queue: its receiver sees the queue close instead.
            Sink::Stream(tx) => {
                let _ = tx.try_send(Err(e));
            }
        }
    }
}

enum Job {
    /// A request, its id given by the HTTP side.
    Call {
        id: u64,
        body: BodySpec,
        build: Build,
        sink: Sink,
    },
    /// Stop request `id` (a `Cancel` frame).
    Cancel(u64),
}

struct Waiter {
    sink: Sink,
    body_unread: bool,
}

type Pending = Arc<Mutex<Option<HashMap<u64, Waiter>>>>;

/// The HTTP side of a virtual connection.
#[derive(Clone)]
pub struct VirtualConn {
    jobs: mpsc::Sender<Job>,
    next_id: Arc<AtomicU64>,
}

impl VirtualConn {
    /// Hands a new connection to the server and does the handshake.
    pub async fn open(
        accept: &mpsc::Sender<Connection>,
        token: Option<String>,
        peer: String,
        body_timeout: Duration,
    ) -> Result<VirtualConn, Error> {
        let (jobs_tx, jobs_rx) = mpsc::channel(4);
        let (hs_tx, hs_rx) = oneshot::channel();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let hello = protocol::encode(
            FrameKind::Hello,
            0,
            &protocol::hello(concat!("mymps-http/", env!("CARGO_PKG_VERSION")), token),
            vec![],
        )?;
        let conn = Connection {
            reader: Box::new(VirtualReader {
                hello: Some(hello),
                jobs: jobs_rx,
                pending: pending.clone(),
                body_timeout,
            }),
            writer: Box::new(VirtualWriter {
                handshake: Some(hs_tx),
                pending,
                jobs: jobs_tx.downgrade(),
                stall: body_timeout,
            }),
            peer,
        };
        let unavailable = || Error::new(ErrorCode::Busy, "the server is shutting down");
        let handshake = async {
            accept.send(conn).await.map_err(|_| unavailable())?;
            hs_rx.await.map_err(|_| unavailable())?
        };
        let _welcome: Welcome = tokio::time::timeout(OPEN_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorCode::Busy,
                    "the server did not take the connection in time",
                )
            })??;
        Ok(VirtualConn {
            jobs: jobs_tx,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// Whether the server has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.jobs.is_closed()
    }

    /// Sends one request and waits for its reply: the decoded header and
    /// the tensor buffers (an error reply becomes `Err`).
    pub async fn call(
        &self,
        body: BodySpec,
        build: Build,
    ) -> Result<(Response, Vec<Bytes>), CallError> {
        let (tx, rx) = oneshot::channel();
        self.send(body, build, Sink::Once(tx)).await?;
        let (frame, body_unread) = rx.await.map_err(|_| closed())??;
        match protocol::decode_header::<Response>(&frame)? {
            Response::Error(error) => Err(CallError { error, body_unread }),
            r => Ok((r, frame.tensors)),
        }
    }

    /// Sends one request whose reply may be streamed and returns its
    /// replies at once (see [`Replies`]). Dropping them before the last
    /// cancels the request on the server.
    pub async fn call_streamed(&self, body: BodySpec, build: Build) -> Result<Replies, CallError> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let id = self.send(body, build, Sink::Stream(tx)).await?;
        Ok(Replies {
            frames: rx,
            cancel: Some(CancelOnDrop {
                jobs: self.jobs.clone(),
                id,
                armed: true,
            }),
        })
    }

    /// Queues a request for the reader; its id.
    async fn send(&self, body: BodySpec, build: Build, sink: Sink) -> Result<u64, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.jobs
            .send(Job::Call {
                id,
                body,
                build,
                sink,
            })
            .await
            .map_err(|_| closed())?;
        Ok(id)
    }

    /// A request without a body.
    pub async fn simple(&self, request: Request) -> Result<Response, CallError> {
        let (response, _) = self
            .call(BodySpec::None, Box::new(move |_| Ok((request, vec![]))))
            .await?;
        Ok(response)
    }
}

fn closed() -> Error {
    Error::new(ErrorCode::Busy, "the server closed the connection")
}

/// Sends a `Cancel` for its request when dropped, unless disarmed (the
/// last reply came, or the connection is gone).
struct CancelOnDrop {
    jobs: mpsc::Sender<Job>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Err(mpsc::error::TrySendError::Full(job)) = self.jobs.try_send(Job::Cancel(self.id))
        else {
            return;
        };
        // Requests ahead of it in the queue: it follows them (never ahead
        // of its own request, which is already in the queue or read).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let jobs = self.jobs.clone();
            rt.spawn(async move {
                let _ = jobs.send(job).await;
            });
        }
    }
}

/// The replies of a streamed request ([`VirtualConn::call_streamed`]), in
/// order: each with `FLAG_MORE` but the last. An error reply is the last.
/// Dropped before the last, the request is cancelled on the server.
pub struct Replies {
    frames: mpsc::Receiver<ReplyFrame>,
    cancel: Option<CancelOnDrop>,
}

impl Replies {
    /// The next reply and whether more follow; `Ready(None)` after the
    /// last. An error reply, or the connection closing, is the last.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<(Response, bool), CallError>>> {
        if self.cancel.is_none() {
            return Poll::Ready(None);
        }
        let next = match self.frames.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        let reply = match next {
            Some(Ok((frame, body_unread))) => match protocol::decode_header::<Response>(&frame) {
                Ok(Response::Error(error)) => Err(CallError { error, body_unread }),
                Ok(r) => Ok((r, frame.more())),
                Err(e) => Err(e.into()),
            },
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::new(
                ErrorCode::Busy,
                "the reply ended early: the server closed the connection, or the stream went unread longer than the body read timeout",
            )
            .into()),
        };
        if !matches!(reply, Ok((_, true))) {
            // The last reply: nothing to cancel any more, but for a reply
            // that did not decode (the request may still run: stop it).
            if let Some(mut c) = self.cancel.take() {
                c.armed = matches!(&reply, Err(e) if e.error.code == ErrorCode::Protocol);
            }
        }
        Poll::Ready(Some(reply))
    }

    /// The next reply (see [`Replies::poll_next`]).
    pub async fn next(&mut self) -> Option<Result<(Response, bool), CallError>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

struct VirtualReader {
    hello: Option<Frame>,
    jobs: mpsc::Receiver<Job>,
    pending: Pending,
    /// Longest a body may pause.
    body_timeout: Duration,
}

fn too_large(msg: String) -> CallError {
    CallError {
        error: Error::new(ErrorCode::PayloadTooLarge, msg),
        body_unread: true,
    }
}

/// The next piece of `body`'s data: `None` at its end. A body that sends
/// nothing for `timeout` is refused, and left unread (the connection
/// closes after the answer).
async fn next_data(body: &mut Body, timeout: Duration) -> Result<Option<Bytes>, CallError> {
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                return Err(CallError {
                    error: Error::new(
                        ErrorCode::Timeout,
                        format!(
                            "the request body stopped coming: nothing for {} s",
                            timeout.as_secs_f64()
                        ),
                    ),
                    body_unread: true,
                });
            }
            Ok(None) => return Ok(None),
            Ok(Some(frame)) => frame.map_err(|e| {
                Error::new(
                    ErrorCode::BadArgument,
                    format!("cannot read the request body: {e}"),
                )
            })?,
        };
        // Trailers carry no data.
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// Reads `body` into one buffer of `len` bytes (the length it declared).
async fn read_exact(mut body: Body, len: u64, timeout: Duration) -> Result<Bytes, CallError> {
    let mut buf = BytesMut::with_capacity(len as usize);
    while let Some(data) = next_data(&mut body, timeout).await? {
        if (buf.len() + data.len()) as u64 > len {
            return Err(
                Error::bad_argument("the request body is longer than its Content-Length").into(),
            );
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Reads a body of unknown length, up to `max` bytes.
async fn read_small(mut body: Body, max: u64, timeout: Duration) -> Result<Bytes, CallError> {
    let mut buf = BytesMut::new();
    while let Some(data) = next_data(&mut body, timeout).await? {
        if (buf.len() + data.len()) as u64 > max {
            return Err(too_large(format!("the request body is over {max} bytes")));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

impl VirtualReader {
    /// Reads a job's body and builds its frame, within the limits and the
    /// budget. An `Err` goes to the server as [`ReadError::Refused`]: it
    /// answers it and counts it.
    async fn prepare(
        &mut self,
        id: u64,
        body: BodySpec,
        build: Build,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Incoming, CallError> {
        // The listener's own pause limit, or the server's stall timeout if
        // shorter (`mymps serve --stall-timeout`).
        let body_timeout = self.body_timeout.min(limits.stall_timeout);
        let (bytes, permit) = match body {
            BodySpec::None => (Bytes::new(), None),
            BodySpec::Json(b) => (read_small(b, MAX_JSON_BODY, body_timeout).await?, None),
            BodySpec::Tensors(b, len) => {
                let Some(len) = len else {
                    return Err(CallError {
                        error: Error::bad_argument(
                            "a tensor body needs a Content-Length header (chunked bodies are not accepted)",
                        ),
                        body_unread: true,
                    });
                };
                // The tensors plus their msgpack descriptions.
                let cap = limits
                    .max_payload
                    .saturating_add(u64::from(limits.max_header_len).min(MAX_DESCRIPTIONS));
                if len > cap {
                    return Err(too_large(format!(
                        "the request body is {len} bytes; this server accepts at most {cap}"
                    )));
                }
                let permit = match budget {
                    Some(b) => Some(b.acquire(len).await.ok_or_else(|| {
                        too_large(format!(
                            "the request body is {len} bytes, more than the server's memory budget ({} bytes)",
                            b.capacity()
                        ))
                    })?),
                    None => None,
                };
                (read_exact(b, len, body_timeout).await?, permit)
            }
        };
        let (request, tensors) = build(bytes)?;
        if tensors.len() > u16::MAX as usize {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "{} tensors in one request; this server accepts at most {}",
                    tensors.len(),
                    limits.max_tensors
                ),
            )
            .into());
        }
        let frame = protocol::encode(FrameKind::Request, id, &request, tensors)?;
        // The one admission of every transport: the frame's tensor count,
        // payload and header against the server's limits, with the rules
        // and messages of the byte streams.
        mymps_core::transport::check_frame(&frame, limits).map_err(|e| e.to_error())?;
        Ok(Incoming { frame, permit })
    }
}

impl FrameReader for VirtualReader {
    fn read_frame<'a>(
        &'a mut self,
        limits: &'a Limits,
        budget: Option<&'a MemoryBudget>,
    ) -> BoxFuture<'a, Result<Option<Incoming>, ReadError>> {
        Box::pin(async move {
            if let Some(frame) = self.hello.take() {
                // The handshake's limits hold here too (a huge bearer token).
                if frame.header.len() > limits.max_header_len as usize {
                    return Err(ReadError::Refused {
                        id: 0,
                        error: Error::new(
                            ErrorCode::PayloadTooLarge,
                            "the authentication token is too long",
                        ),
                    });
                }
                return Ok(Some(Incoming {
                    frame,
                    permit: None,
                }));
            }
            let (id, body, build, sink) = match self.jobs.recv().await {
                None => return Ok(None),
                Some(Job::Cancel(id)) => {
                    #[derive(serde::Serialize)]
                    struct Empty {}
                    let frame = protocol::encode(FrameKind::Cancel, id, &Empty {}, vec![])
                        .map_err(|e| ReadError::Refused { id, error: e })?;
                    return Ok(Some(Incoming {
                        frame,
                        permit: None,
                    }));
                }
                Some(Job::Call {
                    id,
                    body,
                    build,
                    sink,
                }) => (id, body, build, sink),
            };
            let prepared = self.prepare(id, body, build, limits, budget).await;
            let body_unread = prepared.as_ref().err().is_some_and(|e| e.body_unread);
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let Some(p) = pending.as_mut() else {
                return Ok(None);
            };
            p.insert(id, Waiter { sink, body_unread });
            // A refused request is answered by the server, which counts it.
            match prepared {
                Ok(inc) => Ok(Some(inc)),
                Err(e) => Err(ReadError::Refused { id, error: e.error }),
            }
        })
    }
}

struct VirtualWriter {
    handshake: Option<oneshot::Sender<Result<Welcome, Error>>>,
    pending: Pending,
    /// To cancel a streamed reply whose HTTP client stopped reading (weak:
    /// the reader ends when the HTTP side is gone).
    jobs: mpsc::WeakSender<Job>,
    /// Longest a streamed reply's frame may wait for the HTTP client to
    /// read (the body read timeout).
    stall: Duration,
}

impl VirtualWriter {
    /// Drops request `id`'s waiter: its later frames are dropped.
    fn forget(&self, id: u64) {
        if let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            p.remove(&id);
        }
    }

    fn fail_all(&mut self, e: &Error) {
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for (_, w) in waiting.into_iter().flatten() {
            w.sink.fail(e.clone());
        }
    }
}

impl FrameWriter for VirtualWriter {
    fn write_frame(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            if let Some(hs) = self.handshake.take() {
                let result = match frame.kind {
                    FrameKind::Welcome => protocol::decode_header::<Welcome>(&frame),
                    _ => match protocol::decode_header::<Response>(&frame) {
                        Ok(Response::Error(e)) => Err(e),
                        Ok(other) => Err(Error::protocol(format!(
                            "unexpected handshake reply {other:?}"
                        ))),
                        Err(e) => Err(e),
                    },
                };
                let _ = hs.send(result);
                return Ok(());
            }
            if frame.id == 0 {
                // A connection-level error: the server closes after it.
                let e = match protocol::decode_header::<Response>(&frame) {
                    Ok(Response::Error(e)) => e,
                    _ => Error::protocol("unexpected frame from the server"),
                };
                self.fail_all(&e);
                return Ok(());
            }
            let (id, more) = (frame.id, frame.more());
            let waiter = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let Some(p) = pending.as_mut() else {
                    return Ok(());
                };
                match p.get(&id) {
                    // A streamed reply's frames but the last leave their
                    // waiter in place.
                    Some(Waiter {
                        sink: Sink::Stream(tx),
                        body_unread,
                    }) if more => Some((Sink::Stream(tx.clone()), *body_unread)),
                    _ => p.remove(&id).map(|w| (w.sink, w.body_unread)),
                }
            };
            // The HTTP side may be gone (client disconnected): the frame is
            // dropped (and, streamed, the frames after it; the HTTP side
            // cancels the request).
            match waiter {
                Some((Sink::Once(tx), body_unread)) => {
                    let _ = tx.send(Ok((frame, body_unread)));
                }
                // A full queue waits for the HTTP client's pace, up to the
                // stall limit; a queue whose receiver is gone takes no more
                // frames.
                Some((Sink::Stream(tx), body_unread)) => {
                    let sent = tokio::time::timeout(self.stall, tx.send(Ok((frame, body_unread))));
                    match sent.await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            if more {
                                self.forget(id);
                            }
                        }
                        Err(_) => {
                            // The client reads nothing: its stream ends
                            // (its queue closes) and the work stops.
                            tracing::warn!(
                                id,
                                stall_s = self.stall.as_secs_f64(),
                                "http: a streamed reply went unread; cancelled"
                            );
                            if more {
                                self.forget(id);
                                if let Some(jobs) = self.jobs.upgrade() {
                                    tokio::spawn(async move {
                                        let _ = jobs.send(Job::Cancel(id)).await;
                                    });
                                }
                            }
                        }
                    }
                }
                None => {}
            }
            Ok(())
        })
    }

    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.fail_all(&Error::new(
                ErrorCode::Busy,
                "the server closed the connection",
            ));
            Ok(())
        })
    }
}
