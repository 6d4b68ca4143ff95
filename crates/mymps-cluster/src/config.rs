//! Cluster settings: from a list of addresses or a TOML file.
//!
//! ```toml
//! # cluster.toml
//! timeout = 300            # seconds per request, failovers included
//! health_interval = 2      # seconds between health checks of a host
//! token_file = "token"     # shared token (or `token = "..."`); relative
//!                          # paths are relative to this file
//!
//! [[hosts]]
//! addr = "quic://gpu-a.example.net:5556"
//! fingerprint = "3f:9a:...:c2"   # pinned certificate of this host
//!
//! [[hosts]]
//! addr = "quic://gpu-b.example.net:5556"
//! ca = "gpu-b.pem"
//! ```
//!
//! `hosts = ["tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"]` is the short
//! form when hosts need no settings of their own. `token`, `token_file`,
//! `ca` and `fingerprint` may be given per host or for all hosts; a host's
//! own value wins.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mymps_core::client::{ClientOptions, DEFAULT_TIMEOUT};
use mymps_core::transport::{Endpoint, TransportOptions};
use mymps_core::{Error, Result};
use serde::Deserialize;

/// The default interval between two health checks of a host.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// The default time a health check may take before the host is marked down.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time connecting to a host (handshake included) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One server of a cluster.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct HostConfig {
    /// The server's address, `scheme://host:port` (`tcp://`, `quic://`, ...;
    /// `host:port` alone means TCP).
    pub addr: String,
    /// A short name for status output and placements (default: the address).
    pub name: Option<String>,
    /// This host's authentication token (default: the cluster's).
    pub token: Option<String>,
    /// A CA or server certificate (PEM) to verify this host against
    /// (default: the cluster's).
    pub ca: Option<PathBuf>,
    /// The pinned SHA-256 fingerprint of this host's certificate (default:
    /// the cluster's).
    pub fingerprint: Option<String>,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl HostConfig {
    /// A host with only an address.
    pub fn new(addr: impl Into<String>) -> HostConfig {
        HostConfig {
            addr: addr.into(),
            ..HostConfig::default()
        }
    }

    /// The name shown for this host: its name, else its address.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.addr)
    }
}

/// How a cluster client behaves: its hosts, timeouts and health checks.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The servers.
    pub hosts: Vec<HostConfig>,
    /// The longest a request may take, failovers and waiting for a host to
    /// come back included. Default 300 s, as for one client.
    pub timeout: Duration,
    /// The longest one try of a request may take on one host before it is
    /// tried on another (`None`: no limit but [`timeout`](Self::timeout)).
    /// A request that timed out may still run on the first host: set this
    /// only for work that may run twice (every op and model forward pass
    /// does; only its answer is used once).
    pub attempt_timeout: Option<Duration>,
    /// The longest connecting to a host (handshake included) may take.
    pub connect_timeout: Duration,
    /// Time between health checks of a host that is up; a host that is
    /// down is retried with a backoff that grows to this interval.
    pub health_interval: Duration,
    /// The longest a health check may take before the host is marked down.
    pub health_timeout: Duration,
    /// Whether a host that comes back (a restarted server has no models)
    /// gets the models placed on it loaded again. Default true.
    pub restore_models: bool,
    /// The token for hosts that have none of their own.
    pub token: Option<String>,
    /// The CA or certificate for hosts that have none of their own.
    pub ca: Option<PathBuf>,
    /// The pinned fingerprint for hosts that have none of their own (all
    /// hosts share one certificate).
    pub fingerprint: Option<String>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("hosts", &self.hosts)
            .field("timeout", &self.timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("health_interval", &self.health_interval)
            .field("health_timeout", &self.health_timeout)
            .field("restore_models", &self.restore_models)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            hosts: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            attempt_timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            restore_models: true,
            token: None,
            ca: None,
            fingerprint: None,
        }
    }
}

/// A host in a TOML file: an address, or a table.
enum HostEntry {
    Addr(String),
    Table(HostTable),
}

