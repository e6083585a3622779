"""TransformerLens habits on video prompts, each against an independent computation: the token
strings, greedy generation (HF ``generate`` on the plain model), ``transformer_lens.patching``
(a hand-written patch of the plain model's decoder layer) and eval-mode hook points."""

from __future__ import annotations

import pytest
import torch
from hf_reference import load_hf
from transformer_lens import patching as tl_patching

from hooked_video import HookedVideoLLM

ARCHITECTURES = ["llava_next_video", "qwen2_5_vl"]  # one with M-RoPE, whose generated positions continue the video's


@pytest.fixture(scope="module", params=ARCHITECTURES)
def case(request, tiny_paths, frames):
    path = tiny_paths[request.param]
    model = HookedVideoLLM.from_pretrained(path)
    clean = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    corrupted = model.prepare(frames[::-1].copy(), "which way does the ball move ?", ["left", "right"], answer=1,
                              num_frames=None)  # fmt: skip
    return model, load_hf(path, model), clean, corrupted


def test_to_str_tokens_of_a_video_prompt(case):
    model, _, clean, _ = case
    strings = model.to_str_tokens(clean)
    assert len(strings) == clean.n_positions
    decoded = [model.tokenizer.decode([i]) for i in clean.input_ids[0].tolist()]
    assert strings == decoded
    assert len({strings[p] for p in clean.token_map.video.tolist()}) == 1  # the video placeholder, once per feature


def test_generate_equals_hf_greedy_generation(case):
    model, hf, clean, _ = case
    ours = model.generate(clean, max_new_tokens=6, stop_at_eos=False, return_type="tokens")
    with torch.no_grad():
        theirs = hf.generate(**clean.inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert ours == theirs[0, clean.n_positions :].tolist()
    text = model.generate(clean, max_new_tokens=6, stop_at_eos=False)
    assert text == model.tokenizer.decode(ours, skip_special_tokens=True)


def _patched_last_logits(hf, prompt, layer: int, position: int, value: torch.Tensor) -> torch.Tensor:
    """The plain model's last logits with decoder layer ``layer``'s input at ``position`` replaced."""
    decoder = hf.model.language_model.layers[layer]

    def replace(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        hidden[:, position] = value
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = decoder.register_forward_pre_hook(replace, with_kwargs=True)
    try:
        with torch.no_grad():
            return hf(**prompt.inputs).logits[0, -1]
    finally:
        handle.remove()


def test_transformer_lens_patching_on_video_prompts(case):
    """Equal to a hand-written patch of the plain model, and to ``hooked_video.patching`` where
    both apply; it says what it costs before its first patched forward, once."""
    from hooked_video import patching

    model, hf, clean, corrupted = case
    answer = clean.answer_token_id
    _, clean_cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[0, -1, answer]

    n_forwards = model.cfg.n_layers * clean.n_positions
    for tokens in (corrupted, model.to_tokens(corrupted)):
        with pytest.warns(UserWarning, match=rf"runs {n_forwards} forwards.*hooked_video.patching") as caught:
            result = tl_patching.get_act_patch_resid_pre(model, tokens, clean_cache, metric)
        assert sum("transformer_lens.patching" in str(w.message) for w in caught) == 1
        assert result.shape == (model.cfg.n_layers, clean.n_positions)
    positions = [clean.token_map.video[0], clean.token_map.video[-1], clean.n_positions - 1]
    for layer in range(model.cfg.n_layers):
        for position in positions:
            value = clean_cache[f"blocks.{layer}.hook_resid_pre"][0, position]
            expected = _patched_last_logits(hf, corrupted, layer, position, value)[answer]
            torch.testing.assert_close(result[layer, position], expected, atol=1e-4, rtol=1e-4)
    ours = patching.patch_positions(model, clean, corrupted, [torch.tensor([p]) for p in positions],
                                    metric=lambda logits, _: logits[:, -1, answer], progress=False)  # fmt: skip
    torch.testing.assert_close(ours.values, result[:, positions].float(), atol=1e-4, rtol=1e-4)


def test_hook_points_are_in_eval_mode(case):
    model, *_ = case
    assert not model.bridge.training and not model.hf_model.training
    assert [name for name, m in model.bridge.named_modules() if m.training] == []
    assert not model.bridge.hook_video_embeds.training


def test_ids_with_video_placeholders_but_no_pixels_are_refused(case):
    """``model(prompt.input_ids)`` would run the language model on the placeholder embeddings."""
    from hooked_video import InvalidInputError

    model, hf, clean, _ = case
    unknown = clean.input_ids.clone()
    unknown[0, -2] = unknown[0, -3]  # ids of no prompt this model prepared
    for call in (model, model.run_with_cache, model.embed):
        with pytest.raises(InvalidInputError, match=r"hold \d+ video placeholder tokens but no pixels.*model\(prompt\)"):
            call(unknown)
    with torch.no_grad():
        torch.testing.assert_close(model(clean.inputs), model(clean))  # the ids with their pixels: fine
        text = model.tokenizer("which way does the ball move ?", return_tensors="pt")["input_ids"]
        torch.testing.assert_close(model(text), hf(input_ids=text).logits, atol=1e-4, rtol=0)  # no placeholder: text


def test_ids_of_a_prepared_prompt_run_with_its_video(case):
    """TransformerLens passes ids around: ``to_tokens(prompt)`` and ``model(ids)``, also with text
    appended (``transformer_lens.utils.test_prompt``), run the prompt's video."""
    model, hf, clean, _ = case
    ids = model.to_tokens(clean)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(clean))
        extra = model.tokenizer(" B", add_special_tokens=False, return_tensors="pt")["input_ids"]
        longer = torch.cat([ids, extra], dim=1)
        inputs = {**clean.inputs, "input_ids": longer}
        for key in ("attention_mask", "mm_token_type_ids"):
            if key in inputs:
                inputs[key] = torch.cat([inputs[key], torch.full_like(extra, int(key == "attention_mask"))], dim=1)
        torch.testing.assert_close(model(longer), hf(**inputs).logits, atol=1e-4, rtol=0)


def test_transformer_lens_test_prompt_and_ours_on_a_video_prompt(case, capsys):
    from transformer_lens.utilities import test_prompt

    model, _, clean, _ = case
    test_prompt(clean, "B", model, prepend_space_to_answer=False)
    printed = capsys.readouterr().out
    assert "Performance on answer token" in printed and "Top 0th token" in printed
    model.test_prompt(clean)
    ours = capsys.readouterr().out
    probs = model(clean)[0, -1].softmax(-1)
    letter = clean.option_token_ids[clean.answer]
    assert f"prob {100 * float(probs[letter]):.2f}%  <- true" in ours and "Top tokens:" in ours


@pytest.mark.parametrize("kwargs", [dict(verbose=False), dict(do_sample=True, temperature=0.7, top_k=5, seed=3),
                                    dict(use_past_kv_cache=True, do_sample=False)])  # fmt: skip
def test_generate_takes_transformer_lens_keywords(case, kwargs):
    model, _, clean, _ = case
    first = model.generate(clean, max_new_tokens=3, stop_at_eos=False, return_type="tokens", **kwargs)
    again = model.generate(clean, max_new_tokens=3, stop_at_eos=False, return_type="tokens", **kwargs)
    assert len(first) == 3 and first == again  # greedy, or sampled with a seed
    with pytest.raises(ValueError, match=r"does not take \['freq_penalty'\]"):
        model.generate(clean, max_new_tokens=1, freq_penalty=1.0)


def test_sampling_keeps_top_k_and_top_p():
    from hooked_video.model.habits import sample_next

    logits = torch.tensor([5.0, 4.0, 1.0, 0.0, -1.0])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, True, 1.0, top_k=2, generator=g) for _ in range(200)} == {0, 1}
    assert {sample_next(logits, True, 1.0, top_p=0.5, generator=g) for _ in range(200)} == {0}  # p(0) = 0.72
    assert sample_next(logits, False) == 0 and sample_next(logits, True, temperature=0) == 0


