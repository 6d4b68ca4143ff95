//! Shared set-up for the end-to-end tests: a real server (libtorch on the
//! CPU, TCP on an ephemeral loopback port) in the test's runtime.

#![allow(dead_code)]

pub mod generate;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;

use mymps::client::{Call, Caller, Client, Outputs};
use mymps::protocol::{self, Frame, FrameKind, Limits, Request, Response};
use mymps::server::{Server, ServerConfig, ServerHandle};
use mymps::stream::StreamReader;
use mymps::transport::Endpoint;
use mymps::transport::FrameReader;
use mymps::{DType, ErrorCode, Tensor};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// The device the tests run the server on: `MYMPS_TEST_DEVICE`, else `cpu`
/// (`MYMPS_TEST_DEVICE=cuda:0` on a GPU machine).
pub fn device() -> String {
    std::env::var("MYMPS_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())
}

/// Starts a server on `tcp://127.0.0.1:0` with `tweak` applied to its config.
pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> (ServerHandle, String) {
    start_on("tcp", tweak).await
}

/// Starts a server on `SCHEME://127.0.0.1:0` (`tcp`, `zmq`, ...) with
/// `tweak` applied to its config; returns it and its address.
pub async fn start_on(
    scheme: &str,
    tweak: impl FnOnce(&mut ServerConfig),
) -> (ServerHandle, String) {
    let mut config = ServerConfig {
        listen: vec![Endpoint::new(scheme, "127.0.0.1", 0)],
        ..ServerConfig::default()
    };
    tweak(&mut config);
    let backend = Arc::new(mymps::backend_tch::TchBackend::new(&device()).expect("backend"));
    let server = Server::bind(config, backend).await.expect("bind");
    let handle = server.spawn();
    let addr = handle.endpoints()[0].to_string();
    (handle, addr)
}

/// Starts a server with model loaders linked in.
pub async fn start_with_models(
    loaders: Vec<Arc<dyn mymps::model::ModelLoader>>,
) -> (ServerHandle, String) {
    let config = ServerConfig {
        listen: vec![Endpoint::new("tcp", "127.0.0.1", 0)],
        // The tests' model files are in temporary folders.
        model_root: Some(std::env::temp_dir()),
        ..ServerConfig::default()
    };
    let backend = Arc::new(mymps::backend_tch::TchBackend::new(&device()).expect("backend"));
    let server = Server::bind(config, backend).await.expect("bind");
    for l in loaders {
        server.models().add_loader(l).unwrap();
    }
    let handle = server.spawn();
    let addr = handle.endpoints()[0].to_string();
    (handle, addr)
}

/// Starts a server with the default config.
pub async fn start() -> (ServerHandle, String) {
    start_with(|_| {}).await
}

/// A deterministic pseudo-random f32 vector (xorshift), values in [-1, 1).
pub fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Reference matmul in f64.
pub fn matmul_ref(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p] as f64;
            for j in 0..n {
                out[i * n + j] += x * b[p * n + j] as f64;
            }
        }
    }
    out
}

/// Largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn f32s(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

