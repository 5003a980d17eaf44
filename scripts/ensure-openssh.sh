#!/bin/sh
# Makes sure the OpenSSH client and server are available for tests/port_ssh.rs and
# `scripts/demo.sh --ssh`: installs them with apt-get when missing (as root), and creates sshd's
# privilege-separation directory, which a root sshd needs even for a throwaway instance. Exits
# non-zero with one line saying why when it cannot.
set -eu
say() { printf 'ensure-openssh: %s\n' "$*" >&2; }
if ! command -v ssh >/dev/null 2>&1 || ! command -v scp >/dev/null 2>&1 || [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "ssh/scp/sshd are missing and cannot be installed here (needs root and apt-get); install openssh-client and openssh-server"
    exit 1
  fi
  say "installing openssh-client and openssh-server with apt-get (a throwaway sshd on 127.0.0.1 is the SSH target)"
  log=$(mktemp)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client openssh-server >"$log" 2>&1; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client openssh-server; } >"$log" 2>&1; then
      tail -n 5 "$log" >&2
      rm -f "$log"
      say "apt-get could not install openssh-client/openssh-server: is the package mirror reachable?"
      exit 1
    fi
  fi
  rm -f "$log"
fi
if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
  mkdir -p /run/sshd
  chmod 0755 /run/sshd
fi
say "ok"
