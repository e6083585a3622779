"""Information-flow sweeps: pass counts, selection, summaries, incremental files and resume."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from hooked_video import flow, knockout
from hooked_video.data import Sample
from hooked_video.runtime.store import ResultsMismatchError, load_results


@pytest.fixture(scope="module")
def llava(deep_paths):
    from hooked_video import HookedVideoLLM

    return HookedVideoLLM.from_pretrained(deep_paths["llava_next_video"])


def make_samples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Sample(id=f"s{i}", video=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), question="what happens first ?",
               options=["the ball falls", "the cup moves"], answer=i % 2, task=f"task{i // 2 % 2}")
        for i in range(n)
    ]  # fmt: skip


class Counter:
    """Counts vision-encoder calls and language-model batch items with plain PyTorch hooks."""

    def __init__(self, model):
        hf = model.hf_model
        self.vision = self.lm_items = 0
        self.handles = [
            hf.model.vision_tower.register_forward_hook(self._count_vision),
            hf.model.language_model.register_forward_hook(self._count_lm, with_kwargs=True),
        ]

    def _count_vision(self, *args):
        self.vision += 1

    def _count_lm(self, module, args, kwargs, output):
        self.lm_items += kwargs["inputs_embeds"].shape[0]

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("engine", ["hooks", "fast"])
def test_pass_counts_and_vision_runs_once_per_sample(llava, engine):
    samples, targets = make_samples(3), ["cross-frame", "vql-to-ql"]
    counter = Counter(llava)
    try:
        df = flow.sweep(llava, samples, targets=targets, window=3, select="all", num_frames=None, engine=engine,
                        progress=False)  # fmt: skip
    finally:
        counter.remove()
    n_layers, n_conditions = llava.cfg.n_layers, 1 + 4
    assert counter.vision == len(samples)  # not once per pass
    # the hook path runs one language-model pass per knockout; the engine one traced baseline
    # per sample and then only the decoder layers it needs
    per_sample = 1 + n_conditions * n_layers if engine == "hooks" else 1
    assert counter.lm_items == len(samples) * per_sample
    assert len(df) == len(samples) * n_conditions * n_layers
    assert not df.duplicated(list(flow.ROW_KEY)).any()


@pytest.fixture(scope="module")
def prefers_a(deep_paths):
    """A model whose output layer favours the letter A: samples with answer 0 are answered
    correctly, the others wrongly (a random model alone never picks a letter)."""
    from hooked_video import HookedVideoLLM

    model = HookedVideoLLM.from_pretrained(deep_paths["llava_next_video"])
    letter_a = model.tokenizer.convert_tokens_to_ids("A")

    def favour_a(module, args, output):
        output[..., letter_a] += 12.0
        return output

    model.hf_model.lm_head.register_forward_hook(favour_a)
    return model


def test_selection_and_accuracy_under_knockout(prefers_a):
    llava, samples = prefers_a, make_samples(4)
    all_rows = flow.sweep(llava, samples, targets=["cross-frame"], window=3, select="all", num_frames=None, progress=False)
    baseline = pd.DataFrame(all_rows.attrs["baseline"])
    assert len(baseline) == 4 and set(baseline.columns) >= {"correct", "p_pred", "p_gt", "pred_token"}
    for select, want in (("correct", True), ("wrong", False)):
        df = flow.sweep(llava, samples, targets=["cross-frame"], window=3, select=select, num_frames=None, progress=False)
        assert set(df.sample_id) == set(baseline[baseline.correct == want].sample_id)
    assert baseline.correct.tolist() == [True, False, True, False]
    correct = flow.sweep(llava, samples, targets=["cross-frame"], window=3, num_frames=None, progress=False)
    for table in (flow.accuracy_under_knockout(correct), flow.accuracy_under_knockout(all_rows)):
        assert set(table.task) == {"task0", "task1"}
        for task, group in table.groupby("task"):
            base_acc = baseline[baseline.task == task].correct.mean()
            assert base_acc == 0.5  # each task holds one right and one wrong baseline
            assert (group.baseline_accuracy == base_acc).all()
            assert (group.accuracy <= base_acc + 1e-12).all()
        # an independent count for one cell: knocked-out answers, wrong baselines counted as wrong
        row = table[(table.layer == 0) & (table.task == "task0")].iloc[0]
        knocked = all_rows[(all_rows.layer == 0) & (all_rows.task == "task0")].set_index("sample_id").correct
        base = baseline[baseline.task == "task0"].set_index("sample_id").correct
        assert row.accuracy == pytest.approx((knocked & base.loc[knocked.index]).mean())


def test_accuracy_counts_a_wrong_baseline_as_wrong_even_if_knockout_fixes_it():
    rows = pd.DataFrame({"sample_id": ["a", "b"], "target": "t", "condition": "c", "layer": 0,
                         "correct": [False, True]})  # fmt: skip
    baseline = [{"sample_id": "a", "task": "x", "correct": True}, {"sample_id": "b", "task": "x", "correct": False}]
    table = flow.accuracy_under_knockout(rows, baseline)
    assert table.accuracy.tolist() == [0.0] and table.baseline_accuracy.tolist() == [0.5]


def test_summary_mean_and_bootstrap_ci():
    df = pd.DataFrame({"target": "t", "condition": "c", "layer": [0] * 50 + [1] * 50,
                       "rel_change": np.r_[np.full(50, -10.0), np.linspace(-20, 0, 50)]})  # fmt: skip
    summary = flow.summarize(df)  # no task column: pooled
    first, second = summary.iloc[0], summary.iloc[1]
    assert first["mean"] == -10 and first.ci_low == -10 and first.ci_high == -10 and first.n == 50
    assert second.ci_low < second["mean"] < second.ci_high
    assert second["mean"] == pytest.approx(-10)
    assert 1 < second.ci_high - second.ci_low < 8  # sd 5.9 / sqrt(50) ~ 0.83; 95% ~ 3.3 wide


def test_summary_intervals_are_each_groups_own_bootstrap():
    """The summary's interval of every group is ``bootstrap_ci`` of that group's values alone (groups of
    several sizes, a missing value, groups in order of first appearance), as a loop over groups gives it."""
    rng = np.random.default_rng(3)
    rows = [{"task": task, "target": "t", "condition": condition, "layer": layer, "rel_change": rng.normal(-5, 10)}
            for task, n in (("b", 7), ("a", 3)) for condition in ("y", "x") for layer in (2, 0, 1) for _ in range(n)]
    df = pd.DataFrame(rows)
    df.loc[5, "rel_change"] = np.nan  # a group with a missing value: its interval is NaN, its mean skips it
    summary = flow.summarize(df, n_boot=200, seed=4)
    assert list(summary.task.unique()) == ["b", "a"] and list(summary.condition.unique()) == ["y", "x"]
    for _, row in summary.iterrows():
        values = df[(df.task == row.task) & (df.condition == row.condition) & (df.layer == row.layer)].rel_change
        low, high = flow.bootstrap_ci(values.to_numpy(), n_boot=200, seed=4)
        assert row.n == len(values) and row["mean"] == pytest.approx(values.mean())
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), nan_ok=True)
    assert summary.ci_low.isna().sum() == 1
    assert flow.summarize(df.iloc[:0]).empty


def test_custom_conditions_and_layers(llava):
    custom = {"my-target": {"video->last": lambda tm: knockout.between(tm.video, tm.last, tm)}}
    df = flow.sweep(llava, make_samples(1), targets=[custom, "cross-frame"], layers=[1, 2], window=1,
                    select="all", num_frames=None, progress=False)  # fmt: skip
    assert set(zip(df.target, df.condition)) == {("my-target", "video->last"), ("cross-frame", "cross-frame")}
    assert sorted(df.layer.unique()) == [1, 2]
    assert (df.window_start == df.layer).all() and (df.window_end == df.layer).all()
    with pytest.raises(KeyError, match="unknown target"):
        flow.sweep(llava, make_samples(1), targets=["nope"], progress=False)


def test_results_folder_refuses_other_settings(llava, tmp_path):
    flow.sweep(llava, make_samples(1), targets=["cross-frame"], window=3, select="all", out=tmp_path,
               num_frames=None, progress=False)  # fmt: skip
    with pytest.raises(ResultsMismatchError, match="other settings"):
        flow.sweep(llava, make_samples(1), targets=["cross-frame"], window=5, select="all", out=tmp_path,
                   num_frames=None, progress=False)  # fmt: skip
    assert len(flow.load(tmp_path)) == llava.cfg.n_layers


KILLED_RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from kill_switch import kill_after
    from hooked_video import HookedVideoLLM, flow
    from test_flow import make_samples
    model = HookedVideoLLM.from_pretrained({model!r})
    kill_after(model, {kill_at})
    flow.sweep(model, make_samples(3), targets=["cross-frame", "vql-to-ql"], window=3, select="all",
               out={out!r}, batch_size=1, num_frames=None, progress=False)
    """
)


