#!/usr/bin/env bash
# Installs what the project needs, idempotently: the Python virtualenv with
# the torch wheel (libtorch) and the test dependencies, the .libtorch link
# that cargo builds against, the Rust build with its plugins, and the Python
# client wheel in .venv.
#
#   scripts/setup.sh            # debug build (tests)
#   scripts/setup.sh --release  # release build (serving)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1mmymps setup:\033[0m %s\n' "$*" >&2; }

# 0. System packages: headless Chromium renders the HTTP dashboard in its
#    test (tests/python/test_http_dashboard.py). Debian's `chromium`.
as_root=()
[ "$(id -u)" -ne 0 ] && as_root=(sudo)
if command -v apt-get >/dev/null 2>&1 && ! dpkg -s chromium >/dev/null 2>&1; then
    say "installing chromium (apt-get; for the dashboard test)"
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium >/dev/null
fi
# 0b. A C++ compiler: the `zmq` crate builds libzmq from the source it ships
#    (no libzmq package needed). Debian's machines usually have one.
if ! command -v c++ >/dev/null 2>&1; then
    say "installing a C++ compiler (g++) to build libzmq"
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq g++ >/dev/null
fi

# 1. Python virtualenv with torch 2.11.0 and the test dependencies.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.mymps-requirements
if ! cmp -s scripts/requirements-dev.txt "$stamp" 2>/dev/null \
   || ! .venv/bin/python -c "import torch, numpy, ml_dtypes, pytest, transformers, zmq, msgpack; assert torch.__version__.split('+')[0] == '2.11.0'" 2>/dev/null; then
    say "installing torch 2.11.0 and test dependencies into .venv (first time: a few minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r scripts/requirements-dev.txt
    cp scripts/requirements-dev.txt "$stamp"
fi

# 2. .libtorch -> the wheel's torch/ folder (include/ and lib/), which
#    .cargo/config.toml gives to the build as LIBTORCH.
torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
if [ "$(readlink .libtorch 2>/dev/null)" != "$torch_dir" ]; then
    ln -sfn "$torch_dir" .libtorch
fi

# 3. The Rust build: the server, the libraries and the plugins. The model
#    loaders plugin goes where `mymps serve` looks for plugins by default,
#    the Python engine (mymps-bridge) into its python/ folder.
profile=() dir=debug
[ "${1:-}" = "--release" ] && profile=(--release) dir=release
say "building (cargo build ${profile[*]:-})"
cargo build "${profile[@]}" --workspace --quiet
mkdir -p "target/$dir/plugins/python"
cp -f "target/$dir/libmymps_models.so" "target/$dir/plugins/"
# The Python engine: loaded by the models plugin once it has found the
# interpreter (so not from plugins/ itself, whose files the server loads).
cp -f "target/$dir/libmymps_bridge.so" "target/$dir/plugins/python/"

# 4. The Python client wheel (abi3), installed into .venv.
say "building the Python client (scripts/build-python.sh)"
scripts/build-python.sh
