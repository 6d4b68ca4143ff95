//! # mymps-transport-http
//!
//! The `http://host:port` listener: the first mymps's REST API (JSON and
//! msgpack bodies, `x-op` / `x-kwargs` / `x-model` headers; see
//! `docs/http.md`), a live dashboard at `/`, and Prometheus metrics at
//! `/metrics`, served by hyper.
//!
//! It fits the generic server like any transport: every HTTP connection
//! becomes an in-memory [`Connection`] that the server accepts, with a
//! handshake (the token of `Authorization: Bearer`) and one request frame
//! per HTTP request. So limits, the memory budget, authentication and
//! metrics are the core's, as for `tcp://`. Request bodies are checked
//! against the server's limits and memory budget before they are read.
//!
//! Bounds (see [`HttpConfig`]): a request's head is capped in bytes (and
//! at 100 headers) and must arrive within a timeout; a body may pause only
//! so long, after which the request is answered 408, its connection closed
//! and the memory budget its body took given back.
//!
//! It is a server-side transport: `connect` returns an
//! [`io::ErrorKind::Unsupported`] error (mymps clients use `tcp://`; HTTP
//! clients need no mymps code).
//!
//! Linking this crate registers the transport; [`TRANSPORT`] is also
//! exported for explicit use.
#![warn(missing_docs)]

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, Listener, Transport, TransportOptions, TransportRegistration,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

mod msgpack;
mod routes;
mod virtual_conn;

#[cfg(test)]
mod tests;

/// Settings of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// Longest a client may take to send a request's head (request line
    /// and headers), counted from when the server starts reading it, so
    /// also how long an idle keep-alive connection stays open. Over it the
    /// connection closes (hyper's `header_read_timeout`).
    pub header_read_timeout: Duration,
    /// Longest a request body may pause (no byte arriving) before the
    /// request is answered 408 and the connection closed; the memory
    /// budget taken for the body is given back.
    pub body_read_timeout: Duration,
    /// Most bytes of a request's head, all headers together; over it the
    /// request is answered 431 and the connection closed. At least 8 KiB.
    pub max_head_bytes: usize,
}

impl HttpConfig {
    /// The defaults: 30 s for a request's head, bodies may pause 30 s,
    /// heads of at most 256 KiB.
    pub const DEFAULT: HttpConfig = HttpConfig {
        header_read_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(30),
        max_head_bytes: 256 * 1024,
    };
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig::DEFAULT
    }
}

/// The HTTP transport.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpTransport {
    config: HttpConfig,
}

impl HttpTransport {
    /// A transport with these settings (for embedding and tests; the
    /// registered [`TRANSPORT`] uses [`HttpConfig::DEFAULT`]).
    pub const fn new(config: HttpConfig) -> HttpTransport {
        HttpTransport { config }
    }

    /// The settings.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }
}

/// The transport instance registered for `http://`.
pub static TRANSPORT: HttpTransport = HttpTransport::new(HttpConfig::DEFAULT);

inventory::submit! { TransportRegistration { transport: &TRANSPORT } }

const SCHEME: &str = "http";

/// HTTP connections whose virtual connection waits for the server's accept.
const ACCEPT_QUEUE: usize = 64;

struct HttpListener {
    accepted: mpsc::Receiver<Connection>,
    local: Endpoint,
    /// Dropped with the listener: stops the acceptor and closes idle HTTP
    /// connections.
    _stop: watch::Sender<()>,
}

impl Listener for HttpListener {
    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>> {
        Box::pin(async move {
            self.accepted.recv().await.ok_or_else(|| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the HTTP acceptor stopped")
            })
        })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    accept: mpsc::Sender<Connection>,
    mut stop: watch::Receiver<()>,
    config: HttpConfig,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        // `max_buf_size` alone caps a head only when it arrives in pieces:
        // a read may fill the buffer's whole spare capacity, beyond it, and
        // a head that arrives complete is served. `max_header_size` checks
        // the parsed length too (and caps chunked trailers).
        .max_header_size(config.max_head_bytes.max(8192))
        .max_buf_size(config.max_head_bytes.max(8192))
        .keep_alive(true);
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.changed() => break,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::new(routes::ConnCtx::new(
            accept.clone(),
            format!("http://{addr}"),
            config.body_read_timeout,
        ));
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| routes::serve(ctx.clone(), req)),
        );
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(peer = %addr, error = %e, "HTTP connection ended");
            }
        });
    }
}

impl Transport for HttpTransport {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    /// Binds; HTTP uses none of the options (no TLS: put a TLS proxy in
    /// front for untrusted networks).
    fn bind<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        _options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let tcp = TcpListener::bind(endpoint.host_port()).await?;
            let addr = tcp.local_addr()?;
            let local = Endpoint::new(SCHEME, &addr.ip().to_string(), addr.port());
            let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
            let (stop, stop_rx) = watch::channel(());
            tokio::spawn(accept_loop(tcp, tx, stop_rx, self.config));
            Ok(Box::new(HttpListener {
                accepted: rx,
                local,
                _stop: stop,
            }) as Box<dyn Listener>)
        })
    }

    /// Not supported: `http://` serves HTTP clients (curl, the first
    /// mymps's Python client, browsers); mymps clients connect with `tcp://`.
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        _options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Connection>> {
        Box::pin(async move {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{endpoint} is the REST API for HTTP clients (curl, the first mymps's Python client); \
                     mymps clients connect to the server's tcp:// address"
                ),
            ))
        })
    }
}
