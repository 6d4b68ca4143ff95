//! Runs `mymps-bench --quick` against a real server (the `mymps` executable
//! when it is built, else the bench's own in-process server in a child
//! process) and checks that the JSON has every section with positive
//! numbers. Performance is not asserted.

use std::process::Command;

use serde_json::Value;

fn positive(v: &Value, path: &str) {
    let x = v
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v:#}"));
    assert!(x.is_finite() && x > 0.0, "{path} = {x}, want > 0");
}

#[test]
fn quick_run_reports_every_section() {
    let dir = std::env::temp_dir().join(format!("mymps-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mymps-bench"))
        .args(["--quick", "--json"])
        .arg(&json)
        // The workspace root, where .venv lives.
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run mymps-bench");
    assert!(
        out.status.success(),
        "mymps-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("PASS") || table.contains("MISS"), "{table}");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    for p in [
        "/baselines/tcp_echo_64b/p50_us",
        "/baselines/local_tch/add_4x4/p50_us",
        "/baselines/local_tch/matmul_256/p50_us",
        "/baselines/tcp_echo_large/0/gb_s",
        "/baselines/local_tch/neg/0/median_s",
        "/latency/tcp/add_4x4/p50_us",
        "/latency/tcp/add_4x4/p90_us",
        "/latency/tcp/add_4x4/p99_us",
        "/latency/tcp/add_4x4_blocking_client/p50_us",
        "/latency/tcp/matmul_256/p50_us",
        "/throughput/tcp/0/gb_s",
        "/concurrency/pipelined/req_per_s",
        "/memory/peak_rss_mib",
        "/memory/peak_over_payload",
    ] {
        positive(&v, p);
    }
    let clients: Vec<u64> = v["concurrency"]["clients"]
        .as_array()
        .expect("concurrency.clients")
        .iter()
        .map(|c| {
            positive(c, "/req_per_s");
            c["clients"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(clients, [1, 2, 4, 8, 16]);
    // The Python section either ran or says why it did not.
    let py = &v["python"];
    if py.get("skipped").is_none() {
        positive(py, "/add_4x4/p50_us");
        positive(py, "/matmul_256/p50_us");
        positive(py, "/neg/0/gb_s");
    } else {
        assert!(py["skipped"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // Remote tensors: both chains ran every way (the run itself fails when
    // a kept or graph result differs from the shipped one).
    let cases = v["resident"]["cases"].as_array().expect("resident.cases");
    let chains: Vec<&str> = cases.iter().filter_map(|c| c["chain"].as_str()).collect();
    assert_eq!(chains, ["matmul_relu", "elementwise"]);
    for c in cases {
        for p in [
            "/local/median_s",
            "/shipped/median_s",
            "/shipped/ratio_to_local",
            "/kept/median_s",
            "/kept/ratio_to_local",
            "/kept/put_median_s",
            "/kept/fetch_median_s",
            "/kept/steps_median_s",
            "/graph_data/median_s",
            "/graph_handles/median_s",
            "/handle_ops/0/on_handles_p50_us",
            "/handle_ops/0/rtt_plus_kernel_us",
        ] {
            positive(c, p);
        }
        assert_eq!(c["kept_equals_shipped"], Value::Bool(true));
    }
    positive(&v, "/resident/small/add_4x4_on_handles_kept/p50_us");
    positive(&v, "/resident/small/add_4x4_shipped/p50_us");
    let targets = v["targets"].as_array().expect("targets");
    assert!(targets.len() >= 9, "{targets:?}");
    assert!(
        targets.iter().any(|t| t["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kept chain / local"))),
        "{targets:?}"
    );
}
