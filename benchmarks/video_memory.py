"""Peak memory of ``load_video`` on long 1080p clips, per backend (CPU).

Writes 1080p H.264 clips (10 s and 20 s at 30 fps by default; smooth moving content, high crf
so the files stay small), then runs each (backend, length) in a fresh process, which reports
its peak resident memory above its own baseline (after imports) while
``load_video(path, num_frames=8, backend=...)`` runs. The goal: under 400 MB for every case.
``--compare-old`` adds the former PyAV reader, which kept every decoded frame.

    python benchmarks/video_memory.py --out /tmp/video_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_MB = 400
WIDTH, HEIGHT = 1920, 1080


def write_clip(path: Path, seconds: int, fps: int) -> Path:
    """A 1080p H.264 clip: a colour gradient scrolling sideways (streamed: one frame in memory)."""
    import av
    import numpy as np

    x = np.linspace(0, 255, WIDTH, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, HEIGHT, dtype=np.float32)[:, None]
    base = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "40", "preset": "ultrafast"}
        for i in range(seconds * fps):
            frame = np.roll(base, 12 * i, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _status_mb(field: str) -> float | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def _read_all_frames_then_sample(path: str, num_frames: int):
    """The former PyAV reader: every frame decoded to rgb24 and kept, then sampled."""
    import av
    import numpy as np

    from hooked_video.core.video import segment_midpoints

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate)
    return np.stack([frames[i] for i in segment_midpoints(len(frames), num_frames, fps)])


def measure(path: str, backend: str, num_frames: int) -> dict:
    """Run in a fresh process: peak RSS above the baseline while one load_video runs."""
    import av  # noqa: F401  (imports are part of the baseline, not of the measurement)
    import decord  # noqa: F401
    import numpy as np  # noqa: F401

    from hooked_video.core.video import load_video

    try:  # reset the peak (VmHWM) to the current RSS, so import-time peaks do not hide ours
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        how = "VmHWM after clear_refs"
    except OSError:
        how = "ru_maxrss"
    base = _status_mb("VmRSS")
    start = time.perf_counter()
    if backend == "pyav-all-frames":
        frames = _read_all_frames_then_sample(path, num_frames)
    else:
        frames = load_video(path, num_frames=num_frames, backend=backend)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") if how.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"backend": backend, "shape": list(frames.shape), "baseline_mb": round(base, 1),
            "peak_above_baseline_mb": round(peak - base, 1), "seconds": round(seconds, 2), "measured_by": how}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="10,20", help="clip lengths in seconds")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--backends", default="decord,pyav")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--compare-old", action="store_true", help="also measure the former all-frames PyAV reader")
    parser.add_argument("--dir", help="where to write the clips (default: a temporary folder)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--measure", nargs=2, metavar=("PATH", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.num_frames)))
        return

    backends = args.backends.split(",") + (["pyav-all-frames"] if args.compare_old else [])
    folder = Path(args.dir or tempfile.mkdtemp(prefix="video_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for seconds in map(int, args.lengths.split(",")):
        clip = folder / f"clip_{seconds}s_1080p.mp4"
        if not clip.exists():
            start = time.perf_counter()
            write_clip(clip, seconds, args.fps)
            print(f"wrote {clip} ({clip.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - start:.0f} s")
        for backend in backends:
            done = subprocess.run([sys.executable, __file__, "--measure", str(clip), backend,
                                   "--num-frames", str(args.num_frames)],
                                  capture_output=True, text=True, check=False)  # fmt: skip
            if done.returncode:
                raise RuntimeError(f"measuring {backend} on {clip} failed:\n{done.stderr}")
            row = {"seconds_of_video": seconds, "frames_in_clip": seconds * args.fps, **json.loads(done.stdout)}
            results.append(row)
            print(f"{seconds:>3} s  {backend:<16} peak +{row['peak_above_baseline_mb']:>7.1f} MB  "
                  f"({row['seconds']:.1f} s, {row['measured_by']})", flush=True)  # fmt: skip

    print(f"\n| clip | backend | peak above baseline (MB) | time (s) | goal < {GOAL_MB} MB |\n|---|---|---|---|---|")
    for r in results:
        ok = "yes" if r["peak_above_baseline_mb"] < GOAL_MB else "NO"
        print(f"| {r['seconds_of_video']} s 1080p ({r['frames_in_clip']} frames) | {r['backend']} | "
              f"{r['peak_above_baseline_mb']:.1f} | {r['seconds']:.1f} | {ok} |")  # fmt: skip
    if args.out:
        info = {"cpu_count": os.cpu_count(), "fps": args.fps, "num_frames": args.num_frames, "size": [WIDTH, HEIGHT]}
        Path(args.out).write_text(json.dumps({"setup": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
