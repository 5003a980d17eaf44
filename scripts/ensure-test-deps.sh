#!/usr/bin/env bash
# Installs what the end-to-end tests need on a bare Debian/Ubuntu machine: the OpenSSH client and
# server (SSH over SSM tests) and the AWS CLI (into scripts/.venv). Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ssh >/dev/null || need_apt+=(openssh-client)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: cannot install ${need_apt[*]} (no apt-get); the tests that need them will fail" >&2
  fi
fi

if [ -x scripts/ensure-awscli.sh ]; then
  scripts/ensure-awscli.sh >/dev/null
fi
