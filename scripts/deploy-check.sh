#!/usr/bin/env bash
# The files in deploy/ against what docs/DEPLOYMENT.md says: `systemd-analyze verify` on
# the unit (Debian's systemd package; no running systemd needed), systemd-sysusers on the
# user file (into a scratch root), and scripts/deploy_check.py (PyYAML) on the Kubernetes
# Job, the Fluent Bit configuration, the Slurm script and the unit's settings. Prints
# "SKIPPED <what>: <why>" for a part that cannot run here.
set -euo pipefail
cd "$(dirname "$0")/.."

can_install() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; }
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

cargo build --quiet --bin runstream
bin="$PWD/target/debug/runstream"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# systemd-analyze verify: the unit as shipped, except that ExecStart names the binary
# just built (verify insists that the program exists). verify exits 0 on settings it
# ignores, so any output at all is a failure.
if ! command -v systemd-analyze >/dev/null || [ ! -x /bin/kill ]; then
    can_install && apt_install systemd procps || true
fi
if command -v systemd-analyze >/dev/null; then
    sed "s#/usr/local/bin/runstream#$bin#" deploy/runstream.service >"$scratch/runstream.service"
    if ! out=$(systemd-analyze verify --man=no "$scratch/runstream.service" 2>&1) || [ -n "$out" ]; then
        echo "systemd-analyze verify deploy/runstream.service failed:"
        echo "$out"
        exit 1
    fi
    echo "ok    runstream.service: systemd-analyze verify ($(systemd-analyze --version | head -1))"
else
    echo "SKIPPED systemd-analyze verify: systemd-analyze is missing and cannot be installed here"
fi

if command -v systemd-sysusers >/dev/null; then
    mkdir -p "$scratch/root/etc"
    systemd-sysusers --root="$scratch/root" "$PWD/deploy/runstream.sysusers" >/dev/null 2>&1
    grep -q '^runstream:' "$scratch/root/etc/passwd"
    echo "ok    runstream.sysusers: systemd-sysusers creates the runstream user"
else
    echo "SKIPPED systemd-sysusers: not installed"
fi

# A python3 that has PyYAML: this one, Debian's, or one with PyYAML from pip.
python=""
for candidate in python3 /usr/bin/python3; do
    if "$candidate" -c 'import yaml' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ] && can_install; then
    apt_install python3-yaml || true
    /usr/bin/python3 -c 'import yaml' 2>/dev/null && python=/usr/bin/python3
fi
if [ -z "$python" ] && python3 -m pip install --quiet pyyaml 2>/dev/null; then
    python=python3
fi
if [ -z "$python" ]; then
    echo "SKIPPED deploy manifests: no python3 with PyYAML, and none could be installed"
    exit 0
fi
RUNSTREAM_BIN="$bin" "$python" scripts/deploy_check.py
