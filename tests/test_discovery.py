"""Pathway discovery: it recovers the pathway planted in toy-planted, and what it returns
round-trips through pathways.evaluate with the same exact figures and edge counts."""

import json

import pandas as pd
import pytest
import torch
from hf_reference import last_probs, load_hf

from hooked_video import HookedVideoLLM, discovery, pathways, viz
from hooked_video.analysis.pathways import _Runner
from hooked_video.app.cli import main
from hooked_video.data import TVBench, synthetic
from hooked_video.data.mcqa import identify_all
from hooked_video.zoo import planted

FLOWS = ("inter", "v2q", "q2l")


def cells(spec) -> set:
    """(flow, layer) cells a spec keeps open."""
    return {(f, l) for f in FLOWS if getattr(spec, f) for l in range(getattr(spec, f)[0], getattr(spec, f)[1] + 1)}


@pytest.fixture(scope="module")
def one_per_task(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("discover") / "syn", tasks=list(synthetic.TEMPORAL_TASKS),
                              per_task=1, seed=0, progress=False)  # fmt: skip
    return list(TVBench(root))


@pytest.fixture(scope="module")
def toy():
    return HookedVideoLLM.from_pretrained("toy-planted")


def test_discovery_recovers_the_planted_pathway_and_round_trips(toy, one_per_task):
    model = toy
    found = discovery.discover(model, one_per_task, full_curve=False, progress=False)
    truth = cells(planted.PLANTED)
    hit = len(cells(found.spec) & truth)
    assert hit / len(cells(found.spec)) >= 0.9 and hit / len(truth) >= 0.9, found
    path = found.path
    assert path.faithful.iloc[:-1].all() and not path.faithful.iloc[-1]  # stopped at the first unfaithful step
    assert (path.retention.diff().dropna() <= 1e-12).all()  # every step closes edges
    step = path.loc[found.step]
    assert found.step == len(path) - 2
    report = pathways.evaluate(model, one_per_task, found.spec, random_baseline=False, progress=False)
    assert report.accuracy.loc["overall", "pathways"] == pytest.approx(step.accuracy)
    assert report.retention.loc["pathways", "retention"] == pytest.approx(step.retention)
    # the edge count, independently: per layer, causal pairs minus the blocked ones
    retained = baseline = 0
    for sample in one_per_task:
        prompt = sample.prepare(model)
        n = prompt.n_positions
        for layer, edges in found.spec.layer_edges(prompt.token_map, model.cfg.n_layers).items():
            baseline += n * (n + 1) // 2
            retained += n * (n + 1) // 2 - int(edges.mask.tril().sum())
    assert step.retention == pytest.approx(retained / baseline)
    assert "Discovery over 5 samples" in repr(found)


def test_ranked_searches_find_the_same_pathway_with_fewer_forwards(toy, one_per_task, monkeypatch):
    """Attribution patching and learned gates only order the candidates: the same pathway, exact figures."""
    counts = {}
    original = discovery.Scorer._row
    weights = {name: p.clone() for name, p in toy.hf_model.named_parameters()}
    for method in ("exact", "atp", "gates"):
        counts[method] = 0

        def counted(self, *args, _method=method, **kwargs):
            counts[_method] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(discovery.Scorer, "_row", counted)
        found = discovery.discover(toy, one_per_task, method=method, full_curve=False, progress=False)
        counts[method, "spec"] = found.spec
        counts[method, "figures"] = found.path.loc[found.step, ["retention", "rel_change", "accuracy"]].tolist()
    for method in ("atp", "gates"):
        assert counts[method, "spec"] == counts["exact", "spec"], method
        assert counts[method, "figures"] == pytest.approx(counts["exact", "figures"], abs=1e-4)  # exact either way (lanes batch differently)
        assert counts[method] < counts["exact"] / 2, method
    # the gates learned alone: the model's weights unchanged, their gradients switched back on
    assert all(torch.equal(p, weights[name]) and p.requires_grad for name, p in toy.hf_model.named_parameters())
    frozen = next(toy.hf_model.parameters())
    frozen.requires_grad_(False)  # a parameter the user froze stays frozen
    try:
        from hooked_video.analysis.discovery.gates import gate_logits

        theta = gate_logits(toy, identify_all(one_per_task[:2]), ("inter", "v2q"), 8, steps=1)
        assert theta.shape == (2, toy.cfg.n_layers) and not frozen.requires_grad
    finally:
        frozen.requires_grad_(True)


