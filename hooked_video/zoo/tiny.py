"""Build small random-weight Video LLMs of every supported architecture, with a real word-level
tokenizer and a real processor, saved as a Hugging Face folder that `from_pretrained` loads.

Used by the tests, the benchmarks (pass real sizes for real shapes) and the toy-model zoo::

    path = build_tiny("llava_next_video", "/tmp/tiny-lnv")
    model = HookedVideoLLM.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from hooked_video.zoo import tiny_families, tiny_paper
from hooked_video.zoo.tiny_parts import (
    BASE_WORDS, LLAVA_SPECIALS, QWEN_SPECIALS, VICUNA_TEMPLATE, TinySizes, chatml_template, text_config,
    word_level_tokenizer,
)  # fmt: skip

__all__ = ["AFTER_SAVE", "BASE_WORDS", "BUILDERS", "TinySizes", "build_tiny"]


def _llava_next_video(s: TinySizes, words):
    from transformers import (
        CLIPVisionConfig, LlamaConfig, LlavaNextImageProcessor, LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor,
    )  # fmt: skip

    tok = word_level_tokenizer(words, LLAVA_SPECIALS, bos_token="<s>", eos_token="</s>")
    v = tok.get_vocab()
    square = {"height": s.image_size, "width": s.image_size}
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(
            size={"shortest_edge": s.image_size}, crop_size=square, do_sample_frames=False
        ),
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": s.image_size}, crop_size=square,
            image_grid_pinpoints=[[s.image_size, s.image_size]],
        ),
        tokenizer=tok, chat_template=VICUNA_TEMPLATE, patch_size=s.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=s.vision_width, intermediate_size=2 * s.vision_width,
            num_hidden_layers=s.vision_layers, num_attention_heads=4, image_size=s.image_size,
            patch_size=s.patch_size, projection_dim=s.vision_width,
        ),
        text_config=LlamaConfig(**text_config(
            s, len(v), dict(pad_token_id=v["<pad>"], bos_token_id=v["<s>"], eos_token_id=v["</s>"])
        )),
        image_token_index=v["<image>"], video_token_index=v["<video>"],
        vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_grid_pinpoints=[[s.image_size, s.image_size]],
        spatial_pool_mode="average", spatial_pool_stride=2,
    )  # fmt: skip
    return LlavaNextVideoForConditionalGeneration(config), processor


def _llava_onevision(s: TinySizes, words):
    from transformers import (
        LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor, Qwen2Config, SiglipVisionConfig,
    )  # fmt: skip

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = word_level_tokenizer(words, specials, eos_token="<|im_end|>")
    v = tok.get_vocab()
    square = {"height": s.image_size, "width": s.image_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=square, image_grid_pinpoints=[[s.image_size, s.image_size]]
        ),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=square, do_sample_frames=False),
        num_image_tokens=(s.image_size // s.patch_size) ** 2,
        vision_feature_select_strategy="full", chat_template=chatml_template("<video>\n"),
        vision_aspect_ratio="anyres_max_9",
    )  # fmt: skip
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=s.vision_width, intermediate_size=2 * s.vision_width,
            num_hidden_layers=s.vision_layers, num_attention_heads=4, image_size=s.image_size,
            patch_size=s.patch_size, vision_use_head=False,
        ),
        text_config=Qwen2Config(**text_config(
            s, len(v), dict(pad_token_id=v["<pad>"], eos_token_id=v["<|im_end|>"], bos_token_id=None)
        )),
        image_token_index=v["<image>"], video_token_index=v["<video>"],
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[s.image_size, s.image_size]], vision_aspect_ratio="anyres_max_9",
    )  # fmt: skip
    return LlavaOnevisionForConditionalGeneration(config), processor


def _qwen_vl(s: TinySizes, words, version: str):
    import transformers as tf

    tok = word_level_tokenizer(words, QWEN_SPECIALS, eos_token="<|im_end|>")
    v = tok.get_vocab()
    grid = dict(patch_size=s.patch_size, temporal_patch_size=2, merge_size=2)
    size = {"shortest_edge": 16 * 16, "longest_edge": s.image_size * s.image_size}
    processor_cls = tf.Qwen2VLProcessor if version == "2" else tf.Qwen2_5_VLProcessor
    processor = processor_cls(
        image_processor=tf.Qwen2VLImageProcessor(**grid, size=size),
        tokenizer=tok,
        video_processor=tf.Qwen2VLVideoProcessor(
            **grid, size=size, do_sample_frames=False, cap_pixels_per_frame=False
        ),
        chat_template=chatml_template("<|vision_start|><|video_pad|><|vision_end|>"),
    )
    half = s.d_model // s.n_heads // 2  # rotary frequencies per head, split over (t, h, w)
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # Qwen's 16/24/24 at 64
    text = text_config(
        s, len(v), dict(pad_token_id=v["<pad>"], eos_token_id=v["<|im_end|>"], bos_token_id=None),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
    )
    vision = dict(
        depth=s.vision_layers, num_heads=4, patch_size=s.patch_size, spatial_merge_size=2,
        temporal_patch_size=2, in_channels=3,
    )  # fmt: skip
    if version == "2":
        vision.update(embed_dim=s.vision_width, mlp_ratio=2, hidden_size=s.d_model)
        config_cls, model_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration
    else:
        vision.update(
            hidden_size=s.vision_width, intermediate_size=2 * s.vision_width,
            out_hidden_size=s.d_model, window_size=2 * s.patch_size * 2,
            fullatt_block_indexes=[s.vision_layers - 1], tokens_per_second=4,
        )  # fmt: skip
        config_cls, model_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
    config = config_cls(
        vision_config=vision, text_config=text,
        image_token_id=v["<|image_pad|>"], video_token_id=v["<|video_pad|>"],
        vision_start_token_id=v["<|vision_start|>"], vision_end_token_id=v["<|vision_end|>"],
    )  # fmt: skip
    return model_cls(config), processor


BUILDERS: dict[str, Callable] = {
    "llava_next_video": _llava_next_video,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": lambda s, w: _qwen_vl(s, w, "2"),
    "qwen2_5_vl": lambda s, w: _qwen_vl(s, w, "2.5"),
    **tiny_paper.BUILDERS,  # PLLaVA (the paper's LLaVA-NeXT-Video-FT format) and the llava-v1.6 image baseline
    **tiny_families.BUILDERS,  # InternVL, VideoLLaMA3, Qwen3-VL and the paper's InternVL-chat / VideoLLaMA3 layouts
}
#: Rewrites applied after saving (the paper's formats are stored as their released checkpoints are).
AFTER_SAVE: dict[str, Callable] = {**tiny_paper.AFTER_SAVE, **tiny_families.AFTER_SAVE}


def build_tiny(
    arch: str,
    path: str | Path,
    sizes: TinySizes | None = None,
    words: Sequence[str] = BASE_WORDS,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build a random-weight model of `arch` (a key of BUILDERS) and save it with its processor.

    Returns the folder, loadable with ``HookedVideoLLM.from_pretrained(path)``.
    """
    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(BUILDERS)}")
    torch.manual_seed(seed)
    model, processor = BUILDERS[arch](sizes or TinySizes(), list(words))
    path = Path(path)
    model.to(dtype).save_pretrained(path)
    processor.save_pretrained(path)
    if arch in AFTER_SAVE:
        AFTER_SAVE[arch](model, path)
    return path

