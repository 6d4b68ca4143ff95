//! The cluster client against real `mymps serve` processes on loopback:
//! least-busy routing, a host killed (SIGKILL) in the middle of a run with
//! every request answered correctly exactly once, health checks that mark
//! the host down and up again, models placed on some hosts, op errors
//! returned without retries, and `mymps cluster status`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use mymps::client::{Call, Caller};
use mymps::cluster::{Cluster, ClusterConfig, HostState, HostStatus, Placement};
use mymps::model::LoadRequest;
use mymps::{ErrorCode, Tensor};

fn bin() -> String {
    std::env::var("MYMPS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mymps").to_owned())
}

/// A build artefact beside the test binary's folder (target/debug/NAME).
fn artefact(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

/// A `mymps serve` child process, killed when dropped.
struct Served {
    child: Child,
    addr: String,
    port: u16,
}

impl Served {
    /// Starts a server on 127.0.0.1:`port` (0: the system chooses) that
    /// reads models under `model_root` (`None`: no model loaders).
    fn start(port: u16, model_root: Option<&Path>) -> Served {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--device", "cpu", "--log", "error"])
            .args(["--listen", &format!("tcp://127.0.0.1:{port}")])
            .args(["--plugin-dir", "/nonexistent"]);
        if let Some(root) = model_root {
            cmd.arg("--plugin")
                .arg(artefact("libmymps_models.so"))
                .arg("--model-root")
                .arg(root);
        }
        let (child, addr, _) = common::spawn_serve(cmd.stderr(Stdio::inherit()));
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Served { child, addr, port }
    }

    /// Starts a server on the port a killed one had (retrying briefly while
    /// the port is still being released).
    fn restart(port: u16, model_root: Option<&Path>) -> Served {
        for _ in 0..50 {
            let r = std::panic::catch_unwind(|| Served::start(port, model_root));
            if let Ok(s) = r {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot restart a server on port {port}");
    }

    /// Sends `signal` (STOP, CONT) to the server.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(servers: &[&Served]) -> ClusterConfig {
    let addrs: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
    let mut c = ClusterConfig::from_addrs(&addrs).unwrap();
    c.health_interval = Duration::from_millis(200);
    c.health_timeout = Duration::from_secs(5);
    c.timeout = Duration::from_secs(60);
    c
}

fn host<'a>(status: &'a [HostStatus], addr: &str) -> &'a HostStatus {
    status.iter().find(|h| h.addr == addr).unwrap()
}

/// Runs `n` requests, `concurrency` at a time; `request(i)` gives request
/// `i`'s result, checked by `check(i, result)`. Calls `midway` once, after
/// `kill_after` requests were answered. Returns how often each request was
/// answered correctly.
async fn run_all<F, Fut>(
    n: usize,
    concurrency: usize,
    kill_after: usize,
    request: F,
    midway: impl FnOnce() + Send + 'static,
) -> Vec<u32>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = mymps::Result<bool>> + Send,
{
    let answered: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let kill = {
        let done = done.clone();
        tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < kill_after {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::task::spawn_blocking(midway).await.unwrap();
        })
    };
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (answered, done, next, request) = (
            answered.clone(),
            done.clone(),
            next.clone(),
            request.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                match request(i).await {
                    Ok(true) => {
                        answered[i].fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(false) => panic!("request {i}: wrong answer"),
                    Err(e) => panic!("request {i} failed: {e}"),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    kill.await.unwrap();
    answered.iter().map(|a| a.load(Ordering::SeqCst)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_killed_mid_run_loses_no_request_and_comes_back() {
    let servers: Vec<Served> = (0..3).map(|_| Served::start(0, None)).collect();
    let cluster = Cluster::connect(config(&servers.iter().collect::<Vec<_>>()))
        .await
        .unwrap();
    assert!(cluster.status().iter().all(|h| h.state == HostState::Up));
    let victim_addr = servers[1].addr.clone();
    let victim_port = servers[1].port;
    let servers = Arc::new(std::sync::Mutex::new(servers));

    // 1200 additions with distinct operands; each result names its request.
    const N: usize = 1200;
    let c = cluster.clone();
    let s = servers.clone();
    let answered = run_all(
        N,
        24,
        N / 4,
        move |i| {
            let c = c.clone();
            async move {
                let x = Tensor::from_vec(vec![i as i64, -(i as i64)], &[2])?;
                let y = Tensor::from_vec(vec![1_000_000i64, 7], &[2])?;
                let out = c.call(Call::new("add").arg(x).arg(y)).await?;
                Ok(out.output()?.to_vec::<i64>()? == vec![i as i64 + 1_000_000, 7 - i as i64])
            }
        },
        move || s.lock().unwrap()[1].kill(),
    )
    .await;
    assert!(
        answered.iter().all(|&a| a == 1),
        "requests not answered exactly once: {:?}",
        answered
            .iter()
            .enumerate()
            .filter(|(_, a)| **a != 1)
            .take(10)
            .collect::<Vec<_>>()
    );

    let status = cluster.status();
    let victim = host(&status, &victim_addr);
    assert_eq!(victim.state, HostState::Down, "{victim:?}");
    assert!(victim.error.is_some(), "{victim:?}");
    // The victim had requests in flight when it died; they went elsewhere.
    assert!(victim.failovers >= 1, "{victim:?}");
    let served: u64 = status.iter().map(|h| h.served).sum();
    assert_eq!(served, N as u64, "{status:#?}");
    // Every host took a share before the kill (least busy, ties in turn).
    assert!(status.iter().all(|h| h.served > 0), "{status:#?}");

    // A new server on the victim's port: the health checks bring it back.
    let revived = Served::restart(victim_port, None);
    servers.lock().unwrap()[1] = revived;
    let status = cluster
        .wait_for(Duration::from_secs(30), |s| {
            host(s, &victim_addr).state == HostState::Up
        })
        .await
        .unwrap();
    let before = host(&status, &victim_addr).served;
    assert_eq!(host(&status, &victim_addr).connections, 2);
    for i in 0..30i64 {
        let x = Tensor::from_vec(vec![i], &[1]).unwrap();
        let out = cluster.call(Call::new("neg").arg(x)).await.unwrap();
        assert_eq!(out.output().unwrap().to_vec::<i64>().unwrap(), vec![-i]);
    }
    let after = host(&cluster.status(), &victim_addr).served;
    assert!(
        after > before,
        "the revived host serves again: {before} → {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_stops_answering_is_marked_down_by_the_health_checks() {
    // SIGSTOP freezes the server with its connections open, as a network
    // cut would: only the health checks can tell.
    let servers: Vec<Served> = (0..3).map(|_| Served::start(0, None)).collect();
    let mut cfg = config(&servers.iter().collect::<Vec<_>>());
    cfg.health_timeout = Duration::from_secs(1);
    let cluster = Cluster::connect(cfg).await.unwrap();
    let victim = servers[2].addr.clone();
    let servers = Arc::new(servers);
    let s = servers.clone();
    let c = cluster.clone();
    const N: usize = 600;
    let answered = run_all(
        N,
        12,
        N / 4,
        move |i| {
            let c = c.clone();
            async move {
                let x = Tensor::from_vec(vec![i as f64 * 0.5], &[1])?;
                let out = c.call(Call::new("mul").arg(x.clone()).arg(x)).await?;
                let want = (i as f64 * 0.5).powi(2);
                Ok(out.output()?.to_vec::<f64>()? == vec![want])
            }
        },
        move || s[2].signal("STOP"),
    )
    .await;
    assert!(answered.iter().all(|&a| a == 1), "not exactly once");
    let status = cluster.status();
    let v = host(&status, &victim);
    assert_eq!(v.state, HostState::Down, "{v:?}");
    assert!(
        v.error
            .as_deref()
            .unwrap_or_default()
            .contains("health check"),
        "{v:?}"
    );
    assert!(v.failovers >= 1, "{v:?}");
    // Thawed, it answers again and is marked up.
    servers[2].signal("CONT");
    cluster
        .wait_for(Duration::from_secs(30), |s| {
            host(s, &victim).state == HostState::Up
        })
        .await
        .unwrap();
}

/// A linear model 4 → 3 saved as safetensors under `dir`; returns its path
/// and the forward function.
fn write_linear(dir: &Path) -> (PathBuf, impl Fn(&[f32]) -> Vec<f32> + Clone + use<>) {
    let w: Vec<f32> = (0..12).map(|k| (k as f32 - 5.5) * 0.25).collect();
    let b: Vec<f32> = vec![0.5, -1.0, 2.0];
    let path = dir.join("linear.safetensors");
    let wt = tch::Tensor::from_slice(&w).reshape([3, 4]);
    let bt = tch::Tensor::from_slice(&b);
    tch::Tensor::write_safetensors(&[("weight", &wt), ("bias", &bt)], &path).unwrap();
    let forward = move |x: &[f32]| -> Vec<f32> {
        (0..3)
            .map(|o| b[o] + (0..4).map(|k| w[o * 4 + k] * x[k]).sum::<f32>())
            .collect()
    };
    (path, forward)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn infer_goes_to_hosts_with_the_model_and_survives_losing_one() {
    let root = tempfile::tempdir().unwrap();
    let (path, forward) = write_linear(root.path());
    let servers: Vec<Served> = (0..3)
        .map(|_| Served::start(0, Some(root.path())))
        .collect();
    let (a, b, c) = (
        servers[0].addr.clone(),
        servers[1].addr.clone(),
        servers[2].addr.clone(),
    );
    let port_a = servers[0].port;
    let cluster = Cluster::connect(config(&servers.iter().collect::<Vec<_>>()))
        .await
        .unwrap();
    let request = LoadRequest {
        name: "org/lin".into(),
        model_type: "checkpoint".into(),
        model_path: Some(path.display().to_string()),
        model_class: Some("linear".into()),
        ..Default::default()
    };
    // Unknown host names are refused before anything is loaded.
    let e = cluster
        .load_model(
            request.clone(),
            Placement::Hosts(vec!["tcp://127.0.0.1:1".into()]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument);
    let loaded = cluster
        .load_model(
            request.clone(),
            Placement::Hosts(vec![a.clone(), b.clone()]),
        )
        .await
        .unwrap();
    let mut where_: Vec<&str> = loaded.iter().map(|(h, _)| h.as_str()).collect();
    where_.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort_unstable();
    assert_eq!(where_, want);
    let status = cluster.status();
    assert_eq!(host(&status, &a).models, vec!["org/lin".to_owned()]);
    assert!(host(&status, &c).models.is_empty());

    let servers = Arc::new(std::sync::Mutex::new(servers));
    let s = servers.clone();
    let cl = cluster.clone();
    const N: usize = 400;
    let answered = run_all(
        N,
        16,
        N / 4,
        move |i| {
            let cl = cl.clone();
            let forward = forward.clone();
            async move {
                let x: Vec<f32> = (0..4).map(|k| (i * 4 + k) as f32 * 0.01).collect();
                let out = cl
                    .infer("org/lin", [("0", Tensor::from_vec(x.clone(), &[4])?)])
                    .await?;
                let got = out.output()?.to_vec::<f32>()?;
                Ok(got
                    .iter()
                    .zip(forward(&x))
                    .all(|(g, w)| (g - w).abs() <= 1e-4 * w.abs().max(1.0)))
            }
        },
        move || s.lock().unwrap()[0].kill(),
    )
    .await;
    assert!(answered.iter().all(|&n| n == 1), "not exactly once");
    let status = cluster.status();
    assert_eq!(host(&status, &a).state, HostState::Down);
    // The host without the model never got a forward pass.
    assert_eq!(host(&status, &c).served, 0, "{status:#?}");
    assert_eq!(
        host(&status, &a).served + host(&status, &b).served,
        N as u64
    );

    // A model no host has: at once, not after the timeout.
    let x = Tensor::from_vec(vec![0f32; 4], &[4]).unwrap();
    let e = cluster.infer("nope", [("0", x.clone())]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ModelNotFound, "{e}");
    assert!(e.message.contains("not loaded on any host"), "{e}");

    // The host restarts without models; the cluster loads its model again.
    let revived = Served::restart(port_a, Some(root.path()));
    servers.lock().unwrap()[0] = revived;
    let status = cluster
        .wait_for(Duration::from_secs(30), |s| {
            let h = host(s, &a);
            h.state == HostState::Up && h.models == vec!["org/lin".to_owned()]
        })
        .await
        .unwrap();
    let before = host(&status, &a).served;
    for _ in 0..20 {
        cluster.infer("org/lin", [("0", x.clone())]).await.unwrap();
    }
    assert!(host(&cluster.status(), &a).served > before);

    // Unloading forgets the placement and unloads everywhere.
    let mut from = cluster.unload_model("org/lin").await.unwrap();
    from.sort_unstable();
    assert_eq!(from, want);
    let e = cluster.infer("org/lin", [("0", x)]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ModelNotFound, "{e}");
    assert!(
        cluster
            .list_models()
            .await
            .unwrap()
            .iter()
            .all(|h| h.models.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_errors_are_not_retried_and_dead_clusters_fail_clearly() {
    let mut servers: Vec<Served> = (0..2).map(|_| Served::start(0, None)).collect();
    let mut cfg = config(&servers.iter().collect::<Vec<_>>());
    cfg.timeout = Duration::from_secs(3);
    let cluster = Cluster::connect(cfg).await.unwrap();

    // The request's own errors come back as they are, from one host.
    let x = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).unwrap();
    let y = Tensor::from_vec(vec![1f32, 2.0], &[2]).unwrap();
    let e = cluster
        .call(Call::new("add").arg(x.clone()).arg(y))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Backend, "{e}");
    let e = cluster
        .call(Call::new("no_such_op").arg(x.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownOp, "{e}");
    let e = cluster
        .call(Call::new("softmax").arg(x.clone()).kwarg("dimension", 0))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument, "{e}");
    let status = cluster.status();
    assert!(
        status
            .iter()
            .all(|h| h.failovers == 0 && h.state == HostState::Up),
        "{status:#?}"
    );
    assert!(
        cluster
            .list_ops()
            .await
            .unwrap()
            .contains(&"add".to_owned())
    );
    assert_eq!(cluster.stats().await.len(), 2);

    // Every host dead: the request fails after the timeout, naming each.
    for s in &mut servers {
        s.kill();
    }
    let e = cluster
        .call(Call::new("neg").arg(x.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Connection, "{e}");
    for s in &servers {
        assert!(e.message.contains(&s.addr), "{e}");
    }
    cluster
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().all(|h| h.state == HostState::Down)
        })
        .await
        .unwrap();

    // Closed: fails at once.
    cluster.close();
    let e = cluster.call(Call::new("neg").arg(x)).await.unwrap_err();
    assert!(e.message.contains("closed"), "{e}");

    // Nothing reachable at all.
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let e = Cluster::connect(ClusterConfig::from_addrs(&addrs).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Connection);
    assert!(e.message.contains("cannot reach any host"), "{e}");
}

#[test]
fn cluster_status_command() {
    let root = tempfile::tempdir().unwrap();
    let up = Served::start(0, None);
    // A host that refuses connections: `up`'s port on another loopback
    // address. (A killed server's port could be given to a server another
    // test starts meanwhile; this one cannot be bound while `up` holds
    // 127.0.0.1 on it.)
    let down_addr = format!("tcp://127.0.0.2:{}", up.port);
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(["cluster", "status"])
            .args(args)
            .output()
            .unwrap()
    };
    let hosts = format!("{},{}", up.addr, down_addr);
    let out = run(&["--hosts", &hosts, "--timeout", "5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a host is down: {text}");
    assert!(err.contains("1 of 2 hosts are not up"), "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("HOST") && lines[0].contains("IN-FLIGHT"),
        "{text}"
    );
    let row = |addr: &str| *lines.iter().find(|l| l.starts_with(addr)).unwrap();
    assert!(
        row(&up.addr).contains(" up ") && row(&up.addr).contains("cpu"),
        "{text}"
    );
    assert!(row(&down_addr).contains(" down"), "{text}");

    // From a TOML file, as JSON.
    let file = root.path().join("cluster.toml");
    std::fs::write(
        &file,
        format!("[[hosts]]\naddr = \"{}\"\nname = \"alpha\"\n", up.addr),
    )
    .unwrap();
    let out = run(&["--config", file.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = &v["hosts"][0];
    assert_eq!(h["name"], "alpha");
    assert_eq!(h["state"], "up");
    assert_eq!(h["device"], "cpu");
    assert!(h["stats"]["cpu_count"].as_u64().unwrap() >= 1, "{v}");

    // Neither hosts nor a file.
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the hosts"));
}
