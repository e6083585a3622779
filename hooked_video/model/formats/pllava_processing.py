"""The PLLaVA processor: frames resized as the released processor resizes them, then the CLIP image
processor (resize the short side to 336, centre crop, normalise); the single ``<image>``
placeholder of the prompt expanded to the T*h*w video tokens the model pools the video to."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.image_transforms import resize
from transformers.image_utils import ChannelDimension, PILImageResampling

#: A Vicuna-style chat template whose video item is the ``<image>`` placeholder (for prompts that
#: do not use the released "map-the-flow" conversation).
VICUNA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] if m['content'] is string "
    "else m['content'][0]['text'] }}{{ ' ' }}{% else %}{{ m['role'].upper() + ': ' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] in ('video', 'image') %}{{ '<image>\\n' }}{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ ' ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def released_resize(frames: np.ndarray, clip_size: int) -> np.ndarray:
    """The released processor's first step for one video: resize every frame (bicubic, aspect
    kept) so that its short side is max(clip_size, min(short side, longest side capped at 640 /
    aspect ratio)); the CLIP processor then resizes again to ``clip_size``."""
    height, width = frames.shape[1:3]
    ratio = max(height, width) / min(height, width)
    short = min(min(height, width), int(min(640, max(height, width)) / ratio))
    short = max(short, clip_size)
    long = int(short * ratio)
    size = (long, short) if height > width else (short, long)
    return np.stack([
        resize(frame, size, resample=PILImageResampling.BICUBIC, input_data_format=ChannelDimension.LAST)
        for frame in frames
    ])  # fmt: skip


class PllavaProcessor(ProcessorMixin):
    """Tokenizer + CLIP image processor for PLLaVA-format models.

    Args:
        image_processor: a CLIP image processor (336 px for the paper's models).
        tokenizer: the language model's tokenizer, with ``image_token`` as a special token.
        pooling_shape: (T, h, w) of the model: the prompt gets T*h*w video tokens.
        image_token: the video placeholder.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, pooling_shape=(8, 12, 12),
                 image_token: str = "<image>", **kwargs) -> None:  # fmt: skip
        self.pooling_shape = [int(x) for x in pooling_shape]
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or VICUNA_CHAT_TEMPLATE)

    @property
    def num_video_tokens(self) -> int:
        t, h, w = self.pooling_shape
        return t * h * w

    def __call__(self, text=None, videos=None, images=None, return_tensors: str = "pt", **kwargs) -> BatchFeature:
        """``text``: a prompt (or list) with one ``<image>`` per video; ``videos``: a list of
        (frames, H, W, 3) uint8 arrays. Returns input_ids, attention_mask, pixel_values_videos
        (videos, frames, 3, size, size). ``images`` (the model runs each as a one-frame video,
        repeated) give ``pixel_values`` (images, 3, size, size) instead."""
        data = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            data["pixel_values"] = self.image_processor(list(images), return_tensors="pt")["pixel_values"]
        if videos is not None:
            clip_size = self.image_processor.crop_size["height"]
            pixel = []
            for video in videos:
                frames = released_resize(np.asarray(video), clip_size)
                pixel.append(self.image_processor(list(frames), return_tensors="pt")["pixel_values"])
            data["pixel_values_videos"] = torch.stack(pixel)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if (videos is not None or images is not None) and any(t.count(self.image_token) != 1 for t in texts):
                raise ValueError(f"each prompt needs exactly one {self.image_token} placeholder for its video")
            expanded = [t.replace(self.image_token, self.image_token * self.num_video_tokens) for t in texts]
            data.update(self.tokenizer(expanded, return_tensors=return_tensors, **kwargs))
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        """The tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)
