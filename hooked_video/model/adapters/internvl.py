"""InternVL (``InternVLForConditionalGeneration``, new): InternViT at ``model.vision_tower``,
pixel shuffle and the MLP projector at ``model.multi_modal_projector``, a Llama-style decoder
(Qwen2, Llama, or the Phi-3 of Mini-InternVL with its fused projections split on load)."""

from __future__ import annotations

from hooked_video.model.adapters.decoder import VisionDecoderAdapter


class InternVLArchitectureAdapter(VisionDecoderAdapter):
    """``InternVLForConditionalGeneration``: InternViT, pixel shuffle 0.5, ``mlp1`` projector."""

    vision_encoder = "model.vision_tower"
    vision_projector = "model.multi_modal_projector"
