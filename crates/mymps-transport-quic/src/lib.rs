//! # mymps-transport-quic
//!
//! The `quic://host:port` transport: QUIC (quinn) with TLS 1.3 (rustls,
//! `ring` provider), one bidirectional stream per request so that a large
//! tensor never holds up the small requests behind it.
//!
//! ## Stream layout
//! - The client opens one bidirectional stream per frame it sends: the
//!   first carries the `Hello` (and its answer, the `Welcome` or the
//!   refusal); every later one carries one request and, back, its reply.
//!   The client finishes its direction after its one frame; the server
//!   after the reply's last frame: a streamed reply (`generate` with
//!   `stream`) is several frames of the request's id, each but the last
//!   with `FLAG_MORE`, written in order on the request's stream.
//! - A `Cancel` frame goes on a stream of its own, which the server
//!   finishes without an answer.
//! - The server reads the frames of up to [`MAX_READING`] streams of a
//!   connection at once (every size checked against the server's limits and
//!   its memory budget before anything is allocated) and answers each
//!   request on the stream it came on. A client may have at most
//!   [`MAX_STREAMS`] streams open (QUIC's own stream limit, so the server
//!   never holds more).
//! - Frames under 1 MiB are sent at a higher QUIC stream priority than large
//!   ones, and streams of equal priority share the connection fairly.
//! - Unreadable input on one stream is answered with an error on that
//!   stream; the connection and its other streams go on.
//!
//! ## TLS
//! The server presents `TransportOptions::tls_cert`/`tls_key` (PEM), or
//! generates a self-signed certificate at every start, writes it to
//! `tls_cert_out` (default [`DEFAULT_CERT_FILE`]) and logs its SHA-256
//! fingerprint. The client verifies the server with a `--ca` file of CA
//! and/or server certificates (`tls_ca`; a server certificate, self-signed
//! ones included, is a pin of exactly that certificate), a pinned
//! fingerprint (`tls_fingerprint`), or both; with neither it refuses to
//! connect and says what to pass. All of it is [`mymps_tls`]'s, shared
//! with `tcp+tls://`.
//!
//! Linking this crate registers the transport; [`TRANSPORT`] is also
//! exported for explicit use.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mymps_core::protocol::{self, Frame, FrameError, FrameKind, Limits, Response};
use mymps_core::stream::StreamReader;
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, FrameReader, FrameWriter, Incoming, Listener, MemoryBudget,
    ReadError, RefusalCounter, Transport, TransportOptions, TransportRegistration,
};
use quinn::VarInt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, warn};

pub use mymps_tls::{DEFAULT_CERT_FILE, certificate_names, fingerprint, fingerprint_of_pem_file};

/// The QUIC transport.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuicTransport;

/// The transport instance registered for `quic://`.
pub static TRANSPORT: QuicTransport = QuicTransport;

inventory::submit! { TransportRegistration { transport: &TRANSPORT } }

const SCHEME: &str = "quic";

/// Most streams a client may have open on one connection: requests in
/// flight, including those whose replies are being sent.
pub const MAX_STREAMS: u32 = 1024;
/// Streams of one connection whose frames the server reads at once (the
/// others wait in QUIC's flow-control windows).
pub const MAX_READING: usize = 64;
/// Frames of a streamed reply queued for its stream's writer task; a full
/// queue holds the server's writer back (the client's pace).
const STREAM_QUEUE: usize = 8;
/// Longest a streamed reply's frame waits for room in its stream's queue.
const STREAM_STALL: Duration = IDLE_TIMEOUT;
/// Frames with less tensor data than this are sent at a higher priority.
const SMALL_FRAME: u64 = 1 << 20;
/// Per-stream receive window: enough for a LAN's bandwidth-delay product.
const STREAM_WINDOW: u32 = 16 << 20;
/// Per-connection receive and send windows.
const CONNECTION_WINDOW: u32 = 64 << 20;
const KEEP_ALIVE: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client waits for the server's first answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the server gives a client to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a finished reply gets to be acknowledged, and the time the sends
/// still running get at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Application close codes.
const CLOSE_DONE: u32 = 0;
const CLOSE_ERROR: u32 = 1;

fn transport_config(server: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Only clients open streams.
    t.max_concurrent_bidi_streams(VarInt::from_u32(if server { MAX_STREAMS } else { 0 }));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(CONNECTION_WINDOW as u64);
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    t
}

