"""TVBench and TOMATO loaders on fixture folders in the real formats, with real mp4 files."""

import json

import numpy as np
import pytest

from hooked_video import VideoError, load_video, save_video
from hooked_video.data import TOMATO, AnnotationError, MCQADataset, TVBench, open_dataset

FPS, N_FRAMES = 8, 32


def ramp_video(path):
    """32 frames at 8 fps (4 s); frame i is a flat grey of value 6 * i."""
    frames = np.repeat((np.arange(N_FRAMES, dtype=np.uint8) * 6)[:, None, None, None], 32 * 32 * 3, axis=1)
    return save_video(frames.reshape(N_FRAMES, 32, 32, 3), path, fps=FPS)


@pytest.fixture()
def tvbench(tmp_path):
    root = tmp_path / "TVBench"
    (root / "json").mkdir(parents=True)
    for task in ("action_sequence", "moving_direction"):
        (root / "video" / task).mkdir(parents=True)
        ramp_video(root / "video" / task / "a.mp4")
    (root / "json" / "action_sequence.json").write_text(json.dumps([
        {"video": "a.mp4", "question": "What did the person do first?", "candidates": ["sat", "stood"], "answer": "stood",
         "start": 1.0, "end": 3.0},
        {"video": "a.mp4", "question": "What did the person do last?", "candidates": ["sat", "stood", "ran"], "answer": "sat"},
    ]))  # fmt: skip
    (root / "json" / "moving_direction.json").write_text(json.dumps([
        {"video": "a.mp4", "question": "Which way?", "candidates": ["left", "right"], "answer": "left"},
    ]))  # fmt: skip
    return root


@pytest.fixture()
def tomato(tmp_path):
    root = tmp_path / "TOMATO"
    (root / "jsons").mkdir(parents=True)
    (root / "videos" / "human").mkdir(parents=True)
    ramp_video(root / "videos" / "human" / "k1.mp4")
    (root / "jsons" / "direction.json").write_text(json.dumps({
        "q1": {"question": "Which way does the hand turn?", "options": ["clockwise", "counter-clockwise"], "answer": 1,
               "demonstration_type": "human", "key": "k1"},
    }))  # fmt: skip
    (root / "jsons" / "count.json").write_text(json.dumps({}))
    return root


def test_tvbench_reads_tasks_answers_and_windows(tvbench):
    data = TVBench(tvbench)
    assert len(data) == 3 and data.tasks == ["Action Sequence", "Moving Direction"]
    first = data[0]
    assert (first.task, first.options, first.answer, first.start, first.end) == ("Action Sequence", ["sat", "stood"], 1, 1.0, 3.0)
    assert first.id == "action_sequence/0" and first.video.endswith("video/action_sequence/a.mp4")
    frames = first.load_frames(8)
    assert frames.shape == (8, 32, 32, 3)
    # docs/method.md, "Data": first = 8, last = 24, seg = 2, index_i = int(8 + 1 + round(2 i)) = 9, 11, ..., 23
    expected = np.arange(9, 24, 2) * 6
    assert np.abs(frames.reshape(8, -1).mean(1) - expected).max() < 3
    np.testing.assert_array_equal(frames, load_video(first.video, 8, start=1.0, end=3.0))
    whole = data[1].load_frames(8)  # seg = 31 / 8: int(1.9375 + round(3.875 i)), numpy rounds half to even
    assert np.abs(whole.reshape(8, -1).mean(1) - np.array([1, 5, 9, 13, 17, 20, 24, 28]) * 6).max() < 3
    only = TVBench(tvbench, tasks=["Moving Direction"])
    assert [s.task for s in only] == ["Moving Direction"]
    assert len(open_dataset(tvbench, tasks=["moving_direction"])) == 1