def test_a_closed_gate_equals_hf_with_explicit_per_layer_masks(arch, deep, deep_prompt, deep_paths):
    """Gates at 0 for cross-frame in layer 0 and video -> question in layer 2 (1 elsewhere) give the
    probabilities of a plain HF forward with those edges masked, built here from frame numbers."""
    from hooked_video.analysis.discovery.gates import flow_masks, gate_hooks

    tm = deep_prompt.token_map
    frame = tm.frame_of
    video = frame >= 0
    question = torch.zeros_like(video)
    question[tm.question] = True
    theta = torch.full((2, 4), 40.0)
    theta[0, 0] = theta[1, 2] = -40.0
    last_self = torch.zeros(len(video), len(video), dtype=torch.bool)
    last_self[-1, -1] = True  # blocked in every layer, as the search's first step blocks last -> last
    hooks = gate_hooks(theta, flow_masks(tm, ("inter", "v2q"), 4), blocked=last_self)
    logits = deep.run_with_hooks(deep.embed(deep_prompt), fwd_hooks=hooks)
    blocked = {0: video[:, None] & video[None, :] & (frame[None, :] < frame[:, None]), 1: torch.zeros_like(last_self),
               2: question[:, None] & video[None, :], 3: torch.zeros_like(last_self)}  # fmt: skip
    masks = {layer: torch.where(b | last_self | ~torch.ones_like(b).tril(), torch.finfo(torch.float32).min, 0.0)[None, None]
             for layer, b in blocked.items()}  # fmt: skip
    hf = load_hf(deep_paths[arch], deep)
    expected = last_probs(hf, deep_prompt.inputs, masks)[0]
    assert torch.allclose(logits[0, -1].float().softmax(-1), expected, atol=1e-5)
    assert not torch.allclose(expected, last_probs(hf, deep_prompt.inputs)[0], atol=1e-5)  # the gates did close something


def test_discovery_on_every_architecture_round_trips(arch, deep, deep_prompt):
    found = discovery.discover(deep, [deep_prompt], tolerance=100.0, min_accuracy=0.0, progress=False)
    assert len(found.path) == 1 + 3 * deep.cfg.n_layers  # the whole curve: one layer closed per step
    assert found.path.iloc[-1][list(FLOWS)].isna().all()
    assert found.spec is not None and cells(found.spec) == set()  # everything may close at this tolerance
    first = found.path.iloc[0]
    spec = pathways.PathwaySpec(**{f: first[f] for f in FLOWS}, n_layers=deep.cfg.n_layers)
    row = pathways.faithfulness_prompt(deep, deep_prompt, spec)
    assert row["outside|rel_change"] == pytest.approx(first.rel_change, abs=1e-6)


def test_bad_settings_are_refused(toy, one_per_task):
    model = toy
    with pytest.raises(pathways.InvalidInputError, match="tolerance"):
        discovery.discover(model, one_per_task, tolerance=-1)
    with pytest.raises(pathways.InvalidInputError, match="no samples"):
        discovery.discover(model, [])
    with pytest.raises(pathways.InvalidInputError, match="flows"):
        discovery.discover(model, one_per_task, flows=("inter", "video"))
    with pytest.raises(pathways.InvalidInputError, match="by="):
        discovery.discover_each(model, one_per_task, by="frame")
    with pytest.raises(pathways.InvalidInputError, match="preset="):
        discovery.discover(model, one_per_task, preset="llava-next-8b")
    with pytest.raises(pathways.InvalidInputError, match="method="):
        discovery.discover(model, one_per_task, method="acdc")


@pytest.fixture(scope="module")
def searched(toy, one_per_task, tmp_path_factory):
    """The whole curve with two random seeds and the preset, stored."""
    out = tmp_path_factory.mktemp("searched") / "run"
    return out, discovery.discover(toy, one_per_task, seeds=2, preset="auto", out=out, progress=False)


