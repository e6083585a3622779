"""toy-planted: the training masks are the union rule, pathway faithfulness equals plain HF
forwards with explicit masks, and the bundled weights use exactly the planted pathway."""

import pytest
import torch

from hf_reference import last_probs, load_hf

from hooked_video import HookedVideoLLM, flow, pathways
from hooked_video.data import TVBench, synthetic
from hooked_video.zoo import MODELS_DIR, planted


@pytest.fixture(scope="module")
def toy():
    return HookedVideoLLM.from_pretrained("toy-planted")


@pytest.fixture(scope="module")
def temporal_data(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("planted") / "syn", tasks=list(synthetic.TEMPORAL_TASKS),
                              per_task=4, seed=0, progress=False)  # fmt: skip
    return TVBench(root)


def test_training_masks_are_the_union_rule_and_the_open_flows(toy):
    clip = synthetic.make_clip("moving_direction", 1, seed=0)
    tm = toy.prepare(clip.frames, clip.question, clip.options, clip.answer, num_frames=None).token_map
    spec, n_layers = planted.PLANTED, toy.cfg.n_layers
    masks, flags = planted.family_masks(spec, tm, n_layers), planted.family_layers(spec, n_layers)
    n_out = len(planted.OUTSIDE)
    for layer, edges in spec.layer_edges(tm, n_layers).items():
        union = masks[:n_out][flags[:n_out, layer]].any(0)
        assert torch.equal(union, edges.mask), layer
    for i, (name, edges, layers) in enumerate(spec.open_groups(tm)):
        assert name == planted.PATHWAY[i] and torch.equal(masks[n_out + i], edges.mask)
        assert flags[n_out + i].nonzero().flatten().tolist() == layers
    assert [name for name, _, _ in spec.families(tm, n_layers)] == list(planted.OUTSIDE)


def test_random_choices_stay_inside_their_families_layers():
    flags = planted.family_layers(planted.PLANTED, 12)
    generator = torch.Generator().manual_seed(0)
    n_out = len(planted.OUTSIDE)
    pruned = planted.choose(256, flags, generator, cut=False)
    assert not (pruned & ~flags).any() and not pruned[:, n_out:].any()
    assert pruned[:, :n_out].any(-1).float().mean() > 0.5  # most rows block something outside
    cut = planted.choose(256, flags, generator, cut=True)
    flows = cut[:, n_out:].any(-1)
    assert (flows.sum(-1) == 1).all()  # exactly one flow cut per row
    rows, flow = cut[:, n_out:].any(-1).nonzero(as_tuple=True)
    whole = [torch.equal(cut[r, n_out + f], flags[n_out + f]) for r, f in zip(rows.tolist(), flow.tolist())]
    assert 0.5 < sum(whole) / len(whole) < 1  # all of the flow's layers, or a non-empty part of them
    assert not (cut[:, n_out:] & ~flags[n_out:]).any()


def test_a_training_step_runs_on_the_bundled_folder(toy):
    from transformers import LlavaNextVideoForConditionalGeneration

    model = LlavaNextVideoForConditionalGeneration.from_pretrained(
        MODELS_DIR / "toy-planted", attn_implementation="eager", dtype=torch.float32)  # fmt: skip
    batcher = planted.PlantedBatcher(toy, planted.TASKS, [1.0] * len(planted.TASKS), seed=0, device="cpu")
    batch = batcher(3)
    input_ids, _, _, last, targets, letters, masks = batch
    assert masks.shape == (3, len(planted.OUTSIDE) + len(planted.PATHWAY), input_ids.shape[1], input_ids.shape[1])
    assert (letters[torch.arange(3), :].eq(targets[:, None])).any(-1).all()  # the answer is one of the letters
    value, accuracy = planted.PlantedLoss(mass_weight=3.0)(model, batch)
    value.backward()
    assert torch.isfinite(value) and 0 <= accuracy <= 1
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_faithfulness_equals_hf_with_explicit_per_layer_masks(arch, deep, deep_prompt, deep_paths):
    spec = pathways.PathwaySpec(inter=(0, 1), v2q=(1, 2), q2l=(2, 3), v2l=(0, 0), n_layers=4)
    row = pathways.faithfulness_prompt(deep, deep_prompt, spec)
    hf, tm = load_hf(deep_paths[arch], deep), deep_prompt.token_map
    full = last_probs(hf, deep_prompt.inputs)[0]
    top = int(full.argmax())
    settings = {"outside": {l: e.additive_mask() for l, e in spec.layer_edges(tm, 4).items()}}
    for name, edges, layers in spec.open_groups(tm):
        settings[f"cut {name}"] = dict.fromkeys(layers, edges.additive_mask())
    assert len(settings) == 5  # outside, and a cut of each of the four flows
    for setting, masks in settings.items():
        probs = last_probs(hf, deep_prompt.inputs, masks)[0]
        expected = (float(probs[top]) - float(full[top])) / float(full[top]) * 100
        assert row[f"{setting}|rel_change"] == pytest.approx(expected, abs=1e-3), setting
        assert row[f"{setting}|flipped"] == (int(probs.argmax()) != top)


