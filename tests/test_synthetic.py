"""The synthetic benchmark: deterministic, balanced, decodable with decord, read by TVBench."""

from collections import Counter

import numpy as np
import pytest

from hooked_video import load_video
from hooked_video.data import TVBench, synthetic


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "a", per_task=12, seed=3, progress=False)


def test_generation_is_deterministic(bench, tmp_path):
    again = synthetic.generate(tmp_path / "b", per_task=12, seed=3, progress=False)
    for task in synthetic.TASKS:
        assert (bench / "json" / f"{task}.json").read_bytes() == (again / "json" / f"{task}.json").read_bytes()
    for video in sorted((bench / "video").rglob("*.mp4")):
        twin = again / video.relative_to(bench)
        np.testing.assert_array_equal(load_video(video, 8, backend="decord"), load_video(twin, 8, backend="decord"))
    other = synthetic.generate(tmp_path / "c", tasks=["colour"], per_task=12, seed=4, progress=False)
    assert (other / "json" / "colour.json").read_bytes() != (bench / "json" / "colour.json").read_bytes()


def test_tvbench_reads_it_and_answers_are_balanced(bench):
    data = TVBench(bench)
    assert len(data) == 12 * len(synthetic.TASKS)
    for task, spec in synthetic.TASKS.items():
        samples = [s for s in data if s.id.startswith(task + "/")]
        n_options = len(samples[0].options)
        slots = Counter(s.answer for s in samples)
        assert set(slots) == set(range(n_options)) and max(slots.values()) - min(slots.values()) <= 1
        if task not in ("action_sequence", "scene_transition"):  # option text = class: all equally often
            classes = Counter(s.options[s.answer] for s in samples)
            assert len(classes) >= spec.n_classes and max(classes.values()) - min(classes.values()) <= 1


def test_decoded_videos_match_the_generated_frames(bench):
    clip = synthetic.make_clip("moving_direction", 5, seed=3)
    decoded = load_video(bench / "video" / "moving_direction" / "0005.mp4", 8, backend="decord")
    assert decoded.shape == (8, 64, 64, 3)
    assert np.abs(decoded.astype(int) - clip.frames.astype(int)).mean() < 4  # lossless H.264, but 4:2:0 chroma


@pytest.mark.parametrize("task", list(synthetic.TASKS))
def test_single_frame_tasks_are_static_and_temporal_ones_are_not(task):
    clip = synthetic.make_clip(task, 1)
    static = all(np.array_equal(clip.frames[0], f) for f in clip.frames)
    assert static == (synthetic.TASKS[task].kind == "single-frame")
    assert clip.options[clip.answer] not in clip.options[: clip.answer] + clip.options[clip.answer + 1 :]


def test_users_can_register_tasks():
    def brightness(rng, label, canvas):
        frames = canvas.blank((200, 200, 200) if label else (10, 10, 10))
        return frames, "Is the video bright ?", ["no", "yes"], label

    synthetic.register_task(synthetic.Task("brightness", "single-frame", 2, brightness))
    try:
        clip = synthetic.make_clip("brightness", 1)
        assert clip.options[clip.answer] == "yes" and clip.frames.mean() > 150
    finally:
        del synthetic.TASKS["brightness"]
