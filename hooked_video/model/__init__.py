"""The model side: ``HookedVideoLLM`` (``hooked``: a TransformerLens bridge plus its processor),
video prompts and their token maps (``prompt``, ``tokens``), where each architecture family puts
its video tokens (``families``), checkpoint loading (``loading``, ``weights``, ``errors``), the
TransformerLens adapters TransformerLens lacks (``adapters/``) and the paper's checkpoint formats
converted onto transformers classes (``formats/``).

``from hooked_video.model import HookedVideoLLM`` keeps working (loaded on first use)."""

import importlib

_EXPORTS = {"HookedVideoLLM": "hooked", "boot_bridge": "hooked", "inputs_for": "hooked", "batch_inputs": "hooked",
            "UnsupportedArchitectureError": "errors"}  # fmt: skip


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
