"""Adapters for models TransformerLens has no adapter for that pair a vision tower and projector
with a Llama-style decoder under ``model.language_model`` (RMSNorm, rotary, gated MLP, separate
q/k/v/o projections): InternVL and VideoLLaMA3.

Attention is TransformerLens' reimplemented ``PositionEmbeddingsAttentionBridge``, so
``hook_attn_scores`` holds editable pre-softmax scores (knockout works) and the fast path of
``hooked_video.runtime.attention`` can replace it when no hook needs the scores.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    BlockBridge,
    EmbeddingBridge,
    LinearBridge,
    PositionEmbeddingsAttentionBridge,
    RMSNormalizationBridge,
    RotaryEmbeddingBridge,
    UnembeddingBridge,
    VisionProjectionBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent


class VisionDecoderAdapter(ArchitectureAdapter):
    """A vision tower (``vision_encoder``) and projector (``vision_projector``) in front of a
    Llama-style decoder. Subclasses name the two vision modules."""

    vision_encoder = "model.vision_tower"
    vision_projector = "model.multi_modal_projector"
    text_biases = True  # q/k/v biases (Qwen2); the conversions only apply where they exist

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.is_multimodal = True
        self._set_rms_rotary_defaults()
        self.cfg.attn_implementation = "eager"
        self.cfg.default_prepend_bos = False
        self.weight_processing_conversions = {**self._qkvo_weight_conversions(include_biases=self.text_biases)}
        attention = PositionEmbeddingsAttentionBridge(
            name="self_attn", config=self.cfg, submodules={name: LinearBridge(name=f"{name}_proj") for name in "qkvo"}
        )
        self.component_mapping = {
            "vision_encoder": GeneralizedComponent(name=self.vision_encoder),
            "vision_projector": VisionProjectionBridge(name=self.vision_projector),
            "embed": EmbeddingBridge(name="model.language_model.embed_tokens"),
            "rotary_emb": RotaryEmbeddingBridge(name="model.language_model.rotary_emb"),
            "blocks": BlockBridge(
                name="model.language_model.layers",
                submodules={
                    "ln1": RMSNormalizationBridge(name="input_layernorm", config=self.cfg),
                    "ln2": RMSNormalizationBridge(name="post_attention_layernorm", config=self.cfg),
                    "attn": attention,
                    "mlp": self._gated_mlp(),
                },
            ),
            "ln_final": RMSNormalizationBridge(name="model.language_model.norm", config=self.cfg),
            "unembed": UnembeddingBridge(name="lm_head", config=self.cfg),
        }