impl<'de> Deserialize<'de> for HostEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HostEntry, D::Error> {
        // Not `#[serde(untagged)]`: its error would hide which field of a
        // host table is wrong.
        match toml::Value::deserialize(d)? {
            toml::Value::String(addr) => Ok(HostEntry::Addr(addr)),
            other => other
                .try_into::<HostTable>()
                .map(HostEntry::Table)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostTable {
    addr: String,
    name: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    fingerprint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    hosts: Vec<HostEntry>,
    timeout: Option<f64>,
    attempt_timeout: Option<f64>,
    connect_timeout: Option<f64>,
    health_interval: Option<f64>,
    health_timeout: Option<f64>,
    restore_models: Option<bool>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    fingerprint: Option<String>,
}

/// `seconds` as a positive duration.
fn seconds(field: &str, seconds: f64) -> Result<Duration> {
    if seconds.is_finite() && seconds > 0.0 {
        Duration::try_from_secs_f64(seconds)
            .map_err(|e| Error::bad_argument(format!("{field} = {seconds}: {e}")))
    } else {
        Err(Error::bad_argument(format!(
            "{field} must be a positive number of seconds, not {seconds}"
        )))
    }
}

pub use mymps_core::auth::read_token_file;

/// `token`, else the content of `token_file`; both is an error.
fn token(
    what: &str,
    token: Option<String>,
    file: Option<PathBuf>,
    base: &Path,
) -> Result<Option<String>> {
    match (token, file) {
        (Some(_), Some(_)) => Err(Error::bad_argument(format!(
            "{what}: give token or token_file, not both"
        ))),
        (Some(t), None) => Ok(Some(t)),
        (None, Some(f)) => Ok(Some(read_token_file(&base.join(f))?)),
        (None, None) => Ok(None),
    }
}

impl ClusterConfig {
    /// A cluster of `addrs` with default settings.
    pub fn from_addrs<S: AsRef<str>>(addrs: &[S]) -> Result<ClusterConfig> {
        let config = ClusterConfig {
            hosts: addrs
                .iter()
                .map(|a| HostConfig::new(a.as_ref().trim()))
                .collect(),
            ..ClusterConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file (see the [module docs](self)). Relative paths in
    /// it (`token_file`, `ca`) are relative to the file's folder.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<ClusterConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::bad_argument(format!(
                "cannot read the cluster file {}: {e}",
                path.display()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        ClusterConfig::from_toml_str(&text, base)
            .map_err(|e| Error::new(e.code, format!("{}: {}", path.display(), e.message)))
    }

    /// Parses TOML text; relative paths are relative to `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<ClusterConfig> {
        let file: ClusterFile = toml::from_str(text)
            .map_err(|e| Error::bad_argument(format!("bad cluster file: {e}")))?;
        let defaults = ClusterConfig::default();
        let opt = |field: &str, v: Option<f64>, default: Duration| -> Result<Duration> {
            v.map_or(Ok(default), |s| seconds(field, s))
        };
        let mut hosts = Vec::with_capacity(file.hosts.len());
        for (i, h) in file.hosts.into_iter().enumerate() {
            hosts.push(match h {
                HostEntry::Addr(addr) => HostConfig::new(addr),
                HostEntry::Table(t) => HostConfig {
                    token: token(&format!("hosts[{i}]"), t.token, t.token_file, base)?,
                    addr: t.addr,
                    name: t.name,
                    ca: t.ca.map(|p| base.join(p)),
                    fingerprint: t.fingerprint,
                },
            });
        }
        let config = ClusterConfig {
            hosts,
            timeout: opt("timeout", file.timeout, defaults.timeout)?,
            attempt_timeout: file
                .attempt_timeout
                .map(|s| seconds("attempt_timeout", s))
                .transpose()?,
            connect_timeout: opt(
                "connect_timeout",
                file.connect_timeout,
                defaults.connect_timeout,
            )?,
            health_interval: opt(
                "health_interval",
                file.health_interval,
                defaults.health_interval,
            )?,
            health_timeout: opt(
                "health_timeout",
                file.health_timeout,
                defaults.health_timeout,
            )?,
            restore_models: file.restore_models.unwrap_or(defaults.restore_models),
            token: token("the cluster", file.token, file.token_file, base)?,
            ca: file.ca.map(|p| base.join(p)),
            fingerprint: file.fingerprint,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings: at least one host, addresses that parse, no
    /// address or name twice, positive durations.
    pub fn validate(&self) -> Result<()> {
        if self.hosts.is_empty() {
            return Err(Error::bad_argument("a cluster needs at least one host"));
        }
        let mut seen = BTreeSet::new();
        for h in &self.hosts {
            let ep: Endpoint = h.addr.parse()?;
            if !seen.insert(ep.to_string()) {
                return Err(Error::bad_argument(format!(
                    "host {} is listed twice",
                    h.addr
                )));
            }
        }
        let mut names = BTreeSet::new();
        for n in self.hosts.iter().filter_map(|h| h.name.as_deref()) {
            if n.is_empty() || !names.insert(n) {
                return Err(Error::bad_argument(format!(
                    "host name '{n}' is empty or used twice"
                )));
            }
        }
        for (field, d) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::bad_argument(format!("{field} must not be zero")));
            }
        }
        Ok(())
    }

    /// The client options for host `i`: the cluster's timeout, the host's
    /// token and TLS settings, else the cluster's.
    pub fn client_options(&self, i: usize) -> ClientOptions {
        let h = &self.hosts[i];
        ClientOptions {
            timeout: self.timeout,
            token: h.token.clone().or_else(|| self.token.clone()),
            transport: TransportOptions {
                tls_ca: h.ca.clone().or_else(|| self.ca.clone()),
                tls_fingerprint: h.fingerprint.clone().or_else(|| self.fingerprint.clone()),
                ..TransportOptions::default()
            },
            ..ClientOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mymps_core::ErrorCode;

    #[test]
    fn toml_with_tables_and_global_settings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "  s3cret\n").unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(
            &path,
            r#"
timeout = 30
attempt_timeout = 2.5
health_interval = 0.5
token_file = "token"
fingerprint = "aa:bb"

[[hosts]]
addr = "quic://gpu-a:5556"
name = "a"
fingerprint = "cc:dd"
ca = "a.pem"

[[hosts]]
addr = "tcp://10.0.0.2:5555"
token = "other"
"#,
        )
        .unwrap();
        let c = ClusterConfig::from_toml_file(&path).unwrap();
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.attempt_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(c.health_interval, Duration::from_millis(500));
        assert_eq!(c.health_timeout, DEFAULT_HEALTH_TIMEOUT);
        assert_eq!(c.hosts[0].label(), "a");
        assert_eq!(c.hosts[1].label(), "tcp://10.0.0.2:5555");
        let a = c.client_options(0);
        assert_eq!(a.token.as_deref(), Some("s3cret"));
        assert_eq!(a.transport.tls_fingerprint.as_deref(), Some("cc:dd"));
        assert_eq!(a.transport.tls_ca, Some(dir.path().join("a.pem")));
        assert_eq!(a.timeout, Duration::from_secs(30));
        let b = c.client_options(1);
        assert_eq!(b.token.as_deref(), Some("other"));
        assert_eq!(b.transport.tls_fingerprint.as_deref(), Some("aa:bb"));
        assert_eq!(b.transport.tls_ca, None);
        // Secrets stay out of debug output.
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("other"),
            "{debug}"
        );
    }

