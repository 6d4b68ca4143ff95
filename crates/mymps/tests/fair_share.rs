//! Deadlines and fair share, end to end: a real server (libtorch on the
//! CPU) on an ephemeral loopback port, real sockets.
//!
//! The slow request of these tests is a graph of chained 1024×1024
//! matmuls, its length calibrated on the machine at hand (see
//! [`Slow::calibrate`]) so that it takes about two seconds however fast
//! the CPU is; each test waits for nothing much longer.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Raw;
use mymps::ErrorCode;
use mymps::Tensor;
use mymps::client::{Caller, Client, ClientOptions};
use mymps::protocol::{
    self, ExecRequest, Frame, FrameKind, Graph, GraphSpec, GraphStep, Request, RequestOptions,
    Response, RunGraphRequest, Source,
};

/// The side of the slow graph's matrices.
const N: usize = 1024;

/// A graph of `steps` chained matmuls of an N×N input: as slow as asked,
/// with a payload of 4 MiB.
struct Slow {
    steps: usize,
}

impl Slow {
    /// Times a graph of 8 steps on a server of its own (the tests'
    /// servers have limits) and picks the length that takes about
    /// `target`.
    async fn calibrate(target: Duration) -> Slow {
        let (server, addr) = common::start_with(|c| c.workers = 1).await;
        let mut raw = Raw::connect(&addr).await;
        let probe = Slow { steps: 8 };
        let mut best = Duration::MAX;
        for id in 1..=2 {
            let t = Instant::now();
            raw.send(&probe.frame(id, None)).await;
            let f = raw.recv().await.expect("a reply");
            assert_eq!(reply_code(&f), None, "the probe graph failed");
            best = best.min(t.elapsed());
        }
        server.shutdown().await;
        let per_step = best.as_secs_f64() / 8.0;
        let steps = (target.as_secs_f64() / per_step).ceil() as usize;
        Slow {
            steps: steps.clamp(8, 4000),
        }
    }

    fn frame(&self, id: u64, timeout_ms: Option<u64>) -> Frame {
        let x = Tensor::from_vec(vec![0f32; N * N], &[N, N]).unwrap();
        let (inputs, bufs) = protocol::tensors_to_wire(vec![("x".into(), x)]);
        let step = |src: Source| GraphStep {
            op: "matmul".into(),
            inputs: BTreeMap::from([("0".into(), src), ("1".into(), Source::Input("x".into()))]),
            kwargs: BTreeMap::new(),
        };
        let mut steps = vec![step(Source::Input("x".into()))];
        for i in 1..self.steps {
            steps.push(step(Source::Step(i as u32 - 1, "output".into())));
        }
        let last = Source::Step(self.steps as u32 - 1, "output".into());
        let req = Request::RunGraph(RunGraphRequest {
            graph: GraphSpec::Inline(Graph {
                steps,
                outputs: vec![("y".into(), last)],
            }),
            inputs,
            refs: BTreeMap::new(),
            keep: Default::default(),
        });
        protocol::encode_request(id, &req, RequestOptions { timeout_ms }, bufs).unwrap()
    }
}

/// An `exec` frame of `op` on one float32 tensor of `n` elements.
fn exec_frame(id: u64, op: &str, n: usize, keep: bool, timeout_ms: Option<u64>) -> Frame {
    let x = Tensor::from_vec(vec![1f32; n], &[n]).unwrap();
    let (inputs, bufs) = protocol::tensors_to_wire(vec![("0".into(), x)]);
    let req = Request::Exec(ExecRequest {
        op: op.into(),
        inputs,
        keep: if keep {
            protocol::Keep::All
        } else {
            protocol::Keep::None
        },
        ..Default::default()
    });
    protocol::encode_request(id, &req, RequestOptions { timeout_ms }, bufs).unwrap()
}

fn request_frame(id: u64, req: &Request) -> Frame {
    protocol::encode(FrameKind::Request, id, req, vec![]).unwrap()
}

/// The error code a reply carries (`None`: not an error).
fn reply_code(f: &Frame) -> Option<ErrorCode> {
    match protocol::decode_header::<Response>(f).unwrap() {
        Response::Error(e) => Some(e.code),
        _ => None,
    }
}

async fn metrics(raw: &mut Raw, id: u64) -> protocol::MetricsSnapshot {
    raw.send(&request_frame(id, &Request::Metrics)).await;
    let f = raw.recv().await.expect("metrics");
    assert_eq!(f.id, id);
    match protocol::decode_header::<Response>(&f).unwrap() {
        Response::Metrics(m) => m,
        other => panic!("not metrics: {other:?}"),
    }
}

