"""Pathway discovery: what it finds on the planted toy and what it costs at a real model's shape.

- ``--toy`` (CPU is enough): ``discover`` on toy-planted over N questions per temporal task, with
  ``method="exact"``, ``"atp"`` and ``"gates"`` side by side: the ranges found, precision and recall of
  the planted (flow, layer) cells, exact forwards, seconds.
- ``--toy-video-ft`` (CPU): the search with video -> last as a fourth flow (that toy reads the
  video straight into the last position) on N questions per temporal task, whole curve, with
  random pruning (3 seeds): the found pathway, and the curve against random pruning per size.
- ``--preset`` (a GPU): at a preset's shape (random weights, bf16, the answer made confident),
  per-model discovery over ``--samples`` prompts and per-sample discovery on one, whole curve
  (every layer of every flow closed: the most work a search can do), with ``method="atp"`` and,
  per sample, ``"exact"``: seconds, exact candidate forwards, peak memory. ``--refine-in PRESET``
  times ``refine(granularity="frame-pairs")`` inside that preset's ranges instead.

    python benchmarks/discovery.py --preset llava-next-video-7b --device cuda --refine-in llava-next-7b-video-ft
    python benchmarks/discovery.py --toy --per-task 2 --out results/discovery_toy.json
    python benchmarks/discovery.py --toy-video-ft --per-task 4 --out results/discovery_toy_video_ft.json
    python benchmarks/discovery.py --toy-video-ft --video-model toy16-video-ft --per-task 4 --out results/discovery_toy16_video_ft.json
    python benchmarks/discovery.py --toy-video-ft --video-model toy16-video-ft --per-task 4 --method gates --out results/discovery_toy16_video_ft_gates.json
    python benchmarks/discovery.py --preset llava-next-video-7b --device cuda --samples 32 --out results/discovery_7b.json
    python benchmarks/discovery.py --preset llava-next-video-7b --device cuda --samples 32 --method gates --out results/discovery_gates_7b_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))

from shapes import PRESETS, frames_for, model_and_prompt  # noqa: E402

from hooked_video import HookedVideoLLM, discovery  # noqa: E402
from hooked_video.analysis.discovery.scoring import Scorer  # noqa: E402
from hooked_video.data import TVBench, synthetic  # noqa: E402
from hooked_video.zoo import planted  # noqa: E402

FLOWS = ("inter", "v2q", "q2l")


def cells(spec) -> set:
    return set() if spec is None else {(f, l) for f in FLOWS if getattr(spec, f)
                                       for l in range(getattr(spec, f)[0], getattr(spec, f)[1] + 1)}  # fmt: skip


class Counted:
    """Counts the exact candidate forwards (one per setting and sample) scored inside the context."""

    def __enter__(self):
        self.n, self._row = 0, Scorer._row

        def counted(scorer, *args, **kwargs):
            self.n += 1
            return self._row(scorer, *args, **kwargs)

        Scorer._row = counted
        return self

    def __exit__(self, *exc):
        Scorer._row = self._row


def timed_discovery(model, samples, device: str, **kwargs) -> dict:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with Counted() as count:
        start = time.perf_counter()
        found = discovery.discover(model, samples, progress=False, **kwargs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"seconds": round(seconds, 2), "candidate_forwards": count.n, "steps": len(found.path),
            "found": None if found.spec is None else found.spec.describe(), "peak_gib": peak and round(peak, 1)}  # fmt: skip


def toy_and_questions(name: str, per_task: int):
    """A bundled toy on 2 threads, and ``per_task`` fresh questions of each temporal task."""
    root = synthetic.generate(Path(tempfile.mkdtemp()) / "syn", tasks=synthetic.TEMPORAL_TASKS, per_task=per_task,
                              seed=0, progress=False)  # fmt: skip
    torch.set_num_threads(2)
    return HookedVideoLLM.from_pretrained(name), list(TVBench(root))


def toy(per_task: int) -> dict:
    model, samples = toy_and_questions("toy-planted", per_task)
    truth = cells(planted.PLANTED)
    result = {"model": "toy-planted", "samples": len(samples), "threads": torch.get_num_threads()}
    for method in discovery.METHODS:
        row = timed_discovery(model, samples, "cpu", method=method)
        found = discovery.discover(model, samples, method=method, progress=False)  # the spec, for the cells
        hit = len(cells(found.spec) & truth)
        row.update(precision=hit / max(len(cells(found.spec)), 1), recall=hit / len(truth))
        result[method] = row
        print(method, row, flush=True)
    return result


def toy_video_ft(per_task: int, name: str = "toy-video-ft", method: str = "atp") -> dict:
    model, samples = toy_and_questions(name, per_task)
    start = time.perf_counter()
    found = discovery.discover(model, samples, flows=discovery.PAPER_FLOWS + ("v2l",), method=method, seeds=3,
                               progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    paper = discovery.discover(model, samples, full_curve=False, progress=False)
    random = found.curve[found.curve.pathway == "random"].groupby("step")[["retention", "rel_change", "accuracy"]].mean()
    rows = [{"step": int(step), "retention": r.retention, "random_rel_change": r.rel_change, "random_accuracy": r.accuracy,
             "discovered_rel_change": found.path.loc[int(step), "rel_change"],
             "discovered_accuracy": found.path.loc[int(step), "accuracy"]} for step, r in random.iterrows()]  # fmt: skip
    result = {"model": name, "method": method, "samples": len(samples), "seconds": round(seconds, 1),
              "found": found.spec and found.spec.describe(), "found_step": found.step, **found.summary(),
              "paper_flows_step0": paper.path.iloc[0][["retention", "rel_change", "accuracy"]].to_dict(),
              "paper_flows_found": paper.spec and paper.spec.describe(), "against_random": rows,
              "refined": refined_against_random(model, samples, found)}  # fmt: skip
    return json.loads(json.dumps(result, default=str))


def refined_against_random(model, samples, found, seeds: int = 3) -> list[dict]:
    """Below the found pathway: ``refine`` at each granularity, and random pruning of the refined
    pathway's size (``seeds`` seeds, mean)."""
    from hooked_video.analysis.discovery.curve import random_setting
    from hooked_video.data.mcqa import identify_all

    scorer = Scorer(model, identify_all(samples), 8, "auto")
    out = []
    for granularity in ("frame-pairs", "cells"):
        start = time.perf_counter()
        finer = discovery.refine(model, samples, found, granularity=granularity, progress=False)
        seconds = time.perf_counter() - start
        kept = finer.path[finer.path.faithful].iloc[-1]
        settings = {}
        for seed in range(seeds):
            settings.update(random_setting(scorer, 1 - float(kept.retention), seed))
        random = pd.DataFrame(scorer.score(settings).values()).mean()
        out.append({"granularity": granularity, "seconds": round(seconds, 1), "candidates": finer.candidates,
                    "closed": len(finer.closed), "untried": finer.untried, "points": len(finer.path), "retention": kept.retention,
                    "rel_change": kept.rel_change, "accuracy": kept.accuracy, "random_rel_change": random.rel_change,
                    "random_accuracy": random.accuracy})  # fmt: skip
        print(out[-1], flush=True)
    return out


