"""Sweeps of questions whose prompt lengths the process has not seen yet, with each SDPA kernel order
for masked attention: seconds per sample, first time and again.

cuDNN's attention builds an execution plan for every new shape, and every new prompt length gives a
sweep new shapes; memory-efficient attention builds none. The questions are split in two halves
of the same lengths; each order sweeps one half fresh and then the other half (lengths it has seen).

    python benchmarks/prompt_lengths.py --preset llava-next-video-7b --per-task 6 --out results/prompt_lengths.json
    python benchmarks/prompt_lengths.py --preset llava-next-video-7b --per-task 6 --engine compiled
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reproduce_speed import memory_samples  # noqa: E402
from shapes import MASKED_SDPA_ORDERS, PRESETS, build, report, timed_sweep, use_masked_sdpa  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--per-task", type=int, default=6)
    parser.add_argument("--engine", default="fast", choices=["fast", "compiled"],
                        help="compiled: the first sweep (the warm-up) compiles; later lengths show recompilations")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="the tokenizer has no token")
    model = build(args.preset, args.device, torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    samples = memory_samples(args.per_task)
    halves = {"package": samples[0::2], "torch": samples[1::2]}  # the tasks' questions alternate: same lengths
    lengths = [model.prepare(s.video, question=s.question, options=s.options).n_positions for s in samples]
    result = {"preset": args.preset, "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "engine": args.engine, "questions": len(samples), "distinct_lengths": len(set(lengths)), "lengths": lengths}  # fmt: skip
    result["warm_up_s"] = timed_sweep(model, samples[:1], args.device, args.engine)  # a length of both halves
    for order in MASKED_SDPA_ORDERS:
        use_masked_sdpa(order)
        fresh = [timed_sweep(model, [s], args.device, args.engine) for s in halves[order]]
        other = halves["torch" if order == "package" else "package"]
        seen = [timed_sweep(model, [s], args.device, args.engine) for s in other]
        result[order] = {"new_lengths_mean_s": statistics.mean(fresh), "new_lengths_median_s": statistics.median(fresh),
                         "new_lengths_max_s": max(fresh), "seen_lengths_mean_s": statistics.mean(seen),
                         "seen_lengths_median_s": statistics.median(seen),
                         "per_question_s": [round(t, 3) for t in fresh]}  # fmt: skip
        print(json.dumps({order: result[order]}), flush=True)
    use_masked_sdpa("package")
    report(result, args.out)


if __name__ == "__main__":
    main()
