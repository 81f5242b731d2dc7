#!/usr/bin/env bash
# User-space instructions per proxied request, sluice vs nginx, counted by callgrind.
#
# Instruction counts do not depend on what else the machine is doing, so this is the
# comparison to use on a noisy shared machine while working on the hot path (CPU time and
# latency then come from bench/cpu-per-request.sh and bench/overhead.sh). Each proxy runs
# under valgrind with one worker in front of a zero-timing mock; after a warm-up that opens
# the connections, the counters are zeroed, N requests are sent at a low fixed rate, and the
# counters are dumped.
#
# Nine rows: nginx; sluice as the overhead benchmark runs it (no auth, no audit, no access
# log); sluice with API keys (`auth.mode = "keys"`) and the audit log on (a file, content
# `snippet`, scrubbed) — the cost of knowing who calls and writing it down; sluice with
# OpenTelemetry traces on, every request sampled, exported to a collector that accepts
# everything (a few lines of Python, outside the measurement); and sluice answering every
# request from its cache (one question asked over and over; the warm-up stores it, so every
# measured request is a hit from memory); and sluice routing by prefix (`prefix_aware` over
# two endpoints, with the mock's tokenizer and with Qwen2.5's, then Qwen2.5's on multi-turn
# conversations with and without its cache of earlier turns). Every thread of the process
# counts, the audit writer's and the span exporter's included.
#
# Usage: bench/instructions-per-request.sh [REQUESTS=2000]
# Needs valgrind (apt) and nginx (apt nginx-light); installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-2000}
RATE=200

. bench/need.sh
need valgrind valgrind
need nginx nginx-light
cargo build --release --locked -p sluice
BIN=$PWD/target/release/sluice
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return; sleep 0.2; done; echo "no answer from $1" >&2; exit 1; }
load() { # url rate requests [extra sluice load flags]
  "$BIN" load --url "$1" --model m --rate "$2" --requests "$3" --no-stream "${@:4}" \
    --input-tokens 32 --output-tokens 16 --json "$WORK/load.json" >/dev/null 2>&1 || true
  python3 -c "import json,sys; s=json.load(open('$WORK/load.json'))['runs'][0]['summary']['requests']; sys.exit(0 if s['failed']==0 else 1)" \
    || { echo "requests failed during the measurement" >&2; exit 1; }
}
total_ir() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }

MOCK=$(free_port)
"$BIN" mock --listen "127.0.0.1:$MOCK" --zero-timing >/dev/null 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK/v1/models"

# RATE and N (default: REQUESTS) may be set per row: a row whose requests cost millions of
# instructions needs a rate valgrind keeps up with. The warm-up sends other prompts (seed 1)
# than the measurement, so that nothing a row caches is reused from the warm-up.
measure() { # name port pid url-for-readiness [extra sluice load flags]
  local name=$1 port=$2 pid=$3
  wait_http "$4"
  load "http://127.0.0.1:$port/v1" "$(( RATE < 50 ? RATE : 50 ))" 100 --seed 1 "${@:5}" # warm-up: connections open, pools filled
  callgrind_control -z "$pid" >/dev/null 2>&1
  load "http://127.0.0.1:$port/v1" "$RATE" "${N:-$REQUESTS}" "${@:5}"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  local file
  file=$(ls -t "$WORK/$name".cg.* | head -1)
  local ir
  ir=$(total_ir "$file")
  echo "$name $ir ${N:-$REQUESTS}"
}

GW=$(free_port)
printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\n[models.m]\n[[models.m.endpoints]]\nurl = "http://127.0.0.1:%s/v1"\n' "$GW" "$MOCK" >"$WORK/gw.toml"
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/sluice.cg" "$BIN" serve --config "$WORK/gw.toml" >/dev/null 2>&1 & PIDS+=($!)
SLUICE_RESULT=$(measure sluice "$GW" "$!" "http://127.0.0.1:$GW/health")

