#!/usr/bin/env bash
# runstream behind a real nginx configured with deploy/nginx.conf (tests/proxy.rs): the
# token required, SSE latency, Last-Event-ID resume, a large download, streams freed when
# clients leave. Installs Debian's nginx when it is missing; prints
# "SKIPPED nginx proxy: <why>" and passes where it cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
    echo "SKIPPED nginx proxy: $*"
    exit 0
}

find_nginx() {
    command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

if [ "$(uname -s)" != Linux ]; then
    skip "the test needs Linux (FIFOs opened read-write, /proc)"
fi
NGINX=$(find_nginx)
if [ -z "$NGINX" ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        skip "nginx is not installed, and installing it needs root and apt-get"
    fi
    echo "installing nginx (Debian package) ..."
    # policy-rc.d 101: install the binary, do not start the system's nginx on port 80.
    policy_made=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_made=1
    fi
    install() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx >/dev/null; }
    install || { apt-get update >/dev/null && install; } || true
    [ -n "$policy_made" ] && rm -f /usr/sbin/policy-rc.d
    NGINX=$(find_nginx)
    [ -n "$NGINX" ] || skip "apt-get could not install nginx"
fi
echo "nginx: $("$NGINX" -v 2>&1)"

RUNSTREAM_NGINX="$NGINX" cargo test --test tests proxy:: -- --nocapture
