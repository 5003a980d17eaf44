#!/usr/bin/env bash
# Installs what the tests need on a bare Debian/Ubuntu machine, saying what and why, and skipping
# whatever is already there:
#   apt:   a C compiler (ring builds C and assembly), the OpenSSH client and server (SSH over SSM
#          tests), python3 with venv (the AWS CLI's virtual environment)
#   PyPI:  the AWS CLI, into scripts/.venv (end-to-end tests); Ansible, boto3 and moto into
#          scripts/.venv-ansible (tests/e2e_ansible.rs, through scripts/ensure-ansible.sh)
#   apt:   dpkg-dev, rpm (rpmbuild), rpm2cpio, cpio (packaging/build.sh and tests/packaging.rs),
#          through scripts/ensure-packaging-tools.sh
# Fails with one line saying why when something cannot be installed (no root, no network).
# Usage: scripts/ensure-test-deps.sh [--no-packaging] [--no-openssh] [--no-ansible] [--no-pypi]
#   (--no-pypi: only the apt part; scripts/test.sh installs from PyPI while it builds)
#   (scripts/demo.sh passes all three: it needs OpenSSH only for --ssh, no packaging tools and
#   no Ansible)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'ensure-test-deps: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

packaging=1 openssh=1 ansible=1 pypi=1
for arg in "$@"; do
  case "$arg" in
    --no-packaging) packaging=0 ;;
    --no-openssh) openssh=0 ;;
    --no-ansible) ansible=0 ;;
    --no-pypi) pypi=0 ;;
    *) fail "unknown argument '$arg'" ;;
  esac
done

need_apt=() why=()
if ! command -v cc >/dev/null 2>&1; then
  need_apt+=(gcc libc6-dev); why+=("a C compiler (ring builds C code)")
fi
if [ "$openssh" = 1 ] && { ! command -v ssh >/dev/null 2>&1 || ! command -v scp >/dev/null 2>&1; }; then
  need_apt+=(openssh-client); why+=("ssh/scp (SSH over Session Manager tests)")
fi
if [ "$openssh" = 1 ] && [ ! -x /usr/sbin/sshd ]; then
  need_apt+=(openssh-server); why+=("sshd (SSH over Session Manager tests)")
fi
if ! command -v curl >/dev/null 2>&1; then
  need_apt+=(curl); why+=("curl (the SOCKS5 proxy test uses curl --socks5-hostname)")
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3 python3-venv); why+=("python3-venv (the AWS CLI is installed into scripts/.venv)")
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]} with apt-get, for: $(IFS=';'; echo "${why[*]}")"
  command -v apt-get >/dev/null 2>&1 ||
    fail "cannot install ${need_apt[*]}: no apt-get here; install them with your package manager"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      SUDO="sudo"
    elif command -v sudo >/dev/null 2>&1 && [ -t 0 ]; then
      SUDO="sudo" # asks for the password
    else
      fail "cannot install ${need_apt[*]}: needs root or sudo (run as root, or install them by hand)"
    fi
  fi
  log=$(mktemp)
  if ! $SUDO apt-get update -qq >"$log" 2>&1; then
    tail -n 5 "$log" >&2; rm -f "$log"
    fail "apt-get update failed: no network access to the Debian/Ubuntu package mirror?"
  fi
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >"$log" 2>&1; then
    tail -n 5 "$log" >&2; rm -f "$log"
    fail "apt-get install ${need_apt[*]} failed (see above)"
  fi
  rm -f "$log"
fi

if [ "$pypi" = 1 ]; then
  if [ ! -x scripts/.venv/bin/aws ]; then
    say "installing the AWS CLI from PyPI into scripts/.venv (end-to-end tests run the real CLI)"
  fi
  scripts/ensure-awscli.sh >/dev/null
  if [ "$ansible" = 1 ]; then
    scripts/ensure-ansible.sh >/dev/null # says what it installs: Ansible, boto3, moto
  fi
fi

if [ "$packaging" = 1 ]; then
  scripts/ensure-packaging-tools.sh
fi
