"""Pathway discovery: it recovers the pathway planted in toy-planted, and what it returns
round-trips through pathways.evaluate with the same exact figures and edge counts."""

import pytest

from hooked_video import HookedVideoLLM, discovery, pathways
from hooked_video.data import TVBench, synthetic
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


def test_discovery_recovers_the_planted_pathway_and_round_trips(one_per_task):
    model = HookedVideoLLM.from_pretrained("toy-planted")
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


def test_discovery_on_every_architecture_round_trips(arch, deep, deep_prompt):
    found = discovery.discover(deep, [deep_prompt], tolerance=100.0, min_accuracy=0.0, progress=False)
    assert len(found.path) == 1 + 3 * deep.cfg.n_layers  # the whole curve: one layer closed per step
    assert found.path.iloc[-1][list(FLOWS)].isna().all()
    assert found.spec is not None and cells(found.spec) == set()  # everything may close at this tolerance
    first = found.path.iloc[0]
    spec = pathways.PathwaySpec(*(first[f] for f in FLOWS), n_layers=deep.cfg.n_layers)
    row = pathways.faithfulness_prompt(deep, deep_prompt, spec)
    assert row["outside|rel_change"] == pytest.approx(first.rel_change, abs=1e-6)


def test_bad_settings_are_refused(one_per_task):
    model = HookedVideoLLM.from_pretrained("toy-planted")
    with pytest.raises(pathways.InvalidInputError, match="tolerance"):
        discovery.discover(model, one_per_task, tolerance=-1)
    with pytest.raises(pathways.InvalidInputError, match="no samples"):
        discovery.discover(model, [])
