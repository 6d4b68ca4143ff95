//! Typed requests: each kind of [`Request`] as a type that names its reply.
//!
//! An [`Rpc`] turns itself into the wire's [`Request`] (and the tensor
//! buffers it carries) and reads its own reply out of a [`Response`]. The
//! wire format is the [`Request`] / [`Response`] enums' and nothing here
//! changes it: [`Health`] is sent as `Request::Health`, byte for byte.
//!
//! Callers (the client, the cluster, the HTTP routes, the Python classes)
//! go through these types instead of matching on [`Response`] themselves,
//! so the reply of each kind is read in one place. A new kind of request is
//! a variant of [`Request`], a type here, its arm in the server, and (when
//! it deserves a short name) one method of
//! [`Caller`](crate::client::Caller).
//!
//! | type | request | reply |
//! |---|---|---|
//! | [`Health`] | `health` | [`HealthInfo`] |
//! | [`Stats`] | `stats` | [`StatsInfo`] |
//! | [`ListOps`] / [`OpNames`] | `list_ops` | `Vec<`[`OpSummary`]`>` / `Vec<String>` |
//! | [`DescribeOp`] | `describe_op` | [`OpInfo`] |
//! | [`Call`] | `exec` | [`Outputs`] |
//! | [`Infer`] | `infer` | [`Outputs`] |
//! | [`LoadModel`] | `load_model` | [`model::ModelInfo`] |
//! | [`ListModels`] | `list_models` | `Vec<`[`model::ModelInfo`]`>` |
//! | [`ModelInfo`] | `model_info` | [`model::ModelInfo`] |
//! | [`UnloadModel`] | `unload_model` | `()` |
//! | [`Metrics`] | `metrics` | [`MetricsSnapshot`] |
//! | [`Put`] | `put` | `Vec<`[`HandleInfo`]`>` |
//! | [`Fetch`] | `fetch` | `Vec<`[`Tensor`]`>` |
//! | [`Free`] | `free` | [`Freed`] |
//! | [`Describe`] | `describe` | `Vec<`[`HandleInfo`]`>` |
//! | [`Share`] | `share` | [`HandleInfo`] |
//! | [`RegisterGraph`] | `register_graph` | graph id (`u64`) |
//! | [`RunGraph`] | `run_graph` | [`Outputs`] |
//! | [`Generate`] | `generate` | [`model::GenerateSummary`] (streamed: [`Step`](model::Step)s first) |
//! | [`Encode`] | `encode` | ids (`Vec<i64>`) |
//! | [`Decode`] | `decode` | text (`String`) |
//! | [`History`] | `history` | [`HistorySnapshot`] |
//!
//! [`Call`], [`Infer`] and [`RunGraph`] take server-resident tensors as
//! arguments ([`TensorRef`], from a [`HandleInfo`]) and keep results on the
//! server ([`Keep`]); kept results come back in [`Outputs::kept`].
//!
//! No I/O: these are conversions, testable without sockets.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{
    ExecRequest, ExecResponse, GenerateCall, Graph, GraphSpec, HandleInfo, HealthInfo,
    HistorySnapshot, InferRequest, Keep, MetricsSnapshot, OpSummary, Request, RequestKind,
    Response, RunGraphRequest, StatsInfo, TensorRef, tensors_from_wire, tensors_to_wire,
};
use crate::error::{Error, Result};
use crate::model::{self, LoadRequest};
use crate::ops::OpInfo;
use crate::tensor::Tensor;
use crate::value::Value;

/// A request typed with its reply.
pub trait Rpc: Send + 'static {
    /// What the request returns when it succeeds.
    type Reply: Send + 'static;
    /// The request's kind.
    const KIND: RequestKind;

    /// The request's header and the tensor buffers the frame carries.
    fn into_request(self) -> (Request, Vec<Bytes>);

    /// The reply, from a response header and the tensor buffers of its
    /// frame. An error response is its error; a response of another kind is
    /// a [`Protocol`](crate::ErrorCode::Protocol) error.
    fn from_response(response: Response, tensors: Vec<Bytes>) -> Result<Self::Reply>;
}

