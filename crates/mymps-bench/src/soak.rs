//! `mymps-bench --soak DURATION`: mixed work from many clients for a long
//! time, sampling the server process, and a verdict on growth and on lost
//! requests (see docs/BENCHMARKS.md, "Soak").
//!
//! Work (each client picks a kind per request from a fixed weighted table,
//! with its own seeded generator):
//! - `small` (add 4×4), `matmul` (128×128), `payload` (neg of 1 MiB):
//!   results checked;
//! - `model`: a forward pass of a tiny checkpoint MLP the soak writes and
//!   loads (skipped with a note when the server has no `checkpoint`
//!   loader), checked against the same MLP run here with libtorch;
//!   `load_unload`: a second model loaded and unloaded;
//! - `resident`: put, exec with keep, fetch, free; values checked;
//! - `bad`: an unknown op, matmul of mismatched shapes, a tensor over
//!   `--max-payload`, an unknown handle, an unknown model: each must fail
//!   with its own typed error code (`UnknownOp`, `Backend` — libtorch's
//!   shape check —, `PayloadTooLarge`, `UnknownTensor`, `ModelNotFound`);
//! - `reconnect`: a new connection, three requests, closed;
//!   `dropped`: a new connection closed while a 2 MiB request is in
//!   flight (its call must still end, answered or failed);
//!   `raw_half` (tcp:// only): a socket that sends part of a handshake
//!   frame and goes.
//!
//! Every request is bounded in time: one that gets no answer within
//! [`REQUEST_BOUND`] is counted lost and fails the run. Growth rule: the
//! first quarter of the samples is warm-up; of the rest, the median of the
//! last quarter must not exceed the median of the first quarter by more
//! than `--soak-rss-tolerance` percent plus 16 MiB (RSS), or by more than
//! 4 (open files). Threads are reported, not judged (the blocking pool
//! grows and shrinks with load). After the clients stop, the server must
//! hold no resident tensors, no memory budget and no request in flight.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mymps::client::{Call, Caller, Client, ClientOptions};
use mymps::model::LoadRequest;
use mymps::protocol::{Keep, TensorRef};
use mymps::{ErrorCode, Tensor};
use serde_json::{Value, json};

use super::{Args, find_server_bin, pct};

/// The longest a request may go unanswered before it counts as lost.
pub const REQUEST_BOUND: Duration = Duration::from_secs(60);

/// The `--max-payload` of the server the soak starts (the oversize case
/// sends a tensor just over it).
const MAX_PAYLOAD: u64 = 8 << 20;

const MIB: f64 = (1u64 << 20) as f64;

