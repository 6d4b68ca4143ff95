//! Message headers: the msgpack half of a frame.
//!
//! Headers are serde structs encoded with `rmp_serde::to_vec_named` (maps
//! with field names), so a newer peer may add fields that an older one
//! ignores. Request and response kinds are internally tagged by `"type"`;
//! a kind this build does not know decodes as `Unknown` and is answered
//! with [`ErrorCode::Unsupported`](crate::ErrorCode::Unsupported) instead of
//! breaking the connection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
pub use crate::history::HistorySnapshot;
pub use crate::metrics::MetricsSnapshot;
use crate::model::{GenerateRequest, GenerateSummary, LoadRequest, ModelInfo, Step};
use crate::nvml::GpuStats;
use crate::ops::OpInfo;
use crate::value::Value;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest protocol version this build accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// The magic string a `Hello` starts with.
pub const MAGIC: &str = "mymps";

/// Feature names exchanged in the handshake. A peer uses a feature only
/// when both sides list it.
pub mod features {
    /// Tensors may be sent with explicit strides.
    pub const STRIDED_TENSORS: &str = "strided-tensors";
    /// Replies may arrive out of order (always true in protocol 1).
    pub const OUT_OF_ORDER: &str = "out-of-order";
    /// Server-resident tensors: `put`, `fetch`, `free`, `share`, `graph`
    /// requests, and `refs` / `keep` in `exec` and `infer`. A client sends
    /// none of them to a server that did not list this feature (an older
    /// server would ignore `refs` and `keep`).
    pub const RESIDENT_TENSORS: &str = "resident-tensors";
    /// Streamed replies: a request may be answered by several frames, all
    /// but the last with [`FLAG_MORE`](crate::protocol::FLAG_MORE) set
    /// (`generate` with `stream`), and a `Cancel` frame stops the request
    /// of its id. A client asks for no stream from a server that did not
    /// list this feature.
    pub const STREAMED_REPLIES: &str = "streamed-replies";
    /// Every feature this build supports.
    pub const ALL: &[&str] = &[
        STRIDED_TENSORS,
        OUT_OF_ORDER,
        RESIDENT_TENSORS,
        STREAMED_REPLIES,
    ];
}

/// First frame of a connection, client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: String,
    /// Newest protocol version the client speaks.
    pub protocol: u32,
    /// Oldest protocol version the client speaks.
    pub min_protocol: u32,
    /// Features the client supports.
    pub features: Vec<String>,
    /// Client software, e.g. `mymps-rust/0.1.0`.
    pub agent: String,
    /// Authentication token, when the server asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Server → client answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both will speak.
    pub protocol: u32,
    /// Features both support.
    pub features: Vec<String>,
    /// Server software, e.g. `mymps/0.1.0`.
    pub agent: String,
    /// The device the server computes on (`cpu`, `cuda:0`, `mps`).
    pub device: String,
    /// Largest header the server accepts.
    pub max_header_len: u32,
    /// Most tensors per request.
    pub max_tensors: u16,
    /// Largest total of tensor bytes per request.
    pub max_payload: u64,
}

/// A tensor's description in a header; its bytes are the frame's tensor at
/// the same index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMeta {
    /// Argument or result name (`"0"`, `"input"`, `"output"`, ...).
    pub name: String,
    /// numpy dtype name; checked when the tensor is built.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Element strides; absent means C order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strides: Option<Vec<u64>>,
}

/// A server-resident tensor, as a request names it: by the handle the
/// server gave (valid on the connection that made it), or by the name it
/// was shared under (valid on every connection until it is freed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorRef {
    /// A handle from `put`, a kept result, or `share`.
    Handle(u64),
    /// A name given with `share`.
    Shared(String),
}

impl std::fmt::Display for TensorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorRef::Handle(h) => write!(f, "handle {h}"),
            TensorRef::Shared(n) => write!(f, "shared tensor '{}'", crate::error::clip(n, 64)),
        }
    }
}

/// Which results a request keeps on the server (as handles) instead of
/// sending them back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Every result comes back as data (the default; what `exec` always did).
    #[default]
    None,
    /// Every result stays on the server.
    All,
    /// The results with these names stay; the others come back as data.
    Some(Vec<String>),
}

impl Keep {
    /// Whether nothing is kept.
    pub fn is_none(&self) -> bool {
        matches!(self, Keep::None)
    }