/// The error for a response that is not `kind`'s reply.
fn unexpected(kind: RequestKind, response: Response) -> Error {
    match response {
        Response::Error(e) => e,
        other => Error::protocol(format!("unexpected reply to {}: {other:?}", kind.name())),
    }
}

/// Implements [`Rpc`] for a request whose reply is one variant of
/// [`Response`] and carries no tensors.
macro_rules! rpc {
    ($ty:ty, $kind:ident -> $reply:ty,
     |$this:pat_param| $request:expr,
     $pattern:pat => $value:expr) => {
        impl Rpc for $ty {
            type Reply = $reply;
            const KIND: RequestKind = RequestKind::$kind;

            fn into_request(self) -> (Request, Vec<Bytes>) {
                let $this = self;
                ($request, Vec::new())
            }

            fn from_response(response: Response, _: Vec<Bytes>) -> Result<$reply> {
                match response {
                    $pattern => Ok($value),
                    other => Err(unexpected(Self::KIND, other)),
                }
            }
        }
    };
}

/// `health`: the server's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health;
rpc!(Health, Health -> HealthInfo, |_| Request::Health, Response::Health(h) => h);

/// `stats`: host, process and accelerator statistics of the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats;
rpc!(Stats, Stats -> StatsInfo, |_| Request::Stats, Response::Stats(s) => s);

/// `list_ops`: the whitelist with categories and docs, sorted by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListOps;
rpc!(ListOps, ListOps -> Vec<OpSummary>, |_| Request::ListOps,
     Response::Ops { ops } => ops);

/// `list_ops`, answered with the ops' names only (sorted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpNames;
rpc!(OpNames, ListOps -> Vec<String>, |_| Request::ListOps,
     Response::Ops { ops } => ops.into_iter().map(|o| o.name).collect());

/// `describe_op`: one op's signature and doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeOp {
    /// The op's name.
    pub op: String,
}
rpc!(DescribeOp, DescribeOp -> OpInfo, |DescribeOp { op }| Request::DescribeOp { op },
     Response::Op(info) => info);

/// `load_model`: loads a model (replacing one of the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadModel(pub LoadRequest);
rpc!(LoadModel, LoadModel -> model::ModelInfo, |LoadModel(r)| Request::LoadModel(r),
     Response::Model(info) => info);

/// `list_models`: the loaded models, sorted by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListModels;
rpc!(ListModels, ListModels -> Vec<model::ModelInfo>, |_| Request::ListModels,
     Response::Models { models } => models);

/// `model_info`: one loaded model's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model's name.
    pub name: String,
}
rpc!(ModelInfo, ModelInfo -> model::ModelInfo, |ModelInfo { name }| Request::ModelInfo { name },
     Response::Model(info) => info);

/// `unload_model`: unloads a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnloadModel {
    /// The model's name.
    pub name: String,
}
rpc!(UnloadModel, UnloadModel -> (), |UnloadModel { name }| Request::UnloadModel { name },
     Response::Unloaded { .. } => ());

/// `metrics`: the server's request counts, latencies, errors and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics;
rpc!(Metrics, Metrics -> MetricsSnapshot, |_| Request::Metrics, Response::Metrics(m) => m);

/// The results of `exec`, `infer` and `run_graph`.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// Results sent back, by name, in the server's order: `"output"` for
    /// one tensor, `"0"`, `"1"`, ... for a tuple (or a model's own names).
    pub tensors: Vec<(String, Tensor)>,
    /// Results kept on the server (as the request's [`Keep`] asked).
    pub kept: Vec<HandleInfo>,
    /// The device that ran the op.
    pub device: String,
    /// Seconds the op took on the server.
    pub elapsed_s: f64,
}

impl Outputs {
    /// The result called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The single result `"output"`.
    pub fn output(&self) -> Result<&Tensor> {
        self.get("output").ok_or_else(|| {
            let names: Vec<&str> = self.tensors.iter().map(|(n, _)| n.as_str()).collect();
            Error::bad_argument(format!(
                "no result named 'output' (results: {})",
                names.join(", ")
            ))
        })
    }

