#!/usr/bin/env bash
# Tries the plugin on this machine, offline, the way users run it: `aws ssm start-session` with
# the real AWS CLI talking to the simulator's fake SSM API, and our plugin talking to the
# simulated agent, which runs the shell, command or connection here. No AWS account needed.
#
# Usage: scripts/demo.sh [MODE] [extra `aws ssm start-session` arguments]
#   (no mode), --shell   an interactive shell (a short scripted one when stdin is not a terminal)
#   --command [CMD]      AWS-StartNonInteractiveCommand: runs CMD (default `uname -a`); its exit
#                        status becomes the plugin's
#   --port               AWS-StartPortForwardingSession: forwards a local port to a small web
#                        server started here (on a terminal: try the printed curl line, then
#                        Ctrl-C; otherwise it fetches a page through it and ends by itself)
#   --ssh [CMD]          AWS-StartSSHSession as ssh's ProxyCommand, to a throwaway sshd started
#                        here on 127.0.0.1 (an interactive login, or CMD)
#   e.g. scripts/demo.sh --command 'ls /'
# Installs what it needs first (python3-venv, a C compiler, the AWS CLI into scripts/.venv,
# OpenSSH for --ssh), saying what and why.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '== %s\n' "$*" >&2; }

mode=shell mode_arg=""
case "${1:-}" in
  --shell) mode=shell; shift ;;
  --command)
    mode=command mode_arg="uname -a"; shift
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then mode_arg=$1; shift; fi ;;
  --port) mode=port; shift ;;
  --ssh) mode=ssh; shift; if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then mode_arg=$1; shift; fi ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

say "checking prerequisites (python3-venv, a C compiler, the AWS CLI; installed when missing)"
scripts/ensure-test-deps.sh --no-packaging --no-openssh --no-ansible
if [ "$mode" = ssh ]; then
  say "--ssh: checking for the OpenSSH client and server (installed when missing)"
  scripts/ensure-openssh.sh
fi
aws=$(scripts/ensure-awscli.sh)

say "building the plugin and the simulator (debug; a few minutes the first time)"
cargo build --locked -p session-manager-plugin -p agent-sim

work=$(mktemp -d)
pids=() api_url=""
# The processes of this demo that talk to the simulator: the AWS CLI and the plugin, the only
# ones with its endpoint (a port of its own) on their command line.
clients() {
  local d args
  for d in /proc/[0-9]*; do
    mapfile -d "" args 2>/dev/null <"$d/cmdline" || continue
    case " ${args[*]} " in *" $api_url "*) echo "${d#/proc/}" ;; esac
  done
}
# Waits at most $1 tenths of a second for them to exit.
clients_gone() {
  local n=$1
  while [ -n "$(clients)" ]; do
    [ "$n" -gt 0 ] || return 1
    n=$((n - 1))
    sleep 0.1
  done
}
cleanup() {
  # The simulator goes last: ssh's ProxyCommand plugin outlives ssh (ssh hangs up on the AWS
  # CLI, and the plugin, now init's child, still ends its session with the agent: up to 10 s),
  # and a simulator gone before it would read as a lost connection ("Connection lost ...;
  # resuming session..."). What is left after 10 s gets SIGTERM (the plugin tells the agent).
  if [ -n "$api_url" ] && ! clients_gone 100; then
    kill $(clients) 2>/dev/null || true
    clients_gone 30 || true
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The simulator runs until its stdin closes (when this script exits) or it is killed.
mkfifo "$work/sim-in"
target/debug/agent-sim --api >"$work/sim.json" 2>"$work/sim.log" <"$work/sim-in" &
pids+=($!)
exec 9>"$work/sim-in"
for _ in $(seq 100); do [ -s "$work/sim.json" ] && break; sleep 0.1; done
api_url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_url"])' "$work/sim.json")

# A throwaway AWS configuration: nothing here can reach AWS.
mkdir -p "$work/home/.aws"
printf '[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = demo-secret\n' >"$work/home/.aws/credentials"
export HOME="$work/home" AWS_EC2_METADATA_DISABLED=true AWS_DEFAULT_REGION=us-east-1
export PATH="$root/target/debug:$PATH"
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN

target=i-0123456789abcdef0
start_session() {
  say "aws ssm start-session --target $target $* --endpoint-url $api_url"
  "$aws" ssm start-session --target "$target" "$@" --endpoint-url "$api_url"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "$mode" in
shell)
  if [ -t 0 ]; then
    say "an interactive shell on this machine via plugin and simulator; type 'exit' or '~.' to leave"
    start_session "$@"
  else
    say "stdin is not a terminal: a scripted shell session (the script's 'exit' ends it)"
    printf 'echo "hello from $(uname -n) through session-manager-plugin"\nexit\n' | start_session "$@"
  fi
  ;;
command)
  say "runs '$mode_arg' here (no shell, no terminal): its output on stdout, its errors on stderr, its exit status as the plugin's"
  status=0
  # separateOutputStream, a parameter of AWS's document (default "false"), keeps the command's
  # stderr apart and makes the agent report its exit status.
  params=$(python3 -c 'import json,sys; print(json.dumps({"command": [sys.argv[1]], "separateOutputStream": ["true"]}))' "$mode_arg")
  start_session --document-name AWS-StartNonInteractiveCommand --parameters "$params" "$@" \
    </dev/null || status=$?
  say "the session ended with status $status (the AWS CLI turns every non-zero status into 255)"
  exit "$status"
  ;;
