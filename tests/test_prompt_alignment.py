"""Prompt alignment does not depend on how a processor lays out the video: Qwen3-VL's processor as
transformers 5.24 wrote it (an outer ``<|vision_start|>`` / ``<|vision_end|>`` pair around all frames),
as 5.25 writes it (no outer pair), as installed, and one that writes text before the first frame. Each is a real
processor (a subclass of transformers' own), loaded from the saved folder like a user's; spans, frames
and logits are checked against the ids and the plain HF model."""

import numpy as np
import pytest
import torch
from hf_reference import last_probs, load_hf

from hooked_video import HookedVideoLLM, knockout
from hooked_video.model.prompt import align_text, replaced_region
from hooked_video.model.tokens import PromptLayoutError
from hooked_video.zoo.tiny import build_tiny

Q, OPTIONS = "which way does the ball move ?", ["left", "right"]
WRAPPER = "<|vision_start|><|video_pad|><|vision_end|>"


def qwen3_processor(kind: str):
    """A Qwen3-VL processor class: transformers' own, or one that lays the video out otherwise. The
    template writes the video as ``<|vision_start|><|video_pad|><|vision_end|>``; writing a bare
    ``<|video_pad|>`` instead gives the same layout on every transformers version, to which the
    subclasses add what they emulate."""
    from transformers import Qwen3VLProcessor

    class OuterPairDropped(Qwen3VLProcessor):
        """transformers >= 5.25: frames only, each in its own start/end pair."""

        def __call__(self, text=None, **kwargs):
            return super().__call__(text=text.replace(WRAPPER, "<|video_pad|>"), **kwargs)

    class OuterPairKept(OuterPairDropped):
        """transformers < 5.25: the template's outer start/end pair stays around all frames."""

        def replace_video_token(self, video_inputs, video_idx, **kwargs):
            return f"<|vision_start|>{super().replace_video_token(video_inputs, video_idx, **kwargs)}<|vision_end|>"

    class TextBeforeFrames(Qwen3VLProcessor):
        """Writes words before the first frame's timestamp (they belong to frame 0)."""

        def replace_video_token(self, video_inputs, video_idx, **kwargs):
            return "Time : " + super().replace_video_token(video_inputs, video_idx, **kwargs)

    kinds = {"installed": Qwen3VLProcessor, "outer-pair": OuterPairKept, "outer-dropped": OuterPairDropped,
             "text-before": TextBeforeFrames}  # fmt: skip
    return kinds[kind]


@pytest.fixture(scope="module")
def qwen3_path(tmp_path_factory):
    return build_tiny("qwen3_vl", tmp_path_factory.mktemp("q3") / "m")


def hooked_with(path, kind: str) -> HookedVideoLLM:
    from transformers import Qwen3VLForConditionalGeneration

    hf = Qwen3VLForConditionalGeneration.from_pretrained(path, attn_implementation="eager")
    return HookedVideoLLM.from_hf(hf, qwen3_processor(kind).from_pretrained(path), model_name=str(path))