def test_the_bundled_model_uses_exactly_its_planted_pathway(toy, temporal_data):
    """The toy-models issue's criterion on 20 held-out questions: everything outside the pathway
    together moves P(answer) by < 1% and flips <= 2% of answers; each flow cut alone costs >= 20%."""
    spec = pathways.PathwaySpec.preset("toy-planted")
    assert pathways.preset_for(toy) == "toy-planted"
    df = pathways.faithfulness(toy, temporal_data, spec, progress=False)
    means = df.groupby("setting")[["rel_change", "flipped", "correct"]].mean()
    assert set(means.index) == {"outside", "cut cross-frame", "cut video->question", "cut question->last"}
    assert df.full_correct.mean() >= 0.95
    assert abs(means.loc["outside", "rel_change"]) < 1 and means.loc["outside", "flipped"] <= 0.02
    for flow_name in planted.PATHWAY:
        assert means.loc[f"cut {flow_name}", "rel_change"] <= -20, flow_name


def test_window_sweep_rows_inside_and_outside_the_pathway(toy, temporal_data):
    samples = [s for i, s in enumerate(temporal_data) if i % 4 == 0]  # one question per task
    df = flow.sweep(toy, samples, targets=["cross-frame", "vql-to-ql"], window=3, progress=False)
    rows = planted.window_rows(df, planted.PLANTED, 3)
    assert rows["rows_inside"] == 4 and rows["rows_outside"] > 30
    assert abs(rows["largest_outside"]) < 1 and rows["weakest_inside"] <= -20
    blurred = pathways.PathwaySpec.from_sweep(df, threshold=20)  # each range widened by up to one layer per end
    assert 0 <= 1 - blurred.inter[0] <= 1 and 0 <= blurred.v2q[1] - 7 <= 1 and 0 <= 8 - blurred.q2l[0] <= 1
    single = flow.sweep(toy, samples, targets=["cross-frame", "vql-to-ql"], window=1, progress=False)
    rows = planted.window_rows(single, planted.PLANTED, 1)
    assert abs(rows["largest_outside"]) < 1
    found = pathways.PathwaySpec.from_sweep(single, threshold=20)  # every layer of every flow is needed ...
    assert found.inter == (1, 3) and found.v2q == (4, 7) and found.q2l[0] == 8
    assert found.q2l[1] in (9, 10)  # ... but question -> last at layer 10 only weakly (the model card's table)


def test_cli_prune_reports_faithfulness_and_resumes(temporal_data, tmp_path, capsys):
    from hooked_video.app.cli import main
    from hooked_video.runtime.results import load_results

    argv = ["prune", "--model", "toy-planted", "--data", str(temporal_data.root), "--task", "Moving Direction",
            "--preset", "toy-planted", "--no-random", "--faithfulness", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) in (0, None)
    printed = capsys.readouterr().out
    assert "faithfulness" in printed and "cut video->question" in printed
    summary = __import__("json").loads((tmp_path / "run" / "summary.json").read_text())
    outside = summary["faithfulness"]["outside"]
    assert abs(outside["rel_change"]) < 1 and summary["faithfulness"]["cut question->last"]["rel_change"] <= -20
    stored = load_results(tmp_path / "run", "faithfulness")
    assert len(stored) == 4  # one row per question, settings side by side
    assert main(argv) in (0, None)  # a rerun resumes: the same rows, none added
    assert len(load_results(tmp_path / "run", "faithfulness")) == 4
