#!/usr/bin/env sh
# Builds the plugin in release mode and installs it as `session-manager-plugin`, or removes it.
# No root needed: the default prefix is ~/.local (make sure ~/.local/bin is on PATH, before any
# other session-manager-plugin).
#
# Usage: packaging/install.sh [PREFIX]              build and install PREFIX/bin/session-manager-plugin
#        packaging/install.sh --uninstall [PREFIX]  remove it (and the man page) again
# (PREFIX defaults to $PREFIX, then ~/.local.) The man page goes to PREFIX/share/man/man1.
set -eu
cd "$(dirname "$0")/.."
uninstall=0
if [ "${1:-}" = --uninstall ]; then
  uninstall=1
  shift
fi
prefix=${1:-${PREFIX:-$HOME/.local}}
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
echo "installed $bin ($("$bin" --version))"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH; add it (before any other session-manager-plugin)" ;;
esac
found=$(command -v session-manager-plugin || true)
if [ -n "$found" ] && [ "$found" != "$bin" ]; then
  echo "note: 'session-manager-plugin' on PATH is $found, not this install"
fi
echo "to remove it: packaging/install.sh --uninstall${1:+ $prefix}"
