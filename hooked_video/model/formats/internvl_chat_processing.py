"""The processor of InternVL-chat checkpoints as the paper runs them (Mini-InternVL-Chat-4B-V1-5).

Frames go through the released two-step preprocessing (``tasks/eval/model_utils.py`` builds a
PLLaVA processor around a CLIP image processor): a long/short pre-resize of the whole video
(``released_resize``), then, per frame, a PIL bicubic resize of the short side to S (448), a centre
crop to S x S, /255 and ImageNet mean/std. The prompt holds ``<img><IMG_CONTEXT></img>`` once per
video; the released model expands that one context token to the T * 256 frame features in
embedding space, here the text is expanded to T * ``image_seq_length`` context tokens instead
(the same sequence), so the transformers InternVL model can scatter the features in order.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.image_utils import PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from hooked_video.model.formats.pllava_processing import released_resize

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CONTEXT_TOKEN, START_TOKEN, END_TOKEN = "<IMG_CONTEXT>", "<img>", "</img>"
#: What a video item of a chat message renders as.
VIDEO_PLACEHOLDER = f"{START_TOKEN}{CONTEXT_TOKEN}{END_TOKEN}\n"


def role_chat_template(role_start: str, role_end: str, turn_end: str, video: str = VIDEO_PLACEHOLDER,
                       image: str | None = None) -> str:  # fmt: skip
    """A chat template whose turns read ``role_start + role + role_end + content + turn_end`` and
    whose video item is ``video`` (image items: ``image``, default the same). Phi-3: ``<|``,
    ``|>\\n``, ``<|end|>\\n``; ChatML: ``<|im_start|>``, ``\\n``, ``<|im_end|>\\n``."""
    return (
        "{% for m in messages %}{{ '" + role_start + "' + m['role'] + '" + role_end + "' }}"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'video' %}{{ '" + video + "' }}"
        "{% elif c['type'] == 'image' %}{{ '" + (image or video) + "' }}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ '" + turn_end + "' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '" + role_start + "assistant" + role_end + "' }}{% endif %}"
    )


#: InternVL's "phi3-chat" conversation (Mini-InternVL-Chat-4B) and its ChatML ones (InternLM2, Qwen2).
PHI3_CHAT_TEMPLATE = role_chat_template("<|", "|>\n", "<|end|>\n")
CHATML_TEMPLATE = role_chat_template("<|im_start|>", "\n", "<|im_end|>\n")


def released_image_processor(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> CLIPImageProcessorPil:
    """The released second step (the PIL CLIP image processor of transformers 4.x): bicubic resize
    of the short side to ``size``, centre crop to ``size`` x ``size``, /255, normalise."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=PILImageResampling.BICUBIC,
        do_center_crop=True, do_rescale=True, do_normalize=True, image_mean=list(mean), image_std=list(std),
        do_convert_rgb=True,
    )  # fmt: skip


class InternVLChatProcessor(ProcessorMixin):
    """Tokenizer + released frame preprocessing for InternVL-chat checkpoints.

    Args:
        image_processor: see ``released_image_processor`` (its crop size is S).
        tokenizer: the language model's tokenizer, holding ``<img>``, ``</img>``, ``<IMG_CONTEXT>``.
        image_seq_length: context tokens per frame, (S / patch)^2 * downsample_ratio^2 (256 at 448/14).
        context_token: the token the frame features replace.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_seq_length: int = 256,
                 context_token: str = CONTEXT_TOKEN, **kwargs) -> None:  # fmt: skip
        self.image_seq_length = int(image_seq_length)
        self.context_token = context_token
        self.context_token_id = tokenizer.convert_tokens_to_ids(context_token)
        if image_processor is not None and not isinstance(image_processor, CLIPImageProcessorPil):
            # from_pretrained brings the torchvision CLIP processor; the released one resizes with PIL
            image_processor = released_image_processor(image_processor.crop_size["height"], image_processor.image_mean,
                                                       image_processor.image_std)  # fmt: skip
        super().__init__(image_processor, tokenizer, chat_template=chat_template or PHI3_CHAT_TEMPLATE)

    @property
    def image_token(self) -> str:
        """The placeholder of one image (or video) in a prompt."""
        return self.context_token

    @property
    def size(self) -> int:
        """S: the side of the square frames the vision tower sees."""
        return int(self.image_processor.crop_size["height"])

    def preprocess_video(self, frames) -> torch.Tensor:
        """(T, H, W, 3) uint8 frames -> (T, 3, S, S) float pixels, as the released code prepares them."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"a video must be (frames, H, W, 3) uint8, got shape {frames.shape}")
        resized = released_resize(frames, self.size)
        return self.image_processor(list(resized), return_tensors="pt")["pixel_values"]

    def __call__(self, text=None, videos=None, images=None, return_tensors: str = "pt", **kwargs) -> BatchFeature:
        """``text``: a prompt (or list) holding one ``<IMG_CONTEXT>`` per video; ``videos``: a list of
        (T, H, W, 3) uint8 arrays (``images``: (H, W, 3) arrays, each run as a one-frame video).

        Returns input_ids, attention_mask and pixel_values (sum of T, 3, S, S), frames in order.
        """
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            videos = [*(videos or []), *(np.asarray(image)[None] for image in images)]
        data, counts = {}, []
        if videos is not None:
            pixels = [self.preprocess_video(video) for video in videos]
            counts = [len(p) for p in pixels]
            data["pixel_values"] = torch.cat(pixels)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            found = sum(t.count(self.context_token) for t in texts)
            if found != len(counts):
                raise ValueError(f"the prompts hold {found} {self.context_token} placeholders for {len(counts)} videos; "
                                 f"write one <img>{self.context_token}</img> per video")  # fmt: skip
            per_video = iter(counts)
            pattern = re.compile(re.escape(self.context_token))
            expand = lambda _: self.context_token * (next(per_video) * self.image_seq_length)  # noqa: E731
            data.update(self.tokenizer([pattern.sub(expand, t) for t in texts], return_tensors=return_tensors, **kwargs))
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        """The tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)
