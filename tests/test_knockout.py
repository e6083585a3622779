"""Knockout: edge sets from token maps, windows, hooks, and equivalence with explicit HF masks."""

import pytest
import torch
from hf_reference import last_probs, load_hf

from hooked_video import flow, knockout
from hooked_video.runtime import attention
from hooked_video.model.tokens import TextSpans, build_token_map


@pytest.fixture()
def small_map():
    """N = 12: system 0-1, video 2-7 (3 frames of 1x2), question 8-9, option 10, last 11."""
    spans = TextSpans(question_block=(8, 11), question_text=(8, 10), options=((10, 11),))
    return build_token_map(12, torch.arange(2, 8), (3, 1, 2), torch.empty(0, dtype=torch.long), spans, 3, answer=0)


def test_cross_frame_blocks_exactly_earlier_frames(small_map):
    pairs = {tuple(p) for p in knockout.cross_frame(small_map).pairs().tolist()}
    # frame 1 (4, 5) may not read frame 0 (2, 3); frame 2 (6, 7) may not read frames 0 and 1
    expected = {(t, s) for t in (4, 5) for s in (2, 3)} | {(t, s) for t in (6, 7) for s in (2, 3, 4, 5)}
    assert pairs == expected


def test_between_within_self_and_algebra(small_map):
    tm = small_map
    video_to_last = knockout.between(tm.video, tm.last, tm)
    assert {tuple(p) for p in video_to_last.pairs().tolist()} == {(11, s) for s in range(2, 8)}
    # acausal pairs are never edges: the last token cannot be a key for the video
    assert knockout.between(tm.last, tm.video, tm).n_edges == 0
    assert knockout.within(tm.question, tm).n_edges == 3 + 2 + 1  # causal triangle with diagonal
    assert knockout.self_edges(tm.last, tm).pairs().tolist() == [[11, 11]]
    union = video_to_last | knockout.cross_frame(tm)
    assert union.n_edges == 6 + 12
    assert (union - video_to_last) == knockout.cross_frame(tm)
    assert (union & video_to_last) == video_to_last


def test_edges_without_a_length_learn_it_from_their_partner(small_map):
    tm = small_map
    lazy = knockout.between(tm.video, tm.last)  # the documented contract: no length given
    assert lazy.n_positions is None
    combined = knockout.cross_frame(tm) | lazy
    assert combined.n_positions == 12 and combined.n_edges == 18
    with pytest.raises(knockout.KnockoutError, match="does not know the prompt length"):
        lazy.mask
    with pytest.raises(knockout.KnockoutError, match="built for 12 positions"):
        knockout.cross_frame(tm).mask_for(13)


def test_additive_mask_matches_edges(small_map):
    edges = knockout.cross_frame(small_map)
    additive = edges.additive_mask()
    assert additive.shape == (1, 1, 12, 12)
    blocked = additive[0, 0] < -1e30
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    assert torch.equal(blocked, edges.mask | ~causal)


@pytest.mark.parametrize(
    ("center", "k", "expected"),
    [(12, 9, list(range(8, 17))), (0, 9, [0, 1, 2, 3, 4]), (31, 9, list(range(27, 32))), (5, 1, [5]), (5, 2, [5, 6])],
)
def test_window_clipping(center, k, expected):
    assert knockout.window(center, k, 32) == expected


def test_window_rejects_bad_arguments():
    with pytest.raises(ValueError, match="outside layers"):
        knockout.window(32, 9, 32)
    with pytest.raises(ValueError, match="k must be"):
        knockout.window(3, 0, 32)


def test_fully_blocked_row_is_an_error(small_map):
    tm = small_map
    everything = knockout.between(torch.arange(12), torch.arange(12), tm)
    with pytest.raises(knockout.KnockoutError, match="nothing to attend to"):
        knockout.hooks(everything, layers=[0])


def test_hooks_need_layers(small_map):
    with pytest.raises(ValueError, match="which layers"):
        knockout.hooks(knockout.cross_frame(small_map))


@pytest.mark.parametrize("heads", [[], [-1], ["0"], [True], 1.5])
def test_heads_must_be_head_indices(small_map, heads):
    with pytest.raises(ValueError, match="heads must be head indices"):
        knockout.hooks(knockout.cross_frame(small_map), layers=[0], heads=heads)


# ----- on real models --------------------------------------------------------------------------
def test_no_knockout_reproduces_the_baseline_exactly(deep, deep_prompt):
    empty = knockout.EdgeSet.empty(deep_prompt.n_positions)
    hooks = knockout.hooks(empty, layers=range(deep.cfg.n_layers))
    with attention.reference_attention():  # the hook path is TransformerLens' attention everywhere
        reference = deep(deep_prompt)
    torch.testing.assert_close(deep.run_with_hooks(deep_prompt, fwd_hooks=hooks), reference, atol=0, rtol=0)
    torch.testing.assert_close(deep(deep_prompt), reference, atol=1e-5, rtol=0)  # the SDPA path


def _paper_conditions(tm):
    return [(t, c, fn(tm)) for t, conds in flow.TARGETS.items() for c, fn in conds.items()]