    /// The results as a map.
    pub fn into_map(self) -> BTreeMap<String, Tensor> {
        self.tensors.into_iter().collect()
    }

    /// The kept result called `name`.
    pub fn handle(&self, name: &str) -> Option<&HandleInfo> {
        self.kept.iter().find(|h| h.name == name)
    }

    /// The reply of `exec` or `infer` (`Response::Exec`) with its tensors.
    fn from_response(kind: RequestKind, response: Response, tensors: Vec<Bytes>) -> Result<Self> {
        match response {
            Response::Exec(ExecResponse {
                outputs,
                device,
                elapsed_s,
                kept,
            }) => Ok(Outputs {
                tensors: tensors_from_wire(outputs, tensors)?,
                kept,
                device,
                elapsed_s,
            }),
            other => Err(unexpected(kind, other)),
        }
    }
}

/// `exec`: one whitelisted op, under construction: positional tensors with
/// [`Call::arg`], keyword tensors with [`Call::input`], scalars with
/// [`Call::kwarg`].
#[derive(Debug, Clone)]
pub struct Call {
    op: String,
    inputs: Vec<(String, Tensor)>,
    refs: BTreeMap<String, TensorRef>,
    positional: usize,
    kwargs: BTreeMap<String, Value>,
    keep: Keep,
}

impl Call {
    /// A call of `op` without arguments yet.
    pub fn new(op: impl Into<String>) -> Call {
        Call {
            op: op.into(),
            inputs: Vec::new(),
            refs: BTreeMap::new(),
            positional: 0,
            kwargs: BTreeMap::new(),
            keep: Keep::None,
        }
    }

    /// A call of `op` with `inputs` (`"0"`, `"1"`, ... positional, other
    /// names keyword) and scalar `kwargs`.
    pub fn with<K: Into<String>, V: Into<String>>(
        op: impl Into<String>,
        inputs: impl IntoIterator<Item = (K, Tensor)>,
        kwargs: impl IntoIterator<Item = (V, Value)>,
    ) -> Call {
        let inputs: Vec<(String, Tensor)> =
            inputs.into_iter().map(|(k, t)| (k.into(), t)).collect();
        Call {
            op: op.into(),
            positional: inputs
                .iter()
                .filter(|(n, _)| n.parse::<usize>().is_ok())
                .count(),
            inputs,
            refs: BTreeMap::new(),
            kwargs: kwargs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            keep: Keep::None,
        }
    }

    /// The op's name.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// Adds the next positional tensor (`"0"`, then `"1"`, ...).
    pub fn arg(mut self, t: Tensor) -> Call {
        self.inputs.push((self.positional.to_string(), t));
        self.positional += 1;
        self
    }

    /// Adds a named tensor (`"weight"`, ...).
    pub fn input(mut self, name: impl Into<String>, t: Tensor) -> Call {
        self.inputs.push((name.into(), t));
        self
    }

    /// Adds a scalar keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, v: impl Into<Value>) -> Call {
        self.kwargs.insert(name.into(), v.into());
        self
    }

    /// Adds the next positional argument as a server-resident tensor.
    pub fn arg_ref(mut self, r: impl Into<TensorRef>) -> Call {
        self.refs.insert(self.positional.to_string(), r.into());
        self.positional += 1;
        self
    }

    /// Adds a named argument as a server-resident tensor.
    pub fn input_ref(mut self, name: impl Into<String>, r: impl Into<TensorRef>) -> Call {
        self.refs.insert(name.into(), r.into());
        self
    }

    /// Keeps results on the server instead of sending them back
    /// ([`Keep::All`], or the named ones).
    pub fn keep(mut self, keep: Keep) -> Call {
        self.keep = keep;
        self
    }
}

impl Rpc for Call {
    type Reply = Outputs;
    const KIND: RequestKind = RequestKind::Exec;

