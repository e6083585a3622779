"""Videos decoded ahead on a worker thread: the same prompts as preparing each sample when asked,
only the wanted samples decoded, errors raised when their sample is asked for, and the analyses'
loops (sweep, lens, pathways, attribution) decode nothing for the samples a resumed run skips."""

import threading

import numpy as np
import pytest
import torch

from hooked_video import HookedVideoLLM, flow, lens, pathways, save_video
from hooked_video.analysis import attribution
from hooked_video.core.video import VideoError
from hooked_video.data.mcqa import Sample, identify_all, to_prompt
from hooked_video.data import prefetch
from hooked_video.data.prefetch import PromptPreparer

ARCH = "llava_next_video"
DECODED: list[tuple[str, str]] = []  # (sample id, thread name) of every decode


class CountedSample(Sample):
    """A Sample that records who decoded its video (the decoding itself is Sample's)."""

    def frames_for(self, model, num_frames=8):
        DECODED.append((self.id, threading.current_thread().name))
        return super().frames_for(model, num_frames)


@pytest.fixture(scope="module")
def model(deep_paths):
    if ARCH not in deep_paths:
        pytest.skip(f"{ARCH} is not among the tested architectures")
    return HookedVideoLLM.from_pretrained(deep_paths[ARCH])


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Five questions on distinct encoded videos (one of them not a video file)."""
    folder = tmp_path_factory.mktemp("prefetch")
    rng = np.random.default_rng(3)
    made = [CountedSample(id=f"q{i}", video=str(save_video(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                                                          folder / f"{i}.mp4")),
                          question="what happens first ?", options=["the ball falls", "the cup moves"], answer=i % 2)
            for i in range(4)]  # fmt: skip
    broken = folder / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    return made, CountedSample(id="broken", video=str(broken), question="what happens ?", options=["a", "b"], answer=0)


@pytest.fixture(autouse=True)
def fresh_log(monkeypatch):
    """An empty log, and decoding ahead on the CPU too (off by default there)."""
    DECODED.clear()
    monkeypatch.setattr(prefetch, "DECODE_AHEAD_ON_CPU", prefetch.DECODE_AHEAD)


def assert_same_prompt(a, b):
    assert a.inputs.keys() == b.inputs.keys()
    for key, value in a.inputs.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b.inputs[key], rtol=0, atol=0)
    assert a.token_map.role == b.token_map.role


def decode_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("hooked-video-decode") and t.is_alive()]


def test_prompts_match_preparing_when_asked(model, samples):
    made, _ = samples
    items = identify_all(made)
    with PromptPreparer(model, items, num_frames=4) as preparer:
        prompts = [preparer.prompt(sample_id) for sample_id, _, _ in items]
    ahead = list(DECODED)
    DECODED.clear()
    for prompt, (_, _, item) in zip(prompts, items):
        assert_same_prompt(prompt, to_prompt(model, item, 4))
    assert sorted(i for i, _ in ahead) == ["q0", "q1", "q2", "q3"]  # each decoded once
    assert all(name.startswith("hooked-video-decode") for _, name in ahead)  # none on the caller's thread


def test_only_wanted_samples_are_decoded(model, samples):
    made, _ = samples
    items = identify_all(made)
    with PromptPreparer(model, items, num_frames=4, wanted=lambda sample_id: sample_id in ("q1", "q3")) as preparer:
        preparer.prompt("q1")
        preparer.prompt("q3")
    assert sorted(i for i, _ in DECODED) == ["q1", "q3"]


def test_asked_out_of_order_or_without_ahead(model, samples):
    made, _ = samples
    items = identify_all(made)
    expected = {sample_id: to_prompt(model, item, 4) for sample_id, _, item in items}
    with PromptPreparer(model, items, num_frames=4) as preparer:
        for sample_id in ("q2", "q0", "q3"):
            assert_same_prompt(preparer.prompt(sample_id), expected[sample_id])
    DECODED.clear()
    with PromptPreparer(model, items, num_frames=4, ahead=0) as preparer:
        assert_same_prompt(preparer.prompt("q1"), expected["q1"])
    assert DECODED == [("q1", threading.current_thread().name)]


def test_a_sample_class_with_its_own_prepare_is_prepared_when_asked(model, samples):
    made, _ = samples

    class OwnPrompt(CountedSample):
        def prepare(self, model, num_frames=8):  # a user's own prompt: its frames, another question
            frames, _ = self.frames_for(model, num_frames)
            return model.prepare(frames, "what happens ?", self.options, self.answer, num_frames=None)

    own = OwnPrompt(**{k: getattr(made[0], k) for k in ("id", "video", "question", "options", "answer")})
    with PromptPreparer(model, identify_all([own, made[1]]), num_frames=4) as preparer:
        prompt = preparer.prompt("q0")
    assert [name for i, name in DECODED if i == "q0"] == [threading.current_thread().name]  # by its prepare, when asked
    assert_same_prompt(prompt, own.prepare(model, 4))


def test_a_broken_video_raises_when_its_sample_is_asked_for(model, samples):
    made, broken = samples
    with pytest.raises(VideoError) as direct:
        to_prompt(model, broken, 4)
    items = identify_all([made[0], broken, made[1]])
    with PromptPreparer(model, items, num_frames=4) as preparer:
        preparer.prompt("q0")  # the broken one decodes (and fails) meanwhile: no error yet
        with pytest.raises(VideoError) as ahead:
            preparer.prompt("broken")
        assert_same_prompt(preparer.prompt("q1"), to_prompt(model, made[1], 4))
    assert str(ahead.value) == str(direct.value)
    worker = [name for i, name in DECODED if i == "broken"][1:]  # after the direct call's decode
    assert len(worker) == 1 and worker[0].startswith("hooked-video-decode")  # the worker's error, not a second try


def test_decoding_ahead_by_default_only_for_a_model_on_a_gpu(model, monkeypatch):
    monkeypatch.setattr(prefetch, "DECODE_AHEAD_ON_CPU", 0)
    assert prefetch.default_ahead(model) == 0  # the CPU: the model's threads use the cores

    class OnGPU:
        device = torch.device("cuda", 0)

    assert prefetch.default_ahead(OnGPU()) == prefetch.DECODE_AHEAD == 2


def test_the_worker_stops_with_the_run(model, samples):
    made, _ = samples
    with PromptPreparer(model, identify_all(made), num_frames=4) as preparer:
        preparer.prompt("q0")
        assert decode_threads_alive()
    for thread in [t for t in threading.enumerate() if t.name.startswith("hooked-video-decode")]:
        thread.join(timeout=10)
    assert not decode_threads_alive()


@pytest.mark.usefixtures("one_thread")
def test_resumed_runs_decode_only_what_is_left(model, samples, tmp_path):
    """Every analysis that reads videos: a second call with the same folder decodes nothing, a
    call with one more sample decodes that one only."""
    made, _ = samples
    runs = {
        "sweep": lambda items, out: flow.sweep(model, items, targets=["cross-frame"], window=1, select="all",
                                               num_frames=4, out=out, progress=False),
        "lens": lambda items, out: lens.run(model, items, variant="unembed", norm="final", select="all", num_frames=4,
                                            out=out, progress=False).top1,
        "pathways": lambda items, out: pathways.evaluate(model, items, pathways.PathwaySpec((0, 1), (0, 2), (1, 3), 4), random_fraction=0.2,
                                                         num_frames=4, out=out, progress=False).rows,
        "head_knockouts": lambda items, out: attribution.head_knockouts(model, items, targets=["cross-frame"], heads=[0],
                                                                        select="all", num_frames=4, out=out, progress=False),
        "attribute": lambda items, out: flow.attribute(model, items, targets=["cross-frame"], window=1, select="all",
                                                       num_frames=4, out=out, progress=False),
    }  # fmt: skip
    for name, run in runs.items():
        out = tmp_path / name
        first = run(made[:3], out)
        assert sorted(i for i, _ in DECODED) == ["q0", "q1", "q2"], name
        DECODED.clear()
        assert len(run(made[:3], out)) == len(first)
        assert DECODED == [], name
        run(made, out)
        assert [i for i, _ in DECODED] == ["q3"], name
        DECODED.clear()
