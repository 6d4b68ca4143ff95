//! The server side: ZMTP 3 spoken natively over tokio TCP streams. One
//! TCP connection is one ZeroMQ peer, one [`Connection`] for the generic
//! server; no libzmq, no thread of its own, no queue.
//!
//! The server reads each ZMTP frame's flags and size before its body and
//! decides there, with the core's decision for a frame's sizes
//! ([`check_sizes`], [`acquire_payload`], [`admit_payload`],
//! [`MemoryBudget::acquire_more`]) and the limits the server reads with:
//! the handshake's before a Hello (64 KiB of header, no tensor), its own
//! after. So a peer is refused before the bytes it announces are read,
//! and a refused message is skipped (at most [`Limits::max_skip`] bytes,
//! or the connection closes) after its answer, as on `tcp://`. Tensor
//! parts are read straight into their own buffers
//! ([`Buffered::read_tensor`]); replies are written vectored from the
//! tensors' buffers.
//!
//! A message's tensor lengths come one part at a time, so its tensors take
//! the memory budget one at a time too: the first waits for room as on
//! TCP (the frame holds nothing yet); a later one, whose frame holds the
//! tensors before it, waits at most the stall timeout and is otherwise
//! answered `busy` (frames that wait holding memory could wait for each
//! other for ever).
//!
//! What the core cannot see is checked here, before anything is kept: the
//! greeting (ZMTP 3, the NULL mechanism; PLAIN and CURVE are answered with
//! an ERROR command), the peer's READY (a DEALER, ROUTER or REQ socket),
//! commands (at most [`zmtp::MAX_COMMAND`] bytes; PING is answered with a
//! PONG) and the multipart layout (one head part, one part per tensor: a
//! message that breaks it is answered `protocol` with its id, and the
//! connection goes on).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mymps_core::buffer::HostAlloc;
use mymps_core::protocol::{
    Frame, FrameError, Head, Limits, PREFIX_LEN, Prefix, admit_payload, check_sizes,
};
use mymps_core::stream::{Buffered, write_all_vectored};
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, FrameReader, FrameWriter, Incoming, Listener, MemoryBudget,
    ReadError, acquire_payload,
};
use mymps_core::{Error, ErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::zmtp::{self, Command, GREETING, GREETING_LEN, Header, PeerKind};
use crate::{SCHEME, wire};

/// Headers up to this size are copied next to the prefix (one buffer for
/// the kernel); larger ones are written from where they are.
const COPY_HEADER_BELOW: usize = 4096;

/// Binds a TCP listener at `endpoint` (`*` for every interface).
pub async fn bind(
    endpoint: &Endpoint,
    host_alloc: Option<Arc<dyn HostAlloc>>,
) -> io::Result<Box<dyn Listener>> {
    let addr = if endpoint.host == "*" {
        format!("0.0.0.0:{}", endpoint.port)
    } else {
        endpoint.host_port()
    };
    let inner = TcpListener::bind(&addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    let bound = inner.local_addr()?;
    let local = Endpoint::new(SCHEME, &bound.ip().to_string(), bound.port());
    Ok(Box::new(ZmtpListener {
        inner,
        local,
        host_alloc,
    }))
}

struct ZmtpListener {
    inner: TcpListener,
    local: Endpoint,
    host_alloc: Option<Arc<dyn HostAlloc>>,
}

impl Listener for ZmtpListener {
    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            let (stream, addr) = self.inner.accept().await?;
            connection(stream, addr, self.host_alloc.clone())
        })
    }
}

/// The halves of one accepted connection. Its handshake happens in the
/// reader's first read (the server reads a Hello at once, within its
/// handshake timeout), so it is bounded as the Hello is.
fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    host_alloc: Option<Arc<dyn HostAlloc>>,
) -> io::Result<Connection> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let link = Arc::new(Link {
        write: tokio::sync::Mutex::new(w),
        kind: OnceLock::new(),
        pong_pending: AtomicBool::new(false),
    });
    let peer = format!("zmq {addr}");
    Ok(Connection {
        reader: Box::new(ZmtpReader {
            input: Buffered::new(r, host_alloc),
            link: link.clone(),
            state: State::Greeting,
            skip: None,
            peer: peer.clone(),
        }),
        writer: Box::new(ZmtpWriter { link }),
        peer,
    })
}