    fn into_request(self) -> (Request, Vec<Bytes>) {
        let (inputs, tensors) = tensors_to_wire(self.inputs);
        let request = Request::Exec(ExecRequest {
            op: self.op,
            inputs,
            kwargs: self.kwargs,
            refs: self.refs,
            keep: self.keep,
        });
        (request, tensors)
    }

    fn from_response(response: Response, tensors: Vec<Bytes>) -> Result<Outputs> {
        Outputs::from_response(Self::KIND, response, tensors)
    }
}

/// `infer`: a forward pass of a loaded model.
#[derive(Debug, Clone)]
pub struct Infer {
    /// The model's name.
    pub name: String,
    /// Its inputs: `"0"`, `"1"`, ... positional, other names keyword
    /// (`input_ids`, ...).
    pub inputs: Vec<(String, Tensor)>,
    /// Inputs that are server-resident tensors.
    pub refs: BTreeMap<String, TensorRef>,
    /// Results kept on the server.
    pub keep: Keep,
}

impl Infer {
    /// A forward pass of model `name` on `inputs`.
    pub fn new<K: Into<String>>(
        name: impl Into<String>,
        inputs: impl IntoIterator<Item = (K, Tensor)>,
    ) -> Infer {
        Infer {
            name: name.into(),
            inputs: inputs.into_iter().map(|(k, t)| (k.into(), t)).collect(),
            refs: BTreeMap::new(),
            keep: Keep::None,
        }
    }
}

impl Rpc for Infer {
    type Reply = Outputs;
    const KIND: RequestKind = RequestKind::Infer;

    fn into_request(self) -> (Request, Vec<Bytes>) {
        let (inputs, tensors) = tensors_to_wire(self.inputs);
        let request = Request::Infer(InferRequest {
            name: self.name,
            inputs,
            refs: self.refs,
            keep: self.keep,
        });
        (request, tensors)
    }

    fn from_response(response: Response, tensors: Vec<Bytes>) -> Result<Outputs> {
        Outputs::from_response(Self::KIND, response, tensors)
    }
}

impl From<&HandleInfo> for TensorRef {
    fn from(h: &HandleInfo) -> TensorRef {
        TensorRef::Handle(h.handle)
    }
}

impl From<HandleInfo> for TensorRef {
    fn from(h: HandleInfo) -> TensorRef {
        TensorRef::Handle(h.handle)
    }
}

impl From<u64> for TensorRef {
    fn from(h: u64) -> TensorRef {
        TensorRef::Handle(h)
    }
}

/// `put`: keeps tensors on the server; the reply describes each (handle,
/// shape, dtype, device), in order.
#[derive(Debug, Clone, Default)]
pub struct Put {
    /// The tensors, by name (names are only echoed back).
    pub tensors: Vec<(String, Tensor)>,
}

impl Put {
    /// Keeps one tensor.
    pub fn one(t: Tensor) -> Put {
        Put {
            tensors: vec![("0".to_owned(), t)],
        }
    }
}

impl Rpc for Put {
    type Reply = Vec<HandleInfo>;
    const KIND: RequestKind = RequestKind::Put;

    fn into_request(self) -> (Request, Vec<Bytes>) {
        let (inputs, tensors) = tensors_to_wire(self.tensors);
        (Request::Put { inputs }, tensors)
    }

    fn from_response(response: Response, _: Vec<Bytes>) -> Result<Vec<HandleInfo>> {
        match response {
            Response::Handles { handles } => Ok(handles),
            other => Err(unexpected(Self::KIND, other)),
        }
    }
}

/// `fetch`: server-resident tensors' data, in the order asked.
#[derive(Debug, Clone, Default)]
pub struct Fetch {
    /// The tensors.
    pub refs: Vec<TensorRef>,
}

impl Rpc for Fetch {
    type Reply = Vec<Tensor>;
    const KIND: RequestKind = RequestKind::Fetch;

    fn into_request(self) -> (Request, Vec<Bytes>) {
        (Request::Fetch { refs: self.refs }, Vec::new())
    }

