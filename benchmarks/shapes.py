"""Random-weight models with the real shapes of the paper's models, for benchmarks.

Each preset names an architecture built by ``hooked_video.zoo.tiny`` (so processor, tokenizer and
chat template are the real classes) and the sizes its config is scaled to. Weights are created
directly on the device in the benchmark dtype.

    model = build("pllava-7b", "cuda", torch.bfloat16)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

CLIP_L_336 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=336,
                  patch_size=14)  # fmt: skip
VICUNA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=32064, max_position_embeddings=4096)  # fmt: skip
VICUNA_13B = dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                  intermediate_size=13824, vocab_size=32064, max_position_embeddings=4096)  # fmt: skip

#: preset -> (tiny architecture, text sizes, vision sizes, extra config fields, frames)
PRESETS = {
    "llava-next-video-7b": ("llava_next_video", VICUNA_7B, CLIP_L_336, {}, 8),
    # the same with a 16k context, for 16-64 frame videos (144 tokens per frame)
    "llava-next-video-7b-long": ("llava_next_video", {**VICUNA_7B, "max_position_embeddings": 16384}, CLIP_L_336, {}, 8),
    "pllava-7b": ("pllava", VICUNA_7B, CLIP_L_336, {"pooling_shape": [8, 12, 12], "frame_shape": [24, 24], "num_frames": 8}, 8),
    "pllava-13b": ("pllava", VICUNA_13B, CLIP_L_336, {"pooling_shape": [8, 12, 12], "frame_shape": [24, 24], "num_frames": 8}, 8),
    "tiny": ("llava_next_video", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                      intermediate_size=128, vocab_size=1000), {}, {}, 4),
    "pllava-tiny": ("pllava", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                   intermediate_size=128, vocab_size=1000), {}, {"pooling_shape": [4, 2, 2]}, 4),
}  # fmt: skip


def config_folder(preset: str) -> tuple[Path, object]:
    """A folder with the preset's processor (real classes) and its scaled config."""
    from transformers import AutoConfig

    from hooked_video.loading import is_pllava, pllava_config
    from hooked_video.zoo.tiny import TinySizes, build_tiny

    arch, text, vision, extra, _ = PRESETS[preset]
    image, patch = vision.get("image_size", 32), vision.get("patch_size", 8)
    folder = build_tiny(arch, Path(tempfile.mkdtemp()) / preset, TinySizes(image_size=image, patch_size=patch, n_layers=1))
    config = AutoConfig.from_pretrained(folder)
    if is_pllava(config):
        config = pllava_config(config)
    for key, value in text.items():
        setattr(config.text_config, key, value)
    for key, value in vision.items():
        setattr(config.vision_config, key, value)
    for key, value in extra.items():
        setattr(config, key, value)
    config.text_config.head_dim = config.text_config.hidden_size // config.text_config.num_attention_heads
    return folder, config


def build_hf(preset: str, device: str, dtype: torch.dtype, attn: str = "eager"):
    """(HF model with random weights of the preset's shape, processor)."""
    import transformers

    from hooked_video.models import PllavaForConditionalGeneration, PllavaProcessor

    folder, config = config_folder(preset)
    arch = PRESETS[preset][0]
    torch.manual_seed(0)
    cls = PllavaForConditionalGeneration if arch == "pllava" else getattr(transformers, config.architectures[0])
    with torch.device(device):
        hf = cls._from_config(config, dtype=dtype, attn_implementation=attn)
    if arch == "pllava":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor = PllavaProcessor(image_processor=_clip(config), tokenizer=tokenizer, pooling_shape=config.pooling_shape)
    else:
        processor = transformers.AutoProcessor.from_pretrained(folder)
    return hf.eval(), processor


def _clip(config):
    from hooked_video.loading import clip_image_processor

    return clip_image_processor("/nonexistent", config.vision_config.image_size)


def build(preset: str, device: str, dtype: torch.dtype):
    """A HookedVideoLLM with random weights of the preset's shape."""
    from hooked_video import HookedVideoLLM

    hf, processor = build_hf(preset, device, dtype)
    return HookedVideoLLM.from_hf(hf, processor, model_name=f"random-{preset}")


def frames_for(preset: str, n_frames: int | None = None):
    import numpy as np

    n = n_frames or PRESETS[preset][4]
    size = PRESETS[preset][2].get("image_size", 32)
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