async fn resolve(ep: &Endpoint) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(ep.host_port())
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("'{}' resolves to no address", ep.host),
            )
        })
}

fn connection_error(e: &quinn::ConnectionError) -> io::Error {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(c) => io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("closed by the peer: {}", String::from_utf8_lossy(&c.reason)),
        ),
        E::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            "the QUIC connection timed out (the peer stopped answering)",
        ),
        E::LocallyClosed => io::Error::new(io::ErrorKind::NotConnected, "connection closed"),
        other => io::Error::new(io::ErrorKind::ConnectionAborted, other.to_string()),
    }
}

/// `None` for a clean close (by either side), else the error.
fn end_of(e: &quinn::ConnectionError) -> Option<io::Error> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(0) => None,
        quinn::ConnectionError::LocallyClosed => None,
        other => Some(connection_error(other)),
    }
}

fn error_frame(id: u64, e: mymps_core::Error) -> Frame {
    protocol::encode(FrameKind::Response, id, &Response::Error(e), vec![])
        .expect("an error response always encodes")
}

fn tensor_bytes(frame: &Frame) -> u64 {
    frame.tensors.iter().map(|t| t.len() as u64).sum()
}

/// Writes one frame on a stream (at the priority its size gives it).
async fn write_on(send: &mut quinn::SendStream, frame: Frame) -> Result<(), quinn::WriteError> {
    let priority = if tensor_bytes(&frame) < SMALL_FRAME {
        1
    } else {
        0
    };
    let _ = send.set_priority(priority);
    let id = frame.id;
    let mut chunks: Vec<Bytes> = std::iter::once(frame.encode_head())
        .chain(frame.tensors.into_iter().filter(|t| !t.is_empty()))
        .collect();
    send.write_all_chunks(&mut chunks).await.inspect_err(|e| {
        debug!(id, error = %e, "quic: send failed");
    })
}

/// Finishes a stream; with `wait_ack`, waits (bounded) until the peer has
/// received all of it.
async fn finish(mut send: quinn::SendStream, wait_ack: bool) {
    let _ = send.finish();
    if wait_ack {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, send.stopped()).await;
    }
}

/// Writes one frame on a stream and finishes it (see [`finish`]).
async fn send_frame(mut send: quinn::SendStream, frame: Frame, wait_ack: bool) {
    if write_on(&mut send, frame).await.is_ok() {
        finish(send, wait_ack).await;
    }
}

/// A streamed reply's writer (server): writes the frames of one id in the
/// order they come, and finishes the stream after the last (the one
/// without `FLAG_MORE`), or when no more come.
async fn send_frames(mut send: quinn::SendStream, mut frames: mpsc::Receiver<Frame>) {
    while let Some(frame) = frames.recv().await {
        let last = !frame.more();
        if write_on(&mut send, frame).await.is_err() {
            // The client stopped the stream: the frames still to come are
            // dropped (the sender sees the queue closed).
            return;
        }
        if last {
            break;
        }
    }
    finish(send, true).await;
}

// --- the listener ---------------------------------------------------------

struct QuicListener {
    local: Endpoint,
    accepted: mpsc::Receiver<Connection>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Listener for QuicListener {
    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            self.accepted
                .recv()
                .await
                .ok_or_else(|| io::Error::other("the QUIC endpoint stopped"))
        })
    }
}

/// Accepts connections and completes their TLS handshakes concurrently, so
/// that a slow client never holds up the others.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    accepted: mpsc::Sender<Connection>,
    refusals: Option<RefusalCounter>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let accepted = accepted.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => return log_refused_handshake(peer, &e),
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connecting).await {
                Ok(Ok(conn)) => {
                    let _ = accepted.send(server_connection(conn, refusals)).await;
                }
                Ok(Err(e)) => log_refused_handshake(peer, &e),
                Err(_) => warn!(%peer, "quic: TLS handshake timed out"),
            }
        });
    }
}

/// Logs that a client was refused at the TLS level (on the server).
fn log_refused_handshake(peer: SocketAddr, e: &quinn::ConnectionError) {
    warn!(%peer, error = %e, "quic: handshake failed");
}

