"""The sweep engine (recompute only what a knockout changes) against the TransformerLens hook
path, and the SDPA fast path against the reference attention."""

import contextlib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch._inductor.config
from torch._dynamo.utils import counters

from hooked_video import HookedVideoLLM, flow, knockout, pathways
from hooked_video.runtime import attention
from hooked_video.runtime import engine as engine_module
from hooked_video.runtime.engine import Engine
from hooked_video.runtime.fastpath import FastBlockMixin
from hooked_video.zoo.tiny import TinySizes, build_tiny

ROW = ["sample_id", "target", "condition", "layer"]


@contextlib.contextmanager
def compiled_for_real():
    """A fallback to the uncompiled engine is an error here, not a warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        yield


@pytest.fixture(scope="module", params=["llava_next_video", "qwen2_vl"])  # plain RoPE and M-RoPE
def ten_layers(request, tmp_path_factory):
    path = build_tiny(request.param, tmp_path_factory.mktemp("ten") / request.param, TinySizes(n_layers=10), seed=2)
    return HookedVideoLLM.from_pretrained(path)


@pytest.fixture(scope="module")
def ten_prompt(ten_layers, frames):
    return ten_layers.prepare(frames, "what happens first ?", ["the ball falls", "the cup moves", "nothing"], answer=1,
                              num_frames=None)  # fmt: skip


@pytest.mark.parametrize("window", [1, 5, 9])
@pytest.mark.parametrize("packed", [True, False])  # passes side by side in one sequence, or batched
def test_engine_rows_equal_the_hook_path(ten_layers, ten_prompt, window, packed, monkeypatch):
    """Every row of a four-target sweep over every layer (both ends included)."""
    monkeypatch.setattr(engine_module, "PACK_ROWS_PER_POSITION", 10.0 if packed else 0.0)
    kwargs = dict(window=window, select="all", batch_size=3, progress=False)
    fast = flow.sweep(ten_layers, [ten_prompt], engine="fast", **kwargs).sort_values(ROW).reset_index(drop=True)
    hooks = flow.sweep(ten_layers, [ten_prompt], engine="hooks", **kwargs).sort_values(ROW).reset_index(drop=True)
    assert len(fast) == len(hooks) == 10 * 11 and set(fast.layer) == set(range(10))
    for column in ("p_base", "p_knockout", "p_gt_base", "p_gt_knockout"):
        np.testing.assert_allclose(fast[column], hooks[column], atol=1e-5, rtol=0)
    # relative changes are percentages of probabilities ~1e-2: compare them as fractions
    np.testing.assert_allclose(fast.rel_change / 100, hooks.rel_change / 100, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.rel_change_gt / 100, hooks.rel_change_gt / 100, atol=1e-5, rtol=0)
    pd.testing.assert_series_equal(fast.new_answer_token, hooks.new_answer_token)
    assert (fast.p_knockout != fast.p_base).any()  # the knockouts do something


def test_mixed_with_a_user_hook_the_sweep_takes_the_hook_path(ten_layers, ten_prompt):
    def scale_video(video, hook):
        return video * 0.5

    user = [("hook_video_embeds", scale_video)]
    kwargs = dict(targets=["cross-frame", "vql-to-ql"], window=3, select="all", progress=False)
    mixed = flow.sweep(ten_layers, [ten_prompt], fwd_hooks=user, **kwargs)
    reference = flow.sweep(ten_layers, [ten_prompt], fwd_hooks=user, engine="hooks", **kwargs)
    pd.testing.assert_frame_equal(mixed, reference, check_exact=True)
    plain = flow.sweep(ten_layers, [ten_prompt], **kwargs)
    assert not np.allclose(mixed.p_knockout, plain.p_knockout)  # the user hook mattered
    with pytest.raises(ValueError, match="engine='fast' needs"):
        flow.sweep(ten_layers, [ten_prompt], fwd_hooks=user, engine="fast", **kwargs)


def test_engine_is_not_used_while_hooks_are_registered(ten_layers, ten_prompt):
    assert Engine.usable(ten_layers)
    with ten_layers.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)]):
        assert not Engine.usable(ten_layers)
    assert Engine.usable(ten_layers)


def test_engine_prefix_and_start_layer_are_exact(ten_layers, ten_prompt):
    """A single "-> last" pass recomputes one row from its first blocked layer; its logits are
    those of a full reference forward with the same knockout."""
    embedded = ten_layers.embed(ten_prompt)
    tm = ten_prompt.token_map
    edges = knockout.between(tm.question, tm.last, tm)
    engine = Engine(ten_layers)
    trace = engine.trace(embedded)
    (indices, logits), = list(engine.run(trace, [{l: edges.mask for l in (6, 7, 8)}], max_rows=100))
    with attention.reference_attention():
        expected = ten_layers.run_with_hooks(embedded, fwd_hooks=knockout.hooks(edges, [6, 7, 8]), logits_to_keep=1)
    torch.testing.assert_close(logits[0].float().softmax(-1), expected[0, -1].float().softmax(-1), atol=1e-6, rtol=0)


def test_fast_forward_equals_the_reference_and_keeps_hooks(ten_layers, ten_prompt):
    with torch.no_grad():
        fast = ten_layers(ten_prompt)
        with attention.reference_attention():
            reference = ten_layers(ten_prompt)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    with torch.no_grad():
        _, cache = ten_layers.run_with_cache(ten_prompt, names_filter=lambda n: n.endswith(("hook_q", "hook_rot_k", "hook_resid_post")))
    assert cache["blocks.3.attn.hook_rot_k"].shape[:2] == (1, ten_prompt.n_positions)  # fired on the fast path
    assert "blocks.3.attn.hook_pattern" not in cache.keys()


def test_edge_masks_context_equals_knockout_hooks(ten_layers, ten_prompt):
    tm = ten_prompt.token_map
    edges = knockout.cross_frame(tm) | knockout.between(tm.video, tm.last, tm)
    with torch.no_grad():
        with attention.edge_masks({l: edges.mask for l in (2, 3, 4)}):
            fast = ten_layers(ten_prompt)
        hooked = ten_layers.run_with_hooks(ten_prompt, fwd_hooks=knockout.hooks(edges, [2, 3, 4]))
    torch.testing.assert_close(fast, hooked, atol=1e-5, rtol=0)


def test_edge_masks_in_bands_of_rows_are_exact(ten_layers, ten_prompt, monkeypatch):
    """With tiny bands (a few query rows per SDPA call) the masked forward is unchanged."""
    tm = ten_prompt.token_map
    edges = knockout.cross_frame(tm) | knockout.between(tm.question, tm.last, tm)
    with torch.no_grad(), attention.edge_masks({l: edges for l in range(10)}):
        whole = ten_layers(ten_prompt)
        monkeypatch.setattr(attention, "MASK_BAND_ELEMENTS", 7 * ten_prompt.n_positions)
        banded = ten_layers(ten_prompt)
    torch.testing.assert_close(banded, whole, atol=1e-6, rtol=0)


def test_lazy_edge_rows_equal_the_full_mask(ten_prompt):
    tm = ten_prompt.token_map
    n = tm.n_positions
    edges = (knockout.cross_frame(tm) | knockout.between(tm.video, tm.last, tm)) - knockout.self_edges(tm.last, tm)
    full = edges.mask
    for start, stop in ((0, 5), (7, 30), (n - 3, n)):
        assert torch.equal(edges.rows(n, start, stop), full[start:stop])
    assert torch.equal(edges.rows_at(n, [n - 1, 3]), full[[n - 1, 3]])


def test_eager_arithmetic_matches_the_reference_path(ten_layers, ten_prompt):
    with torch.no_grad():
        with attention.reference_attention():
            reference = ten_layers(ten_prompt)
        with attention.eager_arithmetic():
            eager = ten_layers(ten_prompt)
    torch.testing.assert_close(eager, reference, atol=1e-6, rtol=0)


def test_unhooked_blocks_run_plain_hf_layers_and_hooked_ones_the_bridge(ten_layers, ten_prompt):
    """A block runs its HF shadow unless a hook sits inside it; hooks on its boundary
    (hook_resid_pre / hook_resid_post) fire around the shadow, with the bridge path's results."""
    blocks = ten_layers.bridge.blocks
    assert all(isinstance(b, FastBlockMixin) for b in blocks) and all(b.shadow_mode() == "plain" for b in blocks)
    seen = []

    def double(x, hook):
        seen.append(hook.name)
        return x * 2

    hooks = [("blocks.3.hook_resid_post", double), ("blocks.5.hook_resid_pre", double)]
    with torch.no_grad():
        with ten_layers.hooks(fwd_hooks=hooks):
            assert [b.shadow_mode() for b in blocks[2:6]] == ["plain", "boundary", "plain", "boundary"]
            edited = ten_layers(ten_prompt)
        with ten_layers.hooks(fwd_hooks=[("blocks.3.hook_mlp_out", double)]):
            assert blocks[3].shadow_mode() is None and blocks[2].shadow_mode() == "plain"
        with attention.reference_attention():  # every block through the bridge
            reference = ten_layers.run_with_hooks(ten_prompt, fwd_hooks=hooks)
    assert len(seen) == 4  # each hook fired in both runs
    torch.testing.assert_close(edited, reference, atol=1e-5, rtol=0)


