"""VideoLLaMA3 (``VideoLlama3ForConditionalGeneration``, new): a SigLIP-NaViT tower at
``model.vision_model`` (per-frame attention, 2x2 bilinear downsample), the ``readout`` projector
at ``model.projector`` and a Qwen2 decoder (q/k/v biases)."""

from __future__ import annotations

from hooked_video.model.adapters.decoder import VisionDecoderAdapter


class VideoLlama3ArchitectureAdapter(VisionDecoderAdapter):
    """``VideoLlama3ForConditionalGeneration``: SigLIP-NaViT, readout projector, Qwen2."""

    vision_encoder = "model.vision_model"
    vision_projector = "model.projector"
