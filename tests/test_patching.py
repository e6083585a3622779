"""Activation patching: exact limits, and equality with patching a plain HF model."""

import numpy as np
import pytest
import torch
from hf_reference import layer_inputs, load_hf

from hooked_video import patching


@pytest.fixture(scope="module")
def pair(deep, deep_prompt):
    return deep_prompt, patching.reverse_frames(deep, deep_prompt)


@pytest.mark.parametrize("component", ["resid_pre", "resid_post"])
def test_patching_every_position_restores_clean_and_nothing_leaves_corrupted(deep, pair, component):
    clean, corrupted = pair
    everything, nothing = torch.arange(clean.n_positions), torch.empty(0, dtype=torch.long)
    result = patching.patch_positions(deep, clean, corrupted, [everything, nothing], component=component, progress=False)
    assert abs(result.clean - result.corrupted) > 1e-6  # the corruption matters
    # Qwen3-VL adds the (corrupted) video's DeepStack features after its first layers: from there on
    first = len(getattr(deep.hf_model.config.vision_config, "deepstack_visual_indexes", None) or [])
    restored = result.values[first:, 0]
    torch.testing.assert_close(restored, torch.full_like(restored, result.clean), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.values[:, 1], torch.full((deep.cfg.n_layers,), result.corrupted), atol=1e-5, rtol=0)


@pytest.mark.parametrize("component", ["attn_out", "mlp_out", "resid_mid"])
def test_patching_nothing_leaves_corrupted(deep, pair, component):
    clean, corrupted = pair
    result = patching.patch_positions(deep, clean, corrupted, [torch.empty(0, dtype=torch.long)], component=component, progress=False)
    torch.testing.assert_close(result.values[:, 0], torch.full((deep.cfg.n_layers,), result.corrupted), atol=1e-5, rtol=0)


def test_frame_patching_equals_patching_a_plain_hf_model(arch, deep, pair, deep_paths):
    """resid_pre of block l at frame f's positions, replaced in a plain HF forward by a PyTorch
    pre-hook with the clean run's hidden state, gives the same logit difference."""
    clean, corrupted = pair
    result = patching.frame_patching(deep, clean, corrupted, batch_size=3, progress=False)
    tm = clean.token_map
    assert result.values.shape == (deep.cfg.n_layers, tm.n_frames)
    assert result.labels == [f"frame {i}" for i in range(tm.n_frames)]
    hf = load_hf(deep_paths[arch], deep)
    clean_states = layer_inputs(hf, clean.inputs)
    letters, true = clean.option_token_ids, clean.answer
    false = [letters[i] for i in range(len(letters)) if i != true]
    for layer in range(deep.cfg.n_layers):
        for frame in range(tm.n_frames):
            positions = tm.frame(frame)

            def patch(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None).clone()
                hidden[0, positions] = clean_states[layer][0, positions]
                if args:
                    return (hidden, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden}

            handle = hf.model.language_model.layers[layer].register_forward_pre_hook(patch, with_kwargs=True)
            try:
                with torch.no_grad():
                    last = hf(**corrupted.inputs).logits[0, -1]
            finally:
                handle.remove()
            expected = float(last[letters[true]] - last[false].mean())
            assert float(result.values[layer, frame]) == pytest.approx(expected, abs=1e-5)
    normalized = result.normalized()
    assert torch.isfinite(normalized).all()


def test_cell_patching_labels_cells(deep, pair):
    clean, corrupted = pair
    result = patching.cell_patching(deep, clean, corrupted, layers=[0], progress=False)
    tm = clean.token_map
    assert result.values.shape == (1, len(tm.video))
    assert result.labels[0] == (0, 0, 0) and result.labels[-1] == tuple(d - 1 for d in tm.grid_shape)


def test_corruption_helpers(deep, deep_prompt):
    reversed_prompt = patching.reverse_frames(deep, deep_prompt)
    assert np.array_equal(np.asarray(reversed_prompt.frames), np.asarray(deep_prompt.frames)[::-1])
    assert reversed_prompt.token_map.grid_shape == deep_prompt.token_map.grid_shape
    assert reversed_prompt.question == deep_prompt.question and reversed_prompt.answer == deep_prompt.answer
    assert reversed_prompt.template == deep_prompt.template and reversed_prompt.fps == deep_prompt.fps
    shuffled = patching.shuffle_frames(deep, deep_prompt, seed=3)
    assert not np.array_equal(np.asarray(shuffled.frames), np.asarray(deep_prompt.frames))
    assert sorted(map(bytes, np.asarray(shuffled.frames))) == sorted(map(bytes, np.asarray(deep_prompt.frames)))


def test_layouts_must_match(deep, deep_prompt, frames):
    other = deep.prepare(frames, "what is in this video ?", ["a cat", "a dog"], answer=0, num_frames=None)
    with pytest.raises(ValueError, match="same layout"):
        patching.frame_patching(deep, deep_prompt, other, progress=False)


def test_patching_nothing_in_bf16_gives_the_corrupted_metric_exactly(tmp_path, frames):
    """Clean, corrupted and patched runs share one arithmetic: in bf16 a patch that changes
    nothing gives the corrupted run's metric to the last bit (a hook on a residual or output
    point keeps the fast attention, unlike a knockout hook on the scores)."""
    from hooked_video import HookedVideoLLM
    from hooked_video.zoo.tiny import TinySizes, build_tiny

    model = HookedVideoLLM.from_pretrained(build_tiny("llava_next_video", tmp_path / "m", TinySizes(n_layers=4), seed=3),
                                           dtype="bfloat16")  # fmt: skip
    clean = model.prepare(frames, "what happens first ?", ["the ball falls", "the cup moves", "nothing"], answer=1,
                          num_frames=None)  # fmt: skip
    corrupted = patching.reverse_frames(model, clean)
    result = patching.patch_positions(model, clean, corrupted, [torch.empty(0, dtype=torch.long)], component="resid_post",
                                      batch_size=1, progress=False)  # fmt: skip
    assert torch.equal(result.values[:, 0], torch.full((model.cfg.n_layers,), result.corrupted))
