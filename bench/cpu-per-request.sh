#!/usr/bin/env bash
# CPU per proxied request, nginx vs sluice, user and kernel apart. See cpu-per-request.py.
# Installs nginx from apt when it is missing. Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/need.sh
need nginx nginx-light
cargo build --release --locked -p sluice
exec python3 bench/cpu-per-request.py --sluice target/release/sluice "$@"