/// Where the server answers a request: its stream, until the reply's
/// first frame; then, for a streamed reply, the queue of the task writing
/// its frames on that stream, until its last frame.
enum ReplySlot {
    /// No reply frame yet.
    Waiting(quinn::SendStream),
    /// A streamed reply under way ([`send_frames`]).
    Streaming(mpsc::Sender<Frame>),
}

/// The server's reply slots by request id: an id is in flight (and taken)
/// from its request until its reply's last frame.
type Replies = Arc<Mutex<HashMap<u64, ReplySlot>>>;

fn server_connection(conn: quinn::Connection, refusals: Option<RefusalCounter>) -> Connection {
    let replies: Replies = Arc::default();
    let peer = conn.remote_address().to_string();
    let mut reader = QuicReader::new(conn.clone(), Source::Accept, Some(replies.clone()));
    reader.refusals = refusals;
    Connection {
        reader: Box::new(reader),
        writer: Box::new(QuicWriter {
            conn,
            role: Role::Server(replies),
            sends: JoinSet::new(),
            _endpoint: None,
        }),
        peer,
    }
}

// --- the reader -----------------------------------------------------------

/// Where a reader's streams come from.
enum Source {
    /// Server: the streams the client opens.
    Accept,
    /// Client: the receiving halves of the streams its writer opened.
    Opened(mpsc::UnboundedReceiver<quinn::RecvStream>),
}

type StreamResult = Option<Result<Incoming, ReadError>>;

/// What one stream's reading task found: a frame to deliver (or `None`),
/// and, on a client, the reply stream to read on after a frame with
/// `FLAG_MORE`.
struct StreamRead {
    result: StreamResult,
    more: Option<StreamReader<quinn::RecvStream>>,
}

impl StreamRead {
    fn done(result: StreamResult) -> StreamRead {
        StreamRead { result, more: None }
    }
}

struct QuicReader {
    conn: quinn::Connection,
    source: Source,
    /// Server: the sending half of every stream whose request is being
    /// answered, by request id.
    replies: Option<Replies>,
    handshaken: bool,
    tasks: JoinSet<StreamRead>,
    reading: Arc<Semaphore>,
    /// Set when no more streams will come: `Some(None)` after a clean close.
    ended: Option<Option<io::Error>>,
    /// Server: counts what the reader answers itself (in the metrics).
    refusals: Option<RefusalCounter>,
}

impl QuicReader {
    fn new(conn: quinn::Connection, source: Source, replies: Option<Replies>) -> QuicReader {
        // A server bounds the frames it reads at once; a client reads every
        // reply as it comes (a slow reply must not hold up a quick one).
        let reading = if replies.is_some() {
            MAX_READING
        } else {
            Semaphore::MAX_PERMITS
        };
        QuicReader {
            conn,
            source,
            replies,
            handshaken: false,
            tasks: JoinSet::new(),
            reading: Arc::new(Semaphore::new(reading)),
            ended: None,
            refusals: None,
        }
    }

    async fn read(
        &mut self,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Option<Incoming>, ReadError> {
        if !self.handshaken {
            // The first frame (Hello, or its answer) is read alone, on the
            // first stream, before any other stream is looked at.
            let (send, recv) = match next_stream(&self.conn, &mut self.source).await {
                Ok(s) => s,
                Err(None) => return Ok(None),
                Err(Some(e)) => return Err(ReadError::Io(e)),
            };
            self.handshaken = true;
            let mut r = StreamReader::new(recv);
            let read = r.read_frame(limits, None).await;
            if let (Some(replies), Some(send)) = (&self.replies, send) {
                // Whatever the server answers goes back on this stream.
                replies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(0, ReplySlot::Waiting(send));
            }
            return read;
        }
        loop {
            if self.tasks.is_empty() {
                if let Some(end) = &mut self.ended {
                    return match end.take() {
                        None => Ok(None),
                        Some(e) => Err(ReadError::Io(e)),
                    };
                }
            }
            tokio::select! {
                biased;
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(StreamRead { result, more }) => {
                        // A streamed reply: its next frame is read by a
                        // task of its own, so that frames of one stream
                        // come in order and other streams go on.
                        if let Some(r) = more {
                            let ctx = self.context(limits, budget);
                            self.tasks.spawn(ctx.read_reply(r));
                        }
                        if let Some(result) = result {
                            return result.map(Some);
                        }
                    }
                    Err(e) => warn!(error = %e, "quic: a stream reader failed"),
                },
                next = next_stream(&self.conn, &mut self.source), if self.ended.is_none() => match next {
                    Ok((send, recv)) => {
                        let ctx = self.context(limits, budget);
                        match send {
                            Some(send) => self.tasks.spawn(ctx.read_request(send, recv)),
                            None => self.tasks.spawn(ctx.read_reply(StreamReader::new(recv))),
                        };
                    }
                    Err(end) => self.ended = Some(end),
                },
            }
        }
    }
}

