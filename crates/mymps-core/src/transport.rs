//! The `Transport` traits, endpoints (`scheme://host:port`) and the registry
//! that finds a transport by URL scheme.
//!
//! A transport moves [`Frame`]s; it does not interpret them. Byte-stream
//! transports (TCP, and QUIC streams later) wrap their halves in
//! [`crate::stream::StreamReader`] / [`crate::stream::StreamWriter`];
//! message-based ones (ZeroMQ) implement [`FrameReader`] / [`FrameWriter`]
//! directly.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, ErrorCode, Result};
use crate::protocol::{Frame, FrameError, Limits};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where to listen or connect: `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// URL scheme, naming the transport (`tcp`).
    pub scheme: String,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (0 to let the system choose when listening).
    pub port: u16,
}

impl Endpoint {
    /// A new endpoint.
    pub fn new(scheme: &str, host: &str, port: u16) -> Endpoint {
        Endpoint {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port,
        }
    }

    /// `host:port`, with brackets around IPv6 addresses.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host_port())
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    /// Parses `scheme://host:port`; `host:port` alone means `tcp`.
    fn from_str(s: &str) -> Result<Endpoint> {
        let bad = |why: &str| {
            Error::bad_argument(format!(
                "bad address '{s}': {why} (expected scheme://host:port, e.g. tcp://127.0.0.1:5555)"
            ))
        };
        let (scheme, rest) = s.split_once("://").unwrap_or(("tcp", s));
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        {
            return Err(bad("bad scheme"));
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r
                .split_once("]:")
                .ok_or_else(|| bad("IPv6 address needs [addr]:port"))?;
            (h, p)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("missing port"))?
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("missing host"));
        }
        let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
        Ok(Endpoint::new(&scheme.to_ascii_lowercase(), host, port))
    }
}

/// A cap on the tensor bytes held by requests in flight, shared by every
/// connection of a server, so that no set of requests makes it allocate
/// without bound. Readers take a permit for a frame's payload before
/// allocating it; the permit is released when the request is answered.
///
/// Waiting is first come, first served, which alone would let one large
/// request (or a peer that declared one and stalls) hold up every small
/// one behind it. So a slice of the budget, the *reserve* (an eighth, at
/// most 64 MiB), serves only small requests (at most
/// [`small_limit`](Self::small_limit) bytes): a small request takes from
/// whichever part frees up first, and waits only behind other small ones
/// for the reserve. Large requests use the rest.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    main: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    main_kib: u32,
    reserve_kib: u32,
}

impl MemoryBudget {
    /// A budget of `bytes` (rounded to KiB; at most 4 TiB).
    pub fn new(bytes: u64) -> MemoryBudget {
        let kib = (bytes / 1024).clamp(1, u32::MAX as u64) as u32;
        let reserve_kib = (kib / 8).min(64 * 1024);
        let main_kib = kib - reserve_kib;
        MemoryBudget {
            main: Arc::new(Semaphore::new(main_kib as usize)),
            reserve: Arc::new(Semaphore::new(reserve_kib as usize)),
            main_kib,
            reserve_kib,
        }
    }

    /// The budget's size in bytes.
    pub fn capacity(&self) -> u64 {
        (self.main_kib as u64 + self.reserve_kib as u64) * 1024
    }

    /// The largest request the budget can ever admit, bytes (the budget
    /// less the small-request reserve, or the whole of a tiny budget).
    pub fn max_request(&self) -> u64 {
        (self.main_kib.max(self.reserve_kib) as u64) * 1024
    }

    /// Requests of at most this many bytes may use the reserve: a
    /// sixteenth of it, at most 1 MiB.
    pub fn small_limit(&self) -> u64 {
        (self.reserve_kib as u64 * 1024 / 16).min(1 << 20)
    }

    /// Bytes held by requests in flight now (KiB granularity).
    pub fn in_use(&self) -> u64 {
        let main = (self.main_kib as u64).saturating_sub(self.main.available_permits() as u64);
        let reserve =
            (self.reserve_kib as u64).saturating_sub(self.reserve.available_permits() as u64);
        (main + reserve) * 1024
    }

