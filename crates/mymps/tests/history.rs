//! The `history` request end to end: a real server (libtorch, TCP on
//! loopback) sampling every 50 ms; its samples, their bound, `since`, the
//! per-kind rates, and the GPU figures (absent on the CPU; with
//! `MYMPS_TEST_DEVICE=cuda:0 MYMPS_TEST_NVML=1` on a GPU host, required).

mod common;

use std::time::Duration;

use mymps::client::{Caller, Client};
use mymps::protocol::rpc;
use mymps::server::HistoryConfig;
use mymps::{Tensor, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_samples_rates_and_gpu_figures() {
    let (server, addr) = common::start_with(|c| {
        c.history = HistoryConfig {
            interval: Duration::from_millis(50),
            samples: 20,
        }
    })
    .await;
    let c = Client::connect(&addr).await.unwrap();
    let x = Tensor::from_vec(vec![1.0f32; 1024], &[1024]).unwrap();
    for _ in 0..30 {
        c.exec("neg", [("0", x.clone())], Vec::<(String, Value)>::new())
            .await
            .unwrap();
    }
    for _ in 0..2 {
        c.exec(
            "frobnicate",
            [("0", x.clone())],
            Vec::<(String, Value)>::new(),
        )
        .await
        .unwrap_err();
    }
    for _ in 0..3 {
        c.health().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let h = c.call(rpc::History { since: 0 }).await.unwrap();
    assert_eq!((h.interval_s, h.capacity), (0.05, 20));
    assert!(
        !h.samples.is_empty() && h.samples.len() <= 20,
        "{}",
        h.samples.len()
    );
    for w in h.samples.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert!(w[1].uptime_s > w[0].uptime_s);
    }
    assert_eq!(h.next_seq, h.samples.last().unwrap().seq + 1);
    let requests: u64 = h.samples.iter().map(|s| s.requests).sum();
    let errors: u64 = h.samples.iter().map(|s| s.errors).sum();
    assert!(requests >= 35, "{requests}");
    assert_eq!(errors, 2);
    assert!(h.samples.iter().any(|s| s.p99_ms.is_some()));
    assert!(h.samples.iter().all(|s| s.process_rss_bytes > 1 << 20));
    // Each kind's own rate, over the same window.
    let rate = |k: &str| h.rates.iter().find(|r| r.kind == k).cloned();
    let exec = rate("exec").expect("exec was answered");
    let health = rate("health").expect("health was answered");
    assert_eq!((exec.count, health.count), (32, 3));
    assert!(exec.per_s > health.per_s, "{exec:?} {health:?}");
    assert!(rate("stats").is_none());

    // `since`: only the new ones; the ring keeps at most its capacity.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = c.call(rpc::History { since: h.next_seq }).await.unwrap();
    assert!(later.samples.iter().all(|s| s.seq >= h.next_seq));
    assert!(!later.samples.is_empty());
    let all = c.call(rpc::History { since: 0 }).await.unwrap();
    assert_eq!(all.samples.len(), 20);
    assert!(all.samples[0].seq > 0, "the oldest went");

    // GPU figures: from NVML where present, absent (never an error) else.
    let stats = c.stats().await.unwrap();
    let metrics = c.metrics().await.unwrap();
    let device = common::device();
    if std::env::var_os("MYMPS_TEST_NVML").is_some() {
        let gpu = stats.gpu.expect("NVML figures in stats");
        assert!(
            gpu.memory_total_bytes > 0 && !gpu.name.is_empty(),
            "{gpu:?}"
        );
        assert!(metrics.gpu.is_some());
        let last = all.samples.last().unwrap();
        assert!(last.gpu_memory_used_bytes.is_some(), "{last:?}");
        eprintln!("{device}: {gpu:?}");
    } else if !device.starts_with("cuda") {
        assert_eq!(stats.gpu, None);
        assert_eq!(metrics.gpu, None);
        assert!(
            all.samples
                .iter()
                .all(|s| s.gpu_utilization_percent.is_none()
                    && s.accelerator_memory_used_bytes.is_none())
        );
    }
    server.shutdown().await;
}
