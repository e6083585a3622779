"""load_video on real H.264 files written with PyAV and read with decord (and PyAV)."""

import numpy as np
import pytest
import torch
from PIL import Image

from hooked_video import load_video
from hooked_video.video import VideoError, save_video, segment_midpoints

N_FRAMES, FPS, STEP = 40, 10, 6


def frame_ids(frames: np.ndarray) -> list[int]:
    """Each test frame is flat grey at level index * STEP; recover the index."""
    return [int(round(f.astype(float).mean() / STEP)) for f in frames]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    levels = (np.arange(N_FRAMES) * STEP).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (N_FRAMES, 48, 64, 3)).copy()
    return save_video(frames, tmp_path_factory.mktemp("v") / "clip.mp4", fps=FPS)


def expected(first, last, n):
    seg = (last - first) / n
    return [int(first + seg / 2 + np.round(seg * i)) for i in range(n)]


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_whole_clip_segment_midpoints(clip, backend):
    frames = load_video(clip, num_frames=8, backend=backend)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    assert frame_ids(frames) == expected(0, N_FRAMES - 1, 8) == [2, 7, 12, 17, 22, 26, 31, 36]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_start_end_window(clip, backend):
    frames = load_video(clip, num_frames=4, start=1.0, end=2.5, backend=backend)
    assert frame_ids(frames) == expected(10, 25, 4) == [11, 15, 19, 22]


def test_index_rule_clips_window_to_clip():
    assert segment_midpoints(40, 4, fps=10, start=-3, end=100).tolist() == expected(0, 39, 4)


def test_in_memory_sources_agree():
    frames = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 3), dtype=np.uint8)
    picked = load_video(frames, num_frames=4)
    np.testing.assert_array_equal(picked, frames[expected(0, 15, 4)])
    np.testing.assert_array_equal(load_video(torch.from_numpy(frames), num_frames=4), picked)
    pil = [Image.fromarray(f) for f in frames]
    np.testing.assert_array_equal(load_video(pil, num_frames=4), picked)
    np.testing.assert_array_equal(load_video(frames[:4], num_frames=4), frames[:4])
    np.testing.assert_array_equal(load_video(frames, num_frames=None), frames)


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        load_video(tmp_path / "nope.mp4")


def test_undecodable_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="could not decode"):
        load_video(bad)


def test_too_few_frames(clip):
    with pytest.raises(VideoError, match="fewer than the 64 asked"):
        load_video(clip, num_frames=64)
    with pytest.raises(VideoError, match="fewer than"):
        load_video(np.zeros((3, 8, 8, 3), np.uint8), num_frames=8)


def test_bad_arrays():
    with pytest.raises(VideoError, match="shape"):
        load_video(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(VideoError, match="uint8"):
        load_video(np.zeros((8, 8, 8, 3), np.float32))
    with pytest.raises(VideoError, match="fps"):
        load_video(np.zeros((8, 8, 8, 3), np.uint8), num_frames=2, start=0.1)
