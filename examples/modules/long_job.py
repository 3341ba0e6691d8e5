#!/usr/bin/env python3
"""A long job for runstream's example catalogue (stdlib only): a heartbeat every second
for --seconds; on SIGTERM it saves a "checkpoint" (one second) and exits 0."""

import argparse
import signal
import sys
import time


def on_sigterm(signum, frame):
    print("received SIGTERM, saving checkpoint…", flush=True)
    time.sleep(1)
    print("checkpoint saved", flush=True)
    sys.exit(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    start = time.monotonic()
    for beat in range(1, args.seconds + 1):
        # Sleep until the next whole second since the start, so beats do not drift.
        time.sleep(max(0.0, start + beat - time.monotonic()))
        print(f"heartbeat {beat}/{args.seconds}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
