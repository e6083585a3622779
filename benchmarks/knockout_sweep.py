"""Knockout sweep cost per sample: the sweep engine, the TransformerLens hook path and the released
code's approach, side by side in one run, per target and for all four; plus the plain forward.

- released approach, as the released scripts run it: a plain HF model with eager attention (the
  vision tower's too), one forward per pass, batch 1, all logits, the precomputed (1, heads, N, N)
  additive mask swapped into the window's ``self_attn.forward``; per-sample time = median pass
  time x (passes + 1).
- hooks: ``flow.sweep(engine="hooks")``: vision once, batched passes, hooks on ``hook_attn_scores``.
- engine: ``flow.sweep(engine="fast")``: only the rows and layers a knockout changes, SDPA; with
  ``--compiled`` also ``engine="compiled"`` (the same, decoder layers through ``torch.compile``;
  its first call, compilation included, is reported apart).
- forward: the hooked model (fast path) vs the same weights in a plain HF model with SDPA; and
  ``run_with_cache`` with a ``names_filter`` of one hook.
- exactness: engine vs hooks rows of the full four-target sweep (argmax agreement, largest
  difference of relative changes in percentage points).

    python benchmarks/knockout_sweep.py --preset llava-next-video-7b --device cuda --out results/knockout_sweep_7b.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shapes import PRESETS, add_masked_sdpa_option, build_hf, model_and_prompt, use_masked_sdpa  # noqa: E402

from hooked_video import flow, knockout  # noqa: E402

ROW = ["sample_id", "target", "condition", "layer"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gib(device: str, reset: bool = True) -> float | None:
    if not device.startswith("cuda"):
        return None
    value = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return value


@contextmanager
def released_masks(hf, mask: torch.Tensor, layers):
    """The released code's knockout: each windowed layer's ``self_attn.forward`` wrapped so that
    its ``attention_mask`` argument is the precomputed (1, heads, N, N) additive mask (the other
    layers keep the model's causal mask)."""
    blocks = hf.model.language_model.layers
    saved = {l: blocks[l].self_attn.forward for l in layers}

    def wrapped(forward):
        @functools.wraps(forward)
        def with_mask(*args, **kwargs):
            return forward(*args, **{**kwargs, "attention_mask": mask})

        return with_mask

    for l in layers:
        blocks[l].self_attn.forward = wrapped(saved[l])
    try:
        yield
    finally:
        for l, forward in saved.items():
            blocks[l].self_attn.forward = forward


def released_mask(blocked, n_heads: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, heads, N, N) additive mask as the released ``precompute_attention_masks`` builds it:
    the causal triangle less the blocked edges, 0 where allowed and dtype-min elsewhere."""
    allowed = torch.ones(blocked.shape[-2:], dtype=torch.uint8, device=device).tril()
    allowed[blocked.to(device)] = 0
    allowed = allowed.repeat(1, n_heads, 1, 1).to(dtype)
    return (1.0 - allowed) * torch.finfo(dtype).min


@torch.no_grad()
def released_pass(hf, inputs, mask, layers) -> torch.Tensor:
    """One pass as the released scripts run it: the plain HF model (eager attention, vision tower
    included), batch 1, every position's logits, the knockout mask swapped into the window's layers."""
    with released_masks(hf, mask, layers):
        return hf(**inputs).logits[0, -1].float().softmax(-1)


@torch.no_grad()
def make_confident(model, prompt, margin: float) -> None:
    """Add ``margin`` to the baseline logit of the option letter B by moving its unembedding
    row along the final hidden state: the prediction becomes confident, and knockouts still
    move it through the hidden state."""
    _, cache = model.run_with_cache(prompt, names_filter=f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    final = model.bridge.ln_final.original_component(cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][0, -1])
    row = model.hf_model.lm_head.weight[prompt.option_token_ids[1]]
    row += (margin * final / final.float().pow(2).sum()).to(row.dtype)


def compare(df, reference) -> dict:
    """Argmax agreement and relative-change differences (percentage points) of two sweeps."""
    diff = (df.rel_change - reference.rel_change).abs()
    return {"argmax_agreement": float((df.new_answer_token == reference.new_answer_token).mean()),
            "max_rel_change_diff_pp": float(diff.max()), "median_rel_change_diff_pp": float(diff.median()),
            "max_p_knockout_diff": float((df.p_knockout - reference.p_knockout).abs().max())}  # fmt: skip


def gpu_timeline(prof) -> dict:
    """From a profile's GPU kernels: the time between the first kernel's start and the last one's
    end, how much of it some kernel ran (the union of their intervals), and the longest gaps."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type.name == "CUDA")
    if not spans:
        return {}
    busy, gaps, (start, end) = 0.0, [], spans[0]
    for s, e in spans[1:]:
        if s > end:
            busy += end - start
            gaps.append(s - end)
            start, end = s, e
        else:
            end = max(end, e)
    busy += end - start
    first, last = spans[0][0], max(e for _, e in spans)
    return {"kernel_span_s": (last - first) / 1e6, "kernel_union_s": busy / 1e6,
            "gaps_over_50us_s": sum(g for g in gaps if g > 50) / 1e6, "gaps_over_50us": sum(g > 50 for g in gaps),
            "longest_gaps_ms": [round(g / 1e3, 2) for g in sorted(gaps, reverse=True)[:10]]}  # fmt: skip


def profile(fn) -> dict:
    """Where one call's time goes: CUDA time of the top operators, and wall vs GPU-busy time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    gpu = sorted(events, key=lambda e: e.device_time_total, reverse=True)[:12]
    kernels = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:20]
    cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    busy = sum(e.self_device_time_total for e in events) / 1e6
    summary = {"wall_s": wall, "gpu_busy_s": busy, **gpu_timeline(prof),
               "top_gpu_ops": [(e.key[:60], round(e.device_time_total / 1e3, 1), e.count) for e in gpu],
               "top_self_gpu": [(e.key[:70], round(e.self_device_time_total / 1e3, 1), e.count) for e in kernels],
               "top_self_cpu": [(e.key[:60], round(e.self_cpu_time_total / 1e3, 1), e.count) for e in cpu]}  # fmt: skip
    print(json.dumps(summary, indent=1), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reference-passes", type=int, default=8)
    parser.add_argument("--skip-hooks", action="store_true", help="skip the hook-path sweeps (slow at real scale)")
    parser.add_argument("--only-all", action="store_true", help="time the four targets together only")
    parser.add_argument("--compiled", action="store_true", help="also time engine='compiled' (torch.compile)")
    parser.add_argument("--profile", action="store_true", help="profile one engine sweep of the four targets")
    parser.add_argument("--float32-truth", action="store_true",
                        help="also compare the bf16 sweeps with the engine's sweep of the model cast to float32 "
                             "(the value both bf16 paths approximate; equal to the hook path's in float32)")
    parser.add_argument("--confident", type=float, default=0.0,
                        help="raise the baseline answer's logit by this much (a well-conditioned prediction for the "
                             "exactness comparison; random weights otherwise give near-uniform distributions)")
    add_masked_sdpa_option(parser)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    use_masked_sdpa(args.masked_sdpa)
    if args.float32_truth and args.skip_hooks:
        parser.error("--float32-truth compares the exactness sweeps, which --skip-hooks skips")
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, prompt = model_and_prompt(args.preset, device)
    tm, n_layers = prompt.token_map, model.cfg.n_layers
    if args.confident:
        make_confident(model, prompt, args.confident)
    result = {"preset": args.preset, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "dtype": str(dtype), "n_positions": prompt.n_positions, "n_layers": n_layers, "batch_size": args.batch_size,
              "masked_sdpa": args.masked_sdpa}  # fmt: skip
    print(json.dumps(result), flush=True)

    # the released approach as the released scripts run it: a plain HF model (eager attention,
    # vision included), the mask swapped into the window's attention; median pass time
    layers = knockout.window(n_layers // 2, 9, n_layers)
    hf, _ = build_hf(args.preset, device, dtype, attn="eager")
    inputs = {k: v.to(device) for k, v in prompt.inputs.items() if hasattr(v, "to")}
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    mask = released_mask(knockout.cross_frame(tm).mask_for(prompt.n_positions), hf.config.text_config.num_attention_heads,
                         dtype, device)  # fmt: skip
    released_pass(hf, inputs, mask, layers)
    pass_s = timed(lambda: released_pass(hf, inputs, mask, layers), device, args.reference_passes)
    result["released_pass_s"] = pass_s
    result["released_baseline"] = "plain HF model, eager attention (vision too), batch 1, all logits, mask swapped into the window's self_attn"
    del hf, mask
    torch.cuda.empty_cache() if device.startswith("cuda") else None

    def sweep(engine: str, targets):
        return flow.sweep(model, [prompt], targets=targets, window=9, select="all", batch_size=args.batch_size,
                          engine=engine, progress=False)  # fmt: skip

    per_target = {}
    for target in ["all"] if args.only_all else [*flow.TARGETS, "all"]:
        targets = list(flow.TARGETS) if target == "all" else [target]
        n_passes = n_layers * sum(len(flow.TARGETS[t]) for t in targets)
        row = {"passes": n_passes, "released_s": pass_s * (n_passes + 1)}
        engines = ["fast"] + ["compiled"] * args.compiled + ["hooks"] * (not args.skip_hooks)
        for engine in engines:
            start = time.perf_counter()
            sweep(engine, targets)  # warm-up (and compilation)
            sync(device)
            row[f"{engine}_first_s"] = time.perf_counter() - start
            peak_gib(device)
            row[f"{engine}_s"] = timed(lambda: sweep(engine, targets), device, 1 if engine == "hooks" else 3)
            row[f"{engine}_peak_gib"] = peak_gib(device)
            row[f"{engine}_speedup"] = row["released_s"] / row[f"{engine}_s"]
        per_target[target] = row
        print(json.dumps({target: row}), flush=True)
    result["per_target"] = per_target
    if args.compiled:  # the compiled engine against the engine, at this shape and dtype
        targets = list(flow.TARGETS)
        fast = sweep("fast", targets).sort_values(ROW).reset_index(drop=True)
        compiled = sweep("compiled", targets).sort_values(ROW).reset_index(drop=True)
        result["compiled_vs_fast"] = compare(compiled, fast)
        print(json.dumps({"compiled_vs_fast": result["compiled_vs_fast"]}), flush=True)

    if not args.skip_hooks:  # exactness at this shape and dtype
        from hooked_video.runtime import attention

        targets = list(flow.TARGETS)
        hooks = sweep("hooks", targets).sort_values(ROW).reset_index(drop=True)
        with attention.eager_arithmetic():
            eager = sweep("fast", targets).sort_values(ROW).reset_index(drop=True)
        fast = sweep("fast", targets).sort_values(ROW).reset_index(drop=True)
        compiled = sweep("compiled", targets).sort_values(ROW).reset_index(drop=True) if args.compiled else None
        one = flow.sweep(model, [prompt], targets=targets, window=9, select="all", batch_size=1, engine="hooks",
                         progress=False).sort_values(ROW).reset_index(drop=True)  # fmt: skip
        result["exactness"] = {name: compare(df, hooks) for name, df in
                               (("engine_sdpa_vs_hooks", fast), ("engine_eager_arithmetic_vs_hooks", eager),
                                ("engine_compiled_vs_hooks", compiled), ("hooks_batch1_vs_hooks_batch8", one))
                               if df is not None}  # fmt: skip
        print(json.dumps(result["exactness"]), flush=True)
        if args.float32_truth:
            def tensors():
                return (*model.hf_model.named_parameters(), *model.hf_model.named_buffers())

            dtypes = {name: tensor.dtype for name, tensor in tensors()}
            model.hf_model.float()
            truth = sweep("fast", targets).sort_values(ROW).reset_index(drop=True)
            for name, tensor in tensors():  # each back to its own dtype (bf16 -> float32 -> bf16 is lossless)
                tensor.data = tensor.data.to(dtypes[name])
            result["exactness_vs_float32"] = {name: compare(df, truth) for name, df in
                                              (("engine", fast), ("engine_compiled", compiled), ("hooks", hooks),
                                               ("hooks_batch1", one)) if df is not None}  # fmt: skip
            result["p_base_float32"] = float(truth.p_base.iloc[0])
            result["p_base_bf16"] = {"engine": float(fast.p_base.iloc[0]), "hooks": float(hooks.p_base.iloc[0])}
            print(json.dumps(result["exactness_vs_float32"]), flush=True)
    if args.profile:
        result["profile"] = profile(lambda: sweep("fast", list(flow.TARGETS)))
        if args.compiled:
            result["profile_compiled"] = profile(lambda: sweep("compiled", list(flow.TARGETS)))

    # the plain forward: hooked (fast path) vs plain HF SDPA with the same weights
    with torch.no_grad():
        model(prompt)
        result["hooked_forward_s"] = timed(lambda: model(prompt), device, 10)
        name = f"blocks.{n_layers // 2}.hook_resid_post"
        model.run_with_cache(prompt, names_filter=name)
        result["run_with_cache_one_hook_s"] = timed(lambda: model.run_with_cache(prompt, names_filter=name), device, 10)
        del model
        torch.cuda.empty_cache() if device.startswith("cuda") else None
        hf, _ = build_hf(args.preset, device, dtype, attn="sdpa")
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in prompt.inputs.items()}
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        hf(**inputs)
        result["hf_sdpa_forward_s"] = timed(lambda: hf(**inputs), device, 10)
    result["forward_ratio"] = result["hooked_forward_s"] / result["hf_sdpa_forward_s"]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
