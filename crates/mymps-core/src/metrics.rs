//! Server metrics: counters and latency histograms that the generic server
//! records around every request, whatever the transport, read back as a
//! [`MetricsSnapshot`] (the `metrics` request) and rendered in the
//! Prometheus text format by [`render_prometheus`].
//!
//! Recording is lock-free: a handful of relaxed atomic additions per request
//! into tables allocated when the server starts (one row per request kind,
//! one per whitelisted op), so nothing a client sends can grow them.
//! Gauges that belong to other parts of the server (models loaded, memory
//! budget, accelerator memory) are read when a snapshot is taken.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::nvml::GpuStats;
use crate::protocol::{Frame, Request, RequestKind};

/// Upper bounds of the latency histogram buckets, nanoseconds (50 µs to
/// 5 min, Prometheus style; a last `+Inf` bucket follows).
pub const LATENCY_BOUNDS_NS: [u64; 20] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    300_000_000_000,
];

/// Buckets of a latency histogram: one per bound, and `+Inf`.
pub const N_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// Error codes 1..=18 have a slot each; any other code shares the last.
const N_ERROR_SLOTS: usize = 19;

fn error_slot(code: ErrorCode) -> usize {
    match code.as_u16() {
        n @ 1..=18 => n as usize - 1,
        _ => N_ERROR_SLOTS - 1,
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; N_BUCKETS],
    sum_ns: AtomicU64,
}

impl Histogram {
    fn record(&self, ns: u64) {
        let i = LATENCY_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(N_BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_s: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

#[derive(Default)]
struct KindCounters {
    errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: Histogram,
}

#[derive(Default)]
struct OpCounters {
    errors: AtomicU64,
    latency: Histogram,
}

/// What a request was, for the tables: its kind and, for `exec`, its op
/// (only ops of the whitelist get a row, so unknown names cannot add any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    kind: u8,
    op: Option<u32>,
}

impl Default for Label {
    /// An undecodable request (kind `unknown`).
    fn default() -> Label {
        Label {
            kind: RequestKind::Unknown as u8,
            op: None,
        }
    }
}

/// A request being handled: when it started and how many bytes it came in.
#[derive(Debug)]
#[must_use = "pass it to Metrics::finish"]
pub struct RequestTimer {
    started: Instant,
    bytes_in: u64,
}

/// Server-wide counters and histograms, recorded by the generic server.
pub struct Metrics {
    kinds: [KindCounters; RequestKind::ALL.len()],
    ops: Box<[OpCounters]>,
    op_names: Box<[String]>,
    op_slots: HashMap<String, u32>,
    errors: [AtomicU64; N_ERROR_SLOTS],
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    handshakes_refused: AtomicU64,
    frames_refused: AtomicU64,
    in_flight: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("ops", &self.op_names.len())
            .finish_non_exhaustive()
    }
}

/// Decrements the open-connections gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard<'a>(&'a Metrics);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Figures that other parts of the server own, read when a snapshot is
/// taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// mymps version.
    pub version: String,
    /// Backend name.
    pub backend: String,
    /// Device requests run on.
    pub device: String,
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Models loaded.
    pub models_loaded: u64,
    /// Size of the server's memory budget, bytes.
    pub memory_budget_bytes: u64,
    /// Part of the budget held by requests in flight, bytes.
    pub memory_budget_used_bytes: u64,
    /// Server-resident tensors held.
    pub resident_tensors: u64,
    /// Their bytes.
    pub resident_bytes: u64,
    /// Accelerator memory, bytes (total, free), where the device reports it.
    pub accelerator_memory: Option<(u64, u64)>,
    /// The GPU's utilisation and memory from NVML, where present.
    pub gpu: Option<GpuStats>,
}

