"""Datasets of video questions: samples and their annotation checks (``mcqa``), the TVBench and
TOMATO folder layouts (``benchmarks``), and the synthetic temporal benchmark the toys are trained
on (``synthetic``). Samples build their prompts with a model, so this layer sits above ``model``."""

from hooked_video.data.benchmarks import TOMATO, TVBench, open_dataset
from hooked_video.data.mcqa import AnnotationError, MCQADataset, Sample

__all__ = ["AnnotationError", "MCQADataset", "Sample", "TOMATO", "TVBench", "open_dataset"]
