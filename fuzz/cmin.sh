#!/usr/bin/env bash
# Minimizes fuzz/corpus/TARGET (docs/fuzzing.md): `fuzz/cmin.sh TARGET [edges]`.
# Keeps the inputs that cover every feature (libFuzzer's -merge=1, what
# `cargo fuzz cmin` runs) or, with `edges`, every edge (-set_cover_merge=1
# -use_counters=0: far fewer files), and the crash-* inputs whatever they
# cover. Uses fuzz/run.sh's build (fuzz/target/none).
set -euo pipefail
cd "$(dirname "$0")"
target=$1
flags=(-merge=1)
if [ "${2:-}" = edges ]; then
    flags=(-set_cover_merge=1 -use_counters=0)
fi
bin=target/none/x86_64-unknown-linux-gnu/release/$target
if [ ! -x "$bin" ]; then
    echo "no $bin: build it first (fuzz/run.sh $target 1)" >&2
    exit 1
fi
new=$(mktemp -d)
nice -n 19 "$bin" "${flags[@]}" -rss_limit_mb=2048 -timeout=10 "$new" "corpus/$target"
find "corpus/$target" -name 'crash-*' -exec cp {} "$new" \;
rm -rf "corpus/$target"
mkdir "corpus/$target"
cp "$new"/* "corpus/$target"/
rm -rf "$new"
echo "corpus/$target: $(find "corpus/$target" -type f | wc -l) files, $(du -sh "corpus/$target" | cut -f1)"