    /// Whether the result `name` is kept.
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            Keep::None => false,
            Keep::All => true,
            Keep::Some(names) => names.iter().any(|n| n == name),
        }
    }
}

/// A server-resident tensor as the server describes it: enough for a client
/// to know its shape, dtype and device without asking again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleInfo {
    /// The handle, for later requests ([`TensorRef::Handle`]).
    pub handle: u64,
    /// The result or input name it came from (`"output"`, `"0"`, ...), or
    /// the name it is shared under.
    pub name: String,
    /// numpy dtype name.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// The device whose memory holds it (`cpu`, `cuda:0`, `mps`).
    pub device: String,
}

/// An `exec` request: run one whitelisted op.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Op name.
    pub op: String,
    /// Tensor arguments: `"0"`, `"1"`, ... positional, other names keyword.
    pub inputs: Vec<TensorMeta>,
    /// Scalar keyword arguments.
    #[serde(default)]
    pub kwargs: BTreeMap<String, Value>,
    /// Tensor arguments that are server-resident tensors, by argument name
    /// (names as in `inputs`; a name may not be in both).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, TensorRef>,
    /// Results kept on the server; they come back in the reply's `kept`.
    #[serde(default, skip_serializing_if = "Keep::is_none")]
    pub keep: Keep,
}

/// An `infer` request: a forward pass of a loaded model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Model name.
    pub name: String,
    /// Input tensors: `"0"`, `"1"`, ... positional, other names keyword
    /// (`input_ids`, `attention_mask`, ...).
    pub inputs: Vec<TensorMeta>,
    /// Inputs that are server-resident tensors, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, TensorRef>,
    /// Results kept on the server.
    #[serde(default, skip_serializing_if = "Keep::is_none")]
    pub keep: Keep,
}

/// Where a graph step's input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An input of the graph, by name (given as data or a reference when
    /// the graph runs).
    Input(String),
    /// A result of an earlier step: the step's index and the result's name
    /// (`"output"`, `"0"`, ...).
    Step(u32, String),
}

/// One op of a graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphStep {
    /// Op name.
    pub op: String,
    /// Tensor arguments by argument name (`"0"`, `"1"`, ... positional).
    pub inputs: BTreeMap<String, Source>,
    /// Scalar keyword arguments.
    #[serde(default)]
    pub kwargs: BTreeMap<String, Value>,
}

/// A graph of ops: steps that run in order, each on the graph's inputs and
/// earlier steps' results, and the results it returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// The steps, in the order they run.
    pub steps: Vec<GraphStep>,
    /// The graph's results: a name and where it comes from.
    pub outputs: Vec<(String, Source)>,
}

/// Which graph a `run_graph` request runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphSpec {
    /// A graph registered on this connection with `register_graph`.
    Id(u64),
    /// A graph given in full (validated on every run).
    Inline(Graph),
}

/// A `run_graph` request: every step of a graph in one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunGraphRequest {
    /// The graph.
    pub graph: GraphSpec,
    /// The graph's inputs sent as data.
    pub inputs: Vec<TensorMeta>,
    /// The graph's inputs that are server-resident tensors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, TensorRef>,
    /// Results kept on the server.
    #[serde(default, skip_serializing_if = "Keep::is_none")]
    pub keep: Keep,
}

/// A `generate` request: text from a loaded model's language-model head.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GenerateCall {
    /// Model name.
    pub name: String,
    /// The prompts and options, flattened into the request's map
    /// (`prompts`, `max_new_tokens`, `do_sample`, ...).
    #[serde(flatten)]
    pub request: GenerateRequest,
    /// Stream the steps: one `generate_step` reply frame per new token
    /// (each with [`FLAG_MORE`](crate::protocol::FLAG_MORE)), then the
    /// `generated` summary. Needs [`features::STREAMED_REPLIES`]. Without
    /// it, only the summary comes.
    #[serde(default)]
    pub stream: bool,
}

fn yes() -> bool {
    true
}

