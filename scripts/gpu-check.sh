#!/usr/bin/env bash
# GPU end-to-end check, for a machine with an NVIDIA GPU, its driver and PyTorch with CUDA.
#
#   cargo build --release && scripts/gpu-check.sh            (or RUNSTREAM_BIN=path/to/runstream)
#
# Starts the real server, runs a module whose *grandchild* (python under sh) allocates
# 2 GiB with torch and sleeps, and checks that /api/gpu and the Run show that memory
# against that run (or, where NVML cannot attribute memory to processes, e.g. in a
# container with its own PID namespace, that the run's memory is unknown and why); then
# submits a second run asking for more GPU memory than is free and checks that it waits
# (queued, waiting_for gpu_memory) until the first ends, then runs.
# Exit 0: every check passed; 1: a check failed; 2: this machine cannot run the check.
set -euo pipefail

BIN=${RUNSTREAM_BIN:-target/release/runstream}
GIB_TO_ALLOCATE=${GIB_TO_ALLOCATE:-2}
[ -x "$BIN" ] || { echo "SKIPPED: $BIN not built (cargo build --release)"; exit 2; }
if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "SKIPPED: python3 with CUDA-enabled torch is not available here"; exit 2
fi

work=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
say() { echo "[$(date +%H:%M:%S)] $*"; }

cat > "$work/alloc.py" <<'PY'
import sys, time, torch
gib, seconds = float(sys.argv[1]), float(sys.argv[2])
x = torch.empty(int(gib * (1 << 30)), dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
print(f"allocated {gib} GiB on {torch.cuda.get_device_name(0)}", flush=True)
time.sleep(seconds)
print("releasing", flush=True)
PY
# The python process is a child of sh (not exec'd): NVML sees the grandchild, not the
# run's leader, and the engine must map it through the process group. Parameters are
# passed as separate argv elements ($0, $1), never inside the script text.
cat > "$work/modules.json" <<JSON
{"modules": {"alloc": {
  "name": "Allocate GPU memory", "program": "sh",
  "args": ["-c", "python3 -u alloc.py \"\$0\" \"\$1\"; echo done", "{gib}", "{seconds}"],
  "cwd": "$work", "grace_seconds": 5,
  "parameters": {"gib": {"type": "number", "default": 2, "min": 0.1, "max": 64},
                 "seconds": {"type": "integer", "default": 60, "min": 1, "max": 3600}}}}}
JSON

"$BIN" serve --bind 127.0.0.1:0 --modules "$work/modules.json" --data-dir "$work/data" \
  --allow-commands > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
for _ in $(seq 100); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's#.*listening on http://127.0.0.1:\([0-9]*\).*#\1#p' "$work/server.out")
[ -n "$port" ] || { cat "$work/server.err"; fail "server did not start"; }
api="http://127.0.0.1:$port"
say "server on $api"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

say "/api/gpu before:"; curl -s "$api/api/gpu" | python3 -m json.tool | head -30
run1=$(curl -s -X POST "$api/api/modules/alloc/run" -d "{\"parameters\": {\"gib\": $GIB_TO_ALLOCATE, \"seconds\": 60}}" | json 'd["run_id"]')
say "run 1: $run1"

want=$(python3 -c "print(int($GIB_TO_ALLOCATE * (1 << 30)))")
seen=0
unattributed=""
for _ in $(seq 120); do   # CUDA start-up takes ~5 s; allow 60 s
  seen=$(curl -s "$api/api/runs/$run1" | json 'd.get("gpu_memory_bytes") or 0')
  [ "$seen" -ge "$want" ] && break
  # Where NVML cannot attribute memory to processes (a container with its own PID
  # namespace), /api/gpu says why: then the run's memory must be unknown, not 0.
  unattributed=$(curl -s "$api/api/gpu" | json '(d.get("attribution") or {}).get("reason") or ""')
  [ -n "$unattributed" ] && curl -s "$api/api/runs/$run1/logs" | grep -q allocated && break
  sleep 0.5
done
gpu=$(curl -s "$api/api/gpu")
echo "$gpu" | python3 -m json.tool | head -60
if [ "$seen" -lt "$want" ] && [ -n "$unattributed" ]; then
  say "SKIPPED per-run GPU memory: $unattributed"
  memory=$(curl -s "$api/api/runs/$run1" | json 'd["gpu_memory_bytes"]')
  [ "$memory" = "None" ] || fail "run 1's GPU memory should be unknown (null), is $memory"
  say "PASS: run 1's GPU memory is unknown (null), not 0"
else
  [ "$seen" -ge "$want" ] || { curl -s "$api/api/runs/$run1/logs"; fail "run 1 shows $seen bytes of GPU memory, wanted >= $want"; }
  say "PASS: Run shows gpu_memory_bytes=$seen (peak $(curl -s "$api/api/runs/$run1" | json 'd["gpu_memory_peak_bytes"]'), SM $(curl -s "$api/api/runs/$run1" | json 'd.get("gpu_utilization_percent")')%, None while idle)"
  echo "$gpu" | RUN="$run1" WANT="$want" python3 -c '
import json, os, sys
d = json.load(sys.stdin)
assert d["available"], d
runs = {r["run_id"]: r for r in d["runs"]}
r = runs.get(os.environ["RUN"])
assert r and r["gpu_memory_bytes"] >= int(os.environ["WANT"]), runs
procs = [p for dev in d["devices"] for p in dev["processes"]]
assert procs, "no GPU process listed"
print("PASS: /api/gpu attributes", r["gpu_memory_bytes"], "bytes to", r["run_id"], "- processes:", procs)
' || fail "/api/gpu does not show run 1's memory"
fi

free_mb=$(echo "$gpu" | json 'max(dev["memory_free_bytes"] for dev in d["devices"]) // (1 << 20)')
need_mb=$((free_mb + 1024))
say "most free on one device: $free_mb MiB; run 2 asks $need_mb MiB"
run2=$(curl -s -X POST "$api/api/runs" -d "{\"argv\": [\"python3\", \"-c\", \"print(\\\"run 2 started\\\")\"], \"gpu_memory_mb\": $need_mb}" | json 'd["run_id"]')
sleep 5
state=$(curl -s "$api/api/runs/$run2" | json 'd["status"] + " " + str(d["waiting_for"])')
[ "$state" = "queued gpu_memory" ] || fail "run 2 should wait for GPU memory, is: $state"
say "PASS: run 2 waits: $state"

say "cancelling run 1"
curl -s -X POST "$api/api/runs/$run1/cancel" > /dev/null
for _ in $(seq 120); do
  state=$(curl -s "$api/api/runs/$run2" | json 'd["status"]')
  [ "$state" = "completed" ] && break
  sleep 0.5
done
[ "$state" = "completed" ] || fail "run 2 did not run after run 1 ended (state $state)"
say "PASS: run 2 ran once run 1 freed its memory: $(curl -s "$api/api/runs/$run2/logs" | json '[e["message"] for e in d["logs"]]')"
say "run 1 final: $(curl -s "$api/api/runs/$run1" | json '(d["status"], d["gpu_memory_peak_bytes"])')"
say "metrics:"; curl -s "$api/metrics" | grep '^runstream_.*gpu' || true
echo "gpu-check: all checks passed"
