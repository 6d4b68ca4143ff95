#!/usr/bin/env bash
# Fuzzes one target (docs/fuzzing.md): `fuzz/run.sh TARGET [RUNS] [libFuzzer flags...]`.
# RUNS executions (default 10 million), at the lowest priority, one job,
# without a sanitizer (ASan makes these targets 8 times slower; run with
# SANITIZER=address for its checks, built in fuzz/target, the other build
# in fuzz/target/none),
# debug assertions and overflow checks on, every single allocation over
# 64 MiB refused (fuzz/src/lib.rs). New inputs go to fuzz/corpus/TARGET,
# crashes to fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
target=$1
runs=${2:-10000000}
shift $(($# < 2 ? $# : 2))
sanitizer=${SANITIZER:-none}
features=()
case $target in
    frame | header | npy) features=(--no-default-features) ;;
esac
dir=()
if [ "$sanitizer" = none ]; then
    dir=(--target-dir target/none)
else
    # cargo-fuzz passes -Zsanitizer=...: a nightly flag, which a stable
    # rustc accepts with this (its rust-std ships the sanitizer runtimes).
    export RUSTC_BOOTSTRAP=1
fi
exec nice -n 19 cargo fuzz run --sanitizer "$sanitizer" "${dir[@]}" "${features[@]}" "$target" -- \
    -runs="$runs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