/// Parses `90`, `90s`, `5m`, `1h`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(n));
    }
    let mut total = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num
            .parse()
            .map_err(|_| format!("bad duration {s:?} (e.g. 90s, 5m, 1h)"))?;
        num.clear();
        total += v * match unit.as_str() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("bad duration unit {unit:?} in {s:?} (ms, s, m, h)")),
        };
    }
    if !num.is_empty() || total <= 0.0 {
        return Err(format!("bad duration {s:?} (e.g. 90s, 5m, 1h)"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// The request kinds and their weights (per 100 requests).
const KINDS: &[(&str, u32)] = &[
    ("small", 28),
    ("matmul", 14),
    ("payload", 8),
    ("model", 10),
    ("load_unload", 1),
    ("resident", 12),
    ("bad", 12),
    ("reconnect", 8),
    ("dropped", 5),
    ("raw_half", 2),
];

/// What happened to one request.
enum Outcome {
    /// Answered, result checked.
    Ok,
    /// Failed with the error code its bad input calls for.
    Expected(ErrorCode),
    /// A dropped connection's request that ended (answered or failed).
    Abandoned,
    /// Anything else: a wrong result, an unexpected error (message).
    Failed(String),
    /// No answer within [`REQUEST_BOUND`].
    Lost,
    /// Not run (no model on this server).
    Skipped,
}

#[derive(Default)]
struct KindCount {
    sent: u64,
    ok: u64,
    expected_errors: u64,
    abandoned: u64,
    failed: u64,
    lost: u64,
}

#[derive(Default)]
struct Tally {
    kinds: BTreeMap<&'static str, KindCount>,
    errors_by_code: BTreeMap<String, u64>,
    /// Latencies of this interval, seconds.
    interval_lat: Vec<f64>,
    /// Every latency, seconds (for the whole run's percentiles).
    all_lat: Vec<f64>,
    /// The first few unexpected failures, for the report.
    failures: Vec<String>,
    total: u64,
}

impl Tally {
    fn record(&mut self, kind: &'static str, lat: f64, o: &Outcome) {
        let k = self.kinds.entry(kind).or_default();
        if matches!(o, Outcome::Skipped) {
            return;
        }
        k.sent += 1;
        self.total += 1;
        match o {
            Outcome::Ok => k.ok += 1,
            Outcome::Expected(code) => {
                k.expected_errors += 1;
                *self.errors_by_code.entry(format!("{code:?}")).or_default() += 1;
            }
            Outcome::Abandoned => k.abandoned += 1,
            Outcome::Failed(m) => {
                k.failed += 1;
                *self.errors_by_code.entry("unexpected".into()).or_default() += 1;
                if self.failures.len() < 20 {
                    self.failures.push(format!("{kind}: {m}"));
                }
            }
            Outcome::Lost => {
                k.lost += 1;
                if self.failures.len() < 20 {
                    self.failures
                        .push(format!("{kind}: no answer within {REQUEST_BOUND:?}"));
                }
            }
            Outcome::Skipped => {}
        }
        if matches!(o, Outcome::Ok | Outcome::Expected(_)) {
            self.interval_lat.push(lat);
            // Bounded: at most 4 M latencies kept for the run's percentiles.
            if self.all_lat.len() < 4 << 20 {
                self.all_lat.push(lat);
            }
        }
    }
}

/// A tiny seeded generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut s = self.0;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The model the `model` kind runs: its name, an input and the output
/// libtorch gives for it here.
struct ModelCase {
    name: String,
    input: Tensor,
    want: Vec<f32>,
    /// Its load request (the `load_unload` kind loads it under another name).
    load: LoadRequest,
}

fn to_host(t: &tch::Tensor) -> Tensor {
    let t = t.to_kind(tch::Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let mut v = vec![0f32; t.numel()];
    t.copy_data(&mut v, t.numel());
    Tensor::from_vec(v, &shape).expect("tensor")
}

/// Writes an MLP 6 → 8 → 3 checkpoint (safetensors, PyTorch's state_dict
/// names) and computes its forward on a fixed input.
fn write_mlp(path: &Path) -> Result<(Tensor, Vec<f32>), String> {
    use tch::{Device, Kind};
    tch::manual_seed(11);
    let opts = (Kind::Float, Device::Cpu);
    let w0 = tch::Tensor::randn([8, 6], opts);
    let b0 = tch::Tensor::randn([8], opts);
    let w1 = tch::Tensor::randn([3, 8], opts);
    let b1 = tch::Tensor::randn([3], opts);
    let x = tch::Tensor::randn([4, 6], opts);
    tch::Tensor::write_safetensors(
        &[
            ("layers.0.weight", &w0),
            ("layers.0.bias", &b0),
            ("layers.1.weight", &w1),
            ("layers.1.bias", &b1),
        ],
        path,
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let y = x.linear(&w0, Some(&b0)).gelu("none").linear(&w1, Some(&b1));
    let want = to_host(&y).to_vec::<f32>().map_err(|e| e.to_string())?;
    Ok((to_host(&x), want))
}

/// The server the soak runs against.
struct Target {
    child: Option<Child>,
    url: String,
    pid: Option<u32>,
    note: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_target(args: &Args, device: &str, model_root: &Path) -> Result<Target, String> {
    if let Some(url) = &args.addr {
        return Ok(Target {
            child: None,
            url: url.clone(),
            pid: args.server_pid,
            note: format!(
                "server: {url} (given with --addr){}",
                if args.server_pid.is_some() {
                    ""
                } else {
                    "; no --server-pid: RSS from `stats`, no fd or thread counts"
                }
            ),
        });
    }
    let (mut cmd, what) = match find_server_bin(args) {
        Some(bin) => {
            let mut cmd = Command::new(&bin);
            cmd.args(["serve", "--listen", "tcp://127.0.0.1:0", "--log", "warn"])
                .args(["--device", device])
                .arg("--max-payload")
                .arg(MAX_PAYLOAD.to_string())
                .arg("--model-root")
                .arg(model_root);
            (cmd, format!("{} serve", bin.display()))
        }
        None => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(exe);
            cmd.args(["--internal-serve", "--device", device])
                .arg("--internal-model-root")
                .arg(model_root);
            (
                cmd,
                "no `mymps` executable found: this program's in-process server (model \
                 loaders linked in)"
                    .to_string(),
            )
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the server ({what}): {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(u) = l.strip_prefix("mymps: listening on ") {
                    break u.trim().to_string();
                }
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("server exited before listening".into());
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    Ok(Target {
        child: Some(child),
        url,
        pid: Some(pid),
        note: format!("server: {what}, --max-payload {MAX_PAYLOAD} (child process {pid})"),
    })
}

/// `--internal-serve --internal-model-root PATH`: the server `mymps serve`
/// would be for the soak (libtorch backend, TCP on an ephemeral loopback
/// port, the soak's `--max-payload`, the model loaders of `mymps-models`
/// linked in, models under `root`).
pub fn internal_serve(device: &str, root: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let backend =
            Arc::new(mymps::backend_tch::TchBackend::new(device).map_err(|e| e.to_string())?);
        let mut config = mymps::server::ServerConfig {
            listen: vec![mymps::transport::Endpoint::new("tcp", "127.0.0.1", 0)],
            model_root: Some(root.to_path_buf()),
            ..mymps::server::ServerConfig::default()
        };
        config.limits.max_payload = MAX_PAYLOAD;
        let server = mymps::server::Server::bind(config, backend)
            .await
            .map_err(|e| e.to_string())?;
        for l in mymps_models::loaders() {
            server.models().add_loader(l).map_err(|e| e.to_string())?;
        }
        let server = server.spawn();
        println!("mymps: listening on {}", server.endpoints()[0]);
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// One sample of the server process.
#[derive(Clone, Copy, Default)]
struct Sample {
    t_s: f64,
    rss_bytes: f64,
    fds: Option<u64>,
    threads: Option<u64>,
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    resident: u64,
    connections: u64,
}

fn proc_counts(pid: u32) -> (Option<f64>, Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let field = |key: &str| -> Option<u64> {
        let s = status.as_ref()?;
        let line = s.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let rss = field("VmRSS:").map(|kb| (kb * 1024) as f64);
    let threads = field("Threads:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64);
    (rss, fds, threads)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 50.0)
}

/// The growth rule: (verdict lines, failed).
fn judge_growth(samples: &[Sample], rss_tol_pct: f64) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut failed = false;
    let post: Vec<&Sample> = samples.iter().skip(samples.len() / 4).collect();
    if post.len() < 4 {
        out.push(
            json!({"metric": "all", "verdict": "too few samples to judge growth",
                        "samples_after_warmup": post.len()}),
        );
        return (out, false);
    }
    let q = post.len() / 4;
    let (first, last) = (&post[..q], &post[post.len() - q..]);
    let rss = |s: &[&Sample]| median(s.iter().map(|x| x.rss_bytes).collect());
    let (r0, r1) = (rss(first), rss(last));
    let limit = r0 * (1.0 + rss_tol_pct / 100.0) + 16.0 * MIB;
    let grew = r1 > limit;
    failed |= grew;
    out.push(json!({
        "metric": "rss", "first_quarter_median_mib": r0 / MIB,
        "last_quarter_median_mib": r1 / MIB, "limit_mib": limit / MIB,
        "verdict": if grew { "FAIL: grew" } else { "ok" },
    }));
    if first.iter().all(|s| s.fds.is_some()) && last.iter().all(|s| s.fds.is_some()) {
        let fd = |s: &[&Sample]| median(s.iter().map(|x| x.fds.unwrap_or(0) as f64).collect());
        let (f0, f1) = (fd(first), fd(last));
        let grew = f1 > f0 + 4.0;
        failed |= grew;
        out.push(json!({
            "metric": "fds", "first_quarter_median": f0, "last_quarter_median": f1,
            "limit": f0 + 4.0, "verdict": if grew { "FAIL: grew" } else { "ok" },
        }));
    }
    (out, failed)
}

/// Runs the soak; `Err` (and a non-zero exit) when it fails.
pub fn run(args: &Args, device: &str, duration: Duration) -> Result<(), String> {
    let started_at = super::date_utc();
    let model_dir = tempfile::tempdir().map_err(|e| format!("no temporary folder: {e}"))?;
    let model_root = model_dir.path().canonicalize().map_err(|e| e.to_string())?;
    let target = start_target(args, device, &model_root)?;
    let clients = args.soak_clients.max(1);
    let interval = args
        .soak_interval
        .as_deref()
        .map(parse_duration)
        .transpose()?
        .unwrap_or_else(|| {
            Duration::from_secs_f64((duration.as_secs_f64() / 20.0).clamp(0.5, 60.0))
        });
    let pause = Duration::from_millis(args.soak_pause_ms);
    let mut notes = vec![target.note.clone()];
    if cfg!(debug_assertions) {
        notes.push("debug build of the bench".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let url = target.url.clone();
    let options = ClientOptions {
        // Longer than REQUEST_BOUND: the bound is what decides "lost".
        timeout: REQUEST_BOUND * 2,
        ..ClientOptions::default()
    };
    let monitor = rt
        .block_on(Client::connect_with(&url, options.clone()))
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;

    // The model: written where the server reads models, when it is ours.
    let model = if args.addr.is_none() {
        let path = model_root.join("soak-mlp.safetensors");
        let (input, want) = write_mlp(&path)?;
        let load = LoadRequest {
            name: "soak/mlp".into(),
            model_type: "checkpoint".into(),
            model_path: Some(path.display().to_string()),
            model_class: Some("mlp".into()),
            config: Some(r#"{"activation": "gelu"}"#.into()),
            ..Default::default()
        };
        match rt.block_on(monitor.load_model(load.clone())) {
            Ok(_) => Some(Arc::new(ModelCase {
                name: "soak/mlp".into(),
                input,
                want,
                load,
            })),
            Err(e) => {
                notes.push(format!(
                    "model kinds skipped: the server cannot load a checkpoint MLP ({e}); \
                     is libmymps_models.so in the plugins folder?"
                ));
                None
            }
        }
    } else {
        notes.push("model kinds skipped: --addr (the soak writes its model locally)".into());
        None
    };

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (url, options, model, tally, stop) = (
            url.clone(),
            options.clone(),
            model.clone(),
            tally.clone(),
            stop.clone(),
        );
        tasks.push(rt.spawn(async move {
            client_loop(i as u64, url, options, model, tally, stop, pause).await
        }));
    }

    println!(
        "soak: {} for {:?}, {clients} clients, a line every {:?}",
        target.url, duration, interval
    );
    let t0 = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_total = 0u64;
    let mut next = t0 + interval;
    let end = t0 + duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep(next.min(end).saturating_duration_since(now));
        if Instant::now() < next {
            break;
        }
        next += interval;
        let (lat, total) = {
            let mut t = tally.lock().expect("tally");
            (std::mem::take(&mut t.interval_lat), t.total)
        };
        let s = sample(&rt, &monitor, target.pid, t0, total, lat)?;
        let rate = (total - last_total) as f64 / interval.as_secs_f64();
        last_total = total;
        println!(
            "[{:>7.1}s] requests {:>9} ({:>6.0}/s) | rss {:>7.1} MiB  fds {:>4}  threads {:>3} | p50 {:>8.0} us  p99 {:>8.0} us | resident {:>3} conns {:>3}",
            s.t_s,
            s.requests,
            rate,
            s.rss_bytes / MIB,
            s.fds.map_or("-".into(), |f| f.to_string()),
            s.threads.map_or("-".into(), |f| f.to_string()),
            s.p50_us,
            s.p99_us,
            s.resident,
            s.connections,
        );
        let _ = std::io::stdout().flush();
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    let mut client_errors = Vec::new();
    for t in tasks {
        match rt.block_on(async {
            tokio::time::timeout(REQUEST_BOUND + Duration::from_secs(10), t).await
        }) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => client_errors.push(format!("a client task panicked: {e}")),
            Err(_) => client_errors.push("a client task did not stop".into()),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();

    // The server at rest: no tensors, budget or requests left behind.
    if let Some(m) = &model {
        let _ = rt.block_on(monitor.unload_model(&m.name));
    }
    let mut at_rest = json!(null);
    let mut rest_ok = false;
    for _ in 0..50 {
        let h = rt
            .block_on(monitor.health())
            .map_err(|e| format!("health: {e}"))?;
        let m = rt
            .block_on(monitor.metrics())
            .map_err(|e| format!("metrics: {e}"))?;
        at_rest = json!({
            "resident_tensors": h.resident_tensors,
            "resident_bytes": h.resident_bytes,
            "memory_budget_used_bytes": m.memory_budget_used_bytes,
            "requests_in_flight": m.requests_in_flight,
            "connections_open": m.connections_open,
            "models_loaded": h.models_loaded,
        });
        // The metrics request itself is in flight while it is answered.
        rest_ok = h.resident_tensors == 0
            && m.memory_budget_used_bytes == 0
            && m.requests_in_flight <= 1
            && m.connections_open <= 1;
        if rest_ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let final_sample = rt.block_on(async {
        let (rss, fds, threads) = target.pid.map_or((None, None, None), proc_counts);
        (rss, fds, threads)
    });

    let t = tally.lock().expect("tally");
    let (growth, grew) = judge_growth(&samples, args.soak_rss_tolerance);
    let lost: u64 = t.kinds.values().map(|k| k.lost).sum();
    let failed: u64 = t.kinds.values().map(|k| k.failed).sum();
    let mut all = t.all_lat.clone();
    all.sort_by(f64::total_cmp);
    let mut reasons = Vec::new();
    if lost > 0 {
        reasons.push(format!(
            "{lost} requests lost (no answer within {REQUEST_BOUND:?})"
        ));
    }
    if failed > 0 {
        reasons.push(format!(
            "{failed} unexpected errors or wrong results: {:?}",
            t.failures
        ));
    }
    if grew {
        reasons.push("the server grew (see growth)".into());
    }
    if !rest_ok {
        reasons.push(format!(
            "the server is not at rest after the clients stopped: {at_rest}"
        ));
    }
    if t.total == 0 {
        reasons.push("no request was made".into());
    }
    reasons.extend(client_errors);
    let first = samples.first().copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    let report = json!({
        "soak": {
            "date_utc": started_at,
            "machine": super::machine_name(),
            "url": target.url,
            "duration_s": elapsed,
            "clients": clients,
            "pause_ms": args.soak_pause_ms,
            "interval_s": interval.as_secs_f64(),
            "request_bound_s": REQUEST_BOUND.as_secs_f64(),
            "notes": notes,
        },
        "requests": {
            "total": t.total,
            "per_s": t.total as f64 / elapsed,
            "lost": lost,
            "unexpected": failed,
            "by_kind": t.kinds.iter().map(|(k, c)| (k.to_string(), json!({
                "sent": c.sent, "ok": c.ok, "expected_errors": c.expected_errors,
                "abandoned": c.abandoned, "failed": c.failed, "lost": c.lost,
            }))).collect::<serde_json::Map<_, _>>(),
            "errors_by_code": t.errors_by_code,
            "failures": t.failures,
        },
        "latency": {
            "p50_us": pct(&all, 50.0) * 1e6,
            "p90_us": pct(&all, 90.0) * 1e6,
            "p99_us": pct(&all, 99.0) * 1e6,
            "max_us": all.last().copied().unwrap_or(f64::NAN) * 1e6,
        },
        "server": {
            "start": {"rss_mib": first.rss_bytes / MIB, "fds": first.fds, "threads": first.threads},
            "end": {"rss_mib": last.rss_bytes / MIB, "fds": last.fds, "threads": last.threads},
            "after_clients_stopped": {
                "rss_mib": final_sample.0.map(|r| r / MIB), "fds": final_sample.1,
                "threads": final_sample.2,
            },
            "at_rest": at_rest,
        },
        "samples": samples.iter().map(|s| json!({
            "t_s": s.t_s, "rss_mib": s.rss_bytes / MIB, "fds": s.fds, "threads": s.threads,
            "requests": s.requests, "p50_us": s.p50_us, "p99_us": s.p99_us,
            "resident_tensors": s.resident, "connections_open": s.connections,
        })).collect::<Vec<_>>(),
        "growth": growth,
        "passed": reasons.is_empty(),
        "failures": reasons,
    });
    drop(t);
    println!(
        "soak: {} requests in {elapsed:.0} s ({} lost, {failed} unexpected); rss {:.1} -> {:.1} MiB, fds {} -> {}, threads {} -> {}",
        report["requests"]["total"],
        lost,
        first.rss_bytes / MIB,
        last.rss_bytes / MIB,
        first.fds.map_or("-".into(), |f| f.to_string()),
        last.fds.map_or("-".into(), |f| f.to_string()),
        first.threads.map_or("-".into(), |f| f.to_string()),
        last.threads.map_or("-".into(), |f| f.to_string()),
    );
    for g in report["growth"].as_array().into_iter().flatten() {
        println!("soak: growth {g}");
    }
    if let Some(p) = &args.json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&report).expect("serialisable"),
        )
        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        println!("soak: report in {}", p.display());
    }
    monitor.close();
    drop(target);
    drop(model_dir);
    if reasons.is_empty() {
        println!("soak: PASS");
        Ok(())
    } else {
        Err(format!("soak FAILED: {}", reasons.join("; ")))
    }
}

fn sample(
    rt: &tokio::runtime::Runtime,
    monitor: &Client,
    pid: Option<u32>,
    t0: Instant,
    total: u64,
    mut lat: Vec<f64>,
) -> Result<Sample, String> {
    lat.sort_by(f64::total_cmp);
    let (rss, fds, threads) = pid.map_or((None, None, None), proc_counts);
    let health = rt
        .block_on(async { tokio::time::timeout(REQUEST_BOUND, monitor.health()).await })
        .map_err(|_| "the server did not answer `health` in time".to_string())?
        .map_err(|e| format!("health: {e}"))?;
    let metrics = rt
        .block_on(async { tokio::time::timeout(REQUEST_BOUND, monitor.metrics()).await })
        .map_err(|_| "the server did not answer `metrics` in time".to_string())?
        .map_err(|e| format!("metrics: {e}"))?;
    let rss = match rss {
        Some(r) => r,
        None => {
            rt.block_on(monitor.stats())
                .map_err(|e| format!("stats: {e}"))?
                .process_rss_mb
                * MIB
        }
    };
    Ok(Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_bytes: rss,
        fds,
        threads,
        requests: total,
        p50_us: pct(&lat, 50.0) * 1e6,
        p99_us: pct(&lat, 99.0) * 1e6,
        resident: health.resident_tensors,
        connections: metrics.connections_open,
    })
}

fn pick(rng: &mut Rng) -> &'static str {
    let total: u32 = KINDS.iter().map(|k| k.1).sum();
    let mut x = rng.below(u64::from(total)) as u32;
    for (k, w) in KINDS {
        if x < *w {
            return k;
        }
        x -= w;
    }
    KINDS[0].0
}

async fn client_loop(
    i: u64,
    url: String,
    options: ClientOptions,
    model: Option<Arc<ModelCase>>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut conn: Option<Client> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let kind = pick(&mut rng);
        let c = match &conn {
            Some(c) if !c.is_closed() => c.clone(),
            _ => match Client::connect_with(&url, options.clone()).await {
                Ok(c) => {
                    conn = Some(c.clone());
                    c
                }
                Err(e) => {
                    tally.lock().expect("tally").record(
                        "connect",
                        0.0,
                        &Outcome::Failed(format!("cannot connect: {e}")),
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let t = Instant::now();
        let outcome = match tokio::time::timeout(
            REQUEST_BOUND,
            one(kind, &c, &url, &options, model.as_deref(), &mut rng, i, n),
        )
        .await
        {
            Ok(o) => o,
            Err(_) => Outcome::Lost,
        };
        tally
            .lock()
            .expect("tally")
            .record(kind, t.elapsed().as_secs_f64(), &outcome);
        n += 1;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    if let Some(c) = conn {
        c.close();
    }
}

fn filled(v: f32, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(vec![v; n], shape).expect("tensor")
}

fn all_eq(t: &Tensor, want: f32, n: usize) -> Result<(), String> {
    let v = t.to_vec::<f32>().map_err(|e| e.to_string())?;
    if v.len() != n {
        return Err(format!("{} elements, want {n}", v.len()));
    }
    match v.iter().position(|x| (x - want).abs() > 1e-3) {
        None => Ok(()),
        Some(p) => Err(format!("element {p} is {}, want {want}", v[p])),
    }
}

fn check(r: Result<(), String>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(m) => Outcome::Failed(m),
    }
}

fn expect_code(r: mymps::Result<impl Sized>, want: &[ErrorCode], what: &str) -> Outcome {
    match r {
        Ok(_) => Outcome::Failed(format!("{what}: succeeded, want an error {want:?}")),
        Err(e) if want.contains(&e.code) => Outcome::Expected(e.code),
        Err(e) => Outcome::Failed(format!("{what}: {e} (code {:?}), want {want:?}", e.code)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn one(
    kind: &str,
    c: &Client,
    url: &str,
    options: &ClientOptions,
    model: Option<&ModelCase>,
    rng: &mut Rng,
    client: u64,
    n: u64,
) -> Outcome {
    let v = (rng.below(100) as f32) / 4.0;
    match kind {
        "small" => {
            let a = filled(v, &[4, 4]);
            match c.call(Call::new("add").arg(a.clone()).arg(a)).await {
                Ok(o) => check(
                    o.output()
                        .map_err(|e| e.to_string())
                        .and_then(|t| all_eq(t, 2.0 * v, 16)),
                ),
                Err(e) => Outcome::Failed(format!("add: {e}")),
            }
        }
        "matmul" => {
            let a = filled(1.0, &[128, 128]);
            let b = filled(v, &[128, 128]);
            match c.call(Call::new("matmul").arg(a).arg(b)).await {
                Ok(o) => check(
                    o.output()
                        .map_err(|e| e.to_string())
                        .and_then(|t| all_eq(t, 128.0 * v, 128 * 128)),
                ),
                Err(e) => Outcome::Failed(format!("matmul: {e}")),
            }
        }
        "payload" => {
            let n = 256 * 1024;
            match c.call(Call::new("neg").arg(filled(v, &[n]))).await {
                Ok(o) => check(
                    o.output()
                        .map_err(|e| e.to_string())
                        .and_then(|t| all_eq(t, -v, n)),
                ),
                Err(e) => Outcome::Failed(format!("neg 1 MiB: {e}")),
            }
        }
        "model" => {
            let Some(m) = model else {
                return Outcome::Skipped;
            };
            match c.infer(&m.name, [("0", m.input.clone())]).await {
                Ok(o) => check(o.output().map_err(|e| e.to_string()).and_then(|t| {
                    let got = t.to_vec::<f32>().map_err(|e| e.to_string())?;
                    if got.len() == m.want.len()
                        && got.iter().zip(&m.want).all(|(a, b)| (a - b).abs() < 1e-4)
                    {
                        Ok(())
                    } else {
                        Err(format!("model output {got:?}, want {:?}", m.want))
                    }
                })),
                Err(e) => Outcome::Failed(format!("infer: {e}")),
            }
        }
        "load_unload" => {
            let Some(m) = model else {
                return Outcome::Skipped;
            };
            let name = format!("soak/mlp-{client}");
            let mut load = m.load.clone();
            load.name = name.clone();
            if let Err(e) = c.load_model(load).await {
                return Outcome::Failed(format!("load_model: {e}"));
            }
            let r = c.infer(&name, [("0", m.input.clone())]).await;
            if let Err(e) = c.unload_model(&name).await {
                return Outcome::Failed(format!("unload_model: {e}"));
            }
            match r {
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::Failed(format!("infer after load: {e}")),
            }
        }
        "resident" => {
            let x = filled(v, &[64, 64]);
            let h = match c.put(x).await {
                Ok(mut hs) if hs.len() == 1 => hs.pop().expect("one"),
                Ok(hs) => return Outcome::Failed(format!("put gave {} handles", hs.len())),
                Err(e) => return Outcome::Failed(format!("put: {e}")),
            };
            let kept = match c
                .call(Call::new("add").arg_ref(&h).arg_ref(&h).keep(Keep::All))
                .await
            {
                Ok(o) => match o.handle("output") {
                    Some(k) => k.clone(),
                    None => return Outcome::Failed("exec with keep: no handle".into()),
                },
                Err(e) => return Outcome::Failed(format!("exec with keep: {e}")),
            };
            let fetched = c.fetch(vec![TensorRef::from(&kept)]).await;
            let freed = c
                .free(vec![TensorRef::from(&h), TensorRef::from(&kept)])
                .await;
            match (fetched, freed) {
                (Ok(ts), Ok(f)) if f.freed == 2 && ts.len() == 1 => {
                    check(all_eq(&ts[0], 2.0 * v, 64 * 64))
                }
                (Ok(ts), Ok(f)) => Outcome::Failed(format!(
                    "fetch gave {} tensors, free freed {} ({:?} unknown)",
                    ts.len(),
                    f.freed,
                    f.unknown
                )),
                (Err(e), _) => Outcome::Failed(format!("fetch: {e}")),
                (_, Err(e)) => Outcome::Failed(format!("free: {e}")),
            }
        }
        "bad" => match n % 5 {
            0 => expect_code(
                c.call(Call::new("no_such_op").arg(filled(1.0, &[2]))).await,
                &[ErrorCode::UnknownOp],
                "unknown op",
            ),
            1 => expect_code(
                c.call(
                    Call::new("matmul")
                        .arg(filled(1.0, &[3, 4]))
                        .arg(filled(1.0, &[5, 6])),
                )
                .await,
                // libtorch's own shape check: a backend error, typed.
                &[ErrorCode::Backend],
                "matmul 3x4 @ 5x6",
            ),
            2 => expect_code(
                c.call(Call::new("neg").arg(filled(1.0, &[(MAX_PAYLOAD as usize) / 4 + 1024])))
                    .await,
                &[ErrorCode::PayloadTooLarge],
                "a tensor over --max-payload",
            ),
            3 => expect_code(
                c.fetch(vec![TensorRef::Handle(u64::MAX - 7)]).await,
                &[ErrorCode::UnknownTensor],
                "fetch of an unknown handle",
            ),
            _ => expect_code(
                c.infer("soak/no-such-model", [("0", filled(1.0, &[2]))])
                    .await,
                &[ErrorCode::ModelNotFound],
                "infer on an unknown model",
            ),
        },
        "reconnect" => {
            let c2 = match Client::connect_with(url, options.clone()).await {
                Ok(c) => c,
                Err(e) => return Outcome::Failed(format!("reconnect: {e}")),
            };
            let mut out = Outcome::Ok;
            for _ in 0..3 {
                let a = filled(v, &[4, 4]);
                match c2.call(Call::new("add").arg(a.clone()).arg(a)).await {
                    Ok(o) => {
                        if let Err(m) = o
                            .output()
                            .map_err(|e| e.to_string())
                            .and_then(|t| all_eq(t, 2.0 * v, 16))
                        {
                            out = Outcome::Failed(m);
                        }
                    }
                    Err(e) => out = Outcome::Failed(format!("add after reconnect: {e}")),
                }
            }
            c2.close();
            out
        }
        "dropped" => {
            let c2 = match Client::connect_with(url, options.clone()).await {
                Ok(c) => c,
                Err(e) => return Outcome::Failed(format!("connect: {e}")),
            };
            let call = {
                let c2 = c2.clone();
                tokio::spawn(async move {
                    c2.call(Call::new("neg").arg(filled(1.0, &[512 * 1024])))
                        .await
                })
            };
            tokio::time::sleep(Duration::from_micros(rng.below(3000))).await;
            c2.close();
            match call.await {
                // Answered before the close, or failed by it: either ends.
                Ok(Ok(_)) | Ok(Err(_)) => Outcome::Abandoned,
                Err(e) => Outcome::Failed(format!("the dropped call's task: {e}")),
            }
        }
        "raw_half" => {
            let Some(addr) = url.strip_prefix("tcp://") else {
                return Outcome::Skipped;
            };
            match tokio::net::TcpStream::connect(addr).await {
                Ok(mut s) => {
                    use tokio::io::AsyncWriteExt;
                    // The start of a frame prefix (magic and part of the
                    // lengths), then the connection goes.
                    let _ = s.write_all(b"MYMP\x01\x00\x00").await;
                    drop(s);
                    Outcome::Abandoned
                }
                Err(e) => Outcome::Failed(format!("raw connect: {e}")),
            }
        }
        other => Outcome::Failed(format!("unknown soak kind {other}")),
    }
}
