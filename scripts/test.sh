#!/usr/bin/env bash
# The project's test command (README, .ci/run). Needs only the Rust toolchain, Python 3 and
# apt: it installs what else it needs (redis-server, python3-venv) and starts nothing it does
# not stop.
#
# Every suite runs, whatever an earlier one did, and the run ends with one line per suite
# (passed, FAILED, or not run and why); the exit status is 1 when any failed or could not run.
set -uo pipefail
cd "$(dirname "$0")/.."

summary=()
status=0
step() { printf '\n== %s\n' "$*"; }

# suite NAME COMMAND...: runs it, notes the outcome.
suite() {
  local name="$1"
  shift
  step "$name"
  if "$@"; then
    summary+=("passed    $name")
  else
    summary+=("FAILED    $name")
    status=1
  fi
}

not_run() {
  summary+=("not run   $1 ($2)")
  status=1
}

suite "cargo fmt --check" cargo fmt --all -- --check
suite "cargo clippy (warnings are errors)" cargo clippy --workspace --all-targets --locked -- -D warnings

# The tests of shared state start their own redis-server on a free port (sluice-testkit's
# harness) and stop it; the machine needs the binary. apt is kept from starting the system's
# Redis service (policy-rc.d): this script starts nothing it does not stop.
install_redis() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && made_policy=1
  fi
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server >/dev/null; } || rc=$?
  [ "$made_policy" = 1 ] && $sudo rm -f "$policy"
  return "$rc"
}
if ! command -v redis-server >/dev/null 2>&1; then
  step "installing redis-server (apt), for the shared-state tests"
  install_redis || echo "redis-server could not be installed: the tests that need it will fail and say so"
fi

# --no-fail-fast: a failing test binary does not hide the ones after it; cargo lists every
# failed target at the end.
rust_log=$(mktemp)
trap 'rm -f "$rust_log"' EXIT
rust_passed=0
step "cargo test (every crate's unit, integration and generated-input tests)"
if cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$rust_log"; then
  rust_passed=1
  summary+=("passed    cargo test ($(grep -c '^test result: ok' "$rust_log") test binaries)")
else
  failed_targets=$(grep -oE '`-p [^`]+`' "$rust_log" | tr -d '`' | paste -sd ',' - | sed 's/,/, /g')
  summary+=("FAILED    cargo test: ${failed_targets:-see the output above}")
  # The failing tests by name, so the summary alone (the tail of a CI log) says which.
  while IFS= read -r line; do summary+=("          $line"); done \
    < <(grep -E '^test .* \.\.\. FAILED$' "$rust_log" | head -20)
  status=1
fi

step "SDK tests (pytest): openai against the gateway; openai and anthropic through strict replay"
venv=target/pyenv
venv_ready() {
  [ -x "$venv/bin/python" ] && return 0
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 ships venv separately.
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
    python3 -m venv "$venv"
  fi
}
if ! venv_ready; then
  not_run "SDK tests (pytest)" "no Python venv: install python3-venv"
elif ! "$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt; then
  not_run "SDK tests (pytest)" "pip could not install tests/python/requirements.txt"
# The integration tests built target/debug/sluice (with the features the test build
# unifies); building it again with `cargo build` would compile the crates a second time.
elif [ "$rust_passed" != 1 ] && ! cargo build --locked -p sluice; then
  not_run "SDK tests (pytest)" "the sluice binary did not build"
else
  # The binary the Rust tests built is the one these run against.
  py_log=$(mktemp)
  trap 'rm -f "$rust_log" "$py_log"' EXIT
  if SLUICE_BIN="$PWD/target/debug/sluice" "$venv/bin/python" -m pytest -q tests/python 2>&1 | tee "$py_log"; then
    summary+=("passed    SDK tests (pytest): $(tail -1 "$py_log")")
  else
    summary+=("FAILED    SDK tests (pytest): $(tail -1 "$py_log")")
    while IFS= read -r line; do summary+=("          ${line:0:300}"); done \
      < <(grep -E '^(FAILED|ERROR) ' "$py_log" | head -20)
    status=1
  fi
fi

# The KV-event decoder (network bytes from engines) under libFuzzer for a bounded time
# (fuzz/fuzz_targets/kv_events.rs). No sanitizer, so stable Rust builds it; cargo-fuzz is
# installed when missing. The seeds are copied: what libFuzzer adds stays out of the tree.
fuzz_seconds=${SLUICE_FUZZ_SECONDS:-60}
step "fuzz smoke: the KV-event decoder, ${fuzz_seconds} s of libFuzzer"
if ! command -v cargo-fuzz >/dev/null 2>&1 && ! cargo install --locked cargo-fuzz --version 0.13.2; then
  not_run "fuzz smoke" "cargo-fuzz could not be installed"
else
  corpus=$(mktemp -d)
  cp fuzz/corpus/kv_events/* "$corpus"/
  if (cd fuzz && cargo fuzz run --sanitizer none kv_events "$corpus" -- \
        -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -print_final_stats=1); then
    summary+=("passed    fuzz smoke (${fuzz_seconds} s, no crash)")
  else
    summary+=("FAILED    fuzz smoke: the crashing input is under fuzz/artifacts/kv_events")
    status=1
  fi
  rm -rf "$corpus"
fi

printf '\n== summary\n'
printf '%s\n' "${summary[@]}"
exit "$status"
