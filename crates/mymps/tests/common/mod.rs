//! Shared set-up for the end-to-end tests: a real server (libtorch on the
//! CPU, TCP on an ephemeral loopback port) in the test's runtime.

#![allow(dead_code)]

use std::sync::Arc;

use mymps::server::{Server, ServerConfig, ServerHandle};
use mymps::transport::Endpoint;

/// The device the tests run the server on: `MYMPS_TEST_DEVICE`, else `cpu`
/// (`MYMPS_TEST_DEVICE=cuda:0` on a GPU machine).
pub fn device() -> String {
    std::env::var("MYMPS_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())
}

/// Starts a server on `tcp://127.0.0.1:0` with `tweak` applied to its config.
pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> (ServerHandle, String) {
    start_on("tcp", tweak).await
}

/// Starts a server on `SCHEME://127.0.0.1:0` (`tcp`, `zmq`, ...) with
/// `tweak` applied to its config; returns it and its address.
pub async fn start_on(
    scheme: &str,
    tweak: impl FnOnce(&mut ServerConfig),
) -> (ServerHandle, String) {
    let mut config = ServerConfig {
        listen: vec![Endpoint::new(scheme, "127.0.0.1", 0)],
        ..ServerConfig::default()
    };
    tweak(&mut config);
    let backend = Arc::new(mymps::backend_tch::TchBackend::new(&device()).expect("backend"));
    let server = Server::bind(config, backend).await.expect("bind");
    let handle = server.spawn();
    let addr = handle.endpoints()[0].to_string();
    (handle, addr)
}

/// Starts a server with model loaders linked in.
pub async fn start_with_models(
    loaders: Vec<Arc<dyn mymps::model::ModelLoader>>,
) -> (ServerHandle, String) {
    let config = ServerConfig {
        listen: vec![Endpoint::new("tcp", "127.0.0.1", 0)],
        // The tests' model files are in temporary folders.
        model_root: Some(std::env::temp_dir()),
        ..ServerConfig::default()
    };
    let backend = Arc::new(mymps::backend_tch::TchBackend::new(&device()).expect("backend"));
    let server = Server::bind(config, backend).await.expect("bind");
    for l in loaders {
        server.models().add_loader(l).unwrap();
    }
    let handle = server.spawn();
    let addr = handle.endpoints()[0].to_string();
    (handle, addr)
}

/// Starts a server with the default config.
pub async fn start() -> (ServerHandle, String) {
    start_with(|_| {}).await
}

/// A deterministic pseudo-random f32 vector (xorshift), values in [-1, 1).
pub fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Reference matmul in f64.
pub fn matmul_ref(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p] as f64;
            for j in 0..n {
                out[i * n + j] += x * b[p * n + j] as f64;
            }
        }
    }
    out
}

/// Largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}
