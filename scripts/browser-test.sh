#!/usr/bin/env bash
# The web page's real-browser test: headless Chromium (Debian's package) driven by
# playwright-core against the real server binary. Build the server first (cargo build).
# Usage: scripts/browser-test.sh   (RUNSTREAM_BIN=path/to/runstream to pick the binary)
set -euo pipefail
cd "$(dirname "$0")/.."

export RUNSTREAM_BIN="${RUNSTREAM_BIN:-target/debug/runstream}"

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi

if [ ! -x "$RUNSTREAM_BIN" ]; then
  echo "warning: no server binary at $RUNSTREAM_BIN (cargo build, or set RUNSTREAM_BIN)" >&2
fi

(
  cd tests/browser
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
)

node tests/browser/page.test.mjs