def real_shape_prompts(preset: str, device: str, n_samples: int, margin: float):
    """The preset's random-weight model (its answer made confident) and ``n_samples`` prompts
    (the frames rolled, two option orders)."""
    from knockout_sweep import make_confident

    model, prompt = model_and_prompt(preset, device)
    make_confident(model, prompt, margin)
    options = [["left", "right", "up", "down"], ["up", "down", "left", "right"]]
    prompts = [prompt] + [model.prepare(np.roll(frames_for(preset), i, axis=0), "which way does the ball move ?",
                                        options[i % 2], answer=1, num_frames=None) for i in range(1, n_samples)]  # fmt: skip
    return model, prompts


def refine_at_shape(preset: str, device: str, n_samples: int, margin: float, pathway: str) -> dict:
    """``refine(granularity="frame-pairs")`` inside a preset pathway's ranges over ``n_samples``
    prompts. Random weights give no natural tolerance, so a first call with tolerance 100 scores
    the two ends (nothing / every group closed) and the timed call searches between them with the
    tolerance half-way, reading the ends from the same folder."""
    import shutil

    model, prompts = real_shape_prompts(preset, device, n_samples, margin)
    from hooked_video.analysis.pathways import PathwaySpec

    top = model.cfg.n_layers - 1
    spec = PathwaySpec((0, top), (0, top), (0, top)) if pathway == "all" else PathwaySpec.preset(pathway)
    found = discovery.Discovery(spec, None, 1.0, len(prompts), 0)
    folder = Path(tempfile.mkdtemp()) / "refine"
    ends = discovery.refine(model, prompts, found, tolerance=100, min_accuracy=0, out=folder, progress=False)
    changes = ends.path.set_index("n_closed").rel_change
    tolerance = -(changes.iloc[0] + changes.iloc[-1]) / 2
    with Counted() as count:
        torch.cuda.synchronize() if device.startswith("cuda") else None
        start = time.perf_counter()
        finer = discovery.refine(model, prompts, found, tolerance=tolerance, min_accuracy=0, out=folder, progress=False)
        torch.cuda.synchronize() if device.startswith("cuda") else None
        seconds = time.perf_counter() - start
    shutil.rmtree(folder.parent, ignore_errors=True)
    return {"preset": preset, "pathway": pathway, "samples": len(prompts), "candidates": finer.candidates,
            "ends_rel_change": [float(changes.iloc[0]), float(changes.iloc[-1])], "tolerance": float(tolerance),
            "points": len(finer.path), "new_points_scored": count.n // len(prompts), "closed": len(finer.closed),
            "seconds": round(seconds, 2),
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}  # fmt: skip


