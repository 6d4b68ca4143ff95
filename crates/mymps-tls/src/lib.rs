//! # mymps-tls
//!
//! TLS for the mymps transports that have it (`quic://`, `tcp+tls://`),
//! written once so that both say and check the same things:
//!
//! - the server's identity ([`server_identity`]): the certificate and key
//!   an operator gave, or a self-signed certificate generated at start,
//!   written out for clients and shared by every listener of the process
//!   that writes to the same file;
//! - the client's verification ([`Verifier`]): a `--ca` file, a pinned
//!   SHA-256 fingerprint, or both. A `--ca` file may hold CA certificates
//!   (the server's chain must lead to one, as webpki checks it) and server
//!   certificates, self-signed ones included (the server must present
//!   exactly one of them: a pin; see [`Verifier`] for how the two are told
//!   apart);
//! - the rustls configs ([`server_config`], [`client_config`]): TLS 1.3,
//!   the [`ALPN`] id, rustls's `ring` provider passed explicitly (nothing
//!   relies on a process-wide default provider).
//!
//! It knows nothing of sockets: each transport drives rustls its own way
//! (quinn for QUIC, tokio-rustls for TCP).
#![warn(missing_docs)]

mod identity;
mod verify;

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub use identity::{
    DEFAULT_CERT_FILE, ServerIdentity, certificate_names, server_config, server_identity,
};
pub use verify::{Verifier, client_config, no_verification};

/// The rustls crate this one builds its configs with (for transports that
/// need its types, so that both name the same version).
pub use rustls;

/// The ALPN protocol id of mymps over TLS, on every TLS transport.
pub const ALPN: &[u8] = b"mymps/1";

/// rustls's `ring` provider, which every config here is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// The SHA-256 fingerprint of a certificate (DER), lowercase hex without
/// separators, as the server prints it and clients pin it.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, cert_der).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
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
pub(crate) fn parse_fingerprint(s: &str) -> io::Result<[u8; 32]> {
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

/// Every certificate of a PEM file; an error when it holds none.
pub(crate) fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
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
}
