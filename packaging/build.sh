#!/usr/bin/env bash
# Builds the release packages into dist/ (or --out DIR):
#   session-manager-plugin-rs_<version>-1_<arch>.deb    (dpkg-deb, from a staged tree)
#   session-manager-plugin-rs-<version>-1.<arch>.rpm    (rpmbuild, packaging/rpm/*.spec)
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
# /usr/local/bin/session-manager-plugin, and replace AWS's `session-manager-plugin` package:
# ours has its own name, session-manager-plugin-rs, and takes over from AWS's (deb: Conflicts +
# Replaces, so dpkg removes AWS's package while installing ours; rpm: Obsoletes, so `rpm -U`/dnf/
# yum swap them in one transaction); it Provides the name at the wire version it speaks, so
# anything that depends on `session-manager-plugin` is still satisfied.
# The tools: dpkg-deb (dpkg), rpmbuild (the `rpm` apt package), and dpkg-shlibdeps (dpkg-dev) for
# the .deb's Depends when present (else libc6/libgcc-s1 versions read with readelf).
#
# Usage: packaging/build.sh [--binary PATH] [--out DIR] [--fast] [--no-install]
#   --binary PATH  package this already-built binary instead of building in release mode
#                  (the test packages the debug binary: a release build takes minutes)
#   --out DIR      where the packages go (default dist/)
#   --fast         quicker, larger compression (tests)
#   --no-install   never install the tools (scripts/ensure-packaging-tools.sh); fail if they
#                  are missing
# Env: CARGO_TARGET_DIR (the release build's target directory), and what only the publisher
# knows (the project has no public address of its own):
#   MAINTAINER   the .deb's Maintainer, "Name <address>" (default "session-manager-plugin
#                maintainers", without the address Debian asks for)
#   HOMEPAGE     the project's page: the formula's homepage, the .deb's Homepage and the
#                .rpm's URL
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
command -v dpkg-deb >/dev/null 2>&1 ||
  die "dpkg-deb is not installed (it builds the .deb); run scripts/ensure-packaging-tools.sh, or apt-get install dpkg"
command -v rpmbuild >/dev/null 2>&1 ||
  die "rpmbuild is not installed (it builds the .rpm); run scripts/ensure-packaging-tools.sh, or apt-get install rpm"

# 2. The binary.
if [ -z "$binary" ]; then
  say "building the release binary (several minutes: fat LTO)"
  cargo build --release --locked -p session-manager-plugin
  binary="${CARGO_TARGET_DIR:-target}/release/session-manager-plugin"
fi
[ -x "$binary" ] || die "no executable at $binary"

# A stripped copy in a private staging directory: an already-built binary (--binary) is
# packaged as it is, and nothing in the real target dir is touched.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
case "$stage" in
  *[![:alnum:]/._-]*) die "the temporary directory $stage has a space or an odd character (rpmbuild cannot take it): set TMPDIR" ;;
esac
bin="$stage/session-manager-plugin"
cp "$binary" "$bin"
chmod 0755 "$bin"
if command -v strip >/dev/null 2>&1; then
  strip "$bin" 2>/dev/null || say "note: strip failed; packaging the binary unstripped"
fi

wire=$("$bin" --version) || die "$binary --version failed"
[[ "$wire" =~ ^[0-9]+(\.[0-9]+)+$ ]] || die "$binary --version printed '$wire', not a version"
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
level=9 # gzip's, for the .rpm's payload and the tarball
[ "$fast" = 1 ] && level=1
deb_arch=$(dpkg --print-architecture 2>/dev/null || echo "$arch")
deb_name="session-manager-plugin-rs_${version}-1_${deb_arch}.deb"
rpm_name="session-manager-plugin-rs-${version}-1.${arch}.rpm"
tar_base="session-manager-plugin-${version}-${arch}-linux"
src_name="session-manager-plugin-${version}.src.tar.gz"
rm -f "$out/$deb_name" "$out/$rpm_name" "$out/$tar_base.tar.gz" "$out/$src_name" \
  "$out/session-manager-plugin.rb" "$out/SHA256SUMS"

