//! The generic server: any transport × any backend, several listeners at
//! once.
//!
//! Each connection has a reader loop and a writer task. Requests are
//! answered concurrently and may complete out of order; backend work runs
//! on the blocking pool, never on the reactor. A request's tensor bytes are
//! counted against a server-wide [`MemoryBudget`] from before they are
//! allocated until the reply is sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::error::{Error, ErrorCode, Result};
pub use crate::history::HistoryConfig;
use crate::history::{History, Readings};
use crate::metrics::{self, Metrics};
use crate::model::{GenerateLimits, ModelRegistry};
use crate::nvml::{GpuStats, NvmlDevice};
use crate::ops;
use crate::protocol::{
    self, ExecRequest, ExecResponse, Frame, FrameError, FrameKind, HealthInfo, Hello, InferRequest,
    Limits, Request, Response, Welcome,
};
use crate::stats::HostStats;
pub use crate::store::ResidentLimits;
use crate::store::Store;
use crate::transport::{
    Connection, Endpoint, FrameWriter, Listener, MemoryBudget, ReadError, TransportOptions,
    transport_for,
};

mod fair;
mod generate;
mod resident;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen (`tcp://127.0.0.1:5555`, ...).
    pub listen: Vec<Endpoint>,
    /// Size caps for frames after the handshake.
    pub limits: Limits,
    /// Cap on tensor bytes held by all requests in flight.
    pub memory_budget: u64,
    /// Requests in flight per connection before the server stops reading
    /// more from it.
    pub max_in_flight: usize,
    /// Backend calls running at once.
    pub workers: usize,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Longest an op waits for the memory budget its outputs need (while
    /// other requests hold it) before it is answered `Busy`.
    pub budget_wait: Duration,
    /// The folder model files must lie under (`None`: the current
    /// directory).
    pub model_root: Option<std::path::PathBuf>,
    /// The shared token clients must present in their Hello (`None`: no
    /// authentication). Checked in the handshake, before any tensor is read.
    pub auth_token: Option<String>,
    /// Transport settings (TLS material) for every listener.
    pub transport: TransportOptions,
    /// Caps on server-resident tensors (per connection and in all; their
    /// bytes also count in `memory_budget`).
    pub resident: ResidentLimits,
    /// Caps on one `generate` request (its device memory, new tokens,
    /// prompts); its memory also counts in `memory_budget`, so the
    /// smaller of the two caps applies.
    pub generate: GenerateLimits,
    /// The longest a request may take from when it was read (its own
    /// `timeout_ms` may ask for less): past it, it is answered
    /// [`ErrorCode::Timeout`] and its result dropped when it comes. `None`
    /// (the default): no limit but the requests' own deadlines. Model
    /// loads and unloads have none.
    pub request_timeout: Option<Duration>,
    /// A connection with nothing in flight that sent no frame for this
    /// long is closed (its resident tensors freed). `None` (the default):
    /// never.
    pub idle_timeout: Option<Duration>,
    /// Connections open at once; the one over the cap is answered
    /// [`ErrorCode::Busy`] in its handshake and closed.
    pub max_connections: usize,
    /// The share of the memory budget (0 to 1) that the tensors of one
    /// connection's requests not yet answered may hold before the server
    /// stops reading from it (default 0.5): one client pipelining large
    /// requests cannot take the whole budget.
    pub connection_share: f64,
    /// How often the server samples its figures for `history`, and how
    /// many samples it keeps.
    pub history: HistoryConfig,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        ServerConfig {
            listen: vec![Endpoint::new("tcp", "127.0.0.1", 5555)],
            limits: Limits::DEFAULT,
            memory_budget: default_memory_budget(),
            max_in_flight: 1024,
            workers: cores.max(2),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            budget_wait: Duration::from_secs(30),
            model_root: None,
            auth_token: None,
            transport: TransportOptions::default(),
            resident: ResidentLimits::default(),
            generate: GenerateLimits::default(),
            request_timeout: None,
            idle_timeout: None,
            max_connections: 4096,
            connection_share: 0.5,
            history: HistoryConfig::default(),
        }
    }
}

/// Half the host's memory, at least 1 GiB and at most 64 GiB.
fn default_memory_budget() -> u64 {
    let total = crate::stats::total_memory_bytes().unwrap_or(8 << 30);
    (total / 2).clamp(1 << 30, 64 << 30)
}

struct Shared {
    backend: Arc<dyn Backend>,
    config: ServerConfig,
    budget: MemoryBudget,
    workers: Arc<Semaphore>,
    started: Instant,
    stats: HostStats,
    models: Arc<ModelRegistry>,
    metrics: Arc<Metrics>,
    /// Server-resident tensors.
    store: Store,
    /// The next connection's number (owner of its resident tensors).
    next_connection: std::sync::atomic::AtomicU64,
    /// The connections open, against `config.max_connections`.
    connections: fair::Connections,
    /// Samples taken on a timer (`history`), and the host statistics that
    /// the sampler reads (its own, so that `stats` keeps its windows).
    history: History,
    history_stats: HostStats,
    /// The server's GPU as NVML knows it, where NVML is present.
    gpu: Option<NvmlDevice>,
}

/// A server with its listeners bound.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Box<dyn Listener>>,
}

