//! # mymps-transport-tcp
//!
//! The `tcp://host:port` transport: tokio TCP streams with `TCP_NODELAY`,
//! framed by [`mymps_core::stream`] (vectored writes straight from tensor
//! buffers, reads into buffers that become the tensors).
//!
//! With the `tls` feature, also `tcp+tls://host:port`: the same frames in
//! TLS 1.3 (tokio-rustls; certificates and verification are
//! [`mymps_tls`]'s, shared with `quic://`). See [`TlsTransport`].
//!
//! Linking this crate registers the transports; [`TRANSPORT`] (and
//! `TLS_TRANSPORT`) are also exported for explicit use.
#![warn(missing_docs)]

#[cfg(feature = "tls")]
mod tls;

use std::io;
use std::sync::Arc;

use mymps_core::buffer::HostAlloc;
use mymps_core::stream::{StreamReader, StreamWriter};
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, Listener, Transport, TransportOptions, TransportRegistration,
};
use tokio::net::{TcpListener, TcpStream};

#[cfg(feature = "tls")]
pub use tls::{
    HANDSHAKE_TIMEOUT as TLS_HANDSHAKE_TIMEOUT, MAX_HANDSHAKES, SCHEME as TLS_SCHEME, TlsTransport,
};

/// The TCP transport.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

/// The transport instance registered for `tcp://`.
pub static TRANSPORT: TcpTransport = TcpTransport;

inventory::submit! { TransportRegistration { transport: &TRANSPORT } }

/// The transport instance registered for `tcp+tls://` (feature `tls`).
///
/// It is declared here, beside [`TRANSPORT`], so that a program that names
/// either static to keep this crate linked keeps both registrations.
#[cfg(feature = "tls")]
pub static TLS_TRANSPORT: TlsTransport = TlsTransport;

#[cfg(feature = "tls")]
inventory::submit! { TransportRegistration { transport: &TLS_TRANSPORT } }

const SCHEME: &str = "tcp";

/// Idle time before the first keepalive probe.
const KEEPALIVE_TIME: std::time::Duration = std::time::Duration::from_secs(60);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Unanswered probes after which the connection is dropped.
const KEEPALIVE_PROBES: u32 = 6;

/// Sets up a connected socket (both ends, `tcp://` and `tcp+tls://`):
/// `TCP_NODELAY`, and TCP keepalive, so that a peer gone without a FIN or
/// an RST (powered off, unplugged, behind a NAT that forgot it) is found
/// out within about two minutes, idle or not, and its connection closed
/// (its requests, memory budget and resident tensors freed) instead of
/// held half-open for ever.
pub(crate) fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
    let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// A connection over `stream`; large received tensors go to `alloc`'s
/// memory when given (the server's backend's, see `TransportOptions`).
fn into_connection(stream: TcpStream, alloc: Option<Arc<dyn HostAlloc>>) -> io::Result<Connection> {
    configure(&stream)?;
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let (r, w) = stream.into_split();
    Ok(Connection {
        reader: Box::new(StreamReader::with_host_alloc(r, alloc)),
        writer: Box::new(StreamWriter::new(w)),
        peer,
    })
}

struct TcpListenerImpl {
    inner: TcpListener,
    local: Endpoint,
    host_alloc: Option<Arc<dyn HostAlloc>>,
}

impl Listener for TcpListenerImpl {
    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            let (stream, _) = self.inner.accept().await?;
            into_connection(stream, self.host_alloc.clone())
        })
    }
}

impl Transport for TcpTransport {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    /// Binds; of the options TCP uses only `host_alloc` (it has no TLS:
    /// see `tcp+tls://`).
    fn bind<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let inner = TcpListener::bind(endpoint.host_port()).await?;
            let addr = inner.local_addr()?;
            let local = Endpoint::new(SCHEME, &addr.ip().to_string(), addr.port());
            Ok(Box::new(TcpListenerImpl {
                inner,
                local,
                host_alloc: options.host_alloc.as_ref().map(|a| a.0.clone()),
            }) as Box<dyn Listener>)
        })
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        _options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Connection>> {
        Box::pin(
            async move { into_connection(TcpStream::connect(endpoint.host_port()).await?, None) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_have_keepalive_and_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for s in [&client, &server] {
            let before = socket2::SockRef::from(s);
            assert!(!before.keepalive().unwrap());
            configure(s).unwrap();
            let sock = socket2::SockRef::from(s);
            assert!(sock.keepalive().unwrap());
            assert!(s.nodelay().unwrap());
            #[cfg(target_os = "linux")]
            {
                assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
                assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
                assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
            }
        }
    }
}
