"""Options that would be dropped and values that would be coerced are errors: placement options that
do not apply (checked before anything loads), knockout positions that are fractions or negative,
options that differ only by spaces."""

import time

import pytest
import torch

from hooked_video import InvalidInputError, knockout
from hooked_video.app.cli import main
from hooked_video.core.checks import check_options
from hooked_video.runtime.edges import KnockoutError


@pytest.mark.parametrize("extra, message", [
    (["--max-memory", "0=10GiB"], "--max-memory applies only to a model split with --device-map"),
    (["--gpus-per-process", "2"], "--gpus-per-process applies only to a model split with --device-map"),
    (["--device", "cuda", "--device-map", "auto"], "give either --device cuda (the whole model on one device) or --device-map"),
    (["--device-map", "auto", "--gpus-per-process", "2"], "--gpus-per-process applies under torchrun / accelerate launch"),
])  # fmt: skip
def test_placement_options_that_do_not_apply_fail_at_once(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    start = time.perf_counter()
    assert main(["info", "toy-video-ft", *extra]) == 2
    assert time.perf_counter() - start < 2  # before any model is loaded
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("positions, message", [
    ([1.7, 3.0], "positions must be whole numbers"), (torch.tensor([True, False]), "positions must be whole numbers"),
    ([-1], "position -1 is negative"), (torch.tensor([[2, -3]]), "position -3 is negative"),
])  # fmt: skip
def test_knockout_positions_are_not_coerced(positions, message):
    with pytest.raises(KnockoutError, match=message):
        knockout.between(positions, [5], 8)
    with pytest.raises(KnockoutError, match=message):
        knockout.within(positions, 8)


def test_whole_number_positions_of_any_integer_type_still_work():
    expected = knockout.between([1, 2], [5], 8).mask
    for same in (torch.tensor([1, 2], dtype=torch.int32), (1, 2), torch.tensor([[1], [2]])):
        assert torch.equal(knockout.between(same, [5], 8).mask, expected)
    assert not knockout.between([], [5], 8).mask.any()


def test_options_that_differ_only_by_spaces_are_refused():
    with pytest.raises(InvalidInputError, match=r"options\[0\] and options\[1\] are 'left' and 'left ', the same but for spaces"):
        check_options(["left", "left ", "right"])
    with pytest.raises(InvalidInputError, match="the same but for spaces"):
        check_options(["turn  left", "turn left"])
    assert check_options(["left", "right"]) == ["left", "right"]


def test_lens_keywords_as_a_word_list_print_their_table(tmp_path, capsys):
    """The documented list form of --keywords: the table is printed, not an error after all the work."""
    import json

    from hooked_video.data import synthetic
    from hooked_video.zoo.tiny import BASE_WORDS

    data = synthetic.generate(tmp_path / "data", per_task=1, progress=False)
    words = tmp_path / "words.json"
    words.write_text(json.dumps(sorted(set(BASE_WORDS) | {"left", "right", "up", "down", "red", "blue", "green"})))
    argv = ["lens", "--model", "toy-video-ft", "--data", str(data), "--task", "Moving Direction", "--variant", "embed",
            "--norm", "released", "--select", "all", "--keywords", str(words), "--min-count", "0", "--out", str(tmp_path / "o")]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "keywords: normalised keyword frequency per layer bin" in out, out  # the branch that failed
    assert "1-5" in out


def test_the_lens_names_unembedding_rows_past_the_tokenizer(tmp_path):
    """LLaVA-NeXT-7B unembeds 32064 rows for 32002 tokens: a top-1 on a padding row is named, not None."""
    import numpy as np
    from transformers import LlavaNextVideoForConditionalGeneration

    from hooked_video import HookedVideoLLM, lens
    from hooked_video.zoo.tiny import build_tiny

    folder = build_tiny("llava_next_video", tmp_path / "m")
    hf = LlavaNextVideoForConditionalGeneration.from_pretrained(folder)
    n_tokens = hf.config.text_config.vocab_size
    hf.resize_token_embeddings(n_tokens + 8)
    with torch.no_grad():
        scale = 1000 * hf.lm_head.weight[:n_tokens].std()  # padding rows of either sign: one wins every position
        hf.lm_head.weight[n_tokens:] = scale * torch.tensor([1.0, -1.0]).repeat(4)[:, None]
    hf.save_pretrained(folder)
    model = HookedVideoLLM.from_pretrained(folder)
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    prompt = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    result = lens.logit_lens(model, prompt, variant="unembed")
    tokens = result.tokens(result.n_layers - 1)
    assert all(t.startswith("<no token ") for t in tokens) and int(tokens[0].split()[-1][:-1]) >= n_tokens
    table = lens.keyword_frequencies(result, ["ball", "left"], model.tokenizer, min_count=0, select="all")
    assert list(table.raw.index) == ["ball", "left", "ALL"]


def test_frames_without_pixels_or_of_different_sizes_are_named():
    import numpy as np
    from PIL import Image

    from hooked_video import VideoError, load_video

    with pytest.raises(VideoError, match="frames of 0 x 0 pixels hold no image"):
        load_video(np.zeros((4, 0, 0, 3), np.uint8), num_frames=None)
    images = [Image.new("RGB", (32, 32)), Image.new("RGB", (16, 24))]
    with pytest.raises(VideoError, match=r"the PIL frames differ in size \(\(H, W\) \(24, 16\) and \(32, 32\)\)"):
        load_video(images, num_frames=None)
    assert load_video([Image.new("RGB", (8, 6))] * 3, num_frames=None).shape == (3, 6, 8, 3)


def test_patching_layers_and_positions_outside_the_model_are_named():
    import numpy as np

    from hooked_video import HookedVideoLLM, patching

    model = HookedVideoLLM.from_pretrained("toy-video-ft")
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    clean = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
    corrupted = patching.reverse_frames(model, clean)
    n = clean.n_positions
    with pytest.raises(ValueError, match=rf"layers \[99\] are not layers of this model \(0..{model.cfg.n_layers - 1}\)"):
        patching.patch_positions(model, clean, corrupted, [clean.token_map.frame(0)], layers=[0, 99], progress=False)
    with pytest.raises(ValueError, match=rf"position set 1 holds position\(s\) \[{n}\] outside the prompt's {n} positions"):
        patching.patch_positions(model, clean, corrupted, [[0], [n]], layers=[0], progress=False)
    with pytest.raises(ValueError, match="position set 0 holds torch.float32 values"):
        patching.patch_positions(model, clean, corrupted, [[1.5]], layers=[0], progress=False)


def test_another_models_tokenizer_and_words_it_lacks_are_named(tmp_path):
    """Ids past the embedding (a larger tokenizer of another model) are an error naming both sizes;
    question words that become ``<unk>`` (a tokenizer that lacks them) are a warning naming them."""
    import shutil

    import numpy as np

    from hooked_video import HookedVideoLLM
    from hooked_video.zoo.tiny import BASE_WORDS, build_tiny

    folder = build_tiny("llava_next_video", tmp_path / "m")
    other = build_tiny("llava_next_video", tmp_path / "other", words=[f"w{i}" for i in range(300)] + list(BASE_WORDS))
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model = HookedVideoLLM.from_pretrained(folder)
    with pytest.warns(UserWarning, match=r"the tokenizer has no token for \['zebra'\]: the model reads '<unk>'"):
        model.prepare(frames, "which way does the zebra move ?", ["left", "right"], answer=1, num_frames=None)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(other / name, folder / name)
    model = HookedVideoLLM.from_pretrained(folder)
    rows = model.hf_model.get_input_embeddings().num_embeddings
    with pytest.raises(InvalidInputError, match=rf"but the model's embedding has {rows} rows: the tokenizer \(\d+ tokens\) is not this model's"):
        model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)


def test_a_max_memory_too_small_for_the_model_is_named(capsys, monkeypatch):
    """accelerate leaves what does not fit on disk (meta tensors); the first forward would fail deep in torch."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["info", "toy-video-ft", "--device-map", "auto", "--max-memory", "cpu=10KiB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the model does not fit in the memory it was given" in err[0], err
    assert "weights (" in err[0] and "give more memory (--max-memory" in err[0]


@pytest.mark.parametrize("times, message", [
    ([0.0, 1.0], "frame_times has 2 values for 4 frames"), ("0 1 2 3", "must be a list of seconds"),
    ([0, 1, float("nan"), 3], "non-negative numbers of seconds, got nan"), ([0, 2, 1, 3], "must not decrease"),
])  # fmt: skip
def test_frame_times_are_checked(times, message):
    from hooked_video.core.checks import check_frame_times

    with pytest.raises(InvalidInputError, match=message):
        check_frame_times(times, 4)
    assert check_frame_times([0, 0.5, 1, 1.5], 4) == [0.0, 0.5, 1.0, 1.5]