/// What the reader and the writer of a connection share.
struct Link {
    /// The sending half. Frames are written whole under the lock, so that
    /// the reader's commands (READY, PONG) go between messages.
    write: tokio::sync::Mutex<OwnedWriteHalf>,
    /// The peer's framing, once the handshake is done: frames may go out.
    kind: OnceLock<PeerKind>,
    /// A PONG waits for the lock (one at a time, as libzmq answers).
    pong_pending: AtomicBool,
}

impl Link {
    async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.write.lock().await.write_all(bytes).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet: the greeting and READY come first.
    Greeting,
    /// Serving a peer that frames messages so.
    Open(PeerKind),
    /// The connection is over (refused, or unframeable).
    Closed,
}

/// The rest of a refused message, skipped at the start of the next read.
#[derive(Debug, Clone, Copy)]
struct Skip {
    /// Bytes left of the current part.
    part: u64,
    /// Whether more parts follow it.
    more: bool,
    /// Bytes the following parts may still have: what a refused frame may
    /// declare in all ([`Limits::max_skip`]) less what it already did.
    allowance: u64,
}

struct ZmtpReader {
    input: Buffered<OwnedReadHalf>,
    link: Arc<Link>,
    state: State,
    skip: Option<Skip>,
    peer: String,
}

/// A refusal that ends the connection: the reader reads no more.
fn broken(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl ZmtpReader {
    async fn read(
        &mut self,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Option<Incoming>, ReadError> {
        self.input.set_stall(limits.stall_timeout);
        let kind = match self.state {
            State::Open(kind) => kind,
            State::Closed => return Err(broken("the connection was closed").into()),
            State::Greeting => match self.handshake().await {
                Ok(Some(kind)) => kind,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.state = State::Closed;
                    return Err(e);
                }
            },
        };
        let read = async {
            if let Some(skip) = self.skip.take() {
                self.skip_rest(skip).await?;
            }
            loop {
                let Some(h) = self.header(false).await? else {
                    return Ok(None);
                };
                if h.command {
                    self.command(h, limits).await?;
                } else if h.size == 0 && !h.more {
                    // A heartbeat: nothing to answer.
                } else {
                    return self.message(h, kind, limits, budget).await;
                }
            }
        };
        let r = read.await;
        if let Err(ReadError::Io(_)) = &r {
            self.state = State::Closed;
        }
        r
    }

    /// The greeting both ways, the peer's READY, the server's READY (or an
    /// ERROR and the end). `Ok(None)`: the peer closed before greeting.
    async fn handshake(&mut self) -> Result<Option<PeerKind>, ReadError> {
        // All of it at once: libzmq sends the rest of its greeting only
        // once it has read the start of ours.
        self.link.send(&GREETING).await?;
        if !self.input.fill(GREETING_LEN, false).await? {
            return Ok(None);
        }
        let greeting: [u8; GREETING_LEN] = self.input.buffered()[..GREETING_LEN]
            .try_into()
            .expect("filled");
        self.input.consume(GREETING_LEN);
        if let Err((why, speaks_zmtp3)) = zmtp::check_greeting(&greeting) {
            if speaks_zmtp3 {
                warn!(peer = %self.peer, reason = %why, "zeromq peer refused");
                let _ = self.link.send(&zmtp::error(&why.0)).await;
            } else {
                debug!(peer = %self.peer, reason = %why, "not a zeromq peer");
            }
            return Err(broken(why.0).into());
        }
        let h = self.header(true).await?.ok_or_else(eof)?;
        if !h.command {
            return Err(self
                .refuse_peer("a message before the READY command".into())
                .await);
        }
        let body = self.command_body(h).await?;
        let kind = match zmtp::parse_command(&body) {
            Ok(Command::Ready { socket_type }) => match zmtp::peer_kind(socket_type) {
                Ok(kind) => kind,
                Err(why) => return Err(self.refuse_peer(why.0).await),
            },
            Ok(Command::Error { reason }) => {
                let reason = String::from_utf8_lossy(reason).into_owned();
                return Err(broken(format!("the peer refused the connection: {reason}")).into());
            }
            Ok(_) => {
                return Err(self
                    .refuse_peer("expected a READY command (the NULL mechanism)".into())
                    .await);
            }
            Err(why) => return Err(self.refuse_peer(why.0).await),
        };
        self.link.send(&zmtp::ready()).await?;
        let _ = self.link.kind.set(kind);
        self.state = State::Open(kind);
        debug!(peer = %self.peer, ?kind, "zeromq handshake");
        Ok(Some(kind))
    }

    /// Tells a ZMTP 3 peer why it is refused (an ERROR command) and gives
    /// the error that ends the connection.
    async fn refuse_peer(&mut self, why: String) -> ReadError {
        warn!(peer = %self.peer, reason = %why, "zeromq peer refused");
        let _ = self.link.send(&zmtp::error(&why)).await;
        broken(why).into()
    }

    /// The next frame header. `Ok(None)`: a clean end between messages
    /// (only when not `mid`).
    async fn header(&mut self, mid: bool) -> io::Result<Option<Header>> {
        if !self.input.fill(2, mid).await? {
            return Ok(None);
        }
        loop {
            match Header::decode(self.input.buffered()) {
                Err(why) => return Err(broken(why.0)),
                Ok(Ok((h, used))) => {
                    self.input.consume(used);
                    return Ok(Some(h));
                }
                Ok(Err(need)) => {
                    self.input.fill(need, true).await?;
                }
            }
        }
    }

    /// The next part of the message in progress: not a command.
    async fn part(&mut self) -> io::Result<Header> {
        let h = self.header(true).await?.ok_or_else(eof)?;
        if h.command {
            return Err(broken("a ZMTP command in the middle of a message"));
        }
        Ok(h)
    }

    async fn command_body(&mut self, h: Header) -> io::Result<bytes::Bytes> {
        if h.size > zmtp::MAX_COMMAND {
            return Err(broken(format!(
                "a ZMTP command of {} bytes (at most {} are read)",
                h.size,
                zmtp::MAX_COMMAND
            )));
        }
        self.input.fill(h.size as usize, true).await?;
        Ok(self.input.take(h.size as usize))
    }

    /// A command between messages: PING is answered, PONG and commands of
    /// other socket types are ignored, ERROR and a second READY end the
    /// connection.
    async fn command(&mut self, h: Header, limits: &Limits) -> io::Result<()> {
        let body = self.command_body(h).await?;
        match zmtp::parse_command(&body).map_err(|why| broken(why.0))? {
            Command::Ping { context } => {
                self.pong(context, limits.stall_timeout);
                Ok(())
            }
            Command::Pong | Command::Other { .. } => Ok(()),
            Command::Error { reason } => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "the peer ended the connection: {}",
                    String::from_utf8_lossy(reason)
                ),
            )),
            Command::Ready { .. } => Err(broken("a second READY command")),
        }
    }

    /// Answers a PING from a task of its own, so that the reader never
    /// waits behind a reply being written.
    fn pong(&self, context: &[u8], wait: Duration) {
        if self.link.pong_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.link.clone();
        let pong = zmtp::pong(context);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(wait, link.send(&pong)).await;
            link.pong_pending.store(false, Ordering::Release);
        });
    }

    /// Skips what is left of a refused message.
    async fn skip_rest(&mut self, skip: Skip) -> io::Result<()> {
        self.input.skip(skip.part).await?;
        let (mut more, mut allowance) = (skip.more, skip.allowance);
        while more {
            let h = self.part().await?;
            if h.size > allowance {
                return Err(broken(
                    "the parts of a refused message go on past what the server skips; closing the connection",
                ));
            }
            allowance -= h.size;
            self.input.skip(h.size).await?;
            more = h.more;
        }
        Ok(())
    }

    /// Refuses the message in progress by the core's decision (`head`,
    /// a skip or a close); `part` bytes of the current part are left and
    /// `more` parts may follow.
    fn refuse(&mut self, head: Head, part: u64, more: bool, limits: &Limits) -> ReadError {
        match head {
            Head::Skip { error, skip } => {
                self.skip = Some(Skip {
                    part,
                    more,
                    allowance: limits.max_skip().saturating_sub(skip),
                });
                ReadError::Frame(error)
            }
            Head::Close(error) => {
                self.state = State::Closed;
                ReadError::Frame(error)
            }
            Head::Read { .. } => unreachable!("a refusal"),
        }
    }

    /// Refuses a message that breaks the multipart layout: answered with
    /// `id` and skipped, the connection goes on (unless its current part
    /// alone is more than a refused frame may declare).
    fn malformed(
        &mut self,
        id: u64,
        message: String,
        part: u64,
        more: bool,
        limits: &Limits,
    ) -> ReadError {
        if part > limits.max_skip() {
            self.state = State::Closed;
            return ReadError::Frame(FrameError::Malformed(format!(
                "{message}; a part that large is not skipped: closing the connection"
            )));
        }
        self.skip = Some(Skip {
            part,
            more,
            allowance: limits.max_skip() - part,
        });
        ReadError::Refused {
            id,
            error: Error::protocol(message),
        }
    }

    /// Reads the message whose first part has header `h`.
    async fn message(
        &mut self,
        mut h: Header,
        kind: PeerKind,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Option<Incoming>, ReadError> {
        if kind == PeerKind::Req {
            if h.size != 0 || !h.more {
                return Err(self.malformed(
                    0,
                    "a REQ socket's message must begin with an empty delimiter part".into(),
                    h.size,
                    h.more,
                    limits,
                ));
            }
            h = self.part().await?;
        }
        if h.size < PREFIX_LEN as u64 {
            return Err(self.malformed(0, wire::short_head(h.size), h.size, h.more, limits));
        }
        self.input.fill(PREFIX_LEN, true).await?;
        let raw: [u8; PREFIX_LEN] = self.input.buffered()[..PREFIX_LEN]
            .try_into()
            .expect("filled");
        self.input.consume(PREFIX_LEN);
        let header_len = h.size - PREFIX_LEN as u64;
        let id = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
        let prefix = match Prefix::decode(&raw) {
            Ok(p) => p,
            Err(e) => {
                let message = e.to_error().message;
                return Err(self.malformed(id, message, header_len, h.more, limits));
            }
        };
        if prefix.header_len as u64 != header_len {
            let message = wire::header_mismatch(prefix.header_len, header_len);
            return Err(self.malformed(id, message, header_len, h.more, limits));
        }
        let n = prefix.n_tensors;
        if (n == 0) == h.more {
            let parts = if h.more { None } else { Some(0) };
            let message = wire::part_count(n, parts);
            return Err(self.malformed(id, message, header_len, h.more, limits));
        }
        // The tensor count and the header, before the header is read.
        if let Err(refused) = check_sizes(&prefix, Some(0), limits) {
            return Err(self.refuse(refused, header_len, h.more, limits));
        }
        self.input.fill(header_len as usize, true).await?;
        let header = self.input.take(header_len as usize);
        let mut permit = None;
        let mut payload = 0u64;
        let mut tensors = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            let t = self.part().await?;
            let last = i + 1 == n as usize;
            if t.more == last {
                let parts = if t.more { None } else { Some(i + 1) };
                let message = wire::part_count(n, parts);
                return Err(self.malformed(id, message, t.size, t.more, limits));
            }
            // This tensor's bytes, before they are read: the limits, then
            // the budget.
            let total = payload.checked_add(t.size);
            if let Err(refused) = check_sizes(&prefix, total, limits) {
                return Err(self.refuse(refused, t.size, t.more, limits));
            }
            payload = total.expect("within the limits");
            if let (Some(budget), true) = (budget, t.size > 0) {
                match permit.as_mut() {
                    None => match acquire_payload(&prefix, payload, limits, Some(budget)).await {
                        Ok(p) => permit = p,
                        Err(refused) => return Err(self.refuse(refused, t.size, t.more, limits)),
                    },
                    Some(_) if payload > budget.max_request() => {
                        let refused = admit_payload(&prefix, payload, budget.max_request(), limits);
                        return Err(self.refuse(refused, t.size, t.more, limits));
                    }
                    Some(p) => {
                        if !budget.acquire_more(p, payload, limits.stall_timeout).await {
                            self.skip = Some(Skip {
                                part: t.size,
                                more: t.more,
                                allowance: limits
                                    .max_skip()
                                    .saturating_sub(payload + prefix.header_len as u64),
                            });
                            return Err(ReadError::Refused {
                                id,
                                error: Error::new(
                                    ErrorCode::Busy,
                                    format!(
                                        "the server's memory budget had no room for this frame's {payload} bytes of tensors within {:.0} s (a frame holds its first tensors while it waits for room for the next); retry later",
                                        limits.stall_timeout.as_secs_f64()
                                    ),
                                ),
                            });
                        }
                    }
                }
            }
            tensors.push(self.input.read_tensor(t.size as usize).await?);
        }
        Ok(Some(Incoming {
            frame: Frame {
                kind: prefix.kind,
                flags: prefix.flags,
                id,
                header,
                tensors,
            },
            permit,
        }))
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed in the middle of a ZMTP frame",
    )
}

