"""The model side's errors, below every module that raises them (loading, checkpoint formats, the wrapper)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint folder cannot be loaded as it is; the message says what is missing."""


class ModelNotFoundError(CheckpointError):
    """No local folder, bundled model or reachable hub repository has this name."""


class UnsupportedArchitectureError(ValueError):
    """The checkpoint's architecture has no hooked_video adapter."""
