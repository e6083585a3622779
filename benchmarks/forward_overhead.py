"""Where the hooked forward's time goes, against a plain HF model with the same weights (GPU).

Times (median of 10 after a warm-up): the hooked forward; its vision side alone
(``model.embed``); its language model alone on the embedded prompt; the plain HF model with SDPA,
whole and vision side alone. Then profiles the hooked forward and the plain one: wall time, the
CPU time of the Python side, and the top GPU kernels.

    python benchmarks/forward_overhead.py --preset llava-next-video-7b --out /tmp/forward_overhead.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from knockout_sweep import timed  # noqa: E402
from shapes import PRESETS, build_hf, model_and_prompt  # noqa: E402


def profile(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    fn()
    cuda = torch.cuda.is_available()
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize() if cuda else None
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type.name == "CUDA"] or events
    top = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:10]
    cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {"wall_ms": round(wall * 1e3, 1),
            "kernel_ms": round(sum(e.self_device_time_total for e in kernels) / 1e3, 1),
            "top_gpu": [(e.key[:60], round(e.self_device_time_total / 1e3, 2), e.count) for e in top],
            "top_cpu": [(e.key[:60], round(e.self_cpu_time_total / 1e3, 2), e.count) for e in cpu]}  # fmt: skip


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llava-next-video-7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, prompt = model_and_prompt(args.preset, device)
    embedded = model.embed(prompt)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    result = {"preset": args.preset, "device": name, "n_positions": prompt.n_positions}
    for name, fn in {"hooked_forward": lambda: model(prompt), "hooked_vision": lambda: model.embed(prompt),
                     "hooked_language_model": lambda: model(embedded),
                     "hooked_language_model_last_logits": lambda: model(embedded, logits_to_keep=1)}.items():  # fmt: skip
        fn()
        result[f"{name}_ms"] = round(timed(fn, device, 10) * 1e3, 1)
        print(name, result[f"{name}_ms"], flush=True)
    result["profile_hooked"] = profile(lambda: model(prompt))
    del model, embedded
    torch.cuda.empty_cache() if device.startswith("cuda") else None
    hf, _ = build_hf(args.preset, device, dtype, attn="sdpa")
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in prompt.inputs.items()}
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    pixel_key = next(k for k in inputs if k.startswith("pixel_values"))
    for name, fn in {"hf_sdpa_forward": lambda: hf(**inputs),
                     "hf_sdpa_vision": lambda: hf.model.get_video_features(inputs[pixel_key])
                     if hasattr(hf.model, "get_video_features") else None}.items():  # fmt: skip
        fn()
        result[f"{name}_ms"] = round(timed(fn, device, 10) * 1e3, 1)
        print(name, result[f"{name}_ms"], flush=True)
    result["profile_hf_sdpa"] = profile(lambda: hf(**inputs))
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
