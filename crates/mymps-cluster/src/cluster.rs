//! The async cluster client.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mymps_core::client::{Caller, Client, ClientOptions, ReplyStream, Service};
use mymps_core::model::{LoadRequest, ModelInfo};
use mymps_core::protocol::{Request, Response, StatsInfo};
use mymps_core::transport::Endpoint;
use mymps_core::{Error, ErrorCode, Result};
use serde::Serialize;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;

mod resident;

/// The first wait before reconnecting to a host that is down; it doubles
/// after each failed try, up to the health interval.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Where [`Cluster::load_model`] loads a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Every host: those up now, and the others when they come up.
    All,
    /// These hosts, by name or address.
    Hosts(Vec<String>),
}

/// Whether a host serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Not connected yet: the first connection is being made.
    Connecting,
    /// Connected, and its last health check passed.
    Up,
    /// Unreachable, or its connection failed; it is being reconnected.
    Down,
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostState::Connecting => "connecting",
            HostState::Up => "up",
            HostState::Down => "down",
        })
    }
}

/// One host's state, as [`Cluster::status`] reports it.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// The host's name (its address unless the configuration names it).
    pub name: String,
    /// The host's address.
    pub addr: String,
    /// Up, down or connecting.
    pub state: HostState,
    /// Seconds in this state.
    pub state_for_s: f64,
    /// Requests of this client running on the host now.
    pub in_flight: usize,
    /// Round-trip time of the last health check, milliseconds.
    pub latency_ms: Option<f64>,
    /// The device the host computes on (from the handshake).
    pub device: Option<String>,
    /// The server's software and version (from the handshake).
    pub server_version: Option<String>,
    /// The models loaded on the host, as far as this client knows.
    pub models: Vec<String>,
    /// Requests the host answered for this client.
    pub served: u64,
    /// Requests that failed on the host because of it (connection lost,
    /// model gone) and were tried elsewhere.
    pub failovers: u64,
    /// Times the host was connected (reconnections included).
    pub connections: u64,
    /// Why the host is down (the last error), when it is.
    pub error: Option<String>,
}

/// One host's models, as [`Cluster::list_models`] reports them.
#[derive(Debug, Clone, Serialize)]
pub struct HostModels {
    /// The host's name.
    pub host: String,
    /// Its models, sorted by name.
    pub models: Vec<ModelInfo>,
}

/// One host's statistics, as [`Cluster::stats`] reports them.
#[derive(Debug, Clone)]
pub struct HostStats {
    /// The host's name.
    pub host: String,
    /// Its statistics, or why they could not be had.
    pub stats: Result<StatsInfo>,
}

struct Host {
    label: String,
    endpoint: Endpoint,
    options: ClientOptions,
    in_flight: AtomicUsize,
    /// Wakes the host's health task (after a request found it down).
    wake: Notify,
    slot: Mutex<Slot>,
}

struct Slot {
    /// The connection and its generation (counts connections).
    conn: Option<(Client, u64)>,
    generation: u64,
    state: HostState,
    since: Instant,
    error: Option<Error>,
    latency: Option<Duration>,
    device: Option<String>,
    agent: Option<String>,
    models: BTreeSet<String>,
    /// Models being loaded again after a reconnection.
    restoring: BTreeSet<String>,
    served: u64,
    failovers: u64,
}

impl Slot {
    /// Whether connection `generation` is the current one.
    fn is(&self, generation: u64) -> bool {
        self.conn.as_ref().map(|c| c.1) == Some(generation)
    }
}

impl Host {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection, when up.
    fn conn(&self) -> Option<(Client, u64)> {
        let s = self.slot();
        match (&s.conn, s.state) {
            (Some(c), HostState::Up) => Some(c.clone()),
            _ => None,
        }
    }
}

/// Where a model is placed, for restoring it on hosts that come back.
struct Placed {
    request: LoadRequest,
    /// Host indices; `None` = every host.
    hosts: Option<BTreeSet<usize>>,
}

impl Placed {
    fn covers(&self, i: usize) -> bool {
        self.hosts.as_ref().is_none_or(|h| h.contains(&i))
    }
}

struct Shared {
    hosts: Vec<Host>,
    config: ClusterConfig,
    /// Bumped whenever a host changes state or models.
    changed: watch::Sender<u64>,
    /// Round-robin start among equally busy hosts.
    next: AtomicUsize,
    placements: Mutex<BTreeMap<String, Placed>>,
    /// Set by [`Cluster::close`].
    closed: AtomicBool,
    /// Server-resident tensors: where each handle is, shared names,
    /// registered graphs.
    resident: Mutex<resident::Table>,
}

