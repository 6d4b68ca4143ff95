//! Server-resident tensors through the cluster.
//!
//! A resident tensor lives on one host, in the memory of the connection
//! this client holds to it, and goes when that connection goes. So:
//!
//! - **Handles.** The cluster hands out handles of its own: the host's
//!   number + 1 in the top 16 bits ([`host_of`]), a counter below. Each
//!   maps to the host, the connection generation that made it, and the
//!   server's handle. A handle is only ever sent to the connection that
//!   made it: after a reconnection (or a server restart, where handle
//!   numbers start again), using it is an [`ErrorCode::UnknownTensor`]
//!   naming the host, never another tensor.
//! - **Routing.** `put`, and `exec`/`infer`/`run_graph` with no reference,
//!   go where the request would go without them (least busy host, with
//!   failover); their kept results are the answering host's. A request
//!   that names resident tensors runs on the host that holds them, with no
//!   failover (the data is nowhere else); tensors on two hosts in one
//!   request are refused ([`ErrorCode::BadArgument`]). `fetch` and `free`
//!   may mix hosts: they are split per host and their answers merged.
//! - **Shared names.** `share` names the tensor on the host holding it, and
//!   the cluster remembers which host that is. A name it does not know
//!   (shared by another client) is looked up host by host, in the
//!   configuration's order: the request goes to each host that is up until
//!   one does not answer `unknown_tensor` (the server refuses an unknown
//!   name before anything runs), and that host is remembered for the name.
//!   A shared tensor outlives the connection, so a shared handle whose
//!   connection was replaced is sent by name.
//! - **Graphs.** A registered graph is kept by the cluster and registered on
//!   a host's connection the first time it runs there (again after a
//!   reconnection); `register_graph` validates it on one host first.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use mymps_core::client::{Caller, Client, Service};
use mymps_core::protocol::rpc::RegisterGraph;
use mymps_core::protocol::{
    ExecResponse, Graph, GraphSpec, HandleInfo, Request, Response, TensorMeta, TensorRef,
};
use mymps_core::{Error, ErrorCode, Result};

use super::{HostState, InFlight, Shared, timed};

/// A reply: the response and its tensors.
type Reply = (Response, Vec<Bytes>);
/// References with their positions in a request.
type Positioned = Vec<(usize, TensorRef)>;

/// Bits of a cluster handle below the host's number.
const HOST_SHIFT: u32 = 48;
/// The counter's part of a cluster handle.
const COUNTER: u64 = (1 << HOST_SHIFT) - 1;
/// Most hosts a cluster may have (the handle's top 16 bits, less zero).
pub(super) const MAX_HOSTS: usize = (1 << (64 - HOST_SHIFT)) - 1;
/// Most graphs registered on one cluster client (as on one connection).
const MAX_GRAPHS: usize = 1024;

/// The host index a cluster handle was made on (`None` for a number that
/// no cluster hands out).
pub(super) fn host_of(handle: u64) -> Option<usize> {
    match handle >> HOST_SHIFT {
        0 => None,
        h => Some((h - 1) as usize),
    }
}

/// Where a cluster handle's tensor is.
#[derive(Debug, Clone)]
struct Placed {
    host: usize,
    /// The connection that made it (only it may use the handle).
    generation: u64,
    /// The server's handle.
    remote: u64,
    /// The name it was shared under by this client.
    shared: Option<String>,
}

/// A graph registered on the cluster.
struct Registered {
    graph: Graph,
    /// Its id on each host's connection: host → (generation, id).
    on: HashMap<usize, (u64, u64)>,
}

/// The cluster's resident-tensor bookkeeping.
#[derive(Default)]
pub(super) struct Table {
    next: u64,
    handles: HashMap<u64, Placed>,
    /// Shared names → the host that holds them.
    names: HashMap<String, usize>,
    next_graph: u64,
    graphs: HashMap<u64, Registered>,
}

impl Table {
    /// Gives the server handle of `info` (made on host `i`'s connection
    /// `generation`) a cluster handle, written into `info`.
    fn adopt(&mut self, host: usize, generation: u64, info: &mut HandleInfo) {
        self.next += 1;
        let handle = ((host as u64 + 1) << HOST_SHIFT) | (self.next & COUNTER);
        self.handles.insert(
            handle,
            Placed {
                host,
                generation,
                remote: info.handle,
                shared: None,
            },
        );
        info.handle = handle;
    }