# The same gateway with keys and the audit log.
GWA=$(free_port)
printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\ndata_dir = "%s/data"\n[auth]\nmode = "keys"\n[audit]\nsink = "file"\npath = "%s/audit.jsonl"\ncontent = "snippet"\n[models.m]\n[[models.m.endpoints]]\nurl = "http://127.0.0.1:%s/v1"\n' "$GWA" "$WORK" "$WORK" "$MOCK" >"$WORK/gwa.toml"
KEY=$("$BIN" keys --config "$WORK/gwa.toml" create --tenant bench --scopes chat:write --name bench | tail -1)
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/sluice-auth-audit.cg" "$BIN" serve --config "$WORK/gwa.toml" >/dev/null 2>&1 & PIDS+=($!)
AUTH_RESULT=$(measure sluice-auth-audit "$GWA" "$!" "http://127.0.0.1:$GWA/health" --api-key "$KEY")
AUDITED=$(wc -l <"$WORK/audit.jsonl")
[ "$AUDITED" -ge "$REQUESTS" ] || { echo "the audit log has $AUDITED lines for $REQUESTS requests" >&2; exit 1; }

# The same gateway with traces: every request sampled, spans posted to a sink.
OTLP=$(free_port)
python3 - "$OTLP" >/dev/null 2>&1 <<'PY' & PIDS+=($!)
import http.server, sys
class Collector(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Collector).serve_forever()
PY
GWT=$(free_port)
printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\n[otel]\nendpoint = "http://127.0.0.1:%s"\n[models.m]\n[[models.m.endpoints]]\nurl = "http://127.0.0.1:%s/v1"\n' "$GWT" "$OTLP" "$MOCK" >"$WORK/gwt.toml"
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/sluice-otel.cg" "$BIN" serve --config "$WORK/gwt.toml" >/dev/null 2>&1 & PIDS+=($!)
OTEL_RESULT=$(measure sluice-otel "$GWT" "$!" "http://127.0.0.1:$GWT/health")
EXPORTED=$(curl -s "http://127.0.0.1:$GWT/metrics" | awk '/^sluice_otel_spans_exported_total/ {print int($2)}')
[ "${EXPORTED:-0}" -ge "$((REQUESTS * 6))" ] || { echo "only ${EXPORTED:-0} spans exported for $REQUESTS requests" >&2; exit 1; }

# The same gateway with the cache on, asked one question over and over: all hits.
GWC=$(free_port)
printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\ndata_dir = "%s/cache-data"\n[models.m]\n[[models.m.endpoints]]\nurl = "http://127.0.0.1:%s/v1"\n[models.m.cache]\nmode = "on"\n' "$GWC" "$WORK" "$MOCK" >"$WORK/gwc.toml"
python3 -c 'import json; print(json.dumps({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": " ".join(["word"] * 32)}]}))' >"$WORK/one-question.jsonl"
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/sluice-cache-hit.cg" "$BIN" serve --config "$WORK/gwc.toml" >/dev/null 2>&1 & PIDS+=($!)
CACHE_RESULT=$(measure sluice-cache-hit "$GWC" "$!" "http://127.0.0.1:$GWC/health" --dataset "$WORK/one-question.jsonl")
HITS=$(curl -s "http://127.0.0.1:$GWC/metrics" | awk '/^sluice_cache_lookups_total\{outcome="hit"\}/ {print int($2)}')
[ "${HITS:-0}" -ge "$REQUESTS" ] || { echo "only ${HITS:-0} cache hits for $REQUESTS requests" >&2; exit 1; }

# The same gateway routing by prefix over two endpoints (the one mock under two names):
# every request's prompt tokenized as the engine would, its blocks named and matched
# against the index, and the routed prefix recorded. Once with the mock's own tokenizer,
# once with Qwen2.5's (the vendored test fixture: a real BPE vocabulary and chat template).
mkdir -p "$WORK/qwen"
gunzip -c tests/fixtures/tokenizers/qwen2.5/tokenizer.json.gz >"$WORK/qwen/tokenizer.json"
cp tests/fixtures/tokenizers/qwen2.5/tokenizer_config.json "$WORK/qwen/"
prefix_aware() { # name tokenizer tokenizer_cache_bytes [extra sluice load flags]
  local port
  port=$(free_port)
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\n[models.m.routing]\npolicy = "prefix_aware"\ntokenizer = "%s"\ntokenizer_cache_bytes = %s\n[[models.m.endpoints]]\nname = "a"\nurl = "http://127.0.0.1:%s/v1"\n[[models.m.endpoints]]\nname = "b"\nurl = "http://127.0.0.1:%s/v1"\n' "$port" "$2" "$3" "$MOCK" "$MOCK" >"$WORK/$1.toml"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/$1.cg" "$BIN" serve --config "$WORK/$1.toml" >/dev/null 2>&1 & PIDS+=($!)
  measure "$1" "$port" "$!" "http://127.0.0.1:$port/health" "${@:4}"
  local routed
  routed=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^sluice_route_decisions_total/ {n += $2} END {print int(n)}')
  [ "${routed:-0}" -ge "${N:-$REQUESTS}" ] || { echo "$1: only ${routed:-0} routing decisions for ${N:-$REQUESTS} requests" >&2; exit 1; }
}
PA_MOCK_RESULT=$(prefix_aware sluice-prefix-aware-mock mock 0)
PA_QWEN_RESULT=$(prefix_aware sluice-prefix-aware-qwen "$WORK/qwen" 0)
# Conversations of 8 turns under a 512-token system prompt, each turn resending its history
# (about 1 100 tokens on average): Qwen's tokenizer without and with its cache of pieces.
# Tokenized whole, such a prompt costs millions of instructions: 3 requests a second under
# valgrind, 300 of them.
TURNS=(--workload multi-turn --turns 8 --system-prompt-tokens 512)
PA_TURNS_WHOLE_RESULT=$(RATE=3 N=300 prefix_aware sluice-prefix-aware-qwen-turns-whole "$WORK/qwen" 0 "${TURNS[@]}")
PA_TURNS_CACHED_RESULT=$(RATE=3 N=300 prefix_aware sluice-prefix-aware-qwen-turns-cached "$WORK/qwen" 67108864 "${TURNS[@]}")

