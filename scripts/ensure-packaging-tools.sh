#!/usr/bin/env bash
# Makes sure the packaging tools are installed, for packaging/build.sh and tests/packaging.rs,
# all from the distribution's packages with apt-get (seconds; nothing is compiled):
#   dpkg-deb (dpkg), which builds the .deb; dpkg-shlibdeps (dpkg-dev), which computes its Depends;
#   rpmbuild (rpm), which builds the .rpm; rpm, rpm2cpio and cpio, with which the test reads and
#   unpacks the .rpm.
# Skips everything already present, so it costs nothing the second time.
# Exits non-zero with one line saying why when something cannot be installed.
# Usage: scripts/ensure-packaging-tools.sh [--build-only]  (only what packaging/build.sh runs)
set -euo pipefail
build_only=0
[ "${1:-}" = --build-only ] && build_only=1

say() { printf 'ensure-packaging-tools: %s\n' "$*" >&2; }

need_apt=() # apt packages
need() {    # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  case " ${need_apt[*]} " in *" $2 "*) ;; *) need_apt+=("$2") ;; esac
}
need dpkg-deb dpkg
need dpkg-shlibdeps dpkg-dev
need rpmbuild rpm
if [ "$build_only" = 0 ]; then
  need rpm rpm
  need rpm2cpio rpm2cpio
  need cpio cpio
fi
[ ${#need_apt[@]} -gt 0 ] || exit 0

say "installing ${need_apt[*]} with apt-get (to build the .deb and .rpm, and to read and unpack them in tests/packaging.rs)"
if ! command -v apt-get >/dev/null 2>&1; then
  say "cannot install ${need_apt[*]}: no apt-get on this machine; install them by hand"
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo"
  else
    say "cannot install ${need_apt[*]}: not root and no password-less sudo; install them by hand"
    exit 1
  fi
fi
log=$(mktemp)
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"; } >"$log" 2>&1; then
  tail -n 5 "$log" >&2
  rm -f "$log"
  say "cannot install ${need_apt[*]} with apt-get (see above): is the Debian mirror reachable?"
  exit 1
fi
rm -f "$log"
