#!/usr/bin/env bash
# Builds the `mymps` Python wheel (crates/mymps-python, abi3, CPython >= 3.9)
# with maturin into target/wheels/ and installs it into .venv.
# Idempotent; quiet on success (set VERBOSE=1 to see maturin and pip).
#   scripts/build-python.sh            release build (what users get)
#   PROFILE=dev scripts/build-python.sh   faster, unoptimised build
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
[ -x "$PY" ] || { echo "build-python.sh: $PY not found; run the project set-up first" >&2; exit 1; }

# maturin: .venv/bin/maturin, else on PATH, else next to the maturin
# package that .venv imports (a venv that shares another's site-packages).
MATURIN=${MATURIN:-}
if [ -z "$MATURIN" ]; then
    if [ -x .venv/bin/maturin ]; then
        MATURIN=.venv/bin/maturin
    elif command -v maturin >/dev/null 2>&1; then
        MATURIN=$(command -v maturin)
    else
        MATURIN=$("$PY" - <<'PYEOF' 2>/dev/null || true
import os, maturin
site = os.path.dirname(os.path.dirname(maturin.__file__))
prefix = os.path.normpath(os.path.join(site, "..", "..", ".."))
print(os.path.join(prefix, "bin", "maturin"))
PYEOF
)
    fi
fi
[ -n "$MATURIN" ] && [ -x "$MATURIN" ] || {
    echo "build-python.sh: maturin not found; install it: $PY -m pip install maturin" >&2
    exit 1
}

PROFILE=${PROFILE:-release}
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
run() {
    if [ "${VERBOSE:-0}" = 1 ]; then "$@"; else "$@" >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }; fi
}

# Only this build's wheel may be in target/wheels when pip picks it up.
rm -f target/wheels/mymps-*.whl
run "$MATURIN" build --profile "$PROFILE" -m crates/mymps-python/Cargo.toml \
    --interpreter "$PY" -o target/wheels
WHEEL=$(ls target/wheels/mymps-*.whl)
run "$PY" -m pip install --force-reinstall --no-deps --disable-pip-version-check "$WHEEL"
