//! The client's side: how it verifies the server, and its rustls config.
//!
//! A `--ca` file is read certificate by certificate, and each is taken as
//! one of two things:
//!
//! - a **CA**: marked `CA:TRUE` (basicConstraints) and naming no host. The
//!   server's chain must lead to one of them, as webpki checks it (the
//!   name, the validity, the signatures along the chain).
//! - a **server certificate**: any other, i.e. one that names hosts
//!   (subjectAltName DNS or IP entries) or is not marked a CA, self-signed
//!   or not. The server must present exactly that certificate — a pin, so
//!   a certificate signed by its key is refused — and it must be valid now
//!   and for the name the client connects with (rustls's
//!   [`verify_server_name`]). This is what the usual
//!   `openssl req -x509 ... -addext subjectAltName=...` one-liner makes
//!   (`CA:TRUE`, which webpki refuses to see presented by a server:
//!   `CaUsedAsEndEntity`), and what `mymps serve` generates.
//!
//! In every case the server proves that it holds the key of the
//! certificate it presented: its handshake signature is checked with
//! rustls's own helpers ([`rustls::crypto::verify_tls13_signature`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, OtherError, RootCertStore, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use crate::{ALPN, fingerprint, hex, invalid, parse_fingerprint, provider, read_certs};

/// What a client that was given nothing to verify a `scheme://` server
/// with is told.
pub fn no_verification(scheme: &str) -> String {
    format!(
        "a {scheme}:// server must be verified and no way to verify it was given: pass the server's certificate (or its CA) with --ca FILE, or pin it with --fingerprint SHA256 (`mymps serve` prints both at start: 'mymps: {scheme} certificate <file> sha256 <hex>'); in Rust set TransportOptions::tls_ca or tls_fingerprint, in Python tls_ca= or tls_fingerprint="
    )
}

/// A `--ca` file, split into server certificates (pins) and CAs.
#[derive(Debug)]
struct CaFile {
    path: PathBuf,
    /// The server must present one of these exactly.
    servers: Vec<CertificateDer<'static>>,
    /// The CAs, through webpki; `None` when the file holds none.
    cas: Option<Arc<WebPkiServerVerifier>>,
}

/// What a certificate of a `--ca` file is taken as.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    Ca,
    Server,
}

/// A certificate's role (see the module docs); `None` when it cannot be
/// parsed here (then webpki decides, as a CA).
fn role(der: &[u8]) -> Option<Role> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let tbs = &cert.tbs_certificate;
    let is_ca = tbs.basic_constraints().ok()?.is_some_and(|bc| bc.value.ca);
    let names_hosts = tbs.subject_alternative_name().ok()?.is_some_and(|san| {
        san.value
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName(_) | GeneralName::IPAddress(_)))
    });
    Some(if is_ca && !names_hosts {
        Role::Ca
    } else {
        Role::Server
    })
}

impl CaFile {
    fn load(path: &Path, provider: &Arc<CryptoProvider>) -> io::Result<CaFile> {
        let mut servers = Vec::new();
        let mut roots = RootCertStore::empty();
        for c in read_certs(path)? {
            match role(&c) {
                Some(Role::Server) => servers.push(c),
                Some(Role::Ca) | None => roots.add(c).map_err(|e| {
                    invalid(format!(
                        "{} is not usable as a trusted certificate: {e}",
                        path.display()
                    ))
                })?,
            }
        }
        let cas = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?,
            )
        };
        Ok(CaFile {
            path: path.to_path_buf(),
            servers,
            cas,
        })
    }

    /// Checks a server certificate of the file that the server presented:
    /// valid now, and for `name`.
    fn check_server_cert(
        &self,
        cert: &CertificateDer<'_>,
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), (String, rustls::Error)> {
        let file = self.path.display();
        let bad = |what: String| {
            let e = rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
            (
                format!("the server's certificate (the one in {file}) cannot be read: {what}"),
                e,
            )
        };
        let (_, x509) =
            x509_parser::parse_x509_certificate(cert).map_err(|e| bad(e.to_string()))?;
        let validity = x509.validity();
        let t = ASN1Time::from_timestamp(now.as_secs().min(i64::MAX as u64) as i64)
            .map_err(|e| bad(e.to_string()))?;
        if t < validity.not_before {
            return Err((
                format!(
                    "the server's certificate (the one in {file}) is not valid before {} (is this machine's clock right?)",
                    validity.not_before
                ),
                rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
            ));
        }
        if t > validity.not_after {
            return Err((
                format!(
                    "the server's certificate (the one in {file}) expired on {}: make a new one and give it to the server and its clients",
                    validity.not_after
                ),
                rustls::Error::InvalidCertificate(CertificateError::Expired),
            ));
        }
        let parsed = ParsedCertificate::try_from(cert).map_err(|e| bad(e.to_string()))?;
        verify_server_name(&parsed, name).map_err(|e| {
            (
                format!(
                    "the server's certificate is not trusted by {file} for the name '{}': it is the certificate in that file, but valid only for {} ({e}); connect with one of those names, or make the certificate with -addext subjectAltName=DNS:NAME,IP:ADDRESS",
                    name.to_str(),
                    host_names(&x509)
                ),
                e,
            )
        })
    }
}