struct Owner {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for h in &self.shared.hosts {
            if let Some((c, _)) = h.slot().conn.take() {
                c.close();
            }
        }
    }
}

/// A client of several mymps servers. Clones share the connections.
///
/// It is a [`Service`], so every call of [`Caller`] works on it as on one
/// server's [`Client`], routed by the request's kind:
/// - [`call`](Caller::call) / [`exec`](Caller::exec), and `list_ops`,
///   `describe_op`, `health`, `stats`, `metrics`, go to the least busy
///   host that is up (fewest requests of this client in flight there; ties
///   take turns).
/// - [`infer`](Caller::infer) and `model_info` go to the least busy host
///   that has the model.
/// - `load_model`, `unload_model` and `list_models` go to every host that is
///   up. The cluster's own methods of those names answer per host:
///   [`load_model`](Cluster::load_model) loads a model on chosen hosts or
///   on all and returns each host's answer,
///   [`unload_model`](Cluster::unload_model) the hosts it was unloaded
///   from, [`list_models`](Cluster::list_models) each host's models, and
///   [`stats`](Cluster::stats) each host's statistics. (They take
///   precedence over [`Caller`]'s; through the trait, `load_model` loads on
///   every host and returns the first host's answer, `unload_model` returns
///   nothing, `list_models` the models of all hosts by name, `stats` one
///   host's.)
/// - A background task per host checks its health every
///   [`health_interval`](ClusterConfig::health_interval), marks it down when
///   a check fails and up again when it answers, reconnecting with backoff.
/// - A request whose host fails (its connection is lost, or it no longer has
///   the model) is tried again on another host; a request whose own
///   arguments are wrong fails at once with the server's error. Each
///   request resolves exactly once; it fails only when no host can serve it
///   within [`timeout`](ClusterConfig::timeout).
///
/// An op or forward pass that was running on a host when it failed may have
/// run there too; only one answer is ever returned.
#[derive(Clone)]
pub struct Cluster {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field(
                "hosts",
                &self
                    .shared()
                    .hosts
                    .iter()
                    .map(|h| h.label.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What [`Shared::pick`] found.
enum Pick {
    Host(usize, Client, u64),
    /// No host to try now, but one may come up (or get the model).
    Wait,
    /// Every host that could serve was tried and is up.
    Exhausted,
    /// No host has the model.
    Nowhere,
}

/// Counts a request in flight on a host while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> InFlight<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `f`, given up after `t`.
async fn timed<T>(t: Duration, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(t, f).await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::Timeout,
            format!("{what}: no answer within {}", secs(t)),
        ))
    })
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Shared {
    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Marks host `i` down if connection `generation` is still its current
    /// one, closing it (requests still waiting on it fail over).
    fn mark_down(&self, i: usize, generation: u64, error: Error) {
        let h = &self.hosts[i];
        let conn = {
            let mut s = h.slot();
            if !s.is(generation) {
                return;
            }
            s.state = HostState::Down;
            s.since = Instant::now();
            s.restoring.clear();
            tracing::warn!(host = %h.label, error = %error, "host down");
            s.error = Some(error);
            s.conn.take()
        };
        if let Some((c, _)) = conn {
            c.close();
        }
        h.wake.notify_one();
        self.notify();
    }

    /// The host to try next for a request (of `model`, for infer), not one
    /// of the connections in `tried`.
    fn pick(&self, model: Option<&str>, tried: &HashSet<(usize, u64)>) -> Pick {
        let n = self.hosts.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let placements = model.map(|_| self.placements.lock().unwrap_or_else(|p| p.into_inner()));
        let placed = |i: usize| match (model, &placements) {
            (Some(m), Some(p)) => p.get(m).is_some_and(|p| p.covers(i)),
            _ => false,
        };
        let mut best: Option<(usize, usize, Client, u64)> = None;
        let (mut wait, mut exhausted) = (false, false);
        for k in 0..n {
            let i = (start + k) % n;
            let h = &self.hosts[i];
            let s = h.slot();
            let has = model.is_none_or(|m| s.models.contains(m));
            match (&s.conn, s.state) {
                (Some((c, generation)), HostState::Up) if has => {
                    if tried.contains(&(i, *generation)) {
                        exhausted = true;
                        continue;
                    }
                    let busy = h.in_flight.load(Ordering::Relaxed);
                    if best.as_ref().is_none_or(|b| busy < b.1) {
                        best = Some((i, busy, c.clone(), *generation));
                    }
                }
                (_, HostState::Up) => {
                    // Up without the model: it may be loading it again.
                    if model.is_some_and(|m| s.restoring.contains(m)) {
                        wait = true;
                    }
                }
                _ => {
                    // Down: it may come back (with the model, if placed
                    // there and restored).
                    if has || (self.config.restore_models && model.is_some_and(|_| placed(i))) {
                        wait = true;
                    }
                }
            }
        }
        match best {
            Some((i, _, c, g)) => Pick::Host(i, c, g),
            None if wait => Pick::Wait,
            None if exhausted => Pick::Exhausted,
            None if model.is_some() => Pick::Nowhere,
            // No host is up.
            None => Pick::Wait,
        }
    }

    /// One line per host on why it could not serve, for errors.
    fn host_report(&self, failures: &[(usize, Error)]) -> String {
        let mut parts = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let tried: Vec<String> = failures
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, e)| e.to_string())
                .collect();
            let s = h.slot();
            let state = match (&s.error, s.state) {
                (Some(e), HostState::Down) => {
                    format!("down for {} ({e})", secs(s.since.elapsed()))
                }
                (_, st) => st.to_string(),
            };
            if tried.is_empty() {
                parts.push(format!("{}: {state}", h.label));
            } else {
                parts.push(format!("{}: {}; now {state}", h.label, tried.join("; ")));
            }
        }
        parts.join(" | ")
    }

    /// Runs `f` on a suitable host, failing over as the type docs say;
    /// `f` is given the host's index and connection generation, and the
    /// connection.
    async fn route<T, F, Fut>(&self, what: &str, model: Option<&str>, f: F) -> Result<T>
    where
        F: Fn(usize, u64, Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let mut tried: HashSet<(usize, u64)> = HashSet::new();
        let mut failures: Vec<(usize, Error)> = Vec::new();
        let mut refreshed = false;
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::connection(format!(
                    "{what}: the cluster client is closed"
                )));
            }
            let (i, client, generation) = match self.pick(model, &tried) {
                Pick::Host(i, c, g) => (i, c, g),
                Pick::Nowhere if !refreshed => {
                    // Perhaps loaded by another client: ask the hosts.
                    refreshed = true;
                    self.refresh_models().await;
                    continue;
                }
                Pick::Nowhere => {
                    let m = model.unwrap_or_default();
                    return Err(Error::new(
                        ErrorCode::ModelNotFound,
                        format!(
                            "model '{m}' is not loaded on any host of the cluster ({})",
                            self.host_report(&failures)
                        ),
                    ));
                }
                Pick::Exhausted => {
                    return Err(self.give_up(what, &failures, started, false));
                }
                Pick::Wait => {
                    tokio::select! {
                        r = changes.changed() => {
                            if r.is_err() {
                                return Err(Error::connection("the cluster client was dropped"));
                            }
                            continue;
                        }
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(self.give_up(what, &failures, started, true));
                        }
                    }
                }
            };
            tried.insert((i, generation));
            let h = &self.hosts[i];
            let attempt = {
                let _busy = InFlight::new(&h.in_flight);
                let call = f(i, generation, client.clone());
                let limit = match self.config.attempt_timeout {
                    Some(t) => deadline.min(tokio::time::Instant::now() + t),
                    None => deadline,
                };
                tokio::time::timeout_at(limit, call).await
            };
            let e = match attempt {
                Ok(Ok(v)) => {
                    h.slot().served += 1;
                    return Ok(v);
                }
                Ok(Err(e)) => e,
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    failures.push((
                        i,
                        Error::new(ErrorCode::Timeout, "no reply before the deadline"),
                    ));
                    return Err(Error::new(
                        ErrorCode::Timeout,
                        format!(
                            "{what}: no reply within {:?} ({})",
                            self.config.timeout,
                            self.host_report(&failures)
                        ),
                    ));
                }
                Err(_) => Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "no reply within the attempt timeout {:?}",
                        self.config.attempt_timeout.unwrap_or_default()
                    ),
                ),
            };
            let failover = match e.code {
                // The host failed, not the request.
                ErrorCode::Connection => {
                    self.mark_down(i, generation, e.clone());
                    true
                }
                ErrorCode::Timeout | ErrorCode::Busy => true,
                ErrorCode::ModelNotFound if model.is_some() => {
                    let m = model.unwrap_or_default();
                    let mut s = h.slot();
                    s.models.remove(m);
                    drop(s);
                    self.notify();
                    true
                }
                _ => false,
            };
            if !failover {
                if client.is_closed() {
                    self.mark_down(i, generation, e.clone());
                }
                return Err(e);
            }
            tracing::info!(host = %h.label, error = %e, "{what} failed over");
            h.slot().failovers += 1;
            failures.push((i, e));
        }
    }

    fn give_up(
        &self,
        what: &str,
        failures: &[(usize, Error)],
        started: Instant,
        waited: bool,
    ) -> Error {
        let code = match failures.last() {
            Some((_, e)) if failures.iter().all(|(_, f)| f.code == e.code) => e.code,
            _ => ErrorCode::Connection,
        };
        let why = if waited {
            format!("no host could serve it within {}", secs(started.elapsed()))
        } else {
            "every host failed".to_owned()
        };
        Error::new(
            code,
            format!("{what}: {why} ({})", self.host_report(failures)),
        )
    }

    /// Runs `f` on the connection of every host that is up and `chosen`,
    /// concurrently (a task each: a slow host holds up no other); returns
    /// each host's index, connection generation and result, in host order.
    async fn fan_out<T, Fut>(
        &self,
        chosen: impl Fn(usize) -> bool,
        f: impl Fn(Client) -> Fut,
    ) -> Vec<(usize, u64, Result<T>)>
    where
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let tasks: Vec<_> = (0..self.hosts.len())
            .filter(|&i| chosen(i))
            .filter_map(|i| {
                let (c, g) = self.hosts[i].conn()?;
                Some((i, g, tokio::spawn(f(c))))
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for (i, g, task) in tasks {
            let r = task.await.unwrap_or_else(|e| {
                Err(Error::internal(format!("the request's task failed: {e}")))
            });
            out.push((i, g, r));
        }
        out
    }

    /// Asks every host that is up for its models.
    async fn refresh_models(&self) {
        let t = self.config.health_timeout;
        let lists = self
            .fan_out(|_| true, |c| timed(t, "list_models", c.list_models()))
            .await;
        for (i, g, r) in lists {
            if let Ok(models) = r {
                let mut s = self.hosts[i].slot();
                if s.is(g) {
                    s.models = models.into_iter().map(|m| m.name).collect();
                }
            }
        }
        self.notify();
    }

    /// Connects host `i`: handshake, its models; then marks it up.
    async fn connect(self: &Arc<Shared>, i: usize) -> Result<()> {
        let h = &self.hosts[i];
        let t = self.config.connect_timeout;
        let timed_out = || Error::new(ErrorCode::Timeout, format!("no answer within {}", secs(t)));
        let client = tokio::time::timeout(
            t,
            Client::connect_endpoint(h.endpoint.clone(), h.options.clone()),
        )
        .await
        .map_err(|_| timed_out())??;
        let t0 = Instant::now();
        let models = match tokio::time::timeout(t, client.list_models()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                client.close();
                return Err(e);
            }
            Err(_) => {
                client.close();
                return Err(timed_out());
            }
        };
        let latency = t0.elapsed();
        let generation;
        {
            let mut s = h.slot();
            s.generation += 1;
            generation = s.generation;
            s.device = Some(client.welcome().device.clone());
            s.agent = Some(client.welcome().agent.clone());
            s.conn = Some((client, generation));
            s.state = HostState::Up;
            s.since = Instant::now();
            s.error = None;
            s.latency = Some(latency);
            s.models = models.into_iter().map(|m| m.name).collect();
            s.restoring.clear();
        }
        tracing::info!(host = %h.label, "host up");
        if self.config.restore_models {
            self.restore(i, generation);
        }
        self.notify();
        Ok(())
    }

    /// Loads again, on host `i` (just reconnected), the models placed there
    /// that it lacks.
    fn restore(self: &Arc<Shared>, i: usize, generation: u64) {
        let missing: Vec<LoadRequest> = {
            let placements = self.placements.lock().unwrap_or_else(|p| p.into_inner());
            let mut s = self.hosts[i].slot();
            let missing: Vec<LoadRequest> = placements
                .iter()
                .filter(|(name, p)| p.covers(i) && !s.models.contains(*name))
                .map(|(_, p)| p.request.clone())
                .collect();
            s.restoring.extend(missing.iter().map(|r| r.name.clone()));
            missing
        };
        for request in missing {
            let shared = self.clone();
            tokio::spawn(async move {
                let h = &shared.hosts[i];
                let Some((c, g)) = h.conn().filter(|c| c.1 == generation) else {
                    return;
                };
                let name = request.name.clone();
                let r = tokio::time::timeout(shared.config.timeout, c.load_model(request)).await;
                {
                    let mut s = h.slot();
                    if !s.is(g) {
                        return;
                    }
                    s.restoring.remove(&name);
                    match r {
                        Ok(Ok(_)) => {
                            tracing::info!(host = %h.label, model = %name, "model restored");
                            s.models.insert(name);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(host = %h.label, model = %name, error = %e, "cannot restore model")
                        }
                        Err(_) => {
                            tracing::warn!(host = %h.label, model = %name, "restoring the model timed out")
                        }
                    }
                }
                shared.notify();
            });
        }
    }

    /// The health task of host `i`: connects, checks, reconnects.
    async fn watch_host(self: Arc<Shared>, i: usize, first: oneshot::Sender<()>) {
        let h = &self.hosts[i];
        let mut first = Some(first);
        let mut backoff = MIN_BACKOFF;
        loop {
            match h.conn() {
                None => {
                    match self.connect(i).await {
                        Ok(()) => backoff = MIN_BACKOFF,
                        Err(e) => {
                            let mut s = h.slot();
                            if s.error.as_ref() != Some(&e) {
                                tracing::debug!(host = %h.label, error = %e, "cannot connect");
                            }
                            if s.state == HostState::Connecting {
                                s.state = HostState::Down;
                                s.since = Instant::now();
                            }
                            s.error = Some(e);
                            drop(s);
                            self.notify();
                        }
                    }
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                    if h.conn().is_none() {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.health_interval);
                    }
                }
                Some((c, generation)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.health_interval) => {}
                        _ = h.wake.notified() => continue,
                    }
                    let t0 = Instant::now();
                    match tokio::time::timeout(self.config.health_timeout, c.health()).await {
                        Ok(Ok(health)) => {
                            let stale = {
                                let mut s = h.slot();
                                s.latency = Some(t0.elapsed());
                                s.is(generation)
                                    && health.models_loaded != s.models.len() as u64
                                    && s.restoring.is_empty()
                            };
                            if stale {
                                // Loaded or unloaded by someone else.
                                if let Ok(Ok(models)) = tokio::time::timeout(
                                    self.config.health_timeout,
                                    c.list_models(),
                                )
                                .await
                                {
                                    let mut s = h.slot();
                                    if s.is(generation) {
                                        s.models = models.into_iter().map(|m| m.name).collect();
                                    }
                                    drop(s);
                                    self.notify();
                                }
                            }
                        }
                        Ok(Err(e)) => self.mark_down(i, generation, e),
                        Err(_) => self.mark_down(
                            i,
                            generation,
                            Error::new(
                                ErrorCode::Timeout,
                                format!(
                                    "health check: no answer within {}",
                                    secs(self.config.health_timeout)
                                ),
                            ),
                        ),
                    }
                }
            }
        }
    }

    /// Host indices of a placement.
    fn resolve(&self, placement: &Placement) -> Result<Option<BTreeSet<usize>>> {
        match placement {
            Placement::All => Ok(None),
            Placement::Hosts(names) => {
                if names.is_empty() {
                    return Err(Error::bad_argument("a placement needs at least one host"));
                }
                let mut set = BTreeSet::new();
                for n in names {
                    let n = n.trim();
                    let found = self.hosts.iter().position(|h| {
                        h.label == n
                            || h.endpoint.to_string() == n
                            || n.parse::<Endpoint>().is_ok_and(|e| e == h.endpoint)
                    });
                    match found {
                        Some(i) => set.insert(i),
                        None => {
                            return Err(Error::bad_argument(format!(
                                "no host '{n}' in the cluster (hosts: {})",
                                self.hosts
                                    .iter()
                                    .map(|h| h.label.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )));
                        }
                    };
                }
                Ok(Some(set))
            }
        }
    }
}