def test_stop_at_layer_stops_on_the_fast_path_too(ten_layers, ten_prompt):
    """``stop_at_layer`` returns the residual entering that layer whichever path its block takes."""
    with torch.no_grad():
        _, cache = ten_layers.run_with_cache(ten_prompt, names_filter="blocks.4.hook_resid_pre")
        stopped = ten_layers(ten_prompt, stop_at_layer=4)
        with attention.reference_attention():
            reference = ten_layers(ten_prompt, stop_at_layer=4)
    assert stopped.shape == reference.shape == cache["blocks.4.hook_resid_pre"].shape
    torch.testing.assert_close(stopped, cache["blocks.4.hook_resid_pre"], atol=0, rtol=0)
    torch.testing.assert_close(stopped, reference, atol=1e-5, rtol=0)


def test_passes_share_lanes_while_their_masks_agree(ten_layers, ten_prompt, monkeypatch):
    """Windows clamped at layer 0 are one computation until they end; results equal each pass
    run alone, and the last layer's trimmed MLP gives the same logits."""
    tm = ten_prompt.token_map
    cross, question = knockout.cross_frame(tm).mask, knockout.between(tm.video, tm.question, tm).mask
    passes = [{l: cross for l in range(3)}, {l: cross for l in range(6)}, {l: question for l in range(3)},
              {l: cross for l in range(10)}]  # fmt: skip
    lanes_per_layer = []
    advance = engine_module._Lanes.advance

    def spy(self, layer, joining, mask_of):
        masks = advance(self, layer, joining, mask_of)
        lanes_per_layer.append(len(masks))
        return masks

    runner = Engine(ten_layers)
    trace = runner.trace(ten_layers.embed(ten_prompt))
    monkeypatch.setattr(engine_module._Lanes, "advance", spy)
    together = dict(zip(*next(runner.run(trace, passes, max_rows=10_000))))
    assert lanes_per_layer == [2, 2, 2, 3, 3, 3, 4, 4, 4, 4]  # cross-frame windows split at 3 and 6
    for index, intervention in enumerate(passes):
        (_, alone), = list(runner.run(trace, [intervention], max_rows=10_000))
        torch.testing.assert_close(together[index], alone[0], atol=1e-5, rtol=0)
    with attention.reference_attention():
        expected = ten_layers.run_with_hooks(ten_layers.embed(ten_prompt), fwd_hooks=knockout.hooks(
            knockout.EdgeSet(cross), range(10)), logits_to_keep=1)  # fmt: skip
    torch.testing.assert_close(together[3], expected[0, -1], atol=1e-4, rtol=0)