# 4. .deb, from a staged tree: the binary, the /usr/local/bin link, the man page (gzipped, as
# Debian has them), the docs and the licence (as Debian's copyright file); the control file,
# md5sums and postinst. dpkg-deb --root-owner-group: every file is root's.
summary="Drop-in replacement for AWS's session-manager-plugin"
bin_path=usr/local/sessionmanagerplugin/bin/session-manager-plugin
doc_dir=usr/share/doc/session-manager-plugin-rs
# packaging/description.txt without its leading and trailing empty lines.
description=$(awk 'NF{p=1} p' packaging/description.txt | sed -e :a -e '/^[[:space:]]*$/{$d;N;ba' -e '}')
[ -n "$description" ] || die "packaging/description.txt is empty"

# The Depends, as cargo-deb's "$auto" computed them: the packages of the shared libraries the
# binary links, at the versions of the symbols it uses, by dpkg-shlibdeps (dpkg-dev). Without
# it: libc6 (>= the newest GLIBC_ version the binary needs) and libgcc-s1 (>= the newest GCC_
# one) read with readelf; any other library is an error. A static binary depends on nothing.
deb_depends() {
  if command -v dpkg-shlibdeps >/dev/null 2>&1; then
    local dir="$stage/shlibdeps" deps
    mkdir -p "$dir/debian"
    : >"$dir/debian/control" # dpkg-shlibdeps wants one, even empty
    deps=$(cd "$dir" && dpkg-shlibdeps -O -e"$bin" 2>"$dir/stderr") ||
      die "dpkg-shlibdeps cannot compute the .deb's Depends: $(tr '\n' ' ' <"$dir/stderr")"
    printf '%s\n' "$deps" | sed -n 's/^shlibs:Depends=//p'
    return
  fi
  command -v readelf >/dev/null 2>&1 ||
    die "cannot compute the .deb's Depends: install dpkg-dev (dpkg-shlibdeps) or binutils (readelf)"
  local lib deps=() glibc="" gcc=""
  for lib in $(readelf -dW "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
    case "$lib" in
      libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libutil.so.* | ld-linux*) glibc=1 ;;
      libgcc_s.so.1) gcc=1 ;;
      *) die "the binary links $lib: install dpkg-dev (dpkg-shlibdeps) to compute the .deb's Depends" ;;
    esac
  done
  # The newest version of each family the binary asks for (its .gnu.version_r section).
  newest() { readelf -VW "$bin" | grep -o "Name: $1[0-9.]*" | sed "s/^Name: $1//" | sort -V | tail -n1; }
  if [ -n "$glibc" ]; then
    glibc=$(newest GLIBC_)
    deps+=("libc6${glibc:+ (>= $glibc)}")
  fi
  if [ -n "$gcc" ]; then
    gcc=$(newest GCC_ | sed 's/\.0$//') # GCC_4.2.0 is libgcc-s1 4.2 in its symbols file
    deps+=("libgcc-s1${gcc:+ (>= $gcc)}")
  fi
  (IFS=','; printf '%s\n' "${deps[*]}" | sed 's/,/, /g')
}

deb_root="$stage/deb"
install -d -m 0755 "$deb_root/DEBIAN" "$deb_root/${bin_path%/*}" "$deb_root/usr/local/bin" \
  "$deb_root/usr/share/man/man1" "$deb_root/$doc_dir"
install -m 0755 "$bin" "$deb_root/$bin_path"
ln -s ../sessionmanagerplugin/bin/session-manager-plugin "$deb_root/usr/local/bin/session-manager-plugin"
gzip -9 -n -c "$man_page" >"$deb_root/usr/share/man/man1/session-manager-plugin.1.gz"
install -m 0644 README.md CHANGELOG.md "$deb_root/$doc_dir/"
{
  printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
  printf 'Upstream-Name: session-manager-plugin\n'
  [ -n "$homepage" ] && printf 'Source: %s\n' "$homepage"
  printf 'Copyright: session-manager-plugin (Rust) contributors\n'
  printf 'License: Apache-2.0\n'
  sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' LICENSE
} >"$deb_root/$doc_dir/copyright"
# install -d sets the mode of the leaves only: the parents get the umask's.
find "$deb_root" -type d -exec chmod 0755 {} +
find "$deb_root/usr" -type f ! -path "*/sessionmanagerplugin/bin/*" -exec chmod 0644 {} +
install -m 0755 packaging/deb/postinst "$deb_root/DEBIAN/postinst"
(cd "$deb_root" && find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) >"$deb_root/DEBIAN/md5sums"
# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, and 1 for every
# directory and link.
installed_size=$(cd "$deb_root" && find usr -printf '%y %s\n' |
  awk '{ n += ($1 == "f") ? int(($2 + 1023) / 1024) : 1 } END { print n }')