def test_the_curve_is_exact_and_lies_above_random_pruning(toy, one_per_task, searched):
    _, found = searched
    curve = found.curve
    assert set(curve.pathway) == {"discovered", "random", "preset"}
    pd.testing.assert_frame_equal(curve[curve.pathway == "discovered"][["retention", "accuracy"]].reset_index(drop=True),
                                  found.path[["retention", "accuracy"]])  # fmt: skip
    random = curve[curve.pathway == "random"]
    assert found.step in set(random.step) and set(random.seed) == {0, 1} and len(set(random.step)) >= 8
    for step, rows in random.groupby("step"):  # random pruning keeps the same share of edges
        assert rows.retention.to_numpy() == pytest.approx(found.path.loc[int(step), "retention"], abs=2e-3)
    # independently: pathways.evaluate draws the same random edges for a sample id and seed
    fraction = 1 - found.path.loc[found.step, "retention"]
    expected = [pathways.random_prompt(toy, s.prepare(toy), fraction, 1, sample_id)["random_pred"] == s.answer
                for sample_id, _, s in identify_all(one_per_task)]  # fmt: skip
    point = random[(random.step == found.step) & (random.seed == 1)].iloc[0]
    assert point.accuracy == pytest.approx(sum(expected) / len(expected))
    # the preset is toy-planted's own pathway: its row is faithfulness' "outside" setting
    preset = curve[curve.pathway == "preset"].iloc[0]
    outside = pathways.faithfulness(toy, one_per_task, planted.PLANTED, progress=False).query("setting == 'outside'")
    assert preset.rel_change == pytest.approx(outside.rel_change.mean(), abs=1e-6)
    # up to the found pathway, the discovered path keeps at least random pruning's accuracy, and more of the
    # top token's probability wherever pruning bites (past it a needed flow is cut: on five samples, random
    # pruning of two seeds may then answer one more correctly by chance)
    means = random.groupby("step")[["rel_change", "accuracy"]].mean()
    for step, row in means[means.index <= found.step].iterrows():
        discovered = found.path.loc[int(step)]
        assert discovered.accuracy >= row.accuracy, step
        if discovered.retention < 0.9:
            assert discovered.rel_change > row.rel_change, step
    assert len(means[means.index <= found.step]) >= 5
    fig = viz.faithfulness_curve(found)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 4


