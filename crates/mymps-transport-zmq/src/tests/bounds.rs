//! Issue 22 and issue 15: no peer, and no set of peers, can lock others out
//! of the server or make the transport hold memory without bound. Real
//! sockets on loopback; the server is played through the `Listener` as it
//! serves a connection (the Hello read with the handshake limits, a
//! refused one answered by closing). What a peer can make the real server
//! hold before its Hello, under the default limits, is
//! `crates/mymps/tests/zmq.rs`.

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

/// Counts of the connections that [`serve_all`] saw.
#[derive(Clone, Default)]
struct Served {
    opened: Arc<AtomicUsize>,
    hellos: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

impl Served {
    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }
    fn hellos(&self) -> usize {
        self.hellos.load(Ordering::SeqCst)
    }
    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

/// Plays the generic server for every connection: reads a Hello with the
/// handshake limits (anything else ends the connection), then answers
/// each request with a reply of its id; counts the connections opened,
/// those that said Hello and those ended.
fn serve_all(mut l: Box<dyn Listener>) -> Served {
    let served = Served::default();
    let s = served.clone();
    tokio::spawn(async move {
        while let Ok(mut c) = l.accept().await {
            s.opened.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let hello = c.reader.read_frame(&Limits::HANDSHAKE, None).await;
                if matches!(&hello, Ok(Some(inc)) if inc.frame.kind == FrameKind::Hello) {
                    s.hellos.fetch_add(1, Ordering::SeqCst);
                    while let Ok(Some(inc)) = c.reader.read_frame(&Limits::DEFAULT, None).await {
                        if inc.frame.kind == FrameKind::Request {
                            let _ = c.writer.write_frame(reply(inc.frame.id)).await;
                        }
                    }
                }
                s.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    served
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

/// A new peer says Hello and gets an answer to a request.
fn still_served(port: u16) {
    let d = dealer(port);
    send(&d, &hello());
    send(&d, &health(1));
    assert_eq!(recv(&d).id, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_say_hello_and_leave_lock_no_one_out() {
    let (l, port) = listen().await;
    let served = serve_all(l);
    let peers = 1124;
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
        assert!(
            wait_for(WAIT, || served.hellos() >= opened).await,
            "{} of {opened} connections said hello",
            served.hellos()
        );
        // The peers leave (their sockets close).
        drop(batch);
    }
    // Their connections end as they leave.
    assert!(
        wait_for(WAIT, || served.ended() >= peers).await,
        "{} of {peers} connections ended",
        served.ended()
    );
    still_served(port);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
    eprintln!("{peers} peers said hello and left, a new one served, in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_even_when_its_peer_left_right_after_its_hello() {
    let (l, port) = listen().await;
    let served = serve_all(l);
    // The Hello and the end of the connection arrive together.
    let peers: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = zmtp_peer(port);
            zmtp_send(&mut s, &hello());
            s
        })
        .collect();
    drop(peers);
    assert!(
        wait_for(WAIT, || served.opened() == 300 && served.ended() == 300).await,
        "{} connections opened, {} ended",
        served.opened(),
        served.ended()
    );
    still_served(port);
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

#[tokio::test]
async fn a_hello_over_the_handshake_limits_is_refused() {
    let (mut l, port) = listen().await;
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
        let d = dealer(port);
        send(&d, &f);
        let mut c = accept(&mut l).await;
        let r = read_with(&mut c, &Limits::HANDSHAKE, None).await;
        // Answered (then skipped, or closed: 100 KiB is more than a refused
        // frame may declare before a Hello); the server closes either way.
        assert!(
            matches!(
                r,
                Err(ReadError::Frame(
                    FrameError::TooLarge { .. } | FrameError::Unskippable { .. }
                ))
            ),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_frames_wait_in_the_peer_s_socket_not_in_the_server() {
    let _alone = HEAVY.lock().await;
    let (mut l, port) = listen().await;
    let mut s = zmtp_peer(port);
    zmtp_send(&mut s, &hello());
    let mut c = open(&mut l).await;
    // Nobody reads: the peer's writes stop once the sockets' buffers are
    // full (TCP flow control), with the transport holding one buffer.
    let before = rss();
    let writer = std::thread::spawn(move || {
        s.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut written = 0usize;
        for id in 1..=256u64 {
            let f = tensor_frame(id, vec![vec![id as u8; 1 << 20]]);
            let mut bytes = Vec::new();
            for (i, p) in parts_of(&f).iter().enumerate() {
                bytes.extend_from_slice(&zmtp_header(u8::from(i == 0), p.len() as u64));
                bytes.extend_from_slice(p);
            }
            match s.write_all(&bytes) {
                Ok(()) => written += 1,
                Err(_) => return (written, s, id),
            }
        }
        (written, s, 257)
    });
    let (written, s, stopped_at) = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let grown = rss().saturating_sub(before);
    eprintln!("{written} frames of 1 MiB written before the peer had to wait; RSS grew by {grown}");
    assert!(written < 64, "{written} frames went out unread");
    assert!(grown < 32 << 20, "RSS grew by {grown} bytes");
    // Read, they arrive in order; the one cut short ends the connection.
    for id in 1..=written as u64 {
        let f = read(&mut c).await;
        assert_eq!((f.id, f.tensors[0].len()), (id, 1 << 20));
        assert!(f.tensors[0].iter().all(|&b| b == id as u8));
    }
    assert!(stopped_at <= 256);
    s.shutdown(std::net::Shutdown::Both).unwrap();
}
