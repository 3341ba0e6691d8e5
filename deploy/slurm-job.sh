#!/bin/bash
# One training job under Slurm, with runstream inside the job step:
#   sbatch deploy/slurm-job.sh python -u train.py --epochs 10
# Slurm places the job on a node with a free GPU; runstream runs the command in its own
# process group, prints every line of output as one JSON line (--json) into the job's
# output file, and stops the command gracefully when the job is cancelled or its time
# runs out.
#SBATCH --job-name=train
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.jsonl
#SBATCH --error=%x-%j.err
# 300 s before the time limit, SIGTERM to the job step: runstream stops the command with
# its grace while there is time, instead of the limit's SIGTERM + KillWait.
#SBATCH --signal=TERM@300
# scripts/deploy-check.sh runs this script with stand-ins for srun and scontrol.
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: sbatch $0 PROGRAM [ARGS...]" >&2
    exit 2
fi

# On scancel (and at the time limit) Slurm sends SIGTERM to every process of the step,
# then SIGKILL KillWait seconds later (slurm.conf; 30 s by default, set by the admins).
# runstream's grace must end before KillWait does, or Slurm's SIGKILL comes first and
# the command gets no grace at all: take KillWait from the cluster, keep 5 s to spare.
kill_wait=$(scontrol show config 2>/dev/null | awk '$1 == "KillWait" { print $3 }' || true)
kill_wait=${kill_wait:-30}
if [ "$kill_wait" -gt 10 ]; then
    grace=$((kill_wait - 5))
else
    grace=$((kill_wait / 2))
fi

exec srun --kill-on-bad-exit=1 runstream run --json --grace "${grace}s" -- "$@"
