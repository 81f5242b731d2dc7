#!/usr/bin/env bash
# Replay overhead benchmark: the same load straight at a zero-timing `sluice mock` and through
# `sluice proxy --mode replay` over recordings of it, interleaved, one run. See
# replay_overhead.py. Everything runs on 127.0.0.1 and stops by itself; results go to
# bench/results/.
#
# Usage: bench/replay-overhead.sh [--rates 500,1000,2000] [--duration 5] [--repeats 3]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p sluice
exec python3 bench/replay_overhead.py --sluice target/release/sluice "$@"
