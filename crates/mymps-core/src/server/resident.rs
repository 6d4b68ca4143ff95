//! The server's side of server-resident tensors: `put`, `fetch`, `free`,
//! `share`, `exec` and `infer` with `refs` / `keep`, and graphs of ops
//! (`register_graph`, `run_graph`).
//!
//! A resident tensor holds its bytes of the memory budget from the moment
//! it is kept until it is freed (by `free`, or with its connection); kept
//! results take theirs out of what the request reserved for its outputs.
//! A graph is validated whole (ops, arguments, references) before any step
//! runs; its steps run one after another on one worker, their results
//! staying on the device between steps, each freed once no later step
//! needs it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::{Held, Peer, Shared, check_dense_sizes, on_worker, reserve_bytes};
use crate::error::{Error, ErrorCode, Result};
use crate::ops::{self, OpEntry};
use crate::protocol::{
    self, ExecRequest, ExecResponse, Frame, FrameKind, Graph, GraphSpec, HandleInfo, InferRequest,
    Keep, Request, Response, RunGraphRequest, Source, TensorMeta, TensorRef,
};
use crate::resident::{Operand, Resident};
use crate::tensor::Tensor;

/// Most steps in a graph.
pub(crate) const MAX_STEPS: usize = 4096;
/// Most graphs registered on one connection.
pub(crate) const MAX_GRAPHS: usize = 1024;

/// The graphs a connection registered.
#[derive(Default)]
pub(crate) struct Graphs {
    next: u64,
    graphs: HashMap<u64, Arc<Checked>>,
}

/// A graph that passed validation.
pub(crate) struct Checked {
    steps: Vec<CheckedStep>,
    outputs: Vec<(String, Source)>,
    /// The graph inputs its steps and outputs read.
    inputs: BTreeSet<String>,
    /// For each step, the results of earlier steps that no later step or
    /// output reads: freed once the step ran.
    release_after: Vec<Vec<(u32, String)>>,
}

struct CheckedStep {
    entry: &'static OpEntry,
    inputs: BTreeMap<String, Source>,
    kwargs: BTreeMap<String, crate::Value>,
}

fn step_error(i: usize, op: &str, e: Error) -> Error {
    Error::new(
        e.code,
        format!("step {i} ({}): {}", crate::error::clip(op, 64), e.message),
    )
}

/// The result names an op's declaration promises (`None`: a list whose
/// length depends on the arguments).
fn output_names(entry: &OpEntry) -> Option<Vec<String>> {
    match entry.spec.outputs {
        ops::Outputs::One => Some(vec!["output".to_owned()]),
        ops::Outputs::Tuple(names) => Some((0..names.len()).map(|i| i.to_string()).collect()),
        ops::Outputs::List => None,
    }
}

/// Checks a graph against the whitelist: every op known, every step's
/// arguments bound to its signature, every reference to an earlier step
/// and to a result that step has. Nothing runs.
pub(crate) fn check(registry: &ops::OpRegistry, graph: Graph) -> Result<Checked> {
    let Graph { steps, outputs } = graph;
    if steps.len() > MAX_STEPS {
        return Err(Error::bad_argument(format!(
            "a graph has {} steps; at most {MAX_STEPS}",
            steps.len()
        )));
    }
    if outputs.is_empty() {
        return Err(Error::bad_argument("a graph must name at least one output"));
    }
    let mut checked: Vec<CheckedStep> = Vec::with_capacity(steps.len());
    let mut inputs = BTreeSet::new();
    let mut last_use: HashMap<(u32, String), usize> = HashMap::new();
    let check_source = |src: &Source,
                        at: usize,
                        checked: &[CheckedStep],
                        inputs: &mut BTreeSet<String>,
                        last_use: &mut HashMap<(u32, String), usize>|
     -> Result<()> {
        match src {
            Source::Input(name) => {
                inputs.insert(name.clone());
                Ok(())
            }
            Source::Step(j, name) => {
                let Some(step) = checked.get(*j as usize).filter(|_| (*j as usize) < at) else {
                    return Err(Error::bad_argument(format!(
                        "refers to step {j}, which is not an earlier step"
                    )));
                };
                if let Some(names) = output_names(step.entry)
                    && !names.iter().any(|n| n == name)
                {
                    return Err(Error::bad_argument(format!(
                        "refers to result '{}' of step {j} ({}), which returns {}",
                        crate::error::clip(name, 64),
                        step.entry.spec.name,
                        names.join(", ")
                    )));
                }
                last_use.insert((*j, name.clone()), at);
                Ok(())
            }
        }
    };
    for (i, step) in steps.into_iter().enumerate() {
        let entry = registry
            .lookup(&step.op)
            .map_err(|e| step_error(i, &step.op, e))?;
        for src in step.inputs.values() {
            check_source(src, i, &checked, &mut inputs, &mut last_use)
                .map_err(|e| step_error(i, &step.op, e))?;
        }
        // Binding checks names and scalar types against the signature,
        // with the sources standing in for the tensors.
        let sources: Vec<(String, Source)> = step
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ops::bind(&entry.spec, sources, step.kwargs.clone())
            .map_err(|e| step_error(i, &step.op, e))?;
        checked.push(CheckedStep {
            entry,
            inputs: step.inputs,
            kwargs: step.kwargs,
        });
    }
    let n = checked.len();
    let mut names = BTreeSet::new();
    for (name, src) in &outputs {
        if !names.insert(name.as_str()) {
            return Err(Error::bad_argument(format!(
                "the graph names output '{}' twice",
                crate::error::clip(name, 64)
            )));
        }
        // Outputs are read after every step.
        check_source(src, n, &checked, &mut inputs, &mut last_use).map_err(|e| {
            Error::bad_argument(format!(
                "output '{}': {}",
                crate::error::clip(name, 64),
                e.message
            ))
        })?;
    }
    let mut release_after = vec![Vec::new(); n];
    for ((j, name), at) in last_use {
        if at < n {
            release_after[at].push((j, name));
        }
    }
    Ok(Checked {
        steps: checked,
        outputs,
        inputs,
        release_after,
    })
}

