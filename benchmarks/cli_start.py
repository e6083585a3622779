"""Start-up time of the command line and of the package import (CPU, fresh processes).

Each command runs ``--repeats`` times in a fresh Python process (after one warm-up run that fills
the OS page cache); the median wall time is reported. The goal: ``hooked-video --help`` and a
subcommand's ``--help`` in under 1 s, because they import neither torch nor transformers.

    python benchmarks/cli_start.py --out benchmarks/results/cli_start.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

GOAL_S = 1.0
COMMANDS = {
    "hooked-video --help": [sys.executable, "-m", "hooked_video", "--help"],
    "hooked-video flow --help": [sys.executable, "-m", "hooked_video", "flow", "--help"],
    "python -c 'import hooked_video'": [sys.executable, "-c", "import hooked_video"],
    "python -c 'from hooked_video import HookedVideoLLM'": [sys.executable, "-c", "from hooked_video import HookedVideoLLM"],
    "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
}


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    for name, command in COMMANDS.items():
        wall_time(command)  # warm-up
        times = [wall_time(command) for _ in range(args.repeats)]
        median = statistics.median(times)
        results.append({"command": name, "median_s": round(median, 3), "min_s": round(min(times), 3),
                        "max_s": round(max(times), 3)})  # fmt: skip
        print(f"{name:55s} median {median:6.3f} s  (min {min(times):.3f}, max {max(times):.3f})", flush=True)
    for r in results[:2]:
        print(f"{r['command']}: {'meets' if r['median_s'] < GOAL_S else 'MISSES'} the {GOAL_S} s goal")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "repeats": args.repeats, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
