#!/usr/bin/env bash
# Runs every test: unit, property, golden-vector, simulator and end-to-end tests (the real AWS CLI,
# OpenSSH). Installs what it needs on a bare machine first. Usage: scripts/test.sh [cargo test args]
#
# The tests run in a private network namespace when the machine allows it (only a loopback
# interface exists there), so a test that would reach past 127.0.0.1 fails loudly instead.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

log "installing test prerequisites if missing (C compiler, OpenSSH, python3-venv, AWS CLI, packaging tools)"
scripts/ensure-test-deps.sh

log "building (debug and the test binaries)"
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-run

log "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

run_tests() {
  cargo test --workspace --locked --offline "$@"
}

if [ "${SSM_PLUGIN_TEST_NO_NETNS:-}" != 1 ] && command -v unshare >/dev/null \
   && unshare -n true 2>/dev/null; then
  log "running the tests in a private network namespace (loopback only)"
  export -f run_tests
  unshare -n bash -c 'ip link set lo up && run_tests "$@"' _ "$@"
else
  log "running the tests (no private network namespace available here)"
  run_tests "$@"
fi
