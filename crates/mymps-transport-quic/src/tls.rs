//! TLS for the QUIC transport: the server's certificate (given, or generated
//! and written out), and the client's verification (a CA / certificate
//! file, a pinned SHA-256 fingerprint, or both). Every config is built with
//! rustls's `ring` provider passed explicitly; nothing relies on a
//! process-wide default provider.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{RootCertStore, SignatureScheme};
use tracing::{info, warn};

/// The ALPN protocol id of mymps over QUIC.
pub(crate) const ALPN: &[u8] = b"mymps/1";

/// Where a generated certificate goes when no `tls_cert_out` is given:
/// this file in the server's current directory.
pub const DEFAULT_CERT_FILE: &str = "mymps-quic-cert.pem";

/// The first line of a certificate file that mymps generated: such a file
/// may be replaced at the next start; any other file is never overwritten.
const GENERATED_MARKER: &str = "# mymps self-signed QUIC certificate";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// The SHA-256 fingerprint of a certificate (DER), lowercase hex without
/// separators, as the server prints it and clients pin it.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut s = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_pem_file(path: &Path) -> io::Result<String> {
    let certs = read_certs(path)?;
    Ok(fingerprint(&certs[0]))
}

/// Parses a fingerprint as users write it: 64 hex digits, colons, spaces
/// and case ignored, an optional `sha256:` prefix.
fn parse_fingerprint(s: &str) -> io::Result<[u8; 32]> {
    let t = s.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: String = t
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bad = || {
        invalid(format!(
            "bad certificate fingerprint '{s}': expected the 64 hex digits of a SHA-256 digest (as `mymps serve` prints it)"
        ))
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            invalid(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The server's certificate chain and key, and what to tell the operator.
pub(crate) struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Loads `--tls-cert`/`--tls-key`, or generates a self-signed certificate
/// for `host` and writes it out.
pub(crate) fn server_identity(
    host: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    cert_out: Option<&Path>,
) -> io::Result<ServerIdentity> {
    match (cert, key) {
        (Some(c), Some(k)) => {
            let chain = read_certs(c)?;
            let key = PrivateKeyDer::from_pem_file(k).map_err(|e| {
                invalid(format!(
                    "cannot read a private key from {}: {e}",
                    k.display()
                ))
            })?;
            info!(cert = %c.display(), sha256 = %fingerprint(&chain[0]), "quic: using the given certificate");
            Ok(ServerIdentity { chain, key })
        }
        (Some(_), None) | (None, Some(_)) => Err(invalid(
            "a TLS certificate needs its key and a key its certificate: pass both --tls-cert and --tls-key (or neither, for a generated self-signed certificate)",
        )),
        (None, None) => generate(host, cert_out),
    }
}

/// The names a generated certificate is valid for: the listen host, and
/// when listening on every interface (or on a loopback address) the
/// loopback names and this machine's host name.
pub fn certificate_names(host: &str) -> Vec<String> {
    let mut names = Vec::new();
    let ip = host.parse::<IpAddr>().ok();
    let wildcard = ip.is_some_and(|ip| ip.is_unspecified());
    if !wildcard {
        names.push(host.to_owned());
    }
    if wildcard || ip.is_some_and(|ip| ip.is_loopback()) || host == "localhost" {
        for n in ["localhost", "127.0.0.1", "::1"] {
            names.push(n.to_owned());
        }
    }
    if wildcard {
        names.extend(hostname());
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let h = h.trim();
    (!h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    .then(|| h.to_owned())
}

/// Certificates generated by this process, by the file they were written
/// to: several quic:// listeners of one server share one certificate.
#[allow(clippy::type_complexity)]
static GENERATED: Mutex<Vec<(PathBuf, CertificateDer<'static>, Vec<u8>)>> = Mutex::new(Vec::new());

fn generate(host: &str, cert_out: Option<&Path>) -> io::Result<ServerIdentity> {
    let path = cert_out.map_or_else(|| PathBuf::from(DEFAULT_CERT_FILE), Path::to_path_buf);
    let mut generated = GENERATED.lock().unwrap_or_else(|p| p.into_inner());
    let on_file = fingerprint_of_pem_file(&path).ok();
    if let Some((_, cert, key)) = generated
        .iter()
        .find(|(p, c, _)| *p == path && on_file.as_deref() == Some(fingerprint(c).as_str()))
    {
        return Ok(ServerIdentity {
            chain: vec![cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
        });
    }
    let names = certificate_names(host);
    let rc = |e: rcgen::Error| io::Error::other(format!("cannot generate a certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(names.clone()).map_err(rc)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mymps self-signed");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key_pair = rcgen::KeyPair::generate().map_err(rc)?;
    let cert = params.self_signed(&key_pair).map_err(rc)?;
    let fp = fingerprint(cert.der());
    write_generated(&path, &names, &fp, &cert.pem())?;
    info!(cert = %path.display(), sha256 = %fp, names = ?names, "quic: generated a self-signed certificate (a new one at every start); clients verify it with --ca FILE or --fingerprint SHA256");
    generated.retain(|(p, _, _)| *p != path);
    generated.push((path, cert.der().clone(), key_pair.serialize_der()));
    Ok(ServerIdentity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der())),
    })
}

/// Writes a generated certificate, replacing only a file that mymps
/// generated before.
fn write_generated(path: &Path, names: &[String], fp: &str, pem: &str) -> io::Result<()> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        if !existing.starts_with(GENERATED_MARKER) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "refusing to overwrite {} with a generated certificate: the file exists and mymps did not write it (pass --tls-cert-out PATH elsewhere, or --tls-cert/--tls-key to use your own)",
                    path.display()
                ),
            ));
        }
    } else if path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "refusing to overwrite {}: it exists and is not a readable certificate file",
                path.display()
            ),
        ));
    }
    let text = format!(
        "{GENERATED_MARKER} for {}; sha256 {fp}\n{pem}",
        names.join(", ")
    );
    let tmp = path.with_extension("pem.tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io::Error::new(
            e.kind(),
            format!(
                "cannot write the generated certificate to {}: {e}",
                path.display()
            ),
        )
    })
}

