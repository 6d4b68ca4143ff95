//! `mymps-bench`: measures a mymps server against baselines taken in the
//! same run (raw TCP echo on loopback, libtorch in-process) and prints a
//! table plus JSON. See docs/BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p mymps-bench -- --json target/bench.json
//! cargo run -p mymps-bench -- --quick            # smoke run, < 30 s
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mymps::Tensor;
use mymps::client::{Call, Caller, Client};
use serde_json::{Value, json};

mod chains;
mod small;
mod soak;

const MIB: usize = 1 << 20;

#[derive(Parser, Debug)]
#[command(name = "mymps-bench", about = "Benchmarks a mymps server")]
struct Args {
    /// Use a running server (tcp://host:port, zmq://host:port) instead of
    /// starting one.
    /// Server memory is then read through the `stats` request.
    #[arg(long, value_name = "URL")]
    addr: Option<String>,
    /// The `mymps` executable to start (default: next to this one).
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Device of the server this program starts (default: cpu, or cuda
    /// with --gpu).
    #[arg(long)]
    device: Option<String>,
    /// Python interpreter with the `mymps` package (default: .venv/bin/python
    /// when it exists). The Python section is skipped with a note when it
    /// is missing.
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Skip the Python section.
    #[arg(long)]
    no_python: bool,
    /// Smoke run: few iterations, small sizes.
    #[arg(long)]
    quick: bool,
    /// Also measure host<->device copies and big matmuls on CUDA.
    #[arg(long)]
    gpu: bool,
    /// Write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Run only the remote-tensor chains (shipped, kept, graph, local; the
    /// small op on handles) and their targets.
    #[arg(long)]
    chains_only: bool,
    /// Soak: mixed work from many clients for DURATION (90s, 5m, 1h),
    /// sampling the server's RSS, open files, threads and latency; fails on
    /// growth, lost requests or unexpected errors (docs/BENCHMARKS.md).
    #[arg(long, value_name = "DURATION")]
    soak: Option<String>,
    /// Soak: concurrent clients.
    #[arg(long, default_value_t = 4)]
    soak_clients: usize,
    /// Soak: a pause after each request of a client, milliseconds (to cap
    /// the load).
    #[arg(long, default_value_t = 0)]
    soak_pause_ms: u64,
    /// Soak: time between samples (default: a twentieth of the run, 0.5 s
    /// to 60 s).
    #[arg(long, value_name = "DURATION")]
    soak_interval: Option<String>,
    /// Soak: RSS growth allowed after warm-up, percent (plus 16 MiB).
    #[arg(long, default_value_t = 10.0)]
    soak_rss_tolerance: f64,
    /// Soak against --addr: the server's process id, for its RSS, open
    /// files and threads from /proc (without it, RSS from `stats` only).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Internal: serve in-process on an ephemeral port (used when no
    /// `mymps` executable is found).
    #[arg(long, hide = true)]
    internal_serve: bool,
    /// Internal, with --internal-serve: the soak's server (model loaders
    /// linked in, models under this folder, the soak's --max-payload).
    #[arg(long, hide = true, value_name = "PATH")]
    internal_model_root: Option<PathBuf>,
}

/// Iteration counts and sizes.
#[derive(Clone)]
struct Plan {
    n_small: usize,
    n_matmul: usize,
    sizes_mib: Vec<usize>,
    iters_large: usize,
    conc_secs: f64,
    clients: Vec<usize>,
    pipeline_depth: usize,
    memory_mib: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                n_small: 300,
                n_matmul: 20,
                sizes_mib: vec![1, 4],
                iters_large: 3,
                conc_secs: 0.2,
                clients: vec![1, 2, 4, 8, 16],
                pipeline_depth: 16,
                memory_mib: 4,
            }
        } else {
            Plan {
                n_small: 5000,
                n_matmul: 300,
                sizes_mib: vec![1, 16, 64, 256],
                iters_large: 7,
                conc_secs: 2.0,
                clients: vec![1, 2, 4, 8, 16],
                pipeline_depth: 32,
                memory_mib: 256,
            }
        }
    }
}

// ---------------------------------------------------------------- statistics

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latency summary in microseconds.
fn summary(mut s: Vec<f64>) -> Value {
    s.sort_by(f64::total_cmp);
    json!({
        "n": s.len(),
        "p50_us": pct(&s, 50.0) * 1e6,
        "p90_us": pct(&s, 90.0) * 1e6,
        "p99_us": pct(&s, 99.0) * 1e6,
    })
}

fn median(mut s: Vec<f64>) -> f64 {
    s.sort_by(f64::total_cmp);
    pct(&s, 50.0)
}

fn time_n(n: usize, warmup: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

async fn time_n_async<F, Fut>(n: usize, warmup: usize, mut f: F) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..warmup {
        f().await;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        out.push(t.elapsed().as_secs_f64());
    }
    out
}

/// Times `n` calls (after `warmup`) of the call `make` builds, one at a time,
/// from a task on `rt`'s workers: where an async application's code runs (a
/// `block_on` caller is woken by a worker, one thread hand-off more a call).
fn time_calls(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    n: usize,
    warmup: usize,
    make: impl Fn() -> Call + Send + 'static,
) -> Vec<f64> {
    let c = client.clone();
    let task = time_n_async(n, warmup, move || {
        let (c, call) = (c.clone(), make());
        async move {
            c.call(call)
                .await
                .unwrap_or_else(|e| panic!("benchmark call failed: {e}"));
        }
    });
    rt.block_on(rt.spawn(task)).expect("benchmark task")
}

fn ones(n: usize, shape: &[usize]) -> Tensor {
    Tensor::from_vec(vec![1.0f32; n], shape).expect("tensor")
}

// ---------------------------------------------------------------- server

