#!/usr/bin/env bash
# The Windows build, linted and tested under wine: cross-builds for x86_64-pc-windows-gnu
# with mingw-w64 and runs the library's unit tests and the integration tests under wine64
# (through scripts/wine-runner.sh, the target's cargo runner in .cargo/config.toml).
#
# Installs what it needs (as root, or with sudo): the Rust target, Debian's
# gcc-mingw-w64-x86-64 and wine64. Where they cannot be had it prints one
# `SKIPPED windows: …` line and exits 0; once installed, any failure fails the script.
# What wine can and cannot show: docs/PLATFORMS.md.
#
# Usage: scripts/windows-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-pc-windows-gnu
WINE64=/usr/lib/wine/wine64
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export WINEPREFIX="${WINEPREFIX:-$PWD/target/wine-prefix}"
export WINEDEBUG="${WINEDEBUG:--all}"

skip() {
  echo "SKIPPED windows: $*"
  exit 0
}

step() {
  echo "== windows: $*"
}

start=$SECONDS

if ! command -v rustup >/dev/null 2>&1; then
  skip "rustup is not installed, so the $TARGET target cannot be added"
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
  step "rustup target add $TARGET"
  rustup target add "$TARGET" >/dev/null 2>&1 || skip "rustup cannot install the $TARGET target"
fi

if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || [ ! -x "$WINE64" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || skip "not root and no sudo: cannot install gcc-mingw-w64-x86-64 and wine64"
    SUDO="sudo"
  fi
  step "apt-get install gcc-mingw-w64-x86-64 wine64"
  $SUDO apt-get update -qq >/dev/null 2>&1 || skip "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    gcc-mingw-w64-x86-64 wine64 >/dev/null 2>&1 ||
    skip "apt-get cannot install gcc-mingw-w64-x86-64 and wine64"
fi
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || skip "no x86_64-w64-mingw32-gcc after install"
[ -x "$WINE64" ] || skip "no $WINE64 after install"
echo "windows: $(x86_64-w64-mingw32-gcc --version | head -n1); $("$WINE64" --version 2>/dev/null)"

# wine leaves its server (and sometimes a console host) running for a while; end them so
# nothing of wine outlives this script or holds its output open.
cleanup() {
  /usr/lib/wine/wineserver -k >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Lints: the library, both binaries and the tests. The benches are unix measurement tools
# (getrusage, sysconf, /proc, seq) and are not built for Windows.
step "clippy"
cargo clippy --target "$TARGET" --lib --bins --tests -- -D warnings
cargo clippy --target "$TARGET" --no-default-features --lib -- -D warnings

# Under wine, a test that meets something wine does not emulate says so on stderr
# ("wine: …") and checks the fallback instead; --nocapture shows those lines here.
step "unit tests under wine"
timeout 900 cargo test --target "$TARGET" --lib
step "integration tests under wine"
timeout 900 cargo test --target "$TARGET" --test tests -- --nocapture

echo "windows: done in $((SECONDS - start)) s"