/// Every request kind's count, the errors and the latency buckets of all
/// requests, read at one moment without allocating: what the history
/// sampler takes the differences of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Requests answered, per kind (in the order of [`RequestKind::ALL`]).
    pub per_kind: [u64; RequestKind::ALL.len()],
    /// Errors answered (requests, refused frames and handshakes).
    pub errors: u64,
    /// All requests' latency histogram (the buckets of
    /// [`LATENCY_BOUNDS_NS`] and `+Inf`).
    pub latency: [u64; N_BUCKETS],
    /// Requests being handled.
    pub in_flight: u64,
    /// Connections open.
    pub connections_open: u64,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            per_kind: [0; RequestKind::ALL.len()],
            errors: 0,
            latency: [0; N_BUCKETS],
            in_flight: 0,
            connections_open: 0,
        }
    }
}

impl Totals {
    /// Requests answered, all kinds.
    pub fn requests(&self) -> u64 {
        self.per_kind.iter().sum()
    }
}

impl Metrics {
    /// Empty tables, with one row per op name (the server's whitelist).
    pub fn new<'a>(op_names: impl IntoIterator<Item = &'a str>) -> Metrics {
        let op_names: Box<[String]> = op_names.into_iter().map(str::to_owned).collect();
        let op_slots = op_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Metrics {
            kinds: Default::default(),
            ops: op_names.iter().map(|_| OpCounters::default()).collect(),
            op_names,
            op_slots,
            errors: Default::default(),
            connections_total: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            handshakes_refused: AtomicU64::new(0),
            frames_refused: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    /// A connection was accepted; it counts as open until the guard drops.
    pub fn connection(&self) -> ConnectionGuard<'_> {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
        ConnectionGuard(self)
    }

    /// A handshake was refused (bad magic, version or token).
    pub fn handshake_refused(&self, code: ErrorCode) {
        self.handshakes_refused.fetch_add(1, Relaxed);
        self.errors[error_slot(code)].fetch_add(1, Relaxed);
    }

    /// A frame was refused before it became a request (over the limits, or
    /// refused by its transport, e.g. an HTTP body that is not msgpack).
    pub fn frame_refused(&self, code: ErrorCode) {
        self.frames_refused.fetch_add(1, Relaxed);
        self.errors[error_slot(code)].fetch_add(1, Relaxed);
    }

    /// A request frame arrived: starts its clock.
    pub fn start(&self, frame: &Frame) -> RequestTimer {
        self.in_flight.fetch_add(1, Relaxed);
        RequestTimer {
            started: Instant::now(),
            bytes_in: frame.wire_len(),
        }
    }

    /// The label of a decoded request.
    pub fn label(&self, request: &Request) -> Label {
        let op = match request {
            Request::Exec(e) => self.op_slots.get(e.op.as_str()).copied(),
            _ => None,
        };
        Label {
            kind: request.kind() as u8,
            op,
        }
    }

    /// A request was answered with `reply` (an error reply when `error` is
    /// set).
    pub fn finish(
        &self,
        timer: RequestTimer,
        label: Label,
        error: Option<ErrorCode>,
        reply: &Frame,
    ) {
        let ns = u64::try_from(timer.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let k = &self.kinds[label.kind as usize];
        k.latency.record(ns);
        k.bytes_in.fetch_add(timer.bytes_in, Relaxed);
        k.bytes_out.fetch_add(reply.wire_len(), Relaxed);
        let op = label.op.map(|i| &self.ops[i as usize]);
        if let Some(op) = op {
            op.latency.record(ns);
        }
        if let Some(code) = error {
            k.errors.fetch_add(1, Relaxed);
            if let Some(op) = op {
                op.errors.fetch_add(1, Relaxed);
            }
            self.errors[error_slot(code)].fetch_add(1, Relaxed);
        }
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Reads the request counters summed over kinds (each kind's count is
    /// the sum of its buckets, as in [`Metrics::snapshot`]).
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for (i, k) in self.kinds.iter().enumerate() {
            for (b, c) in k.latency.buckets.iter().enumerate() {
                let c = c.load(Relaxed);
                t.per_kind[i] += c;
                t.latency[b] += c;
            }
        }
        t.errors = self.errors.iter().map(|e| e.load(Relaxed)).sum();
        t.in_flight = self.in_flight.load(Relaxed);
        t.connections_open = self.connections_open.load(Relaxed);
        t
    }

    /// Reads every counter. Each histogram's count is the sum of its buckets,
    /// so a snapshot is self-consistent even while requests are recorded.
    pub fn snapshot(&self, gauges: Gauges) -> MetricsSnapshot {
        let requests = RequestKind::ALL
            .iter()
            .zip(&self.kinds)
            .map(|(kind, k)| {
                let latency = k.latency.snapshot();
                KindSnapshot {
                    kind: kind.name().to_owned(),
                    count: latency.count(),
                    errors: k.errors.load(Relaxed),
                    bytes_in: k.bytes_in.load(Relaxed),
                    bytes_out: k.bytes_out.load(Relaxed),
                    latency,
                }
            })
            .collect();
        let ops = self
            .op_names
            .iter()
            .zip(self.ops.iter())
            .filter_map(|(name, o)| {
                let latency = o.latency.snapshot();
                let count = latency.count();
                (count > 0).then(|| OpSnapshot {
                    op: name.clone(),
                    count,
                    errors: o.errors.load(Relaxed),
                    latency,
                })
            })
            .collect();
        let errors = self
            .errors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let count = c.load(Relaxed);
                let code = if i == N_ERROR_SLOTS - 1 {
                    ErrorCode::Other(0)
                } else {
                    ErrorCode::from_u16(i as u16 + 1)
                };
                (count > 0).then(|| ErrorCount {
                    code: code.as_u16(),
                    name: code.name().to_owned(),
                    count,
                })
            })
            .collect();
        MetricsSnapshot {
            version: gauges.version,
            backend: gauges.backend,
            device: gauges.device,
            uptime_s: gauges.uptime_s,
            latency_buckets_s: LATENCY_BOUNDS_NS.iter().map(|&b| b as f64 / 1e9).collect(),
            requests,
            ops,
            errors,
            connections_total: self.connections_total.load(Relaxed),
            connections_open: self.connections_open.load(Relaxed),
            handshakes_refused: self.handshakes_refused.load(Relaxed),
            frames_refused: self.frames_refused.load(Relaxed),
            requests_in_flight: self.in_flight.load(Relaxed),
            models_loaded: gauges.models_loaded,
            memory_budget_bytes: gauges.memory_budget_bytes,
            memory_budget_used_bytes: gauges.memory_budget_used_bytes,
            resident_tensors: gauges.resident_tensors,
            resident_bytes: gauges.resident_bytes,
            accelerator_memory_total_bytes: gauges.accelerator_memory.map(|m| m.0),
            accelerator_memory_free_bytes: gauges.accelerator_memory.map(|m| m.1),
            gpu: gauges.gpu,
        }
    }
}

