//! `tcp+tls://host:port`: the TCP transport's frames inside TLS 1.3
//! (tokio-rustls over a `TcpStream` with `TCP_NODELAY`). Certificates,
//! verification and the rustls configs are [`mymps_tls`]'s, the same as
//! `quic://`'s, so the options are the same: `tls_cert`/`tls_key` or a
//! generated self-signed certificate (written to `tls_cert_out`) on the
//! server; `tls_ca` and/or `tls_fingerprint` on the client, which
//! verifies the server under the host of the address it connects to.
//!
//! The TLS stream is split into a read half and a write half
//! (`tokio::io::split`) and framed by [`mymps_core::stream`] as plain TCP
//! is: a large tensor is decrypted straight into its own buffer, and
//! frames are written from the tensors' buffers (rustls encrypts them in
//! records of at most 16 KiB, so no frame is copied whole).
//!
//! The listener accepts TCP connections and runs their TLS handshakes in
//! tasks of their own (at most [`MAX_HANDSHAKES`] at once, each within
//! [`HANDSHAKE_TIMEOUT`]), so a peer that connects and says nothing holds
//! up no one. A peer whose first bytes are a mymps `Hello` frame rather
//! than a TLS `ClientHello` (a `tcp://` client) is answered, in plain
//! frames, with an error that names the scheme to use, and closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mymps_core::buffer::HostAlloc;
use mymps_core::protocol::{self, FrameKind, Response};
use mymps_core::stream::{StreamReader, StreamWriter};
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, Listener, RefusalCounter, Transport, TransportOptions,
};
use mymps_core::{Error, ErrorCode};
use mymps_tls::rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

/// The URL scheme.
pub const SCHEME: &str = "tcp+tls";

/// TLS handshakes a listener runs at once; further connections wait in
/// the kernel's accept queue until one ends.
pub const MAX_HANDSHAKES: usize = 256;

/// Time a peer gets to complete the TLS handshake (server), and the time a
/// client waits for the TCP connection and the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS record that carries a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// TLS over TCP. Registered for `tcp+tls://` as
/// [`TLS_TRANSPORT`](crate::TLS_TRANSPORT).
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsTransport;

/// A stream's read half that takes a TCP close without TLS's
/// `close_notify` for an end of stream, as a TCP close is for `tcp://`:
/// frames carry their lengths, so the frame reader itself tells a
/// connection that ends between frames from one cut off in the middle of
/// one (a truncation attack cannot shorten a frame unnoticed).
struct EndOnClose<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for EndOnClose<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// A connection over a TLS stream.
fn connection<S>(stream: S, peer: String, alloc: Option<Arc<dyn HostAlloc>>) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    Connection {
        reader: Box::new(StreamReader::with_host_alloc(EndOnClose(r), alloc)),
        writer: Box::new(StreamWriter::new(w)),
        peer,
    }
}

// --- the listener -------------------------------------------------------------

struct TlsListener {
    local: Endpoint,
    accepted: mpsc::Receiver<Connection>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Ends the handshakes under way too (they are the task's).
        self.accept_task.abort();
    }
}

impl Listener for TlsListener {
    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>> {
        // A channel's receive is cancel-safe: the server may drop this
        // future (it selects over accept and its connections) and lose
        // nothing.
        Box::pin(async move {
            self.accepted
                .recv()
                .await
                .ok_or_else(|| io::Error::other("the tcp+tls:// listener stopped"))
        })
    }
}

/// What each handshake task needs.
#[derive(Clone)]
struct Accepting {
    acceptor: TlsAcceptor,
    accepted: mpsc::Sender<Connection>,
    host_alloc: Option<Arc<dyn HostAlloc>>,
    refusals: Option<RefusalCounter>,
    local: Endpoint,
}

async fn accept_loop(listener: TcpListener, ctx: Accepting) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait a little, as
                // the server does for its other listeners.
                warn!(listen = %ctx.local, error = %e, "tcp+tls: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        handshakes.spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, peer, &ctx)).await {
                Ok(Ok(tls)) => {
                    let conn = connection(tls, peer.to_string(), ctx.host_alloc.clone());
                    let _ = ctx.accepted.send(conn).await;
                }
                Ok(Err(e)) => log_failed_handshake(peer, &e),
                Err(_) => warn!(%peer, "tcp+tls: TLS handshake timed out"),
            }
        });
    }
}

/// The server's side of a handshake.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &Accepting,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    super::configure(&tcp)?;
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the TLS handshake",
        ));
    }
    if first[0] == FrameKind::Hello as u8 {
        answer_plain_client(tcp, peer, ctx).await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a plain tcp:// client (its first bytes are a mymps Hello, not a TLS ClientHello); told it to connect with tcp+tls://",
        ));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        debug!(%peer, byte = first[0], "tcp+tls: not a TLS record; rustls will refuse it");
    }
    ctx.acceptor.accept(tcp).await
}