impl Cluster {
    /// Connects to every host of `config` and starts their health checks;
    /// fails when no host can be reached (the error says why for each).
    /// Must be called within a tokio runtime.
    pub async fn connect(config: ClusterConfig) -> Result<Cluster> {
        let cluster = Cluster::open(config).await?;
        if cluster
            .shared()
            .hosts
            .iter()
            .all(|h| h.slot().state != HostState::Up)
        {
            return Err(Error::connection(format!(
                "cannot reach any host of the cluster ({})",
                cluster.shared().host_report(&[])
            )));
        }
        Ok(cluster)
    }

    /// Like [`connect`](Cluster::connect), but succeeds whatever the hosts'
    /// state (once each was tried): for status displays, or clusters whose
    /// hosts start later.
    pub async fn open(config: ClusterConfig) -> Result<Cluster> {
        config.validate()?;
        if config.hosts.len() > resident::MAX_HOSTS {
            return Err(Error::bad_argument(format!(
                "a cluster has at most {} hosts, not {}",
                resident::MAX_HOSTS,
                config.hosts.len()
            )));
        }
        let mut hosts = Vec::with_capacity(config.hosts.len());
        for (i, h) in config.hosts.iter().enumerate() {
            hosts.push(Host {
                label: h.label().to_owned(),
                endpoint: h.addr.parse()?,
                options: config.client_options(i),
                in_flight: AtomicUsize::new(0),
                wake: Notify::new(),
                slot: Mutex::new(Slot {
                    conn: None,
                    generation: 0,
                    state: HostState::Connecting,
                    since: Instant::now(),
                    error: None,
                    latency: None,
                    device: None,
                    agent: None,
                    models: BTreeSet::new(),
                    restoring: BTreeSet::new(),
                    served: 0,
                    failovers: 0,
                }),
            });
        }
        let shared = Arc::new(Shared {
            hosts,
            config,
            changed: watch::channel(0).0,
            next: AtomicUsize::new(0),
            placements: Mutex::new(BTreeMap::new()),
            closed: AtomicBool::new(false),
            resident: Mutex::new(resident::Table::default()),
        });
        let mut tasks = Vec::new();
        let mut firsts = Vec::new();
        for i in 0..shared.hosts.len() {
            let (tx, rx) = oneshot::channel();
            tasks.push(tokio::spawn(shared.clone().watch_host(i, tx)));
            firsts.push(rx);
        }
        let cluster = Cluster {
            owner: Arc::new(Owner { shared, tasks }),
        };
        for rx in firsts {
            let _ = rx.await;
        }
        Ok(cluster)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// The settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.shared().config
    }