/// A request header.
///
/// Server-resident tensors (`put`, `fetch`, `free`, `share`, graphs, and
/// `refs` / `keep` in `exec` and `infer`) need the
/// [`features::RESIDENT_TENSORS`] feature; a streamed `generate` needs
/// [`features::STREAMED_REPLIES`] (its reply frames but the last carry
/// [`FLAG_MORE`](super::FLAG_MORE); a
/// [`FrameKind::Cancel`](super::FrameKind::Cancel) frame stops it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Server status.
    Health,
    /// Host and accelerator statistics.
    Stats,
    /// The op whitelist.
    ListOps,
    /// One op's signature and doc.
    DescribeOp {
        /// Op name.
        op: String,
    },
    /// Run an op.
    Exec(ExecRequest),
    /// Load a model.
    LoadModel(LoadRequest),
    /// A forward pass of a loaded model.
    Infer(InferRequest),
    /// The loaded models.
    ListModels,
    /// One loaded model.
    ModelInfo {
        /// Model name.
        name: String,
    },
    /// Unload a model.
    UnloadModel {
        /// Model name.
        name: String,
    },
    /// The server's metrics (request counts, latencies, errors, gauges).
    Metrics,
    /// Keep tensors on the server; answered with their handles.
    Put {
        /// The tensors (their bytes are the frame's).
        inputs: Vec<TensorMeta>,
    },
    /// Send server-resident tensors back as data (results `"0"`, `"1"`,
    /// ... in the order asked).
    Fetch {
        /// The tensors.
        refs: Vec<TensorRef>,
    },
    /// Describe server-resident tensors (by handle, or by the name they
    /// are shared under): answered with their handles, dtypes, shapes and
    /// devices, in the order asked.
    Describe {
        /// The tensors.
        refs: Vec<TensorRef>,
    },
    /// Free server-resident tensors, any number in one request.
    Free {
        /// The tensors.
        refs: Vec<TensorRef>,
    },
    /// Give a handle of this connection a name that every connection can
    /// use; the tensor then outlives the connection, until it is freed.
    Share {
        /// The handle.
        handle: u64,
        /// The name (unique on the server).
        name: String,
    },
    /// Validate a graph and keep it on this connection; answered with its
    /// id for `run_graph`.
    RegisterGraph {
        /// The graph.
        graph: Graph,
    },
    /// Run a graph.
    RunGraph(RunGraphRequest),
    /// Generate text with a loaded model (see [`GenerateCall`]); answered
    /// with `generated`, after `generate_step` frames when streamed.
    Generate(GenerateCall),
    /// Text as token ids, by a loaded model's tokenizer; answered with
    /// `tokens`.
    Encode {
        /// Model name.
        name: String,
        /// The text.
        text: String,
        /// Add the tokenizer's special tokens (a BOS, ...), as
        /// `tokenizer(text)` does. Default true.
        #[serde(default = "yes")]
        add_special_tokens: bool,
    },
    /// Token ids as text, by a loaded model's tokenizer; answered with
    /// `text`.
    Decode {
        /// Model name.
        name: String,
        /// The ids.
        ids: Vec<i64>,
        /// Leave special tokens (EOS, ...) out. Default true.
        #[serde(default = "yes")]
        skip_special_tokens: bool,
    },
    /// The server's recent history (samples of its rates, latencies,
    /// memory and GPU use, taken on a timer) and each kind's request rate;
    /// answered with `history`.
    History {
        /// Only the samples numbered this or later (0: every sample kept).
        #[serde(default)]
        since: u64,
    },
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
}

/// What any request may carry beside its arguments, at the top level of
/// its map (beside `"type"`): options of how the server treats the request
/// rather than of what it computes, so that every kind takes them the same
/// way and a new kind gets them without a field of its own. The server
/// reads them apart from the [`Request`] (a second look at the same map);
/// an absent key means what a request without it always meant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOptions {
    /// The most milliseconds the request may take, counted from when the
    /// server has read it whole (relative, so that the peers' clocks need
    /// not agree). A request still queued at its deadline is answered
    /// [`Timeout`](crate::ErrorCode::Timeout) and not run; one running is
    /// answered `Timeout` then and its result dropped when it comes (a
    /// kernel is not interrupted); a `generate` stops after the step under
    /// way. Absent: no deadline but the server's own limit, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl RequestOptions {
    /// Whether no option is set (the request's map is then exactly what
    /// it was before options existed).
    pub fn is_empty(&self) -> bool {
        self.timeout_ms.is_none()
    }
}

/// A request header with its [`RequestOptions`], as a client encodes it:
/// the request's map with the options' keys added at its top level.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WithOptions<'a> {
    /// The request.
    #[serde(flatten)]
    pub request: &'a Request,
    /// Its options.
    #[serde(flatten)]
    pub options: RequestOptions,
}

