#!/usr/bin/env bash
# Rate limits across a fleet: three `sluice serve` sharing a Redis in front of a strict
# provider (`sluice mock --tokens-per-minute`), even and skewed load, one instance killed
# midway; measured from the provider's side. See limits_fleet.py. Installs redis-server from
# apt when it is missing. Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/need.sh
need redis-server redis-server
cargo build --release --locked -p sluice
exec python3 bench/limits_fleet.py --sluice target/release/sluice "$@"
