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
    df = flow.sweep_open_ended(deep, [prompt], anchor=anchor, targets=[targets], window=3, max_new_tokens=8,
                               num_open_tokens=1, progress=False)  # fmt: skip
    base = df.attrs["baseline"][0]
    hf = load_hf(deep_paths[arch], deep)
    with torch.no_grad():  # greedy generation, independently
        generated = hf.generate(**prompt.inputs, max_new_tokens=8, do_sample=False)[0, prompt.n_positions :].tolist()
    words = [i for i, t in enumerate(generated) if any(c.isalnum() for c in deep.tokenizer.decode([t]))]
    position = words[anchor - 1]
    assert base["anchor_token"] == generated[position] and base["anchor_index"] == position
    ids = prompt.input_ids[0].tolist() + generated[:position]
    inputs = {**prompt.inputs, "input_ids": torch.tensor([ids])}
    for key in ("attention_mask", "mm_token_type_ids"):
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], torch.full((1, position), int(key == "attention_mask"))], dim=-1)
    n = len(ids)
    video = [i for i, t in enumerate(ids) if t == deep.family.video_token_id]
    video = video[:-1] if arch == "llava_onevision" else video  # its last placeholder is the newline feature
    question = positions_of(ids, deep.tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    response = list(range(prompt.n_positions, n - 1))[: max(min(1, position - 1), position - 2)]  # one left open
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
