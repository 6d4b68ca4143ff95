//! The server side: one ROUTER socket, owned by one thread (the pump), and
//! a virtual [`Connection`] (a *session*) per peer identity.
//!
//! The pump receives every multipart message, checks its layout
//! ([`crate::wire::decode`]) and routes it by the sender's identity: a Hello
//! opens a session (replacing the peer's previous one) that
//! [`Listener::accept`] yields; other frames go to the peer's session
//! queue, which the session's reader drains for the generic server. Replies
//! from every session's writer go through one channel to the pump, which
//! sends them with the identity in front. Messages that are not frames are
//! answered by the pump itself, so the peer's session goes on.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mymps_core::protocol::{self, Frame, FrameKind, Limits, Response};
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, FrameReader, FrameWriter, Incoming, Listener, MemoryBudget,
    ReadError,
};
use mymps_core::{Error, ErrorCode};
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tracing::{debug, warn};

use crate::sock::{Waker, context, io_err, message_to_bytes, send_bytes};
use crate::{SCHEME, ZmqConfig, wire};

/// Messages (either way) the pump handles before it looks at the other
/// direction again.
const BATCH: usize = 256;
/// Replies from all sessions waiting for the pump.
const OUTGOING: usize = 1024;
/// Sessions opened but not yet accepted by the server.
const ACCEPT_QUEUE: usize = 64;

struct Shared {
    waker: Waker,
}

type Outgoing = (Bytes, Frame);

/// Binds a ROUTER socket at `endpoint` and starts its pump thread.
pub async fn bind(
    endpoint: &Endpoint,
    config: &ZmqConfig,
    limits: Option<&Limits>,
) -> io::Result<Box<dyn Listener>> {
    let host = crate::resolve(endpoint, true).await?;
    let ctx = context();
    let router = ctx.socket(zmq::ROUTER).map_err(io_err)?;
    router.set_linger(0).map_err(io_err)?;
    router.set_router_mandatory(true).map_err(io_err)?;
    router.set_sndhwm(config.send_hwm).map_err(io_err)?;
    // libzmq takes its options when it binds: later changes would not reach
    // the connections this listener accepts.
    let max_part = match limits {
        Some(l) => clamp_i64(wire::max_part(l)),
        None => config.max_part_size.map_or(-1, clamp_i64),
    };
    router.set_maxmsgsize(max_part).map_err(io_err)?;
    router.set_ipv6(host.contains(':')).map_err(io_err)?;
    // No ZMTP heartbeats on the ROUTER: with them, libzmq 4.3.4 now and
    // then leaves a connection open (and answering heartbeats) after the
    // socket is closed, so that clients never learn that the server went
    // away. TCP keepalives find dead peers' connections instead; sessions
    // of silent peers end by the idle timeout.
    router.set_tcp_keepalive(1).map_err(io_err)?;
    router.set_tcp_keepalive_idle(60).map_err(io_err)?;
    let port = if endpoint.port == 0 {
        "*".to_owned()
    } else {
        endpoint.port.to_string()
    };
    let addr = format!("tcp://{}:{port}", crate::bracket(&host));
    router
        .bind(&addr)
        .map_err(|e| io::Error::other(format!("cannot bind {addr}: {e}")))?;
    let last = router
        .get_last_endpoint()
        .map_err(io_err)?
        .map_err(|_| io::Error::other("zeromq gave a non-UTF-8 endpoint"))?;
    let bound_port = last
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected bound endpoint {last}")))?;
    let shown_host = if host == "*" { "0.0.0.0" } else { &host };
    let local = Endpoint::new(SCHEME, shown_host, bound_port);

    let (waker, wake_rx) = Waker::new()?;
    let shared = Arc::new(Shared { waker });
    let (out_tx, out_rx) = mpsc::channel(OUTGOING);
    let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_QUEUE);
    let pump = Pump {
        router,
        wake_rx,
        shared: shared.clone(),
        out_tx,
        out_rx,
        accept_tx,
        sessions: HashMap::new(),
        config: config.clone(),
        local: local.clone(),
    };
    std::thread::Builder::new()
        .name("mymps-zmq-server".into())
        .spawn(move || pump.run())?;
    Ok(Box::new(ZmqListener {
        local,
        accept_rx,
        shared,
    }))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(-1)
}

struct ZmqListener {
    local: Endpoint,
    accept_rx: mpsc::Receiver<Connection>,
    shared: Arc<Shared>,
}

impl Listener for ZmqListener {
    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            self.accept_rx.recv().await.ok_or_else(|| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the zeromq socket thread ended")
            })
        })
    }
}

impl Drop for ZmqListener {
    fn drop(&mut self) {
        // The pump ends when it sees the accept channel closed.
        self.accept_rx.close();
        self.shared.waker.wake();
    }
}

struct Session {
    tx: mpsc::Sender<Frame>,
    queued_bytes: Arc<AtomicU64>,
    last_seen: Instant,
}

impl Session {
    fn closed(&self) -> bool {
        self.tx.is_closed()
    }
}