@pytest.mark.parametrize("k", [1, 3, 9])
def test_knockout_equals_hf_forward_with_explicit_4d_masks(arch, deep, deep_prompt, deep_paths, k):
    """Every condition of the four paper targets, swept over every layer with window k: the
    hooked knockout's final-position distribution equals a plain HF eager forward whose decoder
    layers in the window receive an explicit additive mask encoding the same blocked edges."""
    hf = load_hf(deep_paths[arch], deep)
    tm, n_layers = deep_prompt.token_map, deep.cfg.n_layers
    for target, condition, edges in _paper_conditions(tm):
        additive = edges.additive_mask()
        for center in range(n_layers):
            layers = knockout.window(center, k, n_layers)
            with torch.no_grad():
                hooked = deep.run_with_hooks(deep_prompt, fwd_hooks=knockout.hooks(edges, layers))
            expected = last_probs(hf, deep_prompt.inputs, {l: additive for l in layers})
            got = hooked[:, -1].float().softmax(-1)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=f"{target}/{condition} at {center}")


def test_sweep_rows_equal_hf_with_explicit_masks(arch, deep, deep_prompt, deep_paths):
    """The batched sweep (several passes per forward, vision run once) gives the probabilities
    of one HF forward per pass with explicit per-layer masks."""
    hf = load_hf(deep_paths[arch], deep)
    df = flow.sweep(deep, [deep_prompt], window=3, select="all", batch_size=5, progress=False)
    n_layers = deep.cfg.n_layers
    assert len(df) == n_layers * sum(len(c) for c in flow.TARGETS.values())
    base = last_probs(hf, deep_prompt.inputs)[0]
    answer, gt = int(base.argmax()), deep_prompt.answer_token_id
    conditions = {(t, c): e for t, c, e in _paper_conditions(deep_prompt.token_map)}
    for row in df.itertuples():
        layers = knockout.window(row.layer, 3, n_layers)
        additive = conditions[(row.target, row.condition)].additive_mask()
        probs = last_probs(hf, deep_prompt.inputs, {l: additive for l in layers})[0]
        assert row.answer_token == answer
        assert row.p_base == pytest.approx(float(base[answer]), abs=1e-6)
        assert row.p_knockout == pytest.approx(float(probs[answer]), abs=1e-5)
        assert row.p_gt_knockout == pytest.approx(float(probs[gt]), abs=1e-5)
        assert row.rel_change == pytest.approx((row.p_knockout - row.p_base) / row.p_base * 100, rel=1e-6)


def test_head_knockout_equals_hf_with_a_per_head_mask(arch, deep, deep_prompt, deep_paths):
    """Blocking in chosen heads only equals an HF eager forward whose additive mask (1, heads, N, N)
    blocks the edges in those heads alone, as the released code's mask shape allows; a head
    index past the layer's heads is refused."""
    hf = load_hf(deep_paths[arch], deep)
    tm, n_layers, n_heads = deep_prompt.token_map, deep.cfg.n_layers, deep.cfg.n_heads
    edges = knockout.cross_frame(tm) | knockout.between(tm.video, tm.last, tm)
    layers = knockout.window(n_layers // 2, 3, n_layers)
    causal = knockout.EdgeSet.empty(tm.n_positions).additive_mask()
    for heads in ([0], [n_heads - 1, 1]):
        with torch.no_grad():
            hooked = deep.run_with_hooks(deep_prompt, fwd_hooks=knockout.hooks(edges, layers, heads=heads))
        additive = causal.repeat(1, n_heads, 1, 1)
        additive[:, heads] = edges.additive_mask()[:, 0]
        expected = last_probs(hf, deep_prompt.inputs, {l: additive for l in layers})
        torch.testing.assert_close(hooked[:, -1].float().softmax(-1), expected, atol=1e-5, rtol=0, msg=str(heads))
        every_head = last_probs(hf, deep_prompt.inputs, {l: edges.additive_mask() for l in layers})
        assert not torch.allclose(expected, every_head, atol=1e-6)  # one head is not the whole knockout
    with pytest.raises(knockout.KnockoutError, match=f"has {n_heads} heads"):
        deep.run_with_hooks(deep_prompt, fwd_hooks=knockout.hooks(edges, layers, heads=[n_heads]))


def test_blocking_all_video_to_text_edges_makes_the_output_video_independent(deep, deep_prompt, frames):
    other = deep.prepare(frames[::-1].copy() // 2, deep_prompt.question, deep_prompt.options, deep_prompt.answer, num_frames=None)
    tm = deep_prompt.token_map
    assert other.token_map.grid_shape == tm.grid_shape
    not_video = torch.ones(tm.n_positions, dtype=torch.bool)
    not_video[tm.video] = False
    edges = knockout.between(tm.video, not_video.nonzero().reshape(-1), tm)
    hooks = knockout.hooks(edges, layers=range(deep.cfg.n_layers))
    with torch.no_grad():
        assert not torch.allclose(deep(deep_prompt)[0, -1], deep(other)[0, -1], atol=1e-4)  # the video matters
        a = deep.run_with_hooks(deep_prompt, fwd_hooks=hooks)[0, -1]
        b = deep.run_with_hooks(other, fwd_hooks=hooks)[0, -1]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
