//! The transport against raw ZeroMQ peers (what a client in another
//! language does), with real sockets on loopback. The generic server is
//! not involved: the test plays it through the `Listener`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mymps_core::protocol::{self, Frame, FrameKind, Limits, Request, Response};
use mymps_core::transport::{Connection, Endpoint, Listener, Transport, TransportOptions};
use mymps_core::{Error, ErrorCode};

use crate::{ZmqConfig, ZmqTransport, wire};

mod bounds;

const WAIT: Duration = Duration::from_secs(10);

async fn listen(config: ZmqConfig) -> (Box<dyn Listener>, u16) {
    let t = ZmqTransport::new(config);
    let l = t
        .bind(
            &Endpoint::new("zmq", "127.0.0.1", 0),
            &TransportOptions::default(),
        )
        .await
        .unwrap();
    let port = l.local_endpoint().port;
    assert_ne!(port, 0);
    (l, port)
}

fn dealer(port: u16) -> zmq::Socket {
    let s = crate::sock::context().socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(5000).unwrap();
    s.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    s
}

fn send_parts(s: &zmq::Socket, parts: Vec<Vec<u8>>) {
    s.send_multipart(parts, 0).unwrap();
}

fn send(s: &zmq::Socket, f: &Frame) {
    let parts = std::iter::once(wire::encode_head(f))
        .chain(f.tensors.iter().map(|t| t.to_vec()))
        .collect();
    send_parts(s, parts);
}

fn recv(s: &zmq::Socket) -> Frame {
    let parts = s.recv_multipart(0).expect("a reply within 5 s");
    let n = parts.len();
    match wire::decode(parts.into_iter().map(Bytes::from).collect(), n).unwrap() {
        wire::Parsed::Frame(f) => f,
        wire::Parsed::Heartbeat => panic!("heartbeat from the server"),
    }
}

