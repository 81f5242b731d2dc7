#!/usr/bin/env bash
# Speed of `sluice load` against oha, side by side in one run: the same zero-timing
# `sluice mock`, the same number of connections, non-streaming requests of the same size,
# alternated for a few repeats. Prints req/s of each and the ratio.
#
# Usage: bench/generator-speed.sh [CONNECTIONS=64] [SECONDS=10] [REPEATS=3]
# oha comes from crates.io (`cargo install oha --locked`) and is installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS="${1:-64}"; SECONDS_EACH="${2:-10}"; REPEATS="${3:-3}"
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --locked -p sluice
BIN="$PWD/target/release/sluice"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$BIN" mock --listen "127.0.0.1:$PORT" --zero-timing >/dev/null 2>&1 &
MOCK=$!
trap 'kill $MOCK 2>/dev/null; wait $MOCK 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
WORDS=$(python3 -c 'print(" ".join(["hello"]*32))')
BODY="{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"$WORDS\"}],\"max_tokens\":16,\"ignore_eos\":true}"
out=$(mktemp -d)
for rep in $(seq "$REPEATS"); do
  oha -z "${SECONDS_EACH}s" -c "$CONNECTIONS" --no-tui -m POST -H 'content-type: application/json' \
      -d "$BODY" --output-format json "http://127.0.0.1:$PORT/v1/chat/completions" > "$out/oha-$rep.json"
  "$BIN" load --url "http://127.0.0.1:$PORT/v1" --model m --concurrency "$CONNECTIONS" \
      --duration "${SECONDS_EACH}s" --warmup 1s --no-stream --input-tokens 32 --output-tokens 16 \
      --json "$out/sluice-$rep.json" >/dev/null 2>&1 || true
done
python3 - "$out" "$REPEATS" "$CONNECTIONS" <<'PY'
import json, statistics, sys
out, reps, conns = sys.argv[1], int(sys.argv[2]), sys.argv[3]
oha = [json.load(open(f"{out}/oha-{r}.json"))["summary"]["requestsPerSec"] for r in range(1, reps + 1)]
sl = [json.load(open(f"{out}/sluice-{r}.json"))["runs"][0]["summary"]["throughput"]["requests_per_s"] for r in range(1, reps + 1)]
print(f"connections {conns}, {reps} alternating repeats")
print("oha          req/s: " + ", ".join(f"{x:.0f}" for x in oha) + f"  (median {statistics.median(oha):.0f})")
print("sluice load  req/s: " + ", ".join(f"{x:.0f}" for x in sl) + f"  (median {statistics.median(sl):.0f})")
print(f"sluice load / oha: {statistics.median(sl) / statistics.median(oha):.2f}")
PY
rm -rf "$out"
