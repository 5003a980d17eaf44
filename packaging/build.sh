#!/usr/bin/env bash
# Builds the release packages into dist/ (or --out DIR):
#   session-manager-plugin-rs_<version>-1_<arch>.deb    (cargo-deb)
#   session-manager-plugin-rs-<version>-1.<arch>.rpm    (cargo-generate-rpm)
#   session-manager-plugin-<version>-<arch>-linux.tar.gz  (binary, README.md, LICENSE,
#                                                          CHANGELOG.md, man page)
#   session-manager-plugin-<version>.src.tar.gz         (the sources, for the Homebrew formula)
#   session-manager-plugin.rb                           (the Homebrew formula: the template
#                                                          packaging/session-manager-plugin.rb with
#                                                          the source tarball's SHA-256, HOMEPAGE
#                                                          and RELEASE_URL filled in; only when
#                                                          both are set)
#   SHA256SUMS
# The .deb and .rpm put the binary where AWS's packages do,
# /usr/local/sessionmanagerplugin/bin/session-manager-plugin, linked from
# /usr/local/bin/session-manager-plugin, and replace AWS's `session-manager-plugin` package.
#
# Usage: packaging/build.sh [--binary PATH] [--out DIR] [--fast] [--no-install]
#   --binary PATH  package this already-built binary instead of building in release mode
#                  (the test packages the debug binary: a release build takes minutes)
#   --out DIR      where the packages go (default dist/)
#   --fast         quicker, larger compression (tests)
#   --no-install   never install cargo-deb/cargo-generate-rpm; fail if they are missing
# Env: CARGO_TARGET_DIR (the release build's target directory), and what only the publisher
# knows (the project has no public address of its own):
#   MAINTAINER   the .deb's Maintainer, "Name <address>" (default "session-manager-plugin
#                maintainers", without the address Debian asks for)
#   HOMEPAGE     the project's page: the formula's homepage and the .rpm's URL
#   RELEASE_URL  where the source tarball will be published: the formula's url
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

binary="" out="dist" fast=0 install_tools=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --fast) fast=1; shift ;;
    --no-install) install_tools=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# The [package] version of Cargo.toml.
version=$(awk '/^\[/{p=($0=="[package]")} p && /^version *=/{gsub(/.*= *"|".*/,""); print; exit}' Cargo.toml)
[ -n "$version" ] || die "cannot read the package version from Cargo.toml"
arch=$(uname -m)

maintainer=${MAINTAINER:-} homepage=${HOMEPAGE:-} release_url=${RELEASE_URL:-}
if [ -n "$maintainer" ]; then
  case "$maintainer" in
    *[![:space:]]*" <"?*@?*">") ;;
    *) die "MAINTAINER must look like 'Name <address>', not '$maintainer'" ;;
  esac
else
  say "note: MAINTAINER is not set; the .deb's Maintainer is 'session-manager-plugin maintainers', without an address (set MAINTAINER='Name <address>')"
fi
url_re='^https?://[^[:space:]"\]+$'
for var in HOMEPAGE RELEASE_URL; do
  value=${!var:-}
  [ -z "$value" ] || [[ "$value" =~ $url_re ]] ||
    die "$var must be an http(s) URL without spaces, quotes or backslashes, not '$value'"
done

# 1. The tools.
if [ "$install_tools" = 1 ]; then
  scripts/ensure-packaging-tools.sh --build-only
fi
cargo deb --version >/dev/null 2>&1 ||
  die "cargo-deb is not installed; run scripts/ensure-packaging-tools.sh (needs crates.io)"
cargo generate-rpm --version >/dev/null 2>&1 ||
  die "cargo-generate-rpm is not installed; run scripts/ensure-packaging-tools.sh (needs crates.io)"

# 2. The binary.
if [ -z "$binary" ]; then
  say "building the release binary (several minutes: fat LTO)"
  cargo build --release --locked -p session-manager-plugin
  binary="${CARGO_TARGET_DIR:-target}/release/session-manager-plugin"
fi
[ -x "$binary" ] || die "no executable at $binary"

# Both packagers take the binary from <target dir>/release/: give them a private target dir
# holding a stripped copy, so an already-built binary (--binary) is packaged as it is, and
# nothing in the real target dir is touched.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/target/release"
bin="$stage/target/release/session-manager-plugin"
cp "$binary" "$bin"
chmod 0755 "$bin"
if command -v strip >/dev/null 2>&1; then
  strip "$bin" 2>/dev/null || say "note: strip failed; packaging the binary unstripped"
fi

wire=$("$bin" --version) || die "$binary --version failed"
case "$("$bin" --help)" in
  "session-manager-plugin $version "*) ;;
  *) die "$binary is not version $version (its --help: $("$bin" --help | head -n1))" ;;