/// A running server: its addresses and a way to stop it.
pub struct ServerHandle {
    endpoints: Vec<Endpoint>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The bound addresses, in the order of `ServerConfig::listen`.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Stops accepting, lets requests in flight finish (within the grace
    /// period) and waits for the server to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Server {
    /// Binds every listener of `config`.
    pub async fn bind(config: ServerConfig, backend: Arc<dyn Backend>) -> Result<Server> {
        if config.listen.is_empty() {
            return Err(Error::bad_argument("no address to listen on"));
        }
        if config.auth_token.as_deref().is_some_and(str::is_empty) {
            return Err(Error::bad_argument("the authentication token is empty"));
        }
        let root = match &config.model_root {
            Some(r) => r.clone(),
            None => std::env::current_dir().map_err(|e| {
                Error::internal(format!("no current directory for the model root: {e}"))
            })?,
        };
        let models = Arc::new(ModelRegistry::new(&root)?);
        let mut listeners = Vec::new();
        let metrics = Arc::new(Metrics::new(backend.ops().iter().map(|e| e.spec.name)));
        let counted = metrics.clone();
        let options = TransportOptions {
            refusals: Some(crate::transport::RefusalCounter(Arc::new(move |code| {
                counted.frame_refused(code)
            }))),
            limits: Some(config.limits),
            host_alloc: config
                .transport
                .host_alloc
                .clone()
                .or_else(|| backend.host_alloc().map(crate::buffer::HostAllocRef)),
            ..config.transport.clone()
        };
        for ep in &config.listen {
            let t = transport_for(&ep.scheme)?;
            let l = t
                .bind(ep, &options)
                .await
                .map_err(|e| Error::connection(format!("cannot listen on {ep}: {e}")))?;
            listeners.push(l);
        }
        let device = backend.info().device;
        let gpu = tokio::task::spawn_blocking(move || NvmlDevice::for_server_device(&device))
            .await
            .map_err(|e| Error::internal(format!("opening NVML failed: {e}")))?
            .inspect(|d| info!(gpu = d.name(), "GPU figures from NVML"))
            .inspect_err(|e| match e {
                crate::nvml::NvmlError::NotCuda(_) => {}
                e => info!("no GPU figures from NVML: {e}"),
            })
            .ok();
        Ok(Server {
            shared: Arc::new(Shared {
                history: History::new(config.history),
                history_stats: HostStats::new(),
                gpu,
                budget: MemoryBudget::new(config.memory_budget),
                workers: Arc::new(Semaphore::new(config.workers.max(1))),
                backend,
                started: Instant::now(),
                stats: HostStats::new(),
                models,
                metrics,
                store: Store::new(config.resident),
                next_connection: std::sync::atomic::AtomicU64::new(1),
                connections: fair::Connections::default(),
                config,
            }),
            listeners,
        })
    }

    /// The model registry: add loaders (built in or from plugins) before
    /// serving.
    pub fn models(&self) -> &Arc<ModelRegistry> {
        &self.shared.models
    }

    /// The bound addresses (with real ports when port 0 was asked for).
    pub fn local_endpoints(&self) -> Vec<Endpoint> {
        self.listeners.iter().map(|l| l.local_endpoint()).collect()
    }

    /// Serves until `shutdown` completes, then drains and returns.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = watch::channel(false);
        let run = tokio::spawn(self.run(rx));
        shutdown.await;
        let _ = tx.send(true);
        let _ = run.await;
    }

    /// Serves on the current runtime in the background.
    pub fn spawn(self) -> ServerHandle {
        let endpoints = self.local_endpoints();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(self.run(rx));
        ServerHandle {
            endpoints,
            stop,
            task,
        }
    }

    async fn run(self, stop: watch::Receiver<bool>) {
        let info = self.shared.backend.info();
        let sampler = tokio::spawn(sample_history(self.shared.clone(), stop.clone()));
        let mut accepts = JoinSet::new();
        for mut listener in self.listeners {
            let ep = listener.local_endpoint();
            info!(listen = %ep, device = %info.device, backend = %info.name, torch = %info.version, "serving");
            let shared = self.shared.clone();
            let mut stop = stop.clone();
            accepts.spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stopped(&mut stop) => break,
                        accepted = listener.accept() => match accepted {
                            Ok(conn) => {
                                debug!(peer = %conn.peer, "connection");
                                conns.spawn(serve_connection(shared.clone(), conn, stop.clone()));
                            }
                            Err(e) => {
                                warn!(listen = %ep, error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
                let grace = shared.config.shutdown_grace;
                if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
                    .await
                    .is_err()
                {
                    warn!(listen = %ep, "requests still running after the grace period; closing");
                    conns.abort_all();
                }
            });
        }
        while accepts.join_next().await.is_some() {}
        sampler.abort();
        info!("server stopped");
    }
}

/// Checks a client's token against the server's, in time that does not
/// depend on where they differ.
fn check_token(expected: Option<&str>, given: Option<&str>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let Some(given) = given else {
        return Err(Error::new(
            ErrorCode::Unauthenticated,
            "this server requires an authentication token; none was given",
        ));
    };
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    if diff != 0 {
        return Err(Error::new(
            ErrorCode::Unauthenticated,
            "wrong authentication token",
        ));
    }
    Ok(())
}

/// Resolves once the stop signal is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn error_frame(id: u64, e: &Error) -> Frame {
    protocol::encode(FrameKind::Response, id, &Response::Error(e.clone()), vec![])
        .expect("an error response always encodes")
}

