"""Bad input fails early with a message that says what was wrong and what to do."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hooked_video import HookedVideoLLM, PromptLayoutError, UnsupportedArchitectureError, VideoError
from hooked_video.zoo.tiny import TinySizes, build_tiny

Q, OPTS = "which way does the ball move ?", ["left", "right"]


@pytest.fixture(scope="module")
def model(tiny_paths):
    return HookedVideoLLM.from_pretrained(tiny_paths["llava_next_video"])


def test_missing_video(model, tmp_path):
    with pytest.raises(VideoError, match="not found"):
        model.prepare(tmp_path / "missing.mp4", Q, OPTS)


def test_corrupt_video(model, tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    with pytest.raises(VideoError, match="could not decode"):
        model.prepare(bad, Q, OPTS)


def test_too_few_frames(model, frames):
    with pytest.raises(VideoError, match="fewer than the 8 asked"):
        model.prepare(frames, Q, OPTS, num_frames=8)


@pytest.mark.parametrize(
    "answer, message",
    [(2, "outside the 2 options"), (-1, "outside"), ("up", "not among the options")],
)
def test_answer_not_among_options(model, frames, answer, message):
    with pytest.raises(ValueError, match=message):
        model.prepare(frames, Q, OPTS, answer=answer, num_frames=None)


def test_answer_without_options(model, frames):
    with pytest.raises(ValueError, match="needs options"):
        model.prepare(frames, Q, answer=0, num_frames=None)


def test_answer_by_text(model, frames):
    assert model.prepare(frames, Q, OPTS, answer="right", num_frames=None).answer == 1


def test_unsupported_architecture_lists_supported(tmp_path):
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM.*Qwen2VLForConditionalGeneration"):
        HookedVideoLLM.from_pretrained(tmp_path)


def test_placeholders_that_do_not_match_the_video(model, frames):
    prompt = model.prepare(frames, Q, OPTS, num_frames=None)
    ids = prompt.input_ids
    video = prompt.token_map.video
    fewer = torch.cat([ids[:, : video[0]], ids[:, video[0] + 1 :]], dim=1)
    broken = dataclasses.replace(prompt, inputs={**prompt.inputs, "input_ids": fewer,
                                                 "attention_mask": torch.ones_like(fewer)})
    with pytest.raises(PromptLayoutError, match="15 video placeholder tokens but the video gives 16"):
        model.run_with_cache(broken)


def test_two_videos_in_one_prompt(model, frames):
    prompt = model.prepare(frames, Q, OPTS, num_frames=None)
    ids = prompt.input_ids.clone()
    ids[0, 2] = model.family.video_token_id
    broken = dataclasses.replace(prompt, inputs={**prompt.inputs, "input_ids": ids})
    with pytest.raises(PromptLayoutError, match="found 2 runs"):
        model(broken)


def test_prompt_longer_than_context(tmp_path):
    path = build_tiny("llava_next_video", tmp_path / "short", TinySizes(max_positions=64))
    model = HookedVideoLLM.from_pretrained(path)
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(PromptLayoutError, match="more than the model's context of 64"):
        model.prepare(frames, Q, OPTS, num_frames=None)


def test_batches_need_equal_layout(model, frames):
    a = model.prepare(frames, Q, OPTS, num_frames=None)
    b = model.prepare(frames, Q, ["left", "right", "up"], num_frames=None)
    with pytest.raises(PromptLayoutError, match="different lengths"):
        model([a, b])


def test_free_form_prompt_has_no_options(model, frames):
    prompt = model.prepare(frames, "what is in this video ?", num_frames=None)
    tm = prompt.token_map
    assert [prompt.str_tokens[i] for i in tm.question_without_options] == "what is in this video ?".split()
    assert tm.options == [] and prompt.option_token_ids == []
    with pytest.raises(AttributeError, match="no answer"):
        tm.true_option
    with pytest.raises(IndexError, match="has 4 frames"):
        tm.frame(4)
