"""hooked_video: TransformerLens for Video LLMs.

The names below are imported on first use, so that ``import hooked_video`` (and the
``hooked-video`` command's ``--help``) does not wait for torch and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "EmbeddedPrompt": "hooked_video.embedded",
    "HookedVideoLLM": "hooked_video.model",
    "UnsupportedArchitectureError": "hooked_video.model",
    "PromptTemplate": "hooked_video.prompt",
    "VideoPrompt": "hooked_video.prompt",
    "PromptLayoutError": "hooked_video.tokens",
    "TokenMap": "hooked_video.tokens",
    "VideoError": "hooked_video.video",
    "load_video": "hooked_video.video",
    "save_video": "hooked_video.video",
    "InvalidInputError": "hooked_video.checks",
    "load_results": "hooked_video.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hooked_video' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