esac
say "packaging session-manager-plugin $version (wire version $wire) for $arch"

# 3. The man page must render without warnings.
man_page=packaging/session-manager-plugin.1
if command -v groff >/dev/null 2>&1; then
  warnings=$(groff -man -Tutf8 -ww -z "$man_page" 2>&1) || die "groff cannot render $man_page: $warnings"
  [ -z "$warnings" ] || die "$man_page renders with warnings: $warnings"
else
  say "note: groff is not installed; not checking that $man_page renders"
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
deb_name="session-manager-plugin-rs_${version}-1_$(dpkg --print-architecture 2>/dev/null || echo "$arch").deb"
rpm_name="session-manager-plugin-rs-${version}-1.${arch}.rpm"
tar_base="session-manager-plugin-${version}-${arch}-linux"
src_name="session-manager-plugin-${version}.src.tar.gz"
rm -f "$out/$deb_name" "$out/$rpm_name" "$out/$tar_base.tar.gz" "$out/$src_name" \
  "$out/session-manager-plugin.rb" "$out/SHA256SUMS"

# 4. .deb
deb_args=(--no-build --no-strip --output "$out/$deb_name")
[ -n "$maintainer" ] && deb_args+=(--maintainer "$maintainer")
[ "$fast" = 1 ] && deb_args+=(--fast)
CARGO_TARGET_DIR="$stage/target" cargo deb -p session-manager-plugin "${deb_args[@]}" >&2 ||
  die "cargo deb failed"

# 5. .rpm (gzip payload: rpm releases before 4.14 cannot read the default zstd), with the
# description cargo-generate-rpm cannot set (it repeats the summary).
rpm_args=(--target-dir "$stage/target" --payload-compress gzip --output "$out/$rpm_name")
[ -n "$homepage" ] && rpm_args+=(--set-metadata "url = \"$homepage\"")
cargo generate-rpm "${rpm_args[@]}" >&2 || die "cargo generate-rpm failed"
command -v python3 >/dev/null 2>&1 || die "python3 is needed to write the .rpm's description"
packaging/rpm/set-description "$out/$rpm_name" packaging/description.txt ||
  die "cannot write the description into $out/$rpm_name"

# 6. .tar.gz with the binary, the docs, the licence and the man page
mkdir -p "$stage/$tar_base"
cp "$bin" README.md LICENSE CHANGELOG.md "$man_page" "$stage/$tar_base/"
level=9
[ "$fast" = 1 ] && level=1
tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name -cf - "$tar_base" |
  gzip -n "-$level" >"$out/$tar_base.tar.gz"

# 7. The source tarball and the Homebrew formula that builds from it (git checkouts only; the
# formula only with a homepage and a url: the template's are placeholders).
artifacts=("$deb_name" "$rpm_name" "$tar_base.tar.gz")
if git -C "$root" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  git -C "$root" archive --format=tar --prefix="session-manager-plugin-${version}/" HEAD |
    gzip -n -9 >"$out/$src_name"
  artifacts+=("$src_name")
  if [ -n "$homepage" ] && [ -n "$release_url" ]; then
    src_sum=$(sha256sum "$out/$src_name" | cut -d' ' -f1)
    sed_escape() { printf '%s' "$1" | sed 's/[|&]/\\&/g'; }
    # The template's own paragraph (up to the next empty comment line) goes.
    sed -e '/^# TEMPLATE,/,/^#$/d' \
      -e "s|^  sha256 \".*\"|  sha256 \"$src_sum\"|" \
      -e "s|^  version \".*\"|  version \"$version\"|" \
      -e "s|^  homepage \"@HOMEPAGE@\"|  homepage \"$(sed_escape "$homepage")\"|" \
      -e "s|^  url \"@RELEASE_URL@\"|  url \"$(sed_escape "$release_url")\"|" \
      packaging/session-manager-plugin.rb >"$out/session-manager-plugin.rb"
    if grep -q '@HOMEPAGE@\|@RELEASE_URL@\|TEMPLATE' "$out/session-manager-plugin.rb"; then
      die "packaging/session-manager-plugin.rb: a placeholder is left in the written formula"
    fi
    artifacts+=("session-manager-plugin.rb")
  else
    say "note: no Homebrew formula: set HOMEPAGE and RELEASE_URL (its homepage, and where $src_name will be published) to write it"
  fi
else
  say "note: not a git checkout; no source tarball or Homebrew formula"
fi

# 8. Checksums
(cd "$out" && sha256sum "${artifacts[@]}" >SHA256SUMS)
say "done:"
(cd "$out" && ls -l "${artifacts[@]}" SHA256SUMS) >&2