    /// Loads a model on the hosts of `placement`, at once on those that are
    /// up; hosts of the placement that are down get it when they come up
    /// (with [`restore_models`](ClusterConfig::restore_models)), and so does
    /// a host that restarts. Returns each host's [`ModelInfo`] by host name.
    ///
    /// Fails when a host that is up cannot load it (the error lists each
    /// host's outcome; hosts that did load it keep it and serve it) or when
    /// no host of the placement is up.
    pub async fn load_model(
        &self,
        request: LoadRequest,
        placement: Placement,
    ) -> Result<Vec<(String, ModelInfo)>> {
        let shared = self.shared();
        let targets = shared.resolve(&placement)?;
        let loads = shared
            .fan_out(
                |i| targets.as_ref().is_none_or(|t| t.contains(&i)),
                |c| c.load_model(request.clone()),
            )
            .await;
        if loads.is_empty() {
            return Err(Error::connection(format!(
                "load_model {}: no host of the placement is up ({})",
                request.name,
                shared.host_report(&[])
            )));
        }
        let mut loaded = Vec::new();
        let mut failed = Vec::new();
        for (i, g, r) in loads {
            let h = &shared.hosts[i];
            match r {
                Ok(info) => {
                    let mut s = h.slot();
                    if s.is(g) {
                        s.models.insert(info.name.clone());
                    }
                    loaded.push((i, info));
                }
                Err(e) => {
                    if e.code == ErrorCode::Connection {
                        shared.mark_down(i, g, e.clone());
                    }
                    failed.push((i, e));
                }
            }
        }
        // Remember where it is, for hosts that come back.
        let hosts = if failed.is_empty() {
            targets
        } else {
            Some(loaded.iter().map(|(i, _)| *i).collect())
        };
        if !loaded.is_empty() {
            shared
                .placements
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    request.name.clone(),
                    Placed {
                        request: request.clone(),
                        hosts,
                    },
                );
        }
        shared.notify();
        if let Some((_, first)) = failed.first() {
            let code = first.code;
            let label = |i: usize| shared.hosts[i].label.clone();
            let mut parts: Vec<String> = failed
                .iter()
                .map(|(i, e)| format!("{}: {e}", label(*i)))
                .collect();
            if !loaded.is_empty() {
                parts.push(format!(
                    "loaded on {}",
                    loaded
                        .iter()
                        .map(|(i, _)| label(*i))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            return Err(Error::new(
                code,
                format!(
                    "load_model {}: failed on {} of {} hosts ({})",
                    request.name,
                    failed.len(),
                    failed.len() + loaded.len(),
                    parts.join(" | ")
                ),
            ));
        }
        Ok(loaded
            .into_iter()
            .map(|(i, info)| (shared.hosts[i].label.clone(), info))
            .collect())
    }

    /// Unloads a model from every host that is up and forgets its
    /// placement; returns the hosts it was unloaded from. Fails with
    /// [`ErrorCode::ModelNotFound`] when no host had it.
    pub async fn unload_model(&self, name: &str) -> Result<Vec<String>> {
        let shared = self.shared();
        let placed = shared
            .placements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .is_some();
        let unloads = shared.fan_out(|_| true, |c| c.unload_model(name)).await;
        let mut done = Vec::new();
        let mut first_error = None;
        for (i, g, r) in unloads {
            let h = &shared.hosts[i];
            match r {
                Ok(()) => {
                    h.slot().models.remove(name);
                    done.push(h.label.clone());
                }
                Err(e) if e.code == ErrorCode::ModelNotFound => {
                    h.slot().models.remove(name);
                }
                Err(e) => {
                    if e.code == ErrorCode::Connection {
                        shared.mark_down(i, g, e.clone());
                    }
                    first_error.get_or_insert((h.label.clone(), e));
                }
            }
        }
        // Hosts that are down forget it too: one that comes back reports
        // its models anew, and no request should wait for it.
        for h in &shared.hosts {
            h.slot().models.remove(name);
        }
        shared.notify();
        if let Some((host, e)) = first_error {
            return Err(Error::new(
                e.code,
                format!("unload_model {name} on {host}: {}", e.message),
            ));
        }
        if done.is_empty() && !placed {
            return Err(Error::new(
                ErrorCode::ModelNotFound,
                format!("model '{name}' is not loaded on any host that is up"),
            ));
        }
        Ok(done)
    }

    /// The models of every host that is up (refreshing what this client
    /// knows of them).
    pub async fn list_models(&self) -> Result<Vec<HostModels>> {
        let shared = self.shared();
        let lists = shared.fan_out(|_| true, |c| c.list_models()).await;
        let mut out = Vec::new();
        for (i, g, r) in lists {
            let h = &shared.hosts[i];
            match r {
                Ok(models) => {
                    let mut s = h.slot();
                    if s.is(g) {
                        s.models = models.iter().map(|m| m.name.clone()).collect();
                    }
                    out.push(HostModels {
                        host: h.label.clone(),
                        models,
                    });
                }
                Err(e) if e.code == ErrorCode::Connection => shared.mark_down(i, g, e),
                Err(e) => return Err(e),
            }
        }
        shared.notify();
        Ok(out)
    }

    /// Host, process and accelerator statistics of every host that is up
    /// (CPU use, load average, memory), in the configuration's order.
    pub async fn stats(&self) -> Vec<HostStats> {
        let shared = self.shared();
        let t = shared.config.health_timeout;
        let asks = shared
            .fan_out(|_| true, |c| timed(t, "stats", c.stats()))
            .await;
        let mut out = Vec::new();
        for (i, g, r) in asks {
            if let Err(e) = &r {
                if e.code == ErrorCode::Connection {
                    shared.mark_down(i, g, e.clone());
                }
            }
            out.push(HostStats {
                host: shared.hosts[i].label.clone(),
                stats: r,
            });
        }
        out
    }

    /// The host (its name) that holds the server-resident tensor of a
    /// handle this cluster handed out (from `put`, a kept result, or
    /// `share`); `None` for a number no cluster hands out. It says where
    /// the handle was made, whether or not the tensor still exists.
    pub fn handle_host(&self, handle: u64) -> Option<String> {
        self.shared().handle_host(handle)
    }

    /// Each host's state and load, in the configuration's order.
    pub fn status(&self) -> Vec<HostStatus> {
        self.shared()
            .hosts
            .iter()
            .map(|h| {
                let s = h.slot();
                HostStatus {
                    name: h.label.clone(),
                    addr: h.endpoint.to_string(),
                    state: s.state,
                    state_for_s: s.since.elapsed().as_secs_f64(),
                    in_flight: h.in_flight.load(Ordering::Relaxed),
                    latency_ms: s.latency.map(|l| l.as_secs_f64() * 1e3),
                    device: s.device.clone(),
                    server_version: s.agent.clone(),
                    models: s.models.iter().cloned().collect(),
                    served: s.served,
                    failovers: s.failovers,
                    connections: s.generation,
                    error: match s.state {
                        HostState::Up => None,
                        _ => s.error.as_ref().map(|e| e.to_string()),
                    },
                }
            })
            .collect()
    }

    /// Waits until `ready` holds for the hosts' status, or `timeout` passes
    /// (then returns the last status as the error's message).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        ready: impl Fn(&[HostStatus]) -> bool,
    ) -> Result<Vec<HostStatus>> {
        let mut changes = self.shared().changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            let status = self.status();
            if ready(&status) {
                return Ok(status);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::new(ErrorCode::Timeout, format!(
                        "the cluster did not reach the awaited state within {timeout:?} ({})",
                        self.shared().host_report(&[])
                    )));
                }
            }
        }
    }

    /// Closes every connection and stops the health checks; requests still
    /// running fail. Dropping the last clone does the same.
    pub fn close(&self) {
        self.shared().closed.store(true, Ordering::Release);
        for t in &self.owner.tasks {
            t.abort();
        }
        for h in &self.shared().hosts {
            let mut s = h.slot();
            if let Some((c, _)) = s.conn.take() {
                c.close();
            }
            s.state = HostState::Down;
            s.error = Some(Error::connection("the cluster client was closed"));
        }
        self.shared().notify();
    }
}

