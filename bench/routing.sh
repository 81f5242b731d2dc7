#!/usr/bin/env bash
# Placement: round_robin, least_loaded and prefix_aware routing over four mock engines that
# publish their KV events, on one multi-turn workload; and the ideal (one engine, unbounded
# cache). See routing_placement.py. Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p sluice
exec python3 bench/routing_placement.py --sluice target/release/sluice "$@"
