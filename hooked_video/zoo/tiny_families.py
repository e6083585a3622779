"""Tiny random-weight InternVL, VideoLLaMA3 and Qwen3-VL models (transformers classes and processors),
and the paper's checkpoint formats of two of them: Mini-InternVL in the InternVL-chat layout (Phi-3
LM) and VideoLLaMA3 in its official release layout, written after saving by ``AFTER_SAVE``.

Each builder is ``(sizes, words) -> (hf_model, processor)`` as in ``tiny.py``; the tokenizers hold
every word the processors write between frames ("Frame1", "Time", "0s", "seconds", "<", digits) and
keep "\\n" as a token, as the real tokenizers do. ``tiny.BUILDERS`` / ``tiny.AFTER_SAVE`` collect
this module's ``BUILDERS`` / ``AFTER_SAVE``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hooked_video.zoo.tiny_parts import QWEN_SPECIALS, TinySizes, chatml_template, text_config, word_level_tokenizer

#: Words the video processors write: InternVL "Frame{i}:", VideoLLaMA3 "Time 1.5s:" (-> "1" "." "5s"),
#: Qwen3-VL "<1.5 seconds>" (-> "<" "1" "." "5" "seconds" ">").
FAMILY_WORDS = [
    *(f"Frame{i}" for i in range(1, 65)), *(str(i) for i in range(100)), *(f"{i}s" for i in range(10)),
    "Time", "seconds", "<", ">", ".", ":", ",",
]  # fmt: skip
INTERNVL_SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
#: Phi-3's chat tokens and InternVL's image tokens (Mini-InternVL-Chat-4B).
PHI3_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|end|>", "<img>", "</img>", "<IMG_CONTEXT>"]  # fmt: skip


def family_tokenizer(words, specials, **named):
    """A word-level tokenizer over ``words`` + ``FAMILY_WORDS`` that, like the real ones, keeps "\\n"
    as a token (prompt spans are delimited by it: VideoLLaMA3's video, InternVL's ``</img>\\n``)."""
    from tokenizers import AddedToken

    tok = word_level_tokenizer([*words, *FAMILY_WORDS], specials, **named)
    tok.add_tokens([AddedToken("\n", special=False, normalized=False)])
    return tok


def randomise_constants(model: torch.nn.Module, std: float = 0.1) -> None:
    """Give random values to parameters that initialisation leaves constant (InternViT layer scales
    ``lambda_*`` at 0.1, the CLS token and position embeddings at zero), so tests see them."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lambda_" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith(("cls_token", "position_embeddings")):
                param.normal_(0.0, std)


def _internvl_vision(s: TinySizes) -> dict:
    return dict(hidden_size=s.vision_width, num_hidden_layers=s.vision_layers, num_attention_heads=4,
                intermediate_size=2 * s.vision_width, image_size=s.image_size, patch_size=s.patch_size,
                attention_bias=True, norm_type="layer_norm")  # fmt: skip


def _frame_tokens(s: TinySizes) -> int:
    side = s.image_size // s.patch_size
    if side % 2:
        raise ValueError(f"InternVL needs an even patch grid (pixel shuffle 0.5), got {side} x {side}")
    return side * side // 4


def internvl(s: TinySizes, words):
    """transformers' InternVL (Qwen2 LM): ``Frame{i}: <img><IMG_CONTEXT>*n</img>`` per frame, "\\n" between."""
    from transformers import (
        GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor,
        InternVLVideoProcessor,
    )  # fmt: skip

    names = dict(start_image_token="<img>", end_image_token="</img>", context_image_token="<IMG_CONTEXT>",
                 video_token="<video>")  # fmt: skip
    tok = family_tokenizer(words, INTERNVL_SPECIALS, eos_token="<|im_end|>", extra_special_tokens=names)
    v = tok.get_vocab()
    square = {"height": s.image_size, "width": s.image_size}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=square, crop_to_patches=False), tokenizer=tok,
        video_processor=InternVLVideoProcessor(size=square, do_sample_frames=False),
        image_seq_length=_frame_tokens(s), chat_template=chatml_template("<video>\n"),
    )  # fmt: skip
    text = text_config(s, len(v), dict(pad_token_id=v["<pad>"], eos_token_id=v["<|im_end|>"], bos_token_id=None),
                        model_type="qwen2", tie_word_embeddings=False)  # fmt: skip
    config = InternVLConfig(vision_config=_internvl_vision(s), text_config=text, image_token_id=v["<IMG_CONTEXT>"],
                            image_seq_length=_frame_tokens(s), tie_word_embeddings=False)  # fmt: skip
    model = InternVLForConditionalGeneration(config)
    randomise_constants(model)
    return model, processor


