"""The bundled toy models: load by name offline, small, and as accurate as their cards say."""

import pytest

from hooked_video import HookedVideoLLM
from hooked_video.analysis.accuracy import accuracy
from hooked_video.data import TVBench, synthetic
from hooked_video.zoo import MODELS_DIR, ZOO


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """12 held-out questions per task (a multiple of every task's class count), as mp4 files."""
    return TVBench(synthetic.generate(tmp_path_factory.mktemp("syn") / "b", per_task=12, seed=0, progress=False))


def test_bundle_is_small_and_complete():
    for name in ZOO:
        assert sum(p.stat().st_size for p in (MODELS_DIR / name).iterdir()) < 20 * 2**20, name
        assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "README.md"} <= {
            p.name for p in (MODELS_DIR / name).iterdir()}  # fmt: skip


def by_stem(table, data):
    stem = {s.task: s.id.split("/")[0] for s in data}
    return {stem.get(task, task): row.accuracy for task, row in table.iterrows() if task != "overall"}


def test_toy_video_ft_solves_every_temporal_task(held_out):
    acc = by_stem(accuracy(HookedVideoLLM.from_pretrained("toy-video-ft"), held_out, progress=False), held_out)
    for task in synthetic.TASKS:
        assert acc[task] >= 0.9, (task, acc[task])


def test_toy_image_solves_single_frames_but_not_time(held_out):
    acc = by_stem(accuracy(HookedVideoLLM.from_pretrained("toy-image"), held_out, progress=False), held_out)
    for task in synthetic.SINGLE_FRAME_TASKS:
        assert acc[task] >= 0.9, (task, acc[task])
    chance = {t: 1 / len(synthetic.make_clip(t, 0).options) for t in synthetic.TEMPORAL_TASKS}
    excess = sum(acc[t] - chance[t] for t in synthetic.TEMPORAL_TASKS) / len(chance)
    assert excess < 0.15, acc  # near chance on average over the temporal tasks


def test_toy16_pair_as_its_cards_say(held_out):
    """The deeper pair (mp4 clips, 12 per task): the video model solves the temporal tasks (object
    count well above chance), the image model the colour task but not time."""
    video_model = HookedVideoLLM.from_pretrained("toy16-video-ft")
    assert video_model.cfg.n_layers == 16
    video = by_stem(accuracy(video_model, held_out, progress=False), held_out)
    image = by_stem(accuracy(HookedVideoLLM.from_pretrained("toy16-image"), held_out, progress=False), held_out)
    for task in ("action_antonym", "action_sequence", "moving_direction", "scene_transition", "colour", "position"):
        assert video[task] >= 0.9, (task, video[task])
    assert video["object_count"] >= 0.5 and min(video[t] for t in synthetic.SINGLE_FRAME_TASKS) >= 0.75, video
    assert image["colour"] >= 0.9, image
    chance = {t: 1 / len(synthetic.make_clip(t, 0).options) for t in synthetic.TEMPORAL_TASKS}
    assert sum(image[t] - chance[t] for t in synthetic.TEMPORAL_TASKS) / len(chance) < 0.15, image


def test_zoo_names_resolve_and_missing_weights_are_explained(tmp_path, monkeypatch):
    from hooked_video import zoo

    assert zoo.resolve("toy-image") == MODELS_DIR / "toy-image"
    assert zoo.resolve("some/other-model") == "some/other-model"
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="bundled weights of 'toy-image' are missing"):
        HookedVideoLLM.from_pretrained("toy-image")
