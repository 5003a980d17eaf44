#!/usr/bin/env bash
# Runs every test: unit, property, golden-vector, simulator and end-to-end tests (the real AWS CLI,
# OpenSSH). Installs what it needs on a bare machine first. Usage: scripts/test.sh [cargo test args]
#
# The tests run in a private network namespace when the machine allows it (only a loopback
# interface exists there), so a test that would reach past 127.0.0.1 fails loudly instead.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

log "installing test prerequisites if missing (C compiler, OpenSSH, python3-venv, packaging tools)"
scripts/ensure-test-deps.sh --no-pypi

# The AWS CLI and Ansible come from PyPI (network and one core) while cargo builds (two cores).
log "installing the AWS CLI and Ansible from PyPI if missing, beside the build"
pypi_log=$(mktemp)
( scripts/ensure-awscli.sh >/dev/null && scripts/ensure-ansible.sh >/dev/null ) >"$pypi_log" 2>&1 &
pypi=$!

log "building (debug and the test binaries)"
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-run

log "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

if ! wait "$pypi"; then
  cat "$pypi_log" >&2
  log "installing the AWS CLI or Ansible from PyPI failed (see above)"
  exit 1
fi
grep -h 'installing' "$pypi_log" >&2 || true
rm -f "$pypi_log"

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