fn recv_error(s: &zmq::Socket) -> (u64, Error) {
    let f = recv(s);
    match protocol::decode_header::<Response>(&f).unwrap() {
        Response::Error(e) => (f.id, e),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn hello() -> Frame {
    protocol::encode(
        FrameKind::Hello,
        0,
        &protocol::hello("test/1", None),
        vec![],
    )
    .unwrap()
}

fn health(id: u64) -> Frame {
    protocol::encode(FrameKind::Request, id, &Request::Health, vec![]).unwrap()
}

async fn accept(l: &mut Box<dyn Listener>) -> Connection {
    tokio::time::timeout(WAIT, l.accept())
        .await
        .expect("a session within the wait")
        .unwrap()
}

async fn read(c: &mut Connection) -> Frame {
    tokio::time::timeout(WAIT, c.reader.read_frame(&Limits::DEFAULT, None))
        .await
        .expect("a frame within the wait")
        .unwrap()
        .expect("not closed")
        .frame
}

#[tokio::test]
async fn a_session_serves_frames_and_survives_malformed_messages() {
    let (mut l, port) = listen(ZmqConfig::DEFAULT).await;
    let d = dealer(port);
    send(&d, &hello());
    let mut c = accept(&mut l).await;
    assert!(c.peer.starts_with("zmq 127.0.0.1 id "), "{}", c.peer);
    assert_eq!(read(&mut c).await.kind, FrameKind::Hello);

    // A frame with tensors, both ways, byte for byte.
    let t1 = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let req = Frame::new(
        FrameKind::Request,
        5,
        Bytes::from_static(b"hdr"),
        vec![t1.clone(), Bytes::new(), Bytes::from_static(b"xyz")],
    );
    send(&d, &req);
    assert_eq!(read(&mut c).await, req);
    c.writer.write_frame(req.clone()).await.unwrap();
    assert_eq!(recv(&d), req);

    // Malformed messages are answered by the transport, with their id when
    // it can be read, and the session goes on.
    send_parts(&d, vec![b"short".to_vec()]);
    let (id, e) = recv_error(&d);
    assert_eq!((id, e.code), (0, ErrorCode::Protocol));
    let mut missing = vec![wire::encode_head(&req)];
    missing.push(t1.to_vec());
    send_parts(&d, missing);
    let (id, e) = recv_error(&d);
    assert_eq!((id, e.code), (5, ErrorCode::Protocol));
    assert!(e.message.contains("missing tensor parts"), "{e}");
    let mut extra: Vec<Vec<u8>> = vec![wire::encode_head(&req)];
    extra.extend(req.tensors.iter().map(|t| t.to_vec()));
    extra.push(b"more".to_vec());
    send_parts(&d, extra);
    assert!(recv_error(&d).1.message.contains("extra parts"));
    let mut bad_kind = wire::encode_head(&health(9));
    bad_kind[0] = 0x42;
    send_parts(&d, vec![bad_kind]);
    let (id, e) = recv_error(&d);
    assert_eq!((id, e.code), (9, ErrorCode::Protocol));

    // A heartbeat gets no answer; the next frame is served.
    send_parts(&d, vec![vec![]]);
    send(&d, &health(10));
    assert_eq!(read(&mut c).await.id, 10);
    c.writer.write_frame(health(10)).await.unwrap();
    assert_eq!(recv(&d).id, 10);
}

#[tokio::test]
async fn frames_over_the_limits_are_refused_by_the_reader() {
    let (mut l, port) = listen(ZmqConfig::DEFAULT).await;
    let d = dealer(port);
    send(&d, &hello());
    let mut c = accept(&mut l).await;
    read(&mut c).await;
    let big = Frame::new(
        FrameKind::Request,
        3,
        Bytes::new(),
        vec![Bytes::from(vec![0u8; 2000])],
    );
    send(&d, &big);
    let limits = Limits {
        max_payload: 1000,
        ..Limits::DEFAULT
    };
    match c.reader.read_frame(&limits, None).await {
        Err(mymps_core::transport::ReadError::Frame(
            mymps_core::protocol::FrameError::TooLarge { id: 3, .. },
        )) => {}
        other => panic!("{other:?}"),
    }
    send(&d, &health(4));
    assert_eq!(read(&mut c).await.id, 4);
}

#[tokio::test]
async fn sessions_start_with_a_hello_and_start_over_after_a_close_or_silence() {
    let config = ZmqConfig {
        idle_timeout: Duration::from_secs(1),
        ..ZmqConfig::DEFAULT
    };
    let (mut l, port) = listen(config).await;
    let d = dealer(port);
    // No session yet: a request is answered with its id.
    send(&d, &health(7));
    let (id, e) = recv_error(&d);
    assert_eq!((id, e.code), (7, ErrorCode::Protocol));
    assert!(e.message.contains("send a Hello first"), "{e}");

    // The server closes a session (as after a refused handshake): a new
    // Hello opens a new one.
    send(&d, &hello());
    let c = accept(&mut l).await;
    drop(c);
    send(&d, &hello());
    let mut c = accept(&mut l).await;
    assert_eq!(read(&mut c).await.kind, FrameKind::Hello);

    // A Hello on an open session starts it over: the old reader ends.
    send(&d, &hello());
    let mut c2 = accept(&mut l).await;
    assert_eq!(read(&mut c2).await.kind, FrameKind::Hello);
    let end = tokio::time::timeout(WAIT, c.reader.read_frame(&Limits::DEFAULT, None)).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");

    // Heartbeats keep a session beyond the idle timeout; silence ends it.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        send_parts(&d, vec![vec![]]);
    }
    send(&d, &health(8));
    assert_eq!(read(&mut c2).await.id, 8);
    let end = tokio::time::timeout(WAIT, c2.reader.read_frame(&Limits::DEFAULT, None)).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    // A reply to a request of the ended session still reaches the peer.
    c2.writer.write_frame(health(8)).await.unwrap();
    assert_eq!(recv(&d).id, 8);
    send(&d, &health(9));
    assert_eq!(recv_error(&d).0, 9);
}

#[tokio::test]
async fn a_session_queue_is_bounded_in_frames() {
    let config = ZmqConfig {
        peer_queue: 3,
        ..ZmqConfig::DEFAULT
    };
    let (mut l, port) = listen(config).await;
    let a = dealer(port);
    send(&a, &hello());
    let mut ca = accept(&mut l).await;

    // Nobody reads a's session: the Hello and two frames fill its queue.
    for id in 1..=4 {
        send(&a, &health(id));
    }
    let (id, e) = recv_error(&a);
    assert_eq!((id, e.code), (3, ErrorCode::Busy));
    let (id, _) = recv_error(&a);
    assert_eq!(id, 4);
    assert_eq!(read(&mut ca).await.kind, FrameKind::Hello);
    assert_eq!(read(&mut ca).await.id, 1);
    assert_eq!(read(&mut ca).await.id, 2);
    send(&a, &health(5));
    assert_eq!(read(&mut ca).await.id, 5);
}

fn client_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "mymps-zmq-client")
        .count()
}