async fn serve_connection(shared: Arc<Shared>, conn: Connection, mut stop: watch::Receiver<bool>) {
    let Connection {
        mut reader,
        writer,
        peer,
    } = conn;
    let _counted = shared.metrics.connection();
    let slot = shared.connections.enter(shared.config.max_connections);
    let tx = Replies::new(writer);

    // Handshake.
    let hello = tokio::time::timeout(
        shared.config.handshake_timeout,
        reader.read_frame(&Limits::HANDSHAKE, None),
    )
    .await;
    let hello = match hello {
        Err(_) => {
            debug!(%peer, "handshake timed out");
            tx.send(error_frame(
                0,
                &Error::protocol("no Hello within the handshake timeout"),
            ))
            .await;
            tx.close().await;
            return;
        }
        Ok(Ok(Some(inc))) if inc.frame.kind == FrameKind::Hello => {
            protocol::decode_header::<Hello>(&inc.frame)
        }
        Ok(Ok(Some(inc))) => Err(Error::protocol(format!(
            "expected a Hello frame first, got {:?}",
            inc.frame.kind
        ))),
        Ok(Ok(None)) => return,
        Ok(Err(ReadError::Io(e))) => {
            debug!(%peer, error = %e, "connection lost during handshake");
            return;
        }
        Ok(Err(ReadError::Frame(e))) => Err(e.to_error()),
        Ok(Err(ReadError::Refused { error, .. })) => Err(error),
    };
    let welcome = hello.and_then(|h| {
        if slot.over {
            return Err(fair::over_capacity(shared.config.max_connections));
        }
        check_token(shared.config.auth_token.as_deref(), h.token.as_deref())?;
        let (protocol, features) = protocol::negotiate(&h)?;
        debug!(%peer, agent = %h.agent, protocol, "handshake");
        let limits = shared.config.limits;
        Ok(Welcome {
            protocol,
            features,
            agent: format!("mymps/{}", crate::VERSION),
            device: shared.backend.info().device,
            max_header_len: limits.max_header_len,
            max_tensors: limits.max_tensors,
            max_payload: limits.max_payload.min(shared.budget.max_request()),
        })
    });
    let peer_info = match welcome {
        Ok(w) => {
            let v = Peer {
                id: shared
                    .next_connection
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                protocol: w.protocol,
                strided: w
                    .features
                    .iter()
                    .any(|f| f == protocol::features::STRIDED_TENSORS),
                resident: w
                    .features
                    .iter()
                    .any(|f| f == protocol::features::RESIDENT_TENSORS),
                streamed: w
                    .features
                    .iter()
                    .any(|f| f == protocol::features::STREAMED_REPLIES),
                replies: tx.clone(),
                graphs: Default::default(),
                cancels: Default::default(),
            };
            let frame =
                protocol::encode(FrameKind::Welcome, 0, &w, vec![]).expect("welcome encodes");
            if !tx.send(frame).await {
                return;
            }
            v
        }
        Err(e) => {
            shared.metrics.handshake_refused(e.code);
            warn!(%peer, error = %e, "handshake refused");
            tx.send(error_frame(0, &e)).await;
            tx.close().await;
            return;
        }
    };

    let peer_info = Arc::new(peer_info);
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));
    let share = fair::ShareGate::new(fair::ShareGate::cap_for(
        &shared.config,
        shared.budget.capacity(),
    ));
    let mut handlers = JoinSet::new();
    let mut lost = false;
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break,
            p = in_flight.clone().acquire_owned() => p.expect("never closed"),
        };
        let read = tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = fair::idle(shared.config.idle_timeout, &in_flight, shared.config.max_in_flight) => {
                debug!(%peer, "idle for the idle timeout; closing");
                break;
            }
            // Past its share of the budget, the connection's next frame
            // waits for its earlier requests' answers.
            r = async {
                share.room().await;
                reader.read_frame(&shared.config.limits, Some(&shared.budget)).await
            } => r,
        };
        while handlers.try_join_next().is_some() {}
        match read {
            Ok(None) => break,
            Ok(Some(inc)) => match inc.frame.kind {
                FrameKind::Request => {
                    let id = inc.frame.id;
                    let timer = shared.metrics.start(&inc.frame);
                    let request = protocol::decode_header::<Request>(&inc.frame);
                    let (request, deadline) =
                        fair::with_deadline(&shared.config, &inc.frame, request);
                    let label = match &request {
                        Ok(r) => shared.metrics.label(r),
                        Err(_) => metrics::Label::default(),
                    };
                    let tensors = inc.frame.tensors;
                    let charge = share.charge(fair::permit_bytes(inc.permit.as_ref()));
                    let mut held = Held {
                        permits: inc.permit.into_iter().collect(),
                        cancel: None,
                        deadline,
                        _share: charge,
                    };
                    // A small cheap op is answered here, without a task or
                    // a thread hand-off; the rest run concurrently.
                    let (request, tensors) = match request {
                        Ok(Request::Exec(req)) if exec_inline(&shared, &req, &tensors) => {
                            let reply = exec(&shared, id, req, tensors, &peer_info, None).await;
                            answer(&shared, &tx, id, reply, timer, label).await;
                            drop(held);
                            continue;
                        }
                        // Table updates that never wait (their tensors are
                        // dropped off the reactor), answered in the order
                        // they came: a `free` then a `put` over the
                        // connection's cap finds the room the free made.
                        Ok(
                            r @ (Request::Free { .. }
                            | Request::Share { .. }
                            | Request::Describe { .. }),
                        ) => {
                            let reply =
                                resident::handle(&shared, id, r, tensors, &peer_info, &mut held)
                                    .await;
                            answer(&shared, &tx, id, reply, timer, label).await;
                            drop(held);
                            continue;
                        }
                        other => (other, tensors),
                    };
                    let shared = shared.clone();
                    let tx = tx.clone();
                    let peer_info = peer_info.clone();
                    if peer_info.streamed {
                        held.cancel = peer_info.watch(id);
                    }
                    // Its own flag, which `held` may no longer carry when
                    // the work ends (a failed blocking task keeps it).
                    let watched = held.cancel.is_some();
                    // At its deadline, a watchdog answers it and stops it.
                    if held.deadline.is_some() {
                        held.cancel.get_or_insert_with(Default::default);
                    }
                    let streams = matches!(&request, Ok(r) if r.streams());
                    let reply_to = fair::Reply::race(
                        &shared,
                        &tx,
                        id,
                        timer,
                        label,
                        held.deadline,
                        streams,
                        held.cancel.clone(),
                    );
                    handlers.spawn(async move {
                        let reply = match request {
                            Ok(r) => handle(&shared, id, r, tensors, &peer_info, &mut held).await,
                            Err(e) => Err(e),
                        };
                        if watched {
                            peer_info.unwatch(id);
                        }
                        reply_to.answer(&shared, &tx, id, reply).await;
                        drop(held);
                        drop(permit);
                    });
                }
                FrameKind::Cancel => {
                    let found = peer_info.cancel(inc.frame.id);
                    debug!(%peer, id = inc.frame.id, found, "cancel");
                }
                kind => {
                    let e = Error::protocol(format!("unexpected {kind:?} frame from a client"));
                    tx.send(error_frame(inc.frame.id, &e)).await;
                }
            },
            Err(ReadError::Frame(
                e @ (FrameError::TooLarge { id, .. } | FrameError::Unskippable { id, .. }),
            )) => {
                let close = matches!(e, FrameError::Unskippable { .. });
                warn!(%peer, id, error = %e, close, "frame refused");
                shared.metrics.frame_refused(ErrorCode::PayloadTooLarge);
                tx.send(error_frame(id, &e.to_error())).await;
                if close {
                    break;
                }
            }
            Err(ReadError::Refused { id, error }) => {
                debug!(%peer, id, %error, "request refused by the transport");
                shared.metrics.frame_refused(error.code);
                tx.send(error_frame(id, &error)).await;
            }
            Err(ReadError::Frame(e)) => {
                warn!(%peer, error = %e, "unframeable input; closing the connection");
                tx.send(error_frame(0, &e.to_error())).await;
                break;
            }
            Err(ReadError::Io(e)) => {
                debug!(%peer, error = %e, "connection lost");
                lost = true;
                break;
            }
        }
    }
    if lost {
        // Nobody can receive the answers: requests still queued are
        // answered `Cancelled` (counted, not run) as they reach a worker;
        // work already on a worker thread runs to its end.
        tx.mark_closed();
    }
    // Let requests in flight finish; their replies go out before the close.
    while handlers.join_next().await.is_some() {}
    tx.close().await;
    // The connection's resident tensors go with it (freed off the reactor:
    // a device free or an unmap may take a while).
    let freed = shared.store.close(peer_info.id);
    if !freed.is_empty() {
        tokio::task::spawn_blocking(move || drop(freed));
    }
    debug!(%peer, "connection closed");
}

