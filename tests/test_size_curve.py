"""The faithfulness-size curve over every attention edge (discovery.size_curve): block groups
partition each layer's causal triangle, a block pathway equals a plain HF forward with explicit
masks, and the curve's points are exact, resumable and round-trip through pathways.evaluate."""

import pandas as pd
import pytest
import torch
from hf_reference import last_probs, load_hf
from test_discovery import one_per_task, toy  # noqa: F401  (fixtures: five questions, toy-planted)

from hooked_video import HookedVideoLLM, discovery, pathways, viz
from hooked_video.analysis.attribution.estimates import mask_effects, pair_effects
from hooked_video.analysis.attribution.gradients import pattern_gradients
from hooked_video.analysis.discovery import ranked as ranked_module
from hooked_video.analysis.discovery.blocks import BlockPathway, blocks, layer_groups
from hooked_video.analysis.pathways import _Runner, count_edges

SIZES = (1.0, 0.6, 0.3, 0.05, 0.005)


@pytest.fixture(scope="module")
def drawn(toy, one_per_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("curve") / "run"
    return out, discovery.size_curve(toy, one_per_task, sizes=SIZES, seeds=1, preset="auto", bisect=3, out=out,
                                       progress=False)  # fmt: skip


def test_block_groups_partition_each_layers_causal_triangle(toy, one_per_task):
    tm = one_per_task[0].prepare(toy).token_map
    n = tm.n_positions
    named = blocks(tm)
    assert list(named)[0] == "prefix" and list(named)[-1] == "last" and f"frame {tm.n_frames - 1}" in named
    assert sorted(torch.cat(list(named.values())).tolist()) == list(range(n))  # every position in one block
    covered = torch.zeros(n, n, dtype=torch.long)
    for source, target in layer_groups(tm):
        covered += BlockPathway(((source, target, 0),), 1).layer_edges(tm, 1)[0].mask.long()
    assert torch.equal(covered, torch.ones(n, n, dtype=torch.long).tril(-1))  # disjoint, and only the diagonal left out
    everything = BlockPathway(tuple((s, t, 0) for s, t in layer_groups(tm)), 1)
    assert count_edges(everything.layer_edges(tm, 1), n).retained == n


def test_a_block_pathway_equals_hf_with_explicit_per_layer_masks(arch, deep, deep_prompt, deep_paths):
    """Prefix -> last closed in layer 0, every group in layer 1 (each token keeps only its own edge),
    cross-frame in layer 2, question -> last in layer 3; the masks built here from frame numbers."""
    tm = deep_prompt.token_map
    n = tm.n_positions
    frame = tm.frame_of
    first_video = int((frame >= 0).nonzero()[0])
    closed = [("prefix", "last", 0), *((s, t, 1) for s, t in layer_groups(tm)),
              *((f"frame {i}", f"frame {j}", 2) for j in range(tm.n_frames) for i in range(j)), ("question", "last", 3)]  # fmt: skip
    pathway = BlockPathway(tuple(closed), 4)
    last = torch.zeros(n, dtype=torch.bool)
    last[-1] = True
    question = torch.zeros(n, dtype=torch.bool)
    question[tm.question] = True
    strict = torch.ones(n, n, dtype=torch.bool).tril(-1)
    blocked = {0: last[:, None] & (torch.arange(n) < first_video)[None, :], 1: strict,
               2: (frame[None, :] >= 0) & (frame[None, :] < frame[:, None]), 3: last[:, None] & question[None, :]}  # fmt: skip
    masks = {layer: torch.where(b | ~torch.ones(n, n, dtype=torch.bool).tril(), torch.finfo(torch.float32).min, 0.0)[None, None]
             for layer, b in blocked.items()}  # fmt: skip
    hf = load_hf(deep_paths[arch], deep)
    full, expected = last_probs(hf, deep_prompt.inputs)[0], last_probs(hf, deep_prompt.inputs, masks)[0]
    top = int(full.argmax())
    row = pathways.faithfulness_prompt(deep, deep_prompt, pathway)
    assert row["outside|rel_change"] == pytest.approx((float(expected[top]) - float(full[top])) / float(full[top]) * 100, abs=1e-3)
    assert not torch.allclose(full, expected, atol=1e-5)
    retained = sum(n * (n + 1) // 2 - int((b & strict).sum()) for b in blocked.values())
    assert count_edges(pathway.layer_edges(tm, 4), n).retained == retained


def test_the_curve_ends_with_each_token_on_its_own_edge(arch, deep, deep_prompt, deep_paths):
    curve = discovery.size_curve(deep, [deep_prompt], sizes=(1.0, 0.5, 0.001), seeds=0, preset=None, min_accuracy=0,
                                 progress=False)  # fmt: skip
    last = curve.table[curve.table.pathway == "ranked"].iloc[-1]
    n = deep_prompt.n_positions
    assert last.n_closed == len(curve.ranking) == 4 * len(layer_groups(deep_prompt.token_map))
    assert last.retention == pytest.approx(2 / (n + 1))
    masks = {layer: torch.where(~torch.eye(n, dtype=torch.bool), torch.finfo(torch.float32).min, 0.0)[None, None]
             for layer in range(4)}  # fmt: skip
    hf = load_hf(deep_paths[arch], deep)
    full, expected = last_probs(hf, deep_prompt.inputs)[0], last_probs(hf, deep_prompt.inputs, masks)[0]
    top = int(full.argmax())
    assert last.rel_change == pytest.approx((float(expected[top]) - float(full[top])) / float(full[top]) * 100, abs=1e-3)


def test_block_estimates_keep_each_tokens_own_edge(toy, one_per_task):
    """pair_effects(self_edges=False) equals mask_effects of the same groups as explicit masks (to
    float32 rounding: rows left with little but their own edge divide by a small 1 - P_K)."""
    prompt = one_per_task[0].prepare(toy)
    tm = prompt.token_map
    named = blocks(tm)
    grads = pattern_gradients(toy, toy.embed(prompt))
    pairs = pair_effects(grads, list(named.values()), list(named.values()), self_edges=False)
    names = list(named)
    groups = [(s, t) for s, t in layer_groups(tm)][:12] + [("frame 2", "frame 2"), ("prefix", "prefix")]
    masks = [BlockPathway(((s, t, 0),), 1).layer_edges(tm, 1)[0].mask for s, t in groups]
    for (s, t), expected in zip(groups, mask_effects(grads, masks)):
        assert torch.allclose(pairs[:, names.index(t), names.index(s)], expected, rtol=1e-2, atol=1e-6), (s, t)
    with_self = pair_effects(grads, [named["frame 2"]], [named["frame 2"]])[:, 0, 0]
    assert not torch.allclose(with_self, pairs[:, names.index("frame 2"), names.index("frame 2")])


def test_the_curve_is_exact_reaches_the_floor_and_beats_random_pruning(toy, one_per_task, drawn):
    _, curve = drawn
    table = curve.table
    ranked = table[table.pathway == "ranked"].sort_values("n_closed")
    grid = ranked[ranked["size"].notna()]
    sizes = [s.prepare(toy).n_positions for s in one_per_task]
    floor = sum(sizes) / sum(n * (n + 1) // 2 for n in sizes)  # one edge per row
    assert (grid.retention <= grid["size"].clip(lower=floor) + 1e-9).all() and (ranked.retention.diff().dropna() <= 1e-12).all()
    assert grid.retention.iloc[-1] == pytest.approx(floor) and grid.retention.iloc[-2] < 0.05
    preset = table[table.pathway == "preset"].iloc[0]  # toy-planted's own pathway, scored beside, and its size on the grid
    at_preset = grid[grid["size"] == preset["size"]].iloc[0]
    assert preset["size"] == pytest.approx(preset.retention, abs=1e-6)
    assert at_preset.accuracy >= preset.accuracy and at_preset.retention <= preset.retention
    beside = curve.summary().loc[preset["size"], "accuracy"]
    assert beside["preset"] == preset.accuracy and beside["ranked"] == at_preset.accuracy
    random = table[table.pathway == "random"]
    assert set(random["size"]) and set(random["size"]) < set(grid["size"]) and 0.05 not in set(random["size"])
    for size, rows in random.groupby("size"):
        assert rows.retention.to_numpy() == pytest.approx(size, abs=2e-3)
        assert grid[grid["size"] == size].accuracy.iloc[0] >= rows.accuracy.mean(), size
    # the smallest pathway keeping the accuracy: every point before it keeps it too, and evaluate agrees
    k = len(curve.smallest.closed)
    assert (ranked[ranked.n_closed <= k].accuracy >= 0.95 * curve.full_accuracy).all()
    keeping = grid.accuracy >= 0.95 * curve.full_accuracy
    low = grid.n_closed[keeping.cummin()].max()  # the grid's run of points that keep the accuracy
    high = grid.n_closed[grid.n_closed > low].min()
    bisected = ranked[ranked["size"].isna()].n_closed
    assert len(bisected) == 3 and ((bisected > low) & (bisected < high)).all() and low <= k < high
    point = ranked[ranked.n_closed == k].iloc[0]
    report = pathways.evaluate(toy, one_per_task, curve.smallest, random_baseline=False, progress=False)
    assert report.accuracy.loc["overall", "pathways"] == pytest.approx(point.accuracy)
    assert report.retention.loc["pathways", "retention"] == pytest.approx(point.retention)
    assert BlockPathway.from_settings(curve.smallest.settings()) == curve.smallest
    assert "smallest keeping the accuracy" in repr(curve) and set(curve.summary().columns.get_level_values(1)) == {
        "preset", "random", "ranked"}
    fig = viz.faithfulness_curve(curve)
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].lines) >= 4


def test_a_rerun_replays_the_curve_without_forwards(toy, one_per_task, drawn, monkeypatch):
    out, curve = drawn
    calls, backwards = [], []
    original = _Runner.knocked_out_many
    monkeypatch.setattr(_Runner, "knocked_out_many", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    monkeypatch.setattr(ranked_module, "pattern_gradients", lambda *a, **k: backwards.append(1) or pattern_gradients(*a, **k))
    again = discovery.size_curve(toy, one_per_task, sizes=SIZES, seeds=1, preset="auto", bisect=3, out=out,
                                       progress=False)  # fmt: skip
    assert not calls and not backwards  # the rankings' per-sample estimates are stored with the rows
    pd.testing.assert_frame_equal(again.table, curve.table)
    pd.testing.assert_frame_equal(again.ranking, curve.ranking)
    once = discovery.size_curve(toy, one_per_task[:2], sizes=(1.0, 0.5), seeds=0, preset=None, rerank=False, progress=False)
    assert set(once.ranking.ranked_after) == {0}
    grid = curve.table[(curve.table.pathway == "ranked") & curve.table["size"].notna()]
    assert set(curve.ranking.ranked_after) <= {0} | set(grid.n_closed)  # orders are only ever taken again at a size


def test_bad_curves_are_refused(toy, one_per_task):
    with pytest.raises(pathways.InvalidInputError, match="sizes="):
        discovery.size_curve(toy, one_per_task, sizes=(1.0, 0.0))
    with pytest.raises(pathways.InvalidInputError, match="min_accuracy="):
        discovery.size_curve(toy, one_per_task, min_accuracy=1.5)
    sample = one_per_task[0]
    mixed = [toy.prepare(sample.video, sample.question, list(sample.options), answer=0, num_frames=frames) for frames in (4, 8)]
    with pytest.raises(pathways.InvalidInputError, match="one number of frames"):
        discovery.size_curve(toy, mixed, progress=False)
    with pytest.raises(pathways.InvalidInputError, match="does not have"):
        BlockPathway((("frame 7", "last", 0),), 12).layer_edges(mixed[0].token_map, 12)
    with pytest.raises(pathways.InvalidInputError, match="outside"):
        BlockPathway((("prefix", "last", 12),), 12)
    with pytest.raises(pathways.InvalidInputError, match="12 layers"):
        BlockPathway((), 12).check_model(HookedVideoLLM.from_pretrained("toy16-video-ft"))


def test_gradients_of_a_pruned_model_are_taken_at_its_knockout(toy, one_per_task):
    """pattern_gradients(blocked=...) runs the model the engine runs with those edges knocked out
    (same log P(answer)), and leaves the rows it does not touch exactly as they were."""
    prompt = one_per_task[1].prepare(toy)
    tm = prompt.token_map
    pathway = BlockPathway((("prefix", "last", 2), ("frame 0", "frame 3", 4), ("question", "last", 9)), toy.cfg.n_layers)
    edges = pathway.layer_edges(tm, toy.cfg.n_layers)
    embedded = toy.embed(prompt)
    clean = pattern_gradients(toy, embedded)
    pruned = pattern_gradients(toy, embedded, answer=clean.answer, blocked={l: e.mask for l, e in edges.items()})
    with torch.no_grad():
        logits = _Runner(toy, embedded, None).knocked_out(edges)
    assert float(pruned.log_prob[0]) == pytest.approx(float(logits.float().log_softmax(-1)[..., clean.answer].reshape(-1)[0]), abs=1e-5)
    assert float(pruned.log_prob[0]) != pytest.approx(float(clean.log_prob[0]), abs=1e-4)
    touched = edges[2].mask.any(-1)  # layer 2: only the last row changes; earlier layers are untouched
    assert torch.equal(pruned.pattern[2][..., ~touched, :], clean.pattern[2][..., ~touched, :])
    assert torch.equal(pruned.pattern[:2], clean.pattern[:2]) and (pruned.pattern[2][..., edges[2].mask] == 0).all()


def test_the_closing_count_and_the_smallest_point_by_hand():
    from hooked_video.analysis.discovery.ranked import _bisect, _count_to, _last_keeping

    order = pd.DataFrame({"edges": [10, 20, 30, 40]})  # of 100 edges, none closed yet
    assert [_count_to(order, 0, 100, size) for size in (1.0, 0.95, 0.9, 0.7, 0.41, 0.4, 0.05)] == [0, 1, 1, 2, 3, 3, 4]
    assert _count_to(order.iloc[1:], 10, 100, 0.7) == 1  # after the first group: 20 more edges reach 70%
    points = [{"n_closed": 0, "accuracy": 1.0}, {"n_closed": 8, "accuracy": 1.0}, {"n_closed": 16, "accuracy": 0.5},
              {"n_closed": 24, "accuracy": 1.0}]  # the last one is lucky: it does not count
    assert _last_keeping(points, 0.95) == 8
    scored = []

    def score(k, size):
        scored.append(k)
        return {"n_closed": k, "accuracy": 1.0 if k <= 11 else 0.0}

    extra = _bisect(points, 8, score, 0.95, budget=10)
    assert scored == [12, 10, 11] and _last_keeping(points + extra, 0.95) == 11
    assert len(_bisect(points, 8, score, 0.95, budget=1)) == 1