def real_shape(preset: str, device: str, n_samples: int, margin: float, method: str = "atp") -> dict:
    model, prompts = real_shape_prompts(preset, device, n_samples, margin)
    prompt = prompts[0]
    result = {"preset": preset, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "n_positions": prompt.n_positions, "n_layers": model.cfg.n_layers, "confident_margin": margin,
              "torch": torch.__version__}  # fmt: skip
    discovery.discover(model, prompts[:1], progress=False, full_curve=False, method="atp")  # warm-up
    if method == "gates":  # per sample, then per model; the gates' training included
        for name, chosen in (("per_sample_gates", prompts[:1]), ("per_model_gates", prompts)):
            result[name] = timed_discovery(model, chosen, device, method="gates")
            print(result, flush=True)
        return result
    result["per_sample_atp"] = timed_discovery(model, prompts[:1], device, method="atp")
    print(result, flush=True)
    result["per_sample_exact"] = timed_discovery(model, prompts[:1], device, method="exact")
    print(result, flush=True)
    result["per_model_atp"] = timed_discovery(model, prompts, device, method="atp")
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="toy-planted, exact vs atp (CPU)")
    parser.add_argument("--toy-video-ft", action="store_true", help="toy-video-ft with video -> last searched too (CPU)")
    parser.add_argument("--video-model", default="toy-video-ft", help="the bundled model --toy-video-ft searches")
    parser.add_argument("--method", choices=["atp", "gates"], default="atp",
                        help="the search --toy-video-ft runs; with --preset, gates times only method='gates'")
    parser.add_argument("--per-task", type=int, default=2)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a real shape, random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--confident", type=float, default=13.0, help="raise the answer's logit by this much")
    parser.add_argument("--refine-in", default=None, metavar="PATHWAY_PRESET",
                        help="with --preset: time refine(granularity='frame-pairs') inside this preset's ranges "
                             "('all': every flow open in every layer)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.toy:
        result = toy(args.per_task)
    elif args.toy_video_ft:
        result = toy_video_ft(args.per_task, args.video_model, args.method)
    elif args.refine_in:
        result = refine_at_shape(args.preset, args.device, args.samples, args.confident, args.refine_in)
    else:
        result = real_shape(args.preset, args.device, args.samples, args.confident, args.method)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
