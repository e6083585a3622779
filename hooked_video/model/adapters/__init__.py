"""TransformerLens architecture adapters for the Video LLMs TransformerLens lacks or needs fixed.

``ADAPTERS`` maps an HF ``config.architectures[0]`` to the adapter ``HookedVideoLLM`` boots with.
The architectures TransformerLens has no adapter for are also published through the
``transformer_lens.architectures`` entry-point group (pyproject.toml) and, on import of this
package, registered with TransformerLens' factory so that a plain
``TransformerBridge.boot_transformers`` finds them too. Native adapters are never overridden
globally: the extended ones are only used by ``HookedVideoLLM``.
"""

from __future__ import annotations

from hooked_video.model.adapters.llava import (
    LlavaNextVideoArchitectureAdapter,
    LlavaOnevisionVideoAdapter,
    PllavaArchitectureAdapter,
)
from hooked_video.model.adapters.internvl import InternVLArchitectureAdapter
from hooked_video.model.adapters.qwen_vl import Qwen2_5_VLVideoAdapter, Qwen2VLArchitectureAdapter, Qwen3VLVideoAdapter
from hooked_video.model.adapters.videollama3 import VideoLlama3ArchitectureAdapter

ADAPTERS = {
    "LlavaNextVideoForConditionalGeneration": LlavaNextVideoArchitectureAdapter,
    "LlavaOnevisionForConditionalGeneration": LlavaOnevisionVideoAdapter,
    "Qwen2VLForConditionalGeneration": Qwen2VLArchitectureAdapter,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLVideoAdapter,
    "PllavaForConditionalGeneration": PllavaArchitectureAdapter,
    "InternVLForConditionalGeneration": InternVLArchitectureAdapter,
    "VideoLlama3ForConditionalGeneration": VideoLlama3ArchitectureAdapter,
    "Qwen3VLForConditionalGeneration": Qwen3VLVideoAdapter,
}

#: Architectures TransformerLens has no native adapter for (published as entry points).
NEW_ARCHITECTURES = ("LlavaNextVideoForConditionalGeneration", "Qwen2VLForConditionalGeneration",
                     "PllavaForConditionalGeneration", "InternVLForConditionalGeneration",
                     "VideoLlama3ForConditionalGeneration")  # fmt: skip


def register_with_transformer_lens() -> None:
    """Make ``TransformerBridge.boot_transformers`` find the new adapters (idempotent)."""
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.utilities.architectures import MULTIMODAL_ARCHITECTURES

    registry = factory.ArchitectureAdapterFactory
    registry.discover_entry_points()  # loads ours from the entry points when installed
    for name in NEW_ARCHITECTURES:
        if registry._adapters.get(name) is not ADAPTERS[name]:
            registry.register_adapter(name, ADAPTERS[name])
        factory.SUPPORTED_ARCHITECTURES.setdefault(name, ADAPTERS[name])
        MULTIMODAL_ARCHITECTURES.add(name)


register_with_transformer_lens()

__all__ = ["ADAPTERS", "NEW_ARCHITECTURES", "register_with_transformer_lens"] + [
    cls.__name__ for cls in ADAPTERS.values()
]
