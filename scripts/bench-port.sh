#!/bin/sh
# Measures port-forwarding throughput (upload and download, smux mode) with a release build,
# against the in-process agent simulator: once with the service's limits on (agent read pacing
# of 1 KiB + 1 ms, the relay's frame-rate limit, our default 900 frames/s budget) and once with
# them all off. The reference plugin manages about 0.7 MB/s per direction against real AWS.
#
#   scripts/bench-port.sh                 # 16 MiB with limits, 64 MiB without
#   BENCH_LIMITED_MIB=8 BENCH_MIB=32 scripts/bench-port.sh
set -eu
cd "$(dirname "$0")/.."
log=$(mktemp)
if cargo test --release --test port_bench -- --ignored --nocapture --test-threads 1 >"$log" 2>&1; then
  grep -o 'BENCH.*' "$log"
  rm -f "$log"
else
  tail -n 40 "$log" >&2
  echo "bench-port: failed; full log in $log" >&2
  exit 1
fi
