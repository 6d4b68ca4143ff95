//! Bad bytes on a real socket: each gives a typed error (or, for bytes that
//! cannot be framed, closes only that connection), and afterwards the server
//! still serves the same connection where the framing survived, and new ones.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Raw;
use mymps::protocol::{self, ExecRequest, Frame, FrameKind, Request, Response, TensorMeta};
use mymps::{ErrorCode, Value};

fn exec_frame(id: u64, dtype: &str, shape: Vec<u64>, data: Vec<u8>) -> Frame {
    let req = Request::Exec(ExecRequest {
        op: "neg".into(),
        inputs: vec![TensorMeta {
            name: "0".into(),
            dtype: dtype.into(),
            shape,
            strides: None,
        }],
        kwargs: Default::default(),
    });
    protocol::encode(FrameKind::Request, id, &req, vec![Bytes::from(data)]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_typed_errors_on_a_surviving_connection() {
    let (server, addr) = common::start_with(|c| c.limits.max_payload = 1 << 20).await;
    let mut c = Raw::connect(&addr).await;

    // Unknown dtype.
    c.send(&exec_frame(10, "float8", vec![2], vec![0; 2])).await;
    let m = c.expect_error(10, ErrorCode::InvalidTensor).await;
    assert!(m.contains("unknown dtype 'float8'"), "{m}");
    c.still_serves(11).await;

    // Data length ≠ shape × itemsize.
    c.send(&exec_frame(12, "float32", vec![3], vec![0; 11]))
        .await;
    let m = c.expect_error(12, ErrorCode::InvalidTensor).await;
    assert!(m.contains("data length 11"), "{m}");
    c.still_serves(13).await;

    // A header that is not msgpack.
    c.send(&Frame::new(
        FrameKind::Request,
        14,
        Bytes::from_static(&[0xc1, 0xc1, 0xc1]),
        vec![],
    ))
    .await;
    c.expect_error(14, ErrorCode::Protocol).await;
    c.still_serves(15).await;

    // A kwarg of the wrong type, sent as raw msgpack.
    let mut kwargs = std::collections::BTreeMap::new();
    kwargs.insert("dim".to_string(), Value::List(vec![Value::Str("x".into())]));
    let req = Request::Exec(ExecRequest {
        op: "softmax".into(),
        inputs: vec![TensorMeta {
            name: "0".into(),
            dtype: "float32".into(),
            shape: vec![1],
            strides: None,
        }],
        kwargs,
    });
    c.send(
        &protocol::encode(
            FrameKind::Request,
            16,
            &req,
            vec![Bytes::from(vec![0u8; 4])],
        )
        .unwrap(),
    )
    .await;
    let m = c.expect_error(16, ErrorCode::BadArgument).await;
    assert!(m.contains("signature: softmax("), "{m}");

    // More tensors described than carried.
    let req = Request::Exec(ExecRequest {
        op: "neg".into(),
        inputs: vec![TensorMeta {
            name: "0".into(),
            dtype: "float32".into(),
            shape: vec![1],
            strides: None,
        }],
        kwargs: Default::default(),
    });
    c.send(&protocol::encode(FrameKind::Request, 17, &req, vec![]).unwrap())
        .await;
    c.expect_error(17, ErrorCode::Protocol).await;

    // A request kind from the future.
    #[derive(serde::Serialize)]
    struct Future {
        r#type: &'static str,
    }
    c.send(
        &protocol::encode(
            FrameKind::Request,
            18,
            &Future { r#type: "teleport" },
            vec![],
        )
        .unwrap(),
    )
    .await;
    c.expect_error(18, ErrorCode::Unsupported).await;

    // A length prefix over the cap: refused before anything is allocated,
    // skipped, and the connection goes on.
    c.send(&exec_frame(19, "uint8", vec![2 << 20], vec![0; 2 << 20]))
        .await;
    let m = c.expect_error(19, ErrorCode::PayloadTooLarge).await;
    assert!(m.contains("exceeds the limit"), "{m}");
    c.still_serves(20).await;

    // A Welcome frame from a client is a protocol error, not a crash.
    c.send(&Frame::new(FrameKind::Welcome, 21, Bytes::new(), vec![]))
        .await;
    c.expect_error(21, ErrorCode::Protocol).await;
    c.still_serves(22).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unframeable_bytes_close_only_that_connection() {
    let (server, addr) = common::start().await;
    let mut other = Raw::connect(&addr).await;

    // Garbage after the handshake.
    let mut c = Raw::connect(&addr).await;
    c.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let f = c.recv().await.expect("a last error reply");
    assert!(
        matches!(protocol::decode_header::<Response>(&f).unwrap(), Response::Error(e) if e.code == ErrorCode::Protocol)
    );
    assert!(c.recv().await.is_none(), "the connection is closed");

    // Garbage instead of a handshake.
    let mut c = Raw::connect_bare(&addr).await;
    c.send_bytes(&[0xff; 64]).await;
    let _ = c.recv().await;
    assert!(c.recv().await.is_none());

    // A request before the handshake.
    let mut c = Raw::connect_bare(&addr).await;
    c.send(&protocol::encode(FrameKind::Request, 1, &Request::Health, vec![]).unwrap())
        .await;
    let f = c.recv().await.expect("refusal");
    assert!(
        matches!(protocol::decode_header::<Response>(&f).unwrap(), Response::Error(e) if e.code == ErrorCode::Protocol)
    );
    assert!(c.recv().await.is_none());

    // A Hello that is too large for the handshake limits.
    let mut c = Raw::connect_bare(&addr).await;
    c.send(&Frame::new(
        FrameKind::Hello,
        0,
        Bytes::from(vec![0u8; 100_000]),
        vec![],
    ))
    .await;
    let f = c.recv().await.expect("refusal");
    assert!(
        matches!(protocol::decode_header::<Response>(&f).unwrap(), Response::Error(e) if e.code == ErrorCode::PayloadTooLarge)
    );

    // A wrong magic.
    let mut c = Raw::connect_bare(&addr).await;
    let mut hello = protocol::hello("alien", None);
    hello.magic = "nope".into();
    c.send(&protocol::encode(FrameKind::Hello, 0, &hello, vec![]).unwrap())
        .await;
    let f = c.recv().await.expect("refusal");
    assert!(
        matches!(protocol::decode_header::<Response>(&f).unwrap(), Response::Error(e) if e.code == ErrorCode::Protocol)
    );

    // A truncated frame, then the client goes away; and a client that
    // disconnects in the middle of a large tensor.
    let mut c = Raw::connect(&addr).await;
    let wire = exec_frame(5, "float32", vec![1 << 18], vec![0; 1 << 20]).to_vec();
    c.send_bytes(&wire[..wire.len() / 3]).await;
    drop(c);
    let mut c = Raw::connect(&addr).await;
    c.send_bytes(&wire[..10]).await;
    drop(c);

    // The bystander connection and new connections are unaffected.
    other.still_serves(1).await;
    let mut fresh = Raw::connect(&addr).await;
    fresh.still_serves(1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_requests_in_flight() {
    let (server, addr) = common::start().await;
    let c = mymps::client::Client::connect(&addr).await.unwrap();
    let n = 700;
    let x = mymps::Tensor::from_vec(common::randn(n * n, 3), &[n, n]).unwrap();
    let pending = {
        let c = c.clone();
        tokio::spawn(async move {
            c.call(mymps::client::Call::new("matmul").arg(x.clone()).arg(x))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.shutdown().await;
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.output().unwrap().shape(), &[n, n]);
    // And after shutdown, new connections are refused.
    assert!(mymps::client::Client::connect(&addr).await.is_err());
}