#[tokio::test]
async fn the_client_side_round_trips_and_its_thread_ends() {
    let (mut l, port) = listen(ZmqConfig::DEFAULT).await;
    let t = ZmqTransport::default();
    let ep = Endpoint::new("zmq", "localhost", port);
    let before = client_threads();
    for round in 0..3u64 {
        let mut client = t.connect(&ep, &TransportOptions::default()).await.unwrap();
        client.writer.write_frame(hello()).await.unwrap();
        let mut server = accept(&mut l).await;
        read(&mut server).await;
        let tensor = Bytes::from(vec![round as u8; 1 << 20]);
        let f = Frame::new(
            FrameKind::Response,
            round,
            Bytes::from_static(b"h"),
            vec![tensor.clone(), Bytes::from_static(b"s")],
        );
        server.writer.write_frame(f.clone()).await.unwrap();
        assert_eq!(read(&mut client).await, f);
        client.writer.write_frame(f.clone()).await.unwrap();
        assert_eq!(read(&mut server).await, f);
    }
    // Every client connection's thread ends once its halves are dropped.
    let deadline = std::time::Instant::now() + WAIT;
    while client_threads() > before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client_threads(), before);
}

#[tokio::test]
async fn a_client_learns_of_a_refused_or_lost_connection() {
    let t = ZmqTransport::default();
    // Nothing listens: the connect fails, promptly.
    let (l, port) = listen(ZmqConfig::DEFAULT).await;
    drop(l);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = tokio::time::timeout(
        WAIT,
        t.connect(
            &Endpoint::new("zmq", "127.0.0.1", port),
            &TransportOptions::default(),
        ),
    )
    .await
    .expect("fails within the wait")
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

    // The server goes away (its socket closes): the client's reader reports
    // it. (Repeated, this caught libzmq leaving connections of a closed
    // ROUTER open when ZMTP heartbeats were on; the server side has none.)
    let t = ZmqTransport::new(ZmqConfig {
        heartbeat: Duration::from_millis(200),
        ..ZmqConfig::DEFAULT
    });
    let (mut l, port) = listen(ZmqConfig::DEFAULT).await;
    let mut c = t
        .connect(
            &Endpoint::new("zmq", "127.0.0.1", port),
            &TransportOptions::default(),
        )
        .await
        .unwrap();
    c.writer.write_frame(hello()).await.unwrap();
    let mut s = accept(&mut l).await;
    read(&mut s).await;
    drop(s);
    drop(l);
    let r = tokio::time::timeout(WAIT, c.reader.read_frame(&Limits::DEFAULT, None))
        .await
        .expect("noticed within the wait");
    assert!(
        matches!(r, Err(mymps_core::transport::ReadError::Io(_)) | Ok(None)),
        "{r:?}"
    );
}

