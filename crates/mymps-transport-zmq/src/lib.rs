//! # mymps-transport-zmq
//!
//! The `zmq://host:port` transport: ZeroMQ over TCP, through libzmq (the
//! `zmq` crate, which builds libzmq from the source it ships: no system
//! package is needed and the Python wheel carries it).
//!
//! The server binds a ROUTER socket, a client connects a DEALER; one
//! connection carries many requests in flight, as on TCP. Each frame is
//! one multipart message: a head part (the 16-byte frame prefix and the
//! msgpack header), then one part per tensor, so tensor bytes are never
//! copied into a header. `docs/protocol.md` ("ZeroMQ framing") documents
//! the layout for clients in other languages (any ZeroMQ binding and a
//! msgpack library suffice).
//!
//! ZeroMQ has no connections to accept: the server keeps a *session* per
//! peer identity, opened by the peer's Hello, and hands it to the generic
//! server as a [`Connection`]. One thread per listener (and per client
//! connection) owns the socket, since ZeroMQ sockets are not thread-safe
//! and block; it talks to tokio through channels and is woken through an
//! inproc socket, so no tokio worker ever blocks on ZeroMQ.
//!
//! Bounds (see [`ZmqConfig`]):
//!
//! - Sessions: at most `max_peers`. A session ends as soon as its peer's
//!   connection closes, after silence (sooner before its first request),
//!   or, when the table is full and a new peer says Hello, if it is the
//!   one idle longest with no request in flight (one that never sent a
//!   request goes first). Only when every session has a request in flight
//!   is a Hello answered with `busy`.
//! - Parts: `ZMQ_MAXMSGSIZE`, from the server's limits
//!   ([`TransportOptions::limits`]): a peer that declares a larger part is
//!   disconnected by libzmq before anything is allocated. libzmq fixes the
//!   option per socket when it binds, so it is the largest part any frame
//!   may have (the payload limit), not the handshake's, for peers with a
//!   session or not.
//! - Queues: a message reaches the pump once all its parts are in. What a
//!   peer without a session sent is dropped there and then; a Hello over
//!   the handshake limits is answered and opens no session. Frames waiting
//!   for the server to read them are bounded per session (frames and
//!   bytes) and for all sessions together (bytes); the excess is answered
//!   with `busy`. libzmq's own queue per connection is as long as a
//!   session's (`ZMQ_RCVHWM`).
//! - Not bounded: libzmq gathers the parts of a message without a limit on
//!   their number, and keeps a message in progress as long as its peer
//!   takes to send it. So a peer that never says Hello can still make the
//!   server hold what it actually sends of one message (memory grows with
//!   the bytes received, not with the sizes declared). libzmq 4.3 has no
//!   option to bound that; ZeroMQ-level authentication (ZAP) would refuse
//!   such peers before their first message.
//!
//! Zero copies: received parts become the tensors' `Bytes` in place (the
//! buffer stays libzmq's until the last `Bytes` is dropped) and tensors
//! are sent from their own buffers (`zmq_msg_init_data`).
//!
//! Linking this crate registers the transport; [`TRANSPORT`] is also
//! exported for explicit use.
#![warn(missing_docs)]

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use mymps_core::protocol::Limits;
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, Listener, Transport, TransportOptions, TransportRegistration,
};

mod client;
mod server;
mod sock;
mod wire;

#[cfg(test)]
mod tests;

const SCHEME: &str = "zmq";

/// Settings of the ZeroMQ transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZmqConfig {
    /// Server: most sessions (peers) at once. A Hello beyond it ends the
    /// session idle longest among those with no request in flight (one
    /// that never sent a request first); only when every session has a
    /// request in flight is it answered with `busy`.
    pub max_peers: usize,
    /// Server: frames a session may have waiting for the server to read
    /// them; the excess is answered with `busy`.
    pub peer_queue: usize,
    /// Server: bytes a session may have waiting (beyond one frame, which
    /// is always taken); the excess is answered with `busy`.
    pub peer_queue_bytes: u64,
    /// Server: bytes all sessions together may have waiting (beyond one
    /// frame, taken when nothing waits); the excess is answered with
    /// `busy`. What waits here is not yet in the server's memory budget,
    /// which the server takes when it reads a frame.
    pub queue_bytes: u64,
    /// Server: a session whose peer sent nothing (not even a heartbeat)
    /// for this long ends; the peer must send a Hello again. (A session
    /// also ends as soon as its peer's connection closes.)
    pub idle_timeout: Duration,
    /// Server: the idle timeout of a session whose peer has not sent a
    /// request yet (at most `idle_timeout`). mymps clients send heartbeats
    /// every [`heartbeat`](Self::heartbeat), so only silent peers lose
    /// their session this way.
    pub unused_idle_timeout: Duration,
    /// Server: the largest part libzmq accepts when the bind options carry
    /// no limits (with limits: the largest part a frame may have under
    /// them). `None`: no limit.
    pub max_part_size: Option<u64>,
    /// Messages libzmq queues for one peer before sends to it fail
    /// (`ZMQ_SNDHWM`). The server drops replies to a peer that leaves
    /// this many unread; the client waits.
    pub send_hwm: i32,
    /// Client: a heartbeat (one empty part) goes out after this long
    /// without sending; ZeroMQ's own heartbeats (`ZMQ_HEARTBEAT_IVL`, on
    /// the client's socket only) use it too, with a timeout of three times
    /// it.
    pub heartbeat: Duration,
    /// Client: time to complete the ZeroMQ handshake when connecting.
    pub connect_timeout: Duration,
}

