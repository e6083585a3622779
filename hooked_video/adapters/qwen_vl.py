"""Qwen-VL adapters: Qwen2-VL (new) and Qwen2.5-VL (native, with editable attention).

TransformerLens' Qwen2.5-VL adapter keeps HF's attention module, so ``hook_attn_scores`` is
only a read-only copy of the post-softmax pattern and knockout hooks would be ignored. With
transformers 5.x the M-RoPE sections are merged inside the rotary embedding and the attention
applies ordinary rotary, so TransformerLens' reimplemented ``PositionEmbeddingsAttentionBridge``
reproduces HF exactly and exposes pre-softmax, masked, editable scores. Both adapters use it.
Positions (M-RoPE ``get_rope_index``) are still computed by HF's forward from
``mm_token_type_ids`` and ``video_grid_thw``.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.model_bridge.generalized_components import (
    LinearBridge,
    PositionEmbeddingsAttentionBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.generalized_components.qwen3_5_vision_encoder import (
    Qwen3_5VisionBlockBridge,
    Qwen3_5VisionEncoderBridge,
)
from transformer_lens.model_bridge.supported_architectures.qwen2_5_vl import (
    Qwen2_5_VLArchitectureAdapter,
)


def _editable_attention(cfg: Any) -> PositionEmbeddingsAttentionBridge:
    projections = {name: LinearBridge(name=f"{name}_proj") for name in "qkvo"}
    return PositionEmbeddingsAttentionBridge(name="self_attn", config=cfg, submodules=projections)


class Qwen2_5_VLVideoAdapter(Qwen2_5_VLArchitectureAdapter):
    """Qwen2.5-VL with reimplemented (hookable, editable) text attention."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.component_mapping["blocks"].submodules["attn"] = _editable_attention(self.cfg)


class Qwen2VLArchitectureAdapter(Qwen2_5_VLVideoAdapter):
    """``Qwen2VLForConditionalGeneration``: Qwen2.5-VL's text side; LayerNorm vision blocks
    with an fc1/fc2 MLP and a ``PatchMerger`` at ``model.visual.merger``."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        mlp = GeneralizedComponent(
            name="mlp", submodules={"in": LinearBridge(name="fc1"), "out": LinearBridge(name="fc2")}
        )
        self.component_mapping["vision_encoder"] = Qwen3_5VisionEncoderBridge(
            name="model.visual",
            config=self.cfg,
            submodules={
                "pos_embed": GeneralizedComponent(name="rotary_pos_emb"),
                "blocks": Qwen3_5VisionBlockBridge(name="blocks", submodules={"mlp": mlp}),
            },
        )