def _phi3_llm_config(s: TinySizes, v: dict) -> dict:
    """A Phi-3-mini-128k-style ``llm_config`` (long-rope "su" factors, a sliding window), tiny."""
    half = s.d_model // s.n_heads // 2
    gen = torch.Generator().manual_seed(0)
    short = (1.0 + 0.2 * torch.rand(half, generator=gen)).tolist()
    long = (1.0 + 8.0 * torch.rand(half, generator=gen)).tolist()
    return dict(
        architectures=["Phi3ForCausalLM"], model_type="phi3", vocab_size=len(v), hidden_size=s.d_model,
        intermediate_size=s.d_mlp, num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
        num_key_value_heads=s.n_heads, hidden_act="silu", max_position_embeddings=s.max_positions,
        original_max_position_embeddings=s.max_positions // 4, rms_norm_eps=1e-5, rope_theta=10000.0,
        rope_scaling={"type": "su", "short_factor": short, "long_factor": long}, sliding_window=2 * s.max_positions,
        bos_token_id=v["<s>"], eos_token_id=v["<|endoftext|>"], pad_token_id=v["<pad>"], tie_word_embeddings=False,
    )  # fmt: skip


def internvl_chat(s: TinySizes, words, llm: str = "phi3"):
    """Mini-InternVL-Chat (InternViT + Phi-3) as it is loaded: ``InternVLForConditionalGeneration`` with
    the Phi-3 LM as Mistral weights, and the paper's processor (``<img><IMG_CONTEXT></img>`` expanded to
    T * n context tokens). ``llm="internlm2"`` builds a Llama LM to be stored in the InternLM2 layout."""
    from transformers import InternVLForConditionalGeneration

    from hooked_video.model.formats.internvl_chat import chat_config, hf_config
    from hooked_video.model.formats.internvl_chat_processing import (
        CHATML_TEMPLATE, PHI3_CHAT_TEMPLATE, InternVLChatProcessor, released_image_processor,
    )  # fmt: skip

    if llm not in ("phi3", "internlm2"):
        raise ValueError(f"llm must be 'phi3' or 'internlm2', got {llm!r}")
    # like the Phi-3 (Llama sentencepiece) tokenizer, it prepends <s>
    tok = family_tokenizer(words, PHI3_SPECIALS, bos_token="<s>", eos_token="<|endoftext|>", add_bos_token=True)
    v = tok.get_vocab()
    llm_config = _phi3_llm_config(s, v)
    if llm == "internlm2":
        llm_config = dict(architectures=["InternLM2ForCausalLM"], model_type="internlm2", vocab_size=len(v),
                          hidden_size=s.d_model, intermediate_size=s.d_mlp, num_hidden_layers=s.n_layers,
                          num_attention_heads=s.n_heads, num_key_value_heads=s.n_kv_heads, bias=False,
                          rope_theta=10000.0, rope_scaling={"type": "dynamic", "factor": 2.0},
                          max_position_embeddings=s.max_positions, bos_token_id=v["<s>"],
                          eos_token_id=v["<|endoftext|>"], pad_token_id=v["<pad>"])  # fmt: skip
    vision = dict(hidden_size=s.vision_width, num_hidden_layers=s.vision_layers, num_attention_heads=4,
                  intermediate_size=2 * s.vision_width, hidden_act="gelu", qkv_bias=True, qk_normalization=False,
                  norm_type="layer_norm", layer_norm_eps=1e-6, image_size=s.image_size, patch_size=s.patch_size)  # fmt: skip
    raw = chat_config(vision, llm_config, template="phi3-chat" if llm == "phi3" else "internlm2-chat")
    config = hf_config(raw, v["<IMG_CONTEXT>"])
    model = InternVLForConditionalGeneration(config)
    randomise_constants(model)
    processor = InternVLChatProcessor(image_processor=released_image_processor(s.image_size), tokenizer=tok,
                                      image_seq_length=config.image_seq_length,
                                      chat_template=PHI3_CHAT_TEMPLATE if llm == "phi3" else CHATML_TEMPLATE)  # fmt: skip
    return model, processor