def test_compiled_engine_rows_equal_the_hook_path(ten_layers, ten_prompt, frames):
    """engine="compiled" (decoder layers through torch.compile) gives the hook path's rows, and a
    prompt of another length runs on the graphs already compiled."""
    kwargs = dict(targets=["cross-frame", "vql-to-ql"], window=5, select="all", batch_size=3, progress=False)
    graphs = counters["stats"]["unique_graphs"]
    with compiled_for_real():
        compiled = flow.sweep(ten_layers, [ten_prompt], engine="compiled", **kwargs).sort_values(ROW).reset_index(drop=True)
    assert counters["stats"]["unique_graphs"] > graphs  # it compiled
    hooks = flow.sweep(ten_layers, [ten_prompt], engine="hooks", **kwargs).sort_values(ROW).reset_index(drop=True)
    np.testing.assert_allclose(compiled.p_knockout, hooks.p_knockout, atol=1e-5, rtol=0)
    pd.testing.assert_series_equal(compiled.new_answer_token, hooks.new_answer_token)

    longer = ten_layers.prepare(frames, "what happens first in the video , the ball or the cup ?",
                                ["the ball falls", "the cup moves", "nothing"], answer=1, num_frames=None)  # fmt: skip
    assert longer.n_positions != ten_prompt.n_positions
    graphs = counters["stats"]["unique_graphs"]
    again = flow.sweep(ten_layers, [longer], engine="compiled", **kwargs).sort_values(ROW).reset_index(drop=True)
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation
    plain = flow.sweep(ten_layers, [longer], engine="fast", **kwargs).sort_values(ROW).reset_index(drop=True)
    np.testing.assert_allclose(again.p_knockout, plain.p_knockout, atol=1e-5, rtol=0)
    with ten_layers.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)]):
        with pytest.raises(ValueError, match="engine='compiled' needs"):
            flow.sweep(ten_layers, [ten_prompt], engine="compiled", **kwargs)


