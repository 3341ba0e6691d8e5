#!/usr/bin/env bash
# Cargo's runner for x86_64-pc-windows-gnu (.cargo/config.toml): runs a Windows .exe under
# wine64. `cargo test --target x86_64-pc-windows-gnu` calls it as `wine-runner.sh EXE ARGS...`.
#
# - wine 8.0 lacks bcryptprimitives.dll!ProcessPrng, which Rust's std imports; a shim built
#   from scripts/windows/bcryptprimitives.c (here, on first use) is put on wine's PATH
#   (WINEPATH), so the test binary *and* every .exe it spawns find it.
# - A wine prefix of our own under target/ keeps ~/.wine out of it.
# See docs/PLATFORMS.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wine="${WINE64:-/usr/lib/wine/wine64}"
shim_src="$root/scripts/windows/bcryptprimitives.c"
shim_dir="$root/target/wine-shim"
shim="$shim_dir/bcryptprimitives.dll"

if [ ! -x "$wine" ]; then
  echo "wine-runner: no wine64 at $wine (apt-get install wine64, or set WINE64)" >&2
  exit 127
fi
if [ ! -f "$shim" ] || [ "$shim_src" -nt "$shim" ]; then
  mkdir -p "$shim_dir"
  x86_64-w64-mingw32-gcc -shared -O2 -o "$shim.tmp" "$shim_src" -ladvapi32
  mv "$shim.tmp" "$shim"
fi

export WINEPREFIX="${WINEPREFIX:-$root/target/wine-prefix}"
export WINEDEBUG="${WINEDEBUG:--all}"
# Z: is wine's view of /.
export WINEPATH="Z:${shim_dir//\//\\}${WINEPATH:+;$WINEPATH}"
exec "$wine" "$@"
