"""Where each architecture family puts its video tokens.

A family turns a prompt's ``input_ids`` and processor outputs into the positions that carry
video features (in (T, H, W) row-major order), the separator positions, and the grid shape.
It is the single place that knows, e.g., that LLaVA-OneVision appends one newline feature after
all frames and that Qwen-VL wraps the video in vision start/end tokens and merges two input
frames into one temporal slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

from hooked_video.tokens import PromptLayoutError


@dataclass(frozen=True)
class VideoLayout:
    """Video positions of one prompt: feature slots, separators and the token grid."""

    features: Int[torch.Tensor, "n"]  # T*H*W positions, sequence order
    separators: Int[torch.Tensor, "s"]
    grid_shape: tuple[int, int, int]  # (T, H, W), T in temporal slots
    temporal_patch_size: int


def _runs(mask: Bool[torch.Tensor, "N"]) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of True in a 1-D mask."""
    idx = mask.nonzero().flatten().tolist()
    runs, start = [], None
    for a, b in zip(idx, idx[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            runs.append((start, a + 1))
            start = None
    return runs


class VideoFamily:
    """Base: one contiguous run of ``video_token_id`` placeholders per video, all features."""

    name = "base"
    default_template: str | None = None  # a named PromptTemplate used when prepare() gets none
    video_placeholder: str | None = None  # the prompt text of one video, for conversation templates
    trailing_separators = 0  # placeholders at the end of each run that carry no frame
    takes_video_metadata = False  # whether the processor accepts video_metadata (fps)

    def __init__(self, config) -> None:
        self.config = config
        self.video_token_id = int(
            getattr(config, "video_token_id", None) or getattr(config, "video_token_index")
        )

    # ----- per family ----------------------------------------------------------------------
    def grid_shape(self, inputs: dict) -> tuple[int, int, int]:
        raise NotImplementedError

    def temporal_patch_size(self, inputs: dict) -> int:
        """Input frames per temporal slot of the token grid."""
        return 1

    def extra_separator_ids(self) -> tuple[int, ...]:
        return ()

    # ----- shared ----------------------------------------------------------------------------
    def feature_mask(self, input_ids: Int[torch.Tensor, "*batch N"]) -> Bool[torch.Tensor, "*batch N"]:
        """Positions whose placeholder receives a video feature of a frame (separators excluded)."""
        mask = input_ids == self.video_token_id
        if self.trailing_separators:
            for row_mask in mask.reshape(-1, mask.shape[-1]):
                for _, stop in _runs(row_mask):
                    row_mask[stop - self.trailing_separators : stop] = False
        return mask

    def layout(self, input_ids: Int[torch.Tensor, "N"], inputs: dict) -> VideoLayout:
        """Locate the video of a single prompt (1-D ``input_ids``)."""
        placeholders = input_ids == self.video_token_id
        runs = _runs(placeholders)
        if len(runs) != 1:
            raise PromptLayoutError(
                f"expected one video in the prompt, found {len(runs)} runs of video placeholder "
                f"tokens (id {self.video_token_id}); put exactly one video in each prompt."
            )
        t, h, w = self.grid_shape(inputs)
        expected = t * h * w + self.trailing_separators
        start, stop = runs[0]
        if stop - start != expected:
            raise PromptLayoutError(
                f"the prompt has {stop - start} video placeholder tokens but the video gives "
                f"{expected} features (grid T={t}, H={h}, W={w}"
                + (f", plus {self.trailing_separators} separator" if self.trailing_separators else "")
                + "); let the model's processor expand the placeholder (model.prepare does)."
            )
        features = torch.arange(start, stop - self.trailing_separators)
        separators = [torch.arange(stop - self.trailing_separators, stop)]
        for token_id in self.extra_separator_ids():
            separators.append((input_ids == token_id).nonzero().flatten())
        return VideoLayout(features, torch.cat(separators).sort().values, (t, h, w), self.temporal_patch_size(inputs))


def _frames_of(inputs: dict) -> int:
    videos = inputs.get("pixel_values_videos")
    if videos is None or videos.ndim != 5:
        raise PromptLayoutError("the inputs carry no pixel_values_videos of shape (B, T, C, H, W).")
    return videos.shape[1]


class LlavaNextVideoFamily(VideoFamily):
    """CLIP patches pooled 2x2 (``spatial_pool_stride``) per frame; no separators."""

    name = "llava_next_video"
    video_placeholder = "<video>"

    def grid_shape(self, inputs):
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size // self.config.spatial_pool_stride
        return _frames_of(inputs), side, side


class LlavaOnevisionFamily(VideoFamily):
    """SigLIP patches bilinearly pooled to ceil(side / 2); one newline feature after all frames."""

    name = "llava_onevision"
    video_placeholder = "<video>"
    trailing_separators = 1

    def grid_shape(self, inputs):
        vision = self.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        return _frames_of(inputs), side, side


class QwenVLFamily(VideoFamily):
    """``video_grid_thw`` patches merged ``spatial_merge_size``^2; vision start/end markers."""

    name = "qwen_vl"
    video_placeholder = "<|vision_start|><|video_pad|><|vision_end|>"
    takes_video_metadata = True

    def grid_shape(self, inputs):
        grid = inputs.get("video_grid_thw")
        if grid is None or len(grid) != 1:
            raise PromptLayoutError("Qwen-VL inputs need a video_grid_thw with one video.")
        merge = self.config.vision_config.spatial_merge_size
        t, h, w = (int(x) for x in grid[0])
        return t, h // merge, w // merge

    def temporal_patch_size(self, inputs: dict) -> int:
        return int(self.config.vision_config.temporal_patch_size)

    def extra_separator_ids(self):
        return tuple(
            int(i)
            for i in (self.config.vision_start_token_id, self.config.vision_end_token_id)
            if i is not None
        )


class PllavaFamily(VideoFamily):
    """PLLaVA: the frames' CLIP features pooled to ``pooling_shape`` (T, h, w); one ``<image>``
    placeholder expanded to T*h*w video tokens; no separators. Each temporal slot averages
    frames // T input frames."""

    name = "pllava"
    default_template = "map-the-flow"
    video_placeholder = "<image>"

    def __init__(self, config) -> None:
        self.config = config
        self.video_token_id = int(config.image_token_index)

    def grid_shape(self, inputs):
        t, h, w = (int(x) for x in self.config.pooling_shape)
        frames = _frames_of(inputs)
        if frames % t:
            raise PromptLayoutError(
                f"this model pools the video to {t} temporal slots, so it takes a multiple of {t} frames; "
                f"got {frames} (prepare(..., num_frames={t}))."
            )
        return t, h, w

    def temporal_patch_size(self, inputs: dict) -> int:
        return _frames_of(inputs) // int(self.config.pooling_shape[0])


FAMILIES = {
    "LlavaNextVideoForConditionalGeneration": LlavaNextVideoFamily,
    "LlavaOnevisionForConditionalGeneration": LlavaOnevisionFamily,
    "Qwen2VLForConditionalGeneration": QwenVLFamily,
    "Qwen2_5_VLForConditionalGeneration": QwenVLFamily,
    "PllavaForConditionalGeneration": PllavaFamily,
}
