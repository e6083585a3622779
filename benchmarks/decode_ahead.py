"""Videos decoded ahead of the sample being analysed (``hooked_video.data.prefetch``): the four-target
sweep over encoded clips with the decoding worker and without it, side by side in one process.

Every analysis reads each question's video when it comes to it; with ``DECODE_AHEAD`` samples
decoded on a worker thread, the decoding of the next question overlaps the current one's knockouts.
The clips are video files of a real benchmark's size (default 8 s of 480p at 24 fps; H.264, or
MPEG-4 through OpenCV where PyAV is missing); each question reads its own file.

    python benchmarks/decode_ahead.py --preset tiny --questions 16 --out results/decode_ahead_cpu.json
    python benchmarks/decode_ahead.py --preset llava-next-video-7b --questions 16 --out results/decode_ahead_7b.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shapes import PRESETS, build, report, timed_sweep  # noqa: E402

from hooked_video import load_video, save_video  # noqa: E402
from hooked_video.data import prefetch  # noqa: E402
from hooked_video.data.mcqa import Sample  # noqa: E402


def clip(index: int, seconds: float, height: int, fps: int) -> np.ndarray:
    """(T, height, 16:9 width, 3) uint8 frames: a bright square moving over a shifting gradient."""
    width = height * 16 // 9 // 2 * 2
    t = np.arange(int(seconds * fps))[:, None, None]
    x, y = np.arange(width)[None, None, :], np.arange(height)[:, None][None]
    frames = np.empty((len(t), height, width, 3), np.uint8)
    frames[..., 0] = (x + 3 * t + 40 * index) % 256
    frames[..., 1] = (y + 2 * t) % 256
    frames[..., 2] = (x + y) // 4 % 256
    side = height // 6
    for i in range(len(t)):
        left = (i * 7 + 50 * index) % (width - side)
        frames[i, side : 2 * side, left : left + side] = 255
    return frames


def write_clip(frames: np.ndarray, path: Path, fps: int) -> tuple[str, str]:
    """(path, format): H.264 through PyAV where it is installed, else MPEG-4 through OpenCV."""
    try:
        import av  # noqa: F401
    except ImportError:
        import cv2

        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
        writer.release()
        return str(path), "MPEG-4 part 2 (OpenCV)"
    return str(save_video(frames, path, fps=fps, crf=23)), "H.264 crf 23 (PyAV)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="the tokenizer has no token")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = build(args.preset, args.device, dtype)
    with tempfile.TemporaryDirectory() as folder:
        written = [write_clip(clip(i, args.seconds, args.height, args.fps), Path(folder) / f"{i}.mp4", args.fps)
                   for i in range(args.questions)]  # fmt: skip
        paths = [path for path, _ in written]
        samples = [Sample(id=f"q{i}", video=path, question="which way does the square move ?",
                          options=["left", "right", "up", "down"], answer=i % 4, task="direction")
                   for i, path in enumerate(paths)]  # fmt: skip
        decode = []
        for path in paths:
            start = time.perf_counter()
            load_video(path, num_frames=8)
            decode.append(time.perf_counter() - start)
        timed_sweep(model, samples[:2], args.device)  # warm-up
        seconds = {"decode_when_asked": [], "decoded_ahead": []}
        for _ in range(args.repeats):
            for name, ahead in (("decode_when_asked", 0), ("decoded_ahead", prefetch.DECODE_AHEAD)):
                saved = prefetch.DECODE_AHEAD, prefetch.DECODE_AHEAD_ON_CPU
                prefetch.DECODE_AHEAD = prefetch.DECODE_AHEAD_ON_CPU = ahead  # on any device
                try:
                    seconds[name].append(timed_sweep(model, samples, args.device) / len(samples))
                finally:
                    prefetch.DECODE_AHEAD, prefetch.DECODE_AHEAD_ON_CPU = saved
    result = {"preset": args.preset, "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "cpu_threads": torch.get_num_threads(), "questions": args.questions,
              "default_ahead_here": prefetch.default_ahead(model),
              "clip": f"{args.seconds:g} s, {args.height}p, {args.fps} fps, {written[0][1]}",
              "decode_8_frames_median_s": statistics.median(decode),
              **{f"{name}_per_sample_median_s": statistics.median(v) for name, v in seconds.items()},
              "per_sample_runs_s": {name: [round(s, 4) for s in v] for name, v in seconds.items()}}  # fmt: skip
    result["speedup"] = result["decode_when_asked_per_sample_median_s"] / result["decoded_ahead_per_sample_median_s"]
    report(result, args.out)


if __name__ == "__main__":
    main()
