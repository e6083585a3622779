"""The 2025-26 families' video layouts: InternVL (transformers' ``Frame{i}:`` layout and the
paper's InternVL-chat single block), VideoLLaMA3 (timestamps, commas, token compression with
frames of different sizes) and Qwen3-VL (timestamps between temporal patches, DeepStack), also
with a byte-level BPE tokenizer of the Qwen kind trained here."""

import numpy as np
import pytest
import torch
from hf_reference import last_probs, load_hf

from hooked_video import HookedVideoLLM, flow, knockout, lens
from hooked_video.model.prompt import PAPER_SYSTEM_PROMPT
from hooked_video.zoo import tiny_families
from hooked_video.zoo.tiny import BASE_WORDS, build_tiny

Q, OPTIONS = "which way does the ball move ?", ["left", "right"]


def clip(n=4, seed=0, repeat=None):
    frames = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    if repeat is not None:  # frame `repeat` shows the frame before it again
        frames[repeat] = frames[repeat - 1]
    return frames


@pytest.fixture(scope="module")
def videollama3(tmp_path_factory):
    return HookedVideoLLM.from_pretrained(build_tiny("video_llama_3", tmp_path_factory.mktemp("vl3") / "m"))


# ----- VideoLLaMA3: timestamps, commas and compressed frames ------------------------------------
def released_frame_ranges(prompt, tokenizer) -> list[list[int]]:
    """Frame groups as the released VideoLLaMA3 analysis cuts them: the vision span runs from the
    newline after the user turn's header to the newline after the video; frame 0 ends at the
    first comma, frame i starts at the comma before it."""
    ids = prompt.input_ids[0].tolist()
    newline, comma = tokenizer.convert_tokens_to_ids("\n"), tokenizer.convert_tokens_to_ids(",")
    start = ids.index(tokenizer.convert_tokens_to_ids("user")) + 2  # "<|im_start|>user\n"
    assert ids[start - 1] == newline
    end = ids.index(newline, start)
    commas = [i for i in range(start, end) if ids[i] == comma]
    bounds = [start, *commas, end]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def hand_built_cross_frame(n_positions, frames) -> torch.Tensor:
    mask = torch.zeros(n_positions, n_positions, dtype=torch.bool)
    for i, queries in enumerate(frames):
        for keys in frames[:i]:
            mask[torch.tensor(queries)[:, None], torch.tensor(keys)[None, :]] = True
    return mask


def test_videollama3_layout_follows_the_released_frame_split(videollama3):
    prompt = videollama3.prepare(clip(), Q, OPTIONS, answer=1, num_frames=None, fps=2.0)
    tm, tok = prompt.token_map, videollama3.tokenizer
    ranges = released_frame_ranges(prompt, tok)
    assert len(ranges) == tm.n_frames == 4 and tm.is_dense
    for i, positions in enumerate(ranges):
        assert tm.frame_group(i).tolist() == positions
        text = tok.decode(prompt.input_ids[0, tm.frame_text[tm.frame_of[tm.frame_text] == i]])
        assert text.replace(" ", "") == ("," if i else "") + f"Time{i / 2:.1f}s:"
    edges = knockout.cross_frame(tm)
    assert torch.equal(edges.mask, hand_built_cross_frame(prompt.n_positions, ranges))
    assert prompt.text.endswith("only give the best option.<|im_end|>\n<|im_start|>assistant\n")  # the paper's prompt


def test_compressed_frames_have_fewer_tokens_and_the_right_cross_frame_edges(videollama3, tmp_path):
    frames = clip(repeat=2)  # frame 2 repeats frame 1: compression keeps a token or so of it
    prompt = videollama3.prepare(frames, Q, OPTIONS, answer=0, num_frames=None,
                                 processor_kwargs={"use_token_compression": True})  # fmt: skip
    tm = prompt.token_map
    sizes = tm.frame_sizes
    assert sizes[2] < sizes[1] == sizes[0] and not tm.is_dense
    assert (tm.grid[2] >= 0).sum() == sizes[2]  # cells without a token are -1 in the grid
    ranges = released_frame_ranges(prompt, videollama3.tokenizer)
    edges = knockout.cross_frame(tm)
    assert torch.equal(edges.mask, hand_built_cross_frame(prompt.n_positions, ranges))
    # and the model itself agrees: hooked logits and a knockout equal the plain HF model's
    hf = load_hf(videollama3.hf_model.name_or_path, videollama3)
    with torch.no_grad():
        torch.testing.assert_close(videollama3(prompt), hf(**prompt.inputs).logits, atol=1e-4, rtol=0)
        knocked = videollama3.run_with_hooks(prompt, fwd_hooks=knockout.hooks(edges, [0, 1]))
    expected = last_probs(hf, prompt.inputs, {0: edges.additive_mask(), 1: edges.additive_mask()})
    torch.testing.assert_close(knocked[:, -1].float().softmax(-1), expected, atol=1e-5, rtol=0)
    lens_ids, _ = lens.logit_lens(videollama3, prompt, variant="embed").video_grid()
    assert (lens_ids[:, 2] == -1).sum() == lens_ids.shape[0] * (tm.tokens_per_frame - sizes[2])


# ----- InternVL ---------------------------------------------------------------------------------
def test_internvl_frame_text_belongs_to_its_frame(tmp_path):
    model = HookedVideoLLM.from_pretrained(build_tiny("internvl", tmp_path / "m"))
    prompt = model.prepare(clip(), Q, OPTIONS, answer=1, num_frames=None)
    tm, tok = prompt.token_map, model.tokenizer
    for i in range(tm.n_frames):  # each frame's "Frame{i}:" and its <img> / </img> markers
        text = tok.decode(prompt.input_ids[0, tm.frame_text[tm.frame_of[tm.frame_text] == i]])
        assert text.replace(" ", "").strip("\n") == f"Frame{i + 1}:<img></img>"
        group = tm.frame_group(i)
        assert tok.convert_ids_to_tokens(prompt.input_ids[0, group[[-len(tm.frame(i)) - 2, -1]]].tolist()) == ["<img>", "</img>"]
    assert len(tm.video_separators) == 0


