"""Logit lens, keyword frequencies and answer probability by layer, against plain HF computations."""

import pandas as pd
import pytest
import torch
from hf_reference import layer_inputs, load_hf

from hooked_video import lens
from hooked_video.model.tokens import TextSpans, build_token_map


@pytest.fixture(scope="module")
def hf_hidden():
    """Per arch: HF hidden states (embeddings, after each block, final-norm output) and logits."""
    return {}


def hf_states(arch, deep, deep_prompt, deep_paths, cache):
    if arch not in cache:
        hf = load_hf(deep_paths[arch], deep)
        with torch.no_grad():
            logits = hf(**deep_prompt.inputs).logits
        cache[arch] = (hf, layer_inputs(hf, deep_prompt.inputs), logits)
    return cache[arch]


@pytest.mark.parametrize("variant", lens.VARIANTS)
def test_lens_equals_direct_projection_of_hf_hidden_states(arch, deep, deep_prompt, deep_paths, hf_hidden, variant):
    """Entries 0..L-2 are the inputs of HF's decoder layers 0..L-2, entry L-1 is the final-norm
    output; projected with W_U (after the norm for "unembed") or W_E."""
    hf, inputs, _ = hf_states(arch, deep, deep_prompt, deep_paths, hf_hidden)
    tm, n_layers = deep_prompt.token_map, deep.cfg.n_layers
    result = lens.logit_lens(deep, deep_prompt, variant=variant, top_k=3)
    assert result.top_ids.shape == (n_layers, len(tm.video), 3)
    states = inputs[: n_layers - 1] + [inputs[n_layers]]
    norm = hf.model.language_model.norm
    for layer, state in enumerate(states):
        x = state[0, tm.video]
        last = layer == n_layers - 1
        with torch.no_grad():
            if variant == "embed":
                logits = x @ hf.get_input_embeddings().weight.T
            else:
                logits = hf.lm_head(x if last or variant == "unembed-raw" else norm(x))
        top = logits.float().softmax(-1).topk(3)
        torch.testing.assert_close(result.top_probs[layer], top.values, atol=1e-5, rtol=0)
        assert torch.equal(result.top_ids[layer, :, 0], top.indices[:, 0])


def test_unembed_lens_at_the_last_layer_is_the_models_output(deep, deep_prompt):
    positions = torch.arange(deep_prompt.n_positions)
    result = lens.logit_lens(deep, deep_prompt, positions=positions, variant="unembed", top_k=4)
    with torch.no_grad():
        top = deep(deep_prompt)[0].float().softmax(-1).topk(4)
    torch.testing.assert_close(result.top_probs[-1], top.values, atol=1e-5, rtol=0)
    assert torch.equal(result.top_ids[-1, :, 0], top.indices[:, 0])


def test_lens_result_layouts(deep, deep_prompt):
    result = lens.logit_lens(deep, deep_prompt, variant="embed", top_k=2)
    tm = deep_prompt.token_map
    ids, probs = result.video_grid()
    assert ids.shape == (deep.cfg.n_layers, *tm.grid_shape) == probs.shape
    t, h, w = 1, 0, 1 % tm.grid_shape[2]
    position = int(tm.grid[t, h, w])
    column = int((result.positions == position).nonzero())
    assert ids[2, t, h, w] == result.top_ids[2, column, 0]
    table = result.to_frame()
    assert len(table) == result.top_ids.numel()
    row = table[(table.layer == 2) & (table.position == position) & (table["rank"] == 0)].iloc[0]
    assert (row.frame, row.h, row.w) == (t, h, w) and row.token_id == int(ids[2, t, h, w])
    assert row.token == result.tokens(2)[column]


@pytest.mark.parametrize("norm", lens.NORMS)
def test_answer_probability_by_layer(arch, deep, deep_prompt, deep_paths, hf_hidden, norm):
    """Each norm mode against HF hidden states projected by hand: "released" normalises only the
    last layer's residual, "final" every layer's, "none" no layer's."""
    hf, inputs, logits = hf_states(arch, deep, deep_prompt, deep_paths, hf_hidden)
    letters, n_layers = deep_prompt.option_token_ids, deep.cfg.n_layers
    table = lens.answer_probability_by_layer(deep, deep_prompt, norm=norm)
    assert len(table) == n_layers * len(letters) and (table.norm == norm).all()
    assert table.groupby("layer").is_true.sum().eq(1).all()
    norm_module = hf.model.language_model.norm
    for layer in range(n_layers):
        # the residual after block l is the input of block l + 1; after the last block (before
        # the final norm) it is taken by a hook
        x = inputs[layer + 1][0, -1] if layer < n_layers - 1 else last_raw_residual(hf, deep_prompt)
        normed = norm in ("final",) or (norm == "released" and layer == n_layers - 1)
        with torch.no_grad():
            expected = hf.lm_head(norm_module(x) if normed else x).float().softmax(-1)[letters]
        got = table[table.layer == layer].sort_values("option").prob.to_numpy()
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float32), expected, atol=1e-6, rtol=0)
    if norm != "none":  # the last layer with the norm is the model's own answer
        final = logits[0, -1].float().softmax(-1)[letters]
        got = table[table.layer == n_layers - 1].sort_values("option").prob.to_numpy()
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float32), final, atol=1e-6, rtol=0)


