//! `mymps cluster ...`: several servers as one.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Subcommand};
use mymps::cluster::{ClusterConfig, HostState, blocking::Cluster};
use mymps::{Error, ErrorCode};

/// What `mymps cluster` does.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Each host's state (up, down), load, latency, device and models.
    Status,
}

/// The cluster: a list of addresses or a TOML file.
#[derive(ClapArgs)]
pub struct ClusterArgs {
    /// The hosts, comma-separated (tcp://a:5555,quic://b:5556).
    #[arg(long, value_delimiter = ',', global = true, conflicts_with = "config")]
    hosts: Vec<String>,
    /// A cluster TOML file (see docs/deployment.md).
    #[arg(long, value_name = "PATH", env = "MYMPS_CLUSTER", global = true)]
    config: Option<PathBuf>,
    /// Seconds to wait for each host to connect and answer.
    #[arg(long, default_value_t = 10.0, global = true)]
    timeout: f64,
    /// Authentication token for hosts that have none in the file.
    #[arg(long, env = "MYMPS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// CA or server certificate (PEM) to verify TLS hosts against, for hosts
    /// that have none in the file.
    #[arg(long, value_name = "PATH", global = true)]
    ca: Option<PathBuf>,
    /// Pinned SHA-256 certificate fingerprint, for hosts that have none in
    /// the file.
    #[arg(long, global = true)]
    fingerprint: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

impl ClusterArgs {
    fn config(&self) -> Result<ClusterConfig, Error> {
        let mut config = match (&self.config, self.hosts.is_empty()) {
            (Some(path), true) => ClusterConfig::from_toml_file(path)?,
            (None, false) => ClusterConfig::from_addrs(&self.hosts)?,
            _ => {
                return Err(Error::bad_argument(
                    "name the hosts: --hosts tcp://a:5555,tcp://b:5555 or --config cluster.toml",
                ));
            }
        };
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            return Err(Error::bad_argument("--timeout must be a positive number"));
        }
        let t = Duration::from_secs_f64(self.timeout);
        config.connect_timeout = t;
        config.health_timeout = t;
        config.timeout = t;
        if config.token.is_none() {
            config.token = self.token.clone();
        }
        if config.ca.is_none() {
            config.ca = self.ca.clone();
        }
        if config.fingerprint.is_none() {
            config.fingerprint = self.fingerprint.clone();
        }
        Ok(config)
    }
}

/// Runs `mymps cluster COMMAND`.
pub fn run(args: &ClusterArgs, command: ClusterCommand) -> Result<(), Error> {
    match command {
        ClusterCommand::Status => status(args),
    }
}

fn status(args: &ClusterArgs) -> Result<(), Error> {
    let cluster = Cluster::open(args.config()?)?;
    let hosts = cluster.status();
    let stats = cluster.stats();
    let stats_of = |name: &str| {
        stats
            .iter()
            .find(|s| s.host == name)
            .and_then(|s| s.stats.as_ref().ok())
    };
    let down = hosts.iter().filter(|h| h.state != HostState::Up).count();
    if args.json {
        let rows: Vec<serde_json::Value> = hosts
            .iter()
            .map(|h| {
                let mut v = serde_json::to_value(h).expect("serialisable");
                v["stats"] = serde_json::to_value(stats_of(&h.name)).expect("serialisable");
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"hosts": rows}))
                .expect("serialisable")
        );
    } else {
        let mut table = vec![
            [
                "HOST",
                "STATE",
                "IN-FLIGHT",
                "LATENCY",
                "DEVICE",
                "LOAD-1M",
                "CPU%",
                "ACCEL-MEM",
                "MODELS",
            ]
            .map(String::from),
        ];
        for h in &hosts {
            let s = stats_of(&h.name);
            let dash = || "-".to_owned();
            table.push([
                h.name.clone(),
                h.state.to_string(),
                h.in_flight.to_string(),
                h.latency_ms
                    .filter(|_| h.state == HostState::Up)
                    .map_or_else(dash, |l| format!("{l:.1} ms")),
                h.device.clone().unwrap_or_else(dash),
                s.map_or_else(dash, |s| format!("{:.2}", s.load_avg[0])),
                s.map_or_else(dash, |s| format!("{:.0}", s.cpu_percent)),
                s.and_then(|s| {
                    Some(format!(
                        "{:.0}/{:.0} MB",
                        s.accelerator_memory_used_mb?, s.accelerator_memory_total_mb?
                    ))
                })
                .unwrap_or_else(dash),
                if h.models.is_empty() {
                    dash()
                } else {
                    h.models.join(",")
                },
            ]);
        }
        let widths: Vec<usize> = (0..table[0].len())
            .map(|c| {
                table
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &table {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:w$}"))
                .collect();
            println!("{}", line.join("  ").trim_end());
        }
        for h in hosts.iter().filter(|h| h.state != HostState::Up) {
            if let Some(e) = &h.error {
                println!("{}: {e}", h.name);
            }
        }
    }
    if down > 0 {
        return Err(Error::new(
            ErrorCode::Connection,
            format!("{down} of {} hosts are not up", hosts.len()),
        ));
    }
    Ok(())
}
