"""LLaVA-family adapters: LLaVA-NeXT-Video (new), PLLaVA (new) and LLaVA-OneVision (native, eager fix).

LLaVA-NeXT-Video has the module tree of LLaVA-NeXT plus a parameter-free 2x2 average pooler at
``model.vision_resampler`` that runs between the vision tower and the projector, so the pooled
per-frame grid is what ``vision_projector.hook_in`` sees. The pooler is deliberately not mapped
as a component: it has no weights, and TransformerLens' component benchmark only knows the
top-level names ``vision_encoder``/``vision_projector``.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.supported_architectures.llava import LlavaArchitectureAdapter
from transformer_lens.model_bridge.supported_architectures.llava_next import (
    LlavaNextArchitectureAdapter,
)
from transformer_lens.model_bridge.supported_architectures.llava_onevision import (
    LlavaOnevisionArchitectureAdapter,
)


class LlavaNextVideoArchitectureAdapter(LlavaNextArchitectureAdapter):
    """``LlavaNextVideoForConditionalGeneration``: LLaVA-NeXT's mapping; video pooled 2x2."""


class PllavaArchitectureAdapter(LlavaArchitectureAdapter):
    """``PllavaForConditionalGeneration`` (``hooked_video.model.formats.pllava``): LLaVA's mapping; the
    parameter-free 3D pooling runs after ``vision_projector``, so ``hook_video_embeds`` (not
    ``vision_projector.hook_out``) holds the pooled video tokens."""


class LlavaOnevisionVideoAdapter(LlavaOnevisionArchitectureAdapter):
    """TransformerLens' LLaVA-OneVision adapter, also switching a pre-built model to eager.

    The native ``prepare_model`` fixes weight tying but skips the base class, so a model handed
    in with SDPA attention keeps it and the vision attention hooks never fire.
    """

    def prepare_model(self, hf_model: Any) -> None:
        """The base preparation (the eager-attention switch the native adapter skips), then the native one."""
        ArchitectureAdapter.prepare_model(self, hf_model)
        super().prepare_model(hf_model)