/// Server-resident requests other than `exec` and `infer`.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    id: u64,
    request: Request,
    tensors: Vec<Bytes>,
    peer: &Peer,
    held: &mut Held,
) -> Result<Frame> {
    peer.check_resident()?;
    let response = match request {
        Request::Put { inputs } => Response::Handles {
            handles: put(shared, inputs, tensors, peer, held).await?,
        },
        Request::Fetch { refs } => return fetch(shared, id, refs, peer, held).await,
        Request::Free { refs } => {
            let (freed, unknown) = shared.store.free(peer.id, refs);
            let count = freed.len() as u64;
            if !freed.is_empty() {
                tokio::task::spawn_blocking(move || drop(freed));
            }
            Response::Freed {
                freed: count,
                unknown,
            }
        }
        Request::Describe { refs } => Response::Handles {
            handles: shared.store.describe(peer.id, &refs)?,
        },
        Request::Share { handle, name } => Response::Handles {
            handles: vec![shared.store.share(peer.id, handle, name)?],
        },
        Request::RegisterGraph { graph } => {
            let checked = check(shared.backend.ops(), graph)?;
            let mut g = peer.graphs.lock().unwrap_or_else(|e| e.into_inner());
            if g.graphs.len() >= MAX_GRAPHS {
                return Err(Error::new(
                    ErrorCode::LimitReached,
                    format!("{MAX_GRAPHS} graphs are registered on this connection"),
                ));
            }
            g.next += 1;
            let id = g.next;
            g.graphs.insert(id, Arc::new(checked));
            Response::GraphRegistered { id }
        }
        Request::RunGraph(req) => return run_graph(shared, id, req, tensors, peer, held).await,
        other => {
            return Err(Error::internal(format!(
                "{} is not a resident-tensor request",
                other.kind_name()
            )));
        }
    };
    protocol::encode(FrameKind::Response, id, &response, vec![])
}

/// The tensors a request sends as data, and those it names by reference,
/// as operands by argument name.
fn operands(
    shared: &Shared,
    peer: &Peer,
    inputs: Vec<TensorMeta>,
    bufs: Vec<Bytes>,
    refs: BTreeMap<String, TensorRef>,
) -> Result<Vec<(String, Operand)>> {
    peer.check_strides(&inputs)?;
    let inputs = protocol::tensors_from_wire(inputs, bufs)?;
    check_dense_sizes(shared, inputs.iter().map(|(n, t)| (n.as_str(), t)))?;
    let mut out: Vec<(String, Operand)> = inputs
        .into_iter()
        .map(|(n, t)| (n, Operand::Host(t)))
        .collect();
    for (name, r) in refs {
        if out.iter().any(|(n, _)| *n == name) {
            return Err(Error::bad_argument(format!(
                "'{}' is given both as data and as a reference",
                crate::error::clip(&name, 64)
            )));
        }
        out.push((name, Operand::Resident(shared.store.get(peer.id, &r)?)));
    }
    Ok(out)
}

