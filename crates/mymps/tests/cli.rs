//! The `mymps` command end to end: `mymps serve` in a child process, the
//! client subcommands against it, and the examples in `examples/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mymps::{DType, Tensor, npy};

/// The device the server runs on: `MYMPS_TEST_DEVICE`, else `cpu`.
fn test_device() -> String {
    std::env::var("MYMPS_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())
}

/// The binary under test (`MYMPS_BIN` overrides, for runs on another machine).
fn bin() -> String {
    std::env::var("MYMPS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mymps").to_owned())
}

struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(extra_env: &[(&str, &str)], args: &[&str]) -> Served {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--device", &test_device(), "--log", "warn"])
            .args(args);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let (child, addr, _) = common::spawn_serve(cmd.stderr(Stdio::inherit()));
        Served { child, addr }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .args(["--addr", &self.addr])
            .output()
            .unwrap()
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port nothing listens on (bound, then released).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The stderr of `mymps ARGS`, which must fail.
fn failing(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "succeeded: mymps {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn exec_matmul_writes_real_npy_files_and_the_server_stops_cleanly() {
    let s = Served::start(&[], &["--listen", "tcp://127.0.0.1:0"]);
    let dir = tmpdir();
    let (m, k, n) = (5, 7, 3);
    let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 4) as f32 - 1.5).collect();
    npy::write(
        &dir.path().join("a.npy"),
        &Tensor::from_vec(a.clone(), &[m, k]).unwrap(),
    )
    .unwrap();
    npy::write(
        &dir.path().join("b.npy"),
        &Tensor::from_vec(b.clone(), &[k, n]).unwrap(),
    )
    .unwrap();
    let out_dir = dir.path().join("d");
    let a_arg = format!("0={}", dir.path().join("a.npy").display());
    let b_arg = format!("1={}", dir.path().join("b.npy").display());
    let text = ok(&s.run(&[
        "exec",
        "matmul",
        &a_arg,
        &b_arg,
        "--out",
        out_dir.to_str().unwrap(),
    ]));
    assert!(text.contains("output  float32 [5,3]"), "{text}");
    let got = npy::read(&out_dir.join("output.npy"))
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    for i in 0..m {
        for j in 0..n {
            let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            assert!((got[i * n + j] - want).abs() < 1e-4);
        }
    }

    // Tuple results: one file per name; --kwarg values are typed.
    let text = ok(&s.run(&[
        "exec",
        "svd",
        &a_arg,
        "--kwarg",
        "full_matrices=false",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 3);
    for name in ["0", "1", "2"] {
        assert!(out_dir.join(format!("{name}.npy")).exists());
    }
    // Every dtype comes back as a .npy of that dtype.
    for d in DType::ALL {
        let t = Tensor::new(d, &[2, 2], vec![1u8; 4 * d.itemsize()]).unwrap();
        let p = dir.path().join(format!("{d}.npy"));
        npy::write(&p, &t).unwrap();
        let dd = dir.path().join(format!("out-{d}"));
        ok(&s.run(&[
            "exec",
            "transpose",
            &format!("0={}", p.display()),
            "--kwarg",
            "dim0=0",
            "--kwarg",
            "dim1=1",
            "--out",
            dd.to_str().unwrap(),
        ]));
        assert_eq!(npy::read(&dd.join("output.npy")).unwrap().dtype(), d);
    }

    // Errors: a message and a non-zero exit.
    let bad = s.run(&["exec", "matmul", &a_arg]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing required argument 'other'"));

    let h: serde_json::Value = serde_json::from_str(&ok(&s.run(&["health", "--json"]))).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["device"], test_device());
    let st: serde_json::Value = serde_json::from_str(&ok(&s.run(&["stats", "--json"]))).unwrap();
    assert!(st["memory_total_gb"].as_f64().unwrap() > 0.0);
    assert_eq!(st["load_avg"].as_array().unwrap().len(), 3);
    let ops = ok(&s.run(&["ops"]));
    assert!(ops.lines().any(|l| l.starts_with("matmul ")));
    let d = ok(&s.run(&["ops", "--describe", "softmax"]));
    assert!(d.starts_with("softmax(input: Tensor, dim: int"), "{d}");

    let status = s.terminate();
    assert!(
        status.success(),
        "mymps serve exited with {status} on SIGTERM"
    );
}

#[test]
fn serve_honours_mymps_host_and_port() {
    let port = unused_port().to_string();
    let s = Served::start(&[("MYMPS_HOST", "127.0.0.1"), ("MYMPS_PORT", &port)], &[]);
    assert_eq!(s.addr, format!("tcp://127.0.0.1:{port}"));
    let h = ok(&Command::new(bin())
        .args(["health"])
        .env("MYMPS_ADDR", &s.addr)
        .output()
        .unwrap());
    assert!(h.contains("status"));
    assert!(s.terminate().success());
}

#[test]
fn a_client_without_a_server_gets_a_clear_error() {
    let port = unused_port();
    let err = failing(&["health", "--addr", &format!("tcp://127.0.0.1:{port}")]);
    assert!(err.contains("cannot connect to tcp://127.0.0.1"), "{err}");
    let out = Command::new(bin())
        .args(["health", "--addr", "sctp://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no transport for 'sctp://'"));
    // QUIC (UDP) has no refusal to wait for: the timeout says it.
    let fingerprint = "ab".repeat(32);
    let err = failing(&[
        "health",
        "--addr",
        &format!("quic://127.0.0.1:{port}"),
        "--fingerprint",
        &fingerprint,
        "--timeout",
        "1",
    ]);
    assert!(
        err.contains("quic://127.0.0.1") && err.contains("timed out"),
        "{err}"
    );
}

fn example(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("MYMPS_EXAMPLES_DIR") {
        return PathBuf::from(dir).join(name);
    }
    // target/debug/deps/cli-HASH -> target/debug/examples/NAME
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name)
}