def test_a_rerun_replays_the_stored_rows_without_forwards(toy, one_per_task, searched, monkeypatch):
    out, found = searched
    calls = []
    original = _Runner.knocked_out_many
    monkeypatch.setattr(_Runner, "knocked_out_many", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    again = discovery.discover(toy, one_per_task, seeds=2, preset="auto", out=out, progress=False)
    assert not calls  # the same search: every step and curve point read back
    pd.testing.assert_frame_equal(again.curve, found.curve)
    strict = discovery.discover(toy, one_per_task, tolerance=0.1, out=out, progress=False)
    assert strict.step < found.step  # other criteria: another pathway, on rows shared with the first search
    shared = strict.path.loc[: strict.step, ["retention", "rel_change", "accuracy"]]
    pd.testing.assert_frame_equal(shared, found.path.loc[: strict.step, ["retention", "rel_change", "accuracy"]])
    with pytest.raises(pathways.ResultsMismatchError):  # other frames: other rows
        discovery.discover(toy, one_per_task, num_frames=4, out=out, progress=False)


def test_per_task_and_per_sample_searches_share_their_rows(toy, one_per_task, tmp_path, monkeypatch):
    per_task = discovery.discover_each(toy, one_per_task, by="task", full_curve=False, out=tmp_path, progress=False)
    assert sorted(per_task) == sorted({s.task for s in one_per_task}) and len(per_task) == 5
    assert all(found.samples == 1 and found.spec is not None for found in per_task.values())
    calls = []
    original = _Runner.knocked_out_many
    monkeypatch.setattr(_Runner, "knocked_out_many", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    per_sample = discovery.discover_each(toy, one_per_task, by="sample", full_curve=False, out=tmp_path, progress=False)
    assert not calls  # one question per task: the same searches, read back from the folder
    by_sample = discovery.table(per_sample)
    by_task = discovery.table(per_task)
    assert sorted(map(str, by_sample.inter)) == sorted(map(str, by_task.inter))
    assert list(by_task.columns[:3]) == list(FLOWS) and (by_task.samples == 1).all()


def test_a_search_of_some_flows_leaves_the_others_closed(toy, one_per_task):
    found = discovery.discover(toy, one_per_task[:1], flows=("v2q", "q2l"), tolerance=100, min_accuracy=0,
                               full_curve=False, progress=False)  # fmt: skip
    assert found.spec.inter is None and found.spec.v2l is None and len(found.path) == 1 + 2 * 12
    assert list(found.path.columns[1:3]) == ["v2q", "q2l"]


def test_video_to_last_opens_as_a_fourth_flow(toy, one_per_task):
    spec = pathways.PathwaySpec(inter=(1, 3), v2q=(4, 7), q2l=(8, 10), v2l=(2, 5), n_layers=12)
    tm = one_per_task[0].prepare(toy).token_map
    edges = spec.layer_edges(tm, 12)
    video_to_last = [bool(edges[l].mask[tm.last][:, tm.video].any()) for l in range(12)]
    assert video_to_last == [not 2 <= l <= 5 for l in range(12)]  # blocked exactly outside V2L
    assert "v2l" not in pathways.PathwaySpec.preset("toy-planted").settings()  # older folders still resume
    assert spec.describe() == "INTER 1-3, V2Q 4-7, Q2L 8-10, V2L 2-5"
    found = discovery.discover(toy, one_per_task[:1], flows=discovery.PAPER_FLOWS + ("v2l",), tolerance=100,
                               min_accuracy=0, progress=False)  # fmt: skip
    assert len(found.path) == 1 + 4 * 12 and "video->last @" in " ".join(found.path.closed.dropna())


def test_cli_discover_writes_the_curve_and_refuses_a_users_file(tmp_path, one_per_task, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"video": str(s.video), "question": s.question, "options": list(s.options),
                                 "answer": s.answer, "task": s.task} for s in one_per_task[:3]]))  # fmt: skip
    out = tmp_path / "run"
    args = ["discover", "--model", "toy-planted", "--data", str(data), "--out", str(out), "--seeds", "1",
            "--stop-at-faithful", "--preset", "toy-planted", "--method", "atp"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "all samples: Discovery over 3 samples" in printed and (out / "curve.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["found"]["all samples"]["samples"] == 3 and {r["pathway"] for r in summary["curve"]["all samples"]} == {
        "discovered", "random", "preset"}
    assert main([*args, "--refine-points", "6"]) == 2 and "--refine-points applies only" in capsys.readouterr().err
    assert main([*args, "--refine", "cells", "--refine-points", "6"]) == 0  # a rerun replaces its own files
    refined = json.loads((out / "summary.json").read_text())["refine"]
    assert refined["granularity"] == "cells" and 1 <= len(refined["path"]) <= 6
    assert len(refined["pathway"]["closed"]) == len(refined["closed"]) and "cells groups closed" in capsys.readouterr().out
    assert main([*args, "--size-curve"]) == 0
    drawn = json.loads((out / "summary.json").read_text())["size_curve"]
    table = pd.read_csv(out / "size_curve.csv")
    assert set(table.pathway) == {"ranked", "random", "preset"} and len(table) == len(drawn["points"])
    assert "SizeCurve over 3 samples" in capsys.readouterr().out
    if drawn["smallest"] is not None:
        assert discovery.BlockPathway.from_settings(drawn["smallest"]).n_layers == 12
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "curve.png").write_bytes(b"a figure of the user's")
    assert main([*args[:6], str(mine), *args[7:]]) == 2
    assert "curve.png" in capsys.readouterr().err and (mine / "curve.png").read_bytes() == b"a figure of the user's"
    (mine / "curve.png").unlink()
    (mine / "size_curve.csv").write_text("a table of the user's")
    assert main([*args[:6], str(mine), *args[7:], "--size-curve"]) == 2
    assert "size_curve.csv" in capsys.readouterr().err and (mine / "size_curve.csv").read_text() == "a table of the user's"


