"""Peak memory of the logit lens and the attention figure on long videos (CPU).

A small random LLaVA-NeXT-Video with realistic tokens per frame (192 px frames, patch 8, pooled
to 12 x 12 = 144 tokens per frame, as the paper's models) runs each measurement in a fresh
process, which reports its peak resident memory above its own baseline after loading:

- ``lens``: ``lens.logit_lens`` over every video position (fast SDPA path),
- ``figure``: ``viz.attention_to_video_figure`` with a cross-frame knockout (attention rows from
  rotated queries/keys, edge masks built a band of rows at a time),
- ``pattern``: the same attention read from TransformerLens' ``hook_pattern`` with knockout
  hooks (the reference path: one layer's (heads, N, N) scores at a time), for contrast.

    python benchmarks/long_video.py --frames 16,64 --out benchmarks/results/long_video_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=8, d_mlp=512, vision_width=64, vision_layers=2,
             image_size=192, patch_size=8, max_positions=16384)  # fmt: skip


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(model_dir: str, n_frames: int, what: str) -> dict:
    """In this process: build the prompt, then run one analysis and report its peak."""
    import numpy as np
    import torch

    from hooked_video import HookedVideoLLM, knockout, lens, viz

    torch.set_num_threads(1)
    model = HookedVideoLLM.from_pretrained(model_dir)
    frames = np.random.default_rng(0).integers(0, 256, (n_frames, 192, 192, 3), dtype=np.uint8)
    prompt = model.prepare(frames, "which way does the ball move first ?", ["left", "right"], answer=0, num_frames=None)
    embedded_once = model(prompt, logits_to_keep=1)  # warm-up: allocator and kernels
    del embedded_once
    before = current_mb()
    start_peak = peak_mb()
    layers = range(model.cfg.n_layers)
    if what == "lens":
        lens.logit_lens(model, prompt, variant="unembed", top_k=1)
    elif what == "figure":
        viz.attention_to_video_figure(model, prompt, keyword="first", layers=layers)
    elif what == "pattern":
        tm = prompt.token_map
        edges = knockout.cross_frame(tm)
        viz.video_attention_by_layer(model, prompt, tm.question, layers, fwd_hooks=knockout.hooks(edges, layers))
    peak = peak_mb()
    return {"frames": n_frames, "what": what, "n_positions": prompt.n_positions,
            "peak_above_baseline_mb": round(max(peak, start_peak) - before, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="16,64")
    parser.add_argument("--what", default="lens,figure,pattern")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.child[2])))
        return
    from hooked_video.zoo.tiny import TinySizes, build_tiny

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny("llava_next_video", Path(tmp) / "model", TinySizes(**SIZES)))
        for what in args.what.split(","):
            for n_frames in (int(f) for f in args.frames.split(",")):
                out = subprocess.run([sys.executable, __file__, "--child", model_dir, str(n_frames), what],
                                     capture_output=True, text=True, check=True)  # fmt: skip
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    for what in args.what.split(","):
        sizes = [r for r in rows if r["what"] == what]
        if len(sizes) >= 2:
            small, large = sizes[0], sizes[-1]
            ratio_n = large["n_positions"] / small["n_positions"]
            ratio_mem = large["peak_above_baseline_mb"] / max(small["peak_above_baseline_mb"], 1e-9)
            print(f"{what}: N x{ratio_n:.2f} -> peak memory x{ratio_mem:.2f} (linear ~ x{ratio_n:.1f}, quadratic ~ x{ratio_n ** 2:.1f})")
    if args.out:
        Path(args.out).write_text(json.dumps({"sizes": SIZES, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
