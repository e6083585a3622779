"""End to end on each architecture: fidelity to HF, video hooks, token map, frame layout."""

import numpy as np
import pytest
import torch
from hf_reference import load_hf as hf_reference

from hooked_video.model.families import FAMILIES, PllavaFamily


def test_logits_equal_hf_eager(arch, hooked, prompt, tiny_paths):
    with torch.no_grad():
        expected = hf_reference(tiny_paths[arch], hooked)(**prompt.inputs).logits
        logits = hooked(prompt)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_video_hooks_fire_with_documented_shapes(hooked, prompt):
    tm, cfg = prompt.token_map, hooked.cfg
    n, v = prompt.n_positions, len(tm.video)
    logits, cache = hooked.run_with_cache(prompt)
    assert cache["hook_video_embeds"].shape == (1, v, cfg.d_model)
    assert cache["blocks.0.hook_resid_pre"].shape == (1, n, cfg.d_model)
    # the hook carries exactly what the first block receives at the video positions, in order
    torch.testing.assert_close(cache["hook_video_embeds"][0], cache["blocks.0.hook_resid_pre"][0, tm.video])
    scores = cache["blocks.1.attn.hook_attn_scores"]
    assert scores.shape == (1, cfg.n_heads, n, n)
    # pre-softmax scores (editable knockout target), causal mask applied
    torch.testing.assert_close(scores.float().softmax(-1), cache["blocks.1.attn.hook_pattern"].float())
    assert bool((scores[0, :, 0, 1:] < -1e30).all())
    assert "vision_projector.hook_out" in cache.keys()
    assert cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][0, tm.frame(1)].shape == (tm.tokens_per_frame, cfg.d_model)


def test_editing_one_frame_changes_output_and_identity_does_not(hooked, prompt):
    tm = prompt.token_map
    base = hooked(prompt)
    same = hooked.run_with_hooks(prompt, fwd_hooks=[("hook_video_embeds", lambda x, hook: x)])
    assert torch.equal(same, base)
    rel = torch.arange(tm.tokens_per_frame) + tm.tokens_per_frame  # frame 1, relative to the hook

    def scramble_frame_1(x, hook):
        x = x.clone()
        x[:, rel] = torch.randn_like(x[:, rel]) * 10
        return x

    edited = hooked.run_with_hooks(prompt, fwd_hooks=[("hook_video_embeds", scramble_frame_1)])
    first_edit = int(tm.frame(1).min())
    assert not torch.allclose(edited[0, -1], base[0, -1])
    # causality: nothing before the edited frame moves
    torch.testing.assert_close(edited[0, :first_edit], base[0, :first_edit], atol=1e-5, rtol=0)


#: Architectures whose processor wraps each frame in markers (the markers belong to that frame).
PER_FRAME_MARKERS = {"qwen3_vl", "internvl"}


def test_token_map_video_positions_are_the_placeholders(arch, hooked, prompt):
    tm, ids = prompt.token_map, prompt.input_ids[0]
    placeholders = (ids == hooked.family.video_token_id).nonzero().flatten()
    separators_in_run = tm.video_separators[torch.isin(tm.video_separators, placeholders)]
    assert torch.equal(torch.cat([tm.video, separators_in_run]).sort().values, placeholders)
    assert all(tm.role[i] == "video" for i in tm.video.tolist())
    assert (tm.frame_of[tm.video_separators] == -1).all()
    markers = torch.isin(ids, torch.tensor(hooked.family.separator_ids(), dtype=ids.dtype)).nonzero().flatten()
    framed = [m for m in markers.tolist() if arch in PER_FRAME_MARKERS and "video" in (tm.role[m - 1], tm.role[m + 1])]
    for m in framed:  # the frame of the video token beside it
        beside = m - 1 if tm.role[m - 1] == "video" else m + 1
        assert tm.role[m] == "frame_text" and int(tm.frame_of[m]) == int(tm.frame_of[beside])
    assert len(framed) == (2 * tm.n_frames if arch in PER_FRAME_MARKERS else 0)
    expected = {"LlavaOnevisionFamily": 1}.get(type(hooked.family).__name__, 0) + len(markers) - len(framed)
    assert tm.video_separators.numel() == expected
    assert torch.isin(markers[~torch.isin(markers, torch.tensor(framed, dtype=torch.long))], tm.video_separators).all()


