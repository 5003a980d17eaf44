#!/bin/sh
# Make sure Ansible (from PyPI, with the bundled amazon.aws collection and its aws_ssm
# connection plugin), boto3 and moto (a local S3 for the module transfer aws_ssm needs) are
# installed in scripts/.venv-ansible, and print the venv's bin directory on stdout. Used by
# tests/e2e_ansible.rs. Idempotent: a working install is reused. All pip/venv chatter goes to
# stderr (only on failure) so stdout stays a single path.
#
# Env: ANSIBLE_VERSION (optional) overrides the pinned version of the `ansible` package.
# ansible 12.x bundles amazon.aws 10.x (the version the aws_ssm issue was reported against).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv-ansible"
bin="$venv/bin"
version=${ANSIBLE_VERSION:-12.3.0}

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "ensure-ansible: $python not found; install Python 3 (with the venv module) to run the Ansible test" >&2
    exit 127
fi

installed() {
    [ -x "$bin/ansible-playbook" ] && [ -x "$bin/moto_server" ] \
        && "$bin/python" -c 'import boto3, moto, flask' >/dev/null 2>&1 \
        && [ "$("$bin/python" -c 'from importlib.metadata import version; print(version("ansible"))' 2>/dev/null)" = "$version" ]
}

install() {
    echo "ensure-ansible: installing ansible==$version, boto3 and moto[server] from PyPI into $venv (the Ansible aws_ssm end-to-end test)" >&2
    log=$(mktemp)
    if ! { [ -x "$bin/python" ] || "$python" -m venv "$venv"; } >"$log" 2>&1 \
        || ! "$bin/python" -m pip install --quiet --disable-pip-version-check \
            "ansible==$version" boto3 "moto[server]" >>"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "ensure-ansible: installing ansible==$version, boto3, moto[server] into $venv failed (see above); check that PyPI is reachable" >&2
        exit 1
    fi
    rm -f "$log"
    # Keep the venv out of git status (the repository's .gitignore names only scripts/.venv).
    echo '*' >"$venv/.gitignore"
}

if ! installed; then
    # Several test binaries may run this at once: serialise the install with a lock.
    if command -v flock >/dev/null 2>&1; then
        mkdir -p "$venv"
        echo '*' >"$venv/.gitignore"
        exec 9>"$venv/.install.lock"
        flock 9
        installed || install
        flock -u 9
    else
        install
    fi
fi

if ! installed; then
    echo "ensure-ansible: $bin/ansible-playbook or moto_server does not run after install; delete $venv and retry" >&2
    exit 1
fi
echo "$bin"
