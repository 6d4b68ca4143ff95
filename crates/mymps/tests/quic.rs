//! End to end over QUIC: a real server (libtorch, quic:// on loopback) and
//! the Rust client, for what is QUIC's own: TLS verification (CA file,
//! pinned fingerprint, none), large and small requests interleaved on one
//! connection's streams, bad input on raw QUIC streams, and a streamed
//! reply left unread by a raw client. What a client
//! sees over every transport (the contract, tokens, requests in flight,
//! ...) is `conformance.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mymps::client::{Call, Caller, Client, ClientOptions};
use mymps::protocol::{self, ExecRequest, Frame, FrameKind, Request, Response, TensorMeta};
use mymps::server::{ServerConfig, ServerHandle};
use mymps::transport::TransportOptions;
use mymps::{ErrorCode, Tensor};

/// A quic:// server writing its generated certificate into `dir`.
async fn start_quic(
    dir: &Path,
    tweak: impl FnOnce(&mut ServerConfig),
) -> (ServerHandle, String, PathBuf) {
    let cert = dir.join("server-cert.pem");
    let (server, addr) = common::start_on("quic", |c| {
        c.transport.tls_cert_out = Some(cert.clone());
        tweak(c);
    })
    .await;
    (server, addr, cert)
}

fn with_ca(ca: &Path) -> ClientOptions {
    ClientOptions {
        transport: TransportOptions {
            tls_ca: Some(ca.to_path_buf()),
            ..TransportOptions::default()
        },
        ..ClientOptions::default()
    }
}

fn with_pin(fp: &str) -> ClientOptions {
    ClientOptions {
        transport: TransportOptions {
            tls_fingerprint: Some(fp.to_owned()),
            ..TransportOptions::default()
        },
        ..ClientOptions::default()
    }
}

fn f32s(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

async fn neg_works(c: &Client) {
    let out = c
        .call(Call::new("neg").arg(f32s(vec![1.0, -2.0], &[2])))
        .await
        .unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, 2.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_certificate_verifies_the_server_by_address_and_by_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, cert) = start_quic(dir.path(), |_| {}).await;
    assert!(addr.starts_with("quic://127.0.0.1:"), "{addr}");
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(
        pem.starts_with("# mymps self-signed QUIC certificate"),
        "{pem}"
    );
    let c = Client::connect_with(&addr, with_ca(&cert)).await.unwrap();
    neg_works(&c).await;
    c.close();
    // The generated certificate names localhost too.
    let local = addr.replace("127.0.0.1", "localhost");
    let c = Client::connect_with(&local, with_ca(&cert)).await.unwrap();
    neg_works(&c).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_fingerprints_right_and_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, cert) = start_quic(dir.path(), |_| {}).await;
    let fp = mymps::quic::fingerprint_of_pem_file(&cert).unwrap();
    let c = Client::connect_with(&addr, with_pin(&fp)).await.unwrap();
    neg_works(&c).await;
    // The usual colon-separated upper-case spelling pins the same.
    let colons: Vec<String> = fp
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8(p.to_vec()).unwrap().to_uppercase())
        .collect();
    let c2 = Client::connect_with(&addr, with_pin(&colons.join(":")))
        .await
        .unwrap();
    neg_works(&c2).await;

    let mut wrong = fp.clone().into_bytes();
    wrong[10] = if wrong[10] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let e = Client::connect_with(&addr, with_pin(&wrong))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Connection, "{e}");
    assert!(
        e.message.contains("does not match the pinned fingerprint")
            && e.message.contains(&fp)
            && e.message.contains(&wrong),
        "{e}"
    );
    let e = Client::connect_with(&addr, with_pin("12:34"))
        .await
        .unwrap_err();
    assert!(e.message.contains("bad certificate fingerprint"), "{e}");
    // The first connection is unaffected by refused ones.
    neg_works(&c).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_verification_material_is_a_clear_error_not_a_silent_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, _) = start_quic(dir.path(), |_| {}).await;
    let e = Client::connect(&addr).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Connection, "{e}");
    for needle in ["must be verified", "--ca", "--fingerprint", "tls_ca"] {
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
    server.shutdown().await;
}