def clip(n=4):
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["installed", "outer-pair", "outer-dropped", "text-before"])
def test_spans_frames_and_logits_whatever_the_processor_layout(qwen3_path, kind):
    model = hooked_with(qwen3_path, kind)
    prompt = model.prepare(clip(), Q, OPTIONS, answer=1, num_frames=None, fps=2.0)
    tm, tok, ids = prompt.token_map, model.tokenizer, prompt.input_ids[0]
    tokens = tok.convert_ids_to_tokens(ids.tolist())
    first_time = tokens.index("<")
    if kind == "outer-pair":  # the layout this emulates really has the outer pair around the frames
        assert tokens[first_time - 1] == "<|vision_start|>" and tm.role[first_time - 1] == "video_separator"
        assert tokens.count("<|vision_start|>") == tm.n_frames + 1 and len(tm.video_separators) == 2
    elif kind == "outer-dropped":
        assert tokens[first_time - 1] != "<|vision_start|>" and tokens.count("<|vision_start|>") == tm.n_frames
        assert len(tm.video_separators) == 0
    elif kind == "text-before":
        assert tokens[first_time - 2 : first_time] == ["Time", ":"]
    decode = lambda positions: tok.decode(ids[positions]).replace(" ", "")  # noqa: E731
    assert decode(tm.question_without_options) == Q.replace(" ", "")
    assert decode(tm.true_option) == "(B)right" and decode(tm.false_options) == "(A)left"
    assert bool((ids[tm.video] == model.family.video_token_id).all()) and tm.n_frames == 2
    for i in range(tm.n_frames):  # each slot: [text before frame 0], its time, its markers, its tokens
        own = "Time:" if kind == "text-before" and i == 0 else ""
        text = decode(tm.frame_text[tm.frame_of[tm.frame_text] == i])
        assert text == f"{own}<{(4 * i + 1) / 4:.1f}seconds><|vision_start|><|vision_end|>"
        group = tm.frame_group(i)
        assert torch.equal(group, torch.arange(int(group[0]), int(group[-1]) + 1))  # one contiguous block
        assert tokens[int(group[-1])] == "<|vision_end|>"
    hf = load_hf(qwen3_path, model)
    edges = knockout.cross_frame(tm)
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), hf(**prompt.inputs).logits, atol=1e-4, rtol=0)
        knocked = model.run_with_hooks(prompt, fwd_hooks=knockout.hooks(edges, [0, 1]))
    expected = last_probs(hf, prompt.inputs, {0: edges.additive_mask(), 1: edges.additive_mask()})
    torch.testing.assert_close(knocked[:, -1].float().softmax(-1), expected, atol=1e-5, rtol=0)


def test_cross_frame_knockout_leaves_no_marker_between_frames_open(qwen3_path):
    """Frame 1's tokens cannot read frame 0 through frame 0's closing marker or its own opening one."""
    model = hooked_with(qwen3_path, "installed")
    tm = model.prepare(clip(), Q, OPTIONS, answer=1, num_frames=None, fps=2.0).token_map
    mask = knockout.cross_frame(tm).mask
    queries, keys = tm.frame(1), tm.frame_group(0)
    assert bool(mask[queries[:, None], keys[None, :]].all())
    assert not bool(mask[queries[:, None], tm.frame_group(1)[None, :]].any())


def test_replaced_region_keeps_text_on_both_sides():
    ids = [1, 2, 7, 9, 8, 3, 4]  # 7 9 8: start marker, placeholder, end marker
    assert replaced_region(ids, [1, 2, 7, 5, 5, 8, 3, 4], 3) == ((3, 4), (3, 5))  # 5.24: the pair kept
    # 5.25: the start marker rewritten, the end marker read as the last frame's
    assert replaced_region(ids, [1, 2, 6, 7, 5, 8, 3, 4], 3) == ((2, 4), (2, 5))
    # a suffix that looks like the video's end never swallows the placeholder
    assert replaced_region([1, 9, 8, 3], [1, 8, 8, 8, 3], 1) == ((1, 2), (1, 3))


def test_a_processor_that_rewrites_prompt_text_is_refused(qwen3_path):
    model = hooked_with(qwen3_path, "installed")
    text = model.prepare(clip(), Q, OPTIONS, answer=1, num_frames=None, fps=2.0).text
    tok = model.tokenizer
    plain = tok(text)["input_ids"]
    k = plain.index(model.family.placeholder_id)
    changed = plain[: k - 2] + [tok.convert_tokens_to_ids("ball")] + plain[k - 1 : k] + [model.family.video_token_id] * 4 + plain[k + 1 :]
    with pytest.raises(PromptLayoutError, match="changed text tokens"):
        align_text(tok, text, changed, model.family.placeholder_id)
    with pytest.raises(PromptLayoutError, match="exactly once"):
        align_text(tok, text.replace(WRAPPER, ""), plain, model.family.placeholder_id)
