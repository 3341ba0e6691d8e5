#!/usr/bin/env python3
"""Checks the files in deploy/ for what docs/DEPLOYMENT.md says about them.

No cluster is needed: the Kubernetes Job and the Fluent Bit configuration are parsed
(PyYAML) and their fields compared with what runstream really does (its options are
given to the real binary, its `--json` lines are produced by running it); the Slurm batch
script is run with stand-ins for srun and scontrol; the systemd unit's settings are read
(scripts/deploy-check.sh also runs `systemd-analyze verify` on it).

Usage: RUNSTREAM_BIN=target/debug/runstream python3 scripts/deploy_check.py
"""

import datetime
import json
import os
import re
import stat
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
RUNSTREAM = os.path.abspath(os.environ.get("RUNSTREAM_BIN", "target/debug/runstream"))

# Longest time `runstream serve` takes to stop after SIGTERM beyond its --grace: 2 s to
# reap, 5 s more if a run cannot be reaped, 5 s for streams to send their last event.
SERVE_STOP_MARGIN = 12
# What the Job keeps beyond --grace for runstream to write its last lines and exit.
K8S_MARGIN = 10

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def seconds(text):
    """A runstream duration (90s, 500ms, 2m, 1h, 1.5) in seconds, as its CLI reads it."""
    m = re.fullmatch(r"([0-9.]+)(ms|s|m|min|h)?", text.strip())
    if not m:
        raise ValueError(f"not a runstream duration: {text!r}")
    factor = {None: 1, "s": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * factor


def option(argv, name):
    """The value of `name VALUE` or `name=VALUE` in argv (before `--`), or None."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def said(run):
    """A finished process's stderr, for a check's line, when it has any."""
    text = run.stderr.strip()
    return f" ({text})" if text else ""


def json_lines(argv):
    """Runs `runstream run --json -- argv`; returns the entries it printed."""
    out = subprocess.run(
        [RUNSTREAM, "run", "--json", "--"] + argv,
        capture_output=True, text=True, timeout=60, check=False,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def kubernetes_job():
    with open(os.path.join(DEPLOY, "kubernetes-job.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    check(len(docs) == 1, "kubernetes-job.yaml: one document")
    job = docs[0]
    check((job.get("apiVersion"), job.get("kind")) == ("batch/v1", "Job"),
          "kubernetes-job.yaml: a batch/v1 Job")
    pod = job["spec"]["template"]["spec"]
    check(pod.get("restartPolicy") in ("Never", "OnFailure"),
          "kubernetes-job.yaml: restartPolicy Never or OnFailure (a Job's pod)")
    containers = pod["containers"]
    check(len(containers) == 1, "kubernetes-job.yaml: one container")
    command = [str(a) for a in containers[0]["command"]]
    check(os.path.basename(command[0]) == "runstream" and command[1] == "run",
          "kubernetes-job.yaml: the command is `runstream run` (PID 1)")
    check("--" in command and "--json" in command[: command.index("--")],
          "kubernetes-job.yaml: --json before `--`")
    grace = option(command, "--grace")
    check(grace is not None, "kubernetes-job.yaml: an explicit --grace")
    grace_s = seconds(grace or "5s")
    period = pod.get("terminationGracePeriodSeconds", 30)
    check(period >= grace_s + K8S_MARGIN,
          f"kubernetes-job.yaml: terminationGracePeriodSeconds {period} >= --grace "
          f"{grace_s:g} s + {K8S_MARGIN} s")
    limits = containers[0].get("resources", {}).get("limits", {})
    check(int(limits.get("nvidia.com/gpu", 0)) >= 1,
          "kubernetes-job.yaml: limits nvidia.com/gpu >= 1")
    # The options as written are accepted by the real runstream.
    options = command[1: command.index("--")]
    run = subprocess.run([RUNSTREAM] + options + ["--", "true"],
                         capture_output=True, text=True, timeout=60, check=False)
    check(run.returncode == 0,
          f"kubernetes-job.yaml: runstream accepts {' '.join(options)}{said(run)}")


def fluent_bit():
    with open(os.path.join(DEPLOY, "fluent-bit.yaml")) as f:
        conf = yaml.safe_load(f)
    entries = json_lines(["sh", "-c", "echo out; echo err >&2"])
    check(len(entries) >= 3, "runstream run --json printed stdout, stderr and exit entries")
    fields = set().union(*(e.keys() for e in entries)) if entries else set()
    parser = next((p for p in conf.get("parsers", []) if p.get("name") == "runstream"), None)
    check(parser is not None and parser.get("format") == "json",
          "fluent-bit.yaml: a json parser named runstream")
    if parser is None or not entries:
        return
    time_key = parser.get("time_key")
    check(time_key in fields, f"fluent-bit.yaml: time_key {time_key!r} is an entry field")
    # Fluent Bit's %L (fractional seconds) is Python's %f.
    py_format = parser.get("time_format", "").replace("%L", "%f")
    try:
        for e in entries:
            datetime.datetime.strptime(e[time_key], py_format)
        parsed = True
    except (KeyError, ValueError):
        parsed = False
    check(parsed, f"fluent-bit.yaml: time_format {parser.get('time_format')!r} reads "
                  f"runstream's timestamps ({entries[0].get(time_key)!r})")
    filters = conf["pipeline"]["filters"]
    used = [f for f in filters if f.get("name") == "parser"]
    check(any(f.get("parser") == "runstream" for f in used),
          "fluent-bit.yaml: a parser filter uses the runstream parser")
    for out in conf["pipeline"]["outputs"]:
        for key in str(out.get("label_keys", "")).split(","):
            key = key.strip().lstrip("$")
            if key:
                check(key in fields, f"fluent-bit.yaml: label key {key!r} is an entry field")
    streams = {e.get("stream") for e in entries}
    check(streams == {"stdout", "stderr", "system"},
          f"runstream's `stream` field says stdout, stderr or system ({sorted(streams)})")


def slurm_job():
    path = os.path.join(DEPLOY, "slurm-job.sh")
    with open(path) as f:
        text = f.read()
    directives = dict(
        (m.group(1), m.group(2))
        for m in re.finditer(r"^#SBATCH\s+(--[a-z-]+)(?:=(\S+))?", text, re.M)
    )
    check("gpu" in directives.get("--gres", ""), "slurm-job.sh: #SBATCH --gres=gpu:N")
    check(directives.get("--output", "").endswith(".jsonl"),
          "slurm-job.sh: the job's output file is the JSON lines")
    signal = re.fullmatch(r"(?:[RB]:)?TERM@(\d+)", directives.get("--signal", ""))
    check(signal is not None and not directives["--signal"].startswith("B:"),
          "slurm-job.sh: --signal=TERM@N to the job step (not the batch shell)")
    warn_s = int(signal.group(1)) if signal else 0
    check(subprocess.run(["bash", "-n", path], check=False).returncode == 0,
          "slurm-job.sh: bash -n")

    longest = 0.0
    for kill_wait, want in (("30", 25), ("60", 55), (None, 25), ("8", 4)):
        with tempfile.TemporaryDirectory() as bin_dir:
            log = os.path.join(bin_dir, "srun.args")

            def stub(name, body):
                p = os.path.join(bin_dir, name)
                with open(p, "w") as f:
                    f.write("#!/bin/sh\n" + body)
                os.chmod(p, stat.S_IRWXU)

            # srun: records its arguments, drops its own options, runs the task.
            stub("srun", f'echo "$@" >"{log}"\n'
                         'while [ $# -gt 0 ]; do case "$1" in --*) shift;; *) break;; esac; done\n'
                         'exec "$@"\n')
            if kill_wait is not None:
                stub("scontrol", f'echo "KillWait                = {kill_wait} sec"\n')
            os.symlink(RUNSTREAM, os.path.join(bin_dir, "runstream"))
            env = dict(os.environ, PATH=bin_dir + ":/usr/bin:/bin")
            run = subprocess.run(["bash", path, "sh", "-c", "echo step output"],
                                 capture_output=True, text=True, env=env, timeout=60,
                                 check=False)
            argv = []
            if os.path.exists(log):
                with open(log) as f:
                    argv = f.read().split()
        case = f"KillWait {kill_wait or 'unknown (no scontrol)'}"
        grace = option(argv, "--grace")
        check(grace == f"{want}s", f"slurm-job.sh: {case} gives --grace {grace} (want {want}s)")
        check(seconds(grace or "0") < (int(kill_wait or 30)),
              f"slurm-job.sh: {case}: the grace ends before Slurm's SIGKILL")
        longest = max(longest, seconds(grace or "0"))
        lines = [json.loads(line) for line in run.stdout.splitlines()]
        check(run.returncode == 0 and any(e["message"] == "step output" for e in lines),
              f"slurm-job.sh: {case}: the step runs and prints JSON lines{said(run)}")
    check(warn_s > longest,
          f"slurm-job.sh: --signal=TERM@{warn_s} leaves the longest grace ({longest:g} s) "
          "before the time limit")


def systemd_unit():
    settings = {}
    section = None
    with open(os.path.join(DEPLOY, "runstream.service")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            settings.setdefault((section, key), []).append(value)

    def get(key, section="Service"):
        values = settings.get((section, key))
        return values[-1] if values else None

    exec_start = get("ExecStart") or ""
    argv = exec_start.split()
    check(argv[1:2] == ["serve"], "runstream.service: ExecStart runs `runstream serve`")
    check(option(argv, "--data-dir") == "/var/lib/runstream" and get("StateDirectory") == "runstream",
          "runstream.service: --data-dir /var/lib/runstream from StateDirectory=runstream")
    check(get("User") not in (None, "root", "0") and get("DynamicUser") is None,
          "runstream.service: a dedicated user")
    check(get("KillMode") == "mixed", "runstream.service: KillMode=mixed")
    check(get("Delegate") == "yes", "runstream.service: Delegate=yes")
    grace = seconds(option(argv, "--grace") or "5s")
    timeout = seconds(get("TimeoutStopSec") or "90s")
    check(timeout >= grace + SERVE_STOP_MARGIN,
          f"runstream.service: TimeoutStopSec {timeout:g} s >= --grace {grace:g} s + "
          f"{SERVE_STOP_MARGIN} s")
    reload = get("ExecReload") or ""
    check("-HUP" in reload and "$MAINPID" in reload,
          "runstream.service: ExecReload sends SIGHUP to the main process")
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        check(get(key) in (None, "no", "false"),
              f"runstream.service: no {key} (a device allow-list would hide the GPUs)")
    check(get("ProtectControlGroups") in (None, "no") and get("ProtectKernelTunables") in (None, "no"),
          "runstream.service: the delegated cgroup stays writable")
    run = subprocess.run([RUNSTREAM] + argv[1:] + ["--help"], capture_output=True,
                         text=True, timeout=60, check=False)
    check(run.returncode == 0, "runstream.service: runstream accepts the ExecStart options")


def main():
    if not os.access(RUNSTREAM, os.X_OK):
        sys.exit(f"no runstream binary at {RUNSTREAM} (set RUNSTREAM_BIN)")
    kubernetes_job()
    fluent_bit()
    slurm_job()
    systemd_unit()
    if failures:
        sys.exit(f"{len(failures)} deploy check(s) failed")
    print("deploy files: all checks passed")


if __name__ == "__main__":
    main()
