#!/usr/bin/env sh
# Builds the plugin in release mode and installs it as `session-manager-plugin`.
# No root needed: the default prefix is ~/.local (make sure ~/.local/bin is on PATH, before any
# other session-manager-plugin). Usage: packaging/install.sh [PREFIX]
set -eu
cd "$(dirname "$0")/.."
prefix=${1:-${PREFIX:-$HOME/.local}}
cargo build --release --locked -p session-manager-plugin
mkdir -p "$prefix/bin"
install -m 0755 target/release/session-manager-plugin "$prefix/bin/session-manager-plugin"
echo "installed $prefix/bin/session-manager-plugin ($("$prefix/bin/session-manager-plugin" --version))"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH; add it (before any other session-manager-plugin)" ;;
esac
found=$(command -v session-manager-plugin || true)
if [ -n "$found" ] && [ "$found" != "$prefix/bin/session-manager-plugin" ]; then
  echo "note: 'session-manager-plugin' on PATH is $found, not this install"
fi
