//! Head-of-line blocking, measured: the latency of small requests while a
//! large one is in flight on the same connection, over TCP (one ordered
//! byte stream) and QUIC (one stream per request); and the time of a large
//! round trip on each. "first ms" is the slowest, over the rounds, of the
//! first small request sent after the large one: on TCP it waits for the
//! whole large request to be sent.
//!
//! Starts its own server (CPU, loopback, a tcp:// and a quic:// listener).
//! Run optimised: `cargo run --release -p mymps --example quic_latency`
//! (`-- --big-mib 256 --rounds 3`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mymps::client::{Call, Caller, Client, ClientOptions};
use mymps::server::{Server, ServerConfig};
use mymps::transport::{Endpoint, TransportOptions};
use mymps::{Result, Tensor};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn small(c: &Client) -> Result<Duration> {
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[4])?;
    let t = Instant::now();
    c.call(Call::new("neg").arg(x)).await?;
    Ok(t.elapsed())
}

fn big_tensor(mib: usize) -> Result<Tensor> {
    let n = mib << 18; // f32 elements
    Tensor::from_vec((0..n).map(|i| (i % 251) as f32).collect::<Vec<f32>>(), &[n])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let big_mib = arg("--big-mib", 256);
    let rounds = arg("--rounds", 3);
    let dir = std::env::temp_dir().join(format!("mymps-quic-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| mymps::Error::internal(e.to_string()))?;
    let cert = dir.join("cert.pem");
    let config = ServerConfig {
        listen: vec![
            Endpoint::new("tcp", "127.0.0.1", 0),
            Endpoint::new("quic", "127.0.0.1", 0),
        ],
        transport: TransportOptions {
            tls_cert_out: Some(cert.clone()),
            ..TransportOptions::default()
        },
        ..ServerConfig::default()
    };
    let backend = Arc::new(mymps::backend_tch::TchBackend::new("cpu")?);
    let server = Server::bind(config, backend).await?.spawn();
    let eps = server.endpoints().to_vec();
    if cfg!(debug_assertions) {
        println!("note: a debug build; run with --release for representative numbers");
    }
    println!(
        "{:<5} {:>12} {:>12} | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>10} {:>8}",
        "",
        "idle p50 ms",
        "idle p99 ms",
        "n under",
        "first ms",
        "p50 ms",
        "p99 ms",
        "max ms",
        "big rt ms",
        "MB/s"
    );
    for ep in &eps {
        let options = ClientOptions {
            transport: TransportOptions {
                tls_ca: Some(cert.clone()),
                ..TransportOptions::default()
            },
            ..ClientOptions::default()
        };
        let c = Client::connect_with(&ep.to_string(), options).await?;
        for _ in 0..50 {
            small(&c).await?;
        }
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(small(&c).await?);
        }
        idle.sort();
        let big = big_tensor(big_mib)?;
        let (mut under, mut best_big, mut first) = (Vec::new(), Duration::MAX, Duration::ZERO);
        for _ in 0..rounds {
            let c2 = c.clone();
            let x = big.clone();
            let started = Instant::now();
            let task = tokio::spawn(async move {
                let t = Instant::now();
                c2.call(Call::new("neg").arg(x)).await.map(|_| t.elapsed())
            });
            // Small requests, one after another, while the big one runs
            // (after it has surely started).
            tokio::time::sleep(Duration::from_millis(5)).await;
            let before = under.len();
            while !task.is_finished() && started.elapsed() < Duration::from_secs(60) {
                under.push(small(&c).await?);
            }
            let t = task
                .await
                .map_err(|e| mymps::Error::internal(e.to_string()))??;
            best_big = best_big.min(t);
            if let Some(f) = under.get(before) {
                first = first.max(*f);
            }
        }
        under.sort();
        let (p50, p99, max) = if under.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            (
                ms(pct(&under, 0.5)),
                ms(pct(&under, 0.99)),
                ms(*under.last().unwrap()),
            )
        };
        // Both ways: the tensor out and its negation back.
        let mbps = 2.0 * (big_mib as f64) * 1.048576 / best_big.as_secs_f64();
        println!(
            "{:<5} {:>12.3} {:>12.3} | {:>9} {:>9.1} {:>9.3} {:>9.3} {:>9.1} | {:>10.1} {:>8.0}",
            ep.scheme,
            ms(pct(&idle, 0.5)),
            ms(pct(&idle, 0.99)),
            under.len(),
            ms(first),
            p50,
            p99,
            max,
            ms(best_big),
            mbps
        );
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