/// The host names and addresses a certificate names, for messages.
fn host_names(cert: &X509Certificate<'_>) -> String {
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.tbs_certificate.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4")).to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16")).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        "no host (it has no subjectAltName; TLS clients do not read the CN)".to_owned()
    } else {
        names.join(", ")
    }
}

/// Verifies the server with a `--ca` file, a pinned fingerprint, or both
/// (then both must pass), and remembers why it refused a certificate so
/// that the connect error can say so plainly (see the module docs).
#[derive(Debug)]
pub struct Verifier {
    ca: Option<CaFile>,
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    refusal: Mutex<Option<String>>,
}

impl Verifier {
    /// A verifier for a `scheme://` server (the scheme is for messages):
    /// `ca`, a PEM file of CA and/or server certificates, and/or `pin`, a
    /// SHA-256 fingerprint. With neither, a `PermissionDenied` error that
    /// says what to pass.
    pub fn new(scheme: &str, ca: Option<&Path>, pin: Option<&str>) -> io::Result<Verifier> {
        let provider = provider();
        let pin = pin.map(parse_fingerprint).transpose()?;
        let ca = ca.map(|p| CaFile::load(p, &provider)).transpose()?;
        if ca.is_none() && pin.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                no_verification(scheme),
            ));
        }
        Ok(Verifier {
            ca,
            pin,
            provider,
            refusal: Mutex::new(None),
        })
    }

    /// Why the last certificate was refused, if one was (and forgets it).
    pub fn take_refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn refuse(&self, why: String, error: rustls::Error) -> rustls::Error {
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        error
    }
}

