"""The hooked-video command, run as a user runs it."""

import subprocess
import sys

import numpy as np

from hooked_video import save_video


def run(*args):
    return subprocess.run([sys.executable, "-m", "hooked_video.cli", *args], capture_output=True, text=True)


def test_build_info_tokens(tmp_path):
    model = tmp_path / "tiny"
    assert run("build-tiny", "llava_next_video", str(model)).returncode == 0
    info = run("info", str(model))
    assert info.returncode == 0 and "LlavaNextVideoForConditionalGeneration" in info.stdout
    assert "hook_video_embeds" in info.stdout
    video = save_video(np.zeros((16, 32, 32, 3), np.uint8), tmp_path / "clip.mp4")
    out = run("tokens", str(model), str(video), "-q", "which way ?", "-o", "left", "-o", "right", "--frames", "4")
    assert out.returncode == 0, out.stderr
    assert "video: 16 tokens = 4 frames x 2 x 2" in out.stdout
    assert out.stdout.count(" frame ") == 4


def test_errors_are_one_line(tmp_path):
    model = tmp_path / "tiny"
    run("build-tiny", "qwen2_vl", str(model))
    out = run("tokens", str(model), str(tmp_path / "missing.mp4"), "-q", "which way ?")
    assert out.returncode == 2
    assert "hooked-video: error: video file not found" in out.stderr and "Traceback" not in out.stderr
