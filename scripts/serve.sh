#!/usr/bin/env bash
# Sets everything up (first run: installs torch into .venv and builds), then
# starts the server: tcp://127.0.0.1:5555, device auto (MPS, CUDA, else CPU).
# Arguments go to `mymps serve` (e.g. --listen tcp://0.0.0.0:5555 --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --release
exec target/release/mymps serve "$@"
