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
pub use crate::metrics::MetricsSnapshot;
use crate::model::{LoadRequest, ModelInfo};
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
    /// Every feature this build supports.
    pub const ALL: &[&str] = &[STRIDED_TENSORS, OUT_OF_ORDER];
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

/// An `exec` request: run one whitelisted op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Op name.
    pub op: String,
    /// Tensor arguments: `"0"`, `"1"`, ... positional, other names keyword.
    pub inputs: Vec<TensorMeta>,
    /// Scalar keyword arguments.
    #[serde(default)]
    pub kwargs: BTreeMap<String, Value>,
}

/// An `infer` request: a forward pass of a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Model name.
    pub name: String,
    /// Input tensors: `"0"`, `"1"`, ... positional, other names keyword
    /// (`input_ids`, `attention_mask`, ...).
    pub inputs: Vec<TensorMeta>,
}

/// A request header.
///
/// Room is left for later protocol versions: server-resident tensors
/// (a `TensorMeta` naming a handle instead of carrying bytes), graphs of ops
/// in one request (a new `graph` kind), streamed replies (frames with
/// [`FLAG_MORE`](super::FLAG_MORE)) and cancellation ([`FrameKind::Cancel`](super::FrameKind::Cancel)).
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
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
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
            Request::Unknown => RequestKind::Unknown,
        }
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
    /// The request failed.
    Error(Error),
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
}
