"""Datasets of multiple-choice video questions."""

from hooked_video.data.mcqa import AnnotationError, MCQADataset, Sample

__all__ = ["AnnotationError", "MCQADataset", "Sample"]