/// Keeps `kept` for the connection, each with its bytes of the memory
/// budget taken from what the request holds.
fn keep_all(
    shared: &Shared,
    peer: &Peer,
    held: &mut Held,
    kept: Vec<(String, Resident)>,
) -> Result<Vec<HandleInfo>> {
    let bytes = kept
        .iter()
        .fold(0u64, |n, (_, r)| n.saturating_add(r.nbytes()));
    shared.store.check_room(peer.id, kept.len() as u64, bytes)?;
    let mut with_budget: Vec<(String, Resident, Vec<OwnedSemaphorePermit>)> = Vec::new();
    for (name, r) in kept {
        let permits = held.take(r.nbytes(), &shared.budget).ok_or_else(|| {
            Error::new(
                ErrorCode::LimitReached,
                format!(
                    "keeping '{}' ({} bytes) would exceed the server's memory budget ({} bytes, {} in use); free some resident tensors first",
                    crate::error::clip(&name, 64),
                    r.nbytes(),
                    shared.budget.capacity(),
                    shared.budget.in_use()
                ),
            )
        })?;
        with_budget.push((name, r, permits));
    }
    shared.store.insert(peer.id, with_budget)
}

async fn put(
    shared: &Arc<Shared>,
    inputs: Vec<TensorMeta>,
    bufs: Vec<Bytes>,
    peer: &Peer,
    held: &mut Held,
) -> Result<Vec<HandleInfo>> {
    peer.check_strides(&inputs)?;
    let tensors = protocol::tensors_from_wire(inputs, bufs)?;
    check_dense_sizes(shared, tensors.iter().map(|(n, t)| (n.as_str(), t)))?;
    let bytes = tensors
        .iter()
        .fold(0u64, |n, (_, t)| n.saturating_add(t.data().len() as u64));
    shared
        .store
        .check_room(peer.id, tensors.len() as u64, bytes)?;
    let backend = shared.backend.clone();
    let kept = on_worker(shared, peer, held, "put", move || {
        tensors
            .into_iter()
            .map(|(name, t)| Ok((name, backend.put(t)?)))
            .collect::<Result<Vec<_>>>()
    })
    .await?;
    keep_all(shared, peer, held, kept)
}

async fn fetch(
    shared: &Arc<Shared>,
    id: u64,
    refs: Vec<TensorRef>,
    peer: &Peer,
    held: &mut Held,
) -> Result<Frame> {
    if refs.len() > shared.config.limits.max_tensors as usize {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "{} tensors asked; a reply carries at most {}",
                refs.len(),
                shared.config.limits.max_tensors
            ),
        ));
    }
    let residents = refs
        .iter()
        .map(|r| shared.store.get(peer.id, r))
        .collect::<Result<Vec<_>>>()?;
    let bytes = residents
        .iter()
        .fold(0u64, |n, r| n.saturating_add(r.nbytes()));
    reserve_bytes(shared, peer, "fetch", Some(bytes), held).await?;
    let backend = shared.backend.clone();
    let started = Instant::now();
    let tensors = on_worker(shared, peer, held, "fetch", move || {
        residents
            .iter()
            .enumerate()
            .map(|(i, r)| Ok((i.to_string(), backend.fetch(r)?)))
            .collect::<Result<Vec<_>>>()
    })
    .await?;
    reply(
        id,
        tensors,
        shared.backend.info().device,
        started,
        Vec::new(),
    )
}

/// An `exec` or `run_graph` reply.
fn reply(
    id: u64,
    data: Vec<(String, Tensor)>,
    device: String,
    started: Instant,
    kept: Vec<HandleInfo>,
) -> Result<Frame> {
    let (outputs, tensors) = protocol::tensors_to_wire(data);
    protocol::encode(
        FrameKind::Response,
        id,
        &Response::Exec(ExecResponse {
            outputs,
            device,
            elapsed_s: started.elapsed().as_secs_f64(),
            kept,
        }),
        tensors,
    )
}

