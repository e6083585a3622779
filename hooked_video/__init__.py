"""hooked_video: TransformerLens for Video LLMs."""

from hooked_video.embedded import EmbeddedPrompt
from hooked_video.model import HookedVideoLLM, UnsupportedArchitectureError
from hooked_video.prompt import PromptTemplate, VideoPrompt
from hooked_video.tokens import PromptLayoutError, TokenMap
from hooked_video.video import VideoError, load_video, save_video

__version__ = "0.1.0"
__all__ = [
    "EmbeddedPrompt", "HookedVideoLLM", "PromptLayoutError", "PromptTemplate", "TokenMap",
    "UnsupportedArchitectureError", "VideoError", "VideoPrompt", "load_video", "save_video",
]  # fmt: skip
