"""The faithfulness-size curve over every attention edge (``discovery.size_curve``) on the bundled
toys, against random pruning and the toy's preset; and how those presets were read off.

- default (CPU): per model, N questions per temporal task, 3 random seeds, the toy's preset: per
  size the ranked pathway's figures beside random pruning's mean, the preset and the ranked
  pathway at the preset's size, the smallest pathway that keeps 95% of the full accuracy,
  seconds, and whether the ranked curve is above random at every size random can reach; and the
  same curve with one ranking of the full model (``rerank=False``), to show what re-ranking buys.
- ``--toy-presets`` (CPU): the paper's way of reading a pathway off knockout curves
  (``PathwaySpec.from_sweep``, threshold 10%, window 9) on each toy's cross-frame and vql-to-ql
  sweep: the ranges ``PRESETS["toy-video-ft"]`` and ``PRESETS["toy16-video-ft"]`` hold.

    python benchmarks/size_curve.py --models toy16-video-ft toy-video-ft --per-task 4 --out results/size_curve_toys.json
    python benchmarks/size_curve.py --toy-presets --per-task 4 --out results/toy_presets.json
    python benchmarks/size_curve.py --preset llava-next-video-7b --device cuda --samples 32 --out results/size_curve_7b_h200.json

- ``--preset`` (a GPU): the curve's cost at a preset's shape (random weights, bf16, the answer made
  confident, as ``discovery.py --preset``): per sample (one prompt) and per model (``--samples``
  prompts), 3 seeds, the paper's pathway of that shape as the preset: seconds, exact points,
  backward passes, peak memory. Random weights make the figures themselves meaningless.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from discovery import real_shape_prompts, toy_and_questions  # noqa: E402

from hooked_video import discovery, flow  # noqa: E402
from hooked_video.analysis.pathways import PathwaySpec, preset_for  # noqa: E402


def curve_of(name: str, per_task: int) -> dict:
    model, samples = toy_and_questions(name, per_task)
    start = time.perf_counter()
    curve = discovery.size_curve(model, samples, seeds=3, preset="auto", progress=False)
    seconds = time.perf_counter() - start
    table = curve.table
    ranked = table[table.pathway == "ranked"]
    grid = ranked[ranked["size"].notna()].set_index("size")
    random = table[table.pathway == "random"].groupby("size")[["retention", "rel_change", "accuracy"]].mean()
    rows = [{"size": size, "retention": r.retention, "rel_change": r.rel_change, "accuracy": r.accuracy,
             "random_rel_change": random.rel_change.get(size), "random_accuracy": random.accuracy.get(size)}
            for size, r in grid.iterrows()]  # fmt: skip
    preset = table[table.pathway == "preset"]
    at_preset = None
    if len(preset):
        p = preset.iloc[0]
        r = grid.loc[round(float(p.retention), 6)]
        at_preset = {"preset": preset_for(model), "retention": p.retention, "rel_change": p.rel_change,
                     "accuracy": p.accuracy, "ranked_retention": r.retention, "ranked_rel_change": r.rel_change,
                     "ranked_accuracy": r.accuracy}  # fmt: skip
    s = ranked[ranked.n_closed == len(curve.smallest.closed)].iloc[0]
    smallest = {"n_closed": int(s.n_closed), "retention": s.retention, "rel_change": s.rel_change, "accuracy": s.accuracy}
    once = discovery.size_curve(model, samples, seeds=0, preset=None, rerank=False, bisect=0, progress=False).table
    one_shot = [{"size": r["size"], "retention": r.retention, "rel_change": r.rel_change, "accuracy": r.accuracy}
                for _, r in once[once["size"].notna()].iterrows()]  # fmt: skip
    reached = [r for r in rows if r["random_accuracy"] is not None]
    return {"model": name, "samples": curve.samples, "seconds": round(seconds, 1), "full_accuracy": curve.full_accuracy,
            "sizes": rows, "one_shot_ranking": one_shot, "preset": at_preset, "smallest_keeping_95pct_accuracy": smallest,
            "above_random_accuracy_everywhere": all(r["accuracy"] >= r["random_accuracy"] for r in reached),
            "above_random_probability_everywhere": all(r["rel_change"] >= r["random_rel_change"] for r in reached),
            "random_reaches_down_to": min((r["size"] for r in reached), default=None)}  # fmt: skip


def toy_presets(per_task: int) -> dict:
    out = {}
    for name in ("toy-video-ft", "toy16-video-ft"):
        model, samples = toy_and_questions(name, per_task)
        sweep = flow.sweep(model, samples, targets=["cross-frame", "vql-to-ql"], window=9, progress=False)
        spec = PathwaySpec.from_sweep(sweep, threshold=10.0)
        means = sweep.groupby(["condition", "layer"]).rel_change.mean().unstack(0).round(2)
        out[name] = {"inter": spec.inter, "v2q": spec.v2q, "q2l": spec.q2l, "samples": len(samples),
                     "per_layer_mean_rel_change": json.loads(means.to_json())}  # fmt: skip
        print(name, spec.describe(), flush=True)
    return out


#: The paper's pathway of each real shape ``--preset`` times (the preset scored beside the curve).
PAPER_PATHWAY = {"llava-next-video-7b": "llava-next-7b-video-ft", "llava-next-video-13b": "llava-next-13b-video-ft"}


def timed_curve(model, prompts, device: str, preset) -> dict:
    """One size curve over ``prompts``, timed: the whole, the rankings (their backwards included)
    and the random-pruning points; counts of exact points and backwards."""
    import torch

    from hooked_video.analysis.discovery import ranked

    cuda = device.startswith("cuda")
    spent = {"rank_groups": 0.0, "random_rows": 0.0}
    backwards = [0]
    originals = {name: getattr(ranked, name) for name in (*spent, "pattern_gradients")}

    def timed(name):
        def call(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                torch.cuda.synchronize() if cuda else None
                spent[name] += time.perf_counter() - begin

        return call

    def counted(*args, **kwargs):
        backwards[0] += 1
        return originals["pattern_gradients"](*args, **kwargs)

    for name in spent:
        setattr(ranked, name, timed(name))
    ranked.pattern_gradients = counted
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        start = time.perf_counter()
        curve = discovery.size_curve(model, prompts, seeds=3, preset=preset, progress=False)
        torch.cuda.synchronize() if cuda else None
        seconds = time.perf_counter() - start
    finally:
        for name, original in originals.items():
            setattr(ranked, name, original)
    table = curve.table
    smallest = table[(table.pathway == "ranked") & (table.n_closed == len(curve.smallest.closed))].retention.iloc[0]
    return {"samples": len(prompts), "seconds": round(seconds, 2), "per_sample_s": round(seconds / len(prompts), 2),
            "ranking_s": round(spent["rank_groups"], 2), "random_points_s": round(spent["random_rows"], 2),
            "exact_points": len(table), "ranked_points": int((table.pathway == "ranked").sum()),
            "random_points": int((table.pathway == "random").sum()), "backwards": backwards[0],
            "groups": len(curve.ranking), "smallest_retention": float(smallest),
            "lowest_retention": float(table[table.pathway == "ranked"].retention.min()),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None}  # fmt: skip


def real_shape(preset: str, device: str, n_samples: int, margin: float) -> dict:
    import torch

    model, prompts = real_shape_prompts(preset, device, n_samples, margin)
    pathway = PAPER_PATHWAY.get(preset)
    result = {"preset": preset, "pathway_preset": pathway, "n_positions": prompts[0].n_positions,
              "n_layers": model.cfg.n_layers, "confident_margin": margin, "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}  # fmt: skip
    discovery.size_curve(model, prompts[:1], sizes=(1.0, 0.5), seeds=0, preset=None, bisect=0, progress=False)  # warm-up
    result["per_sample"] = timed_curve(model, prompts[:1], device, pathway)
    print(result, flush=True)
    result["per_model"] = timed_curve(model, prompts, device, pathway)  # the first prompt's rows are not reused: no out
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["toy16-video-ft", "toy-video-ft"])
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--toy-presets", action="store_true", help="read the toys' presets off their sweeps")
    parser.add_argument("--preset", default=None, help="a real shape (benchmarks/shapes.py), random weights")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--confident", type=float, default=13.0, help="raise the answer's logit by this much")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.preset:
        result = real_shape(args.preset, args.device, args.samples, args.confident)
    elif args.toy_presets:
        result = toy_presets(args.per_task)
    else:
        result = [curve_of(name, args.per_task) for name in args.models]
    print(json.dumps(result, indent=1, default=str))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
