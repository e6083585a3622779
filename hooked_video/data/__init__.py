"""Datasets of video questions: samples and their annotation checks (``mcqa``), the TVBench and
TOMATO folder layouts (``layout``, read without torch; ``benchmarks``, the loaders), and the
synthetic temporal benchmark the toys are trained on (``synthetic``). Samples build their prompts
with a model, so this layer sits above ``model``.

Names load on first use, so ``hooked_video.data.layout`` answers without importing torch."""

import importlib

_EXPORTS = {"TOMATO": "benchmarks", "TVBench": "benchmarks", "open_dataset": "benchmarks", "AnnotationError": "layout",
            "MCQADataset": "mcqa", "Sample": "mcqa"}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
