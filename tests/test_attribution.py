"""Attribution patching, each part against an independent computation:

- the knocked-out pattern the estimate assumes is the pattern a real knockout (a -inf score on
  ``hook_attn_scores``) produces;
- the estimate is the derivative of log P(answer) along the straight line from the clean pattern to
  that knocked-out one, measured by finite differences of plain forwards (every architecture);
- the rows are ``flow.sweep``'s rows, and on the trained toy they rank the exact rows as measured
  (a floor that keeps the figures in docs/method.md from falling).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hooked_video import HookedVideoLLM, flow, knockout
from hooked_video.core.checks import InvalidInputError
from hooked_video.runtime import attention
from hooked_video.analysis import attribution
from hooked_video.analysis.attribution.estimates import group_effects, key_effects, pair_effects
from hooked_video.data import TVBench, synthetic


def _log_prob(model, embedded, answer, hooks=()) -> float:
    with torch.no_grad():
        logits = model.run_with_hooks(embedded, fwd_hooks=list(hooks), logits_to_keep=1)
    return float(logits[0, -1].double().log_softmax(-1)[answer])


def _knocked_out_pattern(model, embedded, edges, layer, heads=None):
    """The pattern of ``layer`` under a real knockout of ``edges`` there (scores set to -inf), in
    every head or in ``heads``."""
    kept = {}

    def keep(pattern, hook):
        kept["pattern"] = pattern.detach().clone()

    hooks = knockout.hooks(edges, [layer], heads=heads) + [(f"blocks.{layer}.attn.hook_pattern", keep)]
    with torch.no_grad():
        model.run_with_hooks(embedded, fwd_hooks=hooks)
    return kept["pattern"]


def _along_line(model, embedded, answer, layer, knocked, step: float) -> float:
    """log P(answer) with layer's pattern moved ``step`` of the way to ``knocked``."""

    def move(pattern, hook):
        return pattern + step * (knocked.to(pattern.dtype) - pattern)

    return _log_prob(model, embedded, answer, [(f"blocks.{layer}.attn.hook_pattern", move)])


@pytest.mark.parametrize("condition", ["cross-frame", "question->last"])
def test_the_estimate_is_the_derivative_towards_the_real_knockout(deep, frames, condition):
    model = deep
    prompt = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    tm = prompt.token_map
    edges = knockout.cross_frame(tm) if condition == "cross-frame" else knockout.between(tm.question, tm.last, tm)
    embedded = model.embed(prompt)
    with torch.no_grad():
        answer = int(model(embedded, logits_to_keep=1)[0, -1].argmax())
    grads = attribution.pattern_gradients(model, embedded, answer)
    effects = group_effects(grads, edges.mask)
    layer = model.cfg.n_layers // 2
    knocked = _knocked_out_pattern(model, embedded, edges, layer)
    clean = grads.pattern[layer]
    rows = edges.mask.any(-1)
    mass = (clean[0][:, rows] * edges.mask[rows].float()).sum(-1, keepdim=True)
    renormalised = torch.where(edges.mask[rows], 0.0, clean[0][:, rows] / (1 - mass))
    torch.testing.assert_close(knocked[0][:, rows].float(), renormalised, atol=1e-5, rtol=1e-4)
    step = 0.05
    slope = (_along_line(model, embedded, answer, layer, knocked, step)
             - _along_line(model, embedded, answer, layer, knocked, -step)) / (2 * step)  # fmt: skip
    assert math.isclose(float(effects[layer]), slope, rel_tol=0.05, abs_tol=2e-5), (float(effects[layer]), slope)
    assert abs(slope) > 1e-5  # the check has something to check
    # one head's estimate: the derivative towards that head's knockout (the other heads untouched)
    head = int(group_effects(grads, edges.mask, per_head=True)[layer].abs().argmax())
    knocked_head = _knocked_out_pattern(model, embedded, edges, layer, heads=[head])
    others = [h for h in range(model.cfg.n_heads) if h != head]
    torch.testing.assert_close(knocked_head[:, others], clean[:, others].to(knocked_head.dtype), atol=1e-6, rtol=0)
    slope = (_along_line(model, embedded, answer, layer, knocked_head, step)
             - _along_line(model, embedded, answer, layer, knocked_head, -step)) / (2 * step)  # fmt: skip
    estimate = float(group_effects(grads, edges.mask, per_head=True)[layer, head])
    assert math.isclose(estimate, slope, rel_tol=0.05, abs_tol=2e-5), (estimate, slope)