def model_grid(hf_model, prompt):
    """The (T, H, W) video token grid computed from the model config, independently."""
    config, inputs = hf_model.config, prompt.inputs
    vision = config.vision_config
    if hasattr(config, "pooling_shape"):  # PLLaVA: the 3D pool's output
        return tuple(config.pooling_shape)
    if "video_grid_thw" in inputs:
        t, h, w = inputs["video_grid_thw"][0].tolist()
        m = int(inputs["video_merge_sizes"][0]) if "video_merge_sizes" in inputs else vision.spatial_merge_size
        return t, h // m, w // m
    if hasattr(config, "downsample_ratio"):  # InternVL: pixel shuffle of each frame's patch grid
        side = int(vision.image_size[0] // vision.patch_size[0] * config.downsample_ratio)
        return inputs["pixel_values"].shape[0], side, side
    side = vision.image_size // vision.patch_size
    pooled = side // config.spatial_pool_stride if hasattr(config, "spatial_pool_stride") else -(-side // 2)
    return inputs["pixel_values_videos"].shape[1], pooled, pooled


def test_grid_matches_model_layout(hooked, prompt):
    tm = prompt.token_map
    assert tm.grid_shape == model_grid(hooked.hf_model, prompt)
    assert torch.equal(tm.grid.reshape(-1), tm.video)  # row-major within each frame
    t, h, w = tm.grid_shape
    for i in range(t):
        assert torch.equal(tm.cell[tm.frame(i)][:, 0], torch.full((h * w,), i))
    assert tm.n_input_frames == 4 and tm.n_frames * tm.temporal_patch_size == 4


def test_each_frame_slice_holds_that_frame(hooked, prompt, frames):
    """The features at tm.frame(i) are those of the input frames of slot i encoded alone."""
    tm = prompt.token_map
    full = hooked.run_with_cache(prompt, names_filter="hook_video_embeds")[1]["hook_video_embeds"][0]
    for i in range(tm.n_frames):
        sub_frames = frames[tm.input_frames(i)]
        if isinstance(hooked.family, PllavaFamily):  # pooled to T slots: the frame T times
            sub_frames = np.repeat(sub_frames, tm.n_frames, axis=0)
        sub = hooked.prepare(sub_frames, "which way ?", ["left", "right"], num_frames=None)
        alone = hooked.run_with_cache(sub, names_filter="hook_video_embeds")[1]["hook_video_embeds"][0]
        rel = slice(i * tm.tokens_per_frame, (i + 1) * tm.tokens_per_frame)
        torch.testing.assert_close(full[rel], alone[: tm.tokens_per_frame], atol=1e-5, rtol=1e-5)


def test_text_spans(prompt):
    tm, toks = prompt.token_map, prompt.str_tokens
    newline = ["\n"] if prompt.template.spans_take_newline else []  # VideoLLaMA3's released spans
    assert [toks[i] for i in tm.question_without_options] == "which way does the ball move ?".split() + newline
    assert [toks[i] for i in tm.true_option] == ["(", "B", ")", "right"] + newline
    assert [toks[i] for i in tm.false_options] == ["(", "A", ")", "left"] + newline
    assert toks[int(tm.question[0])] == "Question" and int(tm.question[-1]) == int(tm.true_option[-1])
    assert tm.last.tolist() == [prompt.n_positions - 1]
    assert toks[-1] == ("(" if prompt.template.answer_prefix.endswith("(") else "\n")  # VideoLLaMA3: no prefix
    # the letter ids are the ids the letters have inside the options
    assert prompt.option_token_ids == [int(prompt.input_ids[0, tm.options[i][1]]) for i in range(2)]
    assert prompt.answer_token_id == prompt.option_token_ids[1]


def test_batch_of_equal_layout_prompts(hooked, prompt, frames):
    other = hooked.prepare(frames[::-1].copy(), "which way does the ball move ?", ["left", "right"], answer=0, num_frames=None)
    batched = hooked([prompt, other])
    torch.testing.assert_close(batched[0], hooked(prompt)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[1], hooked(other)[0], atol=1e-5, rtol=0)


def test_family_registry_covers_the_architectures():
    assert set(FAMILIES) == {
        "LlavaNextVideoForConditionalGeneration", "LlavaOnevisionForConditionalGeneration",
        "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "PllavaForConditionalGeneration",
        "Qwen3VLForConditionalGeneration", "InternVLForConditionalGeneration", "VideoLlama3ForConditionalGeneration",
    }  # fmt: skip


def test_mrope_positions_follow_the_token_grid(hooked, frames):
    """Qwen-VL: the 3-D rotary positions the LM receives put video token (t, h, w) of a slot at
    (t_slot, h_slot + h, w_slot + w), t_slot rising from slot to slot (Qwen2/2.5-VL: one origin
    for all slots; Qwen3-VL: a new origin per slot, after its timestamp text): the model's own
    layout agrees with the token map."""
    if "Qwen" not in type(hooked.hf_model).__name__:
        pytest.skip("M-RoPE is Qwen-VL only")
    eight = np.concatenate([frames, frames[::-1]])
    prompt = hooked.prepare(eight, "which way ?", ["left", "right"], num_frames=None, fps=2.0)
    seen = {}
    lm = hooked.hf_model.model.language_model
    handle = lm.register_forward_pre_hook(lambda m, a, k: seen.update(pos=k["position_ids"]), with_kwargs=True)
    try:
        hooked(prompt)
    finally:
        handle.remove()
    tm = prompt.token_map
    pos = seen["pos"][-3:, 0]  # (t, h, w) components
    t, h, w = tm.grid_shape
    slot_t = []
    for i in range(t):
        frame = tm.frame(i)
        cells = pos[:, frame] - pos[:, frame[:1]]
        assert torch.equal(cells[1:], tm.cell[frame].T[1:])  # h and w exactly, within the slot
        assert (cells[0] == 0).all()  # one t per slot
        slot_t.append(int(pos[0, frame[0]]))
    assert slot_t == sorted(slot_t) and len(set(slot_t)) == t  # rising from slot to slot
    assert int(pos[0, tm.last]) > int(pos[:, tm.video].max())  # text resumes after the video


def test_embedded_prompt_gives_the_same_logits_and_keeps_the_video_hook(hooked, prompt):
    embedded = hooked.embed(prompt)
    tm = prompt.token_map
    assert embedded.inputs_embeds.shape == (1, prompt.n_positions, hooked.cfg.d_model)
    with torch.no_grad():
        torch.testing.assert_close(hooked(embedded), hooked(prompt), atol=0, rtol=0)
        _, cache = hooked.run_with_cache(embedded)
        _, direct = hooked.run_with_cache(prompt)
    # run_with_cache hooks the vision tower's patterns, so its vision attention runs eager where
    # embed() runs SDPA: equal up to rounding
    torch.testing.assert_close(cache["hook_video_embeds"], direct["hook_video_embeds"], atol=1e-6, rtol=1e-5)

    def zero_frame_0(video, hook):
        video[:, : tm.tokens_per_frame] = 0
        return video

    with torch.no_grad():
        a = hooked.run_with_hooks(embedded, fwd_hooks=[("hook_video_embeds", zero_frame_0)])
        b = hooked.run_with_hooks(prompt, fwd_hooks=[("hook_video_embeds", zero_frame_0)])
        batch = hooked(embedded.expand(3))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, hooked(prompt))
    torch.testing.assert_close(batch, hooked(prompt).expand(3, -1, -1), atol=1e-5, rtol=0)


