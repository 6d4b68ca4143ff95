//! End to end over ZeroMQ with peers written by hand (ZMTP 3 on a TCP
//! socket, what any ZeroMQ library sends): a real server (libtorch,
//! zmq:// on loopback), for what is the ZeroMQ transport's own — what a
//! peer can make the server hold before its Hello (under the default
//! limits), and messages refused by their parts' headers, answered with
//! their id and counted in the metrics while the connection goes on. What
//! a client sees over every transport is `conformance.rs`; libzmq peers,
//! REQ sockets, heartbeats and the budget taken part by part are the zmq
//! crate's tests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use mymps::client::{Call, Caller, Client};
use mymps::protocol::{self, Frame, FrameKind, Limits, PREFIX_LEN, Prefix, Request, Response};
use mymps::{ErrorCode, Tensor};

const WAIT: Duration = Duration::from_secs(10);

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

/// A hand-written DEALER peer.
struct Peer(TcpStream);

impl Peer {
    /// Connects, and sends its greeting and READY (not waiting for the
    /// server's: a peer may send them at once).
    fn connect(port: u16) -> Peer {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        let mut p = Peer(s);
        let mut greeting = [0u8; 64];
        greeting[0] = 0xff;
        greeting[9] = 0x7f;
        greeting[10] = 3;
        greeting[11] = 1;
        greeting[12..16].copy_from_slice(b"NULL");
        p.0.write_all(&greeting).unwrap();
        let mut ready = vec![5];
        ready.extend_from_slice(b"READY");
        ready.push(11);
        ready.extend_from_slice(b"Socket-Type");
        ready.extend_from_slice(&6u32.to_be_bytes());
        ready.extend_from_slice(b"DEALER");
        p.0.write_all(&zmtp_header(0x04, ready.len() as u64))
            .unwrap();
        p.0.write_all(&ready).unwrap();
        p
    }

    /// Reads the server's greeting and READY.
    fn handshake(&mut self) {
        let mut g = [0u8; 64];
        self.0.read_exact(&mut g).unwrap();
        assert_eq!((g[0], g[10], &g[12..16]), (0xff, 3, &b"NULL"[..]));
        let (flags, body) = self.frame().unwrap();
        assert_eq!(flags, 0x04);
        assert!(body.starts_with(b"\x05READY"));
    }

    fn frame(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.0.read_exact(&mut h)?;
        let len = if h[0] & 0x02 != 0 {
            let mut l = [0u8; 8];
            l[0] = h[1];
            self.0.read_exact(&mut l[1..])?;
            u64::from_be_bytes(l)
        } else {
            h[1] as u64
        };
        let mut body = vec![0u8; len as usize];
        self.0.read_exact(&mut body)?;
        Ok((h[0], body))
    }

    /// Sends one message of these parts.
    fn send_parts(&mut self, parts: &[Vec<u8>]) {
        for (i, p) in parts.iter().enumerate() {
            let more = u8::from(i + 1 < parts.len());
            self.0
                .write_all(&zmtp_header(more, p.len() as u64))
                .unwrap();
            self.0.write_all(p).unwrap();
        }
    }

    fn send(&mut self, f: &Frame) {
        self.send_parts(&parts_of(f));
    }

    /// The next frame the server sends (commands skipped).
    fn recv(&mut self) -> Frame {
        let mut parts = Vec::new();
        loop {
            let (flags, body) = self.frame().expect("a message from the server");
            if flags & 0x04 != 0 {
                continue;
            }
            parts.push(body);
            if flags & 0x01 == 0 {
                break;
            }
        }
        let head = &parts[0];
        let prefix = Prefix::decode(head[..PREFIX_LEN].try_into().unwrap()).unwrap();
        Frame {
            kind: prefix.kind,
            flags: prefix.flags,
            id: prefix.id,
            header: head[PREFIX_LEN..].to_vec().into(),
            tensors: parts[1..].iter().map(|p| p.clone().into()).collect(),
        }
    }

