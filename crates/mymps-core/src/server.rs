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
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::error::{Error, ErrorCode, Result};
use crate::model::ModelRegistry;
use crate::ops;
use crate::protocol::{
    self, ExecRequest, ExecResponse, Frame, FrameError, FrameKind, HealthInfo, Hello, InferRequest,
    Limits, Request, Response, Welcome,
};
use crate::stats::HostStats;
use crate::transport::{
    Connection, Endpoint, Listener, MemoryBudget, ReadError, TransportOptions, transport_for,
};

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
    /// The folder model files must lie under (`None`: the current
    /// directory).
    pub model_root: Option<std::path::PathBuf>,
    /// The shared token clients must present in their Hello (`None`: no
    /// authentication). Checked in the handshake, before any tensor is read.
    pub auth_token: Option<String>,
    /// Transport settings (TLS material) for every listener.
    pub transport: TransportOptions,
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
            model_root: None,
            auth_token: None,
            transport: TransportOptions::default(),
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
    workers: Semaphore,
    started: Instant,
    stats: HostStats,
    models: Arc<ModelRegistry>,
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
        let options = TransportOptions {
            limits: Some(config.limits),
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
        Ok(Server {
            shared: Arc::new(Shared {
                budget: MemoryBudget::new(config.memory_budget),
                workers: Semaphore::new(config.workers.max(1)),
                backend,
                config,
                started: Instant::now(),
                stats: HostStats::new(),
                models,
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
        mut writer,
        peer,
    } = conn;
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = writer.write_frame(frame).await {
                debug!(error = %e, "write failed");
                return;
            }
        }
        let _ = writer.shutdown().await;
    });

    // Handshake.
    let hello = tokio::time::timeout(
        shared.config.handshake_timeout,
        reader.read_frame(&Limits::HANDSHAKE, None),
    )
    .await;
    let hello = match hello {
        Err(_) => {
            debug!(%peer, "handshake timed out");
            let _ = tx
                .send(error_frame(
                    0,
                    &Error::protocol("no Hello within the handshake timeout"),
                ))
                .await;
            drop(tx);
            let _ = writer_task.await;
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
    };
    let welcome = hello.and_then(|h| {
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
            max_payload: limits.max_payload.min(shared.budget.capacity()),
        })
    });
    let protocol_version = match welcome {
        Ok(w) => {
            let v = w.protocol;
            let frame =
                protocol::encode(FrameKind::Welcome, 0, &w, vec![]).expect("welcome encodes");
            if tx.send(frame).await.is_err() {
                return;
            }
            v
        }
        Err(e) => {
            warn!(%peer, error = %e, "handshake refused");
            let _ = tx.send(error_frame(0, &e)).await;
            drop(tx);
            let _ = writer_task.await;
            return;
        }
    };

    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));
    let mut handlers = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break,
            p = in_flight.clone().acquire_owned() => p.expect("never closed"),
        };
        let read = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = reader.read_frame(&shared.config.limits, Some(&shared.budget)) => r,
        };
        while handlers.try_join_next().is_some() {}
        match read {
            Ok(None) => break,
            Ok(Some(inc)) => match inc.frame.kind {
                FrameKind::Request => {
                    let shared = shared.clone();
                    let tx = tx.clone();
                    handlers.spawn(async move {
                        let id = inc.frame.id;
                        let reply = handle(&shared, inc.frame, protocol_version).await;
                        let frame = match reply {
                            Ok(f) => f,
                            Err(e) => error_frame(id, &e),
                        };
                        let _ = tx.send(frame).await;
                        drop(inc.permit);
                        drop(permit);
                    });
                }
                FrameKind::Cancel => {
                    debug!(%peer, id = inc.frame.id, "cancel is not supported by protocol 1; ignored")
                }
                kind => {
                    let e = Error::protocol(format!("unexpected {kind:?} frame from a client"));
                    let _ = tx.send(error_frame(inc.frame.id, &e)).await;
                }
            },
            Err(ReadError::Frame(e @ FrameError::TooLarge { .. })) => {
                let FrameError::TooLarge { id, .. } = e else {
                    unreachable!()
                };
                warn!(%peer, id, error = %e, "frame refused");
                let _ = tx.send(error_frame(id, &e.to_error())).await;
            }
            Err(ReadError::Frame(e)) => {
                warn!(%peer, error = %e, "unframeable input; closing the connection");
                let _ = tx.send(error_frame(0, &e.to_error())).await;
                break;
            }
            Err(ReadError::Io(e)) => {
                debug!(%peer, error = %e, "connection lost");
                break;
            }
        }
    }
    // Let requests in flight finish; their replies go out before the close.
    while handlers.join_next().await.is_some() {}
    drop(tx);
    let _ = writer_task.await;
    debug!(%peer, "connection closed");
}

