"""The paper's model shapes on one GPU: checkpoint load time, a forward, a four-target sweep.

For each preset (random weights of the real shape, bf16): the checkpoint is written in the
format users download (PLLaVA: the released llava layout; Mini-InternVL: the InternVL-chat
layout; VideoLLaMA3: the official release's layout) and loaded back with
``HookedVideoLLM.from_pretrained`` (timed); then the median forward of one prompt and the median
four-target sweep of one sample (window 9, every layer, the sweep engine), with peak memory.
``--frames`` adds rows for longer videos (LLaVA-NeXT-Video: 144 tokens per frame).

    python benchmarks/paper_models.py --presets pllava-7b,pllava-13b --out results/paper_models.json
    python benchmarks/paper_models.py --presets internvl-4b,videollama3-7b --out results/paper_models_families.json
    python benchmarks/paper_models.py --presets llava-next-video-7b --frames 16,32,64 --no-load
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from knockout_sweep import peak_gib, sync, timed  # noqa: E402
from shapes import PRESETS, build_hf, frames_for  # noqa: E402

from hooked_video.zoo.tiny import AFTER_SAVE  # noqa: E402

from hooked_video import HookedVideoLLM, flow  # noqa: E402


def save_checkpoint(preset: str, folder: Path, device: str) -> float:
    """Write the preset's checkpoint as users download it; returns the seconds it took."""
    start = time.perf_counter()
    hf, processor = build_hf(preset, device, torch.bfloat16)
    hf.save_pretrained(folder)
    processor.save_pretrained(folder)
    rewrite = AFTER_SAVE.get(PRESETS[preset][0])
    if rewrite is not None:  # the released layout of the paper's checkpoints (PLLaVA, InternVL-chat, VideoLLaMA3)
        rewrite(hf, folder)
    del hf
    gc.collect()
    empty_cache(device)
    return time.perf_counter() - start


def empty_cache(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def measure(model, preset: str, n_frames: int | None, device: str) -> dict:
    prompt = model.prepare(frames_for(preset, n_frames), "which way does the ball move ?", ["left", "right", "up", "down"],
                           answer=1, num_frames=None)  # fmt: skip
    row = {"n_positions": prompt.n_positions, "frames": prompt.token_map.n_input_frames}
    with torch.no_grad():
        model(prompt)
        peak_gib(device)
        row["forward_s"] = timed(lambda: model(prompt), device, 5)
        row["forward_peak_gib"] = peak_gib(device)

    def sweep():
        flow.sweep(model, [prompt], window=9, select="all", progress=False)

    sweep()
    peak_gib(device)
    row["sweep_s"] = timed(sweep, device, 2)
    row["sweep_peak_gib"] = peak_gib(device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="pllava-7b,pllava-13b")
    parser.add_argument("--frames", default=None, help="extra frame counts, e.g. 16,32,64")
    parser.add_argument("--no-load", action="store_true", help="build in memory instead of timing a checkpoint load")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device, rows = args.device, []
    for preset in args.presets.split(","):
        row = {"preset": preset, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}
        folder = Path(tempfile.mkdtemp()) / preset
        if args.no_load:
            hf, processor = build_hf(preset, device, torch.bfloat16)
            model = HookedVideoLLM.from_hf(hf, processor, model_name=preset)
        else:
            row["write_s"] = round(save_checkpoint(preset, folder, device), 1)
            sync(device)
            start = time.perf_counter()
            model = HookedVideoLLM.from_pretrained(folder, dtype="bfloat16", device=device)
            sync(device)
            row["load_s"] = round(time.perf_counter() - start, 1)
        row["weights_gib"] = round(sum(p.numel() * p.element_size() for p in model.hf_model.parameters()) / 2**30, 1)
        row.update(measure(model, preset, None, device))
        print(json.dumps(row), flush=True)
        rows.append(row)
        for n_frames in [int(f) for f in args.frames.split(",")] if args.frames else []:
            extra = {"preset": preset, **measure(model, preset, n_frames, device)}
            print(json.dumps(extra), flush=True)
            rows.append(extra)
        del model
        gc.collect()
        empty_cache(device)
        shutil.rmtree(folder, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