/// What a connection's requests need to know of it.
struct Peer {
    /// The connection's number: the owner of its resident tensors.
    id: u64,
    /// The protocol version agreed in the handshake.
    protocol: u32,
    /// Whether the client may send strided tensors.
    strided: bool,
    /// Whether the client negotiated server-resident tensors.
    resident: bool,
    /// Whether the client negotiated streamed replies (and cancellation).
    streamed: bool,
    /// The cancellation flags of this connection's requests in flight
    /// (those not answered inline), by id: a `Cancel` frame sets one.
    cancels: std::sync::Mutex<std::collections::HashMap<u64, Arc<std::sync::atomic::AtomicBool>>>,
    /// Graphs registered on this connection.
    graphs: std::sync::Mutex<resident::Graphs>,
    /// Its sending half: once a reply cannot be written, queued work of the
    /// connection is dropped instead of run.
    replies: Replies,
}

impl Peer {
    /// A cancellation flag for request `id`, set by a `Cancel` frame of
    /// that id until [`Peer::unwatch`]. `None` if the id is in flight
    /// already (a client's mistake; that request's own flag stays).
    fn watch(&self, id: u64) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        let mut cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        match cancels.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(v) => Some(v.insert(Arc::default()).clone()),
        }
    }

    /// Forgets request `id`'s cancellation flag (it is answered).
    fn unwatch(&self, id: u64) {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Cancels request `id`; whether it was in flight.
    fn cancel(&self, id: u64) -> bool {
        match self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            Some(flag) => {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// `Cancelled` once the connection cannot take replies any more.
    fn check_alive(&self) -> Result<()> {
        if self.replies.is_closed() {
            return Err(Error::new(
                ErrorCode::Cancelled,
                "the connection closed before the request ran",
            ));
        }
        Ok(())
    }

    /// Refuses resident-tensor requests from a client that did not
    /// negotiate them.
    fn check_resident(&self) -> Result<()> {
        if self.resident {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::Unsupported,
            format!(
                "server-resident tensors need the '{}' feature, which this connection did not negotiate",
                protocol::features::RESIDENT_TENSORS
            ),
        ))
    }

    /// Refuses strides from a client that did not negotiate them.
    fn check_strides(&self, metas: &[protocol::TensorMeta]) -> Result<()> {
        if self.strided {
            return Ok(());
        }
        match metas.iter().find(|m| m.strides.is_some()) {
            Some(m) => Err(Error::invalid_tensor(format!(
                "tensor '{}' has strides, but this connection did not negotiate the '{}' feature",
                crate::error::clip(&m.name, 64),
                protocol::features::STRIDED_TENSORS
            ))),
            None => Ok(()),
        }
    }
}

/// Permits (memory budget, worker) a request holds until it is answered,
/// and its cancellation flag. They travel into the blocking work and back,
/// so that a request whose connection was lost keeps them until that work
/// really ends.
#[derive(Default)]
struct Held {
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// Set when the client cancels the request, or its deadline passes
    /// (`None`: neither can happen).
    cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// When the request is answered `Timeout` if not answered before.
    deadline: Option<Instant>,
    /// Its charge on the connection's share of the memory budget.
    _share: Option<fair::ShareCharge>,
}

impl Held {
    /// The memory budget held, bytes (permits are KiB).
    fn bytes(&self) -> u64 {
        self.permits
            .iter()
            .map(|p| p.num_permits() as u64 * 1024)
            .sum()
    }

    /// Whether the client cancelled the request.
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// `Cancelled` if the client cancelled the request before it ran.
    fn check_cancelled(&self) -> Result<()> {
        if self.cancelled() {
            return Err(Error::new(
                ErrorCode::Cancelled,
                "cancelled by the client before it ran",
            ));
        }
        Ok(())
    }

    /// Takes `bytes` of the budget out of what is held (for a tensor that
    /// outlives the request: a resident one), and from `budget` what is
    /// missing; `None` if the budget has not that much free now.
    fn take(
        &mut self,
        bytes: u64,
        budget: &MemoryBudget,
    ) -> Option<Vec<tokio::sync::OwnedSemaphorePermit>> {
        let mut need = bytes.div_ceil(1024);
        let mut out = Vec::new();
        while need > 0 {
            let Some(p) = self.permits.last_mut() else {
                break;
            };
            let n = p.num_permits() as u64;
            if n <= need {
                out.push(self.permits.pop().expect("just seen"));
                need -= n;
            } else {
                out.push(p.split(need as usize).expect("fewer than held"));
                need = 0;
            }
        }
        if need > 0 {
            match budget.try_acquire(need * 1024) {
                Some(p) => out.push(p),
                None => {
                    self.permits.extend(out);
                    return None;
                }
            }
        }
        Some(out)
    }
}

/// The sending half of a connection, shared by the tasks that answer its
/// requests: each writes its reply itself, so that no hand-off to a writer
/// task lies on the way out.
#[derive(Clone)]
struct Replies {
    writer: Arc<tokio::sync::Mutex<Option<Box<dyn FrameWriter>>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Replies {
    fn new(writer: Box<dyn FrameWriter>) -> Replies {
        Replies {
            writer: Arc::new(tokio::sync::Mutex::new(Some(writer))),
            closed: Arc::default(),
        }
    }

    /// Marks the connection as unable to take replies (its peer is gone).
    fn mark_closed(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a write has failed or the connection was closed.
    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes one frame; `false` once the connection cannot be written to
    /// (later frames are dropped).
    async fn send(&self, frame: Frame) -> bool {
        let mut w = self.writer.lock().await;
        let Some(writer) = w.as_mut() else {
            return false;
        };
        match writer.write_frame(frame).await {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "write failed");
                *w = None;
                self.closed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                false
            }
        }
    }

    /// Flushes and closes the sending direction.
    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(mut writer) = self.writer.lock().await.take() {
            let _ = writer.shutdown().await;
        }
    }
}