def video_llama_3(s: TinySizes, words, official: bool = False):
    """transformers' VideoLLaMA3: ``Time t.ts:`` + n tokens per frame, frames joined by ","; token
    compression on as in transformers (switch off with the processor kwarg ``use_token_compression``).
    ``official``: the video placeholder is ``<image>`` and compression is off, as the paper runs it."""
    from transformers import (
        VideoLlama3Config, VideoLlama3ForConditionalGeneration, VideoLlama3ImageProcessor, VideoLlama3Processor,
        VideoLlama3VideoProcessor,
    )  # fmt: skip

    from hooked_video.model.formats.videollama3_official import CHAT_TEMPLATE, OFFICIAL_IMAGE_TOKEN, vl3_sizes

    specials = [*QWEN_SPECIALS, OFFICIAL_IMAGE_TOKEN] if official else QWEN_SPECIALS
    named = {"extra_special_tokens": {"video_token": OFFICIAL_IMAGE_TOKEN}} if official else {}
    tok = family_tokenizer(words, specials, eos_token="<|im_end|>", **named)
    v = tok.get_vocab()
    video_token = OFFICIAL_IMAGE_TOKEN if official else "<|video_pad|>"
    processor = VideoLlama3Processor(
        image_processor=VideoLlama3ImageProcessor(**vl3_sizes(s.patch_size, 1)),
        video_processor=VideoLlama3VideoProcessor(**vl3_sizes(s.patch_size, 2), do_sample_frames=False,
                                                  use_token_compression=not official),
        tokenizer=tok, chat_template=CHAT_TEMPLATE if official else chatml_template(video_token + "\n"),
    )  # fmt: skip
    text = text_config(s, len(v), dict(pad_token_id=v["<pad>"], eos_token_id=v["<|im_end|>"], bos_token_id=None),
                        model_type="qwen2")  # fmt: skip
    config = VideoLlama3Config(
        vision_config=dict(hidden_size=s.vision_width, intermediate_size=2 * s.vision_width,
                           num_hidden_layers=s.vision_layers, num_attention_heads=4, patch_size=s.patch_size),
        text_config=text, image_token_id=v["<|image_pad|>"], video_token_id=v[video_token],
    )  # fmt: skip
    return VideoLlama3ForConditionalGeneration(config), processor


def qwen3_vl(s: TinySizes, words):
    """transformers' Qwen3-VL: per frame pair ``<t seconds><|vision_start|><|video_pad|>*n<|vision_end|>``
    inside the template's outer vision_start/end; DeepStack features from the first vision blocks."""
    from transformers import (
        Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )  # fmt: skip

    tok = family_tokenizer(words, QWEN_SPECIALS, eos_token="<|im_end|>")
    v = tok.get_vocab()
    grid = dict(patch_size=s.patch_size, temporal_patch_size=2, merge_size=2)
    factor = 2 * s.patch_size
    size = {"shortest_edge": factor * factor, "longest_edge": 64 * s.image_size * s.image_size}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**grid, size=size), tokenizer=tok,
        video_processor=Qwen3VLVideoProcessor(**grid, size=size, do_sample_frames=False, cap_pixels_per_frame=False),
        chat_template=chatml_template("<|vision_start|><|video_pad|><|vision_end|>"),
    )  # fmt: skip
    head_dim = s.d_model // s.n_heads
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = text_config(s, len(v), dict(pad_token_id=v["<pad>"], eos_token_id=v["<|im_end|>"], bos_token_id=None),
                        head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                            "mrope_section": mrope, "mrope_interleaved": True})  # fmt: skip
    deepstack = list(range(min(s.vision_layers, s.n_layers)))
    config = Qwen3VLConfig(
        vision_config=dict(depth=s.vision_layers + 1, hidden_size=s.vision_width, intermediate_size=2 * s.vision_width,
                           num_heads=4, out_hidden_size=s.d_model, patch_size=s.patch_size, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=deepstack),
        text_config=text, image_token_id=v["<|image_pad|>"], video_token_id=v["<|video_pad|>"],
        vision_start_token_id=v["<|vision_start|>"], vision_end_token_id=v["<|vision_end|>"],
    )  # fmt: skip
    return Qwen3VLForConditionalGeneration(config), processor


def _internvl_chat_layout(model, path: Path) -> None:
    from hooked_video.model.formats.internvl_chat import save_internvl_chat

    save_internvl_chat(model, path)


def _videollama3_layout(model, path: Path) -> None:
    from hooked_video.model.formats.videollama3_official import save_videollama3_official

    save_videollama3_official(model, path)


BUILDERS = {
    "internvl": internvl,
    "video_llama_3": video_llama_3,
    "qwen3_vl": qwen3_vl,
    "internvl_chat": internvl_chat,  # the paper's Mini-InternVL format, saved in the InternVL-chat layout
    "videollama3_official": lambda s, w: video_llama_3(s, w, official=True),  # saved in the official layout
}
AFTER_SAVE = {"internvl_chat": _internvl_chat_layout, "videollama3_official": _videollama3_layout}
