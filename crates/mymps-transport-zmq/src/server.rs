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
//!
//! A session ends when the server drops its reader, when its peer's
//! connection closes (the ROUTER's monitor reports it, by file descriptor;
//! each message carries the descriptor of its connection), after silence
//! (the idle timeouts), or when the table is full and a new peer says Hello:
//! then the session idle longest makes room, those that never sent a
//! request first; a session with a request in flight is never evicted. So
//! peers that leave, or that say Hello and nothing more, cannot lock others
//! out.
//!
//! Memory: libzmq holds a message until all its parts are in, each part at
//! most `ZMQ_MAXMSGSIZE` (set per socket, when it binds, so it must admit
//! the largest part a session may send: a peer that declares a larger one
//! is disconnected before anything is allocated). Once the pump has a
//! message, what a peer without a session sent is dropped at once (a Hello
//! over the handshake limits too, answered and no session opened), and
//! frames waiting for the server are bounded in bytes per session and for
//! all sessions together ([`Queued`] keeps the count, whoever drops them).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mymps_core::protocol::{self, Frame, FrameKind, Limits, Response};
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, FrameReader, FrameWriter, Incoming, Listener, MemoryBudget,
    ReadError, RefusalCounter,
};
use mymps_core::{Error, ErrorCode};
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tracing::{debug, warn};

use crate::sock::{Waker, context, inproc, io_err, message_to_bytes, send_bytes, stop_monitor};
use crate::{SCHEME, ZmqConfig, wire};

/// Messages (either way) the pump handles before it looks at the other
/// direction again.
const BATCH: usize = 256;
/// Replies from all sessions waiting for the pump.
const OUTGOING: usize = 1024;

/// The connection events the pump follows: a descriptor in use, and free.
const EVENTS: u32 = zmq_sys::ZMQ_EVENT_ACCEPTED | zmq_sys::ZMQ_EVENT_DISCONNECTED;

/// The file descriptor of a connection, as libzmq's monitor and message
/// metadata give it.
type Fd = i32;

struct Shared {
    waker: Waker,
    /// Bytes of the frames waiting in all session queues.
    queued_bytes: AtomicU64,
}