/// The four examples of the client contract (matmul, softmax, svd,
/// conv2d), checked against references, on a connected client (the Rust
/// client over any transport, or another [`Exec`]).
pub async fn check_the_four_examples(c: &impl Exec) {
    // matmul 64×128 @ 128×32
    let (a, b) = (randn(64 * 128, 1), randn(128 * 32, 2));
    let out = c
        .run(
            Op::new("matmul")
                .arg(f32s(a.clone(), &[64, 128]))
                .arg(f32s(b.clone(), &[128, 32])),
        )
        .await
        .unwrap();
    let o = out.output().unwrap();
    assert_eq!((o.dtype(), o.shape()), (DType::Float32, &[64usize, 32][..]));
    assert!(
        max_diff(
            &o.to_vec::<f32>().unwrap(),
            &matmul_ref(&a, &b, 64, 128, 32)
        ) < 1e-4
    );
    assert_eq!(out.device, device());

    // softmax with dim=-1: rows sum to 1, order preserved
    let x = randn(8 * 10, 3);
    let out = c
        .run(
            Op::new("softmax")
                .arg(f32s(x.clone(), &[8, 10]))
                .kwarg("dim", -1),
        )
        .await
        .unwrap();
    let p = out.output().unwrap().to_vec::<f32>().unwrap();
    for r in 0..8 {
        let row = &p[r * 10..(r + 1) * 10];
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let (imax_x, imax_p) = (argmax(&x[r * 10..(r + 1) * 10]), argmax(row));
        assert_eq!(imax_x, imax_p);
    }

    // svd gives "0", "1", "2" = U, S, Vh that reconstruct M
    let (m, n) = (6, 4);
    let mat = randn(m * n, 4);
    let out = c
        .run(
            Op::new("svd")
                .arg(f32s(mat.clone(), &[m, n]))
                .kwarg("full_matrices", false),
        )
        .await
        .unwrap();
    let names: Vec<&str> = out.tensors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["0", "1", "2"]);
    let u = out.get("0").unwrap().to_vec::<f32>().unwrap();
    let s = out.get("1").unwrap().to_vec::<f32>().unwrap();
    let vh = out.get("2").unwrap().to_vec::<f32>().unwrap();
    let k = s.len();
    assert_eq!(k, 4);
    for i in 0..m {
        for j in 0..n {
            let r: f32 = (0..k).map(|p| u[i * k + p] * s[p] * vh[p * n + j]).sum();
            assert!(
                (r - mat[i * n + j]).abs() < 1e-4,
                "reconstruction at ({i},{j})"
            );
        }
    }

    // conv2d (1,3,32,32) with (16,3,3,3) → (1,16,30,30)
    let (x, w) = (randn(3 * 32 * 32, 5), randn(16 * 3 * 3 * 3, 6));
    let out = c
        .run(
            Op::new("conv2d")
                .arg(f32s(x.clone(), &[1, 3, 32, 32]))
                .arg(f32s(w.clone(), &[16, 3, 3, 3])),
        )
        .await
        .unwrap();
    let y = out.output().unwrap();
    assert_eq!(y.shape(), &[1, 16, 30, 30]);
    let y = y.to_vec::<f32>().unwrap();
    // One output element by hand: channel 5, position (7, 11).
    let mut want = 0.0f64;
    for ci in 0..3 {
        for di in 0..3 {
            for dj in 0..3 {
                want += x[ci * 1024 + (7 + di) * 32 + 11 + dj] as f64
                    * w[((5 * 3 + ci) * 3 + di) * 3 + dj] as f64;
            }
        }
    }
    assert!((y[5 * 900 + 7 * 30 + 11] as f64 - want).abs() < 1e-4);

    // The same with padding="same" and an int stride, as torch spells them.
    let out = c
        .run(
            Op::new("conv2d")
                .arg(f32s(x, &[1, 3, 32, 32]))
                .input("weight", f32s(w, &[16, 3, 3, 3]))
                .kwarg("padding", "same"),
        )
        .await
        .unwrap();
    assert_eq!(out.output().unwrap().shape(), &[1, 16, 32, 32]);
}

/// 300 requests of mixed sizes in flight at once on one connection; each
/// gets its own answer.
pub async fn check_300_requests_in_flight(c: &Client) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300i64 {
        let c = c.clone();
        tasks.spawn(async move {
            // Mixed sizes so that replies overtake each other.
            let n = if i % 10 == 0 { 200_000 } else { 4 };
            let x = Tensor::from_vec(vec![i as f32; n], &[n]).unwrap();
            let out = c
                .call(Call::new("mul").arg(x).kwarg("other", 2))
                .await
                .unwrap();
            let v = out.output().unwrap().to_vec::<f32>().unwrap();
            assert_eq!(v.len(), n);
            assert!(
                v.iter().all(|&y| y == 2.0 * i as f32),
                "request {i} got another's reply"
            );
            i
        });
    }
    let mut seen = Vec::new();
    while let Some(r) = tasks.join_next().await {
        seen.push(r.unwrap());
    }
    seen.sort();
    assert_eq!(seen, (0..300).collect::<Vec<_>>());
}

/// Spawns `cmd`, a `mymps serve ...` command, with its stdout piped, and
/// reads its first line, `mymps: listening on URL`: the child, the URL and
/// the rest of its stdout.
pub fn spawn_serve(cmd: &mut Command) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mymps serve");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let first = lines.next().expect("a first line").expect("a line of text");
    let addr = first
        .trim()
        .strip_prefix("mymps: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    (child, addr, lines)
}

/// The next frame `reader` gives, or `None` when the server closed the
/// connection (what [`Raw`] and [`Framed`] read replies with).
pub async fn recv_frame(reader: &mut dyn FrameReader) -> Option<Frame> {
    let limits = Limits {
        max_payload: u64::MAX,
        ..Limits::DEFAULT
    };
    match tokio::time::timeout(Duration::from_secs(20), reader.read_frame(&limits, None)).await {
        Ok(Ok(Some(inc))) => Some(inc.frame),
        Ok(Ok(None)) | Ok(Err(_)) => None,
        Err(_) => panic!("no answer from the server within 20 s"),
    }
}