struct ServerProc {
    child: Option<Child>,
    /// The first listener (tcp when this program starts the server).
    url: String,
    /// Every listener, `url` first.
    urls: Vec<String>,
    /// The SHA-256 fingerprint of the certificate of the server's TLS listeners.
    tls_fingerprint: Option<String>,
    note: String,
    /// Where the server writes its generated TLS certificate.
    _cert_dir: Option<tempfile::TempDir>,
}

impl ServerProc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn find_server_bin(args: &Args) -> Option<PathBuf> {
    if let Some(p) = &args.server_bin {
        return Some(p.clone());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // target/<profile>/mymps-bench, or target/<profile>/deps/... for tests.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("mymps");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

fn start_server(args: &Args, device: &str) -> Result<ServerProc, String> {
    let schemes = mymps::transport::available_schemes();
    let mut cert_dir = None;
    let mut listeners = 1;
    let (mut cmd, note) = match find_server_bin(args) {
        Some(bin) => {
            let mut c = Command::new(&bin);
            c.args(["serve", "--listen", "tcp://127.0.0.1:0", "--log", "warn"]);
            c.args(["--device", device]);
            // Every other transport both sides have, for the per-transport
            // table (the server's generated certificate, one for its TLS
            // listeners, goes to a folder of its own).
            for tls in ["tcp+tls", "quic"] {
                if schemes.contains(&tls) {
                    c.args(["--listen", &format!("{tls}://127.0.0.1:0")]);
                    listeners += 1;
                    if cert_dir.is_none() {
                        let d =
                            tempfile::tempdir().map_err(|e| format!("no temporary folder: {e}"))?;
                        c.arg("--tls-cert-out").arg(d.path().join("cert.pem"));
                        cert_dir = Some(d);
                    }
                }
            }
            if schemes.contains(&"zmq") {
                c.args(["--listen", "zmq://127.0.0.1:0"]);
                listeners += 1;
            }
            (
                c,
                format!("server: {} serve (child process)", bin.display()),
            )
        }
        None => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut c = Command::new(exe);
            c.args(["--internal-serve", "--device", device]);
            (
                c,
                "server: no `mymps` executable found (build it, or pass --server-bin); \
                 using this program's in-process server in a child process"
                    .to_string(),
            )
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start server: {e}"))?;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // The listening lines (one per listener), then, for the TLS listeners,
    // the certificate lines (one certificate for all of them).
    let mut urls = Vec::new();
    let mut tls_fingerprint = None;
    while urls.len() < listeners || (cert_dir.is_some() && tls_fingerprint.is_none()) {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(u) = l.strip_prefix("mymps: listening on ") {
                    urls.push(u.trim().to_string());
                } else if let Some(rest) = l
                    .strip_prefix("mymps: quic certificate ")
                    .or_else(|| l.strip_prefix("mymps: tcp+tls certificate "))
                {
                    tls_fingerprint = rest.rsplit_once(" sha256 ").map(|(_, fp)| fp.to_owned());
                }
            }
            _ => {
                let _ = child.kill();
                return Err("server exited before listening".into());
            }
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProc {
        child: Some(child),
        url: urls[0].clone(),
        urls,
        tls_fingerprint,
        note,
        _cert_dir: cert_dir,
    })
}

/// `--internal-serve`: the same server as `mymps serve`, libtorch backend,
/// TCP on an ephemeral loopback port.
fn internal_serve(device: &str) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let backend =
            Arc::new(mymps::backend_tch::TchBackend::new(device).map_err(|e| e.to_string())?);
        let config = mymps::server::ServerConfig {
            listen: vec![mymps::transport::Endpoint::new("tcp", "127.0.0.1", 0)],
            ..mymps::server::ServerConfig::default()
        };
        let server = mymps::server::Server::bind(config, backend)
            .await
            .map_err(|e| e.to_string())?
            .spawn();
        println!("mymps: listening on {}", server.endpoints()[0]);
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// A "Key: N kB" field of /proc/PID/FILE (`status`: `VmHWM:`, `VmRSS:`;
/// `smaps_rollup`: `LazyFree:`), bytes.
fn proc_mem(pid: u32, file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Minor page faults of a process so far (/proc/PID/stat field 10).
fn minor_faults(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

fn page_size() -> f64 {
    4096.0
}

// ---------------------------------------------------------------- baselines

/// A thread echoing every byte back, on 127.0.0.1:0.
fn start_echo() -> std::net::SocketAddr {
    start_echo_after(Duration::ZERO)
}

/// [`start_echo`], answering each read after spinning `delay` (a server
/// busy for that long, on a thread that stays awake).
fn start_echo_after(delay: Duration) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = s.try_clone().expect("clone");
                let mut w = s;
                let mut buf = vec![0u8; MIB];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let t = Instant::now();
                            while t.elapsed() < delay {
                                std::hint::spin_loop();
                            }
                            if w.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn echo_small(addr: std::net::SocketAddr, n: usize) -> Vec<f64> {
    let mut s = TcpStream::connect(addr).expect("connect echo");
    s.set_nodelay(true).expect("nodelay");
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    time_n(n, 200, || {
        s.write_all(&msg).expect("write");
        s.read_exact(&mut back).expect("read");
    })
}

/// Round trips of `bytes` through the echo: a writer thread sends while
/// this one reads everything back.
fn echo_large(addr: std::net::SocketAddr, bytes: usize, n: usize) -> Vec<f64> {
    let s = TcpStream::connect(addr).expect("connect echo");
    s.set_nodelay(true).expect("nodelay");
    let data = Arc::new(vec![1u8; bytes]);
    let mut buf = vec![0u8; MIB];
    time_n(n, 1, || {
        let mut w = s.try_clone().expect("clone");
        let d = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&d).expect("write"));
        let mut r = &s;
        let mut got = 0;
        while got < bytes {
            let k = r.read(&mut buf[..MIB.min(bytes - got)]).expect("read");
            assert!(k > 0, "echo closed");
            got += k;
        }
        writer.join().expect("writer");
    })
}

fn tch_device(device: &str) -> tch::Device {
    if device.starts_with("cuda") {
        let i = device
            .strip_prefix("cuda:")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        tch::Device::Cuda(i)
    } else {
        tch::Device::Cpu
    }
}

fn sync(dev: tch::Device) {
    if let tch::Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}

// ---------------------------------------------------------------- report

struct Target {
    name: &'static str,
    measured: String,
    goal: &'static str,
    pass: Option<bool>,
}

fn fmt_us(v: &Value, k: &str) -> String {
    v[k].as_f64().map_or("-".into(), |x| format!("{x:.1}"))
}

fn main() {
    // The in-process libtorch baseline allocates as `mymps serve` does.
    // SAFETY: no other thread runs yet.
    unsafe { mymps::backend_tch::prefer_huge_pages() };
    let args = Args::parse();
    let device = args
        .device
        .clone()
        .unwrap_or_else(|| if args.gpu { "cuda" } else { "cpu" }.into());
    if args.internal_serve {
        let r = match &args.internal_model_root {
            Some(root) => soak::internal_serve(&device, root),
            None => internal_serve(&device),
        };
        if let Err(e) = r {
            eprintln!("mymps-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(d) = &args.soak {
        let r = soak::parse_duration(d).and_then(|d| soak::run(&args, &device, d));
        if let Err(e) = r {
            eprintln!("mymps-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(&args, &device) {
        eprintln!("mymps-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args, device: &str) -> Result<(), String> {
    let plan = Plan::new(args.quick);
    let load_start = loadavg();
    let mut notes: Vec<String> = Vec::new();
    let server = match &args.addr {
        Some(a) => ServerProc {
            child: None,
            url: a.clone(),
            urls: vec![a.clone()],
            tls_fingerprint: None,
            note: format!("server: {a} (given with --addr)"),
            _cert_dir: None,
        },
        None => start_server(args, device)?,
    };
    notes.push(server.note.clone());
    let schemes = mymps::transport::available_schemes();
    notes.push(format!(
        "transports compiled in: {}; measured over {}",
        schemes.join(", "),
        server
            .url
            .split_once("://")
            .map_or("tcp", |(scheme, _)| scheme)
    ));
    if cfg!(debug_assertions) {
        notes
            .push("debug build: the numbers are not representative (cargo build --release)".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = rt
        .block_on(Client::connect(&server.url))
        .map_err(|e| format!("cannot connect to {}: {e}", server.url))?;
    let server_device = client.welcome().device.clone();
    if args.chains_only {
        return chains::run_alone(args, &rt, &client, device, notes, &load_start);
    }

    let with_small_op = args.gpu && server_device != "cpu" && args.addr.is_none();
    let steps = 8 + u64::from(args.gpu) + u64::from(with_small_op);
    let pb = ProgressBar::new(steps);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("style"),
    );
    pb.enable_steady_tick(Duration::from_millis(200));

    // -- baselines: raw TCP echo, local libtorch
    pb.set_message("baselines: raw TCP echo, local libtorch");
    let echo = start_echo();
    let echo_small_s = summary(echo_small(echo, plan.n_small));
    let mut echo_large_v = Vec::new();
    for &mib in &plan.sizes_mib {
        let med = median(echo_large(echo, mib * MIB, plan.iters_large));
        echo_large_v.push(
            json!({"mib": mib, "median_s": med, "gb_s": 2.0 * (mib * MIB) as f64 / med / 1e9}),
        );
    }
    let tdev = tch_device(device);
    let local = {
        let _g = tch::no_grad_guard();
        let a = tch::Tensor::ones([4, 4], (tch::Kind::Float, tdev));
        let add = summary(time_n(plan.n_small, 200, || {
            let _ = (&a + &a).to(tch::Device::Cpu);
        }));
        let m = tch::Tensor::ones([256, 256], (tch::Kind::Float, tdev));
        let mm = summary(time_n(plan.n_matmul, 10, || {
            let _ = m.matmul(&m).to(tch::Device::Cpu);
        }));
        let mut neg = Vec::new();
        for &mib in &plan.sizes_mib {
            let x = tch::Tensor::ones([(mib * MIB / 4) as i64], (tch::Kind::Float, tdev));
            let med = median(time_n(plan.iters_large, 1, || {
                let _ = x.neg().to(tch::Device::Cpu);
            }));
            neg.push(json!({"mib": mib, "median_s": med}));
        }
        json!({"add_4x4": add, "matmul_256": mm, "neg": neg})
    };
    let baselines = json!({
        "tcp_echo_64b": echo_small_s,
        "tcp_echo_large": echo_large_v,
        "local_tch": local,
    });
    pb.inc(1);

    // -- latency
    pb.set_message("latency: add 4x4, matmul 256x256");
    let a = ones(16, &[4, 4]);
    let add_s = {
        let a = a.clone();
        time_calls(&rt, &client, plan.n_small, 200, move || {
            Call::new("add").arg(a.clone()).arg(a.clone())
        })
    };
    let m = ones(256 * 256, &[256, 256]);
    let mm_s = time_calls(&rt, &client, plan.n_matmul, 10, move || {
        Call::new("matmul").arg(m.clone()).arg(m.clone())
    });
    // The blocking client (its own runtime, the caller's thread waits): the
    // path the Python client takes, without Python.
    let blocking = mymps::client::blocking::Client::connect(&server.url)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let add_blocking = time_n(plan.n_small, 200, || {
        blocking
            .call(Call::new("add").arg(a.clone()).arg(a.clone()))
            .expect("add");
    });
    blocking.close();
    drop(blocking);
    let latency = json!({"tcp": {
        "add_4x4": summary(add_s),
        "add_4x4_blocking_client": summary(add_blocking),
        "matmul_256": summary(mm_s),
    }});
    pb.inc(1);

    // -- every transport the server listens on, measured the same way
    pb.set_message("transports");
    let mut transports = serde_json::Map::new();
    for url in &server.urls {
        let scheme = url.split_once("://").map_or("tcp", |(s, _)| s);
        pb.set_message(format!("transports: {scheme}"));
        let fp = matches!(scheme, "quic" | "tcp+tls")
            .then(|| server.tls_fingerprint.clone())
            .flatten();
        transports.insert(scheme.to_owned(), measure_transport(&rt, url, fp, &plan));
    }
    pb.inc(1);

    // -- throughput
    pb.set_message("throughput: neg on large tensors");
    let mut thr = Vec::new();
    for &mib in &plan.sizes_mib {
        pb.set_message(format!("throughput: neg {mib} MiB"));
        let x = ones(mib * MIB / 4, &[mib * MIB / 4]);
        let s = time_calls(&rt, &client, plan.iters_large, 1, move || {
            Call::new("neg").arg(x.clone())
        });
        let med = median(s);
        thr.push(
            json!({"mib": mib, "median_s": med, "gb_s": 2.0 * (mib * MIB) as f64 / med / 1e9}),
        );
    }
    pb.inc(1);

    // -- concurrency
    pb.set_message("concurrency: clients, pipelining");
    let mut conc = Vec::new();
    for &n in &plan.clients {
        pb.set_message(format!("concurrency: {n} clients"));
        let rps = rt.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..n {
                clients.push(Client::connect(&server.url).await.expect("connect"));
            }
            closed_loop(clients, a.clone(), plan.conc_secs).await
        });
        conc.push(json!({"clients": n, "connections": n, "req_per_s": rps}));
    }
    pb.set_message("concurrency: pipelined on one connection");
    let depth = plan.pipeline_depth;
    let pipelined = rt.block_on(closed_loop(
        vec![client.clone(); depth],
        a.clone(),
        plan.conc_secs,
    ));
    let concurrency = json!({
        "op": "add 4x4",
        "clients": conc,
        "pipelined": {"connections": 1, "in_flight": depth, "req_per_s": pipelined},
    });
    pb.inc(1);

    // -- python
    pb.set_message("python client");
    let python = if args.no_python {
        json!({"skipped": "--no-python"})
    } else {
        run_python(args, &server.url, &plan)
    };
    if let Some(s) = python["skipped"].as_str() {
        notes.push(format!("python: skipped: {s}"));
    }
    pb.inc(1);

    // -- server memory
    pb.set_message(format!("server memory: neg {} MiB", plan.memory_mib));
    let memory = measure_memory(&rt, &client, &server, plan.memory_mib)?;
    pb.inc(1);

    // -- remote tensors: chains shipped, kept, as a graph, and local
    pb.set_message("remote tensors: chains of 8 ops");
    let chain_plan = chains::ChainPlan::new(args.quick, server_device.starts_with("cuda"));
    let resident = chains::measure(&rt, &client, tdev, &chain_plan, &pb)?;
    pb.inc(1);

    // -- gpu
    let gpu = if args.gpu {
        pb.set_message("gpu: copies and matmul 4096");
        let g = measure_gpu(&rt, &client, device, args.quick);
        pb.inc(1);
        Some(g)
    } else {
        None
    };
    // -- the small op on an accelerator, against a CPU server (issue 17)
    let small_op = with_small_op.then(|| {
        pb.set_message("small op: where the time goes, a CPU server alongside");
        let s = small::measure(args, &rt, &client, device, &plan);
        pb.inc(1);
        s
    });
    pb.finish_and_clear();

    let machine = machine_name();
    notes.push(format!(
        "load average (1, 5, 15 min) at start: {load_start}; at end: {}",
        loadavg()
    ));
    let mut report = json!({
        "machine": machine,
        "date_utc": date_utc(),
        "quick": args.quick,
        "server_url": server.url,
        "server_device": server_device,
        "baselines": baselines,
        "latency": latency,
        "transports": transports,
        "throughput": {"op": "neg float32", "tcp": thr},
        "concurrency": concurrency,
        "python": python,
        "memory": memory,
        "resident": resident,
        "notes": notes,
    });
    if let Some(g) = gpu {
        report["gpu"] = g;
    }
    if let Some(s) = small_op {
        report["small_op"] = s;
    }
    let mut targets = targets(&report);
    small::targets(&report, &mut targets);
    chains::targets(
        &report["resident"],
        report["server_device"].as_str().unwrap_or(""),
        &mut targets,
    );
    report["targets"] = Value::Array(
        targets
            .iter()
            .map(
                |t| json!({"name": t.name, "measured": t.measured, "goal": t.goal, "pass": t.pass}),
            )
            .collect(),
    );
    print_table(&report, &targets);
    if let Some(p) = &args.json {
        let s = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(p, s).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    client.close();
    match chains::mismatch_error(&report["resident"]) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The neg size of the per-transport table: the largest of the plan's up
/// to 64 MiB.
fn transport_mib(plan: &Plan) -> usize {
    plan.sizes_mib
        .iter()
        .copied()
        .filter(|&m| m <= 64)
        .max()
        .unwrap_or(1)
}

/// add 4x4, matmul 256 and one neg over the transport of `url` (with its
/// own connection): the per-transport table.
fn measure_transport(
    rt: &tokio::runtime::Runtime,
    url: &str,
    tls_fingerprint: Option<String>,
    plan: &Plan,
) -> Value {
    let options = mymps::client::ClientOptions {
        transport: mymps::transport::TransportOptions {
            tls_fingerprint,
            ..Default::default()
        },
        ..Default::default()
    };
    let c = match rt.block_on(Client::connect_with(url, options)) {
        Ok(c) => c,
        Err(e) => return json!({"url": url, "error": e.to_string()}),
    };
    let a = ones(16, &[4, 4]);
    let add = time_calls(rt, &c, plan.n_small, 200, move || {
        Call::new("add").arg(a.clone()).arg(a.clone())
    });
    let m = ones(256 * 256, &[256, 256]);
    let mm = time_calls(rt, &c, plan.n_matmul, 10, move || {
        Call::new("matmul").arg(m.clone()).arg(m.clone())
    });
    let mib = transport_mib(plan);
    let x = ones(mib * MIB / 4, &[mib * MIB / 4]);
    let neg = median(time_calls(rt, &c, plan.iters_large, 1, move || {
        Call::new("neg").arg(x.clone())
    }));
    c.close();
    json!({
        "url": url,
        "add_4x4": summary(add),
        "matmul_256": summary(mm),
        "neg": {"mib": mib, "median_s": neg, "gb_s": 2.0 * (mib * MIB) as f64 / neg / 1e9},
    })
}

/// `clients.len()` tasks each calling add in a loop for `secs`; requests/s.
/// Clones of one `Client` share its connection (pipelining).
async fn closed_loop(clients: Vec<Client>, a: Tensor, secs: f64) -> f64 {
    // Warm-up: one call per task.
    for c in &clients {
        c.call(Call::new("add").arg(a.clone()).arg(a.clone()))
            .await
            .expect("add");
    }
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let (done, count, a) = (done.clone(), count.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                c.call(Call::new("add").arg(a.clone()).arg(a.clone()))
                    .await
                    .expect("add");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn run_python(args: &Args, url: &str, plan: &Plan) -> Value {
    let py = match &args.python {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(".venv/bin/python");
            if !p.exists() {
                return json!({"skipped": "no --python given and no .venv/bin/python here"});
            }
            p
        }
    };
    let hostport = url.strip_prefix("tcp://").unwrap_or(url);
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return json!({"skipped": format!("cannot parse {url}")});
    };
    let script = std::env::temp_dir().join(format!("mymps-bench-{}.py", std::process::id()));
    if let Err(e) = std::fs::write(&script, include_str!("bench_client.py")) {
        return json!({"skipped": format!("cannot write the script: {e}")});
    }
    // The Python client pays for the same sizes except 256 MiB, which
    // would only add minutes.
    let sizes: Vec<String> = plan
        .sizes_mib
        .iter()
        .filter(|&&m| m <= 64)
        .map(|m| m.to_string())
        .collect();
    let out = Command::new(&py)
        .arg(&script)
        .args([host, port])
        .arg(plan.n_small.to_string())
        .arg(plan.n_matmul.to_string())
        .arg(plan.iters_large.to_string())
        .arg(sizes.join(","))
        .stderr(Stdio::piped())
        .output();
    let _ = std::fs::remove_file(&script);
    match out {
        Err(e) => json!({"skipped": format!("cannot run {}: {e}", py.display())}),
        Ok(o) if !o.status.success() => json!({"skipped": format!(
            "{} failed: {}",
            py.display(),
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        )}),
        Ok(o) => serde_json::from_slice(&o.stdout).unwrap_or_else(
            |e| json!({"skipped": format!("bad output from the Python script: {e}")}),
        ),
    }
}

/// Peak server RSS while it runs neg on `mib` MiB, against the payload.
fn measure_memory(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    server: &ServerProc,
    mib: usize,
) -> Result<Value, String> {
    let payload = (mib * MIB) as f64;
    let x = ones(mib * MIB / 4, &[mib * MIB / 4]);
    let run_once = || {
        rt.block_on(client.call(Call::new("neg").arg(x.clone())))
            .map_err(|e| e.to_string())
    };
    if let Some(pid) = server.pid() {
        // Reset the high-water mark (Linux: "5" > clear_refs), then read it.
        let before = proc_mem(pid, "status", "VmRSS:").unwrap_or(0) as f64;
        // Pooled receive buffers (MADV_FREE: the kernel may take them back).
        let lazy_free = proc_mem(pid, "smaps_rollup", "LazyFree:").unwrap_or(0) as f64;
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let faults_before = minor_faults(pid).unwrap_or(0);
        run_once()?;
        let faults = minor_faults(pid).unwrap_or(0).saturating_sub(faults_before);
        let peak = proc_mem(pid, "status", "VmHWM:").unwrap_or(0) as f64;
        Ok(json!({
            "method": if reset { "VmHWM of the server process (reset before the call)" } else { "VmHWM of the server process (lifetime: reset failed)" },
            "payload_mib": mib,
            "rss_before_mib": before / MIB as f64,
            "lazy_free_before_mib": lazy_free / MIB as f64,
            "peak_rss_mib": peak / MIB as f64,
            "peak_over_payload": peak / payload,
            "growth_over_payload": (peak - before) / payload,
            "server_minor_faults": faults,
            "server_faulted_mib": faults as f64 * page_size() / MIB as f64,
        }))
    } else {
        // Remote server: sample `stats` in a thread while the call runs.
        let before = rt
            .block_on(client.stats())
            .map_err(|e| e.to_string())?
            .process_rss_mb;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(before.to_bits()));
        let sampler = {
            let (stop, peak, c) = (stop.clone(), peak.clone(), client.clone());
            rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(s) = c.stats().await {
                        let p = f64::from_bits(peak.load(Ordering::Relaxed));
                        peak.store(p.max(s.process_rss_mb).to_bits(), Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        run_once()?;
        stop.store(true, Ordering::Relaxed);
        let _ = rt.block_on(sampler);
        let peak_mb = f64::from_bits(peak.load(Ordering::Relaxed));
        let peak = peak_mb * 1e6;
        let before_b = before * 1e6;
        Ok(json!({
            "method": "stats.process_rss_mb sampled every 5 ms (may miss the true peak)",
            "payload_mib": mib,
            "rss_before_mib": before_b / MIB as f64,
            "peak_rss_mib": peak / MIB as f64,
            "peak_over_payload": peak / payload,
            "growth_over_payload": (peak - before_b) / payload,
        }))
    }
}

/// GPU mode: 256 MiB through the server (exec on a CUDA server moves the
/// input host->device and the result device->host) against PyTorch's pinned
/// copies, and matmul 4096^2 end to end against local tch.
fn measure_gpu(rt: &tokio::runtime::Runtime, client: &Client, device: &str, quick: bool) -> Value {
    let dev = tch_device(device);
    if !matches!(dev, tch::Device::Cuda(_)) || !tch::Cuda::is_available() {
        return json!({"skipped": format!("--gpu needs CUDA (device {device}, cuda available: {})", tch::Cuda::is_available())});
    }
    let _g = tch::no_grad_guard();
    let mib = if quick { 16 } else { 256 };
    let bytes = mib * MIB;
    let n = bytes / 4;
    let iters = if quick { 3 } else { 10 };
    // PyTorch pinned copies.
    let pinned = tch::Tensor::empty([n as i64], (tch::Kind::Float, tch::Device::Cpu))
        .pin_memory(dev)
        .fill_(1.0);
    let mut on_dev = tch::Tensor::empty([n as i64], (tch::Kind::Float, dev));
    let mut back =
        tch::Tensor::empty([n as i64], (tch::Kind::Float, tch::Device::Cpu)).pin_memory(dev);
    let h2d = median(time_n(iters, 2, || {
        on_dev.copy_(&pinned);
        sync(dev);
    }));
    let d2h = median(time_n(iters, 2, || {
        back.copy_(&on_dev);
        sync(dev);
    }));
    // Our transfer path, in this process: a tensor in the memory the server
    // receives into (the backend's host memory: pinned on CUDA), moved to
    // the device by the backend's converter, and a device result back to a
    // host buffer.
    let received = {
        let backend = mymps_backend_tch::TchBackend::new(device).expect("backend");
        let alloc = mymps::Backend::host_alloc(&backend);
        let mut f = mymps::buffer::Filler::new(bytes, alloc.as_deref()).expect("buffer");
        let chunk: Vec<u8> = std::iter::repeat_n(1.0f32.to_ne_bytes(), MIB / 4)
            .flatten()
            .collect();
        while bytes::BufMut::remaining_mut(&f) > 0 {
            let k = bytes::BufMut::remaining_mut(&f).min(chunk.len());
            bytes::BufMut::put_slice(&mut f, &chunk[..k]);
        }
        mymps::Tensor::new(mymps::DType::Float32, &[n], f.freeze().expect("full")).expect("tensor")
    };
    let mut conv = mymps_backend_tch::Converter::new(dev);
    let ours_h2d = median(time_n(iters, 2, || {
        let _t = conv.upload(received.clone()).expect("upload");
        sync(dev);
    }));
    let ours_d2h = median(time_n(iters, 2, || {
        let _h = conv.download(on_dev.shallow_clone()).expect("download");
        sync(dev);
    }));
    // Our path end to end: neg costs wire + H2D + kernel + D2H.
    let x = ones(n, &[n]);
    let ours = median(rt.block_on(time_n_async(iters, 1, || {
        let c = client.clone();
        let x = x.clone();
        async move {
            c.call(Call::new("neg").arg(x)).await.expect("neg");
        }
    })));
    let local_neg = median(time_n(iters, 2, || {
        let y = on_dev.neg();
        let _ = y.to(tch::Device::Cpu);
        sync(dev);
    }));
    let mut mm = Vec::new();
    for (kind, dtype, name) in [
        (tch::Kind::Float, mymps::DType::Float32, "float32"),
        (tch::Kind::BFloat16, mymps::DType::BFloat16, "bfloat16"),
    ] {
        let side = if quick { 1024 } else { 4096 };
        let elem = if name == "float32" { 4 } else { 2 };
        let t = mymps::Tensor::new(dtype, &[side, side], vec![0u8; side * side * elem])
            .expect("tensor");
        let remote = median(rt.block_on(time_n_async(iters, 2, || {
            let c = client.clone();
            let t = t.clone();
            async move {
                c.call(Call::new("matmul").arg(t.clone()).arg(t))
                    .await
                    .expect("matmul");
            }
        })));
        let lt = tch::Tensor::zeros([side as i64, side as i64], (kind, tch::Device::Cpu));
        let local_e2e = median(time_n(iters, 2, || {
            let d = lt.to(dev);
            let _ = d.matmul(&d).to(tch::Device::Cpu);
            sync(dev);
        }));
        let ld = lt.to(dev);
        let local_kernel = median(time_n(iters, 2, || {
            let _ = ld.matmul(&ld);
            sync(dev);
        }));
        mm.push(json!({"dtype": name, "side": side, "remote_s": remote,
            "local_h2d_matmul_d2h_s": local_e2e, "local_kernel_s": local_kernel}));
    }
    let gb = |s: f64| bytes as f64 / s / 1e9;
    json!({
        "mib": mib,
        "pinned_h2d_gb_s": gb(h2d),
        "pinned_d2h_gb_s": gb(d2h),
        "pinned_roundtrip_gb_s": 2.0 * bytes as f64 / (h2d + d2h) / 1e9,
        "ours_neg_roundtrip_gb_s": 2.0 * bytes as f64 / ours / 1e9,
        "local_neg_to_host_s": local_neg,
        "ours_h2d_gb_s": gb(ours_h2d),
        "ours_d2h_gb_s": gb(ours_d2h),
        "ratio_ours_over_pinned": (h2d + d2h) / (ours_h2d + ours_d2h),
        "ratio_e2e_over_pinned": (h2d + d2h) / ours,
        "matmul": mm,
    })
}

fn machine_name() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into());
    format!("{cpus}-core {}, {model}", std::env::consts::ARCH)
}

/// /proc/loadavg's first three fields: other work on the machine skews
/// every number here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn targets(r: &Value) -> Vec<Target> {
    let f = |v: &Value| v.as_f64();
    let mut t = Vec::new();
    let p50 = f(&r["latency"]["tcp"]["add_4x4"]["p50_us"]);
    let rtt = f(&r["baselines"]["tcp_echo_64b"]["p50_us"]);
    if let (Some(p), Some(e)) = (p50, rtt) {
        t.push(Target {
            name: "small-op p50 / raw TCP RTT p50",
            measured: format!("{:.2}x ({p:.1} us / {e:.1} us)", p / e),
            goal: "<= 2x",
            pass: Some(p / e <= 2.0),
        });
    }
    let size = |arr: &Value, mib: u64| {
        arr.as_array()
            .and_then(|a| a.iter().find(|x| x["mib"].as_u64() == Some(mib)))
            .and_then(|x| x["gb_s"].as_f64())
    };
    let big = r["throughput"]["tcp"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(|x| x["mib"].as_u64())
                .filter(|&m| m <= 64)
                .max()
        })
        .unwrap_or(64);
    if let (Some(o), Some(e)) = (
        size(&r["throughput"]["tcp"], big),
        size(&r["baselines"]["tcp_echo_large"], big),
    ) {
        t.push(Target {
            name: if big == 64 {
                "64 MiB neg GB/s / raw echo GB/s"
            } else {
                "largest (<=64 MiB) neg GB/s / raw echo GB/s"
            },
            measured: format!("{:.0}% ({o:.2} / {e:.2} GB/s, {big} MiB)", 100.0 * o / e),
            goal: ">= 70%",
            pass: Some(o / e >= 0.7),
        });
    }
    let eight = r["concurrency"]["clients"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["clients"].as_u64() == Some(8)))
        .and_then(|x| x["req_per_s"].as_f64());
    if let Some(v) = eight {
        t.push(Target {
            name: "small ops/s with 8 clients",
            measured: format!("{v:.0}/s"),
            goal: ">= 20000/s",
            pass: Some(v >= 20000.0),
        });
    }
    match (f(&r["python"]["add_4x4"]["p50_us"]), p50) {
        (Some(py), Some(rs)) => t.push(Target {
            name: "Python p50 / Rust p50 (add 4x4)",
            measured: format!("{:.2}x ({py:.1} us / {rs:.1} us)", py / rs),
            goal: "<= 1.5x",
            pass: Some(py / rs <= 1.5),
        }),
        _ => t.push(Target {
            name: "Python p50 / Rust p50 (add 4x4)",
            measured: "skipped".into(),
            goal: "<= 1.5x",
            pass: None,
        }),
    }
    if let Some(m) = f(&r["memory"]["peak_over_payload"]) {
        t.push(Target {
            name: "server peak RSS / payload",
            measured: format!(
                "{m:.2}x ({:.0} MiB peak, {} MiB payload; growth {:.2}x)",
                f(&r["memory"]["peak_rss_mib"]).unwrap_or(0.0),
                r["memory"]["payload_mib"],
                f(&r["memory"]["growth_over_payload"]).unwrap_or(0.0)
            ),
            goal: "<= 3x",
            pass: Some(m <= 3.0),
        });
    }
    match f(&r["gpu"]["ratio_ours_over_pinned"]) {
        Some(x) => t.push(Target {
            name: "GPU H2D+D2H (ours) / PyTorch pinned copies",
            measured: format!(
                "{:.0}% (H2D {:.1}, D2H {:.1} vs {:.1}, {:.1} GB/s)",
                100.0 * x,
                f(&r["gpu"]["ours_h2d_gb_s"]).unwrap_or(0.0),
                f(&r["gpu"]["ours_d2h_gb_s"]).unwrap_or(0.0),
                f(&r["gpu"]["pinned_h2d_gb_s"]).unwrap_or(0.0),
                f(&r["gpu"]["pinned_d2h_gb_s"]).unwrap_or(0.0)
            ),
            goal: ">= 80%",
            pass: Some(x >= 0.8),
        }),
        None => t.push(Target {
            name: "GPU H2D+D2H (ours) / PyTorch pinned copies",
            measured: match r["gpu"]["skipped"].as_str() {
                Some(_) => "skipped (no CUDA)".into(),
                None => "not run (pass --gpu)".into(),
            },
            goal: ">= 80%",
            pass: None,
        }),
    }
    t
}

fn print_targets(targets: &[Target]) {
    println!("{:<44} {:<48} {:<12} result", "target", "measured", "goal");
    for t in targets {
        let res = match t.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        };
        println!("{:<44} {:<48} {:<12} {}", t.name, t.measured, t.goal, res);
    }
}

fn print_table(r: &Value, targets: &[Target]) {
    println!(
        "mymps-bench on {} ({})",
        r["machine"].as_str().unwrap_or(""),
        r["date_utc"].as_str().unwrap_or("")
    );
    println!(
        "server {} on {}",
        r["server_url"].as_str().unwrap_or(""),
        r["server_device"].as_str().unwrap_or("")
    );
    println!();
    println!(
        "{:<42} {:>10} {:>10} {:>10}",
        "latency (us)", "p50", "p90", "p99"
    );
    let row = |name: &str, v: &Value| {
        println!(
            "{:<42} {:>10} {:>10} {:>10}",
            name,
            fmt_us(v, "p50_us"),
            fmt_us(v, "p90_us"),
            fmt_us(v, "p99_us")
        );
    };
    row("raw TCP echo 64 B", &r["baselines"]["tcp_echo_64b"]);
    row("local tch add 4x4", &r["baselines"]["local_tch"]["add_4x4"]);
    row("mymps tcp add 4x4 (Rust)", &r["latency"]["tcp"]["add_4x4"]);
    row(
        "mymps tcp add 4x4 (Rust blocking client)",
        &r["latency"]["tcp"]["add_4x4_blocking_client"],
    );
    row("mymps tcp add 4x4 (Python)", &r["python"]["add_4x4"]);
    row(
        "local tch matmul 256",
        &r["baselines"]["local_tch"]["matmul_256"],
    );
    row(
        "mymps tcp matmul 256 (Rust)",
        &r["latency"]["tcp"]["matmul_256"],
    );
    row("mymps tcp matmul 256 (Python)", &r["python"]["matmul_256"]);
    println!();
    if let Some(ts) = r["transports"].as_object().filter(|t| !t.is_empty()) {
        println!(
            "{:<12} {:>12} {:>12} {:>14} {:>14}",
            "transport", "add p50 us", "add p99 us", "matmul p50 us", "neg GB/s"
        );
        for (scheme, t) in ts {
            if let Some(e) = t["error"].as_str() {
                println!("{scheme:<12} error: {e}");
                continue;
            }
            println!(
                "{:<12} {:>12} {:>12} {:>14} {:>14}",
                scheme,
                fmt_us(&t["add_4x4"], "p50_us"),
                fmt_us(&t["add_4x4"], "p99_us"),
                fmt_us(&t["matmul_256"], "p50_us"),
                t["neg"]["gb_s"]
                    .as_f64()
                    .map_or("-".into(), |g| format!("{g:.2} ({} MiB)", t["neg"]["mib"])),
            );
        }
        println!();
    }
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "neg size", "echo GB/s", "Rust GB/s", "Python GB/s", "local ms", "wire ms"
    );
    let empty = Vec::new();
    for t in r["throughput"]["tcp"].as_array().unwrap_or(&empty) {
        let mib = t["mib"].as_u64().unwrap_or(0);
        let find = |v: &Value, k: &str| {
            v.as_array()
                .and_then(|a| a.iter().find(|x| x["mib"].as_u64() == Some(mib)))
                .and_then(|x| x[k].as_f64())
        };
        let opt = |x: Option<f64>, s: f64| x.map_or("-".into(), |v| format!("{:.2}", v * s));
        let local = find(&r["baselines"]["local_tch"]["neg"], "median_s");
        let remote = t["median_s"].as_f64();
        let wire = match (remote, local) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        println!(
            "{:<12} {:>12} {:>12} {:>12} {:>12} {:>14}",
            format!("{mib} MiB"),
            opt(find(&r["baselines"]["tcp_echo_large"], "gb_s"), 1.0),
            opt(t["gb_s"].as_f64(), 1.0),
            opt(find(&r["python"]["neg"], "gb_s"), 1.0),
            opt(local, 1e3),
            opt(wire, 1e3),
        );
    }
    println!();
    println!("{:<40} {:>12}", "concurrency (add 4x4)", "requests/s");
    for c in r["concurrency"]["clients"].as_array().unwrap_or(&empty) {
        println!(
            "{:<40} {:>12.0}",
            format!("{} clients (own connections)", c["clients"]),
            c["req_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    let p = &r["concurrency"]["pipelined"];
    println!(
        "{:<40} {:>12.0}",
        format!("1 connection, {} in flight", p["in_flight"]),
        p["req_per_s"].as_f64().unwrap_or(0.0)
    );
    println!();
    let m = &r["memory"];
    println!(
        "server memory, neg {} MiB: RSS before {:.0} MiB, peak {:.0} MiB ({:.2}x payload; growth {:.2}x) [{}]",
        m["payload_mib"],
        m["rss_before_mib"].as_f64().unwrap_or(0.0),
        m["peak_rss_mib"].as_f64().unwrap_or(0.0),
        m["peak_over_payload"].as_f64().unwrap_or(0.0),
        m["growth_over_payload"].as_f64().unwrap_or(0.0),
        m["method"].as_str().unwrap_or("")
    );
    if let Some(l) = m["lazy_free_before_mib"].as_f64() {
        println!(
            "of the RSS before: {l:.0} MiB of pooled receive buffers the kernel may reclaim (LazyFree)"
        );
    }
    if let Some(f) = m["server_minor_faults"].as_u64() {
        println!(
            "server page faults during that call: {f} ({:.0} MiB of freshly touched 4 KiB pages)",
            m["server_faulted_mib"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(g) = r.get("gpu") {
        println!();
        if let Some(s) = g["skipped"].as_str() {
            println!("gpu: skipped: {s}");
        } else {
            println!(
                "gpu {} MiB: PyTorch pinned H2D {:.2} GB/s, D2H {:.2} GB/s; our converter H2D {:.2} GB/s, D2H {:.2} GB/s; mymps neg round trip (wire included) {:.2} GB/s",
                g["mib"],
                g["pinned_h2d_gb_s"].as_f64().unwrap_or(0.0),
                g["pinned_d2h_gb_s"].as_f64().unwrap_or(0.0),
                g["ours_h2d_gb_s"].as_f64().unwrap_or(0.0),
                g["ours_d2h_gb_s"].as_f64().unwrap_or(0.0),
                g["ours_neg_roundtrip_gb_s"].as_f64().unwrap_or(0.0)
            );
            for mm in g["matmul"].as_array().unwrap_or(&empty) {
                println!(
                    "gpu matmul {}^2 {}: mymps {:.2} ms, local H2D+matmul+D2H {:.2} ms, local kernel {:.2} ms",
                    mm["side"],
                    mm["dtype"].as_str().unwrap_or(""),
                    mm["remote_s"].as_f64().unwrap_or(0.0) * 1e3,
                    mm["local_h2d_matmul_d2h_s"].as_f64().unwrap_or(0.0) * 1e3,
                    mm["local_kernel_s"].as_f64().unwrap_or(0.0) * 1e3
                );
            }
        }
    }
    chains::print(&r["resident"]);
    small::print(&r["small_op"]);
    println!();
    print_targets(targets);
    for n in r["notes"].as_array().unwrap_or(&empty) {
        println!("note: {}", n.as_str().unwrap_or(""));
    }
}