impl QuicReader {
    /// What a stream's reading task needs.
    fn context(&self, limits: &Limits, budget: Option<&MemoryBudget>) -> StreamContext {
        StreamContext {
            conn: self.conn.clone(),
            replies: self.replies.clone(),
            reading: self.reading.clone(),
            limits: *limits,
            budget: budget.cloned(),
            refusals: self.refusals.clone(),
        }
    }
}

/// The next stream to read: `Err(None)` when the connection (or the
/// client's writer) ended cleanly.
async fn next_stream(
    conn: &quinn::Connection,
    source: &mut Source,
) -> Result<(Option<quinn::SendStream>, quinn::RecvStream), Option<io::Error>> {
    match source {
        Source::Accept => match conn.accept_bi().await {
            Ok((send, recv)) => Ok((Some(send), recv)),
            Err(e) => Err(end_of(&e)),
        },
        Source::Opened(opened) => tokio::select! {
            // A stream that arrived before the close is read first: it may
            // be the server's last word (a refused handshake's reason).
            biased;
            r = opened.recv() => r.map(|recv| (None, recv)).ok_or(None),
            e = conn.closed() => Err(Some(end_of(&e).unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::ConnectionAborted, "the server closed the connection")
            }))),
        },
    }
}

/// What one stream's reading task needs.
struct StreamContext {
    conn: quinn::Connection,
    replies: Option<Replies>,
    reading: Arc<Semaphore>,
    limits: Limits,
    budget: Option<MemoryBudget>,
    refusals: Option<RefusalCounter>,
}

impl StreamContext {
    fn count(&self, code: mymps_core::ErrorCode) {
        if let Some(r) = &self.refusals {
            r.count(code);
        }
    }

    /// Client: reads the next frame of a reply stream, every frame checked
    /// against the reply limits. After a frame with `FLAG_MORE` the stream
    /// is handed back to be read on; after the last frame, or at the
    /// stream's end, it is done. A stream error without a connection error
    /// (a reset stream) concerns that stream only.
    async fn read_reply(self, mut r: StreamReader<quinn::RecvStream>) -> StreamRead {
        let _slot = self.reading.acquire().await.expect("never closed");
        match r.read_frame(&self.limits, self.budget.as_ref()).await {
            Ok(None) => StreamRead::done(None),
            Ok(Some(inc)) => {
                let more = inc.frame.more();
                StreamRead {
                    result: Some(Ok(inc)),
                    more: more.then_some(r),
                }
            }
            Err(ReadError::Io(e)) if self.conn.close_reason().is_none() => {
                debug!(error = %e, "quic: reply stream failed");
                StreamRead::done(None)
            }
            Err(e) => StreamRead::done(Some(Err(e))),
        }
    }

    /// Server: reads the one frame of a request stream.
    async fn read_request(self, send: quinn::SendStream, recv: quinn::RecvStream) -> StreamRead {
        StreamRead::done(self.read_frame(send, recv).await)
    }

