#!/usr/bin/env python3
"""A failing job for runstream's example catalogue (stdlib only): prints --lines lines,
then raises an exception, so the traceback lands on stderr and the exit code is 1."""

import argparse
import time


def load_dataset(path):
    raise FileNotFoundError(f"dataset not found: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=3)
    args = parser.parse_args()
    for i in range(1, args.lines + 1):
        print(f"preparing step {i}/{args.lines}", flush=True)
        time.sleep(0.1)
    load_dataset("data/train.csv")


if __name__ == "__main__":
    main()