struct Pump {
    router: zmq::Socket,
    wake_rx: zmq::Socket,
    shared: Arc<Shared>,
    out_tx: mpsc::Sender<Outgoing>,
    out_rx: mpsc::Receiver<Outgoing>,
    accept_tx: mpsc::Sender<Connection>,
    sessions: HashMap<Bytes, Session>,
    config: ZmqConfig,
    local: Endpoint,
}

impl Pump {
    fn run(mut self) {
        debug!(listen = %self.local, "zeromq socket thread started");
        let sweep_every =
            (self.config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut next_sweep = Instant::now() + sweep_every;
        let mut more = false;
        loop {
            if self.accept_tx.is_closed() {
                break;
            }
            let timeout = if more {
                0
            } else {
                next_sweep
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .clamp(1, 1000) as i64
            };
            let (readable, woken) = {
                let mut items = [
                    self.router.as_poll_item(zmq::POLLIN),
                    self.wake_rx.as_poll_item(zmq::POLLIN),
                ];
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => (items[0].is_readable(), items[1].is_readable()),
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        warn!(error = %e, "zeromq poll failed; closing the listener");
                        break;
                    }
                }
            };
            if woken {
                self.shared.waker.taken(&self.wake_rx);
            }
            more = false;
            for i in 0.. {
                if i == BATCH {
                    more = true;
                    break;
                }
                match self.out_rx.try_recv() {
                    Ok((identity, frame)) => self.send(&identity, frame),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if readable || more {
                for i in 0.. {
                    if i == BATCH {
                        more = true;
                        break;
                    }
                    if !self.receive() {
                        break;
                    }
                }
            }
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + sweep_every;
            }
        }
        debug!(listen = %self.local, "zeromq socket thread ends");
        // Dropping the sessions ends their readers; LINGER 0 drops what
        // was not sent.
    }

    /// Ends sessions the server closed or whose peer has been silent for
    /// longer than the idle timeout.
    fn sweep(&mut self) {
        let idle = self.config.idle_timeout;
        let now = Instant::now();
        self.sessions.retain(|identity, s| {
            let keep = !s.closed() && now.duration_since(s.last_seen) < idle;
            if !keep && !s.closed() {
                debug!(peer = %hex(identity), "zeromq session idle; closed");
            }
            keep
        });
    }

    /// Sends one frame to `identity`. A peer that is gone or that leaves
    /// too many replies unread loses this one.
    fn send(&mut self, identity: &Bytes, frame: Frame) {
        let head = wire::encode_head(&frame);
        let n = frame.tensors.len();
        match self
            .router
            .send(&identity[..], zmq::SNDMORE | zmq::DONTWAIT)
        {
            Ok(()) => {}
            Err(zmq::Error::EHOSTUNREACH) => {
                debug!(peer = %hex(identity), id = frame.id, "zeromq peer gone; reply dropped");
                return;
            }
            Err(e) => {
                warn!(peer = %hex(identity), id = frame.id, error = %e, "zeromq peer does not read its replies; reply dropped");
                return;
            }
        }
        let more = if n > 0 { zmq::SNDMORE } else { 0 };
        if let Err(e) = self.router.send(head, more) {
            warn!(error = %e, "zeromq send failed");
            return;
        }
        for (i, t) in frame.tensors.into_iter().enumerate() {
            let flags = if i + 1 < n { zmq::SNDMORE } else { 0 };
            if let Err(e) = send_bytes(&mut self.router, t, flags) {
                warn!(error = %e, "zeromq send failed");
                return;
            }
        }
    }

    fn reply_error(&mut self, identity: &Bytes, id: u64, code: ErrorCode, message: String) {
        let e = Error::new(code, message);
        match protocol::encode(FrameKind::Response, id, &Response::Error(e), vec![]) {
            Ok(f) => self.send(identity, f),
            Err(e) => warn!(error = %e, "cannot encode an error reply"),
        }
    }