    /// Waits until `bytes` fit in the budget; `None` if they never can.
    pub async fn acquire(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = bytes.div_ceil(1024);
        if kib > self.max_request().div_ceil(1024) {
            return None;
        }
        let kib = kib as u32;
        if kib as u64 * 1024 > self.small_limit() || kib > self.reserve_kib {
            let main = if kib <= self.main_kib {
                &self.main
            } else {
                &self.reserve
            };
            return main.clone().acquire_many_owned(kib).await.ok();
        }
        if let Ok(p) = self.main.clone().try_acquire_many_owned(kib) {
            return Some(p);
        }
        tokio::select! {
            p = self.main.clone().acquire_many_owned(kib) => p.ok(),
            p = self.reserve.clone().acquire_many_owned(kib) => p.ok(),
        }
    }

    /// Grows `permit`, a frame's payload permit (from
    /// [`acquire`](Self::acquire)), to `total` bytes: for a message
    /// transport that learns a frame's tensor lengths one at a time
    /// (ZeroMQ: one part per tensor, each length just before its bytes), so
    /// that it takes each tensor's bytes before it reads them.
    ///
    /// The frame holds memory while it waits, so two such frames could
    /// wait for each other for ever: this waits at most `wait`, and says
    /// `false` (the permit unchanged) when the bytes did not come in time
    /// or never can ([`max_request`](Self::max_request)). They come from
    /// the part of the budget the permit is from, except that a frame that
    /// outgrows the small-request reserve takes its whole size from the
    /// rest and gives the reserve's share back.
    pub async fn acquire_more(
        &self,
        permit: &mut OwnedSemaphorePermit,
        total: u64,
        wait: std::time::Duration,
    ) -> bool {
        let kib = total.div_ceil(1024);
        if kib > self.max_request().div_ceil(1024) {
            return false;
        }
        let kib = kib as u32;
        let have = u32::try_from(permit.num_permits()).unwrap_or(u32::MAX);
        if kib <= have {
            return true;
        }
        let in_reserve = Arc::ptr_eq(permit.semaphore(), &self.reserve);
        if in_reserve && (kib as u64 * 1024 > self.small_limit() || kib > self.reserve_kib) {
            let Ok(Some(whole)) = tokio::time::timeout(wait, self.acquire(total)).await else {
                return false;
            };
            *permit = whole;
            return true;
        }
        let from = permit.semaphore().clone();
        let more = match from.clone().try_acquire_many_owned(kib - have) {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(wait, from.acquire_many_owned(kib - have)).await {
                Ok(Ok(p)) => p,
                _ => return false,
            },
        };
        permit.merge(more);
        true
    }

    /// Takes `bytes` now if they fit, without waiting.
    pub fn try_acquire(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.main
            .clone()
            .try_acquire_many_owned(kib)
            .ok()
            .or_else(|| {
                (kib as u64 * 1024 <= self.small_limit())
                    .then(|| self.reserve.clone().try_acquire_many_owned(kib).ok())
                    .flatten()
            })
    }
}

/// Takes a frame's payload (`payload` bytes) from `budget`: the one
/// admission of every transport once a frame's sizes passed its limits
/// (byte streams after [`decode_head`](crate::protocol::decode_head),
/// message transports after [`admit_frame`]'s checks). The refusal, when the
/// budget can never hold it, is the decision of
/// [`admit_payload`](crate::protocol::admit_payload).
pub async fn acquire_payload(
    prefix: &crate::protocol::Prefix,
    payload: u64,
    limits: &Limits,
    budget: Option<&MemoryBudget>,
) -> std::result::Result<Option<OwnedSemaphorePermit>, crate::protocol::Head> {
    match budget {
        Some(b) if payload > 0 => match b.acquire(payload).await {
            Some(p) => Ok(Some(p)),
            None => Err(crate::protocol::admit_payload(
                prefix,
                payload,
                b.max_request(),
                limits,
            )),
        },
        _ => Ok(None),
    }
}