@pytest.mark.parametrize("setting", ["clean", "gated", "pruned"])
def test_the_fast_path_recomputes_the_reference_patterns_and_gradients(deep, frames, setting):
    """The fast path (SDPA forward, patterns recomputed from queries, keys, values and the output
    gradients) gives what differentiating TransformerLens' materialised ``hook_pattern`` gives."""
    model = deep
    prompt = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    tm = prompt.token_map
    embedded = model.embed(prompt)
    edges = knockout.cross_frame(tm) | knockout.between(tm.question, tm.last, tm)
    options = {"clean": {}, "gated": {"gate": edges.mask, "alphas": [0.0, 0.3, 1.0]},
               "pruned": {"blocked": {1: edges.mask, model.cfg.n_layers - 1: knockout.cross_frame(tm).mask}}}[setting]
    fast = attribution.pattern_gradients(model, embedded, path="fast", **options)
    reference = attribution.pattern_gradients(model, embedded, path="reference", **options)
    assert (fast.path, reference.path, fast.answer) == ("fast", "reference", reference.answer)
    torch.testing.assert_close(fast.log_prob, reference.log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.pattern, reference.pattern, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.weighted, reference.weighted, atol=1e-6, rtol=1e-3)
    assert reference.weighted.abs().max() > 1e-4  # gradients with something to compare
    rows = tm.question
    for read in (fast, reference):  # a few rows of a few layers read alone are those of the whole
        pattern, weighted = read.layers(slice(1, 3), rows)
        torch.testing.assert_close(pattern, read.pattern[1:3][..., rows, :])
        torch.testing.assert_close(weighted, read.weighted[1:3][..., rows, :])


def test_a_pattern_hook_sends_the_gradients_down_the_reference_path(deep, deep_prompt):
    model, embedded = deep, deep.embed(deep_prompt)
    model.add_hook("blocks.0.attn.hook_pattern", lambda pattern, hook: pattern)
    try:
        assert attribution.pattern_gradients(model, embedded).path == "reference"
        with pytest.raises(ValueError, match="reference attention path.*path='reference'"):
            attribution.pattern_gradients(model, embedded, path="fast")
    finally:
        model.reset_hooks()
    grads = attribution.pattern_gradients(model, embedded)
    assert grads.path == "fast"
    torch.testing.assert_close(grads.layers(-1)[0], grads.layers(model.cfg.n_layers - 1)[0])
    with pytest.raises(ValueError, match="path must be one of"):
        attribution.pattern_gradients(model, embedded, path="quick")
    n = embedded.inputs_embeds.shape[1]
    with attention.edge_masks({0: torch.zeros(n, n, dtype=torch.bool)}):
        with pytest.raises(ValueError, match="edge_masks"):  # gradients of the unmasked model would be wrong
            attribution.pattern_gradients(model, embedded, path="fast")


def test_pairs_and_single_keys_agree_with_groups(deep, frames):
    """Frame pairs, single keys and whole groups are the same formula over other key sets."""
    model = deep
    prompt = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    tm = prompt.token_map
    embedded = model.embed(prompt)
    grads = attribution.pattern_gradients(model, embedded, int(prompt.answer_token_id))
    last = tm.n_frames - 1
    pair = pair_effects(grads, [tm.frame(last)], [tm.frame(0)])[:, 0, 0]
    torch.testing.assert_close(pair, group_effects(grads, knockout.between(tm.frame(0), tm.frame(last), tm).mask))
    key = int(tm.video[3])
    single = key_effects(grads, prompt.n_positions - 1, torch.tensor([key]))[:, 0]
    torch.testing.assert_close(single, group_effects(grads, knockout.between([key], tm.last, tm).mask))
    per_head = group_effects(grads, knockout.cross_frame(tm).mask, per_head=True)
    torch.testing.assert_close(per_head.sum(-1), group_effects(grads, knockout.cross_frame(tm).mask))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model = HookedVideoLLM.from_pretrained("toy-video-ft")
    root = synthetic.generate(tmp_path_factory.mktemp("syn"), tasks=synthetic.TEMPORAL_TASKS, per_task=2, seed=0,
                              progress=False)  # fmt: skip
    return model, list(TVBench(root))