impl ZmqConfig {
    /// The defaults: 1024 sessions, 1024 frames (as many as the server keeps
    /// in flight per connection) or 256 MiB queued per session and 4 GiB
    /// for all (one frame of the default payload limit
    /// fits), sessions end after 5 minutes of silence (30 s before their
    /// first request), parts up to the
    /// default frame limits, 100 000 unread replies per peer, heartbeats
    /// every 10 s (a silent server is dropped after 30 s), 10 s to connect.
    pub const DEFAULT: ZmqConfig = ZmqConfig {
        max_peers: 1024,
        peer_queue: 1024,
        peer_queue_bytes: 256 << 20,
        queue_bytes: 4 << 30,
        idle_timeout: Duration::from_secs(300),
        unused_idle_timeout: Duration::from_secs(30),
        max_part_size: Some(Limits::DEFAULT.max_payload),
        send_hwm: 100_000,
        heartbeat: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
    };
}

impl Default for ZmqConfig {
    fn default() -> ZmqConfig {
        ZmqConfig::DEFAULT
    }
}

/// The ZeroMQ transport.
#[derive(Debug, Clone)]
pub struct ZmqTransport {
    config: ZmqConfig,
}

impl ZmqTransport {
    /// A transport with these settings (for embedding and tests; the
    /// registered [`TRANSPORT`] uses [`ZmqConfig::DEFAULT`]).
    pub const fn new(config: ZmqConfig) -> ZmqTransport {
        ZmqTransport { config }
    }

    /// The settings.
    pub fn config(&self) -> &ZmqConfig {
        &self.config
    }
}

impl Default for ZmqTransport {
    fn default() -> ZmqTransport {
        ZmqTransport::new(ZmqConfig::DEFAULT)
    }
}

/// The transport instance registered for `zmq://`.
pub static TRANSPORT: ZmqTransport = ZmqTransport::new(ZmqConfig::DEFAULT);

inventory::submit! { TransportRegistration { transport: &TRANSPORT } }

impl Transport for ZmqTransport {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    /// Binds a ROUTER socket. Of the options, only `limits` (for
    /// `ZMQ_MAXMSGSIZE`) and `refusals` (what the pump answers itself is
    /// counted there) are used; ZeroMQ over TCP has no TLS.
    fn bind<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(server::bind(
            endpoint,
            &self.config,
            options.limits.as_ref(),
            options.refusals.clone(),
        ))
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        _options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Connection>> {
        Box::pin(client::connect(endpoint, &self.config))
    }
}

/// The address to give libzmq for `endpoint`'s host: an IP address (names
/// are resolved here; libzmq's bind takes no names) or `*`.
async fn resolve(endpoint: &Endpoint, binding: bool) -> io::Result<String> {
    let host = endpoint.host.as_str();
    if host.parse::<IpAddr>().is_ok() || (binding && host == "*") {
        return Ok(host.to_owned());
    }
    let addr = tokio::net::lookup_host((host, endpoint.port))
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no address for '{host}'"))
        })?;
    Ok(addr.ip().to_string())
}

/// `host` as it goes in a `tcp://` address: IPv6 in brackets.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// ZeroMQ's connection heartbeats: a peer that stops answering is
/// disconnected after three intervals.
fn set_heartbeats(socket: &mut zmq::Socket, config: &ZmqConfig) -> io::Result<()> {
    let ms = i32::try_from(config.heartbeat.as_millis()).unwrap_or(i32::MAX);
    sock::set_int_option(socket, zmq_sys::ZMQ_HEARTBEAT_IVL, ms)?;
    sock::set_int_option(socket, zmq_sys::ZMQ_HEARTBEAT_TIMEOUT, ms.saturating_mul(3))?;
    Ok(())
}
