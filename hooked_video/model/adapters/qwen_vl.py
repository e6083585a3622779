"""Qwen-VL adapters: Qwen2-VL (new), Qwen2.5-VL and Qwen3-VL (native, with editable attention).

TransformerLens' Qwen2.5-VL adapter keeps HF's attention module, so ``hook_attn_scores`` is
only a read-only copy of the post-softmax pattern and knockout hooks would be ignored. With
transformers 5.x the M-RoPE sections are merged inside the rotary embedding and the attention
applies ordinary rotary, so TransformerLens' reimplemented ``PositionEmbeddingsAttentionBridge``
reproduces HF exactly and exposes pre-softmax, masked, editable scores. Both adapters use it.
Positions (M-RoPE ``get_rope_index``) are still computed by HF's forward from
``mm_token_type_ids`` and ``video_grid_thw``. Qwen3-VL's attention adds per-head q/k RMS norms
(mapped as ``q_norm`` / ``k_norm``); its DeepStack features are added to the residual stream
at the video positions after the first decoder layers, between blocks: ``blocks.{i}.hook_out``
omits them, ``blocks.{i+1}.hook_in`` holds them.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.model_bridge.generalized_components import (
    LinearBridge,
    PositionEmbeddingsAttentionBridge,
    RMSNormalizationBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.generalized_components.qwen3_5_vision_encoder import (
    Qwen3_5VisionBlockBridge,
    Qwen3_5VisionEncoderBridge,
)
from transformer_lens.model_bridge.supported_architectures.qwen2_5_vl import (
    Qwen2_5_VLArchitectureAdapter,
)
from transformer_lens.model_bridge.supported_architectures.qwen3_vl import Qwen3VLArchitectureAdapter


def _editable_attention(cfg: Any, qk_norms: bool = False) -> PositionEmbeddingsAttentionBridge:
    submodules = {name: LinearBridge(name=f"{name}_proj") for name in "qkvo"}
    if qk_norms:
        submodules |= {name: RMSNormalizationBridge(name=name, config=cfg) for name in ("q_norm", "k_norm")}
    return PositionEmbeddingsAttentionBridge(name="self_attn", config=cfg, submodules=submodules)


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


class Qwen3VLVideoAdapter(Qwen3VLArchitectureAdapter):
    """Qwen3-VL with reimplemented (hookable, editable) text attention, q/k norms included."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.component_mapping["blocks"].submodules["attn"] = _editable_attention(self.cfg, qk_norms=True)
