"""More than one GPU: a data-parallel four-target sweep, and a model split over GPUs.

``dp``: a four-target sweep (window 9, every layer, the sweep engine, bf16) of ``--samples``
clips into ``--out``, timed from a common start to the last process's end. Run it alone and
under a launcher, then ``compare`` the two folders (the rows must be equal):

    python benchmarks/multi_gpu.py dp --preset llava-next-video-7b --samples 32 --out /tmp/one
    torchrun --nproc-per-node 2 benchmarks/multi_gpu.py dp --preset llava-next-video-7b --samples 32 --out /tmp/two
    python benchmarks/multi_gpu.py compare /tmp/one /tmp/two

``split``: the same random weights on one GPU and spread over two (accelerate's dispatch, as
``from_pretrained(device_map=...)`` places a checkpoint): forward time, logits and a sweep's
rows compared.

    python benchmarks/multi_gpu.py split --preset llava-next-video-7b
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from knockout_sweep import sync, timed  # noqa: E402
from shapes import build, frames_for  # noqa: E402

from hooked_video import flow  # noqa: E402
from hooked_video.data import Sample  # noqa: E402
from hooked_video.runtime.distributed import Shard, barrier, local_rank  # noqa: E402
from hooked_video.runtime.store import load_results  # noqa: E402

OPTIONS = ["left", "right", "up", "down"]


def samples(preset: str, n: int) -> list[Sample]:
    """``n`` different clips (in memory) with the same question."""
    base = frames_for(preset)
    rng = np.random.default_rng(1)
    return [Sample(id=f"clip{i:03d}", video=rng.permutation(base), question="which way does the ball move ?",
                   options=OPTIONS, answer=i % 4, task="direction") for i in range(n)]  # fmt: skip


def data_parallel(args) -> None:
    shard = Shard.from_environment()
    device = f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(device)
    model = build(args.preset, device, torch.bfloat16 if device != "cpu" else torch.float32)
    items = samples(args.preset, args.samples)
    barrier()
    sync(device)
    start = time.perf_counter()
    flow.sweep(model, items, window=9, select="all", num_frames=None, out=args.out, shard=shard,
               batch_size=args.batch_size, progress=False)  # fmt: skip
    sync(device)
    barrier()
    if shard is None or shard.index == 0:
        print(json.dumps({"mode": "dp", "preset": args.preset, "processes": shard.count if shard else 1,
                          "samples": args.samples, "wall_s": round(time.perf_counter() - start, 2),
                          "device": torch.cuda.get_device_name() if device != "cpu" else "cpu"}), flush=True)  # fmt: skip


def compare(args) -> None:
    key = list(flow.ROW_KEY)
    one, two = (load_results(folder).sort_values(key).reset_index(drop=True) for folder in (args.one, args.two))
    assert len(one) == len(two) and one[key].equals(two[key]), "the two runs hold different rows"
    diff = (one.p_knockout - two.p_knockout).abs()
    print(json.dumps({"mode": "compare", "rows": len(one), "equal_rows": int((diff == 0).sum()),
                      "max_abs_diff_p": float(diff.max()),
                      "same_new_answer": float((one.new_answer_token == two.new_answer_token).mean())}), flush=True)  # fmt: skip


def split(args) -> None:
    prompt_of = lambda m: m.prepare(frames_for(args.preset), "which way does the ball move ?", OPTIONS, answer=1,  # noqa: E731
                                    num_frames=None)  # fmt: skip
    results = {}
    for name, devices in (("one_gpu", None), ("two_gpus", ["cuda:0", "cuda:1"])):
        model = build(args.preset, "cuda:0", torch.bfloat16, split_over=devices)
        prompt = prompt_of(model)
        with torch.no_grad():
            logits = model(prompt)[0, -1].float().cpu()
            forward_s = timed(lambda: model(prompt)[0, -1].cpu(), "cuda:0", 5)  # .cpu(): waits for the last GPU
        sweep = flow.sweep(model, [prompt], window=9, select="all", progress=False)
        memory = {f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / 2**30, 1) for i in range(torch.cuda.device_count())}
        results[name] = {"logits": logits, "sweep": sweep, "forward_s": forward_s, "peak_gib": memory,
                         "input_device": str(model.device), "n_devices": getattr(model.cfg, "n_devices", 1)}  # fmt: skip
        del model
        torch.cuda.empty_cache()
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)
    key = ["target", "condition", "layer"]
    a, b = (results[n]["sweep"].sort_values(key).reset_index(drop=True) for n in ("one_gpu", "two_gpus"))
    print(json.dumps({
        "mode": "split", "preset": args.preset, "device": torch.cuda.get_device_name(),
        "forward_s": {n: r["forward_s"] for n, r in results.items()}, "peak_gib": {n: r["peak_gib"] for n, r in results.items()},
        "placement": {n: [r["input_device"], r["n_devices"]] for n, r in results.items()},
        "logits_max_abs_diff": float((results["one_gpu"]["logits"] - results["two_gpus"]["logits"]).abs().max()),
        "logits_max_abs": float(results["one_gpu"]["logits"].abs().max()),
        "same_argmax": bool(results["one_gpu"]["logits"].argmax() == results["two_gpus"]["logits"].argmax()),
        "sweep_rows": len(a), "sweep_max_abs_diff_p": float((a.p_knockout - b.p_knockout).abs().max()),
        "sweep_same_new_answer": float((a.new_answer_token == b.new_answer_token).mean()),
    }), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("dp")
    p.add_argument("--preset", default="llava-next-video-7b")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True)
    p = sub.add_parser("compare")
    p.add_argument("one")
    p.add_argument("two")
    p = sub.add_parser("split")
    p.add_argument("--preset", default="llava-next-video-7b")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    {"dp": data_parallel, "compare": compare, "split": split}[args.mode](args)


if __name__ == "__main__":
    main()
