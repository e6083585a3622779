"""Attribution patching against exact knockouts: how well it ranks the exact rows, and what it costs.

- fidelity (``--fidelity``, CPU is enough): on the bundled toys, over the synthetic temporal tasks,
  per sample: Spearman of estimate vs exact ``flow.sweep`` over all (condition, layer) rows, top-10
  overlap, sign agreement on rows whose exact change exceeds 5 points; medians per method and
  target. Frame pairs are checked the same way against exact knockouts of each pair, and per-head
  rows against knockouts of single heads (``attribution.head_knockouts``, one question per task).
  ``exact_layer_sums_by_window``: the exact single-layer changes summed over each window, ranked
  against the exact window rows: the ceiling of any estimate that sums per-layer effects.
- estimates (``--estimates``, CPU is enough): the estimates from held gradients alone, per
  granularity: median time and ATen operator calls.
- speed (``--speed``, a GPU): at a preset's shape (random weights, bf16, one prompt), the exact
  engine's four-target sweep and ``attribute(method="atp")`` for the four targets, the 64 frame
  pairs and per-head rows, side by side in one run; median of 3, peak memory.

    python benchmarks/attribution.py --fidelity --out results/attribution_fidelity_toys.json
    python benchmarks/attribution.py --fidelity --models toy16-video-ft --out results/attribution_fidelity_toy16.json
    python benchmarks/attribution.py --speed --preset llava-next-video-7b --device cuda --out results/attribution_7b.json
    python benchmarks/attribution.py --estimates --models toy-video-ft toy16-video-ft --repeats 9
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
import torch

sys.path.insert(0, str(Path(__file__).parent))

from hooked_video import HookedVideoLLM, flow, knockout  # noqa: E402
from hooked_video.analysis import attribution  # noqa: E402
from hooked_video.analysis.attribution.groups import effects_of  # noqa: E402
from hooked_video.analysis.attribution.compare import spearman  # noqa: E402
from hooked_video.data import TVBench, synthetic  # noqa: E402

#: The paper's window (9 of 32 layers) scaled to the toys' 12 layers, odd.
TOY_WINDOW = 3


def medians(table, by=None) -> dict:
    columns = ["spearman", "top10", "sign_agreement"]
    if by is None:
        return {c: float(table[c].median()) for c in columns} | {"n_samples": int(table.sample_id.nunique())}
    return {key: {c: float(group[c].median()) for c in columns} for key, group in table.groupby(by)}


def frame_pair_targets(n_frames: int) -> dict:
    """Every frame i -/-> frame j (i < j) as a condition of one custom sweep target."""
    def pair(i, j):
        return lambda tm: knockout.between(tm.frame(i), tm.frame(j), tm)

    return {"frame-pairs": {f"frame {i}->frame {j}": pair(i, j) for j in range(n_frames) for i in range(j)}}


def layer_sums(single: pd.DataFrame, width: int, n_layers: int) -> pd.DataFrame:
    """Window rows estimated as the sum of the exact single-layer changes of log P (in ``estimate``)."""
    logged = single.assign(log_change=np.log1p(single.rel_change / 100))
    key = ["sample_id", "target", "condition"]
    parts = []
    for layer in range(n_layers):
        inside = logged[logged.layer.isin(knockout.window(layer, width, n_layers))]
        summed = inside.groupby(key, as_index=False).log_change.sum()
        parts.append(summed.assign(layer=layer, estimate=100 * np.expm1(summed.log_change)))
    return pd.concat(parts, ignore_index=True)


def fidelity(per_task: int, steps: int, models=("toy-video-ft", "toy-image")) -> dict:
    root = synthetic.generate(Path(tempfile.mkdtemp()) / "syn", tasks=synthetic.TEMPORAL_TASKS, per_task=per_task, seed=0,
                              progress=False)  # fmt: skip
    samples = list(TVBench(root))
    result = {"window": TOY_WINDOW, "steps": steps, "per_task": per_task}
    for name in models:
        model = HookedVideoLLM.from_pretrained(name)
        start = time.perf_counter()
        exact = flow.sweep(model, samples, window=TOY_WINDOW, progress=False)
        row = {"exact_s": time.perf_counter() - start, "n_selected": int(exact.sample_id.nunique())}
        for method in ("atp", "ig"):
            start = time.perf_counter()
            estimated = attribution.attribute(model, samples, window=TOY_WINDOW, method=method, steps=steps, progress=False)
            row[f"{method}_s"] = time.perf_counter() - start
            table = attribution.compare(estimated, exact)
            row[method] = medians(table)
            row[f"{method}_by_target"] = medians(attribution.compare(estimated, exact, by_target=True), "target")
        if name.endswith("video-ft"):  # where summing a window's layers is weak: wider windows
            row["atp_by_window"], row["exact_layer_sums_by_window"] = {}, {}
            single = flow.sweep(model, samples, window=1, progress=False)
            for width in (1, 3, 5, 9):
                exact_w = flow.sweep(model, samples, window=width, progress=False)
                estimated_w = attribution.attribute(model, samples, window=width, progress=False)
                row["atp_by_window"][width] = medians(attribution.compare(estimated_w, exact_w))
                # the best any sum of per-layer estimates can do: the exact single-layer changes, summed
                row["exact_layer_sums_by_window"][width] = medians(
                    attribution.compare(layer_sums(single, width, model.cfg.n_layers), exact_w))
            heads_on = samples[::per_task]  # one question of each task: n_heads passes per row
            head_exact = attribution.head_knockouts(model, heads_on, window=1, progress=False)
            head_atp = attribution.attribute(model, heads_on, window=1, head=True, progress=False)
            row["heads_atp"] = medians(attribution.compare(head_atp, head_exact))
            row["heads_atp_by_target"] = medians(attribution.compare(head_atp, head_exact, by_target=True), "target")
        pairs_exact = flow.sweep(model, samples, targets=[frame_pair_targets(8)], window=1, progress=False)
        pairs = attribution.attribute(model, samples, granularity="frame-pairs", window=1, progress=False)
        pairs = pairs[pairs.target_frame >= 0].assign(target="frame-pairs")
        row["frame_pairs_atp"] = medians(attribution.compare(pairs, pairs_exact))
        result[name] = row
        print(json.dumps({name: row}), flush=True)
    return result


def estimates(models, repeats: int) -> dict:
    """The estimates from held gradients alone (no forward, no backward) on one question of each
    bundled model: median seconds and ATen operator calls (on a GPU, about one kernel launch
    each) per granularity, with and without per-head rows."""
    from torch.profiler import ProfilerActivity, profile

    root = synthetic.generate(Path(tempfile.mkdtemp()) / "syn", tasks=synthetic.TEMPORAL_TASKS[:1], per_task=1, seed=0,
                              progress=False)  # fmt: skip
    result = {}
    for name in models:
        model = HookedVideoLLM.from_pretrained(name)
        prompt = next(iter(TVBench(root))).prepare(model)
        grads = attribution.pattern_gradients(model, model.embed(prompt))
        row = {"n_positions": prompt.n_positions, "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads}
        for granularity in attribution.GRANULARITIES:
            for per_head in (False, True):
                call = lambda: effects_of(granularity, grads, prompt, flow.TARGETS, per_head)  # noqa: E731
                call()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    call()
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - start)
                row[f"{granularity}{' per head' if per_head else ''}"] = {
                    "s": statistics.median(times), "aten_ops": sum(e.count for e in prof.key_averages())}
        result[name] = row
        print(json.dumps({name: row}), flush=True)
    return result


def speed(preset: str, device: str, repeats: int, profiled: bool = False) -> dict:
    from knockout_sweep import make_confident, peak_gib, profile, sync  # noqa: E402
    from shapes import model_and_prompt  # noqa: E402

    model, prompt = model_and_prompt(preset, device)
    make_confident(model, prompt, 13)
    result = {"preset": preset, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "n_positions": prompt.n_positions, "n_layers": model.cfg.n_layers}  # fmt: skip

    def timed(call) -> tuple[float, float | None]:
        call()  # warm-up
        sync(device)
        peak_gib(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times), peak_gib(device)

    runs = {
        "exact_engine_four_targets": lambda: flow.sweep(model, [prompt], window=9, select="all", engine="fast", progress=False),
        "atp_four_targets": lambda: attribution.attribute(model, [prompt], window=9, select="all", progress=False),
        "atp_frame_pairs": lambda: attribution.attribute(model, [prompt], granularity="frame-pairs", window=1, select="all",
                                                         progress=False),
        "atp_four_targets_per_head": lambda: attribution.attribute(model, [prompt], window=9, select="all", head=True,
                                                                   progress=False),
    }  # fmt: skip
    for name, call in runs.items():
        seconds, peak = timed(call)
        result[name] = {"s": seconds, "peak_gib": peak}
        print(json.dumps({name: result[name]}), flush=True)

    # where the time goes: the forward and backward, then the estimates from held gradients
    embedded = model.embed(prompt)
    with torch.no_grad():
        answer = int(model(embedded, logits_to_keep=1)[0, -1].argmax())
    estimates = {}
    for path in ("fast", "reference"):  # the SDPA forward with recomputed patterns, and materialised patterns
        seconds, peak = timed(lambda: attribution.pattern_gradients(model, embedded, answer, path=path))
        result[f"forward_backward_only_{path}"] = {"s": seconds, "peak_gib": peak}
        grads = attribution.pattern_gradients(model, embedded, answer, path=path)
        for granularity in ("conditions", "frame-pairs"):
            seconds, _ = timed(lambda: effects_of(granularity, grads, prompt, flow.TARGETS, False))
            result[f"estimates_only_{granularity}_{path}"] = {"s": seconds}
        if profiled:  # where the estimates' time goes (GPU kernels, idle time, the CPU's own operators)
            result[f"profile_estimates_conditions_{path}"] = profile(
                lambda: effects_of("conditions", grads, prompt, flow.TARGETS, False))
        estimates[path] = torch.stack([effect for _, effect in effects_of("conditions", grads, prompt, flow.TARGETS, False)])
        del grads
    difference = (estimates["fast"] - estimates["reference"]).abs()
    fast, reference = estimates["fast"].flatten().float().cpu(), estimates["reference"].flatten().float().cpu()
    result["fast_vs_reference"] = {"max_abs_log_p_difference": float(difference.max()),
                                   "median_abs_log_p_difference": float(difference.median()),
                                   "largest_effect": float(estimates["reference"].abs().max()),
                                   "spearman": spearman(pd.Series(fast.numpy()), pd.Series(reference.numpy())),
                                   "estimates": int(fast.numel())}  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if "_only_" in k}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fidelity", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--estimates", action="store_true", help="the estimates from held gradients alone, on the toys")
    parser.add_argument("--preset", default="llava-next-video-7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["toy-video-ft", "toy-image"], help="bundled models (--fidelity)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="with --speed: profile the estimates of both paths (GPU)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = {}
    if args.fidelity:
        result["fidelity"] = fidelity(args.per_task, args.steps, args.models)
    if args.estimates:
        result["estimates"] = estimates(args.models, args.repeats)
    if args.speed:
        result["speed"] = speed(args.preset, args.device, args.repeats, args.profile)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
