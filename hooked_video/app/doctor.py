"""``hooked-video doctor``: is this machine ready, and how should it run? Versions against the
tested window, one timed forward of the bundled toy at a few thread counts (with the fastest
suggested for ``--threads``), the devices torch sees, and the caches and switches that decide
what is read from where."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

#: The toy forward doctor times (bundled, so it needs no network).
TOY = "toy-video-ft"


def thread_counts(cores: int) -> list[int]:
    """Thread counts worth timing: 1, half the cores, all of them."""
    return sorted({1, max(1, cores // 2), cores})


def time_forward(model, prompt, threads: int, repeats: int = 3) -> float:
    """Median seconds of ``repeats`` forwards of ``prompt`` with torch on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    with torch.no_grad():
        model(prompt)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(prompt)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _size(folder: Path) -> str:
    if not folder.is_dir():
        return "absent"
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return f"{total / 2**20:.0f} MiB"


def cache_lines() -> list[str]:
    """Where weights, data and models are read from, and the switches that decide it."""
    from huggingface_hub import constants

    lines = [f"  Hugging Face hub cache  {constants.HF_HUB_CACHE} ({_size(Path(constants.HF_HUB_CACHE))})",
             f"  hooked-video cache      {Path.home() / '.cache' / 'hooked_video'} "
             f"({_size(Path.home() / '.cache' / 'hooked_video')}; the demo's synthetic videos)"]  # fmt: skip
    offline = [name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(name) not in (None, "", "0")]
    lines.append(f"  offline switches        {', '.join(offline) or 'none'} (HF_HUB_OFFLINE=1: never ask the hub)")
    threads = os.environ.get("HOOKED_VIDEO_THREADS")
    lines.append(f"  HOOKED_VIDEO_THREADS    {threads or 'unset'}")
    try:
        import spacy.util

        has_lg = spacy.util.is_package("en_core_web_lg")
    except ImportError:
        has_lg = None
    state = {None: "spaCy not installed", True: "installed", False: "not installed"}[has_lg]
    lines.append(f"  en_core_web_lg          {state} (only for flow --open-ended --verb-anchors)")
    return lines


def run(device: str | None = None) -> str:
    """The doctor's report (also printed by the command)."""
    import torch

    from transformers.utils import logging as hf_logging

    from hooked_video import HookedVideoLLM
    from hooked_video.core.versions import report
    from hooked_video.runtime.distributed import default_threads, usable_cores

    hf_logging.disable_progress_bar()
    lines = [report(), "", "devices:"]
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cores = usable_cores()
    lines.append(f"  cpu: {cores} usable cores of {os.cpu_count()}; GPUs: {', '.join(gpus) or 'none'}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None:
        lines.append(f"  load average (1 min): {load:.1f}" + (" (busy: timings below are slower than idle)" if load > cores / 2 else ""))
    model = HookedVideoLLM.from_pretrained(TOY, device=device)
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    prompt = model.prepare(frames, "Which way does the ball move?", ["left", "right"], answer=0)
    lines += ["", f"one forward of {TOY} ({prompt.n_positions} positions, {model.device}), median of 3:"]
    before = torch.get_num_threads()
    try:
        timings = {threads: time_forward(model, prompt, threads) for threads in thread_counts(cores)}
    finally:
        torch.set_num_threads(before)
    lines += [f"  {threads:3d} thread(s): {1000 * seconds:.0f} ms" for threads, seconds in timings.items()]
    best = min(timings, key=timings.get)
    lines.append(f"suggested: --threads {best} (or HOOKED_VIDEO_THREADS={best}); without either: {default_threads()}")
    lines += ["", "caches and switches:", *cache_lines()]
    return "\n".join(lines)
