"""Knockout sweep cost: the released code's approach versus ``flow.sweep``, side by side.

Reference (the paper's released code): one HF eager forward per knockout pass, batch 1, the
vision encoder recomputed each pass, per-layer explicit 4D additive masks. hooked_video: vision
once per sample (``model.embed``), passes batched with per-item edge sets and windows, hooks on
``hook_attn_scores``, ``logits_to_keep=1``.

Random weights with real shapes (``--preset 7b``: LLaVA-NeXT-Video-7B, Vicuna-7B LM, CLIP
ViT-L/14-336, 8 frames of 12x12 pooled tokens; ``--preset tiny`` for a CPU smoke run).

    python benchmarks/knockout_sweep.py --preset 7b --device cuda --out results.json
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooked_video import HookedVideoLLM, flow, knockout  # noqa: E402
from hooked_video.zoo.tiny import TinySizes, build_tiny  # noqa: E402

PRESETS = {
    "7b": dict(text=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=11008, vocab_size=32064, max_position_embeddings=4096),
               vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=336, patch_size=14), frames=8),
    "tiny": dict(text=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                           intermediate_size=128, vocab_size=1000), vision=dict(), frames=4),
}  # fmt: skip


def build(preset: str, device: str, dtype: torch.dtype) -> HookedVideoLLM:
    """A random-weight LLaVA-NeXT-Video of the preset's shape with a real processor."""
    import transformers
    from transformers import AutoConfig, AutoProcessor

    spec = PRESETS[preset]
    image, patch = spec["vision"].get("image_size", 32), spec["vision"].get("patch_size", 8)
    folder = build_tiny("llava_next_video", Path(tempfile.mkdtemp()) / "proc", TinySizes(image_size=image, patch_size=patch))
    config = AutoConfig.from_pretrained(folder)
    for key, value in spec["text"].items():
        setattr(config.text_config, key, value)
    for key, value in spec["vision"].items():
        setattr(config.vision_config, key, value)
    config.text_config.head_dim = config.text_config.hidden_size // config.text_config.num_attention_heads
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.LlavaNextVideoForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="eager")
    return HookedVideoLLM.from_hf(hf.eval(), AutoProcessor.from_pretrained(folder), model_name=f"random-{preset}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def reference_pass(model, prompt, edges_additive, layers) -> torch.Tensor:
    """One released-code pass: full HF forward (vision included), per-layer 4D masks."""
    hf = model.hf_model
    inputs = model.move_inputs(prompt.inputs)
    mask = edges_additive.to(inputs["input_ids"].device, next(hf.parameters()).dtype)

    def replace(module, args, kwargs):
        return args, {**kwargs, "attention_mask": mask}

    blocks = hf.model.language_model.layers
    handles = [blocks[l].register_forward_pre_hook(replace, with_kwargs=True) for l in layers]
    try:
        return hf(**inputs).logits[:, -1].float().softmax(-1)
    finally:
        for h in handles:
            h.remove()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--reference-passes", type=int, default=12)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)

    start = time.perf_counter()
    model = build(args.preset, args.device, dtype)
    frames = np.random.default_rng(0).integers(0, 256, (PRESETS[args.preset]["frames"], 336, 336, 3), dtype=np.uint8)
    prompt = model.prepare(frames, "which way does the ball move ?", ["left", "right", "up", "down"], answer=1, num_frames=None)
    tm, n_layers = prompt.token_map, model.cfg.n_layers
    n_conditions = sum(len(c) for c in flow.TARGETS.values())
    passes = n_conditions * n_layers
    result = {"preset": args.preset, "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dtype": str(dtype), "n_positions": prompt.n_positions, "grid": list(tm.grid_shape), "n_layers": n_layers,
              "passes_per_sample": passes + 1, "build_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    print(json.dumps(result), flush=True)

    # reference: median seconds per pass, cycling through the conditions at the middle layer
    conditions = [fn(tm) for conds in flow.TARGETS.values() for fn in conds.values()]
    layers = knockout.window(n_layers // 2, 9, n_layers)
    additive = [c.additive_mask() for c in conditions]
    reference_pass(model, prompt, additive[0], layers)  # warm-up
    ref = timed(lambda: [reference_pass(model, prompt, a, layers) for a in additive[:1]], args.device, args.reference_passes)
    result["reference_pass_median_s"] = statistics.median(ref)
    result["reference_sample_s"] = statistics.median(ref) * (passes + 1)
    print(json.dumps({k: result[k] for k in ("reference_pass_median_s", "reference_sample_s")}), flush=True)

    # hooked_video: whole sweeps of one sample (all four targets, window 9, every layer)
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        def one_sweep():
            flow.sweep(model, [prompt], window=9, select="all", batch_size=batch, progress=False)

        one_sweep()  # warm-up (allocator, kernels)
        times = timed(one_sweep, args.device, 2)
        result[f"sweep_b{batch}_sample_s"] = statistics.median(times)
        result[f"speedup_b{batch}"] = result["reference_sample_s"] / statistics.median(times)
        if args.device.startswith("cuda"):
            result[f"sweep_b{batch}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            torch.cuda.reset_peak_memory_stats()
        print(json.dumps({k: v for k, v in result.items() if f"b{batch}" in k}), flush=True)

    # fidelity on this shape: one batched sweep row against a reference pass
    df = flow.sweep(model, [prompt], targets=["vql-to-ql"], layers=[n_layers // 2], window=9, select="all", batch_size=4, progress=False)
    row = df[df.condition == "video->last"].iloc[0]
    probs = reference_pass(model, prompt, knockout.between(tm.video, tm.last, tm).additive_mask(), layers)[0]
    result["max_abs_diff_p_knockout_vs_reference"] = abs(row.p_knockout - float(probs[int(row.answer_token)]))
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
