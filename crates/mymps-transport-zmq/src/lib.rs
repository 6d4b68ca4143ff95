//! # mymps-transport-zmq
//!
//! The `zmq://host:port` transport: ZeroMQ (ZMTP 3) over TCP.
//!
//! One connection carries many requests in flight, as on TCP. Each frame
//! is one multipart message: a head part (the 16-byte frame prefix and the
//! msgpack header), then one part per tensor, so tensor bytes are never
//! copied into a header. `docs/protocol.md` ("ZeroMQ framing") documents
//! the layout for clients in other languages (any ZeroMQ binding and a
//! msgpack library suffice). A streamed reply (a `generate` with `stream`)
//! is several such messages of one id, each but the last with the frame's
//! `MORE` flag, in order on the connection; a `Cancel` frame is one
//! message too (tested end to end by the conformance case `generate`).
//!
//! **Server**: ZMTP 3 spoken
//! natively over tokio TCP streams (no libzmq): a DEALER, ROUTER or REQ
//! peer sees a ROUTER. One TCP connection is one [`Connection`] for the
//! generic server, read as `tcp://` is: each ZMTP frame's size is checked
//! before its body is read, with the core's decision and the limits the
//! server reads with (the handshake's before a Hello), its tensors take the
//! memory budget before they are read and land in buffers of their own,
//! replies are written vectored from the tensors' buffers. A refused
//! message is answered and skipped, or the connection closed, by the same
//! rules as on `tcp://`; the ZMTP handshake (greeting, READY) is part of
//! the wait for the Hello, under the server's handshake timeout.
//!
//! **Client**: libzmq (the `zmq` crate, which builds libzmq from the
//! source it ships: no system package is needed and the Python wheel
//! carries it). A DEALER socket owned by one thread, since ZeroMQ sockets
//! are not thread-safe and block; it talks to tokio through channels and
//! is woken through an inproc socket, so no tokio worker ever blocks on
//! ZeroMQ. Received parts become the tensors' `Bytes` in place and tensors
//! are sent from their own buffers (`zmq_msg_init_data`); replies are
//! admitted with the client's limits, as the core admits whole frames.
//!
//! Linking this crate registers the transport; [`TRANSPORT`] is also
//! exported for explicit use.
#![warn(missing_docs)]

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, Listener, Transport, TransportOptions, TransportRegistration,
};

mod client;
mod server;
mod sock;
mod wire;
mod zmtp;

#[cfg(test)]
mod tests;

const SCHEME: &str = "zmq";

/// Settings of the ZeroMQ transport's client side (the server has none:
/// it is bounded by the server's limits and memory budget, as `tcp://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZmqConfig {
    /// Messages libzmq queues for the server before a send waits
    /// (`ZMQ_SNDHWM`).
    pub send_hwm: i32,
    /// ZeroMQ's heartbeats (`ZMQ_HEARTBEAT_IVL`): a PING after this long
    /// without traffic; a server that answers nothing for three times it
    /// is taken for gone and the connection fails.
    pub heartbeat: Duration,
    /// Time to complete the ZeroMQ handshake when connecting.
    pub connect_timeout: Duration,
}

impl ZmqConfig {
    /// The defaults: 100 000 messages queued, heartbeats every 10 s (a
    /// silent server is dropped after 30 s), 10 s to connect.
    pub const DEFAULT: ZmqConfig = ZmqConfig {
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

    /// Binds a TCP listener that speaks ZMTP 3 (host `*`: every
    /// interface). Of the options only `host_alloc` is used (large
    /// received tensors go to the backend's memory, as on `tcp://`);
    /// ZeroMQ over TCP has no TLS, and everything else is the server's.
    fn bind<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(server::bind(
            endpoint,
            options.host_alloc.as_ref().map(|a| a.0.clone()),
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
/// are resolved here).
async fn resolve(endpoint: &Endpoint) -> io::Result<String> {
    let host = endpoint.host.as_str();
    if host.parse::<IpAddr>().is_ok() {
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