async fn handle(shared: &Arc<Shared>, frame: Frame, protocol_version: u32) -> Result<Frame> {
    let id = frame.id;
    let request: Request = protocol::decode_header(&frame)?;
    let kind = request.kind_name();
    let response = match request {
        Request::Health => {
            let b = shared.backend.info();
            Response::Health(HealthInfo {
                status: "ok".into(),
                version: crate::VERSION.into(),
                protocol: protocol_version,
                backend: b.name,
                device: b.device,
                torch_version: b.version,
                models_loaded: shared.models.len() as u64,
                ops: shared.backend.ops().len() as u64,
                uptime_s: shared.started.elapsed().as_secs_f64(),
            })
        }
        Request::Stats => {
            let s = shared.clone();
            let stats = tokio::task::spawn_blocking(move || {
                s.stats
                    .sample(&s.backend.info().device, s.backend.accelerator_memory())
            })
            .await
            .map_err(|e| Error::internal(format!("stats task failed: {e}")))?;
            Response::Stats(stats)
        }
        Request::ListOps => Response::Ops {
            ops: shared.backend.ops().summaries(),
        },
        Request::DescribeOp { op } => Response::Op(shared.backend.ops().lookup(&op)?.spec.info()),
        Request::Exec(req) => return exec(shared, id, req, frame.tensors).await,
        Request::Infer(req) => return infer(shared, id, req, frame.tensors).await,
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

/// Runs blocking work on the blocking pool; a panic becomes an
/// [`ErrorCode::Internal`] error naming `what`.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .await
        .map_err(|e| Error::internal(format!("{what}: task failed: {e}")))?
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Error::internal(format!("{what} panicked: {msg}"))
        })?
}

async fn infer(
    shared: &Arc<Shared>,
    id: u64,
    req: InferRequest,
    bufs: Vec<Bytes>,
) -> Result<Frame> {
    let InferRequest { name, inputs } = req;
    let inputs = protocol::tensors_from_wire(inputs, bufs)?;
    // Fail fast, before waiting for a worker, when the model is not loaded.
    shared.models.get(&name)?;
    let device = shared.backend.info().device;
    let _worker = shared.workers.acquire().await.expect("never closed");
    let started = Instant::now();
    let s = shared.clone();
    let what = format!("model '{name}'");
    let outputs = blocking(&what, move || s.models.infer(&name, inputs)).await?;
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
        }),
        tensors,
    )
}

async fn exec(shared: &Arc<Shared>, id: u64, req: ExecRequest, bufs: Vec<Bytes>) -> Result<Frame> {
    let ExecRequest { op, inputs, kwargs } = req;
    let inputs = protocol::tensors_from_wire(inputs, bufs)?;
    let entry = shared.backend.ops().lookup(&op)?;
    let args = ops::bind(&entry.spec, inputs, kwargs)?;
    let _worker = shared.workers.acquire().await.expect("never closed");
    let backend = shared.backend.clone();
    let started = Instant::now();
    let out = blocking(&format!("op '{op}'"), move || backend.exec(entry, args)).await?;
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
        }),
        tensors,
    )
}