/// A latency histogram: counts per bucket (not cumulative; the bounds are
/// [`MetricsSnapshot::latency_buckets_s`], plus a last `+Inf` bucket) and
/// the sum of the observed values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistogramSnapshot {
    /// Observations per bucket; one more entry than there are bounds.
    pub counts: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum_s: f64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (0..=1) estimated as Prometheus's
    /// `histogram_quantile` does: linear within the bucket it falls in;
    /// the highest finite bound when it falls in the `+Inf` bucket. `None`
    /// without observations.
    pub fn quantile(&self, bounds: &[f64], q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&hi) = bounds.get(i) else {
                    return bounds.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
                let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lo + (hi - lo) * within);
            }
            below += c;
        }
        bounds.last().copied()
    }
}

/// One request kind's figures.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KindSnapshot {
    /// Request kind (`exec`, `infer`, `health`, ...).
    pub kind: String,
    /// Requests answered.
    pub count: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Bytes received in these requests' frames (prefix, header, tensors).
    pub bytes_in: u64,
    /// Bytes sent in their replies' frames.
    pub bytes_out: u64,
    /// Time from the request read to its reply queued, seconds.
    pub latency: HistogramSnapshot,
}

/// One op's figures (ops run at least once).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OpSnapshot {
    /// Op name.
    pub op: String,
    /// `exec` requests for it.
    pub count: u64,
    /// Those answered with an error.
    pub errors: u64,
    /// Their latency, seconds.
    pub latency: HistogramSnapshot,
}