/// A frame waiting in a session queue. Its bytes count against the
/// session's and the listener's queue bounds until it is taken or dropped
/// (with its queue, when the server closes the session).
struct Queued {
    frame: Option<Frame>,
    bytes: u64,
    session: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Queued {
    fn new(frame: Frame, session: &Arc<AtomicU64>, shared: &Arc<Shared>) -> Queued {
        let bytes = queued_size(&frame);
        session.fetch_add(bytes, Ordering::AcqRel);
        shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        Queued {
            frame: Some(frame),
            bytes,
            session: session.clone(),
            shared: shared.clone(),
        }
    }

    fn take(mut self) -> Frame {
        self.frame.take().expect("a queued frame is taken once")
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.session.fetch_sub(self.bytes, Ordering::AcqRel);
        self.shared
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A frame for the pump to send, from the session numbered `serial`.
struct Outgoing {
    identity: Bytes,
    serial: u64,
    frame: Frame,
}

/// Binds a ROUTER socket at `endpoint` and starts its pump thread.
pub async fn bind(
    endpoint: &Endpoint,
    config: &ZmqConfig,
    limits: Option<&Limits>,
    refusals: Option<RefusalCounter>,
) -> io::Result<Box<dyn Listener>> {
    let host = crate::resolve(endpoint, true).await?;
    let ctx = context();
    let router = ctx.socket(zmq::ROUTER).map_err(io_err)?;
    router.set_linger(0).map_err(io_err)?;
    router.set_router_mandatory(true).map_err(io_err)?;
    router.set_sndhwm(config.send_hwm).map_err(io_err)?;
    // The pump drains libzmq's queues as fast as it can and answers the
    // excess itself, so libzmq's own queue per connection need not be
    // longer than a session's: beyond it, TCP makes the peer wait.
    router
        .set_rcvhwm(i32::try_from(config.peer_queue.max(1)).unwrap_or(i32::MAX))
        .map_err(io_err)?;
    // libzmq takes its options when it binds: later changes would not reach
    // the connections this listener accepts. So one bound for every part
    // of every peer, with a session or not: the largest part a frame may
    // have (a part larger than the handshake allows, from a peer without a
    // session, arrives and is dropped at once).
    let max_part = match limits {
        Some(l) => clamp_i64(wire::max_part(l)),
        None => config.max_part_size.map_or(-1, clamp_i64),
    };
    router.set_maxmsgsize(max_part).map_err(io_err)?;
    router.set_ipv6(host.contains(':')).map_err(io_err)?;
    // The monitor says when a connection closes, so that its session ends
    // at once. Its events must be read (libzmq's I/O thread waits when the
    // monitor's queue is full), hence no limit on our side: the pump reads
    // them on every turn, and stops the monitor before it closes either
    // socket (see `stop_monitor`).
    let mut router = router;
    let monitor_addr = inproc("server-monitor");
    router
        .monitor(&monitor_addr, EVENTS as i32)
        .map_err(io_err)?;
    let monitor = match monitor_reader(&monitor_addr) {
        Ok(m) => m,
        Err(e) => {
            stop_monitor(&mut router);
            return Err(e);
        }
    };
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
    let shared = Arc::new(Shared {
        waker,
        queued_bytes: AtomicU64::new(0),
    });
    let (out_tx, out_rx) = mpsc::channel(OUTGOING);
    // Sessions opened and not accepted yet are sessions: the table bounds
    // them.
    let (accept_tx, accept_rx) = mpsc::channel(config.max_peers.clamp(1, 1 << 20));
    let pump = Pump {
        router,
        monitor,
        wake_rx,
        shared: shared.clone(),
        out_tx,
        out_rx,
        accept_tx,
        sessions: HashMap::new(),
        by_fd: HashMap::new(),
        closed_fds: HashSet::new(),
        next_serial: 1,
        config: config.clone(),
        local: local.clone(),
        refusals,
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

/// The socket that reads a monitor's events, without a limit on how many
/// wait.
fn monitor_reader(addr: &str) -> io::Result<zmq::Socket> {
    let monitor = context().socket(zmq::PAIR).map_err(io_err)?;
    monitor.set_linger(0).map_err(io_err)?;
    monitor.set_rcvhwm(0).map_err(io_err)?;
    monitor.connect(addr).map_err(io_err)?;
    Ok(monitor)
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
    tx: mpsc::Sender<Queued>,
    queued_bytes: Arc<AtomicU64>,
    /// Tells this session's replies from those of an earlier session of
    /// the same identity.
    serial: u64,
    /// The peer's connection, when libzmq said.
    fd: Option<Fd>,
    last_seen: Instant,
    /// Requests routed to the session and not answered yet.
    in_flight: u64,
    /// Whether the peer has sent a request.
    requested: bool,
}

impl Session {
    fn closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// How long the session may stay silent.
    fn idle_limit(&self, config: &ZmqConfig) -> Duration {
        if self.requested {
            config.idle_timeout
        } else {
            config.unused_idle_timeout.min(config.idle_timeout)
        }
    }
}

struct Pump {
    router: zmq::Socket,
    monitor: zmq::Socket,
    wake_rx: zmq::Socket,
    shared: Arc<Shared>,
    out_tx: mpsc::Sender<Outgoing>,
    out_rx: mpsc::Receiver<Outgoing>,
    accept_tx: mpsc::Sender<Connection>,
    sessions: HashMap<Bytes, Session>,
    /// The session on each connection (a connection has one identity).
    by_fd: HashMap<Fd, Bytes>,
    /// Descriptors of connections that closed and were not reused since:
    /// a Hello read from one comes from a peer that has left.
    closed_fds: HashSet<Fd>,
    next_serial: u64,
    config: ZmqConfig,
    local: Endpoint,
    /// Counts the errors the pump answers itself (in the server's metrics).
    refusals: Option<RefusalCounter>,
}

impl Drop for Pump {
    fn drop(&mut self) {
        // Before the sockets close (see `stop_monitor`).
        stop_monitor(&mut self.router);
    }
}

impl Pump {
    fn run(mut self) {
        debug!(listen = %self.local, "zeromq socket thread started");
        let shortest = self
            .config
            .idle_timeout
            .min(self.config.unused_idle_timeout);
        let sweep_every = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
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
            let (readable, monitored, woken) = {
                let mut items = [
                    self.router.as_poll_item(zmq::POLLIN),
                    self.monitor.as_poll_item(zmq::POLLIN),
                    self.wake_rx.as_poll_item(zmq::POLLIN),
                ];
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => (
                        items[0].is_readable(),
                        items[1].is_readable(),
                        items[2].is_readable(),
                    ),
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        warn!(error = %e, "zeromq poll failed; closing the listener");
                        break;
                    }
                }
            };
            if monitored {
                self.events();
            }
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
                    Ok(out) => self.send_reply(out),
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
    /// longer than their idle timeout.
    fn sweep(&mut self) {
        let now = Instant::now();
        let ended: Vec<Bytes> = self
            .sessions
            .iter()
            .filter(|(identity, s)| {
                let idle = now.duration_since(s.last_seen) >= s.idle_limit(&self.config);
                if idle && !s.closed() {
                    debug!(peer = %hex(identity), "zeromq session idle; closed");
                }
                idle || s.closed()
            })
            .map(|(identity, _)| identity.clone())
            .collect();
        for identity in ended {
            self.end_session(&identity);
        }
    }

    /// Ends the session of `identity`, if any: its reader sees the end.
    fn end_session(&mut self, identity: &Bytes) {
        if let Some(s) = self.sessions.remove(identity)
            && let Some(fd) = s.fd
            && self.by_fd.get(&fd) == Some(identity)
        {
            self.by_fd.remove(&fd);
        }
    }

    /// Reads the monitor's events: a connection that closed ends its
    /// session. libzmq reports a close before the descriptor can be reused
    /// and an accept before the new connection delivers anything, so once
    /// the events are read, every message read before them is from a
    /// connection the events describe.
    fn events(&mut self) {
        while let Ok(first) = self.monitor.recv_msg(zmq::DONTWAIT) {
            // The second part names the listening endpoint.
            while self.monitor.get_rcvmore().unwrap_or(false) {
                let _ = self.monitor.recv_msg(0);
            }
            if first.len() < 6 {
                continue;
            }
            let event = u32::from(u16::from_ne_bytes([first[0], first[1]]));
            let fd = i32::from_ne_bytes([first[2], first[3], first[4], first[5]]);
            if event == zmq_sys::ZMQ_EVENT_ACCEPTED {
                self.closed_fds.remove(&fd);
            } else if event == zmq_sys::ZMQ_EVENT_DISCONNECTED {
                self.closed_fds.insert(fd);
                if let Some(identity) = self.by_fd.remove(&fd) {
                    debug!(peer = %hex(&identity), "zeromq peer left; session ended");
                    self.sessions.remove(&identity);
                }
            }
        }
    }

    /// Makes room for one more session: ends those that are over, then,
    /// if the table is still full, the session idle longest among those
    /// with no request in flight (one that never sent a request first).
    /// `false` if every session has a request in flight.
    fn make_room(&mut self) -> bool {
        self.sweep();
        if self.sessions.len() < self.config.max_peers {
            return true;
        }
        let victim = self
            .sessions
            .iter()
            .filter(|(_, s)| s.in_flight == 0)
            .min_by_key(|(_, s)| (s.requested, s.last_seen))
            .map(|(identity, _)| identity.clone());
        match victim {
            Some(identity) => {
                debug!(peer = %hex(&identity), "zeromq session table full; the session idle longest ends");
                self.end_session(&identity);
                true
            }
            None => false,
        }
    }

    /// Sends a reply of a session's writer, which answers one of the
    /// session's requests.
    fn send_reply(&mut self, out: Outgoing) {
        if out.frame.kind == FrameKind::Response
            && let Some(s) = self.sessions.get_mut(&out.identity)
            && s.serial == out.serial
        {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        self.send(&out.identity, out.frame);
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
        if let Some(r) = &self.refusals {
            r.count(code);
        }
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
        let mut fd = None;
        // The parts of a multipart message arrive together: once the first
        // is here, the rest are.
        while self.router.get_rcvmore().unwrap_or(false) {
            let Ok(mut m) = self.router.recv_msg(0) else {
                break;
            };
            if total == 0 {
                address = m.gets("Peer-Address").map(str::to_owned);
                // What `zmq_msg_get(ZMQ_SRCFD)` reads (the zmq crate has
                // no binding for it).
                fd = m.gets("__fd").and_then(|v| v.parse::<Fd>().ok());
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
            self.open_session(identity, address, fd, frame);
            return true;
        }
        let id = frame.id;
        let bytes = queued_size(&frame);
        let is_request = frame.kind == FrameKind::Request;
        let all = self.shared.queued_bytes.load(Ordering::Acquire);
        let Some(s) = self.sessions.get_mut(&identity).filter(|s| !s.closed()) else {
            self.end_session(&identity);
            let idle = self.config.idle_timeout.as_secs_f64();
            self.reply_error(
                &identity,
                id,
                ErrorCode::Protocol,
                format!(
                    "no session for this peer: send a Hello first (a session ends when the server closes it, after {idle} s without a message, or when the server needs room for new peers and this one is idle)"
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
        // One frame is always taken when nothing waits, however large.
        if all > 0 && all.saturating_add(bytes) > self.config.queue_bytes {
            let limit = self.config.queue_bytes;
            self.reply_error(
                &identity,
                id,
                ErrorCode::Busy,
                format!(
                    "the server is not keeping up: {all} bytes are queued for it (the limit is {limit}); retry later"
                ),
            );
            return true;
        }
        match s
            .tx
            .try_send(Queued::new(frame, &s.queued_bytes, &self.shared))
        {
            Ok(()) => {
                if is_request {
                    s.in_flight += 1;
                    s.requested = true;
                }
            }
            Err(TrySendError::Full(_)) => {
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
                self.end_session(&identity);
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

    fn open_session(
        &mut self,
        identity: Bytes,
        address: Option<String>,
        fd: Option<Fd>,
        hello: Frame,
    ) {
        // Before anything is kept: the server reads a Hello under the
        // handshake limits, and would refuse it.
        if let Err(e) = wire::check(&hello, &Limits::HANDSHAKE) {
            let e = e.to_error();
            debug!(peer = %hex(&identity), error = %e, "zeromq Hello refused");
            self.reply_error(&identity, hello.id, e.code, e.message);
            return;
        }
        // What libzmq said about connections before this Hello was read.
        self.events();
        if let Some(fd) = fd {
            if self.closed_fds.contains(&fd) {
                debug!(peer = %hex(&identity), "zeromq peer left before its Hello was read");
                return;
            }
            // A connection has one identity: a session of another one on
            // this descriptor is of a connection that closed.
            if let Some(other) = self.by_fd.get(&fd).filter(|o| **o != identity).cloned() {
                self.end_session(&other);
            }
        }
        // A Hello from a peer with a session starts it over.
        self.end_session(&identity);
        if self.sessions.len() >= self.config.max_peers && !self.make_room() {
            let max = self.config.max_peers;
            warn!(peer = %hex(&identity), max, "zeromq session refused: too many peers with requests in flight");
            self.reply_error(
                &identity,
                0,
                ErrorCode::Busy,
                format!(
                    "the server has {max} zeromq sessions open, its limit, all with requests in flight; retry later"
                ),
            );
            return;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let (tx, rx) = mpsc::channel(self.config.peer_queue.max(1));
        let queued_bytes = Arc::new(AtomicU64::new(0));
        tx.try_send(Queued::new(hello, &queued_bytes, &self.shared))
            .map_err(|_| ())
            .expect("a new queue has room");
        let peer = format!(
            "zmq {} id {}",
            address.as_deref().unwrap_or("?"),
            hex(&identity)
        );
        let conn = Connection {
            reader: Box::new(SessionReader { rx }),
            writer: Box::new(SessionWriter {
                identity: identity.clone(),
                serial,
                out: self.out_tx.clone(),
                shared: self.shared.clone(),
            }),
            peer,
        };
        match self.accept_tx.try_send(conn) {
            Ok(()) => {
                if let Some(fd) = fd {
                    self.by_fd.insert(fd, identity.clone());
                }
                self.sessions.insert(
                    identity,
                    Session {
                        tx,
                        queued_bytes,
                        serial,
                        fd,
                        last_seen: Instant::now(),
                        in_flight: 0,
                        requested: false,
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
    rx: mpsc::Receiver<Queued>,
}

impl SessionReader {
    async fn read(
        &mut self,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Option<Incoming>, ReadError> {
        let Some(queued) = self.rx.recv().await else {
            return Ok(None);
        };
        let frame = queued.take();
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
    serial: u64,
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
}

impl FrameWriter for SessionWriter {
    fn write_frame(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let out = Outgoing {
                identity: self.identity.clone(),
                serial: self.serial,
                frame,
            };
            self.out.send(out).await.map_err(|_| {
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
