"""Held-out accuracy of the bundled toy models on the synthetic benchmark, read from mp4 files
exactly as a user reads TVBench (generate -> TVBench -> prepare -> option-letter logits).

    python benchmarks/toy_accuracy.py --per-task 64 --out benchmarks/results/toy_accuracy.json
    python benchmarks/toy_accuracy.py --per-task 64 --models toy16-image toy16-video-ft --out benchmarks/results/toy16_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooked_video import HookedVideoLLM  # noqa: E402
from hooked_video.analysis.accuracy import accuracy  # noqa: E402
from hooked_video.data import TVBench, synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-task", type=int, default=64)
    parser.add_argument("--data", default=None, help="benchmark folder (default: a temporary one)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--models", nargs="+", default=["toy-image", "toy-video-ft", "toy16-image", "toy16-video-ft"])
    args = parser.parse_args()
    root = synthetic.generate(args.data or Path(tempfile.mkdtemp()) / "synthetic", per_task=args.per_task, seed=0, progress=False)
    data = TVBench(root)
    stem = {s.task: s.id.split("/")[0] for s in data}
    results = {}
    for name in args.models:
        start = time.perf_counter()
        table = accuracy(HookedVideoLLM.from_pretrained(name), data, progress=False)
        results[name] = {stem.get(task, task): round(float(row.accuracy), 4) for task, row in table.iterrows()}
        print(name, json.dumps(results[name]), f"{time.perf_counter() - start:.0f} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"per_task": args.per_task, "seed": 0, "accuracy": results}, indent=1))


if __name__ == "__main__":
    main()
