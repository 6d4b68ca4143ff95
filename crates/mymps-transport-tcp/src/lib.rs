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

fn into_connection(stream: TcpStream) -> io::Result<Connection> {
    stream.set_nodelay(true)?;
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let (r, w) = stream.into_split();
    Ok(Connection {
        reader: Box::new(StreamReader::new(r)),
        writer: Box::new(StreamWriter::new(w)),
        peer,
    })
}

struct TcpListenerImpl {
    inner: TcpListener,
    local: Endpoint,
}

impl Listener for TcpListenerImpl {
    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            let (stream, _) = self.inner.accept().await?;
            into_connection(stream)
        })
    }
}

impl Transport for TcpTransport {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    /// Binds; TCP uses none of the options (it has no TLS).
    fn bind<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        _options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let inner = TcpListener::bind(endpoint.host_port()).await?;
            let addr = inner.local_addr()?;
            let local = Endpoint::new(SCHEME, &addr.ip().to_string(), addr.port());
            Ok(Box::new(TcpListenerImpl { inner, local }) as Box<dyn Listener>)
        })
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        _options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Connection>> {
        Box::pin(async move { into_connection(TcpStream::connect(endpoint.host_port()).await?) })
    }
}
