#!/usr/bin/env bash
# Re-records the committed recordings under tests/recordings/ (see tests/recordings/README.md):
#   mock/       the project's request suite against an in-process `sluice mock`
#               (zero timing, prefix cache off), through the proxy in `record` mode;
#   providers/  each case of tests/fixtures/provider-shapes/cases.json, answered with its
#               hand-written file by a local fixture server, through the proxy in `record` mode.
# Files whose stable content (request, key, status, body or events; for the mock without
# ids and timestamps) did not change are left untouched, so a re-record only shows real
# changes in `git diff`. Needs nothing but the Rust toolchain; reaches no network.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only the two recording tests, one at a time (the replay tests read what they rewrite).
SLUICE_RERECORD=1 cargo test --locked -p sluice-proxy --test ci_recordings -- --test-threads=1 \
  committed_mock_recordings_match_a_live_mock provider_fixtures_rerecord_to_the_committed_entries
# The whole file without SLUICE_RERECORD: the result replays and is stable.
cargo test --locked -p sluice-proxy --test ci_recordings
git status --short -- tests/recordings