/// Refuses a `keep` list naming a result the request does not produce.
fn check_keep(keep: &Keep, produced: &[(String, Operand)]) -> Result<()> {
    if let Keep::Some(names) = keep {
        for n in names {
            if !produced.iter().any(|(p, _)| p == n) {
                let have: Vec<&str> = produced.iter().map(|(p, _)| p.as_str()).collect();
                return Err(Error::bad_argument(format!(
                    "keep names '{}', but the results are {}",
                    crate::error::clip(n, 64),
                    have.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Results to send back, and results to keep, by name.
type Split = (Vec<(String, Tensor)>, Vec<(String, Resident)>);

/// Splits results into data to send and tensors to keep.
fn split(outputs: Vec<(String, Operand)>) -> Split {
    let mut data = Vec::new();
    let mut kept = Vec::new();
    for (name, o) in outputs {
        match o {
            Operand::Host(t) => data.push((name, t)),
            Operand::Resident(r) => kept.push((name, r)),
        }
    }
    (data, kept)
}

/// `exec` with `refs` or `keep`.
pub(super) async fn exec(
    shared: &Arc<Shared>,
    id: u64,
    req: ExecRequest,
    bufs: Vec<Bytes>,
    peer: &Peer,
    held: &mut Held,
) -> Result<Frame> {
    peer.check_resident()?;
    let ExecRequest {
        op,
        inputs,
        kwargs,
        refs,
        keep,
    } = req;
    let entry = shared.backend.ops().lookup(&op)?;
    let operands = operands(shared, peer, inputs, bufs, refs)?;
    let args = ops::bind(&entry.spec, operands, kwargs)?;
    let bound = entry
        .spec
        .output_bound(args.all_tensors().map(|t| t.shape()));
    let estimate = super::outputs_estimate(&op, bound, || {
        shared.backend.operand_output_bytes(entry, &args)
    })?;
    reserve_bytes(shared, peer, &op, estimate, held).await?;
    let started = Instant::now();
    let backend = shared.backend.clone();
    let keep2 = keep.clone();
    let out = on_worker(shared, peer, held, &format!("op '{op}'"), move || {
        backend.exec_operands(entry, args, &|n| keep2.keeps(n))
    })
    .await?;
    check_keep(&keep, &out.outputs)?;
    let (data, kept) = split(out.outputs);
    let kept = keep_all(shared, peer, held, kept)?;
    reply(id, data, out.device, started, kept)
}

/// `infer` with `refs` or `keep`: models take host tensors, so referenced
/// inputs are fetched first, and kept results put back.
pub(super) async fn infer(
    shared: &Arc<Shared>,
    id: u64,
    req: InferRequest,
    bufs: Vec<Bytes>,
    peer: &Peer,
    held: &mut Held,
) -> Result<Frame> {
    peer.check_resident()?;
    let InferRequest {
        name,
        inputs,
        refs,
        keep,
    } = req;
    let operands = operands(shared, peer, inputs, bufs, refs)?;
    shared.models.get(&name)?;
    let started = Instant::now();
    let s = shared.clone();
    let keep2 = keep.clone();
    let what = format!("model '{name}'");
    let outputs = on_worker(shared, peer, held, &what, move || {
        let inputs = operands
            .into_iter()
            .map(|(n, o)| match o {
                Operand::Host(t) => Ok((n, t)),
                Operand::Resident(r) => Ok((n, s.backend.fetch(&r)?)),
            })
            .collect::<Result<Vec<_>>>()?;
        s.models
            .infer(&name, inputs)?
            .into_iter()
            .map(|(n, t)| {
                let o = if keep2.keeps(&n) {
                    Operand::Resident(s.backend.put(t)?)
                } else {
                    Operand::Host(t)
                };
                Ok((n, o))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await?;
    check_keep(&keep, &outputs)?;
    let (data, kept) = split(outputs);
    let kept = keep_all(shared, peer, held, kept)?;
    reply(id, data, shared.backend.info().device, started, kept)
}

/// `run_graph`.
async fn run_graph(
    shared: &Arc<Shared>,
    id: u64,
    req: RunGraphRequest,
    bufs: Vec<Bytes>,
    peer: &Peer,
    held: &mut Held,
) -> Result<Frame> {
    let RunGraphRequest {
        graph,
        inputs,
        refs,
        keep,
    } = req;
    let graph = match graph {
        GraphSpec::Inline(g) => Arc::new(check(shared.backend.ops(), g)?),
        GraphSpec::Id(gid) => peer
            .graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .graphs
            .get(&gid)
            .cloned()
            .ok_or_else(|| {
                Error::bad_argument(format!("no graph {gid} is registered on this connection"))
            })?,
    };
    let given: BTreeMap<String, Operand> = operands(shared, peer, inputs, bufs, refs)?
        .into_iter()
        .collect();
    for name in &graph.inputs {
        if !given.contains_key(name) {
            return Err(Error::bad_argument(format!(
                "the graph's input '{}' is not given",
                crate::error::clip(name, 64)
            )));
        }
    }
    if let Some(extra) = given.keys().find(|k| !graph.inputs.contains(*k)) {
        return Err(Error::bad_argument(format!(
            "'{}' is not an input of the graph (its inputs: {})",
            crate::error::clip(extra, 64),
            graph.inputs.iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    if let Keep::Some(names) = &keep
        && let Some(n) = names
            .iter()
            .find(|n| !graph.outputs.iter().any(|(o, _)| o == *n))
    {
        return Err(Error::bad_argument(format!(
            "keep names '{}', which is not an output of the graph",
            crate::error::clip(n, 64)
        )));
    }
    let started = Instant::now();
    let s = shared.clone();
    let keep2 = keep.clone();
    let handle = tokio::runtime::Handle::current();
    let outputs = on_worker(shared, peer, held, "graph", move || {
        run_steps(&s, &handle, &graph, given, &keep2)
    })
    .await?;
    let (data, kept) = split(outputs);
    let kept = keep_all(shared, peer, held, kept)?;
    reply(id, data, shared.backend.info().device, started, kept)
}

/// Runs a checked graph's steps in order (on a worker thread). Each step's
/// outputs take the memory budget their estimate says, while they live.
fn run_steps(
    shared: &Shared,
    rt: &tokio::runtime::Handle,
    graph: &Checked,
    given: BTreeMap<String, Operand>,
    keep: &Keep,
) -> Result<Vec<(String, Operand)>> {
    let backend = &shared.backend;
    // Each step's results, with the budget they hold.
    let mut results: Vec<HashMap<String, Operand>> = Vec::with_capacity(graph.steps.len());
    let mut budget: Vec<Option<OwnedSemaphorePermit>> = Vec::with_capacity(graph.steps.len());
    let get = |results: &[HashMap<String, Operand>], src: &Source| -> Result<Operand> {
        match src {
            Source::Input(n) => Ok(given.get(n).cloned().expect("checked")),
            Source::Step(j, n) => results[*j as usize].get(n).cloned().ok_or_else(|| {
                Error::bad_argument(format!(
                    "step {j} returned no result '{}'",
                    crate::error::clip(n, 64)
                ))
            }),
        }
    };
    for (i, step) in graph.steps.iter().enumerate() {
        let op = step.entry.spec.name;
        let inputs = step
            .inputs
            .iter()
            .map(|(k, src)| Ok((k.clone(), get(&results, src)?)))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| step_error(i, op, e))?;
        let args = ops::bind(&step.entry.spec, inputs, step.kwargs.clone())
            .map_err(|e| step_error(i, op, e))?;
        let estimate = backend.operand_output_bytes(step.entry, &args).or_else(|| {
            step.entry
                .spec
                .output_bound(args.all_tensors().map(|t| t.shape()))
        });
        let permit = match estimate.filter(|&b| b > 0) {
            None => None,
            Some(b) => {
                let wait = shared.config.budget_wait;
                let got = shared.budget.try_acquire(b).or_else(|| {
                    rt.block_on(async {
                        tokio::time::timeout(wait, shared.budget.acquire(b))
                            .await
                            .ok()
                            .flatten()
                    })
                });
                Some(got.ok_or_else(|| {
                    step_error(
                        i,
                        op,
                        Error::new(
                            ErrorCode::Busy,
                            format!("its outputs need {b} bytes of the memory budget, not free within {:.0} s", wait.as_secs_f64()),
                        ),
                    )
                })?)
            }
        };
        let out = backend
            .exec_operands(step.entry, args, &|_| true)
            .map_err(|e| step_error(i, op, e))?;
        results.push(out.outputs.into_iter().collect());
        budget.push(permit);
        // Results no later step reads are freed now.
        for (j, name) in &graph.release_after[i] {
            results[*j as usize].remove(name);
            if results[*j as usize].is_empty() {
                budget[*j as usize] = None;
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|(name, src)| {
            let o = get(&results, src)?;
            let o = match (keep.keeps(name), o) {
                (true, Operand::Host(t)) => Operand::Resident(backend.put(t)?),
                (false, Operand::Resident(r)) => Operand::Host(backend.fetch(&r)?),
                (_, o) => o,
            };
            Ok((name.clone(), o))
        })
        .collect()
}