/// Checks a frame that a message transport received whole (ZeroMQ)
/// against `limits`, with the same rules and messages as on byte streams;
/// its tensor payload, bytes. There is nothing to skip, so a refusal is
/// just its error.
pub fn check_frame(frame: &Frame, limits: &Limits) -> std::result::Result<u64, FrameError> {
    let prefix = frame_prefix(frame)?;
    let table: Vec<u8> = frame
        .tensors
        .iter()
        .flat_map(|t| (t.len() as u64).to_le_bytes())
        .collect();
    let lens = crate::protocol::parse_lengths(&prefix, &table, limits).map_err(|e| match e {
        FrameError::TooLarge {
            id, kind, message, ..
        } => FrameError::TooLarge {
            id,
            kind,
            message,
            skip: 0,
        },
        other => other,
    })?;
    Ok(lens.iter().sum())
}

fn frame_prefix(frame: &Frame) -> std::result::Result<crate::protocol::Prefix, FrameError> {
    Ok(crate::protocol::Prefix {
        kind: frame.kind,
        flags: frame.flags,
        n_tensors: u16::try_from(frame.tensors.len())
            .map_err(|_| FrameError::Malformed("more than 65535 tensors".into()))?,
        header_len: u32::try_from(frame.header.len())
            .map_err(|_| FrameError::Malformed("a header over 4 GiB".into()))?,
        id: frame.id,
    })
}

/// [`check_frame`], then the frame's payload from `budget`
/// ([`acquire_payload`]): the admission of message transports.
pub async fn admit_frame(
    frame: &Frame,
    limits: &Limits,
    budget: Option<&MemoryBudget>,
) -> std::result::Result<Option<OwnedSemaphorePermit>, FrameError> {
    use crate::protocol::Head;
    let payload = check_frame(frame, limits)?;
    acquire_payload(&frame_prefix(frame)?, payload, limits, budget)
        .await
        .map_err(|head| match head {
            Head::Skip { error, .. } | Head::Close(error) => error,
            Head::Read { .. } => unreachable!("a refusal"),
        })
}

/// Counts the requests a transport answers by itself (a duplicate id on a
/// QUIC connection, an unframeable ZeroMQ message): the server sets it in
/// [`TransportOptions::refusals`] when it binds, so that `/metrics` sees
/// every refusal, whoever answered it.
#[derive(Clone)]
pub struct RefusalCounter(pub Arc<dyn Fn(ErrorCode) + Send + Sync>);

impl RefusalCounter {
    /// Counts one refusal.
    pub fn count(&self, code: ErrorCode) {
        (self.0)(code)
    }
}

impl fmt::Debug for RefusalCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefusalCounter(..)")
    }
}

impl PartialEq for RefusalCounter {
    fn eq(&self, other: &RefusalCounter) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RefusalCounter {}

/// A frame as a reader delivers it, with the memory permit its payload holds.
#[derive(Debug)]
pub struct Incoming {
    /// The frame.
    pub frame: Frame,
    /// Held until the request is answered; `None` when reading without a budget.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection failed.
    Io(io::Error),
    /// The frame was refused. [`FrameError::TooLarge`] frames have been
    /// skipped and the connection is usable; [`FrameError::Malformed`] means
    /// the stream is lost.
    Frame(FrameError),
    /// The transport received a request but refused it before it became a
    /// frame (a message-based transport's request that does not translate,
    /// e.g. an HTTP body that is not msgpack). It has been consumed and the
    /// connection is usable: the server answers `id` with `error` and
    /// counts it in its metrics.
    Refused {
        /// The id the answer goes to.
        id: u64,
        /// Why it was refused.
        error: Error,
    },
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Frame(e) => write!(f, "{e}"),
            ReadError::Refused { error, .. } => write!(f, "{error}"),
        }
    }
}

/// The receiving half of a connection.
pub trait FrameReader: Send + 'static {
    /// Reads the next frame, checking every size against `limits` (and
    /// taking the payload from `budget`) before allocating. `Ok(None)` is a
    /// clean end of the connection between frames.
    fn read_frame<'a>(
        &'a mut self,
        limits: &'a Limits,
        budget: Option<&'a MemoryBudget>,
    ) -> BoxFuture<'a, Result<Option<Incoming>, ReadError>>;
}

