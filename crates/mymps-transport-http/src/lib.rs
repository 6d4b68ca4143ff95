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

/// The HTTP transport.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpTransport;

/// The transport instance registered for `http://`.
pub static TRANSPORT: HttpTransport = HttpTransport;

inventory::submit! { TransportRegistration { transport: &TRANSPORT } }

const SCHEME: &str = "http";

/// Time a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer cap, which also caps a request's headers (`x-kwargs`
/// included).
const MAX_BUF_SIZE: usize = 256 * 1024;
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
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE)
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
            tokio::spawn(accept_loop(tcp, tx, stop_rx));
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