impl FrameReader for ZmtpReader {
    fn read_frame<'a>(
        &'a mut self,
        limits: &'a Limits,
        budget: Option<&'a MemoryBudget>,
    ) -> BoxFuture<'a, Result<Option<Incoming>, ReadError>> {
        Box::pin(self.read(limits, budget))
    }
}

struct ZmtpWriter {
    link: Arc<Link>,
}

impl ZmtpWriter {
    async fn write(&mut self, frame: Frame) -> io::Result<()> {
        let kind = *self.link.kind.get().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the ZeroMQ handshake with the peer did not complete",
            )
        })?;
        let prefix = wire::prefix(&frame).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame of more than 65535 tensors or a header of 4 GiB",
            )
        })?;
        // The part headers, the prefix and a small header in one buffer;
        // a large header and the tensors from their own.
        let n = frame.tensors.len();
        let mut heads = Vec::with_capacity(32 + 9 * n + frame.header.len().min(COPY_HEADER_BELOW));
        if kind == PeerKind::Req {
            Header::message(0, true).encode(&mut heads);
        }
        Header::message((PREFIX_LEN + frame.header.len()) as u64, n > 0).encode(&mut heads);
        heads.extend_from_slice(&prefix);
        let copy_header = frame.header.len() < COPY_HEADER_BELOW;
        if copy_header {
            heads.extend_from_slice(&frame.header);
        }
        let head_end = heads.len();
        let mut ends = Vec::with_capacity(n);
        for (i, t) in frame.tensors.iter().enumerate() {
            Header::message(t.len() as u64, i + 1 < n).encode(&mut heads);
            ends.push(heads.len());
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + 2 * n);
        parts.push(&heads[..head_end]);
        if !copy_header {
            parts.push(&frame.header);
        }
        let mut at = head_end;
        for (t, &end) in frame.tensors.iter().zip(&ends) {
            parts.push(&heads[at..end]);
            parts.push(t);
            at = end;
        }
        let mut w = self.link.write.lock().await;
        write_all_vectored(&mut *w, &parts).await
    }
}

impl FrameWriter for ZmtpWriter {
    fn write_frame(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.write(frame))
    }

    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.link.write.lock().await.shutdown().await })
    }
}