    fn from_response(response: Response, tensors: Vec<Bytes>) -> Result<Vec<Tensor>> {
        let out = Outputs::from_response(Self::KIND, response, tensors)?;
        Ok(out.tensors.into_iter().map(|(_, t)| t).collect())
    }
}

/// What `free` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freed {
    /// Tensors freed.
    pub freed: u64,
    /// References that named nothing this connection may free.
    pub unknown: Vec<TensorRef>,
}

/// `free`: frees server-resident tensors, any number at once.
#[derive(Debug, Clone, Default)]
pub struct Free {
    /// The tensors.
    pub refs: Vec<TensorRef>,
}

rpc!(Free, Free -> Freed, |Free { refs }| Request::Free { refs },
     Response::Freed { freed, unknown } => Freed { freed, unknown });

/// `share`: makes a handle of this connection usable by every connection
/// under `name` (it then outlives the connection, until it is freed).
#[derive(Debug, Clone)]
pub struct Share {
    /// The handle.
    pub handle: u64,
    /// The name.
    pub name: String,
}

impl Rpc for Share {
    type Reply = HandleInfo;
    const KIND: RequestKind = RequestKind::Share;

    fn into_request(self) -> (Request, Vec<Bytes>) {
        let Share { handle, name } = self;
        (Request::Share { handle, name }, Vec::new())
    }

    fn from_response(response: Response, _: Vec<Bytes>) -> Result<HandleInfo> {
        match response {
            Response::Handles { mut handles } if handles.len() == 1 => {
                Ok(handles.pop().expect("one"))
            }
            other => Err(unexpected(Self::KIND, other)),
        }
    }
}

/// `describe`: what server-resident tensors are (handles or shared names),
/// in the order asked; a shared tensor's `name` is its shared name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Describe {
    /// The tensors.
    pub refs: Vec<TensorRef>,
}
rpc!(Describe, Describe -> Vec<HandleInfo>, |Describe { refs }| Request::Describe { refs },
     Response::Handles { handles } => handles);

/// `register_graph`: validates a graph and keeps it on the connection;
/// the reply is its id for [`RunGraph::registered`].
#[derive(Debug, Clone)]
pub struct RegisterGraph(pub Graph);

rpc!(RegisterGraph, RegisterGraph -> u64, |RegisterGraph(graph)| Request::RegisterGraph { graph },
     Response::GraphRegistered { id } => id);

/// `run_graph`: every step of a graph in one request.
#[derive(Debug, Clone)]
pub struct RunGraph {
    graph: GraphSpec,
    inputs: Vec<(String, Tensor)>,
    refs: BTreeMap<String, TensorRef>,
    keep: Keep,
}

impl RunGraph {
    /// Runs `graph` (validated on every run; register it to skip that).
    pub fn inline(graph: Graph) -> RunGraph {
        RunGraph::of(GraphSpec::Inline(graph))
    }

    /// Runs the graph registered as `id` on this connection.
    pub fn registered(id: u64) -> RunGraph {
        RunGraph::of(GraphSpec::Id(id))
    }

    fn of(graph: GraphSpec) -> RunGraph {
        RunGraph {
            graph,
            inputs: Vec::new(),
            refs: BTreeMap::new(),
            keep: Keep::None,
        }
    }

    /// Gives the graph input `name` as data.
    pub fn input(mut self, name: impl Into<String>, t: Tensor) -> RunGraph {
        self.inputs.push((name.into(), t));
        self
    }

    /// Gives the graph input `name` as a server-resident tensor.
    pub fn input_ref(mut self, name: impl Into<String>, r: impl Into<TensorRef>) -> RunGraph {
        self.refs.insert(name.into(), r.into());
        self
    }

    /// Keeps outputs on the server.
    pub fn keep(mut self, keep: Keep) -> RunGraph {
        self.keep = keep;
        self
    }
}

impl Rpc for RunGraph {
    type Reply = Outputs;
    const KIND: RequestKind = RequestKind::RunGraph;

