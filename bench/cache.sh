#!/usr/bin/env bash
# Inference cache benchmark: the cost and throughput of a hit (embedded and Redis) against a
# pass-through request, Redis round trips per hit, and a mixed streaming workload with the
# cache on against off. See cache.py. Installs redis-server from apt when it is missing.
# Everything runs on 127.0.0.1 and stops by itself; results go to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/need.sh
need redis-server redis-server
cargo build --release --locked -p sluice
exec python3 bench/cache.py --sluice target/release/sluice "$@"