#[tokio::test]
async fn libzmq_drops_a_peer_that_sends_a_part_larger_than_any_frame() {
    let limits = Limits {
        max_header_len: 64,
        max_tensors: 4,
        max_payload: 1000,
        ..Limits::DEFAULT
    };
    let options = TransportOptions {
        limits: Some(limits),
        ..TransportOptions::default()
    };
    let mut l = ZmqTransport::default()
        .bind(&Endpoint::new("zmq", "127.0.0.1", 0), &options)
        .await
        .unwrap();
    let port = l.local_endpoint().port;
    let d = dealer(port);
    let monitor_addr = crate::sock::inproc("test-monitor");
    d.monitor(&monitor_addr, zmq_sys::ZMQ_EVENT_DISCONNECTED as i32)
        .unwrap();
    let monitor = crate::sock::context().socket(zmq::PAIR).unwrap();
    monitor.set_rcvtimeo(5000).unwrap();
    monitor.connect(&monitor_addr).unwrap();
    send(&d, &hello());
    let mut c = accept(&mut l).await;
    read(&mut c).await;
    // 1000 bytes: the largest part allowed; it arrives.
    let ok = Frame::new(
        FrameKind::Request,
        1,
        Bytes::new(),
        vec![Bytes::from(vec![1u8; 1000])],
    );
    send(&d, &ok);
    assert_eq!(read(&mut c).await, ok);
    // 1001 bytes: libzmq drops the connection without delivering it.
    let big = Frame::new(
        FrameKind::Request,
        2,
        Bytes::new(),
        vec![Bytes::from(vec![1u8; 1001])],
    );
    send(&d, &big);
    let event = monitor.recv_msg(0).expect("a disconnect within 5 s");
    let code = u16::from_ne_bytes([event[0], event[1]]);
    assert_eq!(u32::from(code), zmq_sys::ZMQ_EVENT_DISCONNECTED);
    // The session ends with the connection; the frame never arrives.
    let r = tokio::time::timeout(WAIT, c.reader.read_frame(&Limits::DEFAULT, None)).await;
    assert!(
        matches!(r, Ok(Ok(None))),
        "the oversized frame was delivered: {r:?}"
    );
    // The monitor stops before its reader closes: libzmq's I/O thread
    // blocks on a monitor event with no one to take it.
    let mut d = d;
    crate::sock::stop_monitor(&mut d);
    drop(monitor);
}

#[tokio::test]
async fn a_session_queue_is_bounded_in_bytes_and_drains_back_to_empty() {
    let config = ZmqConfig {
        peer_queue: 100,
        peer_queue_bytes: 2500,
        ..ZmqConfig::DEFAULT
    };
    let (mut l, port) = listen(config).await;
    let d = dealer(port);
    send(&d, &hello());
    let mut c = accept(&mut l).await;
    let frame = |id| {
        Frame::new(
            FrameKind::Request,
            id,
            Bytes::new(),
            vec![Bytes::from(vec![id as u8; 1000])],
        )
    };
    // Unread: the Hello and two 1000-byte frames fit, the third does not.
    for id in 1..=3 {
        send(&d, &frame(id));
    }
    let (id, e) = recv_error(&d);
    assert_eq!((id, e.code), (3, ErrorCode::Busy));
    assert_eq!(read(&mut c).await.kind, FrameKind::Hello);
    assert_eq!(read(&mut c).await.id, 1);
    assert_eq!(read(&mut c).await.id, 2);
    // Drained, the queue takes as much again, round after round.
    for round in 0..3u64 {
        let base = 10 * (round + 1);
        for id in base..base + 3 {
            send(&d, &frame(id));
        }
        let (id, e) = recv_error(&d);
        assert_eq!((id, e.code), (base + 2, ErrorCode::Busy));
        assert_eq!(read(&mut c).await.id, base);
        assert_eq!(read(&mut c).await.id, base + 1);
    }
    assert!(
        d.poll(zmq::POLLIN, 200).unwrap() == 0,
        "an unexpected reply"
    );
}

#[tokio::test]
async fn what_the_pump_answers_itself_is_counted_for_the_metrics() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let counted = Arc::new(AtomicU64::new(0));
    let seen = counted.clone();
    let options = TransportOptions {
        refusals: Some(mymps_core::transport::RefusalCounter(Arc::new(
            move |code| {
                assert_eq!(code, ErrorCode::Protocol);
                seen.fetch_add(1, Ordering::Relaxed);
            },
        ))),
        ..TransportOptions::default()
    };
    let l = ZmqTransport::new(ZmqConfig::DEFAULT)
        .bind(&Endpoint::new("zmq", "127.0.0.1", 0), &options)
        .await
        .unwrap();
    let d = dealer(l.local_endpoint().port);
    // A request before any Hello, and a message that is not a frame.
    send(&d, &health(3));
    assert_eq!(recv_error(&d).1.code, ErrorCode::Protocol);
    send_parts(&d, vec![b"short".to_vec()]);
    assert_eq!(recv_error(&d).1.code, ErrorCode::Protocol);
    assert_eq!(counted.load(Ordering::Relaxed), 2);
}