/// Sends a request's reply (an error reply for an error) and counts it.
async fn answer(
    shared: &Shared,
    tx: &Replies,
    id: u64,
    reply: Result<Frame>,
    timer: metrics::RequestTimer,
    label: metrics::Label,
) {
    let error = reply.as_ref().err().map(|e| e.code);
    let frame = reply.unwrap_or_else(|e| error_frame(id, &e));
    shared.metrics.finish(timer, label, error, &frame);
    tx.send(frame).await;
}

/// Whether an exec request runs inline (see [`runs_inline`]), judged from
/// its tensor specs before they are checked against the buffers.
fn exec_inline(shared: &Shared, req: &ExecRequest, bufs: &[Bytes]) -> bool {
    let limit = shared.backend.inline_limit();
    if !req.refs.is_empty() || !req.keep.is_none() {
        return false;
    }
    if limit == 0 || bufs.iter().map(|b| b.len() as u64).sum::<u64>() > limit {
        return false;
    }
    match shared.backend.ops().lookup(&req.op) {
        Ok(entry) => runs_inline(
            limit,
            entry.spec.cost,
            req.inputs.iter().map(|t| t.shape.as_slice()),
        ),
        Err(_) => true, // Answered at once with an error.
    }
}

async fn handle(
    shared: &Arc<Shared>,
    id: u64,
    request: Request,
    tensors: Vec<Bytes>,
    peer: &Peer,
    held: &mut Held,
) -> Result<Frame> {
    let kind = request.kind_name();
    let response = match request {
        Request::Health => {
            let b = shared.backend.info();
            Response::Health(HealthInfo {
                status: "ok".into(),
                version: crate::VERSION.into(),
                protocol: peer.protocol,
                backend: b.name,
                device: b.device,
                torch_version: b.version,
                models_loaded: shared.models.len() as u64,
                ops: shared.backend.ops().len() as u64,
                uptime_s: shared.started.elapsed().as_secs_f64(),
                resident_tensors: shared.store.totals().0,
                resident_bytes: shared.store.totals().1,
            })
        }
        Request::Stats => {
            let s = shared.clone();
            let stats = tokio::task::spawn_blocking(move || {
                let mut stats = s
                    .stats
                    .sample(&s.backend.info().device, s.backend.accelerator_memory());
                stats.gpu = read_gpu(&s);
                stats
            })
            .await
            .map_err(|e| Error::internal(format!("stats task failed: {e}")))?;
            Response::Stats(stats)
        }
        Request::ListOps => Response::Ops {
            ops: shared.backend.ops().summaries(),
        },
        Request::DescribeOp { op } => Response::Op(shared.backend.ops().lookup(&op)?.spec.info()),
        Request::Exec(req) if !req.refs.is_empty() || !req.keep.is_none() => {
            return resident::exec(shared, id, req, tensors, peer, held).await;
        }
        Request::Infer(req) if !req.refs.is_empty() || !req.keep.is_none() => {
            return resident::infer(shared, id, req, tensors, peer, held).await;
        }
        Request::Exec(req) => return exec(shared, id, req, tensors, peer, Some(held)).await,
        Request::Infer(req) => return infer(shared, id, req, tensors, peer, held).await,
        Request::LoadModel(req) => {
            let s = shared.clone();
            let device = shared.backend.info().device;
            let name = req.name.clone();
            let info = blocking(&format!("loading model '{name}'"), move || {
                s.models.load(&req, &device)
            })
            .await?;
            tracing::info!(name = %info.name, model_type = %info.model_type, device = %info.device, "model loaded");
            Response::Model(info)
        }
        Request::ListModels => Response::Models {
            models: shared.models.list(),
        },
        Request::ModelInfo { name } => Response::Model(shared.models.info(&name)?),
        Request::UnloadModel { name } => {
            shared.models.unload(&name)?;
            let s = shared.clone();
            blocking("releasing memory", move || {
                s.backend.release_memory();
                Ok(())
            })
            .await?;
            tracing::info!(%name, "model unloaded");
            Response::Unloaded { name }
        }
        Request::Metrics => Response::Metrics(metrics_snapshot(shared).await?),
        Request::History { since } => Response::History(shared.history.snapshot(
            since,
            shared.started.elapsed().as_secs_f64(),
            &shared.metrics.totals(),
        )),
        Request::Generate(call) => return generate::generate(shared, id, call, peer, held).await,
        Request::Encode {
            name,
            text,
            add_special_tokens,
        } => {
            let s = shared.clone();
            let ids = blocking("encoding text", move || {
                s.models.encode(&name, &text, add_special_tokens)
            })
            .await?;
            Response::Tokens { ids }
        }
        Request::Decode {
            name,
            ids,
            skip_special_tokens,
        } => {
            let s = shared.clone();
            let text = blocking("decoding ids", move || {
                s.models.decode(&name, &ids, skip_special_tokens)
            })
            .await?;
            Response::Text { text }
        }
        r @ (Request::Put { .. }
        | Request::Fetch { .. }
        | Request::Free { .. }
        | Request::Describe { .. }
        | Request::Share { .. }
        | Request::RegisterGraph { .. }
        | Request::RunGraph(_)) => {
            return resident::handle(shared, id, r, tensors, peer, held).await;
        }
        Request::Unknown => {
            return Err(Error::new(
                ErrorCode::Unsupported,
                "this server does not know that request type (it may be older than the client)",
            ));
        }
    };
    debug!(id, kind, "answered");
    protocol::encode(FrameKind::Response, id, &response, vec![])
}

