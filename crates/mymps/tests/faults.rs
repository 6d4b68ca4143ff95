//! Faults around a real `mymps serve` child process: frozen and continued
//! (SIGSTOP/SIGCONT) under load, terminated (SIGTERM) under load, model
//! loading where no file can be written, a client killed in the middle of
//! a large frame. Every wait is bounded; ports are ephemeral on loopback.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mymps::client::{Call, Caller, Client};
use mymps::model::LoadRequest;
use mymps::protocol::rpc::Rpc;
use mymps::protocol::{self, FrameKind};
use mymps::{ErrorCode, Tensor};
use tokio::task::JoinSet;

/// The longest any one request of these tests may take to be answered.
const BOUND: Duration = Duration::from_secs(30);

fn artefact(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A `mymps serve` child; killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(cmd: &mut Command) -> Served {
        let (child, addr, lines) = common::spawn_serve(cmd);
        std::thread::spawn(move || for _ in lines {});
        Served { child, addr }
    }

    fn plain() -> Served {
        Served::start(
            Command::new(env!("CARGO_BIN_EXE_mymps"))
                .args(["serve", "--device", "cpu", "--log", "warn"])
                .args([
                    "--listen",
                    "tcp://127.0.0.1:0",
                    "--plugin-dir",
                    "/nonexistent",
                ])
                .stderr(Stdio::inherit()),
        )
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({sig})");
    }

    /// Waits for the child to exit, at most `bound`.
    fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < bound {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn filled(v: f32, shape: &[usize]) -> Tensor {
    Tensor::from_vec(vec![v; shape.iter().product()], shape).unwrap()
}

/// `add(x, x)` of a 16-element tensor of `v`, its result checked.
async fn checked_add(c: &Client, v: f32) -> mymps::Result<()> {
    let x = filled(v, &[16]);
    let out = c.call(Call::new("add").arg(x.clone()).arg(x)).await?;
    let got = out.output().unwrap().to_vec::<f32>().unwrap();
    assert!(got.iter().all(|&y| y == 2.0 * v), "add({v}) gave {got:?}");
    Ok(())
}

/// `matmul(ones(n, n), v·ones(n, n))`, its result checked (every element
/// n·v).
async fn checked_matmul(c: &Client, n: usize, v: f32) -> mymps::Result<()> {
    let out = c
        .call(
            Call::new("matmul")
                .arg(filled(1.0, &[n, n]))
                .arg(filled(v, &[n, n])),
        )
        .await?;
    let got = out.output().unwrap().to_vec::<f32>().unwrap();
    let want = n as f32 * v;
    assert!(
        got.len() == n * n && got.iter().all(|&y| (y - want).abs() <= want.abs() * 1e-4),
        "matmul({n}, {v}) gave a wrong result"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_server_answers_every_request_once_continued() {
    let served = Served::plain();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for k in 0..4u64 {
        let c = Client::connect(&served.addr).await.unwrap();
        let (done, stop) = (done.clone(), stop.clone());
        clients.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Four requests in flight on this connection at a time.
                let mut batch = JoinSet::new();
                for j in 0..4u64 {
                    let (c, v) = (c.clone(), (k * 100_000 + n + j) as f32 / 8.0);
                    batch.spawn(async move {
                        let r = if j == 0 {
                            checked_matmul(&c, 64, v).await
                        } else {
                            checked_add(&c, v).await
                        };
                        r.unwrap_or_else(|e| panic!("a request failed: {e}"));
                    });
                }
                let t = Instant::now();
                while let Some(r) = tokio::time::timeout(BOUND, batch.join_next())
                    .await
                    .unwrap_or_else(|_| panic!("a request unanswered after {:?}", t.elapsed()))
                {
                    r.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n += 4;
            }
            n
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        done.load(Ordering::Relaxed) > 0,
        "no request answered before the stop"
    );
    served.signal(libc::SIGSTOP);
    // Replies already on their way may still arrive; then nothing does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_stop = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        done.load(Ordering::Relaxed),
        at_stop,
        "answers came from a stopped server"
    );
    served.signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tokio::time::timeout(BOUND, clients.join_next())
        .await
        .expect("a client still waiting after the server was continued")
    {
        r.expect("every request of the client answered and correct");
    }
    assert!(
        done.load(Ordering::Relaxed) > at_stop,
        "no request answered after SIGCONT"
    );
    // And it goes on serving new connections.
    let c = Client::connect(&served.addr).await.unwrap();
    checked_add(&c, 3.0).await.unwrap();
    assert_eq!(c.health().await.unwrap().status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_requests_in_flight_and_fails_the_rest_clearly() {
    let mut served = Served::plain();
    // Slow work in flight: matmuls of 3072×3072 from two connections, on
    // resident operands (tiny request frames: each is whole on the server
    // at once, its 36 MiB result to come back).
    let n = 3072;
    let mut slow = JoinSet::new();
    let slow_done = Arc::new(AtomicU64::new(0));
    // Every operand first, then the four requests at once.
    let mut operands = Vec::new();
    for k in 0..2 {
        let c = Client::connect(&served.addr).await.unwrap();
        let a = c.put(filled(1.0, &[n, n])).await.unwrap().pop().unwrap();
        for j in 0..2 {
            let v = (1 + k * 2 + j) as f32;
            let b = c.put(filled(v, &[n, n])).await.unwrap().pop().unwrap();
            operands.push((c.clone(), a.clone(), b, v));
        }
    }
    {
        for (c, a, b, v) in operands {
            let slow_done = slow_done.clone();
            slow.spawn(async move {
                let out = c.call(Call::new("matmul").arg_ref(&a).arg_ref(&b)).await;
                slow_done.fetch_add(1, Ordering::Relaxed);
                let out = out?;
                let got = out.output().unwrap().to_vec::<f32>().unwrap();
                let want = n as f32 * v;
                assert!(got.len() == n * n && got.iter().all(|&y| y == want));
                Ok::<_, mymps::Error>(())
            });
        }
    }
    // Small requests from other clients, as fast as they are answered.
    let outcomes = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let mut load = JoinSet::new();
    for k in 0..3u64 {
        let c = Client::connect(&served.addr).await.unwrap();
        let outcomes = outcomes.clone();
        load.spawn(async move {
            for i in 0..100_000u64 {
                let r = tokio::time::timeout(BOUND, checked_add(&c, (k * 1_000_000 + i) as f32))
                    .await
                    .expect("a request hung after SIGTERM");
                match r {
                    Ok(()) => outcomes.lock().unwrap().0 += 1,
                    Err(e) => {
                        // The one clear failure: the connection went.
                        assert_eq!(e.code, ErrorCode::Connection, "{e}");
                        assert!(!e.message.is_empty());
                        outcomes.lock().unwrap().1 += 1;
                        return;
                    }
                }
            }
            panic!("the server never closed the connection");
        });
    }
    // The slow requests' frames are tiny: on the server well within
    // 300 ms; they take seconds, so none has been answered yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        slow_done.load(Ordering::Relaxed),
        0,
        "a slow request was answered before SIGTERM: make them slower"
    );
    let answered_before = outcomes.lock().unwrap().0;
    served.signal(libc::SIGTERM);
    // Every slow request that was in flight is answered, and correctly.
    while let Some(r) = tokio::time::timeout(BOUND, slow.join_next())
        .await
        .expect("a request in flight at SIGTERM was never answered")
    {
        r.unwrap()
            .unwrap_or_else(|e| panic!("a request in flight at SIGTERM failed: {e}"));
    }
    // The others: answered, or failed with a connection error; none hangs.
    while let Some(r) = tokio::time::timeout(BOUND, load.join_next())
        .await
        .expect("a client still waiting")
    {
        r.unwrap();
    }
    let (ok, failed) = *outcomes.lock().unwrap();
    assert!(
        ok > answered_before,
        "no small request answered while draining"
    );
    assert_eq!(failed, 3, "each client ends with one connection error");
    // The server exits on its own, successfully, within the grace period.
    let status = served
        .wait_exit(Duration::from_secs(20))
        .expect("the server did not exit after SIGTERM");
    assert!(status.success(), "mymps serve exited with {status}");
    assert!(Client::connect(&served.addr).await.is_err());
}

/// An MLP checkpoint (6 → 8 → 3, PyTorch's state_dict names) and the
/// forward of a fixed input.
fn write_mlp(path: &Path) -> (Tensor, Vec<f32>) {
    use tch::{Device, Kind};
    let opts = (Kind::Float, Device::Cpu);
    let w0 = tch::Tensor::randn([8, 6], opts);
    let b0 = tch::Tensor::randn([8], opts);
    let w1 = tch::Tensor::randn([3, 8], opts);
    let b1 = tch::Tensor::randn([3], opts);
    let x = tch::Tensor::randn([2, 6], opts);
    tch::Tensor::write_safetensors(
        &[
            ("layers.0.weight", &w0),
            ("layers.0.bias", &b0),
            ("layers.1.weight", &w1),
            ("layers.1.bias", &b1),
        ],
        path,
    )
    .unwrap();
    let y = x.linear(&w0, Some(&b0)).relu().linear(&w1, Some(&b1));
    let host = |t: &tch::Tensor| {
        let mut v = vec![0f32; t.numel()];
        t.contiguous().copy_data(&mut v, t.numel());
        v
    };
    (Tensor::from_vec(host(&x), &[2, 6]).unwrap(), host(&y))
}

fn load(name: &str, path: &Path) -> LoadRequest {
    LoadRequest {
        name: name.into(),
        model_type: "checkpoint".into(),
        model_path: Some(path.display().to_string()),
        model_class: Some("mlp".into()),
        config: Some(r#"{"activation": "relu"}"#.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_loading_needs_no_writes_and_broken_files_fail_clearly() {
    // What loading writes: nothing. The native loaders (safetensors,
    // checkpoints, TorchScript, Hugging Face folders) read their files and
    // keep tensors in memory; no cache, no temporary file. So the server
    // runs with RLIMIT_FSIZE = 0 — no byte can be written to any file, a
    // disk fuller than full — and SIGXFSZ ignored (a write would then fail
    // with EFBIG rather than kill it): a load that wrote would fail here.
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let good = root_path.join("mlp.safetensors");
    let (x, want) = write_mlp(&good);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mymps"));
    cmd.args(["serve", "--device", "cpu", "--log", "warn"])
        .args([
            "--listen",
            "tcp://127.0.0.1:0",
            "--plugin-dir",
            "/nonexistent",
        ])
        .arg("--plugin")
        .arg(artefact("libmymps_models.so"))
        .arg("--model-root")
        .arg(&root_path)
        // Its log goes to a pipe (a pipe is not a file the limit covers).
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &zero) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut served = Served::start(&mut cmd);
    let stderr = served.child.stderr.take().unwrap();
    std::thread::spawn(move || for _ in std::io::BufReader::new(stderr).lines() {});
    // The limit holds in the server.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", served.child.id())).unwrap();
    let fsize = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap();
    assert!(fsize.split_whitespace().nth(3) == Some("0"), "{fsize}");

    let c = Client::connect(&served.addr).await.unwrap();
    c.load_model(load("good", &good)).await.unwrap();
    let got = c.infer("good", [("0", x.clone())]).await.unwrap();
    let got = got.output().unwrap().to_vec::<f32>().unwrap();
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));

    // A file cut short (a copy interrupted by a full disk): a typed error
    // naming the problem; the server and the loaded model go on.
    let bytes = std::fs::read(&good).unwrap();
    for cut in [bytes.len() / 2, 40, 4] {
        let p = root_path.join(format!("cut-{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = c.load_model(load("cut", &p)).await.unwrap_err();
        eprintln!("cut at {cut} bytes: {:?}: {}", e.code, e.message);
        assert!(
            e.code == ErrorCode::Model && e.message.contains("cannot read safetensors"),
            "cut at {cut}: {e}"
        );
        assert!(!e.message.is_empty());
    }
    // An empty file, a folder where a file should be: likewise.
    let empty = root_path.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let folder = root_path.join("folder.safetensors");
    std::fs::create_dir(&folder).unwrap();
    for p in [&empty, &folder] {
        let e = c.load_model(load("broken", p)).await.unwrap_err();
        eprintln!("{}: {:?}: {}", p.display(), e.code, e.message);
        assert!(e.code == ErrorCode::Model, "{}: {e}", p.display());
    }
    // A file the server may not read (meaningful when not root: root
    // reads any file).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let locked = root_path.join("locked.safetensors");
        std::fs::copy(&good, &locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let e = c.load_model(load("locked", &locked)).await.unwrap_err();
        assert!(e.message.to_lowercase().contains("permission"), "{e}");
    }
    let again = c.infer("good", [("0", x)]).await.unwrap();
    assert_eq!(again.output().unwrap().to_vec::<f32>().unwrap(), got);
    assert_eq!(c.health().await.unwrap().models_loaded, 1);
    assert!(
        served.child.try_wait().unwrap().is_none(),
        "the server died"
    );
}

/// The child of [`a_client_killed_mid_frame_gives_its_budget_back`]: with
/// `MYMPS_FAULTS_HALF_FRAME=ADDR`, handshakes, sends half of a 64 MiB exec
/// frame, says so on stdout and waits to be killed. Without it, nothing.
#[test]
fn half_frame_child() {
    let Ok(addr) = std::env::var("MYMPS_FAULTS_HALF_FRAME") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raw = common::Raw::connect(&addr).await;
        let (req, bufs) = Call::new("neg")
            .arg(filled(1.0, &[16 << 20]))
            .into_request();
        let bytes = protocol::encode(FrameKind::Request, 1, &req, bufs)
            .unwrap()
            .to_vec();
        raw.send_bytes(&bytes[..bytes.len() / 2]).await;
        println!("half sent");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        tokio::time::sleep(BOUND).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_frame_gives_its_budget_back() {
    let served = Served::plain();
    let c = Client::connect(&served.addr).await.unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "half_frame_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("MYMPS_FAULTS_HALF_FRAME", &served.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let said = tokio::task::spawn_blocking(move || {
        lines.any(|l| l.is_ok_and(|l| l.contains("half sent")))
    });
    assert!(
        tokio::time::timeout(BOUND, said).await.unwrap().unwrap(),
        "the child never sent its half frame"
    );
    // The half frame holds its tensor's bytes of the budget.
    let t = Instant::now();
    loop {
        let m = c.metrics().await.unwrap();
        if m.memory_budget_used_bytes >= 64 << 20 {
            break;
        }
        assert!(
            t.elapsed() < BOUND,
            "the half frame never took the budget: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Others are served meanwhile.
    checked_add(&c, 1.5).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    loop {
        let m = c.metrics().await.unwrap();
        if m.memory_budget_used_bytes == 0 && m.connections_open == 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the killed client's budget or connection stayed: {} bytes, {} connections",
            m.memory_budget_used_bytes,
            m.connections_open
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    checked_add(&c, 2.5).await.unwrap();
    checked_matmul(&c, 32, 2.0).await.unwrap();
}