def test_rows_are_the_sweep_rows_and_rank_them(toy, tmp_path):
    model, samples = toy
    exact = flow.sweep(model, samples, window=3, select="all", progress=False)
    estimated = attribution.attribute(model, samples, window=3, select="all", out=tmp_path / "atp", progress=False)
    key = ["sample_id", "target", "condition", "layer"]
    assert sorted(map(tuple, estimated[key].values.tolist())) == sorted(map(tuple, exact[key].values.tolist()))
    assert (estimated.estimate == estimated.rel_change).all() and (estimated.estimate >= -100).all()
    figures = attribution.compare(estimated, exact)
    assert figures.spearman.median() >= 0.7, figures  # measured 0.72 on these 10 samples (0.75 on 20: docs/method.md)
    assert figures.top10.median() >= 0.5, figures  # measured 0.6
    again = attribution.attribute(model, samples, window=3, select="all", out=tmp_path / "atp", progress=False)
    assert len(again) == len(estimated)  # resumed from the store, not recomputed nor duplicated
    summary = flow.summarize(estimated)
    assert set(summary.condition) == set(exact.condition)


def test_small_changes_of_a_confident_answer_are_resolved(toy):
    """With P(answer) next to 1 the sweep's relative change is still the exact one (computed in
    float64), not rounded to float32's steps of 6e-8 in P (6e-6 %), which would tie most of the
    rows that attributions are ranked against."""
    model, samples = toy
    prompt = samples[0].prepare(model)
    df = flow.sweep(model, [prompt], targets=["question-and-options-to-last"], window=1, select="all", engine="hooks",
                    progress=False)  # fmt: skip
    embedded = model.embed(prompt)
    with torch.no_grad(), attention.reference_attention():
        base = model.run_with_hooks(embedded, fwd_hooks=[], logits_to_keep=1)[0, -1].double().log_softmax(-1)
    answer = int(base.argmax())
    assert float(base[answer].exp()) > 0.999 and (df.rel_change.abs() < 1e-4).mean() > 0.5  # the case in question
    for row in df.itertuples():
        edges = flow.TARGETS[row.target][row.condition](prompt.token_map)
        with torch.no_grad(), attention.reference_attention():
            logits = model.run_with_hooks(embedded, fwd_hooks=knockout.hooks(edges, [row.layer]), logits_to_keep=1)
        expected = math.expm1(float(logits[0, -1].double().log_softmax(-1)[answer] - base[answer])) * 100
        assert row.rel_change == pytest.approx(expected, abs=1e-7), (row.condition, row.layer)


def test_head_rows_rank_knockouts_of_single_heads(toy):
    """Per-head estimates against exact knockouts of one head at a time (``head_knockouts``)."""
    model, samples = toy
    prompt = samples[0].prepare(model)
    targets = ["cross-frame", "vql-to-ql"]
    exact = attribution.head_knockouts(model, [prompt], targets=targets, window=1, select="all", progress=False)
    n_conditions = 1 + len(flow.TARGETS["vql-to-ql"])
    assert len(exact) == n_conditions * model.cfg.n_layers * model.cfg.n_heads
    assert set(exact.head_index) == set(range(model.cfg.n_heads))
    estimated = attribution.attribute(model, [prompt], targets=targets, window=1, head=True, select="all", progress=False)
    figures = attribution.compare(estimated, exact)
    assert figures.n_rows.item() == len(exact)  # matched head for head, not on the all-heads rows
    assert figures.spearman.item() >= 0.9, figures  # measured 0.96
    with pytest.raises(InvalidInputError, match="heads must be indices"):
        attribution.head_knockouts(model, [prompt], heads=[model.cfg.n_heads], progress=False)
    with pytest.raises(ValueError, match="heads must be head indices"):
        attribution.head_knockouts(model, [prompt], heads=[1.5], progress=False)