/// A self-signed certificate and key for `names`, written as PEM files.
fn own_cert(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (
        dir.join(format!("{stem}-cert.pem")),
        dir.join(format!("{stem}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_certificates_a_ca_chain_and_a_wrong_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA and a server certificate it signed (--tls-cert/--tls-key).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (ca_pem, leaf_pem, leaf_key_pem) =
        (d.join("ca.pem"), d.join("leaf.pem"), d.join("leaf.key"));
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    std::fs::write(&leaf_pem, leaf.pem()).unwrap();
    std::fs::write(&leaf_key_pem, leaf_key.serialize_pem()).unwrap();
    let out = d.join("not-written.pem");
    let (server, addr) = common::start_on("quic", |c| {
        c.transport.tls_cert = Some(leaf_pem.clone());
        c.transport.tls_key = Some(leaf_key_pem.clone());
        c.transport.tls_cert_out = Some(out.clone());
    })
    .await;
    assert!(
        !out.exists(),
        "no certificate is generated when one is given"
    );
    let c = Client::connect_with(&addr, with_ca(&ca_pem)).await.unwrap();
    neg_works(&c).await;
    // Pinning the leaf works too (a CA-issued leaf is not its own CA).
    let fp = mymps::quic::fingerprint_of_pem_file(&leaf_pem).unwrap();
    let c = Client::connect_with(&addr, with_pin(&fp)).await.unwrap();
    neg_works(&c).await;
    // Both: the CA must vouch and the pin must match.
    let both = ClientOptions {
        transport: TransportOptions {
            tls_fingerprint: Some(fp.clone()),
            ..with_ca(&ca_pem).transport
        },
        ..ClientOptions::default()
    };
    let c = Client::connect_with(&addr, both).await.unwrap();
    neg_works(&c).await;

    // Another certificate (for the same names) is not this server's.
    let (other, _) = own_cert(d, "other", &["localhost", "127.0.0.1"]);
    let e = Client::connect_with(&addr, with_ca(&other))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Connection, "{e}");
    assert!(
        e.message.contains("is not trusted by") && e.message.contains("other-cert.pem"),
        "{e}"
    );
    // Trusted, but not for the name the client connects with.
    let (named, named_key) = own_cert(d, "named", &["gpu-7.example"]);
    let (server2, addr2) = common::start_on("quic", |c| {
        c.transport.tls_cert = Some(named.clone());
        c.transport.tls_key = Some(named_key.clone());
    })
    .await;
    let e = Client::connect_with(&addr2, with_ca(&named))
        .await
        .unwrap_err();
    assert!(
        e.message.contains("not trusted by") && e.message.contains("127.0.0.1"),
        "{e}"
    );
    server2.shutdown().await;

    // A certificate without its key is refused at bind.
    let e = match mymps::server::Server::bind(
        ServerConfig {
            listen: vec!["quic://127.0.0.1:0".parse().unwrap()],
            transport: TransportOptions {
                tls_cert: Some(leaf_pem.clone()),
                ..TransportOptions::default()
            },
            ..ServerConfig::default()
        },
        Arc::new(mymps::backend_tch::TchBackend::new("cpu").unwrap()),
    )
    .await
    {
        Err(e) => e,
        Ok(_) => panic!("bound without a key"),
    };
    assert!(e.message.contains("--tls-key"), "{e}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_requests_interleave_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, cert) = start_quic(dir.path(), |_| {}).await;
    let c = Client::connect_with(&addr, with_ca(&cert)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    // Two 64 MiB requests and 200 small ones, all in flight together.
    for big in 0..2u32 {
        let c = c.clone();
        tasks.spawn(async move {
            let n = 16 << 20;
            let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 + big as f32).collect();
            let out = c.call(Call::new("neg").arg(f32s(x, &[n]))).await.unwrap();
            let y = out.output().unwrap().to_vec::<f32>().unwrap();
            assert_eq!(y.len(), n);
            for i in (0..n).step_by(4099) {
                assert_eq!(y[i], -((i % 1000) as f32 + big as f32), "big {big} at {i}");
            }
            true
        });
    }
    for i in 0..200i64 {
        let c = c.clone();
        tasks.spawn(async move {
            let out = c
                .call(
                    Call::new("mul")
                        .arg(f32s(vec![i as f32; 3], &[3]))
                        .kwarg("other", 3),
                )
                .await
                .unwrap();
            assert_eq!(
                out.output().unwrap().to_vec::<f32>().unwrap(),
                vec![3.0 * i as f32; 3],
                "small {i}"
            );
            false
        });
    }
    let (mut bigs, mut smalls) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        if r.unwrap() { bigs += 1 } else { smalls += 1 }
    }
    assert_eq!((bigs, smalls), (2, 200));
    server.shutdown().await;
}

// --- raw QUIC streams -------------------------------------------------------

/// A QUIC connection made by hand (quinn), trusting `cert`.
async fn raw_connect(addr: &str, cert: &Path) -> (quinn::Endpoint, quinn::Connection) {
    raw_connect_with(addr, cert, quinn::TransportConfig::default()).await
}

/// [`raw_connect`] with these QUIC transport settings.
async fn raw_connect_with(
    addr: &str,
    cert: &Path,
    transport: quinn::TransportConfig,
) -> (quinn::Endpoint, quinn::Connection) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"mymps/1".to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    config.transport_config(Arc::new(transport));
    let sock: std::net::SocketAddr = addr.trim_start_matches("quic://").parse().unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(config, sock, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

/// Sends `bytes` on a new stream and reads the one frame that comes back.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Frame {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    let mut r = mymps::stream::StreamReader::new(recv);
    let limits = mymps::protocol::Limits {
        max_payload: u64::MAX,
        ..Default::default()
    };
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        mymps::transport::FrameReader::read_frame(&mut r, &limits, None),
    )
    .await
    .expect("an answer within 20 s");
    got.unwrap().expect("a frame").frame
}

fn error_of(f: &Frame) -> mymps::Error {
    match protocol::decode_header::<Response>(f).unwrap() {
        Response::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn neg_frame(id: u64, n: usize) -> Frame {
    let req = Request::Exec(ExecRequest {
        op: "neg".into(),
        inputs: vec![TensorMeta {
            name: "0".into(),
            dtype: "float32".into(),
            shape: vec![n as u64],
            strides: None,
        }],
        kwargs: Default::default(),
        ..Default::default()
    });
    let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    protocol::encode(FrameKind::Request, id, &req, vec![Bytes::from(data)]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_a_stream_is_answered_there_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, cert) = start_quic(dir.path(), |c| c.limits.max_payload = 1 << 20).await;
    let (_ep, conn) = raw_connect(&addr, &cert).await;
    let hello = protocol::encode(
        FrameKind::Hello,
        0,
        &protocol::hello("raw-quic/1", None),
        vec![],
    )
    .unwrap();
    let welcome = exchange(&conn, &hello.to_vec()).await;
    assert_eq!(welcome.kind, FrameKind::Welcome);

    // A stream of garbage: an error on that stream.
    let f = exchange(&conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(error_of(&f).code, ErrorCode::Protocol, "{:?}", error_of(&f));
    // A frame over the server's payload cap: refused with its id.
    let f = exchange(&conn, &neg_frame(7, 300_000).to_vec()).await;
    assert_eq!(f.id, 7);
    assert_eq!(error_of(&f).code, ErrorCode::PayloadTooLarge);
    // A frame cut short (the stream ends inside it).
    let whole = neg_frame(8, 1000).to_vec();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&whole[..whole.len() / 2]).await.unwrap();
    send.finish().unwrap();
    // The connection still serves, on other streams.
    for id in [9u64, 10, 11] {
        let f = exchange(&conn, &neg_frame(id, 1000).to_vec()).await;
        assert_eq!(f.id, id);
        match protocol::decode_header::<Response>(&f).unwrap() {
            Response::Exec(_) => {
                let y: Vec<f32> = f.tensors[0]
                    .chunks(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                assert_eq!(y[999], -999.0);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(conn.close_reason().is_none(), "the connection is open");
    conn.close(0u32.into(), b"bye");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, cert) = start_quic(dir.path(), |c| {
        c.handshake_timeout = Duration::from_millis(300)
    })
    .await;
    let (_ep, conn) = raw_connect(&addr, &cert).await;
    let reason = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("closed by the server");
    let text = reason.to_string();
    assert!(
        text.contains("no Hello within the handshake timeout"),
        "{text}"
    );
    server.shutdown().await;
}

/// A client that leaves a streamed reply unread (its stream's receive
/// window full) does not hold the server's writer for ever: once a frame
/// has waited an idle connection's life (30 s) for room, the server closes
/// the connection with the reason, as a stalled write closes a `tcp://`
/// one, and the generation stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_left_unread_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("server-cert.pem");
    let (server, addr) = common::generate::start_on_with_models("quic", |c| {
        c.transport.tls_cert_out = Some(cert.clone());
    })
    .await;
    let (models, _) = common::generate::models();
    let c = Client::connect_with(&addr, with_ca(&cert)).await.unwrap();
    c.load_model(mymps::model::LoadRequest {
        name: "long".into(),
        model_type: "huggingface".into(),
        model_path: Some(models.join("long").display().to_string()),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(256));
    let (_ep, conn) = raw_connect_with(&addr, &cert, transport).await;
    let hello = protocol::encode(
        FrameKind::Hello,
        0,
        &protocol::hello("raw-quic/1", None),
        vec![],
    )
    .unwrap();
    assert_eq!(
        exchange(&conn, &hello.to_vec()).await.kind,
        FrameKind::Welcome
    );
    let generate = Request::Generate(mymps::protocol::GenerateCall {
        name: "long".into(),
        request: mymps::model::GenerateRequest {
            prompts: vec![mymps::model::Prompt::Ids(vec![1, 2, 3])],
            max_new_tokens: Some(4000),
            ignore_eos: true,
            ..Default::default()
        },
        stream: true,
    });
    let frame = protocol::encode(FrameKind::Request, 1, &generate, vec![]).unwrap();
    let (mut send, _unread) = conn.open_bi().await.unwrap();
    send.write_all(&frame.to_vec()).await.unwrap();
    send.finish().unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(90), conn.closed())
        .await
        .expect("closed by the server");
    let text = reason.to_string();
    assert!(text.contains("went unread"), "{text}");
    // The server goes on (the generation stopped: the metrics' generate
    // is answered, its few steps' summary into the void).
    neg_works(&c).await;
    let mut answered = false;
    for _ in 0..400 {
        if c.metrics().await.unwrap().kind("generate").unwrap().count == 1 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the generation stopped");
    server.shutdown().await;
}