    /// Forgets a shared name, and the handle shared under it.
    fn forget_name(&mut self, name: &str) {
        self.names.remove(name);
        self.handles
            .retain(|_, p| p.shared.as_deref() != Some(name));
    }
}

/// Where a request's resident tensors are.
enum Where {
    /// Nowhere in particular: it names none.
    Anywhere,
    /// On this host.
    Host(usize),
    /// Only shared names the cluster does not know: look them up.
    Lookup,
}

/// The tensor references of a request, mutable, with a label each for
/// messages (the argument name, or the position).
fn refs_mut(request: &mut Request) -> Vec<(String, &mut TensorRef)> {
    match request {
        Request::Exec(r) => r
            .refs
            .iter_mut()
            .map(|(k, v)| (format!("'{k}'"), v))
            .collect(),
        Request::Infer(r) => r
            .refs
            .iter_mut()
            .map(|(k, v)| (format!("'{k}'"), v))
            .collect(),
        Request::RunGraph(r) => r
            .refs
            .iter_mut()
            .map(|(k, v)| (format!("'{k}'"), v))
            .collect(),
        Request::Fetch { refs } | Request::Free { refs } | Request::Describe { refs } => refs
            .iter_mut()
            .enumerate()
            .map(|(i, v)| (format!("#{i}"), v))
            .collect(),
        _ => Vec::new(),
    }
}

