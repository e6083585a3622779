"""Where each architecture family puts its video tokens.

A family turns a prompt's ``input_ids`` and processor outputs into the positions that carry
video features (in (T, H, W) row-major order), the separator positions, and the grid shape.
It is the single place that knows, e.g., that LLaVA-OneVision appends one newline feature after
all frames and that Qwen-VL wraps the video in vision start/end tokens and merges two input
frames into one temporal slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Bool, Int

from hooked_video.model.tokens import PromptLayoutError, dense_cells


@dataclass(frozen=True)
class VideoLayout:
    """Video positions of one prompt: feature slots and their grid cells, separators, frame text."""

    features: Int[torch.Tensor, "n"]  # positions carrying video features, sequence order
    cells: Int[torch.Tensor, "n 3"]  # (t, h, w) of each feature
    separators: Int[torch.Tensor, "s"]
    grid_shape: tuple[int, int, int]  # (T, H, W), T in temporal slots
    temporal_patch_size: int
    frame_text: Int[torch.Tensor, "f"] = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    frame_text_slots: Int[torch.Tensor, "f"] = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


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
    """Base: the video's features replace runs of ``video_token_id`` placeholders, frame by frame
    (one run for the whole clip, or one run per temporal slot), row-major within a frame.

    Text the processor writes between frames (timestamps, ``Frame{i}:``, commas, text before the
    first frame) belongs to the frame that follows it (role "frame_text"). Where the processor
    wraps each frame in markers (``per_frame_markers``: Qwen3-VL's ``<|vision_start|>`` /
    ``<|vision_end|>``, InternVL's ``<img>`` / ``</img>``), the markers right before and right
    after a frame's tokens belong to that frame too, so no frame can read another through them.
    Other marker tokens (``separator_ids``) and text after the last frame are separators of no frame.
    """

    name = "base"
    default_template: str | None = None  # a named PromptTemplate used when prepare() gets none
    open_ended_template: str | None = None  # the named template of open-ended tracing (None: free-form)
    video_placeholder: str | None = None  # the prompt text of one video, for conversation templates
    trailing_separators = 0  # placeholders at the end of each run that carry no frame
    takes_video_metadata = False  # whether the processor accepts video_metadata (fps)
    per_frame_markers = False  # whether separator_ids() wrap each frame (then they belong to it)
    frame_sampling = "midpoints"  # how prepare() samples a video file (core.video.SAMPLINGS)

    def __init__(self, config, processor=None) -> None:
        self.config = config
        self.processor = processor
        self.video_token_id = self.feature_token_id(config)

    @staticmethod
    def feature_token_id(config) -> int:
        """The placeholder id whose positions receive video features."""
        return int(getattr(config, "video_token_id", None) or getattr(config, "video_token_index"))

    # ----- per family ----------------------------------------------------------------------
    def grid_shape(self, inputs: dict) -> tuple[int, int, int]:
        """(T, H, W): temporal slots and the token grid of one slot, for these processor inputs."""
        raise NotImplementedError

    def temporal_patch_size(self, inputs: dict) -> int:
        """Input frames per temporal slot of the token grid."""
        return 1

    def cells(self, inputs: dict) -> Int[torch.Tensor, "n 3"]:
        """(t, h, w) of each video feature in sequence order (default: every cell of the grid)."""
        return dense_cells(self.grid_shape(inputs))

    def separator_ids(self) -> tuple[int, ...]:
        """Marker tokens around frames that belong to no frame (e.g. vision start/end)."""
        return ()

    @property
    def placeholder_id(self) -> int:
        """The token the unexpanded prompt text holds once for the video."""
        return self.video_token_id

    def has_video(self, inputs: dict) -> bool:
        """Whether processor outputs carry a video."""
        return inputs.get("pixel_values_videos") is not None

    def processor_kwargs(self, frames, fps: float | None, times: Sequence[float] | None = None) -> dict:
        """Extra keyword arguments for the processor call of a clip of ``frames`` (``times``: each
        frame's second in the video, for families whose prompts show it)."""
        if fps is not None and self.takes_video_metadata:
            return {"video_metadata": [{"fps": fps, "total_num_frames": len(frames)}]}
        return {}

    # ----- shared ----------------------------------------------------------------------------
    def feature_mask(self, input_ids: Int[torch.Tensor, "*batch N"]) -> Bool[torch.Tensor, "*batch N"]:
        """Positions whose placeholder receives a video feature of a frame (separators excluded)."""
        mask = input_ids == self.video_token_id
        if self.trailing_separators:
            for row_mask in mask.reshape(-1, mask.shape[-1]):
                for _, stop in _runs(row_mask):
                    row_mask[stop - self.trailing_separators : stop] = False
        return mask

    def layout(self, input_ids: Int[torch.Tensor, "N"], inputs: dict, region: tuple[int, int] | None = None) -> VideoLayout:
        """Locate the video of a single prompt (1-D ``input_ids``); ``region`` [start, stop) is
        the span the processor wrote for the video (its frame text is found only inside it)."""
        runs = _runs(input_ids == self.video_token_id)
        grid = self.grid_shape(inputs)
        cells = self.cells(inputs)
        sizes = torch.bincount(cells[:, 0], minlength=grid[0]).tolist()
        self._check_runs(runs, grid, sizes, len(cells))
        features = self.feature_mask(input_ids).nonzero().flatten()
        separators = [features.new_tensor([p for _, stop in runs for p in range(stop - self.trailing_separators, stop)])]
        for token_id in self.separator_ids():
            separators.append((input_ids == token_id).nonzero().flatten())
        separators = torch.cat(separators).unique()
        markers, marker_slots = self._frame_markers(runs, separators, grid[0])
        separators = separators[~torch.isin(separators, markers)]
        text, slots = self._frame_text(features, cells, torch.cat([separators, markers]), region)
        after_last = text[slots < 0]
        text, slots = torch.cat([text[slots >= 0], markers]), torch.cat([slots[slots >= 0], marker_slots])
        order = text.argsort()
        return VideoLayout(features, cells, torch.cat([separators, after_last]).sort().values, grid,
                           self.temporal_patch_size(inputs), text[order], slots[order])  # fmt: skip

    def _frame_markers(self, runs, separators, n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Separator positions right before or after each frame's run of tokens, and that frame's
        slot (only for families whose markers wrap each frame, one run per frame)."""
        positions, slots = [], []
        if self.per_frame_markers and len(runs) == n_slots:
            marked = set(separators.tolist())
            for slot, (start, stop) in enumerate(runs):
                for p in (start - 1, stop):
                    if p in marked:
                        positions.append(p)
                        slots.append(slot)
        return torch.tensor(positions, dtype=torch.long), torch.tensor(slots, dtype=torch.long)

    def _check_runs(self, runs, grid, sizes: list[int], n_features: int) -> None:
        t, h, w = grid
        placeholders = sum(stop - start for start, stop in runs)
        expected = n_features + self.trailing_separators * max(1, len(runs))
        if len(runs) not in (1, t) or (len(runs) != 1 and self.trailing_separators):
            raise PromptLayoutError(
                f"expected one video in the prompt, found {len(runs)} runs of video placeholder "
                f"tokens (id {self.video_token_id}) for {t} frames; put exactly one video in each prompt."
            )
        if placeholders != expected or (len(runs) > 1 and [b - a for a, b in runs] != sizes):
            raise PromptLayoutError(
                f"the prompt has {placeholders} video placeholder tokens but the video gives "
                f"{expected} features (grid T={t}, H={h}, W={w}"
                + (f", plus {self.trailing_separators} separator" if self.trailing_separators else "")
                + "); let the model's processor expand the placeholder (model.prepare does)."
            )

    @staticmethod
    def _frame_text(features, cells, separators, region) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of the region that are neither features nor separators, and the temporal
        slot of the next feature after each (-1 after the last feature)."""
        if region is None or not len(features):
            empty = torch.empty(0, dtype=torch.long)
            return empty, empty
        inside = torch.arange(*region)
        keep = ~torch.isin(inside, features) & ~torch.isin(inside, separators)
        text = inside[keep]
        following = torch.searchsorted(features, text)
        slots = torch.where(following < len(features), cells[following.clamp(max=len(features) - 1), 0], -1)
        return text, slots


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
        """(frames, side, side) after the 2x2 spatial pooling."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size // self.config.spatial_pool_stride
        return _frames_of(inputs), side, side


class LlavaOnevisionFamily(VideoFamily):
    """SigLIP patches bilinearly pooled to ceil(side / 2); one newline feature after all frames."""

    name = "llava_onevision"
    video_placeholder = "<video>"
    trailing_separators = 1

    def grid_shape(self, inputs):
        """(frames, side, side) after bilinear halving (rounded up)."""
        vision = self.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        return _frames_of(inputs), side, side


class QwenVLFamily(VideoFamily):
    """``video_grid_thw`` patches merged ``spatial_merge_size``^2; vision start/end markers."""

    name = "qwen_vl"
    video_placeholder = "<|vision_start|><|video_pad|><|vision_end|>"
    takes_video_metadata = True

    def grid_shape(self, inputs):
        """(T/2, H, W) of the merged video grid (``video_grid_thw`` over the merge size)."""
        grid = inputs.get("video_grid_thw")
        if grid is None or len(grid) != 1:
            raise PromptLayoutError("Qwen-VL inputs need a video_grid_thw with one video.")
        merge = self.config.vision_config.spatial_merge_size
        t, h, w = (int(x) for x in grid[0])
        return t, h // merge, w // merge

    def temporal_patch_size(self, inputs: dict) -> int:
        """Input frames merged into one temporal slot."""
        return int(self.config.vision_config.temporal_patch_size)

    def separator_ids(self):
        """Vision start and end token ids."""
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
    open_ended_template = "map-the-flow-vcgbench"  # the released appendix analysis' conversation
    video_placeholder = "<image>"

    @staticmethod
    def feature_token_id(config) -> int:
        """The placeholder token id that video features replace."""
        return int(config.image_token_index)

    def grid_shape(self, inputs):
        """The 3D pooling shape (T, h, w); the frame count must be a multiple of T."""
        t, h, w = (int(x) for x in self.config.pooling_shape)
        frames = _frames_of(inputs)
        if frames % t:
            raise PromptLayoutError(
                f"this model pools the video to {t} temporal slots, so it takes a multiple of {t} frames; "
                f"got {frames} (prepare(..., num_frames={t}))."
            )
        return t, h, w

    def temporal_patch_size(self, inputs: dict) -> int:
        """Input frames averaged into one temporal slot."""
        return _frames_of(inputs) // int(self.config.pooling_shape[0])


class Qwen3VLFamily(QwenVLFamily):
    """Qwen3-VL: two input frames per temporal slot, each slot as ``<t seconds>`` text and its
    patches between vision start/end markers (text and markers belong to the slot). transformers
    before 5.25 keeps the chat template's outer start/end pair around all slots (separators of no
    frame); 5.25 drops it. Frames given to ``prepare`` are never resampled by the processor."""

    name = "qwen3_vl"
    per_frame_markers = True

    def processor_kwargs(self, frames, fps: float | None, times: Sequence[float] | None = None) -> dict:
        """Timestamps from ``fps`` (default 24, what transformers assumes); no resampling."""
        return {"video_metadata": [_metadata(frames, fps or 24.0)], "do_sample_frames": False}


def _metadata(frames, fps: float, times: Sequence[float] | None = None) -> dict:
    """Video metadata for processors that write timestamps: frame i is at i / fps seconds, or at
    ``times[i]`` (given as frames_indices over fps 1, since transformers writes indices / fps)."""
    if times is not None:
        return {"fps": 1.0, "total_num_frames": len(frames), "frames_indices": [float(t) for t in times]}
    return {"fps": float(fps), "total_num_frames": len(frames), "frames_indices": list(range(len(frames)))}


def _token_id(tokenizer, token: str | None) -> int | None:
    """The id of a token the tokenizer knows as a whole, else None."""
    if tokenizer is None or not token:
        return None
    index = tokenizer.convert_tokens_to_ids(token)
    return None if index is None or index == tokenizer.unk_token_id else int(index)


class InternVLFamily(VideoFamily):
    """InternVL: each frame's InternViT patches pixel-shuffled to ``image_seq_length`` context
    tokens (``<IMG_CONTEXT>``), row-major. transformers' processor writes ``Frame{i}: <img>``
    + the frame's tokens + ``</img>`` per frame, frames joined by newlines (the ``Frame{i}:``
    text and the frame's ``<img>`` / ``</img>`` belong to frame i); the paper's InternVL-chat
    models (``InternVLChatProcessor``) take one ``<img>`` block of all frames' tokens (its
    markers are separators of no frame)."""

    name = "internvl"

    def __init__(self, config, processor=None) -> None:
        super().__init__(config, processor)
        self.released = type(processor).__name__ == "InternVLChatProcessor"
        tokenizer = getattr(processor, "tokenizer", None)
        if self.released:
            self.default_template, self.video_placeholder = "map-the-flow-phi3", "<img><IMG_CONTEXT></img>"
        else:
            self.video_placeholder = getattr(processor, "video_token", None) or "<video>"
            self.per_frame_markers = True
        self._placeholder_id = self.video_token_id if self.released else _token_id(tokenizer, self.video_placeholder)
        self._markers = tuple(i for i in (_token_id(tokenizer, "<img>"), _token_id(tokenizer, "</img>")) if i is not None)

    @staticmethod
    def feature_token_id(config) -> int:
        """The ``<IMG_CONTEXT>`` token id that frame features replace."""
        return int(config.image_token_id)

    @property
    def placeholder_id(self) -> int:
        if self._placeholder_id is None:
            raise PromptLayoutError(f"the tokenizer has no {self.video_placeholder!r} token for the video placeholder")
        return self._placeholder_id

    def has_video(self, inputs: dict) -> bool:
        """Whether these inputs carry frames (InternVL passes them as ``pixel_values``)."""
        return inputs.get("pixel_values") is not None

    def grid_shape(self, inputs):
        """(frames, side, side): one slot per frame, ``image_seq_length`` tokens each."""
        pixels = inputs.get("pixel_values")
        if pixels is None or pixels.ndim != 4:
            raise PromptLayoutError("InternVL inputs need pixel_values of shape (frames, 3, S, S).")
        side = math.isqrt(int(self.config.image_seq_length))
        return pixels.shape[0], side, side

    def separator_ids(self):
        """The ``<img>`` / ``</img>`` marker token ids."""
        return self._markers


#: The released VideoLLaMA3 scripts' video budget: 8 frames x 12 x 12 merged tokens.
PAPER_VIDEOLLAMA3_TOKENS = 8 * 12 * 12


class VideoLlama3Family(VideoFamily):
    """VideoLLaMA3: each frame's SigLIP patches merged 2x2 (``video_grid_thw`` / merge size), as
    ``Time {t:.1f}s:`` + the frame's tokens, frames joined by commas (timestamps and commas
    belong to the frame that follows). Token compression is off by default, as the paper runs
    the model; with ``processor_kwargs={"use_token_compression": True}`` a frame keeps only the
    tokens that changed since the previous frame (``video_compression_mask``), so frames
    differ in size."""

    name = "video_llama_3"
    default_template = "map-the-flow-videollama3"
    takes_video_metadata = True
    frame_sampling = "uniform"  # the released loader: first and last frame included
    #: merged video tokens of a whole clip, shared by its frames (the released scripts'
    #: ``--max_visual_tokens`` = 8 frames x 12 x 12); None: the checkpoint's own budget
    max_visual_tokens: int | None = PAPER_VIDEOLLAMA3_TOKENS

    def __init__(self, config, processor=None) -> None:
        super().__init__(config, processor)
        self.video_placeholder = getattr(processor, "video_token", None) or "<|video_pad|>"

    def grid_shape(self, inputs):
        """(frames, H, W) of the merged grid, before token compression."""
        grid, merge = inputs.get("video_grid_thw"), inputs.get("video_merge_sizes")
        if grid is None or len(grid) != 1:
            raise PromptLayoutError("VideoLLaMA3 inputs need a video_grid_thw with one video.")
        size = int(merge[0]) if merge is not None else 1
        t, h, w = (int(x) for x in grid[0])
        return t, h // size, w // size

    def cells(self, inputs):
        """(t, h, w) of each video token; with compression on, only the kept cells of each frame."""
        mask = inputs.get("video_compression_mask")
        if mask is None:
            return super().cells(inputs)
        t, h, w = self.grid_shape(inputs)
        slot, index = mask.reshape(t, h * w).nonzero(as_tuple=True)
        return torch.stack([slot, index // w, index % w], dim=-1)

    def processor_kwargs(self, frames, fps: float | None, times: Sequence[float] | None = None) -> dict:
        """Timestamps: ``times`` (the frames' seconds, as the released loader writes them), else
        from ``fps`` (default 1 frame per second, as transformers assumes); no token compression;
        the video budget ``max_visual_tokens``."""
        kwargs = {"video_metadata": [_metadata(frames, fps or 1.0, times)], "use_token_compression": False}
        video = getattr(self.processor, "video_processor", None)
        if self.max_visual_tokens is not None and video is not None:
            factor = video.patch_size * video.merge_size  # frames shrink until (H/f)(W/f) <= budget / T
            kwargs["size"] = {"shortest_edge": video.size["shortest_edge"],
                              "longest_edge": self.max_visual_tokens * factor * factor}  # fmt: skip
        return kwargs


FAMILIES = {
    "LlavaNextVideoForConditionalGeneration": LlavaNextVideoFamily,
    "LlavaOnevisionForConditionalGeneration": LlavaOnevisionFamily,
    "Qwen2VLForConditionalGeneration": QwenVLFamily,
    "Qwen2_5_VLForConditionalGeneration": QwenVLFamily,
    "PllavaForConditionalGeneration": PllavaFamily,
    "Qwen3VLForConditionalGeneration": Qwen3VLFamily,
    "InternVLForConditionalGeneration": InternVLFamily,
    "VideoLlama3ForConditionalGeneration": VideoLlama3Family,
}