/// Errors answered with one code.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorCount {
    /// Wire code (0 for codes this server has no name for).
    pub code: u16,
    /// Its name (`unknown_op`, ...).
    pub name: String,
    /// How many.
    pub count: u64,
}

/// Every metric of a server at one moment, as the `metrics` request
/// returns it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSnapshot {
    /// mymps version of the server.
    pub version: String,
    /// Backend name.
    pub backend: String,
    /// Device requests run on.
    pub device: String,
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Upper bounds of the latency buckets, seconds (a `+Inf` bucket
    /// follows).
    pub latency_buckets_s: Vec<f64>,
    /// Per request kind, every kind.
    pub requests: Vec<KindSnapshot>,
    /// Per op of `exec` requests, ops run at least once.
    pub ops: Vec<OpSnapshot>,
    /// Errors by code (requests, refused frames and handshakes), codes seen.
    pub errors: Vec<ErrorCount>,
    /// Connections accepted.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Handshakes refused (bad version, magic or token).
    pub handshakes_refused: u64,
    /// Frames refused before they became requests (over the limits, or
    /// refused by their transport, e.g. HTTP bodies that are not msgpack).
    pub frames_refused: u64,
    /// Requests being handled now.
    pub requests_in_flight: u64,
    /// Models loaded.
    pub models_loaded: u64,
    /// Size of the memory budget for tensors in flight, bytes.
    pub memory_budget_bytes: u64,
    /// Part of it in use, bytes (resident tensors included).
    pub memory_budget_used_bytes: u64,
    /// Server-resident tensors held.
    #[serde(default)]
    pub resident_tensors: u64,
    /// Their bytes.
    #[serde(default)]
    pub resident_bytes: u64,
    /// Accelerator memory, bytes, where the device reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator_memory_total_bytes: Option<u64>,
    /// Accelerator memory free, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator_memory_free_bytes: Option<u64>,
    /// The GPU's utilisation and memory from NVML, where present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuStats>,
}

impl MetricsSnapshot {
    /// The figures of one request kind.
    pub fn kind(&self, kind: &str) -> Option<&KindSnapshot> {
        self.requests.iter().find(|k| k.kind == kind)
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{x}")
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<f64>) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", num(value.into()));
    }

    fn histogram(
        &mut self,
        name: &str,
        label: (&str, &str),
        bounds: &[f64],
        h: &HistogramSnapshot,
    ) {
        let mut cumulative = 0u64;
        for (i, &c) in h.counts.iter().enumerate() {
            cumulative += c;
            let le = bounds.get(i).map_or_else(|| "+Inf".to_owned(), |&b| num(b));
            self.sample(
                &format!("{name}_bucket"),
                &[label, ("le", &le)],
                cumulative as f64,
            );
        }
        self.sample(&format!("{name}_sum"), &[label], h.sum_s);
        self.sample(&format!("{name}_count"), &[label], cumulative as f64);
    }
}