    /// Receives and routes one message; `false` when none is waiting.
    fn receive(&mut self) -> bool {
        let identity = match self.router.recv_msg(zmq::DONTWAIT) {
            Ok(m) => Bytes::copy_from_slice(&m),
            Err(zmq::Error::EAGAIN) => return false,
            Err(zmq::Error::EINTR) => return true,
            Err(e) => {
                warn!(error = %e, "zeromq receive failed");
                return false;
            }
        };
        let mut parts = Vec::new();
        let mut total = 0usize;
        let mut address = None;
        // The parts of a multipart message arrive together: once the first
        // is here, the rest are.
        while self.router.get_rcvmore().unwrap_or(false) {
            let Ok(mut m) = self.router.recv_msg(0) else {
                break;
            };
            if total == 0 {
                address = m.gets("Peer-Address").map(str::to_owned);
            }
            total += 1;
            if parts.len() < wire::MAX_PARTS {
                parts.push(message_to_bytes(m));
            }
        }
        if let Some(s) = self.sessions.get_mut(&identity) {
            s.last_seen = Instant::now();
        }
        let frame = match wire::decode(parts, total) {
            Ok(wire::Parsed::Heartbeat) => return true,
            Ok(wire::Parsed::Frame(f)) => f,
            Err(m) => {
                debug!(peer = %hex(&identity), id = m.id, error = %m.message, "malformed zeromq message");
                self.reply_error(&identity, m.id, ErrorCode::Protocol, m.message);
                return true;
            }
        };
        if wire::opens_session(&frame) {
            self.open_session(identity, address, frame);
            return true;
        }
        let id = frame.id;
        let bytes = queued_size(&frame);
        let Some(s) = self.sessions.get(&identity).filter(|s| !s.closed()) else {
            self.sessions.remove(&identity);
            let idle = self.config.idle_timeout.as_secs_f64();
            self.reply_error(
                &identity,
                id,
                ErrorCode::Protocol,
                format!(
                    "no session for this peer: send a Hello first (a session ends when the server closes it, or after {idle} s without a message)"
                ),
            );
            return true;
        };
        let queued = s.queued_bytes.load(Ordering::Acquire);
        let waiting = s.tx.max_capacity() - s.tx.capacity();
        if waiting > 0 && queued.saturating_add(bytes) > self.config.peer_queue_bytes {
            let limit = self.config.peer_queue_bytes;
            self.reply_error(
                &identity,
                id,
                ErrorCode::Busy,
                format!(
                    "the server is not keeping up with this peer: {queued} bytes are already queued (the limit is {limit}); retry later"
                ),
            );
            return true;
        }
        s.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        match s.tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                s.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                let n = s.tx.max_capacity();
                self.reply_error(
                    &identity,
                    id,
                    ErrorCode::Busy,
                    format!(
                        "the server is not keeping up with this peer: {n} messages are already queued; retry later"
                    ),
                );
            }
            Err(TrySendError::Closed(_)) => {
                self.sessions.remove(&identity);
                self.reply_error(
                    &identity,
                    id,
                    ErrorCode::Protocol,
                    "no session for this peer: the server closed it; send a Hello first".into(),
                );
            }
        }
        true
    }

    fn open_session(&mut self, identity: Bytes, address: Option<String>, hello: Frame) {
        // A Hello from a peer with a session starts it over.
        self.sessions.remove(&identity);
        if self.sessions.len() >= self.config.max_peers {
            self.sweep();
        }
        if self.sessions.len() >= self.config.max_peers {
            let max = self.config.max_peers;
            warn!(peer = %hex(&identity), max, "zeromq session refused: too many peers");
            self.reply_error(
                &identity,
                0,
                ErrorCode::Busy,
                format!("the server has {max} zeromq sessions open, its limit; retry later"),
            );
            return;
        }
        let (tx, rx) = mpsc::channel(self.config.peer_queue.max(1));
        let queued_bytes = Arc::new(AtomicU64::new(queued_size(&hello)));
        tx.try_send(hello).expect("a new queue has room");
        let peer = format!(
            "zmq {} id {}",
            address.as_deref().unwrap_or("?"),
            hex(&identity)
        );
        let conn = Connection {
            reader: Box::new(SessionReader {
                rx,
                queued_bytes: queued_bytes.clone(),
            }),
            writer: Box::new(SessionWriter {
                identity: identity.clone(),
                out: self.out_tx.clone(),
                shared: self.shared.clone(),
            }),
            peer,
        };
        match self.accept_tx.try_send(conn) {
            Ok(()) => {
                self.sessions.insert(
                    identity,
                    Session {
                        tx,
                        queued_bytes,
                        last_seen: Instant::now(),
                    },
                );
            }
            Err(TrySendError::Full(_)) => {
                self.reply_error(
                    &identity,
                    0,
                    ErrorCode::Busy,
                    "the server is accepting too many sessions at once; retry later".into(),
                );
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// The bytes a frame holds while it waits in a session queue.
fn queued_size(frame: &Frame) -> u64 {
    frame.header.len() as u64 + frame.tensors.iter().map(|t| t.len() as u64).sum::<u64>()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct SessionReader {
    rx: mpsc::Receiver<Frame>,
    queued_bytes: Arc<AtomicU64>,
}

impl SessionReader {
    async fn read(
        &mut self,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Option<Incoming>, ReadError> {
        let Some(frame) = self.rx.recv().await else {
            return Ok(None);
        };
        self.queued_bytes
            .fetch_sub(queued_size(&frame), Ordering::AcqRel);
        let permit = wire::admit(&frame, limits, budget)
            .await
            .map_err(ReadError::Frame)?;
        Ok(Some(Incoming { frame, permit }))
    }
}

impl FrameReader for SessionReader {
    fn read_frame<'a>(
        &'a mut self,
        limits: &'a Limits,
        budget: Option<&'a MemoryBudget>,
    ) -> BoxFuture<'a, Result<Option<Incoming>, ReadError>> {
        Box::pin(self.read(limits, budget))
    }
}

struct SessionWriter {
    identity: Bytes,
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
}

impl FrameWriter for SessionWriter {
    fn write_frame(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.out
                .send((self.identity.clone(), frame))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the zeromq socket thread ended")
                })?;
            self.shared.waker.wake();
            Ok(())
        })
    }

    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        // Replies already handed over still go out; the session ends when
        // the server drops its reader.
        Box::pin(async { Ok(()) })
    }
}