def run_sweep_process(model_path, out, kill_at):
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), model=str(model_path), out=str(out), kill_at=kill_at)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_killed_sweep_resumes_to_exactly_the_uninterrupted_rows(llava, deep_paths, tmp_path):
    reference = flow.sweep(llava, make_samples(3), targets=["cross-frame", "vql-to-ql"], window=3,
                           select="all", batch_size=1, num_frames=None, progress=False)  # fmt: skip
    out = tmp_path / "run"
    killed = run_sweep_process(deep_paths["llava_next_video"], out, kill_at=12)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = load_results(out)
    assert 0 < len(partial) < len(reference)
    resumed = run_sweep_process(deep_paths["llava_next_video"], out, kill_at=0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = flow.load(out)
    key = list(flow.ROW_KEY)
    assert not final.duplicated(key).any()
    expected = reference.sort_values(key).reset_index(drop=True)
    got = final.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert len(final.attrs["baseline"]) == 3


def test_summaries_are_in_layer_order_whatever_order_the_sweep_ran():
    """An inverse window runs its lowest layers last; curves must still go from layer 0 up."""
    layers = [2, 3, 0, 1]
    rows = [{"sample_id": f"s{i}", "task": "t", "target": "vql-to-ql", "condition": c, "layer": l,
             "rel_change": -float(l), "correct": True}
            for c in ("video->question", "video->last") for l in layers for i in range(2)]  # fmt: skip
    df = pd.DataFrame(rows)
    df.attrs["baseline"] = [{"sample_id": f"s{i}", "task": "t", "correct": True} for i in range(2)]
    summary = flow.summarize(df, n_boot=10)
    assert summary.condition.tolist() == ["video->question"] * 4 + ["video->last"] * 4  # first-appearance order kept
    assert summary.layer.tolist() == [0, 1, 2, 3] * 2
    assert summary["mean"].tolist() == [0.0, -1.0, -2.0, -3.0] * 2
    accuracy = flow.accuracy_under_knockout(df)
    assert accuracy.layer.tolist() == [0, 1, 2, 3] * 2


def test_a_sweep_that_selects_nothing_says_which_model_and_what_to_pass(deep, deep_prompt):
    """No sample answered as ``select`` asks: one warning naming the model and the option that exists."""
    baseline = flow.sweep(deep, [deep_prompt], targets=["cross-frame"], window=1, select="all", progress=False)
    correct = baseline.attrs["baseline"][0]["correct"]
    select = "wrong" if correct else "correct"  # the selection this sample fails
    with pytest.warns(UserWarning, match=rf"{deep.cfg.model_name} answered none of the 1 samples .*select='all'"):
        df = flow.sweep(deep, [deep_prompt], targets=["cross-frame"], window=1, select=select, progress=False)
    assert df.empty