impl Service for Cluster {
    /// Sends one request where its kind goes (see [`Cluster`]), failing
    /// over as the type docs say.
    async fn send(&self, request: Request, tensors: Vec<Bytes>) -> Result<(Response, Vec<Bytes>)> {
        let model = match &request {
            Request::LoadModel(r) => {
                let loaded = self.load_model(r.clone(), Placement::All).await?;
                // `load_model` fails unless a host loaded it.
                let (_, info) = loaded.into_iter().next().ok_or_else(|| {
                    Error::internal(format!("load_model {}: loaded nowhere", r.name))
                })?;
                return Ok((Response::Model(info), vec![]));
            }
            Request::UnloadModel { name } => {
                self.unload_model(name).await?;
                let name = name.clone();
                return Ok((Response::Unloaded { name }, vec![]));
            }
            Request::ListModels => {
                let mut models = BTreeMap::new();
                for host in self.list_models().await? {
                    for m in host.models {
                        models.entry(m.name.clone()).or_insert(m);
                    }
                }
                let models = models.into_values().collect();
                return Ok((Response::Models { models }, vec![]));
            }
            Request::Infer(r) => Some(r.name.clone()),
            Request::Generate(g) => Some(g.name.clone()),
            Request::ModelInfo { name }
            | Request::Encode { name, .. }
            | Request::Decode { name, .. } => Some(name.clone()),
            _ => None,
        };
        let what = match (&request, &model) {
            (Request::Exec(e), _) => format!("exec {}", e.op),
            (_, Some(m)) => format!("{} {m}", request.kind_name()),
            (_, None) => request.kind_name().to_owned(),
        };
        if request.uses_resident_tensors() {
            return self.shared().send_resident(&what, request, tensors).await;
        }
        self.shared()
            .route(&what, model.as_deref(), |_, _, c| {
                let (request, tensors) = (request.clone(), tensors.clone());
                async move { c.send(request, tensors).await }
            })
            .await
    }

    /// A streamed request goes to a host that has its model (a
    /// `generate`), as [`Service::send`] routes it; once its stream has
    /// started, a failure of that host ends the stream (no fail-over in
    /// the middle of a reply).
    async fn send_streamed(&self, request: Request, tensors: Vec<Bytes>) -> Result<ReplyStream> {
        let model = match &request {
            Request::Generate(g) => Some(g.name.clone()),
            _ => None,
        };
        let what = match &model {
            Some(m) => format!("{} {m}", request.kind_name()),
            None => request.kind_name().to_owned(),
        };
        self.shared()
            .route(&what, model.as_deref(), |_, _, c| {
                let (request, tensors) = (request.clone(), tensors.clone());
                async move { c.request_streamed(request, tensors).await }
            })
            .await
    }

    fn close(&self) {
        Cluster::close(self)
    }
}
