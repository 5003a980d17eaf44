#!/usr/bin/env sh
# Builds the plugin in release mode and installs it as `session-manager-plugin`, or removes it.
# No root needed: the default prefix is ~/.local (make sure ~/.local/bin is on PATH, before any
# other session-manager-plugin).
#
# Usage: packaging/install.sh [PREFIX]              build and install PREFIX/bin/session-manager-plugin
#        packaging/install.sh --uninstall [PREFIX]  remove it (and the man page) again
#        packaging/install.sh --help                print this text
# PREFIX defaults to $PREFIX, then ~/.local; a relative PREFIX is taken relative to the current
# directory (not the clone's). The man page goes to PREFIX/share/man/man1.
# Env: CARGO_TARGET_DIR (the release build's target directory; default the clone's target/; a
# relative one is taken relative to the current directory too).
set -eu
self=$0
usage() { sed -n '2,/^set -eu/p' "$self" | sed '$d; s/^# \{0,1\}//'; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 64; }

uninstall=0 prefix=""
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --uninstall) uninstall=1 ;;
    -*) die "unknown option '$arg' (see --help)" ;;
    *)
      [ -z "$prefix" ] || die "more than one PREFIX: '$prefix' and '$arg' (see --help)"
      prefix=$arg
      ;;
  esac
done
prefix=${prefix:-${PREFIX:-$HOME/.local}}
# Relative to where we were started, before moving to the clone.
case "$prefix" in
  /*) ;;
  .) prefix=$(pwd) ;;
  *) prefix="$(pwd)/${prefix#./}" ;;
esac
case "${CARGO_TARGET_DIR:-/}" in
  /*) ;;
  *) CARGO_TARGET_DIR="$(pwd)/$CARGO_TARGET_DIR" && export CARGO_TARGET_DIR ;;
esac
cd "$(dirname "$0")/.."
bin="$prefix/bin/session-manager-plugin"
man="$prefix/share/man/man1/session-manager-plugin.1"

if [ "$uninstall" = 1 ]; then
  if [ ! -e "$bin" ] && [ ! -L "$bin" ]; then
    echo "nothing to remove: $bin does not exist"
    exit 0
  fi
  # Only remove our own build, never AWS's plugin installed under the same name.
  case "$("$bin" --help 2>/dev/null | head -n1)" in
    "session-manager-plugin "*" (speaks the Session Manager protocol"*) ;;
    *)
      echo "not removing $bin: it is not this plugin (AWS's?)" >&2
      exit 1
      ;;
  esac
  rm -f "$bin" "$man"
  echo "removed $bin"
  found=$(command -v session-manager-plugin || true)
  [ -z "$found" ] || echo "note: 'session-manager-plugin' on PATH is now $found"
  exit 0
fi

cargo build --release --locked -p session-manager-plugin
built="${CARGO_TARGET_DIR:-target}/release/session-manager-plugin"
mkdir -p "$prefix/bin" "$prefix/share/man/man1"
install -m 0755 "$built" "$bin"
install -m 0644 packaging/session-manager-plugin.1 "$man"
# `--version` is the AWS plugin version whose protocol it speaks (what the AWS CLI checks), not
# this package's; the first line of `--help` has both.
version=$("$bin" --help | sed -n '1s/^session-manager-plugin \([^ ]*\) .*/\1/p')
wire=$("$bin" --version)
echo "installed $bin: session-manager-plugin ${version:-?} (speaks AWS plugin protocol $wire)"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH; add it (before any other session-manager-plugin)" ;;
esac
found=$(command -v session-manager-plugin || true)
if [ -n "$found" ] && [ "$found" != "$bin" ]; then
  echo "note: 'session-manager-plugin' on PATH is $found, not this install"
fi
echo "to remove it: $self --uninstall $prefix"
