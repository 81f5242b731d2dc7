#!/usr/bin/env bash
# Gateway overhead benchmark: direct vs nginx vs sluice, same load, one run. See overhead.py.
# Installs nginx from apt when it is missing. Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/need.sh
need nginx nginx-light
cargo build --release --locked -p sluice
exec python3 bench/overhead.py --sluice target/release/sluice "$@"