    #[test]
    fn short_form_and_addresses() {
        let c = ClusterConfig::from_toml_str(
            r#"hosts = ["tcp://127.0.0.1:1", "127.0.0.1:2"]"#,
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.hosts[1].addr, "127.0.0.1:2");
        assert!(c.restore_models);
        let c = ClusterConfig::from_addrs(&["tcp://a:1", " b:2 "]).unwrap();
        assert_eq!(c.hosts[1].addr, "b:2");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let bad = |text: &str| {
            let e = ClusterConfig::from_toml_str(text, Path::new(".")).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadArgument, "{e}");
            e.message
        };
        assert!(bad("hosts = []").contains("at least one host"));
        assert!(bad(r#"hosts = ["a:1", "tcp://a:1"]"#).contains("listed twice"));
        assert!(bad(r#"hosts = ["a"]"#).contains("missing port"));
        assert!(bad("hosts = [\"a:1\"]\ntimeout = -1").contains("positive"));
        assert!(bad("hosts = [\"a:1\"]\ntimeot = 1").contains("unknown field `timeot`"));
        assert!(
            bad("[[hosts]]\naddr = \"a:1\"\nfingerprnt = \"x\"")
                .contains("unknown field `fingerprnt`")
        );
        assert!(bad("hosts = [1]").contains("invalid type"));
        assert!(bad("hosts = [\"a:1\"]\ntoken = \"x\"\ntoken_file = \"f\"").contains("not both"));
        assert!(bad("hosts = [\"a:1\"]\ntoken_file = \"/nonexistent/t\"").contains("cannot read"));
        assert!(
            bad("[[hosts]]\naddr = \"a:1\"\nname = \"x\"\n[[hosts]]\naddr = \"b:1\"\nname = \"x\"")
                .contains("used twice")
        );
        let e = ClusterConfig::from_toml_file("/nonexistent/cluster.toml").unwrap_err();
        assert!(e.message.contains("cannot read the cluster file"), "{e}");
        assert!(ClusterConfig::from_addrs::<&str>(&[]).is_err());
    }
}