def test_head_knockouts_resume_head_by_head(toy, tmp_path, monkeypatch):
    """Written head by head: an interrupted run resumes without losing or redoing a head."""
    from hooked_video.analysis.attribution import heads as heads_module

    model, samples = toy
    kwargs = dict(targets=["cross-frame"], window=1, layers=[2, 5], heads=[0, 1, 2], select="all", progress=False)
    whole = attribution.head_knockouts(model, samples[:2], **kwargs)
    run = heads_module.run_passes_with_hooks
    calls = []

    def interrupted(*args, heads, **other):
        calls.append((args[1].inputs_embeds.shape, heads[0]))
        if len(calls) == 5:  # the second sample's second head
            raise KeyboardInterrupt
        return run(*args, heads=heads, **other)

    monkeypatch.setattr(heads_module, "run_passes_with_hooks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        attribution.head_knockouts(model, samples[:2], out=tmp_path / "heads", **kwargs)
    calls.clear()
    resumed = attribution.head_knockouts(model, samples[:2], out=tmp_path / "heads", **kwargs)
    assert [head for _, head in calls] == [1, 2]  # only the heads not stored yet
    key = ["sample_id", "condition", "layer", "head_index"]
    resumed, whole = (df.sort_values(key).reset_index(drop=True) for df in (resumed, whole))
    assert len(resumed) == len(whole) == 2 * 2 * 3 and not resumed.duplicated(key).any()
    np.testing.assert_allclose(resumed.rel_change, whole.rel_change, atol=1e-9)


def test_integrated_gradients_sum_to_the_knockout_of_every_layer(toy):
    """Along its gate path IG is complete: the layers' effects of a condition add up to the exact
    change of log P when the condition is knocked out in every layer (the path's end)."""
    model, samples = toy
    prompt = samples[0].prepare(model)
    edges = knockout.cross_frame(prompt.token_map)
    embedded = model.embed(prompt)
    with torch.no_grad():
        answer = int(model(embedded, logits_to_keep=1)[0, -1].argmax())
    steps = 16
    alphas = (torch.arange(steps) + 0.5) / steps
    grads = attribution.pattern_gradients(model, embedded, answer, gate=edges.mask, alphas=alphas)
    total = float(group_effects(grads, edges.mask, integrated=True).sum())
    exact = _log_prob(model, embedded, answer, knockout.hooks(edges, range(model.cfg.n_layers))) - _log_prob(model, embedded, answer)
    assert math.isclose(total, exact, rel_tol=0.05, abs_tol=1e-3), (total, exact)


def test_finer_granularities_place_their_groups(toy):
    model, samples = toy
    pairs = attribution.attribute(model, samples[:1], window=1, granularity="frame-pairs", progress=False)
    n_frames = 8
    assert pairs.condition.nunique() == n_frames * (n_frames - 1) // 2 + n_frames
    assert (pairs.source_frame < pairs.target_frame.where(pairs.target_frame >= 0, n_frames)).all()
    cells = attribution.attribute(model, samples[:1], window=1, granularity="cells", head=True, progress=False)
    assert set(cells.head_index) == {-1, *range(model.cfg.n_heads)}
    assert cells[["source_frame", "source_row", "source_col"]].drop_duplicates().shape[0] == cells.source_position.nunique()
    with pytest.raises(ValueError, match="use method='atp'"):
        attribution.attribute(model, samples[:1], granularity="cells", method="ig")


def test_figures_draw_each_granularity(toy):
    from hooked_video import viz

    model, samples = toy
    prompt = samples[0].prepare(model)
    pairs = attribution.attribute(model, [prompt], granularity="frame-pairs", window=1, select="all", progress=False)
    figure = viz.frame_pair_map(pairs)
    assert len(figure.axes) == 4 + 1  # four bands of layers and the colour bar
    grid = np.ma.filled(figure.axes[0].images[0].get_array().astype(float), np.nan)
    assert grid.shape == (9, 8) and np.isnan(grid[0, 0]) and not np.isnan(grid[8, 7])  # a frame never reads itself here
    cells = attribution.attribute(model, [prompt], granularity="cells", window=1, select="all", progress=False)
    assert len(viz.cells_on_frames(cells, prompt.frames).axes) == prompt.token_map.n_frames + 1
    tokens = attribution.attribute(model, [prompt], granularity="tokens", window=1, select="all", progress=False)
    bars = viz.token_bars(tokens).axes[0].patches
    assert len(bars) == len(prompt.token_map.question)
    with pytest.raises(ValueError, match="granularity='cells'"):
        viz.cells_on_frames(tokens, prompt.frames)


def test_distinct_key_sets_rebuild_every_row():
    """The estimates read each distinct key set once: the dedup must give back every row exactly."""
    from hooked_video.analysis.attribution.estimates import _distinct_rows

    generator = torch.Generator().manual_seed(0)
    rows = torch.rand(40, 19, generator=generator) < 0.5
    rows = torch.cat([rows, rows[::3], rows[:0]])  # repeated rows
    keysets, inverse = _distinct_rows(rows)
    assert torch.equal(keysets[inverse], rows)
    assert len(keysets) == len(torch.unique(rows, dim=0))
    empty, none = _distinct_rows(rows[:0])
    assert empty.shape == (0, 19) and none.shape == (0,)