NG=$(free_port)
mkdir -p "$WORK/tmp"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp;
  proxy_temp_path $WORK/tmp;
  upstream mock { server 127.0.0.1:$MOCK; keepalive 512; }
  server {
    listen 127.0.0.1:$NG backlog=4096;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
valgrind --tool=callgrind --callgrind-out-file="$WORK/nginx.cg" "$NGINX" -c "$WORK/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
NGINX_RESULT=$(measure nginx "$NG" "$!" "http://127.0.0.1:$NG/v1/models")

python3 - "$REQUESTS" "$SLUICE_RESULT" "$AUTH_RESULT" "$OTEL_RESULT" "$CACHE_RESULT" \
  "$PA_MOCK_RESULT" "$PA_QWEN_RESULT" "$PA_TURNS_WHOLE_RESULT" "$PA_TURNS_CACHED_RESULT" \
  "$NGINX_RESULT" <<'EOF'
import sys
n = int(sys.argv[1])
rows = {name: (int(ir), int(count)) for name, ir, count in (r.split() for r in sys.argv[2:])}
per = {k: ir / count for k, (ir, count) in rows.items()}
print(f"user-space instructions per proxied request ({n} requests a row unless said, one worker each):")
print("| proxy | instructions per request |")
print("|---|---|")
for k in ("nginx", "sluice", "sluice-auth-audit", "sluice-otel", "sluice-cache-hit",
          "sluice-prefix-aware-mock", "sluice-prefix-aware-qwen",
          "sluice-prefix-aware-qwen-turns-whole", "sluice-prefix-aware-qwen-turns-cached"):
    count = rows[k][1]
    note = f" ({count} requests)" if count != n else ""
    print(f"| {k} | {per[k]:,.0f}{note} |")
print(f"sluice ÷ nginx: {per['sluice'] / per['nginx']:.2f}")
print(f"sluice with keys and audit ÷ nginx: {per['sluice-auth-audit'] / per['nginx']:.2f}"
      f" (keys and audit add {per['sluice-auth-audit'] - per['sluice']:,.0f} per request)")
print(f"sluice with traces ÷ nginx: {per['sluice-otel'] / per['nginx']:.2f}"
      f" (traces add {per['sluice-otel'] - per['sluice']:,.0f} per request)")
print(f"a cache hit ÷ a pass-through request (plain sluice): {per['sluice-cache-hit'] / per['sluice']:.2f}")
for k, what in (("sluice-prefix-aware-mock", "the mock's tokenizer"), ("sluice-prefix-aware-qwen", "Qwen2.5's")):
    print(f"prefix_aware routing with {what} adds {per[k] - per['sluice']:,.0f} per request"
          f" ({per[k] / per['sluice']:.2f}× plain sluice)")
whole, cached = per["sluice-prefix-aware-qwen-turns-whole"], per["sluice-prefix-aware-qwen-turns-cached"]
print(f"8-turn conversations with Qwen2.5's tokenizer: earlier turns kept {cached:,.0f}"
      f" against every prompt tokenized whole {whole:,.0f} ({whole / cached:.1f}× fewer)")
EOF