def released_indices(n_total, fps, num_segments, bound=None):
    """The released TVBench loader's frame indices, written out independently: bound (start,
    end) in seconds or None for the whole clip; every window size, repeats included."""
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(0, round(start * fps))
    end_idx = min(round(end * fps), n_total - 1)
    seg = float(end_idx - start_idx) / num_segments
    return [int(start_idx + seg / 2 + np.round(seg * i)) for i in range(num_segments)]


def decoded_indices(frames):
    return (frames.reshape(len(frames), -1).mean(1) / 6).round().astype(int).tolist()


def test_time_windows_apply_to_bound_tasks_only(tvbench):
    """Moving Direction has a start/end in its annotation too, but the released loader only
    uses windows for Action Sequence and Action Localization."""
    path = tvbench / "json" / "moving_direction.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps([{**entries[0], "start": 1.0, "end": 3.0}]))
    paper = TVBench(tvbench)
    moving = next(s for s in paper if s.task == "Moving Direction")
    assert (moving.start, moving.end) == (None, None)
    assert decoded_indices(moving.load_frames(8)) == released_indices(N_FRAMES, FPS, 8)
    sequence = paper[0]
    assert decoded_indices(sequence.load_frames(8)) == released_indices(N_FRAMES, FPS, 8, (1.0, 3.0))
    every = TVBench(tvbench, time_windows="all")
    moving = next(s for s in every if s.task == "Moving Direction")
    assert decoded_indices(moving.load_frames(8)) == released_indices(N_FRAMES, FPS, 8, (1.0, 3.0))
    assert all(s.start is None for s in TVBench(tvbench, time_windows="none"))
    with pytest.raises(ValueError, match="time_windows must be one of"):
        TVBench(tvbench, time_windows="some")


@pytest.mark.parametrize("window", [(1.0, 1.875), (1.0, 1.5)])  # 8 frames (8..15), then 5 frames (8..12)
def test_short_windows_repeat_frames_as_released(tvbench, window):
    path = tvbench / "json" / "action_sequence.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps([{**entries[0], "start": window[0], "end": window[1]}]))
    expected = released_indices(N_FRAMES, FPS, 8, window)
    assert len(set(expected)) < 8  # the released rule repeats a frame
    repeat = TVBench(tvbench, short_windows="repeat")[0]
    assert decoded_indices(repeat.load_frames(8)) == expected
    strict = TVBench(tvbench)[0]
    first, last = round(window[0] * FPS), round(window[1] * FPS)
    if last - first + 1 == 8:  # exactly 8 frames: each frame once by default
        assert decoded_indices(strict.load_frames(8)) == list(range(first, last + 1))
    else:
        with pytest.raises(VideoError, match="short='repeat'"):
            strict.load_frames(8)


def test_tomato_reads_dict_entries_and_video_paths(tomato):
    data = TOMATO(tomato)
    assert len(data) == 1 and data.tasks == ["direction"]
    sample = data[0]
    assert sample.id == "direction/q1" and sample.answer == 1 and sample.video.endswith("videos/human/k1.mp4")
    assert sample.load_frames(4).shape == (4, 32, 32, 3)
    assert isinstance(open_dataset(tomato), TOMATO)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"video": "a.mp4", "question": "q?", "answer": "left"}, "missing field"),
        ({"video": "a.mp4", "question": "q?", "candidates": ["left", "right"], "answer": "up"}, "not among the options"),
        ({"video": "gone.mp4", "question": "q?", "candidates": ["left", "right"], "answer": "left"}, "does not exist"),
    ],
)
def test_tvbench_malformed_entries_name_file_and_entry(tvbench, entry, message):
    path = tvbench / "json" / "moving_direction.json"
    good = json.loads(path.read_text())
    path.write_text(json.dumps(good + [entry]))
    with pytest.raises(AnnotationError, match=message) as err:
        TVBench(tvbench)
    assert "moving_direction.json, entry 1" in str(err.value)
    lenient = TVBench(tvbench, skip_invalid=True)
    assert len(lenient) == 3 and len(lenient.skipped) == 1 and "entry 1" in lenient.skipped[0]


