//! TLS as users make it, end to end over both TLS transports (`quic://`
//! and `tcp+tls://`, real servers on loopback, the Rust client): the
//! certificate of the usual `openssl req -x509 ...` one-liner given as
//! `--ca` (a pin of exactly that certificate), by IP address and by DNS
//! name; another self-signed certificate refused; a CA-signed chain; the
//! generated certificate shared by both listeners; and plain `tcp://` and
//! `tcp+tls://` peers on each other's ports. What every transport does
//! (the contract, tokens, 64 MiB) is `conformance.rs`; QUIC's own streams
//! are `quic.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use mymps::client::{Call, Caller, Client, ClientOptions};
use mymps::server::ServerHandle;
use mymps::transport::TransportOptions;
use mymps::{ErrorCode, Tensor};

const SCHEMES: [&str; 2] = ["quic", "tcp+tls"];

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

async fn neg_works(c: &Client) {
    let x = Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap();
    let out = c.call(Call::new("neg").arg(x)).await.unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, 2.0]
    );
}

/// A certificate and key as the usual one-liner makes them (`openssl req
/// -x509 -newkey ec ... -subj /CN=localhost -addext subjectAltName=SAN`:
/// basicConstraints CA:TRUE, the subjectAltName given), in `dir`.
///
/// Where the `openssl` command is missing, rcgen makes a certificate of
/// the same shape (CA:TRUE and the subjectAltName: what the verifier
/// looks at), and the test says so.
fn one_liner(dir: &Path, stem: &str, san: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{stem}-cert.pem")),
        dir.join(format!("{stem}-key.pem")),
    );
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "30", "-subj", "/CN=localhost", "-addext"])
        .arg(format!("subjectAltName={san}"))
        .output();
    match status {
        Ok(out) if out.status.success() => {
            let text = Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in"])
                .arg(&cert)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&text.stdout);
            assert!(
                text.contains("CA:TRUE"),
                "the one-liner makes a CA:TRUE certificate, which is the point: {text}"
            );
        }
        Ok(out) => panic!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            eprintln!(
                "no openssl command ({e}): a certificate of the one-liner's shape from rcgen"
            );
            let (kind, value) = san.split_once(':').unwrap();
            let name = match kind {
                "IP" => rcgen::SanType::IpAddress(value.parse().unwrap()),
                _ => rcgen::SanType::DnsName(value.try_into().unwrap()),
            };
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = vec![name];
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "localhost");
            let k = rcgen::KeyPair::generate().unwrap();
            let c = p.self_signed(&k).unwrap();
            std::fs::write(&cert, c.pem()).unwrap();
            std::fs::write(&key, k.serialize_pem()).unwrap();
        }
    }
    (cert, key)
}