def test_internvl_chat_uses_the_released_single_block_and_phi3_prompt(tmp_path):
    model = HookedVideoLLM.from_pretrained(build_tiny("internvl_chat", tmp_path / "m"))
    prompt = model.prepare(clip(8), Q, OPTIONS, answer=1, num_frames=None)
    expected = (f"{PAPER_SYSTEM_PROMPT}\n <|user|>\n<img><IMG_CONTEXT></img>\n <|user|>\nQuestion: {Q}\nOptions:\n"
                "(A) left\n(B) right \nOnly give the best option. <|assistant|>\nBest option:(")  # fmt: skip
    assert prompt.text == expected
    tm = prompt.token_map
    assert tm.n_frames == 8 and len(tm.frame_text) == 0 and len(tm.video_separators) == 2
    assert torch.equal(tm.video, torch.arange(int(tm.video[0]), int(tm.video[0]) + len(tm.video)))  # one block


# ----- Qwen3-VL: DeepStack ------------------------------------------------------------------------
def test_qwen3_deepstack_is_added_between_blocks_at_the_video_only(tmp_path):
    model = HookedVideoLLM.from_pretrained(build_tiny("qwen3_vl", tmp_path / "m"))
    prompt = model.prepare(clip(), Q, OPTIONS, answer=1, num_frames=None, fps=2.0)
    _, cache = model.run_with_cache(prompt, names_filter=lambda n: n in ("blocks.0.hook_out", "blocks.1.hook_in"))
    moved = (cache["blocks.1.hook_in"] - cache["blocks.0.hook_out"])[0].abs().amax(-1) > 0
    assert torch.equal(moved.nonzero().flatten(), prompt.token_map.video)
    for i in range(prompt.token_map.n_frames):
        text = model.tokenizer.decode(prompt.input_ids[0, prompt.token_map.frame_group(i)[:6]])
        assert text.replace(" ", "").startswith(f"<{(4 * i + 1) / 4:.1f}seconds>")  # mean time of the pair


# ----- a byte-level BPE tokenizer of the Qwen kind ---------------------------------------------
def byte_level_bpe(words, specials, **named):
    """A byte-level BPE (the GPT-2 / Qwen scheme) trained here on prompt-like text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(words), *tiny_families.FAMILY_WORDS, "Time 0.0s:, Time 12.5s:", "<0.5 seconds> <2.5 seconds>",
              "Frame1: Frame2:\n", "Question: Options:\n(A) (B) (C) Only give the best option. Best option:("]  # fmt: skip
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    core.train_from_iterator(corpus * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=None, pad_token="<pad>", **named)


@pytest.mark.parametrize("arch", ["qwen3_vl", "video_llama_3", "internvl"])
def test_spans_frames_and_letters_with_a_byte_level_bpe(arch, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_families, "family_tokenizer", byte_level_bpe)
    model = HookedVideoLLM.from_pretrained(build_tiny(arch, tmp_path / "m", words=BASE_WORDS))
    tok = model.tokenizer
    assert len(tok.tokenize(" which way")) < len(" which way")  # merges: a real BPE
    prompt = model.prepare(clip(), Q, OPTIONS, answer=1, num_frames=None, fps=2.0)
    tm, ids = prompt.token_map, prompt.input_ids[0]
    decode = lambda positions: tok.decode(ids[positions])  # noqa: E731
    assert decode(tm.question_without_options).strip() == Q
    assert decode(tm.true_option).strip() == "(B) right" and decode(tm.false_options).strip() == "(A) left"
    assert [tok.decode([i]) for i in prompt.option_token_ids] == ["A", "B"]
    assert bool((ids[tm.video] == model.family.video_token_id).all())
    for i in range(tm.n_frames):
        text = decode(tm.frame_text[tm.frame_of[tm.frame_text] == i]).replace(" ", "").replace("\n", "")
        expected = {"qwen3_vl": f"<{(4 * i + 1) / 4:.1f}seconds><|vision_start|><|vision_end|>",
                    "video_llama_3": ("," if i else "") + f"Time{i / 2:.1f}s:",
                    "internvl": f"Frame{i + 1}:<img></img>"}[arch]  # fmt: skip
        assert text == expected
    hf = load_hf(model.hf_model.name_or_path, model)
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), hf(**prompt.inputs).logits, atol=1e-4, rtol=0)


def test_engine_sweep_equals_the_hook_path_on_qwen3(tmp_path):
    """The sweep engine adds Qwen3-VL's DeepStack features itself when it recomputes rows."""
    model = HookedVideoLLM.from_pretrained(build_tiny("qwen3_vl", tmp_path / "m"))
    prompt = model.prepare(clip(), Q, OPTIONS, answer=1, num_frames=None, fps=2.0)
    kwargs = dict(targets=list(flow.TARGETS), window=1, select="all", progress=False)
    fast = flow.sweep(model, [prompt], engine="fast", **kwargs)
    hooks = flow.sweep(model, [prompt], engine="hooks", **kwargs)
    key = ["target", "condition", "layer"]
    fast, hooks = (d.sort_values(key).reset_index(drop=True) for d in (fast, hooks))
    np.testing.assert_allclose(fast.p_knockout, hooks.p_knockout, atol=1e-6)
    assert fast.rel_change.abs().max() > 1  # the knockouts do something
