"""Effective pathways: the union rule, edge accounting, random baseline, equivalence with HF masks."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from hf_reference import last_probs, load_hf

from hooked_video import knockout, pathways
from hooked_video.data import Sample
from hooked_video.runtime.store import load_results
from hooked_video.model.tokens import TextSpans, build_token_map


def paper_7b_layout():
    """The paper's LLaVA-NeXT-7B prompt (docs/method.md, "Effective pathways"): prefix 40 tokens, 8 x 12 x 12
    video tokens, question with options 55, tail 19, last 1: N = 1267."""
    q = 40 + 1152
    spans = TextSpans(question_block=(q, q + 55), question_text=(q + 2, q + 20), options=((q + 22, q + 37), (q + 38, q + 55)))
    return build_token_map(1267, torch.arange(40, q), (8, 12, 12), torch.empty(0, dtype=torch.long), spans, 8, answer=0)


def test_edge_accounting_on_the_paper_7b_layout_gives_42_percent():
    tm = paper_7b_layout()
    edges = pathways.PathwaySpec.preset("llava-next-7b-video-ft").layer_edges(tm, 32)
    counts = pathways.count_edges(edges, tm.n_positions)
    assert counts.baseline == 25_704_896 == 32 * 1267 * 1268 // 2
    assert counts.retained == 10_803_274  # the check docs/method.md gives for this layout
    assert counts.retention == pytest.approx(0.4203, abs=1e-4)  # the paper's 42%


def test_union_rule_against_a_pair_by_pair_construction():
    # N = 14: system 0-1, video 2-7 (3 frames of 1x2), question block 8-11 (text 8-9, options 10, 11), tail 12, last 13
    spans = TextSpans(question_block=(8, 12), question_text=(8, 10), options=((10, 11), (11, 12)))
    tm = build_token_map(14, torch.arange(2, 8), (3, 1, 2), torch.empty(0, dtype=torch.long), spans, 3, answer=0)
    spec = pathways.PathwaySpec(inter=(1, 1), v2q=(1, 2), q2l=(2, 3), n_layers=6)
    edges = spec.layer_edges(tm, 6)
    video, question, last = set(range(2, 8)), set(range(8, 12)), 13
    frame = {p: (p - 2) // 2 for p in video}
    for layer in range(6):
        expected = set()
        for t, s in itertools.product(range(14), repeat=2):
            if s > t:
                continue
            blocked = (t == last and s == last) or (t == last and s in video)
            blocked |= t in video and s in video and frame[s] < frame[t] and not 1 <= layer <= 1
            blocked |= t in question and s in video and not 1 <= layer <= 2
            blocked |= t == last and s in question and not 2 <= layer <= 3
            blocked |= t in video and s in video and layer > 2
            blocked |= t in question and s in question and layer > 3
            if blocked:
                expected.add((t, s))
        assert {tuple(p) for p in edges[layer].pairs().tolist()} == expected, layer
    # untyped tokens stay open: the tail (12) and system prompt (0, 1) are never blocked
    for e in edges.values():
        assert not e.mask[:, [0, 1, 12]].any() and not e.mask[12].any()


def test_from_sweep_rule():
    rows = []
    for layer in range(8):
        for target, condition, drop_layers in (("cross-frame", "cross-frame", {2, 4}), ("vql-to-ql", "video->question", {3}),
                                               ("vql-to-ql", "question->last", set())):  # fmt: skip
            for value in (-30.0, -20.0) if layer in drop_layers else (-1.0, 2.0):
                rows.append({"target": target, "condition": condition, "layer": layer, "window_end": min(layer + 2, 7), "rel_change": value})
    df = pd.DataFrame(rows)
    df.attrs["n_layers"] = 8  # as flow.sweep records it
    spec = pathways.PathwaySpec.from_sweep(df, threshold=10)
    assert spec == pathways.PathwaySpec(inter=(2, 4), v2q=(3, 3), q2l=None, n_layers=8)
    assert pathways.PathwaySpec.from_sweep(pd.DataFrame(rows), threshold=10).n_layers is None
    with pytest.raises(ValueError, match="no vql-to-ql"):
        pathways.PathwaySpec.from_sweep(pd.DataFrame(rows[:1]))


def test_ranges_are_validated():
    with pytest.raises(ValueError, match="first <= last"):
        pathways.PathwaySpec(inter=(14, 5), v2q=None, q2l=None)
    with pytest.raises(ValueError, match="n_layers - 1"):
        pathways.PathwaySpec(inter=(0, 40), v2q=None, q2l=None, n_layers=32)
    closed = pathways.PathwaySpec(None, None, None, n_layers=32)  # every family closed everywhere
    edges = closed.layer_edges(paper_7b_layout(), 32)
    assert all(torch.equal(edges[0].mask, e.mask) for e in edges.values())


def test_presets_name_their_checkpoint_and_warn_on_other_models(deep):
    spec = pathways.PathwaySpec.preset("videollama3-7b")
    assert (spec.inter, spec.v2q, spec.q2l, spec.n_layers) == ((0, 14), (5, 19), (20, 27), 28)
    assert spec.checkpoint == "DAMO-NLP-SG/VideoLLaMA3-7B" and spec.random_fraction == 0.42
    with pytest.warns(UserWarning, match="measured on DAMO-NLP-SG/VideoLLaMA3-7B \\(28 layers\\)"):
        spec.check_model(deep)  # a 4-layer model
    same_depth = pathways.PathwaySpec((0, 1), (1, 2), (2, 3), n_layers=deep.cfg.n_layers, family="videollama3")
    with pytest.warns(UserWarning, match="family 'videollama3'"):
        same_depth.check_model(deep)
    with pytest.raises(KeyError, match="unknown preset"):
        pathways.PathwaySpec.preset("gpt-5")


def python_hash32(x: int) -> int:
    """The random draw's 32-bit hash with Python integers (exact, no overflow to avoid)."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) % 2**32
    return (x >> 16) ^ x