def last_raw_residual(hf, prompt):
    """The residual after the last decoder layer, before the final norm (a plain PyTorch hook)."""
    seen = {}
    handle = hf.model.language_model.norm.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    try:
        with torch.no_grad():
            hf(**prompt.inputs)
    finally:
        handle.remove()
    return seen["x"][0, -1]


def test_answer_probability_norm_is_explicit(deep, deep_prompt):
    with pytest.raises(TypeError):
        lens.answer_probability_by_layer(deep, deep_prompt)
    with pytest.raises(ValueError, match="norm must be one of"):
        lens.answer_probability_by_layer(deep, deep_prompt, norm="yes")


# ----- keyword frequencies on a constructed case ------------------------------------------------
class WordTokenizer:
    """Splits keywords into 3-letter pieces ("grows" -> "gro", "ws"), like a sub-word tokenizer."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [text[i : i + 3] for i in range(0, len(text), 3)]}

    def decode(self, pieces):
        return "".join(pieces)


def constructed_results():
    """12 lens entries x 4 positions, two samples, top-1 strings chosen by hand."""
    tm = build_token_map(4, torch.arange(4), (1, 2, 2), torch.empty(0, dtype=torch.long), TextSpans(None, None), 1)
    vocab = {0: "▁gro", 1: "cat", 2: "▁red", 3: "zzz"}
    results = []
    for sample in range(2):
        top = torch.full((12, 4, 1), 3)
        top[0:5, 0] = 0  # "gro" in layers 0-4 at one position
        top[5, :] = 1  # "cat" at all 4 positions of layer 5 (the overlap layer of the quirk)
        top[11, 0:2] = 2  # "red" twice in layer 11
        results.append(lens.LensResult(top, torch.ones(12, 4, 1), torch.arange(4), tm, "embed", vocab, correct=True))
    return results


def test_keyword_counts_match_a_hand_count():
    results, tok = constructed_results(), WordTokenizer()
    freq = lens.keyword_frequencies(results, ["grows", "cat", "red", "dog"], tok, min_count=1)
    # per sample: gro 5 (layers 0-4), cat 4 (layer 5), red 2 (layer 11); two samples double it
    expected = pd.DataFrame({"1-5": [0.0, 10, 0], "6-10": [8.0, 0, 0], "11-12": [0.0, 0, 4]}, index=["cat", "gro", "red"])
    pd.testing.assert_frame_equal(freq.raw.drop("ALL"), expected, check_names=False)
    assert freq.raw.loc["ALL"].tolist() == [10, 8, 4]
    assert freq.dropped == ["dog"]
    assert freq.normalized.loc["gro"].tolist() == [1, 0, 0]
    assert freq.average.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    # the released code's overlapping bins count layer 5 in both "1-5" and "6-10"
    quirk = lens.keyword_frequencies(results, ["cat"], tok, min_count=1, overlapping_bins=True)
    assert quirk.raw.loc["cat"].tolist() == [8, 8, 0]
    # min-count filter: "red" has 4 hits in total
    assert "red" not in lens.keyword_frequencies(results, ["red", "grows"], tok, min_count=5).raw.index
    groups = lens.keyword_frequencies(results, {"spatial": ["cat", "red"], "temporal": ["grows"]}, tok, min_count=1)
    assert set(groups) == {"spatial", "temporal"} and groups["temporal"].raw.loc["gro"].sum() == 10


def test_layer_bins():
    assert {k: list(v) for k, v in lens.layer_bins(12, 5).items()} == {
        "1-5": [0, 1, 2, 3, 4], "6-10": [5, 6, 7, 8, 9], "11-12": [10, 11]}  # fmt: skip
    assert list(lens.layer_bins(12, 5, overlapping=True)["1-5"]) == [0, 1, 2, 3, 4, 5]


def test_bad_variant_is_refused(deep, deep_prompt):
    with pytest.raises(ValueError, match="variant must be one of"):
        lens.logit_lens(deep, deep_prompt, variant="W_U")