def test_refine_closes_frame_pairs_the_planted_toy_does_not_need(toy, one_per_task):
    found = discovery.discover(toy, one_per_task, method="atp", full_curve=False, progress=False)
    finer = discovery.refine(toy, one_per_task, found, granularity="frame-pairs", progress=False)
    tm = one_per_task[0].prepare(toy).token_map
    pairs = tm.n_frames * (tm.n_frames - 1) // 2
    inter, v2q = found.spec.inter, found.spec.v2q
    assert finer.candidates == pairs * (inter[1] - inter[0] + 1) + tm.n_frames * (v2q[1] - v2q[0] + 1)
    path = finer.path
    assert path.loc[0].retention == pytest.approx(found.path.loc[found.step, "retention"])
    assert path.loc[0].n_closed == 0 and path.loc[0].faithful
    n = len(finer.closed)
    assert 0 < n < finer.candidates
    # replay the search from its points: each tries the groups kept so far plus a chunk, a chunk stays
    # closed only where the point was faithful, a failed chunk is tried again in halves
    kept, pending = 0, [finer.candidates]
    for _, point in path.iloc[1:].iterrows():
        chunk = pending.pop(0)
        assert point.chunk == chunk and point.n_closed == kept + chunk
        if point.faithful:
            kept += chunk
        elif chunk > 1:
            pending[:0] = [chunk // 2, chunk - chunk // 2]
    assert kept == n and sum(pending) == finer.untried and not path.faithful.iloc[1:].all()
    assert path[path.faithful].retention.iloc[-1] < path.loc[0].retention
    assert "Refinement of INTER" in repr(finer) and f"{n} of {finer.candidates}" in repr(finer)
    strict = discovery.refine(toy, one_per_task, found, tolerance=0, min_accuracy=1, progress=False)
    assert len(strict.path) == 1 and strict.closed.empty and "itself is not faithful" in repr(strict)


def test_a_refined_pathway_round_trips_through_evaluate(toy, one_per_task):
    """refine(granularity="cells") closes single video cells; its pathway, given to pathways.evaluate,
    has the search's last faithful point's edge count and the same predictions."""
    found = discovery.discover(toy, one_per_task, method="atp", full_curve=False, progress=False)
    finer = discovery.refine(toy, one_per_task, found, granularity="cells", progress=False, max_points=24)
    tm = one_per_task[0].prepare(toy).token_map
    v2q = found.spec.v2q
    assert finer.candidates == len(tm.video) * (v2q[1] - v2q[0] + 1)  # no video -> last range: cells -> question only
    assert len(finer.path) <= 24 and len(finer.closed) > 0
    assert finer.closed.label.str.fullmatch(r"cell \d+,\d+,\d+->question").all()
    report = pathways.evaluate(toy, one_per_task, finer.pathway, random_baseline=False, progress=False)
    last = finer.path[finer.path.faithful].iloc[-1]
    assert report.retention.loc["pathways", "retention"] == pytest.approx(last.retention, rel=1e-9)
    assert report.accuracy.loc["overall", "pathways"] == pytest.approx(last.accuracy)
    assert finer.pathway.settings()["closed"][0] == [finer.closed.label[0], int(finer.closed.layer[0])]
    line = next(l for l in viz.faithfulness_curve(found, refined=finer).axes[0].lines if l.get_label() == "refined: cells")
    assert list(line.get_xdata()) == pytest.approx(list(finer.path[finer.path.faithful].retention * 100))
    assert "minus" in finer.pathway.describe()
    assert discovery.RefinedPathway.from_settings(json.loads(json.dumps(finer.pathway.settings()))) == finer.pathway
    other = pathways.PathwaySpec(inter=None, v2q=(0, 1), q2l=None, n_layers=12)
    with pytest.raises(pathways.InvalidInputError, match="token grid"):
        discovery.RefinedPathway(other, ((("cell->question", 99, 0, 0), 0),), "cells").layer_edges(tm, 12)
    with pytest.raises(pathways.InvalidInputError, match="unknown edge group"):
        discovery.RefinedPathway(other, ((("cell->questions", 0, 0, 0), 0),), "cells")


def test_refined_edges_equal_hf_with_explicit_per_layer_masks(arch, deep, deep_prompt, deep_paths):
    """Everything closed (tolerance 100): the last point's change equals a plain HF forward with the
    union rule's masks plus, built here from the token map's frame numbers and cells, every frame
    pair and frame -> question edge of the open ranges ("frame-pairs"), or every video cell ->
    question and cell -> last edge of them ("cells")."""
    spec = pathways.PathwaySpec(inter=(0, 1), v2q=(1, 2), q2l=(2, 3), v2l=(2, 3), n_layers=4)
    found = discovery.Discovery(spec, pd.DataFrame(), 1.0, 1, 0)
    tm = deep_prompt.token_map
    frame = tm.frame_of
    video = frame >= 0
    cell = tm.cell[:, 0] >= 0
    question, last = torch.zeros_like(video), torch.zeros_like(video)
    question[tm.question] = True
    last[-1] = True
    cross = video[:, None] & video[None, :] & (frame[None, :] < frame[:, None])  # [query, key]
    extra = {"frame-pairs": {0: cross, 1: cross | (question[:, None] & video[None, :]), 2: question[:, None] & video[None, :]},
             "cells": {1: question[:, None] & cell[None, :], 2: (question | last)[:, None] & cell[None, :],
                       3: last[:, None] & cell[None, :]}}  # fmt: skip
    hf = load_hf(deep_paths[arch], deep)
    full = last_probs(hf, deep_prompt.inputs)[0]
    top = int(full.argmax())
    for granularity, added in extra.items():
        finer = discovery.refine(deep, [deep_prompt], found, granularity, tolerance=100, min_accuracy=0, progress=False)
        assert len(finer.closed) == finer.candidates
        masks = {}
        for layer, edges in spec.layer_edges(tm, 4).items():
            blocked = edges.mask | added.get(layer, torch.zeros_like(edges.mask))
            acausal = ~torch.ones_like(blocked).tril()
            masks[layer] = torch.where(blocked | acausal, torch.finfo(torch.float32).min, 0.0)[None, None]
        probs = last_probs(hf, deep_prompt.inputs, masks)[0]
        expected = (float(probs[top]) - float(full[top])) / float(full[top]) * 100
        assert finer.path.iloc[-1].n_closed == finer.candidates
        assert finer.path.iloc[-1].rel_change == pytest.approx(expected, abs=1e-3), granularity


def test_refine_refuses_what_it_cannot_do(toy, one_per_task):
    spec = pathways.PathwaySpec(inter=None, v2q=None, q2l=(0, 11), n_layers=12)
    found = discovery.Discovery(spec, pd.DataFrame(), 1.0, 1, 0)
    with pytest.raises(pathways.InvalidInputError, match="one question at a time"):
        discovery.refine(toy, one_per_task[:2], found, granularity="tokens")
    with pytest.raises(pathways.InvalidInputError, match="granularity="):
        discovery.refine(toy, one_per_task, found, granularity="heads")
    with pytest.raises(pathways.InvalidInputError, match="sparsity"):
        discovery.discover(toy, one_per_task, method="gates", sparsity=-1)
    with pytest.raises(pathways.InvalidInputError, match="max_points"):
        discovery.refine(toy, one_per_task, found, max_points=0)
    with pytest.raises(pathways.InvalidInputError, match="no faithful pathway"):
        discovery.refine(toy, one_per_task, discovery.Discovery(None, pd.DataFrame(), 1.0, 1), progress=False)
    tokens = discovery.refine(toy, one_per_task[:1], found, granularity="tokens", tolerance=100, min_accuracy=0,
                              progress=False)  # fmt: skip
    assert tokens.candidates == len(one_per_task[0].prepare(toy).token_map.question) * 12  # Q2L open in every layer
