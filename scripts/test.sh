#!/usr/bin/env bash
# The project's test command (README, .ci/run). Needs only the Rust toolchain, Python 3 and
# apt: it installs what else it needs and starts nothing it does not stop.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "SDK tests (pytest): openai against the gateway; openai and anthropic through strict replay"
venv=target/pyenv
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 ships venv separately.
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
    python3 -m venv "$venv"
  fi
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
cargo build --locked -p sluice
SLUICE_BIN="$PWD/target/debug/sluice" "$venv/bin/python" -m pytest -q tests/python
