"""The report's knockout figure at the size of a paper run: summaries, drawing and saving, on the CPU.

A sweep table of the LLaVA-NeXT-Video-7B layout (5 tasks x ``--per-task`` questions x 11 conditions
x 32 layers, random values) is summarised (mean and bootstrap 95% interval per task, condition and
layer) by ``flow.summarize`` and, side by side, by a loop of ``flow.bootstrap_ci`` over the groups
(the same numbers); then ``viz.knockout_curves`` draws it and saves it as ``reproduce`` does (PNG,
90 dpi). Medians of ``--repeats``.

    python benchmarks/figures.py --per-task 8 --out results/figures_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooked_video import flow, viz  # noqa: E402
from hooked_video.analysis.flow.summary import PER_TASK  # noqa: E402

TASKS = ("Action Antonym", "Action Sequence", "Moving Direction", "Object Count", "Scene Transition")


def sweep_table(per_task: int, n_layers: int = 32, seed: int = 0) -> pd.DataFrame:
    """Rows of a four-target sweep of ``per_task`` questions per task (random relative changes)."""
    rng = np.random.default_rng(seed)
    rows = [{"sample_id": f"{task}/{i}", "task": task, "target": target, "condition": condition, "layer": layer}
            for task in TASKS for i in range(per_task) for target, conditions in flow.TARGETS.items()
            for condition in conditions for layer in range(n_layers)]  # fmt: skip
    df = pd.DataFrame(rows)
    df["rel_change"] = rng.normal(-5, 20, len(df))
    df.attrs["n_layers"] = n_layers
    return df


def per_group_loop(df: pd.DataFrame) -> pd.DataFrame:
    """The summary's intervals computed one group at a time (a plain loop over ``bootstrap_ci``)."""
    records = []
    for key, group in df.groupby(list(PER_TASK), sort=False):
        low, high = flow.bootstrap_ci(group.rel_change.to_numpy())
        records.append({**dict(zip(PER_TASK, key)), "mean": group.rel_change.mean(), "ci_low": low, "ci_high": high})
    return pd.DataFrame(records)


def median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-task", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    df = sweep_table(args.per_task)
    summary, loop = flow.summarize(df), per_group_loop(df)
    same = np.allclose(summary[["ci_low", "ci_high"]].to_numpy(), loop[["ci_low", "ci_high"]].to_numpy(), rtol=0, atol=1e-12)
    folder = Path(tempfile.mkdtemp())
    result = {"rows": len(df), "groups": len(summary), "same_intervals": bool(same),
              "summarize_s": median_seconds(lambda: flow.summarize(df), args.repeats),
              "per_group_loop_s": median_seconds(lambda: per_group_loop(df), args.repeats),
              "knockout_curves_s": median_seconds(lambda: viz.knockout_curves(df), args.repeats)}  # fmt: skip
    figure = viz.knockout_curves(df)
    result["save_png_s"] = median_seconds(lambda: figure.savefig(folder / "knockout.png", dpi=90), args.repeats)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