/// Tells a `tcp://` client, in its own framing, that this port speaks TLS.
async fn answer_plain_client(mut tcp: TcpStream, peer: SocketAddr, ctx: &Accepting) {
    let e = Error::new(
        ErrorCode::Connection,
        format!(
            "this port of the server (port {}) serves tcp+tls:// (TLS) and the client connected without TLS: connect to the same host and port as tcp+tls://, verifying the server with --ca FILE or --fingerprint SHA256 (in Python transport=\"tcp+tls\" with tls_ca= or tls_fingerprint=)",
            ctx.local.port
        ),
    );
    if let Some(r) = &ctx.refusals {
        r.count(e.code);
    }
    let frame = protocol::encode(FrameKind::Response, 0, &Response::Error(e), vec![])
        .expect("an error response always encodes");
    let head = frame.encode_head();
    if tcp.write_all(&head).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    // Read what the client sent (its Hello) until it closes, so that our
    // close does not reset the connection before it has read the answer.
    let mut scratch = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    debug!(%peer, "tcp+tls: answered a plain tcp:// client");
}

// --- the transport ---------------------------------------------------------------

impl Transport for TlsTransport {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    /// Binds a TCP listener and sets up TLS: the given certificate
    /// (`tls_cert`/`tls_key`), or a generated one written to
    /// `tls_cert_out`.
    fn bind<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = TcpListener::bind(endpoint.host_port()).await?;
            let identity = mymps_tls::server_identity(
                SCHEME,
                &endpoint.host,
                options.tls_cert.as_deref(),
                options.tls_key.as_deref(),
                options.tls_cert_out.as_deref(),
            )?;
            let acceptor = TlsAcceptor::from(Arc::new(mymps_tls::server_config(identity)?));
            let addr = listener.local_addr()?;
            let local = Endpoint::new(SCHEME, &addr.ip().to_string(), addr.port());
            let (accepted, rx) = mpsc::channel(64);
            let ctx = Accepting {
                acceptor,
                accepted,
                host_alloc: options.host_alloc.as_ref().map(|a| a.0.clone()),
                refusals: options.refusals.clone(),
                local: local.clone(),
            };
            let accept_task = tokio::spawn(accept_loop(listener, ctx));
            Ok(Box::new(TlsListener {
                local,
                accepted: rx,
                accept_task,
            }) as Box<dyn Listener>)
        })
    }

    /// Connects and completes the TLS handshake, verifying the server with
    /// `tls_ca` and/or `tls_fingerprint` (one is required) for the host
    /// of `endpoint` (a DNS name or an IP address).
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Connection>> {
        Box::pin(async move {
            let verifier = Arc::new(mymps_tls::Verifier::new(
                SCHEME,
                options.tls_ca.as_deref(),
                options.tls_fingerprint.as_deref(),
            )?);
            let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "'{}' is not a host name or IP address a certificate can name: {e}",
                        endpoint.host
                    ),
                )
            })?;
            let connector =
                TlsConnector::from(Arc::new(mymps_tls::client_config(verifier.clone())?));
            let timed_out = || {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake with {endpoint} within {HANDSHAKE_TIMEOUT:?}"),
                )
            };
            let tcp =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(endpoint.host_port()))
                    .await
                    .map_err(|_| timed_out())??;
            super::configure(&tcp)?;
            let peer = tcp
                .peer_addr()
                .map_or_else(|_| endpoint.host_port(), |a| a.to_string());
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return Err(match verifier.take_refusal() {
                        Some(why) => io::Error::new(io::ErrorKind::PermissionDenied, why),
                        None => {
                            io::Error::new(io::ErrorKind::ConnectionRefused, handshake_failure(&e))
                        }
                    });
                }
                Err(_) => return Err(timed_out()),
            };
            Ok(connection(tls, peer, None))
        })
    }
}

/// Why a client's handshake failed, when its verifier did not refuse.
fn handshake_failure(e: &io::Error) -> String {
    match e.kind() {
        // Bytes that are no TLS record, or a close instead of an answer.
        io::ErrorKind::InvalidData
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => format!(
            "TLS handshake failed: {e}; is a mymps server listening there on tcp+tls://? (a plain tcp:// server answers a TLS ClientHello with a protocol error and closes)"
        ),
        _ => format!("TLS handshake failed: {e}"),
    }
}

/// A server's log line for a handshake that failed.
fn log_failed_handshake(peer: SocketAddr, e: &io::Error) {
    let hint = if e.to_string().contains("alert") {
        " (the client refused this server's certificate, or its TLS settings)"
    } else {
        ""
    };
    warn!(%peer, error = %e, "tcp+tls: handshake failed{hint}");
}