def python_pair_keys(count: int, seed: int, layer: int) -> list[int]:
    base = python_hash32(seed ^ python_hash32(layer))
    first, second = python_hash32(base ^ 0x5BD1E995), python_hash32(base ^ 0x1B873593)
    return [python_hash32(python_hash32(i ^ first) ^ second) for i in range(count)]


def test_random_draw_written_out_and_the_same_on_every_device():
    """Per layer, the pairs at or after the video start with the smallest keys of a seeded 32-bit hash,
    recomputed with plain Python integers (independently of the int64 tensor arithmetic)."""
    q = 6 + 18
    spans = TextSpans(question_block=(q, q + 9), question_text=(q + 1, q + 4), options=((q + 5, q + 7), (q + 7, q + 9)))
    tm = build_token_map(q + 12, torch.arange(6, q), (2, 3, 3), torch.empty(0, dtype=torch.long), spans, 2, answer=0)
    n, start, fraction = tm.n_positions, 6, 0.3
    stated = int(fraction * n * (n + 1) / 2)
    drawn = pathways.random_layer_edges(tm, 4, fraction, seed=11)
    ranks = pathways.random_ranks(tm, 4, seed=11)
    pairs = (torch.tril_indices(n - start, n - start) + start).T.tolist()
    for layer in range(4):
        keys = python_pair_keys(len(pairs), 11, layer)
        assert len(set(keys)) == len(keys)  # a bijection: no ties to break
        order = sorted(range(len(pairs)), key=keys.__getitem__)
        expected = torch.zeros(n, n, dtype=torch.bool)
        expected[tuple(torch.tensor([pairs[i] for i in order[:stated]]).T)] = True
        assert torch.equal(drawn[layer].mask, expected)
        expected_ranks = torch.full((n, n), torch.iinfo(torch.int32).max, dtype=torch.int32)
        for place, i in enumerate(order):
            expected_ranks[pairs[i][0], pairs[i][1]] = place
        assert torch.equal(ranks[layer], expected_ranks)
    if torch.cuda.is_available():  # the same edges where the model is
        on_gpu = pathways.random_layer_edges(tm, 4, fraction, seed=11, device="cuda")
        assert all(torch.equal(on_gpu[layer].mask.cpu(), drawn[layer].mask) for layer in range(4))


def test_random_baseline_counts_region_and_seed():
    tm = paper_7b_layout()
    n, start = tm.n_positions, int(tm.video.min())
    fraction = 0.58
    a = pathways.random_layer_edges(tm, 3, fraction, seed=7)
    b = pathways.random_layer_edges(tm, 3, fraction, seed=7)
    c = pathways.random_layer_edges(tm, 3, fraction, seed=8)
    stated = int(fraction * n * (n + 1) / 2)
    for layer in range(3):
        mask = a[layer].mask
        assert int(mask.sum()) == stated  # exactly the stated number of edges
        assert not mask[:start].any() and not mask[:, :start].any()  # never the system prompt
        assert torch.equal(mask, b[layer].mask)  # reproducible from its seed
        assert not torch.equal(mask, c[layer].mask)
    assert not torch.equal(a[0].mask, a[1].mask)  # a fresh draw per layer
    knockout.hooks(a, None)  # no query row is fully blocked
    # several fractions from one order: the same draws, nested
    ranks = pathways.random_ranks(tm, 3, seed=7)
    smaller = pathways.random_layer_edges(tm, 3, 0.3, seed=7, ranks=ranks)
    for layer in range(3):
        assert torch.equal(pathways.random_layer_edges(tm, 3, fraction, seed=7, ranks=ranks)[layer].mask, a[layer].mask)
        assert torch.equal(smaller[layer].mask, pathways.random_layer_edges(tm, 3, 0.3, seed=7)[layer].mask)
        assert not (smaller[layer].mask & ~a[layer].mask).any()


