"""Tiny random-weight models in the formats of the paper's checkpoints: PLLaVA (the released
layout: a ``llava`` config with pooling fields and transformers 4.x keys, or the current layout)
and a llava-v1.6 image model (``LlavaNextForConditionalGeneration``, the image baseline)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from hooked_video.zoo.tiny_parts import LLAVA_SPECIALS, VICUNA_TEMPLATE, TinySizes, text_config, word_level_tokenizer

#: transformers 5.x key prefix -> the transformers 4.x llava layout the released checkpoints use.
LEGACY_PREFIXES = (
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def _vision_and_text(s: TinySizes, vocab: dict):
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=s.vision_width, intermediate_size=2 * s.vision_width, num_hidden_layers=s.vision_layers,
        num_attention_heads=4, image_size=s.image_size, patch_size=s.patch_size, projection_dim=s.vision_width,
    )  # fmt: skip
    text = LlamaConfig(**text_config(s, len(vocab), dict(pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"],
                                                           eos_token_id=vocab["</s>"])))  # fmt: skip
    return vision, text


def pllava(s: TinySizes, words, pooling: tuple[int, int, int] | None = None):
    """A PLLaVA model and processor; pooling (T, h, w) defaults to 4 frames pooled 2x per side."""
    from transformers import CLIPImageProcessor

    from hooked_video.model.formats import PllavaConfig, PllavaForConditionalGeneration, PllavaProcessor

    tok = word_level_tokenizer(words, LLAVA_SPECIALS, bos_token="<s>", eos_token="</s>")
    v = tok.get_vocab()
    side = s.image_size // s.patch_size
    pooling = pooling or (4, max(1, side // 2), max(1, side // 2))
    vision, text = _vision_and_text(s, v)
    config = PllavaConfig(vision_config=vision, text_config=text, image_token_index=v["<image>"], pooling_shape=list(pooling),
                          frame_shape=[side, side], num_frames=pooling[0], vision_feature_layer=-2,
                          vision_feature_select_strategy="default")  # fmt: skip
    square = {"height": s.image_size, "width": s.image_size}
    image = CLIPImageProcessor(size={"shortest_edge": s.image_size}, crop_size=square)
    return PllavaForConditionalGeneration(config), PllavaProcessor(image_processor=image, tokenizer=tok, pooling_shape=pooling)


def llava_next_image(s: TinySizes, words):
    """A llava-v1.6-style image model (anyres processor, image newline parameter)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor

    tok = word_level_tokenizer(words, LLAVA_SPECIALS, bos_token="<s>", eos_token="</s>")
    v = tok.get_vocab()
    vision, text = _vision_and_text(s, v)
    square = {"height": s.image_size, "width": s.image_size}
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": s.image_size}, crop_size=square,
                                                image_grid_pinpoints=[[s.image_size, s.image_size]]),
        tokenizer=tok, chat_template=VICUNA_TEMPLATE, patch_size=s.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )  # fmt: skip
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=v["<image>"],
                             image_grid_pinpoints=[[s.image_size, s.image_size]], vision_feature_layer=-2,
                             vision_feature_select_strategy="default")  # fmt: skip
    return LlavaNextForConditionalGeneration(config), processor


def save_released_layout(model: torch.nn.Module, path: str | Path) -> Path:
    """Store a saved PLLaVA folder as the released checkpoints are: a ``llava`` config with the
    pooling fields, and the weights under their transformers 4.x llava names."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="llava", architectures=["PllavaForConditionalGeneration"])
    (path / "config.json").write_text(json.dumps(config, indent=2))
    legacy = {}
    for key, value in model.state_dict().items():
        for new, old in LEGACY_PREFIXES:
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        legacy[key] = value.contiguous()
    for file in path.glob("model*.safetensors*"):
        file.unlink()
    save_file(legacy, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def save_current_layout(model: torch.nn.Module, path: str | Path) -> Path:
    """Write the model's state dict under its transformers 5.x names (no key conversion)."""
    path = Path(path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


#: Builders of the paper's formats (``tiny.BUILDERS`` collects them): PLLaVA, saved in the released
#: layout, and a llava-v1.6 image model (the image baseline).
BUILDERS = {"pllava": pllava, "llava_next_image": llava_next_image}
AFTER_SAVE = {"pllava": save_released_layout}
