"""``reproduce`` end to end at a real model's shape (random weights): seconds per sample, and per stage.

Builds the synthetic benchmark (the five temporal tasks), then runs ``reproduce`` on the preset's
random-weight model, the way a user runs it (engine "auto"; data preparation, the four targets,
logit lens and answer probability, pathways, figures and report), timing each stage.
``--select all`` runs every analysis on every sample (random weights answer at chance, so the
paper's "correct" would keep about a quarter of them).

    python benchmarks/reproduce_speed.py --preset llava-next-video-7b --per-task 8 --out /tmp/reproduce_7b.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shapes import PRESETS, add_masked_sdpa_option, build, use_masked_sdpa  # noqa: E402

from hooked_video import HookedVideoLLM  # noqa: E402
from hooked_video.analysis import pathways  # noqa: E402
sweep_module = importlib.import_module("hooked_video.analysis.flow.sweep")  # the modules (their packages export functions of these names)
lens_run = importlib.import_module("hooked_video.analysis.lens.run")
from hooked_video.app import reproduce as reproduce_module  # noqa: E402
from hooked_video.data import TVBench, synthetic  # noqa: E402
from hooked_video.data.mcqa import Sample  # noqa: E402
from hooked_video.data.prefetch import PromptPreparer  # noqa: E402

#: The stages reproduce calls, as (module attribute holder, attribute) pairs, timed by wrapping.
STAGES = {"load": (None, "load_benchmark"), "sweep": ("flow", "sweep"), "lens": ("lens", "run"),
          "keywords": (None, "_keywords"), "spec": (None, "_pathway_spec"), "pathways": ("pathways", "evaluate"),
          "figures": (None, "_figures"), "save_figures": (None, "save_figure"), "summary": (None, "_write_summary"),
          "report": (None, "write_report")}  # fmt: skip


#: With --steps, the steps inside the stages, timed the same way (nested: a step's time is in its stage's).
STEPS = {"all: embed": (HookedVideoLLM, "embed"), "all: engine trace": (sweep_module.Engine, "trace"),
         "all: prepare (waited for)": (PromptPreparer, "prompt"), "lens: forward": (lens_run, "capture"),
         "lens: top tokens": (lens_run, "top_tokens"), "lens: answer rows": (lens_run, "answer_rows"),
         "pathways: embed + trace": (pathways._Runner, "__init__"),
         "pathways: pathway edges": (pathways.PathwaySpec, "layer_edges"), "pathways: random draw": (pathways, "_random_draw"),
         "pathways: knockouts": (pathways._Runner, "knocked_out_many"), "pathways: predictions": (pathways, "_prediction")}  # fmt: skip


@contextmanager
def timed_stages(seconds: dict, device: str, steps: bool = False):
    """Wraps the stages of ``reproduce`` (and with ``steps`` the steps in them) so that each call adds
    its time (synchronised) to ``seconds``."""
    saved = []
    targets = {name: (getattr(reproduce_module, holder) if holder else reproduce_module, attribute)
               for name, (holder, attribute) in STAGES.items()}  # fmt: skip
    for name, (owner, attribute) in {**targets, **(STEPS if steps else {})}.items():
        original = getattr(owner, attribute)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                torch.cuda.synchronize() if device.startswith("cuda") else None
                seconds[_name] = seconds.get(_name, 0.0) + time.perf_counter() - start

        saved.append((owner, attribute, original))
        setattr(owner, attribute, wrapper)
    try:
        yield
    finally:
        for owner, attribute, original in saved:
            setattr(owner, attribute, original)


def video_io() -> bool:
    """Whether a video reader (PyAV or decord) is installed."""
    return any(importlib.util.find_spec(name) is not None for name in ("av", "decord"))


def memory_samples(per_task: int) -> list[Sample]:
    """The synthetic benchmark's questions with their frames in memory (no files)."""
    return [Sample(id=f"{task}/{i}", video=clip.frames, question=clip.question, options=clip.options, answer=clip.answer,
                   task=task)
            for task in synthetic.TEMPORAL_TASKS for i in range(per_task) for clip in [synthetic.make_clip(task, i, 0)]]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--per-task", type=int, default=8)
    parser.add_argument("--select", default="all", choices=["all", "correct"])
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--in-memory", action="store_true",
                        help="frames in memory instead of encoded files (the default where neither PyAV nor decord "
                             "is installed): no video decoding is timed")
    parser.add_argument("--pathway-preset", default=None, choices=sorted(pathways.PRESETS),
                        help="the pathway ranges and random fraction of one of the paper's models, as reproduce uses them "
                             "on that checkpoint (default: ranges derived from the sweep, r from the run)")
    parser.add_argument("--steps", action="store_true", help="also time the steps inside the stages")
    add_masked_sdpa_option(parser)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="the tokenizer has no token")  # a preset's word-level vocabulary
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    use_masked_sdpa(args.masked_sdpa)
    model = build(args.preset, args.device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        in_memory = args.in_memory or not video_io()
        samples = memory_samples(args.per_task) if in_memory else list(TVBench(synthetic.generate(
            Path(tmp) / "data", tasks=synthetic.TEMPORAL_TASKS, per_task=args.per_task, seed=0, progress=False)))  # fmt: skip
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        with timed_stages(seconds, args.device, args.steps):
            reproduce_module.reproduce(model, samples, out=Path(tmp) / "run", window=9, select=args.select,
                                       engine=args.engine, progress=False, discover_samples=0, size_curve=False,
                                       spec=pathways.PathwaySpec.preset(args.pathway_preset) if args.pathway_preset else None)  # fmt: skip
        total = time.perf_counter() - start
    result = {"preset": args.preset, "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dtype": str(dtype), "samples": len(samples), "select": args.select, "engine": args.engine,
              "pathway_preset": args.pathway_preset, "masked_sdpa": args.masked_sdpa,
              "videos": "frames in memory" if in_memory else "encoded files",
              "total_s": round(total, 2), "per_sample_s": round(total / len(samples), 3),
              "stages_s": {k: round(v, 2) for k, v in seconds.items()},
              "other_s": round(total - sum(v for k, v in seconds.items() if ":" not in k), 2)}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
