"""PLLaVA: the format of the paper's LLaVA-NeXT-Video-FT checkpoints, as transformers classes.

A CLIP ViT encodes every frame; the hidden state of ``vision_feature_layer`` (-2) without its
CLS token goes through the 2-layer projector; the (frames, 24, 24) feature volume is average
pooled to ``pooling_shape`` (T, h, w) (``nn.AdaptiveAvgPool3d``), and the T*h*w tokens, in
(T, H, W) order, replace the video placeholders of the prompt. Fewer input frames than
``num_frames`` are repeated up to it, as the released model does.

Checkpoints keep the transformers 4.x llava key layout (``vision_tower.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``) and a
``config.json`` of model_type ``llava`` with the pooling fields; both that layout and the current
one load. The classes are registered with the Auto classes under model_type ``pllava``.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from jaxtyping import Float
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, LlavaConfig
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llava.modeling_llava import LlavaForConditionalGeneration, LlavaModel


@strict
class PllavaConfig(LlavaConfig):
    """``LlavaConfig`` plus the pooling fields of the PLLaVA format.

    Args:
        pooling_shape: (T, h, w) the video feature volume is pooled to.
        frame_shape: (H, W) patch grid of one frame (336 px / 14 = 24 for CLIP ViT-L/14-336).
        num_frames: frames the model expects; fewer are repeated up to it.
        pooling_method: "avg" (the only one the released models use).
        use_pooling: pool the video features (always, for video).
    """

    model_type = "pllava"
    pooling_method: str = "avg"
    pooling_shape: list[int] | tuple[int, int, int] = (8, 12, 12)
    frame_shape: list[int] | tuple[int, int] | None = None
    num_frames: int = 8
    use_pooling: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.frame_shape is None:
            side = self.vision_config.image_size // self.vision_config.patch_size
            self.frame_shape = (side, side)
        if self.pooling_method != "avg":
            raise ValueError(f"pooling_method {self.pooling_method!r} is not supported; the PLLaVA models use 'avg'")


class PllavaModel(LlavaModel):
    """LlavaModel whose video features are pooled in (T, H, W)."""

    config_class = PllavaConfig

    def __init__(self, config: PllavaConfig) -> None:
        super().__init__(config)
        self.pooling = nn.AdaptiveAvgPool3d(tuple(config.pooling_shape))

    def get_video_features(self, pixel_values_videos: Float[torch.Tensor, "batch frames 3 H W"]) -> Float[torch.Tensor, "batch tokens d"]:
        """Projected, pooled video features: (batch, T*h*w, d_model) in (T, H, W) order."""
        batch, frames = pixel_values_videos.shape[:2]
        config = self.config
        if frames < config.num_frames:  # the released model repeats frames up to num_frames
            multiplier = config.num_frames // frames + 1
            pixel_values_videos = pixel_values_videos.repeat_interleave(multiplier, dim=1)[:, : config.num_frames]
            frames = config.num_frames
        outputs = self.vision_tower(pixel_values_videos.flatten(0, 1), output_hidden_states=True, return_dict=True)
        selected = outputs.hidden_states[config.vision_feature_layer]
        if config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        features = self.multi_modal_projector(selected)  # (batch * frames, h * w, d)
        h, w = config.frame_shape
        volume = features.reshape(batch, frames, h, w, -1).permute(0, 4, 1, 2, 3)  # (batch, d, frames, h, w)
        return self.pooling(volume).flatten(2).transpose(1, 2)

    def forward(self, input_ids=None, pixel_values_videos=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, **kwargs):  # fmt: skip
        """Language-model outputs, with pooled video features in place of the video placeholders."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values_videos is not None:
            if input_ids is None:
                raise ValueError("video inputs need input_ids to locate the video placeholders")
            features = self.get_video_features(pixel_values_videos).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = input_ids == self.config.image_token_index
            if int(mask.sum()) != features.shape[0] * features.shape[1]:
                raise ValueError(f"the prompt has {int(mask.sum())} video placeholders but the video gives "
                                 f"{features.shape[0] * features.shape[1]} features")  # fmt: skip
            inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], features.reshape(-1, features.shape[-1]))
        return self.language_model(attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                                   inputs_embeds=inputs_embeds, **kwargs)  # fmt: skip


class PllavaForConditionalGeneration(LlavaForConditionalGeneration):
    """The PLLaVA video model with its language-model head."""

    config_class = PllavaConfig
    _keys_to_ignore_on_load_unexpected = [r"image_newline"]  # llava-v1.6 checkpoints carry one

    def __init__(self, config: PllavaConfig) -> None:
        super().__init__(config)
        self.model = PllavaModel(config)
        self.post_init()

    def forward(self, input_ids=None, pixel_values_videos=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, logits_to_keep: int = 0, pixel_values=None, past_key_values=None,
                **kwargs) -> CausalLMOutputWithPast:  # fmt: skip
        """Logits (the last ``logits_to_keep`` positions, all when 0) of a video (or image) prompt.
        ``past_key_values`` is the KV cache under its former name (TransformerLens' ``generate``
        passes it so; transformers' own models rename it to ``cache``)."""
        cache = cache if cache is not None else past_key_values
        if pixel_values is not None:  # images: each a one-frame video, repeated to num_frames as released
            if pixel_values_videos is not None:
                raise ValueError("give either pixel_values (images) or pixel_values_videos, not both")
            pixel_values_videos = pixel_values[:, None]
        kwargs.pop("image_sizes", None)
        outputs = self.model(input_ids=input_ids, pixel_values_videos=pixel_values_videos, attention_mask=attention_mask,
                             position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds, **kwargs)  # fmt: skip
        hidden = outputs.last_hidden_state
        hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        return CausalLMOutputWithPast(logits=self.lm_head(hidden), cache=outputs.cache, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions)  # fmt: skip

    def prepare_inputs_for_generation(self, *args, pixel_values_videos=None, is_first_iteration=False, **kwargs):
        """Generation inputs; the video goes only to the first step."""
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):  # the video only where its placeholders are
            inputs["pixel_values_videos"] = pixel_values_videos
        return inputs


def register() -> None:
    """Register the classes with the Auto classes and the legacy-layout key renaming (idempotent)."""
    try:
        AutoConfig.register(PllavaConfig.model_type, PllavaConfig)
        AutoModelForImageTextToText.register(PllavaConfig, PllavaForConditionalGeneration)
    except ValueError:  # already registered
        pass
    for cls, like in ((PllavaForConditionalGeneration, "llava"), (PllavaModel, "LlavaModel")):
        if get_checkpoint_conversion_mapping(cls.__name__) is None:
            register_checkpoint_conversion_mapping(cls.__name__, get_checkpoint_conversion_mapping(like))


register()
