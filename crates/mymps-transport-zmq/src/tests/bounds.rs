//! Issue 22: no peer, and no set of peers, can lock others out of the
//! server or make the transport hold memory without bound. Real sockets on
//! loopback; the server is played through the `Listener`.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::*;

/// Waits (polling) until `done` holds; `false` after `within`.
async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Counts of the sessions that [`serve_all`] saw.
#[derive(Clone, Default)]
struct Served {
    opened: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

impl Served {
    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }
    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

fn reply(id: u64) -> Frame {
    protocol::encode(
        FrameKind::Response,
        id,
        &Response::Error(Error::new(ErrorCode::Unsupported, "test")),
        vec![],
    )
    .unwrap()
}

/// Plays the generic server for every session: accepts it, answers each
/// request with a reply of its id, and counts the sessions opened and
/// ended.
fn serve_all(mut l: Box<dyn Listener>) -> Served {
    let served = Served::default();
    let s = served.clone();
    tokio::spawn(async move {
        while let Ok(mut c) = l.accept().await {
            s.opened.fetch_add(1, Ordering::SeqCst);
            let ended = s.ended.clone();
            tokio::spawn(async move {
                while let Ok(Some(inc)) = c.reader.read_frame(&Limits::DEFAULT, None).await {
                    if inc.frame.kind == FrameKind::Request {
                        let _ = c.writer.write_frame(reply(inc.frame.id)).await;
                    }
                }
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    served
}

/// Whether the session's reader has ended (within `within`).
async fn ends(c: &mut Connection, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, c.reader.read_frame(&Limits::DEFAULT, None)).await,
        Ok(Ok(None))
    )
}

/// Reads the next frame (skipping nothing) and checks it is request `id`.
async fn read_request(c: &mut Connection, id: u64) {
    let f = read(c).await;
    assert_eq!((f.kind, f.id), (FrameKind::Request, id));
}

/// A context of its own for many peers: a context holds at most 1023
/// sockets, and closed ones are reaped a little later, so they would take
/// the other tests' room.
fn peers_context() -> zmq::Context {
    zmq::Context::new()
}

fn dealer_in(ctx: &zmq::Context, port: u16) -> zmq::Socket {
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(5000).unwrap();
    s.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_say_hello_and_leave_lock_no_one_out() {
    let (l, port) = listen(ZmqConfig::DEFAULT).await;
    let served = serve_all(l);
    let peers = ZmqConfig::DEFAULT.max_peers + 100;
    let ctx = peers_context();
    let start = Instant::now();
    let mut opened = 0;
    while opened < peers {
        let batch: Vec<zmq::Socket> = (opened..(opened + 100).min(peers))
            .map(|_| dealer_in(&ctx, port))
            .collect();
        for d in &batch {
            send(d, &hello());
        }
        opened += batch.len();
        if !wait_for(WAIT, || served.opened() >= opened).await {
            let refused = batch
                .iter()
                .find(|d| d.poll(zmq::POLLIN, 0).unwrap() > 0)
                .map(|d| recv_error(d).1.to_string());
            panic!(
                "{} of {opened} sessions opened; a peer was told: {refused:?}",
                served.opened()
            );
        }
        // The peers leave (their sockets close).
        drop(batch);
    }
    // Their sessions end as they leave, not after the idle timeout.
    assert!(
        wait_for(WAIT, || served.ended() >= peers).await,
        "{} of {peers} sessions ended",
        served.ended()
    );
    // A new peer is served at once.
    let d = dealer(port);
    send(&d, &hello());
    send(&d, &health(1));
    assert_eq!(recv(&d).id, 1);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
    eprintln!("{peers} peers said hello and left, a new one served, in {took:?}");
}

/// A peer written by hand: ZMTP 3.0 over a TCP socket, NULL mechanism, as
/// a DEALER (what any ZeroMQ library sends).
fn zmtp_peer(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[12..16].copy_from_slice(b"NULL");
    s.write_all(&greeting).unwrap();
    let mut ready = vec![5];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&6u32.to_be_bytes());
    ready.extend_from_slice(b"DEALER");
    s.write_all(&zmtp_header(0x04, ready.len() as u64)).unwrap();
    s.write_all(&ready).unwrap();
    s
}

/// The header of a ZMTP frame of `len` bytes (`flags`: 1 more, 4 command).
fn zmtp_header(flags: u8, len: u64) -> Vec<u8> {
    match u8::try_from(len) {
        Ok(n) => vec![flags, n],
        Err(_) => {
            let mut h = vec![flags | 0x02];
            h.extend_from_slice(&len.to_be_bytes());
            h
        }
    }
}

/// Sends `frame` as one ZeroMQ message on a hand-written peer.
fn zmtp_send(s: &mut TcpStream, f: &Frame) {
    let parts: Vec<Vec<u8>> = std::iter::once(wire::encode_head(f))
        .chain(f.tensors.iter().map(|t| t.to_vec()))
        .collect();
    let n = parts.len();
    for (i, p) in parts.iter().enumerate() {
        let more = if i + 1 < n { 1 } else { 0 };
        s.write_all(&zmtp_header(more, p.len() as u64)).unwrap();
        s.write_all(p).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_even_when_its_peer_left_before_the_hello_was_read() {
    let (l, port) = listen(ZmqConfig::DEFAULT).await;
    let served = serve_all(l);
    // The Hello and the end of the connection arrive together: the server
    // may learn that the peer left before it reads the Hello. (All open at
    // once, so that no descriptor is reused meanwhile.)
    let peers: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = zmtp_peer(port);
            zmtp_send(&mut s, &hello());
            s
        })
        .collect();
    drop(peers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wait_for(WAIT, || served.ended() == served.opened()).await,
        "{} sessions opened, {} ended",
        served.opened(),
        served.ended()
    );
    let d = dealer(port);
    send(&d, &hello());
    send(&d, &health(1));
    assert_eq!(recv(&d).id, 1);
}

#[tokio::test]
async fn a_full_table_makes_room_by_ending_an_idle_session() {
    let config = ZmqConfig {
        max_peers: 3,
        ..ZmqConfig::DEFAULT
    };
    let (mut l, port) = listen(config).await;
    let short = Duration::from_millis(300);
    // a: a request in flight; b: a request answered; c: only a Hello.
    let a = dealer(port);
    send(&a, &hello());
    let mut ca = accept(&mut l).await;
    read(&mut ca).await;
    send(&a, &health(1));
    read_request(&mut ca, 1).await;
    let b = dealer(port);
    send(&b, &hello());
    let mut cb = accept(&mut l).await;
    read(&mut cb).await;
    send(&b, &health(2));
    read_request(&mut cb, 2).await;
    cb.writer.write_frame(reply(2)).await.unwrap();
    assert_eq!(recv(&b).id, 2);
    let c = dealer(port);
    send(&c, &hello());
    let mut cc = accept(&mut l).await;
    read(&mut cc).await;

    // Full: a new peer takes the place of the session that never sent a
    // request, then of the newcomer that did not either.
    let d = dealer(port);
    send(&d, &hello());
    let mut cd = accept(&mut l).await;
    read(&mut cd).await;
    assert!(ends(&mut cc, WAIT).await, "c's session goes first");
    let e = dealer(port);
    send(&e, &hello());
    let mut ce = accept(&mut l).await;
    read(&mut ce).await;
    assert!(ends(&mut cd, WAIT).await, "then d's");
    assert!(!ends(&mut ca, short).await && !ends(&mut cb, short).await);

    // With only sessions that sent requests, the least recently active
    // idle one goes; one with a request in flight never does.
    send(&e, &health(3));
    read_request(&mut ce, 3).await;
    ce.writer.write_frame(reply(3)).await.unwrap();
    assert_eq!(recv(&e).id, 3);
    let f = dealer(port);
    send(&f, &hello());
    let mut cf = accept(&mut l).await;
    read(&mut cf).await;
    assert!(ends(&mut cb, WAIT).await, "b was idle longest");
    assert!(!ends(&mut ca, short).await, "a has a request in flight");
    // b's peer learns that it must say Hello again.
    send(&b, &health(4));
    let (id, err) = recv_error(&b);
    assert_eq!((id, err.code), (4, ErrorCode::Protocol));

    // Every session has a request in flight: a new peer is refused.
    send(&e, &health(5));
    read_request(&mut ce, 5).await;
    send(&f, &health(6));
    read_request(&mut cf, 6).await;
    let g = dealer(port);
    send(&g, &hello());
    let (id, err) = recv_error(&g);
    assert_eq!((id, err.code), (0, ErrorCode::Busy));
    // A reply ends a request: its session may go again.
    ca.writer.write_frame(reply(1)).await.unwrap();
    assert_eq!(recv(&a).id, 1);
    send(&g, &hello());
    let mut cg = accept(&mut l).await;
    read(&mut cg).await;
    assert!(ends(&mut ca, WAIT).await);
    drop(c);
    drop(d);
}

#[tokio::test]
async fn a_session_that_never_sent_a_request_ends_sooner_when_silent() {
    let config = ZmqConfig {
        idle_timeout: Duration::from_secs(30),
        unused_idle_timeout: Duration::from_millis(300),
        ..ZmqConfig::DEFAULT
    };
    let (mut l, port) = listen(config).await;
    let (a, b, c) = (dealer(port), dealer(port), dealer(port));
    send(&a, &hello());
    let mut ca = accept(&mut l).await;
    read(&mut ca).await;
    send(&b, &hello());
    let mut cb = accept(&mut l).await;
    read(&mut cb).await;
    send(&b, &health(1));
    read_request(&mut cb, 1).await;
    send(&c, &hello());
    let mut cc = accept(&mut l).await;
    read(&mut cc).await;
    // c's heartbeats keep its session; a's silence ends it.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        send_parts(&c, vec![vec![]]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ends(&mut ca, WAIT).await);
    send(&b, &health(2));
    read_request(&mut cb, 2).await;
    send(&c, &health(3));
    read_request(&mut cc, 3).await;
    drop(a);
}

/// Returns once the server has routed what `d` sent before: the answer
/// to a message that is not a frame comes after them.
fn routed(d: &zmq::Socket) {
    send_parts(d, vec![b"not a frame".to_vec()]);
    let (id, e) = recv_error(d);
    assert_eq!((id, e.code), (0, ErrorCode::Protocol));
}

/// This process's resident memory, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

async fn listen_with(config: ZmqConfig, limits: Limits) -> (Box<dyn Listener>, u16) {
    let options = TransportOptions {
        limits: Some(limits),
        ..TransportOptions::default()
    };
    let l = ZmqTransport::new(config)
        .bind(&Endpoint::new("zmq", "127.0.0.1", 0), &options)
        .await
        .unwrap();
    let port = l.local_endpoint().port;
    (l, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_declares_a_part_over_the_cap_is_cut_off_before_it_is_held() {
    let limits = Limits {
        max_header_len: 64 * 1024,
        max_tensors: 4,
        max_payload: 1 << 20,
        ..Limits::DEFAULT
    };
    let (l, port) = listen_with(ZmqConfig::DEFAULT, limits).await;
    let served = serve_all(l);
    let before = rss();
    // Before any Hello, one part of 1 GiB: its header is all libzmq needs
    // to refuse it. Then the bytes, up to 64 MiB (one 1 MiB buffer sent
    // again and again).
    let mut s = zmtp_peer(port);
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(&zmtp_header(0, 1 << 30)).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut sent = 0usize;
    let error = loop {
        match s.write_all(&chunk) {
            Ok(()) if sent >= 64 << 20 => break None,
            Ok(()) => sent += chunk.len(),
            Err(e) => break Some(e),
        }
    };
    let grown = rss().saturating_sub(before);
    eprintln!("cut off after {sent} bytes ({error:?}); RSS grew by {grown} bytes");
    let error = error.expect("the server took 64 MiB of a part over its limit");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error}"
    );
    // What was sent sat in socket buffers until the server closed.
    assert!(sent < 16 << 20, "{sent} bytes sent before the cut");
    assert!(grown < 32 << 20, "RSS grew by {grown} bytes");
    assert_eq!(served.opened(), 0);
    // The server goes on.
    let d = dealer(port);
    send(&d, &hello());
    send(&d, &health(1));
    assert_eq!(recv(&d).id, 1);
}

#[tokio::test]
async fn a_hello_over_the_handshake_limits_opens_no_session() {
    let (mut l, port) = listen(ZmqConfig::DEFAULT).await;
    let d = dealer(port);
    // A Hello with a tensor; a Hello with a 100 KiB header.
    let mut with_tensor = hello();
    with_tensor.tensors.push(Bytes::from(vec![0u8; 1000]));
    let big_header = Frame::new(
        FrameKind::Hello,
        0,
        Bytes::from(vec![0x90u8; 100 << 10]),
        vec![],
    );
    for f in [with_tensor, big_header] {
        send(&d, &f);
        let (id, e) = recv_error(&d);
        assert_eq!((id, e.code), (0, ErrorCode::PayloadTooLarge), "{e}");
        let r = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
        assert!(r.is_err(), "a session was opened");
    }
    send(&d, &hello());
    let mut c = accept(&mut l).await;
    assert_eq!(read(&mut c).await.kind, FrameKind::Hello);
}

#[tokio::test]
async fn the_queues_of_all_sessions_are_bounded_together() {
    let config = ZmqConfig {
        peer_queue_bytes: 10_000,
        queue_bytes: 2500,
        ..ZmqConfig::DEFAULT
    };
    let (mut l, port) = listen(config).await;
    let frame = |id| {
        Frame::new(
            FrameKind::Request,
            id,
            Bytes::new(),
            vec![Bytes::from(vec![id as u8; 1000])],
        )
    };
    let (a, b, c) = (dealer(port), dealer(port), dealer(port));
    let mut sessions = Vec::new();
    for d in [&a, &b, &c] {
        send(d, &hello());
        sessions.push(accept(&mut l).await);
    }
    let mut cc = sessions.pop().unwrap();
    let cb = sessions.pop().unwrap();
    let mut ca = sessions.pop().unwrap();
    // Unread: three Hellos and two frames of 1000 bytes fit, a third does
    // not, whoever sends it.
    send(&a, &frame(1));
    routed(&a);
    send(&b, &frame(2));
    routed(&b);
    send(&c, &frame(3));
    let (id, e) = recv_error(&c);
    assert_eq!((id, e.code), (3, ErrorCode::Busy), "{e}");
    // Read, a's frame makes room.
    assert_eq!(read(&mut ca).await.kind, FrameKind::Hello);
    assert_eq!(read(&mut ca).await.id, 1);
    send(&c, &frame(4));
    // A session the server closes gives back what it had waiting (b's
    // Hello and frame 2): one more frame fits, not two.
    drop(cb);
    send(&c, &frame(5));
    send(&c, &frame(6));
    let (id, e) = recv_error(&c);
    assert_eq!((id, e.code), (6, ErrorCode::Busy), "{e}");
    assert_eq!(read(&mut cc).await.kind, FrameKind::Hello);
    assert_eq!(read(&mut cc).await.id, 4);
    assert_eq!(read(&mut cc).await.id, 5);
    // With nothing waiting, a frame larger than the bound is still taken.
    let big = Frame::new(
        FrameKind::Request,
        7,
        Bytes::new(),
        vec![Bytes::from(vec![0u8; 5000])],
    );
    send(&a, &big);
    assert_eq!(read(&mut ca).await, big);
}