/// Reads the metrics with the gauges of the moment (accelerator memory is
/// asked of the backend on the blocking pool: drivers may block).
async fn metrics_snapshot(shared: &Arc<Shared>) -> Result<metrics::MetricsSnapshot> {
    let s = shared.clone();
    let (accelerator, gpu) = blocking("reading accelerator memory", move || {
        Ok((s.backend.accelerator_memory(), read_gpu(&s)))
    })
    .await?;
    let info = shared.backend.info();
    Ok(shared.metrics.snapshot(metrics::Gauges {
        version: crate::VERSION.into(),
        backend: info.name,
        device: info.device,
        uptime_s: shared.started.elapsed().as_secs_f64(),
        models_loaded: shared.models.len() as u64,
        memory_budget_bytes: shared.budget.capacity(),
        memory_budget_used_bytes: shared.budget.in_use(),
        resident_tensors: shared.store.totals().0,
        resident_bytes: shared.store.totals().1,
        accelerator_memory: accelerator.map(|m| (m.total, m.free)),
        gpu,
    }))
}

/// NVML's figures for the server's GPU, where present (blocking: calls
/// into the driver). A failed read is logged, and the figures are absent.
fn read_gpu(shared: &Shared) -> Option<GpuStats> {
    let gpu = shared.gpu.as_ref()?;
    gpu.sample()
        .inspect_err(|e| debug!("reading the GPU with NVML: {e}"))
        .ok()
}

/// Takes a sample for `history` every `ServerConfig::history` interval
/// until the server stops: the metrics' counters, the gauges, and what the
/// blocking pool reads (this process in `/proc`, accelerator memory, NVML).
async fn sample_history(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.history.config().interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // The first tick is now: sample an interval later.
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let s = shared.clone();
        let read = tokio::task::spawn_blocking(move || {
            (
                s.history_stats.host(),
                s.backend.accelerator_memory(),
                read_gpu(&s),
            )
        })
        .await;
        let Ok((host, accelerator, gpu)) = read else {
            warn!("reading the host for the history failed");
            continue;
        };
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        shared.history.record(Readings {
            uptime_s: shared.started.elapsed().as_secs_f64(),
            unix_ms,
            totals: shared.metrics.totals(),
            process_rss_bytes: host.process_rss_bytes,
            process_cpu_percent: host.process_cpu_percent,
            host_cpu_percent: host.cpu_percent,
            host_memory_used_bytes: host.memory_used_bytes,
            memory_budget_used_bytes: shared.budget.in_use(),
            resident: shared.store.totals(),
            accelerator_memory: accelerator.map(|m| (m.total, m.free)),
            gpu,
        });
    }
}

/// Runs blocking work on the blocking pool; a panic becomes an
/// [`ErrorCode::Internal`] error naming `what`.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .await
        .map_err(|e| Error::internal(format!("{what}: task failed: {e}")))?
        .map_err(|p| panicked(what, p))?
}

/// Runs a request's work `f` once a worker is free, with a panic made an
/// [`ErrorCode::Internal`] error naming `what`. On a multi-threaded
/// runtime `f` runs on this task's own thread ([`in_place_allowed`]):
/// a small op on a GPU then costs no thread hand-off at all. Elsewhere it
/// goes to the blocking pool, and the request's permits (`held`) go with
/// it and come back with its result, so that they stay held until the
/// work ends even if the request is dropped meanwhile (its connection
/// lost). The worker permit is released as soon as `f` returns.
async fn on_worker<T: Send + 'static>(
    shared: &Shared,
    peer: &Peer,
    held: &mut Held,
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let worker = shared
        .workers
        .clone()
        .acquire_owned()
        .await
        .expect("never closed");
    peer.check_alive()?;
    held.check_cancelled()?;
    fair::check_deadline(held.deadline)?;
    let run = move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        drop(worker);
        out
    };
    let out = if in_place_allowed() {
        // On this thread: the runtime's other tasks move to another one
        // (a hand-off that is not on this request's way), and the request
        // pays no wake-up of a pool thread and none of this one after it.
        // The task cannot be dropped while it blocks, so `held` stays with
        // the work as it must.
        tokio::task::block_in_place(run)
    } else {
        let permits = std::mem::take(held);
        let (out, permits) = tokio::task::spawn_blocking(move || (run(), permits))
            .await
            .map_err(|e| Error::internal(format!("{what}: task failed: {e}")))?;
        *held = permits;
        out
    };
    out.map_err(|p| panicked(what, p))?
}

/// Whether this task may block its thread through
/// [`tokio::task::block_in_place`]: on a multi-threaded runtime's worker
/// (not a current-thread runtime, where it would stop everything, nor
/// outside a runtime).
fn in_place_allowed() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs `f` here; a panic becomes an [`ErrorCode::Internal`] error naming
/// `what`.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panicked(what, p))?
}

/// A panic as a client sees it: its first line (a panic's text may carry a
/// library's backtrace); the whole text goes to the log.
fn panicked(what: &str, p: Box<dyn std::any::Any + Send>) -> Error {
    let msg = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    warn!(what, panic = msg, "a request panicked");
    Error::internal(format!("{what} panicked: {}", crate::error::brief(msg)))
}

