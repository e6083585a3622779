"""The paper's checkpoint formats on transformers classes: PLLaVA (``pllava``, a class this package
adds and registers with transformers' Auto classes, and its processor), the InternVL-chat layout
(``internvl_chat``, with the released preprocessing) and the official VideoLLaMA3 release
(``videollama3_official``), both converted at load time by the prefix rules of ``conversion``."""

from hooked_video.model.formats.pllava import PllavaConfig, PllavaForConditionalGeneration, PllavaModel
from hooked_video.model.formats.pllava_processing import PllavaProcessor

__all__ = ["PllavaConfig", "PllavaForConditionalGeneration", "PllavaModel", "PllavaProcessor"]