#[test]
fn the_examples_run() {
    let s = Served::start(&[], &["--listen", "tcp://127.0.0.1:0"]);
    let out = ok(&Command::new(example("quickstart"))
        .arg(&s.addr)
        .output()
        .expect("examples are built by `cargo test` (or `cargo build --examples`)"));
    assert!(out.contains("matmul  -> [64, 32]"), "{out}");
    assert!(out.contains("conv2d  -> [1, 16, 30, 30]"), "{out}");
    let out = ok(&Command::new(example("embedded_server"))
        .env("MYMPS_DEVICE", test_device())
        .output()
        .unwrap());
    assert!(out.contains("-> [1.0, 0.0, 3.0, 0.0]"), "{out}");
    assert!(out.contains("stopped"));
    assert!(s.terminate().success());
}

/// `mymps serve` on quic://127.0.0.1:0 in `cwd`: the child, its address and
/// the certificate line (path, fingerprint).
fn serve_quic(cwd: &Path, args: &[&str]) -> (Served, PathBuf, String) {
    let (child, addr, mut lines) = common::spawn_serve(
        Command::new(bin())
            .args(["serve", "--device", &test_device(), "--log", "warn"])
            .args(["--listen", "quic://127.0.0.1:0"])
            .args(args)
            .current_dir(cwd)
            .stderr(Stdio::inherit()),
    );
    let second = lines.next().expect("a certificate line").unwrap();
    let rest = second
        .strip_prefix("mymps: quic certificate ")
        .unwrap_or_else(|| panic!("unexpected second line {second:?}"));
    let (path, fp) = rest.split_once(" sha256 ").expect("path sha256 hex");
    (Served { child, addr }, PathBuf::from(path), fp.to_owned())
}