/// A refusal of our own, as rustls reports it (a `certificate_unknown`
/// alert to the server).
fn other(why: &str) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        io::Error::other(why.to_owned()),
    ))))
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if let Some(pin) = &self.pin {
            let want = hex(pin);
            if got != want {
                let why = format!(
                    "the server's certificate does not match the pinned fingerprint: it presented sha256 {got}, expected {want} (a different server, a regenerated certificate, or someone in between)"
                );
                return Err(self.refuse(why.clone(), other(&why)));
            }
        }
        let Some(ca) = &self.ca else {
            return Ok(ServerCertVerified::assertion());
        };
        if ca.servers.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            ca.check_server_cert(end_entity, server_name, now)
                .map_err(|(why, e)| self.refuse(why, e))?;
            return Ok(ServerCertVerified::assertion());
        }
        let pinned: Vec<String> = ca.servers.iter().map(|c| fingerprint(c)).collect();
        let file = ca.path.display();
        match &ca.cas {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| {
                    let also = if pinned.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; nor is it the server certificate that file holds (sha256 {}), it is sha256 {got}",
                            pinned.join(", ")
                        )
                    };
                    let why = format!(
                        "the server's certificate is not trusted by {file} ({e}){also}; is it the certificate this server printed at start, and valid for the name '{}'?",
                        server_name.to_str()
                    );
                    self.refuse(why, e)
                })?,
            None => {
                let why = format!(
                    "the server's certificate is not trusted by {file}: that file holds the server certificate sha256 {} (a pin: the server must present exactly it), and the server presented sha256 {got} (a different server, a regenerated certificate, or someone in between)",
                    pinned.join(", sha256 ")
                );
                return Err(self.refuse(why.clone(), other(&why)));
            }
        };
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls client config using `verifier`: TLS 1.3, [`ALPN`].
pub fn client_config(verifier: Arc<Verifier>) -> io::Result<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| io::Error::other(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(ca: bool, names: &[&str]) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn ca_and_server_certificates_are_told_apart() {
        // A CA names no host.
        assert_eq!(role(&self_signed(true, &[])), Some(Role::Ca));
        // What `openssl req -x509 ... -addext subjectAltName=IP:...` makes:
        // CA:TRUE, but it names a host, so it is a server's.
        assert_eq!(role(&self_signed(true, &["127.0.0.1"])), Some(Role::Server));
        assert_eq!(role(&self_signed(true, &["localhost"])), Some(Role::Server));
        // Not a CA: a server's, whatever it names.
        assert_eq!(
            role(&self_signed(false, &["localhost"])),
            Some(Role::Server)
        );
        assert_eq!(role(&self_signed(false, &[])), Some(Role::Server));
        // Not a certificate: webpki decides (and refuses it).
        assert_eq!(role(b"not der"), None);
    }

    #[test]
    fn nothing_to_verify_with_says_what_to_pass() {
        let e = Verifier::new("tcp+tls", None, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let m = e.to_string();
        for needle in ["tcp+tls://", "--ca", "--fingerprint", "tls_ca"] {
            assert!(m.contains(needle), "{needle}: {m}");
        }
    }

    // --- whole handshakes, in memory -----------------------------------

    /// A certificate (PEM file and rcgen key) made by `make`.
    struct Made {
        der: CertificateDer<'static>,
        key: rcgen::KeyPair,
    }

    fn make(
        ca: bool,
        names: &[&str],
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (Made, rcgen::CertificateParams) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        tweak(&mut p);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().clone();
        (Made { der, key }, p)
    }

    fn pem_file(dir: &Path, name: &str, certs: &[&CertificateDer<'_>]) -> PathBuf {
        let mut text = String::new();
        for c in certs {
            text.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())));
        }
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A TLS handshake between a server presenting `chain` (key `key`) and
    /// a client verifying `name` with `ca`; the client's refusal if any.
    fn handshake(
        chain: Vec<CertificateDer<'static>>,
        key: &rcgen::KeyPair,
        ca: &Path,
        name: &str,
    ) -> Result<(), String> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let server_cfg = crate::server_config(crate::ServerIdentity {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
        .unwrap();
        handshake_with(server_cfg, ca, name)
    }

    fn handshake_with(
        server_cfg: rustls::ServerConfig,
        ca: &Path,
        name: &str,
    ) -> Result<(), String> {
        let verifier = Arc::new(Verifier::new("test", Some(ca), None).unwrap());
        let client_cfg = client_config(verifier.clone()).unwrap();
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_cfg),
            ServerName::try_from(name.to_owned()).unwrap(),
        )
        .unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = server.process_new_packets() {
                return Err(format!("server: {e}"));
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = client.process_new_packets() {
                return Err(verifier.take_refusal().unwrap_or_else(|| e.to_string()));
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }

    #[test]
    fn a_self_signed_ca_true_server_certificate_is_a_pin_of_itself() {
        let dir = tempfile::tempdir().unwrap();
        // As the openssl one-liner makes it: CA:TRUE, a subjectAltName.
        let (one, one_params) = make(true, &["127.0.0.1"], |_| {});
        let ca = pem_file(dir.path(), "one.pem", &[&one.der]);
        handshake(vec![one.der.clone()], &one.key, &ca, "127.0.0.1").unwrap();
        // It is valid for its names only.
        let e = handshake(vec![one.der.clone()], &one.key, &ca, "localhost").unwrap_err();
        assert!(
            e.contains("not trusted by") && e.contains("'localhost'") && e.contains("127.0.0.1"),
            "{e}"
        );
        // Another self-signed certificate for the same name is refused.
        let (other, _) = make(true, &["127.0.0.1"], |_| {});
        let e = handshake(vec![other.der.clone()], &other.key, &ca, "127.0.0.1").unwrap_err();
        assert!(
            e.contains("not trusted by")
                && e.contains(&fingerprint(&other.der))
                && e.contains(&fingerprint(&one.der)),
            "{e}"
        );
        // So is a certificate signed by its key: it is a pin, not a CA.
        let issuer = rcgen::Issuer::new(one_params, one.key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let e = handshake(
            vec![leaf.der().clone(), one.der.clone()],
            &leaf_key,
            &ca,
            "127.0.0.1",
        )
        .unwrap_err();
        assert!(e.contains("a pin"), "{e}");
    }

    #[test]
    fn a_ca_keeps_working_as_a_ca_and_both_kinds_mix_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let (root, root_params) = make(true, &[], |p| {
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "test CA");
        });
        let issuer = rcgen::Issuer::new(root_params, root.key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["gpu-1.example".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let (pinned, _) = make(false, &["gpu-2.example"], |_| {});
        let ca = pem_file(dir.path(), "bundle.pem", &[&root.der, &pinned.der]);
        handshake(vec![leaf.der().clone()], &leaf_key, &ca, "gpu-1.example").unwrap();
        handshake(vec![pinned.der.clone()], &pinned.key, &ca, "gpu-2.example").unwrap();
        // The CA vouches for its leaf's names only.
        let e = handshake(vec![leaf.der().clone()], &leaf_key, &ca, "gpu-2.example").unwrap_err();
        assert!(
            e.contains("not trusted by") && e.contains("not valid for name"),
            "{e}"
        );
        // A stranger is neither the pinned certificate nor the CA's.
        let (stranger, _) = make(false, &["gpu-1.example"], |_| {});
        let e = handshake(
            vec![stranger.der.clone()],
            &stranger.key,
            &ca,
            "gpu-1.example",
        )
        .unwrap_err();
        assert!(
            e.contains("UnknownIssuer") && e.contains(&fingerprint(&pinned.der)),
            "{e}"
        );
    }

    #[test]
    fn a_pinned_server_certificate_must_be_valid_now() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = make(true, &["127.0.0.1"], |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2000, 1, 31);
        });
        let ca = pem_file(dir.path(), "old.pem", &[&old.der]);
        let e = handshake(vec![old.der.clone()], &old.key, &ca, "127.0.0.1").unwrap_err();
        assert!(e.contains("expired on"), "{e}");
        let (future, _) = make(false, &["127.0.0.1"], |p| {
            p.not_before = rcgen::date_time_ymd(2999, 1, 1);
            p.not_after = rcgen::date_time_ymd(2999, 1, 31);
        });
        let ca = pem_file(dir.path(), "future.pem", &[&future.der]);
        let e = handshake(vec![future.der.clone()], &future.key, &ca, "127.0.0.1").unwrap_err();
        assert!(e.contains("not valid before"), "{e}");
    }

    /// Presents a fixed certificate and key, whether or not they belong
    /// together (rustls's own config builder refuses a mismatch).
    #[derive(Debug)]
    struct Impostor(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Impostor {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn a_server_without_the_pinned_key_cannot_present_the_pinned_certificate() {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let dir = tempfile::tempdir().unwrap();
        let (one, _) = make(true, &["127.0.0.1"], |_| {});
        let ca = pem_file(dir.path(), "one.pem", &[&one.der]);
        let run = |key: &rcgen::KeyPair| {
            let signer = provider()
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    key.serialize_der(),
                )))
                .unwrap();
            let certified = rustls::sign::CertifiedKey::new(vec![one.der.clone()], signer);
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Impostor(Arc::new(certified))));
            cfg.alpn_protocols = vec![ALPN.to_vec()];
            handshake_with(cfg, &ca, "127.0.0.1")
        };
        // The real key passes through the same path...
        run(&one.key).unwrap();
        // ...another key does not: the client checks the handshake
        // signature against the pinned certificate's key.
        let e = run(&rcgen::KeyPair::generate().unwrap()).unwrap_err();
        assert!(
            e.to_lowercase().contains("signature") || e.contains("DecryptError"),
            "{e}"
        );
    }
}