def test_a_failed_compilation_falls_back_to_the_uncompiled_engine(ten_layers, ten_prompt, monkeypatch):
    """Where torch.compile cannot build (here: no C++ compiler), the sweep warns and runs on."""
    monkeypatch.setattr(engine_module, "_COMPILED_RUN_LAYER", None)
    torch._dynamo.reset()
    kwargs = dict(targets=["cross-frame"], window=3, select="all", progress=False)
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-compiler",)}):
        with pytest.warns(UserWarning, match="torch.compile failed, so the sweep engine runs uncompiled.*compiler"):
            compiled = flow.sweep(ten_layers, [ten_prompt], engine="compiled", **kwargs)
    plain = flow.sweep(ten_layers, [ten_prompt], engine="fast", **kwargs)
    np.testing.assert_allclose(compiled.p_knockout, plain.p_knockout, atol=1e-6, rtol=0)
    torch._dynamo.reset()


def test_the_last_layer_runs_its_mlp_on_the_last_rows_only(hooked, prompt):
    """On every architecture: the last layer's MLP sees one row per lane, and the pass's logits
    are the reference path's."""
    runner = Engine(hooked)
    embedded = hooked.embed(prompt)
    trace = runner.trace(embedded)
    name = next(n for n in engine_module._MLP_NAMES if n in runner.layers[-1]._modules)
    assert isinstance(engine_module._last_layer(runner.layers[-1], 3)._modules[name], engine_module._LastRowsOnly)
    tm = prompt.token_map
    edges = knockout.between(tm.video, tm.question, tm)
    layers = range(hooked.cfg.n_layers)
    seen = []
    handle = runner.layers[-1]._modules[name].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:2]))
    try:
        (_, logits), = list(runner.run(trace, [{l: edges.mask for l in layers}], max_rows=10_000))
    finally:
        handle.remove()
    assert seen == [(1, 1)]  # one pack, one lane, its last row
    with attention.reference_attention():
        expected = hooked.run_with_hooks(embedded, fwd_hooks=knockout.hooks(edges, layers), logits_to_keep=1)
    torch.testing.assert_close(logits[0].float().softmax(-1), expected[0, -1].float().softmax(-1), atol=1e-5, rtol=0)


def test_compiled_engine_equals_the_engine_on_every_architecture(hooked, prompt):
    """torch.compile traces every family's decoder layer (InternLM2's remote code, Phi-3, Qwen3-VL's
    DeepStack additions included) without falling back, to the same rows."""
    kwargs = dict(targets=["cross-frame", "question-and-options-to-last"], window=3, select="all", progress=False)
    with compiled_for_real():
        compiled = flow.sweep(hooked, [prompt], engine="compiled", **kwargs)
    plain = flow.sweep(hooked, [prompt], engine="fast", **kwargs)
    np.testing.assert_allclose(compiled.p_knockout, plain.p_knockout, atol=1e-6, rtol=0)


def test_the_hook_path_runs_every_block_on_the_reference_path(ten_layers, ten_prompt, monkeypatch):
    """Baseline and knockout passes of engine="hooks" share one arithmetic: no block takes the
    fast path, not even one outside every window (in half precision the two round differently)."""
    decisions = []
    shadow_mode = FastBlockMixin.shadow_mode
    language_blocks = {id(block) for block in ten_layers.bridge.blocks}  # (the vision tower's blocks may take it)

    def spy(self):
        mode = shadow_mode(self)
        if id(self) in language_blocks:
            decisions.append(mode is not None)
        return mode

    monkeypatch.setattr(FastBlockMixin, "shadow_mode", spy)
    flow.sweep(ten_layers, [ten_prompt], targets=["cross-frame"], window=1, layers=[2], select="all", engine="hooks",
               progress=False)  # fmt: skip
    spec = pathways.PathwaySpec(inter=(0, 3), v2q=(3, 6), q2l=(6, 9))
    pathways.evaluate_prompt(ten_layers, ten_prompt, spec, random_baseline=False, engine="hooks")
    assert decisions and not any(decisions)
    ten_layers(ten_prompt)  # the plain forward does take the fast path: the spy sees it
    assert any(decisions)


def test_auto_compiles_only_dataset_sized_sweeps_on_a_gpu(ten_layers, ten_prompt):
    from hooked_video.analysis.flow.sweep import AUTO_COMPILE_SAMPLES, auto_compiles, choose_engine

    assert auto_compiles("cuda", AUTO_COMPILE_SAMPLES) and not auto_compiles("cuda", AUTO_COMPILE_SAMPLES - 1)
    assert not auto_compiles("cpu", 10**6) and not auto_compiles("cuda", None)
    assert not choose_engine(ten_layers, "auto", (), n_samples=10**6).compile  # this model is on the CPU
    assert choose_engine(ten_layers, "compiled", ()).compile
    df = flow.sweep(ten_layers, [ten_prompt], targets=["cross-frame"], window=3, select="all", progress=False)
    assert df.attrs["engine"] == "fast"
    hooks = flow.sweep(ten_layers, [ten_prompt], targets=["cross-frame"], window=3, select="all", engine="hooks",
                       progress=False)  # fmt: skip
    assert hooks.attrs["engine"] == "hooks"
