#!/usr/bin/env bash
# The performance benchmark of issue #14: builds the release plugin and the agent simulator, then
# measures on loopback against the simulator (nothing else is contacted) and prints a markdown
# table; the raw figures go to JSON.
#
#   scripts/bench.sh                          # default sizes (about 5 minutes per binary)
#   scripts/bench.sh --quick                  # small sizes, for a smoke run (about 1 minute)
#   scripts/bench.sh --against /usr/local/bin/session-manager-plugin   # AWS's, side by side
#   scripts/bench.sh --json out.json --no-build
#
# Figures: upload/download MB/s through a port forward with the service limits on (agent read
# pacing, relay frame-rate limit, our default frame budget) and off; CPU seconds per 100 MiB each
# way and per 16 MiB echoed (smux and basic mode); peak RSS of a short shell session and of port
# echoes (1 GiB for smux, with RSS sampled at 10% and 90% to show it stays flat); start-up (exec
# to the OpenDataChannelInput frame at the simulator, median of 20); keystroke echo p50/p99 under
# a pty, and the same path without any plugin; a small echo beside a 4 MiB upload on another
# smux connection; the binary's size. CPU and peak RSS are the kernel's rusage of the plugin
# process. Timings depend on the machine's load: the table ends with the load average.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
json="$target/bench/bench.json"
build=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) args+=(--quick) ;;
    --against) args+=(--against "$(realpath "$2")"); shift ;;
    --json) json="$2"; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if [ "$build" = 1 ]; then
  echo "== building the release plugin and simulator into $target" >&2
  CARGO_TARGET_DIR="$target" cargo build --release --locked -p session-manager-plugin -p agent-sim >&2
fi
exec python3 scripts/bench.py --plugin "$target/release/session-manager-plugin" \
  --sim "$target/release/agent-sim" --json "$json" ${args[@]+"${args[@]}"}
