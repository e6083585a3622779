"""Model classes this package adds to transformers (the PLLaVA format)."""

from hooked_video.models.pllava import PllavaConfig, PllavaForConditionalGeneration, PllavaModel
from hooked_video.models.pllava_processing import PllavaProcessor

__all__ = ["PllavaConfig", "PllavaForConditionalGeneration", "PllavaModel", "PllavaProcessor"]