/// Declares [`RequestKind`]: one variant and one name per kind of
/// [`Request`], in one table (metrics size their tables from it).
macro_rules! request_kinds {
    ($($(#[$doc:meta])* $kind:ident => $name:literal,)*) => {
        /// The kind of a [`Request`], without its arguments: what logs and
        /// metrics count requests by.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum RequestKind {
            $($(#[$doc])* $kind,)*
        }

        impl RequestKind {
            /// Every kind, in the order of their numbers (`kind as usize`).
            pub const ALL: &[RequestKind] = &[$(RequestKind::$kind,)*];

            /// The kind's name (`health`, `exec`, ...), as the request's
            /// `type` field spells it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(RequestKind::$kind => $name,)*
                }
            }
        }
    };
}

request_kinds! {
    /// `health`.
    Health => "health",
    /// `stats`.
    Stats => "stats",
    /// `list_ops`.
    ListOps => "list_ops",
    /// `describe_op`.
    DescribeOp => "describe_op",
    /// `exec`.
    Exec => "exec",
    /// `load_model`.
    LoadModel => "load_model",
    /// `infer`.
    Infer => "infer",
    /// `list_models`.
    ListModels => "list_models",
    /// `model_info`.
    ModelInfo => "model_info",
    /// `unload_model`.
    UnloadModel => "unload_model",
    /// `metrics`.
    Metrics => "metrics",
    /// `put`.
    Put => "put",
    /// `fetch`.
    Fetch => "fetch",
    /// `free`.
    Free => "free",
    /// `describe`.
    Describe => "describe",
    /// `share`.
    Share => "share",
    /// `register_graph`.
    RegisterGraph => "register_graph",
    /// `run_graph`.
    RunGraph => "run_graph",
    /// `generate`.
    Generate => "generate",
    /// `encode`.
    Encode => "encode",
    /// `decode`.
    Decode => "decode",
    /// `history`.
    History => "history",
    /// A kind this build does not know, or an undecodable request.
    Unknown => "unknown",
}

impl Request {
    /// The request's kind.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Health => RequestKind::Health,
            Request::Stats => RequestKind::Stats,
            Request::ListOps => RequestKind::ListOps,
            Request::DescribeOp { .. } => RequestKind::DescribeOp,
            Request::Exec(_) => RequestKind::Exec,
            Request::LoadModel(_) => RequestKind::LoadModel,
            Request::Infer(_) => RequestKind::Infer,
            Request::ListModels => RequestKind::ListModels,
            Request::ModelInfo { .. } => RequestKind::ModelInfo,
            Request::UnloadModel { .. } => RequestKind::UnloadModel,
            Request::Metrics => RequestKind::Metrics,
            Request::Put { .. } => RequestKind::Put,
            Request::Fetch { .. } => RequestKind::Fetch,
            Request::Free { .. } => RequestKind::Free,
            Request::Describe { .. } => RequestKind::Describe,
            Request::Share { .. } => RequestKind::Share,
            Request::RegisterGraph { .. } => RequestKind::RegisterGraph,
            Request::RunGraph(_) => RequestKind::RunGraph,
            Request::Generate(_) => RequestKind::Generate,
            Request::Encode { .. } => RequestKind::Encode,
            Request::Decode { .. } => RequestKind::Decode,
            Request::History { .. } => RequestKind::History,
            Request::Unknown => RequestKind::Unknown,
        }
    }

    /// Whether the request needs the [`features::RESIDENT_TENSORS`]
    /// feature (a server without it would refuse it, or ignore its `refs`
    /// and `keep`).
    pub fn uses_resident_tensors(&self) -> bool {
        match self {
            Request::Exec(r) => !r.refs.is_empty() || !r.keep.is_none(),
            Request::Infer(r) => !r.refs.is_empty() || !r.keep.is_none(),
            Request::Put { .. }
            | Request::Fetch { .. }
            | Request::Free { .. }
            | Request::Describe { .. }
            | Request::Share { .. }
            | Request::RegisterGraph { .. }
            | Request::RunGraph(_) => true,
            _ => false,
        }
    }

    /// Whether the request asks for a streamed reply (it needs the
    /// [`features::STREAMED_REPLIES`] feature).
    pub fn streams(&self) -> bool {
        matches!(self, Request::Generate(g) if g.stream)
    }

    /// A short name for logs and metrics.
    pub fn kind_name(&self) -> &'static str {
        self.kind().name()
    }
}

