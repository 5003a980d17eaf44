#!/bin/sh
# Make sure an AWS CLI v1 (from PyPI) is installed in scripts/.venv and print the
# path of its `aws` executable on stdout. Idempotent: a working install is reused,
# so end-to-end tests can call this every time. All pip/venv chatter goes to
# stderr (only on failure) so stdout stays a single path.
#
# Env: AWSCLI_VERSION (optional) pins a version, e.g. AWSCLI_VERSION=1.46.3.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
aws="$venv/bin/aws"

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "ensure-awscli: $python not found; install Python 3 (with the venv module) to run the AWS CLI tests" >&2
    exit 127
fi

installed() {
    [ -x "$aws" ] && "$aws" --version >/dev/null 2>&1
}

install() {
    log=$(mktemp)
    spec=awscli
    if [ -n "${AWSCLI_VERSION:-}" ]; then spec="awscli==$AWSCLI_VERSION"; fi
    if ! { [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"; } >"$log" 2>&1 \
        || ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" >>"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "ensure-awscli: installing $spec into $venv failed (see above); check that PyPI is reachable" >&2
        exit 1
    fi
    rm -f "$log"
}

if ! installed; then
    # Several test binaries may run this at once: serialise the install with a
    # lock (flock when present) so they do not pip-install into one venv together.
    if command -v flock >/dev/null 2>&1; then
        # The lock file lives inside the (git-ignored) venv directory.
        mkdir -p "$venv"
        exec 9>"$venv/.install.lock"
        flock 9
        installed || install
        flock -u 9
    else
        install
    fi
fi

if ! installed; then
    echo "ensure-awscli: $aws does not run after install; delete $venv and retry" >&2
    exit 1
fi
echo "$aws"