def test_text_generate_is_transformer_lens_own(case):
    model, _, _, _ = case
    text = model.generate("which way does the ball", max_new_tokens=2, do_sample=False, verbose=False)
    assert isinstance(text, str) and text.startswith("which way does the ball")


def test_lm_hook_names_leave_the_vision_side_out(case):
    """A suffix filter catches vision hooks too; ``lm_hook_names`` holds the language model's only,
    and a video-position edit through them leaves the vision tower's activations as they were."""
    model, _, clean, _ = case
    by_suffix = [n for n in model.hook_dict if n.endswith("hook_out")]
    lm = set(model.lm_hook_names)
    assert any(n.startswith("vision_") for n in by_suffix) and not any(n.startswith("vision_") for n in lm)
    assert lm | {n for n in model.hook_dict if n.startswith(("vision_encoder.", "vision_projector."))} == set(model.hook_dict)
    assert {f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)} <= lm and "hook_video_embeds" in lm
    video = clean.token_map.video

    def zero_video(act, hook):
        act[:, video] = 0
        return act

    names = [n for n in model.lm_hook_names if n.endswith("hook_resid_post")]
    vision = [n for n in model.hook_dict if n.startswith("vision_")]
    _, before = model.run_with_cache(clean, names_filter=lambda n: n in vision)
    with model.hooks(fwd_hooks=[(n, zero_video) for n in names]):
        _, after = model.run_with_cache(clean, names_filter=lambda n: n in vision)
    assert before.keys() == after.keys() and len(before) > 0
    for name in before.keys():
        torch.testing.assert_close(before[name], after[name])
