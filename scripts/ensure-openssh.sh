#!/bin/sh
# Makes sure the OpenSSH client and server are available for tests/port_ssh.rs: installs them
# with apt-get when missing (as root), and creates sshd's privilege-separation directory, which
# a root sshd needs even for a throwaway instance. Exits non-zero, saying why, when it cannot.
set -eu
if ! command -v ssh >/dev/null 2>&1 || ! command -v scp >/dev/null 2>&1 || [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-openssh: ssh/scp/sshd are missing; install openssh-client and openssh-server" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-client openssh-server >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-client openssh-server >&2; }
fi
if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
  mkdir -p /run/sshd
  chmod 0755 /run/sshd
fi
echo "ensure-openssh: ok" >&2