def test_perturbing_one_input_frame_moves_exactly_its_slot(hooked, prompt, frames):
    """Change the pixels of one input frame: the video features that change are exactly the
    token map's tokens of that frame's temporal slot (the vision encoders work frame by frame)."""
    tm = prompt.token_map
    features = hooked.run_with_cache(prompt, names_filter="hook_video_embeds")[1]["hook_video_embeds"][0]
    for frame in (0, len(frames) - 1):
        edited = frames.copy()
        edited[frame] = 255 - edited[frame]
        other = hooked.prepare(edited, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
        changed_features = hooked.run_with_cache(other, names_filter="hook_video_embeds")[1]["hook_video_embeds"][0]
        moved = (changed_features - features).abs().amax(-1) > 1e-6
        slot = frame // tm.temporal_patch_size
        expected = torch.isin(tm.video, tm.frame(slot))
        assert torch.equal(moved, expected), (frame, moved.nonzero().flatten().tolist())


def test_vision_attention_runs_sdpa_unless_its_pattern_is_hooked(hooked, prompt):
    vision = [m for m in hooked.hf_model.modules() if not hasattr(m, "original_component") and getattr(m, "_hooked_video_vision", False)]
    assert vision, "every family's vision attention gets the switch"
    with torch.no_grad():
        fast = hooked(prompt)
        assert {m.config._attn_implementation for m in vision} == {"sdpa"}
        patterns = [name for name in hooked.hook_dict if name.startswith("vision") and name.endswith("attn.hook_pattern")]
        seen = []
        hooks = [(name, lambda pattern, hook: seen.append(hook.name)) for name in patterns]
        eager = hooked.run_with_hooks(prompt, fwd_hooks=hooks)
    assert sorted(seen) == sorted(patterns)  # every hooked vision pattern fired (towers without bridges have none)
    if patterns:
        assert {m.config._attn_implementation for m in vision} == {"eager"}
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)