def test_tomato_malformed_entries(tomato):
    path = tomato / "jsons" / "direction.json"
    entries = json.loads(path.read_text())
    entries["q2"] = {"question": "q?", "options": ["a", "b"], "answer": 5, "demonstration_type": "human", "key": "k1"}
    entries["q3"] = {"question": "q?", "options": ["a", "b"], "answer": 0, "demonstration_type": "human", "key": "nope"}
    path.write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match="direction.json, entry 'q2'.*outside the 2 options"):
        TOMATO(tomato)
    lenient = TOMATO(tomato, skip_invalid=True)
    assert [s.id for s in lenient] == ["direction/q1"]
    assert any("'q3'" in s and "does not exist" in s for s in lenient.skipped)


def test_unknown_tasks_and_folders(tvbench, tmp_path):
    with pytest.raises(FileNotFoundError, match="no annotation file for task"):
        TVBench(tvbench, tasks=["Object Shuffle"])
    with pytest.raises(FileNotFoundError, match="neither a TVBench"):
        open_dataset(tmp_path)


def test_generic_dataset_from_dicts(tvbench):
    video = str(tvbench / "video" / "moving_direction" / "a.mp4")
    data = MCQADataset([{"video": video, "question": "q?", "options": ["a", "b"], "answer": 1, "task": "t"}])
    assert data[0].answer == 1 and data[0].id == "0"
    with pytest.raises(AnnotationError, match="<list>, entry 0: missing field"):
        MCQADataset([{"video": video, "question": "q?"}])


@pytest.mark.parametrize("video", ["../../../outside.mp4", "{abs}", "../moving_direction/../../../outside.mp4"])
def test_tvbench_videos_must_stay_in_the_folder(tvbench, video):
    outside = tvbench.parent / "outside.mp4"
    ramp_video(outside)  # a real video: only the path is wrong
    entry = {"video": video.replace("{abs}", str(outside)), "question": "Which way?", "candidates": ["l", "r"], "answer": "l"}
    (tvbench / "json" / "moving_direction.json").write_text(json.dumps([entry]))
    with pytest.raises(AnnotationError, match=r"moving_direction.json, entry 0: video .* points outside the dataset folder"):
        TVBench(tvbench)
    sample = TVBench(tvbench, tasks=["Moving Direction"], allow_outside=True)[0]  # the explicit opt-in
    assert sample.load_frames(8).shape == (8, 32, 32, 3)
    assert open_dataset(tvbench, tasks=["Moving Direction"], allow_outside=True)[0].video == sample.video


def test_a_link_inside_the_folder_may_point_anywhere(tvbench):
    """Large datasets are often linked in from other disks: the check reads the path, not the link's target."""
    store = tvbench.parent / "big_disk"
    store.mkdir()
    ramp_video(store / "b.mp4")
    (tvbench / "video" / "moving_direction" / "b.mp4").symlink_to(store / "b.mp4")
    entry = {"video": "b.mp4", "question": "Which way?", "candidates": ["l", "r"], "answer": "r"}
    (tvbench / "json" / "moving_direction.json").write_text(json.dumps([entry]))
    assert TVBench(tvbench, tasks=["Moving Direction"])[0].load_frames(4).shape == (4, 32, 32, 3)


@pytest.mark.parametrize("field, value", [("key", "../../../outside"), ("demonstration_type", "../.."),
                                          ("key", "/etc/passwd")])  # fmt: skip
def test_tomato_keys_must_stay_in_the_folder(tomato, field, value):
    entry = {"question": "Which way?", "options": ["a", "b"], "answer": 0, "demonstration_type": "human", "key": "k1"}
    (tomato / "jsons" / "direction.json").write_text(json.dumps({"q1": {**entry, field: value}}))
    with pytest.raises(AnnotationError, match="direction.json, entry 'q1': video .* points outside the dataset folder"):
        TOMATO(tomato)
