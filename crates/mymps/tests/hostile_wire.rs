//! Hostile clients against a real server over real sockets (issue "No
//! request can kill or starve the server"): each case once killed the
//! server, held its memory budget or its I/O threads, or passed a limit.
//! Each now gets a typed error, and the server (and, where the framing
//! survives, the same connection) goes on serving.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Raw;
use mymps::client::{Call, Caller, Client};
use mymps::protocol::{self, ExecRequest, Frame, FrameKind, Prefix, Request, Response, TensorMeta};
use mymps::{ErrorCode, Tensor, Value};

fn exec(id: u64, op: &str, inputs: Vec<(TensorMeta, Vec<u8>)>, kwargs: &[(&str, Value)]) -> Frame {
    let (metas, data): (Vec<_>, Vec<_>) = inputs.into_iter().unzip();
    let req = Request::Exec(ExecRequest {
        op: op.into(),
        inputs: metas,
        kwargs: kwargs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..Default::default()
    });
    protocol::encode(
        FrameKind::Request,
        id,
        &req,
        data.into_iter().map(Bytes::from).collect(),
    )
    .unwrap()
}

fn meta(name: &str, dtype: &str, shape: &[u64], strides: Option<&[u64]>) -> TensorMeta {
    TensorMeta {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
        strides: strides.map(<[u64]>::to_vec),
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_view_of_terabytes_is_refused_not_allocated() {
    let (server, addr) = common::start().await;
    let mut c = Raw::connect(&addr).await;
    // float32 [2^40] with stride 0 over 4 bytes: 4 TiB if made dense (the
    // server aborted in the allocation).
    for (id, name) in [(1, "0"), (2, "input")] {
        c.send(&exec(
            id,
            "neg",
            vec![(meta(name, "float32", &[1 << 40], Some(&[0])), f32s(&[1.5]))],
            &[],
        ))
        .await;
        let m = c.expect_error(id, ErrorCode::PayloadTooLarge).await;
        assert!(m.contains("strided view of 4398046511104 bytes"), "{m}");
    }
    c.still_serves(3).await;
    // A modest broadcast view still works, wherever its 4 bytes land in the
    // read buffer: shapes of different msgpack lengths shift them off
    // alignment (such a view was once made dense on the way in).
    for (i, len) in [100u64, 200, 1000, 70_000, 100_000].into_iter().enumerate() {
        let id = 10 + i as u64;
        c.send(&exec(
            id,
            "neg",
            vec![(meta("0", "float32", &[len], Some(&[0])), f32s(&[2.0]))],
            &[],
        ))
        .await;
        let f = c.recv().await.expect("a reply");
        let Response::Exec(r) = protocol::decode_header::<Response>(&f).unwrap() else {
            panic!("neg of a broadcast view of {len} failed");
        };
        assert_eq!(r.outputs[0].shape, vec![len]);
        assert!(f.tensors[0].chunks(4).all(|b| b == (-2.0f32).to_le_bytes()));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strides_need_the_negotiated_feature() {
    let (server, addr) = common::start().await;
    let mut c = Raw::connect_bare(&addr).await;
    let mut hello = protocol::hello("no-strides/1", None);
    hello.features.clear();
    c.send(&protocol::encode(FrameKind::Hello, 0, &hello, vec![]).unwrap())
        .await;
    assert_eq!(c.recv().await.unwrap().kind, FrameKind::Welcome);
    c.send(&exec(
        1,
        "neg",
        vec![(meta("0", "float32", &[4], Some(&[0])), f32s(&[1.0]))],
        &[],
    ))
    .await;
    let m = c.expect_error(1, ErrorCode::InvalidTensor).await;
    assert!(m.contains("strided-tensors"), "{m}");
    // Dense tensors are fine on that connection.
    c.send(&exec(
        2,
        "neg",
        vec![(meta("0", "float32", &[1], None), f32s(&[1.0]))],
        &[],
    ))
    .await;
    let f = c.recv().await.unwrap();
    assert!(matches!(
        protocol::decode_header::<Response>(&f).unwrap(),
        Response::Exec(_)
    ));
    server.shutdown().await;
}

/// A prefix (and length table) declaring sizes no frame can have.
fn absurd_prefix(id: u64, header_len: u32, lens: &[u64]) -> Vec<u8> {
    let p = Prefix {
        kind: FrameKind::Request,
        flags: 0,
        n_tensors: lens.len() as u16,
        header_len,
        id,
    };
    let mut v = p.encode().to_vec();
    for l in lens {
        v.extend_from_slice(&l.to_le_bytes());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_sizes_are_answered_and_closed_at_once() {
    let (server, addr) = common::start().await;
    for (id, header_len, lens) in [
        (7, u32::MAX, vec![]),
        (8, 10, vec![u64::MAX]),
        (9, 10, vec![1 << 62, 1 << 62]),
    ] {
        let mut c = Raw::connect(&addr).await;
        c.send_bytes(&absurd_prefix(id, header_len, &lens)).await;
        let started = Instant::now();
        let m = c.expect_error(id, ErrorCode::PayloadTooLarge).await;
        assert!(m.contains("closing the connection"), "{m}");
        assert!(c.recv().await.is_none(), "the connection is closed");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A frame a little over the cap is still answered and skipped, and the
    // connection goes on (the answer comes before the bytes are skipped).
    let mut c = Raw::connect(&addr).await;
    c.send_bytes(&absurd_prefix(10, 16, &[5 << 30])).await;
    c.expect_error(10, ErrorCode::PayloadTooLarge).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_stall_mid_frame_release_the_budget() {
    let (server, addr) = common::start_with(|c| {
        c.memory_budget = 256 << 20;
        c.limits.stall_timeout = Duration::from_millis(1500);
    })
    .await;
    // Four peers declare a 63 MiB tensor, send its header and stall.
    let mut stalled = Vec::new();
    for id in 0..4u64 {
        let mut c = Raw::connect(&addr).await;
        let f = exec(
            id,
            "neg",
            vec![(meta("0", "uint8", &[63 << 20], None), vec![0u8; 63 << 20])],
            &[],
        );
        let wire = f.to_vec();
        let head = wire.len() - (63 << 20);
        c.send_bytes(&wire[..head + 1000]).await;
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A small request from someone else is answered at once, not queued
    // behind the large ones.
    let client = Client::connect(&addr).await.unwrap();
    let started = Instant::now();
    let x = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
    let out = client.call(Call::new("neg").arg(x)).await.unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, -2.0]
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a small request waited {:?} behind stalled large ones",
        started.elapsed()
    );
    // The stalled peers are cut off after the stall timeout, and the
    // budget they held is free again.
    for c in &mut stalled {
        assert!(c.recv().await.is_none(), "a stalled peer is disconnected");
    }
    let m = client.metrics().await.unwrap();
    assert_eq!(m.memory_budget_used_bytes, 0);
    let big = Tensor::from_vec(vec![0u8; 100 << 20], &[100 << 20]).unwrap();
    let out = client.call(Call::new("neg").arg(big)).await;
    assert!(out.is_ok(), "{out:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_unknown_op_name_costs_nothing() {
    let (server, addr) = common::start().await;
    let c = Client::connect(&addr).await.unwrap();
    let name = "softmaxx".repeat(300_000 / 8);
    let started = Instant::now();
    let e = c.call(Call::new(&name)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownOp);
    assert!(
        e.message.len() < 300,
        "{} bytes of message",
        e.message.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A near miss still gets its suggestion.
    let e = c.call(Call::new("softmaxx")).await.unwrap_err();
    assert!(e.message.contains("did you mean"), "{}", e.message);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_outputs_count_against_the_memory_budget() {
    let (server, addr) = common::start_with(|c| c.memory_budget = 256 << 20).await;
    let c = Client::connect(&addr).await.unwrap();
    let one = || Tensor::from_vec(vec![1.0f32], &[1]).unwrap();
    // 1 GiB out of 4 bytes in.
    let e = c
        .call(
            Call::new("repeat")
                .arg(one())
                .kwarg("repeats", vec![1i64 << 28]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e}");
    assert!(e.message.contains("1073741824 bytes"), "{e}");
    // The outer product of two 400k vectors: 640 GB.
    let v = Tensor::from_vec(vec![1.0f32; 400_000], &[400_000]).unwrap();
    let e = c
        .call(Call::new("outer").arg(v.clone()).arg(v))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e}");
    // An integer division (its checks read values, so shape inference on
    // meta tensors cannot run it) that broadcasts [1, n] by [n, 1].
    let n = 20_000;
    let row = Tensor::from_vec(vec![3i64; n], &[1, n]).unwrap();
    let col = Tensor::from_vec(vec![2i64; n], &[n, 1]).unwrap();
    let e = c
        .call(
            Call::new("div")
                .arg(row)
                .arg(col)
                .kwarg("rounding_mode", "floor"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e}");
    // Within the budget it runs as before.
    let out = c
        .call(
            Call::new("repeat")
                .arg(one())
                .kwarg("repeats", vec![1i64 << 20]),
        )
        .await
        .unwrap();
    assert_eq!(out.output().unwrap().shape(), &[1 << 20]);
    let m = c.metrics().await.unwrap();
    assert_eq!(m.memory_budget_used_bytes, 0, "nothing stays held");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_does_not_leave_its_work_queued() {
    let (server, addr) = common::start_with(|c| c.workers = 1).await;
    let mut c = Raw::connect(&addr).await;
    // One slow request takes the only worker; 39 small ones queue behind it.
    let n = 3000u64;
    let slow = f32s(&common::randn((n * n) as usize, 1));
    let small = f32s(&common::randn(64 * 64, 2));
    let total = 40u64;
    for id in 1..=total {
        let (n, data) = if id == 1 { (n, &slow) } else { (64, &small) };
        c.send(&exec(
            id,
            "matmul",
            vec![
                (meta("0", "float32", &[n, n], None), data.clone()),
                (meta("1", "float32", &[n, n], None), data.clone()),
            ],
            &[],
        ))
        .await;
    }
    // Once the server has read them all (the slow one runs, 39 wait for
    // the worker), the client crashes: RST, not FIN.
    let client = Client::connect(&addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = client.metrics().await.unwrap();
        if m.requests_in_flight > total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never held the {total} requests at once: {} in flight, ops {:?}",
            m.requests_in_flight,
            m.ops
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.reset();
    // The queued requests are answered `Cancelled` (nobody to send to) as
    // they reach the worker, not run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (count, errors) = loop {
        let m = client.metrics().await.unwrap();
        let matmul = m
            .ops
            .iter()
            .find(|o| o.op == "matmul")
            .map_or((0, 0), |o| (o.count, o.errors));
        if matmul.0 >= total || Instant::now() > deadline {
            break matmul;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(count, total, "every request is accounted for");
    assert!(
        errors >= total - 2,
        "{} of {total} matmuls ran after the reset",
        count - errors
    );
    let m = client.metrics().await.unwrap();
    let cancelled = m
        .errors
        .iter()
        .find(|e| e.code == ErrorCode::Cancelled.as_u16())
        .map_or(0, |e| e.count);
    assert!(cancelled >= total - 2, "{:?}", m.errors);
    assert_eq!(m.requests_in_flight, 1, "only the metrics request itself");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_an_absurd_reply_without_allocating_it() {
    use mymps::stream::StreamReader;
    use mymps::transport::FrameReader;
    use tokio::io::AsyncWriteExt;
    // A "server" that answers the handshake, then declares a 4 GiB header.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let fake = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (r, mut w) = socket.into_split();
        let mut r = StreamReader::new(r);
        let limits = protocol::Limits::DEFAULT;
        let _hello = r
            .read_frame(&protocol::Limits::HANDSHAKE, None)
            .await
            .unwrap();
        let welcome = protocol::Welcome {
            protocol: protocol::PROTOCOL_VERSION,
            features: vec![],
            agent: "fake/1".into(),
            device: "cpu".into(),
            max_header_len: limits.max_header_len,
            max_tensors: limits.max_tensors,
            max_payload: limits.max_payload,
        };
        let f = protocol::encode(FrameKind::Welcome, 0, &welcome, vec![]).unwrap();
        w.write_all(&f.to_vec()).await.unwrap();
        let req = r.read_frame(&limits, None).await.unwrap().unwrap();
        let mut prefix = absurd_prefix(req.frame.id, u32::MAX, &[]);
        prefix[0] = FrameKind::Response as u8;
        w.write_all(&prefix).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let c = Client::connect(&addr).await.unwrap();
    let started = Instant::now();
    let e = c.health().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "{e}");
    assert!(
        matches!(e.code, ErrorCode::Protocol | ErrorCode::Connection),
        "{e}"
    );
    assert!(c.is_closed());
    fake.abort();
}