/// Whether an exec may run on the I/O thread (see
/// [`Backend::inline_limit`]): an op of a [linear](ops::Cost::is_linear)
/// cost class whose tensor inputs, broadcast together at 8 bytes an
/// element, fit in `limit`.
fn runs_inline<'a>(
    limit: u64,
    cost: ops::Cost,
    shapes: impl IntoIterator<Item = &'a [u64]>,
) -> bool {
    if limit == 0 || !cost.is_linear() {
        return false;
    }
    broadcast_numel(shapes).is_some_and(|n| n.saturating_mul(8) <= limit)
}

/// The number of elements of `shapes` broadcast together; `None` if they
/// do not broadcast (the op reports that) or the count overflows.
fn broadcast_numel<'a>(shapes: impl IntoIterator<Item = &'a [u64]>) -> Option<u64> {
    let mut shape: Vec<u64> = Vec::new();
    for s in shapes {
        if s.len() > shape.len() {
            shape.splice(0..0, std::iter::repeat_n(1, s.len() - shape.len()));
        }
        let offset = shape.len() - s.len();
        for (i, &d) in s.iter().enumerate() {
            let b = &mut shape[offset + i];
            if *b == 1 {
                *b = d;
            } else if d != 1 && d != *b {
                return None;
            }
        }
    }
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// For an op of a [linear](ops::Cost::is_linear) cost class whose outputs
/// the backend could not estimate (an integer division, whose checks read
/// values): the bound its cost class promises for its tensor inputs
/// ([`ops::OpSpec::output_bound`]: their broadcast element count, at the
/// widest item size, per output).
fn broadcast_bytes(entry: &ops::OpEntry, args: &ops::Args<crate::Tensor>) -> Option<u64> {
    entry
        .spec
        .output_bound(args.all_tensors().map(|t| t.shape()))
}

async fn infer(
    shared: &Arc<Shared>,
    id: u64,
    req: InferRequest,
    bufs: Vec<Bytes>,
    peer: &Peer,
    held: &mut Held,
) -> Result<Frame> {
    let InferRequest { name, inputs, .. } = req;
    peer.check_strides(&inputs)?;
    let inputs = protocol::tensors_from_wire(inputs, bufs)?;
    check_dense_sizes(shared, inputs.iter().map(|(n, t)| (n.as_str(), t)))?;
    // Fail fast, before waiting for a worker, when the model is not loaded.
    shared.models.get(&name)?;
    let device = shared.backend.info().device;
    let started = Instant::now();
    let s = shared.clone();
    let what = format!("model '{name}'");
    let outputs = on_worker(shared, peer, held, &what, move || {
        s.models.infer(&name, inputs)
    })
    .await?;
    let elapsed_s = started.elapsed().as_secs_f64();
    debug!(id, %what, elapsed_s, "infer");
    let (outputs, tensors) = protocol::tensors_to_wire(outputs);
    protocol::encode(
        FrameKind::Response,
        id,
        &Response::Exec(ExecResponse {
            outputs,
            device,
            elapsed_s,
            kept: Vec::new(),
        }),
        tensors,
    )
}

/// Refuses input tensors whose dense form (a stride-0 view of a few bytes
/// may describe terabytes) is larger than a frame may carry or than the
/// memory budget can ever admit: kernels may make them dense.
fn check_dense_sizes<'a>(
    shared: &Shared,
    tensors: impl IntoIterator<Item = (&'a str, &'a crate::Tensor)>,
) -> Result<()> {
    let cap = shared
        .config
        .limits
        .max_payload
        .min(shared.budget.max_request());
    for (name, t) in tensors {
        if t.is_contiguous() {
            continue;
        }
        let dense = t.dense_len().map_or(u64::MAX, |n| n as u64);
        if dense > cap {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "tensor '{}' is a strided view of {dense} bytes ({:?} {}), over the {cap} bytes a request may take",
                    crate::error::clip(name, 64),
                    t.shape(),
                    t.dtype()
                ),
            ));
        }
    }
    Ok(())
}

/// Takes the memory budget for an op's outputs (as the backend estimates
/// them before running it) into `held`; refuses an op whose outputs could
/// never fit, and answers `Busy` when other requests hold the budget for
/// longer than [`ServerConfig::budget_wait`].
async fn reserve_outputs(
    shared: &Shared,
    peer: &Peer,
    op: &str,
    entry: &'static ops::OpEntry,
    args: &ops::Args<crate::Tensor>,
    held: &mut Held,
) -> Result<()> {
    let estimate = outputs_estimate(op, broadcast_bytes(entry, args), || {
        shared.backend.output_bytes(entry, args)
    })?;
    reserve_bytes(shared, peer, op, estimate, held).await
}

/// An op's outputs, bytes: its linear `bound` when that is at most
/// [`SMALL_OUTPUTS`], else the backend's estimate (`backend`, guarded),
/// else the bound.
pub(super) fn outputs_estimate(
    op: &str,
    bound: Option<u64>,
    backend: impl FnOnce() -> Option<u64>,
) -> Result<Option<u64>> {
    match bound {
        Some(b) if b <= SMALL_OUTPUTS => Ok(bound),
        _ => Ok(guarded(&format!("estimating op '{op}'"), || Ok(backend()))?.or(bound)),
    }
}

/// Outputs that a linear op's bound ([`ops::OpSpec::output_bound`]) puts
/// at no more than this many bytes are taken from the budget at that bound
/// (at most a few times their real size), without asking the backend: its
/// estimate (a kernel on meta tensors) would cost a small op more than the
/// op.
pub(super) const SMALL_OUTPUTS: u64 = 1 << 20;

/// Takes `estimate` bytes (an op's outputs) from the memory budget into
/// `held`, as [`reserve_outputs`] does.
async fn reserve_bytes(
    shared: &Shared,
    peer: &Peer,
    op: &str,
    estimate: Option<u64>,
    held: &mut Held,
) -> Result<()> {
    peer.check_alive()?;
    let Some(bytes) = estimate.filter(|&b| b > 0) else {
        return Ok(());
    };
    reserve(shared, bytes, held, &format!("the outputs of op '{op}'")).await
}

