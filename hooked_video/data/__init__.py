"""Datasets of multiple-choice video questions."""

from hooked_video.data.benchmarks import TOMATO, TVBench, open_dataset
from hooked_video.data.mcqa import AnnotationError, MCQADataset, Sample

__all__ = ["AnnotationError", "MCQADataset", "Sample", "TOMATO", "TVBench", "open_dataset"]
