#!/usr/bin/env bash
# Makes sure the packaging tools are installed, for packaging/build.sh and tests/packaging.rs:
#   cargo-deb and cargo-generate-rpm (from crates.io, with `cargo install`), which build the .deb
#   and the .rpm; rpm, rpm2cpio and cpio (apt), with which the test reads and unpacks the .rpm.
# Skips everything already present, so it costs nothing the second time. The cargo tools are
# compiled once, with light optimisation and no LTO (packaging is not their hot path): both in
# 4 minutes, downloads included, measured on 2 cores shared with other builds.
# Exits non-zero with one line saying why when something cannot be installed.
# Usage: scripts/ensure-packaging-tools.sh [--build-only]  (only the cargo tools: packaging/build.sh)
set -euo pipefail
build_only=0
[ "${1:-}" = --build-only ] && build_only=1

say() { printf 'ensure-packaging-tools: %s\n' "$*" >&2; }

# Versions known to work here (both need Rust 1.85, like this crate).
CARGO_DEB_VERSION=${CARGO_DEB_VERSION:-3.8.0}
CARGO_GENERATE_RPM_VERSION=${CARGO_GENERATE_RPM_VERSION:-0.21.1}

cargo_tool() { # crate subcommand version opt-level [cargo install args...]
  local crate=$1 sub=$2 version=$3 opt=$4 log
  shift 4
  if cargo "$sub" --version >/dev/null 2>&1; then
    return 0
  fi
  say "installing $crate $version with cargo install (builds the .${sub#*-} packages; takes a few minutes, once)"
  log=$(mktemp)
  if ! CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_OPT_LEVEL=$opt \
      CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false \
      cargo install --locked --quiet "$@" "$crate@$version" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    say "cannot install $crate (see above): is crates.io reachable, and is a C compiler (cc) installed?"
    exit 1
  fi
  rm -f "$log"
}

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is not on PATH; install Rust 1.85 or newer (rustup) first"
  exit 1
fi
cargo_tool cargo-deb deb "$CARGO_DEB_VERSION" 1
# Most of cargo-generate-rpm's build is PGP signing code we never run: build everything without
# optimisation except the crates that hash and compress the payload (a fully unoptimised build
# takes 35 s instead of 2 s to package the binary). Measured: 2 min of CPU instead of 3.6.
fast_rpm=()
for crate in rpm cargo-generate-rpm digest block-buffer generic-array sha1 sha1-checked sha2 \
  sha3 keccak md-5 flate2 zlib-rs miniz_oxide adler2 crc32fast; do
  fast_rpm+=(--config "profile.release.package.$crate.opt-level=3")
done
cargo_tool cargo-generate-rpm generate-rpm "$CARGO_GENERATE_RPM_VERSION" 0 "${fast_rpm[@]}"

[ "$build_only" = 1 ] && exit 0

need_apt=()
command -v rpm >/dev/null 2>&1 || need_apt+=(rpm)
command -v rpm2cpio >/dev/null 2>&1 || need_apt+=(rpm2cpio)
command -v cpio >/dev/null 2>&1 || need_apt+=(cpio)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]} with apt-get (to read and unpack the .rpm in tests/packaging.rs)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      say "cannot install ${need_apt[*]}: not root and no password-less sudo; install them by hand"
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install ${need_apt[*]}: no apt-get on this machine; install them by hand"
    exit 1
  fi
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"; } >/dev/null 2>&1; then
    say "cannot install ${need_apt[*]} with apt-get: is the Debian mirror reachable?"
    exit 1
  fi
fi