/// `message` with each server handle `remote` named as the cluster's
/// `handle` instead ("handle 7" → "handle 281474976710663"), so that a
/// server's error speaks of the handle the caller holds.
fn rename_handles(message: &str, pairs: &[(u64, u64)]) -> String {
    let mut out = message.to_owned();
    for (remote, handle) in pairs {
        let from = format!("handle {remote}");
        let mut s = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&from) {
            let after = &rest[at + from.len()..];
            s.push_str(&rest[..at]);
            if after.starts_with(|c: char| c.is_ascii_digit()) {
                s.push_str(&from);
            } else {
                s.push_str(&format!("handle {handle}"));
            }
            rest = after;
        }
        s.push_str(rest);
        out = s;
    }
    out
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.resident.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host a cluster handle was made on, by name.
    pub(super) fn handle_host(&self, handle: u64) -> Option<String> {
        host_of(handle)
            .and_then(|i| self.hosts.get(i))
            .map(|h| h.label.clone())
    }

    fn unknown_handle(&self, handle: u64) -> Error {
        let made = match self.handle_host(handle) {
            Some(h) => format!(" (its number says it was made on host '{h}')"),
            None => String::new(),
        };
        Error::new(
            ErrorCode::UnknownTensor,
            format!(
                "handle {handle} is not a resident tensor of this cluster client (unknown, or freed){made}"
            ),
        )
    }

    /// Why host `i` cannot serve `r` (made by connection `generation`)
    /// now: its connection was lost (then the server freed its handles), or
    /// it is down.
    fn host_gone(&self, i: usize, r: &TensorRef, shared: bool) -> Error {
        let h = &self.hosts[i];
        let s = h.slot();
        let state = match (&s.error, s.state) {
            (Some(e), HostState::Down) => {
                format!("down for {} ({e})", super::secs(s.since.elapsed()))
            }
            (_, st) => format!("{st}, on a new connection"),
        };
        if shared {
            Error::new(
                ErrorCode::Connection,
                format!("{r} is shared on host '{}', which is {state}", h.label),
            )
        } else {
            Error::new(
                ErrorCode::UnknownTensor,
                format!(
                    "{r} was on host '{}', whose connection it belonged to was lost (the host is {state}); the server freed it with that connection",
                    h.label
                ),
            )
        }
    }

    /// Where the tensors `request` names are.
    fn locate(&self, request: &mut Request) -> Result<Where> {
        let refs = refs_mut(request);
        let t = self.table();
        let mut at: Option<(usize, String)> = None;
        let mut unpinned = false;
        for (label, r) in &refs {
            let host = match &**r {
                TensorRef::Handle(h) => match t.handles.get(h) {
                    Some(p) => p.host,
                    None => return Err(self.unknown_handle(*h)),
                },
                TensorRef::Shared(n) => match t.names.get(n) {
                    Some(&i) => i,
                    None => {
                        unpinned = true;
                        continue;
                    }
                },
            };
            match &at {
                None => at = Some((host, format!("{label} ({r})"))),
                Some((i, first)) if *i != host => {
                    return Err(Error::bad_argument(format!(
                        "the request's resident tensors are on different hosts: {first} on '{}', {label} ({r}) on '{}'; a request runs on one host (fetch one and put it where the other is)",
                        self.hosts[*i].label, self.hosts[host].label
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(match at {
            Some((i, _)) => Where::Host(i),
            None if unpinned => Where::Lookup,
            None => Where::Anywhere,
        })
    }

    /// Rewrites `request`'s cluster handles into host `i`'s own for its
    /// connection `generation`; returns (server handle, cluster handle)
    /// pairs for messages.
    fn to_remote(
        &self,
        i: usize,
        generation: u64,
        request: &mut Request,
    ) -> Result<Vec<(u64, u64)>> {
        let t = self.table();
        let mut pairs = Vec::new();
        for (_, r) in refs_mut(request) {
            let TensorRef::Handle(h) = *r else { continue };
            let p = t.handles.get(&h).ok_or_else(|| self.unknown_handle(h))?;
            debug_assert_eq!(p.host, i);
            if p.generation == generation {
                pairs.push((p.remote, h));
                *r = TensorRef::Handle(p.remote);
            } else if let Some(n) = &p.shared {
                *r = TensorRef::Shared(n.clone());
            } else {
                return Err(self.host_gone(i, r, false));
            }
        }
        Ok(pairs)
    }

    /// A `run_graph` of a graph registered on the cluster, made a run of
    /// its registration on host `i`'s connection (registering it there
    /// first if needed).
    async fn graph_on(
        &self,
        i: usize,
        generation: u64,
        c: &Client,
        request: Request,
    ) -> Result<Request> {
        let Request::RunGraph(mut run) = request else {
            return Ok(request);
        };
        let GraphSpec::Id(id) = run.graph else {
            return Ok(Request::RunGraph(run));
        };
        let graph = {
            let t = self.table();
            let r = t.graphs.get(&id).ok_or_else(|| {
                Error::bad_argument(format!(
                    "no graph {id} is registered on this cluster client"
                ))
            })?;
            match r.on.get(&i) {
                Some(&(g, remote)) if g == generation => {
                    run.graph = GraphSpec::Id(remote);
                    return Ok(Request::RunGraph(run));
                }
                _ => r.graph.clone(),
            }
        };
        let remote = c.call(RegisterGraph(graph)).await?;
        if let Some(r) = self.table().graphs.get_mut(&id) {
            r.on.insert(i, (generation, remote));
        }
        run.graph = GraphSpec::Id(remote);
        Ok(Request::RunGraph(run))
    }

    /// Gives the handles of a reply from host `i`'s connection
    /// `generation` cluster handles.
    fn adopt(&self, i: usize, generation: u64, response: &mut Response) {
        let mut t = self.table();
        match response {
            Response::Exec(ExecResponse { kept, .. }) => {
                for h in kept {
                    t.adopt(i, generation, h);
                }
            }
            Response::Handles { handles } => {
                for h in handles {
                    t.adopt(i, generation, h);
                }
            }
            _ => {}
        }
    }

    /// Sends `request` (cluster handles) to host `i`, with no failover.
    async fn on_host(
        &self,
        i: usize,
        what: &str,
        mut request: Request,
        tensors: Vec<Bytes>,
    ) -> Result<(Response, Vec<Bytes>, u64)> {
        let h = &self.hosts[i];
        let Some((c, generation)) = h.conn() else {
            // Down: its handles went with its connection; shared ones wait
            // on the server for a new one.
            let r = refs_mut(&mut request)
                .into_iter()
                .next()
                .map(|(_, r)| r.clone());
            let shared = {
                let t = self.table();
                match &r {
                    Some(TensorRef::Handle(x)) => {
                        t.handles.get(x).is_some_and(|p| p.shared.is_some())
                    }
                    _ => true,
                }
            };
            let r = r.unwrap_or_else(|| TensorRef::Shared(String::new()));
            return Err(self.host_gone(i, &r, shared));
        };
        let pairs = self.to_remote(i, generation, &mut request)?;
        let request = self.graph_on(i, generation, &c, request).await?;
        let answer = {
            let _busy = InFlight::new(&h.in_flight);
            timed(self.config.timeout, what, c.send(request, tensors)).await
        };
        match answer {
            Ok((mut response, tensors)) => {
                h.slot().served += 1;
                self.adopt(i, generation, &mut response);
                Ok((response, tensors, generation))
            }
            Err(e) => {
                if e.code == ErrorCode::Connection || c.is_closed() {
                    self.mark_down(i, generation, e.clone());
                }
                Err(match e.code {
                    ErrorCode::Connection | ErrorCode::Timeout | ErrorCode::UnknownTensor => {
                        Error::new(
                            e.code,
                            format!(
                                "{what} on host '{}': {}",
                                h.label,
                                rename_handles(&e.message, &pairs)
                            ),
                        )
                    }
                    _ => e,
                })
            }
        }
    }

    /// Records that host `i` holds the shared names `request` uses.
    fn learn_names(&self, i: usize, request: &mut Request) {
        let names: Vec<String> = refs_mut(request)
            .into_iter()
            .filter_map(|(_, r)| match r {
                TensorRef::Shared(n) => Some(n.clone()),
                TensorRef::Handle(_) => None,
            })
            .collect();
        let mut t = self.table();
        for n in names {
            t.names.insert(n, i);
        }
    }

    /// Sends `request` to each host that is up, in order, until one knows
    /// the shared names it uses.
    async fn look_up(
        &self,
        what: &str,
        mut request: Request,
        tensors: Vec<Bytes>,
    ) -> Result<Reply> {
        let mut misses = Vec::new();
        for i in 0..self.hosts.len() {
            if self.hosts[i].conn().is_none() {
                continue;
            }
            match self
                .on_host(i, what, request.clone(), tensors.clone())
                .await
            {
                Ok((response, tensors, _)) => {
                    self.learn_names(i, &mut request);
                    return Ok((response, tensors));
                }
                Err(e) if e.code == ErrorCode::UnknownTensor => misses.push(e.message),
                Err(e) => return Err(e),
            }
        }
        let names: Vec<String> = refs_mut(&mut request)
            .into_iter()
            .map(|(_, r)| r.to_string())
            .collect();
        Err(Error::new(
            ErrorCode::UnknownTensor,
            format!(
                "{what}: no host that is up holds {} ({})",
                names.join(", "),
                if misses.is_empty() {
                    self.host_report(&[])
                } else {
                    misses.join(" | ")
                }
            ),
        ))
    }

    /// A request that uses server-resident tensors (see the module docs).
    pub(super) async fn send_resident(
        &self,
        what: &str,
        mut request: Request,
        tensors: Vec<Bytes>,
    ) -> Result<Reply> {
        match request {
            Request::Fetch { refs } => return self.fetch(refs).await,
            Request::Free { refs } => return self.free(refs).await,
            Request::Describe { refs } => return self.describe(refs).await,
            Request::RegisterGraph { graph } => return self.register_graph(graph).await,
            Request::Share { handle, name } => return self.share(handle, name).await,
            _ => {}
        }
        match self.locate(&mut request)? {
            Where::Host(i) => {
                let (response, tensors, _) =
                    self.on_host(i, what, request.clone(), tensors).await?;
                self.learn_names(i, &mut request);
                Ok((response, tensors))
            }
            Where::Lookup => self.look_up(what, request, tensors).await,
            Where::Anywhere => {
                let model = match &request {
                    Request::Infer(r) => Some(r.name.clone()),
                    _ => None,
                };
                let (i, generation, (mut response, tensors)) = self
                    .route(what, model.as_deref(), |i, g, c| {
                        let (request, tensors) = (request.clone(), tensors.clone());
                        async move {
                            let request = self.graph_on(i, g, &c, request).await?;
                            c.send(request, tensors).await.map(|r| (i, g, r))
                        }
                    })
                    .await?;
                self.adopt(i, generation, &mut response);
                Ok((response, tensors))
            }
        }
    }

    async fn share(&self, handle: u64, name: String) -> Result<Reply> {
        let i = {
            let t = self.table();
            t.handles
                .get(&handle)
                .map(|p| p.host)
                .ok_or_else(|| self.unknown_handle(handle))?
        };
        let h = &self.hosts[i];
        let Some((c, generation)) = h.conn() else {
            return Err(self.host_gone(i, &TensorRef::Handle(handle), false));
        };
        let remote = {
            let t = self.table();
            let p = t
                .handles
                .get(&handle)
                .ok_or_else(|| self.unknown_handle(handle))?;
            if p.generation != generation {
                drop(t);
                return Err(self.host_gone(i, &TensorRef::Handle(handle), false));
            }
            p.remote
        };
        let request = Request::Share {
            handle: remote,
            name: name.clone(),
        };
        let answer = {
            let _busy = InFlight::new(&h.in_flight);
            timed(self.config.timeout, "share", c.send(request, vec![])).await
        };
        let (mut response, tensors) = answer.map_err(|e| {
            if e.code == ErrorCode::Connection {
                self.mark_down(i, generation, e.clone());
            }
            Error::new(
                e.code,
                format!(
                    "share on host '{}': {}",
                    h.label,
                    rename_handles(&e.message, &[(remote, handle)])
                ),
            )
        })?;
        h.slot().served += 1;
        if let Response::Handles { handles } = &mut response {
            for info in handles {
                info.handle = handle;
            }
        }
        let mut t = self.table();
        if let Some(p) = t.handles.get_mut(&handle) {
            p.shared = Some(name.clone());
        }
        t.names.insert(name, i);
        Ok((response, tensors))
    }

    async fn register_graph(&self, graph: Graph) -> Result<Reply> {
        if self.table().graphs.len() >= MAX_GRAPHS {
            return Err(Error::new(
                ErrorCode::LimitReached,
                format!("{MAX_GRAPHS} graphs are registered on this cluster client"),
            ));
        }
        // Validated (and registered) on one host now; on the others when
        // they first run it.
        let (i, generation, remote) = self
            .route("register_graph", None, |i, g, c| {
                let graph = graph.clone();
                async move { c.call(RegisterGraph(graph)).await.map(|id| (i, g, id)) }
            })
            .await?;
        let mut t = self.table();
        t.next_graph += 1;
        let id = t.next_graph;
        t.graphs.insert(
            id,
            Registered {
                graph,
                on: HashMap::from([(i, (generation, remote))]),
            },
        );
        Ok((Response::GraphRegistered { id }, vec![]))
    }

    /// Splits `refs` by host: `(host, [(position, ref)])`, and the
    /// positions of names to look up.
    fn split(&self, refs: &[TensorRef]) -> Result<(BTreeMap<usize, Positioned>, Positioned)> {
        let t = self.table();
        let mut groups: BTreeMap<usize, Positioned> = BTreeMap::new();
        let mut lookups = Vec::new();
        for (k, r) in refs.iter().enumerate() {
            let host = match r {
                TensorRef::Handle(h) => match t.handles.get(h) {
                    Some(p) => Some(p.host),
                    None => return Err(self.unknown_handle(*h)),
                },
                TensorRef::Shared(n) => t.names.get(n).copied(),
            };
            match host {
                Some(i) => groups.entry(i).or_default().push((k, r.clone())),
                None => lookups.push((k, r.clone())),
            }
        }
        Ok((groups, lookups))
    }

    /// `describe`, one tensor at a time, on its host (a shared name: on
    /// the host that holds it); a handle keeps the caller's cluster handle.
    async fn describe(&self, refs: Vec<TensorRef>) -> Result<Reply> {
        let mut handles = Vec::with_capacity(refs.len());
        for r in refs {
            let request = Request::Describe {
                refs: vec![r.clone()],
            };
            let (groups, _) = self.split(std::slice::from_ref(&r))?;
            let (response, _) = match groups.keys().next() {
                Some(&i) => {
                    let (response, tensors, _) =
                        self.on_host(i, "describe", request, vec![]).await?;
                    (response, tensors)
                }
                None => self.look_up("describe", request, vec![]).await?,
            };
            let mut got = match response {
                Response::Handles { handles } if handles.len() == 1 => handles,
                other => {
                    return Err(Error::protocol(format!(
                        "describe: a host answered {other:?}"
                    )));
                }
            };
            let mut info = got.pop().expect("one");
            let mut t = self.table();
            match r {
                TensorRef::Handle(h) => {
                    // The answer was given a cluster handle of its own, as
                    // every reply's handles are: the caller's is the one.
                    t.handles.remove(&info.handle);
                    info.handle = h;
                }
                TensorRef::Shared(name) => {
                    // One cluster handle per shared name, however often it
                    // is described: the one this client has, else the new
                    // one, marked shared (forgotten with the name).
                    let fresh = info.handle;
                    let known = t
                        .handles
                        .iter()
                        .find(|&(&k, p)| {
                            k != fresh
                                && Some(p.host) == host_of(fresh)
                                && p.shared.as_deref() == Some(name.as_str())
                        })
                        .map(|(&k, _)| k);
                    match known {
                        Some(k) => {
                            t.handles.remove(&fresh);
                            info.handle = k;
                        }
                        None => {
                            if let Some(p) = t.handles.get_mut(&fresh) {
                                p.shared = Some(name);
                            }
                        }
                    }
                }
            }
            drop(t);
            handles.push(info);
        }
        Ok((Response::Handles { handles }, vec![]))
    }

    /// `fetch`, split per host, the answers merged in the order asked.
    async fn fetch(&self, refs: Vec<TensorRef>) -> Result<Reply> {
        let (groups, lookups) = self.split(&refs)?;
        if lookups.is_empty() && groups.len() == 1 {
            let (&i, _) = groups.iter().next().expect("one");
            let (response, tensors, _) = self
                .on_host(i, "fetch", Request::Fetch { refs }, vec![])
                .await?;
            return Ok((response, tensors));
        }
        let n = refs.len();
        let mut slots: Vec<Option<(TensorMeta, Bytes)>> = vec![None; n];
        let mut device = String::new();
        let mut elapsed_s = 0.0f64;
        let mut parts: Vec<(Vec<usize>, Result<Reply>)> = Vec::new();
        for (i, group) in groups {
            let (pos, refs): (Vec<usize>, Vec<TensorRef>) = group.into_iter().unzip();
            let r = self
                .on_host(i, "fetch", Request::Fetch { refs }, vec![])
                .await
                .map(|(r, t, _)| (r, t));
            parts.push((pos, r));
        }
        for (k, r) in lookups {
            let answer = self
                .look_up("fetch", Request::Fetch { refs: vec![r] }, vec![])
                .await;
            parts.push((vec![k], answer));
        }
        for (pos, answer) in parts {
            let (response, tensors) = answer?;
            let Response::Exec(e) = response else {
                return Err(Error::protocol(
                    "fetch: a host answered with something else than tensors",
                ));
            };
            if e.outputs.len() != pos.len() || tensors.len() != pos.len() {
                return Err(Error::protocol(format!(
                    "fetch: a host sent {} tensors for {} asked",
                    e.outputs.len(),
                    pos.len()
                )));
            }
            device = e.device;
            elapsed_s = elapsed_s.max(e.elapsed_s);
            for ((k, mut meta), bytes) in pos.into_iter().zip(e.outputs).zip(tensors) {
                meta.name = k.to_string();
                slots[k] = Some((meta, bytes));
            }
        }
        let (outputs, tensors): (Vec<TensorMeta>, Vec<Bytes>) = slots
            .into_iter()
            .map(|s| s.expect("every position answered"))
            .unzip();
        Ok((
            Response::Exec(ExecResponse {
                outputs,
                device,
                elapsed_s,
                kept: vec![],
            }),
            tensors,
        ))
    }

    /// `free`, split per host. A handle whose connection is gone is
    /// forgotten and reported unknown (its server freed it); so is one on
    /// a host whose connection fails meanwhile.
    async fn free(&self, refs: Vec<TensorRef>) -> Result<Reply> {
        let mut freed = 0u64;
        let mut unknown = Vec::new();
        // (host, generation) → (cluster ref, server ref) pairs.
        let mut groups: BTreeMap<usize, (u64, Vec<(TensorRef, TensorRef)>)> = BTreeMap::new();
        let mut lookups: Vec<TensorRef> = Vec::new();
        {
            let mut t = self.table();
            for r in refs {
                let (host, remote) = match &r {
                    TensorRef::Handle(h) => {
                        let Some(p) = t.handles.get(h).cloned() else {
                            unknown.push(r);
                            continue;
                        };
                        let current = self.hosts[p.host].conn().map(|c| c.1);
                        match (current, &p.shared) {
                            (Some(g), _) if g == p.generation => {
                                (p.host, TensorRef::Handle(p.remote))
                            }
                            (Some(_), Some(n)) => (p.host, TensorRef::Shared(n.clone())),
                            // Shared on a host that is down: still there;
                            // kept, to be freed later.
                            (None, Some(_)) => {
                                unknown.push(r);
                                continue;
                            }
                            (_, None) => {
                                t.handles.remove(h);
                                unknown.push(r);
                                continue;
                            }
                        }
                    }
                    TensorRef::Shared(n) => match t.names.get(n) {
                        Some(&i) => (i, r.clone()),
                        None => {
                            lookups.push(r);
                            continue;
                        }
                    },
                };
                let Some(g) = self.hosts[host].conn().map(|c| c.1) else {
                    unknown.push(r);
                    continue;
                };
                groups
                    .entry(host)
                    .or_insert_with(|| (g, Vec::new()))
                    .1
                    .push((r, remote));
            }
        }
        for (i, (generation, pairs)) in groups {
            let remote: Vec<TensorRef> = pairs.iter().map(|(_, s)| s.clone()).collect();
            let answer = match self.hosts[i].conn().filter(|c| c.1 == generation) {
                Some((c, _)) => {
                    let _busy = InFlight::new(&self.hosts[i].in_flight);
                    timed(
                        self.config.timeout,
                        "free",
                        c.send(Request::Free { refs: remote }, vec![]),
                    )
                    .await
                }
                None => Err(Error::connection("the connection was replaced")),
            };
            let mut lost = false;
            let missed: HashSet<TensorRef> = match answer {
                Ok((
                    Response::Freed {
                        freed: n,
                        unknown: u,
                    },
                    _,
                )) => {
                    freed += n;
                    u.into_iter().collect()
                }
                Ok(_) => return Err(Error::protocol("free: a host answered with something else")),
                Err(e) if e.code == ErrorCode::Connection => {
                    self.mark_down(i, generation, e);
                    lost = true;
                    pairs.iter().map(|(_, s)| s.clone()).collect()
                }
                Err(e) => {
                    return Err(Error::new(
                        e.code,
                        format!("free on host '{}': {}", self.hosts[i].label, e.message),
                    ));
                }
            };
            let mut t = self.table();
            for (ours, theirs) in pairs {
                if missed.contains(&theirs) {
                    // Unknown there: gone (freed by name elsewhere, or with
                    // its connection). A shared one on a connection that
                    // failed now is still on the server: kept, to be freed
                    // later.
                    if let TensorRef::Handle(h) = &ours {
                        let shared = t.handles.get(h).is_some_and(|p| p.shared.is_some());
                        if !(lost && shared) {
                            t.handles.remove(h);
                        }
                    }
                    unknown.push(ours);
                    continue;
                }
                match &ours {
                    TensorRef::Handle(h) => {
                        if let Some(n) = t.handles.remove(h).and_then(|p| p.shared) {
                            t.names.remove(&n);
                        }
                    }
                    TensorRef::Shared(n) => t.forget_name(n),
                }
            }
        }
        // Names no one told the cluster of: each host in turn, until freed.
        for i in 0..self.hosts.len() {
            if lookups.is_empty() {
                break;
            }
            let Some((c, generation)) = self.hosts[i].conn() else {
                continue;
            };
            let answer = {
                let _busy = InFlight::new(&self.hosts[i].in_flight);
                timed(
                    self.config.timeout,
                    "free",
                    c.send(
                        Request::Free {
                            refs: lookups.clone(),
                        },
                        vec![],
                    ),
                )
                .await
            };
            match answer {
                Ok((
                    Response::Freed {
                        freed: n,
                        unknown: u,
                    },
                    _,
                )) => {
                    freed += n;
                    lookups = u;
                }
                Ok(_) => return Err(Error::protocol("free: a host answered with something else")),
                Err(e) if e.code == ErrorCode::Connection => self.mark_down(i, generation, e),
                Err(e) => return Err(e),
            }
        }
        unknown.extend(lookups);
        Ok((Response::Freed { freed, unknown }, vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_say_their_host() {
        let mut t = Table::default();
        let mut info = HandleInfo {
            handle: 7,
            name: "0".into(),
            dtype: "float32".into(),
            shape: vec![2],
            device: "cpu".into(),
        };
        t.adopt(3, 1, &mut info);
        assert_eq!(host_of(info.handle), Some(3));
        assert_eq!(t.handles[&info.handle].remote, 7);
        assert_eq!(host_of(7), None);
    }

    #[test]
    fn server_handles_in_messages_become_the_clusters() {
        let m = rename_handles("handle 7 is unknown; handle 71 too", &[(7, 99)]);
        assert_eq!(m, "handle 99 is unknown; handle 71 too");
    }
}