#[test]
fn quic_serve_prints_its_certificate_and_clients_verify_it() {
    let dir = tmpdir();
    let d = dir.path();
    // Default: ./mymps-quic-cert.pem, regenerated at each start.
    let (s, path, fp) = serve_quic(d, &[]);
    assert!(s.addr.starts_with("quic://127.0.0.1:"), "{}", s.addr);
    assert_eq!(path, d.canonicalize().unwrap().join("mymps-quic-cert.pem"));
    assert_eq!(mymps::quic::fingerprint_of_pem_file(&path).unwrap(), fp);

    let health = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin());
        cmd.args(["health", "--addr", &s.addr]).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let text = ok(&health(&["--fingerprint", &fp], &[]));
    assert!(text.contains(&test_device()), "{text}");
    ok(&health(&["--ca", path.to_str().unwrap()], &[]));
    ok(&health(&[], &[("MYMPS_CA", path.to_str().unwrap())]));
    ok(&health(&[], &[("MYMPS_FINGERPRINT", &fp)]));

    let out = health(&[], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ca FILE") && err.contains("--fingerprint SHA256"),
        "{err}"
    );
    let wrong = format!("{}{}", &fp[..63], if fp.ends_with('0') { "1" } else { "0" });
    let out = health(&["--fingerprint", &wrong], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match the pinned fingerprint"),
        "{err}"
    );
    assert!(s.terminate().success());

    // A restart makes a new certificate in the same (mymps-written) file.
    let (s, path2, fp2) = serve_quic(d, &[]);
    assert_eq!(path2, path);
    assert_ne!(fp2, fp);
    drop(s);

    // A file mymps did not write is never overwritten.
    let mine = d.join("mine.pem");
    std::fs::write(&mine, "precious\n").unwrap();
    let err = failing(&[
        "serve",
        "--device",
        "cpu",
        "--listen",
        "quic://127.0.0.1:0",
        "--tls-cert-out",
        mine.to_str().unwrap(),
    ]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "precious\n");

    // Tokens over quic://, from the command line.
    let token_file = d.join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let out_cert = d.join("c.pem");
    let (s, path, _) = serve_quic(
        d,
        &[
            "--auth-token-file",
            token_file.to_str().unwrap(),
            "--tls-cert-out",
            out_cert.to_str().unwrap(),
        ],
    );
    assert_eq!(path, out_cert.canonicalize().unwrap());
    let run = |token: &str| {
        Command::new(bin())
            .args(["health", "--addr", &s.addr, "--ca", path.to_str().unwrap()])
            .args(["--token", token])
            .output()
            .unwrap()
    };
    ok(&run("t0ken"));
    let out = run("nope");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong authentication token"));
}

/// `mymps serve --listen zmq://...`, the client commands with `--addr
/// zmq://...` (token included) and the quickstart example over ZeroMQ.
#[cfg(feature = "zmq")]
#[test]
fn the_cli_and_the_examples_speak_zmq() {
    let s = Served::start(&[], &["--listen", "zmq://127.0.0.1:0"]);
    assert!(s.addr.starts_with("zmq://127.0.0.1:"), "{}", s.addr);
    let h: serde_json::Value = serde_json::from_str(&ok(&s.run(&["health", "--json"]))).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["device"], test_device());
    let out = ok(&Command::new(example("quickstart"))
        .arg(&s.addr)
        .output()
        .unwrap());
    assert!(out.contains("matmul  -> [64, 32]"), "{out}");
    assert!(out.contains("conv2d  -> [1, 16, 30, 30]"), "{out}");
    assert!(s.terminate().success());

    let dir = tmpdir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "zmq-s3cret\n").unwrap();
    let s = Served::start(
        &[],
        &[
            "--listen",
            "zmq://127.0.0.1:0",
            "--auth-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let out = s.run(&["health"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("requires an authentication token"), "{err}");
    let out = ok(&s.run(&["health", "--token", "zmq-s3cret"]));
    assert!(out.contains("status"), "{out}");
    assert!(s.terminate().success());

    // No server: a prompt, clear error.
    let port = unused_port();
    let err = failing(&["health", "--addr", &format!("zmq://127.0.0.1:{port}")]);
    assert!(
        err.contains("cannot connect to zmq://127.0.0.1") && err.contains("refused"),
        "{err}"
    );
}