    /// Reads the one frame of a request stream. `None` when there is
    /// nothing to deliver: the stream was empty or reset, or its input was
    /// answered here (unframeable bytes, a duplicate id).
    async fn read_frame(self, send: quinn::SendStream, recv: quinn::RecvStream) -> StreamResult {
        let _slot = self.reading.acquire().await.expect("never closed");
        let mut r = StreamReader::new(recv);
        let read = r.read_frame(&self.limits, self.budget.as_ref()).await;
        let replies = self
            .replies
            .as_ref()
            .expect("a server reader has reply slots");
        let id = match &read {
            Ok(None) => return None,
            Ok(Some(inc)) if inc.frame.kind == FrameKind::Cancel => {
                // No answer comes to a cancel; its stream is done.
                return read.transpose();
            }
            Ok(Some(inc)) => inc.frame.id,
            Err(ReadError::Frame(
                FrameError::TooLarge { id, .. } | FrameError::Unskippable { id, .. },
            )) => *id,
            Err(ReadError::Refused { id, .. }) => *id,
            Err(ReadError::Frame(e)) => {
                // Unframeable bytes: only this stream is lost.
                warn!(peer = %self.conn.remote_address(), error = %e, "quic: unframeable input on a stream; answered on that stream");
                self.count(e.to_error().code);
                send_frame(send, error_frame(0, e.to_error()), true).await;
                return None;
            }
            Err(ReadError::Io(e)) => {
                if let Some(reason) = self.conn.close_reason() {
                    return end_of(&reason).map(|e| Err(ReadError::Io(e)));
                }
                debug!(error = %e, "quic: request stream failed");
                return None;
            }
        };
        {
            let mut map = replies.lock().unwrap_or_else(|p| p.into_inner());
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(id) {
                slot.insert(ReplySlot::Waiting(send));
                return read.transpose();
            }
        }
        let e = mymps_core::Error::protocol(format!(
            "request id {id} is already in flight on this connection; ids must be unique among requests in flight"
        ));
        self.count(e.code);
        send_frame(send, error_frame(id, e), true).await;
        None
    }
}

impl FrameReader for QuicReader {
    fn read_frame<'a>(
        &'a mut self,
        limits: &'a Limits,
        budget: Option<&'a MemoryBudget>,
    ) -> BoxFuture<'a, Result<Option<Incoming>, ReadError>> {
        Box::pin(self.read(limits, budget))
    }
}

// --- the writer -----------------------------------------------------------

enum Role {
    /// Answers on the stream each request came on.
    Server(Replies),
    /// Opens a stream per frame and hands its receiving half to the reader.
    Client(mpsc::UnboundedSender<quinn::RecvStream>),
}

struct QuicWriter {
    conn: quinn::Connection,
    role: Role,
    /// Frames being sent, each reply on its own stream, so that a large
    /// one never holds up the small ones (a streamed reply: one task
    /// writing its frames in order).
    sends: JoinSet<()>,
    /// A client's endpoint lives as long as its connection.
    _endpoint: Option<quinn::Endpoint>,
}

impl QuicWriter {
    async fn write(&mut self, frame: Frame) -> io::Result<()> {
        while self.sends.try_join_next().is_some() {}
        match &self.role {
            Role::Client(opened) => {
                let (send, recv) = self
                    .conn
                    .open_bi()
                    .await
                    .map_err(|e| connection_error(&e))?;
                opened.send(recv).map_err(|_| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the connection's reader is gone")
                })?;
                self.sends.spawn(send_frame(send, frame, false));
            }
            Role::Server(replies) => {
                let slot = {
                    let mut map = replies.lock().unwrap_or_else(|p| p.into_inner());
                    if frame.more() {
                        // A streamed reply: its first frame starts the
                        // stream's writer; the slot stays, holding the id.
                        match map.get_mut(&frame.id) {
                            Some(ReplySlot::Streaming(queue)) => {
                                Some(ReplySlot::Streaming(queue.clone()))
                            }
                            Some(slot @ ReplySlot::Waiting(_)) => {
                                let (queue, frames) = mpsc::channel(STREAM_QUEUE);
                                let ReplySlot::Waiting(send) =
                                    std::mem::replace(slot, ReplySlot::Streaming(queue.clone()))
                                else {
                                    unreachable!("matched as waiting")
                                };
                                self.sends.spawn(send_frames(send, frames));
                                Some(ReplySlot::Streaming(queue))
                            }
                            None => None,
                        }
                    } else {
                        map.remove(&frame.id)
                    }
                };
                match slot {
                    Some(ReplySlot::Waiting(send)) => {
                        self.sends.spawn(send_frame(send, frame, true));
                    }
                    Some(ReplySlot::Streaming(queue)) => {
                        // In order, after the frames before it; a full queue
                        // waits for the stream (the client's pace), as long
                        // as an idle connection lives. A client that reads
                        // nothing for that long loses the connection, as a
                        // stalled write closes a `tcp://` one.
                        let id = frame.id;
                        match tokio::time::timeout(STREAM_STALL, queue.send(frame)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => {
                                debug!(id, "quic: the reply stream was stopped; frame dropped")
                            }
                            Err(_) => {
                                let why = format!(
                                    "the reply stream of request {id} went unread for {} s",
                                    STREAM_STALL.as_secs()
                                );
                                warn!(peer = %self.conn.remote_address(), "quic: {why}; closing");
                                self.conn
                                    .close(VarInt::from_u32(CLOSE_ERROR), why.as_bytes());
                                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
                            }
                        }
                    }
                    None if frame.id == 0 && frame.kind == FrameKind::Response => {
                        // An error about the connection itself (no Hello in
                        // time) when no stream can carry it: the close says it.
                        let reason = match protocol::decode_header::<Response>(&frame) {
                            Ok(Response::Error(e)) => e.to_string(),
                            _ => "connection closed by the server".to_owned(),
                        };
                        let reason: String = reason.chars().take(400).collect();
                        self.conn
                            .close(VarInt::from_u32(CLOSE_ERROR), reason.as_bytes());
                    }
                    None => debug!(id = frame.id, "quic: no stream to answer on; dropped"),
                }
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> io::Result<()> {
        if let Role::Server(replies) = &self.role {
            // A streamed reply that will get no last frame ends here: its
            // writer finishes the stream once its queue is written.
            replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, slot| matches!(slot, ReplySlot::Waiting(_)));
        }
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while self.sends.join_next().await.is_some() {}
        })
        .await;
        self.conn.close(VarInt::from_u32(CLOSE_DONE), b"done");
        Ok(())
    }
}