/// The sending half of a connection.
pub trait FrameWriter: Send + 'static {
    /// Writes one frame; tensor buffers are sent as they are, not copied
    /// into a contiguous buffer.
    fn write_frame(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>>;

    /// Flushes and closes the sending direction.
    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>>;
}

/// An established connection, split into halves that can be used from
/// different tasks.
pub struct Connection {
    /// Receiving half.
    pub reader: Box<dyn FrameReader>,
    /// Sending half.
    pub writer: Box<dyn FrameWriter>,
    /// The peer's address, for logs.
    pub peer: String,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A bound listener.
pub trait Listener: Send + 'static {
    /// The address actually bound (the real port when asked for port 0).
    fn local_endpoint(&self) -> Endpoint;

    /// Waits for the next connection.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Connection>>;
}

/// Settings a transport may need beyond the address, such as TLS material
/// for encrypted transports. A transport ignores what it does not use;
/// one that needs something missing says so in its bind or connect error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportOptions {
    /// Server: the certificate chain to present (PEM). With
    /// [`tls_key`](Self::tls_key); without both, a TLS transport generates
    /// a self-signed certificate and tells where it wrote it.
    pub tls_cert: Option<PathBuf>,
    /// Server: the private key of [`tls_cert`](Self::tls_cert) (PEM).
    pub tls_key: Option<PathBuf>,
    /// Server: where a generated self-signed certificate is written
    /// (PEM), for clients to trust. Transport-chosen default when `None`.
    pub tls_cert_out: Option<PathBuf>,
    /// Client: a CA or server certificate file (PEM) to verify the server
    /// against.
    pub tls_ca: Option<PathBuf>,
    /// Client: the pinned SHA-256 fingerprint of the server's certificate
    /// (hex, colons and case ignored).
    pub tls_fingerprint: Option<String>,
    /// Server: the frame limits after the handshake. [`crate::server`]
    /// sets them from its config when it binds, so that a transport with
    /// its own message layer (ZeroMQ) can refuse oversized messages there.
    pub limits: Option<Limits>,
    /// Server: where large received tensors are read into (the backend's
    /// memory, e.g. pinned host memory on a CUDA server; set by
    /// `Server::bind`). Stream transports pass it to their readers.
    pub host_alloc: Option<crate::buffer::HostAllocRef>,
    /// Server: where a transport counts the requests it answers by itself
    /// (set by `Server::bind`, into the server's metrics).
    pub refusals: Option<RefusalCounter>,
}

/// A transport: a way to listen and connect for one URL scheme.
pub trait Transport: Send + Sync + 'static {
    /// The URL scheme (`tcp`).
    fn scheme(&self) -> &'static str;

    /// Binds a listener.
    fn bind<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>>;

    /// Connects to a server.
    fn connect<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        options: &'a TransportOptions,
    ) -> BoxFuture<'a, io::Result<Connection>>;
}

/// A transport's entry in the registry; transport crates submit one with
/// `inventory::submit!`.
pub struct TransportRegistration {
    /// The transport.
    pub transport: &'static dyn Transport,
}

inventory::collect!(TransportRegistration);

/// The transport for `scheme`, among those linked into this binary.
pub fn transport_for(scheme: &str) -> Result<&'static dyn Transport> {
    inventory::iter::<TransportRegistration>
        .into_iter()
        .find(|r| r.transport.scheme() == scheme)
        .map(|r| r.transport)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::Unsupported,
                format!(
                    "no transport for '{scheme}://' in this build (compiled in: {}); enable the `{scheme}` cargo feature of the `mymps` crate",
                    available_schemes().join(", ")
                ),
            )
        })
}