    fn into_request(self) -> (Request, Vec<Bytes>) {
        let (inputs, tensors) = tensors_to_wire(self.inputs);
        let request = Request::RunGraph(RunGraphRequest {
            graph: self.graph,
            inputs,
            refs: self.refs,
            keep: self.keep,
        });
        (request, tensors)
    }

    fn from_response(response: Response, tensors: Vec<Bytes>) -> Result<Outputs> {
        Outputs::from_response(Self::KIND, response, tensors)
    }
}

/// `generate`: text from a loaded model, as one reply (the summary). For
/// the steps as they come, send it with
/// [`Service::generate_stream`](crate::client::Service::generate_stream).
#[derive(Debug, Clone, PartialEq)]
pub struct Generate {
    /// The model's name.
    pub name: String,
    /// The prompts and options.
    pub request: model::GenerateRequest,
}

impl Generate {
    /// The wire request; `stream` asks for the steps as reply frames.
    pub fn to_request(self, stream: bool) -> Request {
        Request::Generate(GenerateCall {
            name: self.name,
            request: self.request,
            stream,
        })
    }
}

rpc!(Generate, Generate -> model::GenerateSummary, |g| g.to_request(false),
     Response::Generated(summary) => summary);

/// `encode`: text as token ids, by a loaded model's tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encode {
    /// The model's name.
    pub name: String,
    /// The text.
    pub text: String,
    /// Add the tokenizer's special tokens (what `tokenizer(text)` does).
    pub add_special_tokens: bool,
}
rpc!(Encode, Encode -> Vec<i64>,
     |Encode { name, text, add_special_tokens }| Request::Encode { name, text, add_special_tokens },
     Response::Tokens { ids } => ids);

/// `decode`: token ids as text, by a loaded model's tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decode {
    /// The model's name.
    pub name: String,
    /// The ids.
    pub ids: Vec<i64>,
    /// Leave special tokens out.
    pub skip_special_tokens: bool,
}
rpc!(Decode, Decode -> String,
     |Decode { name, ids, skip_special_tokens }| Request::Decode { name, ids, skip_special_tokens },
     Response::Text { text } => text);