/// Renders a snapshot in the Prometheus text exposition format (0.0.4).
/// Metric names are listed in `docs/http.md`.
pub fn render_prometheus(s: &MetricsSnapshot) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    let b = &s.latency_buckets_s;
    o.family("mymps_info", "gauge", "Server version, backend and device.");
    o.sample(
        "mymps_info",
        &[
            ("version", &s.version),
            ("backend", &s.backend),
            ("device", &s.device),
        ],
        1.0,
    );
    o.family(
        "mymps_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    o.sample("mymps_uptime_seconds", &[], s.uptime_s);

    o.family(
        "mymps_requests_total",
        "counter",
        "Requests answered, by kind.",
    );
    for k in &s.requests {
        o.sample("mymps_requests_total", &[("kind", &k.kind)], k.count as f64);
    }
    o.family(
        "mymps_request_errors_total",
        "counter",
        "Requests answered with an error, by kind.",
    );
    for k in &s.requests {
        o.sample(
            "mymps_request_errors_total",
            &[("kind", &k.kind)],
            k.errors as f64,
        );
    }
    o.family(
        "mymps_request_duration_seconds",
        "histogram",
        "Time from a request read to its reply queued, by kind.",
    );
    for k in &s.requests {
        o.histogram(
            "mymps_request_duration_seconds",
            ("kind", &k.kind),
            b,
            &k.latency,
        );
    }
    o.family(
        "mymps_received_bytes_total",
        "counter",
        "Bytes of request frames (prefix, header, tensors), by kind.",
    );
    for k in &s.requests {
        o.sample(
            "mymps_received_bytes_total",
            &[("kind", &k.kind)],
            k.bytes_in as f64,
        );
    }
    o.family(
        "mymps_sent_bytes_total",
        "counter",
        "Bytes of reply frames, by request kind.",
    );
    for k in &s.requests {
        o.sample(
            "mymps_sent_bytes_total",
            &[("kind", &k.kind)],
            k.bytes_out as f64,
        );
    }

    o.family(
        "mymps_op_requests_total",
        "counter",
        "exec requests, by op (ops run at least once).",
    );
    for op in &s.ops {
        o.sample(
            "mymps_op_requests_total",
            &[("op", &op.op)],
            op.count as f64,
        );
    }
    o.family(
        "mymps_op_errors_total",
        "counter",
        "exec requests answered with an error, by op.",
    );
    for op in &s.ops {
        o.sample("mymps_op_errors_total", &[("op", &op.op)], op.errors as f64);
    }
    o.family(
        "mymps_op_duration_seconds",
        "histogram",
        "Latency of exec requests, by op.",
    );
    for op in &s.ops {
        o.histogram("mymps_op_duration_seconds", ("op", &op.op), b, &op.latency);
    }

    o.family(
        "mymps_errors_total",
        "counter",
        "Errors answered, by error code name.",
    );
    for e in &s.errors {
        o.sample("mymps_errors_total", &[("code", &e.name)], e.count as f64);
    }
    let gauges: [(&str, &str, &str, f64); 10] = [
        (
            "mymps_connections_total",
            "counter",
            "Connections accepted.",
            s.connections_total as f64,
        ),
        (
            "mymps_connections_open",
            "gauge",
            "Connections open.",
            s.connections_open as f64,
        ),
        (
            "mymps_handshakes_refused_total",
            "counter",
            "Handshakes refused (version, magic or token).",
            s.handshakes_refused as f64,
        ),
        (
            "mymps_frames_refused_total",
            "counter",
            "Frames refused before they reached a handler (over the limits, or untranslatable by their transport).",
            s.frames_refused as f64,
        ),
        (
            "mymps_requests_in_flight",
            "gauge",
            "Requests being handled.",
            s.requests_in_flight as f64,
        ),
        (
            "mymps_models_loaded",
            "gauge",
            "Models loaded.",
            s.models_loaded as f64,
        ),
        (
            "mymps_memory_budget_bytes",
            "gauge",
            "Size of the memory budget for tensors in flight.",
            s.memory_budget_bytes as f64,
        ),
        (
            "mymps_memory_budget_used_bytes",
            "gauge",
            "Part of the memory budget held by requests in flight and resident tensors.",
            s.memory_budget_used_bytes as f64,
        ),
        (
            "mymps_resident_tensors",
            "gauge",
            "Server-resident tensors held (every connection's and the shared ones).",
            s.resident_tensors as f64,
        ),
        (
            "mymps_resident_bytes",
            "gauge",
            "Bytes of the server-resident tensors.",
            s.resident_bytes as f64,
        ),
    ];
    for (name, kind, help, v) in gauges {
        o.family(name, kind, help);
        o.sample(name, &[], v);
    }
    if let (Some(total), Some(free)) = (
        s.accelerator_memory_total_bytes,
        s.accelerator_memory_free_bytes,
    ) {
        let dev = [("device", s.device.as_str())];
        o.family(
            "mymps_accelerator_memory_total_bytes",
            "gauge",
            "Accelerator memory.",
        );
        o.sample("mymps_accelerator_memory_total_bytes", &dev, total as f64);
        o.family(
            "mymps_accelerator_memory_used_bytes",
            "gauge",
            "Accelerator memory in use (by any process).",
        );
        o.sample(
            "mymps_accelerator_memory_used_bytes",
            &dev,
            total.saturating_sub(free) as f64,
        );
    }
    if let Some(g) = &s.gpu {
        let labels = [("device", s.device.as_str()), ("gpu", g.name.as_str())];
        if let Some(u) = g.utilization_percent {
            o.family(
                "mymps_gpu_utilization_percent",
                "gauge",
                "Percent of NVML's last sample period in which a kernel ran on the GPU.",
            );
            o.sample("mymps_gpu_utilization_percent", &labels, u);
        }
        if let Some(u) = g.memory_utilization_percent {
            o.family(
                "mymps_gpu_memory_utilization_percent",
                "gauge",
                "Percent of NVML's last sample period in which GPU memory was read or written.",
            );
            o.sample("mymps_gpu_memory_utilization_percent", &labels, u);
        }
        o.family(
            "mymps_gpu_memory_total_bytes",
            "gauge",
            "GPU memory, from NVML.",
        );
        o.sample(
            "mymps_gpu_memory_total_bytes",
            &labels,
            g.memory_total_bytes as f64,
        );
        o.family(
            "mymps_gpu_memory_used_bytes",
            "gauge",
            "GPU memory in use (by any process), from NVML.",
        );
        o.sample(
            "mymps_gpu_memory_used_bytes",
            &labels,
            g.memory_used_bytes as f64,
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ExecRequest, FrameKind, encode};

    fn exec(op: &str) -> Request {
        Request::Exec(ExecRequest {
            op: op.into(),
            inputs: vec![],
            kwargs: Default::default(),
            ..Default::default()
        })
    }

    #[test]
    fn kind_slots_match_kind_names() {
        for r in [
            Request::Health,
            Request::Stats,
            Request::ListOps,
            Request::DescribeOp { op: "x".into() },
            exec("x"),
            Request::LoadModel(Default::default()),
            Request::Infer(crate::protocol::InferRequest {
                name: "m".into(),
                inputs: vec![],
                ..Default::default()
            }),
            Request::ListModels,
            Request::ModelInfo { name: "m".into() },
            Request::UnloadModel { name: "m".into() },
            Request::Metrics,
            Request::Unknown,
        ] {
            assert_eq!(RequestKind::ALL[r.kind() as usize].name(), r.kind_name());
        }
    }

    #[test]
    fn records_requests_errors_and_ops() {
        let m = Metrics::new(["add", "matmul"]);
        let req = encode(FrameKind::Request, 1, &exec("add"), vec![]).unwrap();
        let reply = encode(FrameKind::Response, 1, &Request::Health, vec![]).unwrap();
        for op in ["add", "add", "frobnicate"] {
            let t = m.start(&req);
            let label = m.label(&exec(op));
            let err = (op == "frobnicate").then_some(ErrorCode::UnknownOp);
            m.finish(t, label, err, &reply);
        }
        let t = m.start(&req);
        m.finish(t, Label::default(), Some(ErrorCode::Protocol), &reply);
        {
            let _c = m.connection();
            m.frame_refused(ErrorCode::PayloadTooLarge);
            assert_eq!(m.snapshot(Gauges::default()).connections_open, 1);
        }
        let s = m.snapshot(Gauges {
            models_loaded: 2,
            resident_tensors: 3,
            resident_bytes: 4096,
            accelerator_memory: Some((100, 40)),
            gpu: Some(GpuStats {
                name: "NVIDIA H200".into(),
                utilization_percent: Some(37.0),
                memory_utilization_percent: Some(5.0),
                memory_total_bytes: 1000,
                memory_used_bytes: 250,
            }),
            ..Gauges::default()
        });
        let e = s.kind("exec").unwrap();
        assert_eq!((e.count, e.errors), (3, 1));
        assert_eq!(e.bytes_in, 3 * req.wire_len());
        assert_eq!(e.bytes_out, 3 * reply.wire_len());
        assert_eq!(s.kind("unknown").unwrap().count, 1);
        assert_eq!(s.kind("health").unwrap().count, 0);
        assert_eq!(s.ops.len(), 1, "only ops run, and only known ones");
        assert_eq!((s.ops[0].op.as_str(), s.ops[0].count), ("add", 2));
        let codes: Vec<_> = s
            .errors
            .iter()
            .map(|e| (e.name.as_str(), e.count))
            .collect();
        assert_eq!(
            codes,
            [("unknown_op", 1), ("payload_too_large", 1), ("protocol", 1)]
        );
        assert_eq!((s.connections_total, s.connections_open), (1, 0));
        assert_eq!(s.requests_in_flight, 0);
        assert_eq!(s.frames_refused, 1);

        let text = render_prometheus(&s);
        assert!(
            text.contains("mymps_requests_total{kind=\"exec\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("mymps_request_errors_total{kind=\"exec\"} 1\n"));
        assert!(text.contains("mymps_op_requests_total{op=\"add\"} 2\n"));
        assert!(
            text.contains("mymps_request_duration_seconds_bucket{kind=\"exec\",le=\"+Inf\"} 3\n")
        );
        assert!(text.contains("mymps_request_duration_seconds_count{kind=\"exec\"} 3\n"));
        assert!(text.contains("mymps_errors_total{code=\"unknown_op\"} 1\n"));
        assert!(text.contains("mymps_models_loaded 2\n"));
        assert!(text.contains("mymps_resident_tensors 3\n"));
        assert!(text.contains("mymps_resident_bytes 4096\n"));
        assert!(text.contains("mymps_accelerator_memory_used_bytes{device=\"\"} 60\n"));
        assert!(
            text.contains("mymps_gpu_utilization_percent{device=\"\",gpu=\"NVIDIA H200\"} 37\n")
        );
        assert!(
            text.contains("mymps_gpu_memory_used_bytes{device=\"\",gpu=\"NVIDIA H200\"} 250\n")
        );
        let t = m.totals();
        assert_eq!((t.requests(), t.errors), (4, 3));
        assert_eq!(t.per_kind[RequestKind::Exec as usize], 3);
        assert_eq!(t.latency.iter().sum::<u64>(), 4);
        // Every sample line is `name{labels} value` with a parsable value,
        // and every family is announced before its samples.
        let mut typed = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, value) = line.rsplit_once(' ').unwrap();
            let base = name.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| base.strip_suffix(s).filter(|b| typed.contains(*b)))
                .unwrap_or(base);
            assert!(typed.contains(family), "{line}");
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let bounds = [1.0, 2.0, 4.0];
        let h = HistogramSnapshot {
            counts: vec![0, 10, 0, 0],
            sum_s: 15.0,
        };
        assert_eq!(h.quantile(&bounds, 0.5), Some(1.5));
        assert_eq!(h.quantile(&bounds, 1.0), Some(2.0));
        let tail = HistogramSnapshot {
            counts: vec![1, 0, 0, 1],
            sum_s: 0.0,
        };
        assert_eq!(tail.quantile(&bounds, 0.99), Some(4.0));
        assert_eq!(tail.quantile(&bounds, 0.25), Some(0.5));
        assert_eq!(HistogramSnapshot::default().quantile(&bounds, 0.5), None);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