/// How many requests were answered `timeout`.
fn timeouts(m: &protocol::MetricsSnapshot) -> u64 {
    m.errors
        .iter()
        .filter(|e| e.name == "timeout")
        .map(|e| e.count)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passes_in_the_queue_is_answered_timeout_and_not_run() {
    let (server, addr) = common::start_with(|c| c.workers = 1).await;
    let slow = Slow::calibrate(Duration::from_secs(2)).await;
    let mut raw = Raw::connect(&addr).await;
    // The slow graph takes the only worker; behind it, an op that would
    // keep its result on the server, with a deadline of 50 ms.
    raw.send(&slow.frame(1, None)).await;
    // (Time for the graph, checked first, to reach the worker.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw.send(&exec_frame(2, "neg", 16, true, Some(50))).await;
    let first = raw.recv().await.expect("a reply");
    assert_eq!(
        first.id, 2,
        "the queued request is answered first, at its deadline"
    );
    assert_eq!(reply_code(&first), Some(ErrorCode::Timeout));
    let second = raw.recv().await.expect("the graph's reply");
    assert_eq!(second.id, 1);
    assert_eq!(reply_code(&second), None);
    // It never ran: nothing was kept, and the server still serves.
    let m = metrics(&mut raw, 3).await;
    assert_eq!(m.resident_tensors, 0, "the timed-out request ran");
    assert_eq!(timeouts(&m), 1);
    raw.still_serves(4).await;
    // A deadline that does not pass changes nothing.
    raw.send(&exec_frame(5, "neg", 16, false, Some(60_000)))
        .await;
    let f = raw.recv().await.unwrap();
    assert_eq!((f.id, reply_code(&f)), (5, None));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_running_past_the_server_s_limit_is_answered_timeout_and_its_result_dropped() {
    let limit = Duration::from_millis(300);
    let (server, addr) = common::start_with(|c| {
        c.workers = 1;
        c.request_timeout = Some(limit);
    })
    .await;
    let slow = Slow::calibrate(Duration::from_secs(2)).await;
    let mut raw = Raw::connect(&addr).await;
    let started = Instant::now();
    raw.send(&slow.frame(1, None)).await;
    let f = raw.recv().await.expect("a reply");
    let answered = started.elapsed();
    assert_eq!((f.id, reply_code(&f)), (1, Some(ErrorCode::Timeout)));
    // The connection goes on serving meanwhile, and the kernel still
    // holds the request's memory budget (it cannot be interrupted).
    raw.still_serves(2).await;
    let m = metrics(&mut raw, 3).await;
    assert!(
        m.memory_budget_used_bytes >= (N * N * 4) as u64 || started.elapsed() > answered * 3,
        "the budget of a request still running was released: {} bytes held",
        m.memory_budget_used_bytes
    );
    // Once the graph ends, its budget comes back and its result is dropped:
    // the next frame on the connection is the next request's answer.
    let mut used = m.memory_budget_used_bytes;
    for i in 0..100u64 {
        if used == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        used = metrics(&mut raw, 10 + i).await.memory_budget_used_bytes;
    }
    assert_eq!(used, 0, "the budget was not given back");
    raw.still_serves(200).await;
    // The Rust client, whose own timeout is the longer: the server's limit
    // answers it.
    let c = Client::connect(&addr).await.unwrap();
    let f = slow.frame(1, None);
    let (req, bufs) = (protocol::decode_header::<Request>(&f).unwrap(), f.tensors);
    let e = mymps::client::Service::send(&c, req, bufs)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    c.close();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_s_timeout_is_the_server_s_deadline() {
    let (server, addr) = common::start_with(|c| c.workers = 1).await;
    let slow = Slow::calibrate(Duration::from_secs(2)).await;
    // Another connection takes the worker.
    let mut raw = Raw::connect(&addr).await;
    raw.send(&slow.frame(1, None)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = Client::connect_with(
        &addr,
        ClientOptions {
            timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    let (req, bufs) = {
        let f = exec_frame(0, "neg", 16, true, None);
        (protocol::decode_header::<Request>(&f).unwrap(), f.tensors)
    };
    let e = mymps::client::Service::send(&c, req, bufs)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    let f = raw.recv().await.unwrap();
    assert_eq!((f.id, reply_code(&f)), (1, None));
    // The client gave up, and the server did not run it either.
    let m = metrics(&mut raw, 2).await;
    assert_eq!(m.resident_tensors, 0, "the abandoned request ran");
    c.close();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_pipelining_large_requests_leaves_budget_for_the_others() {
    const MIB: usize = 1 << 20;
    let (server, addr) = common::start_with(|c| {
        c.workers = 1;
        // 84 MiB for large requests, 12 MiB reserved for small ones.
        c.memory_budget = 96 * MIB as u64;
    })
    .await;
    let slow = Slow::calibrate(Duration::from_secs(2)).await;
    let started = Instant::now();
    // A: the slow graph, then eleven sums of 8 MiB queued behind it,
    // together more than the budget holds.
    let Raw {
        mut reader,
        mut writer,
    } = Raw::connect(&addr).await;
    let sums: Vec<Vec<u8>> = (2..13)
        .map(|id| exec_frame(id, "sum", 2 * MIB, false, None).to_vec())
        .collect();
    let graph = slow.frame(1, None).to_vec();
    let sending = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        writer.write_all(&graph).await.unwrap();
        // (Time for the graph, checked first, to reach the worker.)
        tokio::time::sleep(Duration::from_millis(300)).await;
        for f in &sums {
            writer.write_all(f).await.unwrap();
        }
        writer
    });
    // Until A holds at least its share (half the budget), and a little
    // longer: with no share, it would go on to take all it can.
    let mut watch = Raw::connect(&addr).await;
    for i in 0..200 {
        if metrics(&mut watch, 100 + i).await.memory_budget_used_bytes >= 48 * MIB as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // B: a request of 8 MiB (one argument short of `add`: answered at once,
    // without a worker, once its bytes are admitted).
    let mut b = Raw::connect(&addr).await;
    b.send(&exec_frame(1, "add", 2 * MIB, false, None)).await;
    let f = b.recv().await.expect("B's reply");
    let b_answered = started.elapsed();
    assert_eq!((f.id, reply_code(&f)), (1, Some(ErrorCode::BadArgument)));
    // A's first answer comes after B's: B did not wait for A's requests.
    let first = common::recv_frame(&mut reader).await.expect("A's reply");
    let a_answered = started.elapsed();
    assert_eq!(reply_code(&first), None);
    assert!(
        b_answered < a_answered,
        "B waited for A's requests: answered after {b_answered:?}, A's first after {a_answered:?}"
    );
    // And every one of A's requests is answered too.
    let mut ids = vec![first.id];
    for _ in 2..13 {
        let f = common::recv_frame(&mut reader).await.expect("A's replies");
        assert_eq!(reply_code(&f), None);
        ids.push(f.id);
    }
    ids.sort();
    assert_eq!(ids, (1..13).collect::<Vec<u64>>());
    drop(sending.await.unwrap());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_per_connection_are_capped() {
    let (server, addr) = common::start_with(|c| {
        c.workers = 1;
        c.max_in_flight = 2;
    })
    .await;
    let slow = Slow::calibrate(Duration::from_secs(1)).await;
    let mut raw = Raw::connect(&addr).await;
    raw.send(&slow.frame(1, None)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kept on the server: not answered inline.
    raw.send(&exec_frame(2, "neg", 16, true, None)).await;
    // The third is not read until one of the two is answered, though it
    // needs no worker.
    raw.send(&request_frame(3, &Request::Health)).await;
    let ids: Vec<u64> = [raw.recv().await, raw.recv().await, raw.recv().await]
        .into_iter()
        .map(|f| f.expect("a reply").id)
        .collect();
    // Only after the graph ended (and the worker took the second) could
    // the health request be read.
    assert_ne!(ids[0], 3, "a request over the cap was read: {ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let (server, addr) = common::start_with(|c| {
        c.workers = 1;
        c.idle_timeout = Some(Duration::from_millis(400));
    })
    .await;
    let slow = Slow::calibrate(Duration::from_millis(1500)).await;
    let mut idle = Raw::connect(&addr).await;
    let mut busy = Raw::connect(&addr).await;
    busy.send(&slow.frame(1, None)).await;
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the idle connection was not closed within 5 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The busy one gets its answer, past the idle timeout, and serves on.
    let f = busy.recv().await.expect("the busy connection's reply");
    assert_eq!((f.id, reply_code(&f)), (1, None));
    busy.still_serves(2).await;
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_answered_busy() {
    let (server, addr) = common::start_with(|c| c.max_connections = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Raw::connect(&addr).await);
    }
    let e = Client::connect(&addr).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Busy, "{e}");
    let mut raw = Raw::connect_bare(&addr).await;
    let hello = protocol::hello("raw-test/1", None);
    raw.send(&protocol::encode(FrameKind::Hello, 0, &hello, vec![]).unwrap())
        .await;
    raw.expect_error(0, ErrorCode::Busy).await;
    assert!(raw.recv().await.is_none(), "closed after the refusal");
    // The open ones still serve; once one closes, a new client gets in.
    open[0].still_serves(1).await;
    drop(open.pop());
    let mut ok = None;
    for _ in 0..50 {
        match Client::connect(&addr).await {
            Ok(c) => {
                ok = Some(c);
                break;
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Busy, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    ok.expect("a slot freed by a closed connection")
        .health()
        .await
        .unwrap();
    server.shutdown().await;
}