/// Server status, as `health` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// `"ok"` when the server serves requests.
    pub status: String,
    /// mymps version of the server.
    pub version: String,
    /// Protocol version of this connection.
    pub protocol: u32,
    /// Backend name (`tch`).
    pub backend: String,
    /// Device requests run on (`cpu`, `cuda:0`, `mps`).
    pub device: String,
    /// libtorch version.
    pub torch_version: String,
    /// Models loaded.
    pub models_loaded: u64,
    /// Ops in the whitelist.
    pub ops: u64,
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Server-resident tensors held now (every connection's and the shared
    /// ones).
    #[serde(default)]
    pub resident_tensors: u64,
    /// Bytes of the server-resident tensors.
    #[serde(default)]
    pub resident_bytes: u64,
}

/// Host, process and accelerator statistics, as `stats` returns them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatsInfo {
    /// Host CPU use since the previous `stats` call (or server start), %.
    pub cpu_percent: f64,
    /// Logical CPUs.
    pub cpu_count: u64,
    /// 1, 5 and 15 minute load averages.
    pub load_avg: [f64; 3],
    /// Host memory, GB (10^9 bytes, as the first mymps reported).
    pub memory_total_gb: f64,
    /// Host memory in use, GB.
    pub memory_used_gb: f64,
    /// Host memory in use, %.
    pub memory_percent: f64,
    /// The server process's resident memory, MB (2^20 bytes).
    pub process_rss_mb: f64,
    /// The server process's CPU use since the previous `stats` call, %
    /// of one core.
    pub process_cpu_percent: f64,
    /// The device requests run on.
    pub device: String,
    /// Accelerator memory, MB, where the device reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_memory_total_mb: Option<f64>,
    /// Accelerator memory in use (by any process), MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_memory_used_mb: Option<f64>,
    /// Accelerator memory free, MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_memory_free_mb: Option<f64>,
    /// The GPU's utilisation and memory from NVML, where present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuStats>,
}

/// One entry of `list_ops`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpSummary {
    /// Op name.
    pub name: String,
    /// Category (`linalg`, `reduction`, ...).
    pub category: String,
    /// One-line doc.
    pub doc: String,
}

/// The result of `exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Result tensors: `"output"` for one, `"0"`, `"1"`, ... for a tuple.
    pub outputs: Vec<TensorMeta>,
    /// The device that ran the op (differs from the server's device when
    /// the op fell back to the CPU).
    pub device: String,
    /// Seconds spent running the op on the server.
    pub elapsed_s: f64,
    /// Results kept on the server (see [`Keep`]), in the op's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<HandleInfo>,
}

/// A response header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `health`.
    Health(HealthInfo),
    /// Answer to `stats`.
    Stats(StatsInfo),
    /// Answer to `list_ops`, sorted by name.
    Ops {
        /// The ops.
        ops: Vec<OpSummary>,
    },
    /// Answer to `describe_op`.
    Op(OpInfo),
    /// Answer to `exec` and `infer`.
    Exec(ExecResponse),
    /// Answer to `load_model` and `model_info`.
    Model(ModelInfo),
    /// Answer to `list_models`, sorted by name.
    Models {
        /// The loaded models.
        models: Vec<ModelInfo>,
    },
    /// Answer to `unload_model`.
    Unloaded {
        /// The model's name.
        name: String,
    },
    /// Answer to `metrics`.
    Metrics(MetricsSnapshot),
    /// Answer to `put`, `share` and `describe`: the tensors kept.
    Handles {
        /// One per tensor, in the order of the request.
        handles: Vec<HandleInfo>,
    },
    /// Answer to `free`.
    Freed {
        /// Tensors freed.
        freed: u64,
        /// References that named no tensor of this connection (unknown,
        /// already freed, or another connection's handle).
        unknown: Vec<TensorRef>,
    },
    /// Answer to `register_graph`.
    GraphRegistered {
        /// The graph's id on this connection.
        id: u64,
    },
    /// One step of a streamed `generate`: a frame with
    /// [`FLAG_MORE`](crate::protocol::FLAG_MORE); the `generated` frame
    /// ends the stream.
    GenerateStep(Step),
    /// Answer to `generate`: what each sequence got, and why it ended.
    Generated(GenerateSummary),
    /// Answer to `encode`.
    Tokens {
        /// The ids.
        ids: Vec<i64>,
    },
    /// Answer to `decode`.
    Text {
        /// The text.
        text: String,
    },
    /// Answer to `history`.
    History(HistorySnapshot),
    /// The request failed.
    Error(Error),
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
}