depends=$(deb_depends)
{
  printf 'Package: session-manager-plugin-rs\n'
  printf 'Version: %s-1\n' "$version"
  printf 'Architecture: %s\n' "$deb_arch"
  printf 'Maintainer: %s\n' "${maintainer:-session-manager-plugin maintainers}"
  printf 'Installed-Size: %s\n' "$installed_size"
  [ -n "$depends" ] && printf 'Depends: %s\n' "$depends"
  printf 'Conflicts: session-manager-plugin\n'
  printf 'Replaces: session-manager-plugin\n'
  printf 'Provides: session-manager-plugin (= %s)\n' "$wire"
  printf 'Section: admin\n'
  printf 'Priority: optional\n'
  [ -n "$homepage" ] && printf 'Homepage: %s\n' "$homepage"
  printf 'Description: %s\n' "$summary"
  printf '%s\n' "$description" | sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /'
} >"$deb_root/DEBIAN/control"
chmod 0644 "$deb_root/DEBIAN/control" "$deb_root/DEBIAN/md5sums"
deb_compress=(-Zxz -z6)
[ "$fast" = 1 ] && deb_compress=(-Zgzip -z1)
dpkg-deb --root-owner-group "${deb_compress[@]}" --build "$deb_root" "$out/$deb_name" >/dev/null ||
  die "dpkg-deb --build failed"

# 5. .rpm, by rpmbuild from packaging/rpm/session-manager-plugin-rs.spec: the same files (the
# man page as it is, and the licence under /usr/share/licenses) in a tree the spec copies into
# its buildroot, and the scriptlets and description next to it.
rpm_stage="$stage/rpm"
install -d -m 0755 "$rpm_stage/tree/${bin_path%/*}" "$rpm_stage/tree/usr/share/man/man1" \
  "$rpm_stage/tree/$doc_dir" "$rpm_stage/tree/usr/share/licenses/session-manager-plugin-rs"
install -m 0755 "$bin" "$rpm_stage/tree/$bin_path"
install -m 0644 "$man_page" "$rpm_stage/tree/usr/share/man/man1/"
install -m 0644 README.md CHANGELOG.md "$rpm_stage/tree/$doc_dir/"
install -m 0644 LICENSE "$rpm_stage/tree/usr/share/licenses/session-manager-plugin-rs/"
cp packaging/rpm/posttrans packaging/rpm/postun "$rpm_stage/"
printf '%s\n' "$description" | sed 's/%/%%/g' >"$rpm_stage/description" # the spec expands macros
rpm_args=(--define "_topdir $stage/rpmbuild" --define "smp_stage $rpm_stage"
  --define "smp_version $version" --define "smp_wire $wire" --define "smp_summary $summary"
  --define "smp_payload w$level.gzdio")
[ -n "$homepage" ] && rpm_args+=(--define "smp_homepage $homepage")
rpmbuild -bb --quiet "${rpm_args[@]}" packaging/rpm/session-manager-plugin-rs.spec \
  >"$stage/rpmbuild.log" 2>&1 || {
  tail -n 20 "$stage/rpmbuild.log" >&2
  die "rpmbuild failed (see above)"
}
# (The spec's Obsoletes is unversioned on purpose, whatever rpmbuild says.)
grep -i 'warning' "$stage/rpmbuild.log" | grep -v 'unversioned Obsoletes' |
  sed 's/^/build.sh: rpmbuild: /' >&2 || true
built=("$stage"/rpmbuild/RPMS/*/session-manager-plugin-rs-"$version"-1.*.rpm)
[ ${#built[@]} = 1 ] && [ -f "${built[0]}" ] || die "rpmbuild wrote no session-manager-plugin-rs-$version-1 package"
mv "${built[0]}" "$out/$rpm_name"

# 6. .tar.gz with the binary, the docs, the licence and the man page
mkdir -p "$stage/$tar_base"
cp "$bin" README.md LICENSE CHANGELOG.md "$man_page" "$stage/$tar_base/"
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
