"""The open-ended knockout sweep against a direct computation with a plain HF model: greedy
generation, then a teacher-forced forward with explicit 4D masks."""

import pytest
import torch
from hf_reference import last_probs, load_hf

from hooked_video import flow
from hooked_video.model.prompt import PromptTemplate

QUESTION = "what happens first ?"


def positions_of(ids: list[int], pattern: list[int]) -> list[int]:
    for start in range(len(ids) - len(pattern) + 1):
        if ids[start : start + len(pattern)] == pattern:
            return list(range(start, start + len(pattern)))
    raise AssertionError("pattern not found")


def additive(n: int, blocked: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """(1, 1, n, n) additive mask: causal, plus source -/-> target pairs blocked."""
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    for sources, targets in blocked:
        for t in targets:
            allowed[t, sources] = False
    return torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


@pytest.mark.parametrize("anchor", [1, 2, 3])
def test_open_ended_rows_equal_a_teacher_forced_hf_forward(deep, deep_paths, frames, arch, anchor):
    if arch != "llava_next_video" and anchor > 1:
        pytest.skip("one architecture covers the anchors")
    prompt = deep.prepare(frames, QUESTION, template=PromptTemplate.free_form(), num_frames=None)
    targets = {"t": {c: flow.OPEN_ENDED_TARGETS["vqrl-to-qrl"][c] for c in ("video->response", "question->last")}}
    later = lambda tokens: [i for i, t in enumerate(tokens) if i >= 2 and any(c.isalnum() for c in t)]  # noqa: E731
    df = flow.sweep_open_ended(deep, [prompt], anchor=anchor, anchors=later, targets=[targets], window=3,
                               max_new_tokens=8, num_open_tokens=1, progress=False)  # fmt: skip
    base = df.attrs["baseline"][0]
    hf = load_hf(deep_paths[arch], deep)
    with torch.no_grad():  # greedy generation, independently
        generated = hf.generate(**prompt.inputs, max_new_tokens=8, do_sample=False)[0, prompt.n_positions :].tolist()
    words = [i for i, t in enumerate(generated) if i >= 2 and any(c.isalnum() for c in deep.tokenizer.decode([t]))]
    if len(words) < anchor:
        assert "fewer than" in base["skipped"]
        return
    position = words[anchor - 1]
    assert base["anchor_token"] == generated[position] and base["anchor_index"] == position
    ids = prompt.input_ids[0].tolist() + generated[:position]
    inputs = {**prompt.inputs, "input_ids": torch.tensor([ids])}
    for key in ("attention_mask", "mm_token_type_ids"):
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], torch.full((1, position), int(key == "attention_mask"))], dim=-1)
    n = len(ids)
    video = prompt.token_map.video_group.tolist()  # video tokens and the text of their frames (markers, times)
    placeholders = [i for i, t in enumerate(ids) if t == deep.family.video_token_id]
    assert set(placeholders[:-1]) <= set(video)  # (LLaVA-OneVision's last placeholder is its newline feature)
    question = positions_of(ids, deep.tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    # the released rule: one response token left open before the last, unless it is an earlier anchor
    earlier = [w for w in words[: anchor - 1] if w < position - 1]
    typed = max(1, position - 2, *(w + 1 for w in earlier))
    response = list(range(prompt.n_positions, n - 1))[:typed]
    last = [n - 1]
    conditions = {"video->response": (video, response), "question->last": (question, last)}
    unmasked = last_probs(hf, inputs)[0, generated[position]]
    assert base["p_base"] == pytest.approx(float(unmasked), abs=1e-6)
    for row in df.itertuples():
        mask = additive(n, [conditions[row.condition]])
        layers = range(row.window_start, row.window_end + 1)
        expected = last_probs(hf, inputs, {l: mask for l in layers})[0, generated[position]]
        assert row.p_knockout == pytest.approx(float(expected), abs=1e-6), (row.condition, row.layer)
    assert len(df) == 2 * deep.cfg.n_layers


def test_anchor_rules():
    tokens = ["The", " man", ",", " walks", " .", " then", " runs"]
    assert flow.anchor_positions(tokens) == [0, 1, 3, 5, 6]
    assert flow.anchor_positions(tokens, ["walks", "runs"]) == [3, 6]
    assert flow.anchor_positions(tokens, lambda toks: [len(toks) - 1]) == [6]


def test_anchor_words_match_one_or_two_tokens_as_released():
    tokens = ["The", " man", " walk", "s", " then", " runs", "."]
    assert flow.anchor_positions(tokens, ["walks", "runs"]) == [2, 5]  # "walk" + "s" anchors at its first token
    assert flow.anchor_positions(tokens, {"man"}) == [1]


def test_verb_anchors_need_spacy_and_say_how_to_get_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_spacy(name, *args, **kwargs):
        if name == "spacy":
            raise ImportError("No module named 'spacy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spacy)
    with pytest.raises(ImportError, match="python -m spacy download en_core_web_lg"):
        flow.anchor_positions(["The", " man", " walks"], "verbs", text="The man walks")


def released_response_typed(position: int, verbs_before: list[int], num_open_tokens: int) -> int:
    """The released analysis' response group before the last position (end_pos), written out."""
    response = list(range(position - 1))  # answer indices before the last position
    verb_range = [v for v in verbs_before if v < position - 1]
    if num_open_tokens != 0:
        if verb_range and verb_range[-1] in response:
            end_pos = max(response.index(verb_range[-1]) + 1, len(response) - num_open_tokens)
        else:
            end_pos = len(response) - num_open_tokens
        end_pos = max(1, end_pos)
        response = response[:end_pos]
    return len(response)


@pytest.mark.parametrize("position, earlier, num_open", [(5, [], 1), (5, [3], 1), (5, [2], 2), (9, [1, 7], 3),
                                                         (3, [], 4), (6, [4, 5], 1), (6, [], 0)])  # fmt: skip
def test_open_tokens_follow_the_released_rule(position, earlier, num_open):
    from hooked_video.analysis.flow.open_ended import _open_tokens

    typed = (position - 1) - _open_tokens(position, earlier, num_open)
    assert typed == released_response_typed(position, earlier, num_open)


def test_vcgbench_template_is_the_released_conversation(tmp_path, frames):
    """conv_eval_vcg of the released code: system, a video turn of its own, then the question."""
    from hooked_video import HookedVideoLLM
    from hooked_video.model.prompt import VCGBENCH_SYSTEM_PROMPT
    from hooked_video.zoo.tiny import build_tiny

    model = HookedVideoLLM.from_pretrained(build_tiny("pllava", tmp_path / "pllava"))
    prompt = model.prepare(frames, QUESTION, template="map-the-flow-vcgbench", num_frames=None)
    messages = [("USER: ", "<image>\n"), ("USER: ", QUESTION)]  # MM_ALONE: the video is a user turn
    expected = VCGBENCH_SYSTEM_PROMPT + " " + "".join(r + m + " " for r, m in messages) + "ASSISTANT:"
    assert prompt.text == expected
    assert "language.Follow" in prompt.text  # the released string has no space there