/// Takes `bytes` of the memory budget for a request's work (`what`, for
/// messages) and keeps it in `held`: `PayloadTooLarge` if it could never
/// fit beside the request's inputs, `Busy` if other requests hold it for
/// longer than `budget_wait`.
async fn reserve(shared: &Shared, bytes: u64, held: &mut Held, what: &str) -> Result<()> {
    let cap = shared.budget.max_request();
    let inputs = held.bytes();
    if bytes.saturating_add(inputs) > cap {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "{what} would take {bytes} bytes, which with the request's {inputs} bytes of inputs is over the server's memory budget of {cap} bytes"
            ),
        ));
    }
    let permit = match shared.budget.try_acquire(bytes) {
        Some(p) => p,
        None => tokio::time::timeout(shared.config.budget_wait, shared.budget.acquire(bytes))
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::Busy,
                    format!(
                        "{what} needs {bytes} bytes of the memory budget, held by other requests for {:.0} s; try again later",
                        shared.config.budget_wait.as_secs_f64()
                    ),
                )
            })?,
    };
    held.permits.push(permit);
    Ok(())
}

/// Runs an op: inline on this task when `held` is `None` (small cheap
/// ops, see [`exec_inline`]), else on a worker, with the budget for its
/// outputs taken into `held` first.
async fn exec(
    shared: &Arc<Shared>,
    id: u64,
    req: ExecRequest,
    bufs: Vec<Bytes>,
    peer: &Peer,
    held: Option<&mut Held>,
) -> Result<Frame> {
    let ExecRequest {
        op, inputs, kwargs, ..
    } = req;
    peer.check_strides(&inputs)?;
    let inputs = protocol::tensors_from_wire(inputs, bufs)?;
    let entry = shared.backend.ops().lookup(&op)?;
    check_dense_sizes(shared, inputs.iter().map(|(n, t)| (n.as_str(), t)))?;
    let args = ops::bind(&entry.spec, inputs, kwargs)?;
    let started = Instant::now();
    let out = match held {
        None => guarded(&format!("op '{op}'"), || shared.backend.exec(entry, args))?,
        Some(held) => {
            reserve_outputs(shared, peer, &op, entry, &args, held).await?;
            let backend = shared.backend.clone();
            on_worker(shared, peer, held, &format!("op '{op}'"), move || {
                backend.exec(entry, args)
            })
            .await?
        }
    };
    let elapsed_s = started.elapsed().as_secs_f64();
    debug!(id, op = %op, elapsed_s, device = %out.device, "exec");
    let (outputs, tensors) = protocol::tensors_to_wire(out.outputs);
    protocol::encode(
        FrameKind::Response,
        id,
        &Response::Exec(ExecResponse {
            outputs,
            device: out.device,
            elapsed_s,
            kept: Vec::new(),
        }),
        tensors,
    )
}

#[cfg(test)]
mod tests {
    use super::{broadcast_bytes, runs_inline};
    use crate::ops::{self, Cost, OpEntry, OpSpec, Outputs, Param};

    #[test]
    fn only_small_cheap_ops_run_inline() {
        let limit = 64 * 1024;
        let yes = |c: Cost, shapes: &[&[u64]]| runs_inline(limit, c, shapes.iter().copied());
        assert!(yes(Cost::Elementwise, &[&[4, 4], &[4, 4]]));
        assert!(yes(Cost::Reduction, &[&[8192]]));
        assert!(!yes(Cost::Reduction, &[&[8193]]));
        // Broadcasting two small inputs into a large output.
        assert!(!yes(Cost::Elementwise, &[&[1, 4096], &[4096, 1]]));
        assert!(yes(Cost::Elementwise, &[&[1, 64], &[64, 1]]));
        assert!(yes(Cost::Elementwise, &[&[3, 1, 5], &[7, 1]]));
        // Not broadcastable: left to the pool, which reports the error.
        assert!(!yes(Cost::Elementwise, &[&[3], &[4]]));
        // Ops with superlinear or unbounded work never run inline, however
        // small their inputs (mymps-ops tests which ops say so: sort, topk,
        // median, diff, ...).
        assert!(!yes(Cost::Heavy, &[&[4, 4]]));
        assert!(!yes(Cost::Heavy, &[]));
        assert!(!runs_inline(0, Cost::Elementwise, [[4u64, 4].as_slice()]));
        assert!(yes(Cost::Elementwise, &[]));
    }

    #[test]
    fn unestimated_outputs_are_bounded_by_the_cost_class() {
        static DIV: OpSpec = OpSpec::new(
            "div",
            "arithmetic",
            "input / other",
            &[Param::tensor("input"), Param::tensor("other")],
            Outputs::One,
        )
        .with_cost(Cost::Elementwise);
        static DIFF: OpSpec = OpSpec::new(
            "diff",
            "reduction",
            "n-th difference",
            &[Param::tensor("input"), Param::tensor("other")],
            Outputs::One,
        );
        static E_DIV: OpEntry = OpEntry::new(DIV, &());
        static E_DIFF: OpEntry = OpEntry::new(DIFF, &());
        let t = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            crate::Tensor::new(crate::DType::Int8, shape, vec![0u8; n]).unwrap()
        };
        let args = |spec: &'static OpSpec, a: &[usize], b: &[usize]| {
            ops::bind(
                spec,
                vec![("0".to_owned(), t(a)), ("1".to_owned(), t(b))],
                Default::default(),
            )
            .unwrap()
        };
        // [1, 300] by [200, 1]: 60,000 elements of up to 16 bytes.
        let a = args(&DIV, &[1, 300], &[200, 1]);
        assert_eq!(broadcast_bytes(&E_DIV, &a), Some(60_000 * 16));
        // Not broadcastable (the op will fail): the larger input.
        let a = args(&DIV, &[3], &[4]);
        assert_eq!(broadcast_bytes(&E_DIV, &a), Some(4 * 16));
        // Broadcast past what any budget holds.
        let a = args(&DIV, &[1 << 12, 1], &[1, 1 << 12]);
        assert_eq!(broadcast_bytes(&E_DIV, &a), Some((1 << 24) * 16));
        // A heavy op promises nothing: no bound, whatever its category.
        let a = args(&DIFF, &[3], &[3]);
        assert_eq!(broadcast_bytes(&E_DIFF, &a), None);
    }
}