/// A server on `scheme://127.0.0.1:0` presenting `cert`/`key`.
async fn serving(scheme: &str, cert: &Path, key: &Path) -> (ServerHandle, String) {
    common::start_on(scheme, |c| {
        c.transport.tls_cert = Some(cert.to_path_buf());
        c.transport.tls_key = Some(key.to_path_buf());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openssl_one_liner_certificate_works_as_ca_by_ip_and_by_dns_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ip_cert, ip_key) = one_liner(d, "ip", "IP:127.0.0.1");
    let (dns_cert, dns_key) = one_liner(d, "dns", "DNS:localhost");
    for scheme in SCHEMES {
        // By IP address.
        let (server, addr) = serving(scheme, &ip_cert, &ip_key).await;
        let c = Client::connect_with(&addr, with_ca(&ip_cert))
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        neg_works(&c).await;
        // The name is checked: this certificate names 127.0.0.1 only.
        let by_name = addr.replace("127.0.0.1", "localhost");
        let e = Client::connect_with(&by_name, with_ca(&ip_cert))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Connection, "{scheme}: {e}");
        assert!(
            e.message.contains("not trusted by")
                && e.message.contains("'localhost'")
                && e.message.contains("valid only for 127.0.0.1"),
            "{scheme}: {e}"
        );
        neg_works(&c).await;
        server.shutdown().await;

        // By DNS name.
        let (server, addr) = serving(scheme, &dns_cert, &dns_key).await;
        let by_name = addr.replace("127.0.0.1", "localhost");
        let c = Client::connect_with(&by_name, with_ca(&dns_cert))
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        neg_works(&c).await;
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_self_signed_certificate_is_refused_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = one_liner(d, "server", "IP:127.0.0.1");
    let (other, _) = one_liner(d, "other", "IP:127.0.0.1");
    let (fp, other_fp) = (
        mymps::tls::fingerprint_of_pem_file(&cert).unwrap(),
        mymps::tls::fingerprint_of_pem_file(&other).unwrap(),
    );
    for scheme in SCHEMES {
        let (server, addr) = serving(scheme, &cert, &key).await;
        let e = Client::connect_with(&addr, with_ca(&other))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Connection, "{scheme}: {e}");
        for needle in [
            "is not trusted by",
            "other-cert.pem",
            "a pin",
            fp.as_str(),
            other_fp.as_str(),
        ] {
            assert!(e.message.contains(needle), "{scheme}: {needle}: {e}");
        }
        // The refused client did not hurt the server.
        let c = Client::connect_with(&addr, with_ca(&cert)).await.unwrap();
        neg_works(&c).await;
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_signed_chain_still_works_and_its_ca_vouches_for_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
    let (ca_pem, chain_pem, key_pem) = (d.join("ca.pem"), d.join("chain.pem"), d.join("leaf.key"));
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    std::fs::write(&chain_pem, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
    let (stranger, stranger_key) = one_liner(d, "stranger", "IP:127.0.0.1");
    for scheme in SCHEMES {
        let (server, addr) = serving(scheme, &chain_pem, &key_pem).await;
        let c = Client::connect_with(&addr, with_ca(&ca_pem))
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        neg_works(&c).await;
        let c = Client::connect_with(&addr.replace("127.0.0.1", "localhost"), with_ca(&ca_pem))
            .await
            .unwrap();
        neg_works(&c).await;
        server.shutdown().await;
        // A server whose certificate the CA did not sign.
        let (server, addr) = serving(scheme, &stranger, &stranger_key).await;
        let e = Client::connect_with(&addr, with_ca(&ca_pem))
            .await
            .unwrap_err();
        assert!(
            e.message.contains("not trusted by") && e.message.contains("ca.pem"),
            "{scheme}: {e}"
        );
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_generated_certificate_serves_both_tls_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("generated.pem");
    let (server, _) = common::start_on("tcp+tls", |c| {
        c.listen.push("quic://127.0.0.1:0".parse().unwrap());
        c.transport.tls_cert_out = Some(out.clone());
    })
    .await;
    let fp = mymps::tls::fingerprint_of_pem_file(&out).unwrap();
    let endpoints = server.endpoints();
    assert_eq!(
        endpoints
            .iter()
            .map(|e| e.scheme.as_str())
            .collect::<Vec<_>>(),
        ["tcp+tls", "quic"]
    );
    for ep in endpoints {
        let addr = ep.to_string();
        for options in [with_ca(&out), with_pin(&fp)] {
            let c = Client::connect_with(&addr, options)
                .await
                .unwrap_or_else(|e| panic!("{addr}: {e}"));
            neg_works(&c).await;
        }
        // Nothing to verify with: refused before any byte is sent.
        let e = Client::connect(&addr).await.unwrap_err();
        assert!(
            e.message
                .contains(&format!("a {}:// server must be verified", ep.scheme)),
            "{e}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_tls_clients_on_each_others_ports_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let (server, _) = common::start_on("tcp", |c| {
        c.listen.push("tcp+tls://127.0.0.1:0".parse().unwrap());
        c.transport.tls_cert_out = Some(cert.clone());
    })
    .await;
    let (plain, tls) = (
        server.endpoints()[0].to_string(),
        server.endpoints()[1].to_string(),
    );
    let tls_port = tls.rsplit_once(':').unwrap().1;
    let plain_port = plain.rsplit_once(':').unwrap().1;
    for _ in 0..2 {
        // A tcp:// client on the TLS port is told, in its own framing.
        let e = Client::connect(&format!("tcp://127.0.0.1:{tls_port}"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Connection, "{e}");
        assert!(
            e.message.contains("serves tcp+tls://") && e.message.contains("--ca"),
            "{e}"
        );
        // A tcp+tls:// client on the plain port.
        let e = Client::connect_with(&format!("tcp+tls://127.0.0.1:{plain_port}"), with_ca(&cert))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Connection, "{e}");
        assert!(
            e.message.contains("TLS handshake failed")
                && e.message.contains("listening there on tcp+tls://"),
            "{e}"
        );
        // Both listeners go on serving.
        neg_works(&Client::connect(&plain).await.unwrap()).await;
        neg_works(&Client::connect_with(&tls, with_ca(&cert)).await.unwrap()).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_finishes_its_handshake_holds_up_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let (server, addr) = common::start_on("tcp+tls", |c| {
        c.transport.tls_cert_out = Some(cert.clone());
    })
    .await;
    let host_port = addr.trim_start_matches("tcp+tls://").to_owned();
    // Peers that connect and say nothing, and one that sends half a
    // ClientHello: each waits in a handshake task of its own.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&host_port).await.unwrap());
    }
    let mut half = tokio::net::TcpStream::connect(&host_port).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let c = Client::connect_with(&addr, with_ca(&cert)).await.unwrap();
    neg_works(&c).await;
    assert!(
        started.elapsed() < mymps::tcp::TLS_HANDSHAKE_TIMEOUT,
        "a new client waited for the stalled handshakes: {:?}",
        started.elapsed()
    );
    drop(silent);
    server.shutdown().await;
}
