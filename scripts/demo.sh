#!/usr/bin/env bash
# The main job: builds the plugin and the agent simulator, then opens a real interactive shell
# session on this machine the way users do, `aws ssm start-session`, with the real AWS CLI
# talking to the simulator's fake SSM API and our plugin talking to the simulated agent.
#
# Usage: scripts/demo.sh [extra `aws ssm start-session` arguments]
#   e.g. scripts/demo.sh --document-name AWS-StartNonInteractiveCommand --parameters command="uname -a"
# Without a terminal on stdin it runs a short scripted session instead of an interactive one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

echo "== building the plugin and the simulator" >&2
cargo build --locked -p session-manager-plugin -p agent-sim
echo "== installing the AWS CLI into scripts/.venv (first run only)" >&2
aws=$(scripts/ensure-awscli.sh)

work=$(mktemp -d)
sim_pid=""
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The simulator runs until its stdin closes (when this script exits) or it is killed.
mkfifo "$work/sim-in"
target/debug/agent-sim --api >"$work/sim.json" 2>"$work/sim.log" <"$work/sim-in" &
sim_pid=$!
exec 9>"$work/sim-in"
for _ in $(seq 100); do [ -s "$work/sim.json" ] && break; sleep 0.1; done
api_url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_url"])' "$work/sim.json")

# A throwaway AWS configuration: nothing here can reach AWS.
mkdir -p "$work/home/.aws"
printf '[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = demo-secret\n' >"$work/home/.aws/credentials"
export HOME="$work/home" AWS_EC2_METADATA_DISABLED=true AWS_DEFAULT_REGION=us-east-1
export PATH="$root/target/debug:$PATH"
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN

echo "== aws ssm start-session --target i-0123456789abcdef0 --endpoint-url $api_url $*" >&2
if [ -t 0 ]; then
  echo "== an interactive shell on this machine via plugin and simulator; type 'exit' or '~.' to leave" >&2
  "$aws" ssm start-session --target i-0123456789abcdef0 --endpoint-url "$api_url" "$@"
else
  printf 'echo "hello from $(uname -n) through session-manager-plugin"\nexit\n' |
    "$aws" ssm start-session --target i-0123456789abcdef0 --endpoint-url "$api_url" "$@"
fi
