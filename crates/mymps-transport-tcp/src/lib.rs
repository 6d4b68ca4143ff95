//! # mymps-transport-tcp
//!
//! The `tcp://host:port` transport: tokio TCP streams with `TCP_NODELAY`,
//! framed by [`mymps_core::stream`] (vectored writes straight from tensor
//! buffers, reads into buffers that become the tensors).
//!
//! Linking this crate registers the transport; [`TRANSPORT`] is also
//! exported for explicit use.
#![warn(missing_docs)]

use std::io;
use std::sync::Arc;

use mymps_core::buffer::HostAlloc;
use mymps_core::stream::{StreamReader, StreamWriter};
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, Listener, Transport, TransportOptions, TransportRegistration,
};
use tokio::net::{TcpListener, TcpStream};

/// The TCP transport.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

/// The transport instance registered for `tcp://`.
pub static TRANSPORT: TcpTransport = TcpTransport;

inventory::submit! { TransportRegistration { transport: &TRANSPORT } }

const SCHEME: &str = "tcp";

/// A connection over `stream`; large received tensors go to `alloc`'s
/// memory when given (the server's backend's, see `TransportOptions`).
fn into_connection(stream: TcpStream, alloc: Option<Arc<dyn HostAlloc>>) -> io::Result<Connection> {
    stream.set_nodelay(true)?;
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

    /// Binds; of the options TCP uses only `host_alloc` (it has no TLS).
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