port)
  web_port=$(free_port)
  local_port=$(free_port)
  mkdir -p "$work/www"
  echo "hello through a Session Manager port forward" >"$work/www/index.html"
  python3 -m http.server "$web_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
  pids+=($!)
  params="{\"portNumber\":[\"$web_port\"],\"localPortNumber\":[\"$local_port\"]}"
  if [ -t 0 ]; then
    say "forwarding 127.0.0.1:$local_port to a small web server on port $web_port (the \"instance\" is this machine)"
    say "try: curl http://127.0.0.1:$local_port/   (in another terminal); press Ctrl-C here to end the session"
    trap '' INT # Ctrl-C is for the plugin (it handles it even when ignored); this script carries on
    start_session --document-name AWS-StartPortForwardingSession --parameters "$params" "$@"
  else
    say "forwarding 127.0.0.1:$local_port to a small web server on port $web_port; fetching a page through it, then Ctrl-C"
    say "aws ssm start-session --target $target --document-name AWS-StartPortForwardingSession --parameters $params $* --endpoint-url $api_url"
    "$aws" ssm start-session --target "$target" --document-name AWS-StartPortForwardingSession \
      --parameters "$params" "$@" --endpoint-url "$api_url" </dev/null >"$work/port.out" 2>&1 &
    aws_pid=$!
    pids+=("$aws_pid")
    for _ in $(seq 150); do grep -q 'Waiting for connections' "$work/port.out" && break; sleep 0.1; done
    cat "$work/port.out"
    shown=$(wc -l <"$work/port.out")
    python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end="")' \
      "http://127.0.0.1:$local_port/"
    # Ctrl-C ends a port session; the plugin is the AWS CLI's child.
    plugin=$(pgrep -P "$aws_pid" -x session-manager || true)
    if [ -n "$plugin" ]; then kill -INT "$plugin"; else kill "$aws_pid"; fi
    status=0
    wait "$aws_pid" || status=$?
    tail -n "+$((shown + 1))" "$work/port.out"
    say "the session ended with status $status"
  fi
  ;;
ssh)
  ssh_port=$(free_port)
  for k in hostkey userkey; do ssh-keygen -q -t ed25519 -N '' -f "$work/$k"; done
  cp "$work/userkey.pub" "$work/authorized_keys"
  cat >"$work/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $work/hostkey
AuthorizedKeysFile $work/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $work/sshd.pid
PermitRootLogin prohibit-password
EOF
  /usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
  pids+=($!)
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$ssh_port") 2>/dev/null && break; sleep 0.1; done
  user=$(id -un)
  proxy="$aws ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p --endpoint-url $api_url"
  ssh_opts=(-F /dev/null -i "$work/userkey" -p "$ssh_port" -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o "ProxyCommand=$proxy")
  say "ssh $user@$target with ProxyCommand: $proxy"
  say "(the simulated agent connects the tunnel to a throwaway sshd on 127.0.0.1:$ssh_port)"
  if [ -n "$mode_arg" ]; then
    ssh "${ssh_opts[@]}" "$user@$target" "$mode_arg" </dev/null
  elif [ -t 0 ]; then
    say "an SSH login on this machine through the tunnel; type 'exit' to leave (ssh's own '~.' works too)"
    ssh "${ssh_opts[@]}" "$user@$target"
  else
    ssh "${ssh_opts[@]}" "$user@$target" 'echo "hello from $(uname -n) over SSH through session-manager-plugin"' </dev/null
  fi
  ;;
esac