/// `history`: the server's recent samples (rates, latencies, memory, GPU)
/// and each kind's request rate over the last
/// [`RATE_WINDOW`](crate::history::RATE_WINDOW).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Only the samples numbered this or later (0: every sample kept; a
    /// previous answer's `next_seq`: only the new ones).
    pub since: u64,
}
rpc!(History, History -> HistorySnapshot,
     |History { since }| Request::History { since },
     Response::History(h) => h);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use crate::protocol::{FrameKind, encode};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The typed requests encode to the golden frames, byte for byte.
    fn same_as_golden(name: &str, id: u64, rpc: impl Rpc) {
        let path = format!("{}/tests/golden/{name}.hex", env!("CARGO_MANIFEST_DIR"));
        let want = std::fs::read_to_string(&path).unwrap();
        let (request, tensors) = rpc.into_request();
        let frame = encode(FrameKind::Request, id, &request, tensors).unwrap();
        assert_eq!(hex(&frame.to_vec()), want.trim(), "{name}");
    }

    #[test]
    fn golden_frames_unchanged() {
        same_as_golden("health_request", 1, Health);
        same_as_golden("metrics_request", 2, Metrics);
        let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let b = Tensor::scalar(7i64);
        let call = Call::new("matmul")
            .arg(a)
            .input("other", b)
            .kwarg("dim", -1)
            .kwarg("dims", Value::List(vec![Value::Int(0), Value::Int(1)]))
            .kwarg("keepdim", true)
            .kwarg("equation", "ij->ji")
            .kwarg("dtype", Value::None)
            .kwarg("alpha", 0.5);
        same_as_golden("exec_request", 42, call);
    }

    /// Every request kind has a typed request, which says its kind.
    #[test]
    fn every_kind_is_typed() {
        let t = || Tensor::scalar(1.0f32);
        let typed: Vec<(RequestKind, Request)> = vec![
            (Health::KIND, Health.into_request().0),
            (Stats::KIND, Stats.into_request().0),
            (ListOps::KIND, ListOps.into_request().0),
            (OpNames::KIND, OpNames.into_request().0),
            (
                DescribeOp::KIND,
                DescribeOp { op: "add".into() }.into_request().0,
            ),
            (Call::KIND, Call::new("neg").arg(t()).into_request().0),
            (Infer::KIND, Infer::new("m", [("0", t())]).into_request().0),
            (
                LoadModel::KIND,
                LoadModel(LoadRequest::default()).into_request().0,
            ),
            (ListModels::KIND, ListModels.into_request().0),
            (
                ModelInfo::KIND,
                ModelInfo { name: "m".into() }.into_request().0,
            ),
            (
                UnloadModel::KIND,
                UnloadModel { name: "m".into() }.into_request().0,
            ),
            (Metrics::KIND, Metrics.into_request().0),
            (Put::KIND, Put::one(t()).into_request().0),
            (Fetch::KIND, Fetch::default().into_request().0),
            (Free::KIND, Free::default().into_request().0),
            (
                Share::KIND,
                Share {
                    handle: 1,
                    name: "w".into(),
                }
                .into_request()
                .0,
            ),
            (
                RegisterGraph::KIND,
                RegisterGraph(Graph {
                    steps: vec![],
                    outputs: vec![],
                })
                .into_request()
                .0,
            ),
            (RunGraph::KIND, RunGraph::registered(1).into_request().0),
            (
                Describe::KIND,
                Describe {
                    refs: vec![TensorRef::Handle(1)],
                }
                .into_request()
                .0,
            ),
            (
                Generate::KIND,
                Generate {
                    name: "m".into(),
                    request: Default::default(),
                }
                .into_request()
                .0,
            ),
            (
                Encode::KIND,
                Encode {
                    name: "m".into(),
                    text: "hi".into(),
                    add_special_tokens: true,
                }
                .into_request()
                .0,
            ),
            (
                Decode::KIND,
                Decode {
                    name: "m".into(),
                    ids: vec![1],
                    skip_special_tokens: true,
                }
                .into_request()
                .0,
            ),
            (History::KIND, History { since: 3 }.into_request().0),
        ];
        for (kind, request) in &typed {
            assert_eq!(request.kind(), *kind, "{request:?}");
        }
        for kind in RequestKind::ALL {
            assert!(
                *kind == RequestKind::Unknown || typed.iter().any(|(k, _)| k == kind),
                "{kind:?} has no typed request in protocol::rpc"
            );
        }
    }

    #[test]
    fn replies() {
        let (m, bufs) = tensors_to_wire(vec![("output".into(), Tensor::scalar(2i64))]);
        let reply = Response::Exec(ExecResponse {
            outputs: m,
            device: "cpu".into(),
            elapsed_s: 0.5,
            kept: vec![],
        });
        let out = Call::from_response(reply, bufs).unwrap();
        assert_eq!(out.output().unwrap().to_vec::<i64>().unwrap(), vec![2]);
        assert_eq!(out.device, "cpu");

        let e = Error::new(ErrorCode::UnknownOp, "no");
        assert_eq!(
            Health::from_response(Response::Error(e.clone()), vec![]).unwrap_err(),
            e
        );
        let wrong = Stats::from_response(Response::Unloaded { name: "m".into() }, vec![]);
        let wrong = wrong.unwrap_err();
        assert_eq!(wrong.code, ErrorCode::Protocol);
        assert!(wrong.message.contains("reply to stats"), "{wrong}");
        assert_eq!(
            UnloadModel::from_response(Response::Unloaded { name: "m".into() }, vec![]).unwrap(),
            ()
        );
        let names = OpNames::from_response(
            Response::Ops {
                ops: vec![OpSummary {
                    name: "add".into(),
                    category: "pointwise".into(),
                    doc: String::new(),
                }],
            },
            vec![],
        );
        assert_eq!(names.unwrap(), vec!["add".to_owned()]);
    }
}
