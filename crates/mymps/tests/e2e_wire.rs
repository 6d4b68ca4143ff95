//! Bad bytes on a real socket: bytes that cannot be framed close only their
//! connection, and the server still serves the others and new ones; a
//! shutdown answers the requests in flight first.
//! (Well-framed bad requests, answered with typed errors on a connection
//! that goes on, are `conformance.rs`'s `bad_input` and `caps`, over every
//! transport.)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Raw;
use mymps::ErrorCode;
use mymps::client::Caller;
use mymps::protocol::{self, ExecRequest, Frame, FrameKind, Request, Response, TensorMeta};

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
        ..Default::default()
    });
    protocol::encode(FrameKind::Request, id, &req, vec![Bytes::from(data)]).unwrap()
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
