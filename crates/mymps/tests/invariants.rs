//! The invariants of `docs/ARCHITECTURE.md` that a machine can check, read
//! off the dependency graph (`cargo tree`, offline): the core and every
//! client-side crate build without libtorch, and the core knows no
//! concrete transport.

use std::collections::BTreeSet;
use std::process::Command;

/// The names of every crate `args` (a `cargo tree` selection) depends on
/// through normal (not dev, not build) edges.
fn dependencies(args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .args(["--format", "{p}"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

const TORCH: &[&str] = &["tch", "torch-sys", "mymps-backend-tch", "mymps-ops"];

fn assert_none(what: &str, deps: &BTreeSet<String>, banned: &[&str]) {
    let found: Vec<&&str> = banned.iter().filter(|b| deps.contains(**b)).collect();
    assert!(found.is_empty(), "{what} depends on {found:?}");
}

#[test]
fn the_core_knows_nothing_of_tch_nor_of_any_transport() {
    let deps = dependencies(&["-p", "mymps-core", "--all-features"]);
    assert!(deps.contains("mymps-core"), "{deps:?}");
    assert_none("mymps-core", &deps, TORCH);
    assert_none(
        "mymps-core",
        &deps,
        &[
            "mymps-transport-tcp",
            "mymps-transport-quic",
            "mymps-transport-zmq",
            "mymps-transport-http",
            "quinn",
            "zmq",
            "hyper",
            "rustls",
        ],
    );
}

#[test]
fn clients_and_transports_build_without_libtorch() {
    for krate in [
        "mymps-transport-tcp",
        "mymps-transport-quic",
        "mymps-transport-zmq",
        "mymps-transport-http",
        "mymps-cluster",
        "mymps-python",
    ] {
        let deps = dependencies(&["-p", krate]);
        assert!(deps.contains(krate), "{krate}: {deps:?}");
        assert_none(krate, &deps, TORCH);
    }
    // The facade as a client library: every client feature, no `server`.
    let deps = dependencies(&[
        "-p",
        "mymps",
        "--no-default-features",
        "--features",
        "tcp,quic,zmq,cluster",
    ]);
    assert_none("mymps without `server`", &deps, TORCH);
    // And the server does link it (the check above can fail).
    let deps = dependencies(&["-p", "mymps"]);
    assert!(deps.contains("tch"), "the server build links tch");
}

#[test]
fn transports_know_nothing_of_each_other() {
    let transports = [
        "mymps-transport-tcp",
        "mymps-transport-quic",
        "mymps-transport-zmq",
        "mymps-transport-http",
    ];
    for t in transports {
        let deps = dependencies(&["-p", t]);
        let others: Vec<&str> = transports.iter().copied().filter(|o| *o != t).collect();
        assert_none(t, &deps, &others);
    }
}