def test_pruned_forward_equals_hf_with_explicit_per_layer_masks(arch, deep, deep_prompt, deep_paths):
    spec = pathways.PathwaySpec(inter=(0, 1), v2q=(1, 2), q2l=(2, 3), n_layers=4)
    edges = spec.layer_edges(deep_prompt.token_map, deep.cfg.n_layers)
    with torch.no_grad():
        got = deep.run_with_hooks(deep_prompt, fwd_hooks=knockout.hooks(edges))[:, -1].float().softmax(-1)
    hf = load_hf(deep_paths[arch], deep)
    expected = last_probs(hf, deep_prompt.inputs, {l: e.additive_mask() for l, e in edges.items()})
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, last_probs(hf, deep_prompt.inputs), atol=1e-4)  # the pruning matters
    row = pathways.evaluate_prompt(deep, deep_prompt, spec, random_baseline=True, seed=0, rule="option-argmax")
    letters = deep_prompt.option_token_ids
    assert row["pathways_pred"] == int(expected[0, letters].argmax())
    assert row["random_retained"] == pytest.approx(row["pathways_retained"], rel=1e-3)  # same pruned share
    # the random knockout ran beside the pathway's, as a second lane: the HF model with its drawn masks agrees
    drawn = pathways.random_layer_edges(deep_prompt.token_map, deep.cfg.n_layers, row["random_fraction"],
                                        pathways.sample_seed(0, "0"))  # fmt: skip
    random_expected = last_probs(hf, deep_prompt.inputs, {l: e.additive_mask() for l, e in drawn.items()})
    assert (row["random_pred"], row["random_token"]) == (int(random_expected[0, letters].argmax()), int(random_expected[0].argmax()))
    assert row["pathways_token"] == int(expected[0].argmax())


def make_samples(n):
    rng = np.random.default_rng(1)
    return [Sample(id=f"s{i}", video=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), question="what happens first ?",
                   options=["the ball falls", "the cup moves"], answer=i % 2, task=("count", "direction")[i // 2 % 2])
            for i in range(n)]  # fmt: skip


def test_evaluate_report_and_resume(deep_paths, tmp_path):
    from hooked_video import HookedVideoLLM

    model = HookedVideoLLM.from_pretrained(deep_paths["qwen2_vl"])
    spec = pathways.PathwaySpec(inter=(0, 1), v2q=(0, 2), q2l=(1, 3))
    report = pathways.evaluate(model, make_samples(4), spec, seed=3, num_frames=None, out=tmp_path / "run", rule="option-argmax",
                               progress=False)  # fmt: skip
    assert list(report.accuracy.columns) == ["full", "pathways", "random"]
    assert list(report.accuracy.index) == ["count", "direction", "overall"]
    rows = report.rows
    assert report.accuracy.loc["overall", "full"] == pytest.approx((rows.full_pred == rows.answer).mean())
    assert report.retention.loc["full", "retention"] == 1.0
    assert 0 < report.retention.loc["pathways", "retention"] < 1
    assert report.retention.loc["random", "retention"] == pytest.approx(report.retention.loc["pathways", "retention"], abs=1e-3)
    # the paper's rule: one r for the whole run, 1 - retained / baseline of the pathway pass
    r = 1 - rows.pathways_retained.sum() / rows.pathways_baseline.sum()
    assert (rows.random_fraction == r).all()
    fixed = pathways.evaluate(model, make_samples(2), spec, random_fraction=0.1, num_frames=None, progress=False,
                              out=tmp_path / "fixed")  # fmt: skip
    assert load_results(tmp_path / "fixed", "random").empty  # a fixed r: one pass, the random lane beside the pathway's
    stored = load_results(tmp_path / "fixed").set_index("sample_id").random_pred.to_dict()
    assert stored == fixed.rows.set_index("sample_id").random_pred.to_dict() and len(stored) == 2
    assert fixed.rule == "vocab-argmax" and "vocab-argmax" in repr(fixed)
    n = fixed.rows.n_positions.iloc[0]
    blocked_per_layer = (fixed.rows.random_baseline - fixed.rows.random_retained) / model.cfg.n_layers
    assert (blocked_per_layer == int(0.1 * n * (n + 1) / 2)).all()
    again = pathways.evaluate(model, make_samples(4), spec, seed=3, num_frames=None, out=tmp_path / "run", rule="option-argmax",
                              progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(again.rows, rows)
    assert len(load_results(tmp_path / "run")) == 4