/// The error a reply carries; panics unless it is one, answering `id`.
fn error_reply(f: Option<Frame>, id: u64) -> mymps::Error {
    let f = f.expect("an error reply");
    assert_eq!(f.id, id);
    match protocol::decode_header::<Response>(&f).unwrap() {
        Response::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Panics unless `f` is a health reply answering `id`.
fn assert_health_reply(f: Option<Frame>, id: u64) {
    let f = f.expect("health reply");
    assert_eq!(f.id, id);
    assert!(matches!(
        protocol::decode_header::<Response>(&f).unwrap(),
        Response::Health(_)
    ));
}

/// A client that speaks the wire protocol by hand, for tests that send
/// what a well-behaved client never would.
pub struct Raw {
    pub reader: StreamReader<OwnedReadHalf>,
    pub writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    /// Connects and completes the handshake by hand.
    pub async fn connect(addr: &str) -> Raw {
        let mut raw = Raw::connect_bare(addr).await;
        let hello = protocol::hello("raw-test/1", None);
        raw.send(&protocol::encode(FrameKind::Hello, 0, &hello, vec![]).unwrap())
            .await;
        let f = raw.recv().await.expect("welcome");
        assert_eq!(f.kind, FrameKind::Welcome);
        raw
    }

    pub async fn connect_bare(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr.trim_start_matches("tcp://"))
            .await
            .unwrap();
        let (r, w) = stream.into_split();
        Raw {
            reader: StreamReader::new(r),
            writer: w,
        }
    }

    /// Resets the connection (RST, not FIN), as a crashed client would.
    pub fn reset(self) {
        let socket = self.writer.reunite(self.reader.into_inner()).unwrap();
        socket.set_zero_linger().unwrap();
    }

    pub async fn send(&mut self, f: &Frame) {
        self.writer.write_all(&f.to_vec()).await.unwrap();
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.writer.write_all(b).await.unwrap();
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        recv_frame(&mut self.reader).await
    }

    pub async fn expect_error(&mut self, id: u64, code: ErrorCode) -> String {
        let e = error_reply(self.recv().await, id);
        assert_eq!(e.code, code, "{e}");
        e.message
    }

    /// Health works on this connection.
    pub async fn still_serves(&mut self, id: u64) {
        self.send(&protocol::encode(FrameKind::Request, id, &Request::Health, vec![]).unwrap())
            .await;
        assert_health_reply(self.recv().await, id);
    }
}

/// An op call that any client can run: what the shared checks send, so
/// that they run over the Rust client (every binary transport) and over
/// other clients (the HTTP listener's, in `tests/conformance.rs`) alike.
/// The same builder as [`Call`]: `"0"`, `"1"`, ... for [`Op::arg`].
#[derive(Debug, Clone)]
pub struct Op {
    pub op: String,
    pub inputs: Vec<(String, Tensor)>,
    pub kwargs: Vec<(String, mymps::Value)>,
    positional: usize,
}

impl Op {
    pub fn new(op: &str) -> Op {
        Op {
            op: op.to_owned(),
            inputs: Vec::new(),
            kwargs: Vec::new(),
            positional: 0,
        }
    }

    pub fn arg(mut self, t: Tensor) -> Op {
        self.inputs.push((self.positional.to_string(), t));
        self.positional += 1;
        self
    }

    pub fn input(mut self, name: &str, t: Tensor) -> Op {
        self.inputs.push((name.to_owned(), t));
        self
    }

    pub fn kwarg(mut self, name: &str, v: impl Into<mymps::Value>) -> Op {
        self.kwargs.push((name.to_owned(), v.into()));
        self
    }
}

/// A client that runs [`Op`]s.
pub trait Exec: Sync {
    fn run(&self, op: Op) -> impl Future<Output = mymps::Result<Outputs>> + Send;
}

impl Exec for Client {
    async fn run(&self, op: Op) -> mymps::Result<Outputs> {
        self.exec(&op.op, op.inputs, op.kwargs).await
    }
}

/// A connection driven by hand over any binary-protocol transport (`tcp`,
/// `quic`, `zmq`), frame by frame: for requests that are well framed but
/// that a well-behaved client never sends. ([`Raw`] writes bytes, TCP only.)
pub struct Framed {
    pub reader: Box<dyn FrameReader>,
    pub writer: Box<dyn mymps::transport::FrameWriter>,
}

impl Framed {
    /// Connects to `addr` (a URL) and completes the handshake.
    pub async fn connect(addr: &str, options: &mymps::transport::TransportOptions) -> Framed {
        let endpoint: Endpoint = addr.parse().unwrap();
        let conn = mymps::transport::transport_for(&endpoint.scheme)
            .unwrap()
            .connect(&endpoint, options)
            .await
            .unwrap();
        let mut c = Framed {
            reader: conn.reader,
            writer: conn.writer,
        };
        let hello = protocol::hello("framed-test/1", None);
        c.send(protocol::encode(FrameKind::Hello, 0, &hello, vec![]).unwrap())
            .await;
        let f = c.recv().await.expect("welcome");
        assert_eq!(f.kind, FrameKind::Welcome);
        c
    }

    pub async fn send(&mut self, f: Frame) {
        self.writer.write_frame(f).await.unwrap();
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        recv_frame(&mut *self.reader).await
    }

    /// The error that answers request `id`.
    pub async fn expect_error(&mut self, id: u64) -> mymps::Error {
        error_reply(self.recv().await, id)
    }

    /// Health works on this connection.
    pub async fn still_serves(&mut self, id: u64) {
        self.send(protocol::encode(FrameKind::Request, id, &Request::Health, vec![]).unwrap())
            .await;
        assert_health_reply(self.recv().await, id);
    }
}
