"""load_video on real H.264 files written with PyAV and read with decord (and PyAV)."""

import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from hooked_video import load_video
from hooked_video.core.video import VideoError, save_video, segment_midpoints

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


@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory):
    """Random frames (every pixel matters) as an mp4 and an mkv (which states no frame count)."""
    frames = np.random.default_rng(1).integers(0, 256, (N_FRAMES, 48, 64, 3), dtype=np.uint8)
    folder = tmp_path_factory.mktemp("noisy")
    return {ext: save_video(frames, folder / f"clip.{ext}", fps=FPS) for ext in ("mp4", "mkv")}


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
@pytest.mark.parametrize("window", [dict(), dict(start=1.0, end=2.5), dict(start=0.5, end=1.0, short="repeat")])
def test_pyav_and_decord_give_identical_frames(noisy_clip, ext, window):
    decord = load_video(noisy_clip[ext], num_frames=8, backend="decord", **window)
    pyav = load_video(noisy_clip[ext], num_frames=8, backend="pyav", **window)
    assert pyav.shape == (8, 48, 64, 3)
    np.testing.assert_array_equal(pyav, decord)


class _CountingFrames:
    """Wraps av.open so that every array a decoded frame converts to is counted while alive."""

    def __init__(self, av):
        self.open, self.converted, self.alive, self.most_alive, self.decoded = av.open, 0, 0, 0, 0

    def __call__(self, *args, **kwargs):
        container, counter = self.open(*args, **kwargs), self

        class Container:
            streams = container.streams

            def __enter__(self):
                container.__enter__()
                return self

            def __exit__(self, *exc):
                return container.__exit__(*exc)

            def decode(self, *streams):
                for frame in container.decode(*streams):
                    counter.decoded += 1
                    yield _CountedFrame(frame, counter)

        return Container()

    def _born(self, array):
        self.converted += 1
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(array, self._died)

    def _died(self):
        self.alive -= 1


class _CountedFrame:
    def __init__(self, frame, counter):
        self.frame, self.counter = frame, counter

    def to_ndarray(self, *args, **kwargs):
        array = self.frame.to_ndarray(*args, **kwargs)
        self.counter._born(array)
        return array


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_pyav_keeps_only_the_sampled_frames(noisy_clip, ext, monkeypatch):
    import av

    counter = _CountingFrames(av)
    monkeypatch.setattr(av, "open", counter)
    frames = load_video(noisy_clip[ext], num_frames=8, backend="pyav")
    np.testing.assert_array_equal(frames, load_video(noisy_clip[ext], num_frames=8, backend="decord"))
    # mp4 states its frame count (one pass); mkv does not (a counting pass, then the frames)
    assert counter.decoded == {"mp4": 1, "mkv": 2}[ext] * N_FRAMES
    assert counter.converted == 8 and counter.most_alive <= 8


def test_pyav_repeated_indices_convert_each_frame_once(noisy_clip, monkeypatch):
    import av

    counter = _CountingFrames(av)
    monkeypatch.setattr(av, "open", counter)
    frames = load_video(noisy_clip["mp4"], num_frames=8, start=0.5, end=1.0, short="repeat", backend="pyav")
    assert len(frames) == 8 and counter.converted == len(set(segment_midpoints(N_FRAMES, 8, FPS, 0.5, 1.0, "repeat")))


def test_pyav_recounts_when_the_stated_count_is_wrong(noisy_clip, monkeypatch):
    import av

    real_open = av.open

    class Lying:  # a container whose header claims twice the frames it holds
        def __init__(self, container):
            self.container = container
            stream = container.streams.video[0]
            self.streams = type("S", (), {"video": [type("V", (), {"frames": 2 * N_FRAMES,
                                                                   "average_rate": stream.average_rate})()]})()  # fmt: skip

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.container.__exit__(*exc)

        def decode(self, *streams):
            return self.container.decode(self.container.streams.video[0])

    monkeypatch.setattr(av, "open", lambda *a, **k: Lying(real_open(*a, **k)))
    frames = load_video(noisy_clip["mp4"], num_frames=8, backend="pyav")
    monkeypatch.setattr(av, "open", real_open)
    np.testing.assert_array_equal(frames, load_video(noisy_clip["mp4"], num_frames=8, backend="pyav"))


@pytest.mark.parametrize("error", [MemoryError(), OSError(12, "Cannot allocate memory")])
def test_out_of_memory_is_reported_as_such(clip, monkeypatch, error):
    import hooked_video.core.video as video

    def read(*args):
        raise error

    for name in ("_read_decord", "_read_pyav"):
        monkeypatch.setattr(video, name, read)
    with pytest.raises(VideoError, match="memory ran out.*fewer frames"):
        load_video(clip, num_frames=8)


def test_undecodable_file_in_a_memory_folder_is_not_out_of_memory(tmp_path):
    bad = tmp_path / "memory" / "bad.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="could not decode") as err:
        load_video(bad)
    assert "memory ran out" not in str(err.value)