    /// The error the server answers request `id` with.
    fn expect_error(&mut self, id: u64) -> mymps::Error {
        let f = self.recv();
        assert_eq!(f.id, id);
        match protocol::decode_header::<Response>(&f).unwrap() {
            Response::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

fn parts_of(f: &Frame) -> Vec<Vec<u8>> {
    let mut head = Prefix {
        kind: f.kind,
        flags: f.flags,
        n_tensors: f.tensors.len() as u16,
        header_len: f.header.len() as u32,
        id: f.id,
    }
    .encode()
    .to_vec();
    head.extend_from_slice(&f.header);
    std::iter::once(head)
        .chain(f.tensors.iter().map(|t| t.to_vec()))
        .collect()
}

fn hello() -> Frame {
    protocol::encode(
        FrameKind::Hello,
        0,
        &protocol::hello("zmq-test/1", None),
        vec![],
    )
    .unwrap()
}

fn health(id: u64) -> Frame {
    protocol::encode(FrameKind::Request, id, &Request::Health, vec![]).unwrap()
}

/// This process's resident memory (the server runs in it), bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

async fn neg_works(addr: &str) {
    let c = Client::connect(addr).await.unwrap();
    let x = Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap();
    let out = c.call(Call::new("neg").arg(x)).await.unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, 2.0]
    );
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_its_hello_a_peer_is_cut_off_without_the_server_holding_what_it_sends() {
    let (server, addr) = common::start_on("zmq", |c| assert_eq!(c.limits, Limits::DEFAULT)).await;
    let port = server.endpoints()[0].port;
    // One part of 1 GiB (a Hello head whose header would be all of it);
    // a Hello head announcing 256 tensors, then parts of 1 MiB; a Hello
    // announcing none, then parts of 1 MiB. Each is refused from the bytes
    // that announce it (the handshake's limits: 64 KiB of header, no
    // tensor), answered and the connection closed; the peer sends 1 MiB
    // after 1 MiB, up to 64 MiB, until it is cut off.
    let gib_head = {
        let mut p = zmtp_header(0, 1 << 30);
        p.extend_from_slice(
            &Prefix {
                kind: FrameKind::Hello,
                flags: 0,
                n_tensors: 0,
                header_len: (1 << 30) - PREFIX_LEN as u32,
                id: 0,
            }
            .encode(),
        );
        p
    };
    let hello_then_parts = |n_tensors: u16| {
        let mut f = hello();
        f.tensors = vec![Default::default(); n_tensors as usize];
        let head = parts_of(&f).remove(0);
        let mut p = zmtp_header(1, head.len() as u64);
        p.extend_from_slice(&head);
        p.extend_from_slice(&zmtp_header(1, 1 << 20));
        p
    };
    let before = rss();
    for (what, start) in [
        ("a 1 GiB part", gib_head),
        ("256 tensors", hello_then_parts(256)),
        ("parts after a Hello of none", hello_then_parts(0)),
    ] {
        let (sent, error) = tokio::task::spawn_blocking(move || {
            let mut p = Peer::connect(port);
            p.0.write_all(&start).unwrap();
            let chunk = vec![7u8; 1 << 20];
            let mut sent = 0usize;
            while sent < 64 << 20 {
                match p.0.write_all(&chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(e) => return (sent, Some(e)),
                }
            }
            (sent, None)
        })
        .await
        .unwrap();
        let grown = rss().saturating_sub(before);
        eprintln!("{what}: cut off after {sent} bytes ({error:?}); RSS grew by {grown} bytes");
        let error = error.unwrap_or_else(|| panic!("{what}: the server took 64 MiB"));
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{what}: {error}"
        );
        // What was sent sat in socket buffers until the server closed.
        assert!(sent < 16 << 20, "{what}: {sent} bytes sent before the cut");
        assert!(grown < 32 << 20, "{what}: RSS grew by {grown} bytes");
    }
    // The server goes on serving other peers.
    neg_works(&addr).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_answered_with_their_id_counted_and_the_connection_goes_on() {
    let (server, addr) = common::start_on("zmq", |c| c.limits.max_payload = 1 << 20).await;
    let port = server.endpoints()[0].port;
    tokio::task::spawn_blocking(move || {
        let mut p = Peer::connect(port);
        p.handshake();
        p.send(&hello());
        assert_eq!(p.recv().kind, FrameKind::Welcome);
        // Layout errors, each in one part's header: a head too short for
        // the prefix, more parts than the prefix announces.
        p.send_parts(&[b"short".to_vec()]);
        let e = p.expect_error(0);
        assert_eq!(e.code, ErrorCode::Protocol, "{e}");
        let mut extra = parts_of(&health(7));
        extra.push(vec![1u8; 300]);
        p.send_parts(&extra);
        let e = p.expect_error(7);
        assert!(e.message.contains("extra parts"), "{e}");
        // One part over the payload limit (1 MiB): answered before its
        // bytes are read, then skipped.
        let mut big = parts_of(&health(8));
        big[0][2] = 1;
        big.push(vec![0u8; 2 << 20]);
        p.send_parts(&big);
        let e = p.expect_error(8);
        assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e}");
        assert!(e.message.contains("exceeds the limit"), "{e}");
        p.send(&health(9));
        let f = p.recv();
        assert_eq!(f.id, 9);
        assert!(matches!(
            protocol::decode_header::<Response>(&f).unwrap(),
            Response::Health(_)
        ));
        // One that declares more than the server skips (3 GiB): answered,
        // and the connection closed, with none of it sent.
        let mut head = parts_of(&health(10)).remove(0);
        head[2] = 1;
        p.0.write_all(&zmtp_header(1, head.len() as u64)).unwrap();
        p.0.write_all(&head).unwrap();
        p.0.write_all(&zmtp_header(0, 3 << 30)).unwrap();
        let e = p.expect_error(10);
        assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e}");
        assert!(e.message.contains("closing the connection"), "{e}");
        let end = p.0.read(&mut [0u8; 1]);
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    })
    .await
    .unwrap();
    // The server answered them; its metrics count them.
    let c = Client::connect(&addr).await.unwrap();
    let m = c.metrics().await.unwrap();
    assert!(m.frames_refused >= 4, "{m:?}");
    c.close();
    neg_works(&addr).await;
    server.shutdown().await;
}
