#!/usr/bin/env bash
# Sets everything up, then runs every test: formatting and lints, the Rust
# tests (unit, protocol goldens, end to end against real servers), the
# Python client and op suites against a real server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "cargo test"
cargo test --workspace --quiet 2>&1

say "mymps-bench --quick (smoke run; docs/BENCHMARKS.md has the full one)"
cargo run -q -p mymps-bench -- --quick --json target/bench-smoke.json

if [ -d tests/python ]; then
    say "pytest"
    export MYMPS_BIN="$PWD/target/debug/mymps"
    set +e
    .venv/bin/python -m pytest tests/python -q -p no:cacheprovider
    rc=$?
    set -e
    # pytest's 5 means "no tests collected": that is a failure here too.
    exit $rc
fi
