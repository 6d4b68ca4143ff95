//! Runs `mymps-bench --soak 5s` end to end against a real `mymps serve`
//! and checks its report: every kind of work ran, nothing was lost, bad
//! input got its typed errors, the server was sampled and left at rest.
//! Performance is not asserted.

use std::process::Command;

use serde_json::Value;

fn num(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v:#}"))
}

#[test]
fn a_short_soak_passes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mymps-bench"))
        .args([
            "--soak",
            "5s",
            "--soak-clients",
            "3",
            "--soak-interval",
            "0.5s",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run mymps-bench --soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A line per interval, then the verdict.
    assert!(
        stdout.lines().filter(|l| l.starts_with('[')).count() >= 5,
        "{stdout}"
    );
    assert!(stdout.contains("soak: PASS"), "{stdout}");

    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["passed"], Value::Bool(true), "{v:#}");
    assert_eq!(num(&v, "/requests/lost"), 0.0);
    assert_eq!(num(&v, "/requests/unexpected"), 0.0);
    assert!(num(&v, "/requests/total") > 50.0, "{v:#}");
    let kinds = v["requests"]["by_kind"].as_object().expect("by_kind");
    for k in [
        "small",
        "matmul",
        "payload",
        "resident",
        "bad",
        "reconnect",
        "model",
    ] {
        let sent = kinds
            .get(k)
            .and_then(|c| c["sent"].as_u64())
            .unwrap_or_else(|| panic!("kind {k} missing in {kinds:?}"));
        assert!(sent > 0, "kind {k} never ran: {kinds:?}");
    }
    assert!(kinds["small"]["ok"].as_u64().unwrap() > 0);
    assert_eq!(
        kinds["bad"]["sent"], kinds["bad"]["expected_errors"],
        "every bad request gets its typed error: {kinds:?}"
    );
    // Only the typed codes of bad input.
    let codes = v["requests"]["errors_by_code"].as_object().unwrap();
    for c in codes.keys() {
        assert!(
            [
                "UnknownOp",
                "Backend",
                "PayloadTooLarge",
                "UnknownTensor",
                "ModelNotFound"
            ]
            .contains(&c.as_str()),
            "unexpected error code {c}: {codes:?}"
        );
    }
    // The server was sampled from /proc.
    assert!(num(&v, "/server/start/rss_mib") > 1.0);
    assert!(num(&v, "/server/end/fds") > 0.0);
    assert!(num(&v, "/server/end/threads") > 0.0);
    assert!(v["samples"].as_array().unwrap().len() >= 5);
    assert!(num(&v, "/latency/p50_us") > 0.0);
    assert_eq!(num(&v, "/server/at_rest/resident_tensors"), 0.0);
    assert_eq!(num(&v, "/server/at_rest/memory_budget_used_bytes"), 0.0);
    assert!(!v["growth"].as_array().unwrap().is_empty());
}

#[test]
fn bad_durations_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_mymps-bench"))
        .args(["--soak", "5 parsecs"])
        .output()
        .expect("run mymps-bench --soak");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad duration"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
