#!/usr/bin/env python3
"""A fake training loop for runstream's example catalogue (stdlib only).

Per epoch: a tqdm-like progress bar on stderr (redrawn with carriage returns, ended by a
newline) and one `epoch N/M loss X` line on stdout.
"""

import argparse
import math
import random
import sys
import time


def progress_bar(done, total, width=10):
    percent = 100 * done // total
    filled = width * done // total
    bar = "#" * filled + " " * (width - filled)
    return f"\r{percent:3d}%|{bar}| {done}/{total}"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    args = parser.parse_args()

    # Said in words, not `lr=0.001`: `key=value` pairs are read as metrics.
    print(f"training {args.epochs} epochs of {args.steps} steps, lr {args.lr}, optimizer {args.optimizer}")
    print("WARNING: no GPU found, training on CPU", file=sys.stderr)
    rng = random.Random(0)
    # About one second per epoch at the default 50 steps.
    step_time = min(0.02, 5.0 / max(1, args.steps))
    loss = 2.5
    decay = 0.02 if args.optimizer == "adam" else 0.01
    for epoch in range(1, args.epochs + 1):
        for step in range(1, args.steps + 1):
            time.sleep(step_time)
            loss *= 1 - decay * min(1.0, args.lr * 1000) / math.sqrt(step)
            loss += rng.uniform(-0.002, 0.002)
            sys.stderr.write(progress_bar(step, args.steps))
            sys.stderr.flush()
        sys.stderr.write("\n")
        sys.stderr.flush()
        print(f"epoch {epoch}/{args.epochs} loss {max(loss, 0.0):.4f}", flush=True)
    print("training complete", flush=True)


if __name__ == "__main__":
    main()