/// The schemes of every transport linked into this binary, sorted.
pub fn available_schemes() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = inventory::iter::<TransportRegistration>
        .into_iter()
        .map(|r| r.transport.scheme())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_request_is_not_held_behind_a_large_one() {
        let budget = MemoryBudget::new(256 << 20);
        assert_eq!(budget.max_request(), 224 << 20);
        // Four stalled peers hold 4 × 55 MiB; a fifth waits for 55 MiB.
        let held: Vec<_> = acquire_n(4, &budget, 55 << 20).await;
        let b = budget.clone();
        let waiting = tokio::spawn(async move { b.acquire(55 << 20).await });
        tokio::task::yield_now().await;
        // A 20-byte request still gets in at once (from the reserve).
        let small = tokio::time::timeout(std::time::Duration::from_secs(1), budget.acquire(20))
            .await
            .expect("a small request must not wait behind a large one");
        assert!(small.is_some());
        assert!(budget.acquire(256 << 20).await.is_none(), "never fits");
        drop(held);
        assert!(waiting.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_frame_s_permit_grows_part_by_part_or_says_it_cannot() {
        use std::time::Duration;
        let short = Duration::from_millis(50);
        let budget = MemoryBudget::new(64 << 20);
        // 56 MiB for large requests, 8 MiB reserved, small = 512 KiB.
        assert_eq!(budget.small_limit(), 512 << 10);
        let mut p = budget.acquire(10 << 20).await.unwrap();
        assert!(budget.acquire_more(&mut p, 30 << 20, short).await);
        assert_eq!(budget.in_use(), 30 << 20);
        // Never: more than the budget admits; the permit is unchanged.
        assert!(!budget.acquire_more(&mut p, 57 << 20, short).await);
        assert_eq!(budget.in_use(), 30 << 20);
        // Not now: the rest is taken, and stays taken past the wait.
        let other = budget.acquire(26 << 20).await.unwrap();
        assert!(!budget.acquire_more(&mut p, 31 << 20, short).await);
        assert_eq!(budget.in_use(), 56 << 20);
        // Freed while it waits: granted.
        let b = budget.clone();
        let grow = tokio::spawn(async move {
            let ok = b
                .acquire_more(&mut p, 40 << 20, Duration::from_secs(5))
                .await;
            (ok, p)
        });
        tokio::time::sleep(short).await;
        drop(other);
        let (ok, p) = grow.await.unwrap();
        assert!(ok);
        assert_eq!(budget.in_use(), 40 << 20);
        drop(p);
        assert_eq!(budget.in_use(), 0);

        // A frame that begins small in the reserve and outgrows it takes
        // its whole size from the rest, and gives the reserve's share back.
        let main = budget.acquire(56 << 20).await.unwrap();
        let mut small = budget.acquire(4 << 10).await.unwrap();
        assert!(budget.acquire_more(&mut small, 8 << 10, short).await);
        assert_eq!(budget.in_use(), (56 << 20) + (8 << 10));
        assert!(!budget.acquire_more(&mut small, 1 << 20, short).await);
        drop(main);
        assert!(budget.acquire_more(&mut small, 1 << 20, short).await);
        assert_eq!(budget.in_use(), 1 << 20);
        // All 8 MiB of the reserve are free again: with the rest taken,
        // sixteen small requests of 512 KiB fit, a seventeenth does not.
        let rest = budget.acquire(55 << 20).await.unwrap();
        let reserve: Vec<_> = (0..16)
            .map(|_| budget.try_acquire(512 << 10).expect("room in the reserve"))
            .collect();
        assert!(budget.try_acquire(512 << 10).is_none());
        drop((rest, reserve, small));
        assert_eq!(budget.in_use(), 0);
    }

    async fn acquire_n(n: usize, b: &MemoryBudget, bytes: u64) -> Vec<OwnedSemaphorePermit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(b.acquire(bytes).await.unwrap());
        }
        v
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "tcp://127.0.0.1:5555".parse::<Endpoint>().unwrap(),
            Endpoint::new("tcp", "127.0.0.1", 5555)
        );
        assert_eq!(
            "localhost:1".parse::<Endpoint>().unwrap(),
            Endpoint::new("tcp", "localhost", 1)
        );
        let v6: Endpoint = "quic://[::1]:5556".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "quic://[::1]:5556");
        for bad in [
            "tcp://host",
            "tcp://:80",
            "tcp://h:99999",
            "://h:1",
            "tcp://[::1:5",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