/// The rustls server config.
pub(crate) fn server_config(id: ServerIdentity) -> io::Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| io::Error::other(format!("TLS set-up: {e}")))?
        .with_no_client_auth()
        .with_single_cert(id.chain, id.key)
        .map_err(|e| invalid(format!("the TLS certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The explanation a client gets when it was given nothing to verify the
/// server with.
pub(crate) const NO_VERIFICATION: &str = "a quic:// server must be verified and no way to verify it was given: pass the server's certificate (or its CA) with --ca FILE, or pin it with --fingerprint SHA256 (`mymps serve` prints both at start: 'mymps: quic certificate <file> sha256 <hex>'); in Rust set TransportOptions::tls_ca or tls_fingerprint, in Python tls_ca= or tls_fingerprint=";

/// Verifies the server with a CA file, a pinned fingerprint, or both (then
/// both must pass), and remembers why it refused a certificate so that the
/// connect error can say so plainly.
#[derive(Debug)]
pub(crate) struct Verifier {
    webpki: Option<(Arc<WebPkiServerVerifier>, PathBuf)>,
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    /// Why the last certificate was refused.
    pub refusal: Mutex<Option<String>>,
}

impl Verifier {
    pub(crate) fn new(ca: Option<&Path>, pin: Option<&str>) -> io::Result<Verifier> {
        let provider = provider();
        let pin = pin.map(parse_fingerprint).transpose()?;
        let webpki = match ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(path)? {
                    roots.add(c).map_err(|e| {
                        invalid(format!(
                            "{} is not usable as a trusted certificate: {e}",
                            path.display()
                        ))
                    })?;
                }
                let v =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                Some((v, path.to_path_buf()))
            }
            None => None,
        };
        if webpki.is_none() && pin.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                NO_VERIFICATION,
            ));
        }
        Ok(Verifier {
            webpki,
            pin,
            provider,
            refusal: Mutex::new(None),
        })
    }

    fn refuse(&self, why: String) -> rustls::Error {
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        rustls::Error::General(why)
    }
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
        if let Some(pin) = &self.pin {
            let got = fingerprint(end_entity);
            let want: String = pin.iter().map(|b| format!("{b:02x}")).collect();
            if got != want {
                return Err(self.refuse(format!(
                    "the server's certificate does not match the pinned fingerprint: it presented sha256 {got}, expected {want} (a different server, a regenerated certificate, or someone in between)"
                )));
            }
        }
        if let Some((v, path)) = &self.webpki {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| {
                    self.refuse(format!(
                        "the server's certificate is not trusted by {} ({e}); is it the certificate this server printed at start, and valid for the name '{}'?",
                        path.display(),
                        server_name.to_str()
                    ))
                })?;
        }
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

/// The rustls client config using `verifier`.
pub(crate) fn client_config(verifier: Arc<Verifier>) -> io::Result<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| io::Error::other(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Logs that a client was refused at the TLS level (on the server).
pub(crate) fn log_refused_handshake(peer: std::net::SocketAddr, e: &quinn::ConnectionError) {
    warn!(%peer, error = %e, "quic: handshake failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_usual_spellings() {
        let fp = fingerprint(b"hello");
        assert_eq!(fp.len(), 64);
        let want = parse_fingerprint(&fp).unwrap();
        let colons = fp
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), want);
        assert_eq!(parse_fingerprint(&format!("sha256:{fp}")).unwrap(), want);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn wildcard_hosts_get_loopback_and_host_names() {
        let n = certificate_names("0.0.0.0");
        assert!(n.contains(&"localhost".to_owned()) && n.contains(&"127.0.0.1".to_owned()));
        assert!(!n.contains(&"0.0.0.0".to_owned()));
        assert_eq!(certificate_names("10.1.2.3"), vec!["10.1.2.3".to_owned()]);
    }

    #[test]
    fn a_foreign_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cert.pem");
        std::fs::write(&p, "my own file\n").unwrap();
        let e = generate("127.0.0.1", Some(&p)).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "my own file\n");
        // A file mymps wrote is replaced.
        std::fs::remove_file(&p).unwrap();
        generate("127.0.0.1", Some(&p)).unwrap();
        let first = fingerprint_of_pem_file(&p).unwrap();
        // A second listener of the same process shares the certificate...
        generate("127.0.0.1", Some(&p)).unwrap();
        assert_eq!(fingerprint_of_pem_file(&p).unwrap(), first);
        // ...a new start (the file no longer holds it) gets a new one.
        std::fs::write(&p, format!("{GENERATED_MARKER}\n")).unwrap();
        generate("127.0.0.1", Some(&p)).unwrap();
        assert_ne!(fingerprint_of_pem_file(&p).unwrap(), first);
    }
}
