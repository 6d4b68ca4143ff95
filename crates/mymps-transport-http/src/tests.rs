//! Issue 22 over HTTP: request heads are bounded in size and time, and a
//! body that stops coming gives back the memory budget it took. Real
//! sockets on loopback; the generic server is played through the
//! `Listener` (handshake, then one reply per request).

use std::time::{Duration, Instant};

use mymps_core::protocol::{self, FrameKind, Limits, Request, Response, StatsInfo, Welcome};
use mymps_core::transport::{
    Endpoint, Listener, MemoryBudget, ReadError, Transport, TransportOptions,
};
use mymps_core::{Error, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{HttpConfig, HttpTransport};

const WAIT: Duration = Duration::from_secs(10);

async fn listen(config: HttpConfig) -> (Box<dyn Listener>, u16) {
    let l = HttpTransport::new(config)
        .bind(
            &Endpoint::new("http", "127.0.0.1", 0),
            &TransportOptions::default(),
        )
        .await
        .unwrap();
    let port = l.local_endpoint().port;
    (l, port)
}

/// Plays the generic server: accepts every virtual connection, answers
/// its Hello, then each request (`stats` with an empty answer, anything
/// else `unsupported`, refused ones with their error), holding each
/// request's memory permit until it is answered.
fn serve_all(mut l: Box<dyn Listener>, budget: MemoryBudget) {
    tokio::spawn(async move {
        while let Ok(mut c) = l.accept().await {
            let budget = budget.clone();
            tokio::spawn(async move {
                let Ok(Some(_hello)) = c.reader.read_frame(&Limits::HANDSHAKE, None).await else {
                    return;
                };
                let welcome = Welcome {
                    protocol: 1,
                    features: vec![],
                    agent: "test".into(),
                    device: "cpu".into(),
                    max_header_len: Limits::DEFAULT.max_header_len,
                    max_tensors: Limits::DEFAULT.max_tensors,
                    max_payload: Limits::DEFAULT.max_payload,
                };
                let w = protocol::encode(FrameKind::Welcome, 0, &welcome, vec![]).unwrap();
                c.writer.write_frame(w).await.unwrap();
                loop {
                    let (id, response) =
                        match c.reader.read_frame(&Limits::DEFAULT, Some(&budget)).await {
                            Ok(Some(inc)) => {
                                let r = match protocol::decode_header::<Request>(&inc.frame) {
                                    Ok(Request::Stats) => Response::Stats(StatsInfo::default()),
                                    _ => Response::Error(Error::new(
                                        ErrorCode::Unsupported,
                                        "not in this test",
                                    )),
                                };
                                (inc.frame.id, r)
                            }
                            Err(ReadError::Refused { id, error }) => (id, Response::Error(error)),
                            Ok(None) | Err(_) => break,
                        };
                    let f = protocol::encode(FrameKind::Response, id, &response, vec![]).unwrap();
                    if c.writer.write_frame(f).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// Reads a response's status and head; `None` if the connection closed
/// (or was reset) first.
async fn read_head(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("an answer within the wait")
        {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Some((status, head))
}

/// A `GET /stats` on a new connection answers 200.
async fn stats_works(port: u16) {
    let mut s = connect(port).await;
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let (status, head) = read_head(&mut s).await.expect("an answer");
    assert_eq!(status, 200, "{head}");
}

/// Sends `head` (request line and headers, without the blank line) and
/// the blank line; what comes back.
async fn send_head(port: u16, head: &[u8]) -> Option<(u16, String)> {
    let mut s = connect(port).await;
    // The server may answer and close before it has read everything.
    let _ = s.write_all(head).await;
    let _ = s.write_all(b"\r\n").await;
    read_head(&mut s).await
}

fn padded_head(headers: usize, each: usize) -> Vec<u8> {
    let mut head = b"GET /stats HTTP/1.1\r\nHost: test\r\n".to_vec();
    for i in 0..headers {
        head.extend_from_slice(format!("x-pad-{i}: ").as_bytes());
        head.extend(std::iter::repeat_n(b'a', each));
        head.extend_from_slice(b"\r\n");
    }
    head
}

#[tokio::test]
async fn request_heads_over_256_kib_are_refused() {
    let (l, port) = listen(HttpConfig::DEFAULT).await;
    serve_all(l, MemoryBudget::new(64 << 20));
    // Under the cap: served.
    let r = send_head(port, &padded_head(25, 8000)).await;
    assert_eq!(r.map(|r| r.0), Some(200));
    // 300 KB of headers: 30 of 10 kB, 3 of 100 kB, or one of 300 kB.
    for (n, each) in [(30, 10_000), (3, 100_000), (1, 300_000)] {
        let r = send_head(port, &padded_head(n, each)).await;
        assert!(
            matches!(r, Some((431, _)) | None),
            "{n} headers of {each} bytes: {r:?}"
        );
    }
    // Many small headers, beyond what hyper parses.
    let r = send_head(port, &padded_head(5000, 10)).await;
    assert!(matches!(r, Some((431, _)) | None), "{r:?}");
    stats_works(port).await;
}

#[tokio::test]
async fn a_head_that_stops_coming_is_cut_off() {
    let config = HttpConfig {
        header_read_timeout: Duration::from_millis(300),
        ..HttpConfig::DEFAULT
    };
    let (l, port) = listen(config).await;
    serve_all(l, MemoryBudget::new(64 << 20));
    let mut s = connect(port).await;
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let start = Instant::now();
    let r = read_head(&mut s).await;
    let took = start.elapsed();
    assert!(matches!(r, Some((408, _)) | None), "{r:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    stats_works(port).await;
}

#[tokio::test]
async fn a_body_that_stops_coming_gives_its_budget_back() {
    let config = HttpConfig {
        body_read_timeout: Duration::from_millis(300),
        ..HttpConfig::DEFAULT
    };
    let (l, port) = listen(config).await;
    let budget = MemoryBudget::new(64 << 20);
    serve_all(l, budget.clone());
    // 1 MB declared, 1000 bytes sent, then nothing.
    let mut s = connect(port).await;
    s.write_all(
        b"POST /exec HTTP/1.1\r\nHost: test\r\nx-op: neg\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await
    .unwrap();
    s.write_all(&[0u8; 1000]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while budget.in_use() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(budget.in_use() >= 1_000_000, "the body's budget was taken");
    let start = Instant::now();
    let r = read_head(&mut s).await;
    let took = start.elapsed();
    let (status, head) = r.expect("an answer");
    assert_eq!(status, 408, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(budget.in_use(), 0, "the budget is given back");
    // The connection is closed; the server goes on.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(_)) | Ok(Err(_))), "closed");
    stats_works(port).await;

    // A body that keeps coming, however slowly, is read.
    let mut s = connect(port).await;
    s.write_all(b"POST /models/load HTTP/1.1\r\nHost: test\r\nContent-Length: 40\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"          ").await.unwrap();
    }
    let (status, head) = read_head(&mut s).await.expect("an answer");
    // Not JSON: refused by the request's own rules, not by the timeout.
    assert_eq!(status, 400, "{head}");
}

/// A streamed `generate` whose HTTP client stops reading (but stays
/// connected) is cancelled once a step has waited the body read timeout:
/// the server is sent a `Cancel` for it, and is not held.
#[tokio::test]
async fn a_stream_left_unread_is_cancelled() {
    use mymps_core::model::{Step, StepToken};
    let config = HttpConfig {
        body_read_timeout: Duration::from_millis(300),
        ..HttpConfig::DEFAULT
    };
    let (mut l, port) = listen(config).await;
    let (cancelled_tx, cancelled) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut c = l.accept().await.unwrap();
        let _hello = c.reader.read_frame(&Limits::HANDSHAKE, None).await;
        let welcome = Welcome {
            protocol: 1,
            features: vec![],
            agent: "test".into(),
            device: "cpu".into(),
            max_header_len: Limits::DEFAULT.max_header_len,
            max_tensors: Limits::DEFAULT.max_tensors,
            max_payload: Limits::DEFAULT.max_payload,
        };
        let w = protocol::encode(FrameKind::Welcome, 0, &welcome, vec![]).unwrap();
        c.writer.write_frame(w).await.unwrap();
        let inc = c
            .reader
            .read_frame(&Limits::DEFAULT, None)
            .await
            .unwrap()
            .unwrap();
        let id = inc.frame.id;
        assert!(matches!(
            protocol::decode_header::<Request>(&inc.frame),
            Ok(Request::Generate(g)) if g.stream
        ));
        // Steps of 64 KiB of text each, until the cancel comes (at most
        // 10 000: 640 MB, far beyond any socket's buffers).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let mut writer = c.writer;
        tokio::spawn(async move {
            for index in 0..10_000 {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let step = Step {
                    index,
                    tokens: vec![StepToken {
                        id: Some(1),
                        text: "x".repeat(64 << 10),
                        finish: None,
                    }],
                };
                let f = protocol::encode(
                    FrameKind::Response,
                    id,
                    &Response::GenerateStep(step),
                    vec![],
                )
                .unwrap()
                .with_more();
                if writer.write_frame(f).await.is_err() {
                    break;
                }
            }
        });
        while let Ok(Some(inc)) = c.reader.read_frame(&Limits::DEFAULT, None).await {
            if inc.frame.kind == FrameKind::Cancel && inc.frame.id == id {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = cancelled_tx.send(());
                break;
            }
        }
    });
    let mut s = connect(port).await;
    let body = br#"{"model": "m", "prompt": [1], "stream": true}"#;
    s.write_all(
        format!(
            "POST /generate HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(body).await.unwrap();
    let (status, head) = read_head(&mut s).await.expect("an answer");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // Nothing more is read, and the connection stays open.
    tokio::time::timeout(WAIT, cancelled)
        .await
        .expect("a cancel within the wait")
        .unwrap();
    drop(s);
}