impl FrameWriter for QuicWriter {
    fn write_frame(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.write(frame))
    }

    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.close())
    }
}

// --- the transport --------------------------------------------------------

impl Transport for QuicTransport {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    /// Binds a UDP socket, then sets up TLS: the given certificate, or a
    /// generated one written to `tls_cert_out` (see the crate docs).
    fn bind<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let addr = resolve(endpoint).await?;
            let socket = std::net::UdpSocket::bind(addr)?;
            let identity = mymps_tls::server_identity(
                SCHEME,
                &endpoint.host,
                options.tls_cert.as_deref(),
                options.tls_key.as_deref(),
                options.tls_cert_out.as_deref(),
            )?;
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
                mymps_tls::server_config(identity)?,
            )
            .map_err(|e| io::Error::other(format!("QUIC TLS set-up: {e}")))?;
            let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            config.transport_config(Arc::new(transport_config(true)));
            let quic = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(config),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?;
            let local = quic.local_addr()?;
            let (tx, accepted) = mpsc::channel(64);
            let accept_task = tokio::spawn(accept_loop(quic, tx, options.refusals.clone()));
            Ok(Box::new(QuicListener {
                local: Endpoint::new(SCHEME, &local.ip().to_string(), local.port()),
                accepted,
                accept_task,
            }) as Box<dyn Listener>)
        })
    }

    /// Connects, verifying the server with `tls_ca` and/or
    /// `tls_fingerprint` (one is required).
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Connection>> {
        Box::pin(async move {
            let verifier = Arc::new(mymps_tls::Verifier::new(
                SCHEME,
                options.tls_ca.as_deref(),
                options.tls_fingerprint.as_deref(),
            )?);
            let addr = resolve(endpoint).await?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
                mymps_tls::client_config(verifier.clone())?,
            )
            .map_err(|e| io::Error::other(format!("QUIC TLS set-up: {e}")))?;
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            config.transport_config(Arc::new(transport_config(false)));
            let bind: SocketAddr = if addr.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let quic = quinn::Endpoint::client(bind)?;
            let connecting = quic
                .connect_with(config, addr, &endpoint.host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    return Err(match verifier.take_refusal() {
                        Some(why) => io::Error::new(io::ErrorKind::PermissionDenied, why),
                        None => io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("QUIC handshake with {addr} failed: {e}"),
                        ),
                    });
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no QUIC answer from {addr} within {CONNECT_TIMEOUT:?} (is a mymps server listening there on quic://, and is UDP port {} open?)",
                            addr.port()
                        ),
                    ));
                }
            };
            let (opened_tx, opened_rx) = mpsc::unbounded_channel();
            Ok(Connection {
                reader: Box::new(QuicReader::new(
                    conn.clone(),
                    Source::Opened(opened_rx),
                    None,
                )),
                writer: Box::new(QuicWriter {
                    conn,
                    role: Role::Client(opened_tx),
                    sends: JoinSet::new(),
                    _endpoint: Some(quic),
                }),
                peer: addr.to_string(),
            })
        })
    }
}
